"""An index on (queue, last) of `policy_records`: the LRFU policy asks for the resident requested
longest ago at each eviction.

Revision ID: 0010_policy_last_index
Revises: 0009_entry_disk
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision: str = "0010_policy_last_index"
down_revision: str | None = "0009_entry_disk"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_policy_records_queue_last", "policy_records", ["queue", "last"])


def downgrade() -> None:
    op.drop_index("ix_policy_records_queue_last", table_name="policy_records")
