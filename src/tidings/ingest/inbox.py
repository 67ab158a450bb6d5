"""The durable inbox: acknowledged request bodies, written with group commit.

Requests hand their body to one writer thread; it commits everything that queued up meanwhile in
a single transaction and only then wakes the requests, so a `200` always means committed, while
concurrent requests share one fsync.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, select

from tidings.db import Database, table_of
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
    """Group-committing writer of inbox rows (one per process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.received_messages = 0
        self.received_requests = 0
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
        stmt = insert(table_of(InboxItem))
        while True:
            first = self.queue.get()
            if first is None:
                return
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
            rows = [
                {
                    "project_id": p.project_id,
                    "kind": p.kind,
                    "body": p.body,
                    "received_at": p.received_at,
                    "ip": p.ip,
                    "token": uuid.uuid4().hex,
                }
                for p in group
            ]
            error: BaseException | None = None
            try:
                with self.engine.begin() as conn:
                    conn.execute(stmt, rows)
            except Exception as exc:
                log.exception("inbox write failed", extra={"requests": len(group)})
                error = exc
            if error is None:
                self.received_requests += len(group)
                self.received_messages += sum(p.messages for p in group)
            for p in group:
                p.loop.call_soon_threadsafe(_resolve, p.future, error)


def ensure_inbox_schema(db: Database) -> None:
    """Create the inbox table in its own SQLite file (the main schema is Alembic's)."""
    if db.separate_inbox:
        InboxBase.metadata.create_all(db.inbox_engine)


def backlog(db: Database) -> tuple[int, datetime | None]:
    """How many requests wait in the inbox, and when the oldest arrived."""
    table = table_of(InboxItem)
    with db.inbox_engine.connect() as conn:
        # min() keeps the column's UTCDateTime type, so `oldest` is already aware UTC.
        count, oldest = conn.execute(select(func.count(), func.min(table.c.received_at))).one()
    return int(count), oldest
