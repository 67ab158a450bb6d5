"""Email through a live `tidings serve` with the outbox provider: templates (CRUD, starters,
syntax checks, previews, the Liquid sandbox), the send gateway (topics, subscriptions,
suppressions, frequency cap, quiet hours, idempotency), provider notifications, topics,
subscriptions, suppressions, settings, the public links in sent emails, project isolation and
segments on email events.

Tests run against the live server of each backend (SQLite, PostgreSQL). Tests of project
settings, topics or project-wide lists get a fresh project (`tenant`); the others share one per
module (`project`) and touch only their own customers and templates. The embedded worker
delivers queued messages within moments, so tests poll, never sleep. The customer's timeline
is GET /api/customers/{id}/events.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.customers.messages import ISO_MS, assert_error, iso
from tests.messaging.helpers import (
    create_template,
    eventually,
    hidden_input,
    hrefs,
    identify,
    link_to,
    message,
    open_pixel,
    parse_iso,
    send_message,
    timeline,
    uid,
    wait_status,
)
from tests.support import LiveServer, Tenant
from tests.web.dom import parse

STARTER_KEYS = {"welcome", "onboarding", "announcement", "receipt", "nps"}
CTA = "https://example.com/start?a=1&b=2"


@pytest.fixture
def other(server: LiveServer) -> Iterator[Tenant]:
    """A second project on the same server."""
    t = server.new_tenant()
    yield t
    t.close()


@pytest.fixture(scope="module")
def project(server: LiveServer) -> Iterator[Tenant]:
    """One project shared by the tests that touch only their own customers and templates;
    tests of project settings, topics or project-wide lists get a fresh `tenant`."""
    t = server.new_tenant()
    yield t
    t.close()


def person(tenant: Tenant, **traits: Any) -> dict[str, Any]:
    """A new customer with an email address (and these traits)."""
    user_id = uid("cust")
    traits.setdefault("email", f"{user_id}@example.com")
    return identify(tenant, user_id, **traits)


def default_template(tenant: Tenant) -> dict[str, Any]:
    data = tenant.get("/api/templates")["data"]
    assert data[0]["is_default"] is True, data
    assert [t["is_default"] for t in data].count(True) == 1, data
    return dict(data[0])


def project_name(tenant: Tenant) -> str:
    return str(tenant.get("/api/project/settings")["name"])


def preview(tenant: Tenant, template_id: int, **body: Any) -> dict[str, Any]:
    r = tenant.api.post(f"/api/templates/{template_id}/preview", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def marketing(tenant: Tenant, template_id: int, customer_id: int, **extra: Any) -> dict[str, Any]:
    body = {"template_id": template_id, "customer_id": customer_id, "topic": "broadcasts"}
    return send_message(tenant, **(body | extra))


def transactional(
    tenant: Tenant, template_id: int, customer_id: int, **extra: Any
) -> dict[str, Any]:
    body = {"template_id": template_id, "customer_id": customer_id, "transactional": True}
    return send_message(tenant, **(body | extra))


def delivered(tenant: Tenant, template_id: int, customer_id: int, **extra: Any) -> dict[str, Any]:
    """A marketing message sent through the outbox (its detail, with html and the link tokens)."""
    m = marketing(tenant, template_id, customer_id, **extra)
    done = wait_status(tenant, m["id"])
    assert done["status"] == "sent", done
    return done


def subscriptions(tenant: Tenant, customer_id: int) -> dict[str, Any]:
    body = tenant.get(f"/api/subscriptions/{customer_id}")
    return {"all": not body["unsubscribed_all"]} | {
        t["key"]: t["subscribed"] for t in body["topics"]
    }


def suppressions(tenant: Tenant, **params: Any) -> dict[str, dict[str, Any]]:
    body = tenant.get("/api/suppressions", **({"limit": 500} | params))
    return {s["email"]: s for s in body["data"]}


def email_settings(tenant: Tenant) -> dict[str, Any]:
    return dict(tenant.get("/api/project/email"))


def patch_settings(tenant: Tenant, **body: Any) -> dict[str, Any]:
    r = tenant.api.patch("/api/project/email", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def event_types(detail: dict[str, Any]) -> list[str]:
    return [e["type"] for e in detail["events"]]


def notify(tenant: Tenant, payload: Any) -> dict[str, Any]:
    r = tenant.api.post("/api/messages/events", json=payload)
    assert r.status_code == 200, r.text
    return dict(r.json())


def settled_after_control(tenant: Tenant, template_id: int, customer_id: int) -> None:
    """Send and deliver a transactional message: the worker has had its chance at earlier ones."""
    control = transactional(tenant, template_id, customer_id)
    assert wait_status(tenant, control["id"])["status"] == "sent"


def at_once(
    tenant: Tenant, method: str, path: str, bodies: list[dict[str, Any] | None]
) -> list[httpx.Response]:
    """One request per body, all sent at the same moment, each on its own connection."""
    start = threading.Barrier(len(bodies))

    def call(body: dict[str, Any] | None) -> httpx.Response:
        auth = {"Authorization": f"Bearer {tenant.secret_key}"}
        with httpx.Client(base_url=tenant.url, headers=auth, timeout=30) as client:
            start.wait()
            return client.request(method, path, json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(call, bodies))


def post_together(tenant: Tenant, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    return at_once(tenant, "POST", "/api/messages", list(bodies))


# -- templates: CRUD and starters -------------------------------------------------------------


def test_template_crud(tenant: Tenant) -> None:
    default = default_template(tenant)
    assert default["starter"] == "default"
    assert default["version"] == 1

    created = create_template(
        tenant, name="Hello", subject="Hi {{ customer.first_name }}", html="<p>One</p>"
    )
    assert created["name"] == "Hello"
    assert created["subject"] == "Hi {{ customer.first_name }}"
    assert created["html"] == "<p>One</p>"
    assert created["text"] == ""
    assert (created["is_default"], created["starter"], created["version"]) == (False, None, 1)
    assert ISO_MS.match(created["created_at"]), created
    tid = created["id"]

    assert tenant.get(f"/api/templates/{tid}") == created
    names = [t["name"] for t in tenant.get("/api/templates")["data"]]
    assert names == [default["name"], "Hello"]

    r = tenant.api.patch(f"/api/templates/{tid}", json={"html": "<p>Two</p>", "name": "Hi"})
    assert r.status_code == 200, r.text
    assert (r.json()["html"], r.json()["name"], r.json()["version"]) == ("<p>Two</p>", "Hi", 2)
    # A rename alone is not a new version of the content.
    r = tenant.api.patch(f"/api/templates/{tid}", json={"name": "Hey"})
    assert (r.status_code, r.json()["version"]) == (200, 2), r.text
    assert tenant.get(f"/api/templates/{tid}")["name"] == "Hey"

    r = tenant.api.delete(f"/api/templates/{tid}")
    assert r.status_code == 204, r.text
    assert_error(tenant.api.get(f"/api/templates/{tid}"), 404, "template_not_found")
    assert_error(tenant.api.delete(f"/api/templates/{tid}"), 404, "template_not_found")
    assert_error(tenant.api.patch(f"/api/templates/{tid}", json={"name": "x"}), 404)
    assert [t["id"] for t in tenant.get("/api/templates")["data"]] == [default["id"]]


def test_deleting_a_used_template_keeps_its_messages(project: Tenant) -> None:
    c = person(project)
    t = create_template(project, subject="Kept")
    sent = wait_status(project, transactional(project, t["id"], c["id"])["id"])
    assert project.api.delete(f"/api/templates/{t['id']}").status_code == 204
    after = message(project, sent["id"])
    assert after["template_id"] is None, after
    assert (after["status"], after["subject"], after["html"]) == ("sent", "Kept", sent["html"])
    assert project.get("/api/messages", template_id=t["id"])["data"] == []


def test_default_template_cannot_be_deleted(tenant: Tenant) -> None:
    default = default_template(tenant)
    assert_error(tenant.api.delete(f"/api/templates/{default['id']}"), 409, "default_template")
    assert default_template(tenant) == default


def test_duplicate_template_name(tenant: Tenant) -> None:
    first = create_template(tenant, name="Weekly")
    second = create_template(tenant, name="Monthly")
    assert_error(tenant.api.post("/api/templates", json={"name": "Weekly"}), 409, "template_exists")
    # Names are compared without surrounding spaces.
    r = tenant.api.post("/api/templates", json={"name": "  Weekly "})
    assert_error(r, 409, "template_exists")
    r = tenant.api.patch(f"/api/templates/{second['id']}", json={"name": "Weekly"})
    assert_error(r, 409, "template_exists")
    assert tenant.get(f"/api/templates/{second['id']}")["name"] == "Monthly"
    # Keeping one's own name is no clash.
    r = tenant.api.patch(f"/api/templates/{first['id']}", json={"name": "Weekly"})
    assert r.status_code == 200, r.text
    assert len(tenant.get("/api/templates")["data"]) == 3


def test_create_from_each_starter(tenant: Tenant) -> None:
    gallery = tenant.get("/api/templates/starters")["data"]
    assert {s["key"] for s in gallery} == STARTER_KEYS
    assert all(s["name"] and s["description"] and s["subject"] for s in gallery), gallery
    layout = default_template(tenant)["html"]
    head = layout.split("<!-- content -->")[0]
    for s in gallery:
        t = create_template(tenant, name=s["name"], starter=s["key"])
        assert (t["starter"], t["subject"], t["text"]) == (s["key"], s["subject"], ""), t
        # The starter's content is poured into the project's layout.
        assert t["html"].startswith(head), t["html"]
        assert "<!-- content -->" in t["html"]
        assert t["html"] != layout
        out = preview(tenant, t["id"])
        assert out["subject"], out
        assert "<body" in out["html"], out
        assert out["text"].strip(), out
    r = tenant.api.post("/api/templates", json={"name": "x", "starter": "nope"})
    assert_error(r, 400, "unknown_starter")
    assert len(tenant.get("/api/templates")["data"]) == 1 + len(STARTER_KEYS)


def test_new_template_starts_from_the_default_layout(tenant: Tenant) -> None:
    default = default_template(tenant)
    plain = create_template(tenant)
    assert plain["html"] == default["html"]
    assert plain["subject"] == default["subject"]
    assert (plain["preheader"], plain["text"]) == (default["preheader"], "")

    # A restyled default layout is what new templates and starters start from.
    restyled = default["html"].replace("<body>", '<body>\n<div class="brand">ACME MAIL</div>')
    assert restyled != default["html"]
    r = tenant.api.patch(f"/api/templates/{default['id']}", json={"html": restyled})
    assert (r.status_code, r.json()["version"]) == (200, 2), r.text
    assert create_template(tenant)["html"] == restyled
    welcome = create_template(tenant, starter="welcome")
    assert "ACME MAIL" in welcome["html"]
    assert "Welcome aboard" in welcome["html"]


def test_concurrent_first_uses_make_one_default_template(tenant: Tenant) -> None:
    # The default layout is created on first use: simultaneous first uses must share it.
    results = at_once(tenant, "GET", "/api/templates", [None] * 4)
    assert [r.status_code for r in results] == [200] * 4, [r.text[:120] for r in results]
    data = tenant.get("/api/templates")["data"]
    assert [t["is_default"] for t in data] == [True], data
    assert {r.json()["data"][0]["id"] for r in results} == {data[0]["id"]}


# -- templates: syntax checks -----------------------------------------------------------------

SYNTAX_ERRORS = [
    ("html", "<p>{% if %}</p>", "html: line 1, column 7: "),
    ("html", "<p>ok</p>\n<p>\n  {{ customer.name </p>", "html: line 3, column 3: "),
    ("html", "<p>\n\n   {% for %}</p>", "html: line 3, column 7: "),
    ("html", "<p>{% endif %}</p>", "html: line 1, column 7: "),
    ("subject", "Hi {{ customer.first_name", "subject: line 1, column 4: "),
    ("text", "a\n{% if %}", "text: line 2, column 4: "),
    ("preheader", "{% endfor %}", "preheader: line 1, column 4: "),
]


def test_syntax_errors_are_refused_with_line_and_column(project: Tenant) -> None:
    saved = create_template(project, name="Good")
    before = project.get("/api/templates")["data"]
    wrong = []
    for part, source, prefix in SYNTAX_ERRORS:
        created = project.api.post("/api/templates", json={"name": "Broken", part: source})
        edited = project.api.patch(
            f"/api/templates/{saved['id']}", json={part: source, "name": "Renamed"}
        )
        for r in (created, edited):
            said = assert_error(r, 400, "invalid_template")["message"]
            if not said.startswith(prefix):
                wrong.append((part, source, said))
    assert wrong == [], f"expected other positions: {wrong}"
    assert project.get("/api/templates")["data"] == before


def test_unclosed_block_reports_a_real_position(project: Tenant) -> None:
    source = "{% if true %}\n<p>x</p>"
    r = project.api.post("/api/templates", json={"name": "Broken", "html": source})
    body = assert_error(r, 400, "invalid_template")
    m = re.match(r"html: line (\d+), column (-?\d+): ", body["message"])
    assert m is not None, body
    line, column = int(m.group(1)), int(m.group(2))
    lines = source.split("\n")
    # A position in the source: a line that exists, a column on it (or just past its end).
    assert 1 <= line <= len(lines), body
    assert 1 <= column <= len(lines[line - 1]) + 1, body


def test_unknown_filter_is_refused_at_save(project: Tenant) -> None:
    r = project.api.post(
        "/api/templates", json={"name": "F", "html": "<p>{{ 'x' | nofilter }}</p>"}
    )
    body = assert_error(r, 400, "invalid_template")
    assert body["message"].startswith("html: line 1, column 13: "), body
    assert "nofilter" in body["message"]
    t = create_template(project)
    r = project.api.patch(f"/api/templates/{t['id']}", json={"subject": "{{ 1 | bogus }}"})
    assert "bogus" in assert_error(r, 400, "invalid_template")["message"]
    assert project.get(f"/api/templates/{t['id']}") == t
    names = [x["name"] for x in project.get("/api/templates")["data"]]
    assert "F" not in names


def test_unknown_filter_in_an_untaken_branch_is_refused_at_save(project: Tenant) -> None:
    # Sends are lenient about unknown filters, so a typo in a branch the sample customer does
    # not take would go out silently: the save must find it without rendering that branch.
    branch = "{% if customer.plan == 'pro' %}{{ customer.first_name | upcas }}{% endif %}"
    name = uid("typo")
    for part in ("subject", "html"):
        r = project.api.post("/api/templates", json={"name": name, part: branch})
        assert "upcas" in assert_error(r, 400, "invalid_template")["message"], part
    assert name not in [x["name"] for x in project.get("/api/templates")["data"]]


def test_missing_variables_render_their_default_or_nothing(project: Tenant) -> None:
    c = person(project)
    t = create_template(
        project,
        subject="Hello {{ customer.nickname | default: 'friend' }}",
        html="<p>[{{ data.missing | default: 'fallback' }}][{{ customer.nickname }}]"
        "[{{ event.properties.nothing.deeper }}]</p>",
    )
    m = transactional(project, t["id"], c["id"])
    done = wait_status(project, m["id"])
    assert done["status"] == "sent", done
    assert done["subject"] == "Hello friend"
    assert "<p>[fallback][][]</p>" in done["html"], done["html"]
    assert "[fallback][][]" in done["text"]


# -- templates: previews and rendering --------------------------------------------------------


def test_preview_for_a_chosen_customer(project: Tenant) -> None:
    ann = person(project, first_name="Ann", plan="pro")
    t = create_template(
        project,
        subject="Hi {{ customer.first_name }} from {{ project.name }}",
        preheader="Your {{ customer.plan }} plan",
        html="<html><body><p>Dear {{ customer.first_name }} ({{ customer.email }}), "
        "{{ data.offer }} {{ event.properties.order_id }}</p></body></html>",
    )
    out = preview(
        project,
        t["id"],
        customer_id=ann["id"],
        data={"offer": "20% off"},
        event={"properties": {"order_id": "A-17"}},
    )
    assert out["subject"] == f"Hi Ann from {project_name(project)}"
    assert f"Dear Ann ({ann['email']}), 20% off A-17" in out["html"]
    assert "Your pro plan" in out["html"]
    assert f"Dear Ann ({ann['email']}), 20% off A-17" in out["text"]
    # Without a customer: the sample one.
    sample = preview(project, t["id"])
    assert sample["subject"].startswith("Hi Ada from ")
    assert "Dear Ada (ada@example.com)" in sample["html"]
    r = project.api.post(f"/api/templates/{t['id']}/preview", json={"customer_id": 10**12})
    assert_error(r, 404, "customer_not_found")
    assert_error(project.api.post("/api/templates/999999999/preview", json={}), 404)


def test_preview_of_an_unsaved_draft(project: Tenant) -> None:
    t = create_template(project, subject="Saved", html="<p>Saved body</p>")
    out = preview(project, t["id"], subject="Draft {{ customer.first_name }}")
    assert out["subject"] == "Draft Ada"
    assert "Saved body" in out["html"]
    out = preview(project, t["id"], html="<p>Draft body {{ data.n | plus: 1 }}</p>", data={"n": 1})
    assert out["subject"] == "Saved"
    assert "Draft body 2" in out["html"]
    assert "Saved body" not in out["html"]
    # A broken draft is refused like a save, and nothing is saved either way.
    r = project.api.post(f"/api/templates/{t['id']}/preview", json={"html": "<p>{% if %}</p>"})
    assert assert_error(r, 400, "invalid_template")["message"].startswith("html: line 1, column 7")
    assert project.get(f"/api/templates/{t['id']}") == t


def test_text_part_is_generated_from_html_when_empty(project: Tenant) -> None:
    html = (
        "<html><head><style>p { color: red }</style><title>T</title></head><body>"
        "<h1>Big news</h1><p>Read <a href='https://example.com/news'>the post</a> today.</p>"
        "<ul><li>One</li><li>Two</li></ul></body></html>"
    )
    t = create_template(project, html=html)
    assert t["text"] == ""
    text = preview(project, t["id"])["text"]
    assert "Big news" in text
    assert "Read the post (https://example.com/news) today." in text
    assert {"- One", "- Two"} <= set(text.splitlines()), text
    assert "color" not in text, text
    assert "<" not in text, text
    # A written text part is used as it is.
    r = project.api.patch(
        f"/api/templates/{t['id']}", json={"text": "Plain {{ customer.first_name }}"}
    )
    assert r.status_code == 200, r.text
    assert preview(project, t["id"])["text"] == "Plain Ada\n"


def test_css_is_inlined_and_the_preheader_comes_first(project: Tenant) -> None:
    t = create_template(project, starter="welcome")
    html = preview(project, t["id"])["html"]
    doc = parse(html)
    card = doc.find("div", class_="card")
    assert "max-width: 600px" in card.attrs.get("style", ""), card.attrs
    assert "display: inline-block" in doc.find("a", class_="button").attrs.get("style", "")
    # The preheader is the first thing in the body, hidden.
    body = doc.find("body")
    first = next(child for child in body.children if not isinstance(child, str))
    assert first.tag == "div", first
    assert "display:none" in first.attrs["style"]
    assert first.text == "Everything you need to get started."
    # Without a preheader there is no hidden block.
    r = project.api.patch(f"/api/templates/{t['id']}", json={"preheader": ""})
    assert r.status_code == 200, r.text
    assert "Everything you need" not in preview(project, t["id"])["html"]


# -- the Liquid sandbox -----------------------------------------------------------------------


def test_traits_are_html_escaped_in_the_html_part(project: Tenant) -> None:
    evil = "<script>alert(1)</script>"
    c = person(project, first_name=evil, site='" onmouseover="alert(2)')
    t = create_template(
        project,
        preheader="Hey {{ customer.first_name }}",
        html="<html><body><p>Hi {{ customer.first_name }}</p>"
        '<a href="https://example.com/?s={{ customer.site }}">x</a></body></html>',
    )
    for html in (
        preview(project, t["id"], customer_id=c["id"])["html"],
        wait_status(project, transactional(project, t["id"], c["id"])["id"])["html"],
    ):
        assert "<script" not in html, html
        assert '" onmouseover=' not in html, html
        assert "Hi &lt;script&gt;alert(1)&lt;/script&gt;" in html, html
        assert "Hey &lt;script&gt;" in html, html
        (link,) = parse(html).find_all("a")
        assert set(link.attrs) <= {"href", "style"}, link.attrs


def test_liquid_in_traits_is_not_evaluated(project: Tenant) -> None:
    tricky = "{{ project.name }} {% raw %}x{% endraw %} {% assign a = 1 %}"
    c = person(project, first_name=tricky)
    t = create_template(
        project,
        subject="Hi {{ customer.first_name }}",
        html="<html><body><p>Hi {{ customer.first_name }}</p></body></html>",
    )
    name = project_name(project)
    out = preview(project, t["id"], customer_id=c["id"])
    done = wait_status(project, transactional(project, t["id"], c["id"])["id"])
    for subject, html, text in (
        (out["subject"], out["html"], out["text"]),
        (done["subject"], done["html"], done["text"]),
    ):
        assert subject == f"Hi {tricky}"
        assert f"<p>Hi {tricky}</p>" in html, html
        assert text.strip() == f"Hi {tricky}"
        assert name not in subject + html + text


INCLUDES = [
    "{% include 'x' %}",
    "{% render 'x' %}",
    "{% include '/etc/passwd' %}",
    "{% render '../../../../etc/hostname' %}",
    "{% include customer.first_name %}",
]


def test_include_and_render_are_refused(project: Tenant) -> None:
    t = create_template(project, html="<p>Safe</p>")
    before = project.get("/api/templates")["data"]
    for tag in INCLUDES:
        r = project.api.post("/api/templates", json={"name": "Inc", "html": f"<p>{tag}</p>"})
        assert_error(r, 400, "invalid_template")
        r = project.api.patch(f"/api/templates/{t['id']}", json={"text": tag})
        assert_error(r, 400, "invalid_template")
        r = project.api.post(f"/api/templates/{t['id']}/preview", json={"html": f"<p>{tag}</p>"})
        assert_error(r, 400, "invalid_template")
    assert project.get("/api/templates")["data"] == before


def test_python_internals_render_empty(project: Tenant) -> None:
    c = person(project, first_name="Ann")
    probes = [
        "customer.__class__",
        "customer.__class__.__name__",
        "customer.keys",
        "customer.items",
        "customer.__dict__",
        "customer.get",
        "project.__class__.__mro__",
        "data.__init__.__globals__",
    ]
    html = "".join(f"<p>[{{{{ {p} }}}}]</p>" for p in probes)
    t = create_template(project, html=f"<html><body>{html}</body></html>")
    out = preview(project, t["id"], customer_id=c["id"])
    done = wait_status(project, transactional(project, t["id"], c["id"])["id"])
    for rendered in (out["html"], done["html"]):
        found = re.findall(r"<p>\[(.*?)\]</p>", rendered)
        assert found == [""] * len(probes), found


# -- the gateway ------------------------------------------------------------------------------


def test_send_is_queued_then_sent_through_the_outbox(project: Tenant) -> None:
    c = person(project, first_name="Ann")
    t = create_template(project, subject="Hi {{ customer.first_name }}")
    m = marketing(project, t["id"], c["id"])
    assert (m["status"], m["reason"], m["sender"], m["topic"]) == (
        "queued",
        None,
        "api",
        "broadcasts",
    )
    assert (m["customer_id"], m["template_id"], m["to"], m["transactional"]) == (
        c["id"],
        t["id"],
        c["email"],
        False,
    )
    assert m["decisions"] == [
        {"check": "subscription", "result": "pass", "detail": "subscribed to 'broadcasts'"},
        {"check": "suppression", "result": "pass", "detail": ""},
    ]
    assert (m["sent_at"], m["attempts"]) == (None, 0)

    done = wait_status(project, m["id"])
    assert done["status"] == "sent", done
    assert (done["subject"], done["attempts"], done["reason"]) == ("Hi Ann", 1, None)
    assert ISO_MS.match(done["sent_at"]), done
    assert done["header_id"].startswith(f"<{m['id']}."), done
    assert "<p>Hi Ann,</p>" in done["html"]
    assert "Hi Ann," in done["text"]
    assert event_types(done) == ["queued", "sent"]
    assert done["events"][1]["data"] == {"provider": "outbox"}

    (event,) = timeline(project, c["id"], "Email Delivered")
    assert event["type"] == "track"
    assert event["properties"] == {
        "email_id": str(m["id"]),
        "email_subject": "Hi Ann",
        "template_id": t["id"],
        "topic": "broadcasts",
        "sender": "api",
        "transactional": False,
    }
    listed = project.get("/api/messages", customer_id=c["id"])["data"]
    assert [(x["id"], x["status"]) for x in listed] == [(m["id"], "sent")]
    assert [x["id"] for x in project.get(f"/api/customers/{c['id']}/messages")["data"]] == [m["id"]]


def test_message_log_filters_and_cursor(tenant: Tenant) -> None:
    ann, bob = person(tenant), person(tenant)
    t1, t2 = create_template(tenant), create_template(tenant)
    ids = [
        marketing(tenant, t1["id"], ann["id"])["id"],
        marketing(tenant, t2["id"], ann["id"])["id"],
        transactional(tenant, t1["id"], bob["id"])["id"],
    ]
    for mid in ids:
        assert wait_status(tenant, mid)["status"] == "sent"

    def page_ids(**params: Any) -> list[int]:
        got: list[int] = []
        cursor = None
        for _ in range(10):
            body = tenant.get(
                "/api/messages", limit=2, **params, **({"cursor": cursor} if cursor else {})
            )
            assert len(body["data"]) <= 2
            got += [m["id"] for m in body["data"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return got
        raise AssertionError("the cursor never ends")

    assert page_ids() == ids[::-1]
    assert page_ids(customer_id=ann["id"]) == ids[1::-1]
    assert page_ids(template_id=t1["id"]) == [ids[2], ids[0]]
    assert page_ids(status="sent", sender="api") == ids[::-1]
    assert page_ids(status="skipped") == []
    assert page_ids(sender="test") == []
    assert_error(tenant.api.get("/api/messages", params={"limit": 0}), 422)


def test_marketing_needs_a_known_topic(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    body = {"template_id": t["id"], "customer_id": c["id"]}
    assert_error(project.api.post("/api/messages", json=body), 400, "topic_required")
    r = project.api.post("/api/messages", json=body | {"topic": ""})
    assert_error(r, 400, "topic_required")
    r = project.api.post("/api/messages", json=body | {"topic": "nope"})
    assert_error(r, 404, "topic_not_found")
    r = project.api.post("/api/messages", json=body | {"topic": "broadcasts", "template_id": 10**9})
    assert_error(r, 404, "template_not_found")
    r = project.api.post("/api/messages", json=body | {"topic": "broadcasts", "customer_id": 10**9})
    assert_error(r, 404, "customer_not_found")
    r = project.api.post("/api/messages", json=body | {"topic": "broadcasts", "on_cap": "later"})
    assert_error(r, 422)
    assert project.get(f"/api/customers/{c['id']}/messages")["data"] == []


def test_transactional_bypasses_topics(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    r = project.api.put(
        f"/api/subscriptions/{c['id']}",
        json={"topics": {"broadcasts": False, "automations": False}, "unsubscribed_all": True},
    )
    assert r.status_code == 200, r.text
    m = transactional(project, t["id"], c["id"])
    assert (m["status"], m["topic"], m["transactional"]) == ("queued", None, True)
    assert m["decisions"][0] == {
        "check": "subscription",
        "result": "bypass",
        "detail": "transactional",
    }
    done = wait_status(project, m["id"])
    assert done["status"] == "sent", done
    (event,) = timeline(project, c["id"], "Email Delivered")
    assert event["properties"]["transactional"] is True


def test_unsubscribed_from_the_topic_is_skipped(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    r = project.api.put(f"/api/subscriptions/{c['id']}", json={"topics": {"broadcasts": False}})
    assert r.status_code == 200, r.text
    assert subscriptions(project, c["id"]) == {
        "all": True,
        "broadcasts": False,
        "automations": True,
    }

    m = marketing(project, t["id"], c["id"])
    assert m["status"] == "skipped", m
    assert m["reason"] == "unsubscribed from 'broadcasts'", m
    assert m["decisions"] == [{"check": "subscription", "result": "skip", "detail": m["reason"]}]
    other_topic = marketing(project, t["id"], c["id"], topic="automations")
    assert other_topic["status"] == "queued", other_topic

    assert wait_status(project, other_topic["id"])["status"] == "sent"
    settled_after_control(project, t["id"], c["id"])
    skipped = message(project, m["id"])
    assert (skipped["status"], skipped["sent_at"], skipped["html"]) == ("skipped", None, None)
    assert event_types(skipped) == ["skipped"]
    delivered_ids = {
        e["properties"]["email_id"] for e in timeline(project, c["id"], "Email Delivered")
    }
    assert str(m["id"]) not in delivered_ids
    assert len(delivered_ids) == 2


def test_unsubscribed_from_all_blocks_marketing_not_transactional(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    r = project.api.put(f"/api/subscriptions/{c['id']}", json={"unsubscribed_all": True})
    assert r.status_code == 200, r.text
    assert r.json()["unsubscribed_all"] is True
    for topic in ("broadcasts", "automations"):
        m = marketing(project, t["id"], c["id"], topic=topic)
        assert (m["status"], m["reason"]) == ("skipped", "unsubscribed from all marketing email"), m
    receipt = transactional(project, t["id"], c["id"])
    assert receipt["status"] == "queued"
    assert wait_status(project, receipt["id"])["status"] == "sent"
    assert len(project.get("/api/messages", status="skipped", customer_id=c["id"])["data"]) == 2
    # Subscribing again lets marketing through.
    r = project.api.put(f"/api/subscriptions/{c['id']}", json={"unsubscribed_all": False})
    assert r.status_code == 200, r.text
    assert marketing(project, t["id"], c["id"])["status"] == "queued"


def test_suppressed_address_is_skipped_for_every_kind_of_email(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    r = project.api.post("/api/suppressions", json={"email": c["email"].upper(), "note": "asked"})
    assert r.status_code == 201, r.text
    for m in (marketing(project, t["id"], c["id"]), transactional(project, t["id"], c["id"])):
        assert (m["status"], m["reason"]) == ("skipped", "address suppressed (manual)"), m
        assert m["decisions"][-1] == {
            "check": "suppression",
            "result": "skip",
            "detail": "address suppressed (manual)",
        }
    r = project.api.delete(f"/api/suppressions/{c['email']}")
    assert r.status_code == 204, r.text
    m = transactional(project, t["id"], c["id"])
    assert wait_status(project, m["id"])["status"] == "sent"
    assert len(timeline(project, c["id"], "Email Delivered")) == 1


def test_frequency_cap_defers_or_skips_marketing(tenant: Tenant) -> None:
    s = patch_settings(tenant, frequency_cap={"count": 2, "days": 7})
    assert s["frequency_cap"] == {"count": 2, "days": 7}
    c, d = person(tenant), person(tenant)
    t = create_template(tenant)
    first = marketing(tenant, t["id"], c["id"])
    second = marketing(tenant, t["id"], c["id"], topic="automations")
    assert (first["status"], second["status"]) == ("queued", "queued")
    assert first["decisions"][2] == {
        "check": "frequency_cap",
        "result": "pass",
        "detail": "0 of 2 in 7 days",
    }
    assert second["decisions"][2]["detail"] == "1 of 2 in 7 days"

    skipped = marketing(tenant, t["id"], c["id"], on_cap="skip")
    assert skipped["status"] == "skipped", skipped
    assert skipped["decisions"][-1]["check"] == "frequency_cap"
    assert "7 days" in skipped["reason"], skipped

    deferred = marketing(tenant, t["id"], c["id"])
    assert deferred["status"] == "deferred", deferred
    assert deferred["decisions"][-1]["check"] == "frequency_cap"
    assert deferred["decisions"][-1]["result"] == "defer"
    # The window opens again when the oldest counted email is 7 days old.
    assert deferred["send_after"] == iso(parse_iso(first["created_at"]) + timedelta(days=7))

    # Transactional email does not count and is never capped; other customers have their own.
    receipt = transactional(tenant, t["id"], c["id"])
    assert receipt["status"] == "queued"
    assert all(x["check"] != "frequency_cap" for x in receipt["decisions"])
    assert marketing(tenant, t["id"], d["id"])["status"] == "queued"

    settled_after_control(tenant, t["id"], d["id"])
    assert wait_status(tenant, receipt["id"])["status"] == "sent"
    assert message(tenant, deferred["id"])["status"] == "deferred"
    assert message(tenant, skipped["id"])["status"] == "skipped"


def quiet_window(tz: str) -> tuple[dict[str, str], datetime]:
    """Quiet hours around the current time in `tz`, and when they end (UTC)."""
    local = datetime.now(ZoneInfo(tz))
    end = (local + timedelta(hours=2)).replace(second=0, microsecond=0)
    start = (local - timedelta(hours=1)).strftime("%H:%M")
    return {"start": start, "end": end.strftime("%H:%M")}, end.astimezone(UTC)


def test_quiet_hours_defer_marketing_until_the_window_ends(tenant: Tenant) -> None:
    window, ends = quiet_window("Asia/Tokyo")
    assert patch_settings(tenant, quiet_hours=window)["quiet_hours"] == window
    tokyo = person(tenant, timezone="Asia/Tokyo")
    new_york = person(tenant, timezone="America/New_York")
    nowhere = person(tenant)  # the project's time zone: UTC
    bogus = person(tenant, timezone="Mars/Olympus_Mons")  # falls back to the project's
    t = create_template(tenant)

    m = marketing(tenant, t["id"], tokyo["id"])
    assert m["status"] == "deferred", m
    assert m["send_after"] == iso(ends), (m, window)
    assert m["decisions"][-1]["check"] == "quiet_hours"
    assert m["decisions"][-1]["result"] == "defer"
    assert "Asia/Tokyo" in m["decisions"][-1]["detail"]
    assert m["reason"], m

    for c, zone in ((new_york, "America/New_York"), (nowhere, "UTC"), (bogus, "UTC")):
        out = marketing(tenant, t["id"], c["id"])
        assert out["status"] == "queued", (zone, out)
        assert out["decisions"][-1] == {"check": "quiet_hours", "result": "pass", "detail": zone}
    receipt = transactional(tenant, t["id"], tokyo["id"])
    assert receipt["status"] == "queued"

    # In the project's time zone, customers without one of their own wait too.
    patch_settings(tenant, timezone="Asia/Tokyo")
    later = marketing(tenant, t["id"], nowhere["id"])
    assert (later["status"], later["send_after"]) == ("deferred", iso(ends)), later

    assert wait_status(tenant, receipt["id"])["status"] == "sent"
    assert message(tenant, m["id"])["status"] == "deferred"
    assert timeline(tenant, tokyo["id"], "Email Delivered")[0]["properties"]["email_id"] == str(
        receipt["id"]
    )
    assert len(timeline(tenant, tokyo["id"], "Email Delivered")) == 1


def test_decisions_are_recorded_in_order(tenant: Tenant) -> None:
    window, _ = quiet_window("Asia/Tokyo")
    patch_settings(tenant, frequency_cap={"count": 5, "days": 3}, quiet_hours=window)
    c = person(tenant, timezone="Asia/Tokyo")
    t = create_template(tenant)
    m = marketing(tenant, t["id"], c["id"])
    assert [(d["check"], d["result"]) for d in m["decisions"]] == [
        ("subscription", "pass"),
        ("suppression", "pass"),
        ("frequency_cap", "pass"),
        ("quiet_hours", "defer"),
    ]
    assert message(tenant, m["id"])["decisions"] == m["decisions"]
    receipt = transactional(tenant, t["id"], c["id"])
    assert [(d["check"], d["result"]) for d in receipt["decisions"]] == [
        ("subscription", "bypass"),
        ("suppression", "pass"),
    ]


def test_idempotency_key_returns_the_same_message(project: Tenant, other: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    first = marketing(project, t["id"], c["id"], idempotency_key="order-1")
    again = marketing(project, t["id"], c["id"], idempotency_key="order-1")
    assert again["id"] == first["id"]
    assert again["created_at"] == first["created_at"]
    different = marketing(project, t["id"], c["id"], idempotency_key="order-2")
    assert different["id"] != first["id"]
    assert wait_status(project, first["id"])["status"] == "sent"
    assert wait_status(project, different["id"])["status"] == "sent"
    # Once sent, the same key still sends nothing.
    assert marketing(project, t["id"], c["id"], idempotency_key="order-1")["id"] == first["id"]
    ids = [m["id"] for m in project.get("/api/messages", customer_id=c["id"])["data"]]
    assert sorted(ids) == sorted([first["id"], different["id"]])
    assert len(timeline(project, c["id"], "Email Delivered")) == 2
    # Keys belong to a project.
    oc, ot = person(other), create_template(other)
    theirs = marketing(other, ot["id"], oc["id"], idempotency_key="order-1")
    assert theirs["id"] != first["id"]


def test_concurrent_sends_with_one_idempotency_key_make_one_message(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    marketing(project, t["id"], c["id"])  # the project's topics and settings exist
    body = {"template_id": t["id"], "customer_id": c["id"], "topic": "broadcasts"}
    results = post_together(project, [body | {"idempotency_key": "same"}] * 8)
    assert [r.status_code for r in results] == [201] * 8, [r.text[:120] for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert len(project.get("/api/messages", customer_id=c["id"])["data"]) == 2


def test_concurrent_first_sends_of_a_new_project(tenant: Tenant) -> None:
    # Topics and email settings are created on first use: simultaneous first uses must not
    # collide.
    people = [person(tenant) for _ in range(4)]
    t = create_template(tenant)
    bodies = [
        {"template_id": t["id"], "customer_id": c["id"], "topic": "broadcasts"} for c in people
    ]
    results = post_together(tenant, bodies)
    assert [r.status_code for r in results] == [201] * 4, [r.text[:120] for r in results]
    assert len(tenant.get("/api/messages")["data"]) == 4


# -- provider notifications -------------------------------------------------------------------


def test_hard_bounce_suppresses_and_marks_the_message(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    out = notify(
        project,
        {
            "type": "bounce",
            "email": c["email"].upper(),
            "bounce_type": "hard",
            "message_id": sent["id"],
        },
    )
    assert out == {"accepted": 1, "suppressed": [c["email"]], "ignored": 0}
    listed = suppressions(project, reason="hard_bounce")
    assert c["email"] in listed
    assert listed[c["email"]]["message_id"] == sent["id"]
    assert listed[c["email"]]["reason"] == "hard_bounce"

    bounced = message(project, sent["id"])
    assert bounced["status"] == "bounced", bounced
    assert event_types(bounced) == ["queued", "sent", "bounced"]
    (event,) = timeline(project, c["id"], "Email Bounced")
    assert event["properties"]["email_id"] == str(sent["id"])
    # Never sent to again, whatever the kind of email.
    for m in (marketing(project, t["id"], c["id"]), transactional(project, t["id"], c["id"])):
        assert (m["status"], m["reason"]) == ("skipped", "address suppressed (hard_bounce)"), m


def test_hard_bounce_by_address_alone(project: Tenant) -> None:
    c = person(project)
    out = notify(project, [{"type": "bounce", "email": c["email"]}])  # hard unless told
    assert out == {"accepted": 1, "suppressed": [c["email"]], "ignored": 0}
    assert suppressions(project)[c["email"]]["message_id"] is None


def test_soft_bounce_does_not_suppress(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    out = notify(
        project,
        {"type": "bounce", "email": c["email"], "bounce_type": "soft", "message_id": sent["id"]},
    )
    assert out == {"accepted": 1, "suppressed": [], "ignored": 0}
    assert c["email"] not in suppressions(project)
    after = message(project, sent["id"])
    assert after["status"] == "sent", after
    assert after["events"][-1]["type"] == "bounced"
    assert after["events"][-1]["data"] == {"hard": False}
    again = marketing(project, t["id"], c["id"])
    assert again["status"] == "queued", again


def test_complaint_suppresses_and_marks_spam(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    out = notify(project, {"type": "complaint", "email": c["email"], "message_id": sent["id"]})
    assert out == {"accepted": 1, "suppressed": [c["email"]], "ignored": 0}
    assert suppressions(project)[c["email"]]["reason"] == "complaint"
    assert c["email"] in suppressions(project, reason="complaint")
    assert c["email"] not in suppressions(project, reason="hard_bounce")
    after = message(project, sent["id"])
    assert after["status"] == "complained", after
    (event,) = timeline(project, c["id"], "Email Marked as Spam")
    assert event["properties"]["email_id"] == str(sent["id"])
    assert transactional(project, t["id"], c["id"])["reason"] == "address suppressed (complaint)"


def test_unsubscribe_notification_for_a_message(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    out = notify(project, {"type": "unsubscribe", "email": c["email"]})  # no message: no topic
    assert out == {"accepted": 0, "suppressed": [], "ignored": 1}
    out = notify(project, {"type": "unsubscribe", "message_id": sent["id"]})
    assert out == {"accepted": 1, "suppressed": [], "ignored": 0}
    assert subscriptions(project, c["id"]) == {
        "all": True,
        "broadcasts": False,
        "automations": True,
    }
    assert ISO_MS.match(message(project, sent["id"])["unsubscribed_at"] or "")
    (event,) = timeline(project, c["id"], "Unsubscribed")
    assert (event["properties"]["topic"], event["properties"]["source"]) == ("broadcasts", "mailto")
    assert c["email"] not in suppressions(project)


def sns(notification: dict[str, Any]) -> dict[str, Any]:
    """An Amazon SES notification as SNS posts it."""
    return {
        "Type": "Notification",
        "MessageId": "5c0e5f2a-0000-4000-8000-000000000000",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
        "Message": json.dumps(notification),
        "Timestamp": "2024-05-01T12:00:00.000Z",
    }


def test_ses_notifications_in_their_sns_envelope(project: Tenant) -> None:
    ann, bob, cat = person(project), person(project), person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], ann["id"])
    header = sent["header_id"].strip("<>")
    bounce = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": ann["email"]}],
        },
        "mail": {"messageId": header, "destination": [ann["email"]]},
    }
    assert notify(project, sns(bounce)) == {
        "accepted": 1,
        "suppressed": [ann["email"]],
        "ignored": 0,
    }
    assert message(project, sent["id"])["status"] == "bounced"
    assert len(timeline(project, ann["id"], "Email Bounced")) == 1

    transient = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Transient",
            "bouncedRecipients": [{"emailAddress": bob["email"]}],
        },
        "mail": {"messageId": "ses-unknown"},
    }
    assert notify(project, sns(transient)) == {"accepted": 1, "suppressed": [], "ignored": 0}
    complaint = {
        "notificationType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": cat["email"]}]},
        "mail": {"messageId": "ses-unknown"},
    }
    assert notify(project, sns(complaint)) == {
        "accepted": 1,
        "suppressed": [cat["email"]],
        "ignored": 0,
    }
    delivery = {"notificationType": "Delivery", "mail": {"messageId": header}}
    assert notify(project, sns(delivery)) == {"accepted": 0, "suppressed": [], "ignored": 1}
    got = suppressions(project)
    emails = {ann["email"], bob["email"], cat["email"]}
    assert {e: s["reason"] for e, s in got.items() if e in emails} == {
        ann["email"]: "hard_bounce",
        cat["email"]: "complaint",
    }


BAD_NOTIFICATIONS: list[Any] = [
    42,
    "bounce",
    [1],
    None,
    {"type": "bounce", "bounce_type": "hard"},
    {"type": "complaint", "email": ""},
    [{"type": "bounce", "email": "first@example.com"}, "second"],
    [{"type": "complaint", "email": "first@example.com"}, {"type": "bounce"}],
    {"Type": "Notification", "Message": "not json"},
]


def test_bad_notifications_change_nothing(project: Tenant) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    before = suppressions(project)
    for payload in BAD_NOTIFICATIONS:
        r = project.api.post(
            "/api/messages/events",
            content=json.dumps(payload),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, (payload, r.text)
        assert_error(r, 400, "bad_notification")
    assert suppressions(project) == before
    assert "first@example.com" not in before
    assert message(project, sent["id"]) == sent
    assert timeline(project, c["id"], "Email Bounced") == []


# -- topics, subscriptions, suppressions ------------------------------------------------------


def test_topics_crud(tenant: Tenant) -> None:
    topics = tenant.get("/api/subscriptions/topics")["data"]
    assert [(x["key"], x["builtin"], x["unsubscribed"]) for x in topics] == [
        ("automations", True, 0),
        ("broadcasts", True, 0),
    ]
    r = tenant.api.post(
        "/api/subscriptions/topics",
        json={"key": "product-news", "name": "Product news", "description": "What shipped"},
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "key": "product-news",
        "name": "Product news",
        "description": "What shipped",
        "builtin": False,
        "unsubscribed": 0,
    }
    r = tenant.api.post("/api/subscriptions/topics", json={"key": "product-news", "name": "Again"})
    assert_error(r, 409, "topic_exists")
    for bad in ("Product News", "-news", "news!", "a" * 65, "émoi"):
        r = tenant.api.post("/api/subscriptions/topics", json={"key": bad, "name": "x"})
        assert r.status_code in (400, 422), (bad, r.text)
        if len(bad) <= 64:
            assert_error(r, 400, "bad_topic")
    r = tenant.api.patch("/api/subscriptions/topics/product-news", json={"name": "Releases"})
    assert (r.status_code, r.json()["name"], r.json()["description"]) == (
        200,
        "Releases",
        "What shipped",
    ), r.text
    r = tenant.api.patch("/api/subscriptions/topics/broadcasts", json={"description": "News"})
    assert (r.status_code, r.json()["builtin"], r.json()["description"]) == (200, True, "News")
    assert_error(
        tenant.api.patch("/api/subscriptions/topics/nope", json={"name": "x"}),
        404,
        "topic_not_found",
    )

    c = person(tenant)
    r = tenant.api.put(f"/api/subscriptions/{c['id']}", json={"topics": {"product-news": False}})
    assert r.status_code == 200, r.text
    counts = {x["key"]: x["unsubscribed"] for x in tenant.get("/api/subscriptions/topics")["data"]}
    assert counts == {"automations": 0, "broadcasts": 0, "product-news": 1}
    t = create_template(tenant)
    assert marketing(tenant, t["id"], c["id"], topic="product-news")["status"] == "skipped"

    for builtin in ("broadcasts", "automations"):
        r = tenant.api.delete(f"/api/subscriptions/topics/{builtin}")
        assert_error(r, 409, "builtin_topic")
    assert tenant.api.delete("/api/subscriptions/topics/product-news").status_code == 204
    assert_error(
        tenant.api.delete("/api/subscriptions/topics/product-news"), 404, "topic_not_found"
    )
    keys = [x["key"] for x in tenant.get("/api/subscriptions/topics")["data"]]
    assert keys == ["automations", "broadcasts"]
    r = tenant.api.post(
        "/api/messages",
        json={"template_id": t["id"], "customer_id": c["id"], "topic": "product-news"},
    )
    assert_error(r, 404, "topic_not_found")
    # The deleted topic's choices went with it.
    assert "product-news" not in subscriptions(tenant, c["id"])
    assert tenant.get("/api/subscriptions", topic="product-news")["data"] == []


def test_subscriptions_list_with_cursor(tenant: Tenant) -> None:
    people = [person(tenant) for _ in range(3)]
    for c in people:
        r = tenant.api.put(
            f"/api/subscriptions/{c['id']}",
            json={"topics": {"broadcasts": False, "automations": True}},
        )
        assert r.status_code == 200, r.text
    r = tenant.api.put(f"/api/subscriptions/{people[0]['id']}", json={"unsubscribed_all": True})
    assert r.json()["unsubscribed_all"] is True

    def listed(**params: Any) -> list[tuple[int, str, bool]]:
        out: list[tuple[int, str, bool]] = []
        cursor = None
        for _ in range(20):
            body = tenant.get(
                "/api/subscriptions", limit=2, **params, **({"cursor": cursor} if cursor else {})
            )
            assert len(body["data"]) <= 2, body
            for row in body["data"]:
                assert row["source"] == "api", row
                assert ISO_MS.match(row["updated_at"]), row
            out += [(s["customer_id"], s["topic"], s["subscribed"]) for s in body["data"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return out
        raise AssertionError("the cursor never ends")

    everything = listed()
    assert len(everything) == len(set(everything)) == 7
    assert set(everything) == {
        (c["id"], topic, topic == "automations")
        for c in people
        for topic in ("broadcasts", "automations")
    } | {(people[0]["id"], "*", False)}
    assert {(cid, topic) for cid, topic, _ in listed(topic="broadcasts")} == {
        (c["id"], "broadcasts") for c in people
    }
    assert {x[0] for x in listed(subscribed=True)} == {c["id"] for c in people}
    assert all(x[1] == "automations" for x in listed(subscribed=True))

    # Unknown topics are refused before anything changes.
    r = tenant.api.put(
        f"/api/subscriptions/{people[1]['id']}",
        json={"topics": {"automations": False, "nope": False}},
    )
    assert_error(r, 400, "topic_not_found")
    assert subscriptions(tenant, people[1]["id"])["automations"] is True
    assert_error(tenant.api.get("/api/subscriptions/999999999"), 404, "customer_not_found")


def test_suppressions_add_list_delete(tenant: Tenant) -> None:
    r = tenant.api.post(
        "/api/suppressions", json={"email": "Some.One@Example.COM", "note": "asked"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["email"], body["reason"], body["note"], body["message_id"]) == (
        "some.one@example.com",
        "manual",
        "asked",
        None,
    )
    assert ISO_MS.match(body["created_at"]), body
    for email in ("b@example.com", "a@example.com"):
        assert tenant.api.post("/api/suppressions", json={"email": email}).status_code == 201
    first = tenant.get("/api/suppressions", limit=2)
    assert [s["email"] for s in first["data"]] == ["a@example.com", "b@example.com"]
    rest = tenant.get("/api/suppressions", limit=2, cursor=first["next_cursor"])
    assert [s["email"] for s in rest["data"]] == ["some.one@example.com"]
    assert rest["next_cursor"] is None
    assert set(suppressions(tenant, reason="manual")) == {
        "a@example.com",
        "b@example.com",
        "some.one@example.com",
    }

    assert tenant.api.delete("/api/suppressions/SOME.ONE@example.com").status_code == 204
    assert_error(
        tenant.api.delete("/api/suppressions/some.one@example.com"), 404, "suppression_not_found"
    )
    assert set(suppressions(tenant)) == {"a@example.com", "b@example.com"}
    for bad in ("not-an-email", "nobody@", "@example.com", "a b@example.com"):
        r = tenant.api.post("/api/suppressions", json={"email": bad})
        assert_error(r, 400, "bad_address")
    assert set(suppressions(tenant)) == {"a@example.com", "b@example.com"}


# -- settings ---------------------------------------------------------------------------------


def test_email_settings_defaults_and_changes(tenant: Tenant) -> None:
    s = email_settings(tenant)
    assert s == {
        "from_name": "Tidings",
        "from_email": "tidings@localhost",
        "reply_to": None,
        "address": "",
        "frequency_cap": {"count": 0, "days": 7},
        "quiet_hours": None,
        "timezone": "UTC",
        "track_opens": True,
        "track_clicks": True,
        "provider": "outbox",
    }
    changed = patch_settings(
        tenant,
        from_name="Acme",
        from_email="news@acme.example",
        reply_to="help@acme.example",
        address="1 Main St, Springfield",
        frequency_cap={"count": 3, "days": 14},
        quiet_hours={"start": "21:00", "end": "08:00"},
        timezone="Europe/Paris",
        track_opens=False,
    )
    assert changed == s | {
        "from_name": "Acme",
        "from_email": "news@acme.example",
        "reply_to": "help@acme.example",
        "address": "1 Main St, Springfield",
        "frequency_cap": {"count": 3, "days": 14},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "timezone": "Europe/Paris",
        "track_opens": False,
    }
    assert email_settings(tenant) == changed
    off = patch_settings(tenant, quiet_hours=None, frequency_cap={"count": 0, "days": 7})
    assert (off["quiet_hours"], off["frequency_cap"]) == (None, {"count": 0, "days": 7})
    # The footer address reaches templates.
    out = preview(tenant, default_template(tenant)["id"])
    assert "1 Main St, Springfield" in out["html"]


BAD_SETTINGS: list[dict[str, Any]] = [
    {"timezone": "Mars/Olympus_Mons"},
    {"timezone": ""},
    {"timezone": "../../etc/passwd"},
    {"quiet_hours": {"start": "21:00"}},
    {"quiet_hours": {"end": "08:00"}},
    {"quiet_hours": {"start": "25:00", "end": "08:00"}},
    {"quiet_hours": {"start": "9pm", "end": "08:00"}},
    {"quiet_hours": {"start": "21:00", "end": "8:00"}},
    {"quiet_hours": {"start": "21:00", "end": "21:00"}},
    {"from_email": "not an address"},
    {"from_email": "news@"},
    {"reply_to": "nobody"},
    {"frequency_cap": {"count": -1, "days": 7}},
    {"frequency_cap": {"count": 2, "days": 0}},
]


def test_bad_settings_change_nothing(tenant: Tenant) -> None:
    before = email_settings(tenant)
    for bad in BAD_SETTINGS:
        r = tenant.api.patch(
            "/api/project/email", json={"from_name": "Changed", "track_clicks": False} | bad
        )
        assert r.status_code == 400, (bad, r.text)
        assert_error(r, 400, "bad_setting")
        assert email_settings(tenant) == before, bad
    # Quiet hours already on: giving only one end is still refused.
    patch_settings(tenant, quiet_hours={"start": "21:00", "end": "08:00"})
    r = tenant.api.patch("/api/project/email", json={"quiet_hours": {"start": "22:00"}})
    assert_error(r, 400, "bad_setting")
    assert email_settings(tenant)["quiet_hours"] == {"start": "21:00", "end": "08:00"}


# -- public links in sent emails --------------------------------------------------------------


def linked_message(tenant: Tenant) -> tuple[dict[str, Any], dict[str, Any]]:
    """A customer and a delivered marketing email: a call to action, footer links, a pixel."""
    c = person(tenant, first_name="Ann")
    t = create_template(tenant, starter="welcome")
    return c, delivered(tenant, t["id"], c["id"], data={"cta_url": CTA})


def test_tracking_can_be_turned_off(tenant: Tenant) -> None:
    patch_settings(tenant, track_opens=False, track_clicks=False)
    _, sent = linked_message(tenant)
    assert "/email/open/" not in sent["html"]
    assert CTA in hrefs(sent["html"])
    assert not [h for h in hrefs(sent["html"]) if "/email/click/" in h]
    # The footer's own links stay.
    assert link_to(sent["html"], "/email/unsubscribe/").startswith(tenant.url)


def test_open_pixel_records_the_first_open(project: Tenant) -> None:
    c, sent = linked_message(project)
    pixel = open_pixel(sent["html"])
    assert pixel.startswith(f"{project.url}/email/open/{sent['id']}."), pixel
    assert sent["opened_at"] is None

    r = project.http.get(pixel)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif"
    assert r.content.startswith(b"GIF8")
    assert "no-store" in r.headers["cache-control"]
    opened = message(project, sent["id"])
    assert ISO_MS.match(opened["opened_at"] or ""), opened
    assert event_types(opened)[-1] == "opened"
    (event,) = timeline(project, c["id"], "Email Opened")
    assert event["properties"]["email_id"] == str(sent["id"])

    # Later loads and forged pixels change nothing (and still show a GIF).
    assert project.http.get(pixel).status_code == 200
    forged = pixel.replace(f"/open/{sent['id']}.", f"/open/{sent['id']}.x")
    for url in (
        forged,
        f"{project.url}/email/open/{sent['id']}.AAAA.gif",
        f"{project.url}/email/open/junk.gif",
    ):
        r = project.http.get(url)
        assert (r.status_code, r.headers["content-type"]) == (200, "image/gif"), url
    assert message(project, sent["id"])["opened_at"] == opened["opened_at"]
    assert len(timeline(project, c["id"], "Email Opened")) == 1


def test_click_redirects_to_the_original_address(project: Tenant) -> None:
    c, sent = linked_message(project)
    click = link_to(sent["html"], "/email/click/")
    assert click.startswith(f"{project.url}/email/click/{sent['id']}/"), click
    assert CTA not in hrefs(sent["html"])
    # Footer links are not tracked.
    assert link_to(sent["html"], "/email/unsubscribe/").startswith(
        f"{project.url}/email/unsubscribe/"
    )

    r = project.http.get(click)
    assert r.status_code == 302, r.text
    assert r.headers["location"] == CTA
    after = message(project, sent["id"])
    assert ISO_MS.match(after["clicked_at"] or ""), after
    assert after["opened_at"] is not None  # a click proves the open
    (event,) = timeline(project, c["id"], "Email Link Clicked")
    assert event["properties"]["link_url"] == CTA
    assert event["properties"]["email_id"] == str(sent["id"])
    assert len(timeline(project, c["id"], "Email Opened")) == 1


def test_tampered_click_links_are_refused(project: Tenant) -> None:
    c, sent = linked_message(project)
    click = link_to(sent["html"], "/email/click/")
    path, _, _ = click.partition("?")
    sig = path.rsplit("/", 1)[1]
    other_sig = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    tampered = [
        (path, {"url": "https://evil.example/"}),
        (path, {"url": CTA + "&c=3"}),
        (path, {}),
        (path.replace(f"/{sig}", f"/{other_sig}"), {"url": CTA}),
        (path.replace(f"/click/{sent['id']}/", f"/click/{sent['id'] + 1000}/"), {"url": CTA}),
    ]
    for url, params in tampered:
        r = project.http.get(url, params=params)
        assert r.status_code == 404, (url, params, r.status_code)
        assert "location" not in r.headers, r.headers
    after = message(project, sent["id"])
    assert (after["clicked_at"], after["opened_at"]) == (None, None)
    assert timeline(project, c["id"], "Email Link Clicked") == []


def test_unsubscribe_page_then_one_click(project: Tenant) -> None:
    c, sent = linked_message(project)
    url = link_to(sent["html"], "/email/unsubscribe/")
    page = project.http.get(url)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    doc = parse(page.text)
    assert doc.find("button").text == "Unsubscribe"
    assert c["email"] in doc.text
    # Looking at the page (or a scanner prefetching it) changes nothing.
    assert subscriptions(project, c["id"]) == {"all": True, "broadcasts": True, "automations": True}
    assert message(project, sent["id"])["unsubscribed_at"] is None
    # A form post needs the page's token.
    assert project.http.post(url, data={}).status_code == 400
    assert project.http.post(url, data={"form_token": "1.abc"}).status_code == 400
    assert subscriptions(project, c["id"])["broadcasts"] is True

    r = project.http.post(url, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200, r.text
    assert subscriptions(project, c["id"]) == {
        "all": True,
        "broadcasts": False,
        "automations": True,
    }
    after = message(project, sent["id"])
    assert ISO_MS.match(after["unsubscribed_at"] or ""), after
    (event,) = timeline(project, c["id"], "Unsubscribed")
    assert (event["properties"]["topic"], event["properties"]["source"]) == (
        "broadcasts",
        "one_click",
    )
    t = sent["template_id"]
    assert marketing(project, t, c["id"])["status"] == "skipped"
    assert marketing(project, t, c["id"], topic="automations")["status"] == "queued"
    # Forged tokens are refused.
    assert project.http.get(url + "x").status_code == 404
    assert project.http.post(url + "x", data={"List-Unsubscribe": "One-Click"}).status_code == 404


def test_unsubscribe_button_with_the_page_token(project: Tenant) -> None:
    c, sent = linked_message(project)
    url = link_to(sent["html"], "/email/unsubscribe/")
    token = hidden_input(project.http.get(url).text, "form_token")
    r = project.http.post(url, data={"form_token": token})
    assert r.status_code == 200, r.text
    assert "You are unsubscribed" in r.text
    assert subscriptions(project, c["id"])["broadcasts"] is False
    (event,) = timeline(project, c["id"], "Unsubscribed")
    assert event["properties"]["source"] == "link"


def test_preferences_page_needs_its_form_token(project: Tenant) -> None:
    c, sent = linked_message(project)
    url = link_to(sent["html"], "/email/preferences/")
    assert url.startswith(f"{project.url}/email/preferences/"), url
    page = project.http.get(url)
    assert page.status_code == 200, page.text
    doc = parse(page.text)
    boxes = {n.attrs["name"]: "checked" in n.attrs for n in doc.find_all("input", type="checkbox")}
    assert boxes == {"topic_automations": True, "topic_broadcasts": True, "unsubscribe_all": False}
    token = hidden_input(page.text, "form_token")

    choice = {"topic_automations": "on"}
    for form in (choice, choice | {"form_token": ""}, choice | {"form_token": token + "x"}):
        r = project.http.post(url, data=form)
        assert r.status_code == 400, (form, r.status_code)
    assert subscriptions(project, c["id"]) == {"all": True, "broadcasts": True, "automations": True}

    r = project.http.post(url, data=choice | {"form_token": token})
    assert r.status_code == 200, r.text
    assert "Your preferences are saved." in r.text
    assert subscriptions(project, c["id"]) == {
        "all": True,
        "broadcasts": False,
        "automations": True,
    }
    assert ISO_MS.match(message(project, sent["id"])["unsubscribed_at"] or "")
    rows = project.get("/api/subscriptions", limit=500)["data"]
    sources = {s["topic"]: s["source"] for s in rows if s["customer_id"] == c["id"]}
    assert sources["broadcasts"] == "link"

    r = project.http.post(
        url,
        data={
            "unsubscribe_all": "on",
            "topic_automations": "on",
            "topic_broadcasts": "on",
            "form_token": token,
        },
    )
    assert r.status_code == 200, r.text
    assert subscriptions(project, c["id"]) == {
        "all": False,
        "broadcasts": True,
        "automations": True,
    }
    assert project.http.get(url.replace("/preferences/", "/preferences/9")).status_code == 404


# -- project isolation ------------------------------------------------------------------------


def test_another_project_cannot_use_templates_messages_or_customers(
    project: Tenant, other: Tenant
) -> None:
    c = person(project)
    t = create_template(project)
    sent = delivered(project, t["id"], c["id"])
    mine_c, mine_t = person(other), create_template(other)
    tid, cid, mid = t["id"], c["id"], sent["id"]

    assert_error(other.api.get(f"/api/templates/{tid}"), 404, "template_not_found")
    assert_error(
        other.api.patch(f"/api/templates/{tid}", json={"name": "x"}), 404, "template_not_found"
    )
    assert_error(other.api.delete(f"/api/templates/{tid}"), 404, "template_not_found")
    assert_error(
        other.api.post(f"/api/templates/{tid}/preview", json={}), 404, "template_not_found"
    )
    r = other.api.post(f"/api/templates/{tid}/send-test", json={"to": "qa@example.com"})
    assert_error(r, 404, "template_not_found")
    assert tid not in [x["id"] for x in other.get("/api/templates")["data"]]

    assert_error(other.api.get(f"/api/messages/{mid}"), 404, "message_not_found")
    assert other.get("/api/messages")["data"] == []
    r = other.api.post(
        "/api/messages",
        json={"template_id": tid, "customer_id": mine_c["id"], "topic": "broadcasts"},
    )
    assert_error(r, 404, "template_not_found")
    r = other.api.post(
        "/api/messages",
        json={"template_id": mine_t["id"], "customer_id": cid, "topic": "broadcasts"},
    )
    assert_error(r, 404, "customer_not_found")
    r = other.api.post(
        "/api/messages",
        json={"template_id": mine_t["id"], "customer_id": cid, "transactional": True},
    )
    assert_error(r, 404, "customer_not_found")
    r = other.api.post(f"/api/templates/{mine_t['id']}/preview", json={"customer_id": cid})
    assert_error(r, 404, "customer_not_found")
    r = other.api.post(
        f"/api/templates/{mine_t['id']}/send-test",
        json={"to": "qa@example.com", "customer_id": cid},
    )
    assert_error(r, 404, "customer_not_found")
    assert_error(other.api.get(f"/api/subscriptions/{cid}"), 404, "customer_not_found")
    r = other.api.put(f"/api/subscriptions/{cid}", json={"unsubscribed_all": True})
    assert_error(r, 404, "customer_not_found")
    assert_error(other.api.get(f"/api/customers/{cid}/messages"), 404, "customer_not_found")
    # Notifications naming another project's message touch only the caller's project.
    notify(other, {"type": "bounce", "message_id": mid, "bounce_type": "hard"})
    notify(other, {"type": "complaint", "email": c["email"], "message_id": mid})
    assert message(project, mid) == sent
    assert c["email"] not in suppressions(project)
    assert subscriptions(project, cid)["all"] is True
    assert [x["id"] for x in other.get("/api/messages")["data"]] == []
    assert marketing(project, tid, cid)["status"] == "queued"


# -- send-test --------------------------------------------------------------------------------


def test_send_test_goes_to_any_address_without_tracking(project: Tenant) -> None:
    c = person(project, first_name="Ann")
    t = create_template(project, subject="Hi {{ customer.first_name | default: 'you' }}")
    r = project.api.post(
        f"/api/templates/{t['id']}/send-test", json={"to": "qa@example.com", "customer_id": c["id"]}
    )
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["sender"], m["to"], m["transactional"], m["status"]) == (
        "test",
        "qa@example.com",
        True,
        "queued",
    )
    done = wait_status(project, m["id"])
    assert (done["status"], done["subject"]) == ("sent", "Hi Ann"), done
    assert "/email/open/" not in done["html"]
    settled_after_control(project, t["id"], c["id"])
    assert len(timeline(project, c["id"], "Email Delivered")) == 1  # the control only
    r = project.api.post(f"/api/templates/{t['id']}/send-test", json={"to": "nobody"})
    assert_error(r, 400, "bad_address")


# -- segments on email events -----------------------------------------------------------------


def test_segment_on_email_opened_picks_up_opens(tenant: Tenant) -> None:
    c, sent = linked_message(tenant)
    bystander = person(tenant)
    r = tenant.api.post(
        "/api/segments",
        json={"name": "Openers", "rules": {"event": "Email Opened", "op": "performed"}},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    def computed() -> dict[str, Any] | None:
        body = dict(tenant.get(f"/api/segments/{sid}"))
        return body if body["status"] == "ready" else None

    ready = eventually(computed, "the segment to be computed")
    assert ready["member_count"] == 0, ready

    assert tenant.http.get(open_pixel(sent["html"])).status_code == 200

    def members() -> list[int]:
        return [m["id"] for m in tenant.get(f"/api/segments/{sid}/customers")["data"]]

    assert eventually(members, "the opener to join the segment") == [c["id"]]
    assert bystander["id"] not in members()
    names = [s["name"] for s in tenant.get(f"/api/customers/{c['id']}/segments")["data"]]
    assert names == ["Openers"]
