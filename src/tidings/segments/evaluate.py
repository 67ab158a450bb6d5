"""Evaluating a rule tree for one customer in Python: the incremental path.

`Facts` is what a customer's conditions can look at (profile columns, tags, groups, and the
events the tree names). `holds` answers membership, `next_change` the earliest instant at which
time alone could change the answer, `explain` every condition with its value and truth.

The semantics here are the reference: `compile` must produce SQL that agrees with them on both
databases (a property-based test checks it). Notes that both sides follow:
- a JSON null counts as absent; `ne`, `not_in`, `not_contains` hold when the value is absent;
- values compare by kind: a string never equals a number, a boolean never equals 1;
- dates are ISO-8601 strings compared as text (the stored `_at` traits are all one format);
- a relative window ends now: "within the last 7 days" is [now - 7 days, now].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from tidings.clock import isoformat
from tidings.segments.rules import (
    DATE_RE,
    AudienceCond,
    EventCond,
    Group,
    GroupCond,
    GroupTraitCond,
    Node,
    Not,
    RandomCond,
    RevenueCond,
    SegmentCond,
    TagCond,
    TraitCond,
    ValueTest,
    bucket,
    parse_instant,
    timed_conditions,
)

MISSING: Any = object()
# Time flips are scheduled just after the boundary, so "more than" comparisons have turned.
EPSILON = timedelta(milliseconds=1)


@dataclass(slots=True)
class EventRow:
    timestamp: datetime
    name: str | None
    properties: dict[str, Any]
    context: dict[str, Any]


@dataclass(slots=True)
class Facts:
    """One customer as the conditions see it; optional parts are loaded when a tree needs them."""

    id: int
    traits: dict[str, Any]
    audiences: dict[str, Any] = field(default_factory=dict)
    ltv_units: int = 0
    charge_count: int = 0
    last_charge_at: datetime | None = None
    tags: set[str] = field(default_factory=set)
    groups: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # (type, name) -> rows; pages are under ("page", None).
    events: dict[tuple[str, str | None], list[EventRow]] = field(default_factory=dict)
    # Or, per event condition, its summary computed by the database (see `summarize`).
    summaries: dict[EventCond, Summary] = field(default_factory=dict)
    summaries_only: bool = False
    # A customer created by the chunk being processed: `events` is its whole history, and it
    # has no memberships or timers yet, so there is nothing to read.
    fresh: bool = False


def lookup(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted path in nested dicts, or MISSING (JSON null is missing too)."""
    for key in path:
        if not isinstance(obj, dict):
            return MISSING
        obj = obj.get(key, MISSING)
        if obj is MISSING:
            return MISSING
    return MISSING if obj is None else obj


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return _is_number(a) and _is_number(b) and a == b


def is_date_text(v: Any) -> bool:
    return isinstance(v, str) and DATE_RE.match(v) is not None


def test_value(test: ValueTest, v: Any, now: datetime) -> bool:
    """Apply an operator to one value (MISSING when absent)."""
    op, arg = test.op, test.value
    present = v is not MISSING
    if op == "eq":
        return present and _same(v, arg)
    if op == "ne":
        return not (present and _same(v, arg))
    if op == "in":
        return present and any(_same(v, a) for a in arg)
    if op == "not_in":
        return not (present and any(_same(v, a) for a in arg))
    if op in ("contains", "not_contains"):
        found = (isinstance(v, str) and arg in v) or (
            isinstance(v, list) and any(isinstance(x, str) and x == arg for x in v)
        )
        return found if op == "contains" else not found
    if op == "starts_with":
        return isinstance(v, str) and v.startswith(arg)
    if op == "exists":
        return present
    if op == "not_exists":
        return not present
    if op in ("gt", "gte", "lt", "lte"):
        if not _is_number(v):
            return False
        return bool({"gt": v > arg, "gte": v >= arg, "lt": v < arg, "lte": v <= arg}[op])
    if not is_date_text(v):
        return False
    if op == "before":
        return bool(v < arg)
    if op == "after":
        return bool(v > arg)
    days = timedelta(days=arg)
    if op == "within_last_days":
        return bool(iso(now - days) <= v <= iso(now))
    if op == "more_than_days_ago":
        return bool(v < iso(now - days))
    return bool(iso(now) <= v <= iso(now + days))  # within_next_days


def iso(dt: datetime) -> str:
    out = isoformat(dt)
    assert out is not None
    return out


_FIRST = datetime(1900, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# What `iso` writes (years from 1000: strftime writes earlier years without padding).
_STORED = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


@lru_cache(maxsize=65536)
def first_instant(v: str, *, strict: bool) -> datetime | None:
    """The first instant t whose ISO text is >= v (> v when strict), or None.

    Date tests compare text, and the ISO text of an instant grows with the instant, so the
    moment a comparison with "now" turns is found by bisection, whatever shape `v` has.
    """

    if _STORED.fullmatch(v):
        # The stored format (every `_at` trait): the instant itself, or the next millisecond.
        try:
            t = datetime.fromisoformat(v[:-1]).replace(tzinfo=UTC)
        except ValueError:
            t = None
        if t is not None:
            if not strict:
                return t
            return t + _MS if t < _LAST else None  # nothing comes after the last instant

    def past(t: datetime) -> bool:
        text = iso(t)
        return text > v if strict else text >= v

    if past(_FIRST):
        return _FIRST
    if not past(_LAST):
        return None
    lo, hi = 0, (_LAST - _FIRST) // _MS  # past(lo) is false, past(hi) is true
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if past(_FIRST + mid * _MS):
            hi = mid
        else:
            lo = mid
    return _FIRST + hi * _MS


def date_boundaries(test: ValueTest, v: Any, now: datetime) -> list[datetime]:
    """Future instants at which a relative date test on value `v` changes its answer."""
    if not test.relative or not is_date_text(v):
        return []
    ge, gt = first_instant(v, strict=False), first_instant(v, strict=True)
    days = timedelta(days=test.value)
    points: list[datetime | None]
    if test.op == "within_last_days":  # iso(now - N) <= v <= iso(now)
        points = [ge, gt + days if gt else None]
    elif test.op == "more_than_days_ago":  # v < iso(now - N)
        points = [gt + days if gt else None]
    else:  # within_next_days: iso(now) <= v <= iso(now + N)
        points = [ge - days if ge else None, gt]
    return [p for p in points if p is not None and p > now]


def instant_boundaries(test: ValueTest, t: datetime | None, now: datetime) -> list[datetime]:
    """As date_boundaries, for a datetime column (last charge)."""
    if t is None or not test.relative:
        return []
    days = timedelta(days=test.value)
    points = [t, t + days] if test.op != "within_next_days" else [t - days, t]
    return [p + EPSILON for p in points if p + EPSILON > now]


def test_instant(test: ValueTest, t: datetime | None, now: datetime) -> bool:
    """Apply a date operator to a datetime column (None when absent)."""
    op = test.op
    if op == "exists":
        return t is not None
    if op == "not_exists":
        return t is None
    if t is None:
        return False
    if op == "before":
        return t < _instant(test.value)
    if op == "after":
        return t > _instant(test.value)
    days = timedelta(days=test.value)
    if op == "within_last_days":
        return now - days <= t <= now
    if op == "more_than_days_ago":
        return t < now - days
    return now <= t <= now + days


def _instant(value: str) -> datetime:
    t = parse_instant(value)
    assert t is not None
    return t


# -- events -----------------------------------------------------------------------------------


def event_key(c: EventCond) -> tuple[str, str | None]:
    return (c.type, c.name)


def page_value(c: EventCond, row: EventRow) -> Any:
    fld = c.page_field or "path"
    if fld == "name":
        return row.name if row.name is not None else MISSING
    v = row.properties.get(fld)
    if isinstance(v, str):
        return v
    page = row.context.get("page")
    if isinstance(page, dict) and isinstance(page.get(fld), str):
        return page[fld]
    return MISSING


def _filters_hold(c: EventCond, row: EventRow, now: datetime) -> bool:
    """Whether an event of the condition's type and name passes its page test and `where`."""
    if c.page_test is not None and not test_value(c.page_test, page_value(c, row), now):
        return False
    return all(test_value(w.test, lookup(row.properties, w.path), now) for w in c.where)


def matching(c: EventCond, facts: Facts, now: datetime) -> list[datetime]:
    """Timestamps of the customer's events that satisfy the condition's filters (not window)."""
    return [
        row.timestamp for row in facts.events.get(event_key(c), ()) if _filters_hold(c, row, now)
    ]


def counts(c: EventCond, row: EventRow, now: datetime) -> bool:
    """Whether one event of the condition's type and name changes its summary: it passes the
    filters and, unless the condition is about recency (first / last of all), the window."""
    if not _filters_hold(c, row, now):
        return False
    return c.recency is not None or _in_window(c, row.timestamp, now)


def _in_window(c: EventCond, ts: datetime, now: datetime) -> bool:
    w = c.window
    if w.days is not None:
        return ts >= now - timedelta(days=w.days)
    if w.start is not None and w.end is not None:
        return w.start <= ts <= w.end
    return True


@dataclass(frozen=True, slots=True)
class Summary:
    """A condition's matching events for one customer: how many (in the window), the first
    and last (of all of them when the condition is about recency, else in the window). The
    database's leave out those the condition does not look at (`compile.event_summaries`)."""

    count: int
    first: datetime | None
    last: datetime | None


NO_EVENTS = Summary(0, None, None)


def summarize(c: EventCond, facts: Facts, now: datetime) -> Summary:
    """The condition's summary: precomputed (the incremental path asks SQL for it) or derived
    here from the customer's events (the reference path)."""
    known = facts.summaries.get(c)
    if known is not None:
        return known
    if facts.summaries_only:
        return NO_EVENTS
    stamps = matching(c, facts, now)
    if c.recency is None:
        stamps = [ts for ts in stamps if _in_window(c, ts, now)]
    if not stamps:
        return NO_EVENTS
    return Summary(len(stamps), min(stamps), max(stamps))


def event_summary(c: EventCond, facts: Facts, now: datetime) -> dict[str, Any]:
    """count / first / last of the matching events, as explain shows them."""
    s = summarize(c, facts, now)
    if c.recency is not None:
        return {"count": s.count, "first": s.first, "last": s.last}
    return {"count": s.count}


def event_holds(c: EventCond, facts: Facts, now: datetime) -> bool:
    s = summarize(c, facts, now)
    if c.recency is None:
        performed = c.count.holds(s.count)
        return not performed if c.op == "not_performed" else performed
    at = s.first if c.op == "first_performed" else s.last
    if at is None:
        return False
    kind, n = c.recency
    limit = now - timedelta(days=n)
    return bool(at >= limit) if kind == "within_days" else bool(at < limit)


def _event_boundaries(c: EventCond, facts: Facts, now: datetime) -> list[datetime]:
    s = summarize(c, facts, now)
    if c.recency is not None:
        at = s.first if c.op == "first_performed" else s.last
        if at is None:
            return []
        point = at + timedelta(days=c.recency[1]) + EPSILON
        return [point] if point > now else []
    floor = c.count.flip_floor()
    if c.window.days is None or floor is None or s.count < floor:
        return []
    # The oldest event in the window leaves it first; asking for any, only the newest's
    # leaving changes the answer.
    at = s.last if c.count.means_any() else s.first
    return [] if at is None else [at + timedelta(days=c.window.days) + EPSILON]


# -- the tree ---------------------------------------------------------------------------------


def holds(node: Node, facts: Facts, now: datetime) -> bool:
    """Is the customer in? The reference semantics of every condition."""
    if isinstance(node, Group):
        if node.kind == "all":
            return all(holds(c, facts, now) for c in node.children)
        return any(holds(c, facts, now) for c in node.children)
    if isinstance(node, Not):
        return not holds(node.child, facts, now)
    return _leaf(node, facts, now)[0]


def _leaf(node: Node, facts: Facts, now: datetime) -> tuple[bool, Any]:
    """(truth, the value looked at) for one condition."""
    if isinstance(node, TraitCond):
        v = lookup(facts.traits, node.path)
        return test_value(node.test, v, now), v
    if isinstance(node, EventCond):
        return event_holds(node, facts, now), None
    if isinstance(node, TagCond):
        has = node.tag in facts.tags
        return has == node.has, has
    if isinstance(node, RevenueCond):
        return _revenue(node, facts, now)
    if isinstance(node, GroupTraitCond):
        values = [lookup(traits, node.path) for _, traits in facts.groups]
        return any(test_value(node.test, v, now) for v in values), values
    if isinstance(node, GroupCond):
        member = any(gid == node.group_id for gid, _ in facts.groups)
        return member == node.member, member
    if isinstance(node, AudienceCond):
        entry = facts.audiences.get(node.key)
        member = isinstance(entry, dict) and entry.get("member") is True
        return member == node.member, member
    if isinstance(node, SegmentCond):
        assert node.rules is not None, "segment references must be resolved first"
        inside = holds(node.rules, facts, now)
        return inside == node.inside, inside
    if isinstance(node, RandomCond):
        b = bucket(facts.id, node.seed)
        return b < node.threshold, b
    raise TypeError(f"unknown condition {node!r}")


def _revenue(node: RevenueCond, facts: Facts, now: datetime) -> tuple[bool, Any]:
    if node.metric == "last_charge":
        return test_instant(node.test, facts.last_charge_at, now), facts.last_charge_at
    v = facts.ltv_units if node.metric == "lifetime_value" else facts.charge_count
    op, arg = node.test.op, node.test.value
    ok = {
        "eq": v == arg,
        "ne": v != arg,
        "gt": v > arg,
        "gte": v >= arg,
        "lt": v < arg,
        "lte": v <= arg,
    }[op]
    return ok, (v / 10_000 if node.metric == "lifetime_value" else v)


def settled(node: Node, facts: Facts, now: datetime) -> bool | None:
    """The tree's answer where the profile alone decides it for good, else None.

    Only the profile's own parts count (traits, audiences, revenue, the random bucket): event,
    tag and group conditions are undecided. A relative date is decided once no boundary lies
    ahead (signed up more than 7 days ago is never again within the last 7 days). A decided
    tree keeps its answer whatever the customer's events, until the profile itself changes.
    """
    if isinstance(node, Group):
        values = [settled(c, facts, now) for c in node.children]
        decisive = node.kind == "any"  # the value that decides the group on its own
        if decisive in values:
            return decisive
        return None if None in values else not decisive
    if isinstance(node, Not):
        inner = settled(node.child, facts, now)
        return None if inner is None else not inner
    if isinstance(node, SegmentCond):
        assert node.rules is not None, "segment references must be resolved first"
        inside = settled(node.rules, facts, now)
        return None if inside is None else inside == node.inside
    if isinstance(node, TraitCond):
        v = lookup(facts.traits, node.path)
        if date_boundaries(node.test, v, now):
            return None
        return test_value(node.test, v, now)
    if isinstance(node, RevenueCond):
        if node.metric == "last_charge" and instant_boundaries(
            node.test, facts.last_charge_at, now
        ):
            return None
        return _revenue(node, facts, now)[0]
    if isinstance(node, AudienceCond | RandomCond):
        return _leaf(node, facts, now)[0]
    return None


def settles(node: Node) -> bool:
    """False when `settled` answers None for every profile: the tree has no condition on the
    profile's own parts (only events, tags and groups) and no empty group."""
    if isinstance(node, Group):
        return not node.children or any(settles(c) for c in node.children)
    if isinstance(node, Not):
        return settles(node.child)
    if isinstance(node, SegmentCond):
        return node.rules is None or settles(node.rules)
    return isinstance(node, TraitCond | RevenueCond | AudienceCond | RandomCond)


def growth(c: EventCond) -> int:
    """How more of the events a condition counts move its answer at any one instant: 1 when
    they can make it hold and never undo it (at least N, last within N days, first more than N
    days ago), -1 when they can only undo it (not performed, at most N), 0 when either."""
    if c.recency is not None:
        within = c.recency[0] == "within_days"
        # The last only comes later, the first only earlier (or appears).
        return int(within) if c.op == "last_performed" else int(not within)
    if c.count.lower_only():
        way = 1
    elif all(key in ("lte", "lt") for key, _ in c.count.bounds):
        way = -1
    else:
        return 0
    return -way if c.op == "not_performed" else way


def event_directions(node: Node) -> dict[EventCond, int]:
    """Each event condition's `growth` as the whole tree sees it: reversed under `not` and
    "not in" another segment, 0 where it counts both ways. When every condition that a
    customer's new events count moves the tree the same way, those events can only bring the
    customer in (1) or only take it out (-1): a member stays one, or a non-member stays out."""
    out: dict[EventCond, int] = {}
    stack: list[tuple[Node, int]] = [(node, 1)]
    while stack:
        n, sign = stack.pop()
        if isinstance(n, Group):
            stack.extend((c, sign) for c in n.children)
        elif isinstance(n, Not):
            stack.append((n.child, -sign))
        elif isinstance(n, SegmentCond):
            if n.rules is not None:
                stack.append((n.rules, sign if n.inside else -sign))
        elif isinstance(n, EventCond):
            way = growth(n) * sign
            out[n] = way if out.get(n, way) == way else 0
    return out


def next_change(node: Node, facts: Facts, now: datetime) -> datetime | None:
    """The earliest future instant at which time alone may change the tree: a boundary of a
    time-based condition whose guards hold (see `rules.timed_conditions`)."""
    points: list[datetime] = []
    settled: dict[int, bool] = {}  # guards shared by several conditions are evaluated once
    for c, guards in timed_conditions(node):
        if all(_guard(g, want, facts, now, settled) for g, want in guards):
            points.extend(_boundaries(c, facts, now))
    return min(points) if points else None


def _guard(g: Node, want: bool, facts: Facts, now: datetime, settled: dict[int, bool]) -> bool:
    key = id(g)
    if key not in settled:
        settled[key] = holds(g, facts, now)
    return settled[key] == want


def _boundaries(c: Node, facts: Facts, now: datetime) -> list[datetime]:
    if isinstance(c, TraitCond):
        return date_boundaries(c.test, lookup(facts.traits, c.path), now)
    if isinstance(c, GroupTraitCond):
        out: list[datetime] = []
        for _, traits in facts.groups:
            out.extend(date_boundaries(c.test, lookup(traits, c.path), now))
        return out
    if isinstance(c, RevenueCond) and c.metric == "last_charge":
        return instant_boundaries(c.test, facts.last_charge_at, now)
    if isinstance(c, EventCond):
        return _event_boundaries(c, facts, now)
    return []


def explain(node: Node, facts: Facts, now: datetime, raw: Any) -> dict[str, Any]:
    """Each group and condition with whether it holds and, for conditions, the value seen."""
    if isinstance(node, Group):
        kids = [
            explain(c, facts, now, r) for c, r in zip(node.children, raw[node.kind], strict=True)
        ]
        truth = (
            all(k["holds"] for k in kids) if node.kind == "all" else any(k["holds"] for k in kids)
        )
        return {"group": node.kind, "holds": truth, "conditions": kids}
    if isinstance(node, Not):
        inner = explain(node.child, facts, now, raw["not"])
        return {"group": "not", "holds": not inner["holds"], "conditions": [inner]}
    truth, value = _leaf(node, facts, now)
    if isinstance(node, EventCond):
        value = event_summary(node, facts, now)
    return {"condition": raw, "holds": truth, "value": _plain(value)}


def _plain(value: Any) -> Any:
    if value is MISSING:
        return None
    if isinstance(value, datetime):
        return isoformat(value.astimezone(UTC))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "MISSING",
    "EventRow",
    "Facts",
    "explain",
    "holds",
    "lookup",
    "next_change",
    "test_value",
]
