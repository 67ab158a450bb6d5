"""Portable column types: JSON (JSONB on PostgreSQL) and aware-UTC datetimes, and the minute
of a stored datetime (for generated columns)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive datetimes on the way in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class minute_of(FunctionElement[datetime]):  # a SQL function, named as SQLAlchemy names them
    """A UTCDateTime column's value truncated to the minute, in the column's own storage form
    (a timestamp on PostgreSQL, the same text layout on SQLite), so it compares and sorts with
    values bound as UTCDateTime."""

    type = UTCDateTime()
    name = "minute_of"
    inherit_cache = True


@compiles(minute_of, "postgresql")
def _minute_of_postgresql(element: minute_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date_trunc('minute', {compiler.process(element.clauses, **kw)})"


@compiles(minute_of)
def _minute_of_sqlite(element: minute_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(substr({compiler.process(element.clauses, **kw)}, 1, 16) || ':00.000000')"
