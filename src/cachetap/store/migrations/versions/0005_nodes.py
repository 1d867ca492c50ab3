"""The node registry (`nodes`, one row per node and role, kept by heartbeats) and the node holding
each stored object (`entries.node`).

Revision ID: 0005_nodes
Revises: 0004_claimed_by
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_nodes"
down_revision: str | None = "0004_claimed_by"
branch_labels: str | None = None
depends_on: str | None = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("public_url", sa.String(255), nullable=True),
        sa.Column("disks", sa.Text, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", "role"),
        **MYSQL,
    )
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("node")
    op.drop_table("nodes")
