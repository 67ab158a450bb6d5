"""Delivery: claim due messages, render them, hand them to the provider, record what happened.

A batch is claimed under a lease in one short transaction and rendered after it commits. With
the outbox its outcomes are then written in one transaction. With SMTP each message's hand-over
is committed just before its body is transmitted (outcomes are written every few messages), so
a worker killed at any point neither loses a message nor sends one twice: a claimed message
that was never handed over goes back to the queue once the lease runs out, one that was is
recorded as sent (unconfirmed) and never sent again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from tidings import clock
from tidings.auth import service as projects
from tidings.db import Database
from tidings.db.bulk import Bulk, bulk_dt, chunks
from tidings.errors import AppError
from tidings.messaging import gateway, links, providers, record
from tidings.messaging import settings as email_settings
from tidings.messaging.models import EmailSettings
from tidings.templates import render
from tidings.templates import service as templates
from tidings.templates.models import Template

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
RECORD_EVERY = 50


def backoff(attempts: int) -> timedelta:
    """Wait before retry number `attempts`: 1, 2, 4, 8, ... minutes, at most 2 hours."""
    return timedelta(minutes=min(120, 2 ** max(0, attempts - 1)))


@dataclass(slots=True)
class Outgoing:
    """A claimed message, rendered and ready for the provider (or already decided)."""

    id: int
    project_id: int
    customer_id: int | None
    sender: str
    topic: str | None
    transactional: bool
    attempts: int
    to: str
    template_id: int | None
    subject: str = ""
    html: str = ""
    text: str = ""
    header_id: str = ""
    envelope: providers.Envelope | None = None  # headers; the MIME body is built when sent
    from_email: str = ""
    outcome: record.Outcome | None = None


_CLAIM_COLUMNS = (
    "id, project_id, customer_id, sender, topic, transactional, attempts, to_address, "
    "template_id, variables"
)


def _claim(
    session: Session, limit: int, now: datetime, claim: str, lease: timedelta
) -> list[tuple[Any, ...]]:
    bulk = Bulk(session)
    sql = (
        f"SELECT {_CLAIM_COLUMNS} FROM messages WHERE status IN ('queued', 'deferred') "  # noqa: S608
        f"AND send_after <= {{m}} ORDER BY send_after, id LIMIT {int(limit)}"
    )
    if bulk.postgres:
        sql += " FOR UPDATE SKIP LOCKED"
    rows = bulk.fetch(sql, (bulk.dt(now),))
    bulk.update(
        "messages",
        ("status", "attempts", "lease_until", "claimed_by", "updated_at"),
        "id",
        [("sending", r[6] + 1, bulk.dt(now + lease), claim, bulk.dt(now), r[0]) for r in rows],
    )
    return rows


def has_due(session: Session) -> bool:
    """True when some message is due for delivery or a delivering worker's lease ran out."""
    bulk = Bulk(session)
    now = bulk.dt(clock.now())
    return bool(
        bulk.fetch(
            "SELECT 1 FROM messages WHERE (status IN ('queued', 'deferred') AND send_after <= {m})"
            " OR (status = 'sending' AND lease_until < {m}) LIMIT 1",
            (now, now),
        )
    )


def recover(session: Session) -> int:
    """Messages whose worker died mid-batch: requeue the unsent, record the handed-over."""
    bulk = Bulk(session)
    now = clock.now()
    rows = bulk.fetch(
        "SELECT id, project_id, customer_id, sender, handed_at FROM messages "
        "WHERE status = 'sending' AND lease_until < {m}",
        (bulk.dt(now),),
    )
    if not rows:
        return 0
    outcomes: list[record.Outcome] = []
    for mid, pid, cid, sender, handed in rows:
        if handed is None:
            outcomes.append(
                # Its send_after is kept: it is due again at once.
                record.Outcome(
                    mid, pid, cid, sender, "deferred", "the worker stopped before sending"
                )
            )
        else:
            outcomes.append(
                record.Outcome(
                    mid,
                    pid,
                    cid,
                    sender,
                    "sent",
                    "the worker stopped after handing it to the server, before recording "
                    "the server's reply",
                )
            )
    record.apply(session, outcomes)
    return len(rows)


class _Context:
    """Per-batch caches: settings, project names, templates, customers."""

    def __init__(self, session: Session, db: Database) -> None:
        self.session, self.db = session, db
        self.settings: dict[int, EmailSettings] = {}
        self.names: dict[int, str] = {}
        self.templates: dict[int, Template | None] = {}

    def email_settings(self, project_id: int) -> EmailSettings:
        if project_id not in self.settings:
            self.settings[project_id] = email_settings.get(self.session, project_id=project_id)
            self.names[project_id] = projects.get_or_raise(self.session, project_id=project_id).name
        return self.settings[project_id]

    def template(self, project_id: int, template_id: int | None) -> Template | None:
        if template_id is None:
            return None
        if template_id not in self.templates:
            self.templates[template_id] = templates.get(
                self.session, project_id=project_id, template_id=template_id
            )
        return self.templates[template_id]


def customer_docs(session: Session, ids: list[int]) -> dict[int, dict[str, Any]]:
    bulk = Bulk(session)
    out: dict[int, dict[str, Any]] = {}
    for part in chunks(sorted(set(ids))):
        for cid, uid, email, name, traits, created in bulk.select_in(
            "SELECT id, user_id, email, name, traits, created_at FROM customers WHERE 1 = 1",
            "id",
            part,
        ):
            doc = dict(bulk.read_json(traits) or {})
            doc.update(id=cid, user_id=uid, email=email)
            if name:
                doc.setdefault("name", name)
            if "first_name" not in doc and name:
                doc["first_name"] = str(name).split(" ")[0]
            doc.setdefault("created_at", clock.isoformat(bulk.read_dt(created)))
            out[int(cid)] = doc
    return out


def _recipient(
    docs: dict[int, dict[str, Any]], customer_id: int | None, sender: str
) -> dict[str, Any] | None:
    if customer_id is not None:
        return docs.get(customer_id)
    # A test send for no one in particular looks like the editor's preview.
    return dict(templates.SAMPLE_CONTEXT["customer"]) if sender == "test" else None


def context_for(
    customer: dict[str, Any] | None,
    project_name: str,
    s: EmailSettings,
    link: links.Links,
    variables: dict[str, Any],
) -> dict[str, Any]:
    """What a template may read."""
    ctx: dict[str, Any] = {
        k: v for k, v in variables.items() if k not in ("customer", "project", "message")
    }
    ctx.setdefault("event", {})
    ctx.setdefault("data", {})
    ctx.update(
        customer=customer or {},
        project={"name": project_name, "address": s.address},
        unsubscribe_url=link.unsubscribe,
        preferences_url=link.preferences,
        message={"id": link.message_id},
    )
    return ctx


def sender_of(settings_from: str, s: EmailSettings) -> tuple[str | None, str]:
    """(display name, address) of the From: the project's settings, else TIDINGS_MAIL_FROM."""
    name, addr = providers.mailbox(settings_from)
    return (s.from_name or name), (s.from_email or addr)


def _prepare(ctx: _Context, rows: list[tuple[Any, ...]], now: datetime) -> list[Outgoing]:
    session, settings = ctx.session, ctx.db.settings
    bulk = Bulk(session)
    docs = customer_docs(session, [r[2] for r in rows if r[2] is not None])
    out: list[Outgoing] = []
    by_topic: dict[tuple[int, str], list[int]] = {}
    for r in rows:
        if not r[5] and r[2] is not None:
            by_topic.setdefault((r[1], r[4] or ""), []).append(r[2])
    opted: dict[tuple[int, int], str] = {}
    for (pid, topic), cids in by_topic.items():
        for cid, why in gateway.opted_out(bulk, pid, cids, topic).items():
            opted[(pid, cid)] = why
    blocked: dict[int, dict[str, str]] = {}
    for pid in {r[1] for r in rows}:
        blocked[pid] = gateway.suppressed(
            bulk, pid, [str(r[7]).lower() for r in rows if r[1] == pid and r[7]]
        )
    base = settings.base_url()
    for mid, pid, cid, sender, topic, transactional, attempts, to, tid, variables in rows:
        o = Outgoing(mid, pid, cid, sender, topic, bool(transactional), attempts + 1, to or "", tid)
        out.append(o)
        opted_out = opted.get((pid, cid)) if cid is not None else None
        if opted_out:
            o.outcome = o_outcome(o, "skipped", f"unsubscribed from {opted_out} before sending")
            continue
        if to and to.lower() in blocked[pid]:
            o.outcome = o_outcome(o, "skipped", f"address suppressed ({blocked[pid][to.lower()]})")
            continue
        s = ctx.email_settings(pid)
        template = ctx.template(pid, tid)
        if template is None:
            o.outcome = o_outcome(o, "failed", "the template was deleted")
            continue
        link = links.Links(base, s.link_secret, mid)
        values = bulk.read_json(variables) or {}
        try:
            rendered = render.render(
                templates.parts(template),
                context_for(_recipient(docs, cid, sender), ctx.names[pid], s, link, values),
                key=(template.id, template.version),
            )
        except AppError as exc:
            o.outcome = o_outcome(o, "failed", exc.message)
            continue
        o.subject, o.text = rendered.subject, rendered.text
        o.html = links.track(
            rendered.html,
            link,
            clicks=s.track_clicks and sender != "test",
            opens=s.track_opens and sender != "test",
        )
        from_name, from_email = sender_of(settings.mail_from, s)
        o.from_email = from_email
        o.header_id = f"<{mid}.{secrets.token_hex(8)}@{providers.domain_of(from_email)}>"
        marketing = not transactional
        o.envelope = providers.Envelope(
            from_name=from_name,
            from_email=from_email,
            to=o.to,
            reply_to=s.reply_to,
            subject=o.subject,
            header_id=o.header_id,
            unsubscribe_url=link.unsubscribe if marketing else None,
            unsubscribe_mailto=(
                f"mailto:unsubscribe@{providers.domain_of(from_email)}"
                f"?subject=unsubscribe%20{links.token(s.link_secret, 'u', mid)}"
                if marketing
                else None
            ),
            message_id=mid,
        )
    return out


def o_outcome(o: Outgoing, status: str, reason: str | None) -> record.Outcome:
    return record.Outcome(o.id, o.project_id, o.customer_id, o.sender, status, reason)


def _sent(o: Outgoing, provider: str, *, content: bool = True) -> record.Outcome:
    out = o_outcome(o, "sent", None)
    if content:
        out.content = (o.subject, o.html, o.text, o.header_id)
    out.provider = provider
    return out


def _failure(o: Outgoing, exc: providers.DeliveryError, now: datetime) -> record.Outcome:
    if exc.transient and o.attempts < MAX_ATTEMPTS:
        wait = backoff(o.attempts)
        return record.Outcome(
            o.id,
            o.project_id,
            o.customer_id,
            o.sender,
            "deferred",
            f"retrying in {int(wait.total_seconds() // 60)} min after: {exc.detail}",
            now + wait,
        )
    if exc.recipient and exc.code >= 500:
        out = o_outcome(o, "bounced", exc.detail)
        out.suppress = (o.to, "hard_bounce")
        return out
    return o_outcome(o, "failed", exc.detail)


def deliver_due(db: Database, *, limit: int | None = None) -> int:
    """Deliver one batch of due messages; returns how many were handled."""
    settings = db.settings
    limit = limit or settings.send_batch
    provider = providers.for_thread(settings.smtp_url, timeout=settings.smtp_timeout)
    now = clock.now()
    claim = secrets.token_hex(8)
    lease = timedelta(seconds=settings.send_lease_seconds)
    with db.session(write=True) as session:
        handled = recover(session)
        rows = _claim(session, limit, now, claim, lease)
    if not rows:
        return handled
    # Rendering reads only: it runs after the claim is committed, so other workers can claim
    # their own batches meanwhile (SQLite has one writer at a time).
    with db.session() as session:
        batch = _prepare(_Context(session, db), rows, now)
    if isinstance(provider, providers.Outbox):
        with db.session(write=True) as session:
            record.apply(
                session, [o.outcome or _sent(o, provider.name) for o in batch], claim=claim
            )
            _refresh_segments(session, batch)
        return handled + len(batch)
    _deliver_smtp(db, provider, batch, claim, lease)
    return handled + len(batch)


HANDOVER = (
    "UPDATE messages SET handed_at = {m}, header_id = {m}, subject = {m}, html = {m}, "
    "text = {m} WHERE id = {m} AND claimed_by = {m} AND status = 'sending' RETURNING id"
)
RENEW = "UPDATE messages SET lease_until = {m} WHERE id = {m} AND claimed_by = {m}"


class LostClaim(Exception):
    """Another worker took the message over (this batch outlived its lease): do not send it."""


def _deliver_smtp(
    db: Database, provider: providers.Provider, batch: list[Outgoing], claim: str, lease: timedelta
) -> None:
    pending: list[record.Outcome] = []
    renew_at = [clock.now() + lease / 2]
    postgres = db.engine.dialect.name == "postgresql"
    handover_sql, renew_sql = (q.format(m="%s" if postgres else "?") for q in (HANDOVER, RENEW))
    dt = bulk_dt(postgres)

    def flush() -> None:
        with db.session(write=True) as session:
            record.apply(session, pending, claim=claim)
        pending.clear()

    # One connection for the batch's hand-overs, each its own short transaction on the bare
    # driver connection: this runs once per email.
    with db.write_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()

        def transact(params: tuple[Any, ...], renew: list[tuple[Any, ...]]) -> bool:
            try:
                if not postgres:
                    cur.execute("BEGIN IMMEDIATE")
                cur.execute(handover_sql, params)
                held = cur.fetchone() is not None
                if renew:
                    cur.executemany(renew_sql, renew)
                if postgres:
                    raw.commit()
                else:
                    cur.execute("COMMIT")
            except BaseException:
                raw.rollback()
                raise
            return held

        def commit(handing: Outgoing) -> Callable[[], None]:
            def run() -> None:
                # Outcomes ride along now and then; the hand-over is what must be committed
                # before each body leaves (a crash before an outcome is recorded leaves the
                # message handed over, which recovery records as sent).
                if len(pending) >= RECORD_EVERY:
                    flush()
                now = clock.now()
                renew: list[tuple[Any, ...]] = []
                if now >= renew_at[0]:  # a slow batch keeps its lease
                    renew = [(dt(now + lease), o.id, claim) for o in batch]
                    renew_at[0] = now + lease / 2
                # What leaves is logged with the hand-over, so a crash before the outcome is
                # recorded still leaves the Message-ID and content of what the server got.
                params = (
                    dt(now),
                    handing.header_id,
                    handing.subject,
                    handing.html,
                    handing.text,
                    handing.id,
                    claim,
                )
                if not transact(params, renew):
                    raise LostClaim(f"message {handing.id} was taken over by another worker")

            return run

        for i, o in enumerate(batch):
            if o.outcome is not None or o.envelope is None:
                pending.append(o.outcome or o_outcome(o, "failed", "nothing to send"))
                continue
            try:
                provider.deliver(
                    sender=o.from_email,
                    recipient=o.to,
                    build=partial(providers.build, o.envelope, html=o.html, text=o.text),
                    handover=commit(o),
                )
                # The content went with the hand-over: the outcome only sets the status.
                pending.append(_sent(o, provider.name, content=False))
            except LostClaim:
                log.warning("delivery lease lost; leaving the message to its new worker")
                continue
            except providers.AmbiguousDelivery as exc:
                out = _sent(o, provider.name, content=False)
                out.reason = f"unconfirmed: {exc}"
                pending.append(out)
            except providers.DeliveryError as exc:
                pending.append(_failure(o, exc, clock.now()))
                if exc.transient and exc.code == 0:
                    # The server is unreachable: the rest of the batch waits too.
                    now = clock.now()
                    for rest in batch[i + 1 :]:
                        pending.append(
                            rest.outcome
                            or record.Outcome(
                                rest.id,
                                rest.project_id,
                                rest.customer_id,
                                rest.sender,
                                "deferred",
                                f"retrying after: {exc.detail}",
                                now + backoff(rest.attempts),
                            )
                        )
                    break
    with db.session(write=True) as session:
        record.apply(session, pending, claim=claim)
        _refresh_segments(session, batch)


def _refresh_segments(session: Session, batch: list[Outgoing]) -> None:
    record.refresh_segments(
        session,
        [(o.project_id, o.customer_id) for o in batch if o.customer_id and o.sender != "test"],
        [record.TIMELINE["sent"], record.TIMELINE["bounced"]],
    )
