"""Ingestion use cases: the message log, counters for /metrics, retention, CSV import."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tidings import clock
from tidings.clock import isoformat
from tidings.config import Settings
from tidings.customers import service as customers
from tidings.customers.schemas import Page
from tidings.customers.service import decode_cursor, encode_cursor
from tidings.customers.traits import is_date_key, looks_like_email, parse_datetime
from tidings.db import Database
from tidings.errors import BadRequest
from tidings.ingest import processor
from tidings.ingest.log import redact_customer
from tidings.ingest.models import IngestMessage, IngestStats
from tidings.ingest.schemas import MessageOut
from tidings.segments import membership

STATUSES = ("accepted", "dropped", "rejected", "failed")


def list_messages(
    session: Session,
    *,
    project_id: int,
    status: str | None = None,
    type: str | None = None,
    user_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[MessageOut]:
    """Processed messages newest first, filterable by status, type and userId."""
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}.", code="invalid_status")
    if limit < 1 or limit > 200:
        raise BadRequest("limit must be between 1 and 200.", code="invalid_limit")
    query = select(IngestMessage).where(IngestMessage.project_id == project_id)
    if status:
        query = query.where(IngestMessage.status == status)
    if type:
        query = query.where(IngestMessage.type == type)
    if user_id:
        query = query.where(IngestMessage.user_id == user_id)
    after = decode_cursor(cursor)
    if after is not None:
        if not isinstance(after[0], int):
            raise BadRequest("The cursor is not valid.", code="invalid_cursor")
        query = query.where(IngestMessage.id < after[0])
    rows = list(session.scalars(query.order_by(IngestMessage.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        data=[_message_out(m) for m in rows],
        next_cursor=encode_cursor(rows[-1].id) if more else None,
    )


def _message_out(m: IngestMessage) -> MessageOut:
    return MessageOut(
        id=m.id,
        message_id=m.message_id,
        type=m.type,
        status=m.status,
        reason=m.reason,
        user_id=m.user_id,
        anonymous_id=m.anonymous_id,
        event=m.event,
        customer_id=m.customer_id,
        received_at=isoformat(m.received_at) or "",
        processed_at=isoformat(m.processed_at) or "",
        raw=m.raw or {},
    )


def erase_customer(session: Session, *, project_id: int, customer_id: int) -> None:
    """Erase a customer everywhere: profile, events, charges, tags, memberships, message log."""
    customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    customers.erase(session, project_id=project_id, customer_id=customer_id)
    membership.forget(session, project_id, [customer_id])
    redact_customer(session, project_id=project_id, customer_ids=[customer_id])


def stats(session: Session) -> list[IngestStats]:
    """Processor counters of every project."""
    return list(session.scalars(select(IngestStats).order_by(IngestStats.project_id)))


def prune(session: Session, *, settings: Settings) -> int:
    """Apply the message log retention; returns rows removed."""
    now = clock.now()
    cutoff = now - timedelta(hours=settings.accepted_log_retention_hours)
    removed = session.execute(
        delete(IngestMessage).where(
            IngestMessage.status == "accepted", IngestMessage.processed_at < cutoff
        )
    ).rowcount  # type: ignore[attr-defined]
    if settings.rejected_log_retention_days:
        old = now - timedelta(days=settings.rejected_log_retention_days)
        removed += session.execute(
            delete(IngestMessage).where(
                IngestMessage.status != "accepted", IngestMessage.processed_at < old
            )
        ).rowcount  # type: ignore[attr-defined]
    return int(removed or 0)


# -- CSV import -------------------------------------------------------------------------------

ID_COLUMNS = {
    "user_id": "userId",
    "userid": "userId",
    "id": "userId",
    "anonymous_id": "anonymousId",
    "anonymousid": "anonymousId",
}


@dataclass(slots=True)
class RowError:
    line: int
    message: str


@dataclass(slots=True)
class ImportResult:
    imported: int
    errors: list[RowError]


def _row_to_message(row: dict[str, str], line: int) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "identify", "traits": {}}
    for column, value in row.items():
        if column is None:
            raise ValueError("more values than columns")
        key = column.strip()
        value = (value or "").strip()
        if not key or value == "":
            continue
        if not _utf8(key) or not _utf8(value):
            raise ValueError(f"column {key!r} is not valid UTF-8")
        target = ID_COLUMNS.get(key.lower())
        if target:
            message[target] = value
            continue
        if key.lower() == "email" and not looks_like_email(value):
            raise ValueError(f"email {value!r} is not an email address")
        if is_date_key(key) and parse_datetime(value) is None:
            raise ValueError(f"{key} {value!r} is not a date (ISO-8601 or UNIX time)")
        message["traits"][key] = value
    if "userId" not in message and "email" not in message["traits"]:
        raise ValueError("the row has neither user_id nor email")
    return message


def _utf8(text: str) -> bool:
    # Rows are read with surrogateescape: undecodable bytes show up as lone surrogates.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_csv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with their line numbers (the header is line 1)."""
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise BadRequest(f"{path} has no header row.", code="invalid_csv")
        for row in reader:
            yield reader.line_num, row


def import_customers(
    db: Database,
    *,
    project_id: int,
    path: Path,
    progress: Callable[[int], None] | None = None,
    chunk: int = 1000,
) -> ImportResult:
    """Create or update customers from a CSV file through the ingestion write path.

    Columns user_id / anonymous_id / email are identifiers, every other column a trait. A bad
    row is reported with its line number and skipped; the rest are imported.
    """
    if not path.is_file():
        raise BadRequest(f"No such file: {path}", code="invalid_csv")
    errors: list[RowError] = []
    imported = 0
    pending: list[processor.Entry] = []
    received_at = clock.now()
    run = clock.now().strftime("%Y%m%d%H%M%S%f")

    def flush() -> None:
        nonlocal imported
        if not pending:
            return
        with db.session(write=True) as session:
            processor.apply_entries(session, pending)
        for e in pending:
            if e.status == "accepted":
                imported += 1
            else:
                errors.append(RowError(int(e.message_id.split("-")[2]), e.reason or e.status))
        if progress:
            progress(len(pending))
        pending.clear()

    for line, row in read_csv(path):
        try:
            message = _row_to_message(row, line)
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
            if progress:
                progress(1)
            continue
        message["messageId"] = f"csv-{run}-{line}"
        pending.append(
            processor.Entry(
                project_id=project_id,
                message_id=message["messageId"],
                received_at=received_at,
                raw=message,
            )
        )
        if len(pending) >= chunk:
            flush()
    flush()
    errors.sort(key=lambda e: e.line)
    return ImportResult(imported=imported, errors=errors)


def newest_id(session: Session, *, project_id: int) -> int:
    """The id of the project's newest logged message (0 when none)."""
    value = session.scalar(
        select(IngestMessage.id)
        .where(IngestMessage.project_id == project_id)
        .order_by(IngestMessage.id.desc())
        .limit(1)
    )
    return int(value or 0)


def messages_after(
    session: Session,
    *,
    project_id: int,
    after: int,
    status: str | None = None,
    type: str | None = None,
    limit: int = 100,
) -> list[MessageOut]:
    """Messages logged after `after`, newest first (the live view's poll)."""
    query = select(IngestMessage).where(
        IngestMessage.project_id == project_id, IngestMessage.id > after
    )
    if status:
        query = query.where(IngestMessage.status == status)
    if type:
        query = query.where(IngestMessage.type == type)
    rows = session.scalars(query.order_by(IngestMessage.id.desc()).limit(limit))
    return [_message_out(m) for m in rows]
