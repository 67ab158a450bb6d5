"""segment_members: the customer index covers the segment too

Segment upkeep reads the memberships of a chunk's customers by this index. With the customer id
alone, each membership found costs a lookup of its row for the segment id (on SQLite a seek into
the table, on PostgreSQL a heap fetch); with both, the index answers alone.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 03:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_segment_members_customer", table_name="segment_members")
    op.create_index("ix_segment_members_customer", "segment_members", ["customer_id", "segment_id"])


def downgrade() -> None:
    op.drop_index("ix_segment_members_customer", table_name="segment_members")
    op.create_index("ix_segment_members_customer", "segment_members", ["customer_id"])
