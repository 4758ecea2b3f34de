"""Where a job's playbooks come from: the playbook directory, git snapshots and project mirrors, shipped content.

May import `run.process`, `run.errors`, `protocol`, `ops.private_paths`, and `ops.config` for its
types alone; nothing else of ansible_worker.
"""
