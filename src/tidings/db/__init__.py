"""Database plumbing: engines, sessions, the declarative Base and portable column types.

Owns connection set-up (SQLite pragmas, PostgreSQL pools) and nothing domain-specific.
"""

from tidings.db.base import Base, table_of
from tidings.db.engine import (
    Database,
    get_database,
    is_postgres,
    json_dumps,
    reset_database,
)
from tidings.db.types import JSONType, UTCDateTime, minute_of

__all__ = [
    "Base",
    "Database",
    "JSONType",
    "UTCDateTime",
    "get_database",
    "is_postgres",
    "json_dumps",
    "minute_of",
    "reset_database",
    "table_of",
]
