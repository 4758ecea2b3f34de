"""Version 2: the hosts each job ran on, filled from the records already stored.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ansible_worker.history.messages import hosts_of_record

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

# Records read per round while filling the table: the memory of a few hundred records at most.
BACKFILL_BATCH = 500


def upgrade() -> None:
    """Create the hosts table and fill it from every stored record."""
    hosts = op.create_table(
        "history_job_hosts",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("began_at", sa.Double, nullable=False),
    )
    op.create_index("history_job_hosts_host_began", "history_job_hosts", ["host", "began_at"])
    bind = op.get_bind()
    records = sa.table("history_records", sa.column("task_id", sa.String), sa.column("payload", sa.LargeBinary))
    jobs = sa.table("history_jobs", sa.column("task_id", sa.String), sa.column("began_at", sa.Double))
    query = (
        sa.select(records.c.task_id, records.c.payload, jobs.c.began_at)
        .join(jobs, jobs.c.task_id == records.c.task_id)
        .order_by(records.c.task_id)
    )
    after = ""
    while True:
        rows = bind.execute(query.where(records.c.task_id > after).limit(BACKFILL_BATCH)).all()
        if not rows:
            return
        found = [
            {"task_id": task_id, "host": host, "began_at": began_at}
            for task_id, payload, began_at in rows
            for host in hosts_of_record(payload)
        ]
        if found:
            bind.execute(hosts.insert(), found)
        after = rows[-1][0]


def downgrade() -> None:
    """Never used: the store only migrates forward."""
    raise NotImplementedError("the history store migrates forward only")
