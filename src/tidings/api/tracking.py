"""The Segment HTTP Tracking API (`/v1/*`), kept lean: it is the hot path.

Plain Starlette routes (no per-request pydantic model): read the body under its limit, undo
gzip, parse once with orjson, find the project by write key, check the envelope, and answer
`200 {"success": true}` only after the body is committed to the inbox.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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


def error_response(exc: AppError) -> Response:
    return Response(
        orjson.dumps(exc.as_dict()), status_code=exc.http_status, media_type="application/json"
    )


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refusing one larger than `limit` bytes before reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _client_ip(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()[:64]
    return request.client.host if request.client else None


class TrackingAPI:
    """Route handlers bound to one process's key cache and inbox writer."""

    def __init__(self, db: Database, writer: InboxWriter) -> None:
        self.db = db
        self.writer = writer
        self.keys = KeyCache(db)

    async def _payload(self, request: Request, limit: int) -> tuple[bytes, Any]:
        raw = await read_limited(request, limit)
        data = decode_body(raw, encoding=request.headers.get("content-encoding"), limit=limit)
        return data, parse_json(data)

    async def message(self, request: Request) -> Response:
        """POST /v1/{type} and the browser short routes: one message."""
        kind = request.path_params["kind"]
        kind = SHORT_TYPES.get(kind, kind)
        try:
            if kind == "b":
                return await self._batch(request)
            if kind not in TYPES:
                raise BadRequest(f"Unknown message type {kind!r}.", code="unknown_type")
            data, payload = await self._payload(request, MAX_MESSAGE_BYTES)
            if not isinstance(payload, dict):
                raise BadRequest("A message must be a JSON object.")
            key = _write_key(request, payload)
            project_id, _ = await self.keys.lookup(key)
            await self.writer.write(
                project_id=project_id,
                kind=kind,
                body=data,
                received_at=clock.now(),
                ip=_client_ip(request),
                messages=1,
            )
        except AppError as exc:
            return error_response(exc)
        return Response(SUCCESS, media_type="application/json")

    async def batch(self, request: Request) -> Response:
        """POST /v1/batch, /v1/import and /v1/b."""
        try:
            return await self._batch(request)
        except AppError as exc:
            return error_response(exc)

    async def _batch(self, request: Request) -> Response:
        data, payload = await self._payload(request, MAX_BATCH_BYTES)
        items = check_batch(payload, len(data))
        project_id, _ = await self.keys.lookup(_write_key(request, payload))
        await self.writer.write(
            project_id=project_id,
            kind="batch",
            body=data,
            received_at=clock.now(),
            ip=_client_ip(request),
            messages=len(items),
        )
        return Response(SUCCESS, media_type="application/json")

    async def webhook(self, request: Request) -> Response:
        """POST /v1/webhook/segment: Segment's webhook destination (one message or an array)."""
        try:
            data, payload = await self._payload(request, MAX_BATCH_BYTES)
            items = check_webhook(payload)
            key = (
                basic_auth_user(request.headers.get("authorization"))
                or (request.query_params.get("key"))
                or bearer_token(request.headers.get("authorization"))
            )
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
        except AppError as exc:
            return error_response(exc)
        return Response(SUCCESS, media_type="application/json")

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
            Route("/v1/batch", self.batch, methods=["POST"]),
            Route("/v1/import", self.batch, methods=["POST"]),
            Route("/v1/webhook/segment", self.webhook, methods=["POST"]),
            Route("/v1/projects/{write_key}/settings", self.settings, methods=["GET"]),
            Route("/v1/{kind}", self.message, methods=["POST"]),
        ]


def _write_key(request: Request, payload: Any) -> str | None:
    """Basic auth (with or without the colon), else body writeKey, else a Bearer token."""
    header = request.headers.get("authorization")
    key = basic_auth_user(header)
    if key:
        return key
    if isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        return str(payload["writeKey"]) or None
    return bearer_token(header)


def _check_signature(request: Request, data: bytes, payload: Any, secret: str) -> None:
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
