"""segment_growth: entries and exits counted by the hour; no change log, no member customer index

Every entry and exit is on the customer's timeline (an event of type "segment"); what a segment
needs besides is its growth. `segment_growth` counts it per segment and hour, from the change
log's entries and exits that were not a full computation's, and the log goes. The members' index
by customer goes too: memberships are read by (segment, customer) pairs, or across a project's
segments, by the primary key. Each of the two took a write to a page of its own for every entry
and exit.

A downgrade brings back an empty change log (growth since then is lost) and the index.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24 09:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.db.types

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The hour (hours since 1970-01-01 UTC) of a stored instant, on each database.
_HOUR = {
    "sqlite": "CAST(strftime('%s', substr(at, 1, 19)) AS INTEGER) / 3600",  # whole seconds
    "postgresql": "CAST(floor(extract(epoch FROM at) / 3600) AS integer)",
}


def upgrade() -> None:
    op.create_table(
        "segment_growth",
        sa.Column("segment_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hour", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("entered", sa.Integer(), nullable=False),
        sa.Column("exited", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "hour", name=op.f("pk_segment_growth")),
    )
    hour = _HOUR[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO segment_growth (segment_id, hour, entered, exited) "  # noqa: S608
        f"SELECT segment_id, {hour}, "
        "sum(CASE WHEN change = 'entered' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN change = 'exited' THEN 1 ELSE 0 END) "
        f"FROM segment_changes WHERE source != 'compute' GROUP BY segment_id, {hour}"
    )
    op.drop_table("segment_changes")
    op.drop_index("ix_segment_members_customer", table_name="segment_members")


def downgrade() -> None:
    op.create_index("ix_segment_members_customer", "segment_members", ["customer_id", "segment_id"])
    op.create_table(
        "segment_changes",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", _BigId, nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )
    op.create_index("ix_segment_changes_customer", "segment_changes", ["customer_id"])
    op.create_index("ix_segment_changes_segment_at", "segment_changes", ["segment_id", "at"])
    op.drop_table("segment_growth")
