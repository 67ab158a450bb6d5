"""The Segment HTTP Tracking API through raw HTTP against a live server (shared/SEGMENT.md).

Every request's answer is checked exactly (status and JSON body), and what it did (or did not
do) is read back through the management API.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support import Tenant

SUCCESS = {"success": True}
KB = 1024


# -- helpers ------------------------------------------------------------------------------------


def new_id(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


def post(
    tenant: Tenant,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    basic: bool = True,
    encoding: str | None = None,
) -> httpx.Response:
    """POST a JSON body (bytes are sent as they are), by default with Basic auth."""
    content = body if isinstance(body, bytes) else dumps(body)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if basic:
        sent["Authorization"] = "Basic " + b64(tenant.write_key + ":")
    if encoding == "gzip":
        content = gzip.compress(content)
        sent["Content-Encoding"] = "gzip"
    return tenant.http.post(path, content=content, headers=sent)


def assert_success(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == SUCCESS


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """An error answer: this status and a JSON body of exactly `code` and `message`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["code"], str)
    assert body["code"]
    assert isinstance(body["message"], str)
    assert body["message"]
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def customers(tenant: Tenant) -> list[dict[str, Any]]:
    return list(tenant.get("/api/customers", limit=200)["data"])


def events(tenant: Tenant, customer_id: int) -> list[dict[str, Any]]:
    return list(tenant.get(f"/api/customers/{customer_id}/events", limit=200)["data"])


def metric(tenant: Tenant, status: str) -> int:
    """tidings_messages_processed_total of this tenant's project for one outcome."""
    marker = f'project="{tenant.project_id}"'
    for line in tenant.http.get("/metrics").text.splitlines():
        if (
            line.startswith("tidings_messages_processed_total{")
            and marker in line
            and f'status="{status}"' in line
        ):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def assert_nothing_stored(tenant: Tenant) -> None:
    """A rejected request left no trace: nothing processed, no customer, no message logged.

    Then a valid message is sent: the inbox is processed in order, so had the rejected request
    been stored it would be processed first and show up in the counts and the customer list.
    """
    assert tenant.processed() == 0
    assert customers(tenant) == []
    assert tenant.messages() == []
    sentinel = new_id("sentinel")
    tenant.send([{"type": "identify", "userId": sentinel, "traits": {"plan": "x"}}])
    assert tenant.processed() == 1
    assert [c["user_id"] for c in customers(tenant)] == [sentinel]
    assert [m["user_id"] for m in tenant.messages()] == [sentinel]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now() -> datetime:
    return datetime.now(UTC)


# -- auth -----------------------------------------------------------------------------------------

AUTH_FORMS = ["basic-colon", "basic-no-colon", "body-write-key", "bearer-and-body"]


def authed(form: str, key: str, body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and body carrying the write key in one of the accepted ways."""
    if form == "basic-colon":
        return {"Authorization": "Basic " + b64(key + ":")}, body
    if form == "basic-no-colon":
        return {"Authorization": "Basic " + b64(key)}, body
    if form == "body-write-key":
        return {}, {**body, "writeKey": key}
    assert form == "bearer-and-body"
    return {"Authorization": "Bearer anything-at-all"}, {**body, "writeKey": key}


@pytest.mark.parametrize("form", AUTH_FORMS)
@pytest.mark.parametrize("route", ["/v1/identify", "/v1/batch"])
def test_every_auth_form_is_accepted(tenant: Tenant, form: str, route: str) -> None:
    uid = new_id()
    message = {"type": "identify", "userId": uid, "traits": {"email": f"{uid}@example.com"}}
    body = {"batch": [message]} if route == "/v1/batch" else message
    headers, body = authed(form, tenant.write_key, body)
    r = post(tenant, route, body, headers=headers, basic=False)
    assert_success(r)
    tenant.wait_processed(1)
    c = tenant.customer(user_id=uid)
    assert c["email"] == f"{uid}@example.com"
    # The write key is credentials, never data.
    assert "writeKey" not in c["traits"]
    assert [m["status"] for m in tenant.messages()] == ["accepted"]


@pytest.mark.parametrize(
    "form", ["basic-colon", "basic-no-colon", "body-write-key", "bearer-and-body"]
)
@pytest.mark.parametrize("route", ["/v1/track", "/v1/batch"])
def test_unknown_write_key_is_401(tenant: Tenant, form: str, route: str) -> None:
    message = {"type": "track", "userId": new_id(), "event": "Signed In"}
    body = {"batch": [message]} if route == "/v1/batch" else message
    headers, body = authed(form, "wk_" + uuid.uuid4().hex, body)
    r = post(tenant, route, body, headers=headers, basic=False)
    assert_error(r, 401)
    assert_nothing_stored(tenant)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic " + b64(":")}, {"Authorization": "Basic " + b64(":secret")}],
    ids=["no-header", "basic-empty-user", "basic-password-only"],
)
@pytest.mark.parametrize("route", ["/v1/track", "/v1/batch"])
def test_missing_write_key_is_401(tenant: Tenant, headers: dict[str, str], route: str) -> None:
    message = {"type": "track", "userId": new_id(), "event": "Signed In"}
    body = {"batch": [message]} if route == "/v1/batch" else message
    r = post(tenant, route, body, headers=headers, basic=False)
    assert_error(r, 401)
    assert_nothing_stored(tenant)


# -- single-message routes ----------------------------------------------------------------------


def test_identify_route(tenant: Tenant) -> None:
    uid = new_id()
    r = post(
        tenant,
        "/v1/identify",
        {"userId": uid, "traits": {"firstName": "Ann", "lastName": "Lee", "plan": "pro"}},
    )
    assert_success(r)
    tenant.wait_processed(1)
    c = tenant.customer(user_id=uid)
    assert c["user_id"] == uid
    assert c["name"] == "Ann Lee"
    assert c["traits"]["plan"] == "pro"
    assert events(tenant, c["id"]) == []


def test_track_route(tenant: Tenant) -> None:
    uid = new_id()
    r = post(
        tenant,
        "/v1/track",
        {"userId": uid, "event": "Plan Chosen", "properties": {"plan": "pro", "seats": 3}},
    )
    assert_success(r)
    tenant.wait_processed(1)
    c = tenant.customer(user_id=uid)
    [e] = events(tenant, c["id"])
    assert (e["type"], e["name"]) == ("track", "Plan Chosen")
    assert e["properties"] == {"plan": "pro", "seats": 3}


def test_page_route(tenant: Tenant) -> None:
    uid = new_id()
    r = post(
        tenant,
        "/v1/page",
        {
            "userId": uid,
            "name": "Pricing",
            "properties": {"url": "https://x.test/pricing", "path": "/pricing"},
        },
    )
    assert_success(r)
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert (e["type"], e["name"]) == ("page", "Pricing")
    assert e["properties"]["url"] == "https://x.test/pricing"
    assert e["properties"]["path"] == "/pricing"


def test_screen_route(tenant: Tenant) -> None:
    uid = new_id()
    r = post(tenant, "/v1/screen", {"userId": uid, "name": "Home", "properties": {"v": "b"}})
    assert_success(r)
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert (e["type"], e["name"]) == ("screen", "Home")
    assert e["properties"]["v"] == "b"


def test_group_route(tenant: Tenant) -> None:
    uid = new_id()
    r = post(
        tenant,
        "/v1/group",
        {"userId": uid, "groupId": "acme", "traits": {"name": "Acme Inc", "employees": 12}},
    )
    assert_success(r)
    tenant.wait_processed(1)
    c = tenant.customer(user_id=uid)
    assert c["groups"] == [{"group_id": "acme", "traits": {"name": "Acme Inc", "employees": 12}}]


def test_alias_route(tenant: Tenant) -> None:
    uid, anon = new_id(), new_id("anon")
    first = {"anonymousId": anon, "event": "Viewed Pricing", "messageId": new_id("m")}
    assert_success(post(tenant, "/v1/track", first))
    tenant.wait_processed(1)
    alias = {"userId": uid, "previousId": anon, "messageId": new_id("m")}
    assert_success(post(tenant, "/v1/alias", alias))
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["anonymous_ids"] == [anon]
    assert [e["name"] for e in events(tenant, c["id"])] == ["Viewed Pricing"]
    assert len(customers(tenant)) == 1


def test_single_route_with_or_without_body_type(tenant: Tenant) -> None:
    """/v1/track with a body `type` of track is the same as without one."""
    uid = new_id()
    with_type = {"type": "track", "userId": uid, "event": "A", "messageId": new_id("m")}
    assert_success(post(tenant, "/v1/track", with_type))
    assert_success(
        post(tenant, "/v1/track", {"userId": uid, "event": "B", "messageId": new_id("m")})
    )
    tenant.wait_processed(2)
    names = sorted(e["name"] for e in events(tenant, tenant.customer(user_id=uid)["id"]))
    assert names == ["A", "B"]


def test_unknown_route_is_rejected(tenant: Tenant) -> None:
    r = post(tenant, "/v1/explode", {"userId": new_id(), "event": "X"})
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code)
    assert_nothing_stored(tenant)


# -- batch and import ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/batch", "/v1/import"])
def test_batch_routes_apply_every_type(tenant: Tenant, route: str) -> None:
    uid, anon = new_id(), new_id("anon")
    batch = [
        {"type": "identify", "userId": uid, "traits": {"email": f"{uid}@example.com"}},
        {"type": "track", "userId": uid, "event": "Signed In", "properties": {"n": 1}},
        {"type": "page", "userId": uid, "name": "Docs"},
        {"type": "screen", "userId": uid, "name": "Home"},
        {"type": "group", "userId": uid, "groupId": "g1", "traits": {"name": "G"}},
        {"type": "track", "anonymousId": anon, "event": "Viewed Pricing"},
        {"type": "alias", "userId": uid, "previousId": anon},
    ]
    assert_success(post(tenant, route, {"batch": batch}))
    tenant.wait_processed(len(batch))
    c = tenant.customer(user_id=uid)
    assert c["email"] == f"{uid}@example.com"
    assert c["anonymous_ids"] == [anon]
    assert c["groups"] == [{"group_id": "g1", "traits": {"name": "G"}}]
    got = sorted((e["type"], e["name"]) for e in events(tenant, c["id"]))
    assert got == [
        ("page", "Docs"),
        ("screen", "Home"),
        ("track", "Signed In"),
        ("track", "Viewed Pricing"),
    ]
    statuses = [m["status"] for m in tenant.messages()]
    assert statuses == ["accepted"] * len(batch)


def test_empty_batch_is_accepted(tenant: Tenant) -> None:
    assert_success(post(tenant, "/v1/batch", {"batch": []}))
    assert_nothing_stored(tenant)


# -- browser short routes (analytics.js) --------------------------------------------------------

SHORT_ROUTES = [
    ("/v1/i", {"traits": {"plan": "pro"}}),
    ("/v1/t", {"event": "Clicked", "properties": {"button": "buy"}}),
    ("/v1/p", {"name": "Pricing", "properties": {"path": "/pricing"}}),
    ("/v1/s", {"name": "Home"}),
    ("/v1/g", {"groupId": "acme", "traits": {"name": "Acme"}}),
]


def check_short_route(tenant: Tenant, path: str, uid: str) -> None:
    c = tenant.customer(user_id=uid)
    evs = events(tenant, c["id"])
    if path == "/v1/i":
        assert c["traits"]["plan"] == "pro"
        assert evs == []
    elif path == "/v1/t":
        assert [(e["type"], e["name"], e["properties"]) for e in evs] == [
            ("track", "Clicked", {"button": "buy"})
        ]
    elif path == "/v1/p":
        assert [(e["type"], e["name"]) for e in evs] == [("page", "Pricing")]
        assert evs[0]["properties"]["path"] == "/pricing"
    elif path == "/v1/s":
        assert [(e["type"], e["name"]) for e in evs] == [("screen", "Home")]
    else:
        assert c["groups"] == [{"group_id": "acme", "traits": {"name": "Acme"}}]
        assert evs == []


@pytest.mark.parametrize(("path", "fields"), SHORT_ROUTES, ids=[p for p, _ in SHORT_ROUTES])
def test_short_route_takes_type_from_path(
    tenant: Tenant, path: str, fields: dict[str, Any]
) -> None:
    uid = new_id()
    body = {"userId": uid, "writeKey": tenant.write_key, **fields}
    r = post(tenant, path, body, headers={"Content-Type": "text/plain"}, basic=False)
    assert_success(r)
    tenant.wait_processed(1)
    check_short_route(tenant, path, uid)
    [m] = tenant.messages()
    assert m["status"] == "accepted"
    assert "writeKey" not in m["raw"]  # credentials are not kept as data
    assert (
        m["type"]
        == {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group"}[path[-1]]
    )


@pytest.mark.parametrize(("path", "fields"), SHORT_ROUTES, ids=[p for p, _ in SHORT_ROUTES])
def test_short_route_with_type_and_basic_auth(
    tenant: Tenant, path: str, fields: dict[str, Any]
) -> None:
    """analytics-next sends `type` in the body and, lately, a Basic header too."""
    uid = new_id()
    kind = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group"}[path[-1]]
    r = post(
        tenant,
        path,
        {"type": kind, "userId": uid, **fields},
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert_success(r)
    tenant.wait_processed(1)
    check_short_route(tenant, path, uid)


def test_short_alias_route(tenant: Tenant) -> None:
    uid, anon = new_id(), new_id("anon")
    plain = {"Content-Type": "text/plain"}
    r = post(
        tenant,
        "/v1/t",
        {"anonymousId": anon, "event": "Viewed", "writeKey": tenant.write_key, "messageId": "m1"},
        headers=plain,
        basic=False,
    )
    assert_success(r)
    tenant.wait_processed(1)
    r = post(
        tenant,
        "/v1/a",
        {"userId": uid, "previousId": anon, "writeKey": tenant.write_key, "messageId": "m2"},
        headers=plain,
        basic=False,
    )
    assert_success(r)
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["anonymous_ids"] == [anon]
    assert [e["name"] for e in events(tenant, c["id"])] == ["Viewed"]
    assert [m["type"] for m in tenant.messages()] == ["alias", "track"]


def test_short_batch_route(tenant: Tenant) -> None:
    uid = new_id()
    body = {
        "writeKey": tenant.write_key,
        "batch": [
            {"type": "identify", "userId": uid, "traits": {"plan": "pro"}},
            {"type": "track", "userId": uid, "event": "Clicked"},
        ],
    }
    r = post(tenant, "/v1/b", body, headers={"Content-Type": "text/plain"}, basic=False)
    assert_success(r)
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["traits"]["plan"] == "pro"
    assert [e["name"] for e in events(tenant, c["id"])] == ["Clicked"]


# -- settings and CORS --------------------------------------------------------------------------


def test_settings_endpoint(tenant: Tenant) -> None:
    r = tenant.http.get(f"/v1/projects/{tenant.write_key}/settings")
    assert r.status_code == 200, r.text
    body = r.json()
    segment = body["integrations"]["Segment.io"]
    assert segment["apiKey"] == tenant.write_key
    netloc = tenant.url.split("://", 1)[1]
    assert segment["apiHost"].endswith("/v1")
    # analytics.js puts the scheme in front itself: the host is bare (or carries one scheme).
    assert segment["apiHost"].split("://", 1)[-1] == f"{netloc}/v1"


def test_settings_endpoint_unknown_key_is_401(tenant: Tenant) -> None:
    r = tenant.http.get(f"/v1/projects/wk_{uuid.uuid4().hex}/settings")
    assert_error(r, 401)


ORIGIN = "https://shop.example.com"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/identify",
        "/v1/track",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/v1/import",
        "/v1/t",
        "/v1/i",
        "/v1/p",
        "/v1/g",
        "/v1/a",
        "/v1/s",
        "/v1/b",
        "/v1/projects/{key}/settings",
    ],
)
def test_cors_preflight(tenant: Tenant, path: str) -> None:
    method = "GET" if path.endswith("/settings") else "POST"
    r = tenant.http.options(
        path.format(key=tenant.write_key),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code in (200, 204), r.text
    assert r.headers["access-control-allow-origin"] in ("*", ORIGIN)
    methods = {m.strip().upper() for m in r.headers["access-control-allow-methods"].split(",")}
    assert method in methods
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert "*" in allowed or {"authorization", "content-type"} <= allowed


def test_cors_headers_on_the_actual_request(tenant: Tenant) -> None:
    uid = new_id()
    r = post(
        tenant,
        "/v1/t",
        {"userId": uid, "event": "Clicked"},
        headers={"Origin": ORIGIN, "Content-Type": "text/plain"},
    )
    assert_success(r)
    assert r.headers["access-control-allow-origin"] in ("*", ORIGIN)
    r = tenant.http.get(f"/v1/projects/{tenant.write_key}/settings", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", ORIGIN)
    tenant.wait_processed(1)
    assert tenant.customer(user_id=uid)["user_id"] == uid


@pytest.mark.parametrize("origin", [None, ORIGIN])
@pytest.mark.parametrize(
    ("path", "body", "basic", "status", "code"),
    [
        ("/v1/track", b"{not json", True, 400, "invalid_json"),
        ("/v1/t", b"[1, 2]", True, 400, None),
        ("/v1/batch", {"batch": {}}, True, 400, None),
        ("/v1/track", {"userId": "u", "event": "E"}, False, 401, "missing_write_key"),
        ("/v1/b", {"batch": [], "writeKey": "wk_unknown"}, False, 401, "invalid_write_key"),
        ("/v1/t", {"userId": "u", "event": "E", "p": "x" * 33_000}, True, 400, "payload_too_large"),
        ("/v1/nonsense", {"userId": "u"}, True, 400, "unknown_type"),
    ],
)
def test_errors_are_the_same_from_servers_and_browsers(
    tenant: Tenant, origin: str | None, path: str, body: Any, basic: bool, status: int, code: str
) -> None:
    """Requests without Origin take the direct route to the handlers, browser requests the CORS
    one: both answer the same, and only the browser gets CORS headers."""
    headers = {"Origin": origin} if origin else {}
    r = post(tenant, path, body, headers=headers, basic=basic)
    assert_error(r, status, code)
    assert ("access-control-allow-origin" in r.headers) == bool(origin)


@pytest.mark.parametrize("origin", [None, ORIGIN])
def test_unknown_tracking_routes_and_methods(tenant: Tenant, origin: str | None) -> None:
    headers = {"Origin": origin} if origin else {}
    assert_error(post(tenant, "/v1/track/extra", {"userId": "u"}, headers=headers), 404)
    r = tenant.http.get("/v1/track", headers=headers)
    assert_error(r, 405)
    r = tenant.http.put("/v1/batch", content=b"{}", headers=headers)
    assert_error(r, 405)


# -- gzip -----------------------------------------------------------------------------------------


def test_gzip_batch(tenant: Tenant) -> None:
    uid = new_id()
    batch = [
        {"type": "identify", "userId": uid, "traits": {"plan": "gzip"}},
        {"type": "track", "userId": uid, "event": "Zipped", "properties": {"x": "y" * 2000}},
    ]
    assert_success(post(tenant, "/v1/batch", {"batch": batch}, encoding="gzip"))
    tenant.wait_processed(2)
    c = tenant.customer(user_id=uid)
    assert c["traits"]["plan"] == "gzip"
    [e] = events(tenant, c["id"])
    assert e["properties"] == {"x": "y" * 2000}


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t"])
def test_gzip_single_message(tenant: Tenant, path: str) -> None:
    uid = new_id()
    r = post(tenant, path, {"userId": uid, "event": "Zipped"}, encoding="gzip")
    assert_success(r)
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert e["name"] == "Zipped"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
def test_corrupt_gzip_is_400(tenant: Tenant, path: str) -> None:
    good = gzip.compress(dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]}))
    corrupt = [
        b"this is not gzip at all",
        good[: len(good) // 2],  # truncated
        good[:10] + bytes(b ^ 0xFF for b in good[10:20]) + good[20:],  # damaged
    ]
    for body in corrupt:
        r = post(tenant, path, body, headers={"Content-Encoding": "gzip"})
        assert_error(r, 400)
    assert_nothing_stored(tenant)


def test_gzip_bomb_over_the_batch_limit_is_400(tenant: Tenant) -> None:
    """A small compressed body that inflates past 500 KB is refused like a large one."""
    body = {"batch": [{"type": "track", "userId": "u", "event": "E", "pad": " " * (30 * KB)}]}
    body["batch"] = body["batch"] * 20  # ~600 KB of JSON, a few KB compressed
    r = post(tenant, "/v1/batch", body, encoding="gzip")
    assert_error(r, 400)
    assert_nothing_stored(tenant)


# -- limits and invalid JSON ---------------------------------------------------------------------


def track(uid: str, pad: int = 0) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "userId": uid, "event": "Padded"}
    if pad:
        message["properties"] = {"pad": "x" * pad}
    return message


@pytest.mark.parametrize("encoding", [None, "gzip"])
@pytest.mark.parametrize("path", ["/v1/track", "/v1/t"])
def test_single_message_over_32kb_is_400(tenant: Tenant, path: str, encoding: str | None) -> None:
    message = track(new_id(), pad=33 * KB)
    r = post(tenant, path, message, encoding=encoding)
    assert_error(r, 400)
    assert_nothing_stored(tenant)


def test_single_message_just_under_32kb_is_accepted(tenant: Tenant) -> None:
    uid = new_id()
    message = track(uid, pad=31 * KB)
    assert len(dumps(message)) < 32 * KB
    assert_success(post(tenant, "/v1/track", message))
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert len(e["properties"]["pad"]) == 31 * KB


def test_batch_body_over_500kb_is_400(tenant: Tenant) -> None:
    # Twenty messages of 26 KB: each one is within the 32 KB limit, the request is not.
    body = {"batch": [track(new_id(), pad=26 * KB) for _ in range(20)]}
    assert len(dumps(body)) > 500 * KB
    assert_error(post(tenant, "/v1/batch", body), 400)
    assert_nothing_stored(tenant)


def test_batch_of_2501_messages_is_400(tenant: Tenant) -> None:
    uid = new_id()
    body = {"batch": [track(uid) for _ in range(2501)]}
    assert len(dumps(body)) < 500 * KB
    assert_error(post(tenant, "/v1/batch", body), 400)
    assert_nothing_stored(tenant)


def test_batch_of_2500_messages_is_accepted(tenant: Tenant) -> None:
    uid = new_id()
    body = {"batch": [{**track(uid), "messageId": f"m-{i}"} for i in range(2500)]}
    assert_success(post(tenant, "/v1/batch", body))
    tenant.wait_processed(2500)
    assert metric(tenant, "accepted") == 2500


def test_one_oversize_message_in_a_batch_is_400(tenant: Tenant) -> None:
    uid = new_id()
    body = {"batch": [track(uid), track(uid, pad=33 * KB), track(uid)]}
    assert len(dumps(body)) < 500 * KB
    assert_error(post(tenant, "/v1/batch", body), 400)
    assert_nothing_stored(tenant)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/batch", "application/json"),
        ("/v1/import", "application/json"),
        ("/v1/track", "application/json"),
        ("/v1/identify", "application/json"),
        ("/v1/t", "text/plain"),
        ("/v1/b", "text/plain"),
    ],
)
def test_invalid_json_is_400(tenant: Tenant, path: str, content_type: str) -> None:
    for raw in (b'{"batch": [', b"not json", b'{"userId": "u", "event": }', b"\xff\xfe"):
        r = post(tenant, path, raw, headers={"Content-Type": content_type})
        assert_error(r, 400, "invalid_json")
    assert_nothing_stored(tenant)


def test_gzipped_invalid_json_is_400(tenant: Tenant) -> None:
    r = post(tenant, "/v1/batch", b'{"batch": [}', encoding="gzip")
    assert_error(r, 400, "invalid_json")
    assert_nothing_stored(tenant)


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/track"])
def test_empty_body_is_400(tenant: Tenant, path: str) -> None:
    assert_error(post(tenant, path, b""), 400)
    assert_nothing_stored(tenant)


@pytest.mark.parametrize(
    "body",
    [[{"type": "track"}], {"batch": "nope"}, {"batch": {"type": "track"}}, "text", 42],
    ids=["array", "batch-string", "batch-object", "string", "number"],
)
def test_batch_of_wrong_shape_is_400(tenant: Tenant, body: Any) -> None:
    assert_error(post(tenant, "/v1/batch", body), 400)
    assert_nothing_stored(tenant)


# -- dedup ----------------------------------------------------------------------------------------


def test_same_message_id_twice_is_one_event(tenant: Tenant) -> None:
    uid = new_id()
    mid = "dup-" + uuid.uuid4().hex
    first = {"userId": uid, "event": "Paid", "messageId": mid, "properties": {"try": 1}}
    second = {**first, "properties": {"try": 2}}
    assert_success(post(tenant, "/v1/track", first))
    tenant.wait_processed(1)
    assert_success(post(tenant, "/v1/batch", {"batch": [{**second, "type": "track"}]}))
    tenant.wait_processed(2)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert e["message_id"] == mid
    assert e["properties"] == {"try": 1}
    assert metric(tenant, "duplicate") == 1
    assert metric(tenant, "accepted") == 1
    assert [m["message_id"] for m in tenant.messages()] == [mid]


def test_same_message_id_in_two_requests_back_to_back(tenant: Tenant) -> None:
    """Both requests queued before the processor runs: still one event."""
    uid = new_id()
    mid = "dup-" + uuid.uuid4().hex
    message = {"type": "track", "userId": uid, "event": "Paid", "messageId": mid}
    assert_success(post(tenant, "/v1/batch", {"batch": [message]}))
    assert_success(post(tenant, "/v1/batch", {"batch": [message]}))
    tenant.wait_processed(2)
    assert len(events(tenant, tenant.customer(user_id=uid)["id"])) == 1
    assert metric(tenant, "duplicate") == 1


def test_same_message_id_twice_in_one_batch(tenant: Tenant) -> None:
    uid = new_id()
    mid = "dup-" + uuid.uuid4().hex
    message = {"type": "track", "userId": uid, "event": "Paid", "messageId": mid}
    assert_success(post(tenant, "/v1/batch", {"batch": [message, {**message, "event": "Again"}]}))
    tenant.wait_processed(2)
    assert [e["name"] for e in events(tenant, tenant.customer(user_id=uid)["id"])] == ["Paid"]
    assert metric(tenant, "duplicate") == 1


def test_messages_without_message_id_are_never_duplicates(tenant: Tenant) -> None:
    """A messageId is generated for a message without one: requests sent one after another
    (each processed before the next arrives) are distinct messages, never duplicates."""
    uid = new_id()
    for n in range(3):
        assert_success(post(tenant, "/v1/track", {"userId": uid, "event": f"Step {n}"}))
        tenant.wait_processed(n + 1)
    assert_success(
        post(tenant, "/v1/batch", {"batch": [{"type": "track", "userId": uid, "event": "Step 3"}]})
    )
    tenant.wait_processed(4)
    names = sorted(e["name"] for e in events(tenant, tenant.customer(user_id=uid)["id"]))
    assert names == ["Step 0", "Step 1", "Step 2", "Step 3"]
    assert metric(tenant, "duplicate") == 0
    ids = [m["message_id"] for m in tenant.messages()]
    assert len(set(ids)) == 4


def test_message_id_is_per_project(server: Any, tenant: Tenant) -> None:
    other = server.new_tenant()
    try:
        mid = "shared-" + uuid.uuid4().hex
        uid = new_id()
        message = {"type": "track", "userId": uid, "event": "Paid", "messageId": mid}
        for t in (tenant, other):
            assert_success(post(t, "/v1/batch", {"batch": [message]}))
            t.wait_processed(1)
            assert len(events(t, t.customer(user_id=uid)["id"])) == 1
            assert metric(t, "duplicate") == 0
    finally:
        other.close()


# -- time -----------------------------------------------------------------------------------------


def received_window(tenant: Tenant, send: Any) -> tuple[datetime, datetime]:
    before = now()
    send()
    after = now()
    return before - timedelta(seconds=2), after + timedelta(seconds=2)


@pytest.mark.parametrize("where", ["message", "batch-envelope"])
def test_clock_skew_is_corrected(tenant: Tenant, where: str) -> None:
    uid = new_id()
    message: dict[str, Any] = {
        "type": "track",
        "userId": uid,
        "event": "Skewed",
        "timestamp": "2020-01-01T00:00:00.000Z",
    }
    body: dict[str, Any] = {"batch": [message]}
    sent_at = "2020-01-01T01:00:00.000Z"  # the client's clock: one hour after the event
    if where == "message":
        message["sentAt"] = sent_at
    else:
        body["sentAt"] = sent_at
    lo, hi = received_window(tenant, lambda: assert_success(post(tenant, "/v1/batch", body)))
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    received = ts(e["received_at"])
    assert lo <= received <= hi
    stamp = ts(e["timestamp"])
    assert abs(stamp - (received - timedelta(hours=1))) < timedelta(seconds=1)
    assert lo - timedelta(hours=1) <= stamp <= hi - timedelta(hours=1)


def test_clock_skew_on_a_single_message_route(tenant: Tenant) -> None:
    uid = new_id()
    message = {
        "userId": uid,
        "event": "Skewed",
        "timestamp": "2020-01-01T00:00:00Z",
        "sentAt": "2019-12-31T23:30:00Z",  # the client's clock is 30 minutes behind the event
    }
    lo, hi = received_window(tenant, lambda: assert_success(post(tenant, "/v1/track", message)))
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    received = ts(e["received_at"])
    assert lo <= received <= hi
    assert abs(ts(e["timestamp"]) - (received + timedelta(minutes=30))) < timedelta(seconds=1)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2021-06-01T12:00:00.123Z", "2021-06-01T12:00:00.123+00:00"),
        ("2021-06-01T12:00:00+00:00", "2021-06-01T12:00:00+00:00"),
        ("2021-06-01T14:00:00.123456+02:00", "2021-06-01T12:00:00.123+00:00"),
        (1622548800123, "2021-06-01T12:00:00.123+00:00"),
    ],
    ids=["z-millis", "offset", "micros-other-zone", "epoch-millis"],
)
def test_message_without_sent_at_keeps_its_timestamp(
    tenant: Tenant, given: Any, expected: str
) -> None:
    uid = new_id()
    message = {"type": "track", "userId": uid, "event": "On Time", "timestamp": given}
    assert_success(post(tenant, "/v1/batch", {"batch": [message]}))
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert abs(ts(e["timestamp"]) - datetime.fromisoformat(expected)) < timedelta(milliseconds=1)


def test_message_without_timestamp_gets_the_receive_time(tenant: Tenant) -> None:
    uid = new_id()
    message = {"type": "track", "userId": uid, "event": "Now", "sentAt": "2020-01-01T00:00:00Z"}
    lo, hi = received_window(
        tenant, lambda: assert_success(post(tenant, "/v1/batch", {"batch": [message]}))
    )
    tenant.wait_processed(1)
    [e] = events(tenant, tenant.customer(user_id=uid)["id"])
    assert lo <= ts(e["timestamp"]) <= hi
    assert abs(ts(e["timestamp"]) - ts(e["received_at"])) < timedelta(seconds=1)


# -- batch-level context and integrations --------------------------------------------------------


def test_batch_context_and_integrations_merge_under_each_item(tenant: Tenant) -> None:
    uid = new_id()
    outer_context = {
        "library": {"name": "outer-lib", "version": "1.0"},
        "locale": "fr-FR",
        "app": {"name": "Shop"},
    }
    outer_integrations = {"All": True, "Mixpanel": False}
    batch = [
        {
            "type": "track",
            "userId": uid,
            "event": "With Own",
            "messageId": "m-own",
            "context": {"library": {"name": "inner-lib", "version": "2.0"}, "ip": "10.1.2.3"},
            "integrations": {"All": False, "Tidings": True},
        },
        {"type": "track", "userId": uid, "event": "Without Own", "messageId": "m-bare"},
    ]
    body = {"batch": batch, "context": outer_context, "integrations": outer_integrations}
    assert_success(post(tenant, "/v1/batch", body))
    tenant.wait_processed(2)

    by_name = {e["name"]: e for e in events(tenant, tenant.customer(user_id=uid)["id"])}
    own = by_name["With Own"]["context"]
    assert own["library"] == {"name": "inner-lib", "version": "2.0"}  # the item's key wins
    assert own["ip"] == "10.1.2.3"
    assert own["locale"] == "fr-FR"
    assert own["app"] == {"name": "Shop"}
    bare = by_name["Without Own"]["context"]
    assert bare["library"] == {"name": "outer-lib", "version": "1.0"}
    assert bare["locale"] == "fr-FR"
    assert bare["app"] == {"name": "Shop"}

    raw = {m["message_id"]: m["raw"] for m in tenant.messages()}
    assert raw["m-own"]["integrations"] == {"All": False, "Mixpanel": False, "Tidings": True}
    assert raw["m-bare"]["integrations"] == {"All": True, "Mixpanel": False}


# -- invalid messages inside a batch -------------------------------------------------------------


def test_invalid_messages_in_a_batch_are_rejected_visibly(tenant: Tenant) -> None:
    uid, anon = new_id(), new_id("anon")
    batch = [
        {"type": "identify", "userId": uid, "traits": {"plan": "pro"}, "messageId": "ok-1"},
        {"type": "track", "event": "Nobody", "messageId": "bad-no-ids"},
        {
            "type": "track",
            "userId": None,
            "anonymousId": None,
            "event": "X",
            "messageId": "bad-null",
        },
        {"type": "track", "userId": uid, "messageId": "bad-no-event"},
        {"type": "track", "userId": uid, "event": "", "messageId": "bad-empty-event"},
        {"type": "explode", "userId": uid, "messageId": "bad-type"},
        {"userId": uid, "event": "Typeless", "messageId": "bad-no-type"},
        {"type": "group", "userId": uid, "messageId": "bad-no-group"},
        {"type": "alias", "userId": uid, "messageId": "bad-no-previous"},
        {"type": "track", "userId": uid, "event": "Valid", "messageId": "ok-2"},
        # JSON null counts as absent: segment-analytics-python sends nulls.
        {
            "type": "track",
            "userId": None,
            "anonymousId": anon,
            "event": "Anon",
            "messageId": "ok-3",
        },
    ]
    assert_success(post(tenant, "/v1/batch", {"batch": batch}))
    tenant.wait_processed(len(batch))

    c = tenant.customer(user_id=uid)
    assert c["traits"]["plan"] == "pro"
    assert [e["name"] for e in events(tenant, c["id"])] == ["Valid"]

    rejected = {m["message_id"]: m for m in tenant.messages("rejected")}
    assert set(rejected) == {
        "bad-no-ids",
        "bad-null",
        "bad-no-event",
        "bad-empty-event",
        "bad-type",
        "bad-no-type",
        "bad-no-group",
        "bad-no-previous",
    }
    for m in rejected.values():
        assert m["status"] == "rejected"
        assert isinstance(m["reason"], str)
        assert m["reason"]
        assert m["customer_id"] is None
    assert "userid" in rejected["bad-no-ids"]["reason"].lower()
    assert "event" in rejected["bad-no-event"]["reason"].lower()
    assert "type" in rejected["bad-type"]["reason"].lower()
    assert "groupid" in rejected["bad-no-group"]["reason"].lower()
    assert "previousid" in rejected["bad-no-previous"]["reason"].lower()
    assert rejected["bad-no-event"]["raw"]["userId"] == uid

    accepted = {m["message_id"] for m in tenant.messages("accepted")}
    assert accepted == {"ok-1", "ok-2", "ok-3"}
    assert metric(tenant, "rejected") == len(rejected)
    assert metric(tenant, "accepted") == 3
    # Only the valid messages made customers: the identified one and the anonymous visitor.
    assert len(customers(tenant)) == 2


def test_non_object_items_in_a_batch_are_rejected_visibly(tenant: Tenant) -> None:
    uid = new_id()
    batch: list[Any] = [
        "a string",
        42,
        None,
        {"type": "track", "userId": uid, "event": "Valid", "messageId": "ok"},
    ]
    assert_success(post(tenant, "/v1/batch", {"batch": batch}))
    tenant.wait_processed(len(batch))
    assert [e["name"] for e in events(tenant, tenant.customer(user_id=uid)["id"])] == ["Valid"]
    rejected = tenant.messages("rejected")
    assert len(rejected) == 3
    assert all(m["reason"] for m in rejected)


def test_nul_characters_and_overlong_types_do_not_stall_processing(tenant: Tenant) -> None:
    """JSON may carry U+0000, which PostgreSQL's text and jsonb refuse: such characters are
    replaced (U+FFFD) wherever they appear, so the message is applied like any other. A type
    too long for the message log is still logged, as rejected. Neither holds up the rest."""
    uid, odd = new_id(), new_id() + "\u0000x"
    batch = [
        {"type": "track", "userId": uid, "event": "Before", "messageId": "ok-before"},
        {
            "type": "track",
            "userId": odd,
            "event": "Sig\u0000ned",
            "properties": {"note": "a\u0000b", "k\u0000": 1},
            "messageId": "nul\u0000id",
        },
        {"type": "x" * 40, "userId": uid, "messageId": "bad-long-type"},
        {"type": "track", "userId": uid, "event": "After", "messageId": "ok-after"},
    ]
    assert_success(post(tenant, "/v1/batch", {"batch": batch}))
    tenant.wait_processed(len(batch))

    assert [e["name"] for e in events(tenant, tenant.customer(user_id=uid)["id"])] == [
        "After",
        "Before",
    ]
    replaced = tenant.customer(user_id=odd.replace("\u0000", "\ufffd"))
    [event] = events(tenant, replaced["id"])
    assert event["name"] == "Sig\ufffdned"
    assert event["properties"] == {"note": "a\ufffdb", "k\ufffd": 1}
    accepted = {m["message_id"] for m in tenant.messages("accepted")}
    assert accepted == {"ok-before", "nul\ufffdid", "ok-after"}
    [long_type] = tenant.messages("rejected")
    assert long_type["message_id"] == "bad-long-type"
    assert "type" in long_type["reason"].lower()
    assert long_type["raw"]["type"] == "x" * 40
