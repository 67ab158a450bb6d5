"""Browser tests of the email pages: Playwright drives Debian's chromium against a live server
(SQLite, no SMTP server: every email lands in the outbox) seeded through the APIs.

The editor's live preview (typing, errors, previewing as a customer, desktop and mobile widths),
a test send read back in the message log, and a tracked message read without counting an open.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support import LiveServer, Tenant, create_database, start_server
from tests.web.dash import Visitor, create_user, identify, signed_in
from tests.web.test_segments_browser import ARGS, CHROMIUM, open_page, unexpected

BLOCKED = re.compile(r"image '[^']*/email/open/[^']*' violates the following Content Security")


@dataclass
class Site:
    server: LiveServer
    tenant: Tenant
    owner: Visitor
    grace: int

    @property
    def pid(self) -> int:
        return self.tenant.project_id

    def template(self, name: str, **parts: Any) -> int:
        r = self.tenant.api.post("/api/templates", json={"name": name, **parts})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def delivered(self, message_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            m = self.tenant.get(f"/api/messages/{message_id}")
            if m["status"] not in ("queued", "sending"):
                return dict(m)
            assert time.monotonic() < deadline, f"message {message_id} still {m['status']}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("email-browser")
    server = start_server(create_database(f"sqlite:///{tmp / 'tidings.db'}"), tmp)
    tenant = server.new_tenant("Email shop")
    try:
        tenant.send([identify("grace", {"email": "grace@example.com", "name": "Grace Hopper"})])
        owner = signed_in(
            server.url, create_user(server.db, role="owner", project_ids=[tenant.project_id])
        )
        grace = int(tenant.customer(user_id="grace")["id"])
        yield Site(server=server, tenant=tenant, owner=owner, grace=grace)
        owner.close()
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
    ctx = browser.new_context(base_url=site.server.url, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def preview(page: Page) -> Any:
    return page.frame_locator("#preview-frame").locator("body")


def test_write_a_template_and_watch_the_preview_follow(context: BrowserContext, site: Site) -> None:
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/customers")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Templates").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Templates")
    page.get_by_role("link", name="New template").click()
    page.get_by_label("Name", exact=True).fill("Welcome mail")
    page.get_by_role("radio", name=re.compile(r"^Welcome Greets")).check()
    page.get_by_role("button", name="Create template").click()
    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/templates/\d+\?created=1$"))
    expect(page.get_by_role("status")).to_have_text("Template created.")
    expect(preview(page)).to_contain_text("Welcome aboard, Ada!")  # the sample customer
    expect(page.locator("#preview-subject")).to_have_text("Welcome to Email shop, Ada!")

    html = page.get_by_label("HTML", exact=True)
    html.fill("<html><body><h1>Live {{ customer.first_name }}</h1></body></html>")
    expect(preview(page).locator("h1")).to_have_text("Live Ada")
    page.get_by_label("Subject", exact=True).fill("Hey {{ customer.first_name }}")
    expect(page.locator("#preview-subject")).to_have_text("Hey Ada")
    expect(page.locator("#preview-text")).to_contain_text("Live Ada")  # generated text part

    # Half-typed Liquid: the error names the line; the last good preview stays.
    html.fill("<html><body>\n<h1>Live</h1>\n<p>{% iff customer.email %}</p>\n</body></html>")
    expect(page.locator("#preview-error")).to_have_text(
        "html: line 3, column 7: unexpected tag 'iff'"
    )
    expect(html).to_have_attribute("aria-invalid", "true")
    expect(preview(page).locator("h1")).to_have_text("Live Ada")
    html.fill("<html><body><h1>Live {{ customer.first_name }}</h1></body></html>")
    expect(page.locator("#preview-error")).to_be_hidden()
    expect(html).not_to_have_attribute("aria-invalid", "true")

    page.evaluate("() => { window.__sameDocument = true }")
    page.get_by_label("Preview as").fill("grace@example.com")
    expect(preview(page).locator("h1")).to_have_text("Live Grace")
    page.get_by_label("Preview as").press("Enter")  # previews in place: the draft stays
    expect(preview(page).locator("h1")).to_have_text("Live Grace")
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    expect(page.get_by_label("as customer")).to_have_value("grace@example.com")
    page.get_by_label("Preview as").fill("nobody@example.com")
    expect(page.locator("#preview-error")).to_have_text("No customer matches.")
    page.get_by_label("Preview as").fill("")
    expect(preview(page).locator("h1")).to_have_text("Live Ada")

    frame = page.locator("#preview-frame")
    expect(frame).to_have_css("width", "600px")
    page.get_by_text("Mobile", exact=True).click()
    expect(frame).to_have_css("width", "375px")
    assert frame.bounding_box()["width"] == 375  # type: ignore[index]
    page.get_by_text("Desktop", exact=True).click()
    expect(frame).to_have_css("width", "600px")

    page.get_by_role("button", name="Save template").click()
    expect(page.get_by_role("status")).to_have_text("Template saved.")
    expect(preview(page).locator("h1")).to_have_text("Live Ada")  # rendered by the server
    tid = int(page.url.split("/templates/")[1].split("?")[0])
    saved = site.tenant.get(f"/api/templates/{tid}")
    assert (saved["subject"], saved["text"]) == ("Hey {{ customer.first_name }}", "")

    # A save with a syntax error: shown by the field, nothing saved.
    html.fill("<p>{{ customer.first_name </p>")
    page.get_by_role("button", name="Save template").click()
    expect(page.locator("#form-error")).to_contain_text("Not saved: html: line 1")
    expect(page.locator("#html-error")).to_contain_text("Line 1, column")
    expect(page.get_by_label("HTML", exact=True)).to_have_value("<p>{{ customer.first_name </p>")
    assert site.tenant.get(f"/api/templates/{tid}") == saved
    assert unexpected(errors) == []


def test_send_a_test_and_read_it_in_the_message_log(context: BrowserContext, site: Site) -> None:
    tid = site.template(
        "Receipt mail",
        subject="Your receipt, {{ customer.first_name }}",
        html="<html><body><h1>Thanks {{ customer.first_name }}</h1><p>Paid.</p></body></html>",
    )
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/templates/{tid}")
    page.get_by_label("To", exact=True).fill("me@example.com")
    page.get_by_label("as customer").fill("grace")
    page.get_by_role("button", name="Send test").click()
    expect(page.locator("#sent-flash")).to_contain_text("Test email queued.")
    mid = int(page.url.split("sent=")[1])
    assert site.delivered(mid)["status"] == "sent"

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Messages").click()
    row = page.locator(f"#message-table tr[data-message='{mid}']")
    expect(row.locator("td.to")).to_have_text("me@example.com")
    expect(row.locator(".badge")).to_have_text("sent")
    page.get_by_label("Status").select_option("skipped")  # the filter submits itself
    expect(page).to_have_url(re.compile(r"status=skipped"))
    expect(page.locator("#no-messages")).to_be_visible()
    page.get_by_label("Status").select_option("sent")
    row.get_by_role("link", name="Your receipt, Grace").click()

    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/messages/{mid}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Your receipt, Grace")
    email = page.frame_locator("#message-frame").locator("body")
    expect(email.locator("h1")).to_have_text("Thanks Grace")
    expect(email).to_contain_text("Paid.")
    expect(page.locator("#message-text")).to_contain_text("Thanks Grace")
    expect(page.locator("#message-log")).to_contain_text("sent")
    # The email's own markup cannot reach the dashboard: no scripts, a separate origin.
    assert page.locator("#message-frame").get_attribute("sandbox") == ""
    assert unexpected(errors) == []


def test_reading_a_tracked_message_counts_no_open_and_follows_no_link(
    context: BrowserContext, site: Site
) -> None:
    tid = site.template(
        "Tracked",
        subject="Big news",
        html='<html><body><p>News for you</p><a id="go" href="https://example.com/x">Read'
        "</a></body></html>",
    )
    r = site.tenant.api.post(
        "/api/messages",
        json={"template_id": tid, "customer_id": site.grace, "topic": "broadcasts"},
    )
    assert r.status_code == 201, r.text
    sent = site.delivered(int(r.json()["id"]))
    assert sent["status"] == "sent"
    assert "/email/open/" in sent["html"]  # the open pixel is in what was sent
    assert "/email/click/" in sent["html"]

    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/messages/{sent['id']}")
    email = page.frame_locator("#message-frame").locator("body")
    expect(email).to_contain_text("News for you")
    assert any(BLOCKED.search(e) for e in errors), errors  # the pixel was refused
    assert [e for e in unexpected(errors) if not BLOCKED.search(e)] == []
    # The frame may not navigate: a click on the tracked link is refused before any request
    # (had it reached the server, the click would be recorded before this error page shows).
    email.locator("#go").click()
    expect(email).to_contain_text("ERR_BLOCKED_BY_CSP")
    page.reload()
    expect(email).to_contain_text("News for you")
    after = site.tenant.get(f"/api/messages/{sent['id']}")
    assert (after["opened_at"], after["clicked_at"]) == (None, None)
    assert [e["type"] for e in after["events"]] == [e["type"] for e in sent["events"]]
