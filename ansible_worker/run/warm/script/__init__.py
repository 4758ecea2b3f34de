"""The warm parent itself: `warm_parent.py` runs as a script under the Python of `ansible-playbook`.

Nothing here is imported by the worker. The script and the modules it loads once Ansible is
imported (`imported`, `fork_server`, `job_process`) use only the standard library and Ansible.
"""
