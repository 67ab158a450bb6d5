"""The durable inbox: acknowledged request bodies, written with group commit.

Requests hand their body to one writer thread; it commits everything that queued up meanwhile in
a single transaction and only then wakes the requests, so a `200` always means committed, while
concurrent requests share one fsync. The thread keeps one driver connection in autocommit mode
and writes each group as a single multi-row INSERT (one statement is one transaction, and on
PostgreSQL one round trip instead of BEGIN, INSERT, COMMIT): at thousands of small commits a
second, the engine's per-transaction bookkeeping would cost more than the insert itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from tidings.db import Database, is_postgres, table_of
from tidings.ingest.models import InboxBase, InboxItem

log = logging.getLogger(__name__)
_MAX_GROUP = 512


@dataclass(slots=True)
class Pending:
    project_id: int
    kind: str
    body: bytes
    received_at: datetime
    ip: str | None
    messages: int
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class InboxWriter:
    """Group-committing writer of inbox rows (one thread per process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.received_messages = 0
        self.received_requests = 0
        table = table_of(InboxItem)
        names = ("project_id", "kind", "body", "received_at", "ip", "token")
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._head = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES "  # noqa: S608
        self._row = "(" + ", ".join([mark] * len(names)) + ")"
        self._statements: dict[int, str] = {}
        # The column type's own conversion (naive UTC, as text on SQLite), so rows read back
        # through the table exactly as the ORM would have written them.
        stamp_type = table.c.received_at.type.dialect_impl(engine.dialect)
        convert = stamp_type.bind_processor(engine.dialect)
        self._stamp: Callable[[datetime], Any] = convert or (lambda value: value)
        self._postgres = is_postgres(engine)
        self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self._thread.start()

    async def write(
        self,
        *,
        project_id: int,
        kind: str,
        body: bytes,
        received_at: datetime,
        ip: str | None,
        messages: int,
    ) -> None:
        """Commit one request body; returns only once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.queue.put(Pending(project_id, kind, body, received_at, ip, messages, fut, loop))
        await fut

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        """Take what is queued, commit it, wake its requests; repeat."""
        raw: Any = None
        cursor: Any = None  # kept too: a new cursor per group is a good part of a small insert
        try:
            while True:
                group = self._take()
                if group is None:
                    return
                error: BaseException | None = None
                try:
                    if raw is None:
                        raw = self._connect()
                        cursor = raw.driver_connection.cursor()
                    self._insert(cursor, group)
                except Exception as exc:
                    log.exception("inbox write failed", extra={"requests": len(group)})
                    error = exc
                    _discard(raw)
                    raw = cursor = None
                else:
                    self.received_requests += len(group)
                    self.received_messages += sum(p.messages for p in group)
                for p in group:
                    p.loop.call_soon_threadsafe(_resolve, p.future, error)
        finally:
            if raw is not None:
                cursor.close()
                if self._postgres:
                    raw.driver_connection.autocommit = False
                raw.close()

    def _take(self) -> list[Pending] | None:
        """The next request and whatever queued behind it (None: the writer is closing)."""
        first = self.queue.get()
        if first is None:
            return None
        group = [first]
        while len(group) < _MAX_GROUP:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)
                break
            group.append(item)
        return group

    def _connect(self) -> Any:
        raw = self.engine.raw_connection()
        if self._postgres:  # SQLite connections are already in autocommit mode
            raw.driver_connection.autocommit = True  # type: ignore[union-attr]
        return raw

    def _insert(self, cursor: Any, group: list[Pending]) -> None:
        """The group's rows with one statement (autocommit: the statement is the transaction)."""
        sql = self._statements.get(len(group))
        if sql is None:
            sql = self._statements[len(group)] = self._head + ", ".join([self._row] * len(group))
        stamp = self._stamp
        params: list[Any] = []
        for p in group:
            params += (p.project_id, p.kind, p.body, stamp(p.received_at), p.ip, uuid.uuid4().hex)
        cursor.execute(sql, params)


def _discard(raw: Any) -> None:
    """Drop a connection after a failure; the next group opens a fresh one."""
    if raw is not None:
        try:
            raw.invalidate()
        except Exception:  # pragma: no cover - the connection is gone either way
            log.debug("closing the inbox connection failed", exc_info=True)


def ensure_inbox_schema(db: Database) -> None:
    """Create the inbox table in its own SQLite file (the main schema is Alembic's)."""
    if db.separate_inbox:
        InboxBase.metadata.create_all(db.inbox_engine)


def backlog(db: Database) -> tuple[int, datetime | None]:
    """How many requests wait in the inbox, and when the oldest arrived.

    Both come from the primary key, never from counting rows, so a metrics scrape costs the
    same however large the backlog: the count is the span of ids between the oldest and the
    newest waiting request (requests are numbered as they are stored and applied oldest first;
    an insert rolled back inside the span counts until the span moves past it).
    """
    table = table_of(InboxItem)
    with db.inbox_engine.connect() as conn:
        low, high = conn.execute(select(func.min(table.c.id), func.max(table.c.id))).one()
        if low is None:
            return 0, None
        oldest = conn.execute(select(table.c.received_at).where(table.c.id == low)).scalar()
    return int(high) - int(low) + 1, oldest
