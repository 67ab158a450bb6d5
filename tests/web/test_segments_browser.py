"""Browser tests of the segment pages: Playwright drives Debian's chromium against a live server
(SQLite) seeded through the ingestion API.

The server runs without its embedded worker, beside a `tidings worker` process that a test can
stop, so it can look at a segment while it is still computing and then watch the page turn
"ready" by itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support import TIDINGS, LiveServer, Tenant, create_database, server_env, start_server
from tests.web.dash import Visitor, create_user, identify, signed_in, track

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS_NAME = "<script>window.__pwned=1</script> VIPs"
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


@dataclass
class Switch:
    """A `tidings worker` process beside the server, which a test can stop and start again."""

    server: LiveServer
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        with (self.workdir / "worker.log").open("ab") as log:
            self.process = subprocess.Popen(
                [TIDINGS, "worker"],
                cwd=self.workdir,
                env=server_env(self.server.database_url),
                stdout=log,
                stderr=log,
            )

    def stop(self) -> None:
        """Stop after the current round (SIGTERM is the worker's graceful stop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@dataclass
class Site:
    server: LiveServer
    tenant: Tenant
    owner: Visitor
    worker: Switch
    ids: dict[str, int]

    @property
    def pid(self) -> int:
        return self.tenant.project_id

    def segment(self, name: str, rules: dict[str, Any]) -> int:
        """A segment made through the API, once computed."""
        r = self.tenant.api.post("/api/segments", json={"name": name, "rules": rules})
        assert r.status_code == 201, r.text
        sid = int(r.json()["id"])
        deadline = time.monotonic() + 20
        while self.tenant.get(f"/api/segments/{sid}")["status"] != "ready":
            assert time.monotonic() < deadline, f"segment {name} still computing"
            time.sleep(0.1)
        return sid

    def delete_segments(self) -> None:
        # Dependents first: the API refuses to delete a segment another one uses.
        for _ in range(3):
            for seg in self.tenant.get("/api/segments")["data"]:
                self.tenant.api.delete(f"/api/segments/{seg['id']}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("segments-browser")
    server = start_server(create_database(f"sqlite:///{tmp / 'tidings.db'}"), tmp, worker=False)
    switch = Switch(server, tmp)
    switch.start()
    tenant = server.new_tenant("Segment shop")
    try:
        tenant.send(
            [
                identify("grace", {"email": "grace@example.com", "name": "Grace Hopper"}),
                identify("grace", {"plan": "pro"}),
                identify(
                    "ada", {"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"}
                ),
                identify(
                    "linus", {"email": "linus@example.com", "name": "Linus T", "plan": "free"}
                ),
                identify("alan", {"email": "alan@example.com", "name": "Alan Turing"}),
                track("grace", "Bug Found", {"kind": "moth"}),
                track("linus", "Bug Found", {"kind": "kernel"}),
                track("ada", "Program Written", {"language": "notes"}),
            ]
        )
        owner = signed_in(
            server.url, create_user(server.db, role="owner", project_ids=[tenant.project_id])
        )
        ids = {u: tenant.customer(user_id=u)["id"] for u in ("grace", "ada", "linus", "alan")}
        yield Site(server=server, tenant=tenant, owner=owner, worker=switch, ids=ids)
        owner.close()
    finally:
        tenant.close()
        if switch.process is not None:
            switch.stop()
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
    site.delete_segments()  # each test starts from a project without segments
    ctx = browser.new_context(base_url=site.server.url)
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def open_page(context: BrowserContext, visitor: Visitor) -> tuple[Page, list[str]]:
    """A new page signed in as `visitor`, and the page's JavaScript and console errors."""
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


def unexpected(errors: list[str]) -> list[str]:
    """Errors other than the browser's note of a 4xx answer the test asked for."""
    return [e for e in errors if not REFUSED.search(e)]


def condition(page: Page, path: str) -> Any:
    return page.locator(f"[data-path='{path}']")


def test_build_a_segment_by_clicking_watch_it_compute_and_find_it_on_a_profile(
    context: BrowserContext, site: Site
) -> None:
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/customers")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Segments").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Segments")
    expect(page.get_by_text("No segments yet")).to_be_visible()
    page.get_by_role("link", name="New segment").click()
    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/segments/new$"))

    count = page.locator("#preview-count")
    expect(count).to_have_text("4 customers match")  # no condition yet: everyone
    page.get_by_label("Name").fill("Pro bug finders")
    page.get_by_label("Description").fill("Paying customers who report bugs")

    page.get_by_role("button", name="Add a condition").click()
    trait = condition(page, "rules.all[0]")
    expect(trait.get_by_label("Condition type")).to_have_value("trait")
    trait_keys = trait.get_by_label("Trait", exact=True).locator("option")
    expect(trait_keys).to_contain_text(["email", "name", "plan"])  # the trait catalog
    trait.get_by_label("Trait", exact=True).select_option("plan")
    trait.get_by_label("Operator").select_option(label="is")
    trait.get_by_label("Value", exact=True).fill("pro")
    expect(count).to_have_text("2 customers match")
    expect(page.locator("#preview-sample")).to_contain_text("Grace Hopper")
    expect(page.locator("#preview-sample")).to_contain_text("Ada Lovelace")

    page.get_by_role("button", name="Add a condition").last.click()
    event = condition(page, "rules.all[1]")
    event.get_by_label("Condition type").select_option(label="Event")
    names = event.get_by_label("Event", exact=True).locator("option")
    expect(names).to_contain_text(["Bug Found", "Program Written"])  # the event catalog
    event.get_by_label("Event", exact=True).select_option("Bug Found")
    expect(count).to_have_text("1 customer matches")
    event.get_by_role("button", name="Add a property filter").click()
    where = condition(page, "rules.all[1].where[0]")
    expect(where.get_by_label("Property", exact=True).locator("option")).to_contain_text(["kind"])
    where.get_by_label("Property", exact=True).select_option("kind")
    where.get_by_label("Operator").select_option(label="is")
    where.get_by_label("Value", exact=True).fill("kernel")
    expect(count).to_have_text("0 customers match")
    where.get_by_role("button", name="Remove property filter").click()
    expect(count).to_have_text("1 customer matches")

    expected = {
        "all": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"event": "Bug Found", "op": "performed"},
        ]
    }
    assert page.evaluate("() => JSON.parse(document.getElementById('rules-field').value)") == (
        expected
    )
    page.locator("#json-view summary").click()
    assert page.evaluate("() => JSON.parse(document.getElementById('rules-json').value)") == (
        expected
    )

    site.worker.stop()  # hold the computation so the page can be seen computing
    try:
        page.get_by_role("button", name="Save segment").click()
        expect(page).to_have_url(re.compile(rf"/p/{site.pid}/segments/\d+\?saved=1$"))
        expect(page.get_by_role("status")).to_contain_text("Segment saved")
        expect(page.get_by_role("heading", level=1)).to_have_text("Pro bug finders")
        expect(page.locator("#segment-state")).to_contain_text("computing 0%")
        expect(page.locator("#members")).to_contain_text("Finding the members")
        page.evaluate("() => { window.__sameDocument = true }")
    finally:
        site.worker.start()
    expect(page.locator("#segment-state")).to_have_text("ready", timeout=15_000)
    expect(page.locator("#member-count")).to_have_text("1")
    members = page.locator("#members tbody tr")
    expect(members).to_have_count(1)
    expect(members.first).to_contain_text("Grace Hopper")
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    definition = page.locator("#definition")
    expect(definition).to_contain_text('Trait plan is "pro"')
    expect(definition).to_contain_text('Performed "Bug Found"')

    members.first.get_by_role("link", name="Grace Hopper").click()
    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/customers/{site.ids['grace']}$"))
    section = page.locator("section[aria-labelledby='segments-h']")
    expect(section.get_by_role("link", name="Pro bug finders")).to_be_visible()
    # Computed membership: on the profile, not on the timeline (nothing the customer did).
    expect(page.locator("#timeline")).not_to_contain_text("Entered segment")
    section.get_by_role("link", name="Pro bug finders").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Pro bug finders")

    page.goto(f"/p/{site.pid}/segments")
    row = page.locator("#segment-table tbody tr", has_text="Pro bug finders")
    expect(row.locator("td.count")).to_have_text("1")
    expect(row.locator("td.status")).to_have_text("ready")
    expect(row.locator("td.growth")).to_contain_text("+0")  # the computation is not growth
    assert errors == []


def test_edit_loads_the_definition_into_the_builder(context: BrowserContext, site: Site) -> None:
    sid = site.segment(
        "Recent pros",
        {
            "any": [
                {"not": {"trait": "plan", "op": "in", "value": ["free", "trial"]}},
                {"event": "Bug Found", "op": "last_performed", "within_days": 30},
                {"revenue": "lifetime_value", "op": "gte", "value": 100},
                {"tag": "vip", "op": "has"},
                {"event": "Bug Found", "op": "performed", "count": {"gte": 1, "lte": 5}},
            ]
        },
    )
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/segments/{sid}/edit")
    expect(page.locator("#preview-count")).to_contain_text("match")
    expect(condition(page, "rules").get_by_label("Match")).to_have_value("any")
    negated = condition(page, "rules.any[0].not")
    expect(negated.get_by_label("Operator")).to_have_value("in")
    expect(negated.get_by_label("Values")).to_have_value("free, trial")
    recency = condition(page, "rules.any[1]")
    expect(recency.get_by_label("Operator")).to_have_value("last_performed")
    expect(recency.get_by_label("Days")).to_have_value("30")
    expect(condition(page, "rules.any[2]").get_by_label("Metric")).to_have_value("lifetime_value")
    expect(condition(page, "rules.any[3]").get_by_label("Tag", exact=True)).to_have_value(
        "__other__"
    )  # not in the catalog: typed
    expect(condition(page, "rules.any[3]").get_by_label("Tag (other)")).to_have_value("vip")
    # A shape the visual editor does not cover (two count bounds) is edited as JSON, not dropped.
    raw = condition(page, "rules.any[4]").get_by_label("Condition as JSON")
    expect(raw).to_have_value(re.compile(r'"lte": 5'))
    expect(page.locator("#preview-error")).to_be_hidden()
    raw.fill('{"event": "Bug Found", "op": "performed", "extra": 1}')
    expect(page.locator("#preview-error")).to_contain_text("rules.any[4]: unexpected key 'extra'")
    expect(condition(page, "rules.any[4]")).to_have_class(re.compile(r"\binvalid\b"))
    raw.fill('{"event": "Bug Found", "op": "performed"}')
    expect(page.locator("#preview-error")).to_be_hidden()
    expect(condition(page, "rules.any[4]")).not_to_have_class(re.compile(r"\binvalid\b"))
    stored = page.evaluate("() => JSON.parse(document.getElementById('rules-field').value)")
    assert stored["any"][4] == {"event": "Bug Found", "op": "performed"}
    assert errors == []


def test_explain_a_customer(context: BrowserContext, site: Site) -> None:
    sid = site.segment(
        "Pro bug finders",
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "pro"},
                {"event": "Bug Found", "op": "performed"},
            ]
        },
    )
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/segments/{sid}")
    page.evaluate("() => { window.__sameDocument = true }")
    page.get_by_label("Customer", exact=True).fill("ada@example.com")
    page.get_by_role("button", name="Explain", exact=True).click()
    result = page.locator("#explain-result")
    expect(result.locator("#explain-verdict")).to_contain_text("Ada Lovelace is not a member.")
    lines = result.locator("#explain-tree li li")
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text('Trait plan is "pro" holds value: "pro"')
    expect(lines.nth(1)).to_contain_text('Performed "Bug Found" does not hold')
    expect(lines.nth(1)).to_contain_text('{"count":0}')
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"

    page.get_by_label("Customer", exact=True).fill("grace")
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(result.locator("#explain-verdict")).to_contain_text("Grace Hopper is a member.")
    expect(result.locator("#explain-tree li li").nth(1)).to_contain_text("holds")

    page.get_by_label("Customer", exact=True).fill("nobody@example.com")
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(result.get_by_role("alert")).to_have_text("No customer matches.")
    assert errors == []


def test_invalid_json_and_an_invalid_definition_show_their_errors(
    context: BrowserContext, site: Site
) -> None:
    page, errors = open_page(context, site.owner)
    page.goto(f"/p/{site.pid}/segments/new")
    expect(page.locator("#preview-count")).to_have_text("4 customers match")
    page.get_by_label("Name").fill("Half typed")
    page.locator("#json-view summary").click()
    text = page.get_by_label("Rules as JSON")
    text.fill('{"all": [{"trait": "plan", ')
    expect(page.locator("#json-error")).to_contain_text("The JSON is not valid")
    expect(page.locator("#rule-builder")).to_contain_text("not valid JSON")
    expect(page.locator("#preview-error")).to_contain_text("Fix the JSON")

    # Valid JSON, but an operator the parser does not know: the message names the condition.
    text.fill(
        '{"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"tag": "x", "op": "hass"}]}'
    )
    expect(page.locator("#json-error")).to_be_hidden()
    problem = "rules.all[1]: unknown operator 'hass' for a tag condition"
    expect(page.locator("#preview-error")).to_contain_text(problem)
    expect(condition(page, "rules.all[1]")).to_have_class(re.compile(r"\binvalid\b"))
    expect(condition(page, "rules.all[0]")).not_to_have_class(re.compile(r"\binvalid\b"))

    with page.expect_response(re.compile(rf"/p/{site.pid}/segments$")) as answer:
        page.get_by_role("button", name="Save segment").click()
    assert answer.value.status == 400
    expect(page.locator("#form-error")).to_contain_text(problem)
    expect(page.get_by_label("Name")).to_have_value("Half typed")
    expect(condition(page, "rules.all[1]")).to_have_class(re.compile(r"\binvalid\b"))
    expect(condition(page, "rules.all[0]").get_by_label("Value", exact=True)).to_have_value("pro")

    # Text that is not JSON at all, saved anyway: the server says so and keeps the text.
    page.locator("#json-view summary").click()
    page.get_by_label("Rules as JSON").fill('{"all": [')
    page.get_by_role("button", name="Save segment").click()
    expect(page.locator("#form-error")).to_contain_text("The rules are not valid JSON")
    expect(page.get_by_label("Rules as JSON")).to_have_value('{"all": [')
    assert site.tenant.get("/api/segments")["data"] == []
    assert unexpected(errors) == []


def test_the_segment_forms_need_their_csrf_token(context: BrowserContext, site: Site) -> None:
    sid = site.segment("Keep me", {"all": []})
    page, _ = open_page(context, site.owner)

    page.goto(f"/p/{site.pid}/segments/new")
    page.get_by_label("Name").fill("Forged")
    page.locator("#segment-form input[name=csrf_token]").evaluate("i => i.remove()")
    with page.expect_response(re.compile(rf"/p/{site.pid}/segments$")) as answer:
        page.get_by_role("button", name="Save segment").click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("body")).to_contain_text("did not come from Tidings")

    page.goto(f"/p/{site.pid}/segments/{sid}/delete")
    page.locator("#main input[name=csrf_token]").evaluate("i => i.value = 'forged'")
    with page.expect_response(re.compile(rf"/segments/{sid}/delete$")) as answer:
        page.get_by_role("button", name="Yes, delete Keep me").click()
    assert answer.value.status == 403

    # The live count's request needs the token too (it sends it as a header).
    page.goto(f"/p/{site.pid}/segments/new")
    status = page.evaluate(
        """url => fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify({rules: {all: []}})}).then(r => r.status)""",
        f"/p/{site.pid}/segments/preview",
    )
    assert status == 403
    assert [s["name"] for s in site.tenant.get("/api/segments")["data"]] == ["Keep me"]

    # The untouched delete form goes through; a segment another one uses is refused with why.
    base = site.segment("Base", {"trait": "plan", "op": "exists"})
    site.segment("Built on base", {"segment": base, "op": "in"})
    page.goto(f"/p/{site.pid}/segments/{base}")
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Yes, delete Base").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Segment 'Base' is used by Built on base; change those first."
    )
    page.goto(f"/p/{site.pid}/segments/{sid}/delete")
    page.get_by_role("button", name="Yes, delete Keep me").click()
    expect(page).to_have_url(re.compile(rf"/p/{site.pid}/segments\?deleted=1$"))
    expect(page.get_by_role("status")).to_have_text("Segment deleted.")


def test_a_script_in_a_segment_name_is_shown_as_text(context: BrowserContext, site: Site) -> None:
    page, errors = open_page(context, site.owner)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"/p/{site.pid}/segments/new")
    page.get_by_label("Name").fill(XSS_NAME)
    page.get_by_label("Description").fill(XSS_NAME)
    page.get_by_role("button", name="Add a condition").click()
    trait = condition(page, "rules.all[0]")
    trait.get_by_label("Trait", exact=True).select_option("email")
    trait.get_by_label("Operator").select_option(label="starts with")
    trait.get_by_label("Value", exact=True).fill("grace")
    expect(page.locator("#preview-count")).to_have_text("1 customer matches")
    page.get_by_role("button", name="Save segment").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(XSS_NAME)
    expect(page.locator("#segment-description")).to_have_text(XSS_NAME)
    expect(page.locator("#segment-state")).to_have_text("ready", timeout=15_000)
    sid = int(page.url.split("/segments/")[1].split("?")[0])
    for path in (
        f"/p/{site.pid}/segments",
        f"/p/{site.pid}/segments/{sid}",
        f"/p/{site.pid}/segments/{sid}/edit",
        f"/p/{site.pid}/customers/{site.ids['grace']}",
    ):
        page.goto(path)
        page.wait_for_load_state("load")
        assert page.evaluate("() => typeof window.__pwned") == "undefined", path
    expect(page.locator("section[aria-labelledby='segments-h'] a")).to_have_text(XSS_NAME)
    expect(page.locator("#timeline")).not_to_contain_text("<script>")
    page.goto(f"/p/{site.pid}/segments")
    expect(page.locator("#segment-table a", has_text="VIPs")).to_have_text(XSS_NAME)
    page.wait_for_timeout(300)
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert dialogs == []
    assert errors == []
