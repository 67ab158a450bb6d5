"""Segment upkeep beside the processor (PostgreSQL).

On PostgreSQL the processor does not evaluate a chunk's segments inside the chunk's
transaction: the transaction records the customers to evaluate (`queue`), and once it commits,
an `Upkeep` evaluates them on a connection of its own while the processor applies the next
chunk. The database server works for both at once, and the processor does not wait for
upkeep's reads and writes. SQLite has one writer at a time and nothing to overlap: there the
processor evaluates inside its transaction (`membership.refresh`).

One round runs at a time, in the order of the chunks. The processor starts a chunk's round once
its next chunk holds its own customers; the round then takes (locks) the customers no one else
holds, before it reads anything, as every writer that evaluates a customer does, and leaves the
others (mostly the next chunk's) to the round after. It evaluates the segments as they are when
it starts, on the profile the chunk left if the customer's row is still the one the chunk wrote
(its version, PostgreSQL's xmin) or else as read now, and on events read now. Starting a round
never waits for the one before it (the chunk's transaction is open, and a round may be waiting
for a lock that waits for it): while a round runs, the chunks that commit meanwhile wait for
the next one, which takes them together (past `BEHIND` of them, the processor waits for the
running round between its transactions). Memberships lag the processor by the chunks committed
while a round runs, and `wait` catches up.

Nothing acknowledged is lost: the queue row of a chunk goes in the chunk's transaction and out
in the transaction of the round that evaluated it (or that queued its skipped customers
again). A row left behind (a crash, a failed round) is evaluated again by `recover`, every
segment for each of its customers; a row that fails again on its own waits longer each time
before the next attempt (`RETRY`), and is never dropped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg.errors import DeadlockDetected
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.db import Database, table_of
from tidings.segments import membership
from tidings.segments.evaluate import Facts
from tidings.segments.membership import Keeps, LiveSegment, NewEvents
from tidings.segments.models import SegmentUpkeep
from tidings.segments.rules import Facet

log = logging.getLogger(__name__)

ATTEMPTS = 3  # a round that meets a deadlock runs again
STALE = timedelta(seconds=30)  # a queue row this old belongs to no running round
RECOVER_BATCH = 100
BEHIND = 4  # chunks waiting for a round before the processor waits for the running one
# A recovered row that fails on its own waits this long before its next attempt, then longer
# after each failure, as jobs do (`jobs.retry_delay`).
RETRY = jobs.retry_delay(1)


@dataclass(slots=True)
class Work:
    """A committed chunk's segment upkeep for one project, as `membership.refresh` takes it."""

    project_id: int
    changed: dict[int, set[Facet | str]]
    base: dict[int, Facts]
    events: dict[int, NewEvents]
    queued: int  # its segment_upkeep row
    versions: dict[int, int]  # the row versions of the customers in `base`, as the chunk left them


def queue(session: Session, project_id: int, customer_ids: list[int]) -> int:
    """Record, in the caller's transaction, customers whose segments are to be evaluated."""
    t = table_of(SegmentUpkeep)
    row = session.execute(
        insert(t)
        .values(project_id=project_id, customer_ids=customer_ids, created_at=clock.now())
        .returning(t.c.id)
    )
    return int(row.scalar_one())


def pending(session: Session) -> dict[int, int]:
    """Per project, the chunks (or leftovers of rounds) whose segment upkeep is not done."""
    t = table_of(SegmentUpkeep)
    rows = session.execute(select(t.c.project_id, func.count()).group_by(t.c.project_id))
    return {pid: int(n) for pid, n in rows}


class Upkeep:
    """Evaluates committed chunks' segments in the background, a round at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pool: ThreadPoolExecutor | None = None
        self._round: Future[bool] | None = None  # the round started last, maybe not done
        # Customers a round had to leave (someone held them): project -> customer -> segment
        # ids, and the queue rows that hold them meanwhile.
        self._carry: dict[int, dict[int, set[int]]] = {}
        self._carried: list[int] = []
        self._pending: list[Work] = []
        self._behind = 0  # chunks submitted since the last round started
        # Queue rows that failed on their own in `recover`: their failures and next attempt.
        self._failing: dict[int, tuple[int, datetime]] = {}

    def submit(self, work: list[Work]) -> None:
        """Evaluate `work` (of a committed chunk) in the next round, which `start` starts.
        Called between transactions: past `BEHIND` chunks waiting, it waits for the running
        round, so memberships never fall further behind."""
        self._pending.extend(work)
        self._behind += 1
        if self._behind >= BEHIND:
            self._finish_round()

    def start(self) -> None:
        """Start a round with the work submitted, unless a round is still running: the work
        then waits for the next call, and that round takes several chunks at once. The
        processor calls this once its next chunk holds its customers: the round leaves those to
        the round after, rather than make the chunk wait for them. It never waits: the chunk's
        transaction is open, and a round may be waiting for a lock that waits for it."""
        if not self._pending or (self._round is not None and not self._round.done()):
            return
        self._finish_round()  # done: this only collects its outcome
        work, self._pending, self._behind = self._pending, [], 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-segments")
        self._round = self._pool.submit(self._run, work)

    def wait(self, *, timeout: float = 5.0) -> None:
        """Until everything submitted is evaluated. Customers held by others are tried again
        for up to `timeout` seconds; past that (or if a round fails) they stay queued, for a
        later round or for `recover`."""
        self._finish_round()
        self.start()
        self._finish_round()
        deadline = time.monotonic() + timeout
        pause = 0.005
        while self._carry and time.monotonic() < deadline:
            if not self._run([]):
                return
            if self._carry:
                time.sleep(pause)
                pause = min(0.2, pause * 2)

    def close(self) -> None:
        """Finish what was submitted (as `wait`), then stop the round's thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _finish_round(self) -> None:
        """Until the round started last is done."""
        current, self._round = self._round, None
        if current is not None:
            current.result()

    def _run(self, work: list[Work], rows: Sequence[tuple[int, int, list[int]]] = ()) -> bool:
        """One round: `work`, the customers carried from the round before, and queue rows
        `rows` (id, project, customers) being recovered. False if it failed: its customers
        stay queued, for `recover`."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._round_once(work, rows)
                return True
            except DBAPIError as exc:
                if not isinstance(exc.orig, DeadlockDetected) or attempt == ATTEMPTS:
                    log.exception("segment upkeep failed; its customers stay queued")
                    break
                # The round's facts may be half-filled: evaluate from the database again.
                work = [Work(w.project_id, w.changed, {}, {}, w.queued, {}) for w in work]
            except Exception:
                log.exception("segment upkeep failed; its customers stay queued")
                break
        self._carry, self._carried = {}, []
        return False

    def recover(self, *, older_than: timedelta = STALE) -> int:
        """Evaluate queue rows no round is working on (left by a crash or a failed round):
        every segment for each of their customers. Returns the rows tried. A row that fails
        on its own is tried again after `RETRY`, then twice as long after each failure."""
        self._finish_round()
        t = table_of(SegmentUpkeep)
        now = clock.now()
        waiting = [rid for rid, (_, at) in self._failing.items() if at > now]
        with self.db.session() as session:
            rows = session.execute(
                select(t.c.id, t.c.project_id, t.c.customer_ids)
                .where(
                    t.c.created_at <= now - older_than,
                    t.c.id.not_in(self._carried + waiting),
                )
                .order_by(t.c.id)
                .limit(RECOVER_BATCH)
            ).all()
            if self._failing:  # rows done meanwhile (another worker's round, say)
                left = set(
                    session.execute(select(t.c.id).where(t.c.id.in_(self._failing))).scalars()
                )
                self._failing = {rid: v for rid, v in self._failing.items() if rid in left}
        batch = [(r.id, r.project_id, list(r.customer_ids)) for r in rows]
        if not batch:
            return 0
        if self._run([], batch):
            self.wait()
            for row_id, _, _ in batch:
                self._failing.pop(row_id, None)
            return len(rows)
        # One row may be what fails: the others are not kept waiting on it.
        for row in batch:
            if self._run([], [row]):
                self.wait()
                self._failing.pop(row[0], None)
                continue
            failures = self._failing.get(row[0], (0, now))[0] + 1
            pause = jobs.retry_delay(failures)
            self._failing[row[0]] = (failures, clock.now() + pause)
            log.warning(
                "segment upkeep row failed again; next attempt later",
                extra={"row": row[0], "failures": failures, "retry_in": pause.total_seconds()},
            )
        return len(rows)

    def _round_once(self, work: list[Work], rows: Sequence[tuple[int, int, list[int]]]) -> None:
        """One transaction: per project, the customers of `work`, those carried from the round
        before and those of recovered `rows`, evaluated together."""
        skipped: dict[int, dict[int, set[int]]] = defaultdict(dict)
        with self.db.session(write=True) as session:
            now = clock.now()
            plans: dict[int, _Plan] = {}
            for w in work:
                # The segments as they are now: one may have changed since the chunk.
                plan = _plan_of(session, plans, w.project_id)
                plan.base.update(w.base)
                plan.versions.update(w.versions)
                for cid, new in w.events.items():
                    mine = plan.events[cid]
                    for facet, facet_rows in new.items():
                        mine.setdefault(facet, []).extend(facet_rows)
                keeps: Keeps = {}
                plan.add(
                    membership.affected(
                        w.changed,
                        plan.segments,
                        base=w.base or None,
                        events=w.events if w.base else None,
                        now=now,
                        keeps=keeps,
                    ),
                    keeps,
                )
            for pid, customers in self._carry.items():
                plan = _plan_of(session, plans, pid)
                plan.add({cid: plan.having(ids) for cid, ids in customers.items()})
            for _, pid, ids in rows:
                plan = _plan_of(session, plans, pid)
                plan.add({int(cid): plan.segments for cid in ids})
            for pid, plan in sorted(plans.items()):
                membership.evaluate_pairs(
                    session,
                    project_id=pid,
                    pairs=plan.pairs,
                    base=plan.base or None,
                    source="event",
                    skipped=skipped[pid],
                    versions=plan.versions,
                    events=plan.events,
                    keeps=plan.keeps,
                )
            done = [w.queued for w in work] + self._carried + [row_id for row_id, _, _ in rows]
            carried = _requeue(session, done, skipped)
        self._carry = {pid: c for pid, c in skipped.items() if c}
        self._carried = carried


class _Plan:
    """A round's customers of one project, each with the segments to evaluate."""

    def __init__(self, segments: list[LiveSegment]) -> None:
        self.segments = segments
        self.base: dict[int, Facts] = {}
        self.versions: dict[int, int] = {}
        self.pairs: dict[int, list[LiveSegment]] = {}
        # The new events of the chunks' customers (some of their events: `decided_summary`).
        self.events: dict[int, NewEvents] = defaultdict(dict)
        # The pairs that every chunk adding them left one membership unchanged for.
        self.keeps: Keeps = {}

    def having(self, ids: set[int]) -> list[LiveSegment]:
        return [s for s in self.segments if s.id in ids]

    def add(self, pairs: dict[int, list[LiveSegment]], keeps: Keeps | None = None) -> None:
        """Add customers' segments to evaluate; `keeps` of theirs (see `membership.Keeps`)
        hold for the round only if every chunk that adds the pair has the same."""
        for cid, segs in pairs.items():
            if not segs:
                continue
            have = self.pairs.get(cid)
            known: set[int] = set()
            if have is None:
                self.pairs[cid] = list(segs)
            else:
                known = {s.id for s in have}
                have.extend(s for s in segs if s.id not in known)
            for s in segs:
                key = (s.id, cid)
                way = None if keeps is None else keeps.get(key)
                if s.id not in known:
                    if way is not None:
                        self.keeps[key] = way
                elif self.keeps.get(key) != way:
                    self.keeps.pop(key, None)


def _plan_of(session: Session, plans: dict[int, _Plan], project_id: int) -> _Plan:
    plan = plans.get(project_id)
    if plan is None:
        plan = plans[project_id] = _Plan(membership.live_segments(session, project_id))
    return plan


def _requeue(
    session: Session, done: list[int], skipped: dict[int, dict[int, set[int]]]
) -> list[int]:
    """Remove the rows of what a round evaluated, and queue the customers it had to leave."""
    t = table_of(SegmentUpkeep)
    for start in range(0, len(done), 500):
        session.execute(delete(t).where(t.c.id.in_(done[start : start + 500])))
    return [queue(session, pid, sorted(c)) for pid, c in sorted(skipped.items()) if c]
