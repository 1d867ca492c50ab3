"""Who holds a claim: `entries.claimed_by` ("<hostname>:<pid>" of the worker process).

A worker restarted on the same machine takes back the downloads its dead predecessor held at once,
instead of waiting for their lease to lapse.

Revision ID: 0004_claimed_by
Revises: 0003_policy_state
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_claimed_by"
down_revision: str | None = "0003_policy_state"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("claimed_by")
