"""segment_timers: one timer per customer instead of one per (segment, customer)

A customer's timer is the earliest instant at which time alone may change one of its
memberships, in any segment: a message that enters a customer into several "active in the last
N days" segments writes one timer instead of one per segment, and only when it comes earlier
than the one already set. When it falls due, every time-based segment is evaluated for the
customer, and the timer is set again to the exact next instant.

Each customer keeps the earliest of its timers. Downgrading gives each customer with a timer
that instant in every segment of its project: each falls due then, is evaluated and planned
again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 03:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tidings.db.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CUSTOMER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.execute(
        "CREATE TABLE segment_timers_earliest AS SELECT customer_id, "
        "MIN(project_id) AS project_id, MIN(due_at) AS due_at "
        "FROM segment_timers GROUP BY customer_id"
    )
    op.drop_table("segment_timers")
    op.create_table(
        "segment_timers",
        sa.Column("customer_id", CUSTOMER_ID, autoincrement=False, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("due_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_segment_timers")),
    )
    op.create_index("ix_segment_timers_due", "segment_timers", ["due_at"])
    op.execute(
        "INSERT INTO segment_timers (customer_id, project_id, due_at) "
        "SELECT customer_id, project_id, due_at FROM segment_timers_earliest"
    )
    op.drop_table("segment_timers_earliest")


def downgrade() -> None:
    op.execute(
        "CREATE TABLE segment_timers_earliest AS SELECT customer_id, project_id, due_at "
        "FROM segment_timers"
    )
    op.drop_table("segment_timers")
    op.create_table(
        "segment_timers",
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", CUSTOMER_ID, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("due_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "customer_id", name=op.f("pk_segment_timers")),
    )
    op.create_index("ix_segment_timers_due", "segment_timers", ["due_at"])
    op.create_index("ix_segment_timers_customer", "segment_timers", ["customer_id"])
    op.execute(
        "INSERT INTO segment_timers (segment_id, customer_id, project_id, due_at) "
        "SELECT s.id, t.customer_id, t.project_id, t.due_at FROM segment_timers_earliest t "
        "JOIN segments s ON s.project_id = t.project_id"
    )
    op.drop_table("segment_timers_earliest")
