"""Email through a real SMTP server: what arrives (headers, MIME parts, inlined CSS, tracked
links, RFC 8058 one-click unsubscribe), what never arrives (suppressed, capped, quiet hours,
unsubscribed), how the server's refusals are recorded, and that a worker killed mid-batch
neither loses nor duplicates an email.

The server is aiosmtpd in this process (tests/messaging/smtp_sink.py); each received email is
parsed with the standard library's `email` package. Each backend gets its own database and
live server: every worker delivers every project's due email, so a server on a shared
database (the session's outbox `server`) would take these emails and "deliver" them to its
outbox instead.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest

from tests.cli_support import scratch_database, stop
from tests.customers.messages import identify
from tests.messaging.smtp_sink import Received, Sink
from tests.support import TIDINGS, LiveServer, Tenant, server_env, start_server
from tidings.messaging import providers
from tidings.templates.starters import CONTENT_END, CONTENT_START

T = TypeVar("T")

MAIL_FROM = "Acme <hello@acme.test>"
PRICING = "https://example.com/pricing?plan=pro"
CONTENT = """<p>Hi {{ customer.first_name }},</p>
<p>You are on the {{ customer.plan }} plan.</p>
<p><a class="button" href="https://example.com/pricing?plan={{ customer.plan }}">See pricing</a></p>
"""
UNSETTLED = ("queued", "sending")


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Mail:
    """A live server whose worker delivers to `sink`."""

    server: LiveServer
    sink: Sink


@pytest.fixture(scope="module")
def mail(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mail]:
    workdir = tmp_path_factory.mktemp("smtp")
    with scratch_database(backend, workdir) as url, Sink() as sink:
        live = start_server(url, workdir, TIDINGS_SMTP_URL=sink.url, TIDINGS_MAIL_FROM=MAIL_FROM)
        try:
            yield Mail(live, sink)
        finally:
            live.stop()


@pytest.fixture
def project(mail: Mail) -> Iterator[Tenant]:
    """A new project on the SMTP server."""
    t = mail.server.new_tenant()
    yield t
    t.close()


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: int
    email: str


def people(tenant: Tenant, *traits: dict[str, Any]) -> list[Person]:
    """One customer with a fresh address per traits dict (identified in one batch)."""
    users = [(f"u-{uuid.uuid4().hex[:10]}", t) for t in traits]
    tenant.send([identify(u, {"email": f"{u}@example.test", **t}) for u, t in users])
    return [Person(int(tenant.customer(user_id=u)["id"]), f"{u}@example.test") for u, _ in users]


def person(tenant: Tenant, **traits: Any) -> Person:
    (p,) = people(tenant, {"name": "Grace Hopper", "plan": "free", **traits})
    return p


def template(tenant: Tenant, content: str = CONTENT) -> int:
    """A template in the project's default layout (its <style> included)."""
    default = next(t for t in tenant.get("/api/templates")["data"] if t["is_default"])
    html = default["html"]
    start, end = html.index(CONTENT_START) + len(CONTENT_START), html.index(CONTENT_END)
    r = tenant.api.post(
        "/api/templates",
        json={
            "name": f"t-{uuid.uuid4().hex[:8]}",
            "subject": "Hello {{ customer.first_name }}",
            "html": html[:start] + "\n" + content + html[end:],
        },
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def send(
    tenant: Tenant,
    template_id: int,
    customer_id: int,
    *,
    topic: str | None = "broadcasts",
    **kw: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"template_id": template_id, "customer_id": customer_id, **kw}
    if topic is not None:
        body["topic"] = topic
    r = tenant.api.post("/api/messages", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def email_settings(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    r = tenant.api.patch("/api/project/email", json=changes)
    assert r.status_code == 200, r.text
    return dict(r.json())


def eventually(check: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def message(tenant: Tenant, message_id: int) -> dict[str, Any]:
    return dict(tenant.get(f"/api/messages/{message_id}"))


def settled(tenant: Tenant, message_id: int) -> dict[str, Any]:
    """The message once the worker has dealt with it (not queued or sending)."""

    def check() -> dict[str, Any] | None:
        m = message(tenant, message_id)
        return m if m["status"] not in UNSETTLED else None

    return eventually(check, f"message {message_id} to leave the queue")


def delivered(mail: Mail, tenant: Tenant, template_id: int, to: Person, **kw: Any) -> Received:
    """Send one email to `to`, wait for it in the sink and for the message to be sent."""
    m = send(tenant, template_id, to.id, **kw)
    assert m["status"] == "queued", m

    def arrived() -> list[Received]:
        return [r for r in mail.sink.to(to.email) if r.message_id == m["id"]]

    (got,) = eventually(arrived, f"message {m['id']} in the sink")
    assert settled(tenant, m["id"])["status"] == "sent"
    assert len(arrived()) == 1
    return got


def assert_nothing_arrives(mail: Mail, tenant: Tenant, blocked: Person, already: int = 0) -> None:
    """A later control email to another customer arrives (so the worker ran past the blocked
    one); the blocked address got nothing more than `already`."""
    control = person(tenant)
    delivered(mail, tenant, template(tenant), control)
    assert len(mail.sink.to(blocked.email)) == already


def parts(msg: EmailMessage) -> tuple[str, str]:
    """(text, html) of a multipart/alternative email with exactly those two parts."""
    assert msg.get_content_type() == "multipart/alternative"
    inner = list(msg.iter_parts())
    assert [p.get_content_type() for p in inner] == ["text/plain", "text/html"]
    text, html = (p.get_content() for p in inner)
    assert isinstance(text, str)
    assert isinstance(html, str)
    return text, html


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(html: str, tag: str) -> list[dict[str, str]]:
    """The attributes of every `tag` element (entities decoded)."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return [attrs for t, attrs in parser.found if t == tag]


def list_unsubscribe(msg: EmailMessage) -> list[str]:
    value = msg["List-Unsubscribe"]
    assert value is not None, "no List-Unsubscribe header"
    return re.findall(r"<([^>]+)>", str(value))


def raw_header(content: bytes, name: str) -> str | None:
    """A header as it is on the wire, unfolded (no decoding of RFC 2047 encoded-words)."""
    head = re.split(rb"\r?\n\r?\n", content, maxsplit=1)[0]
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", head).decode("ascii")
    for line in re.split(r"\r?\n", unfolded):
        key, _, value = line.partition(":")
        if key.lower() == name.lower():
            return value.strip()
    return None


def style_of(attrs: dict[str, str]) -> str:
    return "".join(attrs.get("style", "").split())


def clicked_url(href: str) -> str:
    """The destination a click-tracking link redirects to (its url parameter)."""
    (url,) = parse_qs(urlsplit(href).query)["url"]
    return url


def with_url(href: str, url: str) -> str:
    parts_ = urlsplit(href)
    return urlunsplit(parts_._replace(query=urlencode({"url": url})))


# -- one marketing email, read by several tests -------------------------------------------------


@dataclass
class Sent:
    tenant: Tenant
    ada: Person
    message: dict[str, Any]
    received: Received


@pytest.fixture(scope="module")
def sent(mail: Mail) -> Iterator[Sent]:
    """A marketing email to Ada (plan pro) from a project with a Reply-To."""
    tenant = mail.server.new_tenant()
    try:
        email_settings(tenant, reply_to="support@acme.test")
        (ada,) = people(tenant, {"name": "Ada Lovelace", "plan": "pro"})
        got = delivered(mail, tenant, template(tenant), ada)
        yield Sent(tenant, ada, message(tenant, got.message_id), got)
    finally:
        tenant.close()


def test_marketing_email_headers(sent: Sent) -> None:
    msg, m = sent.received.message(), sent.message
    assert sent.received.mail_from == "hello@acme.test"
    assert sent.received.rcpt_tos == (sent.ada.email,)
    assert parseaddr(str(msg["From"])) == ("Acme", "hello@acme.test")
    assert parseaddr(str(msg["Reply-To"])) == ("", "support@acme.test")
    assert parseaddr(str(msg["To"])) == ("", sent.ada.email)
    assert str(msg["Subject"]) == "Hello Ada" == m["subject"]
    assert m["header_id"]
    assert str(msg["Message-ID"]) == m["header_id"]
    assert re.fullmatch(r"<[^<>@\s]+@acme\.test>", m["header_id"]), m["header_id"]
    assert str(msg["X-Tidings-Message"]) == str(m["id"])
    date = parsedate_to_datetime(str(msg["Date"]))
    assert date.tzinfo is not None
    assert abs(datetime.now(UTC) - date) < timedelta(minutes=5)
    assert (m["status"], m["attempts"], m["to"]) == ("sent", 1, sent.ada.email)
    assert m["sent_at"] is not None

    http, mailto = list_unsubscribe(msg)
    server = urlsplit(sent.tenant.url)
    target = urlsplit(http)
    assert (target.scheme, target.netloc) == (server.scheme, server.netloc)
    assert target.path.startswith("/email/unsubscribe/")
    token = target.path.rsplit("/", 1)[1]
    assert mailto == f"mailto:unsubscribe@acme.test?subject=unsubscribe%20{token}"
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"


def test_list_unsubscribe_is_plain_on_the_wire(sent: Sent) -> None:
    """Mail providers read List-Unsubscribe raw (RFC 2369 URLs in angle brackets): a folded
    line is fine, an RFC 2047 encoded-word (=?utf-8?q?...?=) hides the mailto from them."""
    raw = raw_header(sent.received.content, "List-Unsubscribe")
    assert raw is not None
    http, mailto = list_unsubscribe(sent.received.message())
    assert "=?" not in raw, raw
    assert re.sub(r"\s+", " ", raw) == f"<{http}>, <{mailto}>"


def test_mime_parts_inlined_css_and_personalisation(sent: Sent) -> None:
    msg = sent.received.message()
    assert msg["MIME-Version"] == "1.0"
    text, html = parts(msg)

    # The layout's <style> rules are on the elements themselves.
    (button,) = [a for a in elements(html, "a") if "button" in a.get("class", "").split()]
    assert "display:inline-block" in style_of(button)
    assert "background:#3b4cca" in style_of(button)
    (card,) = [d for d in elements(html, "div") if d.get("class") == "card"]
    assert "max-width:600px" in style_of(card)
    (body,) = elements(html, "body")
    assert "margin:0" in style_of(body)

    for part in (html, text):
        assert "Hi Ada," in part
        assert "You are on the pro plan." in part
        assert "{{" not in part
        assert "{%" not in part
    # Plain text keeps every link's address (the original, untracked).
    assert f"See pricing ({PRICING})" in text
    unsubscribe, _ = list_unsubscribe(msg)
    assert unsubscribe in text

    # The message log keeps exactly what was sent.
    m = sent.message
    assert m["html"].splitlines() == html.splitlines()
    assert m["text"].splitlines() == text.splitlines()


def test_tracked_links_redirect_and_the_pixel_records_the_open(sent: Sent) -> None:
    _, html = parts(sent.received.message())
    base = sent.tenant.url
    mid = sent.message["id"]
    anchors = [a["href"] for a in elements(html, "a")]
    clicks = [h for h in anchors if h.startswith(f"{base}/email/click/{mid}/")]
    assert [clicked_url(h) for h in clicks] == [PRICING]
    # Unsubscribe and preference links stay direct; nothing else leaves untracked.
    direct = sorted(h for h in anchors if h not in clicks)
    assert [urlsplit(h).path.split("/")[2] for h in direct] == ["preferences", "unsubscribe"]
    assert all(h.startswith(f"{base}/email/") for h in direct)
    pixels = [i["src"] for i in elements(html, "img") if i["src"].startswith(f"{base}/email/open/")]
    assert len(pixels) == 1, pixels
    assert pixels[0].endswith(".gif"), pixels

    r = sent.tenant.http.get(clicks[0])
    assert r.status_code == 302, r.text
    assert r.headers["location"] == PRICING
    r = sent.tenant.http.get(pixels[0])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/gif"
    after = message(sent.tenant, mid)
    assert after["clicked_at"] is not None
    assert after["opened_at"] is not None
    assert {"clicked", "opened"} <= {e["type"] for e in after["events"]}


def test_click_links_only_redirect_to_urls_in_the_message(sent: Sent) -> None:
    _, html = parts(sent.received.message())
    mid = sent.message["id"]
    (click,) = [a["href"] for a in elements(html, "a") if "/email/click/" in a["href"]]
    # Another message of the project: a link's signature names its own message only.
    other = send(sent.tenant, int(sent.message["template_id"]), sent.ada.id, topic="automations")
    for tampered in (
        with_url(click, "https://evil.example/phish"),
        with_url(click, PRICING + "&x=1"),
        click.replace(f"/email/click/{mid}/", f"/email/click/{other['id']}/"),
    ):
        r = sent.tenant.http.get(tampered)
        assert r.status_code == 404, (tampered, r.status_code)
        assert "location" not in r.headers
        assert "This link is not valid" in r.text


# -- other kinds of email -----------------------------------------------------------------------


def test_transactional_email_has_no_list_unsubscribe(mail: Mail, project: Tenant) -> None:
    buyer = person(project, name="Ada Lovelace", plan="pro")
    got = delivered(mail, project, template(project), buyer, topic=None, transactional=True)
    msg = got.message()
    assert msg["List-Unsubscribe"] is None
    assert msg["List-Unsubscribe-Post"] is None
    assert str(msg["Subject"]) == "Hello Ada"
    text, html = parts(msg)
    assert "Hi Ada," in text
    assert "Hi Ada," in html


def test_send_test_goes_to_the_given_address_untracked(mail: Mail, project: Tenant) -> None:
    ada = person(project, name="Ada Lovelace", plan="pro")
    tid = template(project)
    qa = f"qa-{uuid.uuid4().hex[:8]}@example.test"
    r = project.api.post(f"/api/templates/{tid}/send-test", json={"to": qa, "customer_id": ada.id})
    assert r.status_code == 201, r.text
    test_message = r.json()
    assert (test_message["sender"], test_message["to"]) == ("test", qa)

    (got,) = mail.sink.wait_to(qa)
    assert settled(project, test_message["id"])["status"] == "sent"
    msg = got.message()
    assert got.rcpt_tos == (qa,)
    assert parseaddr(str(msg["To"])) == ("", qa)
    assert str(msg["Subject"]) == "Hello Ada"
    assert msg["List-Unsubscribe"] is None
    assert msg["List-Unsubscribe-Post"] is None
    text, html = parts(msg)
    assert "/email/click/" not in html
    assert "/email/open/" not in html
    assert PRICING in [a["href"] for a in elements(html, "a")]
    assert "Hi Ada," in text
    assert "Hi Ada," in html
    assert mail.sink.to(ada.email) == []


# -- unsubscribing and the gateway's refusals --------------------------------------------------


def test_one_click_unsubscribe_stops_that_topic(mail: Mail, project: Tenant) -> None:
    reader = person(project)
    tid = template(project)
    got = delivered(mail, project, tid, reader)
    http, _ = list_unsubscribe(got.message())
    # Fetching the URL (as link scanners do) shows a page and changes nothing.
    assert project.http.get(http).status_code == 200
    assert all(t["subscribed"] for t in project.get(f"/api/subscriptions/{reader.id}")["topics"])

    r = project.http.post(
        http,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    subs = project.get(f"/api/subscriptions/{reader.id}")
    assert {t["key"]: t["subscribed"] for t in subs["topics"]} == {
        "broadcasts": False,
        "automations": True,
    }
    assert subs["unsubscribed_all"] is False
    assert message(project, got.message_id)["unsubscribed_at"] is not None

    skipped = send(project, tid, reader.id, topic="broadcasts")
    assert skipped["status"] == "skipped"
    assert "unsubscribed" in skipped["reason"]
    # The other topic still arrives (and shows the worker ran past the skipped one).
    delivered(mail, project, tid, reader, topic="automations")
    assert len(mail.sink.to(reader.email)) == 2
    assert settled(project, skipped["id"])["status"] == "skipped"


def test_suppressed_address_receives_nothing(mail: Mail, project: Tenant) -> None:
    blocked = person(project)
    r = project.api.post("/api/suppressions", json={"email": blocked.email, "note": "asked"})
    assert r.status_code == 201, r.text
    m = send(project, template(project), blocked.id)
    assert m["status"] == "skipped"
    assert m["decisions"][-1]["check"] == "suppression"
    assert_nothing_arrives(mail, project, blocked)


def test_capped_customer_receives_nothing_more(mail: Mail, project: Tenant) -> None:
    email_settings(project, frequency_cap={"count": 1, "days": 1})
    capped = person(project)
    tid = template(project)
    delivered(mail, project, tid, capped)
    m = send(project, tid, capped.id, on_cap="skip")
    assert m["status"] == "skipped"
    assert m["decisions"][-1]["check"] == "frequency_cap"
    assert m["decisions"][-1]["result"] == "skip"
    assert_nothing_arrives(mail, project, capped, already=1)


def test_customer_in_quiet_hours_receives_nothing_yet(mail: Mail, project: Tenant) -> None:
    # Quiet from an hour ago to an hour from now in Tokyo (UTC+9, no DST), where the customer
    # lives; the control customer follows the project's UTC, nine hours away from the window.
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo"))
    start, end = tokyo - timedelta(minutes=60), tokyo + timedelta(minutes=61)
    email_settings(
        project,
        timezone="UTC",
        quiet_hours={"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")},
    )
    sleeper = person(project, timezone="Asia/Tokyo")
    m = send(project, template(project), sleeper.id)
    assert m["status"] == "deferred"
    assert m["decisions"][-1]["check"] == "quiet_hours"
    wait = datetime.fromisoformat(m["send_after"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < wait <= timedelta(minutes=61), wait
    assert_nothing_arrives(mail, project, sleeper)
    assert message(project, m["id"])["status"] == "deferred"


@pytest.mark.parametrize(
    "choice", [{"topics": {"broadcasts": False}}, {"unsubscribed_all": True}], ids=["topic", "all"]
)
def test_unsubscribed_customer_receives_nothing(
    mail: Mail, project: Tenant, choice: dict[str, Any]
) -> None:
    gone = person(project)
    r = project.api.put(f"/api/subscriptions/{gone.id}", json=choice)
    assert r.status_code == 200, r.text
    m = send(project, template(project), gone.id)
    assert m["status"] == "skipped"
    assert m["decisions"][-1]["check"] == "subscription"
    assert_nothing_arrives(mail, project, gone)


# -- the SMTP server's refusals ----------------------------------------------------------------


def test_permanent_refusal_bounces_and_suppresses(mail: Mail, project: Tenant) -> None:
    gone = person(project)
    mail.sink.refuse(gone.email, "550 5.1.1 no such user")
    tid = template(project)
    m = settled(project, send(project, tid, gone.id)["id"])
    assert m["status"] == "bounced"
    assert "550 5.1.1 no such user" in m["reason"], m["reason"]
    assert m["sent_at"] is None
    assert gone.email in [a for a, _ in mail.sink.refused]
    suppressions = project.get("/api/suppressions")["data"]
    assert [(s["email"], s["reason"], s["message_id"]) for s in suppressions] == [
        (gone.email.lower(), "hard_bounce", m["id"])
    ]
    again = send(project, tid, gone.id)
    assert again["status"] == "skipped"
    assert "hard_bounce" in again["reason"]
    assert_nothing_arrives(mail, project, gone)


def test_temporary_refusal_defers_with_a_retry(mail: Mail, project: Tenant) -> None:
    busy = person(project)
    mail.sink.refuse(busy.email, "451 4.3.0 mailbox busy, try again later")
    queued = send(project, template(project), busy.id)
    m = settled(project, queued["id"])
    assert m["status"] == "deferred"
    assert m["attempts"] == 1
    assert m["reason"].startswith("retrying in 1 min after"), m["reason"]
    assert "451" in m["reason"], m["reason"]
    wait = datetime.fromisoformat(m["send_after"]) - datetime.now(UTC)
    assert timedelta(seconds=30) < wait <= timedelta(minutes=1), wait
    # Not lost: still waiting in the queue, and nothing suppressed.
    waiting = project.get("/api/messages", status="deferred")["data"]
    assert [w["id"] for w in waiting] == [m["id"]]
    assert project.get("/api/suppressions")["data"] == []
    assert_nothing_arrives(mail, project, busy)
    assert message(project, m["id"])["status"] == "deferred"


# -- a worker killed mid-batch ------------------------------------------------------------------

CRASH_MESSAGES = 60


def start_worker(url: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A `tidings worker`, returned once it says it started."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [TIDINGS, "worker"], cwd=log.parent, env=server_env(url, **env), stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while "started" not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)
    return process


def all_messages(tenant: Tenant) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        page = tenant.get("/api/messages", **params)
        out.extend(page["data"])
        if not page["next_cursor"]:
            return out
        params["cursor"] = page["next_cursor"]


def test_killed_worker_sends_every_email_exactly_once(backend: str, tmp_path: Path) -> None:
    with (
        scratch_database(backend, tmp_path) as url,
        Sink(delay=0.03) as sink,  # slow replies: the worker is killed mid-batch
    ):
        env = {
            "TIDINGS_SMTP_URL": sink.url,
            "TIDINGS_MAIL_FROM": MAIL_FROM,
            "TIDINGS_SEND_LEASE_SECONDS": "5",
            "TIDINGS_SEND_BATCH": "50",
        }
        live = start_server(url, tmp_path, worker=False, **env)
        workers: list[subprocess.Popen[bytes]] = []
        tenant = live.new_tenant()
        try:
            env["TIDINGS_PUBLIC_URL"] = live.url
            # A worker to ingest the customers, stopped before any email is queued.
            workers.append(start_worker(url, tmp_path / "worker-0.log", **env))
            crowd = people(tenant, *({"name": f"Reader {i}"} for i in range(CRASH_MESSAGES)))
            assert stop(workers[0]) == 0
            tid = template(tenant)
            queued = [send(tenant, tid, p.id) for p in crowd]
            assert {m["status"] for m in queued} == {"queued"}
            ids = {m["id"] for m in queued}
            address = {p.id: p.email for p in crowd}

            first = start_worker(url, tmp_path / "worker-1.log", **env)
            workers.append(first)
            eventually(lambda: sink.count() >= 10, "the first emails", timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait()
            at_kill = sink.count()
            assert 10 <= at_kill < 50, f"the kill landed after {at_kill} emails, not mid-batch"
            statuses = Counter(m["status"] for m in all_messages(tenant))
            assert statuses["sending"] > 0, statuses  # claimed by the dead worker

            workers.append(start_worker(url, tmp_path / "worker-2.log", **env))

            def finished() -> list[dict[str, Any]] | None:
                found = all_messages(tenant)
                done = all(m["status"] not in ("queued", "sending", "deferred") for m in found)
                return found if done and len(found) == len(ids) else None

            final = eventually(finished, "every email to be delivered", timeout=60)
        finally:
            codes = [stop(w) for w in workers]
            tenant.close()
            live.stop()
        assert codes == [0, -signal.SIGKILL, 0], codes

        got = sink.messages()
        counts = Counter(r.message_id for r in got)
        twice = sorted(mid for mid, n in counts.items() if n > 1)
        assert not twice, f"sent more than once: {twice}"
        assert set(counts) == ids, f"never sent: {sorted(ids - set(counts))}"
        assert len(got) == len(ids)
        assert {m["status"] for m in final} == {"sent"}, Counter(m["status"] for m in final)
        by_id = {m["id"]: m for m in final}
        for r in got:
            m = by_id[r.message_id]
            assert r.rcpt_tos == (address[m["customer_id"]],)
        # The log names every email by the Message-ID its recipient got (provider bounce and
        # complaint notifications are matched on it), those recovery recorded as sent included.
        unnamed = []
        for r in got:
            m, msg = by_id[r.message_id], r.message()
            if (m["header_id"], m["subject"]) != (str(msg["Message-ID"]), str(msg["Subject"])):
                unnamed.append(m["id"])
        assert not unnamed, (
            f"{len(unnamed)} sent emails logged without Message-ID: {sorted(unnamed)}"
        )


# -- TIDINGS_SMTP_URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, "none", None, None)),
        ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, "none", None, None)),
        (
            "smtp+starttls://me:pw@smtp.example.com",
            ("smtp.example.com", 587, "starttls", "me", "pw"),
        ),
        (
            "smtp+starttls://smtp.example.com:2587",
            ("smtp.example.com", 2587, "starttls", None, None),
        ),
        ("smtps://me:pw@smtp.example.com", ("smtp.example.com", 465, "tls", "me", "pw")),
        ("smtps://smtp.example.com:2465", ("smtp.example.com", 2465, "tls", None, None)),
        (
            "smtp+starttls://apikey%40acme.test:p%40ss%3Aw%2Frd%25@smtp.example.com:587",
            ("smtp.example.com", 587, "starttls", "apikey@acme.test", "p@ss:w/rd%"),
        ),
        ("smtp://relay@mail.example.com:25", ("mail.example.com", 25, "none", "relay", None)),
        ("smtp://[::1]:2525", ("::1", 2525, "none", None, None)),
    ],
)
def test_parse_smtp_url(url: str, expected: tuple[Any, ...]) -> None:
    t = providers.parse_smtp_url(url)
    assert (t.host, t.port, t.security, t.username, t.password) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mail.example.com:25",
        "http://mail.example.com",
        "smtp+ssl://mail.example.com",
        "smtp://",
        "smtp://:25",
        "smtp://mail.example.com:port",
        "smtp://mail.example.com:99999",
    ],
)
def test_parse_smtp_url_refuses_bad_urls_readably(url: str) -> None:
    with pytest.raises(ValueError, match="TIDINGS_SMTP_URL") as caught:
        providers.parse_smtp_url(url)
    assert "smtp://host:port" in str(caught.value)


def test_parse_smtp_url_error_does_not_echo_the_password() -> None:
    """The message ends up in logs and terminals: it must not carry the credentials."""
    with pytest.raises(ValueError, match="TIDINGS_SMTP_URL") as caught:
        providers.parse_smtp_url("smtp+tls://me:s3cr3t-pw@smtp.example.com:587")
    assert "s3cr3t-pw" not in str(caught.value)
