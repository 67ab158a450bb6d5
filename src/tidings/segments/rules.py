"""The segment rule language: parsing and validating definitions into an immutable tree.

A definition is plain JSON: a tree of `all` / `any` / `not` groups whose leaves are conditions,
one family per leading key (`trait`, `event`, `page`, `tag`, `revenue`, `group_trait`, `group`,
`audience`, `segment`, `random`, `email`). Parsing checks every operator and value and names the
offending condition by its path (`rules.all[2].any[0]`), so a bad definition is refused with a
message the user can act on. New families (message and survey conditions) add a parser to
`_FAMILIES` and a case to the evaluator and the compiler.

This module knows nothing of the database; `evaluate` and `compile` give the tree its meaning.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from tidings.clock import isoformat
from tidings.errors import BadRequest

MAX_DEPTH = 12
MAX_CONDITIONS = 200
MAX_LIST = 1000
MAX_DAYS = 36_500

SCALAR_OPS = ("eq", "ne", "in", "not_in")
TEXT_OPS = ("contains", "not_contains", "starts_with")
PRESENCE_OPS = ("exists", "not_exists")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
DATE_OPS = ("before", "after")
RELATIVE_OPS = ("within_last_days", "more_than_days_ago", "within_next_days")
VALUE_OPS = SCALAR_OPS + TEXT_OPS + PRESENCE_OPS + NUMBER_OPS + DATE_OPS + RELATIVE_OPS
PROPERTY_OPS = SCALAR_OPS + TEXT_OPS + PRESENCE_OPS + NUMBER_OPS + DATE_OPS
EVENT_OPS = ("performed", "not_performed", "first_performed", "last_performed")
PAGE_OPS = ("any", "eq", "contains", "starts_with")
PAGE_FIELDS = ("url", "path", "name", "referrer", "title")
REVENUE_METRICS = ("lifetime_value", "charge_count", "last_charge")
COUNT_KEYS = ("eq", "gte", "lte", "gt", "lt")

DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}")


class InvalidDefinition(BadRequest):
    code = "invalid_segment"


# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueTest:
    """An operator and its argument, applied to one JSON value (a trait, a property)."""

    op: str
    value: Any = None
    # Which values are booleans: True == 1 in Python, but not here (`evaluate._same`), so tests
    # that differ only there must not be equal (nor share a cache entry, a summary, ...).
    _flags: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        v = self.value
        flags = (
            tuple(isinstance(x, bool) for x in v) if isinstance(v, tuple) else isinstance(v, bool)
        )
        object.__setattr__(self, "_flags", flags)

    @property
    def relative(self) -> bool:
        return self.op in RELATIVE_OPS


@dataclass(frozen=True, slots=True)
class TraitCond:
    path: tuple[str, ...]
    test: ValueTest


@dataclass(frozen=True, slots=True)
class PropertyCond:
    path: tuple[str, ...]
    test: ValueTest


@dataclass(frozen=True, slots=True)
class Count:
    """A bound on how many times: any of eq / gte / lte / gt / lt, all must hold."""

    bounds: tuple[tuple[str, int], ...]

    def holds(self, n: int) -> bool:
        for key, bound in self.bounds:
            ok = {
                "eq": n == bound,
                "gte": n >= bound,
                "lte": n <= bound,
                "gt": n > bound,
                "lt": n < bound,
            }[key]
            if not ok:
                return False
        return True

    def lower_only(self) -> bool:
        """Whether every bound is a lower one (gte / gt): more events never undo a hold."""
        return all(key in ("gte", "gt") for key, _ in self.bounds)

    def means_any(self) -> bool:
        """Whether the bound asks for one event or more (lower bounds that one meets): the
        answer then changes with time only when the last event leaves the window."""
        return all(key in ("gte", "gt") for key, _ in self.bounds) and self.flip_floor() == 1

    def flip_floor(self) -> int | None:
        """The least count whose answer a lower count would change, None when none would.

        A count within the last N days only falls as time passes (until a new event, which
        re-evaluates the customer anyway), so time alone changes the answer only from this
        count up: an answer at a lower count stays as it is."""
        low, high = 0, None
        for key, bound in self.bounds:
            if key in ("eq", "gte", "gt"):
                low = max(low, bound + (key == "gt"))
            if key in ("eq", "lte", "lt"):
                top = bound - (key == "lt")
                high = top if high is None else min(high, top)
        if high is not None and low > high:
            return None  # never holds
        if low > 0:
            return low  # holds from `low` (up to `high`): falling below it changes the answer
        return None if high is None else high + 1  # holds up to `high` and from there again


AT_LEAST_ONCE = Count((("gte", 1),))


@dataclass(frozen=True, slots=True)
class Window:
    """When events count: the last N days, or between two instants (end excluded)."""

    days: int | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventCond:
    """A track event (`type` "track") or a page view (`type` "page") and how often.

    `op` is performed / not_performed (with `count` and `window`), or first_performed /
    last_performed (with `recency`: within the last N days, or more than N days ago).
    """

    type: str
    name: str | None
    op: str
    count: Count = AT_LEAST_ONCE
    window: Window = field(default_factory=Window)
    where: tuple[PropertyCond, ...] = ()
    recency: tuple[str, int] | None = None
    page_field: str | None = None
    page_test: ValueTest | None = None
    # Summaries are looked up by condition for every customer: the hash is worked out once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(_compared(self)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class TagCond:
    tag: str
    has: bool


@dataclass(frozen=True, slots=True)
class RevenueCond:
    metric: str
    test: ValueTest


@dataclass(frozen=True, slots=True)
class GroupTraitCond:
    path: tuple[str, ...]
    test: ValueTest


@dataclass(frozen=True, slots=True)
class GroupCond:
    group_id: str
    member: bool


@dataclass(frozen=True, slots=True)
class AudienceCond:
    key: str
    member: bool


@dataclass(frozen=True, slots=True)
class SegmentCond:
    """In / not in another segment; `rules` is that segment's tree, inlined when resolved."""

    segment_id: int
    inside: bool
    rules: Node | None = None


@dataclass(frozen=True, slots=True)
class RandomCond:
    """A stable share of customers: bucket(id, salt) < threshold, in ten-thousandths."""

    salt: str
    threshold: int

    @property
    def seed(self) -> int:
        return zlib.crc32(self.salt.encode())


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # all | any
    children: tuple[Node, ...]
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(_compared(self)))

    def __hash__(self) -> int:
        return self._hash


def _compared(node: Any) -> tuple[Any, ...]:
    """The fields equality compares, for a hash worked out once."""
    return tuple(getattr(node, f.name) for f in fields(node) if f.compare)


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Condition = (
    TraitCond
    | EventCond
    | TagCond
    | RevenueCond
    | GroupTraitCond
    | GroupCond
    | AudienceCond
    | SegmentCond
    | RandomCond
)
Node = Group | Not | Condition


_M32 = 4294967296


def _xorshift(h: int) -> int:
    return h ^ (h >> 16)


def bucket(customer_id: int, seed: int) -> int:
    """0..9999, stable per customer and draw; draws with different names are independent.

    A multiply / xor-shift integer hash kept within 64-bit arithmetic, so `compile` can run
    the very same steps in SQL (where xor is written (a | b) - (a & b)).
    """
    h = (customer_id * 2654435761 + seed) % _M32
    h = (_xorshift(h) * 73244475) % _M32
    h = (_xorshift(h) * 73244475) % _M32
    return _xorshift(h) * 10000 // _M32


# -- parsing ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    count: int = 0
    segment_ids: set[int] = field(default_factory=set)
    names: dict[str, int] = field(default_factory=dict)


def parse(rules: Any, *, segment_names: dict[str, int] | None = None) -> Node:
    """Validate a rules tree; raises InvalidDefinition naming the offending condition.

    `segment_names` lets `{"segment": "Trial users"}` name a segment instead of giving its id.
    """
    ctx = _Ctx(names=segment_names or {})
    return _node(rules, "rules", 0, ctx)


def _fail(path: str, message: str) -> InvalidDefinition:
    return InvalidDefinition(f"{path}: {message}")


def _node(raw: Any, path: str, depth: int, ctx: _Ctx) -> Node:
    if depth > MAX_DEPTH:
        raise _fail(path, f"groups nest more than {MAX_DEPTH} deep")
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "expected an object (a condition or an all/any/not group)")
    for kind in ("all", "any"):
        if kind in raw:
            _only(raw, path, {kind})
            children = raw[kind]
            if not isinstance(children, list):
                raise _fail(path, f'"{kind}" takes a list of conditions')
            return Group(
                kind,
                tuple(
                    _node(c, f"{path}.{kind}[{i}]", depth + 1, ctx) for i, c in enumerate(children)
                ),
            )
    if "not" in raw:
        _only(raw, path, {"not"})
        return Not(_node(raw["not"], f"{path}.not", depth + 1, ctx))
    ctx.count += 1
    if ctx.count > MAX_CONDITIONS:
        raise _fail(path, f"a segment has at most {MAX_CONDITIONS} conditions")
    for key, parser in _FAMILIES.items():
        if key in raw:
            return parser(raw, path, ctx)
    known = ", ".join(["all", "any", "not", *_FAMILIES])
    raise _fail(path, f"unknown condition {sorted(raw)!r}: expected one of {known}")


def _only(raw: dict[str, Any], path: str, allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _fail(path, f"unexpected key {extra[0]!r}")


def _op(raw: dict[str, Any], path: str, allowed: tuple[str, ...], family: str) -> str:
    op = raw.get("op")
    if not isinstance(op, str) or op not in allowed:
        raise _fail(
            path,
            f"unknown operator {op!r} for {_article(family)} {family} condition (expected one of "
            f"{', '.join(allowed)})",
        )
    return op


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _path(value: Any, path: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise _fail(path, f"{what} must be a non-empty string")
    if '"' in value or "\\" in value:
        raise _fail(path, f"{what} {value!r} may not contain quotes or backslashes")
    parts = tuple(value.split("."))
    if any(not p for p in parts):
        raise _fail(path, f"{what} {value!r} has an empty part")
    return parts


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | bool) or _is_number(v)


def parse_instant(value: Any) -> datetime | None:
    """An ISO date or datetime (naive means UTC), or None."""
    if not isinstance(value, str) or not DATE_RE.match(value):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _days(value: Any, path: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DAYS:
        raise _fail(path, f"{what} must be a whole number of days from 1 to {MAX_DAYS}")
    return value


def _value_test(raw: dict[str, Any], path: str, allowed: tuple[str, ...], family: str) -> ValueTest:
    op = _op(raw, path, allowed, family)
    value = raw.get("value")
    if op in ("eq", "ne"):
        if not _is_scalar(value):
            raise _fail(path, f'"{op}" needs a string, number or boolean value')
    elif op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise _fail(path, f'"{op}" needs a list of 1 to {MAX_LIST} values')
        if not all(_is_scalar(v) for v in value):
            raise _fail(path, f'"{op}" takes strings, numbers or booleans')
        value = tuple(value)
    elif op in TEXT_OPS:
        if not isinstance(value, str) or not value:
            raise _fail(path, f'"{op}" needs a non-empty string value')
    elif op in PRESENCE_OPS:
        if value is not None:
            raise _fail(path, f'"{op}" takes no value')
    elif op in NUMBER_OPS:
        if not _is_number(value):
            raise _fail(path, f'"{op}" needs a number value')
    elif op in DATE_OPS:
        instant = parse_instant(value)
        if instant is None:
            raise _fail(path, f'"{op}" needs a date (YYYY-MM-DD or an ISO-8601 date and time)')
        value = isoformat(instant)
    else:
        value = _days(value, path, f'"{op}"')
    return ValueTest(op, value)


def _trait(raw: dict[str, Any], path: str, ctx: _Ctx) -> TraitCond:
    _only(raw, path, {"trait", "op", "value"})
    return TraitCond(_path(raw["trait"], path, "trait"), _value_test(raw, path, VALUE_OPS, "trait"))


def _group_trait(raw: dict[str, Any], path: str, ctx: _Ctx) -> GroupTraitCond:
    _only(raw, path, {"group_trait", "op", "value"})
    return GroupTraitCond(
        _path(raw["group_trait"], path, "group_trait"),
        _value_test(raw, path, VALUE_OPS, "group trait"),
    )


def _count(raw: Any, path: str) -> Count:
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, 'count must be an object such as {"gte": 3}')
    bounds = []
    for key, bound in raw.items():
        if key not in COUNT_KEYS:
            raise _fail(path, f"unknown count bound {key!r} (expected one of eq, gte, lte, gt, lt)")
        if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
            raise _fail(path, f"count {key} must be a whole number, 0 or more")
        bounds.append((key, bound))
    return Count(tuple(sorted(bounds)))


def _window(raw: dict[str, Any], path: str) -> Window:
    if "within_days" in raw and "between" in raw:
        raise _fail(path, 'use "within_days" or "between", not both')
    if "within_days" in raw:
        return Window(days=_days(raw["within_days"], path, "within_days"))
    if "between" in raw:
        pair = raw["between"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail(path, '"between" takes two dates: [start, end]')
        start, end = parse_instant(pair[0]), parse_instant(pair[1])
        if start is None or end is None:
            raise _fail(path, '"between" takes two ISO-8601 dates')
        if isinstance(pair[1], str) and len(pair[1].strip()) == 10:
            # A bare end date includes that whole day.
            end = datetime.combine(end.date(), time.max, UTC)
        if end <= start:
            raise _fail(path, '"between" needs its end after its start')
        return Window(start=start, end=end)
    return Window()


def _where(raw: Any, path: str) -> tuple[PropertyCond, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(path, '"where" takes a list of property conditions')
    out = []
    for i, item in enumerate(raw):
        p = f"{path}.where[{i}]"
        if not isinstance(item, dict) or "property" not in item:
            raise _fail(p, 'expected {"property": ..., "op": ..., "value": ...}')
        _only(item, p, {"property", "op", "value"})
        out.append(
            PropertyCond(
                _path(item["property"], p, "property"),
                _value_test(item, p, PROPERTY_OPS, "property"),
            )
        )
    return tuple(out)


def _event_common(raw: dict[str, Any], path: str, op: str) -> dict[str, Any]:
    parts: dict[str, Any] = {"where": _where(raw.get("where"), path)}
    if op in ("first_performed", "last_performed"):
        if "count" in raw or "between" in raw:
            raise _fail(path, f'"{op}" takes "within_days" or "more_than_days_ago"')
        if ("within_days" in raw) == ("more_than_days_ago" in raw):
            raise _fail(path, f'"{op}" needs one of "within_days" or "more_than_days_ago"')
        key = "within_days" if "within_days" in raw else "more_than_days_ago"
        parts["recency"] = (key, _days(raw[key], path, key))
        return parts
    if "more_than_days_ago" in raw:
        raise _fail(path, '"more_than_days_ago" goes with first_performed or last_performed')
    parts["window"] = _window(raw, path)
    if "count" in raw:
        if op == "not_performed":
            raise _fail(path, '"not_performed" takes no count (use performed with a count)')
        parts["count"] = _count(raw["count"], path)
    return parts


_EVENT_KEYS = {"op", "count", "within_days", "between", "more_than_days_ago", "where"}


def _event(raw: dict[str, Any], path: str, ctx: _Ctx) -> EventCond:
    _only(raw, path, {"event", *_EVENT_KEYS})
    name = raw["event"]
    if not isinstance(name, str) or not name or len(name) > 255:
        raise _fail(path, "event must be the event's name")
    op = _op(raw, path, EVENT_OPS, "event")
    return EventCond(type="track", name=name, op=op, **_event_common(raw, path, op))


def _page(raw: dict[str, Any], path: str, ctx: _Ctx) -> EventCond:
    """Pages visited: a field (url, path, ...) tested by op ("any" page at all), how often."""
    _only(raw, path, {"page", "value", *_EVENT_KEYS})
    fld = raw["page"]
    if fld not in PAGE_FIELDS:
        raise _fail(path, f"page must name a field: one of {', '.join(PAGE_FIELDS)}")
    op = _op(raw, path, PAGE_OPS, "page")
    test = None
    if op == "any":
        if "value" in raw:
            raise _fail(path, '"any" takes no value')
    else:
        test = _value_test(raw, path, PAGE_OPS[1:], "page")
        if not isinstance(test.value, str):
            raise _fail(path, "a page condition compares with a string")
    rest = {k: v for k, v in raw.items() if k != "op"}
    if "more_than_days_ago" in rest:
        raise _fail(path, '"more_than_days_ago" is for events (first/last performed)')
    return EventCond(
        type="page",
        name=None,
        op="performed",
        page_field=fld,
        page_test=test,
        **_event_common(rest, path, "performed"),
    )


def _tag(raw: dict[str, Any], path: str, ctx: _Ctx) -> TagCond:
    _only(raw, path, {"tag", "op"})
    tag = raw["tag"]
    if not isinstance(tag, str) or not tag.strip():
        raise _fail(path, "tag must be a tag's name")
    return TagCond(tag.strip(), _op(raw, path, ("has", "not_has"), "tag") == "has")


def _revenue(raw: dict[str, Any], path: str, ctx: _Ctx) -> RevenueCond:
    _only(raw, path, {"revenue", "op", "value"})
    metric = raw["revenue"]
    if metric not in REVENUE_METRICS:
        raise _fail(path, f"revenue must be one of {', '.join(REVENUE_METRICS)}")
    if metric == "last_charge":
        ops = (*PRESENCE_OPS, *DATE_OPS, *RELATIVE_OPS)
        return RevenueCond(metric, _value_test(raw, path, ops, "last_charge"))
    test = _value_test(raw, path, ("eq", "ne", *NUMBER_OPS), metric)
    if not _is_number(test.value):
        raise _fail(path, f"{metric} compares with a number")
    if metric == "lifetime_value":
        try:
            units = int(Decimal(str(test.value)) * 10_000)
        except InvalidOperation as exc:
            raise _fail(path, "lifetime_value compares with an amount") from exc
        return RevenueCond(metric, ValueTest(test.op, units))
    return RevenueCond(metric, test)


def _group(raw: dict[str, Any], path: str, ctx: _Ctx) -> GroupCond:
    _only(raw, path, {"group", "op"})
    gid = raw["group"]
    if not isinstance(gid, str) or not gid:
        raise _fail(path, "group must be a groupId")
    return GroupCond(gid, _op(raw, path, ("member", "not_member"), "group") == "member")


def _audience(raw: dict[str, Any], path: str, ctx: _Ctx) -> AudienceCond:
    _only(raw, path, {"audience", "op"})
    key = raw["audience"]
    if not isinstance(key, str) or not key:
        raise _fail(path, "audience must be an audience key (snake_case)")
    return AudienceCond(key, _op(raw, path, ("member", "not_member"), "audience") == "member")


def _segment(raw: dict[str, Any], path: str, ctx: _Ctx) -> SegmentCond:
    _only(raw, path, {"segment", "op"})
    ref = raw["segment"]
    if isinstance(ref, str) and ref in ctx.names:
        ref = ctx.names[ref]
    if not isinstance(ref, int) or isinstance(ref, bool) or ref <= 0:
        raise _fail(path, "segment must be a segment's id (or, in files, its name)")
    ctx.segment_ids.add(ref)
    return SegmentCond(ref, _op(raw, path, ("in", "not_in"), "segment") == "in")


def _random(raw: dict[str, Any], path: str, ctx: _Ctx) -> RandomCond:
    _only(raw, path, {"random", "percent"})
    salt = raw["random"]
    if not isinstance(salt, str) or not salt:
        raise _fail(path, 'random takes a name for its draw, e.g. {"random": "holdout", ...}')
    pct: Any = raw.get("percent")
    if not _is_number(pct) or not 0 <= pct <= 100:
        raise _fail(path, "percent must be a number from 0 to 100")
    return RandomCond(salt, round(float(pct) * 100))


# Email conditions read the email events Tidings puts on timelines (Segment's email spec), so
# they are event conditions with the message's template and topic as property filters.
EMAIL_EVENTS = {
    "delivered": "Email Delivered",
    "opened": "Email Opened",
    "clicked": "Email Link Clicked",
    "bounced": "Email Bounced",
    "marked_as_spam": "Email Marked as Spam",
    "unsubscribed": "Unsubscribed",
}


def _email(raw: dict[str, Any], path: str, ctx: _Ctx) -> EventCond:
    """`{"email": "opened", "op": "performed", "template": 3, "within_days": 7}`."""
    _only(raw, path, {"email", "template", "topic", "link_url", *_EVENT_KEYS})
    kind = raw["email"]
    if kind not in EMAIL_EVENTS:
        raise _fail(path, f"email must be one of {', '.join(EMAIL_EVENTS)}")
    op = _op(raw, path, EVENT_OPS, "email")
    extra: list[PropertyCond] = []
    if "template" in raw:
        tid = raw["template"]
        if not isinstance(tid, int) or isinstance(tid, bool) or tid <= 0:
            raise _fail(path, "template must be a template's id")
        extra.append(PropertyCond(("template_id",), ValueTest("eq", tid)))
    for key, prop in (("topic", "topic"), ("link_url", "link_url")):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise _fail(path, f"{key} must be a non-empty string")
            if key == "link_url" and kind != "clicked":
                raise _fail(path, 'link_url goes with "clicked"')
            extra.append(PropertyCond((prop,), ValueTest("eq", raw[key])))
    rest = {k: v for k, v in raw.items() if k not in ("email", "template", "topic", "link_url")}
    parts = _event_common(rest, path, op)
    parts["where"] = (*parts["where"], *extra)
    return EventCond(type="track", name=EMAIL_EVENTS[kind], op=op, **parts)


_FAMILIES: dict[str, Callable[[dict[str, Any], str, _Ctx], Condition]] = {
    "trait": _trait,
    "event": _event,
    "page": _page,
    "tag": _tag,
    "revenue": _revenue,
    "group_trait": _group_trait,
    "group": _group,
    "audience": _audience,
    "segment": _segment,
    "random": _random,
    "email": _email,
}


# -- walking the tree -------------------------------------------------------------------------


def walk(node: Node, *, into_segments: bool = True) -> list[Condition]:
    """Every condition of the tree, depth first (inlined segments included by default)."""
    out: list[Condition] = []
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Group):
            stack.extend(reversed(n.children))
        elif isinstance(n, Not):
            stack.append(n.child)
        else:
            out.append(n)
            if isinstance(n, SegmentCond) and into_segments and n.rules is not None:
                stack.append(n.rules)
    return out


def referenced_segments(node: Node) -> set[int]:
    """Ids of the segments this tree names directly."""
    return {c.segment_id for c in walk(node, into_segments=False) if isinstance(c, SegmentCond)}


def resolve(
    node: Node,
    lookup: Callable[[int], Node | None],
    *,
    _seen: tuple[int, ...] = (),
    _at: str | None = "rules",
) -> Node:
    """Inline the rules of every referenced segment; raises on a cycle or a missing segment,
    naming the condition of this tree (`rules.all[2]`, ...) that leads to it. `_at` is that
    condition's place, None inside a referenced segment's rules (the place stays the same)."""

    def at(step: str) -> str | None:
        return None if _at is None else f"{_at}.{step}"

    if isinstance(node, Group):
        return Group(
            node.kind,
            tuple(
                resolve(c, lookup, _seen=_seen, _at=at(f"{node.kind}[{i}]"))
                for i, c in enumerate(node.children)
            ),
        )
    if isinstance(node, Not):
        return Not(resolve(node.child, lookup, _seen=_seen, _at=at("not")))
    if isinstance(node, SegmentCond):
        try:
            if node.segment_id in _seen:
                chain = " -> ".join(str(s) for s in (*_seen, node.segment_id))
                raise InvalidDefinition(
                    f"segment {node.segment_id}: segments cannot refer to each other in a "
                    f"cycle ({chain})",
                    code="segment_cycle",
                )
            target = lookup(node.segment_id)
            if target is None:
                raise InvalidDefinition(
                    f"segment {node.segment_id}: no such segment in this project",
                    code="unknown_segment",
                )
            inner = resolve(target, lookup, _seen=(*_seen, node.segment_id), _at=None)
        except InvalidDefinition as exc:
            if _at is None:
                raise
            raise InvalidDefinition(f"{_at}: {exc.message}", code=exc.code) from None
        return SegmentCond(node.segment_id, node.inside, inner)
    return node


# Facets say which changes can affect a condition: ("trait", key), ("event", name), ("page",),
# ("tag",), ("revenue",), ("group",), ("audience", key). "*" (a new or merged customer) is all.
Facet = tuple[str, ...]


def event_facet(c: EventCond) -> Facet:
    """The facet a new event of the condition's type and name touches."""
    return ("event", c.name or "") if c.type == "track" else ("page",)


def facets(node: Node) -> frozenset[Facet]:
    out: set[Facet] = set()
    for c in walk(node):
        if isinstance(c, TraitCond):
            out.add(("trait", c.path[0]))
        elif isinstance(c, EventCond):
            out.add(event_facet(c))
        elif isinstance(c, TagCond):
            out.add(("tag",))
        elif isinstance(c, RevenueCond):
            out.add(("revenue",))
        elif isinstance(c, GroupTraitCond | GroupCond):
            out.add(("group",))
        elif isinstance(c, AudienceCond):
            out.add(("audience", c.key))
    return frozenset(out)


def is_timed(node: Node) -> bool:
    """True when membership can change with time alone (relative windows and dates)."""
    for c in walk(node):
        if isinstance(c, TraitCond | GroupTraitCond | RevenueCond) and c.test.relative:
            return True
        if isinstance(c, EventCond) and (c.window.days is not None or c.recency is not None):
            return True
    return False


# A time-independent part of the tree and the truth it must have for time to matter.
Guard = tuple[Node, bool]


@lru_cache(maxsize=1024)
def timed_conditions(node: Node) -> tuple[tuple[Condition, tuple[Guard, ...]], ...]:
    """Each time-based condition with its guards: the time-independent siblings on its way up
    (those of an `all` must hold, those of an `any` must not). When a guard fails, its group
    is settled until the customer's data changes, which re-evaluates the customer anyway, so
    time alone cannot change the tree through that condition."""
    out: list[tuple[Condition, tuple[Guard, ...]]] = []

    def visit(n: Node, guards: tuple[Guard, ...]) -> None:
        if isinstance(n, Group):
            timed = [is_timed(c) for c in n.children]
            statics = tuple(
                (c, n.kind == "all") for c, t in zip(n.children, timed, strict=True) if not t
            )
            for c, t in zip(n.children, timed, strict=True):
                if t:
                    visit(c, guards + statics)
        elif isinstance(n, Not):
            visit(n.child, guards)
        elif isinstance(n, SegmentCond):
            if n.rules is not None:
                visit(n.rules, guards)
        elif is_timed(n):
            out.append((n, guards))

    visit(node, ())
    return tuple(out)
