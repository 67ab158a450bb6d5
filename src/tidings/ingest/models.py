"""Inbox (raw acknowledged requests), message log, counters and the processor lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings.db import Base, JSONType, UTCDateTime
from tidings.db.base import NAMING_CONVENTION

BigId = BigInteger().with_variant(Integer(), "sqlite")


class InboxBase(DeclarativeBase):
    """The inbox may live in its own database file, so it has its own metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class InboxItem(InboxBase):
    """One acknowledged request body, exactly as received (decompressed)."""

    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # batch | identify | track | ... | webhook
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    # Random per request: ids for messages sent without a messageId derive from it, so a replay
    # after a crash dedups while a later request (even reusing a row id) never collides.
    token: Mapped[str] = mapped_column(String(32))


class IngestMessage(Base):
    """Every processed message with its outcome; also the messageId dedup index."""

    __tablename__ = "ingest_messages"
    __table_args__ = (
        Index("uq_ingest_messages_project_message_id", "project_id", "message_id", unique=True),
        Index("ix_ingest_messages_project_status_id", "project_id", "status", "id"),
        Index("ix_ingest_messages_project_id_id", "project_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(100))
    type: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(10))  # accepted | dropped | rejected | failed
    reason: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(255))
    anonymous_id: Mapped[str | None] = mapped_column(String(255))
    event: Mapped[str | None] = mapped_column(String(255))
    customer_id: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    raw: Mapped[dict[str, Any]] = mapped_column(JSONType)


class IngestStats(Base):
    """Per-project counters kept by the processor (exported at /metrics)."""

    __tablename__ = "ingest_stats"

    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicate: Mapped[int] = mapped_column(BigInteger, default=0)


class Lease(Base):
    """A named lease held by one process at a time (the inbox processor holds 'ingest')."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
