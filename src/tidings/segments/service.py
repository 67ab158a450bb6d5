"""Segment use cases: create, edit, delete, list, members, preview, explain, apply files.

Every function takes the project id and never reaches another project's segments. Creating or
editing enqueues the full computation (in the caller's transaction); the segment shows
"computing" until it is done.
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.clock import isoformat
from tidings.customers import service as customers
from tidings.customers.models import Customer
from tidings.customers.service import cursor_int, cursor_time, decode_cursor, encode_cursor
from tidings.customers.traits import RESERVED
from tidings.errors import BadRequest, Conflict, NotFound
from tidings.segments import compile as sql
from tidings.segments.evaluate import explain as explain_tree
from tidings.segments.evaluate import holds
from tidings.segments.membership import (
    drop_segment,
    hour_of,
    load_facts,
    parsed_trees,
    resolved_trees,
)
from tidings.segments.models import Segment, SegmentGrowth, SegmentMember
from tidings.segments.rules import InvalidDefinition, Node, parse, referenced_segments, resolve
from tidings.segments.schemas import (
    ApplyResult,
    CustomerSegmentOut,
    ExplainOut,
    MemberOut,
    PreviewOut,
    SampleCustomer,
    SegmentOut,
)

COMPUTE_JOB = "segments.compute"
MAX_LIMIT = 200


# -- reading ----------------------------------------------------------------------------------


def get(session: Session, *, project_id: int, segment_id: int) -> Segment | None:
    """One segment of the project, or None."""
    seg = session.get(Segment, segment_id)
    return seg if seg is not None and seg.project_id == project_id else None


def get_or_raise(session: Session, *, project_id: int, segment_id: int) -> Segment:
    """One segment of the project; NotFound otherwise."""
    seg = get(session, project_id=project_id, segment_id=segment_id)
    if seg is None:
        raise NotFound(f"No segment {segment_id} in this project.", code="segment_not_found")
    return seg


def to_out(seg: Segment, growth: dict[tuple[int, str], int] | None = None) -> SegmentOut:
    growth = growth or {}
    return SegmentOut(
        id=seg.id,
        name=seg.name,
        description=seg.description,
        rules=seg.rules,
        status=seg.status,
        progress=seg.progress,
        error=seg.error,
        member_count=seg.member_count,
        entered_7d=growth.get((seg.id, "entered"), 0),
        exited_7d=growth.get((seg.id, "exited"), 0),
        version=seg.version,
        created_at=isoformat(seg.created_at) or "",
        updated_at=isoformat(seg.updated_at) or "",
        computed_at=isoformat(seg.computed_at),
    )


def growth(
    session: Session, *, project_id: int, segment_id: int | None = None, days: int = 7
) -> dict[tuple[int, str], int]:
    """Entries and exits per segment (or of one) over the last `days` days, counted by the
    hour: since the start of the hour `days` days ago (full computations aside)."""
    since = hour_of(clock.now()) - 24 * days
    g = SegmentGrowth
    mine = select(Segment.id).where(Segment.project_id == project_id)
    if segment_id is not None:
        mine = mine.where(Segment.id == segment_id)
    rows = session.execute(
        select(g.segment_id, func.sum(g.entered), func.sum(g.exited))
        .where(g.segment_id.in_(mine), g.hour >= since)
        .group_by(g.segment_id)
    )
    out: dict[tuple[int, str], int] = {}
    for sid, entered, exited in rows:
        out[(sid, "entered")] = int(entered)
        out[(sid, "exited")] = int(exited)
    return out


def list_segments(session: Session, *, project_id: int) -> list[SegmentOut]:
    """Every segment of the project, by name, with size and growth."""
    rows = session.scalars(
        select(Segment).where(Segment.project_id == project_id).order_by(Segment.name)
    )
    g = growth(session, project_id=project_id)
    return [to_out(s, g) for s in rows]


def members(
    session: Session,
    *,
    project_id: int,
    segment_id: int,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[MemberOut], str | None]:
    """A page of the segment's members, most recent entries first."""
    get_or_raise(session, project_id=project_id, segment_id=segment_id)
    limit = max(1, min(MAX_LIMIT, limit))
    q = (
        select(
            Customer.id, Customer.user_id, Customer.email, Customer.name, SegmentMember.entered_at
        )
        .join(SegmentMember, SegmentMember.customer_id == Customer.id)
        .where(SegmentMember.segment_id == segment_id)
    )
    after = decode_cursor(cursor)
    if after is not None:
        if len(after) != 2:
            raise BadRequest("The cursor is not valid.", code="invalid_cursor")
        at, cid = cursor_time(after[0]), cursor_int(after[1])
        q = q.where(
            or_(
                SegmentMember.entered_at < at,
                and_(SegmentMember.entered_at == at, SegmentMember.customer_id < cid),
            )
        )
    rows = session.execute(
        q.order_by(SegmentMember.entered_at.desc(), SegmentMember.customer_id.desc()).limit(
            limit + 1
        )
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    out = [
        MemberOut(
            id=r.id,
            user_id=r.user_id,
            email=r.email,
            name=r.name,
            entered_at=isoformat(r.entered_at) or "",
        )
        for r in rows
    ]
    nxt = encode_cursor(rows[-1].entered_at.isoformat(), rows[-1].id) if more else None
    return out, nxt


def customer_segments(
    session: Session, *, project_id: int, customer_id: int
) -> list[CustomerSegmentOut]:
    """The segments a customer is in, with when they entered."""
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    rows = session.execute(
        select(Segment.id, Segment.name, SegmentMember.entered_at)
        .join(SegmentMember, SegmentMember.segment_id == Segment.id)
        .where(SegmentMember.customer_id == customer_id, Segment.project_id == project_id)
        .order_by(Segment.name)
    )
    return [
        CustomerSegmentOut(id=sid, name=name, entered_at=isoformat(at) or "")
        for sid, name, at in rows
    ]


# -- validating -------------------------------------------------------------------------------


def _stored(session: Session, project_id: int) -> dict[int, tuple[int, dict[str, Any]]]:
    rows = session.execute(
        select(Segment.id, Segment.version, Segment.rules).where(Segment.project_id == project_id)
    )
    return {sid: (version, rules) for sid, version, rules in rows}


def _names(session: Session, project_id: int) -> dict[str, int]:
    rows = session.execute(select(Segment.name, Segment.id).where(Segment.project_id == project_id))
    return {r.name: r.id for r in rows}


def check_rules(
    session: Session, *, project_id: int, rules: Any, segment_id: int | None = None
) -> Node:
    """Parse and resolve a definition (as `segment_id` would hold it); the resolved tree."""
    return _checked(session, project_id, rules, segment_id)[0]


def _checked(
    session: Session, project_id: int, rules: Any, segment_id: int | None = None
) -> tuple[Node, Any]:
    """A definition's resolved tree, and its rules as stored (`_as_stored`)."""
    names = _names(session, project_id)
    stored_rules = _as_stored(rules, names)
    tree = parse(stored_rules, segment_names=names)
    stored = _stored(session, project_id)
    trees = parsed_trees([(sid, v, r) for sid, (v, r) in stored.items() if sid != segment_id])
    if segment_id is not None:
        trees[segment_id] = tree
    return resolve(tree, trees.get, _seen=() if segment_id is None else (segment_id,)), stored_rules


def _as_stored(rules: Any, names: dict[str, int]) -> Any:
    """Rules as stored: segment names replaced by ids, and reserved traits (of customers and
    of groups) under the names profiles keep them by (`createdAt` is `created_at`)."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        ref = out.get("segment")
        if isinstance(ref, str) and ref in names:
            out["segment"] = names[ref]
        for key in ("trait", "group_trait"):
            if isinstance(out.get(key), str):
                first, dot, rest = out[key].partition(".")
                out[key] = RESERVED.get(first, first) + dot + rest
        return out

    return walk(rules)


# -- writing ----------------------------------------------------------------------------------


def _check_description(description: str | None) -> str | None:
    if description is not None and len(description) > 5000:
        raise BadRequest("A description is at most 5,000 characters.", code="invalid_segment")
    return description


def _enqueue_compute(session: Session, seg: Segment) -> None:
    jobs.enqueue(session, COMPUTE_JOB, {"segment_id": seg.id, "version": seg.version})


def create(
    session: Session, *, project_id: int, name: str, rules: Any, description: str | None = None
) -> Segment:
    """A new segment; its membership is computed in the background."""
    name = _check_name(session, project_id, name)
    description = _check_description(description)
    tree, stored_rules = _checked(session, project_id, rules)
    now = clock.now()
    seg = Segment(
        project_id=project_id,
        name=name,
        description=description,
        rules=stored_rules,
        refs=sorted(referenced_segments(tree)),
        version=1,
        status="computing",
        progress=0,
        member_count=0,
        created_at=now,
        updated_at=now,
    )
    session.add(seg)
    session.flush()
    _enqueue_compute(session, seg)
    return seg


def _check_name(session: Session, project_id: int, name: str, segment_id: int | None = None) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise BadRequest("A segment's name is 1 to 200 characters.", code="invalid_segment")
    other = session.scalar(
        select(Segment.id).where(Segment.project_id == project_id, Segment.name == name)
    )
    if other is not None and other != segment_id:
        raise Conflict(f"A segment named {name!r} already exists.", code="segment_exists")
    return name


def update(
    session: Session,
    *,
    project_id: int,
    segment_id: int,
    name: str | None = None,
    description: str | EllipsisType | None = ...,
    rules: Any = None,
) -> Segment:
    """Rename, describe or redefine; new rules recompute it and every segment built on it. The
    same rules again recompute a segment whose computation failed (and only it: the segments
    built on it inline its rules, not its members). A `description` of None clears it; leaving
    it out (`...`) leaves it as it is."""
    seg = get_or_raise(session, project_id=project_id, segment_id=segment_id)
    if name is not None:
        seg.name = _check_name(session, project_id, name, segment_id)
    if not isinstance(description, EllipsisType):
        seg.description = _check_description(description)
    if rules is not None:
        tree, canonical = _checked(session, project_id, rules, segment_id)
        changed = canonical != seg.rules
        if changed or seg.status == "failed":
            seg.rules = canonical
            seg.refs = sorted(referenced_segments(tree))
            dependents = _dependents(session, project_id, segment_id) if changed else []
            for dependent in [seg, *dependents]:
                dependent.version += 1
                dependent.status = "computing"
                dependent.progress = 0
                dependent.updated_at = clock.now()
                session.flush()
                _enqueue_compute(session, dependent)
    seg.updated_at = clock.now()
    session.flush()
    return seg


def _dependents(session: Session, project_id: int, segment_id: int) -> list[Segment]:
    """Segments whose rules reach `segment_id`, directly or through others."""
    rows = list(session.scalars(select(Segment).where(Segment.project_id == project_id)))
    found: dict[int, Segment] = {}
    frontier = {segment_id}
    while frontier:
        nxt = set()
        for s in rows:
            if s.id not in found and s.id != segment_id and frontier & set(s.refs or []):
                found[s.id] = s
                nxt.add(s.id)
        frontier = nxt
    return list(found.values())


def delete(session: Session, *, project_id: int, segment_id: int) -> None:
    """Delete a segment (refused while another segment refers to it)."""
    seg = get_or_raise(session, project_id=project_id, segment_id=segment_id)
    users = [
        s.name
        for s in session.scalars(select(Segment).where(Segment.project_id == project_id))
        if segment_id in (s.refs or [])
    ]
    if users:
        raise Conflict(
            f"Segment {seg.name!r} is used by {', '.join(sorted(users))}; change those first.",
            code="segment_in_use",
        )
    session.delete(seg)
    session.flush()
    drop_segment(session, segment_id)


# -- preview and explain ----------------------------------------------------------------------


def preview(session: Session, *, project_id: int, rules: Any, sample: int = 10) -> PreviewOut:
    """How many customers an unsaved definition matches, and a few of them."""
    tree = check_rules(session, project_id=project_id, rules=rules)
    count, ids = sql.count_and_sample(
        session, project_id=project_id, rules=tree, now=clock.now(), sample=sample
    )
    people = (
        {c.id: c for c in session.scalars(select(Customer).where(Customer.id.in_(ids)))}
        if ids
        else {}
    )
    return PreviewOut(
        count=count,
        sample=[
            SampleCustomer(
                id=i, user_id=people[i].user_id, email=people[i].email, name=people[i].name
            )
            for i in ids
            if i in people
        ],
    )


def explain(session: Session, *, project_id: int, segment_id: int, customer_id: int) -> ExplainOut:
    """For one customer: each condition of the segment with its value and whether it holds."""
    seg = get_or_raise(session, project_id=project_id, segment_id=segment_id)
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    stored = _stored(session, project_id)
    trees = resolved_trees([(sid, v, r) for sid, (v, r) in stored.items()])
    tree = trees.get(segment_id)
    if tree is None:
        raise InvalidDefinition(f"Segment {segment_id} does not resolve.")
    now = clock.now()
    facts = load_facts(session, project_id, [customer_id], [tree], now=now)[customer_id]
    member = session.get(SegmentMember, (segment_id, customer_id)) is not None
    return ExplainOut(
        segment_id=segment_id,
        customer_id=customer_id,
        member=member,
        matches=holds(tree, facts, now),
        rules=explain_tree(tree, facts, now, seg.rules),
    )


# -- segments as code -------------------------------------------------------------------------


def apply_definitions(
    session: Session, *, project_id: int, definitions: list[Any]
) -> list[ApplyResult]:
    """Create or update segments by name from file definitions; idempotent."""
    results = []
    for i, d in enumerate(definitions):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or "rules" not in d:
            raise BadRequest(
                f"definition {i + 1}: expected an object with a name and rules",
                code="invalid_segment",
            )
        extra = sorted(set(d) - {"name", "description", "rules"})
        if extra:
            raise BadRequest(
                f"definition {i + 1} ({d['name']}): unexpected key {extra[0]!r}",
                code="invalid_segment",
            )
        name = d["name"].strip()
        existing = session.scalar(
            select(Segment).where(Segment.project_id == project_id, Segment.name == name)
        )
        try:
            if existing is None:
                seg = create(
                    session,
                    project_id=project_id,
                    name=name,
                    rules=d["rules"],
                    description=d.get("description"),
                )
                results.append(ApplyResult(name=name, id=seg.id, action="created"))
                continue
            before = (existing.version, existing.description)
            seg = update(
                session,
                project_id=project_id,
                segment_id=existing.id,
                rules=d["rules"],
                description=d.get("description", ...),  # left out: as it is; null: cleared
            )
            changed = (seg.version, seg.description) != before
            results.append(
                ApplyResult(name=name, id=seg.id, action="updated" if changed else "unchanged")
            )
        except BadRequest as exc:
            raise type(exc)(f"{name}: {exc.message}", code=exc.code) from exc
    return results
