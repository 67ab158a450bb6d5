"""customers: the list's recency index on the minute of last_seen

Most processed messages only move a customer's last_seen. While last_seen itself was indexed,
each such update wrote a new entry in every index of the customers table (on PostgreSQL an
update that changes an indexed column cannot be HOT). The index is now on `seen_minute`, a
generated column (last_seen truncated to the minute), and the list sorts on (seen_minute,
last_seen, id): an update within the same minute leaves every index alone.

PostgreSQL stores the column (adding it rewrites the table once); SQLite computes it. On
PostgreSQL the table's pages are also left 10% free (fillfactor 90, in effect from the rewrite
on): a HOT update puts the new row version on the same page, so it needs room there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 00:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMN = {
    "postgresql": "seen_minute TIMESTAMP WITHOUT TIME ZONE "
    "GENERATED ALWAYS AS (date_trunc('minute', last_seen)) STORED",
    # The same text layout as the stored datetimes ("\\:" is a colon, not a bind parameter).
    "sqlite": "seen_minute DATETIME "
    "GENERATED ALWAYS AS ((substr(last_seen, 1, 16) || '\\:00.000000')) VIRTUAL",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("ALTER TABLE customers SET (fillfactor = 90)")
    op.execute(f"ALTER TABLE customers ADD COLUMN {COLUMN[dialect]}")
    op.create_index("ix_customers_project_seen_minute", "customers", ["project_id", "seen_minute"])
    op.drop_index("ix_customers_project_last_seen", table_name="customers")


def downgrade() -> None:
    op.create_index("ix_customers_project_last_seen", "customers", ["project_id", "last_seen"])
    op.drop_index("ix_customers_project_seen_minute", table_name="customers")
    op.execute("ALTER TABLE customers DROP COLUMN seen_minute")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customers RESET (fillfactor)")
