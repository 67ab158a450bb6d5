"""Compiling a rule tree to SQL for full evaluation, on SQLite and PostgreSQL.

The output is one boolean expression over `customers c` (with bound parameters), used by full
membership computation, previews and counts. Every leaf is wrapped so it is never NULL: `not`
and `not_in` then mean exactly what `evaluate` says. Event, tag and group conditions are
uncorrelated `IN (subquery)` sets, which both databases build once (a hashed subplan on
PostgreSQL, given the work_mem that `prepare` sets).

The queries for time flips live here too: for each time-based condition, the customers whose
answer can change as time passes, with the value the boundary is computed from.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Result, text
from sqlalchemy.orm import Session

from tidings.db.bulk import Bulk, chunks
from tidings.segments.evaluate import Summary, iso
from tidings.segments.rules import (
    AT_LEAST_ONCE,
    AudienceCond,
    EventCond,
    Group,
    GroupCond,
    GroupTraitCond,
    Guard,
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

_SQLITE_DATE = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'"
_PG_DATE = "'^[0-9]{4}-[0-9]{2}-[0-9]{2}'"


@dataclass(slots=True)
class Sql:
    """Builds one statement's text and its parameters for a dialect."""

    postgres: bool
    project_id: int
    now: datetime
    params: dict[str, Any] = field(default_factory=dict)
    uses_bucket: bool = False  # SQLite: the statement calls tidings_bucket (see `run`)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def dt(self, value: datetime) -> str:
        """A datetime as the UTCDateTime columns store it (naive UTC; text on SQLite)."""
        naive = value.astimezone(UTC).replace(tzinfo=None)
        if self.postgres:
            return self.bind(naive)
        return self.bind(naive.isoformat(sep=" ", timespec="microseconds"))

    def text_param(self, value: str) -> str:
        return f"CAST({self.bind(value)} AS text)" if self.postgres else self.bind(value)

    def false(self) -> str:
        return "FALSE" if self.postgres else "0"

    def safe(self, expr: str) -> str:
        """The expression with NULL read as false."""
        return f"COALESCE(({expr}), {self.false()})"

    # -- JSON access --------------------------------------------------------------------------

    def jpath(self, path: tuple[str, ...]) -> str:
        """A path for jtype / jtext / jval: a JSON path on SQLite; on PostgreSQL a chain of
        text-keyed steps (`#>` would read a numeric part as an array index)."""
        if self.postgres:
            return "".join(f" -> CAST({self.bind(p)} AS text)" for p in path)
        return self.bind("$" + "".join(f'."{p}"' for p in path))

    def jval(self, col: str, p: str) -> str:
        """The JSON value at the path (PostgreSQL only)."""
        return f"({col}{p})"

    def jtype(self, col: str, p: str) -> str:
        return f"jsonb_typeof({col}{p})" if self.postgres else f"json_type({col}, {p})"

    def jtext(self, col: str, p: str) -> str:
        if self.postgres:
            # The last step as text: ->> of the same key.
            head, _, last = p.rpartition(" -> ")
            return f"({col}{head} ->> {last})"
        return f"json_extract({col}, {p})"


# -- value tests ------------------------------------------------------------------------------


def value_sql(q: Sql, test: ValueTest, col: str, path: tuple[str, ...]) -> str:
    """A never-NULL SQL test of the JSON value at `path` in column `col`."""
    op = test.op
    if op in ("ne", "not_in", "not_contains", "not_exists"):
        positive = {"ne": "eq", "not_in": "in", "not_contains": "contains", "not_exists": "exists"}
        return f"NOT {value_sql(q, ValueTest(positive[op], test.value), col, path)}"
    p = q.jpath(path)
    typ = q.jtype(col, p)
    val = q.jtext(col, p)
    if op == "eq":
        return q.safe(_eq(q, typ, col, p, test.value))
    if op == "in":
        return q.safe(_in(q, typ, col, p, test.value))
    if op == "exists":
        return f"COALESCE({typ}, 'null') <> 'null'"
    if op == "contains":
        return q.safe(_contains(q, typ, col, p, val, test.value))
    if op == "starts_with":
        return q.safe(f"{typ} = '{_kind(q, 'text')}' AND {_prefix(q, val, test.value)}")
    if op in ("gt", "gte", "lt", "lte"):
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        if q.postgres:
            j = q.bind(json.dumps(test.value))
            return q.safe(f"{typ} = 'number' AND {q.jval(col, p)} {sym} CAST({j} AS jsonb)")
        return q.safe(f"{typ} IN ('integer', 'real') AND {val} {sym} {q.bind(test.value)}")
    return q.safe(date_text_sql(q, test, typ, val))


def _kind(q: Sql, sqlite_name: str) -> str:
    if not q.postgres:
        return sqlite_name
    return {"text": "string", "array": "array"}[sqlite_name]


def _eq(q: Sql, typ: str, col: str, p: str, value: Any) -> str:
    if q.postgres:
        return f"{q.jval(col, p)} = CAST({q.bind(json.dumps(value))} AS jsonb)"
    if isinstance(value, bool):
        return f"{typ} = '{'true' if value else 'false'}'"
    return f"{typ} IN ({_kinds(value)}) AND json_extract({col}, {p}) = {q.bind(value)}"


def _kinds(value: Any) -> str:
    """SQLite: the JSON types a string or a number compares equal to."""
    return "'text'" if isinstance(value, str) else "'integer', 'real'"


def _in(q: Sql, typ: str, col: str, p: str, values: list[Any]) -> str:
    """Equal to one of the values: the value is read once per kind, not once per value."""
    if q.postgres:
        listed = ", ".join(f"CAST({q.bind(json.dumps(v))} AS jsonb)" for v in values)
        return f"{q.jval(col, p)} IN ({listed})"
    tests = [
        _eq(q, typ, col, p, flag) for flag in sorted({v for v in values if isinstance(v, bool)})
    ]
    by_kinds: dict[str, list[Any]] = {}
    for v in values:
        if not isinstance(v, bool):
            by_kinds.setdefault(_kinds(v), []).append(v)
    for kinds, group in by_kinds.items():
        listed = ", ".join(q.bind(v) for v in group)
        tests.append(f"({typ} IN ({kinds}) AND json_extract({col}, {p}) IN ({listed}))")
    return " OR ".join(tests) or q.false()


def _contains(q: Sql, typ: str, col: str, p: str, val: str, needle: str) -> str:
    if q.postgres:
        arr = q.bind(json.dumps([needle]))
        return (
            f"({typ} = 'string' AND strpos({val}, {q.text_param(needle)}) > 0) OR "
            f"({typ} = 'array' AND {q.jval(col, p)} @> CAST({arr} AS jsonb))"
        )
    n = q.bind(needle)
    return (
        f"({typ} = 'text' AND instr({val}, {n}) > 0) OR ({typ} = 'array' AND EXISTS "
        f"(SELECT 1 FROM json_each({col}, {p}) je WHERE je.type = 'text' AND je.value = {n}))"
    )


def _prefix(q: Sql, val: str, prefix: str) -> str:
    if q.postgres:
        return f"left({val}, {len(prefix)}) = {q.text_param(prefix)}"
    return f"substr({val}, 1, {len(prefix)}) = {q.bind(prefix)}"


def _date_text(q: Sql, typ: str, val: str) -> str:
    if q.postgres:
        return f"{typ} = 'string' AND {val} ~ {_PG_DATE}"
    # No json_type test: a JSON number, boolean, array or object never matches the pattern
    # (each JSON function call parses the whole document again).
    return f"{val} GLOB {_SQLITE_DATE}"


def _cmp_text(q: Sql, val: str, sym: str, value: str) -> str:
    # PostgreSQL compares text by collation; dates compare as plain code points, as in Python.
    if q.postgres:
        return f'{val} COLLATE "C" {sym} {q.text_param(value)}'
    return f"{val} {sym} {q.bind(value)}"


def date_text_sql(q: Sql, test: ValueTest, typ: str, val: str) -> str:
    """before / after / relative tests on an ISO date held as text."""
    base = _date_text(q, typ, val)
    op = test.op
    if op == "before":
        return f"{base} AND {_cmp_text(q, val, '<', test.value)}"
    if op == "after":
        return f"{base} AND {_cmp_text(q, val, '>', test.value)}"
    days = timedelta(days=test.value)
    now = q.now
    if op == "within_last_days":
        lo, hi = iso(now - days), iso(now)
    elif op == "within_next_days":
        lo, hi = iso(now), iso(now + days)
    else:  # more_than_days_ago
        return f"{base} AND {_cmp_text(q, val, '<', iso(now - days))}"
    if not q.postgres:  # BETWEEN evaluates the value once
        return f"{base} AND {val} BETWEEN {q.bind(lo)} AND {q.bind(hi)}"
    return f"{base} AND {_cmp_text(q, val, '>=', lo)} AND {_cmp_text(q, val, '<=', hi)}"


def _text_test(q: Sql, test: ValueTest, val: str) -> str:
    """A string operator on a text expression that may be NULL (page fields)."""
    if test.op == "eq":
        return q.safe(f"{val} = {q.text_param(test.value)}")
    if test.op == "contains":
        fn = "strpos" if q.postgres else "instr"
        return q.safe(f"{fn}({val}, {q.text_param(test.value)}) > 0")
    return q.safe(_prefix(q, val, test.value))


# -- conditions -------------------------------------------------------------------------------


def predicate(q: Sql, node: Node) -> str:
    """The SQL truth of a (resolved) tree for the row `c` of customers."""
    if isinstance(node, Group):
        if not node.children:
            return "1=1" if node.kind == "all" else "1=0"
        joiner = " AND " if node.kind == "all" else " OR "
        return "(" + joiner.join(predicate(q, c) for c in node.children) + ")"
    if isinstance(node, Not):
        return f"(NOT {predicate(q, node.child)})"
    if isinstance(node, TraitCond):
        return value_sql(q, node.test, "c.traits", node.path)
    if isinstance(node, EventCond):
        return _event(q, node)
    if isinstance(node, TagCond):
        sub = (
            "SELECT t.customer_id FROM customer_tags t "
            f"WHERE t.project_id = {q.bind(q.project_id)} AND t.tag = {q.bind(node.tag)}"
        )
        return f"c.id {'IN' if node.has else 'NOT IN'} ({sub})"
    if isinstance(node, RevenueCond):
        return _revenue(q, node)
    if isinstance(node, GroupTraitCond):
        return f"c.id IN ({_groups(q, value_sql(q, node.test, 'g.traits', node.path))})"
    if isinstance(node, GroupCond):
        sub = _groups(q, f"g.group_id = {q.bind(node.group_id)}")
        return f"c.id {'IN' if node.member else 'NOT IN'} ({sub})"
    if isinstance(node, AudienceCond):
        p = q.jpath((node.key, "member"))
        if q.postgres:
            test = q.safe(f"{q.jval('c.audiences', p)} = 'true'::jsonb")
        else:
            test = q.safe(f"json_type(c.audiences, {p}) = 'true'")
        return test if node.member else f"NOT {test}"
    if isinstance(node, SegmentCond):
        assert node.rules is not None, "segment references must be resolved first"
        inner = predicate(q, node.rules)
        return inner if node.inside else f"(NOT {inner})"
    if isinstance(node, RandomCond):
        if not q.postgres:
            # rules.bucket itself, registered on the connection by `run`: SQLite has no xor
            # operator, and the expression spelled out repeats each step four times.
            q.uses_bucket = True
            return f"tidings_bucket(c.id, {q.bind(node.seed)}) < {q.bind(node.threshold)}"
        # rules.bucket, step by step (# is xor).
        h = f"((c.id * 2654435761 + {q.bind(node.seed)}) % 4294967296)"
        h = f"(({h} # ({h} >> 16)) * 73244475 % 4294967296)"
        h = f"(({h} # ({h} >> 16)) * 73244475 % 4294967296)"
        return f"(({h} # ({h} >> 16)) * 10000 / 4294967296) < {q.bind(node.threshold)}"
    raise TypeError(f"unknown condition {node!r}")


def _groups(q: Sql, test: str) -> str:
    return (
        "SELECT cg.customer_id FROM customer_groups cg JOIN groups g ON g.id = cg.group_pk "
        f"WHERE g.project_id = {q.bind(q.project_id)} AND {test}"
    )


def _revenue(q: Sql, node: RevenueCond) -> str:
    test = node.test
    if node.metric != "last_charge":
        col = "c.lifetime_value_units" if node.metric == "lifetime_value" else "c.charge_count"
        sym = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[test.op]
        return f"{col} {sym} {q.bind(test.value)}"
    col = "c.last_charge_at"
    op = test.op
    if op == "exists":
        return f"{col} IS NOT NULL"
    if op == "not_exists":
        return f"{col} IS NULL"
    if op in ("before", "after"):
        at = parse_instant(test.value)
        assert at is not None
        return q.safe(f"{col} {'<' if op == 'before' else '>'} {q.dt(at)}")
    days = timedelta(days=test.value)
    if op == "more_than_days_ago":
        return q.safe(f"{col} < {q.dt(q.now - days)}")
    lo, hi = (q.now - days, q.now) if op == "within_last_days" else (q.now, q.now + days)
    return q.safe(f"{col} >= {q.dt(lo)} AND {col} <= {q.dt(hi)}")


def event_filters(q: Sql, c: EventCond, *, window: bool = True) -> str:
    """The WHERE clause selecting the events a condition counts."""
    return f"e.project_id = {q.bind(q.project_id)} AND {event_match(q, c, window=window)}"


def event_match(q: Sql, c: EventCond, *, window: bool = True) -> str:
    """Whether one of the project's events is one the condition counts."""
    parts = [f"e.type = '{c.type}'"]
    if c.name is not None:
        parts.append(f"e.name = {q.bind(c.name)}")
    start = _window_start(q, c) if window else None
    if start is not None:
        parts.append(f"e.timestamp >= {q.dt(start)}")
        if c.window.days is None and c.window.end is not None:  # between two dates
            parts.append(f"e.timestamp <= {q.dt(c.window.end)}")
    if c.page_test is not None:
        parts.append(_text_test(q, c.page_test, page_field_sql(q, c.page_field or "path")))
    for w in c.where:
        parts.append(value_sql(q, w.test, "e.properties", w.path))
    return " AND ".join(parts)


def page_field_sql(q: Sql, fld: str) -> str:
    """A page view's url/path/...: from its properties, else from context.page."""
    if fld == "name":
        return "e.name"
    p1 = q.jpath((fld,))
    p2 = q.jpath(("page", fld))
    s = _kind(q, "text")
    return (
        f"(CASE WHEN {q.jtype('e.properties', p1)} = '{s}' THEN {q.jtext('e.properties', p1)} "
        f"WHEN {q.jtype('e.context', p2)} = '{s}' THEN {q.jtext('e.context', p2)} END)"
    )


def _count_sql(c: EventCond, holds: bool) -> str:
    syms = {"eq": "=", "gte": ">=", "lte": "<=", "gt": ">", "lt": "<"}
    expr = " AND ".join(f"COUNT(*) {syms[k]} {int(v)}" for k, v in c.count.bounds)
    return expr if holds else f"NOT ({expr})"


def group_by_customer(q: Sql) -> str:
    # On SQLite "+" keeps the planner from walking the customer index in order to group
    # (a random table read per event); it sorts the selected events instead.
    return "GROUP BY e.customer_id" if q.postgres else "GROUP BY +e.customer_id"


def _event(q: Sql, c: EventCond) -> str:
    if c.recency is None and c.count == AT_LEAST_ONCE:
        performed = f"c.id IN (SELECT e.customer_id FROM events e WHERE {event_filters(q, c)})"
        return f"(NOT {performed})" if c.op == "not_performed" else performed
    if c.recency is not None:
        return _recency(q, c)
    base = f"SELECT e.customer_id FROM events e WHERE {event_filters(q, c)} {group_by_customer(q)}"
    if c.count.holds(0):
        # Customers with no such event satisfy the count: exclude those whose count fails.
        performed = f"c.id NOT IN ({base} HAVING {_count_sql(c, False)})"
    else:
        performed = f"c.id IN ({base} HAVING {_count_sql(c, True)})"
    return f"(NOT {performed})" if c.op == "not_performed" else performed


def _recency(q: Sql, c: EventCond) -> str:
    """First / last performed within N days or more than N days ago, as sets of customers
    with such an event before or since the boundary (building a set costs less than
    grouping every event of the name to find its first or last)."""
    assert c.recency is not None
    kind, n = c.recency
    filters = event_filters(q, c)
    since = q.dt(q.now - timedelta(days=n))
    matching = f"SELECT e.customer_id FROM events e WHERE {filters} AND e.timestamp"
    recent, old = f"c.id IN ({matching} >= {since})", f"c.id IN ({matching} < {since})"
    if (c.op == "last_performed") == (kind == "within_days"):
        # The last within N days, or the first more than N days ago: one such event will do.
        return recent if kind == "within_days" else old
    # The first within N days: recent ones and no older one; the last more than N days ago:
    # older ones and no recent one.
    return f"({recent} AND NOT {old})" if kind == "within_days" else f"({old} AND NOT {recent})"


# -- statements -------------------------------------------------------------------------------


def prepare(session: Session) -> None:
    """Give PostgreSQL the memory to hash large IN sets (else it rescans them per row)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL work_mem = '256MB'"))


def builder(session: Session, project_id: int, now: datetime) -> Sql:
    return Sql(session.get_bind().dialect.name == "postgresql", project_id, now)


def run(session: Session, q: Sql, sql: str) -> Result[*tuple[Any, ...]]:
    """Execute a statement built with `q`, with the SQL functions it needs."""
    if q.uses_bucket:
        raw = session.connection().connection.dbapi_connection
        assert raw is not None
        raw.create_function("tidings_bucket", 2, bucket, deterministic=True)
    return session.execute(text(sql), q.params)


_NAMED = re.compile(r":(p[0-9]+)\b")


def fetch(session: Session, q: Sql, sql: str) -> list[tuple[Any, ...]]:
    """The rows of a statement built with `q` (no random bucket), on the driver's cursor: for
    the many small statements of incremental upkeep, below SQLAlchemy's per-statement cost."""
    assert not q.uses_bucket
    if q.postgres:
        sql = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
    dbapi = session.connection().connection.driver_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        cur.execute(sql, q.params)
        return list(cur.fetchall())
    finally:
        cur.close()


def member_ids(session: Session, *, project_id: int, rules: Node, now: datetime) -> set[int]:
    """Every customer of the project the rules select."""
    q = builder(session, project_id, now)
    where = predicate(q, rules)
    sql = f"SELECT c.id FROM customers c WHERE c.project_id = {q.bind(project_id)} AND {where}"
    prepare(session)
    return set(run(session, q, sql).scalars())


def count_and_sample(
    session: Session, *, project_id: int, rules: Node, now: datetime, sample: int
) -> tuple[int, list[int]]:
    """How many customers match, and the ids of the most recently seen few."""
    q = builder(session, project_id, now)
    where = f"c.project_id = {q.bind(project_id)} AND {predicate(q, rules)}"
    prepare(session)
    total = int(run(session, q, f"SELECT count(*) FROM customers c WHERE {where}").scalar_one())
    ids = run(
        session,
        q,
        f"SELECT c.id FROM customers c WHERE {where} "
        f"ORDER BY c.seen_minute DESC, c.last_seen DESC, c.id DESC LIMIT {int(sample)}",
    ).scalars()
    return total, list(ids)


def summary_ends(c: EventCond) -> tuple[bool, bool]:
    """Whether the condition looks at its first and at its last matching event (`evaluate`):
    the first for first_performed and for a window of days (its oldest event leaves the
    window first), the last for last_performed and for a window of days asking for any event
    (only the newest's leaving changes the answer)."""
    windowed = c.recency is None and c.window.days is not None
    newest = windowed and c.count.means_any()
    return (
        c.op == "first_performed" or (windowed and not newest),
        c.op == "last_performed" or newest,
    )


def event_summaries(
    session: Session,
    *,
    project_id: int,
    wanted: dict[EventCond, list[int]],
    now: datetime,
) -> Iterator[tuple[EventCond, int, Summary]]:
    """(condition, customer_id, summary) of each wanted condition's matching events (all of
    them for a recency condition, else those in its window), for the customers that want it
    and have any.

    Only an event a customer's new data touches makes a segment (and so its conditions)
    wanted, so each condition is wanted by a few of the chunk's customers. The conditions on
    one event (a name, or page views) make one statement, which reads those customers' events
    of that name (in the widest of their windows) from the timeline index alone, once, and
    aggregates each condition over the events it counts. A condition that looks into the
    events' properties (which only the table holds, as JSON to parse) makes a statement of its
    own, which reads just its window.

    The first and last events are read only where the condition looks at them
    (`summary_ends`); the others stay None.
    """
    bulk = Bulk(session)
    groups: dict[tuple[str, str | None] | EventCond, list[EventCond]] = defaultdict(list)
    for c in wanted:
        groups[c if c.page_test is not None or c.where else (c.type, c.name)].append(c)
    for conds in groups.values():
        q = builder(session, project_id, now)
        # The ids are one parameter (`Bulk.id_set`): the statement's text is the same from
        # chunk to chunk.
        param = q.bind(None)
        columns, match = _summary_columns(q, conds)
        wants = [set(wanted[c]) for c in conds]
        for part in chunks(sorted(set().union(*wants))):
            listed, q.params[param[1:]] = bulk.id_set(part)
            # The customers are the project's (their facts were read with its id), and so
            # are their events: without a project test the index answers for the event alone.
            statement = (
                f"SELECT e.customer_id, {columns} FROM events e "
                f"WHERE e.customer_id IN ({listed.format(m=param)}) AND {match} "
                "GROUP BY e.customer_id"
            )
            for row in fetch(session, q, statement):
                cid = row[0]
                for i, c in enumerate(conds):
                    count, oldest, newest = row[1 + 3 * i : 4 + 3 * i]
                    if count and cid in wants[i]:
                        yield c, cid, Summary(count, bulk.read_dt(oldest), bulk.read_dt(newest))


def _summary_columns(q: Sql, conds: list[EventCond]) -> tuple[str, str]:
    """The count, first and last of each condition (conditions on one event), and the test
    of the events any of them counts."""

    def ends(c: EventCond, where: str) -> list[str]:
        first, last = summary_ends(c)
        return [
            f"COUNT(*){where}",
            f"MIN(e.timestamp){where}" if first else "NULL",
            f"MAX(e.timestamp){where}" if last else "NULL",
        ]

    if len(conds) == 1:
        c = conds[0]
        return ", ".join(ends(c, "")), event_match(q, c, window=c.recency is None)
    columns = [
        part
        for c in conds
        for part in ends(c, f" FILTER (WHERE {event_match(q, c, window=c.recency is None)})")
    ]
    shared = [f"e.type = '{conds[0].type}'"]
    if conds[0].name is not None:
        shared.append(f"e.name = {q.bind(conds[0].name)}")
    starts = [_window_start(q, c) for c in conds]
    if None not in starts:
        shared.append(f"e.timestamp >= {q.dt(min(s for s in starts if s is not None))}")
    return ", ".join(columns), " AND ".join(shared)


def _window_start(q: Sql, c: EventCond) -> datetime | None:
    """The oldest instant of the events a condition counts (its window's start), None for
    no bound."""
    if c.recency is not None:
        return None
    if c.window.days is not None:
        return q.now - timedelta(days=c.window.days)
    if c.window.start is not None and c.window.end is not None:
        return c.window.start
    return None


GUARD_CHUNK = 5000  # customers per statement testing guards


def _guards_sql(q: Sql, guards: tuple[Guard, ...]) -> str:
    """True for a customer `c` whose guards all have the truth they must have."""
    return " AND ".join(
        predicate(q, g) if want else f"(NOT {predicate(q, g)})" for g, want in guards
    )


def boundary_rows(
    session: Session, *, project_id: int, rules: Node, now: datetime
) -> Iterator[tuple[Node, str, Any]]:
    """(condition, kind, rows of (customer_id, value)) for each time-based condition, for the
    customers whose guards hold (`rules.timed_conditions`), as `evaluate.next_change` reads it.

    kind says how the value turns into instants: "text" (an ISO string, via the value test),
    "instant" (a datetime, via the value test), "window" (the oldest event in the window; the
    newest for a count asking for any) or "recency" (the first or last matching event).
    """
    bulk = Bulk(session)
    checked: dict[tuple[Guard, ...], dict[int, bool]] = {}

    def guarded(rows: Iterable[Any], guards: tuple[Guard, ...]) -> list[Any]:
        """The rows of customers whose guards hold (each customer is tested once)."""
        rows = list(rows)
        if not guards:
            return rows
        known = checked.setdefault(guards, {})
        unknown = sorted({r[0] for r in rows} - known.keys())
        for part in chunks(unknown, GUARD_CHUNK):
            g = builder(session, project_id, now)
            in_list = ", ".join(str(int(cid)) for cid in part)
            statement = (
                f"SELECT c.id FROM customers c WHERE c.project_id = {g.bind(project_id)} "
                f"AND c.id IN ({in_list}) AND {_guards_sql(g, guards)}"
            )
            known.update(dict.fromkeys(part, False))
            known.update(dict.fromkeys(run(session, g, statement).scalars(), True))
        return [r for r in rows if known[r[0]]]

    for c, guards in timed_conditions(rules):
        q = builder(session, project_id, now)
        pid = q.bind(project_id)
        if isinstance(c, TraitCond | GroupTraitCond) and c.test.relative:
            col = "c.traits" if isinstance(c, TraitCond) else "g.traits"
            p = q.jpath(c.path)
            typ, val = q.jtype(col, p), q.jtext(col, p)
            since = now - timedelta(
                days=1 + (0 if c.test.op == "within_next_days" else c.test.value)
            )
            cond = f"{_date_text(q, typ, val)} AND {_cmp_text(q, val, '>=', iso(since))}"
            if isinstance(c, TraitCond):
                # The guards are tested on the same rows.
                guard = f" AND {_guards_sql(q, guards)}" if guards else ""
                sql = (
                    f"SELECT c.id, {val} FROM customers c WHERE c.project_id = {pid} AND {cond}"
                    f"{guard}"
                )
                yield c, "text", run(session, q, sql).all()
            else:
                sql = (
                    f"SELECT cg.customer_id, {val} FROM customer_groups cg "
                    f"JOIN groups g ON g.id = cg.group_pk WHERE g.project_id = {pid} AND {cond}"
                )
                yield c, "text", guarded(run(session, q, sql), guards)
        elif isinstance(c, RevenueCond) and c.metric == "last_charge" and c.test.relative:
            since = now - timedelta(
                days=1 + (0 if c.test.op == "within_next_days" else c.test.value)
            )
            sql = (
                "SELECT c.id, c.last_charge_at FROM customers c WHERE "
                f"c.project_id = {pid} AND c.last_charge_at >= {q.dt(since)}"
            )
            rows = [(cid, bulk.read_dt(at)) for cid, at in guarded(run(session, q, sql), guards)]
            yield c, "instant", rows
        elif isinstance(c, EventCond) and c.recency is not None:
            # Only customers whose first (last) event is recent can flip, and it is then the
            # first (last) of their recent events: the window is grouped, not the history.
            since_at = q.dt(now - timedelta(days=c.recency[1]))
            filters = event_filters(q, c, window=False)
            agg, older = "MAX", ""
            if c.op == "first_performed":
                agg = "MIN"
                older = (
                    " AND e.customer_id NOT IN (SELECT e.customer_id FROM events e "
                    f"WHERE {filters} AND e.timestamp < {since_at})"
                )
            sql = (
                f"SELECT e.customer_id, {agg}(e.timestamp) FROM events e "
                f"WHERE {filters} AND e.timestamp >= {since_at}{older} {group_by_customer(q)}"
            )
            rows = [(cid, bulk.read_dt(at)) for cid, at in guarded(run(session, q, sql), guards)]
            yield c, "recency", rows
        elif isinstance(c, EventCond) and c.window.days is not None:
            floor = c.count.flip_floor()
            if floor is None:
                continue
            agg = "MAX" if c.count.means_any() else "MIN"
            sql = (
                f"SELECT e.customer_id, {agg}(e.timestamp) FROM events e "
                f"WHERE {event_filters(q, c)} {group_by_customer(q)} HAVING COUNT(*) >= {floor}"
            )
            rows = [(cid, bulk.read_dt(at)) for cid, at in guarded(run(session, q, sql), guards)]
            yield c, "window", rows
