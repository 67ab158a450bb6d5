"""Messaging tables: the project's email settings, subscription topics and choices,
suppressions, and every message with its log of decisions and status changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, JSONType, UTCDateTime

BigId = BigInteger().with_variant(Integer(), "sqlite")


class EmailSettings(Base):
    """Sender identity, footer address, frequency cap, quiet hours and tracking of a project."""

    __tablename__ = "email_settings"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    from_name: Mapped[str | None] = mapped_column(String(200))
    from_email: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(Text, default="")
    cap_count: Mapped[int] = mapped_column(Integer, default=0)  # 0: no frequency cap
    cap_days: Mapped[int] = mapped_column(Integer, default=7)
    quiet_start: Mapped[str | None] = mapped_column(String(5))  # "21:00"; None: no quiet hours
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    track_opens: Mapped[bool] = mapped_column(Boolean, default=True)
    track_clicks: Mapped[bool] = mapped_column(Boolean, default=True)
    # Signs unsubscribe, preference and tracking links; never leaves the server.
    link_secret: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Topic(Base):
    """A subscription topic: `broadcasts`, `automations`, or one the project defines."""

    __tablename__ = "topics"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Subscription(Base):
    """A customer's explicit choice for one topic (`*`: every marketing email).

    No row means subscribed: customers receive a topic until they opt out of it.
    """

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_project_topic", "project_id", "topic"),)

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer)
    subscribed: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(20))  # api | link | one_click | mailto | dashboard
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Suppression(Base):
    """An address that is never sent to: hard bounce, spam complaint or manual."""

    __tablename__ = "suppressions"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    email: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower case
    reason: Mapped[str] = mapped_column(String(20))  # hard_bounce | complaint | manual
    note: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Message(Base):
    """One email to one recipient, from the gateway's decision to its last engagement."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("uq_messages_project_key", "project_id", "idempotency_key", unique=True),
        Index("ix_messages_project_id", "project_id", "id"),
        Index("ix_messages_customer_created", "customer_id", "created_at"),
        Index("ix_messages_due", "status", "send_after"),
        Index("ix_messages_header_id", "header_id"),
        # Ids are in signed links: an erased customer's message id is never given to another.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(10), default="email")
    sender: Mapped[str] = mapped_column(String(40))  # api | test | automation | broadcast | ...
    topic: Mapped[str | None] = mapped_column(String(64))
    transactional: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    to_address: Mapped[str | None] = mapped_column(String(320))
    # queued | deferred | sending | sent | skipped | failed | bounced | complained
    status: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(Text)
    decisions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # Template variables given by the sender (`event`, `data`).
    variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    send_after: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Which delivery batch holds the message: a worker whose lease ran out (and whose messages
    # another worker took over) can no longer hand them over or record their outcome.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    # Set (and committed) just before the message body is handed to the SMTP server: a worker
    # that dies after this point may have delivered it, so it is never sent again.
    handed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    header_id: Mapped[str | None] = mapped_column(String(255))  # the Message-ID header
    subject: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MessageEvent(Base):
    """One line of a message's log: queued, deferred, sent, failed, opened, clicked, ..."""

    __tablename__ = "message_events"
    __table_args__ = (Index("ix_message_events_message", "message_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
