"""One playbook run: what a job may ask, its argv and environment, its process group, the event
FIFO, the pure progress reducer, and the callback plugin that runs inside Ansible.

Knows nothing of MQTT nor of the worker that carries it: statuses and events leave through the
`StatusSink` and `EventSink` it is given. May import `protocol` and the leaf modules
`ops.logging_setup`, `ops.metrics`, `ops.credentials` and `ops.private_paths`, never `mqtt`,
`worker`, `controller` or `ops.config`.
"""
