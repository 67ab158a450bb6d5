"""/api/templates: CRUD, the starter gallery, previews and test sends."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tidings.api.deps import Reader, Writer
from tidings.customers.schemas import Page
from tidings.messaging import gateway
from tidings.messaging import service as messaging
from tidings.messaging.schemas import MessageOut
from tidings.templates import service
from tidings.templates.schemas import (
    PreviewIn,
    PreviewOut,
    SendTestIn,
    StarterOut,
    TemplateIn,
    TemplateOut,
    TemplatePatch,
)

router = APIRouter(prefix="/api/templates", tags=["templates"])


@router.get("", response_model=Page[TemplateOut])
def list_templates(ctx: Writer) -> Page[TemplateOut]:
    """Every template, the project's default layout first."""
    return Page(
        data=[
            service.to_out(t)
            for t in service.list_templates(ctx.session, project_id=ctx.project_id)
        ]
    )


@router.get("/starters", response_model=Page[StarterOut])
def starters(ctx: Reader) -> Page[StarterOut]:
    """The starter gallery: welcome, onboarding step, announcement, receipt, NPS survey."""
    return Page(data=service.starters())


@router.post("", response_model=TemplateOut, status_code=201)
def create_template(ctx: Writer, body: TemplateIn) -> TemplateOut:
    """A new template; what is left out comes from the starter or the default layout."""
    t = service.create(ctx.session, project_id=ctx.project_id, **body.model_dump())
    return service.to_out(t)


@router.get("/{template_id}", response_model=TemplateOut)
def get_template(ctx: Reader, template_id: int) -> TemplateOut:
    """One template."""
    return service.to_out(
        service.get_or_raise(ctx.session, project_id=ctx.project_id, template_id=template_id)
    )


@router.patch("/{template_id}", response_model=TemplateOut)
def update_template(ctx: Writer, template_id: int, body: TemplatePatch) -> TemplateOut:
    """Edit a template; syntax errors are refused with their line and column."""
    t = service.update(
        ctx.session,
        project_id=ctx.project_id,
        template_id=template_id,
        **body.model_dump(exclude_unset=True),
    )
    return service.to_out(t)


@router.delete("/{template_id}", status_code=204)
def delete_template(ctx: Writer, template_id: int) -> Response:
    """Delete a template (not the default layout)."""
    messaging.delete_template(ctx.session, project_id=ctx.project_id, template_id=template_id)
    return Response(status_code=204)


@router.post("/{template_id}/preview", response_model=PreviewOut)
def preview(ctx: Writer, template_id: int, body: PreviewIn) -> PreviewOut:
    """Render the template (or an unsaved draft of it) for a customer or a sample one."""
    r = messaging.preview(
        ctx.session,
        project_id=ctx.project_id,
        template_id=template_id,
        db=ctx.db,
        customer_id=body.customer_id,
        event=body.event,
        data=body.data,
        draft={
            "subject": body.subject,
            "preheader": body.preheader,
            "html": body.html,
            "text": body.text,
        },
    )
    return PreviewOut(subject=r.subject, html=r.html, text=r.text)


@router.post("/{template_id}/send-test", response_model=MessageOut, status_code=201)
def send_test(ctx: Writer, template_id: int, body: SendTestIn) -> MessageOut:
    """Send the template to any address (rendered for `customer_id` when given)."""
    m = gateway.send_test(
        ctx.session,
        project_id=ctx.project_id,
        template_id=template_id,
        to=body.to,
        customer_id=body.customer_id,
        variables={"data": body.data or {}},
    )
    return messaging.message_out(m)
