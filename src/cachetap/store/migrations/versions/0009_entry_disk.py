"""Which disk of its node holds each stored object (`entries.disk`, a `cache_dirs` path).

Revision ID: 0009_entry_disk
Revises: 0008_console_stats
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009_entry_disk"
down_revision: str | None = "0008_console_stats"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("disk", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("disk")
