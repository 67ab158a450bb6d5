"""events and segment memberships, history and timers: no foreign keys

These tables take several rows per processed message. On PostgreSQL a foreign key checks each
inserted row with a trigger that locks the referenced row: about half the cost of writing an
event, and most of the cost of writing a membership change. Tidings keeps them consistent
itself: the rows of a deleted customer or segment are deleted with it, after it (see
`tidings.segments.membership.forget` and `tidings.customers.batch`), and writers lock the
customers and segments they write rows for.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 21:00:00.000000
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, column, referred table)
KEYS = [
    ("events", "customer_id", "customers"),
    ("segment_members", "segment_id", "segments"),
    ("segment_members", "customer_id", "customers"),
    ("segment_changes", "segment_id", "segments"),
    ("segment_changes", "customer_id", "customers"),
    ("segment_timers", "segment_id", "segments"),
    ("segment_timers", "customer_id", "customers"),
]


def _name(table: str, column: str, referred: str) -> str:
    return f"fk_{table}_{column}_{referred}"


def _tables() -> list[str]:
    return list(dict.fromkeys(table for table, _, _ in KEYS))


def _rebuild(change: Callable[[Any, str, str, str], None]) -> None:
    """SQLite rebuilds each table with the change. Reading the tables back also reads the
    customers table, whose expression index SQLAlchemy does not reflect (and need not here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        for table in _tables():
            with op.batch_alter_table(table) as batch:
                for t, column, referred in KEYS:
                    if t == table:
                        change(batch, t, column, referred)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column, referred in KEYS:
            op.drop_constraint(_name(table, column, referred), table, type_="foreignkey")
        return
    _rebuild(
        lambda batch, t, column, referred: batch.drop_constraint(
            _name(t, column, referred), type_="foreignkey"
        )
    )


def downgrade() -> None:
    # Rows whose customer or segment is gone could not satisfy the keys again.
    for table, column, referred in KEYS:
        op.execute(
            f"DELETE FROM {table} WHERE NOT EXISTS "  # noqa: S608
            f"(SELECT 1 FROM {referred} r WHERE r.id = {table}.{column})"
        )
    if op.get_bind().dialect.name != "sqlite":
        for table, column, referred in KEYS:
            op.create_foreign_key(
                _name(table, column, referred),
                table,
                referred,
                [column],
                ["id"],
                ondelete="CASCADE",
            )
        return
    _rebuild(
        lambda batch, t, column, referred: batch.create_foreign_key(
            _name(t, column, referred), referred, [column], ["id"], ondelete="CASCADE"
        )
    )
