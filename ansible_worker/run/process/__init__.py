"""A command of a run in a process group of its own: how it is launched, its bounded output, and its end.

May import `run.errors` and `lone_errors`, nothing else of ansible_worker.
"""
