"""Membership upkeep in-process: time flips, timers, rechecks during a computation, domain events,
and incremental upkeep agreeing with a full computation.

No server: messages go through the processor's `apply_entries` into a real database (SQLite,
and PostgreSQL when TIDINGS_TEST_POSTGRES_URL is set), jobs and timers run through the real
`Worker`, and time moves with `tidings.clock.advance`. Each test gets a fresh project.
"""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from tests.cli_support import scratch_db
from tidings import clock
from tidings.auth import service as projects
from tidings.customers import service as customers
from tidings.customers.batch import Policy, ProfileBatch
from tidings.customers.models import AnonymousId, Customer, Event
from tidings.db import Database
from tidings.db.bulk import Bulk
from tidings.ingest.processor import Entry, apply_entries
from tidings.jobs.models import DomainEvent, Job
from tidings.segments import compile as compiled
from tidings.segments import membership, upkeep
from tidings.segments import service as segments
from tidings.segments.evaluate import Facts
from tidings.segments.models import (
    Segment,
    SegmentGrowth,
    SegmentMember,
    SegmentRecheck,
    SegmentTimer,
    SegmentUpkeep,
)
from tidings.segments.upkeep import Upkeep
from tidings.worker.runner import Worker

MS = timedelta(milliseconds=1)
DAY = timedelta(days=1)
Message = dict[str, Any]


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A database of this module's own, on each backend."""
    with scratch_db(backend, tmp_path_factory.mktemp("membership")) as database:
        # The parsed-rules caches are per process and keyed by segment id; ids restart in each
        # database, so a cache filled from the other backend's database must not be reused.
        membership._cache.clear()
        membership._live_cache.clear()
        yield database


@pytest.fixture(autouse=True)
def real_time() -> Iterator[None]:
    """Every test starts and ends on the real clock."""
    clock.reset()
    yield
    clock.reset()


def ms(dt: datetime) -> datetime:
    """Truncated to milliseconds, the precision of the wire format."""
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def iso(dt: datetime) -> str:
    out = clock.isoformat(dt)
    assert out is not None
    return out


class Project:
    """A fresh project in the module's database, with the few verbs the tests need."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.worker = Worker(db, name=f"test-{uuid.uuid4().hex[:6]}")
        with db.session(write=True) as session:
            self.id = projects.create(session, name=f"seg-{uuid.uuid4().hex[:10]}").id

    # -- writing ------------------------------------------------------------------------------

    def send(self, *messages: Message, beside: Upkeep | None = None) -> None:
        """Apply the messages as one chunk (one transaction), as the processor does: segment
        upkeep inside the transaction, or once it commits on `beside` (PostgreSQL's way)."""
        if beside is None:
            self.apply(messages)
        else:
            beside.submit(self.apply(messages, deferred=True))

    def apply(self, messages: Iterable[Message], *, deferred: bool = False) -> list[upkeep.Work]:
        """One committed chunk; with `deferred`, the segment upkeep it queued (not yet run)."""
        entries = [
            Entry(
                project_id=self.id,
                message_id=m.get("messageId") or uuid.uuid4().hex,
                received_at=clock.now(),
                raw=copy.deepcopy(m),
            )
            for m in messages
        ]
        work: list[upkeep.Work] = []
        with self.db.session(write=True) as session:
            apply_entries(session, entries, deferred=work if deferred else None)
        for e in entries:
            assert e.status in ("accepted", "dropped"), (e.status, e.reason, e.raw)
        return work

    def create(self, name: str, rules: dict[str, Any]) -> int:
        with self.db.session(write=True) as session:
            return segments.create(session, project_id=self.id, name=name, rules=rules).id

    def update(self, segment_id: int, rules: dict[str, Any]) -> None:
        with self.db.session(write=True) as session:
            segments.update(session, project_id=self.id, segment_id=segment_id, rules=rules)

    def delete(self, segment_id: int) -> None:
        with self.db.session(write=True) as session:
            segments.delete(session, project_id=self.id, segment_id=segment_id)

    def run_jobs(self) -> int:
        """Run due jobs until none is left (the compute jobs among them)."""
        total = 0
        for _ in range(100):
            done = self.worker.run_jobs()
            total += done
            if not done:
                return total
        raise AssertionError("jobs keep coming")

    # -- reading ------------------------------------------------------------------------------

    def segment(self, segment_id: int) -> Segment:
        with self.db.session() as session:
            seg = session.get(Segment, segment_id)
            assert seg is not None
            return seg

    def members(self, segment_id: int) -> set[int]:
        with self.db.session() as session:
            return set(
                session.scalars(
                    select(SegmentMember.customer_id).where(SegmentMember.segment_id == segment_id)
                )
            )

    def customer(self, user_id: str) -> int:
        with self.db.session() as session:
            cid = session.scalar(
                select(Customer.id).where(
                    Customer.project_id == self.id, Customer.user_id == user_id
                )
            )
            assert cid is not None, user_id
            return int(cid)

    def timers(self) -> dict[int, datetime]:
        """Each customer's timer: the instant time alone may first change a membership."""
        with self.db.session() as session:
            rows = session.execute(
                select(SegmentTimer.customer_id, SegmentTimer.due_at).where(
                    SegmentTimer.project_id == self.id
                )
            )
            return dict(rows.all())

    def _segment_events(self, segment_id: int) -> list[Event]:
        with self.db.session() as session:
            rows = session.scalars(
                select(Event)
                .where(Event.project_id == self.id, Event.type == "segment")
                .order_by(Event.id)
            )
            return [e for e in rows if e.properties["segment_id"] == segment_id]

    def changes(self, segment_id: int) -> list[tuple[int, str]]:
        """The segment's entries and exits on its customers' timelines, oldest first."""
        return [(e.customer_id, e.properties["change"]) for e in self._segment_events(segment_id)]

    def change_times(self, segment_id: int) -> list[datetime]:
        return [e.timestamp for e in self._segment_events(segment_id)]

    def growth(self, segment_id: int) -> dict[int, tuple[int, int]]:
        """The segment's growth rows: (entered, exited) by hour."""
        with self.db.session() as session:
            rows = session.execute(
                select(SegmentGrowth.hour, SegmentGrowth.entered, SegmentGrowth.exited).where(
                    SegmentGrowth.segment_id == segment_id
                )
            )
            return {hour: (n, x) for hour, n, x in rows}

    def domain_events(self) -> list[tuple[str, int | None, dict[str, Any]]]:
        with self.db.session() as session:
            rows = session.execute(
                select(DomainEvent.name, DomainEvent.customer_id, DomainEvent.payload)
                .where(DomainEvent.project_id == self.id)
                .order_by(DomainEvent.id)
            )
            return [(name, cid, dict(payload)) for name, cid, payload in rows]

    def segment_timeline(self, customer_id: int) -> list[tuple[str | None, dict[str, Any], Any]]:
        """The customer's "segment" events, oldest first: (name, properties, source)."""
        with self.db.session() as session:
            rows = session.scalars(
                select(Event)
                .where(Event.customer_id == customer_id, Event.type == "segment")
                .order_by(Event.id)
            )
            return [(e.name, dict(e.properties), (e.context or {}).get("source")) for e in rows]

    def queued(self) -> list[list[int]]:
        """The customers of the project's segment upkeep not yet done, a list per queue row."""
        with self.db.session() as session:
            rows = session.scalars(
                select(SegmentUpkeep.customer_ids)
                .where(SegmentUpkeep.project_id == self.id)
                .order_by(SegmentUpkeep.id)
            )
            return [list(ids) for ids in rows]

    def rechecks(self, segment_id: int) -> set[int]:
        """Customers queued to be evaluated again once the segment's computation is done."""
        with self.db.session() as session:
            return set(
                session.scalars(
                    select(SegmentRecheck.customer_id).where(
                        SegmentRecheck.segment_id == segment_id
                    )
                )
            )


@pytest.fixture
def project(db: Database) -> Project:
    p = Project(db)
    # Nothing of an earlier test may run inside this one: its jobs are done now, and its timers
    # (which a later clock.advance would make due) are dropped.
    p.run_jobs()
    with db.session(write=True) as session:
        session.execute(delete(SegmentTimer))
    return p


def identify(user_id: str, traits: dict[str, Any] | None = None, **extra: Any) -> Message:
    return {"type": "identify", "userId": user_id, "traits": traits or {}, **extra}


def track(user_id: str, event: str, at: datetime | None = None, **properties: Any) -> Message:
    msg: Message = {"type": "track", "userId": user_id, "event": event, "properties": properties}
    if at is not None:
        msg["timestamp"] = iso(at)
    return msg


def ready(p: Project, name: str, rules: dict[str, Any]) -> int:
    """Create a segment and run its computation; its id."""
    sid = p.create(name, rules)
    p.run_jobs()
    seg = p.segment(sid)
    assert (seg.status, seg.progress, seg.error) == ("ready", 100, None)
    return sid


# -- time flips -------------------------------------------------------------------------------


def test_leaves_an_active_segment_on_time_without_a_new_event(project: Project) -> None:
    p = project
    active = ready(p, "Active", {"event": "Opened App", "op": "performed", "within_days": 7})
    t0 = ms(clock.now())
    p.send(identify("ann"), track("ann", "Opened App", t0))
    ann = p.customer("ann")
    assert p.members(active) == {ann}
    # The timer holds the instant the oldest counted event leaves the window.
    assert p.timers() == {ann: t0 + 7 * DAY + MS}

    clock.advance(t0 + 7 * DAY - clock.now() - timedelta(minutes=1))
    assert p.worker.run_timers() == 0
    assert p.members(active) == {ann}

    clock.advance(timedelta(minutes=2))
    before = clock.now()
    assert p.worker.run_timers() == 1
    after = clock.now()
    assert p.members(active) == set()
    assert p.timers() == {}
    entered_at, exited_at = p.change_times(active)
    assert t0 <= entered_at < t0 + timedelta(minutes=5)
    assert before <= exited_at <= after  # recorded when time moved it, not at the next event
    assert p.segment(active).member_count == 0
    assert p.changes(active) == [(ann, "entered"), (ann, "exited")]
    assert p.segment_timeline(ann) == [
        ("Active", {"segment_id": active, "change": "entered"}, "event"),
        ("Active", {"segment_id": active, "change": "exited"}, "time"),
    ]
    # Nothing more is due, and nothing flips back.
    clock.advance(30 * DAY)
    assert p.worker.run_timers() == 0
    assert p.members(active) == set()


def test_reserved_traits_match_in_either_spelling(project: Project) -> None:
    """Profiles keep reserved traits in snake_case (`createdAt` arrives as `created_at`): a
    rule may name them either way, in upkeep and in a full computation alike; it is stored
    under the profile's name."""
    p = project
    camel = ready(
        p, "New (createdAt)", {"trait": "createdAt", "op": "within_last_days", "value": 30}
    )
    snake = ready(
        p, "New (created_at)", {"trait": "created_at", "op": "within_last_days", "value": 30}
    )
    named = ready(p, "Called Ann", {"trait": "firstName", "op": "eq", "value": "Ann"})
    p.send(identify("ann", {"createdAt": iso(clock.now() - 2 * DAY), "firstName": "Ann"}))
    p.send(identify("bob", {"createdAt": iso(clock.now() - 90 * DAY), "firstName": "Bob"}))
    ann = p.customer("ann")
    assert p.members(camel) == p.members(snake) == p.members(named) == {ann}
    assert p.segment(camel).rules == {"trait": "created_at", "op": "within_last_days", "value": 30}
    assert p.segment(named).rules["trait"] == "first_name"
    grouped = p.create("Dated groups", {"group_trait": "createdAt.year", "op": "exists"})
    assert p.segment(grouped).rules["group_trait"] == "created_at.year"
    nested = p.create("By city", {"trait": "address.city", "op": "eq", "value": "Oslo"})
    assert p.segment(nested).rules["trait"] == "address.city"
    p.update(camel, {"trait": "createdAt", "op": "within_last_days", "value": 31})
    p.update(named, {"trait": "firstName", "op": "in", "value": ["Ann", "Bob"]})
    p.run_jobs()
    assert p.members(camel) == {ann}
    assert p.members(named) == {ann, p.customer("bob")}


def test_domain_events_report_each_entry_and_exit(project: Project) -> None:
    p = project
    active = ready(p, "Active", {"event": "Opened App", "op": "performed", "within_days": 7})
    pro = ready(p, "Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    p.send(identify("ann", {"plan": "pro"}), track("ann", "Opened App", ms(clock.now())))
    ann = p.customer("ann")
    p.send(identify("ann", {"plan": "free"}))
    clock.advance(8 * DAY)
    p.worker.run_timers()

    def payload(sid: int, name: str, source: str) -> dict[str, Any]:
        return {"segment_id": sid, "segment_name": name, "customer_id": ann, "source": source}

    got = p.domain_events()
    assert got == [
        ("segment.entered", ann, payload(active, "Active", "event")),
        ("segment.entered", ann, payload(pro, "Pro", "event")),
        ("segment.exited", ann, payload(pro, "Pro", "event")),
        ("segment.exited", ann, payload(active, "Active", "time")),
    ] or got == [
        ("segment.entered", ann, payload(pro, "Pro", "event")),
        ("segment.entered", ann, payload(active, "Active", "event")),
        ("segment.exited", ann, payload(pro, "Pro", "event")),
        ("segment.exited", ann, payload(active, "Active", "time")),
    ], got


@pytest.mark.parametrize("form", ["instant", "date"])
def test_enters_a_within_next_days_segment_on_time(project: Project, form: str) -> None:
    p = project
    soon = ready(p, "Renewing soon", {"trait": "renews_at", "op": "within_next_days", "value": 7})
    if form == "instant":
        renew = ms(clock.now() + 10 * DAY)
        value = iso(renew)
    else:
        # A bare date is the start of that day (UTC).
        renew = datetime.combine((clock.now() + 10 * DAY).date(), datetime.min.time(), UTC)
        value = renew.date().isoformat()
    p.send(identify("bo", {"renews_at": value}))
    bo = p.customer("bo")
    assert p.members(soon) == set()
    # Entry is due the very instant renew - 7 days: iso(now + 7 days) then reaches the value.
    assert p.timers() == {bo: renew - 7 * DAY}

    clock.advance(renew - 7 * DAY - clock.now() - timedelta(minutes=1))
    p.worker.run_timers()
    assert p.members(soon) == set()

    clock.advance(timedelta(minutes=2))
    assert p.worker.run_timers() == 1
    assert p.members(soon) == {bo}
    assert p.changes(soon) == [(bo, "entered")]
    assert p.segment_timeline(bo) == [
        ("Renewing soon", {"segment_id": soon, "change": "entered"}, "time"),
    ]
    # The next instant: the renewal itself, when it is no longer ahead (a bare date may add an
    # earlier, harmless recheck: dates compare as text, which can turn a day apart).
    if form == "instant":
        assert p.timers() == {bo: renew + MS}
    else:
        assert p.timers()[bo] <= renew + MS

    clock.advance(renew - clock.now() - timedelta(minutes=1))
    p.worker.run_timers()
    assert p.members(soon) == {bo}
    clock.advance(timedelta(minutes=2))
    p.worker.run_timers()
    assert p.members(soon) == set()
    assert p.changes(soon) == [(bo, "entered"), (bo, "exited")]


def test_first_and_last_performed_flip_on_time(project: Project) -> None:
    p = project
    new = ready(p, "New", {"event": "Signed Up", "op": "first_performed", "within_days": 3})
    lapsed = ready(
        p, "Lapsed", {"event": "Purchased", "op": "last_performed", "more_than_days_ago": 30}
    )
    t0 = ms(clock.now())
    p.send(identify("cy"), track("cy", "Signed Up", t0), track("cy", "Purchased", t0))
    cy = p.customer("cy")
    assert (p.members(new), p.members(lapsed)) == ({cy}, set())
    # One timer for both segments: the first flip (leaving "New" on day 3; lapsing on day 30).
    assert p.timers() == {cy: t0 + 3 * DAY + MS}

    # A second sign-up does not change the first.
    clock.advance(DAY)
    p.send(track("cy", "Signed Up", ms(clock.now())))
    assert p.timers() == {cy: t0 + 3 * DAY + MS}

    clock.advance(t0 + 3 * DAY + timedelta(minutes=1) - clock.now())
    assert p.worker.run_timers() == 1
    assert (p.members(new), p.members(lapsed)) == (set(), set())
    assert p.timers() == {cy: t0 + 30 * DAY + MS}  # "New" has nothing ahead: the lapse next

    # A purchase on day 20 moves the lapse out to day 50. The timer stays where it was (a
    # message only ever moves it earlier): on day 30 it falls due, nothing changes, and it is
    # set to day 50.
    clock.advance(t0 + 20 * DAY - clock.now())
    t1 = ms(clock.now())
    p.send(track("cy", "Purchased", t1))
    assert p.timers() == {cy: t0 + 30 * DAY + MS}
    clock.advance(t0 + 31 * DAY - clock.now())
    assert p.worker.run_timers() == 1
    assert p.members(lapsed) == set()
    assert p.timers() == {cy: t1 + 30 * DAY + MS}
    assert p.worker.run_timers() == 0

    clock.advance(t1 + 30 * DAY + timedelta(minutes=1) - clock.now())
    assert p.worker.run_timers() == 1
    assert p.members(lapsed) == {cy}
    assert p.timers() == {}  # nothing can end a lapse but a purchase

    p.send(track("cy", "Purchased", ms(clock.now())))
    assert p.members(lapsed) == set()
    assert [(n, props["change"], src) for n, props, src in p.segment_timeline(cy)] == [
        ("New", "entered", "event"),
        ("New", "exited", "time"),
        ("Lapsed", "entered", "time"),
        ("Lapsed", "exited", "event"),
    ]


def test_a_last_charge_window_closes_on_time(project: Project) -> None:
    p = project
    rules = {"revenue": "last_charge", "op": "within_last_days", "value": 30}
    recent = ready(p, "Recent buyers", rules)
    t0 = ms(clock.now())
    order = {"total": 25, "order_id": uuid.uuid4().hex}
    p.send(identify("dee"), track("dee", "Order Completed", t0, **order))
    dee = p.customer("dee")
    assert p.members(recent) == {dee}
    assert p.timers() == {dee: t0 + 30 * DAY + MS}
    clock.advance(t0 + 30 * DAY + timedelta(minutes=1) - clock.now())
    assert p.worker.run_timers() == 1
    assert p.members(recent) == set()
    assert p.changes(recent) == [(dee, "entered"), (dee, "exited")]


def sign_in_moved(p: Project, by: timedelta) -> tuple[int, int, datetime]:
    """An "Active" segment and a member signed in a day ago, whose sign-in then moves `by`
    without upkeep seeing it: (segment, customer, the sign-in as upkeep saw it)."""
    sid = ready(p, "Active", {"event": "Signed In", "op": "performed", "within_days": 7})
    t0 = ms(clock.now()) - DAY
    p.send(identify("x"), track("x", "Signed In", t0))
    x = p.customer("x")
    assert p.timers() == {x: t0 + 7 * DAY + MS}
    with p.db.session(write=True) as session:
        session.execute(
            text("UPDATE events SET timestamp = :t WHERE customer_id = :x AND name = 'Signed In'"),
            {"t": t0.replace(tzinfo=None) + by, "x": x},
        )
    return sid, x, t0


def evaluate_alone(p: Project, segment_id: int, customer_id: int) -> int:
    """Upkeep evaluating one customer against one segment, in a transaction of its own."""
    with p.db.session(write=True) as session:
        seg = next(s for s in membership.live_segments(session, p.id) if s.id == segment_id)
        return membership.evaluate_pairs(
            session, project_id=p.id, pairs={customer_id: [seg]}, source="event"
        )


def test_upkeep_only_brings_a_timer_earlier_and_a_due_timer_sets_the_exact_instant(
    project: Project,
) -> None:
    """Upkeep evaluates some of a customer's segments: it can only bring the timer earlier
    (the others' flips may come first). A timer that falls due early changes nothing and sets
    the exact next instant from every time-based segment."""
    p = project
    sid, x, t0 = sign_in_moved(p, DAY)
    assert evaluate_alone(p, sid, x) == 0
    assert p.timers() == {x: t0 + 7 * DAY + MS}  # the flip is a day later now: kept as it was
    clock.advance(t0 + 7 * DAY + timedelta(minutes=1) - clock.now())
    assert p.worker.run_timers() == 1
    assert p.members(sid) == {x}
    assert p.timers() == {x: t0 + 8 * DAY + MS}
    assert p.changes(sid) == [(x, "entered")]

    earlier = ms(clock.now()) - 6 * DAY - DAY / 2  # a sign-in earlier than upkeep saw
    with p.db.session(write=True) as session:
        session.execute(
            text("UPDATE events SET timestamp = :t WHERE customer_id = :x AND name = 'Signed In'"),
            {"t": earlier.replace(tzinfo=None), "x": x},
        )
    assert evaluate_alone(p, sid, x) == 0
    assert p.timers() == {x: earlier + 7 * DAY + MS}


def test_a_full_computation_only_brings_timers_earlier(project: Project) -> None:
    p = project
    t0 = ms(clock.now())
    p.send(identify("x"), track("x", "Signed In", t0), track("x", "Purchased", t0))
    x = p.customer("x")
    ready(p, "Week", {"event": "Signed In", "op": "performed", "within_days": 7})
    assert p.timers() == {x: t0 + 7 * DAY + MS}
    ready(p, "Month", {"event": "Purchased", "op": "performed", "within_days": 30})
    assert p.timers() == {x: t0 + 7 * DAY + MS}
    ready(p, "Two days", {"event": "Purchased", "op": "performed", "within_days": 2})
    assert p.timers() == {x: t0 + 2 * DAY + MS}
    clock.advance(2 * DAY + timedelta(minutes=1))
    assert p.worker.run_timers() == 1
    assert p.timers() == {x: t0 + 7 * DAY + MS}


def test_memberships_are_read_by_the_members_key(project: Project, backend: str) -> None:
    """Upkeep reads the memberships of a chunk's (segment, customer) pairs, and `forget` a
    customer's across the project's segments, by probes of the members' primary key: there is
    no index by customer to keep up."""
    p = project
    pro = ready(p, "Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    free = ready(p, "Free", {"trait": "plan", "op": "eq", "value": "free"})
    p.send(identify("x", {"plan": "pro"}), identify("y", {"plan": "free"}))
    x, y = p.customer("x"), p.customer("y")
    pairs = [(pro, x), (pro, y), (free, x), (free, y), (free, y)]
    with p.db.session(write=True) as session:
        bulk = Bulk(session)
        assert membership.members_among(bulk, pairs) == {(pro, x), (free, y)}
        assert membership.members_among(bulk, []) == set()
        found = bulk.select_in(membership.PROJECT_MEMBERS, "m.customer_id", [x, y], (p.id,))
        assert sorted(found) == sorted([(pro, x), (free, y)])
        assert bulk.select_in(membership.PROJECT_MEMBERS, "m.customer_id", [x], (p.id + 1,)) == []
        statement, params = membership.members_query(bulk, pairs)
        forgetting = bulk._in(membership.PROJECT_MEMBERS, "m.customer_id", [x, y])
        if backend == "sqlite":
            for sql_text, args in ((statement, params), (forgetting, (p.id, x, y))):
                rows = bulk.fetch(f"EXPLAIN QUERY PLAN {sql_text}", args)
                plan = " ".join(r[-1] for r in rows)
                assert "SEARCH m USING COVERING INDEX sqlite_autoindex_segment_members_1" in plan
                assert "SCAN m" not in plan, plan
        else:
            session.execute(text("SET LOCAL enable_seqscan = off"))
            for sql_text, args in ((statement, params), (forgetting, (p.id, x, y))):
                plan = " ".join(r[0] for r in bulk.fetch(f"EXPLAIN {sql_text}", args))
                assert "Index Only Scan using pk_segment_members" in plan, plan


def test_a_full_computation_plans_the_same_timers_as_incremental_upkeep(project: Project) -> None:
    """Per rule, on its own (a customer's timer serves all its segments): the customers' timers
    after upkeep evaluates them as they arrive, and after a full computation of the same rule."""
    p = project
    rules: list[dict[str, Any]] = [
        {"event": "Opened App", "op": "performed", "within_days": 7},
        {"event": "Signed Up", "op": "first_performed", "within_days": 3},
        {"event": "Purchased", "op": "last_performed", "more_than_days_ago": 30},
        {"trait": "renews_at", "op": "within_next_days", "value": 7},
        {"trait": "trial_ends_at", "op": "within_last_days", "value": 2},
        {"revenue": "last_charge", "op": "within_last_days", "value": 30},
    ]
    now = ms(clock.now())
    for n, r in enumerate(rules):
        inc = ready(p, f"inc {n}", r)
        users = [f"u{i}-{n}" for i in range(4)]
        for i, user in enumerate(users):
            p.send(
                identify(
                    user,
                    {
                        "renews_at": iso(now + (5 + 3 * i) * DAY),
                        "trial_ends_at": iso(now - i * DAY),
                    },
                ),
                track(user, "Opened App", now - i * 2 * DAY),
                track(user, "Opened App", now - i * DAY),
                track(user, "Signed Up", now - i * DAY),
                track(user, "Purchased", now - i * 15 * DAY),
                track(user, "Order Completed", now - i * 10 * DAY, total=5, order_id=user),
            )
        ids = {p.customer(u) for u in users}
        incremental = {cid: due for cid, due in p.timers().items() if cid in ids}
        members = p.members(inc) & ids
        p.delete(inc)
        with p.db.session(write=True) as session:
            session.execute(delete(SegmentTimer))
        full = ready(p, f"full {n}", r)
        assert p.members(full) & ids == members, r
        assert {cid: due for cid, due in p.timers().items() if cid in ids} == incremental, r
        assert incremental, r  # every rule here has a customer with a time flip ahead
        p.delete(full)


# -- computing ----------------------------------------------------------------------------------


def test_growth_counts_entries_and_exits_by_the_hour(project: Project) -> None:
    """A segment's growth counts its entries and exits (not a computation's) into the hour
    they happen in, and covers the hours since the start of the hour seven days ago."""
    p = project
    # Five minutes into an hour: the test's first messages fall in the same one.
    clock.advance(timedelta(seconds=3600 + 300 - clock.now().timestamp() % 3600))
    p.send(identify("early", {"plan": "pro"}))
    sid = ready(p, "Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    assert p.growth(sid) == {}  # the computation's entry is not growth
    a, b = "a", "b"
    p.send(identify(a, {"plan": "pro"}))
    p.send(identify(b, {"plan": "pro"}), identify(a, {"plan": "free"}))
    hour = membership.hour_of(clock.now())
    assert p.growth(sid) == {hour: (2, 1)}

    def growth() -> dict[tuple[int, str], int]:
        with p.db.session() as session:
            return segments.growth(session, project_id=p.id)

    assert growth() == {(sid, "entered"): 2, (sid, "exited"): 1}
    clock.advance(timedelta(hours=1))
    p.send(identify("c", {"plan": "pro"}))
    assert p.growth(sid) == {hour: (2, 1), hour + 1: (1, 0)}
    assert growth() == {(sid, "entered"): 3, (sid, "exited"): 1}
    clock.advance(7 * DAY - timedelta(hours=1))  # the hour seven days later: all counted
    assert membership.hour_of(clock.now()) == hour + 7 * 24
    assert growth() == {(sid, "entered"): 3, (sid, "exited"): 1}
    clock.advance(timedelta(hours=1))
    assert growth() == {(sid, "entered"): 1, (sid, "exited"): 0}
    with p.db.session() as session:
        assert segments.growth(session, project_id=p.id, segment_id=sid, days=1) == {}
        other = projects.create(session, name="other").id
        assert segments.growth(session, project_id=other) == {}


def test_changes_while_computing_are_rechecked(project: Project) -> None:
    p = project
    p.send(identify("early", {"plan": "pro"}), identify("late", {"plan": "free"}))
    sid = p.create("Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    assert p.segment(sid).status == "computing"
    # Changes between creating the segment and its computation are not evaluated yet ...
    p.send(identify("early", {"plan": "free"}), identify("late", {"plan": "pro"}))
    p.send(identify("new", {"plan": "pro"}))
    assert p.members(sid) == set()
    late, new = p.customer("late"), p.customer("new")
    assert p.rechecks(sid) == {p.customer("early"), late, new}
    # ... and none is lost once it has run.
    p.run_jobs()
    assert p.members(sid) == {late, new}
    seg = p.segment(sid)
    assert (seg.status, seg.member_count) == ("ready", 2)
    assert p.rechecks(sid) == set()
    # The computation's entries change the members only: no timeline, no growth.
    assert p.changes(sid) == []
    assert p.growth(sid) == {}


def test_only_changes_a_segment_can_see_evaluate_it(project: Project) -> None:
    """An event none of a segment's conditions counts, an event that cannot matter because
    the profile settles the segment, or a trait sent again unchanged, leaves the segment alone:
    while it computes, only the customers whose data it reads changed are queued for a
    recheck."""
    p = project
    now = ms(clock.now())
    p.send(identify("pages", {"plan": "free"}), identify("events", {"plan": "free"}))
    p.send(identify("traits", {"plan": "pro"}), identify("trial", {"plan": "trial"}))
    trial_buyers = p.create(
        "Trial buyers",
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "trial"},
                {"event": "Purchased", "op": "performed"},
            ]
        },
    )
    sid = p.create(
        "Docs readers, recent buyers, pro",
        {
            "any": [
                {"page": "path", "op": "starts_with", "value": "/docs", "within_days": 7},
                {
                    "event": "Purchased",
                    "op": "performed",
                    "within_days": 3,
                    "where": [{"property": "amount", "op": "gt", "value": 50}],
                },
                {"trait": "plan", "op": "eq", "value": "pro"},
            ]
        },
    )

    def page(user: str, path: str, at: datetime) -> Message:
        return {"type": "page", "userId": user, "properties": {"path": path}, "timestamp": iso(at)}

    p.send(
        page("pages", "/pricing", now),  # another path
        page("pages", "/docs/a", now - 8 * DAY),  # outside the window
        track("events", "Purchased", now, amount=10),  # fails `where`
        track("events", "Purchased", now - 4 * DAY, amount=60),  # outside the window
        track("events", "Opened App", now),  # another event
        identify("traits", {"plan": "pro", "city": "Rome"}),  # plan unchanged
    )
    assert p.rechecks(sid) == set()
    p.send(page("pages", "/docs/a", now - DAY))
    p.send(track("events", "Purchased", now - DAY, amount=60))
    p.send(identify("traits", {"plan": "free"}))
    assert p.rechecks(sid) == {p.customer(u) for u in ("pages", "events", "traits")}
    # Not on a trial, "events" bought in vain for this one; a trial customer's purchase
    # counts, and so does any change of plan.
    p.send(track("trial", "Purchased", now, amount=5))
    assert p.rechecks(trial_buyers) == {p.customer("trial"), p.customer("traits")}


def test_new_events_that_decide_a_condition_are_not_read_again(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored customer's new event that decides a condition alone ("performed within 7
    days", "last performed more than 30 days ago") spares upkeep reading its events: the
    membership and the timer come from the new event. One that does not ("at least twice")
    has them read."""
    p = project
    now = ms(clock.now())
    recent = ready(p, "Recent", {"event": "Clicked", "op": "performed", "within_days": 7})
    lapsed = ready(
        p, "Lapsed", {"event": "Clicked", "op": "last_performed", "more_than_days_ago": 30}
    )
    twice = ready(p, "Twice", {"event": "Purchased", "op": "performed", "count": {"gte": 2}})
    p.send(identify("u"), track("u", "Clicked", now - 40 * DAY), track("u", "Purchased", now))
    u = p.customer("u")
    assert (p.members(recent), p.members(lapsed), p.members(twice)) == (set(), {u}, set())
    asked: list[set[str]] = []
    summaries = compiled.event_summaries

    def spy(session: Session, **kw: Any) -> Any:
        asked.append({c.name or "" for c in kw["wanted"]})
        return summaries(session, **kw)

    monkeypatch.setattr(compiled, "event_summaries", spy)
    p.send(track("u", "Clicked", now - DAY))
    assert asked in ([], [set()])
    assert (p.members(recent), p.members(lapsed)) == ({u}, set())
    assert p.timers() == {u: now - DAY + 7 * DAY + MS}
    p.send(track("u", "Purchased", now))
    assert asked[-1] == {"Purchased"}
    assert p.members(twice) == {u}


def test_a_new_customer_counts_the_events_of_its_first_chunk(project: Project) -> None:
    """A customer created by a chunk is evaluated on that chunk's events (its whole history);
    one it merges into is evaluated on everything stored plus what the chunk brought."""
    p = project
    now = ms(clock.now())
    rules: list[dict[str, Any]] = [
        {
            "event": "Purchased",
            "op": "performed",
            "count": {"gte": 2},
            "within_days": 3,
            "where": [{"property": "amount", "op": "gt", "value": 50}],
        },
        {"page": "path", "op": "starts_with", "value": "/docs", "count": {"gte": 2}},
        {"event": "Opened App", "op": "not_performed"},
        {"event": "Purchased", "op": "first_performed", "within_days": 1},
    ]
    segs = [ready(p, f"first chunk {i}", r) for i, r in enumerate(rules)]

    def page(who: dict[str, str], path: str) -> Message:
        return {"type": "page", **who, "properties": {"path": path}, "timestamp": iso(now)}

    p.send(track("stored", "Purchased", now - DAY, amount=60))
    p.send(
        track("busy", "Purchased", now, amount=60),
        track("busy", "Purchased", now - DAY / 2, amount=70),
        page({"userId": "busy"}, "/docs/a"),
        page({"userId": "busy"}, "/docs/b"),
        track("busy", "Opened App", now),
        track("quiet", "Purchased", now - 2 * DAY, amount=60),
        page({"userId": "quiet"}, "/docs/a"),
        page({"userId": "quiet"}, "/pricing"),
        page({"anonymousId": "reader"}, "/docs/x"),
        page({"anonymousId": "reader"}, "/docs/y"),
        {
            "type": "track",
            "anonymousId": "reader",
            "event": "Purchased",
            "properties": {"amount": 60},
            "timestamp": iso(now),
        },
        identify("stored", anonymousId="reader"),
    )
    busy, quiet, stored = (p.customer(u) for u in ("busy", "quiet", "stored"))
    assert [p.members(s) for s in segs] == [
        {busy, stored},
        {busy, stored},
        {quiet, stored},
        {busy},
    ]
    # A full computation of the same definitions agrees.
    assert [p.members(ready(p, f"again {i}", r)) for i, r in enumerate(rules)] == [
        p.members(s) for s in segs
    ]


def test_changes_during_the_computation_itself_are_rechecked(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message applied after the full query has run, before the result is written."""
    p = project
    p.send(identify("stays", {"plan": "pro"}), identify("leaves", {"plan": "pro"}))
    p.send(identify("joins", {"plan": "free"}))
    real = compiled.member_ids

    def member_ids_then_a_message(*args: Any, **kwargs: Any) -> set[int]:
        found = real(*args, **kwargs)
        p.send(identify("leaves", {"plan": "free"}), identify("joins", {"plan": "pro"}))
        return found

    monkeypatch.setattr(compiled, "member_ids", member_ids_then_a_message)
    sid = p.create("Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    p.run_jobs()
    monkeypatch.undo()
    assert p.members(sid) == {p.customer("stays"), p.customer("joins")}
    seg = p.segment(sid)
    assert (seg.status, seg.member_count) == ("ready", 2)
    assert p.rechecks(sid) == set()


def test_customers_gone_during_the_computation_leave_no_rows(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customers erased or merged away after the full query has run, before the result is
    written: the computation writes no member, history or timer for them."""
    p = project
    now = clock.now()
    for user in ("stays", "erased"):
        p.send(identify(user, {"plan": "pro"}), track(user, "Signed In", now - DAY))
    p.send(
        {"type": "identify", "anonymousId": "visitor", "traits": {"plan": "pro"}},
        {"type": "track", "anonymousId": "visitor", "event": "Signed In", "timestamp": iso(now)},
        identify("known", {"plan": "free"}),
    )
    with p.db.session() as session:
        visitor = session.scalars(
            select(AnonymousId.customer_id).where(AnonymousId.anonymous_id == "visitor")
        ).one()
    gone = {p.customer("erased"), visitor}
    real = compiled.member_ids

    def member_ids_then_two_leave(*args: Any, **kwargs: Any) -> set[int]:
        found = real(*args, **kwargs)
        assert gone <= found
        p.send({"type": "delete", "userId": "erased"})
        p.send({"type": "alias", "userId": "known", "previousId": "visitor"})  # merged away
        return found

    monkeypatch.setattr(compiled, "member_ids", member_ids_then_two_leave)
    rules = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"event": "Signed In", "op": "performed", "within_days": 7},
        ]
    }
    sid = p.create("Active pros", rules)
    p.run_jobs()
    monkeypatch.undo()
    seg = p.segment(sid)
    assert seg.status == "ready"
    stays = p.customer("stays")
    assert stays in p.members(sid)
    assert stays in p.timers()  # the window closes for the others too, but they are gone
    assert not gone & p.members(sid)
    assert not gone & set(p.timers())
    assert not gone & {cid for cid, _ in p.changes(sid)}
    assert seg.member_count == len(p.members(sid))
    with p.db.session() as session:
        for table, mine in (
            ("segment_members", "t.segment_id = :s"),
            ("segment_timers", "t.project_id = :p"),
        ):
            orphans = session.execute(
                text(
                    f"SELECT count(*) FROM {table} t WHERE {mine} "
                    "AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = t.customer_id)"
                ),
                {"s": sid, "p": p.id},
            ).scalar_one()
            assert orphans == 0, table


def test_an_edit_recomputes_while_old_members_stay_until_done(project: Project) -> None:
    p = project
    p.send(identify("a", {"plan": "pro"}), identify("b", {"plan": "team"}))
    sid = ready(p, "Paid", {"trait": "plan", "op": "eq", "value": "pro"})
    a, b = p.customer("a"), p.customer("b")
    assert p.members(sid) == {a}
    p.update(sid, {"trait": "plan", "op": "in", "value": ["team", "enterprise"]})
    seg = p.segment(sid)
    assert (seg.status, seg.version) == ("computing", 2)
    assert p.members(sid) == {a}
    p.send(identify("c", {"plan": "enterprise"}))
    p.run_jobs()
    c = p.customer("c")
    assert p.members(sid) == {b, c}
    assert p.segment(sid).member_count == 2
    # Entries and exits of computations change the members only: no timeline, no growth.
    assert p.changes(sid) == []
    assert p.growth(sid) == {}


def test_a_superseded_computation_does_nothing(project: Project) -> None:
    p = project
    p.send(identify("a", {"plan": "pro"}))
    sid = p.create("Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    p.update(sid, {"trait": "plan", "op": "eq", "value": "free"})
    p.run_jobs()
    seg = p.segment(sid)
    assert (seg.status, seg.version, seg.member_count) == ("ready", 2, 0)
    assert p.members(sid) == set()
    assert p.changes(sid) == []  # version 1 never wrote anything


# -- incremental == full --------------------------------------------------------------------

STREAM_RULES: list[dict[str, Any]] = [
    {"trait": "plan", "op": "eq", "value": "pro"},
    {
        "any": [
            {"trait": "age", "op": "gte", "value": 30},
            {"event": "Purchased", "op": "performed", "count": {"gte": 2}},
        ]
    },
    {
        "all": [
            {"page": "path", "op": "starts_with", "value": "/docs"},
            {"not": {"trait": "plan", "op": "eq", "value": "pro"}},
        ]
    },
    {
        "event": "Purchased",
        "op": "performed",
        "within_days": 3,
        "where": [{"property": "amount", "op": "gt", "value": 50}],
    },
    {"revenue": "charge_count", "op": "gte", "value": 1},
    {"group": "acme", "op": "member"},
    {"group_trait": "employees", "op": "gt", "value": 10},
    {"event": "Opened App", "op": "not_performed"},
    {"event": "Purchased", "op": "last_performed", "more_than_days_ago": 2},
    {"trait": "city", "op": "not_in", "value": ["Paris", "Lyon"]},
    {"random": "holdout", "percent": 50},
    {"audience": "big_spenders", "op": "member"},
]


KINDS = ["identify", "identify", "track", "track", "page", "group", "anon", "alias", "order"]
KINDS.append("audience")


def stream(seed: int, now: datetime, n: int = 160) -> list[Message]:
    """A random mix of every message kind over a few users, in the last few days."""
    rnd = random.Random(seed)
    users = [f"u{i}" for i in range(10)]
    anons = [f"anon{i}" for i in range(4)]
    out: list[Message] = []
    for _ in range(n):
        user = rnd.choice(users)
        at = iso(ms(now - timedelta(hours=rnd.randint(0, 120))))
        kind = rnd.choice(KINDS)
        if kind == "identify":
            traits = {
                k: v
                for k, v in {
                    "plan": rnd.choice(["pro", "free", None]),
                    "age": rnd.choice([20, 30, 45, "40", None]),
                    "city": rnd.choice(["Paris", "Rome", None]),
                }.items()
                if rnd.random() < 0.6
            }
            out.append(identify(user, traits, timestamp=at))
        elif kind == "track":
            event = rnd.choice(["Purchased", "Purchased", "Opened App"])
            amount = rnd.choice([10, 60, 99.5, "70"])
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": event,
                    "properties": {"amount": amount},
                    "timestamp": at,
                }
            )
        elif kind == "page":
            path = rnd.choice(["/docs/a", "/pricing", "/docs"])
            out.append(
                {
                    "type": "page",
                    "userId": user,
                    "name": "Page",
                    "properties": {"path": path},
                    "timestamp": at,
                }
            )
        elif kind == "group":
            gid = rnd.choice(["acme", "globex"])
            out.append(
                {
                    "type": "group",
                    "userId": user,
                    "groupId": gid,
                    "traits": {"employees": rnd.choice([5, 50])},
                    "timestamp": at,
                }
            )
        elif kind == "anon":
            traits = {"plan": "pro"} if rnd.random() < 0.5 else {"age": 33}
            out.append({"type": "identify", "anonymousId": rnd.choice(anons), "traits": traits})
        elif kind == "alias":
            out.append({"type": "alias", "userId": user, "previousId": rnd.choice(anons)})
        elif kind == "order":
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Order Completed",
                    "properties": {"total": 20, "order_id": uuid.uuid4().hex},
                    "timestamp": at,
                }
            )
        else:
            out.append(
                {
                    "type": "identify",
                    "userId": user,
                    "traits": {"big_spenders": rnd.random() < 0.5},
                    "context": {
                        "personas": {
                            "computation_class": "audience",
                            "computation_key": "big_spenders",
                        }
                    },
                }
            )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_incremental_upkeep_equals_a_full_computation(project: Project, seed: int) -> None:
    p = project
    base = ready(p, "base", {"trait": "plan", "op": "eq", "value": "pro"})
    rules = [*STREAM_RULES, {"all": [{"segment": base, "op": "in"}, STREAM_RULES[1]]}]
    incremental = [ready(p, f"inc {i}", r) for i, r in enumerate(rules)]
    messages = stream(seed, ms(clock.now()))
    rnd = random.Random(seed)
    start = 0
    while start < len(messages):
        size = rnd.choice([1, 1, 3, 10, 25])
        p.send(*messages[start : start + size])
        start += size
    # Full computations of the same definitions, after the fact.
    full = [ready(p, f"full {i}", r) for i, r in enumerate(rules)]
    disagree = []
    interesting = 0
    for inc, fl, r in zip(incremental, full, rules, strict=True):
        members = p.members(inc)
        interesting += len(members) > 0
        # The stored members are also what the SQL compiler says now.
        with p.db.session() as session:
            tree = segments.check_rules(session, project_id=p.id, rules=p.segment(inc).rules)
            now_ids = compiled.member_ids(session, project_id=p.id, rules=tree, now=clock.now())
        if not members == p.members(fl) == now_ids:
            disagree.append((r, sorted(members), sorted(p.members(fl)), sorted(now_ids)))
        assert p.segment(inc).member_count == len(members), r
    assert disagree == [], "(rules, incremental, computed, compiled now)"
    assert interesting >= len(rules) // 2  # the stream exercised most definitions


def test_member_count_follows_merges_and_erasure(project: Project) -> None:
    """A customer who disappears (merged into another, or erased) leaves the count too."""
    p = project
    sid = ready(p, "Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    p.send(identify("u1", {"plan": "pro"}))
    p.send({"type": "identify", "anonymousId": "visitor", "traits": {"plan": "pro"}})
    p.send(identify("u2", {"plan": "pro"}))
    assert len(p.members(sid)) == 3
    assert p.segment(sid).member_count == 3

    p.send({"type": "alias", "userId": "u1", "previousId": "visitor"})  # one profile now
    assert len(p.members(sid)) == 2
    assert p.segment(sid).member_count == len(p.members(sid))

    p.send({"type": "delete", "userId": "u2"})
    assert p.members(sid) == {p.customer("u1")}
    assert p.segment(sid).member_count == len(p.members(sid))


def test_no_jobs_are_left_failed(project: Project) -> None:
    """The compute jobs of this module's projects all completed."""
    p = project
    ready(p, "Any", {"trait": "plan", "op": "exists"})
    with p.db.session() as session:
        failed = list(
            session.execute(select(Job.name, Job.last_error).where(Job.status == "failed"))
        )
    assert failed == []


def test_a_group_trait_change_reaches_every_member_of_the_group(project: Project) -> None:
    p = project
    big = ready(p, "Big companies", {"group_trait": "employees", "op": "gt", "value": 10})
    group = {"type": "group", "groupId": "acme"}
    p.send({**group, "userId": "ann", "traits": {"employees": 5}})
    p.send({**group, "userId": "bob", "traits": {}})
    assert p.members(big) == set()
    # Bob reports that acme has grown: Ann works there too.
    p.send({**group, "userId": "bob", "traits": {"employees": 50}})
    assert p.members(big) == {p.customer("ann"), p.customer("bob")}


def test_a_change_committed_just_after_the_computation_is_not_lost(
    project: Project, backend: str
) -> None:
    """An ingest transaction that saw the segment "computing" commits only after the
    computation has finished: the customer it queued for a recheck must still be evaluated.

    SQLite serialises writers (the ingest transaction holds the write lock from its start), so
    the interleaving below can only happen on PostgreSQL.
    """
    if backend != "postgres":
        pytest.skip("SQLite runs one writer at a time: this interleaving cannot happen")
    p = project
    p.send(identify("x", {"plan": "free"}))
    sid = p.create("Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    entry = Entry(
        project_id=p.id,
        message_id=uuid.uuid4().hex,
        received_at=clock.now(),
        raw=identify("x", {"plan": "pro"}),
    )
    computation = threading.Thread(target=p.run_jobs)
    with p.db.session(write=True) as session:
        apply_entries(session, [entry])  # sees "computing": queues x for a recheck
        computation.start()
        computation.join(timeout=3)
        # The computation cannot finish under an open transaction that saw it computing.
        assert computation.is_alive()
        assert p.segment(sid).status == "computing"
    computation.join(timeout=120)
    assert not computation.is_alive()
    assert p.segment(sid).status == "ready"
    assert entry.status == "accepted"
    x = p.customer("x")
    assert p.members(sid) == {x}, "x has plan pro but is not a member"
    assert p.rechecks(sid) == set()


@pytest.mark.parametrize("step", ["_recheck", "_merge_part"])
def test_a_computation_step_that_deadlocks_runs_again(
    project: Project, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """PostgreSQL breaks a deadlock by failing one transaction: when it picks the last step of
    a computation, or the batch bringing the customers' timers earlier, the step starts over
    rather than leaving the segment failed."""
    from psycopg.errors import DeadlockDetected
    from sqlalchemy.exc import OperationalError

    p = project
    t0 = ms(clock.now())
    p.send(identify("x", {"plan": "pro"}), track("x", "Signed In", t0))
    real = getattr(membership, step)
    calls: list[int] = []

    def deadlocked_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE segments", {}, DeadlockDetected("deadlock detected"))
        return real(*args, **kwargs)

    monkeypatch.setattr(membership, step, deadlocked_once)
    rules = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"event": "Signed In", "op": "performed", "within_days": 2},
        ]
    }
    with p.db.session(write=True) as session:
        session.execute(delete(SegmentTimer))
    sid = p.create("Active pros", rules)
    p.run_jobs()
    monkeypatch.undo()
    seg = p.segment(sid)
    assert (seg.status, seg.error, seg.member_count) == ("ready", None, 1)
    assert len(calls) == 2
    x = p.customer("x")
    assert p.members(sid) == {x}
    assert p.timers() == {x: t0 + 2 * DAY + MS}


# -- rows that go with their customer or segment ----------------------------------------------

# Events, members, history and timers have no foreign keys: Tidings removes them itself. A
# timer is the customer's, for all its segments.
DEPENDENT = {
    "events": ("customer_id", None),
    "segment_members": ("customer_id", "segment_id"),
    "segment_growth": (None, "segment_id"),
    "segment_timers": ("customer_id", None),
}


def orphans(db: Database) -> dict[str, int]:
    """Rows, in the whole database, whose customer or segment no longer exists."""
    found: dict[str, int] = {}
    with db.session() as session:
        for table, (customer, segment) in DEPENDENT.items():
            missing = []
            if customer is not None:
                missing.append(f"NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = t.{customer})")
            if segment is not None:
                missing.append(f"NOT EXISTS (SELECT 1 FROM segments s WHERE s.id = t.{segment})")
            gone = " OR ".join(missing)
            n = session.execute(text(f"SELECT count(*) FROM {table} t WHERE {gone}")).scalar_one()
            if n:
                found[table] = int(n)
    return found


def rows_of(db: Database, column: str, value: int) -> dict[str, int]:
    """How many rows of each dependent table refer to this customer or segment."""
    found: dict[str, int] = {}
    with db.session() as session:
        for table, (customer, segment) in DEPENDENT.items():
            key = customer if column == "customer" else segment
            if key is None:
                continue
            n = session.execute(
                text(f"SELECT count(*) FROM {table} WHERE {key} = :v"),
                {"v": value},
            ).scalar_one()
            if n:
                found[table] = int(n)
    return found


def test_erased_merged_and_deleted_leave_no_rows(project: Project) -> None:
    """A customer erased (a delete message, or the API) or merged away takes its events (its
    timeline, segment entries and exits included), memberships and timer with it; a deleted
    segment its memberships and growth."""
    from tidings.ingest import service as ingestion

    p = project
    now = clock.now()
    active = ready(p, "Active", {"event": "Signed In", "op": "performed", "within_days": 7})
    pro = ready(p, "Pro", {"trait": "plan", "op": "eq", "value": "pro"})
    for user in ("erased", "by-api", "known"):
        p.send(identify(user, {"plan": "pro"}), track(user, "Signed In", now))
    p.send(
        {"type": "identify", "anonymousId": "visitor", "traits": {"plan": "pro"}},
        {"type": "track", "anonymousId": "visitor", "event": "Signed In", "timestamp": iso(now)},
    )
    with p.db.session() as session:
        visitor = session.scalars(
            select(AnonymousId.customer_id).where(
                AnonymousId.project_id == p.id, AnonymousId.anonymous_id == "visitor"
            )
        ).one()
    erased, by_api, known = (p.customer(u) for u in ("erased", "by-api", "known"))
    for cid in (erased, by_api, visitor):
        # Each has events, two memberships and a timer before it goes.
        assert set(rows_of(p.db, "customer", cid)) == {t for t, k in DEPENDENT.items() if k[0]}

    p.send({"type": "delete", "userId": "erased"})
    with p.db.session(write=True) as session:
        ingestion.erase_customer(session, project_id=p.id, customer_id=by_api)
    p.send({"type": "alias", "userId": "known", "previousId": "visitor"})  # merged away
    for cid in (erased, by_api, visitor):
        assert rows_of(p.db, "customer", cid) == {}, cid
    assert p.members(pro) == p.members(active) == {known}
    assert p.segment(pro).member_count == p.segment(active).member_count == 1

    assert set(rows_of(p.db, "segment", active)) == {"segment_members", "segment_growth"}
    with p.db.session(write=True) as session:
        segments.delete(session, project_id=p.id, segment_id=active)
    assert rows_of(p.db, "segment", active) == {}
    assert p.members(pro) == {known}
    assert orphans(p.db) == {}
    # The customer's timer was set for the deleted segment: it falls due, nothing changes, and
    # with no time-based segment left it is not set again.
    assert set(p.timers()) == {known}
    history = p.changes(pro)
    clock.advance(8 * DAY)
    assert p.worker.run_timers() == 1
    assert p.timers() == {}
    assert p.members(pro) == {known}
    assert p.changes(pro) == history


def worker_round_beside(p: Project) -> threading.Thread:
    """A round of due timers on another connection, while this test's transaction is open:
    it must neither take the timers of the customers that transaction holds nor wait for
    them (the round's thread, to join once the transaction ends)."""
    done: list[int] = []
    rounds = threading.Thread(target=lambda: done.append(p.worker.run_timers()))
    rounds.start()
    rounds.join(timeout=10)
    assert done == [0], "the worker waited for the customer, or took its timer"
    return rounds


def due_active_member(p: Project) -> tuple[int, int, datetime]:
    """An "Active" segment whose member signed in 7 days and a minute ago, its timer now due:
    (segment, customer, sign-in)."""
    sid = ready(p, "Active", {"event": "Signed In", "op": "performed", "within_days": 7})
    t0 = ms(clock.now())
    p.send(identify("x"), track("x", "Signed In", t0))
    x = p.customer("x")
    clock.advance(7 * DAY + timedelta(minutes=1))
    return sid, x, t0


def test_a_due_timer_is_left_to_upkeep_that_relies_on_it(project: Project, backend: str) -> None:
    """The processor evaluates a customer whose timer has just fallen due, and keeps the timer
    (its own flip comes later); meanwhile the worker runs the due timers. The worker must not
    take that timer and evaluate the customer without the message the processor is applying:
    it leaves it for a later round, when the message is in.

    SQLite runs one writer at a time, so the two cannot overlap there.
    """
    if backend != "postgres":
        pytest.skip("SQLite runs one writer at a time: this interleaving cannot happen")
    p = project
    sid, x, t0 = due_active_member(p)
    t1 = ms(clock.now())
    with p.db.session(write=True) as session:  # the processor, signing x in again
        entry = Entry(
            project_id=p.id,
            message_id=uuid.uuid4().hex,
            received_at=clock.now(),
            raw=track("x", "Signed In", t1),
        )
        apply_entries(session, [entry])
        assert entry.status == "accepted"
        rounds = worker_round_beside(p)
    rounds.join(timeout=60)
    assert p.members(sid) == {x}
    assert p.timers() == {x: t0 + 7 * DAY + MS}  # kept by the processor, now due
    assert p.worker.run_timers() == 1
    assert p.members(sid) == {x}
    assert p.timers() == {x: t1 + 7 * DAY + MS}
    assert p.changes(sid) == [(x, "entered")]


def test_a_due_timer_is_left_while_its_customer_is_being_evaluated(
    project: Project, backend: str
) -> None:
    """From the moment the processor loads a customer (before it reads any membership or
    timer) until it commits, the worker leaves that customer's due timer to a later round.

    SQLite runs one writer at a time, so the two cannot overlap there.
    """
    if backend != "postgres":
        pytest.skip("SQLite runs one writer at a time: this interleaving cannot happen")
    p = project
    sid, x, _ = due_active_member(p)
    with p.db.session(write=True) as session:
        batch = ProfileBatch(p.id, Policy())
        batch.load(session, user_ids={"x"}, emails=set(), aliases=set(), group_ids=set())
        assert [q.id for q in batch.profiles] == [x]
        rounds = worker_round_beside(p)
    rounds.join(timeout=60)
    assert p.members(sid) == {x}
    assert p.worker.run_timers() == 1
    assert p.members(sid) == set()


@pytest.mark.parametrize("goes", ["customer", "segment"])
def test_a_deletion_waits_for_a_writer_holding_what_it_deletes(
    project: Project, backend: str, goes: str
) -> None:
    """A transaction re-evaluates a membership while another deletes its customer (or its
    segment): the deletion waits for the writer. The writer only brings the customer's timer
    earlier here (no entry or exit, so no member or count row of its own to conflict on): the
    customer's deletion then takes it, a segment's leaves it (it serves all the customer's
    segments).

    SQLite runs one writer at a time, so the two cannot overlap there.
    """
    if backend != "postgres":
        pytest.skip("SQLite runs one writer at a time: this interleaving cannot happen")
    from tidings.ingest import service as ingestion

    p = project
    sid, x, t0 = sign_in_moved(p, -DAY)

    def delete() -> None:
        with p.db.session(write=True) as session:
            if goes == "customer":
                ingestion.erase_customer(session, project_id=p.id, customer_id=x)
            else:
                segments.delete(session, project_id=p.id, segment_id=sid)

    deletion = threading.Thread(target=delete)
    with p.db.session(write=True) as session:
        seg = next(s for s in membership.live_segments(session, p.id) if s.id == sid)
        changed = membership.evaluate_pairs(
            session, project_id=p.id, pairs={x: [seg]}, source="time"
        )
        assert changed == 0  # still a member: only the timer moves (a day earlier)
        deletion.start()
        deletion.join(timeout=3)
        assert deletion.is_alive(), "the deletion did not wait for the writer"
    deletion.join(timeout=60)
    assert not deletion.is_alive()
    gone = x if goes == "customer" else sid
    assert rows_of(p.db, goes, gone) == {}
    assert orphans(p.db) == {}
    assert p.timers() == ({} if goes == "customer" else {x: t0 + 6 * DAY + MS})


# -- upkeep beside the processor (PostgreSQL) -------------------------------------------------

BESIDE_ONLY = "SQLite evaluates inside the processor's transaction: nothing runs beside it"
TRIAL = {"trait": "plan", "op": "eq", "value": "trial"}


@pytest.fixture
def beside(backend: str, db: Database) -> Iterator[Upkeep]:
    if backend != "postgres":
        pytest.skip(BESIDE_ONLY)
    with db.session(write=True) as session:
        session.execute(delete(SegmentUpkeep))  # what an earlier test left is not this one's
    runner = Upkeep(db)
    yield runner
    runner.close()


@contextmanager
def holding(p: Project, customer_id: int) -> Iterator[Session]:
    """A transaction of someone else's (the processor's next chunk, say) holding a customer."""
    with p.db.session(write=True) as session:
        session.execute(
            text("SELECT id FROM customers WHERE id = :c FOR NO KEY UPDATE"), {"c": customer_id}
        )
        yield session


def test_upkeep_beside_the_processor_gives_what_upkeep_inside_it_gives(
    project: Project, beside: Upkeep
) -> None:
    """The same messages, evaluated after each chunk commits: a stored customer, a customer
    the chunk creates (evaluated on the chunk's own events), a trait change; counts, timers
    and the queue end as if the chunks had evaluated them inside."""
    p = project
    trial = ready(p, "Trial", TRIAL)
    active = ready(p, "Signed in", {"event": "Signed In", "op": "performed", "within_days": 7})
    both = ready(
        p,
        "Trial, signed in twice",
        {"all": [TRIAL, {"event": "Signed In", "op": "performed", "count": {"gte": 2}}]},
    )
    p.send(identify("a", {"plan": "trial"}), identify("b", {"plan": "free"}))
    a, b = p.customer("a"), p.customer("b")
    p.send(
        track("a", "Signed In"),
        identify("c", {"plan": "trial"}),
        track("c", "Signed In"),
        beside=beside,
    )
    p.send(track("a", "Signed In"), identify("b", {"plan": "trial"}), beside=beside)
    beside.wait()
    c = p.customer("c")
    assert p.members(trial) == {a, b, c}
    assert p.members(active) == {a, c}
    assert p.members(both) == {a}
    assert [p.segment(s).member_count for s in (trial, active, both)] == [3, 2, 1]
    assert set(p.timers()) == {a, c}
    assert p.changes(both) == [(a, "entered")]
    assert sorted(p.segment_timeline(c), key=lambda e: e[1]["segment_id"]) == [
        ("Trial", {"segment_id": trial, "change": "entered"}, "event"),
        ("Signed in", {"segment_id": active, "change": "entered"}, "event"),
    ]
    assert p.queued() == []


def test_upkeep_leaves_a_customer_someone_holds_until_it_is_free(
    project: Project, beside: Upkeep
) -> None:
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}), identify("y", {"plan": "free"}))
    x, y = p.customer("x"), p.customer("y")
    to_trial = [identify("x", {"plan": "trial"}), identify("y", {"plan": "trial"})]
    work = p.apply(to_trial, deferred=True)
    with holding(p, x):
        beside.submit(work)
        beside.wait(timeout=0)  # the round, and no second try
        assert p.members(trial) == {y}
        assert p.queued() == [[x]]  # until it is evaluated, x stays queued
    beside.wait()
    assert p.members(trial) == {x, y}
    assert p.segment(trial).member_count == 2
    assert p.queued() == []


def test_upkeep_drops_a_customer_deleted_while_someone_held_it(
    project: Project, beside: Upkeep
) -> None:
    from tidings.ingest import service as ingestion

    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")
    work = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    with holding(p, x) as erasing:
        ingestion.erase_customer(erasing, project_id=p.id, customer_id=x)
        beside.submit(work)
        beside.wait(timeout=0)
        assert p.queued() == [[x]]
    beside.wait()
    assert p.queued() == []
    assert p.members(trial) == set()
    assert p.segment(trial).member_count == 0
    assert orphans(p.db) == {}


def test_a_failed_round_leaves_its_customers_queued_for_recovery(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as m:
        m.setattr(membership, "evaluate_pairs", broken)
        p.send(identify("x", {"plan": "trial"}), beside=beside)
        beside.wait()
    assert p.members(trial) == set()
    assert p.queued() == [[x]]
    with p.db.session() as session:
        assert upkeep.pending(session).get(p.id) == 1  # as /metrics reports it
    rounds: list[Any] = []
    run = beside._run
    monkeypatch.setattr(beside, "_run", lambda *a: rounds.append(a) or run(*a))
    assert beside.recover() == 0  # a round may still be working on a row this new
    assert rounds == []  # and none runs for nothing
    assert beside.recover(older_than=timedelta(0)) == 1
    assert p.members(trial) == {x}
    assert p.changes(trial) == [(x, "entered")]
    assert p.queued() == []
    with p.db.session() as session:
        assert p.id not in upkeep.pending(session)


def test_a_row_that_keeps_failing_waits_longer_each_time_and_the_others_go_on(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    p.send(identify("y", {"plan": "free"}))
    x, y = p.customer("x"), p.customer("y")
    evaluate = membership.evaluate_pairs
    broken = {x, y}
    tried: list[set[int]] = []

    def failing(*args: Any, **kwargs: Any) -> int:
        customers = set(kwargs["pairs"])
        tried.append(customers)
        if customers & broken:
            raise RuntimeError("cannot evaluate this customer")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(membership, "evaluate_pairs", failing)
    p.send(identify("x", {"plan": "trial"}), beside=beside)
    p.send(identify("y", {"plan": "trial"}), beside=beside)
    beside.wait()
    assert p.queued() == [[x], [y]]

    def recover() -> list[set[int]]:
        tried.clear()
        beside.recover(older_than=timedelta(0))
        return list(tried)

    # Together, then each on its own: both fail and wait RETRY.
    assert recover() == [{x, y}, {x}, {y}]
    broken.discard(y)
    assert recover() == []
    clock.advance(upkeep.RETRY)
    assert recover() == [{x, y}, {x}, {y}]  # y is done; x now waits twice as long
    assert p.members(trial) == {y}
    assert p.queued() == [[x]]
    clock.advance(upkeep.RETRY)
    assert recover() == []
    clock.advance(upkeep.RETRY)
    assert recover() == [{x}, {x}]  # and then four times as long
    broken.clear()
    clock.advance(3 * upkeep.RETRY)
    assert recover() == []
    clock.advance(upkeep.RETRY)
    assert recover() == [{x}]
    assert p.members(trial) == {x, y}
    assert p.queued() == []
    assert recover() == []


def api_traits(p: Project, customer_id: int, traits: dict[str, Any]) -> None:
    """An edit through the API, and its segment refresh job (another worker's, say)."""
    with p.db.session(write=True) as session:
        customers.update_traits(session, project_id=p.id, customer_id=customer_id, traits=traits)
    p.run_jobs()


def test_a_round_evaluates_the_profile_as_it_is_when_the_next_chunk_changed_it(
    project: Project, beside: Upkeep
) -> None:
    """Chunk 1 gives x a trial plan, chunk 2 a pro plan, and both commit before chunk 1's
    round: the round sees that x's row is no longer the one chunk 1 left and reads it again,
    so x never enters (and never leaves) Trial."""
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    first = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    second = p.apply([identify("x", {"plan": "pro"})], deferred=True)
    beside.submit(first)
    beside.start()  # chunk 1's round alone
    beside.submit(second)
    beside.wait()
    assert p.changes(trial) == []
    assert p.members(trial) == set()
    assert p.queued() == []


def test_a_round_never_undoes_what_another_writer_evaluated_after_its_chunk(
    project: Project, beside: Upkeep
) -> None:
    """Between a chunk's commit and its round, an API edit changes the customer back and its
    refresh evaluates it: the round must not enter the customer on the chunk's profile."""
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")
    work = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    api_traits(p, x, {"plan": "free"})
    beside.submit(work)
    beside.wait()
    assert p.members(trial) == set()
    assert p.changes(trial) == []
    assert p.queued() == []


def test_a_round_reads_a_carried_customer_only_once_it_holds_it(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer left to the next round (someone held it) changes and is evaluated by another
    writer just as that round starts: the round reads it after taking it, not before."""
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")
    work = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    with holding(p, x):
        beside.submit(work)
        beside.wait(timeout=0)
    assert p.queued() == [[x]]
    take = membership._take_customers
    edited: list[int] = []

    def edit_first(*args: Any, **kwargs: Any) -> Any:
        if not edited:
            edited.append(x)
            api_traits(p, x, {"plan": "free"})
        return take(*args, **kwargs)

    monkeypatch.setattr(membership, "_take_customers", edit_first)
    beside.wait()
    assert edited == [x]
    assert p.members(trial) == set()
    assert p.queued() == []


def test_a_round_evaluates_a_segment_as_it_is_when_it_runs(
    project: Project, beside: Upkeep
) -> None:
    """The segment is redefined (and computed) between the chunk and its round: the round
    evaluates the new definition."""
    p = project
    sid = ready(p, "Paying", TRIAL)
    p.send(identify("x", {"plan": "free"}), identify("y", {"plan": "free"}))
    y = p.customer("y")
    work = p.apply(
        [identify("x", {"plan": "trial"}), identify("y", {"plan": "pro"})], deferred=True
    )
    p.update(sid, {"trait": "plan", "op": "eq", "value": "pro"})
    p.run_jobs()
    assert p.members(sid) == {y}  # the computation saw both profiles already
    beside.submit(work)
    beside.wait()
    assert p.members(sid) == {y}
    assert p.segment(sid).member_count == 1


def test_a_round_that_finds_its_segment_edited_leaves_it_to_the_computation(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segment is edited after the round has read the definitions, before it holds the
    segment: the round records a recheck for the computation instead of evaluating the old
    definition (which would enter x, for the computation to take out again)."""
    p = project
    sid = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")
    work = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    hold = membership._hold_segments
    edited: list[int] = []

    def edit_first(*args: Any, **kwargs: Any) -> Any:
        if not edited:
            edited.append(sid)
            p.update(sid, {"trait": "plan", "op": "eq", "value": "pro"})
        return hold(*args, **kwargs)

    monkeypatch.setattr(membership, "_hold_segments", edit_first)
    beside.submit(work)
    beside.wait()
    assert edited == [sid]
    assert p.rechecks(sid) == {x}
    p.run_jobs()
    assert p.changes(sid) == []
    assert p.members(sid) == set()


CLICKED_NEVER_BOUGHT = {
    "all": [
        {"event": "Clicked", "op": "performed", "within_days": 7},
        {"not": {"event": "Bought", "op": "performed"}},
    ]
}


def evaluated_customers(monkeypatch: pytest.MonkeyPatch) -> list[set[int]]:
    """The customers each `membership.load_facts` call reads facts for, from now on."""
    calls: list[set[int]] = []
    load = membership.load_facts

    def spy(
        session: Session, project_id: int, customer_ids: Iterable[int], *a: Any, **k: Any
    ) -> dict[int, Facts]:
        ids = set(customer_ids)
        calls.append(ids)
        return load(session, project_id, ids, *a, **k)

    monkeypatch.setattr(membership, "load_facts", spy)
    return calls


def test_new_events_that_cannot_change_a_membership_leave_it_unevaluated(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member clicking again stays a member, a non-member buying again stays out: neither is
    evaluated. A member buying, or a non-member clicking, is; so is a member buying and
    clicking (the click alone would leave it alone)."""
    p = project
    sid = ready(p, "Clicked this week, never bought", CLICKED_NEVER_BOUGHT)
    p.send(
        track("x", "Clicked"), track("y", "Clicked"), track("y", "Bought"), track("v", "Clicked")
    )
    p.send(track("z", "Viewed"))
    x, y, z, v = p.customer("x"), p.customer("y"), p.customer("z"), p.customer("v")
    p.send(track("v", "Bought"), track("v", "Clicked"))
    assert p.members(sid) == {x}
    timers = p.timers()
    assert x in timers
    calls = evaluated_customers(monkeypatch)
    p.send(track("x", "Clicked"), track("y", "Bought"))
    assert not any(c & {x, y} for c in calls)
    assert p.members(sid) == {x}
    assert p.timers() == timers
    p.send(track("x", "Bought"), track("z", "Clicked"))
    assert {x, z} <= set().union(*calls)
    assert p.members(sid) == {z}
    assert p.changes(sid) == [
        (x, "entered"),
        (v, "entered"),
        (v, "exited"),
        (x, "exited"),
        (z, "entered"),
    ]


def test_a_round_evaluates_a_pair_that_its_chunks_move_both_ways(
    project: Project, beside: Upkeep
) -> None:
    """One chunk's new click alone would leave member x alone; the next chunk's purchase, in the
    same round, can take it out: the round evaluates x, and x leaves."""
    p = project
    sid = ready(p, "Clicked this week, never bought", CLICKED_NEVER_BOUGHT)
    p.send(track("x", "Clicked"), beside=beside)
    beside.wait()
    x = p.customer("x")
    assert p.members(sid) == {x}
    first = p.apply([track("x", "Clicked")], deferred=True)
    second = p.apply([track("x", "Bought")], deferred=True)
    beside.submit(first)
    beside.submit(second)
    beside.wait()  # one round takes both chunks
    assert p.members(sid) == set()
    assert p.changes(sid) == [(x, "entered"), (x, "exited")]


def lock_waits(db: Database) -> int:
    """Backends of this database waiting for a lock (PostgreSQL)."""
    with db.session() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
        )


def cancel_lock_waits(db: Database) -> None:
    with db.session() as session:
        session.execute(
            text(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event_type = "
                "'Lock' AND datname = current_database()"
            )
        )


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_computation_waits_for_a_round_holding_the_old_definition(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round holds the segment as it was (ready) when the segment is edited and its
    computation starts: the computation waits for the round before it reads the members it
    compares with, so it neither fails on the member the round entered nor misses it."""
    p = project
    sid = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    x = p.customer("x")
    work = p.apply([identify("x", {"plan": "trial"})], deferred=True)
    go, inside = threading.Event(), threading.Event()
    load = membership.load_facts

    def paused(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("tidings-segments") and not go.is_set():
            inside.set()
            go.wait(20)
        return load(*args, **kwargs)

    monkeypatch.setattr(membership, "load_facts", paused)
    progress = membership._set_progress

    def round_done_first(*args: Any, **kwargs: Any) -> Any:
        go.set()  # were the computation not waiting for it, the round would go on only now
        beside.wait()
        return progress(*args, **kwargs)

    monkeypatch.setattr(membership, "_set_progress", round_done_first)
    beside.submit(work)
    beside.start()
    assert inside.wait(10)  # the round holds x and the segment (as it was: ready)
    p.update(sid, {"any": [TRIAL, {"trait": "plan", "op": "eq", "value": "pro"}]})
    computing = threading.Thread(target=p.run_jobs)
    computing.start()
    eventually(lambda: lock_waits(p.db) > 0)  # the computation waits for the round
    go.set()
    computing.join(30)
    assert not computing.is_alive()
    seg = p.segment(sid)
    assert (seg.status, seg.error, seg.member_count) == ("ready", None, 1)
    assert p.members(sid) == {x}
    assert p.changes(sid) == [(x, "entered")]


def test_a_chunk_never_waits_for_a_round_while_it_holds_its_customers(
    project: Project, beside: Upkeep
) -> None:
    """A round waits for a computation's last step (which holds the segment), and that step
    waits for a customer the processor's next chunk holds: the chunk starts the round without
    waiting for the one before, commits, and all three finish. (Were the chunk to wait for the
    round inside its transaction, the three would wait for each other, and PostgreSQL could
    not see it.)"""
    p = project
    sid = ready(p, "Trial", TRIAL)
    p.send(identify("z", {"plan": "free"}))
    p.send(identify("x", {"plan": "free"}), identify("y", {"plan": "free"}))
    z, x = p.customer("z"), p.customer("x")
    assert z < x  # the last step locks z, then x (in the order of their ids)
    p.update(sid, {"trait": "plan", "op": "eq", "value": "pro"})  # computing; its job not run
    version = p.segment(sid).version
    with p.db.session(write=True) as session:  # writers during the computation left rechecks
        session.execute(
            text(
                "INSERT INTO segment_rechecks (segment_id, customer_id) VALUES (:s, :z), (:s, :x)"
            ),
            {"s": sid, "z": z, "x": x},
        )
    beside.submit(p.apply([identify("y", {"plan": "trial"})], deferred=True))
    errors: list[BaseException] = []

    def run(step: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                step()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    queued: list[upkeep.Work] = []

    def next_chunk() -> None:  # as process_chunk applies it
        entry = Entry(p.id, uuid.uuid4().hex, clock.now(), identify("x", {"plan": "pro"}))
        with p.db.session(write=True) as session:
            apply_entries(session, [entry], deferred=queued, loaded=beside.start)

    with holding(p, z):  # someone holds z for a moment
        finishing = run(lambda: membership._finish(p.db, p.id, sid, version))
        assert eventually(lambda: lock_waits(p.db) == 1)  # the last step waits for z
        beside.start()  # the round of y: it waits for the segment
        assert eventually(lambda: lock_waits(p.db) == 2)
        beside.submit(p.apply([identify("w", {"plan": "trial"})], deferred=True))
        chunk = run(next_chunk)  # holds x, starts the next round
        chunk.join(10)
        hung = chunk.is_alive()
        if hung:  # break the wait cycle, so that the test fails instead of hanging
            cancel_lock_waits(p.db)
        assert not hung, "the chunk waits for a round inside its transaction"
    finishing.join(30)
    beside.submit(queued)
    beside.wait()
    assert not finishing.is_alive()
    assert errors == []
    seg = p.segment(sid)
    assert (seg.status, seg.error) == ("ready", None)
    assert p.members(sid) == {x}  # the segment is now "plan = pro": y and w are on trial
    assert p.queued() == []


def test_the_processor_waits_for_a_round_when_too_many_chunks_wait_for_the_next(
    project: Project, beside: Upkeep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a round runs, committed chunks wait for the next one; past `upkeep.BEHIND` of
    them, submitting (between two chunks) waits for the running round."""
    p = project
    trial = ready(p, "Trial", TRIAL)
    p.send(identify("x", {"plan": "free"}))
    go = threading.Event()
    evaluate = membership.evaluate_pairs

    def slow(*args: Any, **kwargs: Any) -> Any:
        go.wait(20)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(membership, "evaluate_pairs", slow)
    beside.submit(p.apply([identify("x", {"plan": "trial"})], deferred=True))
    beside.start()  # a round that runs until `go`
    chunks = [
        p.apply([identify(f"y{i}", {"plan": "trial"})], deferred=True) for i in range(upkeep.BEHIND)
    ]
    submitting = threading.Thread(target=lambda: [beside.submit(w) for w in chunks])
    submitting.start()
    submitting.join(1.0)
    assert submitting.is_alive(), "the processor ran ahead of a round still running"
    go.set()
    submitting.join(20)
    assert not submitting.is_alive()
    beside.wait()
    assert len(p.members(trial)) == 1 + upkeep.BEHIND
    assert p.queued() == []
