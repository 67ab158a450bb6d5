"""Engines and sessions for the main database and the ingestion inbox.

On SQLite the inbox lives in its own file so that acknowledging a request never waits for the
processor's write lock; on PostgreSQL both are the same database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tidings.config import Settings, get_settings


def json_dumps(value: Any) -> str:
    """Compact JSON text (orjson), used for every JSON column."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def is_postgres(engine: Engine) -> bool:
    """True when the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def _make_engine(url: str, *, synchronous: str, autocheckpoint: int) -> Engine:
    kwargs: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so transactions are real (pysqlite defers them).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA temp_store=MEMORY")
            # Checkpoint in large steps: a page written by many commits goes back to the
            # database file once per checkpoint, so fewer, larger checkpoints write less.
            cur.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            options = conn.get_execution_options()
            # Foreign keys are looked up row by row unless a bulk load asks otherwise (see
            # Database.session); the pragma only takes effect outside a transaction, so every
            # transaction sets it as it needs before it begins.
            checked = not options.get("sqlite_bulk")
            if conn.info.get("foreign_keys", True) != checked:
                conn.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if checked else 'OFF'}")
                conn.info["foreign_keys"] = checked
            # Writers take the lock up front (IMMEDIATE): a deferred transaction that reads and
            # then writes fails at once under WAL when another writer committed in between.
            if options.get("sqlite_immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    kwargs["pool_size"] = 10
    kwargs["max_overflow"] = 20
    kwargs["pool_pre_ping"] = True
    # psycopg prepares a statement once a connection has run it five times, and PostgreSQL
    # may then switch it to a generic plan made without the parameters' values. For the
    # bulk statements here (an IN list of 500 message ids, a chunk's customers) such a plan
    # can read the whole table: every execution is planned for its own values instead.
    kwargs["connect_args"] = {"options": "-c plan_cache_mode=force_custom_plan"}
    return create_engine(url, **kwargs)


class Database:
    """The main engine, the inbox engine and their session factories."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The main file checkpoints every 40,000 pages (a WAL of up to about 160 MB): the
        # processor rewrites the same index pages chunk after chunk, and each checkpoint writes
        # them once. The inbox keeps shorter checkpoints: they run in request handlers.
        self.engine = _make_engine(
            settings.database_url, synchronous="NORMAL", autocheckpoint=40_000
        )
        inbox_url = settings.effective_inbox_url()
        if inbox_url == settings.database_url:
            self.inbox_engine = self.engine
        else:
            self.inbox_engine = _make_engine(
                inbox_url, synchronous=settings.inbox_sync.upper(), autocheckpoint=10_000
            )
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # Core connections for short write transactions on hot paths (no ORM session).
        self.write_engine = self.engine.execution_options(sqlite_immediate=True)
        self.write_sessionmaker = sessionmaker(self.write_engine, expire_on_commit=False)
        self.bulk_sessionmaker = sessionmaker(
            self.write_engine.execution_options(sqlite_bulk=True), expire_on_commit=False
        )
        self.inbox_write_engine = self.inbox_engine.execution_options(sqlite_immediate=True)

    @property
    def separate_inbox(self) -> bool:
        return self.inbox_engine is not self.engine

    @contextmanager
    def session(self, *, write: bool = False, bulk: bool = False) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on error.

        `bulk` is a write that checks, in the same transaction, that every row it references
        exists: on SQLite, whose single writer lock keeps those rows in place until it commits,
        the per-row foreign-key lookups are left out (they cost as much as the insert itself,
        a random read of the parent table each) and so are cascades, so a bulk unit of work
        deletes nothing that other rows reference. PostgreSQL checks as always.
        """
        if bulk:
            maker = self.bulk_sessionmaker
        else:
            maker = self.write_sessionmaker if write else self.sessionmaker
        with maker() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self.separate_inbox:
            self.inbox_engine.dispose()


_lock = threading.Lock()
_database: Database | None = None


def get_database() -> Database:
    """The process-wide Database built from the settings."""
    global _database
    with _lock:
        if _database is None:
            _database = Database(get_settings())
        return _database


def reset_database() -> None:
    """Drop the cached Database (tests switch settings between runs)."""
    global _database
    with _lock:
        if _database is not None:
            _database.dispose()
        _database = None
