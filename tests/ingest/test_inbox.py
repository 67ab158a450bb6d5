"""The inbox writer: rows read back through the table exactly as written, and a failed group
commit fails only its own requests (the next one gets a fresh connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select

from tests.cli_support import scratch_db
from tidings.db import Database, table_of
from tidings.ingest.inbox import InboxWriter, backlog, ensure_inbox_schema
from tidings.ingest.models import InboxBase, InboxItem
from tidings.ingest.processor import InboxReader, read_chunk


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[Database]:
    with scratch_db(backend, tmp_path) as database:
        ensure_inbox_schema(database)
        yield database


async def _write(writer: InboxWriter, n: int, at: datetime) -> list[BaseException | None]:
    async def one(i: int) -> None:
        await writer.write(
            project_id=7,
            kind="track",
            body=b'{"n":%d}' % i,
            received_at=at,
            ip="10.0.0.1",
            messages=1,
        )

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def _rows(db: Database) -> list[tuple[int, str, bytes, datetime, str | None, str]]:
    table = table_of(InboxItem)
    with db.inbox_engine.connect() as conn:
        stmt = select(
            table.c.project_id,
            table.c.kind,
            table.c.body,
            table.c.received_at,
            table.c.ip,
            table.c.token,
        ).order_by(table.c.id)
        return [tuple(row) for row in conn.execute(stmt)]  # type: ignore[misc]


@pytest.mark.parametrize("micro", [890123, 0])
def test_rows_read_back_as_written(db: Database, micro: int) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, micro, tzinfo=UTC)
    writer = InboxWriter(db.inbox_write_engine)
    try:
        assert asyncio.run(_write(writer, 20, at)) == [None] * 20
    finally:
        writer.close()
    rows = _rows(db)
    assert sorted(r[2] for r in rows) == sorted(b'{"n":%d}' % i for i in range(20))
    assert {(r[0], r[1], r[3], r[4]) for r in rows} == {(7, "track", at, "10.0.0.1")}
    with db.inbox_engine.connect() as conn:  # stored as the ORM stores it, so it sorts alike
        stored = conn.exec_driver_sql("SELECT received_at FROM inbox").scalars().all()
    assert all(str(v).endswith(f".{micro:06d}") or not db.separate_inbox for v in stored)
    assert len({r[5] for r in rows}) == 20
    assert all(len(r[5]) == 32 for r in rows)
    assert (writer.received_requests, writer.received_messages) == (20, 20)


def test_a_failed_commit_fails_its_requests_and_the_writer_recovers(db: Database) -> None:
    at = datetime.now(UTC)
    writer = InboxWriter(db.inbox_write_engine)
    try:
        assert asyncio.run(_write(writer, 3, at)) == [None] * 3
        InboxBase.metadata.drop_all(db.inbox_engine)
        failed = asyncio.run(_write(writer, 4, at))
        assert len(failed) == 4
        assert all(isinstance(e, Exception) for e in failed)
        InboxBase.metadata.create_all(db.inbox_engine)
        assert asyncio.run(_write(writer, 5, at)) == [None] * 5
    finally:
        writer.close()
    assert len(_rows(db)) == 5
    assert (writer.received_requests, writer.received_messages) == (8, 8)


def test_a_chunk_is_about_the_limit_whatever_the_mix(db: Database) -> None:
    """Single-message rows and batch rows alike fill a chunk up to the limit, in id order."""
    at = datetime.now(UTC)
    writer = InboxWriter(db.inbox_write_engine)

    async def fill() -> None:
        for i in range(70):
            await writer.write(
                project_id=1,
                kind="track",
                body=b'{"messageId":"s%d"}' % i,
                received_at=at,
                ip=None,
                messages=1,
            )
        batch = b'{"batch":[%s]}' % b",".join(b'{"messageId":"b%d"}' % i for i in range(100))
        for _ in range(3):
            await writer.write(
                project_id=1, kind="batch", body=batch, received_at=at, ip=None, messages=100
            )

    try:
        asyncio.run(fill())
    finally:
        writer.close()
    first = read_chunk(db, limit=50)
    assert [e.message_id for e in first.entries] == [f"s{i}" for i in range(50)]
    assert len(first.inbox_ids) == 50
    assert first.inbox_ids == sorted(first.inbox_ids)
    # The rest of the singles, then whole batch rows until the limit is reached.
    with db.inbox_engine.begin() as conn:
        conn.execute(
            delete(table_of(InboxItem)).where(table_of(InboxItem).c.id.in_(first.inbox_ids))
        )
    second = read_chunk(db, limit=150)
    assert len(second.inbox_ids) == 22
    assert len(second.entries) == 220
    assert second.inbox_ids[0] > first.inbox_ids[-1]
    everything = read_chunk(db, limit=10_000)
    assert len(everything.entries) == 320


def _singles(db: Database, names: list[str], at: datetime | None = None) -> None:
    writer = InboxWriter(db.inbox_write_engine)

    async def fill() -> None:
        for name in names:
            await writer.write(
                project_id=1,
                kind="track",
                body=b'{"messageId":"%s","userId":"u","event":"E"}' % name.encode(),
                received_at=at or datetime.now(UTC),
                ip=None,
                messages=1,
            )

    try:
        asyncio.run(fill())
    finally:
        writer.close()


def _take(db: Database, ids: list[int]) -> None:
    """Remove these rows, as applying their chunk does."""
    with db.inbox_engine.begin() as conn:
        conn.execute(delete(table_of(InboxItem)).where(table_of(InboxItem).c.id.in_(ids)))


def _reader(db: Database) -> InboxReader:
    reader = InboxReader(db, limit=10)
    reader.ahead = True  # on both databases (it is on by default on PostgreSQL only)
    return reader


def test_the_reader_reads_the_next_chunk_ahead_in_inbox_order(db: Database) -> None:
    _singles(db, [f"s{i}" for i in range(25)])
    reader = _reader(db)
    seen: list[str] = []
    ahead: list[bool] = []
    try:
        while (chunk := reader.next()).inbox_ids:
            seen += [e.message_id for e in chunk.entries]
            # A chunk read ahead arrives with its messages already parsed and checked.
            ahead.append(all(e.normalized and e.message is not None for e in chunk.entries))
            _take(db, chunk.inbox_ids)
    finally:
        reader.close()
    assert seen == [f"s{i}" for i in range(25)]
    assert ahead == [False, True, True]


def test_a_chunk_read_ahead_gives_way_to_an_older_request(db: Database) -> None:
    """A request stored with a lower id than the chunk read ahead (its transaction committed
    late) comes first, as it would have without reading ahead."""
    _singles(db, [f"s{i}" for i in range(20)])
    reader = _reader(db)
    try:
        first = reader.next()
        _take(db, first.inbox_ids)
        with db.inbox_engine.begin() as conn:
            conn.execute(
                insert(table_of(InboxItem)).values(
                    id=first.inbox_ids[-1],
                    project_id=1,
                    kind="track",
                    body=b'{"messageId":"late"}',
                    received_at=datetime.now(UTC),
                    token="late",
                )
            )
        second = reader.next()
    finally:
        reader.close()
    assert [e.message_id for e in second.entries] == ["late"] + [f"s{i}" for i in range(10, 19)]


def test_a_chunk_read_ahead_is_dropped_when_its_rows_were_taken(db: Database) -> None:
    _singles(db, [f"s{i}" for i in range(30)])
    reader = _reader(db)
    try:
        first = reader.next()
        _take(db, first.inbox_ids)
        # Another process applied part of what this one had read ahead.
        _take(db, read_chunk(db, limit=5).inbox_ids)
        second = reader.next()
    finally:
        reader.close()
    assert [e.message_id for e in second.entries] == [f"s{i}" for i in range(15, 25)]


def test_the_backlog_counts_waiting_requests_and_dates_the_oldest(db: Database) -> None:
    assert backlog(db) == (0, None)
    early = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    late = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
    _singles(db, [f"e{i}" for i in range(5)], early)
    _singles(db, [f"l{i}" for i in range(3)], late)
    assert backlog(db) == (8, early)
    _take(db, read_chunk(db, limit=5).inbox_ids)
    assert backlog(db) == (3, late)
    _take(db, read_chunk(db, limit=5).inbox_ids)
    assert backlog(db) == (0, None)
