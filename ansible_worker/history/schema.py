"""The tables of the history store, as SQLAlchemy Core: what the queries name; the migrations create them."""

from __future__ import annotations

from sqlalchemy import Column, Double, Index, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

# One row per job: the newest status the store has seen, and the columns the filters use.
# Times are POSIX seconds (UTC): one type that both databases index and compare alike.
jobs = Table(
    "history_jobs",
    metadata,
    Column("task_id", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    # 0 queued, 1 running, 2 ended: a status never replaces one of a higher rank.
    Column("rank", Integer, nullable=False),
    Column("playbook", String(4096)),
    Column("worker_id", String(256)),
    # When the job began: created, else started, else when the store first saw it.
    Column("began_at", Double, nullable=False),
    Column("completed_at", Double),
    Column("status", Text, nullable=False),
    Column("archived_at", Double, nullable=False),
    Index("history_jobs_began", "began_at"),
    Index("history_jobs_state_began", "state", "began_at"),
    Index("history_jobs_playbook_began", "playbook", "began_at"),
    Index("history_jobs_worker_began", "worker_id", "began_at"),
)

# A finished job's record, as the worker published it: one compressed document per job.
records = Table(
    "history_records",
    metadata,
    Column("task_id", String(128), primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("archived_at", Double, nullable=False),
)

# The hosts a job ran on (from its record's events), to answer "what ran on web3 this week".
job_hosts = Table(
    "history_job_hosts",
    metadata,
    Column("task_id", String(128), primary_key=True),
    Column("host", String(255), primary_key=True),
    # The job's began_at again: the host filter then reads one index range, newest first.
    Column("began_at", Double, nullable=False),
    Index("history_job_hosts_host_began", "host", "began_at"),
)

# The newest presence message of each worker.
workers = Table(
    "history_workers",
    metadata,
    Column("worker_id", String(256), primary_key=True),
    Column("presence", Text, nullable=False),
    Column("seen_at", Double, nullable=False),
)

# Alembic's own table of the schema version, named so it cannot clash with another application's.
VERSION_TABLE = "history_schema_version"
