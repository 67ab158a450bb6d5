"""Segment's webhook destination posting to `POST /v1/webhook/segment` (shared/SEGMENT.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.ingest.test_tracking_http import (
    assert_error,
    assert_nothing_stored,
    assert_success,
    b64,
    customers,
    events,
)
from tests.support import Tenant

PATH = "/v1/webhook/segment"


def new_id(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def compact(value: Any) -> bytes:
    """JSON as Segment (JavaScript's JSON.stringify) writes it: no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def sign(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha1).hexdigest()


def webhook_secret(tenant: Tenant) -> str:
    secret = tenant.get("/api/project/settings")["webhook_secret"]
    assert isinstance(secret, str)
    assert secret
    return secret


def deliver(
    tenant: Tenant,
    body: bytes,
    *,
    auth: str = "basic",
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST as Segment's webhook destination does; the write key in Basic auth or `?key=`."""
    key = tenant.write_key if key is None else key
    sent = {"Content-Type": "application/json", "User-Agent": "Segment.io/1.0"}
    params = {}
    if auth == "basic":
        sent["Authorization"] = "Basic " + b64(key + ":")
    elif auth == "query":
        params["key"] = key
    sent.update(headers or {})
    return tenant.http.post(PATH, content=body, headers=sent, params=params)


def identify(uid: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": uid,
        "messageId": new_id("m"),
        "traits": traits,
        "timestamp": "2024-05-01T10:00:00.000Z",
        "sentAt": "2024-05-01T10:00:00.000Z",
    }


def track(uid: str, event: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": uid,
        "messageId": new_id("m"),
        "event": event,
        "properties": properties,
    }


@pytest.mark.parametrize("auth", ["basic", "query"])
def test_single_message(tenant: Tenant, auth: str) -> None:
    uid = new_id()
    r = deliver(tenant, compact(identify(uid, email=f"{uid}@example.com", plan="pro")), auth=auth)
    assert_success(r)
    tenant.wait_processed(1)
    c = tenant.customer(user_id=uid)
    assert c["email"] == f"{uid}@example.com"
    assert c["traits"]["plan"] == "pro"


@pytest.mark.parametrize("auth", ["basic", "query"])
def test_json_array(tenant: Tenant, auth: str) -> None:
    uid = new_id()
    body = [identify(uid, plan="team"), track(uid, "Signed In", device="web")]
    assert_success(deliver(tenant, compact(body), auth=auth))
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["traits"]["plan"] == "team"
    [e] = events(tenant, c["id"])
    assert (e["type"], e["name"], e["properties"]) == ("track", "Signed In", {"device": "web"})
    assert [m["status"] for m in tenant.messages()] == ["accepted", "accepted"]


def test_signed_single_message(tenant: Tenant) -> None:
    uid = new_id()
    body = compact(track(uid, "Paid Invoice", invoice="i-1"))
    r = deliver(tenant, body, headers={"X-Signature": sign(webhook_secret(tenant), body)})
    assert_success(r)
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert e["name"] == "Paid Invoice"


def test_signed_array_signs_its_first_element(tenant: Tenant) -> None:
    uid = new_id()
    items = [identify(uid, plan="signed"), track(uid, "Signed Batch")]
    signature = sign(webhook_secret(tenant), compact(items[0]))
    assert signature != sign(webhook_secret(tenant), compact(items))
    assert_success(deliver(tenant, compact(items), headers={"X-Signature": signature}))
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["traits"]["plan"] == "signed"
    assert [e["name"] for e in events(tenant, c["id"])] == ["Signed Batch"]


@pytest.mark.parametrize("auth", ["basic", "query"])
def test_wrong_signature_is_401_and_nothing_is_stored(tenant: Tenant, auth: str) -> None:
    uid = new_id()
    body = compact(identify(uid, plan="forged"))
    secret = webhook_secret(tenant)
    wrong = [
        sign("not-the-secret", body),
        sign(secret, body + b" "),  # signs other bytes than those sent
        "0" * 40,
        "garbage",
    ]
    for signature in wrong:
        r = deliver(tenant, body, auth=auth, headers={"X-Signature": signature})
        assert_error(r, 401)
    # An array whose signature is of another element than its first.
    items = [identify(uid, plan="forged"), track(uid, "Forged")]
    r = deliver(tenant, compact(items), headers={"X-Signature": sign(secret, compact(items[1]))})
    assert_error(r, 401)
    assert_nothing_stored(tenant)


def test_signature_of_another_project_is_401(server: Any, tenant: Tenant) -> None:
    other = server.new_tenant()
    try:
        body = compact(identify(new_id(), plan="x"))
        r = deliver(tenant, body, headers={"X-Signature": sign(webhook_secret(other), body)})
        assert_error(r, 401)
    finally:
        other.close()
    assert_nothing_stored(tenant)


@pytest.mark.parametrize("auth", ["basic", "query", "none"])
def test_unknown_or_missing_key_is_401(tenant: Tenant, auth: str) -> None:
    body = compact(identify(new_id(), plan="x"))
    r = deliver(tenant, body, auth=auth, key="wk_" + uuid.uuid4().hex)
    assert_error(r, 401)
    assert_nothing_stored(tenant)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'"a string"', b"[1, 2]", b'[{"type": "track"}, 3]'],
    ids=["invalid-json", "empty", "string", "array-of-numbers", "array-with-number"],
)
def test_malformed_body_is_400(tenant: Tenant, body: bytes) -> None:
    assert_error(deliver(tenant, body), 400)
    assert_nothing_stored(tenant)


@pytest.mark.parametrize("auth", ["basic", "query"])
def test_delete_erases_the_customer(tenant: Tenant, auth: str) -> None:
    uid, keep = new_id(), new_id("keep")
    tenant.send(
        [
            identify(uid, email=f"{uid}@example.com", plan="pro"),
            track(uid, "Order Completed", total=10),
            track(uid, "Signed In"),
            identify(keep, plan="stays"),
        ]
    )
    doomed = tenant.customer(user_id=uid)
    assert len(events(tenant, doomed["id"])) == 2

    delete = {"type": "delete", "userId": uid, "messageId": new_id("m"), "context": {}}
    assert_success(deliver(tenant, compact(delete), auth=auth))
    tenant.wait_processed(5)

    r = tenant.api.get("/api/customers/lookup", params={"user_id": uid})
    assert_error(r, 404)
    r = tenant.api.get("/api/customers/lookup", params={"email": f"{uid}@example.com"})
    assert_error(r, 404)
    assert_error(tenant.api.get(f"/api/customers/{doomed['id']}"), 404)
    assert [c["user_id"] for c in customers(tenant)] == [keep]
    assert tenant.customer(user_id=keep)["traits"]["plan"] == "stays"

    # The same userId later starts a brand-new profile: nothing of the old one survives.
    tenant.send([identify(uid, role="new")])
    again = tenant.customer(user_id=uid)
    assert again["id"] != doomed["id"]
    assert again["traits"] == {"role": "new"}
    assert again["email"] is None
    assert again["lifetime_value"] == 0
    assert again["charge_count"] == 0
    assert events(tenant, again["id"]) == []


def test_delete_in_an_array(tenant: Tenant) -> None:
    uid, other = new_id(), new_id()
    tenant.send([identify(uid, plan="a"), identify(other, plan="b")])
    items = [
        {"type": "delete", "userId": uid, "messageId": new_id("m")},
        track(other, "Still Here"),
    ]
    assert_success(deliver(tenant, compact(items), auth="query"))
    tenant.wait_processed(4)
    assert_error(tenant.api.get("/api/customers/lookup", params={"user_id": uid}), 404)
    c = tenant.customer(user_id=other)
    assert [e["name"] for e in events(tenant, c["id"])] == ["Still Here"]
