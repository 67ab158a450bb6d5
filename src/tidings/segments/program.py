"""Rule trees compiled to Python closures: what incremental upkeep evaluates.

`evaluate` holds the reference semantics, written to be read: each call walks the tree and
dispatches on every node's type and operator. Upkeep evaluates thousands of (customer, segment)
pairs a chunk, so a segment's tree is compiled once, to closures that do only what its own
conditions need: `Program.holds`, `Program.settled` and `Program.next_change` answer exactly as
`evaluate.holds`, `evaluate.settled` and `evaluate.next_change`, and `counts` as
`evaluate.counts` (a table of every operator on every kind of value, and the property-based
tests on random trees and customers, compare them).

Nothing here decides anything `evaluate` does not: an operator without a faster form here calls
the reference function itself. What depends only on "now" (the text of now minus N days) is
worked out once per instant.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from tidings.segments.evaluate import (
    EPSILON,
    MISSING,
    NO_EVENTS,
    EventRow,
    Facts,
    Summary,
    first_instant,
    instant_boundaries,
    is_date_text,
    iso,
    lookup,
    page_value,
    summarize,
    test_instant,
    test_value,
)
from tidings.segments.rules import (
    AudienceCond,
    Count,
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
    timed_conditions,
)

Holds = Callable[[Facts, datetime], bool]
Settled = Callable[[Facts, datetime], bool | None]
Points = Callable[[Facts, datetime], list[datetime]]
Test = Callable[[Any, datetime], bool]
Counts = Callable[[EventRow, datetime], bool]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True, slots=True)
class Program:
    """A tree's `holds`, `settled` and `next_change`, as closures."""

    holds: Holds
    settled: Settled
    next_change: Callable[[Facts, datetime], datetime | None]


def program(tree: Node) -> Program:
    """The compiled form of a (resolved) tree (`membership.live_segments` keeps it per
    segment version)."""
    return Program(_holds(tree), _settled(tree), _next_change(tree))


# -- values -----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _text_of(now: datetime) -> str:
    return iso(now)


@lru_cache(maxsize=256)
def _text_shifted(now: datetime, days: int) -> str:
    return iso(now + timedelta(days=days))


@lru_cache(maxsize=65536)
def _instants(v: str) -> tuple[datetime | None, datetime | None]:
    """The first instants whose text is >= v and > v (`evaluate.first_instant`)."""
    return first_instant(v, strict=False), first_instant(v, strict=True)


def _date_points(test: ValueTest) -> Callable[[Any, datetime], list[datetime]]:
    """`evaluate.date_boundaries` for one test."""
    if not test.relative:
        return lambda v, now: []
    op, days = test.op, timedelta(days=test.value)

    def points(v: Any, now: datetime) -> list[datetime]:
        if not is_date_text(v):
            return []
        ge, gt = _instants(v)
        if op == "within_last_days":  # iso(now - N) <= v <= iso(now)
            found = [ge, gt + days if gt else None]
        elif op == "more_than_days_ago":  # v < iso(now - N)
            found = [gt + days if gt else None]
        else:  # within_next_days: iso(now) <= v <= iso(now + N)
            found = [ge - days if ge else None, gt]
        return [p for p in found if p is not None and p > now]

    return points


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _getter(path: tuple[str, ...]) -> Callable[[Any], Any]:
    """`evaluate.lookup` for one path."""
    if len(path) != 1:
        return lambda obj: lookup(obj, path)
    key = path[0]

    def get(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return MISSING
        v = obj.get(key, MISSING)
        return MISSING if v is None else v

    return get


def _value_test(test: ValueTest) -> Test:
    """`evaluate.test_value` for one operator and argument."""
    op, arg = test.op, test.value
    if op in ("eq", "ne"):
        same = _same_as(arg)
        if op == "eq":
            return lambda v, now: same(v)
        return lambda v, now: not same(v)
    if op in ("in", "not_in") and isinstance(arg, tuple):
        among = _among(arg)
        if op == "in":
            return lambda v, now: among(v)
        return lambda v, now: not among(v)
    if op == "exists":
        return lambda v, now: v is not MISSING
    if op == "not_exists":
        return lambda v, now: v is MISSING
    if op in ("gt", "gte", "lt", "lte"):
        cmp = _COMPARE[op]
        return lambda v, now: _number(v) and bool(cmp(v, arg))
    if op == "within_last_days":
        back = -arg
        return lambda v, now: is_date_text(v) and _text_shifted(now, back) <= v <= _text_of(now)
    if op == "more_than_days_ago":
        back = -arg
        return lambda v, now: is_date_text(v) and v < _text_shifted(now, back)
    if op == "within_next_days":
        ahead = arg
        return lambda v, now: is_date_text(v) and _text_of(now) <= v <= _text_shifted(now, ahead)
    return lambda v, now: test_value(test, v, now)


def _same_as(arg: Any) -> Callable[[Any], bool]:
    """`evaluate._same(v, arg)` for a present v, and False for a missing one."""
    if isinstance(arg, bool):
        return lambda v: isinstance(v, bool) and v == arg
    if isinstance(arg, str):
        return lambda v: isinstance(v, str) and v == arg
    if _number(arg):
        return lambda v: _number(v) and v == arg
    return lambda v: False  # a definition's value is a string, number or boolean


def _among(args: tuple[Any, ...]) -> Callable[[Any], bool]:
    """Whether v is the same as one of `args` (as `evaluate._same`): by kind, then by value."""
    texts = frozenset(a for a in args if isinstance(a, str))
    flags = frozenset(a for a in args if isinstance(a, bool))
    numbers = frozenset(a for a in args if _number(a))

    def among(v: Any) -> bool:
        if isinstance(v, str):
            return v in texts
        if isinstance(v, bool):
            return v in flags
        if _number(v):
            return v in numbers
        return False

    return among


# -- holds ------------------------------------------------------------------------------------


def _holds(node: Node) -> Holds:
    if isinstance(node, Group):
        kids = tuple(_holds(c) for c in node.children)
        if len(kids) == 1:
            return kids[0]
        # Loops, not all() / any() over a generator: no generator to make on every call.
        if node.kind == "all":

            def every(f: Facts, now: datetime) -> bool:
                for kid in kids:  # noqa: SIM110
                    if not kid(f, now):
                        return False
                return True

            return every

        def some(f: Facts, now: datetime) -> bool:
            for kid in kids:  # noqa: SIM110
                if kid(f, now):
                    return True
            return False

        return some
    if isinstance(node, Not):
        child = _holds(node.child)
        return lambda f, now: not child(f, now)
    if isinstance(node, TraitCond):
        get, test = _getter(node.path), _value_test(node.test)
        return lambda f, now: test(get(f.traits), now)
    if isinstance(node, EventCond):
        return _event_holds(node)
    if isinstance(node, TagCond):
        tag = node.tag
        if node.has:
            return lambda f, now: tag in f.tags
        return lambda f, now: tag not in f.tags
    if isinstance(node, RevenueCond):
        return _revenue(node)
    if isinstance(node, GroupTraitCond):
        get, test = _getter(node.path), _value_test(node.test)
        return lambda f, now: any(test(get(traits), now) for _, traits in f.groups)
    if isinstance(node, GroupCond):
        gid, member = node.group_id, node.member
        return lambda f, now: any(g == gid for g, _ in f.groups) == member
    if isinstance(node, AudienceCond):
        key, member = node.key, node.member

        def audience(f: Facts, now: datetime) -> bool:
            entry = f.audiences.get(key)
            return (isinstance(entry, dict) and entry.get("member") is True) == member

        return audience
    if isinstance(node, SegmentCond):
        assert node.rules is not None, "segment references must be resolved first"
        inner = _holds(node.rules)
        if node.inside:
            return inner
        return lambda f, now: not inner(f, now)
    if isinstance(node, RandomCond):
        seed, threshold = node.seed, node.threshold
        return lambda f, now: bucket(f.id, seed) < threshold
    raise TypeError(f"unknown condition {node!r}")


def _summary(c: EventCond, f: Facts, now: datetime) -> Summary:
    known = f.summaries.get(c)
    if known is not None:
        return known
    return NO_EVENTS if f.summaries_only else summarize(c, f, now)


def _count(count: Count) -> Callable[[int], bool]:
    tests = tuple((_COMPARE[key], bound) for key, bound in count.bounds)
    if len(tests) == 1:
        cmp, bound = tests[0]
        return lambda n: bool(cmp(n, bound))
    return lambda n: all(cmp(n, bound) for cmp, bound in tests)


def _event_holds(c: EventCond) -> Holds:
    """`evaluate.event_holds` for one condition."""
    if c.recency is None:
        performed = _count(c.count)
        negated = c.op == "not_performed"
        return lambda f, now: performed(_summary(c, f, now).count) != negated
    first = c.op == "first_performed"
    kind, n = c.recency
    days = timedelta(days=n)
    within = kind == "within_days"

    def recent(f: Facts, now: datetime) -> bool:
        s = _summary(c, f, now)
        at = s.first if first else s.last
        if at is None:
            return False
        return at >= now - days if within else at < now - days

    return recent


def _revenue(node: RevenueCond) -> Holds:
    test = node.test
    if node.metric == "last_charge":
        return lambda f, now: test_instant(test, f.last_charge_at, now)
    cmp, arg = _COMPARE[test.op], test.value
    if node.metric == "lifetime_value":
        return lambda f, now: bool(cmp(f.ltv_units, arg))
    return lambda f, now: bool(cmp(f.charge_count, arg))


# -- settled ----------------------------------------------------------------------------------


def _never(f: Facts, now: datetime) -> bool | None:
    return None


def _settled(node: Node) -> Settled:
    """`evaluate.settled`."""
    if isinstance(node, Group):
        kids = tuple(_settled(c) for c in node.children)
        decisive = node.kind == "any"

        def group(f: Facts, now: datetime) -> bool | None:
            undecided = False
            for kid in kids:
                v = kid(f, now)
                if v is None:
                    undecided = True
                elif v == decisive:
                    return decisive
            return None if undecided else not decisive

        return group
    if isinstance(node, Not | SegmentCond):
        if isinstance(node, Not):
            inner, keep = _settled(node.child), False
        else:
            assert node.rules is not None, "segment references must be resolved first"
            inner, keep = _settled(node.rules), node.inside

        def flip(f: Facts, now: datetime) -> bool | None:
            v = inner(f, now)
            return None if v is None else v == keep

        return flip
    if isinstance(node, TraitCond):
        get, holds = _getter(node.path), _value_test(node.test)
        if not node.test.relative:
            return lambda f, now: holds(get(f.traits), now)
        points = _date_points(node.test)

        def trait(f: Facts, now: datetime) -> bool | None:
            v = get(f.traits)
            return None if points(v, now) else holds(v, now)

        return trait
    if isinstance(node, RevenueCond):
        revenue = _revenue(node)
        if node.metric != "last_charge":
            return revenue
        test = node.test

        def charge(f: Facts, now: datetime) -> bool | None:
            if instant_boundaries(test, f.last_charge_at, now):
                return None
            return revenue(f, now)

        return charge
    if isinstance(node, AudienceCond | RandomCond):
        return _holds(node)
    return _never


# -- next change ------------------------------------------------------------------------------


def _next_change(node: Node) -> Callable[[Facts, datetime], datetime | None]:
    """`evaluate.next_change`: each time-based condition's boundaries, where its guards (each
    evaluated at most once) have the truth they must have."""
    guard_index: dict[int, int] = {}
    guards: list[Holds] = []
    plan: list[tuple[Points, tuple[tuple[int, bool], ...]]] = []
    for c, wanted in timed_conditions(node):
        needs = []
        for g, want in wanted:
            if id(g) not in guard_index:
                guard_index[id(g)] = len(guards)
                guards.append(_holds(g))
            needs.append((guard_index[id(g)], want))
        plan.append((_boundaries(c), tuple(needs)))
    if not plan:
        return lambda f, now: None

    def next_change(f: Facts, now: datetime) -> datetime | None:
        known: dict[int, bool] = {}
        best: datetime | None = None
        for points, needs in plan:
            for i, want in needs:
                v = known.get(i)
                if v is None:
                    v = known[i] = guards[i](f, now)
                if v != want:
                    break
            else:
                for p in points(f, now):
                    if best is None or p < best:
                        best = p
        return best

    return next_change


def _boundaries(c: Node) -> Points:
    if isinstance(c, TraitCond):
        get, points = _getter(c.path), _date_points(c.test)
        return lambda f, now: points(get(f.traits), now)
    if isinstance(c, GroupTraitCond):
        get, points = _getter(c.path), _date_points(c.test)
        return lambda f, now: [p for _, traits in f.groups for p in points(get(traits), now)]
    if isinstance(c, RevenueCond) and c.metric == "last_charge":
        test = c.test
        return lambda f, now: instant_boundaries(test, f.last_charge_at, now)
    if isinstance(c, EventCond):
        return _event_boundaries(c)
    return lambda f, now: []


def _event_boundaries(c: EventCond) -> Points:
    """`evaluate._event_boundaries` for one condition."""
    if c.recency is not None:
        first = c.op == "first_performed"
        after = timedelta(days=c.recency[1]) + EPSILON

        def recency(f: Facts, now: datetime) -> list[datetime]:
            s = _summary(c, f, now)
            at = s.first if first else s.last
            if at is None:
                return []
            point = at + after
            return [point] if point > now else []

        return recency
    floor = c.count.flip_floor()
    if c.window.days is None or floor is None:
        return lambda f, now: []
    leaves = timedelta(days=c.window.days) + EPSILON
    newest = c.count.means_any()  # else the oldest event in the window leaves it first

    def window(f: Facts, now: datetime) -> list[datetime]:
        s = _summary(c, f, now)
        at = s.last if newest else s.first
        if at is None or s.count < floor:
            return []
        return [at + leaves]

    return window


# -- events -----------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def counts(c: EventCond) -> Counts:
    """`evaluate.counts` for one condition: whether one event of its type and name changes
    its summary."""
    tests: list[Callable[[EventRow, datetime], bool]] = []
    if c.page_test is not None:
        page = _value_test(c.page_test)
        tests.append(lambda row, now: page(page_value(c, row), now))
    tests.extend(_property_test(w.path, w.test) for w in c.where)
    window = c.window
    if c.recency is None and window.days is not None:
        back = timedelta(days=window.days)
        tests.append(lambda row, now: row.timestamp >= now - back)
    elif c.recency is None and window.start is not None and window.end is not None:
        start, end = window.start, window.end
        tests.append(lambda row, now: start <= row.timestamp <= end)
    if not tests:
        return lambda row, now: True
    if len(tests) == 1:
        return tests[0]
    checks = tuple(tests)

    def every(row: EventRow, now: datetime) -> bool:
        for check in checks:  # noqa: SIM110 (as in `_holds`)
            if not check(row, now):
                return False
        return True

    return every


def _property_test(path: tuple[str, ...], test: ValueTest) -> Counts:
    get, holds = _getter(path), _value_test(test)
    return lambda row, now: holds(get(row.properties), now)
