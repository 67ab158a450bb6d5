"""events: the customer timeline index also carries the type and the name

Segment upkeep summarizes the event conditions of a customer's segments from the customer's
events: with these columns in the index, conditions on the event alone never read the table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 06:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME = "ix_events_customer_timeline"


def upgrade() -> None:
    op.drop_index(NAME, table_name="events")
    op.create_index(NAME, "events", ["customer_id", "timestamp", "id", "type", "name"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="events")
    op.create_index(NAME, "events", ["customer_id", "timestamp", "id"])
