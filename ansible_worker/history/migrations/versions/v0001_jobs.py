"""The first schema: jobs, their records, and the workers' presence.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables of version 1."""
    op.create_table(
        "history_jobs",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("playbook", sa.String(4096)),
        sa.Column("worker_id", sa.String(256)),
        sa.Column("began_at", sa.Double, nullable=False),
        sa.Column("completed_at", sa.Double),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("archived_at", sa.Double, nullable=False),
    )
    op.create_index("history_jobs_began", "history_jobs", ["began_at"])
    op.create_index("history_jobs_state_began", "history_jobs", ["state", "began_at"])
    op.create_index("history_jobs_playbook_began", "history_jobs", ["playbook", "began_at"])
    op.create_index("history_jobs_worker_began", "history_jobs", ["worker_id", "began_at"])
    op.create_table(
        "history_records",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("archived_at", sa.Double, nullable=False),
    )
    op.create_table(
        "history_workers",
        sa.Column("worker_id", sa.String(256), primary_key=True),
        sa.Column("presence", sa.Text, nullable=False),
        sa.Column("seen_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Never used: the store only migrates forward."""
    raise NotImplementedError("the history store migrates forward only")
