"""The message on the wire: MIME parts and their transfer encodings, the SMTP provider's
envelope checks, and the plain-text part generated from the HTML."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from tests.messaging.smtp_sink import Sink
from tidings.messaging import providers
from tidings.templates.render import html_to_text

ENVELOPE = providers.Envelope(
    from_name="Acme",
    from_email="hello@acme.test",
    to="ada@example.com",
    reply_to=None,
    subject="Hi",
    header_id="<1.abc@acme.test>",
    unsubscribe_url="https://t.example/email/unsubscribe/1.x",
    unsubscribe_mailto=None,
    message_id=1,
)


def parts(raw: bytes) -> dict[str, EmailMessage]:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    found: dict[str, EmailMessage] = {}
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        found[part.get_content_type()] = part
    assert set(found) == {"text/plain", "text/html"}
    return found


def encodings(raw: bytes) -> dict[str, str]:
    return {kind: str(p["Content-Transfer-Encoding"]) for kind, p in parts(raw).items()}


def test_ascii_parts_go_as_7bit_and_read_back_unchanged() -> None:
    html = "<p>Hello <b>Ada</b></p>\n<p>Second line</p>"
    text = "Hello Ada\n\nSecond line"
    raw = providers.build(ENVELOPE, False, html=html, text=text)
    assert encodings(raw) == {"text/plain": "7bit", "text/html": "7bit"}
    got = parts(raw)
    assert got["text/html"].get_content().replace("\r\n", "\n").rstrip("\n") == html
    assert got["text/plain"].get_content().replace("\r\n", "\n").rstrip("\n") == text
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(("eight_bit", "expected"), [(True, "8bit"), (False, "quoted-printable")])
def test_non_ascii_parts_go_8bit_only_when_the_server_takes_it(
    eight_bit: bool, expected: str
) -> None:
    text = "Grüße, Zoë — café ☕"
    raw = providers.build(ENVELOPE, eight_bit, html=f"<p>{text}</p>", text=text)
    assert encodings(raw) == {"text/plain": expected, "text/html": expected}
    assert parts(raw)["text/plain"].get_content().strip() == text
    if not eight_bit:
        assert raw.isascii()


@pytest.mark.parametrize("body", ["x" * 999, "a\0b"])
def test_over_long_lines_and_nul_bytes_are_quoted_printable(body: str) -> None:
    raw = providers.build(ENVELOPE, True, html=body, text=body)
    assert encodings(raw) == {"text/plain": "quoted-printable", "text/html": "quoted-printable"}
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert parts(raw)["text/html"].get_content().rstrip("\r\n") == body


def test_a_line_of_998_octets_is_not_encoded() -> None:
    raw = providers.build(ENVELOPE, True, html="y" * 998, text="z")
    assert encodings(raw)["text/html"] == "7bit"


def _deliver(smtp: providers.Smtp, recipient: str, text: str, handed: list[int]) -> None:
    smtp.deliver(
        sender="hello@acme.test",
        recipient=recipient,
        build=lambda eight_bit: providers.build(
            ENVELOPE, eight_bit, html=f"<p>{text}</p>", text=text
        ),
        handover=lambda: handed.append(1),
    )


def test_smtp_sends_8bit_to_a_server_that_offers_8bitmime() -> None:
    with Sink() as sink:
        smtp = providers.Smtp(providers.parse_smtp_url(sink.url), timeout=10)
        handed: list[int] = []
        try:
            _deliver(smtp, "ada@example.com", "Grüße aus Köln", handed)
        finally:
            smtp.close()
        [got] = sink.wait_to("ada@example.com")
    assert handed == [1]
    assert got.mail_from == "hello@acme.test"
    assert encodings(got.content)["text/plain"] == "8bit"
    assert parts(got.content)["text/plain"].get_content().strip() == "Grüße aus Köln"


@pytest.mark.parametrize(
    "recipient",
    ["ada@example.com>\r\nRCPT TO:<eve@evil.test", "zoë@example.com", "ada @example.com", ""],
)
def test_smtp_refuses_an_address_it_cannot_put_on_the_wire(recipient: str) -> None:
    with Sink() as sink:
        smtp = providers.Smtp(providers.parse_smtp_url(sink.url), timeout=10)
        handed: list[int] = []
        try:
            with pytest.raises(providers.DeliveryError) as caught:
                _deliver(smtp, recipient, "hello", handed)
            # The connection is still good for the next message.
            _deliver(smtp, "bob@example.com", "hello", handed)
        finally:
            smtp.close()
        sink.wait_to("bob@example.com")
        assert [m.rcpt_tos for m in sink.messages()] == [("bob@example.com",)]
    assert not caught.value.transient
    assert caught.value.recipient
    assert handed == [1]


# -- the text part --------------------------------------------------------------------------


def test_text_part_keeps_blocks_lists_and_link_addresses() -> None:
    html = """<html><head><title>T</title><style>p { color: red }</style></head><body>
    <!-- a comment -->
    <h1>Welcome,   Ada!</h1>
    <p>Thanks for
       joining &amp; welcome.<br>Second line</p>
    <ul><li>One</li>
        <li>Two</li></ul>
    <p><a href="https://acme.test/start?a=1&amp;b=2">Get started</a>
       <a href="https://acme.test/same">https://acme.test/same</a>
       <a href="#top">Top</a> <img src="x.png" alt="Logo"></p>
    </body></html>"""
    assert html_to_text(html) == (
        "Welcome, Ada!\n\n"
        "Thanks for joining & welcome.\nSecond line\n"
        "- One\n- Two\n\n"
        "Get started (https://acme.test/start?a=1&b=2) https://acme.test/same Top Logo"
    )


def test_text_part_collapses_every_kind_of_space_and_strips_each_line() -> None:
    html = "<div>\t a&nbsp;&nbsp;b \u2003 c </div><div>\xa0 d\f</div><p></p><p></p><p>e</p>"
    assert html_to_text(html) == "a b c\n\nd\n\ne"
