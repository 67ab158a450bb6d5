"""Customer tables. Money is stored as integer ten-thousandths so sums are exact everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Computed,
    ForeignKey,
    Index,
    Integer,
    String,
    column,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, JSONType, UTCDateTime, minute_of

MONEY_UNIT = 10_000

BigId = BigInteger().with_variant(Integer(), "sqlite")


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        Index("uq_customers_project_user_id", "project_id", "user_id", unique=True),
        Index("ix_customers_project_email", "project_id", "email"),
        Index("ix_customers_project_seen_minute", "project_id", "seen_minute"),
        Index("ix_customers_project_ltv", "project_id", "lifetime_value_units"),
        Index("ix_customers_project_id_id", "project_id", "id"),
        {"postgresql_with": {"fillfactor": 90}},  # room for HOT updates (migration 0009)
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(255))
    traits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    audiences: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    lifetime_value_units: Mapped[int] = mapped_column(BigInteger, default=0)
    revenue_by_currency: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    charge_count: Mapped[int] = mapped_column(Integer, default=0)
    last_charge_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The customer list sorts on (seen_minute, last_seen, id) and indexes only the minute, so
    # that a message moving last_seen within its minute leaves every index alone (on
    # PostgreSQL such an update is HOT: most of the processor's customer updates).
    seen_minute: Mapped[datetime | None] = mapped_column(
        UTCDateTime, Computed(minute_of(column("last_seen")))
    )


class AnonymousId(Base):
    __tablename__ = "customer_anonymous_ids"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    anonymous_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )


class CustomerTag(Base):
    __tablename__ = "customer_tags"
    __table_args__ = (Index("ix_customer_tags_project_tag", "project_id", "tag"),)

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """A track, page or screen on a customer's timeline."""

    __tablename__ = "events"
    __table_args__ = (
        # A customer's timeline, newest first; with the type and the name as well, segment
        # upkeep summarizes a customer's events without reading the table (but for the
        # conditions on properties).
        Index("ix_events_customer_timeline", "customer_id", "timestamp", "id", "type", "name"),
        # Name and time: event conditions of segments read a window of one event's rows; with
        # the customer and the type as well, grouping them by customer never reads the table.
        Index(
            "ix_events_project_name_timestamp_customer",
            "project_id",
            "name",
            "timestamp",
            "customer_id",
            "type",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    # No foreign key: a per-row check costs as much as the write on PostgreSQL. A deleted
    # customer's events go with it (`ProfileBatch.flush`).
    customer_id: Mapped[int] = mapped_column(BigId)
    type: Mapped[str] = mapped_column(String(10))
    name: Mapped[str | None] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(String(100))


class Charge(Base):
    """Revenue attributed to a customer (a track carrying `revenue`)."""

    __tablename__ = "charges"
    __table_args__ = (Index("ix_charges_customer_timestamp", "customer_id", "timestamp"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    amount_units: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(String(100))


class Group(Base):
    """A company or account, from `group` calls."""

    __tablename__ = "groups"
    __table_args__ = (Index("uq_groups_project_group_id", "project_id", "group_id", unique=True),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    group_id: Mapped[str] = mapped_column(String(255))
    traits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomerGroup(Base):
    __tablename__ = "customer_groups"

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    group_pk: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TraitCatalog(Base):
    __tablename__ = "trait_catalog"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    customer_count: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class EventCatalog(Base):
    __tablename__ = "event_catalog"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(10), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


__all__ = [
    "MONEY_UNIT",
    "AnonymousId",
    "Charge",
    "Customer",
    "CustomerGroup",
    "CustomerTag",
    "Event",
    "EventCatalog",
    "Group",
    "TraitCatalog",
]


# Name search is a case-insensitive prefix match served by this expression index.
Index("ix_customers_project_name_lower", Customer.project_id, func.lower(Customer.name))
