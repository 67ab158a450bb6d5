"""Segment tables: definitions, current members, entries and exits counted by the hour, the
instant at which time alone may next change a customer's memberships, and customers to recheck
after a full computation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, JSONType, UTCDateTime

BigId = BigInteger().with_variant(Integer(), "sqlite")


class Segment(Base):
    __tablename__ = "segments"
    # AUTOINCREMENT on SQLite: a deleted segment's id is never given to a new one.
    __table_args__ = (
        Index("uq_segments_project_name", "project_id", "name", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    rules: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # The ids of the segments `rules` names directly (for cycle checks and recomputation).
    refs: Mapped[list[int]] = mapped_column(JSONType, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(10), default="computing")  # computing|ready|failed
    progress: Mapped[int] = mapped_column(Integer, default=0)  # percent while computing
    error: Mapped[str | None] = mapped_column(Text)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    computed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# Members and timers take rows with every processed message that changes a membership: they
# have no foreign keys (a per-row check costs more than the write on PostgreSQL). Their rows go
# with their customer in `membership.forget`, members and growth with their segment in
# `service.delete` (a customer's timer outlives a segment harmlessly: it falls due, nothing
# changes), and writers lock the customers and segments they write for (see
# `membership.evaluate_pairs`).


class SegmentMember(Base):
    """A customer in a segment, since when.

    One index only, by segment: a customer's memberships are read by (segment, customer) pairs,
    or across the project's segments. An index by customer would take a write to a page of its
    own for every entry and exit, while the customer's other rows are being written anyway."""

    __tablename__ = "segment_members"

    segment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SegmentGrowth(Base):
    """A segment's entries and exits in one hour (`hour`: hours since 1970-01-01 UTC), as
    customers change and time passes; full computations are not growth.

    Each entry and exit is on the customer's timeline (an event of type "segment"): this is its
    count, one row per segment and hour whatever the traffic."""

    __tablename__ = "segment_growth"

    segment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entered: Mapped[int] = mapped_column(Integer, default=0)
    exited: Mapped[int] = mapped_column(Integer, default=0)


class SegmentTimer(Base):
    """The earliest instant at which time alone may change one of a customer's memberships,
    across all of its project's segments (one row per customer).

    Never later than that instant: an evaluation of some of the customer's segments only moves
    it earlier (`membership.evaluate_pairs`), so it may fall due before anything changes. It
    then re-evaluates every time-based segment for the customer and sets the exact instant."""

    __tablename__ = "segment_timers"
    __table_args__ = (Index("ix_segment_timers_due", "due_at"),)

    customer_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SegmentRecheck(Base):
    """A customer who changed while the segment was being computed in full."""

    __tablename__ = "segment_rechecks"

    segment_id: Mapped[int] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )


class SegmentUpkeep(Base):
    """Customers whose segments a committed chunk may have changed, not yet evaluated.

    On PostgreSQL the processor evaluates a chunk's segments after the chunk commits, on a
    connection of its own, while it applies the next chunk (`upkeep.Upkeep`). The chunk's
    transaction writes this row; the evaluation deletes it when it commits. A row left behind
    (a crash, a failed evaluation) is evaluated again, every segment for each customer."""

    __tablename__ = "segment_upkeep"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer)
    customer_ids: Mapped[list[int]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


__all__ = [
    "Segment",
    "SegmentGrowth",
    "SegmentMember",
    "SegmentRecheck",
    "SegmentTimer",
    "SegmentUpkeep",
]
