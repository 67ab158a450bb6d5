"""Browser tests: Playwright drives Debian's chromium against a live server (SQLite) seeded
through the ingestion API.

One browser for the module, a fresh context (cookies, storage) per test. Accounts are signed in
once through the real form; tests other than the sign-in test start with that session cookie.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support import LiveServer, Tenant, create_database, start_server
from tests.web.dash import PASSWORD, Visitor, create_user, identify, signed_in, track, uid
from tidings.auth import users

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS_SCRIPT = "<script>window.__pwned=1</script>"
XSS_IMG = '<img src=x onerror="window.__pwned=1">'


@dataclass
class Site:
    server: LiveServer
    tenant: Tenant
    owner: Visitor
    member: Visitor
    grace_id: int
    mallory_id: int

    @property
    def pid(self) -> int:
        return self.tenant.project_id

    def own_project(self) -> Tenant:
        """A project of its own for a test that changes keys or settings; the owner is in it."""
        tenant = self.server.new_tenant()
        with self.server.db.session(write=True) as session:
            users.invite(
                session, project_id=tenant.project_id, email=self.owner.email or "", role="owner"
            )
        return tenant


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("browser")
    server = start_server(create_database(f"sqlite:///{tmp / 'tidings.db'}"), tmp)
    tenant = server.new_tenant("Browser shop")
    try:
        tenant.send(
            [
                identify(
                    "grace",
                    {"email": "grace@example.com", "name": "Grace Hopper", "plan": "pro"},
                    timestamp="2024-05-01T10:00:00Z",
                ),
                track(
                    "grace",
                    "Compiler Installed",
                    {"version": "A-0", "target": "UNIVAC"},
                    timestamp="2024-05-01T11:00:00Z",
                ),
                track(
                    "grace",
                    "Bug Found",
                    {"location": "relay-70", "kind": "moth"},
                    timestamp="2024-05-01T12:00:00Z",
                ),
                identify("ada", {"email": "ada@example.com", "name": "Ada Lovelace"}),
                identify("linus", {"email": "linus@example.com", "name": "Linus T"}),
                identify(
                    "mallory",
                    {
                        "email": "mallory@example.com",
                        "name": XSS_IMG,
                        "bio": XSS_SCRIPT,
                        "website": XSS_IMG,
                    },
                ),
                track("mallory", XSS_SCRIPT, {"payload": XSS_IMG}),
            ]
        )
        owner = signed_in(
            server.url, create_user(server.db, role="owner", project_ids=[tenant.project_id])
        )
        member = signed_in(
            server.url, create_user(server.db, role="member", project_ids=[tenant.project_id])
        )
        yield Site(
            server=server,
            tenant=tenant,
            owner=owner,
            member=member,
            grace_id=tenant.customer(user_id="grace")["id"],
            mallory_id=tenant.customer(user_id="mallory")["id"],
        )
        for visitor in (owner, member):
            visitor.close()
    finally:
        tenant.close()
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {CHROMIUM} is missing: browser tests are mandatory")
        pytest.skip(f"browser tests off: install Debian's chromium ({CHROMIUM})")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=site.server.url)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def open_page(context: BrowserContext, visitor: Visitor | None = None) -> tuple[Page, list[str]]:
    """A new page, signed in as `visitor` when given; also returns the page's JavaScript and
    console errors (CSP violations show up there)."""
    if visitor is not None:
        token = visitor.session_token
        assert token
        context.add_cookies(
            [
                {
                    "name": "tidings_session",
                    "value": token,
                    "url": visitor.base_url,
                    "httpOnly": True,
                    "sameSite": "Lax",
                }
            ]
        )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return page, errors


def test_sign_in_find_a_customer_and_read_the_timeline(context: BrowserContext, site: Site) -> None:
    page, errors = open_page(context)
    page.goto(f"/p/{site.pid}/customers")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Email").fill(site.owner.email or "")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/customers$"))
    expect(page.get_by_role("heading", name="Customers")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "tidings_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert page.evaluate("() => document.cookie").find("tidings_session") == -1

    search = page.get_by_role("searchbox")
    search.fill("grace@example.com")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"q=grace%40example\.com"))
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Grace Hopper")
    rows.first.get_by_role("link", name="Grace Hopper").click()

    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/customers/{site.grace_id}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Grace Hopper")
    events = page.locator("#timeline details.event")
    expect(events).to_have_count(2)
    expect(events.nth(0).locator("summary")).to_contain_text("Bug Found")  # newest first
    expect(events.nth(1).locator("summary")).to_contain_text("Compiler Installed")
    properties = events.nth(0).locator("pre").first
    expect(properties).to_be_hidden()
    events.nth(0).locator("summary").click()
    expect(properties).to_be_visible()
    expect(properties).to_contain_text('"kind": "moth"')
    expect(events.nth(1).locator("pre").first).to_be_hidden()
    assert errors == []


def test_add_a_tag_inline_then_remove_it(context: BrowserContext, site: Site) -> None:
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/customers/{site.grace_id}")
    page.evaluate("() => { window.__sameDocument = true }")
    tags = page.locator("#tags")
    expect(tags).to_contain_text("No tags.")
    tag = f"vip-{uid('t')}"
    page.get_by_placeholder("Add a tag").fill(tag)
    page.get_by_role("button", name="Add", exact=True).click()
    expect(tags.locator(".tag")).to_have_count(1)
    expect(tags.locator(".tag")).to_contain_text(tag)
    expect(page.get_by_placeholder("Add a tag")).to_have_value("")
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"

    page.reload()
    expect(page.locator("#tags .tag")).to_contain_text(tag)
    assert page.evaluate("() => window.__sameDocument") is None

    page.evaluate("() => { window.__sameDocument = true }")
    page.get_by_role("button", name=f"Remove tag {tag}").click()
    expect(page.locator("#tags .tag")).to_have_count(0)
    expect(page.locator("#tags")).to_contain_text("No tags.")
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    page.reload()
    expect(page.locator("#tags")).to_contain_text("No tags.")
    assert site.tenant.get(f"/api/customers/{site.grace_id}")["tags"] == []
    assert errors == []


def test_rotate_the_secret_key_through_the_confirmation_page(
    context: BrowserContext, site: Site
) -> None:
    project = site.own_project()
    try:
        page, errors = open_page(context, site.owner)
        page.goto(f"/p/{project.project_id}/settings")
        page.get_by_role("link", name="Rotate secret key…").click()
        expect(page).to_have_url(re.compile(rf"/p/{project.project_id}/settings/rotate/secret$"))
        expect(page.get_by_role("heading", level=1)).to_contain_text("Rotate the secret key")
        assert project.get("/api/project/settings")["id"] == project.project_id  # not yet
        with page.expect_response(re.compile(r"/settings/rotate/secret$")) as answer:
            page.get_by_role("button", name="Yes, rotate the secret key").click()
        assert answer.value.status == 200, answer.value.text()[:500]
        shown = page.locator("#new-secret")
        expect(shown).to_be_visible()
        new_secret = shown.inner_text().strip()
        assert new_secret
        assert new_secret != project.secret_key
        old = httpx.get(
            f"{site.server.url}/api/project/settings",
            headers={"Authorization": f"Bearer {project.secret_key}"},
        )
        assert old.status_code == 401
        new = httpx.get(
            f"{site.server.url}/api/project/settings",
            headers={"Authorization": f"Bearer {new_secret}"},
        )
        assert new.status_code == 200
        page.goto(f"/p/{project.project_id}/settings")
        expect(page.locator("#new-secret")).to_have_count(0)
        assert errors == []
    finally:
        project.close()


def test_live_view_shows_a_new_message_without_reloading(
    context: BrowserContext, site: Site
) -> None:
    project = site.own_project()  # starts empty
    try:
        page, errors = open_page(context, site.owner)
        page.goto(f"/p/{project.project_id}/live")
        waiting = page.get_by_text("Waiting for messages")
        expect(waiting).to_be_visible()
        page.evaluate("() => { window.__sameDocument = true }")

        first = f"Arrived {uid('live')}"
        r = project.batch([track("grace", first, {"via": "browser test"})])
        assert r.status_code == 200, r.text
        row = page.locator("details.live-message", has_text=first)
        expect(row).to_be_visible(timeout=6_000)  # the view polls every 2 s
        expect(row).to_have_attribute("data-status", "accepted")
        expect(waiting).to_be_hidden()
        assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"

        # A page that already lists messages gets new ones on top.
        page.reload()
        page.evaluate("() => { window.__sameDocument = true }")
        second = f"Arrived {uid('live')}"
        r = project.batch([track("grace", second, {"via": "second"})])
        assert r.status_code == 200, r.text
        row = page.locator("details.live-message", has_text=second)
        expect(row).to_be_visible(timeout=6_000)
        expect(page.locator("details.live-message").first).to_contain_text(second)
        expect(page.locator("details.live-message")).to_have_count(2)
        assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
        row.locator("summary").click()
        expect(row.locator("pre")).to_contain_text('"via": "second"')
        assert errors == [], "the live view's poll logs errors in the browser console"
    finally:
        project.close()


def test_a_script_in_a_trait_does_not_run(context: BrowserContext, site: Site) -> None:
    page, errors = open_page(context, site.owner)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for path in (
        f"/p/{site.pid}/customers/{site.mallory_id}",
        f"/p/{site.pid}/customers",
        f"/p/{site.pid}/events",
        f"/p/{site.pid}/live",
    ):
        page.goto(path)
        page.wait_for_load_state("load")
        assert page.evaluate("() => typeof window.__pwned") == "undefined", path
        assert page.locator("img[src='x']").count() == 0, path
    page.goto(f"/p/{site.pid}/customers/{site.mallory_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(XSS_IMG)
    traits = page.locator("#traits")
    expect(traits).to_contain_text(XSS_SCRIPT)
    expect(traits).to_contain_text(XSS_IMG)
    expect(page.locator("#timeline")).to_contain_text(XSS_SCRIPT)
    page.locator("#timeline summary").first.click()
    expect(page.locator("#timeline pre").first).to_contain_text("<img src=x onerror=")
    page.wait_for_timeout(300)
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert dialogs == []
    assert errors == []


def test_a_member_cannot_open_settings(context: BrowserContext, site: Site) -> None:
    page, _ = open_page(context, site.member)
    page.goto(f"/p/{site.pid}/customers")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Customers")).to_be_visible()
    expect(nav.get_by_role("link", name="Settings")).to_have_count(0)
    response = page.goto(f"/p/{site.pid}/settings")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("body")).not_to_contain_text(site.tenant.write_key)
    response = page.goto(f"/p/{site.pid}/settings/rotate/secret")
    assert response is not None
    assert response.status == 403


def test_a_form_without_its_csrf_token_is_refused(context: BrowserContext, site: Site) -> None:
    project = site.own_project()
    try:
        before = project.get("/api/project/settings")
        page, _ = open_page(context, site.owner)
        page.goto(f"/p/{project.project_id}/settings")
        form = page.locator(f"form[action='/p/{project.project_id}/settings/policy']")
        form.get_by_label("Only create customers that have an email").check()
        removed = form.evaluate(
            "f => { const i = f.querySelector('input[name=csrf_token]'); i.remove(); return !!i }"
        )
        assert removed
        with page.expect_response(re.compile(r"/settings/policy$")) as answer:
            form.get_by_role("button", name="Save policy").click()
        assert answer.value.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
        expect(page.locator("body")).to_contain_text("did not come from Tidings")
        assert project.get("/api/project/settings") == before

        # The untouched form goes through (so the refusal above was about the token).
        page.goto(f"/p/{project.project_id}/settings")
        form.get_by_label("Only create customers that have an email").check()
        form.get_by_role("button", name="Save policy").click()
        expect(page.get_by_role("status")).to_contain_text("Settings saved.")
        assert project.get("/api/project/settings")["require_email_to_create"] is True
    finally:
        project.close()
