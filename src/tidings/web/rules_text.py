"""Segment rules as people read them: operator labels, the rule builder's settings, summaries.

Presentation only. Which families, operators and fields exist comes from `segments.rules`, so
the builder offers exactly what the parser accepts; this module only names them. It must not
validate definitions (the parser does, and names the offending condition).
"""

from __future__ import annotations

from typing import Any

import orjson

from tidings.customers.schemas import EventTypeOut, TraitOut
from tidings.segments import rules
from tidings.segments.schemas import SegmentOut

# Families in the order the builder offers them (the parser's `_FAMILIES` keys).
FAMILIES: dict[str, str] = {
    "trait": "Trait",
    "event": "Event",
    "page": "Page visit",
    "tag": "Tag",
    "revenue": "Revenue",
    "group_trait": "Group trait",
    "group": "Group",
    "audience": "Audience",
    "segment": "Segment",
    "random": "Random sample",
    "email": "Email",
}

VALUE_LABELS: dict[str, str] = {
    "eq": "is",
    "ne": "is not",
    "in": "is one of",
    "not_in": "is none of",
    "contains": "contains",
    "not_contains": "does not contain",
    "starts_with": "starts with",
    "exists": "is set",
    "not_exists": "is not set",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "before": "is before",
    "after": "is after",
    "within_last_days": "is within the last … days",
    "more_than_days_ago": "is more than … days ago",
    "within_next_days": "is within the next … days",
}
EVENT_LABELS = {
    "performed": "performed",
    "not_performed": "did not perform",
    "first_performed": "first performed",
    "last_performed": "last performed",
}
PAGE_LABELS = {"any": "any page", "eq": "is", "contains": "contains", "starts_with": "starts with"}
COUNT_LABELS = {
    "gte": "at least",
    "lte": "at most",
    "eq": "exactly",
    "gt": "more than",
    "lt": "fewer than",
}
TAG_LABELS = {"has": "has", "not_has": "does not have"}
MEMBER_LABELS = {"member": "is a member of", "not_member": "is not a member of"}
SEGMENT_LABELS = {"in": "is in", "not_in": "is not in"}
REVENUE_LABELS = {
    "lifetime_value": "Lifetime value",
    "charge_count": "Number of charges",
    "last_charge": "Last charge",
}

# The revenue parser's operators per metric (it spells them inline, so they are restated here).
REVENUE_OPS: dict[str, tuple[str, ...]] = {
    "lifetime_value": ("eq", "ne", *rules.NUMBER_OPS),
    "charge_count": ("eq", "ne", *rules.NUMBER_OPS),
    "last_charge": (*rules.PRESENCE_OPS, *rules.DATE_OPS, *rules.RELATIVE_OPS),
}


def builder_config(
    *,
    traits: list[TraitOut],
    events: list[EventTypeOut],
    tags: list[str],
    segments: list[SegmentOut],
    editing: int | None,
    preview_url: str,
) -> dict[str, Any]:
    """What the rule builder script needs: families, operators, labels and the catalogs."""
    return {
        "preview_url": preview_url,
        "email_kinds": list(rules.EMAIL_EVENTS),
        "families": [{"key": k, "label": v} for k, v in FAMILIES.items()],
        "ops": {
            "value": list(rules.VALUE_OPS),
            "property": list(rules.PROPERTY_OPS),
            "event": list(rules.EVENT_OPS),
            "page": list(rules.PAGE_OPS),
            "page_fields": list(rules.PAGE_FIELDS),
            "count": list(COUNT_LABELS),
            "tag": list(TAG_LABELS),
            "member": list(MEMBER_LABELS),
            "segment": list(SEGMENT_LABELS),
            "revenue": {k: list(v) for k, v in REVENUE_OPS.items()},
            "relative": list(rules.RELATIVE_OPS),
            "date": list(rules.DATE_OPS),
            "number": list(rules.NUMBER_OPS),
            "text": list(rules.TEXT_OPS),
            "presence": list(rules.PRESENCE_OPS),
            "list": ["in", "not_in"],
        },
        "labels": {
            "value": VALUE_LABELS,
            "event": EVENT_LABELS,
            "page": PAGE_LABELS,
            "count": COUNT_LABELS,
            "tag": TAG_LABELS,
            "member": MEMBER_LABELS,
            "segment": SEGMENT_LABELS,
            "revenue": REVENUE_LABELS,
        },
        "max_days": rules.MAX_DAYS,
        "traits": [{"key": t.key, "type": t.type} for t in traits],
        "events": [
            {"name": e.name, "properties": e.properties}
            for e in events
            if e.type == "track" and e.name
        ],
        "page_properties": sorted({k for e in events if e.type == "page" for k in e.properties}),
        "tags": tags,
        "segments": [{"id": s.id, "name": s.name} for s in segments if s.id != editing],
    }


# -- summaries --------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value)
    return orjson.dumps(value).decode()


def _value_text(op: Any, value: Any) -> str:
    if op in rules.RELATIVE_OPS:
        return {
            "within_last_days": f"is within the last {value} days",
            "more_than_days_ago": f"is more than {value} days ago",
            "within_next_days": f"is within the next {value} days",
        }[op]
    label = VALUE_LABELS.get(op, str(op))
    return label if op in rules.PRESENCE_OPS else f"{label} {_show(value)}"


def _event_text(cond: dict[str, Any]) -> str:
    parts = []
    count = cond.get("count")
    if isinstance(count, dict) and count:
        bounds = " and ".join(f"{COUNT_LABELS.get(k, k)} {v}" for k, v in count.items())
        parts.append(f"{bounds} times")
    if "within_days" in cond:
        parts.append(f"in the last {cond['within_days']} days")
    if "more_than_days_ago" in cond:
        parts.append(f"more than {cond['more_than_days_ago']} days ago")
    between = cond.get("between")
    if isinstance(between, list) and len(between) == 2:
        parts.append(f"between {between[0]} and {between[1]}")
    where = cond.get("where")
    if isinstance(where, list) and where:
        tests = [
            f"{w.get('property')} {_value_text(w.get('op'), w.get('value'))}"
            for w in where
            if isinstance(w, dict)
        ]
        parts.append("where " + " and ".join(tests))
    return (" " + " ".join(parts)) if parts else ""


def _cap(text: str) -> str:
    # Not str.capitalize(): that lower-cases the rest, names included.
    return text[:1].upper() + text[1:]


def describe(cond: Any, names: dict[int, str] | None = None) -> str:
    """One condition as a sentence ("Trait plan is "pro""); unknown shapes as their JSON."""
    if not isinstance(cond, dict):
        return _show(cond)
    op = str(cond.get("op"))
    if "trait" in cond:
        return f"Trait {cond['trait']} {_value_text(op, cond.get('value'))}"
    if "event" in cond:
        return _cap(f"{EVENT_LABELS.get(op, op)} {_show(cond['event'])}{_event_text(cond)}")
    if "page" in cond:
        test = "any page" if op == "any" else f"{cond['page']} {PAGE_LABELS.get(op, op)}"
        value = "" if op == "any" else f" {_show(cond.get('value'))}"
        return f"Visited {test}{value}{_event_text(cond)}"
    if "tag" in cond:
        return _cap(f"{TAG_LABELS.get(op, op)} tag {_show(cond['tag'])}")
    if "revenue" in cond:
        metric = REVENUE_LABELS.get(cond["revenue"], str(cond["revenue"]))
        return f"{metric} {_value_text(op, cond.get('value'))}"
    if "group_trait" in cond:
        return f"Group trait {cond['group_trait']} {_value_text(op, cond.get('value'))}"
    if "group" in cond:
        return _cap(f"{MEMBER_LABELS.get(op, op)} group {_show(cond['group'])}")
    if "audience" in cond:
        return _cap(f"{MEMBER_LABELS.get(op, op)} audience {_show(cond['audience'])}")
    if "segment" in cond:
        ref = cond["segment"]
        name = (names or {}).get(ref) if isinstance(ref, int) else None
        return _cap(f"{SEGMENT_LABELS.get(op, op)} segment {_show(name or ref)}")
    if "email" in cond:
        what = f"email {_show(cond['email'])}"
        if "template" in cond:
            what += f" (template {_show(cond['template'])})"
        return _cap(f"{EVENT_LABELS.get(op, op)} {what}{_event_text(cond)}")
    if "random" in cond:
        return f"Random {cond.get('percent')}% of customers (draw {_show(cond['random'])})"
    return _show(cond)
