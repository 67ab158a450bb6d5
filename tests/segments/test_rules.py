"""The rule language: what `rules.parse` accepts and refuses, `rules.resolve`, the value tests
of `evaluate.test_value` on their edge cases, and the `rules.bucket` draw.

No database: definitions are plain JSON and the tree is plain dataclasses.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from tidings.segments import evaluate, rules

# `test_value` is used as evaluate.test_value: imported bare, pytest would collect it.
from tidings.segments.evaluate import MISSING, EventRow, Facts, iso, lookup
from tidings.segments.rules import (
    MAX_CONDITIONS,
    MAX_DAYS,
    MAX_DEPTH,
    MAX_LIST,
    AudienceCond,
    Count,
    EventCond,
    Group,
    GroupCond,
    GroupTraitCond,
    InvalidDefinition,
    Node,
    Not,
    RandomCond,
    RevenueCond,
    SegmentCond,
    TagCond,
    TraitCond,
    ValueTest,
    Window,
    bucket,
    parse,
    resolve,
)

NOW = datetime(2024, 6, 15, 12, 30, 0, 250_000, tzinfo=UTC)
MS = timedelta(milliseconds=1)
DAY = timedelta(days=1)


def refused(definition: Any, **kwargs: Any) -> InvalidDefinition:
    with pytest.raises(InvalidDefinition) as caught:
        parse(definition, **kwargs)
    err = caught.value
    assert err.code == "invalid_segment"
    assert err.http_status == 400
    assert str(err) == err.message
    return err


# -- valid shapes -----------------------------------------------------------------------------

VALID_TESTS: list[tuple[dict[str, Any], ValueTest]] = [
    ({"op": "eq", "value": "pro"}, ValueTest("eq", "pro")),
    ({"op": "eq", "value": 3}, ValueTest("eq", 3)),
    ({"op": "eq", "value": 2.5}, ValueTest("eq", 2.5)),
    ({"op": "eq", "value": False}, ValueTest("eq", False)),
    ({"op": "eq", "value": ""}, ValueTest("eq", "")),
    ({"op": "ne", "value": True}, ValueTest("ne", True)),
    ({"op": "in", "value": ["a", 1, True]}, ValueTest("in", ("a", 1, True))),
    ({"op": "not_in", "value": ["a"]}, ValueTest("not_in", ("a",))),
    ({"op": "contains", "value": "pro"}, ValueTest("contains", "pro")),
    ({"op": "not_contains", "value": "x"}, ValueTest("not_contains", "x")),
    ({"op": "starts_with", "value": "/docs"}, ValueTest("starts_with", "/docs")),
    ({"op": "exists"}, ValueTest("exists")),
    ({"op": "not_exists"}, ValueTest("not_exists")),
    ({"op": "gt", "value": 0}, ValueTest("gt", 0)),
    ({"op": "gte", "value": -1.5}, ValueTest("gte", -1.5)),
    ({"op": "lt", "value": 10}, ValueTest("lt", 10)),
    ({"op": "lte", "value": 1e9}, ValueTest("lte", 1e9)),
    # Dates are kept in the one canonical text form they are compared with.
    ({"op": "before", "value": "2024-06-10"}, ValueTest("before", "2024-06-10T00:00:00.000Z")),
    (
        {"op": "after", "value": "2024-06-10T12:00:00+02:00"},
        ValueTest("after", "2024-06-10T10:00:00.000Z"),
    ),
    (
        {"op": "after", "value": "2024-06-10T12:00:00.123456Z"},
        ValueTest("after", "2024-06-10T12:00:00.123Z"),
    ),
    ({"op": "within_last_days", "value": 7}, ValueTest("within_last_days", 7)),
    ({"op": "more_than_days_ago", "value": 1}, ValueTest("more_than_days_ago", 1)),
    ({"op": "within_next_days", "value": MAX_DAYS}, ValueTest("within_next_days", MAX_DAYS)),
]


@pytest.mark.parametrize(("test", "expected"), VALID_TESTS)
def test_trait_conditions_parse_with_every_operator(
    test: dict[str, Any], expected: ValueTest
) -> None:
    assert parse({"trait": "plan", **test}) == TraitCond(("plan",), expected)
    assert parse({"group_trait": "plan", **test}) == GroupTraitCond(("plan",), expected)


def test_a_dotted_trait_is_a_nested_path() -> None:
    assert parse({"trait": "address.city", "op": "eq", "value": "Paris"}) == TraitCond(
        ("address", "city"), ValueTest("eq", "Paris")
    )
    assert parse({"trait": "first name", "op": "exists"}).path == ("first name",)  # type: ignore[union-attr]


def test_event_conditions_parse() -> None:
    assert parse({"event": "Signed Up", "op": "performed"}) == EventCond(
        type="track", name="Signed Up", op="performed"
    )
    tree = parse(
        {
            "event": "Order Completed",
            "op": "performed",
            "count": {"lte": 5, "gte": 2},
            "within_days": 30,
            "where": [
                {"property": "plan", "op": "eq", "value": "pro"},
                {"property": "item.sku", "op": "exists"},
            ],
        }
    )
    assert isinstance(tree, EventCond)
    assert tree.count == Count((("gte", 2), ("lte", 5)))
    assert tree.window == Window(days=30)
    assert [w.path for w in tree.where] == [("plan",), ("item", "sku")]
    assert tree.where[0].test == ValueTest("eq", "pro")
    for key in ("eq", "gte", "lte", "gt", "lt"):
        cond = parse({"event": "x", "op": "performed", "count": {key: 0}})
        assert cond.count == Count(((key, 0),))  # type: ignore[union-attr]
    assert parse({"event": "x", "op": "not_performed", "within_days": 7}) == EventCond(
        type="track", name="x", op="not_performed", window=Window(days=7)
    )


def test_between_takes_instants_and_a_bare_end_date_takes_the_whole_day() -> None:
    cond = parse(
        {"event": "x", "op": "performed", "between": ["2024-06-01T08:00:00+02:00", "2024-06-10"]}
    )
    assert isinstance(cond, EventCond)
    assert cond.window.start == datetime(2024, 6, 1, 6, 0, tzinfo=UTC)
    assert cond.window.end == datetime.combine(datetime(2024, 6, 10).date(), time.max, UTC)
    # A single day: a bare start and the same bare end.
    day = parse({"event": "x", "op": "performed", "between": ["2024-06-10", "2024-06-10"]})
    assert day.window.start == datetime(2024, 6, 10, tzinfo=UTC)  # type: ignore[union-attr]
    # An end with a time is exact.
    cond = parse(
        {"event": "x", "op": "performed", "between": ["2024-06-01", "2024-06-10T00:00:00Z"]}
    )
    assert cond.window.end == datetime(2024, 6, 10, tzinfo=UTC)  # type: ignore[union-attr]


@pytest.mark.parametrize("op", ["first_performed", "last_performed"])
@pytest.mark.parametrize("key", ["within_days", "more_than_days_ago"])
def test_first_and_last_performed_parse(op: str, key: str) -> None:
    cond = parse(
        {
            "event": "Login",
            "op": op,
            key: 14,
            "where": [{"property": "ok", "op": "eq", "value": True}],
        }
    )
    assert isinstance(cond, EventCond)
    assert (cond.op, cond.recency) == (op, (key, 14))
    assert len(cond.where) == 1


@pytest.mark.parametrize("field", rules.PAGE_FIELDS)
def test_page_conditions_parse(field: str) -> None:
    cond = parse({"page": field, "op": "any"})
    assert cond == EventCond(type="page", name=None, op="performed", page_field=field)
    for op in ("eq", "contains", "starts_with"):
        cond = parse(
            {
                "page": field,
                "op": op,
                "value": "/pricing",
                "count": {"gte": 2},
                "within_days": 7,
                "where": [{"property": "plan", "op": "exists"}],
            }
        )
        assert isinstance(cond, EventCond)
        assert cond.page_test == ValueTest(op, "/pricing")
        assert (cond.count, cond.window.days, len(cond.where)) == (Count((("gte", 2),)), 7, 1)
    cond = parse({"page": field, "op": "any", "between": ["2024-06-01", "2024-06-02"]})
    assert cond.window.start == datetime(2024, 6, 1, tzinfo=UTC)  # type: ignore[union-attr]


def test_the_other_families_parse() -> None:
    assert parse({"tag": " vip ", "op": "has"}) == TagCond("vip", True)
    assert parse({"tag": "churn risk", "op": "not_has"}) == TagCond("churn risk", False)
    # Amounts become integer units of 1/10,000.
    assert parse({"revenue": "lifetime_value", "op": "gte", "value": 10.5}) == RevenueCond(
        "lifetime_value", ValueTest("gte", 105_000)
    )
    assert parse({"revenue": "lifetime_value", "op": "eq", "value": 0.0001}) == RevenueCond(
        "lifetime_value", ValueTest("eq", 1)
    )
    assert parse({"revenue": "charge_count", "op": "ne", "value": 0}) == RevenueCond(
        "charge_count", ValueTest("ne", 0)
    )
    for test in ({"op": "exists"}, {"op": "before", "value": "2024-01-01"}):
        assert isinstance(parse({"revenue": "last_charge", **test}), RevenueCond)
    assert parse({"revenue": "last_charge", "op": "within_last_days", "value": 30}) == RevenueCond(
        "last_charge", ValueTest("within_last_days", 30)
    )
    assert parse({"group": "acme", "op": "member"}) == GroupCond("acme", True)
    assert parse({"group": "acme", "op": "not_member"}) == GroupCond("acme", False)
    assert parse({"audience": "high_value", "op": "member"}) == AudienceCond("high_value", True)
    assert parse({"audience": "x", "op": "not_member"}) == AudienceCond("x", False)
    assert parse({"segment": 7, "op": "in"}) == SegmentCond(7, True)
    assert parse({"segment": 7, "op": "not_in"}) == SegmentCond(7, False)
    assert parse({"segment": "Trial users", "op": "in"}, segment_names={"Trial users": 3}) == (
        SegmentCond(3, True)
    )
    assert parse({"random": "holdout", "percent": 10}) == RandomCond("holdout", 1000)
    assert parse({"random": "ab", "percent": 33.33}) == RandomCond("ab", 3333)
    assert parse({"random": "ab", "percent": 0}).threshold == 0  # type: ignore[union-attr]
    assert parse({"random": "ab", "percent": 100}).threshold == 10_000  # type: ignore[union-attr]


def test_groups_nest() -> None:
    leaf = {"tag": "vip", "op": "has"}
    tree = parse({"all": [leaf, {"any": [leaf, {"not": leaf}]}, {"not": {"all": []}}]})
    tag = TagCond("vip", True)
    assert tree == Group("all", (tag, Group("any", (tag, Not(tag))), Not(Group("all", ()))))
    assert parse({"any": []}) == Group("any", ())
    deep: dict[str, Any] = leaf
    for _ in range(MAX_DEPTH):
        deep = {"not": deep}
    assert isinstance(parse(deep), Not)
    assert isinstance(parse({"all": [leaf] * MAX_CONDITIONS}), Group)
    assert parse({"trait": "x", "op": "in", "value": list(range(MAX_LIST))}).test.value == tuple(  # type: ignore[union-attr]
        range(MAX_LIST)
    )


# -- refusals, each naming the offending condition ---------------------------------------------

T = {"trait": "plan", "op": "exists"}
E = {"event": "x", "op": "performed"}


@pytest.mark.parametrize(
    ("definition", "where", "says"),
    [
        # Unknown operators, for each family.
        ({"trait": "plan", "op": "equals", "value": 1}, "rules", "unknown operator 'equals'"),
        ({"trait": "plan", "value": 1}, "rules", "unknown operator None"),
        ({"group_trait": "plan", "op": "has"}, "rules", "unknown operator 'has'"),
        ({"event": "x", "op": "did"}, "rules", "unknown operator 'did'"),
        ({"page": "path", "op": "ne", "value": "/"}, "rules", "unknown operator 'ne'"),
        ({"tag": "vip", "op": "is"}, "rules", "unknown operator 'is' for a tag"),
        ({"revenue": "last_charge", "op": "eq", "value": 1}, "rules", "unknown operator 'eq'"),
        ({"revenue": "charge_count", "op": "in", "value": [1]}, "rules", "unknown operator"),
        ({"group": "g", "op": "in"}, "rules", "unknown operator 'in' for a group"),
        ({"audience": "a", "op": "in"}, "rules", "unknown operator 'in'"),
        ({"segment": 1, "op": "member"}, "rules", "unknown operator 'member' for a segment"),
        (
            {**E, "where": [{"property": "a", "op": "within_last_days", "value": 3}]},
            "rules.where[0]",
            "unknown operator 'within_last_days' for a property",
        ),
        # Values of the wrong type.
        ({"trait": "plan", "op": "eq", "value": ["pro"]}, "rules", "needs a string, number or"),
        ({"trait": "plan", "op": "eq"}, "rules", '"eq" needs a string, number or boolean'),
        ({"trait": "plan", "op": "ne", "value": None}, "rules", '"ne" needs a string'),
        ({"trait": "plan", "op": "eq", "value": {"a": 1}}, "rules", '"eq" needs a string'),
        ({"trait": "plan", "op": "in", "value": "pro"}, "rules", "needs a list of 1 to 1000"),
        ({"trait": "plan", "op": "in", "value": []}, "rules", "needs a list of 1 to 1000"),
        (
            {"trait": "plan", "op": "in", "value": list(range(MAX_LIST + 1))},
            "rules",
            "needs a list of 1 to 1000",
        ),
        ({"trait": "plan", "op": "not_in", "value": [None]}, "rules", "takes strings, numbers"),
        ({"trait": "plan", "op": "in", "value": [["a"]]}, "rules", "takes strings, numbers"),
        ({"trait": "plan", "op": "contains", "value": 1}, "rules", "needs a non-empty string"),
        ({"trait": "plan", "op": "contains", "value": ""}, "rules", "needs a non-empty string"),
        ({"trait": "plan", "op": "starts_with"}, "rules", "needs a non-empty string"),
        ({"trait": "plan", "op": "exists", "value": 1}, "rules", '"exists" takes no value'),
        ({"trait": "plan", "op": "not_exists", "value": ""}, "rules", "takes no value"),
        ({"trait": "n", "op": "gt", "value": "3"}, "rules", '"gt" needs a number value'),
        ({"trait": "n", "op": "lte", "value": True}, "rules", '"lte" needs a number value'),
        ({"trait": "d", "op": "before", "value": "soon"}, "rules", '"before" needs a date'),
        ({"trait": "d", "op": "after", "value": "2024-13-45"}, "rules", '"after" needs a date'),
        ({"trait": "d", "op": "after", "value": 1718000000}, "rules", '"after" needs a date'),
        ({"page": "path", "op": "eq", "value": 5}, "rules", "compares with a string"),
        ({"page": "path", "op": "eq", "value": True}, "rules", "compares with a string"),
        ({"page": "path", "op": "contains", "value": 5}, "rules", "needs a non-empty string"),
        ({"revenue": "lifetime_value", "op": "gt", "value": "5"}, "rules", "needs a number"),
        ({"revenue": "lifetime_value", "op": "eq", "value": True}, "rules", "compares with a"),
        ({"revenue": "charge_count", "op": "eq", "value": "1"}, "rules", "compares with a number"),
        ({"revenue": "last_charge", "op": "before", "value": "x"}, "rules", "needs a date"),
        # Family keys and their arguments.
        ({"traits": "plan", "op": "exists"}, "rules", "unknown condition ['op', 'traits']"),
        ({"op": "exists"}, "rules", "unknown condition ['op']"),
        ({}, "rules", "expected an object"),
        ([], "rules", "expected an object"),
        ("plan", "rules", "expected an object"),
        ({"trait": "", "op": "exists"}, "rules", "trait must be a non-empty string"),
        ({"trait": "  ", "op": "exists"}, "rules", "trait must be a non-empty string"),
        ({"trait": 5, "op": "exists"}, "rules", "trait must be a non-empty string"),
        ({"trait": "x" * 256, "op": "exists"}, "rules", "trait must be a non-empty string"),
        ({"trait": "a..b", "op": "exists"}, "rules", "has an empty part"),
        ({"trait": "a.", "op": "exists"}, "rules", "has an empty part"),
        ({"trait": 'a"b', "op": "exists"}, "rules", "may not contain quotes or backslashes"),
        ({"trait": "a\\b", "op": "exists"}, "rules", "may not contain quotes or backslashes"),
        ({"group_trait": None, "op": "exists"}, "rules", "group_trait must be a non-empty"),
        ({"event": "", "op": "performed"}, "rules", "event must be the event's name"),
        ({"event": 5, "op": "performed"}, "rules", "event must be the event's name"),
        ({"event": "x" * 256, "op": "performed"}, "rules", "event must be the event's name"),
        ({"page": "host", "op": "any"}, "rules", "page must name a field"),
        ({"tag": " ", "op": "has"}, "rules", "tag must be a tag's name"),
        ({"tag": 1, "op": "has"}, "rules", "tag must be a tag's name"),
        ({"revenue": "ltv", "op": "gt", "value": 1}, "rules", "revenue must be one of"),
        ({"group": "", "op": "member"}, "rules", "group must be a groupId"),
        ({"audience": 3, "op": "member"}, "rules", "audience must be an audience key"),
        ({"segment": 0, "op": "in"}, "rules", "segment must be a segment's id"),
        ({"segment": -2, "op": "in"}, "rules", "segment must be a segment's id"),
        ({"segment": True, "op": "in"}, "rules", "segment must be a segment's id"),
        ({"segment": "Trial users", "op": "in"}, "rules", "segment must be a segment's id"),
        ({"segment": 1.0, "op": "in"}, "rules", "segment must be a segment's id"),
        ({"random": "", "percent": 5}, "rules", "random takes a name for its draw"),
        ({"random": "x"}, "rules", "percent must be a number from 0 to 100"),
        ({"random": "x", "percent": 101}, "rules", "percent must be a number from 0 to 100"),
        ({"random": "x", "percent": -0.5}, "rules", "percent must be a number from 0 to 100"),
        ({"random": "x", "percent": "50"}, "rules", "percent must be a number from 0 to 100"),
        ({"random": "x", "percent": True}, "rules", "percent must be a number from 0 to 100"),
        # Extra keys.
        ({**T, "value2": 1}, "rules", "unexpected key 'value2'"),
        (
            {"trait": "plan", "op": "eq", "value": "x", "event": "y"},
            "rules",
            "unexpected key 'event'",
        ),
        ({"tag": "vip", "op": "has", "value": 1}, "rules", "unexpected key 'value'"),
        ({**E, "value": "x"}, "rules", "unexpected key 'value'"),
        ({**E, "name": "x"}, "rules", "unexpected key 'name'"),
        ({"all": [], "any": []}, "rules", "unexpected key 'any'"),
        ({"all": [], "note": "x"}, "rules", "unexpected key 'note'"),
        ({"not": T, "and": T}, "rules", "unexpected key 'and'"),
        ({"random": "x", "percent": 5, "seed": 1}, "rules", "unexpected key 'seed'"),
        (
            {**E, "where": [{"property": "a", "op": "exists", "trait": "b"}]},
            "rules.where[0]",
            "unexpected key 'trait'",
        ),
        # Groups.
        ({"all": T}, "rules", '"all" takes a list of conditions'),
        ({"any": None}, "rules", '"any" takes a list of conditions'),
        ({"not": [T]}, "rules.not", "expected an object"),
        ({"all": [T, 5]}, "rules.all[1]", "expected an object"),
        # Counts.
        ({**E, "count": 3}, "rules", "count must be an object"),
        ({**E, "count": {}}, "rules", "count must be an object"),
        ({**E, "count": {"min": 1}}, "rules", "unknown count bound 'min'"),
        ({**E, "count": {"gte": -1}}, "rules", "count gte must be a whole number, 0 or more"),
        ({**E, "count": {"eq": 1.5}}, "rules", "count eq must be a whole number"),
        ({**E, "count": {"lt": True}}, "rules", "count lt must be a whole number"),
        ({**E, "count": {"gt": "2"}}, "rules", "count gt must be a whole number"),
        ({"event": "x", "op": "not_performed", "count": {"gte": 2}}, "rules", "takes no count"),
        ({"event": "x", "op": "first_performed", "count": {"gte": 2}}, "rules", "takes"),
        ({"page": "path", "op": "any", "count": {"atleast": 1}}, "rules", "unknown count bound"),
        # Windows.
        ({**E, "between": "2024-06-01"}, "rules", '"between" takes two dates'),
        ({**E, "between": ["2024-06-01"]}, "rules", '"between" takes two dates'),
        ({**E, "between": ["a", "b", "c"]}, "rules", '"between" takes two dates'),
        ({**E, "between": ["2024-06-01", "soon"]}, "rules", "takes two ISO-8601 dates"),
        ({**E, "between": [1717200000, "2024-06-10"]}, "rules", "takes two ISO-8601 dates"),
        ({**E, "between": ["2024-06-10", "2024-06-09"]}, "rules", "needs its end after its start"),
        (
            {**E, "between": ["2024-06-10T12:00:00Z", "2024-06-10T12:00:00Z"]},
            "rules",
            "needs its end after its start",
        ),
        ({**E, "within_days": 7, "between": ["2024-06-01", "2024-06-02"]}, "rules", "not both"),
        (
            {"event": "x", "op": "first_performed", "between": ["2024-06-01", "2024-06-02"]},
            "rules",
            "takes",
        ),
        # Days out of range.
        ({**E, "within_days": 0}, "rules", "within_days must be a whole number of days from 1"),
        ({**E, "within_days": MAX_DAYS + 1}, "rules", "from 1 to 36500"),
        ({**E, "within_days": 1.5}, "rules", "within_days must be a whole number"),
        ({**E, "within_days": "7"}, "rules", "within_days must be a whole number"),
        ({**E, "within_days": True}, "rules", "within_days must be a whole number"),
        ({"trait": "d", "op": "within_last_days", "value": 0}, "rules", "whole number of days"),
        ({"trait": "d", "op": "more_than_days_ago", "value": -3}, "rules", "whole number of"),
        ({"trait": "d", "op": "within_next_days", "value": MAX_DAYS + 1}, "rules", "36500"),
        ({"trait": "d", "op": "within_next_days"}, "rules", "whole number of days"),
        ({"revenue": "last_charge", "op": "within_last_days", "value": 0}, "rules", "1 to 36500"),
        ({"event": "x", "op": "last_performed", "within_days": 0}, "rules", "within_days must"),
        ({"event": "x", "op": "first_performed", "more_than_days_ago": 36_501}, "rules", "36500"),
        # Recency.
        ({"event": "x", "op": "first_performed"}, "rules", 'needs one of "within_days" or'),
        (
            {"event": "x", "op": "last_performed", "within_days": 1, "more_than_days_ago": 1},
            "rules",
            'needs one of "within_days" or',
        ),
        ({**E, "more_than_days_ago": 3}, "rules", "goes with first_performed or last_performed"),
        ({"page": "path", "op": "any", "more_than_days_ago": 3}, "rules", "is for events"),
        ({"page": "path", "op": "any", "value": "/"}, "rules", '"any" takes no value'),
        # Where.
        ({**E, "where": {"property": "a", "op": "exists"}}, "rules", '"where" takes a list'),
        ({**E, "where": [{"op": "exists"}]}, "rules.where[0]", 'expected {"property": ...'),
        ({**E, "where": [T, "x"]}, "rules.where[0]", 'expected {"property": ...'),
        (
            {**E, "where": [{"property": "a", "op": "exists"}, {"property": "", "op": "exists"}]},
            "rules.where[1]",
            "property must be a non-empty string",
        ),
        (
            {**E, "where": [{"property": "a", "op": "gt", "value": "1"}]},
            "rules.where[0]",
            '"gt" needs a number value',
        ),
    ],
)
def test_invalid_definitions_are_refused_naming_the_condition(
    definition: Any, where: str, says: str
) -> None:
    err = refused(definition)
    assert err.message.startswith(f"{where}: "), err.message
    assert says in err.message, err.message
    # Deep inside a tree, the path leads to the same condition.
    nested = {"all": [T, {"any": [T, {"not": {"all": [T, definition]}}]}]}
    err = refused(nested)
    inner = "rules.all[1].any[1].not.all[1]" + where.removeprefix("rules")
    assert err.message.startswith(f"{inner}: "), err.message
    assert says in err.message, err.message


def test_the_path_counts_each_group_from_zero() -> None:
    bad = {"trait": "plan", "op": "bogus"}
    cases = {
        "rules.all[2]": {"all": [T, T, bad]},
        "rules.all[1].any[0]": {"all": [T, {"any": [bad, T]}]},
        "rules.any[0].not": {"any": [{"not": bad}]},
        "rules.not.not.all[0]": {"not": {"not": {"all": [bad]}}},
    }
    for path, definition in cases.items():
        message = refused(definition).message
        assert message.startswith(f"{path}: unknown operator 'bogus' for a trait condition"), (
            message
        )


def test_limits_on_depth_and_size() -> None:
    deep: dict[str, Any] = T
    for _ in range(MAX_DEPTH + 1):
        deep = {"not": deep}
    message = refused(deep).message
    assert message == f"rules{'.not' * (MAX_DEPTH + 1)}: groups nest more than {MAX_DEPTH} deep"
    message = refused({"all": [T] * (MAX_CONDITIONS + 1)}).message
    assert message.startswith(f"rules.all[{MAX_CONDITIONS}]: a segment has at most")


@pytest.mark.parametrize(
    "definition",
    [
        {"trait": "score", "op": "gt", "value": float("nan")},
        {"trait": "score", "op": "eq", "value": float("inf")},
        {"trait": "score", "op": "in", "value": [1, float("-inf")]},
        {
            "event": "x",
            "op": "performed",
            "where": [{"property": "n", "op": "lt", "value": float("nan")}],
        },
        {"revenue": "lifetime_value", "op": "gt", "value": float("inf")},
        {"revenue": "lifetime_value", "op": "gt", "value": float("nan")},
        {"revenue": "charge_count", "op": "lt", "value": float("inf")},
    ],
    ids=["gt-nan", "eq-inf", "in-inf", "where-nan", "ltv-inf", "ltv-nan", "count-inf"],
)
def test_numbers_that_are_not_finite_are_refused(definition: dict[str, Any]) -> None:
    """NaN and Infinity reach `parse`: the API's JSON and the CLI's JSON and YAML (.inf) accept
    them. JSON has no such numbers and SQL cannot compare with them (PostgreSQL rejects the
    jsonb 'NaN'), so they must be refused as invalid, not crash later (500)."""
    refused(definition)


# -- resolving references ---------------------------------------------------------------------


def segments_lookup(definitions: dict[int, Any]) -> dict[int, Node]:
    return {sid: parse(d) for sid, d in definitions.items()}


def test_resolve_inlines_referenced_segments() -> None:
    parsed = segments_lookup(
        {
            1: {"tag": "vip", "op": "has"},
            2: {"all": [{"segment": 1, "op": "in"}, {"trait": "plan", "op": "exists"}]},
            3: {"any": [{"segment": 2, "op": "not_in"}, {"segment": 1, "op": "in"}]},
        }
    )
    tree = resolve(parsed[3], parsed.get)
    inner2 = Group("all", (SegmentCond(1, True, TagCond("vip", True)), parsed[2].children[1]))  # type: ignore[union-attr]
    assert tree == Group(
        "any", (SegmentCond(2, False, inner2), SegmentCond(1, True, TagCond("vip", True)))
    )
    assert rules.referenced_segments(parsed[3]) == {1, 2}
    # Diamonds are not cycles.
    parsed[4] = parse({"all": [{"segment": 2, "op": "in"}, {"segment": 3, "op": "in"}]})
    assert isinstance(resolve(parsed[4], parsed.get), Group)
    facts = Facts(id=1, traits={"plan": "pro"}, tags={"vip"})
    assert evaluate.holds(tree, facts, NOW)


@pytest.mark.parametrize(
    ("definitions", "start", "at"),
    [
        ({1: {"segment": 1, "op": "in"}}, 1, "rules"),
        ({1: {"segment": 2, "op": "in"}, 2: {"not": {"segment": 1, "op": "not_in"}}}, 1, "rules"),
        (
            {
                1: {"all": [{"tag": "a", "op": "has"}, {"segment": 2, "op": "in"}]},
                2: {"any": [{"segment": 3, "op": "in"}]},
                3: {"segment": 1, "op": "not_in"},
            },
            2,
            "rules.any[0]",
        ),
        (
            {
                1: {"all": [{"tag": "a", "op": "has"}, {"not": {"segment": 2, "op": "in"}}]},
                2: {"segment": 1, "op": "in"},
            },
            1,
            "rules.all[1].not",
        ),
        # The cycle need not pass through the segment being resolved.
        (
            {
                1: {"segment": 2, "op": "in"},
                2: {"segment": 3, "op": "in"},
                3: {"segment": 2, "op": "in"},
            },
            1,
            "rules",
        ),
    ],
)
def test_resolve_refuses_cycles(definitions: dict[int, Any], start: int, at: str) -> None:
    """The error names the condition of the definition being resolved that leads into the
    cycle, wherever in the referenced segments the cycle closes."""
    parsed = segments_lookup(definitions)
    with pytest.raises(InvalidDefinition) as caught:
        resolve(parsed[start], parsed.get)
    assert caught.value.code == "segment_cycle"
    assert caught.value.http_status == 400
    assert caught.value.message.startswith(f"{at}: segment ")
    assert "cannot refer to each other in a cycle" in caught.value.message


def test_resolve_refuses_unknown_segments() -> None:
    parsed = segments_lookup({1: {"all": [T, {"not": {"segment": 9, "op": "in"}}]}})
    with pytest.raises(InvalidDefinition) as caught:
        resolve(parsed[1], parsed.get)
    assert caught.value.code == "unknown_segment"
    assert caught.value.message == "rules.all[1].not: segment 9: no such segment in this project"


# -- value tests ------------------------------------------------------------------------------


def holds(test: dict[str, Any], value: Any, now: datetime = NOW) -> bool:
    """The parsed test (as the evaluator gets it) applied to one value; MISSING when absent."""
    cond = parse({"trait": "x", **test})
    assert isinstance(cond, TraitCond)
    return evaluate.test_value(cond.test, value, now)


def test_values_compare_by_kind() -> None:
    assert holds({"op": "eq", "value": 1}, 1)
    assert holds({"op": "eq", "value": 1}, 1.0)
    assert holds({"op": "eq", "value": 2.5}, 2.5)
    assert not holds({"op": "eq", "value": 1}, True)
    assert not holds({"op": "eq", "value": True}, 1)
    assert not holds({"op": "eq", "value": 0}, False)
    assert not holds({"op": "eq", "value": False}, 0)
    assert holds({"op": "eq", "value": False}, False)
    assert not holds({"op": "eq", "value": "1"}, 1)
    assert not holds({"op": "eq", "value": 1}, "1")
    assert not holds({"op": "eq", "value": "pro"}, ["pro"])
    assert not holds({"op": "eq", "value": "Pro"}, "pro")
    assert holds({"op": "eq", "value": ""}, "")
    assert holds({"op": "in", "value": ["a", 1]}, 1.0)
    assert not holds({"op": "in", "value": [1, 2]}, True)
    assert not holds({"op": "in", "value": [True]}, 1)
    assert holds({"op": "ne", "value": 1}, True)
    assert holds({"op": "not_in", "value": [1, "a"]}, True)
    assert not holds({"op": "not_in", "value": [1, "a"]}, "a")


def test_conditions_on_true_and_on_1_are_different_conditions() -> None:
    """True == 1 in Python, but not in a condition: two that differ only there are not equal,
    so nothing keyed by conditions (summaries, the guards of a tree's timers) mixes them up."""
    pairs = [
        ({"trait": "vip", "op": "eq", "value": True}, {"trait": "vip", "op": "eq", "value": 1}),
        (
            {"trait": "vip", "op": "in", "value": ["a", False]},
            {"trait": "vip", "op": "in", "value": ["a", 0]},
        ),
        (
            {
                "event": "X",
                "op": "performed",
                "where": [{"property": "p", "op": "eq", "value": True}],
            },
            {"event": "X", "op": "performed", "where": [{"property": "p", "op": "eq", "value": 1}]},
        ),
    ]
    for a, b in pairs:
        assert rules.parse(a) != rules.parse(b)
        assert len({rules.parse(a): "a", rules.parse(b): "b"}) == 2
    assert rules.parse(pairs[0][1]) == rules.parse({"trait": "vip", "op": "eq", "value": 1.0})

    def timed(value: Any) -> Node:
        return rules.parse(
            {
                "all": [
                    {"trait": "vip", "op": "eq", "value": value},
                    {"event": "Signed In", "op": "performed", "within_days": 7},
                ]
            }
        )

    signed_in = EventRow(NOW - timedelta(days=1), "Signed In", {}, {})
    facts = Facts(id=1, traits={"vip": 1}, events={("track", "Signed In"): [signed_in]})
    # The guard (vip is true) fails for this customer: no timer; on 1 it holds.
    assert evaluate.next_change(timed(True), facts, NOW) is None
    assert (
        evaluate.next_change(timed(1), facts, NOW)
        == signed_in.timestamp + timedelta(days=7) + evaluate.EPSILON
    )


def test_numbers_compare_only_with_numbers() -> None:
    assert holds({"op": "gt", "value": 2}, 2.5)
    assert not holds({"op": "gt", "value": 2}, 2)
    assert holds({"op": "gte", "value": 2}, 2.0)
    assert holds({"op": "lt", "value": 0}, -1)
    assert holds({"op": "lte", "value": 0}, 0)
    assert not holds({"op": "gt", "value": 0}, True)
    assert not holds({"op": "lt", "value": 2}, False)
    assert not holds({"op": "gt", "value": 0}, "3")
    assert not holds({"op": "gt", "value": 0}, [3])
    assert not holds({"op": "lt", "value": 5}, MISSING)


def test_null_counts_as_absent() -> None:
    traits = {"a": None, "b": {"c": None}, "d": [None], "e": "x"}
    assert lookup(traits, ("a",)) is MISSING
    assert lookup(traits, ("b", "c")) is MISSING
    assert lookup(traits, ("missing",)) is MISSING
    assert lookup(traits, ("e", "f")) is MISSING  # into a string
    assert lookup(traits, ("d", "0")) is MISSING  # arrays have no keys
    assert lookup(traits, ("d",)) == [None]
    assert lookup({"b": {"c": 0}}, ("b", "c")) == 0
    assert lookup({"b": {"c": False}}, ("b", "c")) is False
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"op": "exists"}, False),
        ({"op": "not_exists"}, True),
        ({"op": "eq", "value": "x"}, False),
        ({"op": "ne", "value": "x"}, True),
        ({"op": "in", "value": ["x"]}, False),
        ({"op": "not_in", "value": ["x"]}, True),
        ({"op": "contains", "value": "x"}, False),
        ({"op": "not_contains", "value": "x"}, True),
        ({"op": "starts_with", "value": "x"}, False),
        ({"op": "gt", "value": 0}, False),
        ({"op": "before", "value": "2030-01-01"}, False),
        ({"op": "within_last_days", "value": 7}, False),
        ({"op": "more_than_days_ago", "value": 7}, False),
    ]
    for test, absent in cases:
        assert holds(test, MISSING) is absent, test
        cond = parse({"trait": "a", **test})
        # Through `evaluate.holds`, a null trait is the same as none.
        assert evaluate.holds(cond, Facts(id=1, traits={"a": None}), NOW) is absent, test
        assert evaluate.holds(cond, Facts(id=1, traits={}), NOW) is absent, test
    # Present values that are false-y are present.
    assert holds({"op": "exists"}, "")
    assert holds({"op": "exists"}, 0)
    assert holds({"op": "exists"}, False)
    assert holds({"op": "exists"}, [])


def test_contains_looks_into_strings_and_arrays_of_strings() -> None:
    assert holds({"op": "contains", "value": "ro"}, "pro plan")
    assert not holds({"op": "contains", "value": "Pro"}, "pro plan")
    assert holds({"op": "contains", "value": "pro"}, ["free", "pro"])
    assert not holds({"op": "contains", "value": "pr"}, ["free", "pro"])  # elements whole
    assert not holds({"op": "contains", "value": "1"}, [1, 2])  # strings only
    assert not holds({"op": "contains", "value": "pro"}, [["pro"]])
    assert not holds({"op": "contains", "value": "pro"}, {"pro": 1})
    assert not holds({"op": "contains", "value": "1"}, 123)
    assert holds({"op": "not_contains", "value": "1"}, 123)
    assert holds({"op": "not_contains", "value": "x"}, ["a"])
    assert not holds({"op": "not_contains", "value": "a"}, ["a"])
    assert holds({"op": "starts_with", "value": "/docs"}, "/docs/start")
    assert not holds({"op": "starts_with", "value": "/docs"}, ["/docs"])
    assert holds({"op": "starts_with", "value": "é"}, "élan")


def test_dates_compare_as_iso_text() -> None:
    before = {"op": "before", "value": "2024-06-10T12:00:00Z"}  # 2024-06-10T12:00:00.000Z
    assert holds(before, "2024-06-10T11:59:59.999Z")
    assert not holds(before, "2024-06-10T12:00:00.000Z")
    assert holds(before, "2024-06-09")
    assert not holds(before, "2024-06-11")
    after = {"op": "after", "value": "2024-06-10"}  # 2024-06-10T00:00:00.000Z
    assert holds(after, "2024-06-10T00:00:00.001Z")
    assert holds(after, "2024-06-10T00:00:00.000Z+")  # as text, not as an instant
    assert not holds(after, "2024-06-09T23:59:59.999Z")
    # Only text that starts like a date is a date; other values never compare.
    for value in ("soon", "06/10/2024", "2024-6-10", 20240611, 1718000000, True, ["2024-06-11"]):
        assert not holds(after, value), value
        assert not holds(before, value), value
    assert holds(after, "2024-06-10zz")  # date-like text compares as text
    assert holds(after, "2024-13-45")


def test_relative_dates_are_windows_ending_now() -> None:
    last7 = {"op": "within_last_days", "value": 7}
    assert holds(last7, iso(NOW))
    assert holds(last7, iso(NOW - 7 * DAY))
    assert not holds(last7, iso(NOW - 7 * DAY - MS))
    assert not holds(last7, iso(NOW + MS))
    ago7 = {"op": "more_than_days_ago", "value": 7}
    assert holds(ago7, iso(NOW - 7 * DAY - MS))
    assert not holds(ago7, iso(NOW - 7 * DAY))
    next7 = {"op": "within_next_days", "value": 7}
    assert holds(next7, iso(NOW))
    assert holds(next7, iso(NOW + 7 * DAY))
    assert not holds(next7, iso(NOW + 7 * DAY + MS))
    assert not holds(next7, iso(NOW - MS))
    # Other ISO spellings compare as text with the canonical bounds.
    assert holds(last7, "2024-06-10")
    assert not holds(last7, "2024-06-08")  # before 2024-06-08T12:30:00.250Z
    assert not holds(ago7, "soon")


def test_date_boundaries_are_the_instants_a_relative_test_flips() -> None:
    def flips(test: dict[str, Any], value: str) -> list[datetime]:
        cond = parse({"trait": "renews_at", **test})
        assert isinstance(cond, rules.TraitCond)
        return evaluate.date_boundaries(cond.test, value, NOW)

    last7 = {"op": "within_last_days", "value": 7}
    at = NOW + DAY
    # Enters when now reaches the value, leaves 7 days after it.
    assert flips(last7, iso(at)) == [at, at + 7 * DAY + MS]
    ago7 = {"op": "more_than_days_ago", "value": 7}
    assert flips(ago7, iso(at)) == [at + 7 * DAY + MS]
    # A date-only value flips when the canonical text of now passes it.
    day = datetime(2024, 6, 20, tzinfo=UTC)
    assert flips(last7, "2024-06-20") == [day, day + 7 * DAY]  # "2024-06-20T00:…" > "2024-06-20"
    for test, value in ((last7, iso(at)), (ago7, iso(at)), (last7, "2024-06-20")):
        for instant in flips(test, value):  # the answer changes exactly there
            assert holds(test, value, instant - MS) != holds(test, value, instant)
    # The last instant there is: nothing comes after it, and nothing breaks.
    assert flips({"op": "more_than_days_ago", "value": 7}, "9999-12-31T23:59:59.999Z") == []
    assert flips({"op": "within_next_days", "value": 7}, "9999-12-31T23:59:59.999Z") == [
        datetime(9999, 12, 24, 23, 59, 59, 999000, tzinfo=UTC)
    ]


def test_instants_for_the_last_charge() -> None:
    def charged(test: dict[str, Any], at: datetime | None) -> bool:
        cond = parse({"revenue": "last_charge", **test})
        return evaluate.holds(cond, Facts(id=1, traits={}, last_charge_at=at), NOW)

    assert charged({"op": "exists"}, NOW)
    assert not charged({"op": "exists"}, None)
    assert charged({"op": "not_exists"}, None)
    assert not charged({"op": "before", "value": "2030-01-01"}, None)
    assert charged({"op": "before", "value": "2024-06-10"}, datetime(2024, 6, 9, 23, tzinfo=UTC))
    assert not charged({"op": "after", "value": "2024-06-10"}, datetime(2024, 6, 10, tzinfo=UTC))
    assert charged({"op": "within_last_days", "value": 7}, NOW - 7 * DAY)
    assert not charged({"op": "within_last_days", "value": 7}, NOW - 7 * DAY - MS)
    assert charged({"op": "more_than_days_ago", "value": 7}, NOW - 7 * DAY - MS)
    assert charged({"op": "within_next_days", "value": 1}, NOW + DAY)


# -- the random draw --------------------------------------------------------------------------

IDS = range(1, 10_001)


def test_bucket_is_stable_and_in_range() -> None:
    seed = RandomCond("holdout", 1000).seed
    assert seed == zlib.crc32(b"holdout")
    first = [bucket(i, seed) for i in IDS]
    assert first == [bucket(i, seed) for i in IDS]
    assert all(0 <= b <= 9999 for b in first)
    assert {bucket(i, s) for i in (1, 2**31, 2**40) for s in (0, 2**32 - 1)} <= set(range(10_000))
    # The same customer and salt always get the same answer from holds.
    cond = parse({"random": "holdout", "percent": 50})
    answers = {evaluate.holds(cond, Facts(id=42, traits={}), NOW) for _ in range(5)}
    assert len(answers) == 1


@pytest.mark.parametrize("percent", [1, 10, 33.33, 50, 90])
@pytest.mark.parametrize("salt", ["holdout", "ab", "x"])
def test_bucket_selects_about_the_percent(percent: float, salt: str) -> None:
    cond = parse({"random": salt, "percent": percent})
    assert isinstance(cond, RandomCond)
    for ids in (IDS, range(1_000_000, 1_010_000), range(3, 70_003, 7)):
        chosen = sum(bucket(i, cond.seed) < cond.threshold for i in ids)
        # A hash draw is a sample: allow five standard deviations of a binomial share.
        p = percent / 100
        sigma = (p * (1 - p) / len(ids)) ** 0.5 * 100
        assert abs(chosen / len(ids) * 100 - percent) < 5 * sigma, (percent, salt, chosen)
    facts = [Facts(id=i, traits={}) for i in range(1, 2001)]
    share = sum(evaluate.holds(cond, f, NOW) for f in facts) / len(facts) * 100
    assert abs(share - percent) < 2


def test_percent_0_selects_no_one_and_100_everyone() -> None:
    none, everyone = parse({"random": "x", "percent": 0}), parse({"random": "x", "percent": 100})
    for i in [*IDS[:500], 2**40, 2**62]:
        f = Facts(id=i, traits={})
        assert not evaluate.holds(none, f, NOW)
        assert evaluate.holds(everyone, f, NOW)


@pytest.mark.parametrize(("a", "b"), [("holdout", "ab"), ("a", "b"), ("test-1", "test-2")])
def test_draws_with_different_names_are_independent(a: str, b: str) -> None:
    """`random` takes "a name for its draw": two names are two draws. Customers in a 10% draw
    should be about 10% of another 10% draw, not none or all of it.

    Found: the seed only shifts the hash (id * 2654435761 + seed), so draws are shifted copies
    of one another: 10% "holdout" and 10% "ab" share no customer at all, and 50% "a" and 50%
    "b" share 353 of 10,000 (independent draws share about 2,500).
    """
    sa, sb = zlib.crc32(a.encode()), zlib.crc32(b.encode())
    for threshold, expected in ((1000, 100), (5000, 2500)):
        both = sum(bucket(i, sa) < threshold and bucket(i, sb) < threshold for i in IDS)
        assert abs(both - expected) < expected * 0.3, (a, b, threshold, both)
