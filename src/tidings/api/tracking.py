"""The Segment HTTP Tracking API (`/v1/*`), kept lean: it is the hot path.

Plain ASGI handlers (no request object, no per-request pydantic model): read the body under its
limit, undo gzip, parse once with orjson, find the project by write key, check the envelope, and
answer `200 {"success": true}` only after the body is committed to the inbox.

`TrackingAPI.routes()` mounts them in a small Starlette app (CORS, 404/405, error pages);
`TrackingAPI.fast_path()` maps the POST routes' exact paths to the same handlers, which the
application calls directly for requests that need none of that (no `Origin` header).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings import clock
from tidings.auth import service as projects
from tidings.db import Database
from tidings.errors import AppError, BadRequest, PayloadTooLarge, Unauthorized
from tidings.ingest.inbox import InboxWriter
from tidings.ingest.wire import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    SHORT_TYPES,
    TYPES,
    basic_auth_user,
    bearer_token,
    check_batch,
    check_webhook,
    decode_body,
    parse_json,
)

SUCCESS = b'{"success":true}'
_JSON = (b"content-type", b"application/json")
_KEY_TTL = 5.0


class KeyCache:
    """write key -> project id, cached briefly so the hot path rarely touches the database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[int | None, str | None, float]] = {}

    def _load(self, key: str) -> tuple[int | None, str | None]:
        with self.db.session() as session:
            project = projects.get_by_write_key(session, write_key=key)
            return (project.id, project.webhook_secret) if project else (None, None)

    async def lookup(self, key: str | None) -> tuple[int, str]:
        """The project id and webhook secret for a write key, or 401."""
        if not key:
            raise Unauthorized(
                "Send the write key as HTTP Basic username, or as `writeKey` in the body.",
                code="missing_write_key",
            )
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or hit[2] < now:
            pid, secret = await run_in_threadpool(self._load, key)
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = (pid, secret, now + _KEY_TTL)
            self._cache[key] = hit
        if hit[0] is None or hit[1] is None:
            raise Unauthorized("Unknown write key.", code="invalid_write_key")
        return hit[0], hit[1]


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Gone(Exception):
    """The client disconnected before its body arrived; there is nobody to answer."""


class Incoming:
    """What the handlers read from an ASGI request: headers, the peer, the body."""

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self.headers = headers

    async def body(self, limit: int) -> bytes:
        """The raw body, refusing one larger than `limit` bytes before reading it all."""
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB.")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def payload(self, limit: int) -> tuple[bytes, Any]:
        raw = await self.body(limit)
        data = decode_body(raw, encoding=self.headers.get("content-encoding"), limit=limit)
        return data, parse_json(data)

    def client_ip(self) -> str | None:
        forwarded = self.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()[:64]
        client = self.scope.get("client")
        return str(client[0]) if client else None

    def query(self, name: str) -> str | None:
        """The first value of a query-string parameter."""
        raw: bytes = self.scope.get("query_string", b"")
        for key, value in parse_qsl(raw.decode("latin-1")):
            if key == name:
                return str(value)
        return None


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_response(exc: AppError) -> Response:
    return Response(
        orjson.dumps(exc.as_dict()), status_code=exc.http_status, media_type="application/json"
    )


class _Endpoint:
    """An ASGI app around one handler: answers 200 success, or the AppError it raised."""

    def __init__(self, handle: Callable[[Incoming], Awaitable[None]]) -> None:
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(Incoming(scope, receive))
        except AppError as exc:
            await _answer(send, exc.http_status, orjson.dumps(exc.as_dict()))
        except _Gone:
            return
        else:
            await _answer(send, 200, SUCCESS)


class TrackingAPI:
    """Route handlers bound to one process's key cache and inbox writer."""

    def __init__(self, db: Database, writer: InboxWriter) -> None:
        self.db = db
        self.writer = writer
        self.keys = KeyCache(db)
        self.message_app = _Endpoint(self.message)
        self.batch_app = _Endpoint(self.batch)
        self.webhook_app = _Endpoint(self.webhook)

    async def message(self, request: Incoming) -> None:
        """POST /v1/{type} and the browser short routes: one message."""
        kind = request.scope["path"].rsplit("/", 1)[-1]
        kind = SHORT_TYPES.get(kind, kind)
        if kind == "b":
            return await self.batch(request)
        if kind not in TYPES:
            raise BadRequest(f"Unknown message type {kind!r}.", code="unknown_type")
        data, payload = await request.payload(MAX_MESSAGE_BYTES)
        if not isinstance(payload, dict):
            raise BadRequest("A message must be a JSON object.")
        project_id, _ = await self.keys.lookup(_write_key(request, payload))
        await self.writer.write(
            project_id=project_id,
            kind=kind,
            body=data,
            received_at=clock.now(),
            ip=request.client_ip(),
            messages=1,
        )

    async def batch(self, request: Incoming) -> None:
        """POST /v1/batch, /v1/import and /v1/b."""
        data, payload = await request.payload(MAX_BATCH_BYTES)
        items = check_batch(payload, len(data))
        project_id, _ = await self.keys.lookup(_write_key(request, payload))
        await self.writer.write(
            project_id=project_id,
            kind="batch",
            body=data,
            received_at=clock.now(),
            ip=request.client_ip(),
            messages=len(items),
        )

    async def webhook(self, request: Incoming) -> None:
        """POST /v1/webhook/segment: Segment's webhook destination (one message or an array)."""
        data, payload = await request.payload(MAX_BATCH_BYTES)
        items = check_webhook(payload)
        header = request.headers.get("authorization")
        key = basic_auth_user(header) or request.query("key") or bearer_token(header)
        project_id, secret = await self.keys.lookup(key)
        _check_signature(request, data, payload, secret)
        await self.writer.write(
            project_id=project_id,
            kind="webhook",
            body=data,
            received_at=clock.now(),
            ip=None,
            messages=len(items),
        )

    async def settings(self, request: Request) -> Response:
        """GET /v1/projects/{writeKey}/settings, fetched first by analytics.js."""
        key = request.path_params["write_key"]
        try:
            await self.keys.lookup(key)
        except AppError as exc:
            return error_response(exc)
        host = self.db.settings.public_url or f"{request.url.scheme}://{request.url.netloc}"
        api_host = host.split("://", 1)[-1].rstrip("/") + "/v1"
        body = {
            "integrations": {"Segment.io": {"apiKey": key, "apiHost": api_host}},
            "plan": {"track": {"__default": {"enabled": True}}},
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
        }
        return JSONResponse(body)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/batch", self.batch_app, methods=["POST"]),
            Route("/v1/import", self.batch_app, methods=["POST"]),
            Route("/v1/webhook/segment", self.webhook_app, methods=["POST"]),
            Route("/v1/projects/{write_key}/settings", self.settings, methods=["GET"]),
            Route("/v1/{kind}", self.message_app, methods=["POST"]),
        ]

    def fast_path(self) -> dict[str, Handler]:
        """Exact POST paths and their handlers, for requests that need no CORS headers."""
        paths: dict[str, Handler] = {
            "/v1/batch": self.batch_app,
            "/v1/import": self.batch_app,
            "/v1/webhook/segment": self.webhook_app,
        }
        for kind in (*TYPES, *SHORT_TYPES, "b"):
            paths.setdefault(f"/v1/{kind}", self.message_app)
        return paths


def _write_key(request: Incoming, payload: Any) -> str | None:
    """Basic auth (with or without the colon), else body writeKey, else a Bearer token."""
    header = request.headers.get("authorization")
    key = basic_auth_user(header)
    if key:
        return key
    if isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        return str(payload["writeKey"]) or None
    return bearer_token(header)


def _check_signature(request: Incoming, data: bytes, payload: Any, secret: str) -> None:
    """Verify X-Signature (HMAC-SHA1 of the message, or of the first one of an array) or
    X-Segment-Signature (HMAC of the whole body) when Segment sends one."""
    given_new = request.headers.get("x-segment-signature")
    given_old = request.headers.get("x-signature")
    if not given_new and not given_old:
        return
    key = secret.encode()
    candidates: list[bytes] = [data]
    if given_old and isinstance(payload, list) and payload:
        candidates.insert(0, orjson.dumps(payload[0]))
    for given in (g for g in (given_new, given_old) if g):
        value = given.strip().lower().removeprefix("sha1=").removeprefix("sha256=")
        for body in candidates:
            for algo in (hashlib.sha1, hashlib.sha256):
                if hmac.compare_digest(hmac.new(key, body, algo).hexdigest(), value):
                    return
    raise Unauthorized(
        "The webhook signature does not match the shared secret.", code="invalid_signature"
    )
