"""Small builders of Segment messages and API assertions shared by the customer tests."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """A fixed point in time, `minutes` after BASE."""
    return BASE + timedelta(minutes=minutes)


def iso(dt: datetime) -> str:
    """The API's date format: ISO-8601 UTC with milliseconds and a Z."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def uid(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ids(user_id: str | None, anonymous_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"messageId": uuid.uuid4().hex}
    if user_id is not None:
        out["userId"] = user_id
    if anonymous_id is not None:
        out["anonymousId"] = anonymous_id
    return out


def identify(
    user_id: str | None = None,
    traits: dict[str, Any] | None = None,
    *,
    anonymous_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {"type": "identify", **_ids(user_id, anonymous_id), "traits": traits or {}, **extra}


def track(
    user_id: str | None,
    event: str,
    properties: dict[str, Any] | None = None,
    *,
    anonymous_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "track",
        **_ids(user_id, anonymous_id),
        "event": event,
        "properties": properties or {},
        **extra,
    }


def page(
    user_id: str | None,
    name: str,
    properties: dict[str, Any] | None = None,
    *,
    anonymous_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "page",
        **_ids(user_id, anonymous_id),
        "name": name,
        "properties": properties or {},
        **extra,
    }


def screen(user_id: str | None, name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "screen", **_ids(user_id, None), "name": name, "properties": {}, **extra}


def group(user_id: str, group_id: str, traits: dict[str, Any]) -> dict[str, Any]:
    return {"type": "group", **_ids(user_id, None), "groupId": group_id, "traits": traits}


def alias(user_id: str, previous_id: str) -> dict[str, Any]:
    return {"type": "alias", **_ids(user_id, None), "previousId": previous_id}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """A JSON error {"code", "message"} with this status (and code, when given)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), str), body
    assert body["code"], body
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    if code is not None:
        assert body["code"] == code, body
    return dict(body)
