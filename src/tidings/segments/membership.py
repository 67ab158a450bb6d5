"""Keeping memberships current: incremental evaluation, time flips and full computation.

- `refresh` runs inside the processor's transaction after each chunk: only the segments whose
  facets a customer's messages touched are evaluated, only for that customer (a new or merged
  customer is evaluated against every segment).
- `run_due_timers` re-evaluates every time-based segment for the customers whose timer is due:
  one timer per customer, never later than the first instant at which time alone may change
  one of its memberships (`models.SegmentTimer`).
- `compute` evaluates a new or edited segment in full with SQL, then writes the difference in
  batches, showing progress. While a segment computes, incremental evaluation leaves its
  memberships alone and records the customer in `segment_rechecks`; the last step of the
  computation evaluates them, so no change made during the computation is lost.

Every entry and exit goes on the customer's timeline with its time (an event of type
"segment"), to the domain events (`segment.entered`, `segment.exited`) and into its segment's
growth (`segment_growth`, by the hour). A full computation's are not something the customer did:
they change the members only (each with its `entered_at`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache, partial
from typing import Any, NamedTuple, TypeVar

import orjson
from psycopg.errors import DeadlockDetected
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.db import Database, table_of
from tidings.db.bulk import Bulk, chunks
from tidings.segments import compile as sql
from tidings.segments.evaluate import (
    EPSILON,
    EventRow,
    Facts,
    Summary,
    date_boundaries,
    event_directions,
    event_key,
    instant_boundaries,
    settles,
)
from tidings.segments.models import Segment, SegmentRecheck, SegmentTimer
from tidings.segments.program import Counts, Program, counts, program
from tidings.segments.rules import (
    EventCond,
    Facet,
    GroupCond,
    GroupTraitCond,
    Node,
    TagCond,
    event_facet,
    facets,
    is_timed,
    parse,
    resolve,
    walk,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

EVERYTHING = "*"
WRITE_BATCH = 20_000
# A computation's writes key-share lock their segment (PostgreSQL): a deletion waits for them,
# then removes what they wrote (`drop_segment`).
HOLD = {"read": True, "key_share": True}
FINISH_ATTEMPTS = 3
# A segment's rows without foreign keys: `drop_segment` removes them (and `forget` a customer's
# members and timer).
SEGMENT_TABLES = ("segment_members", "segment_growth")
# A timer written where the customer has one keeps the earlier of the two instants: a later
# one leaves the row as it is (nothing written).
_EARLIER = (
    "ON CONFLICT (customer_id) DO UPDATE SET due_at = excluded.due_at "
    "WHERE excluded.due_at < segment_timers.due_at"
)
# The project's members among some customers (`Bulk.select_in` by m.customer_id): one probe of
# the members' key per segment of the project and customer.
PROJECT_MEMBERS = (
    "SELECT m.segment_id, m.customer_id FROM segments s "
    "JOIN segment_members m ON m.segment_id = s.id WHERE s.project_id = {m}"
)
# Entries and exits counted into their segment's hour (`SegmentGrowth`).
_GROW = (
    "INSERT INTO segment_growth (segment_id, hour, entered, exited) VALUES ({m}, {m}, {m}, {m}) "
    "ON CONFLICT (segment_id, hour) DO UPDATE SET entered = segment_growth.entered + "
    "excluded.entered, exited = segment_growth.exited + excluded.exited"
)
# The key of a member row, and its columns' PostgreSQL types (for set-based deletes).
_PAIR = ("segment_id", "customer_id")
_PAIR_TYPES = ("integer", "bigint")
# A customer row's version on PostgreSQL: the transaction that wrote it (xmin).
_VERSION = "CAST(CAST(xmin AS text) AS bigint)"


@dataclass(frozen=True, slots=True)
class LiveSegment:
    id: int
    name: str
    version: int
    status: str
    tree: Node
    facets: frozenset[Facet]
    timed: bool
    events: EventPlan  # its event conditions, each once (`event_plan`)
    profile_facets: frozenset[Facet]  # its facets other than events and pages
    settles: bool  # whether the profile alone can decide it (`evaluate.settles`)
    program: Program  # its tree, compiled


@lru_cache(maxsize=4096)
def event_conditions(tree: Node) -> tuple[EventCond, ...]:
    """The tree's event conditions, each once, in order (worked out once per tree)."""
    return tuple(dict.fromkeys(c for c in walk(tree) if isinstance(c, EventCond)))


# A customer's new events (some of its events, stored with the rest) by their facet
# (("event", name) or ("page",)), as the processor gathers them from a chunk.
NewEvents = dict[Facet, list[EventRow]]

# A tree's event conditions, each with the facet of its events, its test of one event and the
# way more of them move the tree (`evaluate.event_directions`).
EventPlan = tuple[tuple[EventCond, Facet, Counts, int], ...]


@lru_cache(maxsize=4096)
def event_plan(tree: Node) -> EventPlan:
    """The tree's `EventPlan` (worked out once per tree)."""
    ways = event_directions(tree)
    return tuple((c, event_facet(c), counts(c), ways[c]) for c in event_conditions(tree))


# Parsed rules by (id, version, rules): ids can be reused (a test database, SQLite after a delete).
_cache: dict[tuple[int, int, bytes], Node] = {}


def parsed_trees(rows: list[tuple[int, int, dict[str, Any]]]) -> dict[int, Node]:
    """Parse stored (id, version, rules) rows, once per version; bad ones are left out."""
    parsed: dict[int, Node] = {}
    for sid, version, rules in rows:
        key = (sid, version, orjson.dumps(rules, option=orjson.OPT_SORT_KEYS))
        if key not in _cache:
            try:
                _cache[key] = parse(rules)
            except Exception:
                log.exception("stored segment does not parse", extra={"segment": sid})
                continue
        parsed[sid] = _cache[key]
    return parsed


def resolved_trees(rows: list[tuple[int, int, dict[str, Any]]]) -> dict[int, Node]:
    """Parse (id, version, rules) rows and inline segment references; bad ones are left out."""
    parsed = parsed_trees(rows)
    out: dict[int, Node] = {}
    for sid, tree in parsed.items():
        try:
            out[sid] = resolve(tree, parsed.get)
        except Exception:
            log.exception("stored segment does not resolve", extra={"segment": sid})
    return out


_live_cache: dict[tuple[Any, ...], list[LiveSegment]] = {}


class _Version(NamedTuple):
    """What `live_segments` knows a segment's version by."""

    id: int
    name: str
    version: int
    status: str
    updated_at: Any  # as the driver returns it: only compared


def live_segments(session: Session, project_id: int) -> list[LiveSegment]:
    """The project's segments that are kept current (all but failed ones)."""
    t = table_of(Segment)
    # Read on the driver's cursor, as stored (after the session's pending changes, as a query
    # through it would): asked once per chunk and per upkeep round, mostly from the cache.
    session.flush()
    rows = [
        _Version(*r)
        for r in Bulk(session).fetch(
            "SELECT id, name, version, status, updated_at FROM segments WHERE project_id = {m}",
            (project_id,),
        )
    ]
    key = (project_id, *sorted(rows))
    cached = _live_cache.get(key)
    if cached is not None:
        return cached
    rules: dict[int, Any] = {
        r.id: r.rules
        for r in session.execute(select(t.c.id, t.c.rules).where(t.c.project_id == project_id))
    }
    trees = resolved_trees([(r.id, r.version, rules[r.id]) for r in rows if r.id in rules])
    out = [
        LiveSegment(
            r.id,
            r.name,
            r.version,
            r.status,
            trees[r.id],
            facets(trees[r.id]),
            is_timed(trees[r.id]),
            event_plan(trees[r.id]),
            frozenset(f for f in facets(trees[r.id]) if f[0] not in ("event", "page")),
            settles(trees[r.id]),
            program(trees[r.id]),
        )
        for r in rows
        if r.id in trees and r.status != "failed"
    ]
    if len(_live_cache) > 256:
        _live_cache.clear()
    _live_cache[key] = out
    return out


# -- facts ------------------------------------------------------------------------------------


def load_facts(
    session: Session,
    project_id: int,
    customer_ids: Iterable[int],
    trees: Iterable[Node],
    *,
    now: datetime,
    base: dict[int, Facts] | None = None,
    per_customer: dict[int, list[EventPlan]] | None = None,
    hold: bool = False,
    new_events: dict[int, NewEvents] | None = None,
) -> dict[int, Facts]:
    """Everything the trees can look at, for these customers, in a few queries.

    Event conditions get the customers' events (the reference evaluator derives everything
    from them) or, given `per_customer` (the `event_plan` of each tree the customer is
    evaluated against), one aggregate per condition from the database, unless the customer's
    `new_events` decide it (`decided_summary`): far less to read and decode per chunk.
    `hold` locks the customers read (not those in `base`, which the caller holds) until the
    transaction ends, for a caller that writes rows for them: none can be deleted meanwhile,
    and two writers evaluating one customer take turns (each reads what the other wrote).
    """
    bulk = Bulk(session)
    ids = sorted(set(customer_ids))
    facts: dict[int, Facts] = {}
    missing = []
    for cid in ids:
        if base is not None and cid in base:
            facts[cid] = base[cid]
        else:
            missing.append(cid)
    profile_sql = (
        "SELECT id, traits, audiences, lifetime_value_units, charge_count, last_charge_at "
        "FROM customers WHERE project_id = {m}"
    )
    for part in chunks(missing):
        for cid, traits, audiences, ltv, count, last in bulk.select_in(
            profile_sql, "id", part, (project_id,), lock="NO KEY UPDATE" if hold else None
        ):
            facts[cid] = Facts(
                id=cid,
                traits=bulk.read_json(traits) or {},
                audiences=bulk.read_json(audiences) or {},
                ltv_units=ltv,
                charge_count=count,
                last_charge_at=bulk.read_dt(last),
            )
    conditions = [c for tree in trees for c in walk(tree)]
    present = sorted(facts)
    if any(isinstance(c, TagCond) for c in conditions):
        tag_sql = "SELECT customer_id, tag FROM customer_tags WHERE project_id = {m}"
        for part in chunks(present):
            for cid, tag in bulk.select_in(tag_sql, "customer_id", part, (project_id,)):
                facts[cid].tags.add(tag)
    if any(isinstance(c, GroupTraitCond | GroupCond) for c in conditions):
        group_sql = (
            "SELECT cg.customer_id, g.group_id, g.traits FROM customer_groups cg "
            "JOIN groups g ON g.id = cg.group_pk WHERE g.project_id = {m}"
        )
        for part in chunks(present):
            for cid, gid, gtraits in bulk.select_in(
                group_sql, "cg.customer_id", part, (project_id,)
            ):
                facts[cid].groups.append((gid, bulk.read_json(gtraits) or {}))
    events = [c for c in conditions if isinstance(c, EventCond)]
    if per_customer is None:
        _load_events(bulk, project_id, facts, events, now)
    else:
        _load_summaries(session, project_id, facts, per_customer, now, new_events or {})
    return facts


def _load_summaries(
    session: Session,
    project_id: int,
    facts: dict[int, Facts],
    per_customer: dict[int, list[EventPlan]],
    now: datetime,
    new_events: dict[int, NewEvents],
) -> None:
    """Per event condition, its count / first / last for the customers whose segments use it,
    aggregated by the database (with the same filters the full computation compiles), unless
    the customer's new events (`new_events`) decide it alone (`decided_summary`)."""
    wanted: dict[EventCond, list[int]] = defaultdict(list)
    for cid, plans in per_customer.items():
        f = facts.get(cid)
        if f is None:
            continue
        f.summaries_only = True
        seen: set[EventCond] = set()
        new = new_events.get(cid, {})
        for plan in plans:
            for c, facet, counted, _ in plan:
                if c in seen:
                    continue
                seen.add(c)
                rows = new.get(facet)
                decided = decided_summary(c, rows, now, counted) if rows else None
                if decided is not None:
                    f.summaries[c] = decided
                else:
                    wanted[c].append(cid)
    for cond, cid, summary in sql.event_summaries(
        session, project_id=project_id, wanted=wanted, now=now
    ):
        facts[cid].summaries[cond] = summary


def decided_summary(
    c: EventCond, rows: list[EventRow], now: datetime, counted: Counts | None = None
) -> Summary | None:
    """A summary of the condition's events built from some of them (a customer's new ones,
    stored with the rest), when those alone decide the condition as the full summary would;
    else None.

    Events only ever add to a customer's history, so its events' count and last instant are at
    least those of some of them. That decides a condition that asks for at least N events (in
    its window, or ever): it holds (not_performed: it does not) once some events reach N. It
    decides a last_performed one once one of them is within its N days (the last is then
    within them too). Its time flip, from the last event, is then never later than the true one
    (a timer that comes early only evaluates again). Other conditions need all the events: at
    most or exactly N, first_performed, and a window of days whose flip comes from its oldest
    event. `counted` is the condition's `program.counts`, if the caller has it."""
    if c.recency is not None:
        if c.op != "last_performed":
            return None
    elif not c.count.lower_only() or (c.window.days is not None and not c.count.means_any()):
        return None
    if counted is None:
        counted = counts(c)
    n = 0
    last: datetime | None = None
    for row in rows:
        if counted(row, now):
            n += 1
            if last is None or row.timestamp > last:
                last = row.timestamp
    if last is None:
        return None
    if c.recency is not None:
        return None if last < now - timedelta(days=c.recency[1]) else Summary(n, None, last)
    return Summary(n, None, last) if c.count.holds(n) else None


def _load_events(
    bulk: Bulk, project_id: int, facts: dict[int, Facts], conds: list[EventCond], now: datetime
) -> None:
    if not conds or not facts:
        return
    # The oldest instant each (type, name) needs: a bounded window prunes the history read.
    since: dict[tuple[str, str | None], datetime | None] = {}
    for c in conds:
        key = event_key(c)
        if c.recency is None and c.window.days is not None:
            start: datetime | None = now - timedelta(days=c.window.days)
        elif c.recency is None and c.window.start is not None:
            start = c.window.start
        else:
            start = None
        if key not in since:
            since[key] = start
        elif since[key] is not None:
            current = since[key]
            since[key] = None if start is None else min(start, current)  # type: ignore[type-var]
    present = sorted(facts)
    for (typ, name), start in since.items():
        sql_text = (
            "SELECT customer_id, timestamp, name, properties, context FROM events "
            "WHERE project_id = {m} AND type = {m}"
        )
        params: list[Any] = [project_id, typ]
        if name is not None:
            sql_text += " AND name = {m}"
            params.append(name)
        if start is not None:
            sql_text += " AND timestamp >= {m}"
            params.append(bulk.dt(start))
        key = (typ, name)
        for part in chunks(present):
            for cid, ts, ename, props, ctx in bulk.select_in(sql_text, "customer_id", part, params):
                facts[cid].events.setdefault(key, []).append(
                    EventRow(
                        timestamp=bulk.read_dt(ts),  # type: ignore[arg-type]
                        name=ename,
                        properties=bulk.read_json(props) or {},
                        context=bulk.read_json(ctx) or {} if typ == "page" else {},
                    )
                )


# -- evaluating and writing -------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    segment: LiveSegment
    customer_id: int
    entered: bool


def refresh(
    session: Session,
    *,
    project_id: int,
    changed: dict[int, set[Facet | str]],
    base: dict[int, Facts] | None = None,
    source: str = "event",
    events: dict[int, NewEvents] | None = None,
    segments: list[LiveSegment] | None = None,
    skipped: dict[int, set[int]] | None = None,
) -> int:
    """Re-evaluate the segments each customer's changes can affect; returns memberships changed.

    `changed` maps a customer id to the facets that changed ("*" for everything). `events`,
    when given, holds every new event behind a customer's event facets ("event", name) and
    ("page",): a segment touched through those alone is evaluated only when one of them is an
    event one of its conditions counts (any other leaves every condition as it was), and the
    profile in `base` does not settle it whatever the events (`evaluate.settled`). A customer
    whose facts in `base` are `fresh` (created by this chunk) is evaluated on those facts'
    events, without reading its events, memberships or timers. A segment that only new events
    touch, all counted by conditions that move it the same way (`evaluate.event_directions`),
    is evaluated only if the customer's membership is one they can change (`keeps`).
    `segments` are the project's `live_segments` when the caller has just read them.
    `skipped`: see `evaluate_pairs`.
    """
    if not changed:
        return 0
    if segments is None:
        segments = live_segments(session, project_id)
    if not segments:
        return 0
    keeps: Keeps = {}
    pairs = affected(changed, segments, base=base, events=events, now=clock.now(), keeps=keeps)
    return evaluate_pairs(
        session,
        project_id=project_id,
        pairs=pairs,
        base=base,
        source=source,
        skipped=skipped,
        events=events,
        keeps=keeps,
    )


# Pairs (segment id, customer id) whose new events cannot change one membership: True, a
# member stays one; False, a non-member stays out (`affected`).
Keeps = dict[tuple[int, int], bool]


def affected(
    changed: dict[int, set[Facet | str]],
    segments: list[LiveSegment],
    *,
    base: dict[int, Facts] | None,
    events: dict[int, NewEvents] | None,
    now: datetime,
    keeps: Keeps | None = None,
) -> dict[int, list[LiveSegment]]:
    """The segments to evaluate for each customer, given what changed (see `refresh`). Those
    its new events can move one way only go to `keeps` as well, if given.

    A segment one of whose facets other than events changed can change either way. One that
    only new events touch can change if one of its conditions counts one of them, the way of
    those conditions if they share one (`evaluate.event_directions`), unless the profile
    (in `base`, as the chunk left it) settles it whatever the events. Each condition is tested
    once per customer, whatever the segments that share it."""
    index = _index_of(segments)
    pairs: dict[int, list[LiveSegment]] = {}
    for cid, touched in changed.items():
        if EVERYTHING in touched:
            pairs[cid] = segments
            continue
        if events is None:
            found = {i for f in touched for i in index.by_facet.get(f, ())}
            if found:
                pairs[cid] = [segments[i] for i in sorted(found)]
            continue
        either = {i for f in touched for i in index.profile.get(f, ())}
        moved: dict[int, int] = {}  # segments only new events touch: the way they move them
        for facet, rows in events.get(cid, {}).items():
            for counted, ways in index.conditions.get(facet, ()):
                for row in rows:
                    if counted(row, now):
                        break
                else:
                    continue
                for i, way in ways:
                    if i not in either:
                        had = moved.get(i, way)
                        moved[i] = way if had == way else 0
        if moved:
            profile = base.get(cid) if base is not None else None
            if profile is not None:
                for i in [i for i in moved if segments[i].settles]:
                    if segments[i].program.settled(profile, now) is not None:
                        del moved[i]
            if keeps is not None:
                for i, way in moved.items():
                    if way:
                        keeps[segments[i].id, cid] = way > 0
        if either or moved:
            pairs[cid] = [segments[i] for i in sorted(either.union(moved))]
    return pairs


@dataclass(frozen=True, slots=True)
class _Index:
    """Where a change leads in a list of segments (by position), for `affected`."""

    by_facet: dict[Facet | str, tuple[int, ...]]  # the segments with a facet
    profile: dict[Facet | str, tuple[int, ...]]  # the same for facets other than events, pages
    # Per event facet, each condition on its events (once): its test of one event, and the
    # segments that have it with the way it moves each (`evaluate.event_directions`).
    conditions: dict[Facet, tuple[tuple[Counts, tuple[tuple[int, int], ...]], ...]]


_indexes: dict[int, tuple[list[LiveSegment], _Index]] = {}


def _index_of(segments: list[LiveSegment]) -> _Index:
    """The `_Index` of a list of segments, kept while the list is (`live_segments` returns the
    same list until the project's segments change)."""
    known = _indexes.get(id(segments))
    if known is not None and known[0] is segments:
        return known[1]
    by_facet: dict[Facet, list[int]] = defaultdict(list)
    profile: dict[Facet, list[int]] = defaultdict(list)
    tests: dict[EventCond, tuple[Facet, Counts]] = {}
    ways: dict[EventCond, list[tuple[int, int]]] = defaultdict(list)
    for i, s in enumerate(segments):
        for f in s.facets:
            by_facet[f].append(i)
        for f in s.profile_facets:
            profile[f].append(i)
        for c, facet, counted, way in s.events:
            tests[c] = (facet, counted)
            ways[c].append((i, way))
    conditions: dict[Facet, list[tuple[Counts, tuple[tuple[int, int], ...]]]] = defaultdict(list)
    for c, (facet, counted) in tests.items():
        conditions[facet].append((counted, tuple(ways[c])))
    index = _Index(
        {f: tuple(v) for f, v in by_facet.items()},
        {f: tuple(v) for f, v in profile.items()},
        {f: tuple(v) for f, v in conditions.items()},
    )
    if len(_indexes) > 64:
        _indexes.clear()
    _indexes[id(segments)] = (segments, index)
    return index


def evaluate_pairs(
    session: Session,
    *,
    project_id: int,
    pairs: dict[int, list[LiveSegment]],
    base: dict[int, Facts] | None = None,
    source: str,
    skipped: dict[int, set[int]] | None = None,
    versions: dict[int, int] | None = None,
    events: dict[int, NewEvents] | None = None,
    keeps: Keeps | None = None,
) -> int:
    """Evaluate each customer against its segments; write entries, exits and timers.

    A customer's timer only ever comes earlier here, to the first flip of the segments
    evaluated (its other segments' flips may be later than the timer, never earlier). Only
    `run_due_timers` moves one later: it deletes the due timer, then sets the exact next
    instant from every time-based segment. Writers of one customer take turns (`load_facts`
    holds it, as the processor does from loading its profile), so none relies on an instant,
    or a membership, another is changing.

    The customers in `base` are the caller's, held by it, unless `skipped` is given: the
    caller then holds none of them. Each is taken here if no one else holds it, or else left
    out and added to `skipped` (with its segments' ids) for the caller to evaluate later; its
    profile in `base` counts only if its row is still at the version in `versions`. `events`
    are customers' new events (as `refresh` takes them): some of their events, whatever
    happened since, so they decide what they decide (`decided_summary`) for any version.

    A pair in `keeps` (from `affected`) is left out when the customer's membership is the
    one its new events cannot change. Either the membership was right before them, and they
    keep it so, or it was not, and what made it wrong evaluates the customer again (its timer,
    or the change still to be evaluated). A customer's timer stays as it is: events that move
    a segment one way only ever bring its next time flip later.
    """
    if not pairs:
        return 0
    now = clock.now()
    held = skipped is None
    if skipped is not None:
        # Taken before anything is read, as by every writer; the profile in `base` is used
        # only if the row is the one the chunk left (`versions`), and events are all read.
        taken = _take_customers(session, project_id, pairs, skipped)
        pairs = {cid: segs for cid, segs in pairs.items() if cid in taken}
        if not pairs:
            return 0
        base = {
            cid: f
            for cid, f in (base or {}).items()
            if cid in taken and taken[cid] == (versions or {}).get(cid)
        }
    used = {s.id: s for segs in pairs.values() for s in segs}
    fresh = {cid for cid, f in (base or {}).items() if held and f.fresh and cid in pairs}
    seen_as = dict(used)  # the segments as `affected` saw them: `keeps` are theirs
    _hold_segments(session, project_id, used, pairs)
    bulk = Bulk(session)
    current: set[tuple[int, int]] = set()  # memberships among the pairs of `probed`
    probed: set[int] = set()
    if keeps:
        # The customers held already (the caller's in `base`, or all once taken): memberships
        # are read under the customer's lock, as every writer reads them.
        probed = {cid for cid in pairs if cid not in fresh and (not held or cid in (base or ()))}
        current = members_among(bulk, [(s.id, cid) for cid in probed for s in pairs[cid]])
        for cid in probed:
            left = [
                s
                for s in pairs[cid]
                if s.status == "computing"
                or s is not seen_as[s.id]
                or keeps.get((s.id, cid)) != ((s.id, cid) in current)
            ]
            if left:
                pairs[cid] = left
            else:
                del pairs[cid]
    facts = load_facts(
        session,
        project_id,
        pairs,
        [s.tree for s in used.values()],
        now=now,
        base=base,
        per_customer={
            cid: [s.events for s in segs] for cid, segs in pairs.items() if cid not in fresh
        },
        hold=held,
        new_events=events,
    )
    verdicts: list[tuple[LiveSegment, int, bool]] = []
    rechecks: list[dict[str, int]] = []
    firsts: dict[int, datetime] = {}
    for cid, segs in pairs.items():
        f = facts.get(cid)
        if f is None:
            continue  # erased in the meantime
        first: datetime | None = None
        for s in segs:
            if s.status == "computing":
                rechecks.append({"segment_id": s.id, "customer_id": cid})
                continue
            verdicts.append((s, cid, s.program.holds(f, now)))
            if s.timed:
                due = s.program.next_change(f, now)
                if due is not None and (first is None or due < first):
                    first = due
        # A segment still computing is left out of `first`: its recheck brings the timer
        # earlier if it must (the computation's own plan comes in by `_merge_timers`).
        if first is not None:
            firsts[cid] = first
    # A customer this chunk created has no memberships or timer yet (the caller has held it
    # since it was created).
    ids = sorted(cid for cid in facts if cid not in fresh and cid not in probed)
    current |= members_among(bulk, [(s.id, cid) for cid in ids for s in pairs[cid]])
    changes = [
        Change(s, cid, inside) for s, cid, inside in verdicts if inside != ((s.id, cid) in current)
    ]
    apply_changes(session, project_id, changes, now=now, source=source)
    _write_timers(session, project_id, firsts)
    if rechecks:
        from tidings.db.upsert import upsert

        upsert(session, table_of(SegmentRecheck), rechecks, keys=("segment_id", "customer_id"))
    return len(changes)


def _take_customers(
    session: Session,
    project_id: int,
    pairs: dict[int, list[LiveSegment]],
    skipped: dict[int, set[int]],
) -> dict[int, int]:
    """Lock the customers of `pairs` that no one else holds; their row versions by id
    (PostgreSQL's xmin; SQLite writers hold the whole database, and have no versions). Those
    someone holds go to `skipped` with their segments' ids; those deleted are dropped."""
    bulk = Bulk(session)
    ids = sorted(pairs)
    version = _VERSION if bulk.postgres else "0"
    taken: dict[int, int] = {}
    for part in chunks(ids):
        taken.update(
            (cid, v)
            for cid, v in bulk.select_in(
                f"SELECT id, {version} FROM customers WHERE project_id = {{m}}",  # noqa: S608
                "id",
                part,
                (project_id,),
                lock="NO KEY UPDATE SKIP LOCKED",
            )
        )
    rest = [cid for cid in ids if cid not in taken]
    present: set[int] = set()
    customer_sql = "SELECT id FROM customers WHERE project_id = {m}"
    for part in chunks(rest):
        present.update(cid for (cid,) in bulk.select_in(customer_sql, "id", part, (project_id,)))
    for cid in rest:
        if cid in present:
            skipped.setdefault(cid, set()).update(s.id for s in pairs[cid])
    return taken


def row_versions(session: Session, project_id: int, customer_ids: list[int]) -> dict[int, int]:
    """The customers' row versions (PostgreSQL's xmin) as this transaction sees them: what
    `evaluate_pairs` compares to know a profile read now is still the row's."""
    bulk = Bulk(session)
    out: dict[int, int] = {}
    sql = f"SELECT id, {_VERSION} FROM customers WHERE project_id = {{m}}"  # noqa: S608
    for part in chunks(customer_ids):
        out.update((cid, v) for cid, v in bulk.select_in(sql, "id", part, (project_id,)))
    return out


def _hold_segments(
    session: Session,
    project_id: int,
    used: dict[int, LiveSegment],
    pairs: dict[int, list[LiveSegment]],
) -> None:
    """On PostgreSQL, lock the segments about to be evaluated until the transaction ends, leave
    out any deleted meanwhile, and see the outcome of a computation that is finishing.

    Every segment is key-share locked: a deletion waits for this transaction, then removes the
    rows it writes (`drop_segment`), and so does a computation before it reads the members it
    compares with (`compute`), so it sees what this transaction writes. A segment read as
    "computing" is share-locked: the computation's last step locks it for update, so either it
    has not started (our recheck rows will be seen by it) or it has committed (the segment is
    ready and we evaluate it normally), never in between. A segment edited since it was read
    is evaluated as it is now (computing, mostly: a recheck).
    """
    if not used or session.get_bind().dialect.name != "postgresql":
        return
    t = table_of(Segment)
    computing = sorted(sid for sid, s in used.items() if s.status == "computing")
    ready = sorted(sid for sid in used if sid not in computing)
    versions: dict[int, int] = {}
    now_ready: set[int] = set()
    if ready:
        held = select(t.c.id, t.c.version).where(t.c.id.in_(ready))
        held = held.with_for_update(read=True, key_share=True)
        versions.update((r.id, r.version) for r in session.execute(held))
    if computing:
        rows = session.execute(
            select(t.c.id, t.c.version, t.c.status)
            .where(t.c.id.in_(computing))
            .with_for_update(read=True)
        ).all()
        versions.update((r.id, r.version) for r in rows)
        now_ready = {r.id for r in rows if r.status == "ready"}
    gone = set(used) - set(versions)
    edited = {sid for sid, v in versions.items() if v != used[sid].version}
    if not gone and not now_ready and not edited:
        return
    for sid in gone:
        del used[sid]
    for sid in now_ready:
        used[sid] = replace(used[sid], status="ready")
    if edited:
        current = {s.id: s for s in live_segments(session, project_id)}
        for sid in edited:
            if sid in current and current[sid].version == versions[sid]:
                used[sid] = current[sid]
            else:  # edited again meanwhile, or no longer resolves: its computation rechecks
                used[sid] = replace(used[sid], status="computing")
    for cid, segs in pairs.items():
        pairs[cid] = [used[s.id] for s in segs if s.id in used]


def apply_changes(
    session: Session, project_id: int, changes: list[Change], *, now: datetime, source: str
) -> None:
    """Write entries and exits: members, counts, and (unless a full computation's) timeline
    events, domain events and growth."""
    if not changes:
        return
    bulk = Bulk(session)
    at = bulk.dt(now)
    entered = [(c.segment.id, c.customer_id, at) for c in changes if c.entered]
    exited = [(c.segment.id, c.customer_id) for c in changes if not c.entered]
    bulk.insert("segment_members", ("segment_id", "customer_id", "entered_at"), entered)
    bulk.delete("segment_members", _PAIR, exited, types=_PAIR_TYPES)
    kinds = {True: "entered", False: "exited"}
    delta: dict[int, int] = defaultdict(int)
    for c in changes:
        delta[c.segment.id] += 1 if c.entered else -1
    _add_to_counts(bulk, delta)
    if source != "compute":
        # A full computation (a new or edited definition) changes the members only: it is not
        # something the customer did, so it neither writes timelines, nor triggers automations,
        # nor counts as growth. A timeline entry's properties are its segment's and kind's.
        context = bulk.json({"source": source})
        properties: dict[tuple[int, bool], Any] = {}
        for c in changes:
            key = (c.segment.id, c.entered)
            if key not in properties:
                properties[key] = bulk.json({"segment_id": key[0], "change": kinds[key[1]]})
        bulk.insert(
            "events",
            (
                "project_id",
                "customer_id",
                "type",
                "name",
                "properties",
                "context",
                "timestamp",
                "received_at",
            ),
            [
                (
                    project_id,
                    c.customer_id,
                    "segment",
                    c.segment.name[:255],
                    properties[c.segment.id, c.entered],
                    context,
                    at,
                    at,
                )
                for c in changes
            ],
        )
        jobs.publish(
            session,
            [
                (
                    project_id,
                    f"segment.{kinds[c.entered]}",
                    c.customer_id,
                    {
                        "segment_id": c.segment.id,
                        "segment_name": c.segment.name,
                        "customer_id": c.customer_id,
                        "source": source,
                    },
                )
                for c in changes
            ],
        )
        _add_to_growth(bulk, hour_of(now), changes)


def _add_to_counts(bulk: Bulk, delta: dict[int, int]) -> None:
    """Add each segment's delta to its member count: one prepared statement for them all
    (pipelined on PostgreSQL), in the order of the segments' ids, as every writer locks them."""
    bulk.execute_many(
        "UPDATE segments SET member_count = member_count + {m} WHERE id = {m}",
        [(d, sid) for sid, d in sorted(delta.items()) if d],
    )


def _add_to_growth(bulk: Bulk, hour: int, changes: list[Change]) -> None:
    """Count the entries and exits into their segments' hour, in the order of the segments' ids
    (after their counts: every writer locks a segment's row, then its growth row)."""
    grown: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for c in changes:
        grown[c.segment.id][0 if c.entered else 1] += 1
    bulk.execute_many(_GROW, [(sid, hour, n, x) for sid, (n, x) in sorted(grown.items())])


def hour_of(at: datetime) -> int:
    """The hour of `at` as `SegmentGrowth` counts it: hours since 1970-01-01 UTC."""
    return int(at.timestamp()) // 3600


def members_among(bulk: Bulk, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The (segment, customer) pairs among `pairs` that are memberships."""
    found: set[tuple[int, int]] = set()
    for part in chunks(sorted(set(pairs))):
        found.update((sid, cid) for sid, cid in bulk.fetch(*members_query(bulk, part)))
    return found


def members_query(bulk: Bulk, pairs: list[tuple[int, int]]) -> tuple[str, tuple[Any, ...]]:
    """The statement of `members_among` for some pairs: a probe of the members' key per pair."""
    listed, params = bulk.row_set(_PAIR_TYPES, pairs)
    if bulk.postgres:  # a probe per pair, whatever the planner estimates of the list
        sql_text = (
            f"SELECT m.segment_id, m.customer_id FROM ({listed}) r CROSS JOIN LATERAL "  # noqa: S608
            "(SELECT segment_id, customer_id FROM segment_members "
            "WHERE segment_id = r.c0 AND customer_id = r.c1 OFFSET 0) m"
        )
    else:  # CROSS JOIN: the list drives the loop
        sql_text = (
            f"SELECT m.segment_id, m.customer_id FROM ({listed}) r "  # noqa: S608
            "CROSS JOIN segment_members m WHERE m.segment_id = r.c0 AND m.customer_id = r.c1"
        )
    return sql_text, params


def _write_timers(session: Session, project_id: int, set_timers: dict[int, datetime]) -> None:
    """Bring customers' timers earlier (or set them): never later than the instant stored."""
    if not set_timers:
        return
    bulk = Bulk(session)
    rows = [(cid, bulk.dt(set_timers[cid])) for cid in sorted(set_timers)]
    listed, params = bulk.row_set(("bigint", "timestamp"), rows)
    bulk.execute(
        "INSERT INTO segment_timers (customer_id, project_id, due_at) "  # noqa: S608
        f"SELECT r.c0, {{m}}, r.c1 FROM ({listed}) r WHERE true {_EARLIER}",
        (project_id, *params),
    )


def forget(session: Session, project_id: int, customer_ids: list[int]) -> None:
    """After customers are deleted (erased or merged away): their memberships leave the counts,
    and their members and timers rows go (those tables have no foreign keys).

    Called after the customers' rows are deleted: on PostgreSQL that deletion waits for any
    writer holding one of them (`evaluate_pairs` locks the customers it writes for), so what
    such a writer added is seen and removed here."""
    if not customer_ids:
        return
    bulk = Bulk(session)
    delta: dict[int, int] = defaultdict(int)
    gone: list[tuple[int, int]] = []
    for part in chunks(customer_ids):
        for sid, cid in bulk.select_in(PROJECT_MEMBERS, "m.customer_id", part, (project_id,)):
            delta[sid] -= 1
            gone.append((sid, cid))
    _add_to_counts(bulk, delta)
    bulk.delete("segment_members", _PAIR, gone, types=_PAIR_TYPES)
    for part in chunks(customer_ids):
        bulk.execute_in("DELETE FROM segment_timers WHERE 1 = 1", "customer_id", part)


def drop_segment(session: Session, segment_id: int) -> None:
    """After a segment is deleted: its members and growth rows go (no foreign keys; on
    PostgreSQL the deletion waited for any writer holding the segment, as in `forget`)."""
    for table in SEGMENT_TABLES:
        session.execute(
            text(f"DELETE FROM {table} WHERE segment_id = :s"),  # noqa: S608
            {"s": segment_id},
        )


# -- time flips -------------------------------------------------------------------------------


def has_due_timers(session: Session) -> bool:
    t = table_of(SegmentTimer)
    return (
        session.execute(select(t.c.customer_id).where(t.c.due_at <= clock.now()).limit(1)).first()
        is not None
    )


# Customers whose timers one transaction takes: each is evaluated against every time-based
# segment of its project (50 segments, 1,000 customers: about 0.25 s on SQLite, whose single
# writer the processor waits for meanwhile).
TIMER_BATCH = 1000


def run_due_timers(session: Session, *, limit: int = TIMER_BATCH) -> int:
    """Re-evaluate every time-based segment for the customers whose timer is due (which sets
    each one's timer again); returns the customers evaluated."""
    t = table_of(SegmentTimer)
    rows = session.execute(
        select(t.c.customer_id, t.c.project_id)
        .where(t.c.due_at <= clock.now())
        .order_by(t.c.due_at)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    bulk = Bulk(session)
    ids = sorted(r.customer_id for r in rows)
    if bulk.postgres:
        # Take the customers no one else holds, then their timers: a writer evaluating one
        # (the processor, a refresh, another worker) holds it from before it reads anything
        # until it commits, and its customers fall due again at the next round. A deletion of
        # one waits for this transaction, then removes its timer.
        held = "SELECT id FROM customers WHERE 1 = 1"
        claim = "SELECT customer_id FROM segment_timers WHERE due_at <= {m}"
        taken: set[int] = set()
        for part in chunks(ids):
            free = [
                cid for (cid,) in bulk.select_in(held, "id", part, lock="NO KEY UPDATE SKIP LOCKED")
            ]
            taken.update(
                cid
                for (cid,) in bulk.select_in(
                    claim, "customer_id", sorted(free), (bulk.dt(clock.now()),), lock="UPDATE"
                )
            )
        ids = [cid for cid in ids if cid in taken]
        rows = [r for r in rows if r.customer_id in taken]
    bulk.delete("segment_timers", ("customer_id",), [(cid,) for cid in ids], types=("bigint",))
    by_project: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        by_project[r.project_id].append(r.customer_id)
    for pid, cids in sorted(by_project.items()):  # counts are locked in segment order
        timed = [s for s in live_segments(session, pid) if s.timed]
        if not timed:
            continue
        evaluate_pairs(
            session, project_id=pid, pairs={cid: list(timed) for cid in cids}, source="time"
        )
    return len(rows)


# -- full computation -------------------------------------------------------------------------


def _set_progress(db: Database, segment_id: int, version: int, progress: int) -> bool:
    """Record progress; False when the segment was edited or deleted meanwhile."""
    with db.session(write=True) as session:
        t = table_of(Segment)
        result = session.execute(
            update(t).where(t.c.id == segment_id, t.c.version == version).values(progress=progress)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def compute(db: Database, *, segment_id: int, version: int) -> None:
    """Compute a segment's membership in full; a newer version's job supersedes this one."""
    # Writers that evaluated the segment as it was hold it (key share) until they commit: the
    # members read below must include what they write (`_hold_segments`).
    _again_on_deadlock(segment_id, lambda: _wait_for_writers(db, segment_id))
    now = clock.now()
    with db.session() as session:
        seg = session.get(Segment, segment_id)
        if seg is None or seg.version != version:
            return
        pid = seg.project_id
        live = {s.id: s for s in live_segments(session, pid)}
        me = live.get(segment_id)
        if me is None:
            raise ValueError(f"segment {segment_id} does not resolve")
        # The timers' query reads the same tables as the selection; on its own connection it
        # runs on another core meanwhile (both databases release the GIL while they work).
        with ThreadPoolExecutor(1, thread_name_prefix="segment-timers") as pool:
            planned = pool.submit(_plan_timers, db, pid, me, now) if me.timed else None
            new_ids = sql.member_ids(session, project_id=pid, rules=me.tree, now=now)
            old_ids = set(
                session.execute(
                    text("SELECT customer_id FROM segment_members WHERE segment_id = :s"),
                    {"s": segment_id},
                ).scalars()
            )
            due = planned.result() if planned is not None else {}
    if not _set_progress(db, segment_id, version, 40):
        return
    changes = [(cid, True) for cid in sorted(new_ids - old_ids)]
    changes += [(cid, False) for cid in sorted(old_ids - new_ids)]
    done = 0
    # Bulk writes: each checks that its segment and customers still exist, in its transaction.
    for part in chunks(changes, WRITE_BATCH):
        with db.session(write=True, bulk=True) as session:
            seg = session.get(Segment, segment_id, with_for_update=HOLD)
            if seg is None or seg.version != version:
                return
            _enter(session, pid, segment_id, [cid for cid, entered in part if entered], now)
            leaving = [cid for cid, entered in part if not entered]
            exists = _existing(session, pid, leaving)
            apply_changes(
                session,
                pid,
                [Change(me, cid, False) for cid in leaving if cid in exists],
                now=now,
                source="compute",
            )
            done += len(part)
            seg.progress = 40 + int(50 * done / max(1, len(changes)))
    if not _merge_timers(db, pid, segment_id, version, due):
        return
    # The last step holds the segment, then the customers it rechecks; a processor deleting
    # one of them holds the customer, then updates the segment's count.
    _again_on_deadlock(segment_id, lambda: _finish(db, pid, segment_id, version))


def _wait_for_writers(db: Database, segment_id: int) -> None:
    with db.session(write=True) as session:
        session.get(Segment, segment_id, with_for_update=True)


def _again_on_deadlock(segment_id: int, step: Callable[[], T]) -> T:
    """Run one step of a computation, again when PostgreSQL breaks a deadlock by failing it
    (each step is its own transaction, so it starts over from what is committed)."""
    for attempt in range(1, FINISH_ATTEMPTS + 1):
        try:
            return step()
        except DBAPIError as exc:
            if not isinstance(exc.orig, DeadlockDetected) or attempt == FINISH_ATTEMPTS:
                raise
            log.warning("segment computation deadlocked; again", extra={"segment": segment_id})
    raise AssertionError("unreachable")


def _finish(db: Database, project_id: int, segment_id: int, version: int) -> None:
    """The computation's last step: ready, the rechecks evaluated, the count exact."""
    with db.session(write=True) as session:
        # Locked for update: a processor transaction that saw the segment computing finishes
        # (and leaves its rechecks) before this step reads them.
        seg = session.get(Segment, segment_id, with_for_update=True)
        if seg is None or seg.version != version:
            return
        seg.status = "ready"
        session.flush()
        _recheck(session, project_id, segment_id)
        seg.member_count = int(
            session.execute(
                text("SELECT count(*) FROM segment_members WHERE segment_id = :s"),
                {"s": segment_id},
            ).scalar_one()
        )
        seg.progress = 100
        seg.error = None
        seg.computed_at = clock.now()


def _plan_timers(
    db: Database, project_id: int, me: LiveSegment, now: datetime
) -> dict[int, datetime]:
    with db.session() as session:
        sql.prepare(session)  # the selection's memory settings (its session is another)
        return timer_plan(session, project_id=project_id, rules=me.tree, now=now)


def mark_failed(db: Database, *, segment_id: int, version: int, error: str) -> None:
    """Show the segment as failed with a message safe for the dashboard (details are logged)."""
    with db.session(write=True) as session:
        t = table_of(Segment)
        session.execute(
            update(t)
            .where(t.c.id == segment_id, t.c.version == version)
            .values(status="failed", error=error[:2000])
        )


def _enter(
    session: Session, project_id: int, segment_id: int, ids: list[int], now: datetime
) -> None:
    """A full computation's entries, for the customers among `ids` that still exist (what
    `apply_changes` writes for a computation, in one statement)."""
    if not ids:
        return
    bulk = Bulk(session)
    listed, param = bulk.id_set(ids)
    customers = f"FROM customers c WHERE c.project_id = {{m}} AND c.id IN ({listed})"
    if bulk.postgres:
        customers += " FOR KEY SHARE OF c"  # none can be deleted before this commits
    at = bulk.dt(now)
    bulk.execute(
        "INSERT INTO segment_members (segment_id, customer_id, entered_at) "
        f"SELECT {{m}}, c.id, {{m}} {customers}",
        (segment_id, at, project_id, param),
    )


def _existing(session: Session, project_id: int, ids: list[int]) -> set[int]:
    """The ids among `ids` of the project's customers that still exist (held until the
    transaction ends: rows written for them cannot outlive them)."""
    bulk = Bulk(session)
    out: set[int] = set()
    sql = "SELECT id FROM customers WHERE project_id = {m}"
    for part in chunks(ids):
        out.update(r[0] for r in bulk.select_in(sql, "id", part, (project_id,), lock="KEY SHARE"))
    return out


def _merge_timers(
    db: Database, project_id: int, segment_id: int, version: int, due: dict[int, datetime]
) -> bool:
    """Move the timers of the customers that still exist earlier to the planned instants where
    those come first; False when the segment was edited or deleted meanwhile. Timers that fire
    before the computation ends leave a recheck, like any evaluation of a computing segment."""
    for part in chunks(sorted(due.items()), WRITE_BATCH):
        # Upkeep may write a timer the batch is about to write while holding one the batch
        # holds; the batch only brings timers earlier, so it can run again.
        if not _again_on_deadlock(
            segment_id, partial(_merge_part, db, project_id, segment_id, version, part)
        ):
            return False
    return True


def _merge_part(
    db: Database,
    project_id: int,
    segment_id: int,
    version: int,
    part: list[tuple[int, datetime]],
) -> bool:
    with db.session(write=True, bulk=True) as session:
        seg = session.get(Segment, segment_id, with_for_update=HOLD)
        if seg is None or seg.version != version:
            return False
        bulk = Bulk(session)
        listed, params = bulk.row_set(
            ("bigint", "timestamp"), [(cid, bulk.dt(at)) for cid, at in part]
        )
        # In the customers' order, as upkeep writes timers: fewer deadlocks with it.
        bulk.execute(
            "INSERT INTO segment_timers (customer_id, project_id, due_at) "  # noqa: S608
            f"SELECT c.id, {{m}}, r.c1 FROM ({listed}) r "
            "JOIN customers c ON c.project_id = {m} AND c.id = r.c0 WHERE true ORDER BY c.id"
            + (" FOR KEY SHARE OF c " if bulk.postgres else " ")
            + _EARLIER,
            (project_id, *params, project_id),
        )
    return True


def _recheck(session: Session, project_id: int, segment_id: int) -> None:
    ids = list(
        session.execute(
            text("SELECT customer_id FROM segment_rechecks WHERE segment_id = :s"),
            {"s": segment_id},
        ).scalars()
    )
    if not ids:
        return
    session.execute(text("DELETE FROM segment_rechecks WHERE segment_id = :s"), {"s": segment_id})
    me = next((s for s in live_segments(session, project_id) if s.id == segment_id), None)
    if me is not None:
        evaluate_pairs(
            session, project_id=project_id, pairs={cid: [me] for cid in ids}, source="event"
        )


def timer_plan(
    session: Session, *, project_id: int, rules: Node, now: datetime
) -> dict[int, datetime]:
    """For every customer whose membership time alone can change: the earliest such instant.

    The same boundaries as `evaluate.next_change`, gathered with one query per condition.
    """
    due: dict[int, datetime] = {}

    def note(cid: int, points: list[datetime]) -> None:
        for p in points:
            if p > now and (cid not in due or p < due[cid]):
                due[cid] = p

    for cond, kind, rows in sql.boundary_rows(session, project_id=project_id, rules=rules, now=now):
        for cid, value in rows:
            if kind == "text":
                note(cid, date_boundaries(cond.test, value, now))  # type: ignore[union-attr]
            elif kind == "instant":
                note(cid, instant_boundaries(cond.test, value, now))  # type: ignore[union-attr]
            elif kind == "recency":
                assert isinstance(cond, EventCond)
                assert cond.recency is not None
                note(cid, [value + timedelta(days=cond.recency[1]) + EPSILON])
            else:
                assert isinstance(cond, EventCond)
                assert cond.window.days is not None
                note(cid, [value + timedelta(days=cond.window.days) + EPSILON])
    return due
