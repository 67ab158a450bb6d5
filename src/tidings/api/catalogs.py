"""/api/events, /api/traits, /api/tags: the project's catalogs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tidings.api.deps import Reader
from tidings.customers import service
from tidings.customers.schemas import EventTypeOut, Page, TagCount, TraitOut

router = APIRouter(prefix="/api", tags=["catalogs"])
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/events", response_model=Page[EventTypeOut])
def events(ctx: Reader, limit: Limit = 200, cursor: str | None = None) -> Page[EventTypeOut]:
    """Every event name seen, with counts and property types."""
    return service.list_events(ctx.session, project_id=ctx.project_id, limit=limit, cursor=cursor)


@router.get("/traits", response_model=Page[TraitOut])
def traits(ctx: Reader, limit: Limit = 200, cursor: str | None = None) -> Page[TraitOut]:
    """Every trait key held by at least one customer, with its type."""
    return service.list_traits(ctx.session, project_id=ctx.project_id, limit=limit, cursor=cursor)


@router.get("/tags", response_model=Page[TagCount])
def tags(ctx: Reader, limit: Limit = 200, cursor: str | None = None) -> Page[TagCount]:
    """Every tag with how many customers carry it."""
    return service.list_tags(ctx.session, project_id=ctx.project_id, limit=limit, cursor=cursor)
