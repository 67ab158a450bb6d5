"""Helpers shared by the email tests: templates, customers, sends, polling and the links found
in a delivered message's HTML. Everything goes through a live server's HTTP API."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from html import unescape
from typing import Any, TypeVar

from tests.customers.messages import identify as identify_message
from tests.support import Tenant
from tests.web.dom import parse

T = TypeVar("T")
PENDING = ("queued", "sending")


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def eventually(check: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Poll until `check` returns something truthy (the worker runs every few milliseconds)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def create_template(tenant: Tenant, **body: Any) -> dict[str, Any]:
    """POST /api/templates (a unique name unless given); asserts 201."""
    body.setdefault("name", uid("template"))
    r = tenant.api.post("/api/templates", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def identify(tenant: Tenant, user_id: str, **traits: Any) -> dict[str, Any]:
    """Send an identify with these traits, wait until processed; returns the customer."""
    tenant.send([identify_message(user_id, traits)])
    return tenant.customer(user_id=user_id)


def send_message(tenant: Tenant, **body: Any) -> dict[str, Any]:
    """POST /api/messages; asserts 201 and returns the message."""
    r = tenant.api.post("/api/messages", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def message(tenant: Tenant, message_id: int) -> dict[str, Any]:
    """GET /api/messages/{id}: the message with html, text and its log."""
    return dict(tenant.get(f"/api/messages/{message_id}"))


def wait_status(
    tenant: Tenant, message_id: int, not_in: tuple[str, ...] = PENDING, timeout: float = 20
) -> dict[str, Any]:
    """Poll the message until its status is not one of `not_in`; returns it."""
    last: dict[str, Any] = {}

    def settled() -> dict[str, Any] | None:
        nonlocal last
        last = message(tenant, message_id)
        return last if last["status"] not in not_in else None

    try:
        return eventually(settled, f"message {message_id} to leave {not_in}", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}\n{tenant.server.log()[-3000:]}") from None


def timeline(tenant: Tenant, customer_id: int, name: str | None = None) -> list[dict[str, Any]]:
    """The customer's timeline (GET /api/customers/{id}/events), oldest first, maybe by name."""
    body = tenant.get(f"/api/customers/{customer_id}/events", limit=200)
    events = list(reversed(body["data"]))
    return [e for e in events if name is None or e["name"] == name]


def parse_iso(value: str) -> datetime:
    """The API's ISO-8601 UTC format ("...Z") as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def hrefs(html: str) -> list[str]:
    """Every link address in an HTML email, entities decoded."""
    return [unescape(h) for h in parse(html).links()]


def link_to(html: str, path: str) -> str:
    """The one link whose address contains `path` (e.g. "/email/unsubscribe/")."""
    found = [h for h in hrefs(html) if path in h]
    assert len(found) == 1, (path, hrefs(html))
    return found[0]


def open_pixel(html: str) -> str:
    """The address of the open-tracking pixel in a delivered email."""
    found = [
        n.attrs["src"]
        for n in parse(html).find_all("img")
        if "/email/open/" in n.attrs.get("src", "")
    ]
    assert len(found) == 1, html
    return unescape(found[0])


def hidden_input(html: str, name: str) -> str:
    """The value of a page's hidden form field."""
    return parse(html).find("input", type="hidden", name=name).attrs["value"]
