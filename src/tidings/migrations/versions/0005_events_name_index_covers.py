"""events: the name + time index also carries the customer and the type

Event conditions of segments (first / last performed, performed within a window) group one
event's rows by customer: with these columns in the index they never read the table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 02:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ["project_id", "name", "timestamp", "customer_id", "type"]


def upgrade() -> None:
    op.create_index("ix_events_project_name_timestamp_customer", "events", COLUMNS, unique=False)
    op.drop_index("ix_events_project_name_timestamp", table_name="events")


def downgrade() -> None:
    op.create_index(
        "ix_events_project_name_timestamp", "events", ["project_id", "name", "timestamp"]
    )
    op.drop_index("ix_events_project_name_timestamp_customer", table_name="events")
