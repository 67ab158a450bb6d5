"""/api/segments: definitions, members, preview and explain; /api/customers/{id}/segments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tidings.api.deps import Reader, Writer
from tidings.customers.schemas import Page
from tidings.segments import service
from tidings.segments.schemas import (
    CustomerSegmentOut,
    ExplainOut,
    MemberOut,
    PreviewIn,
    PreviewOut,
    SegmentIn,
    SegmentOut,
    SegmentPatch,
)

router = APIRouter(prefix="/api", tags=["segments"])
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/segments", response_model=Page[SegmentOut])
def list_segments(ctx: Reader) -> Page[SegmentOut]:
    """Every segment with its size, status and 7-day growth (entries and exits)."""
    return Page(data=service.list_segments(ctx.session, project_id=ctx.project_id))


@router.post("/segments", response_model=SegmentOut, status_code=201)
def create_segment(ctx: Writer, body: SegmentIn) -> SegmentOut:
    """Create a segment; it shows "computing" until its members are computed."""
    seg = service.create(
        ctx.session,
        project_id=ctx.project_id,
        name=body.name,
        rules=body.rules,
        description=body.description,
    )
    return service.to_out(seg)


@router.post("/segments/preview", response_model=PreviewOut)
def preview(ctx: Reader, body: PreviewIn) -> PreviewOut:
    """Count and sample the customers an unsaved definition matches."""
    return service.preview(
        ctx.session, project_id=ctx.project_id, rules=body.rules, sample=body.sample
    )


@router.get("/segments/{segment_id}", response_model=SegmentOut)
def get_segment(ctx: Reader, segment_id: int) -> SegmentOut:
    seg = service.get_or_raise(ctx.session, project_id=ctx.project_id, segment_id=segment_id)
    return service.to_out(
        seg, service.growth(ctx.session, project_id=ctx.project_id, segment_id=seg.id)
    )


@router.patch("/segments/{segment_id}", response_model=SegmentOut)
def update_segment(ctx: Writer, segment_id: int, body: SegmentPatch) -> SegmentOut:
    """Rename, describe or redefine; new rules recompute it (and segments built on it)."""
    seg = service.update(
        ctx.session,
        project_id=ctx.project_id,
        segment_id=segment_id,
        name=body.name,
        # Sent as null, it clears the description; left out, it stays.
        description=body.description if "description" in body.model_fields_set else ...,
        rules=body.rules,
    )
    return service.to_out(
        seg, service.growth(ctx.session, project_id=ctx.project_id, segment_id=seg.id)
    )


@router.delete("/segments/{segment_id}", status_code=204)
def delete_segment(ctx: Writer, segment_id: int) -> Response:
    """Delete a segment (409 while another segment refers to it)."""
    service.delete(ctx.session, project_id=ctx.project_id, segment_id=segment_id)
    return Response(status_code=204)


@router.get("/segments/{segment_id}/customers", response_model=Page[MemberOut])
def members(
    ctx: Reader, segment_id: int, limit: Limit = 50, cursor: str | None = None
) -> Page[MemberOut]:
    """The segment's members, most recent entries first."""
    data, nxt = service.members(
        ctx.session, project_id=ctx.project_id, segment_id=segment_id, limit=limit, cursor=cursor
    )
    return Page(data=data, next_cursor=nxt)


@router.get("/segments/{segment_id}/explain/{customer_id}", response_model=ExplainOut)
def explain(ctx: Reader, segment_id: int, customer_id: int) -> ExplainOut:
    """Why a customer is in or out: every condition with its value and whether it holds."""
    return service.explain(
        ctx.session, project_id=ctx.project_id, segment_id=segment_id, customer_id=customer_id
    )


@router.get("/customers/{customer_id}/segments", response_model=Page[CustomerSegmentOut])
def customer_segments(ctx: Reader, customer_id: int) -> Page[CustomerSegmentOut]:
    """The segments the customer is in."""
    return Page(
        data=service.customer_segments(
            ctx.session, project_id=ctx.project_id, customer_id=customer_id
        )
    )
