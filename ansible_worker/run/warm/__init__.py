"""Warm starts: a job forked from a parent that has already imported Ansible, or a cold start and the reason.

`key` decides which parent may serve a job; `parent` is the handle on one parent process and
`forked_run` runs a job forked from it; `pool` keeps the parents and chooses how each job starts.
May import `run.process`, `run.errors`, `ops.metrics` and `lone_errors`, nothing else of
ansible_worker. `script/` is the parent itself, no module of the worker: it imports only the
standard library (and Ansible).
"""
