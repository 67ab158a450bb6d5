"""Builds the ASGI app: tracking API, management API, health; embedded worker when asked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from tidings.api import catalogs, customers, health, ingestion, project
from tidings.api.tracking import TrackingAPI
from tidings.config import Settings, get_settings
from tidings.db import Database
from tidings.db.migrate import require_current
from tidings.errors import AppError
from tidings.ingest.inbox import InboxWriter, ensure_inbox_schema
from tidings.worker.runner import Worker

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, worker: bool = True) -> FastAPI:
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
    app.router.routes.extend(tracking.routes())
    for router in (
        customers.router,
        catalogs.router,
        project.router,
        ingestion.router,
        health.router,
    ):
        app.include_router(router)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        max_age=86400,
    )
    _error_handlers(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.as_dict(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid input')}" if where else "Invalid input."
        return JSONResponse({"code": "invalid_request", "message": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(
            {"code": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)},
            status_code=exc.status_code,
        )
