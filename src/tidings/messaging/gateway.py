"""The send gateway: every email of every sender passes here before it may leave.

In order, each decision recorded on the message (`decisions`):
1. subscription: a marketing email needs its topic (and "all marketing") not opted out of;
   transactional email bypasses topics;
2. suppression: hard bounces, spam complaints and manual suppressions are never sent to;
3. frequency cap: at most N marketing emails per customer per window; over it the message is
   skipped or deferred, as the sender chose;
4. quiet hours: marketing email waiting for the window to open in the customer's time zone;
5. idempotency: a send whose key exists returns the existing message and sends nothing.

`send_many` decides for many customers with a handful of queries per thousand; `send` is the
one-customer form. Both only write rows in the caller's transaction: the worker delivers.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.orm import Session

from tidings import clock
from tidings.customers import service as customers
from tidings.db.bulk import DUPLICATE_KEY, Bulk, chunks
from tidings.errors import BadRequest
from tidings.messaging import settings as email_settings
from tidings.messaging.models import EmailSettings, Message
from tidings.messaging.providers import valid_address
from tidings.templates import service as templates

SENDERS = ("api", "test", "automation", "broadcast", "survey", "conversation")
COUNTED = ("queued", "deferred", "sending", "sent", "bounced", "complained")


@dataclass(slots=True)
class Request:
    """What a sender asks for (the same for every recipient of a fan-out)."""

    template_id: int
    sender: str = "api"
    topic: str | None = None
    transactional: bool = False
    variables: dict[str, Any] = field(default_factory=dict)
    on_cap: str = "defer"  # or "skip"
    to: str | None = None  # a test send's address (instead of the customer's)


@dataclass(slots=True)
class _Decision:
    status: str = "queued"
    reason: str | None = None
    send_after: datetime | None = None
    decisions: list[dict[str, str]] = field(default_factory=list)

    def note(self, check: str, result: str, detail: str = "") -> None:
        self.decisions.append({"check": check, "result": result, "detail": detail})

    def skip(self, check: str, reason: str) -> None:
        self.note(check, "skip", reason)
        self.status, self.reason = "skipped", reason

    def defer(self, check: str, until: datetime, reason: str) -> None:
        self.note(check, "defer", reason)
        if self.send_after is None or until > self.send_after:
            self.send_after = until
        self.status, self.reason = "deferred", reason


def _check_request(session: Session, project_id: int, req: Request) -> None:
    templates.get_or_raise(session, project_id=project_id, template_id=req.template_id)
    if req.sender not in SENDERS:
        raise BadRequest(f"sender: one of {', '.join(SENDERS)}.", code="bad_sender")
    if req.on_cap not in ("defer", "skip"):
        raise BadRequest("on_cap: 'defer' or 'skip'.", code="bad_request")
    if req.transactional:
        return
    if not req.topic:
        raise BadRequest(
            "topic: a marketing email needs a subscription topic (or transactional: true for "
            "receipts, password resets and other emails customers cannot opt out of).",
            code="topic_required",
        )
    email_settings.topic_or_raise(session, project_id=project_id, key=req.topic)


def quiet_until(now: datetime, tz: ZoneInfo, start: time, end: time) -> datetime | None:
    """When quiet hours that contain `now` end (UTC), or None outside quiet hours."""
    local = now.astimezone(tz)
    t = local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=tz).astimezone(UTC)


def _customers(bulk: Bulk, project_id: int, ids: list[int]) -> dict[int, tuple[str | None, Any]]:
    tz = "traits->>'timezone'" if bulk.postgres else "json_extract(traits, '$.timezone')"
    out: dict[int, tuple[str | None, Any]] = {}
    for part in chunks(ids):
        for cid, email, zone in bulk.select_in(
            f"SELECT id, email, {tz} FROM customers WHERE project_id = {{m}}",  # noqa: S608
            "id",
            part,
            (project_id,),
        ):
            out[int(cid)] = (email, zone)
    return out


def opted_out(bulk: Bulk, project_id: int, ids: list[int], topic: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in chunks(ids):
        for cid, key in bulk.select_in(
            "SELECT customer_id, topic FROM subscriptions WHERE project_id = {m} "
            "AND subscribed = {m} AND topic IN ({m}, {m})",
            "customer_id",
            part,
            (project_id, False, topic, email_settings.ALL),
        ):
            out[int(cid)] = "all marketing email" if key == email_settings.ALL else f"{key!r}"
    return out


def suppressed(bulk: Bulk, project_id: int, emails: list[str]) -> dict[str, str]:
    """The lower-cased addresses among `emails` that are suppressed, with their reason."""
    out: dict[str, str] = {}
    for part in chunks(sorted(set(emails))):
        for email, reason in bulk.select_in(
            "SELECT email, reason FROM suppressions WHERE project_id = {m}",
            "email",
            part,
            (project_id,),
        ):
            out[email] = reason
    return out


def _recent(bulk: Bulk, ids: list[int], since: datetime) -> dict[int, list[datetime]]:
    marks = ", ".join([bulk.mark] * len(COUNTED))
    out: dict[int, list[datetime]] = defaultdict(list)
    for part in chunks(ids):
        for cid, created in bulk.select_in(
            "SELECT customer_id, created_at FROM messages WHERE transactional = {m} "  # noqa: S608
            f"AND created_at >= {{m}} AND status IN ({marks})",
            "customer_id",
            part,
            (False, bulk.dt(since), *COUNTED),
        ):
            out[int(cid)].append(bulk.read_dt(created) or since)
    return out


def _existing(bulk: Bulk, project_id: int, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in chunks(keys):
        for key, mid in bulk.select_in(
            "SELECT idempotency_key, id FROM messages WHERE project_id = {m}",
            "idempotency_key",
            part,
            (project_id,),
        ):
            out[key] = int(mid)
    return out


def _decide(
    req: Request,
    s: EmailSettings,
    now: datetime,
    email: str | None,
    zone_name: Any,
    opted_out: str | None,
    suppression: str | None,
    recent: list[datetime],
) -> _Decision:
    d = _Decision()
    if not email:
        d.skip("address", "the customer has no email address")
        return d
    if req.transactional:
        d.note("subscription", "bypass", "transactional")
    elif opted_out:
        d.skip("subscription", f"unsubscribed from {opted_out}")
        return d
    else:
        d.note("subscription", "pass", f"subscribed to {req.topic!r}")
    if suppression:
        d.skip("suppression", f"address suppressed ({suppression})")
        return d
    d.note("suppression", "pass")
    if req.transactional:
        return d
    if s.cap_count > 0:
        if len(recent) >= s.cap_count:
            window = timedelta(days=s.cap_days)
            if req.on_cap == "skip":
                d.skip("frequency_cap", f"{len(recent)} marketing emails in {s.cap_days} days")
                return d
            opens = sorted(recent)[len(recent) - s.cap_count] + window
            d.defer("frequency_cap", opens, f"cap of {s.cap_count} per {s.cap_days} days reached")
        else:
            d.note("frequency_cap", "pass", f"{len(recent)} of {s.cap_count} in {s.cap_days} days")
    if s.quiet_start and s.quiet_end:
        tz = _zone(zone_name, s.timezone)
        at = d.send_after or now
        until = quiet_until(
            at,
            tz,
            email_settings.parse_hhmm(s.quiet_start, "quiet_start"),
            email_settings.parse_hhmm(s.quiet_end, "quiet_end"),
        )
        if until is not None:
            d.defer("quiet_hours", until, f"quiet hours in {tz.key} until {s.quiet_end}")
        else:
            d.note("quiet_hours", "pass", tz.key)
    return d


_zones: dict[str, ZoneInfo | None] = {}


def _zone(name: Any, fallback: str) -> ZoneInfo:
    if isinstance(name, str) and name:
        if name not in _zones:
            try:
                _zones[name] = email_settings.zone(name)
            except BadRequest:
                _zones[name] = None
        found = _zones[name]
        if found is not None:
            return found
    return email_settings.zone(fallback)


MESSAGE_COLUMNS = (
    "id",
    "project_id",
    "customer_id",
    "template_id",
    "channel",
    "sender",
    "topic",
    "transactional",
    "idempotency_key",
    "to_address",
    "status",
    "reason",
    "decisions",
    "variables",
    "send_after",
    "attempts",
    "created_at",
    "updated_at",
)


def send_many(
    session: Session, *, project_id: int, request: Request, recipients: list[tuple[int, str]]
) -> list[int]:
    """Decide and queue one message per (customer id, idempotency key); returns message ids.

    A key that already has a message returns that message: nothing is sent twice, even when
    two senders race with the same key (the loser finds the winner's message).
    """
    _check_request(session, project_id, request)
    if Bulk(session).postgres:
        # The lookups below repeat with new id lists: a plan cached while the messages table
        # was small (a sequential scan) would stay long after a broadcast has filled it.
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    try:
        with session.begin_nested():
            return _send_many(session, project_id, request, recipients)
    except DUPLICATE_KEY:
        with session.begin_nested():
            return _send_many(session, project_id, request, recipients)


def _send_many(
    session: Session, project_id: int, request: Request, recipients: list[tuple[int, str]]
) -> list[int]:
    s = email_settings.get(session, project_id=project_id)
    bulk = Bulk(session)
    now = clock.now()
    existing = _existing(bulk, project_id, [k for _, k in recipients])
    unique = {k: (c, k) for c, k in recipients}  # one message per key
    fresh = [(c, k) for c, k in unique.values() if k not in existing]
    ids = [c for c, _ in fresh]
    people = _customers(bulk, project_id, ids)
    missing = [c for c in ids if c not in people]
    if missing and request.to is None:
        raise BadRequest(
            f"customer_id: no customer {missing[0]} in this project.", code="customer_not_found"
        )
    opted = {} if request.transactional else opted_out(bulk, project_id, ids, request.topic or "")
    addresses = {c: (request.to or (people.get(c) or (None, None))[0]) for c in ids}
    blocked = suppressed(bulk, project_id, [a.lower() for a in addresses.values() if a])
    recent: dict[int, list[datetime]] = {}
    if not request.transactional and s.cap_count > 0:
        recent = _recent(bulk, ids, now - timedelta(days=s.cap_days))
    new_ids = bulk.allocate_ids("messages", len(fresh))
    rows, events = [], []
    at, variables = bulk.dt(now), bulk.json(request.variables)
    for mid, (cid, key) in zip(new_ids, fresh, strict=True):
        email = addresses[cid]
        d = _decide(
            request,
            s,
            now,
            email,
            (people.get(cid) or (None, None))[1],
            opted.get(cid),
            blocked.get(email.lower()) if email else None,
            recent.get(cid, []),
        )
        rows.append(
            (
                mid,
                project_id,
                cid if cid in people else None,
                request.template_id,
                "email",
                request.sender,
                request.topic,
                request.transactional,
                key,
                email,
                d.status,
                d.reason,
                bulk.json(d.decisions),
                variables,
                bulk.dt(d.send_after or now),
                0,
                at,
                at,
            )
        )
        events.append((project_id, mid, d.status, d.reason, bulk.json({}), at))
    bulk.insert("messages", MESSAGE_COLUMNS, rows)
    bulk.insert(
        "message_events", ("project_id", "message_id", "type", "detail", "data", "at"), events
    )
    made = {k: mid for mid, (_, k) in zip(new_ids, fresh, strict=True)}
    return [existing.get(k) or made[k] for _, k in recipients]


def send(
    session: Session,
    *,
    project_id: int,
    template_id: int,
    customer_id: int,
    topic: str | None = None,
    transactional: bool = False,
    sender: str = "api",
    key: str | None = None,
    variables: dict[str, Any] | None = None,
    on_cap: str = "defer",
) -> Message:
    """One email to one customer through the gateway; returns the message (new or existing)."""
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    req = Request(
        template_id=template_id,
        sender=sender,
        topic=topic,
        transactional=transactional,
        variables=variables or {},
        on_cap=on_cap,
    )
    key = key or f"{sender}:{uuid.uuid4().hex}"
    (mid,) = send_many(session, project_id=project_id, request=req, recipients=[(customer_id, key)])
    session.expire_all()
    found = session.get(Message, mid)
    assert found is not None
    return found


def send_test(
    session: Session,
    *,
    project_id: int,
    template_id: int,
    to: str,
    customer_id: int | None = None,
    variables: dict[str, Any] | None = None,
) -> Message:
    """A test email of a template to any address (rendered for a customer when given)."""
    if not valid_address(to):
        raise BadRequest(f"to: {to!r} is not an email address.", code="bad_address")
    if customer_id is not None:
        customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    req = Request(
        template_id=template_id,
        sender="test",
        transactional=True,
        variables=variables or {},
        to=to.strip(),
    )
    key = f"test:{uuid.uuid4().hex}"
    (mid,) = send_many(
        session, project_id=project_id, request=req, recipients=[(customer_id or 0, key)]
    )
    session.expire_all()
    found = session.get(Message, mid)
    assert found is not None
    return found
