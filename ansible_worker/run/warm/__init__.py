"""Warm starts: a job forked from a parent that has already imported Ansible, or a cold start and the reason.

May import `run.process`, `run.errors` and `ops.metrics`, nothing else of `run`. `parent_script` is
no module of the worker: it runs as a script under Ansible's own Python and imports only the
standard library (and Ansible).
"""
