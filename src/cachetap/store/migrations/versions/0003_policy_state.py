"""Cache policy state shared by workers: per-key records (indexed by queue and priority) and values.

Objects stored before this revision get a record in the main queue at priority 0 and count toward
the bytes used, so a quota holds from the first admission on; priority 0 puts them first in line
until they are requested again, when each policy ranks them like any other object.

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
    # Built with SQLAlchemy so that `key` (a reserved word in MySQL) is quoted on every database.
    entries = sa.table("entries", sa.column("key"), sa.column("state"), sa.column("stored_size"), sa.column("hits"))
    records = sa.table("policy_records", *(sa.column(c) for c in ("key", "queue", "priority", "size", "freq", "last")))
    values = sa.table("policy_values", sa.column("name"), sa.column("value"))
    ready = sa.and_(entries.c.state == "ready", entries.c.stored_size.is_not(None))
    op.execute(records.insert().from_select(
        ["key", "queue", "priority", "size", "freq", "last"],
        sa.select(entries.c.key, sa.literal("main"), sa.literal(0.0), entries.c.stored_size, entries.c.hits,
                  sa.literal(0.0)).where(ready)))
    op.execute(values.insert().from_select(
        ["name", "value"], sa.select(sa.literal("used"), sa.func.coalesce(sa.func.sum(entries.c.stored_size), 0))
        .where(ready)))


def downgrade() -> None:
    op.drop_table("policy_values")
    op.drop_index("ix_policy_records_queue_priority", table_name="policy_records")
    op.drop_table("policy_records")
