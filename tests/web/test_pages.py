"""Server-side tests of every dashboard page against the live server (SQLite and PostgreSQL).

Visitors sign in through the real form (GET /login for the CSRF cookie and token, POST, 303;
see conftest.py for how accounts are reused) and read the HTML the server renders. Each test has
its own fresh project, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from tests.support import Tenant
from tests.web.conftest import SignIn
from tests.web.dash import (
    PASSWORD,
    Visitor,
    cookie_flags,
    create_user,
    customer_ids,
    group,
    identify,
    new_email,
    set_cookies,
    signed_in,
    track,
    uid,
)
from tests.web.dom import Node, parse
from tidings.auth import users
from tidings.auth.models import Project, User
from tidings.config import Settings
from tidings.main import create_app

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def api_settings(tenant: Tenant, secret: str | None = None) -> httpx.Response:
    return tenant.http.get(
        "/api/project/settings",
        headers={"Authorization": f"Bearer {secret or tenant.secret_key}"},
    )


def customers_of(visitor: Visitor, tenant: Tenant, **params: str) -> list[int]:
    doc = visitor.page(f"/p/{tenant.project_id}/customers", params=params)
    return customer_ids(doc, tenant.project_id)


def nav_links(doc: Node) -> list[str]:
    return doc.find("nav").links()


def current_nav(doc: Node) -> str:
    """The nav entry marked as the current page."""
    (current,) = doc.find("nav").find_all("a", aria_current="page")
    return current.attrs["href"]


def definitions(node: Node) -> dict[str, str]:
    """A <dl>'s terms and their definitions, as text."""
    dl = node if node.tag == "dl" else node.find("dl")
    terms = [dt.text for dt in dl.find_all("dt")]
    return dict(zip(terms, [dd.text for dd in dl.find_all("dd")], strict=True))


def tag_names(node: Node) -> list[str]:
    """The tags shown in a customer's tag list (without their remove buttons)."""
    return [
        "".join(c for c in span.children if isinstance(c, str)).strip()
        for span in node.find_all("span", class_="tag")
    ]


def assert_security_headers(r: httpx.Response) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0], csp
    assert r.headers.get("x-frame-options") == "DENY"
    assert r.headers.get("x-content-type-options") == "nosniff"


# -- sign-in ------------------------------------------------------------------------------------


def test_login_page_has_form_csrf_cookie_and_security_headers(tenant: Tenant) -> None:
    r = tenant.http.get("/login")
    assert r.status_code == 200
    doc = parse(r.text)
    form = doc.find("form", action="/login")
    assert form.attrs["method"] == "post"
    token = form.find("input", name="csrf_token").attrs["value"]
    assert len(token) >= 20
    assert form.find("input", name="email").attrs["type"] == "email"
    assert form.find("input", name="password").attrs["type"] == "password"
    assert "Sign in" in doc.find("h1").text
    cookie = set_cookies(r)["tidings_login_csrf"]
    assert cookie.startswith(f"tidings_login_csrf={token};")
    flags = cookie_flags(cookie)
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert "secure" not in flags  # plain http here
    assert_security_headers(r)


def test_sign_in_sets_a_hardened_session_cookie_and_lands_on_the_first_project(
    tenant: Tenant,
) -> None:
    email = create_user(tenant.server.db, role="owner", project_ids=[tenant.project_id])
    v = Visitor(tenant.url)
    try:
        r = v.sign_in(email)
        assert r.status_code == 303
        assert r.headers["location"] == "/"
        cookie = set_cookies(r)["tidings_session"]
        flags = cookie_flags(cookie)
        assert "httponly" in flags
        assert "samesite=lax" in flags
        assert "path=/" in flags
        assert "secure" not in flags
        home = v.get("/")
        assert home.status_code == 303
        assert home.headers["location"] == f"/p/{tenant.project_id}/customers"
        doc = v.page(home.headers["location"])
        assert email in doc.find("nav").text
        assert "Customers" in doc.find("h1").text
    finally:
        v.close()


def test_cookies_are_secure_when_served_over_https(tenant: Tenant) -> None:
    """Behind a TLS-terminating proxy on the same host (X-Forwarded-Proto: https)."""
    email = create_user(tenant.server.db, role="member", project_ids=[tenant.project_id])
    https = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=tenant.url, timeout=30) as http:
        r = http.get("/login", headers=https)
        assert r.status_code == 200
        assert "secure" in cookie_flags(set_cookies(r)["tidings_login_csrf"])
        token = parse(r.text).find("input", name="csrf_token").attrs["value"]
        r = http.post(
            "/login",
            data={"email": email, "password": PASSWORD, "csrf_token": token},
            headers={**https, "Cookie": f"tidings_login_csrf={token}"},
        )
        assert r.status_code == 303, r.text
        flags = cookie_flags(set_cookies(r)["tidings_session"])
        assert {"secure", "httponly", "samesite=lax"} <= flags


def _browser_resolve(base: str, location: str) -> str:
    # What a browser does with a Location header (WHATWG URL parsing): tabs and newlines are
    # removed and, for http(s), a backslash is a slash.
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    return urljoin(base + "/login", cleaned)


OFF_SITE = ["//evil.example/x", "https://evil.example/x", "/\\evil.example/x"]


def test_sign_in_goes_to_next_but_never_to_another_site(tenant: Tenant) -> None:
    email = create_user(tenant.server.db, role="member", project_ids=[tenant.project_id])
    v = Visitor(tenant.url)
    try:
        target = f"/p/{tenant.project_id}/events?cursor="
        form = v.http.get("/login", params={"next": target})
        assert parse(form.text).find("input", name="next").attrs["value"] == target
        r = v.sign_in(email, next=target)
        assert r.status_code == 303
        assert r.headers["location"] == target
        assert v.follow(r).status_code == 200
        for bad in OFF_SITE:
            r = v.sign_in(email, next=bad)
            assert r.status_code == 303
            landed = _browser_resolve(tenant.url, r.headers["location"])
            assert urlsplit(landed).netloc == urlsplit(tenant.url).netloc, (
                f"next={bad!r} sends the browser to {landed} (Location: {r.headers['location']!r})"
            )
    finally:
        v.close()


def test_wrong_password_shows_an_error_and_no_session(tenant: Tenant) -> None:
    email = create_user(tenant.server.db, role="member", project_ids=[tenant.project_id])
    v = Visitor(tenant.url)
    try:
        r = v.sign_in(email, "not the password")
        assert r.status_code == 401
        doc = parse(r.text)
        assert "Wrong email or password" in doc.find(role="alert").text
        assert doc.find("input", name="email").attrs["value"] == email
        assert "tidings_session" not in set_cookies(r)
        assert v.session_token is None
        # The form can be submitted again right away.
        again = v.sign_in(email)
        assert again.status_code == 303
    finally:
        v.close()


def test_sign_in_is_rate_limited_after_five_failures_for_an_email(tenant: Tenant) -> None:
    email = create_user(tenant.server.db, role="member", project_ids=[tenant.project_id])
    other = create_user(tenant.server.db, role="member", project_ids=[tenant.project_id])
    v = Visitor(tenant.url)
    try:
        for _ in range(5):
            assert v.sign_in(email, "wrong password!").status_code == 401
        blocked = v.sign_in(email)  # even the right password
        assert blocked.status_code == 429
        assert "Too many failed sign-ins" in parse(blocked.text).find(role="alert").text
        assert v.session_token is None
        # Case and spaces do not get around the limit.
        assert v.sign_in(f"  {email.upper()} ").status_code == 429
        # Another account is not locked out.
        assert v.sign_in(other).status_code == 303
    finally:
        v.close()


@pytest.mark.parametrize("token", ["", "forged-token-value"])
def test_sign_in_without_the_form_csrf_token_is_refused(tenant: Tenant, token: str) -> None:
    email = new_email()  # refused before the password is even checked
    v = Visitor(tenant.url)
    try:
        v.login_form()
        data = {"email": email, "password": PASSWORD}
        if token:
            data["csrf_token"] = token
        r = v.http.post("/login", data=data)
        assert r.status_code == 403
        assert "tidings_session" not in set_cookies(r)
        # And without the cookie (a cross-site post), even with some token.
        with httpx.Client(base_url=tenant.url) as bare:
            r = bare.post("/login", data={**data, "csrf_token": token or "x"})
            assert r.status_code == 403
            assert "tidings_session" not in set_cookies(r)
    finally:
        v.close()


SIGNED_IN_PAGES = [
    "/",
    "/p/{pid}/customers",
    "/p/{pid}/customers?q=ann%40example.com&sort=created",
    "/p/{pid}/customers/1",
    "/p/{pid}/customers/1/timeline",
    "/p/{pid}/events",
    "/p/{pid}/traits",
    "/p/{pid}/live",
    "/p/{pid}/live/rows?after=0",
    "/p/{pid}/settings",
    "/p/{pid}/settings/rotate/secret",
    "/projects/new",
]


def test_signed_out_pages_redirect_to_login_with_next(tenant: Tenant) -> None:
    for i, template in enumerate(SIGNED_IN_PAGES):
        path = template.format(pid=tenant.project_id)
        # No cookie, or one that is not a session (every third page: same code path).
        for cookies in ({}, {"tidings_session": "not-a-session"})[: 1 + (i % 3 == 0)]:
            with httpx.Client(base_url=tenant.url, cookies=cookies) as bare:
                r = bare.get(path)
                assert r.status_code == 303, f"{path}: {r.status_code}"
                location = urlsplit(r.headers["location"])
                assert location.path == "/login"
                assert parse_qs(location.query)["next"] == [path]


def test_signed_out_htmx_requests_are_told_to_go_to_login(tenant: Tenant) -> None:
    r = tenant.http.get(f"/p/{tenant.project_id}/live/rows?after=0", headers={"HX-Request": "true"})
    assert r.headers.get("hx-redirect") == "/login"
    assert "live-message" not in r.text


def test_signed_out_posts_change_nothing(tenant: Tenant) -> None:
    before = api_settings(tenant).json()
    r = tenant.http.post(f"/p/{tenant.project_id}/settings/rotate/write", data={"csrf_token": "x"})
    assert r.status_code == 303
    assert urlsplit(r.headers["location"]).path == "/login"
    assert api_settings(tenant).json() == before


def test_logout_ends_the_session(tenant: Tenant, sign_in_as: SignIn) -> None:
    owner = sign_in_as("owner", fresh=True)
    token = owner.session_token
    csrf = owner.csrf()
    r = owner.post("/logout", csrf=csrf)
    assert r.status_code == 303
    assert r.headers["location"] == "/login"
    cleared = set_cookies(r)["tidings_session"]
    assert "max-age=0" in cookie_flags(cleared) or 'tidings_session="";' in cleared
    assert owner.get(f"/p/{tenant.project_id}/customers").status_code == 303
    # The old cookie is dead on the server too, not just deleted in the browser.
    with httpx.Client(base_url=tenant.url, cookies={"tidings_session": token or ""}) as old:
        r = old.get(f"/p/{tenant.project_id}/customers")
        assert r.status_code == 303
        assert urlsplit(r.headers["location"]).path == "/login"


def test_a_user_without_projects_is_told_what_to_do(tenant: Tenant, sign_in_as: SignIn) -> None:
    v = sign_in_as("member", [], fresh=True)
    doc = v.page("/")
    assert "No projects yet" in doc.text
    assert "Ask an owner to invite you" in doc.text


# -- customers ----------------------------------------------------------------------------------


def test_empty_customer_list_shows_the_write_key_and_snippets(
    tenant: Tenant, owner: Visitor
) -> None:
    doc = owner.page(f"/p/{tenant.project_id}/customers")
    assert "No customers yet" in doc.text
    assert doc.by_id("write-key").text == tenant.write_key
    python = doc.by_id("snippet-python").text
    assert "pip install segment-analytics-python" in python
    assert f'analytics.write_key = "{tenant.write_key}"' in python
    assert f'analytics.host = "{tenant.url}"' in python
    js = doc.by_id("snippet-js").text
    assert "analytics.load(" in js
    assert f'writeKey: "{tenant.write_key}"' in js
    assert urlsplit(tenant.url).netloc + "/v1" in js
    curl = doc.by_id("snippet-curl").text
    assert curl.startswith(f"curl -u {tenant.write_key}: {tenant.url}/v1/identify")
    # The curl snippet works as printed.
    body = curl.split("-d '", 1)[1].rsplit("'", 1)[0]
    r = httpx.post(
        f"{tenant.url}/v1/identify",
        content=body,
        auth=(tenant.write_key, ""),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert current_nav(doc) == f"/p/{tenant.project_id}/customers"


def _seed_three(tenant: Tenant, owner: Visitor) -> dict[str, int]:
    tenant.send(
        [
            identify(
                "u-ann",
                {"email": "ann@example.com", "name": "Ann Archer", "plan": "pro"},
                timestamp=ts(0),
            ),
            identify(
                "u-bob",
                {"email": "bob@example.com", "name": "Bob Brown", "plan": "free"},
                timestamp=ts(60),
            ),
            identify(
                "u-cat",
                {"email": "cat@example.com", "name": "Cat Cole", "plan": "pro"},
                timestamp=ts(30),
            ),
            track("u-ann", "Order Completed", {"revenue": 100}, timestamp=ts(-1000)),
            track("u-bob", "Order Completed", {"revenue": 5}, timestamp=ts(-1000)),
            track("u-cat", "Order Completed", {"revenue": 50}, timestamp=ts(-1000)),
        ]
    )
    ids = {name: tenant.customer(user_id=f"u-{name}")["id"] for name in ("ann", "bob", "cat")}
    r = owner.post(f"/p/{tenant.project_id}/customers/{ids['cat']}/tags", {"tag": "vip"})
    assert r.status_code == 303
    return ids


def test_customer_list_rows_search_and_filters(tenant: Tenant, owner: Visitor) -> None:
    ids = _seed_three(tenant, owner)
    ann, bob, cat = ids["ann"], ids["bob"], ids["cat"]
    doc = owner.page(f"/p/{tenant.project_id}/customers")
    assert set(customer_ids(doc, tenant.project_id)) == {ann, bob, cat}
    row = next(r for r in doc.find("tbody").find_all("tr") if "Ann Archer" in r.text)
    assert "ann@example.com" in row.text
    assert "u-ann" in row.text
    assert "100.00" in row.text
    assert doc.find("input", name="q").attrs["type"] == "search"

    assert customers_of(owner, tenant, q="ann@example.com") == [ann]
    assert customers_of(owner, tenant, q="ANN@example.COM") == [ann]
    assert customers_of(owner, tenant, q="cat@") == [cat]
    assert customers_of(owner, tenant, q="Bob") == [bob]  # name
    assert customers_of(owner, tenant, q="u-cat") == [cat]  # userId
    searched = owner.page(f"/p/{tenant.project_id}/customers", params={"q": "bob@example.com"})
    assert searched.find("input", name="q").attrs["value"] == "bob@example.com"
    assert f"/p/{tenant.project_id}/customers" in searched.find("main").links()  # Clear

    nobody = owner.page(f"/p/{tenant.project_id}/customers", params={"q": "nobody@example.com"})
    assert customer_ids(nobody, tenant.project_id) == []
    assert "No customer matches" in nobody.find("tbody").text

    tag_select = doc.find("select", name="tag")
    # The menu lists tag names (counts live in the catalog: GET /api/tags).
    assert [o.attrs["value"] for o in tag_select.find_all("option")] == ["", "vip"]
    assert customers_of(owner, tenant, tag="vip") == [cat]
    assert set(customers_of(owner, tenant, trait="plan:pro")) == {ann, cat}
    assert customers_of(owner, tenant, trait="plan:free") == [bob]
    assert customers_of(owner, tenant, trait="plan:pro", tag="vip") == [cat]
    assert customers_of(owner, tenant, trait="plan:pro", q="ann@") == [ann]

    bad = owner.page(f"/p/{tenant.project_id}/customers", params={"trait": "plan"})
    assert "A trait filter looks like" in bad.find(role="alert").text


def test_customer_list_sorts(tenant: Tenant, owner: Visitor) -> None:
    ids = _seed_three(tenant, owner)
    ann, bob, cat = ids["ann"], ids["bob"], ids["cat"]
    doc = owner.page(f"/p/{tenant.project_id}/customers")
    options = {o.attrs["value"]: o.text for o in doc.find("select", name="sort").find_all("option")}
    assert set(options) == {"last_seen", "created", "lifetime_value"}
    assert customer_ids(doc, tenant.project_id) == [bob, cat, ann]  # default: last seen
    assert customers_of(owner, tenant, sort="last_seen") == [bob, cat, ann]
    assert customers_of(owner, tenant, sort="created") == sorted(ids.values(), reverse=True)
    assert customers_of(owner, tenant, sort="lifetime_value") == [ann, cat, bob]
    by_value = owner.page(f"/p/{tenant.project_id}/customers", params={"sort": "lifetime_value"})
    assert by_value.find("option", value="lifetime_value").attrs.get("selected") is not None


def test_customer_list_pages_with_a_cursor(tenant: Tenant, owner: Visitor) -> None:
    tenant.send(
        [
            identify(f"bulk-{i:02d}", {"email": f"bulk{i:02d}@example.com", "plan": "bulk"})
            for i in range(55)
        ]
        + [identify("lonely", {"email": "lonely@example.com", "plan": "solo"})]
    )
    base = f"/p/{tenant.project_id}/customers"
    first = owner.page(base, params={"trait": "plan:bulk", "sort": "created"})
    page1 = customer_ids(first, tenant.project_id)
    assert len(page1) == 50
    nxt = first.find("div", class_="pager").find("a").attrs["href"]
    query = parse_qs(urlsplit(nxt).query)
    assert query["trait"] == ["plan:bulk"]
    assert query["sort"] == ["created"]
    assert query["cursor"][0]
    second = owner.page(urljoin(base, nxt))
    page2 = customer_ids(second, tenant.project_id)
    assert len(page2) == 5
    assert not set(page1) & set(page2)
    assert page1 + page2 == sorted(page1 + page2, reverse=True)
    assert second.find("div", class_="pager").find_all("a") == []
    lonely = tenant.customer(user_id="lonely")["id"]
    assert lonely not in page1 + page2
    # The default sort pages too.
    everyone = owner.page(base)
    assert len(customer_ids(everyone, tenant.project_id)) == 50
    more = everyone.find("div", class_="pager").find("a").attrs["href"]
    assert len(customer_ids(owner.page(urljoin(base, more)), tenant.project_id)) == 6


def test_a_forged_cursor_is_a_readable_error(tenant: Tenant, owner: Visitor) -> None:
    tenant.send([identify("u1", {"email": "u1@example.com"})])
    doc = owner.page(f"/p/{tenant.project_id}/customers", params={"cursor": "@@nope@@"})
    assert "not valid" in doc.find(role="alert").text


# -- customer profile ---------------------------------------------------------------------------


def test_profile_shows_identity_traits_tags_value_groups_and_timeline(
    tenant: Tenant, owner: Visitor
) -> None:
    user = uid()
    tenant.send(
        [
            identify(
                user,
                {
                    "email": "Ann@Example.com",
                    "name": "Ann Archer",
                    "plan": "pro",
                    "signed_up_at": "2024-03-05T10:20:00Z",
                    "trial_ends_at": 1700000000,
                    "seats": 12,
                },
                anonymousId="anon-123",
                timestamp=ts(0),
            ),
            group(user, "acme", {"name": "Acme Inc"}, timestamp=ts(1)),
            track(user, "Order Completed", {"revenue": 42.5, "sku": "SKU-9"}, timestamp=ts(2)),
            track(user, "Viewed Pricing", {"tier": "team"}, timestamp=ts(3)),
        ]
    )
    cid = tenant.customer(user_id=user)["id"]
    r = owner.post(f"/p/{tenant.project_id}/customers/{cid}/tags", {"tag": "churn risk"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/p/{tenant.project_id}/customers/{cid}"

    doc = owner.page(f"/p/{tenant.project_id}/customers/{cid}")
    assert doc.find("h1").text == "Ann Archer"
    identity = doc.find("section", aria_labelledby="identity")
    assert user in identity.text
    assert "ann@example.com" in identity.text
    assert "anon-123" in identity.text

    traits = doc.by_id("traits")
    keys = [dt.text for dt in traits.find_all("dt")]
    values = dict(zip(keys, traits.find_all("dd"), strict=True))
    assert {"email", "name", "plan", "signed_up_at", "trial_ends_at", "seats"} <= set(keys)
    assert values["plan"].text == "pro"
    assert values["seats"].text == "12"
    signed_up = values["signed_up_at"]
    assert signed_up.text == "2024-03-05 10:20 UTC"
    assert signed_up.find("time").attrs["datetime"].startswith("2024-03-05T10:20:00")
    assert values["trial_ends_at"].text == "2023-11-14 22:13 UTC"  # epoch seconds, shown as date

    assert tag_names(doc.by_id("tags")) == ["churn risk"]
    revenue = doc.find("section", aria_labelledby="revenue")
    money = definitions(revenue)
    assert money["Lifetime value"].startswith("42.50")
    assert money["Charges"] == "1"
    assert money["Last charge"] == "2024-05-01 12:02 UTC"
    assert "42.50 USD" in revenue.find("table").text
    groups = doc.find("section", aria_labelledby="groups-h").text
    assert "Acme Inc" in groups
    assert "acme" in groups

    timeline = doc.by_id("timeline").find_all("details", class_="event")
    names = [d.find("summary").find("strong").text for d in timeline]
    assert names[:2] == ["Viewed Pricing", "Order Completed"]  # newest first
    order = timeline[names.index("Order Completed")]
    assert '"sku": "SKU-9"' in order.find("pre").text
    assert "2024-05-01 12:02 UTC" in order.find("summary").text


def test_profile_timeline_scrolls_through_a_cursor(tenant: Tenant, owner: Visitor) -> None:
    user = uid()
    tenant.send(
        [identify(user, {"email": "long@example.com"}, timestamp=ts(0))]
        + [track(user, f"Step {i:02d}", {"i": i}, timestamp=ts(i + 1)) for i in range(55)]
    )
    cid = tenant.customer(user_id=user)["id"]
    base = f"/p/{tenant.project_id}/customers/{cid}"
    doc = owner.page(base)

    def steps(node: Node) -> list[str]:
        return [
            s.text
            for d in node.find_all("details", class_="event")
            for s in d.find("summary").find_all("strong")
            if s.text.startswith("Step")
        ]

    first = steps(doc.by_id("timeline"))
    assert first[0] == "Step 54"
    assert first == sorted(first, reverse=True)
    assert len(first) < 55
    loader = next(n for n in doc.by_id("timeline").find_all("div") if "hx-get" in n.attrs)
    assert loader.attrs["hx-trigger"] == "revealed"
    fragment_url = loader.attrs["hx-get"]
    assert fragment_url.startswith(f"{base}/timeline?cursor=")

    r = owner.get(fragment_url, headers={"HX-Request": "true"})
    assert r.status_code == 200
    assert "<html" not in r.text  # a fragment, not a page
    fragment = parse(r.text)
    rest = steps(fragment)
    assert first + rest == [f"Step {i:02d}" for i in range(54, -1, -1)]
    assert not [n for n in fragment.find_all("div") if "hx-get" in n.attrs]  # the end

    # Without JavaScript the "Older events" link shows the next page.
    older = loader.find("a").attrs["href"]
    assert older.startswith(f"{base}?cursor=")
    assert steps(owner.page(older).by_id("timeline")) == rest


def test_unknown_customer_is_a_404_page(tenant: Tenant, owner: Visitor) -> None:
    other = tenant.server.new_tenant()
    try:
        other.send([identify("elsewhere", {"email": "elsewhere@example.com"})])
        foreign = other.customer(user_id="elsewhere")["id"]
        for path in (
            f"/p/{tenant.project_id}/customers/{foreign}",
            f"/p/{tenant.project_id}/customers/99999999",
            f"/p/{tenant.project_id}/customers/{foreign}/timeline",
        ):
            r = owner.get(path)
            assert r.status_code == 404, path
            assert "elsewhere" not in r.text
            assert "Not found" in parse(r.text).find("h1").text
    finally:
        other.close()


def test_tags_inline_add_and_remove(tenant: Tenant, owner: Visitor) -> None:
    tenant.send([identify("u-tag", {"email": "tag@example.com"})])
    cid = tenant.customer(user_id="u-tag")["id"]
    base = f"/p/{tenant.project_id}/customers/{cid}"
    hx = {"HX-Request": "true"}
    csrf = owner.csrf()

    r = owner.post(f"{base}/tags", {"tag": "beta tester"}, csrf=csrf, headers=hx)
    assert r.status_code == 200
    assert "<html" not in r.text
    fragment = parse(r.text)
    assert tag_names(fragment) == ["beta tester"]
    assert fragment.find("input", name="tag", value="beta tester")  # its remove form
    assert tenant.get(f"/api/customers/{cid}")["tags"] == ["beta tester"]

    bad = owner.post(f"{base}/tags", {"tag": "<nope>"}, csrf=csrf, headers=hx)
    assert bad.status_code == 200
    assert "A tag is 1 to 100" in parse(bad.text).find(role="alert").text
    assert tenant.get(f"/api/customers/{cid}")["tags"] == ["beta tester"]

    r = owner.post(f"{base}/tags/remove", {"tag": "beta tester"}, csrf=csrf, headers=hx)
    assert r.status_code == 200
    assert "No tags." in parse(r.text).text
    assert tenant.get(f"/api/customers/{cid}")["tags"] == []

    # Without htmx the forms still work (redirect back to the profile).
    r = owner.post(f"{base}/tags", {"tag": "plain"}, csrf=csrf)
    assert r.status_code == 303
    assert tag_names(owner.page(base).by_id("tags")) == ["plain"]
    r = owner.post(f"{base}/tags/remove", {"tag": "plain"}, csrf=csrf)
    assert r.status_code == 303
    assert "No tags." in owner.page(base).by_id("tags").text


def test_a_form_post_commits_before_its_answer_is_sent(tenant: Tenant, owner: Visitor) -> None:
    """A browser follows a 303 at once: the page it lands on must show the change, so the
    change must be committed before the answer leaves the server.

    Over the network this is a race (the next page misses the change now and then: a tag not
    shown, a sign-in bounced back to /login), so the order is checked in-process: the same app
    on the same database, recording each commit and the end of the response, with commits made
    slow (as on a busy disk) so that a response that does not wait for its commit shows.
    """
    tenant.send([identify("u-commit", {"email": "commit@example.com"})])
    cid = tenant.customer(user_id="u-commit")["id"]
    app = create_app(Settings(database_url=tenant.server.database_url), worker=False)
    order: list[str] = []

    def slow(_session: Session) -> None:
        time.sleep(0.3)

    def committed(_session: Session) -> None:
        order.append("commit")

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            # The status line and headers go out at once: for a 303 (empty body) the browser
            # has the whole answer and follows the Location right then.
            if message["type"] == "http.response.start":
                order.append(f"answer {message['status']}")
            await send(message)

        await app(scope, receive, sending)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=recording)
        async with httpx.AsyncClient(transport=transport, base_url="http://tidings.test") as c:
            c.cookies.set("tidings_session", owner.session_token or "")
            return await c.post(
                f"/p/{tenant.project_id}/customers/{cid}/tags",
                data={"tag": "committed", "csrf_token": owner.csrf()},
            )

    event.listen(Session, "before_commit", slow)
    event.listen(Session, "after_commit", committed)
    try:
        r = asyncio.run(post())
    finally:
        event.remove(Session, "before_commit", slow)
        event.remove(Session, "after_commit", committed)
        app.state.writer.close()
        app.state.db.dispose()
    assert r.status_code == 303, r.text
    assert tenant.get(f"/api/customers/{cid}/tags")["data"] == ["committed"]
    assert "commit" in order
    assert order[-1] == "answer 303", f"the answer left before the commit: {order}"


# -- catalogs -----------------------------------------------------------------------------------


def test_events_catalog(tenant: Tenant, owner: Visitor) -> None:
    empty = owner.page(f"/p/{tenant.project_id}/events")
    assert "No events yet" in empty.text
    tenant.send(
        [
            track("u1", "Signed Up", {"plan": "pro", "seats": 3}, timestamp=ts(0)),
            track("u2", "Signed Up", {"plan": "team"}, timestamp=ts(5)),
            track("u1", "Order Completed", {"revenue": 9.5}, timestamp=ts(10)),
        ]
    )
    doc = owner.page(f"/p/{tenant.project_id}/events")
    rows = doc.find("tbody").find_all("tr")
    by_name = {r.find("td").text: r for r in rows}
    assert {"Signed Up", "Order Completed"} <= set(by_name)
    assert rows[0].find("td").text == "Signed Up"  # most frequent first
    cells = [td.text for td in by_name["Signed Up"].find_all("td")]
    assert cells[1] == "track"
    assert cells[2] == "2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", cells[3]), cells[3]
    assert "plan" in cells[4]
    assert "seats" in cells[4]
    assert "revenue" in by_name["Order Completed"].text
    assert current_nav(doc) == f"/p/{tenant.project_id}/events"


def test_traits_catalog(tenant: Tenant, owner: Visitor) -> None:
    empty = owner.page(f"/p/{tenant.project_id}/traits")
    assert "No traits yet" in empty.text
    tenant.send(
        [
            identify("u1", {"plan": "pro", "seats": 3, "renews_at": "2025-01-01T00:00:00Z"}),
            identify("u2", {"plan": "free"}),
        ]
    )
    doc = owner.page(f"/p/{tenant.project_id}/traits")
    rows = {
        r.find("td").text: [td.text for td in r.find_all("td")]
        for r in doc.find("tbody").find_all("tr")
    }
    assert rows["plan"][2] == "2"
    assert rows["seats"][2] == "1"
    assert rows["renews_at"][2] == "1"
    assert rows["plan"][1] != rows["seats"][1]  # a type per key: text vs number
    assert rows["renews_at"][1] not in (rows["plan"][1], rows["seats"][1])  # a date


# -- live ingestion -----------------------------------------------------------------------------


def _poll_url(doc: Node) -> str:
    return doc.by_id("live-poll").attrs["hx-get"]


def _after(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["after"][0])


def test_live_view_lists_messages_and_polls_for_new_ones(tenant: Tenant, owner: Visitor) -> None:
    empty = owner.page(f"/p/{tenant.project_id}/live")
    assert "Waiting for messages" in empty.by_id("live-empty").text
    assert tenant.write_key in empty.by_id("live-empty").text
    assert _after(_poll_url(empty)) == 0

    tenant.send([identify("u-live", {"email": "live@example.com"})])
    doc = owner.page(f"/p/{tenant.project_id}/live")
    rows = doc.find_all("details", class_="live-message")
    assert len(rows) == 1
    assert "identify" in rows[0].text
    assert "u-live" in rows[0].text
    assert '"email": "live@example.com"' in rows[0].find("pre").text
    cid = tenant.customer(user_id="u-live")["id"]
    assert f"/p/{tenant.project_id}/customers/{cid}" in rows[0].links()
    poll = _poll_url(doc)
    assert doc.by_id("live-poll").attrs["hx-trigger"] == "every 2s"
    after = _after(poll)
    assert after > 0

    quiet = owner.get(poll, headers={"HX-Request": "true"})
    assert quiet.status_code == 200
    assert parse(quiet.text).find_all("details", class_="live-message") == []
    assert _after(_poll_url(parse(quiet.text))) == after

    tenant.send([track("u-live", "Live Thing Happened", {"n": 1})])
    r = owner.get(poll, headers={"HX-Request": "true"})
    assert r.status_code == 200
    fresh = parse(r.text)
    new_rows = fresh.find_all("details", class_="live-message")
    assert len(new_rows) == 1
    assert "Live Thing Happened" in new_rows[0].text
    assert new_rows[0].attrs["data-status"] == "accepted"
    assert fresh.find(hx_swap_oob="afterbegin:#live-rows")
    newer = _after(_poll_url(fresh))
    assert newer > after
    again = owner.get(_poll_url(fresh), headers={"HX-Request": "true"})
    assert parse(again.text).find_all("details", class_="live-message") == []


def test_live_view_filters_by_status_and_shows_the_reason(tenant: Tenant, owner: Visitor) -> None:
    tenant.send(
        [
            identify("u-ok", {"email": "ok@example.com"}),
            track("u-ok", None),  # no event name: rejected
            track("u-ok", "Fine"),
        ]
    )
    doc = owner.page(f"/p/{tenant.project_id}/live", params={"status": "rejected"})
    rows = doc.find_all("details", class_="live-message")
    assert [r.attrs["data-status"] for r in rows] == ["rejected"]
    assert "track without event name" in rows[0].find("summary").text
    assert (
        doc.find("select", name="status").find("option", value="rejected").attrs.get("selected")
        is not None
    )
    assert "status=rejected" in _poll_url(doc)

    accepted = owner.page(f"/p/{tenant.project_id}/live", params={"status": "accepted"})
    assert [
        r.attrs["data-status"] for r in accepted.find_all("details", class_="live-message")
    ] == [
        "accepted",
        "accepted",
    ]
    everything = owner.page(f"/p/{tenant.project_id}/live")
    assert len(everything.find_all("details", class_="live-message")) == 3

    # The poll honours the filter too.
    r = owner.get(f"/p/{tenant.project_id}/live/rows", params={"after": 0, "status": "rejected"})
    statuses = [n.attrs["data-status"] for n in parse(r.text).find_all("details")]
    assert statuses == ["rejected"]
    r = owner.get(f"/p/{tenant.project_id}/live/rows", params={"after": 0, "type": "identify"})
    assert "u-ok" in r.text
    types = [n.find("summary").find("strong").text for n in parse(r.text).find_all("details")]
    assert types == ["identify"]


# -- settings, roles, projects ------------------------------------------------------------------


def test_owner_sees_keys_webhook_policy_and_users(tenant: Tenant, owner: Visitor) -> None:
    doc = owner.page(f"/p/{tenant.project_id}/settings")
    settings = api_settings(tenant).json()
    assert doc.by_id("write-key").text == tenant.write_key
    assert (
        doc.by_id("webhook-url").text == f"{tenant.url}/v1/webhook/segment?key={tenant.write_key}"
    )
    assert doc.by_id("webhook-secret").text == settings["webhook_secret"]
    assert settings["secret_key_hint"] in doc.text
    assert tenant.secret_key not in doc.text  # stored hashed, never shown again
    assert f"/p/{tenant.project_id}/settings/rotate/secret" in doc.links()
    assert f"/p/{tenant.project_id}/settings/rotate/write" in doc.links()
    assert doc.find("form", action=f"/p/{tenant.project_id}/settings/policy")
    users_table = doc.find("section", aria_labelledby="users").find("tbody").text
    assert owner.email is not None
    assert owner.email in users_table
    assert "owner" in users_table
    assert f"/p/{tenant.project_id}/settings" in nav_links(doc)


def test_member_cannot_open_or_change_settings(tenant: Tenant, sign_in_as: SignIn) -> None:
    member = sign_in_as("member")
    pid = tenant.project_id
    before = api_settings(tenant).json()
    customers = member.page(f"/p/{pid}/customers")
    assert f"/p/{pid}/settings" not in nav_links(customers)
    for path in (f"/p/{pid}/settings", f"/p/{pid}/settings/rotate/secret"):
        r = member.get(path)
        assert r.status_code == 403, path
        assert tenant.write_key not in r.text
        assert "Only owners and admins" in r.text
    csrf = member.csrf()
    for path, data in (
        (f"/p/{pid}/settings/rotate/secret", {}),
        (f"/p/{pid}/settings/rotate/write", {}),
        (f"/p/{pid}/settings/policy", {"unknown_user_track": "drop"}),
        (f"/p/{pid}/settings/invite", {"email": new_email(), "role": "admin"}),
        ("/projects", {"name": "mine"}),
    ):
        r = member.post(path, data, csrf=csrf)
        assert r.status_code == 403, path
        assert tenant.write_key not in r.text
    assert api_settings(tenant).json() == before
    assert member.get("/projects/new").status_code == 403


def test_member_never_sees_the_keys(tenant: Tenant, sign_in_as: SignIn) -> None:
    """Members cannot see keys: not in the empty states either (they say to ask an admin)."""
    member = sign_in_as("member")
    pid = tenant.project_id
    live = member.page(f"/p/{pid}/live")
    assert tenant.write_key not in live.text
    assert "ask an admin" in live.by_id("live-empty").text
    customers = member.get(f"/p/{pid}/customers")
    assert customers.status_code == 200
    assert "No customers yet" in customers.text
    assert tenant.write_key not in customers.text, "the empty customer list shows the write key"


def test_admin_manages_settings_but_cannot_make_or_unmake_owners(
    tenant: Tenant, sign_in_as: SignIn
) -> None:
    admin = sign_in_as("admin")
    owner_email = sign_in_as("owner").email
    pid = tenant.project_id
    doc = admin.page(f"/p/{pid}/settings")
    assert doc.by_id("write-key").text == tenant.write_key
    roles = [o.attrs["value"] for o in doc.find("select", name="role").find_all("option")]
    assert "owner" not in roles
    csrf = admin.csrf()
    r = admin.post(f"/p/{pid}/settings/invite", {"email": new_email(), "role": "owner"}, csrf=csrf)
    assert r.status_code == 403
    # Re-inviting an owner with a lower role must not demote them either.
    r = admin.post(f"/p/{pid}/settings/invite", {"email": owner_email, "role": "member"}, csrf=csrf)
    with tenant.server.db.session() as session:
        user = session.scalars(select(User).where(User.email == owner_email)).one()
        role = users.role_in(session, user_id=user.id, project_id=pid)
    assert role == "owner", f"an admin demoted an owner to {role} (HTTP {r.status_code})"
    assert r.status_code == 403


def test_a_user_of_another_project_gets_404s(tenant: Tenant, sign_in_as: SignIn) -> None:
    other = tenant.server.new_tenant()
    try:
        outsider = sign_in_as("admin", [other.project_id])
        tenant.send([identify("u-secret", {"email": "secret@example.com"})])
        cid = tenant.customer(user_id="u-secret")["id"]
        pid = tenant.project_id
        home = f"/p/{other.project_id}/customers"
        switcher = outsider.page(home).find("details", class_="switcher")
        assert f"/p/{pid}/customers" not in switcher.links()
        for path in (
            f"/p/{pid}/customers",
            f"/p/{pid}/customers/{cid}",
            f"/p/{pid}/customers/{cid}/timeline",
            f"/p/{pid}/events",
            f"/p/{pid}/traits",
            f"/p/{pid}/live",
            f"/p/{pid}/live/rows?after=0",
            f"/p/{pid}/settings",
            f"/p/{pid}/settings/rotate/secret",
        ):
            r = outsider.get(path)
            assert r.status_code == 404, path
            assert "secret@example.com" not in r.text
            assert tenant.write_key not in r.text
        csrf = outsider.csrf()
        before = api_settings(tenant).json()
        for path, data in (
            (f"/p/{pid}/customers/{cid}/tags", {"tag": "pwned"}),
            (f"/p/{pid}/settings/rotate/secret", {}),
            (f"/p/{pid}/settings/policy", {"unknown_user_track": "drop"}),
            (f"/p/{pid}/settings/invite", {"email": new_email(), "role": "admin"}),
        ):
            assert outsider.post(path, data, csrf=csrf).status_code == 404, path
        assert api_settings(tenant).json() == before
        assert tenant.get(f"/api/customers/{cid}")["tags"] == []
    finally:
        other.close()


def test_rotate_secret_key_confirms_then_shows_the_new_key_once(
    tenant: Tenant, owner: Visitor
) -> None:
    pid = tenant.project_id
    confirm = owner.page(f"/p/{pid}/settings/rotate/secret")
    form = confirm.find("form", action=f"/p/{pid}/settings/rotate/secret")
    assert form.attrs["method"] == "post"
    assert "Yes, rotate the secret key" in form.find("button").text
    assert f"/p/{pid}/settings" in form.links()  # cancel
    assert api_settings(tenant).status_code == 200  # nothing happened on GET

    r = owner.post(
        f"/p/{pid}/settings/rotate/secret",
        csrf=form.find("input", name="csrf_token").attrs["value"],
    )
    assert r.status_code == 200
    new_secret = parse(r.text).by_id("new-secret").text
    assert new_secret
    assert new_secret != tenant.secret_key
    assert api_settings(tenant).status_code == 401  # the old secret key
    fresh = api_settings(tenant, new_secret)
    assert fresh.status_code == 200
    assert fresh.json()["secret_key_hint"] in r.text
    # Shown once: the settings page does not show it again.
    again = owner.page(f"/p/{pid}/settings")
    assert not again.has_id("new-secret")
    assert new_secret not in again.text

    assert owner.get(f"/p/{pid}/settings/rotate/bogus").status_code == 400


def test_rotate_write_key(tenant: Tenant, owner: Visitor) -> None:
    pid = tenant.project_id
    confirm = owner.page(f"/p/{pid}/settings/rotate/write")
    assert "401" in confirm.text  # warns what happens to clients
    r = owner.post(f"/p/{pid}/settings/rotate/write")
    assert r.status_code == 303
    doc = parse(owner.follow(r).text)
    new_key = doc.by_id("write-key").text
    assert new_key != tenant.write_key
    assert api_settings(tenant).json()["write_key"] == new_key
    assert "Settings saved." in doc.text


def test_policy_form_changes_the_project_settings(tenant: Tenant, owner: Visitor) -> None:
    pid = tenant.project_id
    before = api_settings(tenant).json()
    assert before["unknown_user_track"] == "create"
    assert before["revenue_as_charge"] is True
    r = owner.post(
        f"/p/{pid}/settings/policy",
        {"require_user_id": "1", "unknown_user_track": "drop"},  # unchecked boxes are absent
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/p/{pid}/settings?saved=1"
    after = api_settings(tenant).json()
    assert after["require_user_id"] is True
    assert after["require_email_to_create"] is False
    assert after["unknown_user_track"] == "drop"
    assert after["revenue_as_charge"] is False
    doc = parse(owner.follow(r).text)
    assert "Settings saved." in doc.find(role="status").text
    assert "checked" in doc.find("input", name="require_user_id").attrs
    assert "checked" not in doc.find("input", name="revenue_as_charge").attrs
    select_ = doc.find("select", name="unknown_user_track")
    assert "selected" in select_.find("option", value="drop").attrs

    bad = owner.post(f"/p/{pid}/settings/policy", {"unknown_user_track": "explode"})
    assert bad.status_code == 400
    assert api_settings(tenant).json() == after


def test_invite_creates_a_member_who_can_sign_in(tenant: Tenant, sign_in_as: SignIn) -> None:
    owner = sign_in_as("owner")
    pid = tenant.project_id
    email = new_email("invited")
    r = owner.post(f"/p/{pid}/settings/invite", {"email": email, "role": "member"})
    assert r.status_code == 200
    doc = parse(r.text)
    assert email in doc.find(role="alert").text
    password = doc.by_id("new-password").text
    assert len(password) >= 8
    table = doc.find("section", aria_labelledby="users").find("tbody")
    row = next(tr for tr in table.find_all("tr") if email in tr.text)
    assert [td.text for td in row.find_all("td")][1:] == ["member", "never"]

    invited = signed_in(tenant.url, email, password)
    try:
        assert invited.get("/").headers["location"] == f"/p/{pid}/customers"
        assert invited.get(f"/p/{pid}/settings").status_code == 403
    finally:
        invited.close()

    # Inviting an existing user of another project adds the membership (no new password).
    other = tenant.server.new_tenant()
    try:
        existing = sign_in_as("member", [other.project_id]).email
        assert existing is not None
        r = owner.post(f"/p/{pid}/settings/invite", {"email": existing, "role": "admin"})
        assert r.status_code == 200
        assert not parse(r.text).has_id("new-password")
        with tenant.server.db.session() as session:
            user = session.scalars(select(User).where(User.email == existing)).one()
            assert users.role_in(session, user_id=user.id, project_id=pid) == "admin"
        bad = owner.post(f"/p/{pid}/settings/invite", {"email": "not-an-email", "role": "member"})
        assert bad.status_code == 400
    finally:
        other.close()


def test_owner_creates_a_project(tenant: Tenant, owner: Visitor) -> None:
    form = owner.page("/projects/new")
    assert form.find("form", action="/projects")
    name = f"Shop {uuid.uuid4().hex[:6]}"
    r = owner.post("/projects", {"name": name})
    assert r.status_code == 303
    new_pid = int(re.match(r"^/p/(\d+)/settings\?created=1$", r.headers["location"]).group(1))
    doc = parse(owner.follow(r).text)
    assert name in doc.find("h1").text
    assert "Project created" in doc.text
    switcher = doc.find("details", class_="switcher")
    assert {f"/p/{tenant.project_id}/customers", f"/p/{new_pid}/customers"} <= set(switcher.links())


# -- CSRF on every form -------------------------------------------------------------------------


def _state(tenant: Tenant, owner: Visitor, customer_id: int) -> dict[str, Any]:
    with tenant.server.db.session() as session:
        projects = session.scalar(select(func.count()).select_from(Project))
        members = [(u.email, r) for u, r in users.members(session, project_id=tenant.project_id)]
    settings = api_settings(tenant)
    return {
        "settings": (settings.status_code, settings.json()),
        "tags": tenant.get(f"/api/customers/{customer_id}")["tags"]
        if settings.status_code == 200
        else None,
        "projects": projects,
        "members": members,
        "signed_in": owner.get(f"/p/{tenant.project_id}/customers").status_code,
    }


FORMS: dict[str, Callable[[int, int], tuple[str, dict[str, str]]]] = {
    "logout": lambda pid, cid: ("/logout", {}),
    "new project": lambda pid, cid: ("/projects", {"name": "csrf"}),
    "add tag": lambda pid, cid: (f"/p/{pid}/customers/{cid}/tags", {"tag": "added"}),
    "remove tag": lambda pid, cid: (f"/p/{pid}/customers/{cid}/tags/remove", {"tag": "keep"}),
    "policy": lambda pid, cid: (
        f"/p/{pid}/settings/policy",
        {"require_user_id": "1", "unknown_user_track": "drop"},
    ),
    "rotate write": lambda pid, cid: (f"/p/{pid}/settings/rotate/write", {}),
    "rotate secret": lambda pid, cid: (f"/p/{pid}/settings/rotate/secret", {}),
    "invite": lambda pid, cid: (
        f"/p/{pid}/settings/invite",
        {"email": new_email("csrf-invite"), "role": "admin"},
    ),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_refuses_a_missing_or_wrong_csrf_token(
    tenant: Tenant, sign_in_as: SignIn, form: str
) -> None:
    owner = sign_in_as("owner", fresh=form == "logout")
    someone_else = sign_in_as("owner")  # a real token, from another session
    tenant.send([identify("u-csrf", {"email": "csrf@example.com"})])
    cid = tenant.customer(user_id="u-csrf")["id"]
    assert owner.post(f"/p/{tenant.project_id}/customers/{cid}/tags", {"tag": "keep"}).is_redirect
    path, data = FORMS[form](tenant.project_id, cid)
    before = _state(tenant, owner, cid)
    for token in (None, "", "forged", someone_else.csrf()):
        r = owner.post(path, data, csrf=token)
        assert r.status_code == 403, f"{form} with csrf_token={token!r}: {r.status_code}"
        assert "expired or did not come from Tidings" in r.text
        assert _state(tenant, owner, cid) == before, f"{form} with csrf_token={token!r}"
    # The same form with the right token works (the test can tell a refusal from a no-op).
    assert owner.post(path, data).status_code in (200, 303)


# -- user data is escaped -----------------------------------------------------------------------

SCRIPT = "<script>alert('xss')</script>"
IMG = '<img src=x onerror="alert(1)">'


def test_user_data_is_escaped_everywhere(tenant: Tenant, owner: Visitor) -> None:
    user = uid()
    tenant.send(
        [
            identify(
                user,
                {
                    "email": "xss@example.com",
                    "name": IMG,
                    "bio": SCRIPT,
                    "<script>evil_key</script>": "v",
                    "hacked_at": SCRIPT,
                    "group_like": {"nested": SCRIPT},
                },
            ),
            track(user, SCRIPT, {"<b>bold</b>": IMG, "plain": SCRIPT}),
            group(user, "g-1", {"name": SCRIPT}),
        ]
    )
    cid = tenant.customer(user_id=user)["id"]
    owner.post(f"/p/{tenant.project_id}/customers/{cid}/tags", {"tag": "ok"})
    pid = tenant.project_id
    pages = {
        "customers": f"/p/{pid}/customers",
        "profile": f"/p/{pid}/customers/{cid}",
        "timeline": f"/p/{pid}/customers/{cid}/timeline",
        "events": f"/p/{pid}/events",
        "traits": f"/p/{pid}/traits",
        "live": f"/p/{pid}/live",
        "live rows": f"/p/{pid}/live/rows?after=0",
    }
    for name, path in pages.items():
        r = owner.get(path)
        assert r.status_code == 200, name
        html = r.text
        for raw in ("<script>alert", "<script>evil_key", "<img src=x", "<b>bold"):
            assert raw not in html, f"{raw!r} unescaped on the {name} page"
        scripts = parse(html).find_all("script")
        assert all(n.attrs.get("src", "").startswith("/static/") for n in scripts), name
        assert not [n for n in parse(html).find_all("img") if n.attrs.get("src") == "x"], name
    profile = owner.page(pages["profile"])
    assert profile.find("h1").text == IMG  # shown as text
    assert SCRIPT in profile.by_id("traits").text
    assert "<script>evil_key</script>" in profile.by_id("traits").text
    assert SCRIPT in profile.find("section", aria_labelledby="groups-h").text
    assert SCRIPT in profile.by_id("timeline").text
    assert SCRIPT in owner.page(pages["events"]).find("tbody").text
    assert "<script>evil_key</script>" in owner.page(pages["traits"]).find("tbody").text


# -- headers ------------------------------------------------------------------------------------


def test_security_headers_on_pages_and_error_pages(tenant: Tenant, sign_in_as: SignIn) -> None:
    owner = sign_in_as("owner")
    member = sign_in_as("member")
    pid = tenant.project_id
    for who, path, status in (
        (owner, f"/p/{pid}/customers", 200),
        (owner, f"/p/{pid}/settings", 200),
        (owner, f"/p/{pid}/customers/987654321", 404),
        (owner, "/no/such/page", 404),
        (member, f"/p/{pid}/settings", 403),
    ):
        r = who.get(path)
        assert r.status_code == status, path
        assert_security_headers(r)
        assert r.headers["content-type"].startswith("text/html")
    static = owner.get("/static/app.js")
    assert static.status_code == 200
    assert "javascript" in static.headers["content-type"]
    assert owner.get("/static/htmx.min.js").status_code == 200
    # Error pages are pages, with a way back.
    r = member.get(f"/p/{pid}/settings")
    assert "/" in parse(r.text).links()
