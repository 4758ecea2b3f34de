"""One playbook run: what a job may ask, its argv and environment, its process group, the event
FIFO, the pure progress reducer, and the callback plugin that runs inside Ansible.

Knows nothing of MQTT. May import `protocol`, never `mqtt`, `worker` or `controller`.
"""
