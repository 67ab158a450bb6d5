"""Dashboard routes: sign-in, customers, profile, catalogs, live ingestion, settings.

Segments have their own module (`segment_pages`), which reuses the helpers here.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from tidings.auth import service as projects
from tidings.auth import users
from tidings.auth.models import Project
from tidings.auth.schemas import ProjectPatch
from tidings.customers import service as customers
from tidings.db import Database
from tidings.errors import AppError, BadRequest, Forbidden
from tidings.ingest import service as ingestion
from tidings.ingest.wire import TYPES
from tidings.messaging import service as messaging
from tidings.segments import service as segments
from tidings.web.render import Viewer, templates

router = APIRouter(include_in_schema=False)
COOKIE = "tidings_session"
LOGIN_CSRF_COOKIE = "tidings_login_csrf"


class LoginRequired(Exception):
    """Raised by pages that need a signed-in user; answered with a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def read_session(request: Request) -> Iterator[Session]:
    with _db(request).session() as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    with _db(request).session(write=True) as session:
        yield session


# Commit before the response leaves (a redirect after POST must see the write).
Reader = Annotated[Session, Depends(read_session, scope="function")]
Writer = Annotated[Session, Depends(write_session, scope="function")]


def _viewer(request: Request, session: Session) -> Viewer:
    who = users.signed_in(session, token=request.cookies.get(COOKIE))
    if who is None:
        raise LoginRequired(
            str(request.url.path) + (f"?{request.url.query}" if request.url.query else "")
        )
    return Viewer(
        user_id=who.user_id,
        email=who.email,
        is_owner=who.is_owner,
        csrf_token=who.csrf_token,
        projects=users.projects_of(session, user_id=who.user_id),
    )


def _check_csrf(request: Request, viewer: Viewer, token: str | None) -> None:
    given = token or request.headers.get("x-csrf-token") or ""
    if not hmac.compare_digest(given.encode(), viewer.csrf_token.encode()):
        raise Forbidden(
            "This form has expired or did not come from Tidings. Reload the page and try again.",
            code="csrf_failed",
        )


def _project(session: Session, viewer: Viewer, project_id: int) -> tuple[Project, str]:
    role = users.role_in(session, user_id=viewer.user_id, project_id=project_id)
    return projects.get_or_raise(session, project_id=project_id), role


def _base_url(request: Request) -> str:
    settings = _db(request).settings
    return (settings.public_url or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("flashes", [])
    context.setdefault("viewer", None)
    context.setdefault("project", None)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# -- sign-in ----------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    token = secrets.token_urlsafe(24)
    response = _page(
        request, "login.html", csrf_token=token, next=_safe_next(next), email="", error=None
    )
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


def _safe_next(value: str) -> str:
    # Only local paths: never an open redirect.
    return value if value.startswith("/") and not value.startswith("//") else "/"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


@router.post("/login")
def login(
    request: Request,
    session: Writer,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        raise Forbidden(
            "This sign-in form has expired. Reload the page and try again.", code="csrf_failed"
        )
    client = request.client.host if request.client else "unknown"
    try:
        user = users.authenticate(session, email=email, password=password, client=client)
    except AppError as exc:
        session.commit()  # keep the failed attempt for rate limiting
        response = _page(
            request,
            "login.html",
            status_code=exc.http_status,
            csrf_token=csrf_token,
            next=_safe_next(next),
            email=email,
            error=exc.message,
        )
        return response
    token = users.start_session(session, user_id=user.id)
    redirect = RedirectResponse(_safe_next(next), status_code=303)
    _set_cookie(request, redirect, COOKIE, token, max_age=users.SESSION_DAYS * 86400)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return redirect


@router.post("/logout")
def logout(request: Request, session: Writer, csrf_token: Annotated[str, Form()] = "") -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.end_session(session, token=request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def home(request: Request, session: Reader) -> Response:
    viewer = _viewer(request, session)
    if viewer.projects:
        return RedirectResponse(f"/p/{viewer.projects[0][0].id}/customers", status_code=303)
    if viewer.is_owner:
        return RedirectResponse("/projects/new", status_code=303)
    return _page(
        request,
        "error.html",
        status_code=200,
        status=200,
        title="No projects yet",
        message="You are not a member of any project. Ask an owner to invite you.",
    )


@router.get("/projects/new")
def project_form(request: Request, session: Reader) -> Response:
    viewer = _viewer(request, session)
    if not viewer.is_owner:
        raise Forbidden("Only owners can create projects.", code="forbidden_role")
    project = viewer.projects[0][0] if viewer.projects else None
    return _page(
        request, "project_new.html", viewer=viewer, project=project, role="owner", error=None
    )


@router.post("/projects")
def project_create(
    request: Request,
    session: Writer,
    name: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    if not viewer.is_owner:
        raise Forbidden("Only owners can create projects.", code="forbidden_role")
    created = projects.create(session, name=name)
    users.add_owner_to_project(session, project_id=created.id, user_id=viewer.user_id)
    return RedirectResponse(f"/p/{created.id}/settings?created=1", status_code=303)


# -- customers --------------------------------------------------------------------------------


@router.get("/p/{project_id}/customers")
def customer_list(
    request: Request,
    session: Reader,
    project_id: int,
    q: str = "",
    tag: str = "",
    trait: str = "",
    sort: str = "last_seen",
    cursor: str | None = None,
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    base = _base_url(request)
    context: dict[str, Any] = {
        "viewer": viewer,
        "project": project,
        "role": role,
        "nav": "customers",
        "q": q,
        "tag": tag,
        "trait": trait,
        "sort": sort if sort in customers.SORTS else "last_seen",
        "sorts": list(customers.SORTS.items()),
        "base_url": base,
        "api_host": base.split("://", 1)[-1] + "/v1",
        "protocol": base.split("://", 1)[0],
        "error": None,
        "customers": [],
        "next_cursor": None,
        "empty_project": False,
        "tags": [],
    }
    if (
        not q
        and not tag
        and not trait
        and cursor is None
        and not customers.has_customers(session, project_id=project_id)
    ):
        context["empty_project"] = True
        return _page(request, "customers.html", **context)
    context["tags"] = customers.tag_names(session, project_id=project_id)
    try:
        page = customers.browse(
            session,
            project_id=project_id,
            q=q or None,
            tag=tag or None,
            traits=[trait] if trait else None,
            sort=context["sort"],
            cursor=cursor,
        )
    except BadRequest as exc:
        context["error"] = exc.message
    else:
        context["customers"] = page.data
        context["next_cursor"] = page.next_cursor
        params = {k: v for k, v in {"q": q, "tag": tag, "trait": trait, "sort": sort}.items() if v}
        context["next_query"] = urlencode({**params, "cursor": page.next_cursor or ""})
    return _page(request, "customers.html", **context)


def _profile_context(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    customer_id: int,
    cursor: str | None = None,
) -> dict[str, Any]:
    project, role = _project(session, viewer, project_id)
    row = customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    c = customers.to_out(session, row)
    timeline = customers.timeline(
        session, project_id=project_id, customer_id=customer_id, cursor=cursor
    )
    avatar = c.traits.get("avatar")
    label = c.name or c.email or c.user_id or "?"
    return {
        "viewer": viewer,
        "project": project,
        "role": role,
        "nav": "customers",
        "c": c,
        "tags": c.tags,
        "events": timeline.data,
        "next_cursor": timeline.next_cursor,
        "cursor": cursor,
        "charges": customers.charges(
            session, project_id=project_id, customer_id=customer_id, limit=10
        ).data,
        "avatar": avatar
        if isinstance(avatar, str) and avatar.startswith(("https://", "http://"))
        else None,
        "initials": "".join(part[0] for part in label.split()[:2]).upper(),
        "tag_error": None,
        "segments": segments.customer_segments(
            session, project_id=project_id, customer_id=customer_id
        ),
        "messages": messaging.list_messages(
            session, project_id=project_id, customer_id=customer_id, limit=10
        )[0],
        "subscriptions": messaging.customer_subscriptions(
            session, project_id=project_id, customer_id=customer_id
        ),
    }


@router.get("/p/{project_id}/customers/{customer_id}")
def customer_page(
    request: Request,
    session: Writer,  # the subscriptions create the built-in topics on first use
    project_id: int,
    customer_id: int,
    cursor: str | None = None,
) -> Response:
    viewer = _viewer(request, session)
    context = _profile_context(request, session, viewer, project_id, customer_id, cursor)
    return _page(request, "customer.html", **context)


@router.get("/p/{project_id}/customers/{customer_id}/timeline")
def customer_timeline(
    request: Request,
    session: Reader,
    project_id: int,
    customer_id: int,
    cursor: str | None = None,
) -> Response:
    viewer = _viewer(request, session)
    project, _role = _project(session, viewer, project_id)
    timeline = customers.timeline(
        session, project_id=project_id, customer_id=customer_id, cursor=cursor
    )
    return _page(
        request,
        "_timeline.html",
        viewer=viewer,
        project=project,
        c={"id": customer_id},
        events=timeline.data,
        next_cursor=timeline.next_cursor,
        cursor=cursor,
    )


def _tags_response(
    request: Request,
    session: Session,
    viewer: Viewer,
    project_id: int,
    customer_id: int,
    error: str | None,
) -> Response:
    if request.headers.get("hx-request") != "true":
        return RedirectResponse(f"/p/{project_id}/customers/{customer_id}", status_code=303)
    project, _ = _project(session, viewer, project_id)
    tags = customers.to_out(
        session, customers.get_or_raise(session, project_id=project_id, customer_id=customer_id)
    ).tags
    return _page(
        request,
        "_tags.html",
        viewer=viewer,
        project=project,
        c={"id": customer_id},
        tags=tags,
        tag_error=error,
    )


@router.post("/p/{project_id}/customers/{customer_id}/tags")
def tag_add(
    request: Request,
    session: Writer,
    project_id: int,
    customer_id: int,
    tag: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    error = None
    try:
        customers.add_tag(session, project_id=project_id, customer_id=customer_id, tag=tag)
    except BadRequest as exc:
        error = exc.message
    return _tags_response(request, session, viewer, project_id, customer_id, error)


@router.post("/p/{project_id}/customers/{customer_id}/tags/remove")
def tag_remove(
    request: Request,
    session: Writer,
    project_id: int,
    customer_id: int,
    tag: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    _project(session, viewer, project_id)
    customers.remove_tag(session, project_id=project_id, customer_id=customer_id, tag=tag)
    return _tags_response(request, session, viewer, project_id, customer_id, None)


# -- catalogs and live view -------------------------------------------------------------------


@router.get("/p/{project_id}/events")
def events_page(
    request: Request, session: Reader, project_id: int, cursor: str | None = None
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    page = customers.list_events(session, project_id=project_id, cursor=cursor)
    return _page(
        request,
        "catalog_events.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="events",
        events=page.data,
        next_cursor=page.next_cursor,
    )


@router.get("/p/{project_id}/traits")
def traits_page(
    request: Request, session: Reader, project_id: int, cursor: str | None = None
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    page = customers.list_traits(session, project_id=project_id, cursor=cursor)
    return _page(
        request,
        "catalog_traits.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="traits",
        traits=page.data,
        next_cursor=page.next_cursor,
    )


def _live_filters(status: str, type: str) -> tuple[str | None, str | None]:
    return (
        status if status in ingestion.STATUSES else None,
        type if type in TYPES or type == "delete" else None,
    )


@router.get("/p/{project_id}/live")
def live_page(
    request: Request, session: Reader, project_id: int, status: str = "", type: str = ""
) -> Response:
    viewer = _viewer(request, session)
    project, role = _project(session, viewer, project_id)
    st, ty = _live_filters(status, type)
    page = ingestion.list_messages(session, project_id=project_id, status=st, type=ty, limit=50)
    newest = ingestion.newest_id(session, project_id=project_id)
    return _page(
        request,
        "live.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="live",
        messages=page.data,
        newest=newest,
        status=st or "",
        type=ty or "",
        statuses=ingestion.STATUSES,
        types=sorted([*TYPES, "delete"]),
    )


@router.get("/p/{project_id}/live/rows")
def live_rows(
    request: Request,
    session: Reader,
    project_id: int,
    after: int = 0,
    status: str = "",
    type: str = "",
) -> Response:
    viewer = _viewer(request, session)
    project, _ = _project(session, viewer, project_id)
    st, ty = _live_filters(status, type)
    rows = ingestion.messages_after(session, project_id=project_id, after=after, status=st, type=ty)
    newest = max([after, *(m.id for m in rows)])
    return _page(
        request,
        "_live_poll.html",
        viewer=viewer,
        project=project,
        messages=rows,
        newest=newest,
        status=st or "",
        type=ty or "",
    )


# -- settings ---------------------------------------------------------------------------------


def _settings(
    request: Request, session: Session, viewer: Viewer, project_id: int, **extra: Any
) -> Response:
    role = users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    project = projects.get_or_raise(session, project_id=project_id)
    flashes = []
    if request.query_params.get("saved"):
        flashes.append(("Settings saved.", ""))
    if request.query_params.get("created"):
        flashes.append(("Project created. Send data with the write key below.", ""))
    return _page(
        request,
        "settings.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="settings",
        members=users.members(session, project_id=project_id),
        base_url=_base_url(request),
        flashes=flashes,
        **({"new_secret": None, "new_password": None} | extra),
    )


@router.get("/p/{project_id}/settings")
def settings_page(request: Request, session: Reader, project_id: int) -> Response:
    viewer = _viewer(request, session)
    return _settings(request, session, viewer, project_id)


@router.post("/p/{project_id}/settings/policy")
def settings_policy(
    request: Request,
    session: Writer,
    project_id: int,
    csrf_token: Annotated[str, Form()] = "",
    require_email_to_create: Annotated[str, Form()] = "",
    require_user_id: Annotated[str, Form()] = "",
    unknown_user_track: Annotated[str, Form()] = "create",
    revenue_as_charge: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    if unknown_user_track not in ("create", "drop"):
        raise BadRequest("Choose create or drop for events from unknown users.")
    projects.update_settings(
        session,
        project_id=project_id,
        patch=ProjectPatch(
            require_email_to_create=bool(require_email_to_create),
            require_user_id=bool(require_user_id),
            unknown_user_track=unknown_user_track,
            revenue_as_charge=bool(revenue_as_charge),
        ),
    )
    return RedirectResponse(f"/p/{project_id}/settings?saved=1", status_code=303)


@router.get("/p/{project_id}/settings/rotate/{which}")
def rotate_confirm(request: Request, session: Reader, project_id: int, which: str) -> Response:
    viewer = _viewer(request, session)
    role = users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    if which not in ("write", "secret"):
        raise BadRequest("Only the write key and the secret key can be rotated.")
    project = projects.get_or_raise(session, project_id=project_id)
    return _page(
        request,
        "confirm_rotate.html",
        viewer=viewer,
        project=project,
        role=role,
        nav="settings",
        which=which,
    )


@router.post("/p/{project_id}/settings/rotate/{which}")
def rotate(
    request: Request,
    session: Writer,
    project_id: int,
    which: str,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    if which == "write":
        projects.rotate_write_key(session, project_id=project_id)
        return RedirectResponse(f"/p/{project_id}/settings?saved=1", status_code=303)
    if which != "secret":
        raise BadRequest("Only the write key and the secret key can be rotated.")
    secret = projects.rotate_secret_key(session, project_id=project_id)
    session.flush()
    return _settings(request, session, viewer, project_id, new_secret=secret)


@router.post("/p/{project_id}/settings/invite")
def invite(
    request: Request,
    session: Writer,
    project_id: int,
    email: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "member",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    viewer = _viewer(request, session)
    _check_csrf(request, viewer, csrf_token)
    my_role = users.require_manager(session, user_id=viewer.user_id, project_id=project_id)
    if my_role != "owner" and (
        role == "owner"
        or users.current_role(session, project_id=project_id, email=email) == "owner"
    ):
        raise Forbidden("Only owners can make or change owners.", code="forbidden_role")
    user, password = users.invite(session, project_id=project_id, email=email, role=role)
    new_password = (user.email, password) if password else None
    return _settings(request, session, viewer, project_id, new_password=new_password)
