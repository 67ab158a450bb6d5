"""Applying many profile changes at once: the working set behind the ingestion processor.

A ProfileBatch loads every customer a chunk of messages can touch in a few queries, applies the
messages in order in memory (identity resolution, merges, traits, events, charges, groups,
audiences), then writes everything back with bulk statements. Only the caller commits.

Identity rules (DESIGN.md): find by userId, else by email, else by a known anonymousId, else
create (when the project's identity policy allows). A message carrying an anonymousId known for
another, anonymous profile merges that profile into the identified one; the identified side's
traits win. Retired ids (an alias's previousId) keep pointing at the surviving profile.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.orm import Session

from tidings import clock
from tidings.clock import isoformat
from tidings.customers.models import (
    MONEY_UNIT,
    AnonymousId,
    Customer,
    CustomerGroup,
    Event,
    EventCatalog,
    Group,
    TraitCatalog,
)
from tidings.customers.traits import infer_type
from tidings.db import table_of
from tidings.db.bulk import Bulk, chunks
from tidings.db.upsert import upsert

_MISSING = object()


# The JSON columns come as text, for orjson (`Bulk.read_json`): psycopg decodes jsonb with the
# standard library's json, several times slower on a chunk's customers.
_PROFILE_SQL = (
    "SELECT id, user_id, email, name, CAST(traits AS TEXT), CAST(audiences AS TEXT), "
    "lifetime_value_units, CAST(revenue_by_currency AS TEXT), charge_count, last_charge_at, "
    "first_seen, last_seen, created_at FROM customers WHERE project_id = {m}"
)
# Columns written for every new or changed customer, in this order, with their PostgreSQL
# types (for set-based updates).
_WRITTEN = (
    ("user_id", "text"),
    ("email", "text"),
    ("name", "text"),
    ("traits", "jsonb"),
    ("audiences", "jsonb"),
    ("lifetime_value_units", "bigint"),
    ("revenue_by_currency", "jsonb"),
    ("charge_count", "integer"),
    ("last_charge_at", "timestamp"),
    ("first_seen", "timestamp"),
    ("last_seen", "timestamp"),
    ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
)
# A timeline event's columns as the processor writes them, with their PostgreSQL types.
_EVENT_COLUMNS = (
    ("project_id", "int4"),
    ("customer_id", "int8"),
    ("type", "varchar"),
    ("name", "varchar"),
    ("properties", "jsonb"),
    ("context", "jsonb"),
    ("timestamp", "timestamp"),
    ("received_at", "timestamp"),
    ("message_id", "varchar"),
)
_WRITE_COLUMNS = tuple(column for column, _ in _WRITTEN)
_WRITE_TYPES = tuple(kind for _, kind in _WRITTEN)


@dataclass(eq=False, slots=True)
class Profile:
    """A customer while a batch works on it."""

    id: int | None
    user_id: str | None
    email: str | None
    name: str | None
    traits: dict[str, Any]
    audiences: dict[str, Any]
    ltv_units: int
    revenue_by_currency: dict[str, Any]
    charge_count: int
    last_charge_at: datetime | None
    first_seen: datetime
    last_seen: datetime
    created_at: datetime
    original_keys: frozenset[str] = frozenset()
    dirty: bool = False
    seen_changed: bool = False
    deleted: bool = False
    merged_into: Profile | None = None

    def final(self) -> Profile:
        """The profile this one ended up as after merges."""
        p = self
        while p.merged_into is not None:
            p = p.merged_into
        return p

    def touch(self, at: datetime, *, active: bool = True) -> None:
        if at < self.first_seen:
            self.first_seen = at
            self.seen_changed = True
        if active and at > self.last_seen:
            self.last_seen = at
            self.seen_changed = True


@dataclass(frozen=True, slots=True)
class Policy:
    """A project's identity policy (see auth.models.Project)."""

    require_email_to_create: bool = False
    require_user_id: bool = False
    unknown_user_track: str = "create"
    revenue_as_charge: bool = True


def _older(a: Profile, b: Profile) -> bool:
    """Stored customers before new ones; among stored, the lower id."""
    if a.id is None:
        return False
    return b.id is None or a.id < b.id


class Dropped(Exception):
    """The project's identity policy refuses this message; the reason is shown to the user."""


@dataclass(slots=True)
class _Rows:
    events: list[tuple[Profile, dict[str, Any]]] = field(default_factory=list)
    charges: list[tuple[Profile, dict[str, Any]]] = field(default_factory=list)
    aliases: list[tuple[Profile, str]] = field(default_factory=list)
    group_links: list[tuple[Profile, str, datetime]] = field(default_factory=list)
    merges: list[tuple[int, Profile]] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)


class ProfileBatch:
    """The working set of one project's customers for one chunk of messages."""

    def __init__(self, project_id: int, policy: Policy) -> None:
        self.project_id = project_id
        self.policy = policy
        self.by_user: dict[str, Profile] = {}
        self.by_email: dict[str, Profile] = {}
        self.by_alias: dict[str, Profile] = {}
        self.profiles: list[Profile] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.group_ids: dict[str, int] = {}
        self.rows = _Rows()
        self.event_catalog: dict[tuple[str, str], dict[str, Any]] = {}
        self.trait_sightings: dict[str, tuple[str, datetime]] = {}

    # -- loading -------------------------------------------------------------------------

    def load(
        self,
        session: Session,
        *,
        user_ids: set[str],
        emails: set[str],
        aliases: set[str],
        group_ids: set[str],
    ) -> None:
        """Fetch every customer and group these identifiers can reach."""
        pid = self.project_id
        bulk = Bulk(session)
        alias_of: dict[str, int] = {}
        alias_sql = (
            "SELECT anonymous_id, customer_id FROM customer_anonymous_ids WHERE project_id = {m}"
        )
        for part in chunks(aliases):
            for alias, cid in bulk.select_in(alias_sql, "anonymous_id", part, (pid,), probe=True):
                alias_of[alias] = cid
        seen: dict[int, Profile] = {}
        wanted: list[tuple[str, set[Any]]] = [
            ("user_id", user_ids),
            ("email", emails),
            ("id", set(alias_of.values())),
        ]
        for column, values in wanted:
            for part in chunks(values):
                for row in bulk.select_in(
                    _PROFILE_SQL, column, part, (pid,), lock="NO KEY UPDATE", probe=True
                ):
                    if row[0] not in seen:
                        seen[row[0]] = self._adopt(bulk, row)
        for alias, cid in alias_of.items():
            if cid in seen:
                self.by_alias[alias] = seen[cid]
        # An email finds its oldest customer, as the API's lookup does, whatever the load order.
        self.by_email = {}
        for cid in sorted(seen):
            email = seen[cid].email
            if email is not None:
                self.by_email.setdefault(email, seen[cid])
        for part in chunks(group_ids):
            for gid, gpk, gtraits in session.execute(
                select(Group.group_id, Group.id, Group.traits).where(
                    Group.project_id == pid, Group.group_id.in_(part)
                )
            ):
                self.group_ids[gid] = gpk
                self.groups[gid] = dict(gtraits or {})

    def load_ids(self, session: Session, customer_ids: list[int]) -> None:
        """Fetch customers by Tidings id (API edits go through the same write path)."""
        bulk = Bulk(session)
        for part in chunks(customer_ids):
            for row in bulk.select_in(
                _PROFILE_SQL, "id", part, (self.project_id,), lock="NO KEY UPDATE"
            ):
                self._adopt(bulk, row)

    def _adopt(self, bulk: Bulk, row: tuple[Any, ...]) -> Profile:
        (
            cid,
            user_id,
            email,
            name,
            traits,
            audiences,
            ltv,
            revenue,
            charges,
            last_charge,
            first_seen,
            last_seen,
            created_at,
        ) = row
        traits = bulk.read_json(traits) or {}
        p = Profile(
            id=cid,
            user_id=user_id,
            email=email,
            name=name,
            traits=traits,
            audiences=bulk.read_json(audiences) or {},
            ltv_units=ltv,
            revenue_by_currency=bulk.read_json(revenue) or {},
            charge_count=charges,
            last_charge_at=bulk.read_dt(last_charge),
            first_seen=bulk.read_dt(first_seen),  # type: ignore[arg-type]
            last_seen=bulk.read_dt(last_seen),  # type: ignore[arg-type]
            created_at=bulk.read_dt(created_at),  # type: ignore[arg-type]
            original_keys=frozenset(traits),
        )
        self.profiles.append(p)
        if p.user_id is not None:
            self.by_user[p.user_id] = p
        return p

    # -- identity ------------------------------------------------------------------------

    def find(
        self, *, user_id: str | None, email: str | None, anonymous_id: str | None
    ) -> Profile | None:
        """userId, else email, else a known anonymousId; never crosses to another user."""
        p: Profile | None = None
        if user_id is not None:
            p = self.by_user.get(user_id) or self._retired(user_id)
        if p is None and email is not None:
            q = self.by_email.get(email)
            if q is not None and (user_id is None or q.user_id in (None, user_id)):
                p = q
        if p is None and anonymous_id is not None:
            a = self.by_alias.get(anonymous_id)
            if a is not None and (user_id is None or a.user_id in (None, user_id)):
                p = a
        return p

    def _retired(self, user_id: str) -> Profile | None:
        p = self.by_alias.get(user_id)
        return p if p is not None and p.user_id is not None else None

    def resolve(
        self,
        *,
        user_id: str | None,
        email: str | None,
        anonymous_id: str | None,
        at: datetime,
        creates: str,
    ) -> Profile:
        """Find or create the customer and attach the ids; raises Dropped per the policy.

        `creates` is "profile" for identify/group/alias and "event" for track/page/screen.
        """
        p = self.find(user_id=user_id, email=email, anonymous_id=anonymous_id)
        if p is None:
            self._may_create(user_id=user_id, email=email, creates=creates)
            p = self._create(at)
        elif anonymous_id is not None and user_id is not None:
            other = self.by_alias.get(anonymous_id)
            if other is not None and other is not p and other.user_id is None:
                self.merge(other, into=p)
        if user_id is not None and p.user_id is None:
            p.user_id = user_id
            self.by_user[user_id] = p
            p.dirty = True
        if email is not None and p.email is None:
            self.set_email(p, email)
        if anonymous_id is not None and anonymous_id not in self.by_alias:
            self.by_alias[anonymous_id] = p
            self.rows.aliases.append((p, anonymous_id))
        return p

    def _may_create(self, *, user_id: str | None, email: str | None, creates: str) -> None:
        policy = self.policy
        if creates == "event" and policy.unknown_user_track == "drop":
            raise Dropped("unknown user: the project drops events for unknown users")
        if policy.require_user_id and user_id is None:
            raise Dropped("no userId: the project requires a userId to create a customer")
        if policy.require_email_to_create and email is None:
            raise Dropped("no email: the project requires an email to create a customer")

    def _create(self, at: datetime) -> Profile:
        p = Profile(
            id=None,
            user_id=None,
            email=None,
            name=None,
            traits={},
            audiences={},
            ltv_units=0,
            revenue_by_currency={},
            charge_count=0,
            last_charge_at=None,
            first_seen=at,
            last_seen=at,
            created_at=clock.now(),
            dirty=True,
        )
        self.profiles.append(p)
        return p

    def set_email(self, p: Profile, email: str) -> None:
        """Change a customer's email, keeping the email index right for both addresses."""
        if p.email == email:
            return
        old, p.email = p.email, email
        p.dirty = True
        if old is not None and self.by_email.get(old) is p:
            self._reindex_email(old)
        current = self.by_email.get(email)
        if current is None or _older(p, current):
            self.by_email[email] = p

    def _reindex_email(self, email: str) -> None:
        """Point `email` at the oldest live customer that still has it (or at nobody)."""
        owner: Profile | None = None
        for q in self.profiles:
            live = q.email == email and q.merged_into is None and not q.deleted
            if live and (owner is None or _older(q, owner)):
                owner = q
        if owner is None:
            self.by_email.pop(email, None)
        else:
            self.by_email[email] = owner

    def merge(self, src: Profile, *, into: Profile) -> None:
        """Fold `src` into `into`: timelines, charges, tags, groups and ids move; `into` wins."""
        dst = into
        dst.traits = {**src.traits, **dst.traits}
        dst.audiences = {**src.audiences, **dst.audiences}
        dst.email = dst.email or src.email
        dst.name = dst.traits.get("name") if isinstance(dst.traits.get("name"), str) else dst.name
        dst.ltv_units += src.ltv_units
        for cur, units in src.revenue_by_currency.items():
            dst.revenue_by_currency[cur] = dst.revenue_by_currency.get(cur, 0) + units
        dst.charge_count += src.charge_count
        if src.last_charge_at and (
            not dst.last_charge_at or src.last_charge_at > dst.last_charge_at
        ):
            dst.last_charge_at = src.last_charge_at
        dst.first_seen = min(dst.first_seen, src.first_seen)
        dst.last_seen = max(dst.last_seen, src.last_seen)
        dst.created_at = min(dst.created_at, src.created_at)
        dst.dirty = True
        for index in (self.by_alias, self.by_user, self.by_email):
            for key, value in list(index.items()):
                if value is src:
                    index[key] = dst
        if src.user_id is not None and src.user_id != dst.user_id:
            # A retired userId keeps finding the surviving customer.
            self.by_user.pop(src.user_id, None)
            self.by_alias[src.user_id] = dst
            self.rows.aliases.append((dst, src.user_id))
        src.merged_into = dst
        if src.id is not None:
            self.rows.merges.append((src.id, dst))

    def alias(self, *, user_id: str, previous_id: str, at: datetime) -> Profile:
        """`alias`: previousId (an anonymousId or an old userId) becomes the same person."""
        new = self.by_user.get(user_id) or self._retired(user_id)
        old = self.by_user.get(previous_id) or self.by_alias.get(previous_id)
        if new is not None and old is not None and new is not old:
            self.merge(old, into=new)
            return new
        if new is None and old is not None:
            if old.user_id is not None and old.user_id != user_id:
                self.by_user.pop(old.user_id, None)
                self.by_alias[old.user_id] = old
                self.rows.aliases.append((old, old.user_id))
            old.user_id = user_id
            old.dirty = True
            self.by_user[user_id] = old
            old.touch(at)
            return old
        p = new or self.resolve(
            user_id=user_id, email=None, anonymous_id=None, at=at, creates="profile"
        )
        if previous_id not in self.by_alias and previous_id not in self.by_user:
            self.by_alias[previous_id] = p
            self.rows.aliases.append((p, previous_id))
        p.touch(at)
        return p

    def erase(self, p: Profile) -> None:
        """Delete the customer with its events, charges, tags and memberships."""
        p = p.final()
        p.deleted = True
        for index in (self.by_alias, self.by_user):
            for key, value in list(index.items()):
                if value is p:
                    del index[key]
        for email, owner in list(self.by_email.items()):
            if owner is p:
                self._reindex_email(email)
        if p.id is not None:
            self.rows.deletes.append(p.id)

    # -- changes -------------------------------------------------------------------------

    def set_traits(self, p: Profile, traits: dict[str, Any], at: datetime) -> set[str]:
        """Merge normalised traits; a null value removes the trait. Returns the keys changed."""
        current = p.traits
        changed: set[str] = set()
        for key, value in traits.items():
            if value is None:
                if key in current:
                    del current[key]
                    changed.add(key)
                continue
            if current.get(key, _MISSING) != value:
                current[key] = value
                changed.add(key)
            self.trait_sightings[key] = (infer_type(key, value), at)
        if changed:
            p.dirty = True
        email = p.traits.get("email")
        if isinstance(email, str) and email:
            self.set_email(p, email)
        name = p.traits.get("name")
        if isinstance(name, str) and name[:255] != p.name:
            p.name = name[:255]
            p.dirty = True
        return changed

    def set_audience(self, p: Profile, key: str, member: bool, at: datetime) -> None:
        p.audiences[key] = {"member": member, "updated_at": isoformat(at)}
        p.dirty = True

    def add_event(self, p: Profile, row: dict[str, Any]) -> None:
        """Queue a timeline event (track, page, screen) and count it in the catalog."""
        self.rows.events.append((p, row))
        key = (row["type"], row["name"] or "")
        entry = self.event_catalog.get(key)
        seen = row["received_at"]
        if entry is None:
            entry = self.event_catalog[key] = {"count": 0, "first": seen, "last": seen, "props": {}}
        entry["count"] += 1
        entry["last"] = max(entry["last"], seen)
        props = entry["props"]
        for k, v in row["properties"].items():
            if k not in props:  # the first value of a chunk decides the type
                props[k] = infer_type(k, v)

    def add_charge(self, p: Profile, amount: Decimal, currency: str, row: dict[str, Any]) -> None:
        """Attribute revenue to the customer (lifetime value, count, last charge date)."""
        units = int((amount * MONEY_UNIT).to_integral_value())
        p.ltv_units += units
        p.revenue_by_currency[currency] = p.revenue_by_currency.get(currency, 0) + units
        p.charge_count += 1
        at = row["timestamp"]
        if p.last_charge_at is None or at > p.last_charge_at:
            p.last_charge_at = at
        p.dirty = True
        self.rows.charges.append((p, {**row, "amount_units": units, "currency": currency}))

    def link_group(self, p: Profile, group_id: str, traits: dict[str, Any], at: datetime) -> None:
        current = self.groups.setdefault(group_id, {})
        current.update({k: v for k, v in traits.items() if v is not None})
        for k, v in traits.items():
            if v is None:
                current.pop(k, None)
        self.rows.group_links.append((p, group_id, at))

    # -- writing -------------------------------------------------------------------------

    def flush(self, session: Session) -> None:
        """Write the batch: new customers, merges, deletions, updates, then dependent rows."""
        bulk = Bulk(session)
        self._insert_new(bulk)
        self._apply_merges(session)
        if self.rows.deletes:
            for part in chunks(self.rows.deletes):
                session.execute(delete(Customer).where(Customer.id.in_(part)))
        # Events have no foreign key (see Event): a deleted customer's go after it, once the
        # deletion has waited for any writer holding the customer (a merge has moved its own).
        gone = [*self.rows.deletes, *(src for src, _ in self.rows.merges)]
        for part in chunks(gone):
            session.execute(delete(Event).where(Event.customer_id.in_(part)))
        self._update_dirty(bulk)
        self._insert_aliases(session)
        self._insert_timeline(bulk)
        self._write_groups(session)
        self._write_catalogs(session)

    def _live(self, p: Profile) -> Profile | None:
        f = p.final()
        return None if f.deleted or f.id is None else f

    def _insert_new(self, bulk: Bulk) -> None:
        fresh = [
            p for p in self.profiles if p.id is None and p.merged_into is None and not p.deleted
        ]
        if not fresh:
            return
        now = clock.now()
        ids = bulk.allocate_ids("customers", len(fresh))
        rows = []
        for p, new_id in zip(fresh, ids, strict=True):
            p.id = new_id
            p.dirty = False
            rows.append((new_id, self.project_id, *self._values(bulk, p, now)))
        bulk.insert("customers", ("id", "project_id", *_WRITE_COLUMNS), rows)

    def _values(self, bulk: Bulk, p: Profile, now: datetime) -> tuple[Any, ...]:
        return (
            p.user_id,
            p.email,
            p.name,
            bulk.json(p.traits),
            bulk.json(p.audiences),
            p.ltv_units,
            bulk.json(p.revenue_by_currency),
            p.charge_count,
            bulk.dt(p.last_charge_at),
            bulk.dt(p.first_seen),
            bulk.dt(p.last_seen),
            bulk.dt(p.created_at),
            bulk.dt(now),
        )

    def _apply_merges(self, session: Session) -> None:
        for src_id, dst in self.rows.merges:
            target = self._live(dst)
            if target is None:
                session.execute(delete(Customer).where(Customer.id == src_id))
                continue
            params = {"src": src_id, "dst": target.id}
            # Rows that belong to the person, not the profile, follow them (a merge happens in
            # the middle of this batch, before any other package could step in): charges, ids,
            # and the emails they were sent; the timeline below.
            for table in ("charges", "customer_anonymous_ids", "messages"):
                session.execute(
                    text(f"UPDATE {table} SET customer_id = :dst WHERE customer_id = :src"),  # noqa: S608
                    params,
                )
            session.execute(
                text(
                    "INSERT INTO customer_tags (customer_id, tag, project_id, created_at) "
                    "SELECT :dst, tag, project_id, created_at FROM customer_tags t "
                    "WHERE t.customer_id = :src AND NOT EXISTS (SELECT 1 FROM customer_tags d "
                    "WHERE d.customer_id = :dst AND d.tag = t.tag)"
                ),
                params,
            )
            session.execute(
                text(
                    "INSERT INTO customer_groups (customer_id, group_pk, created_at) "
                    "SELECT :dst, group_pk, created_at FROM customer_groups g "
                    "WHERE g.customer_id = :src AND NOT EXISTS (SELECT 1 FROM customer_groups d "
                    "WHERE d.customer_id = :dst AND d.group_pk = g.group_pk)"
                ),
                params,
            )
            # An opt-out made as the anonymous profile stays, unless the identified one chose.
            session.execute(
                text(
                    "INSERT INTO subscriptions (customer_id, topic, project_id, subscribed, "
                    "source, updated_at) SELECT :dst, topic, project_id, subscribed, source, "
                    "updated_at FROM subscriptions s WHERE s.customer_id = :src AND NOT EXISTS "
                    "(SELECT 1 FROM subscriptions d WHERE d.customer_id = :dst "
                    "AND d.topic = s.topic)"
                ),
                params,
            )
            session.execute(delete(Customer).where(Customer.id == src_id))
            # The timeline moves once the profile is deleted (events have no foreign key): the
            # delete waited for any writer holding the profile, so what it added (an email's or
            # a segment's event) follows too.
            session.execute(
                text("UPDATE events SET customer_id = :dst WHERE customer_id = :src"), params
            )

    def _update_dirty(self, bulk: Bulk) -> None:
        moment = clock.now()
        now = bulk.dt(moment)
        full = []
        seen = []
        for p in self.profiles:
            if p.id is None or p.merged_into is not None or p.deleted:
                continue
            if p.dirty:
                full.append((*self._values(bulk, p, moment), p.id))
            elif p.seen_changed:
                # Most messages only move last_seen: a narrow update skips rewriting traits.
                seen.append((bulk.dt(p.first_seen), bulk.dt(p.last_seen), now, p.id))
        bulk.update("customers", _WRITE_COLUMNS, "id", full, types=(*_WRITE_TYPES, "bigint"))
        bulk.update(
            "customers",
            ("first_seen", "last_seen", "updated_at"),
            "id",
            seen,
            types=("timestamp", "timestamp", "timestamp", "bigint"),
        )

    def _insert_aliases(self, session: Session) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for p, alias in self.rows.aliases:
            live = self._live(p)
            if live is not None:
                rows[alias] = {
                    "project_id": self.project_id,
                    "anonymous_id": alias,
                    "customer_id": live.id,
                }
        upsert(
            session,
            table_of(AnonymousId),
            list(rows.values()),
            keys=("project_id", "anonymous_id"),
            set_=lambda ex: {"customer_id": ex.customer_id},
        )

    def _insert_timeline(self, bulk: Bulk) -> None:
        pid = self.project_id
        events = []
        for p, row in self.rows.events:
            live = self._live(p)
            if live is not None:
                events.append(
                    (
                        pid,
                        live.id,
                        row["type"],
                        row["name"],
                        bulk.json(row["properties"]),
                        bulk.json(row["context"]),
                        bulk.dt(row["timestamp"]),
                        bulk.dt(row["received_at"]),
                        row["message_id"],
                    )
                )
        bulk.insert(
            "events", [c for c, _ in _EVENT_COLUMNS], events, types=[t for _, t in _EVENT_COLUMNS]
        )
        charges = []
        for p, row in self.rows.charges:
            live = self._live(p)
            if live is not None:
                charges.append(
                    (
                        pid,
                        live.id,
                        row["amount_units"],
                        row["currency"],
                        bulk.dt(row["timestamp"]),
                        row["message_id"],
                    )
                )
        bulk.insert(
            "charges",
            ("project_id", "customer_id", "amount_units", "currency", "timestamp", "message_id"),
            charges,
        )

    def _write_groups(self, session: Session) -> None:
        if not self.groups:
            return
        pid = self.project_id
        now = clock.now()
        known = [
            {"b_id": self.group_ids[g], "traits": t, "last_seen": now}
            for g, t in self.groups.items()
            if g in self.group_ids
        ]
        if known:
            table = table_of(Group)
            session.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"))
                .values(traits=bindparam("traits"), last_seen=bindparam("last_seen")),
                known,
            )
        fresh = [g for g in self.groups if g not in self.group_ids]
        if fresh:
            stmt = insert(Group).returning(Group.id, sort_by_parameter_order=True)
            params = [
                {
                    "project_id": pid,
                    "group_id": g,
                    "traits": self.groups[g],
                    "first_seen": now,
                    "last_seen": now,
                }
                for g in fresh
            ]
            for g, gpk in zip(fresh, session.execute(stmt, params).scalars().all(), strict=True):
                self.group_ids[g] = gpk
        links: dict[tuple[int, int], dict[str, Any]] = {}
        for p, gid, at in self.rows.group_links:
            live = self._live(p)
            if live is not None and live.id is not None:
                key = (live.id, self.group_ids[gid])
                links[key] = {"customer_id": key[0], "group_pk": key[1], "created_at": at}
        upsert(
            session, table_of(CustomerGroup), list(links.values()), keys=("customer_id", "group_pk")
        )

    def _write_catalogs(self, session: Session) -> None:
        pid = self.project_id
        deltas: dict[str, int] = defaultdict(int)
        for p in self.profiles:
            if p.id is None and (p.merged_into is not None or p.deleted):
                continue  # never written: contributes nothing
            alive = p.merged_into is None and not p.deleted
            final_keys = set(p.traits) if alive else set()
            for key in final_keys - p.original_keys:
                deltas[key] += 1
            for key in p.original_keys - final_keys:
                deltas[key] -= 1
            p.original_keys = frozenset(final_keys)
        sighted = [
            {
                "project_id": pid,
                "key": key,
                "type": typ,
                "customer_count": deltas.pop(key, 0),
                "first_seen": at,
                "last_seen": at,
            }
            for key, (typ, at) in self.trait_sightings.items()
        ]
        upsert(
            session,
            table_of(TraitCatalog),
            sighted,
            keys=("project_id", "key"),
            set_=lambda ex: {
                "type": ex.type,
                "last_seen": ex.last_seen,
                "customer_count": table_of(TraitCatalog).c.customer_count + ex.customer_count,
            },
        )
        adjust = [{"b_pid": pid, "b_key": k, "d": d} for k, d in deltas.items() if d]
        if adjust:
            t = table_of(TraitCatalog)
            session.execute(
                update(t)
                .where(t.c.project_id == bindparam("b_pid"), t.c.key == bindparam("b_key"))
                .values(customer_count=t.c.customer_count + bindparam("d")),
                adjust,
            )
        self._write_event_catalog(session)

    def _write_event_catalog(self, session: Session) -> None:
        if not self.event_catalog:
            return
        pid = self.project_id
        t = table_of(EventCatalog)
        existing: dict[tuple[str, str], dict[str, Any]] = {}
        names = {name for _, name in self.event_catalog}
        for part in chunks(names):
            for typ, name, props in session.execute(
                select(t.c.type, t.c.name, t.c.properties).where(
                    t.c.project_id == pid, t.c.name.in_(part)
                )
            ):
                existing[(typ, name)] = props or {}
        rows = []
        for (typ, name), entry in self.event_catalog.items():
            props = {**existing.get((typ, name), {}), **entry["props"]}
            rows.append(
                {
                    "project_id": pid,
                    "type": typ,
                    "name": name,
                    "count": entry["count"],
                    "properties": props,
                    "first_seen": entry["first"],
                    "last_seen": entry["last"],
                }
            )
        upsert(
            session,
            t,
            rows,
            keys=("project_id", "type", "name"),
            set_=lambda ex: {
                "count": t.c.count + ex.count,
                "properties": ex.properties,
                "last_seen": ex.last_seen,
            },
        )
