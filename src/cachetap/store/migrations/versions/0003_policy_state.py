"""Cache policy state shared by workers: per-key records (indexed by queue and priority) and values.

Revision ID: 0003_policy_state
Revises: 0002_secrets
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_policy_state"
down_revision: str | None = "0002_secrets"
branch_labels: str | None = None
depends_on: str | None = None

MYSQL_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "policy_records",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("queue", sa.String(16), nullable=False),
        sa.Column("priority", sa.Double(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("freq", sa.Double(), nullable=False),
        sa.Column("last", sa.Double(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_policy_records_queue_priority", "policy_records", ["queue", "priority"])
    op.create_table(
        "policy_values",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Double(), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("policy_values")
    op.drop_index("ix_policy_records_queue_priority", table_name="policy_records")
    op.drop_table("policy_records")
