"""Pydantic shapes of the message log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Status = Literal["accepted", "dropped", "rejected", "failed"]


class MessageOut(BaseModel):
    id: int
    message_id: str
    type: str | None
    status: Status
    reason: str | None
    user_id: str | None
    anonymous_id: str | None
    event: str | None
    customer_id: int | None
    received_at: str
    processed_at: str
    raw: dict[str, Any]
