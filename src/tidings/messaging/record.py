"""Recording what happened to messages: status, the message log, the customer's timeline (as
Segment's email events), domain events, suppressions, and segment upkeep.

Every writer of a message's fate goes through here, in the caller's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.db import table_of
from tidings.db.bulk import Bulk, chunks
from tidings.db.upsert import upsert
from tidings.messaging.models import Suppression

# Segment's email spec: the names these statuses take on the customer's timeline.
TIMELINE = {
    "sent": "Email Delivered",
    "opened": "Email Opened",
    "clicked": "Email Link Clicked",
    "bounced": "Email Bounced",
    "complained": "Email Marked as Spam",
    "unsubscribed": "Unsubscribed",
}


@dataclass(slots=True)
class Outcome:
    """A message's new delivery status."""

    id: int
    project_id: int
    customer_id: int | None
    sender: str
    status: str  # deferred | sent | skipped | failed | bounced
    reason: str | None
    send_after: datetime | None = None
    content: tuple[str, str, str, str] | None = None  # subject, html, text, Message-ID
    provider: str | None = None
    suppress: tuple[str, str] | None = None  # (address, reason)


_UPDATE = (
    "UPDATE messages SET status = {m}, reason = {m}, send_after = COALESCE({m}, send_after), "
    "sent_at = COALESCE({m}, sent_at), subject = COALESCE({m}, subject), "
    "html = COALESCE({m}, html), text = COALESCE({m}, text), "
    "header_id = COALESCE({m}, header_id), handed_at = {m}, lease_until = NULL, "
    "claimed_by = NULL, updated_at = {m} WHERE id = {m}"
)


def apply(session: Session, outcomes: list[Outcome], *, claim: str | None = None) -> None:
    """Write outcomes: the messages, their log, timelines, domain events, suppressions.

    With `claim`, only messages still held by that delivery batch are written."""
    if not outcomes:
        return
    bulk = Bulk(session)
    if claim is not None:
        held = set()
        for part in chunks([o.id for o in outcomes]):
            held |= {
                int(r[0])
                for r in bulk.select_in(
                    "SELECT id FROM messages WHERE claimed_by = {m}", "id", part, (claim,)
                )
            }
        outcomes = [o for o in outcomes if o.id in held]
        if not outcomes:
            return
    now = clock.now()
    at = bulk.dt(now)
    rows = []
    for o in outcomes:
        subject, html, text, header = o.content or (None, None, None, None)
        sent = o.status == "sent"
        rows.append(
            (
                o.status,
                o.reason,
                bulk.dt(o.send_after),
                at if sent else None,
                subject,
                html,
                text,
                header,
                at if sent else None,
                at,
                o.id,
            )
        )
    bulk.execute_many(_UPDATE, rows)
    bulk.insert(
        "message_events",
        ("project_id", "message_id", "type", "detail", "data", "at"),
        [
            (
                o.project_id,
                o.id,
                o.status,
                o.reason,
                bulk.json({"provider": o.provider} if o.provider else {}),
                at,
            )
            for o in outcomes
        ],
    )
    visible = [o for o in outcomes if o.status in ("sent", "bounced")]
    timeline(session, [(o.id, o.status, {}) for o in visible], now=now)
    for o in outcomes:
        if o.suppress is not None:
            suppress(
                session,
                project_id=o.project_id,
                email=o.suppress[0],
                reason=o.suppress[1],
                message_id=o.id,
            )


def suppress(
    session: Session,
    *,
    project_id: int,
    email: str,
    reason: str,
    note: str = "",
    message_id: int | None = None,
) -> None:
    """Never send to this address again (the first reason recorded is kept)."""
    upsert(
        session,
        table_of(Suppression),
        [
            {
                "project_id": project_id,
                "email": email.strip().lower(),
                "reason": reason,
                "note": note,
                "message_id": message_id,
                "created_at": clock.now(),
            }
        ],
        keys=("project_id", "email"),
    )


def timeline(
    session: Session, items: list[tuple[int, str, dict[str, Any]]], *, now: datetime
) -> None:
    """Put (message id, status, extra properties) on customers' timelines as email events,
    and publish them as domain events (`message.<status>`)."""
    if not items:
        return
    bulk = Bulk(session)
    info: dict[int, tuple[Any, ...]] = {}
    # The customers are held until the transaction ends: events have no foreign key, and a
    # customer deleted meanwhile takes its events only once this has committed.
    for part in chunks(sorted({mid for mid, _, _ in items})):
        for row in bulk.select_in(
            "SELECT m.id, m.project_id, m.customer_id, m.sender, m.template_id, m.topic, "
            "m.subject, m.transactional FROM messages m "
            "JOIN customers c ON c.id = m.customer_id WHERE 1 = 1",
            "m.id",
            part,
            lock="KEY SHARE OF c",
        ):
            info[int(row[0])] = row
    at = bulk.dt(now)
    events, published = [], []
    for mid, status, extra in items:
        found = info.get(mid)
        if found is None or found[2] is None or found[3] == "test":
            continue
        _, pid, cid, sender, tid, topic, subject, transactional = found
        props = {
            "email_id": str(mid),
            "email_subject": subject,
            "template_id": tid,
            "topic": topic,
            "sender": sender,
            "transactional": bool(transactional),
            **extra,
        }
        events.append(
            (pid, cid, "track", TIMELINE[status], bulk.json(props), bulk.json({}), at, at)
        )
        published.append((pid, f"message.{status}", cid, {"message_id": mid, **props}))
    bulk.insert(
        "events",
        (
            "project_id",
            "customer_id",
            "type",
            "name",
            "properties",
            "context",
            "timestamp",
            "received_at",
        ),
        events,
    )
    jobs.publish(session, published)


def refresh_segments(
    session: Session, pairs: list[tuple[int, int | None]], names: list[str]
) -> None:
    """Have segments that use these email events re-evaluated for these customers."""
    by_project: dict[int, set[int]] = defaultdict(set)
    for pid, cid in pairs:
        if cid is not None:
            by_project[pid].add(cid)
    for pid, cids in by_project.items():
        jobs.enqueue(
            session,
            "segments.refresh",
            {
                "project_id": pid,
                "customer_ids": sorted(cids),
                "facets": [["event", n] for n in names],
            },
        )
