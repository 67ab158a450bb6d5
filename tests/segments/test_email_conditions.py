"""Email conditions (`{"email": "opened", ...}`): what they parse into, what they refuse, and
that a customer's email events decide them the way the equivalent event condition does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidings.segments import evaluate
from tidings.segments.rules import (
    EMAIL_EVENTS,
    EventCond,
    InvalidDefinition,
    PropertyCond,
    ValueTest,
    Window,
    parse,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("kind", "name"), sorted(EMAIL_EVENTS.items()))
def test_each_kind_reads_its_segment_email_event(kind: str, name: str) -> None:
    cond = parse({"email": kind, "op": "performed"})
    assert isinstance(cond, EventCond)
    assert (cond.type, cond.name, cond.op, cond.where) == ("track", name, "performed", ())


def test_template_topic_and_link_become_property_filters() -> None:
    cond = parse(
        {
            "email": "clicked",
            "op": "performed",
            "template": 7,
            "topic": "broadcasts",
            "link_url": "https://acme.test/pricing",
            "within_days": 14,
            "count": {"gte": 2},
        }
    )
    assert isinstance(cond, EventCond)
    assert cond.name == "Email Link Clicked"
    assert cond.window == Window(days=14)
    assert set(cond.where) == {
        PropertyCond(("template_id",), ValueTest("eq", 7)),
        PropertyCond(("topic",), ValueTest("eq", "broadcasts")),
        PropertyCond(("link_url",), ValueTest("eq", "https://acme.test/pricing")),
    }


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        ({"email": "read", "op": "performed"}, "email must be one of"),
        ({"email": "opened", "op": "seen"}, "unknown operator 'seen'"),
        ({"email": "opened", "op": "performed", "template": "welcome"}, "template must be"),
        ({"email": "opened", "op": "performed", "template": True}, "template must be"),
        ({"email": "opened", "op": "performed", "topic": ""}, "topic must be"),
        ({"email": "opened", "op": "performed", "link_url": "https://x"}, "link_url goes with"),
        ({"email": "opened", "op": "performed", "subject": "x"}, "subject"),
        ({"email": "opened", "op": "not_performed", "count": {"gte": 1}}, "takes no count"),
    ],
)
def test_bad_email_conditions_are_refused_by_path(definition: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidDefinition) as caught:
        parse({"all": [{"tag": "vip", "op": "has"}, definition]})
    assert caught.value.message.startswith("rules.all[1]: "), caught.value.message
    assert says in caught.value.message, caught.value.message


def _event(name: str, days_ago: float, **props: Any) -> evaluate.EventRow:
    return evaluate.EventRow(
        timestamp=NOW - timedelta(days=days_ago), name=name, properties=props, context={}
    )


def test_opened_a_template_recently() -> None:
    rule = parse({"email": "opened", "op": "performed", "template": 3, "within_days": 7})
    opened_3 = _event("Email Opened", 2, template_id=3, topic="broadcasts")
    opened_4 = _event("Email Opened", 2, template_id=4)
    old = _event("Email Opened", 30, template_id=3)
    delivered = _event("Email Delivered", 1, template_id=3)

    def holds(*rows: evaluate.EventRow) -> bool:
        events: dict[tuple[str, str | None], list[evaluate.EventRow]] = {}
        for r in rows:
            events.setdefault(("track", r.name), []).append(r)
        return evaluate.holds(rule, evaluate.Facts(id=1, traits={}, events=events), now=NOW)

    assert holds(opened_3)
    assert holds(opened_4, opened_3, old)
    assert not holds(opened_4, old, delivered)
    assert not holds()
