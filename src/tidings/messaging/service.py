"""Messaging use cases: settings, topics, subscriptions, suppressions, the message log,
provider notifications, the public link actions (open, click, unsubscribe, preferences), and
template previews for a customer.

Every function takes the project id and checks that what it touches belongs to it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tidings import clock
from tidings.auth import service as projects
from tidings.customers import service as customers
from tidings.customers.service import cursor_int, decode_cursor, encode_cursor
from tidings.db import Database
from tidings.errors import BadRequest, NotFound
from tidings.messaging import delivery, links, record
from tidings.messaging import settings as email_settings
from tidings.messaging.models import Message, MessageEvent, Subscription, Suppression
from tidings.messaging.providers import valid_address
from tidings.messaging.schemas import (
    CustomerSubscriptions,
    EmailSettingsOut,
    EmailSettingsPatch,
    MessageDetail,
    MessageEventOut,
    MessageOut,
    NotificationResult,
    SubscriptionOut,
    SuppressionOut,
    TopicOut,
)
from tidings.templates import render
from tidings.templates import service as templates

MAX_LIMIT = 500

# -- settings ---------------------------------------------------------------------------------


def settings_out(session: Session, *, project_id: int, db: Database) -> EmailSettingsOut:
    """The project's email settings as the API shows them."""
    s = email_settings.get(session, project_id=project_id)
    name, addr = delivery.sender_of(db.settings.mail_from, s)
    return EmailSettingsOut(
        from_name=name,
        from_email=addr,
        reply_to=s.reply_to,
        address=s.address,
        frequency_cap={"count": s.cap_count, "days": s.cap_days},
        quiet_hours=(
            {"start": s.quiet_start, "end": s.quiet_end} if s.quiet_start and s.quiet_end else None
        ),
        timezone=s.timezone,
        track_opens=s.track_opens,
        track_clicks=s.track_clicks,
        provider="smtp" if db.settings.smtp_url else "outbox",
    )


def update_settings(
    session: Session, *, project_id: int, patch: EmailSettingsPatch, db: Database
) -> EmailSettingsOut:
    """Change the project's email settings (all checked before any is applied)."""
    given = patch.model_dump(exclude_unset=True)
    changes: dict[str, Any] = {}
    for key in ("from_name", "reply_to", "address", "timezone", "track_opens", "track_clicks"):
        if key in given:
            changes[key] = given[key] if key != "address" else (given[key] or "")
    for key in ("from_email", "reply_to"):
        value = given.get(key)
        if value and not valid_address(value):
            raise BadRequest(f"{key}: {value!r} is not an email address.", code="bad_setting")
    if "from_email" in given:
        changes["from_email"] = given["from_email"]
    if "frequency_cap" in given:
        cap = given["frequency_cap"] or {"count": 0, "days": 7}
        count, days = cap.get("count", 0), cap.get("days", 7)
        if not (0 <= count <= 1000 and 1 <= days <= 365):
            raise BadRequest(
                "frequency_cap: count 0-1000 (0: no cap) per days 1-365.", code="bad_setting"
            )
        changes.update(cap_count=count, cap_days=days)
    if "quiet_hours" in given:
        quiet = given["quiet_hours"]
        if quiet is None:
            changes.update(quiet_start=None, quiet_end=None)
        else:
            changes.update(quiet_start=quiet.get("start"), quiet_end=quiet.get("end"))
    email_settings.update(session, project_id=project_id, changes=changes)
    return settings_out(session, project_id=project_id, db=db)


# -- topics and subscriptions -----------------------------------------------------------------


def topics(session: Session, *, project_id: int) -> list[TopicOut]:
    """The project's topics with how many customers opted out of each."""
    counts = dict(
        session.execute(
            select(Subscription.topic, func.count())
            .where(Subscription.project_id == project_id, Subscription.subscribed.is_(False))
            .group_by(Subscription.topic)
        ).all()
    )
    return [
        TopicOut(
            key=t.key,
            name=t.name,
            description=t.description,
            builtin=t.key in email_settings.BUILTIN_TOPICS,
            unsubscribed=counts.get(t.key, 0),
        )
        for t in email_settings.ensure_topics(session, project_id=project_id)
    ]


def customer_subscriptions(
    session: Session, *, project_id: int, customer_id: int
) -> CustomerSubscriptions:
    """A customer's choice for every topic (no choice recorded means subscribed)."""
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    choices = {
        s.topic: s.subscribed
        for s in session.scalars(
            select(Subscription).where(Subscription.customer_id == customer_id)
        )
    }
    return CustomerSubscriptions(
        customer_id=customer_id,
        unsubscribed_all=choices.get(email_settings.ALL) is False,
        topics=[
            {"key": t.key, "name": t.name, "subscribed": choices.get(t.key, True)}
            for t in email_settings.ensure_topics(session, project_id=project_id)
        ],
    )


def set_subscriptions(
    session: Session,
    *,
    project_id: int,
    customer_id: int,
    topics: dict[str, bool],
    unsubscribed_all: bool | None = None,
    source: str = "api",
) -> CustomerSubscriptions:
    """Record a customer's choices; unknown topics are refused before anything changes."""
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    known = {t.key for t in email_settings.ensure_topics(session, project_id=project_id)}
    unknown = sorted(set(topics) - known)
    if unknown:
        raise BadRequest(f"topics: unknown topic {unknown[0]!r}.", code="topic_not_found")
    wanted = dict(topics)
    if unsubscribed_all is not None:
        wanted[email_settings.ALL] = not unsubscribed_all
    now = clock.now()
    for key, subscribed in wanted.items():
        row = session.get(Subscription, (customer_id, key))
        if row is None:
            session.add(
                Subscription(
                    customer_id=customer_id,
                    topic=key,
                    project_id=project_id,
                    subscribed=subscribed,
                    source=source,
                    updated_at=now,
                )
            )
        elif row.subscribed != subscribed:
            row.subscribed, row.source, row.updated_at = subscribed, source, now
    session.flush()
    return customer_subscriptions(session, project_id=project_id, customer_id=customer_id)


def list_subscriptions(
    session: Session,
    *,
    project_id: int,
    topic: str | None = None,
    subscribed: bool | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[SubscriptionOut], str | None]:
    """Recorded choices, newest first, optionally of one topic or one way."""
    query = select(Subscription).where(Subscription.project_id == project_id)
    if topic is not None:
        query = query.where(Subscription.topic == topic)
    if subscribed is not None:
        query = query.where(Subscription.subscribed.is_(subscribed))
    after = decode_cursor(cursor)
    if after is not None:
        cid, key = cursor_int(after[0]), str(after[1]) if len(after) > 1 else ""
        query = query.where(
            (Subscription.customer_id > cid)
            | ((Subscription.customer_id == cid) & (Subscription.topic > key))
        )
    rows = list(
        session.scalars(
            query.order_by(Subscription.customer_id, Subscription.topic).limit(_limit(limit) + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    out = [
        SubscriptionOut(
            customer_id=r.customer_id,
            topic=r.topic,
            subscribed=r.subscribed,
            source=r.source,
            updated_at=clock.isoformat(r.updated_at) or "",
        )
        for r in rows
    ]
    return out, (encode_cursor(rows[-1].customer_id, rows[-1].topic) if more else None)


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}.", code="invalid_limit")
    return limit


# -- suppressions -----------------------------------------------------------------------------


def _suppression_out(s: Suppression) -> SuppressionOut:
    return SuppressionOut(
        email=s.email,
        reason=s.reason,
        note=s.note,
        message_id=s.message_id,
        created_at=clock.isoformat(s.created_at) or "",
    )


def list_suppressions(
    session: Session,
    *,
    project_id: int,
    reason: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[SuppressionOut], str | None]:
    """Suppressed addresses in address order."""
    query = select(Suppression).where(Suppression.project_id == project_id)
    if reason:
        query = query.where(Suppression.reason == reason)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Suppression.email > str(after[0]))
    rows = list(session.scalars(query.order_by(Suppression.email).limit(_limit(limit) + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [_suppression_out(r) for r in rows], (encode_cursor(rows[-1].email) if more else None)


def add_suppression(
    session: Session, *, project_id: int, email: str, note: str = ""
) -> SuppressionOut:
    """Suppress an address by hand."""
    email = email.strip()
    if not valid_address(email):
        raise BadRequest(f"email: {email!r} is not an email address.", code="bad_address")
    record.suppress(session, project_id=project_id, email=email, reason="manual", note=note)
    session.flush()
    found = session.get(Suppression, (project_id, email.strip().lower()))
    assert found is not None
    return _suppression_out(found)


def remove_suppression(session: Session, *, project_id: int, email: str) -> None:
    """Allow sending to an address again."""
    found = session.get(Suppression, (project_id, email.strip().lower()))
    if found is None:
        raise NotFound(f"{email!r} is not suppressed.", code="suppression_not_found")
    session.delete(found)
    session.flush()


# -- the message log --------------------------------------------------------------------------


def message_out(m: Message) -> MessageOut:
    return MessageOut(
        id=m.id,
        customer_id=m.customer_id,
        template_id=m.template_id,
        sender=m.sender,
        topic=m.topic,
        transactional=m.transactional,
        to=m.to_address,
        status=m.status,
        reason=m.reason,
        decisions=list(m.decisions or []),
        send_after=clock.isoformat(m.send_after) or "",
        attempts=m.attempts,
        subject=m.subject,
        header_id=m.header_id,
        sent_at=clock.isoformat(m.sent_at),
        opened_at=clock.isoformat(m.opened_at),
        clicked_at=clock.isoformat(m.clicked_at),
        unsubscribed_at=clock.isoformat(m.unsubscribed_at),
        created_at=clock.isoformat(m.created_at) or "",
    )


def get_or_raise(session: Session, *, project_id: int, message_id: int) -> Message:
    """One message of the project; NotFound otherwise."""
    m = session.get(Message, message_id)
    if m is None or m.project_id != project_id:
        raise NotFound(f"No message {message_id} in this project.", code="message_not_found")
    return m


def detail(session: Session, *, project_id: int, message_id: int) -> MessageDetail:
    """A message with its content and its whole log."""
    m = get_or_raise(session, project_id=project_id, message_id=message_id)
    events = session.scalars(
        select(MessageEvent).where(MessageEvent.message_id == m.id).order_by(MessageEvent.id)
    )
    return MessageDetail(
        **message_out(m).model_dump(),
        html=m.html,
        text=m.text,
        events=[
            MessageEventOut(
                type=e.type, detail=e.detail, data=e.data or {}, at=clock.isoformat(e.at) or ""
            )
            for e in events
        ],
    )


def list_messages(
    session: Session,
    *,
    project_id: int,
    customer_id: int | None = None,
    status: str | None = None,
    template_id: int | None = None,
    sender: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[MessageOut], str | None]:
    """The message log, newest first (one customer's: NotFound for a stranger)."""
    query = select(Message).where(Message.project_id == project_id)
    if customer_id is not None:
        customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
        query = query.where(Message.customer_id == customer_id)
    if status:
        query = query.where(Message.status == status)
    if template_id is not None:
        query = query.where(Message.template_id == template_id)
    if sender:
        query = query.where(Message.sender == sender)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Message.id < cursor_int(after[0]))
    rows = list(session.scalars(query.order_by(Message.id.desc()).limit(_limit(limit) + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [message_out(m) for m in rows], (encode_cursor(rows[-1].id) if more else None)


def _log(session: Session, m: Message, kind: str, detail: str | None, **data: Any) -> None:
    session.add(
        MessageEvent(
            project_id=m.project_id,
            message_id=m.id,
            type=kind,
            detail=detail,
            data=data,
            at=clock.now(),
        )
    )


def _engage(session: Session, m: Message, kind: str, extra: dict[str, Any]) -> None:
    """An engagement: the log, the timeline and domain events, and segment upkeep."""
    _log(session, m, kind, None, **extra)
    session.flush()
    record.timeline(session, [(m.id, kind, extra)], now=clock.now())
    if m.customer_id is not None and m.sender != "test":
        record.refresh_segments(session, [(m.project_id, m.customer_id)], [record.TIMELINE[kind]])


# -- provider notifications -------------------------------------------------------------------


def _find_message(session: Session, project_id: int, ref: Any) -> Message | None:
    if ref is None:
        return None
    text = str(ref).strip()
    if text.isdigit() and len(text) < 19:
        m = session.get(Message, int(text))
        return m if m is not None and m.project_id == project_id else None
    header = text if text.startswith("<") else f"<{text}>"
    return session.scalar(
        select(Message).where(Message.project_id == project_id, Message.header_id == header)
    )


def _notifications(payload: Any) -> list[dict[str, Any]]:
    """Generic items from the generic form, Amazon SES (SNS) or SendGrid-style arrays."""
    items = payload if isinstance(payload, list) else [payload]
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("Each notification must be a JSON object.", code="bad_notification")
        if "Message" in item and isinstance(item["Message"], str):  # SNS envelope
            try:
                item = orjson.loads(item["Message"])
            except orjson.JSONDecodeError as exc:
                raise BadRequest("SNS Message is not JSON.", code="bad_notification") from exc
        kind = str(item.get("notificationType") or item.get("type") or item.get("event") or "")
        kind = kind.lower()
        if kind == "bounce" and isinstance(item.get("bounce"), dict):  # SES
            b = item["bounce"]
            hard = b.get("bounceType") == "Permanent"
            ref = (item.get("mail") or {}).get("messageId")
            for r in b.get("bouncedRecipients") or []:
                out.append(
                    {"type": "bounce", "email": r.get("emailAddress"), "hard": hard, "ref": ref}
                )
            continue
        if kind == "complaint" and isinstance(item.get("complaint"), dict):  # SES
            ref = (item.get("mail") or {}).get("messageId")
            for r in item["complaint"].get("complainedRecipients") or []:
                out.append({"type": "complaint", "email": r.get("emailAddress"), "ref": ref})
            continue
        if kind in ("spamreport", "spam", "complained"):
            kind = "complaint"
        if kind in ("bounce", "bounced", "dropped"):
            hard = str(item.get("bounce_type") or item.get("bounceType") or "hard").lower()
            out.append(
                {
                    "type": "bounce",
                    "email": item.get("email"),
                    "hard": hard in ("hard", "permanent", "bounce"),
                    "ref": item.get("message_id") or item.get("messageId"),
                    "reason": item.get("reason"),
                }
            )
        elif kind in ("complaint", "unsubscribe"):
            out.append(
                {
                    "type": kind,
                    "email": item.get("email"),
                    "ref": item.get("message_id") or item.get("messageId"),
                }
            )
        else:
            out.append({"type": "ignored"})
    return out


def notify(session: Session, *, project_id: int, payload: Any) -> NotificationResult:
    """Bounce, complaint and unsubscribe notifications from a provider: suppress, record."""
    items = _notifications(payload)
    for it in items:
        if it["type"] != "ignored" and not (it.get("email") or it.get("ref")):
            raise BadRequest(
                "Each notification needs an `email` or a `message_id`.", code="bad_notification"
            )
    suppressed: list[str] = []
    ignored = 0
    for it in items:
        if it["type"] == "ignored":
            ignored += 1
            continue
        m = _find_message(session, project_id, it.get("ref"))
        email = str(it.get("email") or (m.to_address if m else "") or "").strip().lower()
        if it["type"] == "bounce":
            if it["hard"] and email:
                record.suppress(
                    session,
                    project_id=project_id,
                    email=email,
                    reason="hard_bounce",
                    note=str(it.get("reason") or ""),
                    message_id=m.id if m else None,
                )
                suppressed.append(email)
            if m is not None:
                if it["hard"]:
                    m.status, m.reason = "bounced", str(it.get("reason") or "hard bounce")
                _engage(session, m, "bounced", {"hard": bool(it["hard"])})
        elif it["type"] == "complaint":
            if email:
                record.suppress(
                    session,
                    project_id=project_id,
                    email=email,
                    reason="complaint",
                    message_id=m.id if m else None,
                )
                suppressed.append(email)
            if m is not None:
                m.status, m.reason = "complained", "marked as spam"
                _engage(session, m, "complained", {})
        elif m is not None:
            unsubscribe(session, message=m, source="mailto")
        else:
            ignored += 1
    session.flush()
    return NotificationResult(accepted=len(items) - ignored, suppressed=suppressed, ignored=ignored)


# -- public link actions ----------------------------------------------------------------------


def by_token(session: Session, *, kind: str, token: str) -> Message:
    """The message a signed link names; NotFound for anything not signed by its project."""
    mid = links.message_of(token)
    m = session.get(Message, mid) if mid is not None else None
    if m is None:
        raise NotFound("This link is not valid.", code="invalid_link")
    s = email_settings.get(session, project_id=m.project_id)
    if not links.verify(s.link_secret, kind, token):
        raise NotFound("This link is not valid.", code="invalid_link")
    return m


def opened(session: Session, *, token: str) -> None:
    """The open pixel was loaded: the first open is recorded."""
    try:
        m = by_token(session, kind="o", token=token)
    except NotFound:
        return  # a pixel never shows an error
    if m.opened_at is None:
        m.opened_at = clock.now()
        _engage(session, m, "opened", {})


def clicked(session: Session, *, message_id: int, sig: str, url: str) -> str:
    """A tracked link was followed: record it and return where to go (signed URLs only)."""
    m = session.get(Message, message_id)
    if m is None:
        raise NotFound("This link is not valid.", code="invalid_link")
    s = email_settings.get(session, project_id=m.project_id)
    if not links.verify_click(s.link_secret, message_id, url, sig):
        raise NotFound("This link is not valid.", code="invalid_link")
    now = clock.now()
    if m.opened_at is None:  # a click proves an open even when images were blocked
        m.opened_at = now
        _engage(session, m, "opened", {})
    if m.clicked_at is None:
        m.clicked_at = now
    _engage(session, m, "clicked", {"link_url": url})
    return url


def unsubscribe(session: Session, *, message: Message, source: str) -> str:
    """Unsubscribe the recipient from the message's topic (all marketing if it has none)."""
    m = message
    topic = m.topic or email_settings.ALL
    if m.customer_id is not None and m.sender != "test":
        row = session.get(Subscription, (m.customer_id, topic))
        now = clock.now()
        if row is None:
            session.add(
                Subscription(
                    customer_id=m.customer_id,
                    topic=topic,
                    project_id=m.project_id,
                    subscribed=False,
                    source=source,
                    updated_at=now,
                )
            )
        elif row.subscribed:
            row.subscribed, row.source, row.updated_at = False, source, now
        if m.unsubscribed_at is None:
            m.unsubscribed_at = now
            _engage(session, m, "unsubscribed", {"topic": topic, "source": source})
    session.flush()
    return topic


def one_click(session: Session, *, token: str) -> None:
    """RFC 8058: a POST to the List-Unsubscribe URL unsubscribes, no page involved."""
    unsubscribe(session, message=by_token(session, kind="u", token=token), source="one_click")


def preferences(session: Session, *, token: str, kind: str = "p") -> tuple[Message, Any]:
    """The message behind a preferences (or unsubscribe) link and its recipient's choices."""
    m = by_token(session, kind=kind, token=token)
    if m.customer_id is None or m.sender == "test":
        return m, None
    return m, customer_subscriptions(session, project_id=m.project_id, customer_id=m.customer_id)


def save_preferences(
    session: Session, *, token: str, kind: str, topics: dict[str, bool], unsubscribed_all: bool
) -> CustomerSubscriptions | None:
    """Choices made on the hosted preferences page."""
    m = by_token(session, kind=kind, token=token)
    if m.customer_id is None or m.sender == "test":
        return None
    before = customer_subscriptions(session, project_id=m.project_id, customer_id=m.customer_id)
    out = set_subscriptions(
        session,
        project_id=m.project_id,
        customer_id=m.customer_id,
        topics=topics,
        unsubscribed_all=unsubscribed_all,
        source="link",
    )
    lost = (unsubscribed_all and not before.unsubscribed_all) or any(
        t["subscribed"] and not topics.get(t["key"], True) for t in before.topics
    )
    if lost and m.unsubscribed_at is None:
        m.unsubscribed_at = clock.now()
        _engage(session, m, "unsubscribed", {"topic": m.topic, "source": "link"})
    return out


def project_name(session: Session, *, project_id: int) -> str:
    return projects.get_or_raise(session, project_id=project_id).name


# -- previews ---------------------------------------------------------------------------------


def preview(
    session: Session,
    *,
    project_id: int,
    template_id: int,
    db: Database,
    customer_id: int | None = None,
    event: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    draft: dict[str, str | None] | None = None,
) -> render.Rendered:
    """Render a template (or an unsaved draft of it) for a customer or the sample customer."""
    t = templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    base = templates.parts(t)
    given: dict[str, str] = {k: v for k, v in (draft or {}).items() if v is not None}
    p = render.Parts(
        subject=given.get("subject", base.subject),
        preheader=given.get("preheader", base.preheader),
        html=given.get("html", base.html),
        text=given.get("text", base.text),
    )
    if given:
        templates.check_parts(p)
    s = email_settings.get(session, project_id=project_id)
    if customer_id is not None:
        customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
        doc = delivery.customer_docs(session, [customer_id]).get(customer_id)
    else:
        doc = dict(templates.SAMPLE_CONTEXT["customer"])
    link = links.Links(db.settings.base_url(), "preview", 0)
    ctx = delivery.context_for(
        doc,
        project_name(session, project_id=project_id),
        s,
        link,
        {"event": event or {}, "data": data or {}},
    )
    return render.render(p, ctx)


def delete_template(session: Session, *, project_id: int, template_id: int) -> None:
    """Delete a template; the messages sent from it stay in the log, detached from it.

    The messages are detached first, so a worker delivering one of them (it holds the
    message's row) finishes before the template row is locked: no deadlock."""
    t = templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    if not t.is_default:
        session.execute(
            update(Message)
            .where(Message.project_id == project_id, Message.template_id == template_id)
            .values(template_id=None)
        )
    templates.delete(session, project_id=project_id, template_id=template_id)
