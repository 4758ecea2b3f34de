"""A command of a run in a process group of its own: how it is launched, its bounded output, and its end.

`termination` is the one way a run's processes are ended. May import `lone_errors`, nothing
else of ansible_worker.
"""
