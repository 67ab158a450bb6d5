"""Bulk writes for the ingestion hot path, below SQLAlchemy's per-row parameter processing.

SQLAlchemy's executemany costs tens of microseconds a row in type processing; the processor
writes several rows per message, so it adapts values itself (one function per dialect) and
hands tuples to the driver: executemany on SQLite, COPY on PostgreSQL. Values must be adapted
with `Bulk.dt` / `Bulk.json` so they read back exactly as SQLAlchemy would have stored them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.postgres import types as postgres_types
from psycopg.pq import Format
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.engine import json_dumps

# A duplicate key, whether it came through SQLAlchemy or straight from a driver's cursor.
DUPLICATE_KEY = (IntegrityError, sqlite3.IntegrityError, psycopg.errors.UniqueViolation)


def _sqlite_dt(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format: naive UTC, always with microseconds (the
    # aware UTC text without its "+00:00").
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


@lru_cache(maxsize=65536)
def _pg_dt(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def _read_sqlite_dt(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:  # not in the storage format (it carries an offset of its own)
        return datetime.fromisoformat(value).astimezone(UTC)


def _json_list(values: Iterable[Any]) -> str:
    """Values (or rows of values) as one JSON array: a statement parameter the database
    expands (jsonb_array_elements, json_each). psycopg adapts a Python list to an array
    value by value in Python (about 6 µs a timestamp); orjson writes the whole list at once.
    Datetimes must be adapted with `Bulk.dt` (naive UTC), as for every other write."""
    return orjson.dumps(list(values)).decode()


class _JsonbText(Dumper):
    """jsonb in binary format from JSON text (what `Bulk.json` makes): psycopg's own jsonb
    dumper serializes its argument, which would store the text as a JSON string."""

    oid = postgres_types["jsonb"].oid
    format = Format.BINARY

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()  # jsonb's binary format: a version byte, then the text


IN_CHUNK = 500  # values per IN (...) list: far below every database's bound-parameter limit


def bulk_dt(postgres: bool) -> Callable[[datetime], Any]:
    """How a UTCDateTime column stores a datetime on this dialect (see Bulk.dt)."""
    return _pg_dt if postgres else _sqlite_dt


def chunks(values: Iterable[Any], size: int = IN_CHUNK) -> Iterable[list[Any]]:
    """The values in lists of at most `size`, for IN (...) queries and batched writes."""
    items = list(values)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Bulk:
    """Raw bulk statements on the session's connection, in its transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.postgres = session.get_bind().dialect.name == "postgresql"
        self.json = json_dumps  # the same serializer as every JSON column
        self.mark = "%s" if self.postgres else "?"

    def dt(self, value: datetime | None) -> Any:
        """A datetime as the UTCDateTime column stores it on this dialect."""
        if value is None:
            return None
        return _pg_dt(value) if self.postgres else _sqlite_dt(value)

    def read_dt(self, value: Any) -> datetime | None:
        """A stored datetime back as aware UTC."""
        if value is None:
            return None
        if isinstance(value, str):
            return _read_sqlite_dt(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)

    def read_json(self, value: Any) -> Any:
        """A stored JSON value (its text, or what psycopg decoded from jsonb) back as Python."""
        if isinstance(value, str | bytes):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:  # a number beyond a double (jsonb is numeric)
                return json.loads(value)
        return value

    def select_in(
        self,
        sql: str,
        column: str,
        values: Sequence[Any],
        params: Sequence[Any] = (),
        *,
        lock: str | None = None,
        probe: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Run `sql` (which ends in a WHERE clause) with `AND column IN (values)` appended;
        `sql` uses `{m}` for its own placeholders. `lock` ("NO KEY UPDATE", "KEY SHARE") takes
        row locks of that strength on PostgreSQL, in the order of `column` (SQLite writers
        already hold the database lock): with NO KEY UPDATE a read-modify-write loses no
        update, with KEY SHARE the rows cannot be deleted before this transaction ends (and the
        two do not block each other).

        `probe` is for lookups by a key an index covers along with `sql`'s own conditions
        (`project_id = {m} AND user_id IN ...`). On PostgreSQL they then run as one index probe
        per value, whatever the table's statistics say: a table never analyzed, or a project
        newer than its statistics, estimates `project_id = {m}` at a few rows, and the planner
        would read every row of the project and filter them instead, once per call."""
        if not values:
            return []
        if probe and self.postgres:
            kind = "bigint" if isinstance(values[0], int) else "text"
            inner = sql.format(m=self.mark) + f" AND {column} = x.v OFFSET 0"
            if lock is not None:
                inner += f" FOR {lock}"
            query = (
                f"SELECT s.* FROM (SELECT CAST(value AS {kind}) AS v "  # noqa: S608
                "FROM jsonb_array_elements_text(CAST(%s AS jsonb))) AS x "
                f"CROSS JOIN LATERAL ({inner}) AS s"
            )
            args: tuple[Any, ...] = (_json_list(dict.fromkeys(values)), *params)
        else:
            query = self._in(sql, column, values)
            if lock is not None and self.postgres:
                # Rows are locked in the order of `column`, as other writers lock them.
                query += f" ORDER BY {column} FOR {lock}"
            args = (*params, *values)
        cur = self._cursor()
        try:
            cur.execute(query, args)
            return list(cur.fetchall())
        finally:
            cur.close()

    def execute_in(
        self, sql: str, column: str, values: Sequence[Any], params: Sequence[Any] = ()
    ) -> int:
        """Run `sql` (an UPDATE or DELETE ending in a WHERE clause) with `AND column IN
        (values)` appended, as `select_in` does; the number of rows it changed."""
        if not values:
            return 0
        cur = self._cursor()
        try:
            cur.execute(self._in(sql, column, values), (*params, *values))
            return int(cur.rowcount)
        finally:
            cur.close()

    def _in(self, sql: str, column: str, values: Sequence[Any]) -> str:
        marks = ", ".join([self.mark] * len(values))
        return sql.format(m=self.mark) + f" AND {column} IN ({marks})"

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run `sql` (with `{m}` for its placeholders) and return its rows."""
        cur = self._cursor()
        try:
            cur.execute(sql.format(m=self.mark), tuple(params))
            return list(cur.fetchall()) if cur.description is not None else []
        finally:
            cur.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run `sql` (with `{m}` for its placeholders) once; the number of rows it changed."""
        cur = self._cursor()
        try:
            cur.execute(sql.format(m=self.mark), tuple(params))
            return int(cur.rowcount)
        finally:
            cur.close()

    def id_set(self, ids: Sequence[int]) -> tuple[str, Any]:
        """A subquery listing `ids` from one parameter, and that parameter: one statement takes
        any number of them, and the database walks them without a row of Python each."""
        if self.postgres:
            return "SELECT unnest(CAST({m} AS bigint[]))", list(ids)
        return "SELECT value FROM json_each({m})", _json_list(ids)

    def row_set(
        self, types: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, tuple[Any, ...]]:
        """A subquery listing `rows` as columns c0, c1, ... (of these PostgreSQL types) from
        one parameter, and that parameter; values adapted as for `insert`."""
        if self.postgres:
            cols = ", ".join(f"CAST(e ->> {i} AS {t}) AS c{i}" for i, t in enumerate(types))
            listed = f"SELECT {cols} FROM jsonb_array_elements(CAST({{m}} AS jsonb)) AS e"  # noqa: S608
            return listed, (_json_list(rows),)
        cols = ", ".join(f"json_extract(value, '$[{i}]') AS c{i}" for i in range(len(types)))
        listed = f"SELECT {cols} FROM json_each({{m}})"  # noqa: S608
        return listed, (_json_list(rows),)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run `sql` (with `{m}` for its placeholders) once per row."""
        if not rows:
            return
        cur = self._cursor()
        try:
            cur.executemany(sql.format(m=self.mark), rows)
        finally:
            cur.close()

    def _cursor(self) -> Any:
        dbapi = self.session.connection().connection.driver_connection
        assert dbapi is not None
        return dbapi.cursor()

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        types: Sequence[str] | None = None,
    ) -> None:
        """Insert many rows (COPY on PostgreSQL). Given the columns' PostgreSQL `types` (their
        exact types, "int4" not "integer": binary data is not converted), PostgreSQL gets them
        in COPY's binary format, which it reads with less work than text (no timestamps or
        numbers to parse); JSON columns still take JSON text."""
        if not rows:
            return
        cols = ", ".join(columns)
        cur = self._cursor()
        try:
            if self.postgres:
                binary = " (FORMAT BINARY)" if types is not None else ""
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN{binary}") as copy:
                    if types is not None:
                        cur.adapters.register_dumper(None, _JsonbText)
                        copy.set_types(list(types))
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" * len(columns))
                cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)  # noqa: S608
        finally:
            cur.close()

    def update(
        self,
        table: str,
        columns: Sequence[str],
        key: str,
        rows: Sequence[Sequence[Any]],
        *,
        types: Sequence[str] | None = None,
    ) -> None:
        """UPDATE table SET columns WHERE key = last value of each row. With the columns' and
        the key's PostgreSQL `types`, PostgreSQL updates every row in one statement (see
        `row_set`) instead of one statement a row."""
        if not rows:
            return
        if types is not None and self.postgres:
            listed, params = self.row_set(types, rows)
            sets = ", ".join(f"{c} = r.c{i}" for i, c in enumerate(columns))
            self.execute(
                f"UPDATE {table} AS t SET {sets} FROM ({listed}) AS r "  # noqa: S608
                f"WHERE t.{key} = r.c{len(columns)}",
                params,
            )
            return
        sets = ", ".join(f"{c} = {{m}}" for c in columns)
        self.execute_many(f"UPDATE {table} SET {sets} WHERE {key} = {{m}}", rows)  # noqa: S608

    def delete(
        self,
        table: str,
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        types: Sequence[str] | None = None,
    ) -> None:
        """DELETE FROM table WHERE keys = each row's values. With the keys' PostgreSQL `types`,
        PostgreSQL deletes every row in one statement (see `row_set`)."""
        if not rows:
            return
        if types is not None and self.postgres:
            listed, params = self.row_set(types, rows)
            match = " AND ".join(f"t.{k} = r.c{i}" for i, k in enumerate(keys))
            self.execute(f"DELETE FROM {table} AS t USING ({listed}) AS r WHERE {match}", params)  # noqa: S608
            return
        where = " AND ".join(f"{k} = {{m}}" for k in keys)
        self.execute_many(f"DELETE FROM {table} WHERE {where}", rows)  # noqa: S608

    def allocate_ids(self, table: str, count: int) -> list[int]:
        """Reserve `count` primary keys for rows inserted in this transaction."""
        if count <= 0:
            return []
        if self.postgres:
            rows = self.session.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"
                ),
                {"t": table, "n": count},
            ).scalars()
            return [int(v) for v in rows]
        # SQLite writers hold the database lock for the whole (IMMEDIATE) transaction, so
        # MAX(id) cannot move under us.
        top = self.session.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar()  # noqa: S608
        # An AUTOINCREMENT table never reuses an id, even one whose row was deleted.
        seq = self.session.execute(
            text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}
        ).scalar()
        start = max(int(top or 0), int(seq or 0)) + 1
        return list(range(start, start + count))
