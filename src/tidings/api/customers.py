"""/api/customers: list and search, lookup, profile, timeline, charges, tags, traits, erase."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tidings.api.deps import Reader, Writer
from tidings.customers import service
from tidings.customers.schemas import ChargeOut, CustomerOut, EventOut, Page, TraitsPatch
from tidings.ingest import service as ingestion

router = APIRouter(prefix="/api/customers", tags=["customers"])

Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("", response_model=Page[CustomerOut])
def list_customers(
    ctx: Reader,
    q: str | None = None,
    email: str | None = None,
    user_id: str | None = None,
    tag: str | None = None,
    trait: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
    sort: Annotated[str, Query(description="created | last_seen | lifetime_value")] = "created",
    limit: Limit = 50,
    cursor: str | None = None,
) -> Page[CustomerOut]:
    """Customers (newest first, or by last seen or lifetime value); search by text (email,
    name or userId prefix), tag and traits."""
    return service.search(
        ctx.session,
        project_id=ctx.project_id,
        q=q,
        email=email,
        user_id=user_id,
        tag=tag,
        traits=trait,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )


@router.get("/lookup", response_model=CustomerOut)
def lookup(ctx: Reader, user_id: str | None = None, email: str | None = None) -> CustomerOut:
    """Find one customer by your userId or by email."""
    c = service.lookup_or_raise(
        ctx.session, project_id=ctx.project_id, user_id=user_id, email=email
    )
    return service.to_out(ctx.session, c)


@router.get("/{customer_id}", response_model=CustomerOut)
def get_customer(ctx: Reader, customer_id: int) -> CustomerOut:
    c = service.get_or_raise(ctx.session, project_id=ctx.project_id, customer_id=customer_id)
    return service.to_out(ctx.session, c)


@router.get("/{customer_id}/events", response_model=Page[EventOut])
def timeline(
    ctx: Reader, customer_id: int, limit: Limit = 50, cursor: str | None = None
) -> Page[EventOut]:
    """The customer's timeline, newest first."""
    return service.timeline(
        ctx.session, project_id=ctx.project_id, customer_id=customer_id, limit=limit, cursor=cursor
    )


@router.get("/{customer_id}/charges", response_model=Page[ChargeOut])
def charges(
    ctx: Reader, customer_id: int, limit: Limit = 50, cursor: str | None = None
) -> Page[ChargeOut]:
    return service.charges(
        ctx.session, project_id=ctx.project_id, customer_id=customer_id, limit=limit, cursor=cursor
    )


@router.get("/{customer_id}/tags")
def tags(ctx: Reader, customer_id: int) -> dict[str, list[str]]:
    c = service.get_or_raise(ctx.session, project_id=ctx.project_id, customer_id=customer_id)
    return {"data": service.to_out(ctx.session, c).tags}


@router.put("/{customer_id}/tags/{tag}")
def add_tag(ctx: Writer, customer_id: int, tag: str) -> dict[str, list[str]]:
    """Tag the customer (idempotent)."""
    return {
        "data": service.add_tag(
            ctx.session, project_id=ctx.project_id, customer_id=customer_id, tag=tag
        )
    }


@router.delete("/{customer_id}/tags/{tag}")
def remove_tag(ctx: Writer, customer_id: int, tag: str) -> dict[str, list[str]]:
    """Remove a tag from the customer (idempotent)."""
    return {
        "data": service.remove_tag(
            ctx.session, project_id=ctx.project_id, customer_id=customer_id, tag=tag
        )
    }


@router.patch("/{customer_id}/traits", response_model=CustomerOut)
def patch_traits(ctx: Writer, customer_id: int, body: TraitsPatch) -> CustomerOut:
    """Merge traits into the profile; null removes a trait."""
    c = service.update_traits(
        ctx.session, project_id=ctx.project_id, customer_id=customer_id, traits=body.traits
    )
    return service.to_out(ctx.session, c)


@router.delete("/{customer_id}")
def erase(ctx: Writer, customer_id: int) -> dict[str, object]:
    """Erase the profile with its events, charges, tags and memberships."""
    ingestion.erase_customer(ctx.session, project_id=ctx.project_id, customer_id=customer_id)
    return {"id": customer_id, "deleted": True}
