"""Builds the ASGI app: tracking API, management API, health; embedded worker when asked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from tidings.api import (
    catalogs,
    customers,
    health,
    ingestion,
    messages,
    project,
    segments,
)
from tidings.api import (
    templates as template_api,
)
from tidings.api.tracking import Handler, TrackingAPI
from tidings.config import Settings, get_settings
from tidings.db import Database
from tidings.db.migrate import require_current
from tidings.errors import AppError
from tidings.ingest.inbox import InboxWriter, ensure_inbox_schema
from tidings.web import email_links, email_pages, pages, segment_pages
from tidings.web.pages import LoginRequired
from tidings.web.render import HERE, templates
from tidings.worker.runner import Worker

STATIC = HERE / "static"

log = logging.getLogger(__name__)


class Tidings:
    """The ASGI entry point: `/v1/*` goes straight to the lean tracking app (the hot path skips
    the management API's middleware and route table); everything else to the FastAPI app.

    A POST to a tracking route from a server-side library (no `Origin`, so no CORS headers to
    add) goes to its handler directly, without even the tracking app's routing and middleware.
    """

    def __init__(self, api: FastAPI, tracking: Starlette, fast: dict[str, Handler]) -> None:
        self.api = api
        self.tracking = tracking
        self.fast = fast
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            handler = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
            if handler is not None and not any(name == b"origin" for name, _ in scope["headers"]):
                await handler(scope, receive, send)
            else:
                await self.tracking(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(settings: Settings | None = None, *, worker: bool = True) -> Tidings:
    """The Tidings application (API, tracking, health) for one process."""
    settings = settings or get_settings()
    db = Database(settings)
    require_current(db)
    ensure_inbox_schema(db)
    writer = InboxWriter(db.inbox_write_engine)
    tracking = TrackingAPI(db, writer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = Worker(db) if worker else None
        if embedded:
            embedded.start_thread()
        try:
            yield
        finally:
            if embedded:
                embedded.stop()
            writer.close()
            db.dispose()

    app = FastAPI(
        title="Tidings",
        summary="Customer profiles from Segment-format data; the management API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.writer = writer
    for router in (
        segments.router,
        template_api.router,
        messages.router,
        customers.router,
        catalogs.router,
        project.router,
        ingestion.router,
        health.router,
        segment_pages.router,
        email_links.router,
        email_pages.router,
        pages.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.middleware("http")(_security_headers)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        max_age=86400,
    )
    app.user_middleware.insert(0, cors)
    _error_handlers(app)
    tracking_app = Starlette(
        routes=tracking.routes(),
        middleware=[cors],
        exception_handlers={StarletteHTTPException: _http_error},
    )
    return Tidings(app, tracking_app, tracking.fast_path())


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError) -> Response:
        if _wants_html(request):
            return _error_page(request, exc.http_status, exc.message)
        return JSONResponse(exc.as_dict(), status_code=exc.http_status)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("hx-request") == "true":
            return Response(status_code=204, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login?" + urlencode({"next": exc.next_url}), status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid input')}" if where else "Invalid input."
        return JSONResponse({"code": "invalid_request", "message": message}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, _http_error)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith(("/api/", "/v1/")) or path in ("/healthz", "/metrics"))


_TITLES = {403: "Not allowed", 404: "Not found", 429: "Slow down", 400: "Something is off"}


def _error_page(request: Request, status: int, message: str) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "status": status,
            "title": _TITLES.get(status, "Error"),
            "message": message,
            "viewer": None,
            "project": None,
            "flashes": [],
        },
        status_code=status,
    )


async def _security_headers(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    if _wants_html(request):
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' https: data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        )
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _wants_html(request) and exc.status_code == 404:
        return _error_page(request, 404, "There is no page at this address.")
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"code": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)},
        status_code=exc.status_code,
    )
