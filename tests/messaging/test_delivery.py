"""Delivery in process, against a real SMTP server (aiosmtpd): what happens when a worker
outlives its lease, dies after handing a message over, or the server refuses the body.

These drive `messaging.delivery` directly (with the movable clock) on a migrated SQLite
database, so the interleavings that a crash produces are exact rather than timed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from tests.support import create_database, free_port
from tidings import clock
from tidings.auth import service as projects
from tidings.config import Settings
from tidings.customers.models import Customer
from tidings.db import Database
from tidings.messaging import delivery, gateway, providers
from tidings.messaging.models import Message
from tidings.templates import service as templates


class Sink:
    """Keeps every message; answers DATA with `reply` (250 unless a test changes it)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.reply = "250 OK"
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            with self.lock:
                self.received.append(envelope.content)
        return self.reply

    def ids(self) -> list[str]:
        out = []
        for raw in self.received:
            for line in raw.split(b"\r\n"):
                if line.lower().startswith(b"x-tidings-message:"):
                    out.append(line.split(b":", 1)[1].strip().decode())
        return out


@dataclass
class World:
    db: Database
    sink: Sink
    project_id: int
    template_id: int
    customers: list[int]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    url = create_database(f"sqlite:///{tmp_path / 'd.db'}")
    db = Database(
        Settings(
            database_url=url,
            smtp_url=f"smtp://127.0.0.1:{port}",
            send_lease_seconds=30,
            public_url="https://mail.example.com",
        )
    )
    now = clock.now()
    with db.session(write=True) as session:
        pid = projects.create(session, name="delivery").id
        tid = templates.create(session, project_id=pid, name="w", starter="welcome").id
        people = [
            Customer(
                project_id=pid,
                user_id=f"u{i}",
                email=f"person{i}@example.com",
                traits={"first_name": f"P{i}"},
                first_seen=now,
                last_seen=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(6)
        ]
        session.add_all(people)
        session.flush()
        ids = [c.id for c in people]
    try:
        yield World(db, sink, pid, tid, ids)
    finally:
        clock.reset()
        providers.for_thread(None, timeout=1)  # nothing to close for the outbox
        smtp = providers.for_thread(db.settings.smtp_url, timeout=1)
        smtp.close()
        controller.stop()
        db.dispose()


def queue(w: World, count: int | None = None) -> list[int]:
    with w.db.session(write=True) as session:
        return gateway.send_many(
            session,
            project_id=w.project_id,
            request=gateway.Request(template_id=w.template_id, topic="broadcasts"),
            recipients=[(c, f"t:{c}") for c in w.customers[:count]],
        )


def statuses(w: World) -> dict[int, tuple[str, str | None]]:
    with w.db.session() as session:
        return {m.id: (m.status, m.reason) for m in session.scalars(select(Message))}


def claim_batch(w: World, claim: str) -> list[delivery.Outgoing]:
    """What a worker holds after claiming and rendering, before it sends anything."""
    lease = timedelta(seconds=w.db.settings.send_lease_seconds)
    with w.db.session(write=True) as session:
        rows = delivery._claim(session, 100, clock.now(), claim, lease)
        return delivery._prepare(delivery._Context(session, w.db), rows, clock.now())


def test_a_worker_that_outlived_its_lease_sends_nothing_twice(world: World) -> None:
    ids = queue(world)
    slow = claim_batch(world, "slow")  # claimed and rendered, then the worker stalls
    assert len(slow) == len(ids)
    clock.advance(timedelta(seconds=31))  # its lease runs out
    assert delivery.deliver_due(world.db) == 2 * len(ids)  # recovered, then delivered
    assert sorted(world.sink.ids()) == sorted(str(i) for i in ids)
    # The stalled worker wakes up: every hand-over is refused, so nothing leaves again.
    provider = providers.for_thread(world.db.settings.smtp_url, timeout=5)
    lease = timedelta(seconds=30)
    delivery._deliver_smtp(world.db, provider, slow, "slow", lease)
    assert sorted(world.sink.ids()) == sorted(str(i) for i in ids)
    assert {s for s, _ in statuses(world).values()} == {"sent"}


def test_a_message_handed_over_before_a_crash_is_never_sent_again(world: World) -> None:
    (first, second) = queue(world, 2)
    claim_batch(world, "dead")
    with world.db.session(write=True) as session:
        # The dead worker had committed the hand-over of `first` only.
        m = session.get(Message, first)
        assert m is not None
        m.handed_at = clock.now()
    clock.advance(timedelta(seconds=31))
    delivery.deliver_due(world.db)
    got = statuses(world)
    assert got[first][0] == "sent"
    assert "before recording the server's reply" in (got[first][1] or "")
    assert got[second] == ("sent", None)
    assert world.sink.ids() == [str(second)]


def test_a_body_the_server_refuses_is_not_left_handed_over(world: World) -> None:
    (mid,) = queue(world, 1)
    world.sink.reply = "554 5.6.0 content rejected"
    delivery.deliver_due(world.db)
    with world.db.session() as session:
        m = session.get(Message, mid)
        assert m is not None
        assert m.status == "failed"
        assert "554" in (m.reason or "")
        assert m.handed_at is None
        assert m.claimed_by is None
    assert world.sink.received == []


def test_a_temporary_refusal_is_retried_later_and_then_delivered(world: World) -> None:
    (mid,) = queue(world, 1)
    world.sink.reply = "451 4.3.0 try again later"
    delivery.deliver_due(world.db)
    first = statuses(world)[mid]
    assert first[0] == "deferred"
    assert "451" in (first[1] or "")
    assert "retrying in 1 min" in (first[1] or "")
    assert delivery.deliver_due(world.db) == 0  # not due yet
    world.sink.reply = "250 OK"
    clock.advance(timedelta(minutes=2))
    assert delivery.deliver_due(world.db) == 1
    assert statuses(world)[mid] == ("sent", None)
    assert world.sink.ids() == [str(mid)]
