"""Server-side tests of the segment pages against the live server (SQLite and PostgreSQL).

The list, the rule builder (its form, the catalogs it offers and the live-count endpoint), a
segment's page (status, members, explain), delete, and the customer profile's segments. Each
test has its own project; segments compute in the server's embedded worker, so tests wait on
the API for "ready" rather than sleeping.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update

from tests.support import Tenant
from tests.web.conftest import SignIn
from tests.web.dash import Visitor, identify, track
from tests.web.dom import Node, parse
from tidings.segments import rules
from tidings.segments.models import Segment

SCRIPT = "<script>alert('xss')</script>"
MINUS = "\u2212"  # growth shows exits with a minus sign
TRAIT_AND_EVENT = {
    "all": [
        {"trait": "plan", "op": "eq", "value": "pro"},
        {"event": "Bug Found", "op": "performed"},
    ]
}


# -- helpers ------------------------------------------------------------------------------------


def seed(tenant: Tenant) -> dict[str, int]:
    """Three customers: grace (pro, found a bug), ada (pro), linus (free, found a bug)."""
    tenant.send(
        [
            identify(
                "grace", {"email": "grace@example.com", "name": "Grace Hopper", "plan": "pro"}
            ),
            identify("ada", {"email": "ada@example.com", "name": "Ada Lovelace", "plan": "pro"}),
            identify("linus", {"email": "linus@example.com", "name": "Linus T", "plan": "free"}),
            track("grace", "Bug Found", {"kind": "moth", "location": "relay-70"}),
            track("linus", "Bug Found", {"kind": "kernel"}),
        ]
    )
    return {u: tenant.customer(user_id=u)["id"] for u in ("grace", "ada", "linus")}


def api_create(tenant: Tenant, name: str, definition: dict[str, Any]) -> int:
    r = tenant.api.post("/api/segments", json={"name": name, "rules": definition})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def wait_ready(tenant: Tenant, segment_id: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seg = tenant.get(f"/api/segments/{segment_id}")
        if seg["status"] == "ready":
            return dict(seg)
        assert seg["status"] == "computing", seg
        assert time.monotonic() < deadline, f"segment {segment_id} still computing: {seg}"
        time.sleep(0.1)


def force_status(tenant: Tenant, segment_id: int, **values: Any) -> None:
    """Pin a segment's status: a newer version with no job keeps it there."""
    with tenant.server.db.session(write=True) as session:
        session.execute(
            update(Segment)
            .where(Segment.id == segment_id)
            .values(version=Segment.version + 1, **values)
        )


def builder_config(doc: Node) -> dict[str, Any]:
    node = doc.find("script", id="builder-config")
    assert node.attrs["type"] == "application/json"
    return dict(json.loads(node.text))


def form_post(
    visitor: Visitor, path: str, name: str, definition: Any, **extra: str
) -> httpx.Response:
    text = definition if isinstance(definition, str) else json.dumps(definition)
    return visitor.post(path, {"name": name, "rules": text, **extra})


def explain_lines(doc: Node) -> list[str]:
    """The explanation's conditions (a group's line holds its children's text too)."""
    return [li.text for li in doc.by_id("explain-tree").find_all("li")]


def preview(visitor: Visitor, pid: int, definition: Any, csrf: str | None) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
    return visitor.http.post(
        f"/p/{pid}/segments/preview", json={"rules": definition}, headers=headers
    )


def segment_rows(doc: Node) -> dict[str, Node]:
    return {row.find("a").text: row for row in doc.by_id("segment-table").find_all("tr")[1:]}


# -- list ---------------------------------------------------------------------------------------


def test_segments_are_in_the_navigation_and_the_empty_list_says_what_to_do(
    tenant: Tenant, owner: Visitor
) -> None:
    pid = tenant.project_id
    customers = owner.page(f"/p/{pid}/customers")
    assert f"/p/{pid}/segments" in customers.find("nav").links()
    doc = owner.page(f"/p/{pid}/segments")
    (current,) = doc.find("nav").find_all("a", aria_current="page")
    assert current.attrs["href"] == f"/p/{pid}/segments"
    assert doc.find("h1").text == "Segments"
    assert "No segments yet" in doc.text
    assert f"/p/{pid}/segments/new" in doc.links()


def test_list_shows_size_status_progress_error_and_growth(tenant: Tenant, owner: Visitor) -> None:
    seed(tenant)
    pid = tenant.project_id
    pro = api_create(tenant, "Pro plan", {"trait": "plan", "op": "eq", "value": "pro"})
    busy = api_create(tenant, "Busy one", {"trait": "plan", "op": "exists"})
    broken = api_create(tenant, "Broken one", {"tag": "vip", "op": "has"})
    for sid in (pro, busy, broken):
        wait_ready(tenant, sid)
    # Ada leaves the pro plan and Linus joins it: one exit and one entry in the last 7 days
    # (the first computation is not growth).
    tenant.send([identify("ada", {"plan": "free"}), identify("linus", {"plan": "pro"})])
    assert tenant.get(f"/api/segments/{pro}")["member_count"] == 2
    force_status(tenant, busy, status="computing", progress=40)
    force_status(tenant, broken, status="failed", error="ValueError('boom')")

    doc = owner.page(f"/p/{pid}/segments")
    rows = segment_rows(doc)
    assert list(rows) == ["Broken one", "Busy one", "Pro plan"]  # by name
    assert rows["Pro plan"].find("a").attrs["href"] == f"/p/{pid}/segments/{pro}"
    assert rows["Pro plan"].find("td", class_="count").text == "2"
    assert rows["Pro plan"].find("td", class_="status").text == "ready"
    assert rows["Pro plan"].find("td", class_="growth").text == f"+1 {MINUS}1"
    busy_status = rows["Busy one"].find("td", class_="status")
    assert busy_status.text.startswith("computing 40%")
    assert busy_status.find("progress").attrs["value"] == "40"
    failed = rows["Broken one"].find("td", class_="status").text
    assert failed.startswith("failed")
    assert "ValueError('boom')" in failed

    # While one computes, the table polls itself; the fragment is the same table.
    table = doc.by_id("segment-table")
    assert table.attrs["hx-get"] == f"/p/{pid}/segments/table"
    assert table.attrs["hx-trigger"] == "every 2s"
    fragment = owner.page(f"/p/{pid}/segments/table")
    assert not fragment.find_all("nav")
    assert list(segment_rows(fragment)) == ["Broken one", "Busy one", "Pro plan"]
    force_status(tenant, busy, status="ready", progress=100)
    assert "hx-trigger" not in owner.page(f"/p/{pid}/segments").by_id("segment-table").attrs


# -- the builder --------------------------------------------------------------------------------


def test_builder_offers_the_project_catalogs_and_the_parser_operators(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    assert owner.post(f"/p/{pid}/customers/{ids['grace']}/tags", {"tag": "vip"}).is_redirect
    page_view = {
        "type": "page",
        "messageId": uuid.uuid4().hex,
        "userId": "grace",
        "name": "Pricing",
    }
    tenant.send([{**page_view, "properties": {"plan": "x"}}])
    other = api_create(tenant, "Everyone", {"all": []})

    doc = owner.page(f"/p/{pid}/segments/new")
    assert doc.find("h1").text == "New segment"
    form = doc.find("form", id="segment-form")
    assert form.attrs["method"] == "post"
    assert form.attrs["action"] == f"/p/{pid}/segments"
    assert form.find("input", name="csrf_token").attrs["value"] == owner.csrf()
    assert form.find("input", name="name").attrs["required"] == ""
    hidden = form.find("input", name="rules")
    assert hidden.attrs["type"] == "hidden"
    assert json.loads(hidden.attrs["value"]) == {"all": []}
    assert doc.has_id("rule-builder")
    assert doc.has_id("rules-json")  # the JSON view
    assert doc.has_id("preview-count")
    scripts = [n.attrs.get("src") for n in doc.find_all("script") if n.attrs.get("src")]
    assert "/static/segments.js" in scripts

    config = builder_config(doc)
    assert config["preview_url"] == f"/p/{pid}/segments/preview"
    families = [f["key"] for f in config["families"]]
    assert families == list(rules._FAMILIES)  # every family the parser knows
    assert config["ops"]["value"] == list(rules.VALUE_OPS)
    assert config["ops"]["property"] == list(rules.PROPERTY_OPS)
    assert config["ops"]["event"] == list(rules.EVENT_OPS)
    assert config["ops"]["page"] == list(rules.PAGE_OPS)
    assert config["ops"]["page_fields"] == list(rules.PAGE_FIELDS)
    assert set(config["ops"]["revenue"]) == set(rules.REVENUE_METRICS)
    trait_keys = {t["key"]: t["type"] for t in config["traits"]}
    assert trait_keys["plan"] == "string"
    assert {"email", "name"} <= set(trait_keys)
    events = {e["name"]: e["properties"] for e in config["events"]}
    assert set(events) == {"Bug Found"}  # track events only; pages have their own family
    assert set(events["Bug Found"]) == {"kind", "location"}
    assert "plan" in config["page_properties"]
    assert config["tags"] == ["vip"]
    assert config["segments"] == [{"id": other, "name": "Everyone"}]

    # Editing a segment offers the others, never itself (that would be a cycle).
    edit = owner.page(f"/p/{pid}/segments/{other}/edit")
    assert builder_config(edit)["segments"] == []


def test_preview_counts_an_unsaved_definition_and_names_a_bad_condition(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    csrf = owner.csrf()
    r = preview(owner, pid, TRAIT_AND_EVENT, csrf)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["count"] == 1
    assert [c["id"] for c in body["sample"]] == [ids["grace"]]
    assert body["sample"][0]["name"] == "Grace Hopper"
    assert preview(owner, pid, {"all": []}, csrf).json()["count"] == 3

    bad = {"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"any": [{"tag": "x"}]}]}
    r = preview(owner, pid, bad, csrf)
    assert r.status_code == 200
    assert r.json()["valid"] is False
    assert r.json()["code"] == "invalid_segment"
    assert r.json()["message"].startswith("rules.all[1].any[0]: unknown operator None")

    for token in (None, "", "forged"):
        r = preview(owner, pid, TRAIT_AND_EVENT, token)
        assert r.status_code == 403, token
        assert r.json()["code"] == "csrf_failed"


def test_saving_the_builder_form_creates_a_segment_that_computes_then_lists_members(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    r = form_post(
        owner, f"/p/{pid}/segments", "Pro bug finders", TRAIT_AND_EVENT, description="QA crew"
    )
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(f"/p/{pid}/segments/")
    assert location.endswith("?saved=1")
    sid = int(location.split("/")[-1].split("?")[0])
    doc = parse(owner.follow(r).text)
    assert "Segment saved" in doc.find(role="status").text
    assert doc.find("h1").text == "Pro bug finders"
    assert doc.by_id("segment-description").text == "QA crew"
    definition = [li.text for li in doc.by_id("definition").find_all("li")]
    assert definition[1:] == ['Trait plan is "pro"', 'Performed "Bug Found"']
    assert json.loads(doc.by_id("definition-json").text) == TRAIT_AND_EVENT

    seg = wait_ready(tenant, sid)
    assert seg["rules"] == TRAIT_AND_EVENT
    assert seg["description"] == "QA crew"
    doc = owner.page(f"/p/{pid}/segments/{sid}")
    status = doc.by_id("segment-status")
    assert "hx-trigger" not in status.attrs  # ready: no more polling
    assert doc.by_id("segment-state").text == "ready"
    assert doc.by_id("member-count").text == "1"
    # Growth counts what happens after the first computation.
    assert doc.by_id("segment-growth").text == f"+0 entered, {MINUS}0 exited"
    members = doc.by_id("members")
    assert f"/p/{pid}/customers/{ids['grace']}" in members.links()
    assert "Grace Hopper" in members.find("tbody").text
    assert len(members.find("tbody").find_all("tr")) == 1


def test_a_computing_segment_polls_its_status_and_members(tenant: Tenant, owner: Visitor) -> None:
    seed(tenant)
    pid = tenant.project_id
    sid = api_create(tenant, "Pros", {"trait": "plan", "op": "eq", "value": "pro"})
    wait_ready(tenant, sid)
    force_status(tenant, sid, status="computing", progress=65)
    doc = owner.page(f"/p/{pid}/segments/{sid}")
    status = doc.by_id("segment-status")
    assert status.attrs["hx-get"] == f"/p/{pid}/segments/{sid}/status"
    assert status.attrs["hx-trigger"] == "every 2s"
    assert status.attrs["hx-swap"] == "outerHTML"
    assert doc.by_id("segment-state").text.startswith("computing 65%")
    fragment = owner.page(f"/p/{pid}/segments/{sid}/status")
    assert not fragment.find_all("nav")
    assert fragment.by_id("segment-status").attrs["hx-trigger"] == "every 2s"
    oob = fragment.by_id("members")
    assert oob.attrs["hx-swap-oob"] == "true"
    assert len(oob.find("tbody").find_all("tr")) == 2

    force_status(tenant, sid, status="failed", error="RuntimeError('disk full')")
    fragment = owner.page(f"/p/{pid}/segments/{sid}/status")
    assert "hx-trigger" not in fragment.by_id("segment-status").attrs
    assert "RuntimeError('disk full')" in fragment.by_id("segment-state").text


def test_an_invalid_definition_re_renders_the_form_with_the_path_and_keeps_the_input(
    tenant: Tenant, owner: Visitor
) -> None:
    seed(tenant)
    pid = tenant.project_id
    bad = '{"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"event": "Bug Found"}]}'
    r = form_post(owner, f"/p/{pid}/segments", "Keep me", bad, description="my notes")
    assert r.status_code == 400
    doc = parse(r.text)
    message = doc.find(role="alert").text
    assert message.startswith("rules.all[1]: unknown operator None for an event condition")
    assert doc.find("input", name="name").attrs["value"] == "Keep me"
    assert doc.find("textarea", name="description").text == "my notes"
    assert doc.find("input", name="rules").attrs["value"] == bad
    assert doc.find("form", id="segment-form").attrs["action"] == f"/p/{pid}/segments"

    # Text that is not JSON at all, typed without the builder (the no-script textarea).
    r = form_post(owner, f"/p/{pid}/segments", "Keep me", "", rules_text='{"all": [')
    assert r.status_code == 400
    doc = parse(r.text)
    assert "The rules are not valid JSON" in doc.find(role="alert").text
    assert doc.find("input", name="rules").attrs["value"] == '{"all": ['

    r = form_post(owner, f"/p/{pid}/segments", "   ", {"all": []})
    assert r.status_code == 400
    assert "name is 1 to 200 characters" in parse(r.text).find(role="alert").text
    assert tenant.get("/api/segments")["data"] == []

    api_create(tenant, "Taken", {"all": []})
    r = form_post(owner, f"/p/{pid}/segments", "Taken", {"all": []})
    assert r.status_code == 409
    assert "already exists" in parse(r.text).find(role="alert").text
    assert len(tenant.get("/api/segments")["data"]) == 1


def test_editing_redefines_a_segment_and_a_refused_edit_changes_nothing(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    sid = api_create(tenant, "Pros", {"trait": "plan", "op": "eq", "value": "pro"})
    before = wait_ready(tenant, sid)
    doc = owner.page(f"/p/{pid}/segments/{sid}/edit")
    assert doc.find("h1").text == "Edit segment"
    form = doc.find("form", id="segment-form")
    assert form.attrs["action"] == f"/p/{pid}/segments/{sid}/edit"
    assert form.find("input", name="name").attrs["value"] == "Pros"
    assert json.loads(form.find("input", name="rules").attrs["value"]) == before["rules"]

    # The new name goes with the refused rules: neither is kept.
    r = form_post(owner, f"/p/{pid}/segments/{sid}/edit", "Renamed", {"not": []})
    assert r.status_code == 400
    assert parse(r.text).find(role="alert").text.startswith("rules.not: expected an object")
    assert parse(r.text).find("input", name="name").attrs["value"] == "Renamed"
    assert tenant.get(f"/api/segments/{sid}") == before

    r = form_post(
        owner,
        f"/p/{pid}/segments/{sid}/edit",
        "Bug finders",
        {"event": "Bug Found", "op": "performed"},
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/p/{pid}/segments/{sid}?saved=1"
    after = wait_ready(tenant, sid)
    assert after["name"] == "Bug finders"
    assert after["version"] == before["version"] + 1
    assert after["member_count"] == 2
    doc = owner.page(f"/p/{pid}/segments/{sid}")
    linked = set(doc.by_id("members").links())
    assert {f"/p/{pid}/customers/{ids['grace']}", f"/p/{pid}/customers/{ids['linus']}"} <= linked


# -- one segment --------------------------------------------------------------------------------


def test_explain_shows_each_condition_with_its_value_and_truth(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    sid = api_create(tenant, "Pro bug finders", TRAIT_AND_EVENT)
    wait_ready(tenant, sid)
    path = f"/p/{pid}/segments/{sid}/explain"
    doc = owner.page(f"/p/{pid}/segments/{sid}")
    form = doc.by_id("explain-customer")
    assert form.attrs["name"] == "customer"
    assert doc.find("form", action=path).attrs["hx-target"] == "#explain-result"

    # By email, without htmx: the whole segment page with the answer in the box.
    page = owner.page(path, params={"customer": "grace@example.com"})
    assert page.find("h1").text == "Pro bug finders"
    assert page.by_id("explain-customer").attrs["value"] == "grace@example.com"
    verdict = page.by_id("explain-verdict").text
    assert verdict.startswith("Grace Hopper is a member.")
    assert "The rules evaluated now match." in verdict
    lines = explain_lines(page)
    assert lines[1:] == [
        '✓ Trait plan is "pro" holds value: "pro"',
        '✓ Performed "Bug Found" holds value: {"count":1}',
    ]
    assert lines[0].startswith("✓ All of holds")

    # By user id, with htmx: the fragment alone.
    r = owner.get(path, params={"customer": "ada"}, headers={"HX-Request": "true"})
    assert r.status_code == 200
    fragment = parse(r.text)
    assert not fragment.find_all("nav")
    assert fragment.by_id("explain-verdict").text.startswith("Ada Lovelace is not a member.")
    lines = explain_lines(fragment)
    assert lines[1:] == [
        '✓ Trait plan is "pro" holds value: "pro"',
        '✗ Performed "Bug Found" does not hold value: {"count":0}',
    ]
    assert lines[0].startswith("✗ All of does not hold")

    # By Tidings id; then someone unknown.
    page = owner.page(path, params={"customer": str(ids["linus"])})
    assert page.by_id("explain-verdict").text.startswith("Linus T is not a member.")
    assert '✗ Trait plan is "pro" does not hold value: "free"' in explain_lines(page)
    missing = owner.page(path, params={"customer": "nobody@example.com"})
    assert missing.by_id("explain-result").find(role="alert").text == "No customer matches."
    empty = owner.page(path, params={"customer": " "})
    assert "Enter a customer" in empty.by_id("explain-result").text


def test_members_page_through_with_a_cursor(tenant: Tenant, owner: Visitor) -> None:
    tenant.send([identify(f"m-{i:02d}", {"plan": "bulk"}) for i in range(53)])
    pid = tenant.project_id
    sid = api_create(tenant, "Bulk", {"trait": "plan", "op": "eq", "value": "bulk"})
    assert wait_ready(tenant, sid)["member_count"] == 53
    doc = owner.page(f"/p/{pid}/segments/{sid}")
    first = doc.by_id("members").find("tbody").find_all("tr")
    assert len(first) == 50
    pager = doc.by_id("members").find("div", class_="pager")
    (next_link,) = [a for a in pager.find_all("a") if "Next page" in a.text]
    assert "First page" not in pager.text
    second = owner.page(next_link.attrs["href"])
    rows = second.by_id("members").find("tbody").find_all("tr")
    assert len(rows) == 3
    assert "First page" in second.by_id("members").find("div", class_="pager").text
    seen = {r.find("td", class_="mono").text for r in first + rows}
    assert seen == {f"m-{i:02d}" for i in range(53)}
    assert owner.get(f"/p/{pid}/segments/{sid}?cursor=forged").status_code == 400


def test_delete_asks_first_and_refuses_a_segment_another_one_uses(
    tenant: Tenant, owner: Visitor
) -> None:
    seed(tenant)
    pid = tenant.project_id
    base = api_create(tenant, "Pros", {"trait": "plan", "op": "eq", "value": "pro"})
    user = api_create(tenant, "Pro bug finders", {"all": [{"segment": base, "op": "in"}]})
    doc = owner.page(f"/p/{pid}/segments/{base}")
    assert f"/p/{pid}/segments/{base}/delete" in doc.links()
    confirm = owner.page(f"/p/{pid}/segments/{base}/delete")
    assert confirm.find("h1").text == "Delete the segment Pros?"
    form = confirm.find("form", action=f"/p/{pid}/segments/{base}/delete")
    assert form.attrs["method"] == "post"
    assert form.find("input", name="csrf_token")

    r = owner.post(f"/p/{pid}/segments/{base}/delete")
    assert r.status_code == 409
    alert = parse(r.text).find(role="alert").text
    assert alert == "Segment 'Pros' is used by Pro bug finders; change those first."
    assert tenant.get(f"/api/segments/{base}")["name"] == "Pros"

    r = owner.post(f"/p/{pid}/segments/{user}/delete")
    assert r.status_code == 303
    assert r.headers["location"] == f"/p/{pid}/segments?deleted=1"
    assert "Segment deleted." in parse(owner.follow(r).text).find(role="status").text
    assert tenant.api.get(f"/api/segments/{user}").status_code == 404
    assert owner.get(f"/p/{pid}/segments/{user}").status_code == 404
    assert owner.post(f"/p/{pid}/segments/{base}/delete").status_code == 303


def test_profile_lists_the_customer_segments_and_the_timeline_reads_entries_and_exits(
    tenant: Tenant, owner: Visitor
) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    sid = api_create(tenant, "Pros", {"trait": "plan", "op": "eq", "value": "pro"})
    wait_ready(tenant, sid)
    doc = owner.page(f"/p/{pid}/customers/{ids['ada']}")
    section = doc.find("section", aria_labelledby="segments-h")
    assert section.find("h2").text == "Segments"
    assert section.links() == [f"/p/{pid}/segments/{sid}"]
    assert section.find("a").text == "Pros"
    # The computation itself is not on the timeline; what happens to the customer is.
    assert doc.by_id("timeline").find_all("strong", class_="segment-change") == []

    def members_become(n: int) -> None:
        deadline = time.monotonic() + 10
        while tenant.get(f"/api/segments/{sid}")["member_count"] != n:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    tenant.send([identify("ada", {"plan": "free"})])
    members_become(1)
    doc = owner.page(f"/p/{pid}/customers/{ids['ada']}")
    assert "In no segment." in doc.find("section", aria_labelledby="segments-h").text
    exited = doc.by_id("timeline").find("strong", class_="segment-change")
    assert exited.text == "Exited segment Pros"
    assert exited.links() == [f"/p/{pid}/segments/{sid}"]
    tenant.send([identify("ada", {"plan": "pro"})])
    members_become(2)
    doc = owner.page(f"/p/{pid}/customers/{ids['ada']}")
    changes = [s.text for s in doc.by_id("timeline").find_all("strong", class_="segment-change")]
    assert changes == ["Entered segment Pros", "Exited segment Pros"]  # newest first
    linus = owner.page(f"/p/{pid}/customers/{ids['linus']}")
    assert "In no segment." in linus.find("section", aria_labelledby="segments-h").text


# -- roles, projects, CSRF, escaping ------------------------------------------------------------


def test_members_can_view_create_edit_and_delete_segments(
    tenant: Tenant, sign_in_as: SignIn
) -> None:
    """The same rule as customers' tags: any member of the project may change them."""
    seed(tenant)
    member = sign_in_as("member")
    pid = tenant.project_id
    assert member.page(f"/p/{pid}/segments").find("h1").text == "Segments"
    assert member.page(f"/p/{pid}/segments/new").find("form", id="segment-form")
    r = form_post(member, f"/p/{pid}/segments", "Member made", TRAIT_AND_EVENT)
    assert r.status_code == 303
    sid = int(r.headers["location"].split("/")[-1].split("?")[0])
    assert member.page(f"/p/{pid}/segments/{sid}").find("h1").text == "Member made"
    r = form_post(member, f"/p/{pid}/segments/{sid}/edit", "Member edited", TRAIT_AND_EVENT)
    assert r.status_code == 303
    assert tenant.get(f"/api/segments/{sid}")["name"] == "Member edited"
    assert member.post(f"/p/{pid}/segments/{sid}/delete").status_code == 303
    assert tenant.get("/api/segments")["data"] == []


def test_a_user_of_another_project_gets_404s(tenant: Tenant, sign_in_as: SignIn) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    sid = api_create(tenant, "Secret segment", TRAIT_AND_EVENT)
    other = tenant.server.new_tenant()
    try:
        outsider = sign_in_as("owner", [other.project_id])
        for path in (
            f"/p/{pid}/segments",
            f"/p/{pid}/segments/table",
            f"/p/{pid}/segments/new",
            f"/p/{pid}/segments/{sid}",
            f"/p/{pid}/segments/{sid}/status",
            f"/p/{pid}/segments/{sid}/edit",
            f"/p/{pid}/segments/{sid}/delete",
            f"/p/{pid}/segments/{sid}/explain?customer={ids['grace']}",
        ):
            r = outsider.get(path)
            assert r.status_code == 404, path
            assert "Secret segment" not in r.text
        # Their own project does not reach this project's segment either.
        own = other.project_id
        for path in (f"/p/{own}/segments/{sid}", f"/p/{own}/segments/{sid}/edit"):
            assert outsider.get(path).status_code == 404, path
        csrf = outsider.csrf()
        for path in (
            f"/p/{pid}/segments",
            f"/p/{pid}/segments/{sid}/edit",
            f"/p/{pid}/segments/{sid}/delete",
            f"/p/{own}/segments/{sid}/edit",
            f"/p/{own}/segments/{sid}/delete",
        ):
            r = form_post(outsider, path, "Pwned", {"all": []})
            assert r.status_code == 404, path
        r = preview(outsider, pid, {"all": []}, csrf)
        assert r.status_code == 404
        assert "count" not in r.json()
        assert [s["name"] for s in tenant.get("/api/segments")["data"]] == ["Secret segment"]
        # A customer of this project cannot be explained through the outsider's own segment.
        theirs = api_create(other, "Theirs", {"all": []})
        r = outsider.get(
            f"/p/{own}/segments/{theirs}/explain", params={"customer": str(ids["grace"])}
        )
        assert r.status_code == 200
        assert parse(r.text).by_id("explain-result").find(role="alert").text == (
            "No customer matches."
        )
    finally:
        other.close()


def test_signed_out_visitors_are_sent_to_sign_in(tenant: Tenant) -> None:
    pid = tenant.project_id
    sid = api_create(tenant, "Anyone", {"all": []})
    for path in (
        f"/p/{pid}/segments",
        f"/p/{pid}/segments/new",
        f"/p/{pid}/segments/{sid}",
        f"/p/{pid}/segments/{sid}/edit",
    ):
        r = tenant.http.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    for path in (f"/p/{pid}/segments", f"/p/{pid}/segments/{sid}/delete"):
        r = tenant.http.post(path, data={"name": "x", "rules": "{}", "csrf_token": "x"})
        assert r.status_code == 303, path
    r = tenant.http.get(f"/p/{pid}/segments/{sid}/status", headers={"HX-Request": "true"})
    assert r.headers.get("hx-redirect") == "/login"
    assert tenant.get(f"/api/segments/{sid}")["name"] == "Anyone"


FORMS = {
    "create": lambda pid, sid: (f"/p/{pid}/segments", {"name": "New", "rules": '{"all": []}'}),
    "edit": lambda pid, sid: (
        f"/p/{pid}/segments/{sid}/edit",
        {"name": "Edited", "rules": '{"any": []}'},
    ),
    "delete": lambda pid, sid: (f"/p/{pid}/segments/{sid}/delete", {}),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_segment_forms_refuse_a_missing_or_wrong_csrf_token(
    tenant: Tenant, sign_in_as: SignIn, form: str
) -> None:
    owner = sign_in_as("owner")
    someone_else = sign_in_as("owner")
    pid = tenant.project_id
    sid = api_create(tenant, "Original", {"all": []})
    wait_ready(tenant, sid)
    path, data = FORMS[form](pid, sid)
    before = tenant.get("/api/segments")["data"]
    for token in (None, "", "forged", someone_else.csrf()):
        r = owner.post(path, data, csrf=token)
        assert r.status_code == 403, f"{form} with csrf_token={token!r}: {r.status_code}"
        assert "expired or did not come from Tidings" in r.text
        assert tenant.get("/api/segments")["data"] == before, f"{form} with {token!r}"
    assert owner.post(path, data).status_code == 303


def test_segment_names_and_values_are_escaped_everywhere(tenant: Tenant, owner: Visitor) -> None:
    ids = seed(tenant)
    pid = tenant.project_id
    tenant.send([identify("ada", {SCRIPT: "a trait whose key is markup"})])
    definition = {
        "any": [{"trait": "plan", "op": "eq", "value": "pro"}, {"tag": SCRIPT, "op": "has"}]
    }
    r = form_post(owner, f"/p/{pid}/segments", SCRIPT, definition, description=SCRIPT)
    assert r.status_code == 303, r.text
    sid = int(r.headers["location"].split("/")[-1].split("?")[0])
    wait_ready(tenant, sid)
    pages = {
        "list": f"/p/{pid}/segments",
        "table": f"/p/{pid}/segments/table",
        "segment": f"/p/{pid}/segments/{sid}",
        "status": f"/p/{pid}/segments/{sid}/status",
        "edit": f"/p/{pid}/segments/{sid}/edit",
        "delete": f"/p/{pid}/segments/{sid}/delete",
        "explain": f"/p/{pid}/segments/{sid}/explain?customer=grace",
        "profile": f"/p/{pid}/customers/{ids['grace']}",
        "timeline": f"/p/{pid}/customers/{ids['grace']}/timeline",
    }
    for name, path in pages.items():
        r = owner.get(path)
        assert r.status_code == 200, name
        assert "<script>alert" not in r.text, f"unescaped on the {name} page"
        for node in parse(r.text).find_all("script"):
            assert node.attrs.get("src", "").startswith("/static/") or (
                node.attrs.get("type") == "application/json"
            ), name
    segment = owner.page(pages["segment"])
    assert segment.find("h1").text == SCRIPT
    assert SCRIPT in segment.by_id("definition").text
    assert SCRIPT in owner.page(pages["list"]).by_id("segment-table").text
    profile = owner.page(pages["profile"])
    assert profile.find("section", aria_labelledby="segments-h").find("a").text == SCRIPT
    # A live entry puts the name on a timeline: still text.
    before = tenant.get(f"/api/segments/{sid}")["member_count"]
    tenant.send([identify("linus", {"plan": "pro"})])
    deadline = time.monotonic() + 10
    while tenant.get(f"/api/segments/{sid}")["member_count"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = owner.get(f"/p/{pid}/customers/{ids['linus']}")
    assert "<script>alert" not in r.text
    assert f"Entered segment {SCRIPT}" in parse(r.text).by_id("timeline").text
    # The builder's settings are JSON in a non-executable script: "<" is escaped inside it.
    edit = owner.get(pages["edit"]).text
    config_text = edit.split('id="builder-config">', 1)[1].split("</script>", 1)[0]
    assert "<" not in config_text
    assert SCRIPT in [t["key"] for t in orjson.loads(config_text)["traits"]]
    assert parse(edit).find("input", name="name").attrs["value"] == SCRIPT
