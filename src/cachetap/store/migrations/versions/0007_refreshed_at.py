"""When a revalidation last confirmed an entry: `entries.refreshed_at`, until the cache server's first
answer after it takes it (logged TCP_REFRESH_HIT, as Squid logs a stale hit its origin confirmed).

Revision ID: 0007_refreshed_at
Revises: 0006_leases
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_refreshed_at"
down_revision: str | None = "0006_leases"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("refreshed_at", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("refreshed_at")
