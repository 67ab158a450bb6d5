"""Message log upkeep shared by the processor and the service."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from tidings.ingest.models import IngestMessage


def redact_customer(session: Session, *, project_id: int, customer_ids: list[int]) -> None:
    """Strip an erased customer's data from the message log; the rows stay for dedup."""
    for start in range(0, len(customer_ids), 500):
        part = customer_ids[start : start + 500]
        session.execute(
            update(IngestMessage)
            .where(IngestMessage.project_id == project_id, IngestMessage.customer_id.in_(part))
            .values(
                raw={"redacted": True},
                user_id=None,
                anonymous_id=None,
                customer_id=None,
                reason="customer erased",
            )
        )
