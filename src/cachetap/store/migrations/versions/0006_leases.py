"""Leases (one active beat; one run of each housekeeping task at a time) and the record of task runs.

Revision ID: 0006_leases
Revises: 0005_nodes
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_leases"
down_revision: str | None = "0005_nodes"
branch_labels: str | None = None
depends_on: str | None = None

MYSQL_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.Column("renewed_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_table(
        "task_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("outcome", sa.String(255), nullable=True),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_task_runs_task_started", "task_runs", ["task", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_task_started", table_name="task_runs")
    op.drop_table("task_runs")
    op.drop_table("leases")
