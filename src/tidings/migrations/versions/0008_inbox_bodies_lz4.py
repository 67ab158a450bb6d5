"""inbox bodies compressed with LZ4 on PostgreSQL

A batch request's body (about 50 KB for 100 messages) is stored out of line and compressed.
PostgreSQL's default compression (pglz) costs the request path about four times what LZ4
does, and the processor pays again to decompress it. Servers built without LZ4 (or before
PostgreSQL 14) keep the default. SQLite stores the inbox uncompressed in its own file.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 23:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _lz4_available() -> bool:
    available = op.get_bind().execute(
        sa.text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
    )
    return bool(available.scalar())


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql" and _lz4_available():
        # New values only: rows already stored keep their compression, and are read alike.
        op.execute("ALTER TABLE inbox ALTER COLUMN body SET COMPRESSION lz4")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql" and _lz4_available():
        op.execute("ALTER TABLE inbox ALTER COLUMN body SET COMPRESSION default")
