"""Server-side tests of the email pages against the live server (SQLite and PostgreSQL).

Templates (list, starters, the editor, its live preview, test sends, delete), the message log
and a message's page, subscription topics, suppressions, email settings, and the customer
profile's messages and subscriptions. The server has no SMTP server, so every email lands in the
outbox (the message log) and is delivered there by the embedded worker within about a second;
tests poll the API for that rather than sleeping.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support import Tenant
from tests.web.conftest import SignIn
from tests.web.dash import Visitor, identify
from tests.web.dom import Node, parse

SCRIPT = "<script>alert('xss')</script>"
BROKEN_HTML = "<p>Hello</p>\n<p>{{ customer.first_name }}</p>\n  <p>{% iff customer.email %}</p>\n"
BROKEN_AT = "line 3, column 9: unexpected tag 'iff'"


# -- helpers ------------------------------------------------------------------------------------


def seed(tenant: Tenant) -> int:
    """Grace, a customer with an email; returns her Tidings id."""
    tenant.send([identify("grace", {"email": "grace@example.com", "first_name": "Grace"})])
    return int(tenant.customer(user_id="grace")["id"])


def api_template(tenant: Tenant, name: str, **parts: Any) -> int:
    r = tenant.api.post("/api/templates", json={"name": name, **parts})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def api_send(tenant: Tenant, template_id: int, customer_id: int, **extra: Any) -> int:
    body = {"template_id": template_id, "customer_id": customer_id, "topic": "broadcasts"}
    r = tenant.api.post("/api/messages", json=body | extra)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def delivered(tenant: Tenant, message_id: int, timeout: float = 20) -> dict[str, Any]:
    """The message once the worker is done with it (sent, skipped or failed)."""
    deadline = time.monotonic() + timeout
    while True:
        m = tenant.get(f"/api/messages/{message_id}")
        if m["status"] not in ("queued", "sending"):
            return dict(m)
        assert time.monotonic() < deadline, f"message {message_id} still {m['status']}"
        time.sleep(0.05)


def preview(
    visitor: Visitor, pid: int, tid: int, body: dict[str, Any], csrf: str | None
) -> httpx.Response:
    headers = {"X-CSRF-Token": csrf} if csrf is not None else {}
    return visitor.http.post(f"/p/{pid}/templates/{tid}/preview", json=body, headers=headers)


def new_id(r: httpx.Response) -> int:
    assert r.status_code == 303, f"{r.status_code}\n{r.text[:2000]}"
    return int(r.headers["location"].split("?")[0].rsplit("/", 1)[1])


def editor_form(doc: Node) -> dict[str, str]:
    form = doc.find("form", id="template-form")
    out = {n.attrs["name"]: n.attrs.get("value", "") for n in form.find_all("input")}
    for area in form.find_all("textarea"):
        out[area.attrs["name"]] = "".join(c for c in area.children if isinstance(c, str))
    out.pop("csrf_token")
    return out


def message_rows(doc: Node) -> list[Node]:
    return doc.by_id("message-table").find("tbody").find_all("tr")


def state(tenant: Tenant) -> dict[str, Any]:
    """Everything the email forms can change, as the API sees it."""
    return {
        "templates": tenant.get("/api/templates")["data"],
        "messages": tenant.get("/api/messages")["data"],
        "topics": tenant.get("/api/subscriptions/topics")["data"],
        "suppressions": tenant.get("/api/suppressions")["data"],
        "settings": tenant.get("/api/project/email"),
    }


# -- navigation and roles -----------------------------------------------------------------------


def test_email_pages_are_in_the_navigation_and_members_use_templates_and_messages(
    tenant: Tenant, sign_in_as: SignIn
) -> None:
    pid = tenant.project_id
    member = sign_in_as("member")
    admin = sign_in_as("admin")
    doc = member.page(f"/p/{pid}/templates")
    links = doc.find("nav").links()
    assert f"/p/{pid}/templates" in links
    assert f"/p/{pid}/messages" in links
    settings_like = [f"/p/{pid}/email/{p}" for p in ("settings", "topics", "suppressions")]
    assert not set(settings_like) & set(links)
    (current,) = doc.find("nav").find_all("a", aria_current="page")
    assert current.attrs["href"] == f"/p/{pid}/templates"
    rows = doc.by_id("template-table").find("tbody").find_all("tr")
    assert [r.find("a").text for r in rows] == ["Default layout"]
    assert rows[0].find("span", class_="badge").text == "default"
    messages = member.page(f"/p/{pid}/messages")
    assert messages.find("h1").text == "Messages"
    assert messages.has_id("no-messages")
    assert messages.has_id("outbox-note")  # no SMTP server: the log is the outbox
    for path in settings_like:
        r = member.get(path)
        assert r.status_code == 403, path
        assert "Only owners and admins" in r.text
    # Owners and admins find them where settings live.
    admin_links = admin.page(f"/p/{pid}/customers").find("nav").links()
    assert set(settings_like) <= set(admin_links)
    for path in settings_like:
        doc = admin.page(path)
        (current,) = doc.find("nav").find_all("a", aria_current="page")
        assert current.attrs["href"] == path


# -- templates ----------------------------------------------------------------------------------


def test_new_template_from_a_starter_or_blank_from_the_default_layout(
    tenant: Tenant, owner: Visitor
) -> None:
    pid = tenant.project_id
    doc = owner.page(f"/p/{pid}/templates/new")
    form = doc.find("form", id="template-new")
    assert form.attrs["action"] == f"/p/{pid}/templates"
    assert form.find("input", name="csrf_token").attrs["value"] == owner.csrf()
    starters = [n.attrs["value"] for n in form.find_all("input", name="starter")]
    assert starters == ["", "welcome", "onboarding", "announcement", "receipt", "nps"]
    assert "Greets a new customer" in form.text

    tid = new_id(owner.post(f"/p/{pid}/templates", {"name": "Hello", "starter": "welcome"}))
    editor = owner.page(f"/p/{pid}/templates/{tid}?created=1")
    assert editor.find("h1").text == "Hello"
    assert editor.find(role="status").text == "Template created."
    fields = editor_form(editor)
    saved = tenant.get(f"/api/templates/{tid}")
    assert saved["starter"] == "welcome"
    assert fields == {k: saved[k] for k in ("name", "subject", "preheader", "html", "text")}
    assert "Welcome aboard" in fields["html"]

    blank = new_id(owner.post(f"/p/{pid}/templates", {"name": "Plain", "starter": ""}))
    default = tenant.get("/api/templates")["data"][0]
    assert default["is_default"]
    assert tenant.get(f"/api/templates/{blank}")["html"] == default["html"]

    rows = owner.page(f"/p/{pid}/templates").by_id("template-table").find("tbody").find_all("tr")
    assert [r.find("a").text for r in rows] == ["Default layout", "Hello", "Plain"]
    assert rows[1].find("td", class_="subject").text == saved["subject"]
    assert rows[1].find("a").attrs["href"] == f"/p/{pid}/templates/{tid}"

    # A taken name or an unknown starter: the form again, with the error and the input.
    r = owner.post(f"/p/{pid}/templates", {"name": "Hello", "starter": "nps"})
    assert r.status_code == 409
    doc = parse(r.text)
    assert "already exists" in doc.by_id("form-error").text
    assert doc.find("input", name="name").attrs["value"] == "Hello"
    assert "checked" in doc.find("input", name="starter", value="nps").attrs
    r = owner.post(f"/p/{pid}/templates", {"name": "Other", "starter": "nope"})
    assert r.status_code == 400
    assert "unknown starter" in parse(r.text).by_id("form-error").text
    assert len(tenant.get("/api/templates")["data"]) == 3


def test_the_editor_saves_and_a_syntax_error_shows_its_line_and_changes_nothing(
    tenant: Tenant, owner: Visitor
) -> None:
    pid = tenant.project_id
    tid = api_template(tenant, "Note", subject="Hi {{ customer.first_name }}", html="<p>One</p>")
    doc = owner.page(f"/p/{pid}/templates/{tid}")
    form = doc.find("form", id="template-form")
    assert form.attrs["method"] == "post"
    assert form.attrs["action"] == f"/p/{pid}/templates/{tid}"
    assert form.attrs["data-preview-url"] == f"/p/{pid}/templates/{tid}/preview"
    assert "leave empty to generate" in doc.find("label", for_="template-text").text
    # The saved version's preview, rendered for the sample customer, in a sandboxed frame.
    frame = doc.by_id("preview-frame")
    assert frame.attrs["sandbox"] == ""
    assert "<p>One</p>" in frame.attrs["srcdoc"]
    assert doc.by_id("preview-subject").text == "Hi Ada"
    assert doc.by_id("preview-error").attrs.get("hidden") == ""

    fields = editor_form(doc) | {"subject": "Hello again", "html": "<p>Two</p>", "text": ""}
    r = owner.post(f"/p/{pid}/templates/{tid}", fields)
    assert r.status_code == 303
    assert r.headers["location"] == f"/p/{pid}/templates/{tid}?saved=1"
    saved = tenant.get(f"/api/templates/{tid}")
    assert (saved["subject"], saved["html"], saved["text"], saved["version"]) == (
        "Hello again",
        "<p>Two</p>",
        "",
        2,
    )
    assert owner.follow(r).status_code == 200

    before = tenant.get(f"/api/templates/{tid}")
    bad = fields | {"name": "Renamed", "html": BROKEN_HTML}
    r = owner.post(f"/p/{pid}/templates/{tid}", bad)
    assert r.status_code == 400
    doc = parse(r.text)
    assert doc.by_id("form-error").text == f"Not saved: html: {BROKEN_AT}"
    assert doc.by_id("html-error").text == f"L{BROKEN_AT[1:]}"  # by the field
    html_field = doc.find("textarea", name="html")
    assert html_field.attrs["aria-invalid"] == "true"
    assert editor_form(doc)["html"] == BROKEN_HTML  # the draft is kept for fixing
    assert editor_form(doc)["name"] == "Renamed"
    assert tenant.get(f"/api/templates/{tid}") == before  # not even the new name

    # An empty subject and a taken name are refused the same way.
    r = owner.post(f"/p/{pid}/templates/{tid}", fields | {"subject": ""})
    assert r.status_code == 400
    assert "subject" in parse(r.text).by_id("form-error").text
    r = owner.post(f"/p/{pid}/templates/{tid}", fields | {"name": "Default layout"})
    assert r.status_code == 409
    assert tenant.get(f"/api/templates/{tid}") == before


def test_the_live_preview_renders_a_draft_for_a_customer_and_names_errors(
    tenant: Tenant, owner: Visitor
) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    saved = "Saved {{ customer.first_name }}"
    tid = api_template(tenant, "Preview me", subject=saved, html="<p>Saved</p>")
    # Without script, the editor renders the saved version for a customer given in the query.
    doc = owner.page(f"/p/{pid}/templates/{tid}?customer=grace")
    assert doc.by_id("preview-subject").text == "Saved Grace"
    assert doc.find("form", id="preview-as").attrs["method"] == "get"
    assert doc.find("input", name="customer", id="send-customer").attrs["value"] == "grace"
    doc = owner.page(f"/p/{pid}/templates/{tid}?customer=ghost")
    assert doc.by_id("preview-error").text == "No customer matches."
    assert doc.by_id("preview-frame").attrs["srcdoc"] == ""
    csrf = owner.csrf()
    draft = {"subject": "Hi {{ customer.first_name }}", "html": "<p>Draft {{ customer.email }}</p>"}
    r = preview(owner, pid, tid, draft, csrf)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["subject"] == "Hi Ada"  # the sample customer
    assert "<p>Draft ada@example.com</p>" in body["html"]
    assert body["text"].strip() == "Draft ada@example.com"  # generated: no text part
    for who in (str(grace), "grace", "grace@example.com"):
        body = preview(owner, pid, tid, draft | {"customer": who}, csrf).json()
        assert body["subject"] == "Hi Grace", who
        assert "grace@example.com" in body["html"]

    r = preview(owner, pid, tid, draft | {"html": BROKEN_HTML}, csrf)
    assert r.status_code == 200
    assert r.json()["valid"] is False
    assert r.json()["code"] == "invalid_template"
    assert (r.json()["part"], r.json()["line"], r.json()["column"]) == ("html", 3, 9)
    assert r.json()["message"] == f"html: {BROKEN_AT}"
    r = preview(owner, pid, tid, draft | {"customer": "nobody@example.com"}, csrf)
    assert r.json() == {"valid": False, "code": r.json()["code"], "message": r.json()["message"]}
    assert r.json()["code"] == "customer_not_found"

    for token in (None, "", "forged"):
        r = preview(owner, pid, tid, draft, token)
        assert r.status_code == 403, token
        assert r.json()["code"] == "csrf_failed"
    assert preview(owner, pid, 999_999, draft, csrf).status_code == 404
    assert tenant.get(f"/api/templates/{tid}")["subject"] == saved  # previews save nothing


def test_a_test_send_lands_in_the_outbox_and_its_page_shows_the_email(
    tenant: Tenant, owner: Visitor
) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    html = "<p>Hello {{ customer.first_name }}, <a href='https://example.com/x'>go</a></p>"
    tid = api_template(tenant, "Launch", subject="Launch day {{ customer.first_name }}", html=html)

    r = owner.post(f"/p/{pid}/templates/{tid}/send-test", {"to": "me@example.com"})
    assert r.status_code == 303, r.text
    mid = int(r.headers["location"].split("sent=")[1])
    assert r.headers["location"] == f"/p/{pid}/templates/{tid}?sent={mid}"
    flash = parse(owner.follow(r).text).by_id("sent-flash")
    assert f"/p/{pid}/messages/{mid}" in flash.links()
    sent = delivered(tenant, mid)
    assert (sent["status"], sent["to"], sent["sender"]) == ("sent", "me@example.com", "test")

    r = owner.post(
        f"/p/{pid}/templates/{tid}/send-test", {"to": "grace@example.com", "customer": "grace"}
    )
    as_grace = int(r.headers["location"].split("sent=")[1])
    assert delivered(tenant, as_grace)["subject"] == "Launch day Grace"

    log = owner.page(f"/p/{pid}/messages")
    rows = message_rows(log)
    assert [int(r.attrs["data-message"]) for r in rows] == [as_grace, mid]  # newest first
    assert rows[0].find("td", class_="to").find("a").attrs["href"] == (
        f"/p/{pid}/customers/{grace}"
    )
    row = rows[1]
    assert row.find("td", class_="to").text == "me@example.com"
    # Without a customer a test send renders the sample customer, like the editor's preview.
    assert row.find("td", class_="subject").text == sent["subject"] == "Launch day Ada"
    assert row.find("td", class_="subject").find("a").attrs["href"] == f"/p/{pid}/messages/{mid}"
    assert row.find("span", class_="badge").text == "sent"
    assert row.find("td", class_="sender").text == "test"

    r = owner.get(f"/p/{pid}/messages/{mid}")
    assert r.status_code == 200
    # Reading a message loads no remote image (its open pixel) and follows no link.
    csp = r.headers["content-security-policy"]
    assert f"img-src data: {owner.base_url}/static/;" in csp
    assert "frame-src 'none'" in csp
    doc = parse(r.text)
    assert doc.find("h1").text == "Launch day Ada"
    assert doc.by_id("message-status").text == "sent"
    frame = doc.by_id("message-frame")
    assert frame.attrs["sandbox"] == ""
    assert frame.attrs["srcdoc"] == sent["html"]
    assert "<p>Hello Ada, <a" in frame.attrs["srcdoc"]
    assert doc.by_id("message-text").text == " ".join(sent["text"].split())
    assert "Launch" in doc.by_id("message-details").text
    assert [e["type"] for e in sent["events"]] == [
        li.find("strong").text for li in doc.by_id("message-log").find_all("li")
    ]
    # A refused address: the form again with the error, nothing queued.
    before = tenant.get("/api/messages")["data"]
    r = owner.post(f"/p/{pid}/templates/{tid}/send-test", {"to": "not an address"})
    assert r.status_code == 400
    doc = parse(r.text)
    assert "is not an email address" in doc.by_id("send-error").text
    assert doc.find("input", name="to").attrs["value"] == "not an address"
    r = owner.post(f"/p/{pid}/templates/{tid}/send-test", {"to": "a@b.c", "customer": "ghost"})
    assert r.status_code == 404
    assert parse(r.text).by_id("send-error").text == "No customer matches."
    assert tenant.get("/api/messages")["data"] == before


def test_the_message_log_filters_by_status_and_pages_with_a_cursor(
    tenant: Tenant, owner: Visitor
) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    tid = api_template(tenant, "News", subject="News", html="<p>News</p>")
    sent = [delivered(tenant, api_send(tenant, tid, grace))["id"] for _ in range(2)]
    r = tenant.api.put(f"/api/subscriptions/{grace}", json={"topics": {"broadcasts": False}})
    assert r.status_code == 200, r.text
    skipped = api_send(tenant, tid, grace)
    assert tenant.get(f"/api/messages/{skipped}")["status"] == "skipped"

    rows = message_rows(owner.page(f"/p/{pid}/messages"))
    assert [int(r.attrs["data-message"]) for r in rows] == [skipped, *reversed(sent)]
    status = rows[0].find("td", class_="status")
    assert status.find("span", class_="badge").text == "skipped"
    assert status.find("div", class_="reason").text  # why it was skipped
    assert rows[0].find("td", class_="to").find("a").attrs["href"] == (
        f"/p/{pid}/customers/{grace}"
    )

    doc = owner.page(f"/p/{pid}/messages?status=sent")
    assert doc.find("option", value="sent").attrs.get("selected") == ""
    assert [int(r.attrs["data-message"]) for r in message_rows(doc)] == list(reversed(sent))
    doc = owner.page(f"/p/{pid}/messages?status=bounced")
    assert doc.by_id("no-messages").find("h2").text == "No messages with status bounced"

    first = owner.page(f"/p/{pid}/messages?limit=2")
    assert [int(r.attrs["data-message"]) for r in message_rows(first)] == [skipped, sent[1]]
    older = first.by_id("older").attrs["href"]
    second = owner.page(f"/p/{pid}/messages{older}")
    assert [int(r.attrs["data-message"]) for r in message_rows(second)] == [sent[0]]
    assert not second.has_id("older")
    assert "?limit=2" in second.find("div", class_="pager").links()
    assert owner.get(f"/p/{pid}/messages?cursor=nonsense").status_code == 400

    # The skipped message was never rendered: its page says so, with the decisions.
    doc = owner.page(f"/p/{pid}/messages/{skipped}")
    assert doc.has_id("not-rendered")
    assert not doc.has_id("message-frame")
    assert "subscription" in doc.by_id("decisions").text
    assert owner.get(f"/p/{pid}/messages/999999").status_code == 404


def test_delete_asks_first_and_keeps_the_default_template(tenant: Tenant, owner: Visitor) -> None:
    pid = tenant.project_id
    tid = api_template(tenant, "Short lived")
    default = tenant.get("/api/templates")["data"][0]["id"]
    editor = owner.page(f"/p/{pid}/templates/{tid}")
    assert f"/p/{pid}/templates/{tid}/delete" in editor.links()
    assert (
        f"/p/{pid}/templates/{default}/delete"
        not in owner.page(f"/p/{pid}/templates/{default}").links()
    )
    confirm = owner.page(f"/p/{pid}/templates/{tid}/delete")
    form = confirm.find("form", action=f"/p/{pid}/templates/{tid}/delete")
    assert form.find("button").text == "Yes, delete Short lived"
    r = owner.post(f"/p/{pid}/templates/{tid}/delete")
    assert r.headers["location"] == f"/p/{pid}/templates?deleted=1"
    assert owner.follow(r).status_code == 200
    assert tenant.api.get(f"/api/templates/{tid}").status_code == 404
    r = owner.post(f"/p/{pid}/templates/{default}/delete")
    assert r.status_code == 409
    assert "default template" in parse(r.text).find(role="alert").text
    assert tenant.api.get(f"/api/templates/{default}").status_code == 200


# -- topics, suppressions, settings -------------------------------------------------------------


def test_topics_list_opt_outs_and_are_created_and_deleted(tenant: Tenant, owner: Visitor) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    doc = owner.page(f"/p/{pid}/email/topics")
    rows = {r.attrs["data-topic"]: r for r in doc.by_id("topic-table").find_all("tr")[1:]}
    assert list(rows) == ["automations", "broadcasts"]
    assert all(not r.find_all("form") for r in rows.values())  # built in: no delete

    form = {"key": "product-news", "name": "Product news", "description": "What we ship"}
    r = owner.post(f"/p/{pid}/email/topics", form)
    assert r.headers["location"] == f"/p/{pid}/email/topics?created=1"
    r = tenant.api.put(f"/api/subscriptions/{grace}", json={"topics": {"product-news": False}})
    assert r.status_code == 200, r.text
    doc = owner.page(f"/p/{pid}/email/topics?created=1")
    assert doc.find(role="status").text == "Topic created."
    row = doc.find("tr", data_topic="product-news")
    assert "What we ship" in row.text
    assert row.find("td", class_="count").text == "1"
    assert row.find("form").attrs["action"] == f"/p/{pid}/email/topics/product-news/delete"

    r = owner.post(f"/p/{pid}/email/topics", form)
    assert r.status_code == 409
    assert "already exists" in parse(r.text).by_id("form-error").text
    r = owner.post(f"/p/{pid}/email/topics", {"key": "Bad Key", "name": "x"})
    assert r.status_code == 400
    doc = parse(r.text)
    assert doc.by_id("form-error").text.startswith("key:")
    assert doc.find("input", name="key").attrs["value"] == "Bad Key"

    assert owner.post(f"/p/{pid}/email/topics/product-news/delete").status_code == 303
    keys = [t["key"] for t in tenant.get("/api/subscriptions/topics")["data"]]
    assert keys == ["automations", "broadcasts"]
    r = owner.post(f"/p/{pid}/email/topics/broadcasts/delete")
    assert r.status_code == 409
    assert "built in" in parse(r.text).by_id("form-error").text
    assert owner.post(f"/p/{pid}/email/topics/nope/delete").status_code == 404


def test_suppressions_are_added_by_hand_and_removed(tenant: Tenant, owner: Visitor) -> None:
    pid = tenant.project_id
    assert owner.page(f"/p/{pid}/email/suppressions").has_id("no-suppressions")
    r = owner.post(
        f"/p/{pid}/email/suppressions", {"email": "Gone@Example.com", "note": "asked by phone"}
    )
    assert r.headers["location"] == f"/p/{pid}/email/suppressions?added=1"
    doc = parse(owner.follow(r).text)
    (row,) = doc.by_id("suppression-table").find("tbody").find_all("tr")
    assert row.attrs["data-email"] == "gone@example.com"
    assert row.find("span", class_="badge").text == "manual"
    assert "asked by phone" in row.text
    assert [s["email"] for s in tenant.get("/api/suppressions")["data"]] == ["gone@example.com"]

    r = owner.post(f"/p/{pid}/email/suppressions", {"email": "nope", "note": "n"})
    assert r.status_code == 400
    doc = parse(r.text)
    assert "is not an email address" in doc.by_id("form-error").text
    assert doc.find("input", name="email").attrs["value"] == "nope"

    remove = row.find("form")
    assert remove.attrs["action"] == f"/p/{pid}/email/suppressions/remove"
    email = remove.find("input", name="email").attrs["value"]
    r = owner.post(f"/p/{pid}/email/suppressions/remove", {"email": email})
    assert r.headers["location"] == f"/p/{pid}/email/suppressions?removed=1"
    assert tenant.get("/api/suppressions")["data"] == []
    r = owner.post(f"/p/{pid}/email/suppressions/remove", {"email": email})
    assert r.status_code == 404


def test_email_settings_save_and_a_refused_value_changes_nothing(
    tenant: Tenant, owner: Visitor
) -> None:
    pid = tenant.project_id
    doc = owner.page(f"/p/{pid}/email/settings")
    assert "No SMTP server is set up" in doc.by_id("provider").text
    form = doc.find("form", id="email-settings-form")
    assert form.find("input", name="from_email").attrs["value"] == "tidings@localhost"
    assert "checked" in form.find("input", name="track_opens").attrs

    values = {
        "from_name": "Acme",
        "from_email": "hello@acme.test",
        "reply_to": "support@acme.test",
        "address": "1 Road, Town",
        "cap_count": "3",
        "cap_days": "7",
        "quiet_start": "21:00",
        "quiet_end": "08:00",
        "timezone": "Europe/Paris",
        "track_opens": "1",
    }
    r = owner.post(f"/p/{pid}/email/settings", values)
    assert r.headers["location"] == f"/p/{pid}/email/settings?saved=1"
    saved = tenant.get("/api/project/email")
    assert saved | {"provider": "outbox"} == {
        "from_name": "Acme",
        "from_email": "hello@acme.test",
        "reply_to": "support@acme.test",
        "address": "1 Road, Town",
        "frequency_cap": {"count": 3, "days": 7},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "timezone": "Europe/Paris",
        "track_opens": True,
        "track_clicks": False,
        "provider": "outbox",
    }
    doc = parse(owner.follow(r).text)
    assert doc.find(role="status").text == "Email settings saved."
    assert doc.find("input", name="timezone").attrs["value"] == "Europe/Paris"
    assert "checked" not in doc.find("input", name="track_clicks").attrs

    for bad, message in (
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"quiet_end": ""}, "quiet_end"),
        ({"cap_count": "many"}, "whole number"),
        ({"cap_count": "5000"}, "frequency_cap"),
        ({"reply_to": "not-an-address"}, "is not an email address"),
    ):
        r = owner.post(f"/p/{pid}/email/settings", values | bad)
        assert r.status_code == 400, bad
        doc = parse(r.text)
        assert message in doc.by_id("form-error").text, bad
        assert tenant.get("/api/project/email") == saved, bad
    kept = parse(owner.post(f"/p/{pid}/email/settings", values | {"timezone": "Nowhere"}).text)
    assert kept.find("input", name="timezone").attrs["value"] == "Nowhere"


# -- the profile --------------------------------------------------------------------------------


def test_the_profile_lists_messages_and_subscriptions(tenant: Tenant, owner: Visitor) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    profile = owner.page(f"/p/{pid}/customers/{grace}")
    assert "No emails yet." in profile.find("section", aria_labelledby="messages-h").text
    subs = profile.by_id("customer-subscriptions")
    assert [d.text for d in subs.find_all("dd")] == ["subscribed", "subscribed"]

    tid = api_template(tenant, "Hello", subject="Hello {{ customer.first_name }}")
    mid = delivered(tenant, api_send(tenant, tid, grace))["id"]
    r = tenant.api.put(f"/api/subscriptions/{grace}", json={"topics": {"automations": False}})
    assert r.status_code == 200, r.text
    profile = owner.page(f"/p/{pid}/customers/{grace}")
    (row,) = profile.by_id("customer-messages").find("tbody").find_all("tr")
    assert row.find("a").text == "Hello Grace"
    assert row.find("a").attrs["href"] == f"/p/{pid}/messages/{mid}"
    assert row.find("span", class_="badge").text == "sent"
    section = profile.find("section", aria_labelledby="messages-h")
    everything = f"/p/{pid}/messages?customer_id={grace}"
    assert everything in section.links()
    assert [int(r.attrs["data-message"]) for r in message_rows(owner.page(everything))] == [mid]
    subs = profile.by_id("customer-subscriptions")
    assert subs.find("dd", data_topic="automations").text == "opted out"
    assert subs.find("dd", data_topic="broadcasts").text == "subscribed"
    assert not profile.has_id("unsubscribed-all")


# -- CSRF, other projects, escaping -------------------------------------------------------------


FORMS: dict[str, tuple[str, dict[str, str]]] = {
    "create template": ("templates", {"name": "New", "starter": "welcome"}),
    "save template": ("templates/{tid}", {"name": "X", "subject": "X", "html": "<p>X</p>"}),
    "send test": ("templates/{tid}/send-test", {"to": "me@example.com"}),
    "delete template": ("templates/{tid}/delete", {}),
    "create topic": ("email/topics", {"key": "news", "name": "News"}),
    "delete topic": ("email/topics/custom/delete", {}),
    "suppress": ("email/suppressions", {"email": "x@example.com"}),
    "unsuppress": ("email/suppressions/remove", {"email": "kept@example.com"}),
    "settings": ("email/settings", {"from_name": "Pwned", "timezone": "UTC", "cap_count": "1"}),
}


def test_every_email_form_refuses_a_missing_or_wrong_csrf_token(
    tenant: Tenant, sign_in_as: SignIn
) -> None:
    owner = sign_in_as("owner")
    someone_else = sign_in_as("owner")
    pid = tenant.project_id
    tid = api_template(tenant, "Original")
    assert tenant.api.post(
        "/api/subscriptions/topics", json={"key": "custom", "name": "Custom"}
    ).is_success
    assert tenant.api.post("/api/suppressions", json={"email": "kept@example.com"}).is_success
    before = state(tenant)
    for name, (path, data) in FORMS.items():
        url = f"/p/{pid}/" + path.format(tid=tid)
        for token in (None, "", "forged", someone_else.csrf()):
            r = owner.post(url, data, csrf=token)
            assert r.status_code == 403, f"{name} with csrf_token={token!r}: {r.status_code}"
            assert "expired or did not come from Tidings" in r.text
    assert state(tenant) == before
    for name, (path, data) in FORMS.items():  # the same forms with the token go through
        r = owner.post(f"/p/{pid}/" + path.format(tid=tid), data)
        assert r.status_code == 303, f"{name}: {r.status_code}\n{r.text[:1000]}"


def test_a_user_of_another_project_gets_404s(tenant: Tenant, sign_in_as: SignIn) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    tid = api_template(tenant, "Secret template", subject="Secret subject")
    mid = api_send(tenant, tid, grace)
    other = tenant.server.new_tenant()
    try:
        outsider = sign_in_as("owner", [other.project_id])
        for path in (
            f"/p/{pid}/templates",
            f"/p/{pid}/templates/new",
            f"/p/{pid}/templates/{tid}",
            f"/p/{pid}/templates/{tid}/delete",
            f"/p/{pid}/messages",
            f"/p/{pid}/messages/{mid}",
            f"/p/{pid}/email/topics",
            f"/p/{pid}/email/suppressions",
            f"/p/{pid}/email/settings",
        ):
            r = outsider.get(path)
            assert r.status_code == 404, path
            assert "Secret" not in r.text
        own = other.project_id
        for path in (f"/p/{own}/templates/{tid}", f"/p/{own}/messages/{mid}"):
            r = outsider.get(path)
            assert r.status_code == 404, path
            assert "Secret" not in r.text
        before = state(tenant)
        for path, data in (
            *((f"/p/{pid}/" + p.format(tid=tid), d) for p, d in FORMS.values()),
            (f"/p/{own}/templates/{tid}", FORMS["save template"][1]),
            (f"/p/{own}/templates/{tid}/send-test", {"to": "spy@example.com"}),
            (f"/p/{own}/templates/{tid}/delete", {}),
        ):
            r = outsider.post(path, data)
            assert r.status_code == 404, path
        for project in (pid, own):
            r = preview(outsider, project, tid, {"html": "<p>x</p>"}, outsider.csrf())
            assert r.status_code == 404
            assert "html" not in r.json()
        assert state(tenant) == before
    finally:
        other.close()


def test_signed_out_visitors_are_sent_to_sign_in(tenant: Tenant) -> None:
    pid = tenant.project_id
    for path in (f"/p/{pid}/templates", f"/p/{pid}/messages", f"/p/{pid}/email/settings"):
        r = tenant.http.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    r = tenant.http.post(f"/p/{pid}/templates", data={"name": "x", "csrf_token": "x"})
    assert r.status_code == 303
    assert [t["name"] for t in tenant.get("/api/templates")["data"]] == ["Default layout"]


def test_names_subjects_and_notes_are_escaped(tenant: Tenant, owner: Visitor) -> None:
    grace = seed(tenant)
    pid = tenant.project_id
    tid = api_template(tenant, SCRIPT, subject="{{ data.x }}" + SCRIPT, html=f"<p>{SCRIPT}</p>")
    mid = delivered(tenant, api_send(tenant, tid, grace))["id"]
    assert tenant.api.post(
        "/api/suppressions", json={"email": "x@example.com", "note": SCRIPT}
    ).is_success
    assert tenant.api.post(
        "/api/subscriptions/topics", json={"key": "t", "name": SCRIPT, "description": SCRIPT}
    ).is_success
    for path in (
        f"/p/{pid}/templates",
        f"/p/{pid}/templates/{tid}",
        f"/p/{pid}/templates/{tid}/delete",
        f"/p/{pid}/messages",
        f"/p/{pid}/messages/{mid}",
        f"/p/{pid}/email/topics",
        f"/p/{pid}/email/suppressions",
        f"/p/{pid}/customers/{grace}",
    ):
        r = owner.get(path)
        assert r.status_code == 200, path
        assert "<script>alert" not in r.text, f"unescaped on {path}"
        for node in parse(r.text).find_all("script"):
            assert node.attrs.get("src", "").startswith("/static/"), path
    assert owner.page(f"/p/{pid}/templates/{tid}").find("h1").text == SCRIPT
    assert owner.page(f"/p/{pid}/messages").find("td", class_="subject").text == SCRIPT
