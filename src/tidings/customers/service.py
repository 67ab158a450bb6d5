"""Customer use cases: read, search, timeline, charges, tags, trait edits, erase, catalogs.

Every function takes the project id and never reaches another project's rows.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    Numeric,
    Select,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.clock import isoformat
from tidings.customers.batch import Policy, ProfileBatch
from tidings.customers.models import (
    MONEY_UNIT,
    AnonymousId,
    Charge,
    Customer,
    CustomerGroup,
    CustomerTag,
    Event,
    EventCatalog,
    Group,
    TraitCatalog,
)
from tidings.customers.schemas import (
    ChargeOut,
    CustomerOut,
    CustomerSummary,
    EventOut,
    EventTypeOut,
    GroupOut,
    Page,
    TagCount,
    TraitOut,
)
from tidings.customers.traits import normalize_traits
from tidings.db import UTCDateTime
from tidings.errors import BadRequest, NotFound

MAX_LIMIT = 200
TAG_RE = re.compile(r"^[\w .:@/+-]{1,100}$", re.UNICODE)


# -- cursors ----------------------------------------------------------------------------------


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    """The values inside a cursor, or a 400 for one we did not issue."""
    if not cursor:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadRequest("The cursor is not valid.", code="invalid_cursor") from exc
    if not isinstance(value, list) or not value:
        raise BadRequest("The cursor is not valid.", code="invalid_cursor")
    return value


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def cursor_time(value: Any) -> datetime:
    """A timestamp inside a cursor: aware UTC, or a 400."""
    try:
        parsed = datetime.fromisoformat(str(value))
        if parsed.tzinfo is None:  # cursors we issue always carry their offset
            raise ValueError("no offset")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # OverflowError: out of range once in UTC
        raise BadRequest("The cursor is not valid.", code="invalid_cursor") from exc


def cursor_int(value: Any) -> int:
    """A number inside a cursor, or a 400."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("The cursor is not valid.", code="invalid_cursor")
    return value


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}.", code="invalid_limit")
    return limit


def _money(units: int) -> float:
    return round(units / MONEY_UNIT, 4)


# -- reading ----------------------------------------------------------------------------------


def get(session: Session, *, project_id: int, customer_id: int) -> Customer | None:
    """One customer of the project, or None."""
    c = session.get(Customer, customer_id)
    return c if c is not None and c.project_id == project_id else None


def get_or_raise(session: Session, *, project_id: int, customer_id: int) -> Customer:
    c = get(session, project_id=project_id, customer_id=customer_id)
    if c is None:
        raise NotFound(f"No customer {customer_id} in this project.", code="customer_not_found")
    return c


def lookup_or_raise(
    session: Session, *, project_id: int, user_id: str | None = None, email: str | None = None
) -> Customer:
    """A customer by the business's userId (or a retired one), or by email."""
    if (user_id is None) == (email is None):
        raise BadRequest("Give exactly one of user_id or email.", code="invalid_lookup")
    if user_id is not None:
        c = session.scalars(
            select(Customer).where(Customer.project_id == project_id, Customer.user_id == user_id)
        ).first()
        if c is None:
            alias = session.get(AnonymousId, (project_id, user_id))
            c = session.get(Customer, alias.customer_id) if alias is not None else None
    else:
        assert email is not None
        c = session.scalars(
            select(Customer)
            .where(Customer.project_id == project_id, Customer.email == email.strip().lower())
            .order_by(Customer.id)
        ).first()
    if c is None:
        raise NotFound("No customer matches.", code="customer_not_found")
    return c


def to_out(session: Session, c: Customer) -> CustomerOut:
    """The API shape of a customer, with ids, tags and groups."""
    anon = session.scalars(
        select(AnonymousId.anonymous_id)
        .where(AnonymousId.customer_id == c.id)
        .order_by(AnonymousId.anonymous_id)
    ).all()
    tags = session.scalars(
        select(CustomerTag.tag).where(CustomerTag.customer_id == c.id).order_by(CustomerTag.tag)
    ).all()
    groups = session.execute(
        select(Group.group_id, Group.traits)
        .join(CustomerGroup, CustomerGroup.group_pk == Group.id)
        .where(CustomerGroup.customer_id == c.id)
        .order_by(Group.group_id)
    ).all()
    return CustomerOut(
        id=c.id,
        user_id=c.user_id,
        email=c.email,
        name=c.name,
        anonymous_ids=list(anon),
        traits=c.traits or {},
        tags=list(tags),
        audiences=c.audiences or {},
        groups=[GroupOut(group_id=g, traits=t or {}) for g, t in groups],
        lifetime_value=_money(c.lifetime_value_units),
        revenue_by_currency={k: _money(v) for k, v in (c.revenue_by_currency or {}).items()},
        charge_count=c.charge_count,
        last_charge_at=isoformat(c.last_charge_at),
        first_seen=isoformat(c.first_seen) or "",
        last_seen=isoformat(c.last_seen) or "",
        created_at=isoformat(c.created_at) or "",
        updated_at=isoformat(c.updated_at) or "",
    )


def _trait_condition(spec: str, *, postgres: bool) -> Any:
    """`key:value` matches a string equal to value, a number equal to it, or a boolean
    true/false; never a value of another type (no casts that could fail or coerce)."""
    key, sep, value = spec.partition(":")
    if not sep:
        key, sep, value = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BadRequest("A trait filter looks like `trait=plan:pro`.", code="invalid_filter")
    try:
        number: float | None = float(value)
    except ValueError:
        number = None
    if postgres:
        node = Customer.traits.op("->")(key)
        kind = func.jsonb_typeof(node)
        text_value = Customer.traits.op("->>")(key)
        options = [and_(kind == "string", text_value == value)]
        if value in ("true", "false"):
            options.append(and_(kind == "boolean", text_value == value))
        if number is not None:
            as_number = case((kind == "number", cast(text_value, Numeric)))
            options.append(as_number == number)
        return or_(*options)
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    kind = func.json_type(Customer.traits, path)
    extracted = func.json_extract(Customer.traits, path)
    options = [and_(kind == "text", extracted == value)]
    if value in ("true", "false"):
        options.append(kind == value)
    if number is not None:
        options.append(case((kind.in_(("integer", "real")), extracted)) == number)
    return or_(*options)


_COMMON_TAG = 2000
_SMALL_MATCH = 5000
SORTS = {
    "last_seen": "Last seen",
    "created": "Newest",
    "lifetime_value": "Lifetime value",
}


def _prefix(column: Any, text: str) -> Any:
    """`column` starts with `text`, as a range so a plain B-tree index serves it."""
    return and_(column >= text, column < text + "\uffff")


def _filtered(
    session: Session,
    project_id: int,
    *,
    q: str | None,
    email: str | None,
    user_id: str | None,
    tag: str | None,
    traits: list[str] | None,
    postgres: bool,
) -> Select[Any]:
    query = select(Customer).where(Customer.project_id == project_id)
    if q and q.strip():
        text = q.strip()
        low = text.lower()
        mine = Customer.project_id == project_id
        if "@" in text:
            matches: Any = select(Customer.id).where(mine, _prefix(Customer.email, low))
        else:
            # One indexed lookup per branch, whatever the planner's statistics say (an OR
            # across three columns can degrade into a scan of every customer).
            matches = union_all(
                select(Customer.id).where(mine, Customer.user_id == text),
                select(Customer.id).where(mine, _prefix(Customer.email, low)),
                select(Customer.id).where(mine, _prefix(func.lower(Customer.name), low)),
            )
        # Resolve a small match set first, so ordering touches only those rows rather than
        # walking the sort index and probing every customer.
        ids = list(session.scalars(select(matches.subquery().c[0]).limit(_SMALL_MATCH + 1)))
        if len(ids) <= _SMALL_MATCH:
            query = query.where(Customer.id.in_(ids))
        else:
            query = query.where(Customer.id.in_(matches))
    if email:
        query = query.where(Customer.email == email.strip().lower())
    if user_id:
        query = query.where(Customer.user_id == user_id)
    if tag:
        tagged = select(CustomerTag.customer_id).where(
            CustomerTag.project_id == project_id, CustomerTag.tag == tag
        )
        common = session.scalar(
            select(func.count()).select_from(tagged.limit(_COMMON_TAG).subquery())
        )
        if (common or 0) >= _COMMON_TAG:
            # A common tag: walk the sort index and probe each customer's tags.
            query = query.where(
                select(CustomerTag.tag)
                .where(CustomerTag.customer_id == Customer.id, CustomerTag.tag == tag)
                .exists()
            )
        else:
            query = query.where(Customer.id.in_(tagged))
    for spec in traits or []:
        query = query.where(_trait_condition(spec, postgres=postgres))
    return query


def _sorted_page(
    session: Session, query: Select[Any], *, sort: str, limit: int, cursor: str | None
) -> tuple[list[Customer], str | None]:
    """Keyset pagination on (sort value, id), newest/highest first."""
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}.", code="invalid_sort")
    column: Any = {
        "last_seen": Customer.last_seen,
        "created": None,
        "lifetime_value": Customer.lifetime_value_units,
    }[sort]
    # The sort keys before id. Recency sorts on the indexed minute first (Customer.seen_minute).
    keys: list[Any] = []
    if sort == "last_seen":
        keys = [Customer.seen_minute, Customer.last_seen]
    elif column is not None:
        keys = [column]
    after = decode_cursor(cursor)
    if after is not None:
        if column is None:
            query = query.where(Customer.id < cursor_int(after[0]))
        else:
            if len(after) != 2:
                raise BadRequest("The cursor is not valid.", code="invalid_cursor")
            if sort == "last_seen":
                # Bound as the columns store them (naive UTC), whatever the session's TimeZone.
                at = cursor_time(after[0])
                values: list[Any] = [
                    literal(at.replace(second=0, microsecond=0), UTCDateTime()),
                    literal(at, UTCDateTime()),
                ]
            else:
                values = [cursor_int(after[0])]
            # A row-value comparison is an index range; the OR form is not.
            query = query.where(tuple_(*keys, Customer.id) < tuple_(*values, cursor_int(after[1])))
    order = [k.desc() for k in keys] + [Customer.id.desc()]
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if not more or not rows:
        return rows, None
    last = rows[-1]
    if column is None:
        return rows, encode_cursor(last.id)
    value = last.last_seen.isoformat() if sort == "last_seen" else last.lifetime_value_units
    return rows, encode_cursor(value, last.id)


def search(
    session: Session,
    *,
    project_id: int,
    q: str | None = None,
    email: str | None = None,
    user_id: str | None = None,
    tag: str | None = None,
    traits: list[str] | None = None,
    sort: str = "created",
    limit: int = 50,
    cursor: str | None = None,
) -> Page[CustomerOut]:
    """Customers filtered by text (email, name, userId), email, userId, tag and traits."""
    query = _filtered(
        session,
        project_id,
        q=q,
        email=email,
        user_id=user_id,
        tag=tag,
        traits=traits,
        postgres=_is_postgres(session),
    )
    rows, nxt = _sorted_page(session, query, sort=sort, limit=_limit(limit), cursor=cursor)
    return Page(data=[to_out(session, c) for c in rows], next_cursor=nxt)


def browse(
    session: Session,
    *,
    project_id: int,
    q: str | None = None,
    tag: str | None = None,
    traits: list[str] | None = None,
    sort: str = "last_seen",
    limit: int = 50,
    cursor: str | None = None,
) -> Page[CustomerSummary]:
    """The dashboard's customer list: summaries only, so a page is a single query."""
    query = _filtered(
        session,
        project_id,
        q=q,
        email=None,
        user_id=None,
        tag=tag,
        traits=traits,
        postgres=_is_postgres(session),
    )
    rows, nxt = _sorted_page(session, query, sort=sort, limit=_limit(limit), cursor=cursor)
    return Page(
        data=[
            CustomerSummary(
                id=c.id,
                user_id=c.user_id,
                email=c.email,
                name=c.name,
                lifetime_value=_money(c.lifetime_value_units),
                first_seen=isoformat(c.first_seen) or "",
                last_seen=isoformat(c.last_seen) or "",
                created_at=isoformat(c.created_at) or "",
            )
            for c in rows
        ],
        next_cursor=nxt,
    )


def has_customers(session: Session, *, project_id: int) -> bool:
    return (
        session.scalar(select(Customer.id).where(Customer.project_id == project_id).limit(1))
        is not None
    )


def timeline(
    session: Session,
    *,
    project_id: int,
    customer_id: int,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[EventOut]:
    """The customer's events, newest first."""
    limit = _limit(limit)
    get_or_raise(session, project_id=project_id, customer_id=customer_id)
    query = select(Event).where(Event.customer_id == customer_id)
    after = decode_cursor(cursor)
    if after is not None:
        if len(after) != 2:
            raise BadRequest("The cursor is not valid.", code="invalid_cursor")
        ts, last_id = cursor_time(after[0]), cursor_int(after[1])
        query = query.where(
            or_(Event.timestamp < ts, and_(Event.timestamp == ts, Event.id < last_id))
        )
    rows = list(
        session.scalars(query.order_by(Event.timestamp.desc(), Event.id.desc()).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    data = [
        EventOut(
            id=e.id,
            type=e.type,
            name=e.name,
            properties=e.properties or {},
            context=e.context or {},
            timestamp=isoformat(e.timestamp) or "",
            received_at=isoformat(e.received_at) or "",
            message_id=e.message_id,
        )
        for e in rows
    ]
    next_cursor = encode_cursor(rows[-1].timestamp.isoformat(), rows[-1].id) if more else None
    return Page(data=data, next_cursor=next_cursor)


def charges(
    session: Session,
    *,
    project_id: int,
    customer_id: int,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[ChargeOut]:
    """The customer's charges, newest first."""
    limit = _limit(limit)
    get_or_raise(session, project_id=project_id, customer_id=customer_id)
    query = select(Charge).where(Charge.customer_id == customer_id)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Charge.id < cursor_int(after[0]))
    rows = list(session.scalars(query.order_by(Charge.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        data=[
            ChargeOut(
                id=ch.id,
                amount=_money(ch.amount_units),
                currency=ch.currency,
                timestamp=isoformat(ch.timestamp) or "",
                message_id=ch.message_id,
            )
            for ch in rows
        ],
        next_cursor=encode_cursor(rows[-1].id) if more else None,
    )


# -- writing ----------------------------------------------------------------------------------


def _batch_for(session: Session, project_id: int, customer_id: int) -> ProfileBatch:
    get_or_raise(session, project_id=project_id, customer_id=customer_id)
    batch = ProfileBatch(project_id, Policy())
    batch.load_ids(session, [customer_id])
    return batch


def update_traits(
    session: Session, *, project_id: int, customer_id: int, traits: dict[str, Any]
) -> Customer:
    """Merge traits into the profile (null removes one); the catalog follows."""
    if not traits:
        raise BadRequest("Give at least one trait to change.", code="invalid_traits")
    if "email" in traits and traits["email"] is not None and not isinstance(traits["email"], str):
        raise BadRequest("The email trait must be a string.", code="invalid_traits")
    batch = _batch_for(session, project_id, customer_id)
    batch.set_traits(batch.profiles[0], normalize_traits(traits), clock.now())
    batch.flush(session)
    _changed(session, project_id, customer_id)
    session.expire_all()
    return get_or_raise(session, project_id=project_id, customer_id=customer_id)


def erase(session: Session, *, project_id: int, customer_id: int) -> None:
    """Delete the customer, its ids, events, charges, tags and memberships."""
    batch = _batch_for(session, project_id, customer_id)
    batch.erase(batch.profiles[0])
    batch.flush(session)


def _check_tag(tag: str) -> str:
    tag = tag.strip()
    if not TAG_RE.match(tag):
        raise BadRequest(
            "A tag is 1 to 100 letters, digits, spaces or . : @ / + - _", code="invalid_tag"
        )
    return tag


def add_tag(session: Session, *, project_id: int, customer_id: int, tag: str) -> list[str]:
    """Tag a customer (idempotent); returns its tags."""
    tag = _check_tag(tag)
    get_or_raise(session, project_id=project_id, customer_id=customer_id)
    if session.get(CustomerTag, (customer_id, tag)) is None:
        session.add(
            CustomerTag(
                customer_id=customer_id, tag=tag, project_id=project_id, created_at=clock.now()
            )
        )
        session.flush()
        _changed(session, project_id, customer_id)
    return _tags(session, customer_id)


def remove_tag(session: Session, *, project_id: int, customer_id: int, tag: str) -> list[str]:
    """Untag a customer (idempotent); returns its tags."""
    get_or_raise(session, project_id=project_id, customer_id=customer_id)
    removed = session.execute(
        delete(CustomerTag).where(CustomerTag.customer_id == customer_id, CustomerTag.tag == tag)
    )
    if removed.rowcount:  # type: ignore[attr-defined]
        _changed(session, project_id, customer_id)
    return _tags(session, customer_id)


def _changed(session: Session, project_id: int, customer_id: int) -> None:
    """Have the customer's segment memberships re-evaluated after an edit (in this transaction)."""
    jobs.enqueue(
        session, "segments.refresh", {"project_id": project_id, "customer_ids": [customer_id]}
    )


def _tags(session: Session, customer_id: int) -> list[str]:
    return list(
        session.scalars(
            select(CustomerTag.tag)
            .where(CustomerTag.customer_id == customer_id)
            .order_by(CustomerTag.tag)
        )
    )


# -- catalogs ---------------------------------------------------------------------------------


def _offset_page(rows: list[Any], limit: int, offset: int) -> tuple[list[Any], str | None]:
    more = len(rows) > limit
    return rows[:limit], encode_cursor(offset + limit) if more else None


def _offset(cursor: str | None) -> int:
    after = decode_cursor(cursor)
    if after is None:
        return 0
    if not isinstance(after[0], int) or after[0] < 0:
        raise BadRequest("The cursor is not valid.", code="invalid_cursor")
    return after[0]


def list_tags(
    session: Session, *, project_id: int, limit: int = 200, cursor: str | None = None
) -> Page[TagCount]:
    """The project's tags with how many customers carry each."""
    limit, offset = _limit(limit), _offset(cursor)
    rows = session.execute(
        select(CustomerTag.tag, func.count())
        .where(CustomerTag.project_id == project_id)
        .group_by(CustomerTag.tag)
        .order_by(CustomerTag.tag)
        .offset(offset)
        .limit(limit + 1)
    ).all()
    page, nxt = _offset_page(list(rows), limit, offset)
    return Page(data=[TagCount(tag=t, customers=n) for t, n in page], next_cursor=nxt)


def tag_names(session: Session, *, project_id: int, limit: int = 200) -> list[str]:
    """The project's tag names (no counts: an index-only lookup for filter menus)."""
    return list(
        session.scalars(
            select(CustomerTag.tag)
            .where(CustomerTag.project_id == project_id)
            .distinct()
            .order_by(CustomerTag.tag)
            .limit(limit)
        )
    )


def list_traits(
    session: Session, *, project_id: int, limit: int = 200, cursor: str | None = None
) -> Page[TraitOut]:
    """The trait catalog: key, inferred type, customers holding it, first and last seen."""
    limit, offset = _limit(limit), _offset(cursor)
    rows = session.scalars(
        select(TraitCatalog)
        .where(TraitCatalog.project_id == project_id, TraitCatalog.customer_count > 0)
        .order_by(TraitCatalog.key)
        .offset(offset)
        .limit(limit + 1)
    ).all()
    page, nxt = _offset_page(list(rows), limit, offset)
    return Page(
        data=[
            TraitOut(
                key=t.key,
                type=t.type,
                customers=t.customer_count,
                first_seen=isoformat(t.first_seen) or "",
                last_seen=isoformat(t.last_seen) or "",
            )
            for t in page
        ],
        next_cursor=nxt,
    )


def list_events(
    session: Session, *, project_id: int, limit: int = 200, cursor: str | None = None
) -> Page[EventTypeOut]:
    """The event catalog: name, type, count, property keys and types, first and last seen."""
    limit, offset = _limit(limit), _offset(cursor)
    rows = session.scalars(
        select(EventCatalog)
        .where(EventCatalog.project_id == project_id)
        .order_by(EventCatalog.count.desc(), EventCatalog.type, EventCatalog.name)
        .offset(offset)
        .limit(limit + 1)
    ).all()
    page, nxt = _offset_page(list(rows), limit, offset)
    return Page(
        data=[
            EventTypeOut(
                name=e.name,
                type=e.type,
                count=e.count,
                properties=e.properties or {},
                first_seen=isoformat(e.first_seen) or "",
                last_seen=isoformat(e.last_seen) or "",
            )
            for e in page
        ],
        next_cursor=nxt,
    )
