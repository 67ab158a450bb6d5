"""segment_writes: a count of the transactions that evaluate memberships outside upkeep rounds

On SQLite, segment upkeep beside the processor evaluates a round's customers in a snapshot while
the processor writes, then writes under the lock what no one else changed meanwhile. Chunks say
which customers they changed (`segment_upkeep`); this count says that another writer (a timer, a
refresh) evaluated memberships in between, and the round evaluates again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_writes",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_writes")),
    )
    op.execute("INSERT INTO segment_writes (id, serial) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("segment_writes")
