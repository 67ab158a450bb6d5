"""Dashboard routes for segments: the list, the rule builder, a segment's page, delete, explain.

Thin like the other pages: parse the form, call `segments.service`, render. Every project member
may create, edit and delete segments, the same rule the dashboard applies to customers' tags
(settings are the only manager-only pages). The builder's live count posts JSON to
`/segments/preview` with the session's CSRF token in the `X-CSRF-Token` header. Sessions,
sign-in, CSRF checks and rendering are the helpers of `pages`, shared on purpose.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from tidings.customers import service as customers
from tidings.customers.models import Customer
from tidings.errors import AppError, BadRequest, Conflict, NotFound
from tidings.segments import service as segments
from tidings.segments.schemas import SegmentIn, SegmentOut, SegmentPatch
from tidings.web.pages import Reader, Writer, _check_csrf, _page, _project, _viewer
from tidings.web.render import Viewer
from tidings.web.rules_text import builder_config

router = APIRouter(include_in_schema=False)
PREVIEW_SAMPLE = 5
NEW_RULES: dict[str, Any] = {"all": []}


def _pretty(rules: Any) -> str:
    return orjson.dumps(rules, option=orjson.OPT_INDENT_2).decode()


def _url(project_id: int, *parts: object) -> str:
    return "/".join([f"/p/{project_id}/segments", *(str(p) for p in parts)])


def _names(session: Session, project_id: int) -> dict[int, str]:
    return {s.id: s.name for s in segments.list_segments(session, project_id=project_id)}


def _segment_out(session: Session, project_id: int, segment_id: int) -> SegmentOut:
    seg = segments.get_or_raise(session, project_id=project_id, segment_id=segment_id)
    return segments.to_out(
        seg, segments.growth(session, project_id=project_id, segment_id=segment_id)
    )


# -- list ---------------------------------------------------------------------------------------


def _list_context(session: Session, project_id: int) -> dict[str, Any]:
    rows = segments.list_segments(session, project_id=project_id)
    return {"segments": rows, "computing": any(s.status == "computing" for s in rows)}


@router.get("/p/{project_id}/segments")
def segment_list(request: Request, session: Reader, project_id: int) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    flashes = [("Segment deleted.", "")] if request.query_params.get("deleted") else []
    return _page(
        request,
        "segments.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="segments",
        flashes=flashes,
        **_list_context(session, project_id),
    )


@router.get("/p/{project_id}/segments/table")
def segment_table(request: Request, session: Reader, project_id: int) -> Response:
    """The list's table alone: polled while a segment is computing."""
    viewer = _viewer(request, session)
    project, _ = _project(session, viewer, project_id)
    return _page(
        request,
        "_segment_table.html",
        viewer=viewer,
        project=project,
        **_list_context(session, project_id),
    )


# -- builder ------------------------------------------------------------------------------------


def _form(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    *,
    segment: SegmentOut | None,
    name: str,
    description: str,
    rules_text: str,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    project, role = _project(session, viewer, project_id)
    config = builder_config(
        traits=customers.list_traits(session, project_id=project_id).data,
        events=customers.list_events(session, project_id=project_id).data,
        tags=customers.tag_names(session, project_id=project_id),
        segments=segments.list_segments(session, project_id=project_id),
        editing=segment.id if segment else None,
        preview_url=_url(project_id, "preview"),
    )
    config["customers_url"] = f"/p/{project_id}/customers"
    return _page(
        request,
        "segment_form.html",
        status_code=status_code,
        viewer=viewer,
        project=project,
        role=role,
        nav="segments",
        segment=segment,
        action=_url(project_id, segment.id, "edit") if segment else _url(project_id),
        form={"name": name, "description": description, "rules": rules_text},
        error=error,
        config=config,
    )


def _rules(rules: str, rules_text: str | None) -> Any:
    """The posted definition: the builder's hidden field, or the no-script textarea."""
    text = rules_text if rules_text is not None else rules
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The rules are not valid JSON: {exc}", code="invalid_json") from exc


def _invalid(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return BadRequest(f"{where}: {first.get('msg', 'invalid')}", code="invalid_segment")


@router.get("/p/{project_id}/segments/new")
def segment_new(request: Request, session: Reader, project_id: int) -> Response:
    viewer = _viewer(request, session)
    return _form(
        request,
        session,
        viewer,
        project_id,
        segment=None,
        name="",
        description="",
        rules_text=_pretty(NEW_RULES),
    )


@router.post("/p/{project_id}/segments")
def segment_create(
    request: Request,
    session: Writer,
    project_id: int,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    rules: Annotated[str, Form()] = "",
    rules_text: Annotated[str | None, Form()] = None,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    try:
        body = SegmentIn(
            name=name, description=description or None, rules=_rules(rules, rules_text)
        )
        with session.begin_nested():
            seg = segments.create(
                session,
                project_id=project_id,
                name=body.name,
                rules=body.rules,
                description=body.description,
            )
    except ValidationError as exc:
        error: AppError = _invalid(exc)
    except (BadRequest, Conflict) as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, seg.id) + "?saved=1", status_code=303)
    return _form(
        request,
        session,
        viewer,
        project_id,
        segment=None,
        name=name,
        description=description,
        rules_text=rules_text if rules_text is not None else rules,
        error=error.message,
        status_code=error.http_status,
    )


@router.get("/p/{project_id}/segments/{segment_id}/edit")
def segment_edit(request: Request, session: Reader, project_id: int, segment_id: int) -> Response:
    viewer = _viewer(request, session)
    _project(session, viewer, project_id)
    seg = _segment_out(session, project_id, segment_id)
    return _form(
        request,
        session,
        viewer,
        project_id,
        segment=seg,
        name=seg.name,
        description=seg.description or "",
        rules_text=_pretty(seg.rules),
    )


@router.post("/p/{project_id}/segments/{segment_id}/edit")
def segment_update(
    request: Request,
    session: Writer,
    project_id: int,
    segment_id: int,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    rules: Annotated[str, Form()] = "",
    rules_text: Annotated[str | None, Form()] = None,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    segments.get_or_raise(session, project_id=project_id, segment_id=segment_id)
    try:
        patch = SegmentPatch(name=name, description=description, rules=_rules(rules, rules_text))
        # A savepoint: a refused definition must not keep the new name either.
        with session.begin_nested():
            segments.update(
                session,
                project_id=project_id,
                segment_id=segment_id,
                name=patch.name,
                description=patch.description,
                rules=patch.rules,
            )
    except ValidationError as exc:
        error: AppError = _invalid(exc)
    except (BadRequest, Conflict) as exc:
        error = exc
    else:
        return RedirectResponse(_url(project_id, segment_id) + "?saved=1", status_code=303)
    return _form(
        request,
        session,
        viewer,
        project_id,
        segment=_segment_out(session, project_id, segment_id),
        name=name,
        description=description,
        rules_text=rules_text if rules_text is not None else rules,
        error=error.message,
        status_code=error.http_status,
    )


class PreviewBody(BaseModel):
    rules: Any = None


@router.post("/p/{project_id}/segments/preview")
def segment_preview(
    request: Request, session: Reader, project_id: int, body: PreviewBody
) -> Response:
    """The builder's live count: {valid, count, sample}, or {valid: false, code, message}.

    A definition the parser refuses is an expected answer while someone types, so it comes with
    200 (the message names the condition); a missing CSRF token or project is a real error.
    """
    viewer = _viewer(request, session)
    try:
        _check_csrf(request, viewer, None)
        _project(session, viewer, project_id)
    except AppError as exc:
        return JSONResponse(exc.as_dict(), status_code=exc.http_status)
    try:
        out = segments.preview(
            session, project_id=project_id, rules=body.rules, sample=PREVIEW_SAMPLE
        )
    except BadRequest as exc:
        return JSONResponse({"valid": False, **exc.as_dict()})
    return JSONResponse({"valid": True, **out.model_dump()})


# -- one segment --------------------------------------------------------------------------------


def _segment_context(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    segment_id: int,
    cursor: str | None,
) -> dict[str, Any]:
    project, role = _project(session, viewer, project_id)
    seg = _segment_out(session, project_id, segment_id)
    page, next_cursor = segments.members(
        session, project_id=project_id, segment_id=segment_id, cursor=cursor
    )
    flashes = []
    if request.query_params.get("saved"):
        flashes.append(("Segment saved. Its members are computed in the background.", ""))
    return {
        "viewer": viewer,
        "project": project,
        "role": role,
        "nav": "segments",
        "seg": seg,
        "members": page,
        "cursor": cursor,
        "next_cursor": next_cursor,
        "names": _names(session, project_id),
        "flashes": flashes,
        "customer_query": "",
        "explanation": None,
        "explained": None,
        "explain_error": None,
    }


@router.get("/p/{project_id}/segments/{segment_id}")
def segment_page(
    request: Request,
    session: Reader,
    project_id: int,
    segment_id: int,
    cursor: str | None = None,
) -> Response:
    viewer = _viewer(request, session)
    context = _segment_context(request, session, viewer, project_id, segment_id, cursor)
    return _page(request, "segment.html", **context)


@router.get("/p/{project_id}/segments/{segment_id}/status")
def segment_status(
    request: Request,
    session: Reader,
    project_id: int,
    segment_id: int,
    cursor: str | None = None,
) -> Response:
    """Status and member count (and, out of band, the members): polled while computing."""
    viewer = _viewer(request, session)
    context = _segment_context(request, session, viewer, project_id, segment_id, cursor)
    return _page(request, "_segment_status.html", oob=True, **context)


def _find_customer(session: Session, project_id: int, text: str) -> Customer:
    """A customer by Tidings id, user id or email, as typed into the explain box."""
    text = text.strip()
    if not text:
        raise BadRequest("Enter a customer's Tidings id, user id or email.")
    if "@" in text:
        return customers.lookup_or_raise(session, project_id=project_id, email=text)
    if text.isdigit():
        found = customers.get(session, project_id=project_id, customer_id=int(text))
        if found is not None:
            return found
    return customers.lookup_or_raise(session, project_id=project_id, user_id=text)


@router.get("/p/{project_id}/segments/{segment_id}/explain")
def segment_explain(
    request: Request,
    session: Reader,
    project_id: int,
    segment_id: int,
    customer: str = "",
) -> Response:
    """Why a customer is in or out: the explain box's answer (the whole page without htmx)."""
    viewer = _viewer(request, session)
    project, _ = _project(session, viewer, project_id)
    segments.get_or_raise(session, project_id=project_id, segment_id=segment_id)
    answer: dict[str, Any] = {
        "customer_query": customer,
        "explanation": None,
        "explained": None,
        "explain_error": None,
    }
    try:
        found = _find_customer(session, project_id, customer)
        answer["explanation"] = segments.explain(
            session, project_id=project_id, segment_id=segment_id, customer_id=found.id
        )
        answer["explained"] = found
    except (BadRequest, NotFound) as exc:
        answer["explain_error"] = exc.message
    if request.headers.get("hx-request") == "true":
        return _page(
            request,
            "_explain.html",
            viewer=viewer,
            project=project,
            names=_names(session, project_id),
            **answer,
        )
    context = _segment_context(request, session, viewer, project_id, segment_id, None)
    return _page(request, "segment.html", **(context | answer))


# -- delete -------------------------------------------------------------------------------------


@router.get("/p/{project_id}/segments/{segment_id}/delete")
def segment_delete_confirm(
    request: Request, session: Reader, project_id: int, segment_id: int
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    return _page(
        request,
        "confirm_delete_segment.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="segments",
        seg=_segment_out(session, project_id, segment_id),
        error=None,
    )


@router.post("/p/{project_id}/segments/{segment_id}/delete")
def segment_delete(
    request: Request,
    session: Writer,
    project_id: int,
    segment_id: int,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    project, role = _project(session, viewer, project_id)
    try:
        segments.delete(session, project_id=project_id, segment_id=segment_id)
    except Conflict as exc:
        return _page(
            request,
            "confirm_delete_segment.html",
            status_code=exc.http_status,
            viewer=viewer,
            project=project,
            role=role,
            nav="segments",
            seg=_segment_out(session, project_id, segment_id),
            error=exc.message,
        )
    return RedirectResponse(_url(project_id) + "?deleted=1", status_code=303)
