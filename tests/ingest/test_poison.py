"""A message that breaks its chunk: the chunk is applied again one message at a time, the
message is logged as failed with its raw JSON, and the inbox moves on. No message is known to
break processing any more (such inputs were fixed where found), so the breakage is injected."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from psycopg.errors import DeadlockDetected, LockNotAvailable, UniqueViolation
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from tests.cli_support import scratch_db
from tidings import clock
from tidings.auth import service as projects
from tidings.customers.models import Customer
from tidings.db import Database, table_of
from tidings.ingest import processor
from tidings.ingest.models import InboxItem, IngestMessage


@pytest.fixture(scope="module")
def db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with scratch_db(backend, tmp_path_factory.mktemp("poison")) as database:
        yield database


class Boom(RuntimeError):
    pass


def batch(db: Database, run: str) -> tuple[int, list[dict[str, Any]]]:
    """A project and a batch in its inbox: two good messages around a poisoned one."""
    with db.session(write=True) as session:
        pid = projects.create(session, name=f"poison-{run}").id
    messages = [
        {"type": "identify", "userId": f"{run}-a", "messageId": f"{run}-ok-1", "traits": {}},
        {
            "type": "track",
            "userId": f"{run}-b",
            "event": "Poisoned é",
            "messageId": f"{run}-poison",
            "properties": {"note": "ü"},
        },
        {"type": "track", "userId": f"{run}-c", "event": "Fine", "messageId": f"{run}-ok-2"},
    ]
    with db.inbox_write_engine.begin() as conn:
        conn.execute(
            insert(table_of(InboxItem)),
            [
                {
                    "project_id": pid,
                    "kind": "batch",
                    "body": orjson.dumps({"batch": messages}),
                    "received_at": clock.now(),
                    "ip": None,
                    "token": uuid.uuid4().hex,
                }
            ],
        )
    return pid, messages


def poison(
    monkeypatch: pytest.MonkeyPatch,
    *,
    log_refuses: str | None = None,
    error: Exception | None = None,
    alone: Exception | None = None,
) -> None:
    """Applying a chunk that holds a "-poison" message raises (`error`, by default a Boom; when
    the message is applied on its own, `alone` if given); with `log_refuses`, so does logging
    it, once (the raw JSON as given) or always ("always")."""
    refresh = processor._refresh_segments
    write_log = processor._write_log

    def broken_refresh(
        session: Any, pid: int, batch: Any, entries: Any, known: Any, deferred: Any
    ) -> None:
        if any(e.message_id.endswith("-poison") for e in entries):
            if alone is not None and len(entries) == 1:
                raise alone
            raise error or Boom("this message breaks its chunk")
        refresh(session, pid, batch, entries, known, deferred)

    def refusing_log(session: Any, pid: int, entries: Any, now: Any) -> None:
        for e in entries:
            if e.message_id.endswith("-poison") and (
                log_refuses == "always" or "unstored" not in e.raw
            ):
                raise Boom("the log refuses this row")
        write_log(session, pid, entries, now)

    monkeypatch.setattr(processor, "_refresh_segments", broken_refresh)
    if log_refuses is not None:
        monkeypatch.setattr(processor, "_write_log", refusing_log)


def logged(db: Database, pid: int) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """message_id: (status, reason, raw) of the project's log."""
    t = table_of(IngestMessage)
    with db.session() as session:
        rows = session.execute(
            select(t.c.message_id, t.c.status, t.c.reason, t.c.raw).where(t.c.project_id == pid)
        )
        return {mid: (status, reason, raw) for mid, status, reason, raw in rows}


def outcomes(run: str, poisoned: str) -> dict[str, str]:
    """The log's statuses when the poisoned message of `batch(db, run)` ends as `poisoned`."""
    return {f"{run}-ok-1": "accepted", f"{run}-poison": poisoned, f"{run}-ok-2": "accepted"}


def statuses(db: Database, pid: int) -> dict[str, str]:
    return {mid: status for mid, (status, _, _) in logged(db, pid).items()}


def inbox_size(db: Database, pid: int) -> int:
    t = table_of(InboxItem)
    with db.inbox_engine.connect() as conn:
        query = select(func.count()).select_from(t).where(t.c.project_id == pid)
        return int(conn.execute(query).scalar_one())


def customers(db: Database, pid: int) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(Customer.user_id).where(Customer.project_id == pid)))


def test_a_poisoned_message_fails_alone(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    pid, messages = batch(db, "alone")
    poison(monkeypatch)
    assert processor.drain(db, chunk_size=100) == 3
    assert statuses(db, pid) == outcomes("alone", "failed")
    _, reason, raw = logged(db, pid)["alone-poison"]
    assert reason == "Boom: this message breaks its chunk"
    assert raw == messages[1]
    assert customers(db, pid) == {"alone-a", "alone-c"}
    assert inbox_size(db, pid) == 0


def test_a_failed_message_the_log_refuses_is_kept_as_text(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, messages = batch(db, "text")
    poison(monkeypatch, log_refuses="once")
    assert processor.drain(db, chunk_size=100) == 3
    log = logged(db, pid)
    status, reason, raw = log["text-poison"]
    assert status == "failed"
    assert reason == "Boom: this message breaks its chunk"
    assert set(raw) == {"unstored"}
    assert raw["unstored"].isascii()
    assert json.loads(raw["unstored"]) == messages[1]
    assert {log[m][0] for m in ("text-ok-1", "text-ok-2")} == {"accepted"}
    assert inbox_size(db, pid) == 0


def test_a_chunk_whose_failure_cannot_be_logged_stays_in_the_inbox(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the database is down: nothing acknowledged is dropped; the next attempt, once
    the log takes the row again, finishes the chunk without applying a message twice."""
    pid, messages = batch(db, "retry")
    poison(monkeypatch, log_refuses="always")
    with pytest.raises(Boom, match="refuses"):
        processor.drain(db, chunk_size=100)
    assert inbox_size(db, pid) == 1
    assert "retry-poison" not in logged(db, pid)

    monkeypatch.undo()
    poison(monkeypatch)  # the log works again; the message still breaks its chunk
    assert processor.drain(db, chunk_size=100) == 3
    assert statuses(db, pid) == outcomes("retry", "failed")
    assert logged(db, pid)["retry-poison"][2] == messages[1]
    assert inbox_size(db, pid) == 0


def busy_sqlite(path: Path) -> sqlite3.OperationalError:
    """The error SQLite gives a writer while another holds the write lock."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        holder.close()
        other.close()
    raise AssertionError("the second writer was let in")


def test_transient_errors_are_told_from_data_errors(tmp_path: Path) -> None:
    busy = busy_sqlite(tmp_path / "busy.db")
    assert processor.transient(busy)
    assert processor.transient(DBAPIError("BEGIN", {}, busy))
    assert processor.transient(DBAPIError("SELECT 1", {}, DeadlockDetected("deadlock detected")))
    assert processor.transient(DBAPIError("SELECT 1", {}, LockNotAvailable("lock timeout")))
    conn = sqlite3.connect(tmp_path / "busy.db")
    with pytest.raises(sqlite3.OperationalError) as missing:
        conn.execute("SELECT * FROM no_such_table")
    conn.close()
    assert not processor.transient(missing.value)
    assert not processor.transient(DBAPIError("INSERT", {}, UniqueViolation("duplicate key")))
    assert not processor.transient(Boom("this message breaks its chunk"))


@pytest.mark.parametrize(("kind", "when"), [("deadlock", "chunk"), ("busy", "alone")])
def test_a_transient_error_fails_no_message(
    db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, when: str
) -> None:
    """A deadlock, a locked or an unreachable database says nothing about the messages, whether
    it breaks the chunk or, once the chunk is applied message by message, one of them: the
    chunk stays in the inbox, and once the database is well again every message is applied."""
    pid, _ = batch(db, f"transient-{kind}")
    orig = (
        DeadlockDetected("deadlock detected")
        if kind == "deadlock"
        else busy_sqlite(tmp_path / "b.db")
    )
    error = DBAPIError("UPDATE segments", {}, orig)
    if when == "chunk":
        poison(monkeypatch, error=error)
    else:
        poison(monkeypatch, alone=error)
    with pytest.raises(DBAPIError):
        processor.drain(db, chunk_size=100)
    assert inbox_size(db, pid) == 1
    # Message by message, those before it were applied; it was not marked failed.
    before = {} if when == "chunk" else {f"transient-{kind}-ok-1": "accepted"}
    assert statuses(db, pid) == before

    monkeypatch.undo()
    assert processor.drain(db, chunk_size=100) == 3
    assert statuses(db, pid) == outcomes(f"transient-{kind}", "accepted")
    assert customers(db, pid) == {f"transient-{kind}-{x}" for x in "abc"}
    assert inbox_size(db, pid) == 0
