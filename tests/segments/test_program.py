"""The compiled closures of `program` against the reference evaluator, on every combination of
some edge values: each operator with each kind of argument, on each kind of value, at instants
on either side of a relative date's boundaries. (The property-based tests in test_agreement
compare them on random trees and customers as well.)

No database: trees are plain dataclasses and customers plain `Facts`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidings.segments import evaluate, program, rules
from tidings.segments.evaluate import MISSING, EventRow, Facts, iso
from tidings.segments.rules import EventCond, Node, RevenueCond, TraitCond, ValueTest

NOW = datetime(2024, 6, 15, 12, 30, tzinfo=UTC)
# Values a trait can hold: every JSON kind, and numbers and texts that look alike.
VALUES: list[Any] = [True, False, 1, 0, 1.0, 2.5, -1, 3, -2, "1", "true", "pro", "Pro", "", None]
VALUES += [["pro", 1], {"a": 1}, iso(NOW), iso(NOW - timedelta(days=3)), "2024-06-08"]
VALUES += [iso(NOW + timedelta(days=6)), "2023-01-01T00:00:00Z", "not a date"]
SCALARS: list[Any] = [True, False, 1, 0, 1.0, 2.5, -1, "1", "true", "pro", ""]
LISTS: list[list[Any]] = [[1], [True], [1.0, "pro"], [False, 0], ["1", "true"], [2.5, True, ""]]
# Instants around the boundaries of the dated values above, for the relative operators.
INSTANTS = sorted(
    {
        NOW + off
        for base in (timedelta(0), timedelta(days=3), timedelta(days=7), timedelta(days=-6))
        for off in (base - timedelta(milliseconds=1), base, base + timedelta(milliseconds=1))
    }
)


def value_tests() -> list[ValueTest]:
    out = [ValueTest(op, v) for op in ("eq", "ne") for v in SCALARS]
    out += [ValueTest(op, tuple(v)) for op in ("in", "not_in") for v in LISTS]
    out += [ValueTest(op, v) for op in ("gt", "gte", "lt", "lte") for v in (0, 1, 2.5, -1)]
    out += [ValueTest(op) for op in ("exists", "not_exists")]
    out += [ValueTest(op, "pro") for op in ("contains", "not_contains", "starts_with")]
    out += [ValueTest(op, iso(NOW)) for op in ("before", "after")]
    out += [ValueTest(op, n) for op in rules.RELATIVE_OPS for n in (1, 3, 7)]
    return out


def assert_agree(node: Node, facts: Facts, now: datetime) -> None:
    compiled = program.program(node)
    assert compiled.holds(facts, now) == evaluate.holds(node, facts, now), (node, facts, now)
    assert compiled.settled(facts, now) == evaluate.settled(node, facts, now), (node, facts, now)
    assert compiled.next_change(facts, now) == evaluate.next_change(node, facts, now), (
        node,
        facts,
        now,
    )


@pytest.mark.parametrize("test", value_tests(), ids=lambda t: f"{t.op}-{t.value!r}")
def test_every_value_test_agrees_with_the_reference(test: ValueTest) -> None:
    """A trait condition and a negated one, on every value, at every instant: holds, settled
    and next change as `evaluate` answers them."""
    nodes: list[Node] = [TraitCond(("plan",), test), rules.Not(TraitCond(("plan",), test))]
    nodes.append(TraitCond(("address", "plan"), test))
    instants = INSTANTS if test.op in rules.RELATIVE_OPS else [NOW]
    seen = set()
    for value in VALUES:
        facts = Facts(id=1, traits={"plan": value, "address": {"plan": value}})
        for now in instants:
            for node in nodes:
                assert_agree(node, facts, now)
            seen.add(evaluate.holds(nodes[0], facts, now))
    assert seen == {True, False}, f"{test} never changes its answer over these values"
    absent = Facts(id=1, traits={})
    assert_agree(nodes[0], absent, NOW)


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte"])
@pytest.mark.parametrize("metric", ["lifetime_value", "charge_count"])
def test_revenue_agrees_with_the_reference(metric: str, op: str) -> None:
    node = RevenueCond(metric, ValueTest(op, 2))
    for n in (0, 1, 2, 3, 20_000):
        assert_agree(node, Facts(id=1, traits={}, ltv_units=n, charge_count=n), NOW)


def test_the_other_conditions_agree_with_the_reference() -> None:
    """Audiences, groups, group traits, tags, the random bucket and segment references, on
    customers with and without each, in every kind of group."""
    leaves: list[Node] = [
        rules.AudienceCond("high_value", True),
        rules.AudienceCond("high_value", False),
        rules.GroupCond("acct_1", True),
        rules.GroupCond("acct_1", False),
        rules.GroupTraitCond(("tier",), ValueTest("in", ("gold", 1))),
        rules.TagCond("vip", True),
        rules.TagCond("vip", False),
        rules.RandomCond("holdout", 5_000),
        rules.SegmentCond(7, False, TraitCond(("plan",), ValueTest("eq", "pro"))),
        RevenueCond("last_charge", ValueTest("within_last_days", 3)),
    ]
    nodes = [*leaves, rules.Group("all", tuple(leaves[::3])), rules.Group("any", tuple(leaves))]
    nodes += [rules.Group("all", ()), rules.Group("any", ()), rules.Not(rules.Group("any", ()))]
    memberships: list[Any] = [{"member": True}, {"member": 1}, {"member": "true"}, {}, "x", None]
    customers = [
        Facts(
            id=i,
            traits={"plan": "pro" if i % 2 else "free"},
            audiences={} if entry is None else {"high_value": entry},
            tags={"vip"} if i % 3 else set(),
            groups=[("acct_1", {"tier": 1}), ("acct_2", {"tier": True})][i % 3 :][: 1 + i % 2],
            last_charge_at=NOW - timedelta(days=i % 5) if i % 4 else None,
        )
        for i, entry in enumerate(memberships * 4)
    ]
    answers = set()
    for node in nodes:
        for facts in customers:
            assert_agree(node, facts, NOW)
            answers.add((node, evaluate.holds(node, facts, NOW)))
    assert all((node, truth) in answers for node in leaves for truth in (True, False))


def row(days_ago: float, **properties: Any) -> EventRow:
    return EventRow(NOW - timedelta(days=days_ago), "Signed In", properties, {})


CONDITIONS = [
    EventCond("track", "Signed In", "performed", window=rules.Window(days=7)),
    EventCond(
        "track",
        "Signed In",
        "not_performed",
        count=rules.Count((("gte", 2), ("lt", 4))),
        window=rules.Window(days=3),
    ),
    EventCond("track", "Signed In", "last_performed", recency=("within_days", 2)),
    EventCond("track", "Signed In", "first_performed", recency=("more_than_days", 5)),
    EventCond(
        "track",
        "Signed In",
        "performed",
        count=rules.Count((("eq", 1),)),
        window=rules.Window(start=NOW - timedelta(days=4), end=NOW - timedelta(days=1)),
        where=(rules.PropertyCond(("device",), ValueTest("in", ("mobile", 1))),),
    ),
]


@pytest.mark.parametrize("cond", CONDITIONS, ids=lambda c: c.op)
def test_event_conditions_agree_with_the_reference(cond: EventCond) -> None:
    """Holds, next change and each event's `counts`, for histories of 0 to 4 events, from the
    events themselves or from a summary."""
    histories = [
        [],
        [row(0.5, device="mobile")],
        [row(1.5, device=1), row(3.5, device="web")],
        [row(6.9), row(2), row(1, device="mobile"), row(0.1, device=True)],
    ]
    answers = set()
    for events in histories:
        facts = Facts(id=1, traits={}, events={("track", "Signed In"): events})
        summarized = Facts(id=1, traits={}, summaries_only=True)
        summarized.summaries[cond] = evaluate.summarize(cond, facts, NOW)
        for f in (facts, summarized):
            assert_agree(cond, f, NOW)
        answers.add(evaluate.holds(cond, facts, NOW))
        for event in [*events, row(-1), row(10), row(3.99, device="mobile")]:
            assert program.counts(cond)(event, NOW) == evaluate.counts(cond, event, NOW), event
    assert answers == {True, False}


def test_missing_is_not_a_value() -> None:
    """A JSON null is absent, as in the reference: exists fails, not_exists holds."""
    facts = Facts(id=1, traits={"plan": None})
    for op in ("exists", "not_exists"):
        node = TraitCond(("plan",), ValueTest(op))
        assert program.program(node).holds(facts, NOW) == (op == "not_exists")
    assert evaluate.lookup(facts.traits, ("plan",)) is MISSING
