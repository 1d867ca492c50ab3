"""Initial catalog: entries (one per cache key) and hits (one per request seen).

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Kept literally here (not imported from models) so this revision never changes with the models.
MYSQL_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("hits", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_hit", sa.Double(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(255), nullable=True),
        sa.Column("etag", sa.String(255), nullable=True),
        sa.Column("last_modified", sa.String(64), nullable=True),
        sa.Column("cache_control", sa.String(255), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("claimed_at", sa.Double(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("blob", sa.String(64), nullable=True),
        sa.Column("stored_size", sa.BigInteger(), nullable=True),
        sa.Column("published_at", sa.Double(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("speed", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("key", name="uq_entries_key"),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_entries_state", "entries", ["state"])
    op.create_table(
        "hits",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("client", sa.String(45), nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    op.create_index("ix_hits_key_ts", "hits", ["key", "ts"])


def downgrade() -> None:
    op.drop_index("ix_hits_key_ts", table_name="hits")
    op.drop_table("hits")
    op.drop_index("ix_entries_state", table_name="entries")
    op.drop_table("entries")
