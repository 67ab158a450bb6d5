"""The processor: takes acknowledged requests from the inbox and applies their messages.

One process at a time holds the `ingest` lease, so messages are applied in the order they were
received and never twice. A chunk (a few thousand messages) is applied in one transaction: every
message gets a row in the message log (accepted, dropped, rejected or failed, with the reason),
which is also the messageId dedup index. On SQLite the inbox is a separate file: its rows are
deleted after the main commit, and a crash in between only replays messages the log already
holds, which dedup then skips.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tidings import clock
from tidings.auth.models import Project
from tidings.customers.batch import Dropped, Policy, Profile, ProfileBatch
from tidings.customers.traits import looks_like_email, normalize_traits, parse_money
from tidings.db import Database, table_of
from tidings.db.bulk import Bulk, chunks
from tidings.db.engine import is_postgres
from tidings.db.upsert import upsert
from tidings.ingest.log import redact_customer
from tidings.ingest.models import InboxItem, IngestStats, Lease
from tidings.ingest.wire import (
    InvalidMessage,
    Message,
    fallback_message_id,
    merge_batch_defaults,
    normalize,
)
from tidings.segments import membership, upkeep
from tidings.segments.evaluate import EventRow, Facts
from tidings.segments.membership import EVERYTHING

log = logging.getLogger(__name__)

LEASE_NAME = "ingest"
LEASE_SECONDS = 30
# The message log's columns as the processor writes them, with their PostgreSQL types.
_LOG = (
    ("project_id", "int4"),
    ("message_id", "varchar"),
    ("type", "varchar"),
    ("status", "varchar"),
    ("reason", "text"),
    ("user_id", "varchar"),
    ("anonymous_id", "varchar"),
    ("event", "varchar"),
    ("customer_id", "int8"),
    ("received_at", "timestamp"),
    ("processed_at", "timestamp"),
    ("raw", "jsonb"),
)
CHARGE_EVENTS = frozenset({"Order Completed", "Completed Order"})
KEPT_EVENTS = CHARGE_EVENTS  # kept on the timeline even when they make a charge


def worker_name() -> str:
    """host:pid, the holder name of leases and jobs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class Entry:
    """One message of a chunk, before and after it is applied."""

    project_id: int
    message_id: str
    received_at: datetime
    raw: dict[str, Any]
    message: Message | None = None
    normalized: bool = False  # `message` (or the rejection) already set from `raw`
    status: str = "accepted"
    reason: str | None = None
    profile: Profile | None = None
    # What the message changed, for segment upkeep: ("trait", key), ("event", name), ...
    facets: set[tuple[str, ...]] = field(default_factory=set)


@dataclass(slots=True)
class Chunk:
    inbox_ids: list[int] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)


# -- reading the inbox ------------------------------------------------------------------------


def read_chunk(db: Database, *, limit: int, after: int | None = None) -> Chunk:
    """The oldest inbox rows (or the oldest after id `after`), split into messages, up to
    about `limit` messages.

    Rows are read a page at a time (a batch row holds many messages, a single-message request
    one), so a chunk is about `limit` messages whatever the mix, without fetching bodies that
    will not fit.
    """
    chunk = Chunk()
    table = table_of(InboxItem)
    columns = (
        table.c.id,
        table.c.project_id,
        table.c.kind,
        table.c.body,
        table.c.received_at,
        table.c.ip,
        table.c.token,
    )
    page = 16
    with db.inbox_engine.connect() as conn:
        while True:
            stmt = select(*columns).order_by(table.c.id).limit(page)
            start = chunk.inbox_ids[-1] if chunk.inbox_ids else after
            if start is not None:
                stmt = stmt.where(table.c.id > start)
            rows = conn.execute(stmt).all()
            for row in rows:
                chunk.inbox_ids.append(row.id)
                chunk.entries.extend(
                    split_body(
                        row.token, row.project_id, row.kind, row.body, row.received_at, row.ip
                    )
                )
                if len(chunk.entries) >= limit:
                    return chunk
            if len(rows) < page:
                return chunk
            page = min(256, page * 4)


def _oldest_id(db: Database) -> int | None:
    table = table_of(InboxItem)
    with db.inbox_engine.connect() as conn:
        return conn.execute(select(func.min(table.c.id))).scalar()


def _read_ahead(db: Database, limit: int, after: int) -> Chunk:
    chunk = read_chunk(db, limit=limit, after=after)
    for e in chunk.entries:
        _normalize(e)
    return chunk


class InboxReader:
    """Reads the inbox a chunk at a time. On PostgreSQL it reads the next chunk in the
    background while the caller applies the current one, so reading and parsing the bodies
    overlap the time the processor waits for the server. (SQLite runs inside the process:
    there is no such wait to fill, and reading ahead measured no faster.)

    A chunk read ahead is used only if it still starts at the inbox's oldest row once the
    chunk before it is done: a request that committed late with a lower id, or rows another
    process took over, make the reader read afresh from the oldest row.
    """

    def __init__(self, db: Database, *, limit: int) -> None:
        self.db = db
        self.limit = limit
        self.ahead = is_postgres(db.engine)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: Future[Chunk] | None = None

    def next(self) -> Chunk:
        """The oldest unprocessed chunk (empty when the inbox is)."""
        chunk = self._take_ahead()
        if chunk is None:
            chunk = read_chunk(self.db, limit=self.limit)
        if chunk.inbox_ids and self.ahead:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-inbox")
            self._ahead = self._pool.submit(_read_ahead, self.db, self.limit, chunk.inbox_ids[-1])
        return chunk

    def _take_ahead(self) -> Chunk | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        try:
            chunk = ahead.result()
        except Exception:
            log.exception("reading the inbox ahead failed; reading it again")
            return None
        if not chunk.inbox_ids or _oldest_id(self.db) != chunk.inbox_ids[0]:
            return None
        return chunk

    def close(self) -> None:
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def split_body(
    token: str, project_id: int, kind: str, body: bytes, received_at: datetime, ip: str | None
) -> list[Entry]:
    """The messages of one stored request body, with batch defaults merged into each."""
    payload = orjson.loads(body)
    if b"\\u0000" in body:
        payload = _without_nul(payload)
    default_type: str | None = None
    if kind == "batch":
        items = payload.get("batch", [])
        envelope = payload
    elif kind == "webhook":
        items = payload if isinstance(payload, list) else [payload]
        envelope = {}
    else:
        items = [payload]
        envelope = {}
        default_type = kind
    entries = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            item = merge_batch_defaults(item, envelope)
            item.pop("writeKey", None)
            if default_type and not item.get("type"):
                item["type"] = default_type
            if ip and isinstance(item.get("context"), dict) and "ip" not in item["context"]:
                item["context"]["ip"] = ip
            mid = item.get("messageId")
            message_id = mid[:100] if isinstance(mid, str) and mid else None
        else:
            item, message_id = {"value": item}, None
        entries.append(
            Entry(
                project_id=project_id,
                message_id=message_id or fallback_message_id(token, index),
                received_at=received_at,
                raw=item,
            )
        )
    return entries


def _without_nul(value: Any) -> Any:
    """`value` with every U+0000 in its strings and keys replaced by U+FFFD: JSON may carry it,
    PostgreSQL's text and jsonb refuse it, and one such message would fail its whole chunk."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


# -- applying ---------------------------------------------------------------------------------


def _email_of(msg: Message, traits: dict[str, Any]) -> str | None:
    email = traits.get("email")
    if isinstance(email, str) and email:
        return email
    if msg.user_id is not None and looks_like_email(msg.user_id):
        return msg.user_id.lower()
    return None


def _profile_traits(msg: Message) -> dict[str, Any]:
    """Traits a message carries for the profile: context.traits, then identify traits."""
    ctx_traits = msg.context.get("traits")
    merged: dict[str, Any] = dict(ctx_traits) if isinstance(ctx_traits, dict) else {}
    if msg.type == "identify":
        merged.update(msg.traits)
    return normalize_traits(merged) if merged else merged


def apply(batch: ProfileBatch, entry: Entry) -> None:
    """Apply one normalised message to the batch; sets entry.status/reason/profile."""
    msg = entry.message
    assert msg is not None
    at = msg.timestamp
    active = msg.context.get("active") is not False
    if msg.type == "alias":
        assert msg.previous_id is not None
        assert msg.user_id is not None
        entry.profile = batch.alias(user_id=msg.user_id, previous_id=msg.previous_id, at=at)
        entry.facets.add((EVERYTHING,))
        return
    traits = _profile_traits(msg)
    email = _email_of(msg, traits)
    if msg.type == "delete":
        found = batch.find(user_id=msg.user_id, email=None, anonymous_id=msg.anonymous_id)
        if found is None:
            entry.reason = "no such customer: nothing to delete"
        else:
            batch.erase(found)
        return
    creates = "event" if msg.type in ("track", "page", "screen") else "profile"
    p = batch.resolve(
        user_id=msg.user_id, email=email, anonymous_id=msg.anonymous_id, at=at, creates=creates
    )
    entry.profile = p
    if email is not None and "email" not in traits and p.traits.get("email") is None:
        traits["email"] = email
    if traits:
        changed = batch.set_traits(p, traits, msg.received_at)
        entry.facets.update(("trait", k) for k in changed)
    p.touch(at, active=active)
    if msg.type == "identify":
        _engage_traits(batch, p, msg, entry)
    elif msg.type == "group":
        assert msg.group_id is not None
        group_traits = normalize_traits(msg.traits)
        batch.link_group(p, msg.group_id, group_traits, at)
        entry.facets.add(("group",))
        if group_traits:
            # The group's traits changed for every member, not only for this customer.
            entry.facets.add(("group_id", msg.group_id))
    else:
        _timeline(batch, p, msg, entry)


def _engage_traits(batch: ProfileBatch, p: Profile, msg: Message, entry: Entry) -> None:
    personas = msg.context.get("personas")
    if not isinstance(personas, dict) or personas.get("computation_class") != "audience":
        return
    key = personas.get("computation_key")
    if isinstance(key, str) and isinstance(msg.traits.get(key), bool):
        batch.set_audience(p, key, msg.traits[key], msg.timestamp)
        entry.facets.add(("audience", key))


def _timeline(batch: ProfileBatch, p: Profile, msg: Message, entry: Entry) -> None:
    row = {
        "type": msg.type,
        "name": msg.event if msg.type == "track" else msg.name,
        "properties": msg.properties,
        "context": msg.context,
        "timestamp": msg.timestamp,
        "received_at": msg.received_at,
        "message_id": msg.message_id,
    }
    if msg.type == "track":
        assert msg.event is not None
        if msg.event in ("Audience Entered", "Audience Exited"):
            key = msg.properties.get("audience_key")
            if isinstance(key, str) and key:
                batch.set_audience(p, key, msg.event == "Audience Entered", msg.timestamp)
                entry.facets.add(("audience", key))
        if batch.policy.revenue_as_charge:
            amount = parse_money(msg.properties.get("revenue"))
            if amount is None and msg.event in CHARGE_EVENTS:
                amount = parse_money(msg.properties.get("total"))
            if amount is not None:
                currency = msg.properties.get("currency")
                cur = (
                    currency.strip().upper()[:3]
                    if isinstance(currency, str) and currency
                    else "USD"
                )
                batch.add_charge(p, amount, cur, row)
                entry.facets.add(("revenue",))
                if msg.event not in KEPT_EVENTS:
                    return
    batch.add_event(p, row)
    if msg.type == "track":
        entry.facets.add(("event", msg.event or ""))
    elif msg.type == "page":
        entry.facets.add(("page",))


# -- one chunk --------------------------------------------------------------------------------


def _normalize(e: Entry) -> None:
    try:
        e.message = normalize(
            e.raw, default_type=None, received_at=e.received_at, message_id=e.message_id
        )
    except InvalidMessage as exc:
        e.status, e.reason = "rejected", str(exc)
    e.normalized = True


def _policies(session: Session, project_ids: Iterable[int]) -> dict[int, Policy]:
    rows = session.execute(
        select(
            Project.id,
            Project.require_email_to_create,
            Project.require_user_id,
            Project.unknown_user_track,
            Project.revenue_as_charge,
        ).where(Project.id.in_(list(project_ids)))
    )
    return {
        r.id: Policy(
            require_email_to_create=r.require_email_to_create,
            require_user_id=r.require_user_id,
            unknown_user_track=r.unknown_user_track,
            revenue_as_charge=r.revenue_as_charge,
        )
        for r in rows
    }


def _known_ids(session: Session, project_id: int, message_ids: Sequence[str]) -> set[str]:
    """Which of these message ids the project's message log already holds."""
    bulk = Bulk(session)
    sql = "SELECT message_id FROM ingest_messages WHERE project_id = {m}"
    return {
        row[0]
        for part in chunks(message_ids)
        for row in bulk.select_in(sql, "message_id", part, (project_id,), probe=True)
    }


def apply_entries(
    session: Session,
    entries: list[Entry],
    *,
    deferred: list[upkeep.Work] | None = None,
    loaded: Callable[[], None] | None = None,
) -> dict[int, dict[str, int]]:
    """Apply a list of entries (any projects) inside the caller's transaction; returns counts.

    Segment upkeep runs inside the transaction too, unless the caller passes `deferred`: it
    then gets the upkeep to run once the transaction commits (`upkeep.Upkeep`), which the
    transaction queues. `loaded` is called once the transaction holds its customers."""
    by_project: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        by_project[e.project_id].append(e)
    policies = _policies(session, by_project)
    counts: dict[int, dict[str, int]] = {}
    now = clock.now()
    for pid, group in by_project.items():
        policy = policies.get(pid)
        if policy is None:
            continue  # the project was deleted after the request was acknowledged
        counts[pid] = _apply_project(session, pid, policy, group, now, deferred, loaded)
    return counts


def _apply_project(
    session: Session,
    pid: int,
    policy: Policy,
    group: list[Entry],
    now: datetime,
    deferred: list[upkeep.Work] | None,
    loaded: Callable[[], None] | None,
) -> dict[str, int]:
    counts = {"accepted": 0, "dropped": 0, "rejected": 0, "failed": 0, "duplicate": 0}
    known = _known_ids(session, pid, [e.message_id for e in group])
    fresh: list[Entry] = []
    for e in group:
        if e.message_id in known:
            counts["duplicate"] += 1
            continue
        known.add(e.message_id)
        if not e.normalized:
            _normalize(e)
        fresh.append(e)
    batch = ProfileBatch(pid, policy)
    batch.load(session, **_identifiers(fresh))
    if loaded is not None:
        loaded()
    known_before = {id(p) for p in batch.profiles}
    for e in fresh:
        if e.message is None:
            continue
        try:
            apply(batch, e)
        except Dropped as exc:
            e.status, e.reason = "dropped", str(exc)
        except Exception as exc:  # one bad message must not stop the rest
            log.exception("message failed", extra={"project": pid, "message_id": e.message_id})
            e.status, e.reason = "failed", f"{type(exc).__name__}: {exc}"
    batch.flush(session)
    membership.forget(
        session, pid, sorted({*batch.rows.deletes, *(src for src, _ in batch.rows.merges)})
    )
    _refresh_segments(session, pid, batch, fresh, known_before, deferred)
    if batch.rows.deletes:
        redact_customer(session, project_id=pid, customer_ids=batch.rows.deletes)
    _write_log(session, pid, fresh, now)
    for e in fresh:
        counts[e.status] += 1
    upsert(
        session,
        table_of(IngestStats),
        [{"project_id": pid, **counts}],
        keys=("project_id",),
        set_=lambda ex: {k: getattr(table_of(IngestStats).c, k) + getattr(ex, k) for k in counts},
    )
    return counts


def _refresh_segments(
    session: Session,
    pid: int,
    batch: ProfileBatch,
    entries: list[Entry],
    known: set[int],
    deferred: list[upkeep.Work] | None,
) -> None:
    """Update the segment memberships the chunk's changes can affect (or queue the update,
    into `deferred`)."""
    segments = membership.live_segments(session, pid)
    if not segments:
        return
    changed: dict[int, set[Any]] = defaultdict(set)
    live: dict[int, Profile] = {}
    stored: set[int] = set()  # customers with a history before this chunk
    for p in batch.profiles:
        f = p.final()
        if f.deleted or f.id is None:
            continue
        live[f.id] = f
        if id(p) in known:
            stored.add(f.id)
        if id(p) not in known or p.merged_into is not None:
            changed[f.id].add(EVERYTHING)  # new, or merged into another: everything may differ
    group_ids: set[str] = set()
    for e in entries:
        if e.profile is None or not e.facets:
            continue
        f = e.profile.final()
        if f.deleted or f.id is None:
            continue
        for facet in e.facets:
            if facet[0] == "group_id":
                group_ids.add(facet[1])
            else:
                changed[f.id].add(EVERYTHING if facet == (EVERYTHING,) else facet)
    for cid in _group_members(session, pid, group_ids):
        changed[cid].add(("group",))
    base = {
        cid: Facts(
            id=cid,
            traits=p.traits,
            audiences=p.audiences,
            ltv_units=p.ltv_units,
            charge_count=p.charge_count,
            last_charge_at=p.last_charge_at,
        )
        for cid, p in live.items()
        if cid in changed
    }
    # The chunk's new events: a stored customer's behind its event facets (segments only see
    # an event their conditions count); a customer this chunk created has no history but the
    # chunk's, so its events are all here (unless upkeep runs beside the processor, which
    # reads every customer's events once it holds the customer).
    events: dict[int, membership.NewEvents] = defaultdict(dict)
    for p, raw in batch.rows.events:
        kind = raw["type"]
        f = p.final()
        if kind not in ("track", "page") or f.deleted or f.id is None:
            continue
        row = EventRow(raw["timestamp"], raw["name"], raw["properties"], raw["context"])
        if f.id in stored:
            facet = ("event", raw["name"] or "") if kind == "track" else ("page",)
            events[f.id].setdefault(facet, []).append(row)
        elif deferred is None:
            key = (kind, raw["name"] if kind == "track" else None)
            base[f.id].events.setdefault(key, []).append(row)
    for cid, facts in base.items():
        facts.fresh = cid not in stored
    if deferred is not None:
        if changed:
            ids = sorted(changed)
            queued = upkeep.queue(session, pid, ids)
            versions = membership.row_versions(session, pid, sorted(base))
            deferred.append(upkeep.Work(pid, changed, base, events, queued, versions))
        return
    membership.refresh(
        session, project_id=pid, changed=changed, base=base, events=events, segments=segments
    )


def _group_members(session: Session, pid: int, group_ids: set[str]) -> list[int]:
    if not group_ids:
        return []
    bulk = Bulk(session)
    sql = (
        "SELECT cg.customer_id FROM customer_groups cg JOIN groups g ON g.id = cg.group_pk "
        "WHERE g.project_id = {m}"
    )
    return [
        r[0]
        for part in chunks(sorted(group_ids))
        for r in bulk.select_in(sql, "g.group_id", part, (pid,))
    ]


def _identifiers(entries: list[Entry]) -> dict[str, set[str]]:
    user_ids: set[str] = set()
    emails: set[str] = set()
    aliases: set[str] = set()
    group_ids: set[str] = set()
    for e in entries:
        m = e.message
        if m is None:
            continue
        if m.user_id is not None:
            user_ids.add(m.user_id)
            aliases.add(m.user_id)
            if looks_like_email(m.user_id):
                emails.add(m.user_id.lower())
        if m.anonymous_id is not None:
            aliases.add(m.anonymous_id)
        if m.previous_id is not None:
            user_ids.add(m.previous_id)
            aliases.add(m.previous_id)
        if m.group_id is not None:
            group_ids.add(m.group_id)
        for source in (m.traits if m.type == "identify" else None, m.context.get("traits")):
            if isinstance(source, dict) and isinstance(source.get("email"), str):
                emails.add(source["email"].strip().lower())
    return {"user_ids": user_ids, "emails": emails, "aliases": aliases, "group_ids": group_ids}


def _write_log(session: Session, pid: int, entries: list[Entry], now: datetime) -> None:
    bulk = Bulk(session)
    processed_at = bulk.dt(now)
    rows = []
    for e in entries:
        m = e.message
        live = e.profile.final() if e.profile is not None else None
        raw = e.raw
        kind = m.type if m else raw.get("type")
        user_id, anonymous_id = (m.user_id, m.anonymous_id) if m else (None, None)
        if live is not None and live.deleted and kind != "delete":
            # Erased later in this same chunk: keep the row for dedup, not the data.
            raw, user_id, anonymous_id = {"redacted": True}, None, None
        rows.append(
            (
                pid,
                e.message_id,
                kind[:16] if isinstance(kind, str) else None,  # as the column holds it
                e.status,
                e.reason,
                user_id,
                anonymous_id,
                (m.event or m.name) if m else None,
                live.id if live is not None and not live.deleted else None,
                bulk.dt(e.received_at),
                processed_at,
                bulk.json(raw),
            )
        )
    bulk.insert("ingest_messages", [c for c, _ in _LOG], rows, types=[t for _, t in _LOG])


def process_chunk(
    db: Database, chunk: Chunk, segment_upkeep: upkeep.Upkeep | None = None
) -> dict[int, dict[str, int]]:
    """Apply one chunk and remove its rows from the inbox. Given `segment_upkeep`, the
    chunk's segment upkeep runs there once the chunk commits."""
    deferred: list[upkeep.Work] | None = None if segment_upkeep is None else []
    try:
        with db.session(write=True) as session:
            counts = apply_entries(
                session,
                chunk.entries,
                deferred=deferred,
                loaded=None if segment_upkeep is None else segment_upkeep.start,
            )
            if not db.separate_inbox:
                _delete_inbox(session, chunk.inbox_ids)
    except Exception as exc:
        if transient(exc):
            raise  # the chunk stays in the inbox and is applied whole again
        log.exception("chunk failed; applying its messages one by one")
        if segment_upkeep is not None:
            segment_upkeep.wait()  # its customers are evaluated inside each message's transaction
        counts = _process_one_by_one(db, chunk)
        if not db.separate_inbox:
            with db.session(write=True) as session:
                _delete_inbox(session, chunk.inbox_ids)
    else:
        if segment_upkeep is not None and deferred:
            segment_upkeep.submit(deferred)
    if db.separate_inbox:
        with db.inbox_write_engine.begin() as conn:
            table = table_of(InboxItem)
            for start in range(0, len(chunk.inbox_ids), 500):
                conn.execute(
                    delete(table).where(table.c.id.in_(chunk.inbox_ids[start : start + 500]))
                )
    return counts


def _delete_inbox(session: Session, ids: list[int]) -> None:
    table = table_of(InboxItem)
    for start in range(0, len(ids), 500):
        session.execute(delete(table).where(table.c.id.in_(ids[start : start + 500])))


def _process_one_by_one(db: Database, chunk: Chunk) -> dict[int, dict[str, int]]:
    """Isolate a poison message: each in its own transaction; one that breaks is `failed`."""
    totals: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in chunk.entries:
        e.normalized = False  # from the raw message again, whatever the failed attempt did
        try:
            with db.session(write=True) as session:
                counts = apply_entries(session, [e])
        except Exception as exc:
            if transient(exc):
                raise  # nothing to do with the message: the chunk stays in the inbox
            log.exception("message failed", extra={"message_id": e.message_id})
            e.status, e.reason, e.profile, e.message = (
                "failed",
                f"{type(exc).__name__}: {exc}",
                None,
                None,
            )
            counts = _log_failure(db, e)
        for pid, c in counts.items():
            for k, v in c.items():
                totals[pid][k] += v
    return {pid: dict(c) for pid, c in totals.items()}


def transient(exc: BaseException) -> bool:
    """Whether an error says nothing about the data: the database was busy or locked,
    unreachable or restarting, out of resources, or broke a deadlock. The work is retried later
    rather than any message being marked failed for it."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state:
        # Connection exception, transaction rollback (deadlock, serialization), insufficient
        # resources, operator intervention (shutdown).
        return state[:2] in ("08", "40", "53", "57") or state == "55P03"  # lock_timeout
    name = getattr(orig, "sqlite_errorname", "")
    return isinstance(name, str) and name.startswith(
        ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL")
    )


def _log_failure(db: Database, e: Entry) -> dict[int, dict[str, int]]:
    """Log a failed message. Should the database refuse even that row (a value it cannot
    store), the message is logged with its reason in ASCII and its raw JSON as escaped text:
    it is kept, and the inbox moves on instead of retrying the chunk forever. A transient
    error, or a refusal of that row too, is raised: the chunk stays in the inbox for a retry."""
    try:
        return _write_failure(db, e)
    except Exception as exc:
        if transient(exc):
            raise
        log.exception("the log refused a failed message", extra={"message_id": e.message_id})
    e.raw = {"unstored": json.dumps(e.raw, ensure_ascii=True, default=repr)}
    e.reason = (
        (e.reason or "").replace("\x00", "\\x00").encode("ascii", "backslashreplace").decode()
    )
    return _write_failure(db, e)


def _write_failure(db: Database, e: Entry) -> dict[int, dict[str, int]]:
    with db.session(write=True) as session:
        if _known_ids(session, e.project_id, [e.message_id]):
            return {}
        _write_log(session, e.project_id, [e], clock.now())
        return {e.project_id: {"failed": 1}}


# -- the lease and the loop -------------------------------------------------------------------


def acquire_lease(db: Database, holder: str) -> bool:
    """Take or renew the processor lease; False when another live process holds it."""
    now = clock.now()
    table = table_of(Lease)
    with db.session(write=True) as session:
        upsert(
            session,
            table,
            [{"name": LEASE_NAME, "holder": None, "expires_at": None}],
            keys=("name",),
        )
        result = session.execute(
            update(table)
            .where(table.c.name == LEASE_NAME)
            .where(
                (table.c.holder == holder) | (table.c.holder.is_(None)) | (table.c.expires_at < now)
            )
            .values(holder=holder, expires_at=now + timedelta(seconds=LEASE_SECONDS))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def release_lease(db: Database, holder: str) -> None:
    table = table_of(Lease)
    with db.session(write=True) as session:
        session.execute(
            update(table)
            .where(table.c.name == LEASE_NAME, table.c.holder == holder)
            .values(holder=None, expires_at=None)
        )


def drain(
    db: Database,
    *,
    chunk_size: int,
    max_chunks: int | None = None,
    reader: InboxReader | None = None,
    segment_upkeep: upkeep.Upkeep | None = None,
) -> int:
    """Process inbox chunks until it is empty (or max_chunks); returns messages handled.
    A caller that drains again and again passes its own `reader`, which keeps reading ahead
    between calls, and on PostgreSQL its own segment upkeep (`upkeep.Upkeep`), which it waits
    for when it pauses; otherwise the drain waits for its upkeep before it returns."""
    own = reader is None
    if reader is None:
        reader = InboxReader(db, limit=chunk_size)
    own_upkeep = segment_upkeep is None and is_postgres(db.engine)
    if own_upkeep:
        segment_upkeep = upkeep.Upkeep(db)
    handled = 0
    done = 0
    try:
        while max_chunks is None or done < max_chunks:
            chunk = reader.next()
            if not chunk.inbox_ids:
                break
            process_chunk(db, chunk, segment_upkeep)
            handled += len(chunk.entries)
            done += 1
    finally:
        if own:
            reader.close()
        if own_upkeep and segment_upkeep is not None:
            segment_upkeep.close()
    return handled
