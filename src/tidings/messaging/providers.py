"""Email providers behind one interface: SMTP (plain, STARTTLS or TLS, with auth and connection
reuse) and the embedded outbox, plus building the MIME message.

A provider's `deliver` receives `handover`, a callback it must call just before the message body
is transmitted: the caller commits that moment, so a worker killed afterwards never sends the
message again (the server may already have it), and one killed before it sends it once on retry.

Errors:
  DeliveryError(transient, code, detail)
   ├── transient=True   connection problems and 4xx replies: retried with backoff
   └── transient=False  5xx replies: failed (a 5xx on the recipient is a hard bounce)
"""

from __future__ import annotations

import binascii
import re
import secrets
import smtplib
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from functools import lru_cache
from typing import Protocol
from urllib.parse import unquote, urlsplit

from tidings import clock


class DeliveryError(Exception):
    """A delivery that did not happen (or whose outcome the server refused)."""

    def __init__(self, detail: str, *, transient: bool, code: int = 0, recipient: bool = False):
        super().__init__(detail)
        self.detail, self.transient, self.code, self.recipient = detail, transient, code, recipient


class Provider(Protocol):
    """Delivers one message: `build(eight_bit)` makes its bytes (8-bit parts allowed or not)
    and `handover()` runs just before the body leaves."""

    name: str

    def deliver(
        self,
        *,
        sender: str,
        recipient: str,
        build: Callable[[bool], bytes],
        handover: Callable[[], None],
    ) -> None: ...

    def close(self) -> None: ...


class Outbox:
    """The default provider: the message stays in the database, which is the outbox."""

    name = "outbox"

    def deliver(
        self,
        *,
        sender: str,
        recipient: str,
        build: Callable[[bool], bytes],
        handover: Callable[[], None],
    ) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # none | starttls | tls
    username: str | None
    password: str | None


_SHAPE = (
    "TIDINGS_SMTP_URL must look like smtp://host:port, smtp+starttls://user:pass@host:587 or "
    "smtps://user:pass@host:465"
)


def parse_smtp_url(url: str) -> SmtpTarget:
    """smtp://host:port, smtp+starttls://user:pass@host:587, smtps://user:pass@host:465.

    Errors never repeat the URL: it may hold a password."""
    parts = urlsplit(url)
    security = {"smtp": "none", "smtp+starttls": "starttls", "smtps": "tls"}.get(parts.scheme)
    if security is None:
        raise ValueError(f"{_SHAPE} (unknown scheme {parts.scheme!r})")
    if not parts.hostname:
        raise ValueError(f"{_SHAPE} (no host)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{_SHAPE} (the port must be a number from 1 to 65535)") from None
    default_port = {"none": 25, "starttls": 587, "tls": 465}[security]
    return SmtpTarget(
        host=parts.hostname,
        port=port or default_port,
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


_DOT = re.compile(rb"(?m)^\.")
_UNSAFE = re.compile(r"[\x00-\x20<>]")


class Smtp:
    """One reusable SMTP connection (one per delivering thread)."""

    name = "smtp"

    def __init__(self, target: SmtpTarget, *, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        t = self.target
        try:
            conn: smtplib.SMTP
            if t.security == "tls":
                conn = smtplib.SMTP_SSL(
                    t.host, t.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                conn = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
            conn.ehlo()
            if t.security == "starttls":
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if t.username:
                conn.login(t.username, t.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"SMTP login refused: {exc}", transient=True, code=exc.smtp_code
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"cannot reach the SMTP server: {exc}", transient=True) from exc
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def _check(self, code: int, reply: bytes, what: str, *, recipient: bool = False) -> None:
        if 200 <= code < 400:
            return
        detail = f"{what} refused: {code} {reply.decode(errors='replace')}"
        conn = self._conn
        if conn is not None and code != -1:
            try:
                conn.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()
        raise DeliveryError(detail, transient=code < 500, code=code, recipient=recipient)

    def deliver(
        self,
        *,
        sender: str,
        recipient: str,
        build: Callable[[bool], bytes],
        handover: Callable[[], None],
    ) -> None:
        both = sender + recipient
        if not (sender and recipient) or _UNSAFE.search(both) or not both.isascii():
            raise DeliveryError(
                f"not an address this server can take: {recipient!r} from {sender!r}",
                transient=False,
                recipient=True,
            )
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        eight_bit = conn.has_extn("8bitmime")
        data = build(eight_bit)
        try:
            # Written directly: smtplib's mail() and rcpt() parse each address again.
            conn.putcmd("mail", f"FROM:<{sender}>" + (" BODY=8BITMIME" if eight_bit else ""))
            self._check(*conn.getreply(), "MAIL FROM")
            conn.putcmd("rcpt", f"TO:<{recipient}>")
            self._check(*conn.getreply(), "RCPT TO", recipient=True)
            conn.putcmd("data")
            self._check(*conn.getreply(), "DATA")
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._drop()
            raise DeliveryError(f"SMTP connection lost: {exc}", transient=True) from exc
        try:
            handover()
        except BaseException:
            # Mid-DATA: closing the connection makes the server discard the message.
            self._drop()
            raise
        body = _DOT.sub(b"..", data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            conn.send(body + b".\r\n")
            code, reply = conn.getreply()
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            self._drop()
            raise AmbiguousDelivery(
                f"SMTP connection lost after the message was sent: {exc}"
            ) from exc
        self._check(code, reply, "message")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()


class AmbiguousDelivery(Exception):
    """The body left but no reply came: the server may have it, so it is not sent again."""


_local = threading.local()


def for_thread(smtp_url: str | None, *, timeout: float) -> Provider:
    """This thread's provider (an SMTP connection is reused across batches)."""
    if not smtp_url:
        return Outbox()
    cached: Smtp | None = getattr(_local, "smtp", None)
    if cached is None or getattr(_local, "url", None) != smtp_url:
        if cached is not None:
            cached.close()
        cached = Smtp(parse_smtp_url(smtp_url), timeout=timeout)
        _local.smtp, _local.url = cached, smtp_url
    return cached


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything in a message's headers."""

    from_name: str | None
    from_email: str
    to: str
    reply_to: str | None
    subject: str
    header_id: str
    unsubscribe_url: str | None
    unsubscribe_mailto: str | None
    message_id: int


@lru_cache(maxsize=256)
def mailbox(value: str) -> tuple[str | None, str]:
    """("Name", "addr") from "Name <addr>" or "addr"."""
    name, addr = parseaddr(value)
    return (name or None), addr


def domain_of(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def _header_text(value: str) -> str:
    """A header value: one line, RFC 2047-encoded when it is not plain ASCII."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def _part(body: str, eight_bit: bool) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line endings) of a text part.

    Lines of at most 998 octets go as they are: 7bit when ASCII, 8bit when the server takes
    8BITMIME. Anything else is quoted-printable.
    """
    raw = body.replace("\r\n", "\n").replace("\r", "\n").encode()
    if b"\0" not in raw and max(map(len, raw.split(b"\n"))) <= 998:
        if raw.isascii():
            return "7bit", raw.replace(b"\n", b"\r\n")
        if eight_bit:
            return "8bit", raw.replace(b"\n", b"\r\n")
    return "quoted-printable", binascii.b2a_qp(raw, istext=True).replace(b"\n", b"\r\n")


def build(env: Envelope, eight_bit: bool = False, *, html: str, text: str) -> bytes:
    """The MIME message: text and HTML alternatives, RFC 8058 headers on marketing mail.

    `eight_bit`: the server takes 8BITMIME. Written directly rather than through
    `email.message`, whose header objects cost more than rendering the email: every value here
    is either ours or folded to one encoded line.
    """
    boundary = f"=_tidings_{secrets.token_hex(12)}"
    sender = formataddr((env.from_name or "", env.from_email), charset="utf-8")
    headers = [
        f"From: {sender}",
        f"To: {_header_text(env.to)}",
        f"Subject: {_header_text(env.subject)}",
        f"Date: {format_datetime(clock.now())}",
        f"Message-ID: {env.header_id}",
        f"X-Tidings-Message: {env.message_id}",
    ]
    if env.reply_to:
        headers.append(f"Reply-To: {_header_text(env.reply_to)}")
    if env.unsubscribe_url:
        targets = [f"<{env.unsubscribe_url}>"]
        if env.unsubscribe_mailto:
            targets.append(f"<{env.unsubscribe_mailto}>")
        headers.append(f"List-Unsubscribe: {', '.join(targets)}")
        headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    headers += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    out = ["\r\n".join(headers).encode(), b"\r\n"]
    for kind, body in (("plain", text), ("html", html)):
        encoding, encoded = _part(body, eight_bit)
        out.append(
            f'\r\n--{boundary}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        )
        out.append(encoded)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)


def valid_address(value: str) -> bool:
    """A plausible single email address (no display name, one @, a dotted or local domain)."""
    pairs = getaddresses([value])
    if len(pairs) != 1 or pairs[0][1] != value.strip():
        return False
    local, at, domain = value.strip().rpartition("@")
    return bool(at and local and domain and " " not in value and "\n" not in value)
