"""Dashboard routes for email: templates (list, starters, editor with live preview, test sends,
delete), the message log and one message, subscription topics, suppressions, email settings.

Thin like the other pages: parse the form, call `templates.service` or `messaging`, render.
Templates and the message log are open to every project member, like segments; email settings,
topics and suppressions are project settings, so only owners and admins see or change them.
The editor's live preview posts JSON to `/templates/{id}/preview` with the session's CSRF token
in the `X-CSRF-Token` header. Sessions, sign-in, CSRF checks and rendering are the helpers of
`pages`, shared on purpose; GET pages whose service creates defaults on first use (the default
layout, the built-in topics, the settings row) take a write session, as the API does.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session

from tidings.auth import service as projects
from tidings.auth import users
from tidings.auth.models import Project
from tidings.errors import AppError, BadRequest, Conflict, NotFound
from tidings.messaging import gateway
from tidings.messaging import service as messaging
from tidings.messaging import settings as email_settings
from tidings.messaging.schemas import EmailSettingsPatch, TopicIn
from tidings.templates import service as templates
from tidings.templates.render import TemplateSyntaxError
from tidings.templates.schemas import MAX_BODY, TemplateIn, TemplateOut, TemplatePatch
from tidings.web.pages import Reader, Writer, _check_csrf, _db, _page, _project, _viewer
from tidings.web.render import Viewer
from tidings.web.segment_pages import _find_customer

router = APIRouter(include_in_schema=False)

# The statuses a message goes through (messaging.models.Message.status), for the log's filter.
STATUSES = ("queued", "deferred", "sending", "sent", "skipped", "failed", "bounced", "complained")
PAGE_SIZE = 50
PROFILE_MESSAGES = 10
PARTS = ("subject", "preheader", "html", "text")
# A sent message's HTML carries its open pixel and tracked links. Reading it here must not count
# as an open or a click, so the message page loads no image but its own static files (the pixel
# is on this origin too) and lets its frame navigate nowhere: `frame-src 'none'` still shows the
# srcdoc document but blocks a click on a link in it before any request. The sandbox already
# forbids scripts, forms and popups.
MESSAGE_CSP = (
    "default-src 'self'; img-src data: {static}; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-src 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _url(project_id: int, *parts: object) -> str:
    return "/".join([f"/p/{project_id}", *(str(p) for p in parts)])


def _invalid(exc: ValidationError, code: str) -> BadRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return BadRequest(f"{where}: {first.get('msg', 'invalid')}", code=code)


def _manager(session: Session, viewer: Viewer, project_id: int) -> tuple[Project, str]:
    """The project and the viewer's role, for pages only owners and admins may use."""
    role = users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    return projects.get_or_raise(session, project_id=project_id), role


def _customer_id(session: Session, project_id: int, text: str) -> int | None:
    """The customer a preview or test send is rendered for: none when the field is empty."""
    return _find_customer(session, project_id, text).id if text.strip() else None


# -- templates: list and new --------------------------------------------------------------------


@router.get("/p/{project_id}/templates")
def template_list(request: Request, session: Writer, project_id: int) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    rows = templates.list_templates(session, project_id=project_id)
    flashes = [("Template deleted.", "")] if request.query_params.get("deleted") else []
    return _page(
        request,
        "template_list.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="templates",
        flashes=flashes,
        templates=[templates.to_out(t) for t in rows],
    )


def _new_form(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    *,
    name: str = "",
    starter: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _project(session, viewer, project_id)
    return _page(
        request,
        "template_new.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="templates",
        starters=templates.starters(),
        form={"name": name, "starter": starter},
        error=error,
    )


@router.get("/p/{project_id}/templates/new")
def template_new(request: Request, session: Reader, project_id: int, starter: str = "") -> Response:
    viewer = _viewer(request, session)
    return _new_form(request, session, viewer, project_id, starter=starter)


@router.post("/p/{project_id}/templates")
def template_create(
    request: Request,
    session: Writer,
    project_id: int,
    name: Annotated[str, Form()] = "",
    starter: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    try:
        body = TemplateIn(name=name.strip(), starter=starter or None)
        with session.begin_nested():
            t = templates.create(
                session, project_id=project_id, name=body.name, starter=body.starter
            )
    except ValidationError as exc:
        error: AppError = _invalid(exc, "invalid_template")
    except (BadRequest, Conflict) as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, "templates", t.id) + "?created=1", 303)
    return _new_form(
        request,
        session,
        viewer,
        project_id,
        name=name,
        starter=starter,
        error=error.message,
        status_code=error.http_status,
    )


# -- templates: the editor ----------------------------------------------------------------------


def _editor(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    template_id: int,
    *,
    draft: dict[str, str] | None = None,
    error: AppError | None = None,
    send_to: str = "",
    customer: str = "",
    send_error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The editor: the form (the saved template or the posted draft), its preview, test sends."""
    project, role = _project(session, viewer, project_id)
    t = templates.to_out(
        templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    )
    form = draft or {"name": t.name, **{p: getattr(t, p) for p in PARTS}}
    preview, preview_error = None, None
    try:
        with session.begin_nested():
            preview = messaging.preview(
                session,
                project_id=project_id,
                template_id=template_id,
                db=_db(request),
                customer_id=_customer_id(session, project_id, customer),
                draft={p: form[p] for p in PARTS} if draft else None,
            )
    except (BadRequest, NotFound) as exc:
        preview_error = exc.message
    flashes = []
    if request.query_params.get("created"):
        flashes.append(("Template created.", ""))
    if request.query_params.get("saved"):
        flashes.append(("Template saved.", ""))
    sent = request.query_params.get("sent", "")
    return _page(
        request,
        "template_edit.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="templates",
        flashes=flashes,
        t=t,
        form=form,
        error=error.message if error else None,
        error_at=error if isinstance(error, TemplateSyntaxError) else None,
        preview=preview,
        preview_error=preview_error,
        customer=customer,
        send_to=send_to,
        send_error=send_error,
        sent=int(sent) if sent.isdigit() else None,
    )


@router.get("/p/{project_id}/templates/{template_id}")
def template_edit(
    request: Request, session: Writer, project_id: int, template_id: int, customer: str = ""
) -> Response:
    """The editor; `customer` renders the preview for one (the live preview does it in place)."""
    viewer = _viewer(request, session)
    return _editor(request, session, viewer, project_id, template_id, customer=customer)


@router.post("/p/{project_id}/templates/{template_id}")
def template_save(
    request: Request,
    session: Writer,
    project_id: int,
    template_id: int,
    name: Annotated[str, Form()] = "",
    subject: Annotated[str, Form()] = "",
    preheader: Annotated[str, Form()] = "",
    html: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    draft = {"name": name, "subject": subject, "preheader": preheader, "html": html, "text": text}
    try:
        patch = TemplatePatch(**draft)
        # A savepoint: a refused part must not keep the new name either.
        with session.begin_nested():
            templates.update(
                session,
                project_id=project_id,
                template_id=template_id,
                **patch.model_dump(exclude_unset=True),
            )
    except ValidationError as exc:
        error: AppError = _invalid(exc, "invalid_template")
    except (BadRequest, Conflict) as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, "templates", template_id) + "?saved=1", 303)
    return _editor(
        request,
        session,
        viewer,
        project_id,
        template_id,
        draft=draft,
        error=error,
        status_code=error.http_status,
    )


class PreviewBody(BaseModel):
    """The editor's draft as it is typed, and who to render it for."""

    subject: str | None = Field(default=None, max_length=1000)
    preheader: str | None = Field(default=None, max_length=1000)
    html: str | None = Field(default=None, max_length=MAX_BODY)
    text: str | None = Field(default=None, max_length=MAX_BODY)
    customer: str = Field(default="", max_length=320)


@router.post("/p/{project_id}/templates/{template_id}/preview")
def template_preview(
    request: Request, session: Writer, project_id: int, template_id: int, body: PreviewBody
) -> Response:
    """The live preview: {valid, subject, html, text}, or {valid: false, code, message, part?,
    line?, column?}.

    A draft that does not parse is an expected answer while someone types, so it comes with 200
    (the message names the part, line and column); a missing CSRF token, project or template is
    a real error.
    """
    viewer = _viewer(request, session)
    try:
        _check_csrf(request, viewer, None)
        _project(session, viewer, project_id)
        templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    except AppError as exc:
        return JSONResponse(exc.as_dict(), status_code=exc.http_status)
    try:
        out = messaging.preview(
            session,
            project_id=project_id,
            template_id=template_id,
            db=_db(request),
            customer_id=_customer_id(session, project_id, body.customer),
            draft=body.model_dump(include=set(PARTS)),
        )
    except TemplateSyntaxError as exc:
        where = {"part": exc.part, "line": exc.line, "column": exc.column}
        return JSONResponse({"valid": False, **exc.as_dict(), **where})
    except (BadRequest, NotFound) as exc:
        return JSONResponse({"valid": False, **exc.as_dict()})
    return JSONResponse({"valid": True, "subject": out.subject, "html": out.html, "text": out.text})


@router.post("/p/{project_id}/templates/{template_id}/send-test")
def template_send_test(
    request: Request,
    session: Writer,
    project_id: int,
    template_id: int,
    to: Annotated[str, Form()] = "",
    customer: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    try:
        with session.begin_nested():
            m = gateway.send_test(
                session,
                project_id=project_id,
                template_id=template_id,
                to=to,
                customer_id=_customer_id(session, project_id, customer),
            )
    except (BadRequest, NotFound) as exc:
        return _editor(
            request,
            session,
            viewer,
            project_id,
            template_id,
            send_to=to,
            customer=customer,
            send_error=exc.message,
            status_code=exc.http_status,
        )
    return RedirectResponse(_url(project_id, "templates", template_id) + f"?sent={m.id}", 303)


# -- templates: delete --------------------------------------------------------------------------


def _confirm_delete(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    t: TemplateOut,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _project(session, viewer, project_id)
    return _page(
        request,
        "template_delete.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="templates",
        t=t,
        error=error,
    )


@router.get("/p/{project_id}/templates/{template_id}/delete")
def template_delete_confirm(
    request: Request, session: Reader, project_id: int, template_id: int
) -> Response:
    viewer = _viewer(request, session)
    _project(session, viewer, project_id)
    t = templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    return _confirm_delete(request, session, viewer, project_id, templates.to_out(t))


@router.post("/p/{project_id}/templates/{template_id}/delete")
def template_delete(
    request: Request,
    session: Writer,
    project_id: int,
    template_id: int,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    t = templates.to_out(
        templates.get_or_raise(session, project_id=project_id, template_id=template_id)
    )
    try:
        messaging.delete_template(session, project_id=project_id, template_id=template_id)
    except Conflict as exc:
        return _confirm_delete(
            request,
            session,
            viewer,
            project_id,
            t,
            error=exc.message,
            status_code=exc.http_status,
        )
    return RedirectResponse(_url(project_id, "templates") + "?deleted=1", status_code=303)


# -- the message log ----------------------------------------------------------------------------


@router.get("/p/{project_id}/messages")
def message_list(
    request: Request,
    session: Reader,
    project_id: int,
    status: str = "",
    customer_id: int | None = None,
    cursor: str | None = None,
    limit: int = PAGE_SIZE,
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    st = status if status in STATUSES else ""
    rows, next_cursor = messaging.list_messages(
        session,
        project_id=project_id,
        customer_id=customer_id,
        status=st or None,
        limit=limit,
        cursor=cursor,
    )
    params: dict[str, object] = {
        k: v for k, v in {"status": st, "customer_id": customer_id}.items() if v
    }
    if limit != PAGE_SIZE:
        params["limit"] = limit
    return _page(
        request,
        "email_messages.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="messages",
        messages=rows,
        statuses=STATUSES,
        status=st,
        customer_id=customer_id,
        cursor=cursor,
        next_query=urlencode({**params, "cursor": next_cursor}) if next_cursor else None,
        first_query=urlencode(params),
        provider="smtp" if _db(request).settings.smtp_url else "outbox",
    )


@router.get("/p/{project_id}/messages/{message_id}")
def message_page(request: Request, session: Reader, project_id: int, message_id: int) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    m = messaging.detail(session, project_id=project_id, message_id=message_id)
    t = (
        templates.get(session, project_id=project_id, template_id=m.template_id)
        if m.template_id is not None
        else None
    )
    response = _page(
        request,
        "email_message.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="messages",
        m=m,
        template_name=t.name if t is not None else None,
    )
    static = f"{request.url.scheme}://{request.url.netloc}/static/"
    response.headers["Content-Security-Policy"] = MESSAGE_CSP.format(static=static)
    return response


# -- subscription topics (owners and admins) ----------------------------------------------------


def _topics_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _manager(session, viewer, project_id)
    flashes = []
    if request.query_params.get("created"):
        flashes.append(("Topic created.", ""))
    if request.query_params.get("deleted"):
        flashes.append(("Topic deleted.", ""))
    return _page(
        request,
        "email_topics.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="email-topics",
        flashes=flashes,
        topics=messaging.topics(session, project_id=project_id),
        form=form or {"key": "", "name": "", "description": ""},
        error=error,
    )


@router.get("/p/{project_id}/email/topics")
def topic_list(request: Request, session: Writer, project_id: int) -> Response:
    viewer = _viewer(request, session)
    return _topics_page(request, session, viewer, project_id)


@router.post("/p/{project_id}/email/topics")
def topic_create(
    request: Request,
    session: Writer,
    project_id: int,
    key: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    try:
        body = TopicIn(key=key.strip(), name=name.strip(), description=description.strip())
        with session.begin_nested():
            email_settings.create_topic(session, project_id=project_id, **body.model_dump())
    except ValidationError as exc:
        error: AppError = _invalid(exc, "bad_topic")
    except (BadRequest, Conflict) as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, "email/topics") + "?created=1", 303)
    return _topics_page(
        request,
        session,
        viewer,
        project_id,
        form={"key": key, "name": name, "description": description},
        error=error.message,
        status_code=error.http_status,
    )


@router.post("/p/{project_id}/email/topics/{key}/delete")
def topic_delete(
    request: Request,
    session: Writer,
    project_id: int,
    key: str,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    try:
        email_settings.delete_topic(session, project_id=project_id, key=key)
    except Conflict as exc:
        return _topics_page(
            request, session, viewer, project_id, error=exc.message, status_code=exc.http_status
        )
    return RedirectResponse(_url(project_id, "email/topics") + "?deleted=1", 303)


# -- suppressions (owners and admins) -----------------------------------------------------------


def _suppressions_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _manager(session, viewer, project_id)
    cursor = request.query_params.get("cursor") or None
    rows, next_cursor = messaging.list_suppressions(
        session, project_id=project_id, limit=PAGE_SIZE, cursor=cursor
    )
    flashes = []
    if request.query_params.get("added"):
        flashes.append(("Address suppressed: nothing more is sent to it.", ""))
    if request.query_params.get("removed"):
        flashes.append(("Suppression removed: the address can receive email again.", ""))
    return _page(
        request,
        "email_suppressions.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="email-suppressions",
        flashes=flashes,
        suppressions=rows,
        cursor=cursor,
        next_cursor=next_cursor,
        form=form or {"email": "", "note": ""},
        error=error,
    )


@router.get("/p/{project_id}/email/suppressions")
def suppression_list(request: Request, session: Reader, project_id: int) -> Response:
    viewer = _viewer(request, session)
    return _suppressions_page(request, session, viewer, project_id)


@router.post("/p/{project_id}/email/suppressions")
def suppression_add(
    request: Request,
    session: Writer,
    project_id: int,
    email: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    try:
        with session.begin_nested():
            messaging.add_suppression(
                session, project_id=project_id, email=email.strip(), note=note.strip()
            )
    except BadRequest as exc:
        return _suppressions_page(
            request,
            session,
            viewer,
            project_id,
            form={"email": email, "note": note},
            error=exc.message,
            status_code=exc.http_status,
        )
    return RedirectResponse(_url(project_id, "email/suppressions") + "?added=1", 303)


@router.post("/p/{project_id}/email/suppressions/remove")
def suppression_remove(
    request: Request,
    session: Writer,
    project_id: int,
    email: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    messaging.remove_suppression(session, project_id=project_id, email=email)
    return RedirectResponse(_url(project_id, "email/suppressions") + "?removed=1", 303)


# -- email settings (owners and admins) ---------------------------------------------------------


def _settings_form(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    *,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _manager(session, viewer, project_id)
    current = messaging.settings_out(session, project_id=project_id, db=_db(request))
    quiet = current.quiet_hours or {}
    saved = {
        "from_name": current.from_name or "",
        "from_email": current.from_email or "",
        "reply_to": current.reply_to or "",
        "address": current.address,
        "cap_count": str(current.frequency_cap.get("count", 0)),
        "cap_days": str(current.frequency_cap.get("days", 7)),
        "quiet_start": quiet.get("start", ""),
        "quiet_end": quiet.get("end", ""),
        "timezone": current.timezone,
        "track_opens": current.track_opens,
        "track_clicks": current.track_clicks,
    }
    flashes = [("Email settings saved.", "")] if request.query_params.get("saved") else []
    return _page(
        request,
        "email_settings.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="email-settings",
        flashes=flashes,
        form=form or saved,
        provider=current.provider,
        error=error,
    )


@router.get("/p/{project_id}/email/settings")
def email_settings_page(request: Request, session: Writer, project_id: int) -> Response:
    viewer = _viewer(request, session)
    return _settings_form(request, session, viewer, project_id)


def _number(value: str, field: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise BadRequest(f"{field}: enter a whole number.", code="bad_setting") from None


@router.post("/p/{project_id}/email/settings")
def email_settings_save(
    request: Request,
    session: Writer,
    project_id: int,
    from_name: Annotated[str, Form()] = "",
    from_email: Annotated[str, Form()] = "",
    reply_to: Annotated[str, Form()] = "",
    address: Annotated[str, Form()] = "",
    cap_count: Annotated[str, Form()] = "0",
    cap_days: Annotated[str, Form()] = "7",
    quiet_start: Annotated[str, Form()] = "",
    quiet_end: Annotated[str, Form()] = "",
    timezone: Annotated[str, Form()] = "UTC",
    track_opens: Annotated[str, Form()] = "",
    track_clicks: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    form: dict[str, Any] = {
        "from_name": from_name,
        "from_email": from_email,
        "reply_to": reply_to,
        "address": address,
        "cap_count": cap_count,
        "cap_days": cap_days,
        "quiet_start": quiet_start,
        "quiet_end": quiet_end,
        "timezone": timezone,
        "track_opens": bool(track_opens),
        "track_clicks": bool(track_clicks),
    }
    try:
        # Empty quiet-hour fields turn quiet hours off; one of the two alone is refused below.
        quiet = (
            {"start": quiet_start.strip(), "end": quiet_end.strip()}
            if quiet_start.strip() or quiet_end.strip()
            else None
        )
        patch = EmailSettingsPatch(
            from_name=from_name.strip() or None,
            from_email=from_email.strip() or None,
            reply_to=reply_to.strip() or None,
            address=address.strip(),
            frequency_cap={
                "count": _number(cap_count, "Frequency cap"),
                "days": _number(cap_days, "Frequency cap days"),
            },
            quiet_hours=quiet,
            timezone=timezone.strip(),
            track_opens=bool(track_opens),
            track_clicks=bool(track_clicks),
        )
        with session.begin_nested():
            messaging.update_settings(session, project_id=project_id, patch=patch, db=_db(request))
    except ValidationError as exc:
        error: AppError = _invalid(exc, "bad_setting")
    except BadRequest as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, "email/settings") + "?saved=1", 303)
    return _settings_form(
        request,
        session,
        viewer,
        project_id,
        form=form,
        error=error.message,
        status_code=error.http_status,
    )
