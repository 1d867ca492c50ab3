"""The console's figures: per-entry bytes served, fetched and missed, and the `stats` time series.

Revision ID: 0008_console_stats
Revises: 0007_refreshed_at
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008_console_stats"
down_revision: str | None = "0007_refreshed_at"
branch_labels: str | None = None
depends_on: str | None = None

COUNTERS = ("requests", "served_requests", "served_bytes", "fetched_bytes", "missed_bytes")
GAUGES = ("objects", "stored_bytes", "disk_free")


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        for name in ("served_bytes", "fetched_bytes", "missed_bytes"):
            batch.add_column(sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0")))
    op.create_table(
        "stats",
        sa.Column("period", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bucket", sa.Double, primary_key=True),
        *[sa.Column(name, sa.BigInteger, nullable=False, server_default=sa.text("0")) for name in COUNTERS],
        *[sa.Column(name, sa.BigInteger, nullable=True) for name in GAUGES],
        mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("stats")
    with op.batch_alter_table("entries") as batch:
        for name in ("served_bytes", "fetched_bytes", "missed_bytes"):
            batch.drop_column(name)
