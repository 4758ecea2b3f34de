"""Where a job's playbooks come from: the playbook directory, git snapshots and project mirrors, shipped content.

May import `run.process`, `run.errors`, `protocol` and `ops.private_paths`, nothing else of `run`.
"""
