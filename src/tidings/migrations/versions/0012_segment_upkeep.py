"""segment_upkeep: chunks whose segment upkeep runs after their commit

On PostgreSQL the processor evaluates the segments a chunk may have changed on a connection of
its own, while it applies the next chunk. The chunk's transaction records its customers here,
and the evaluation removes the row when it commits, so a crash in between loses no upkeep.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 05:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tidings.db.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_upkeep",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column(
            "customer_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", tidings.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_upkeep")),
    )


def downgrade() -> None:
    op.drop_table("segment_upkeep")
