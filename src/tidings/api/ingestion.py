"""/api/ingestion/messages: every processed message with its status and reason."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tidings.api.deps import Reader
from tidings.customers.schemas import Page
from tidings.ingest import service
from tidings.ingest.schemas import MessageOut

router = APIRouter(prefix="/api/ingestion", tags=["ingestion"])


@router.get("/messages", response_model=Page[MessageOut])
def messages(
    ctx: Reader,
    status: str | None = None,
    type: str | None = None,
    user_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page[MessageOut]:
    """Messages newest first; filter by status (accepted, dropped, rejected, failed)."""
    return service.list_messages(
        ctx.session,
        project_id=ctx.project_id,
        status=status,
        type=type,
        user_id=user_id,
        limit=limit,
        cursor=cursor,
    )
