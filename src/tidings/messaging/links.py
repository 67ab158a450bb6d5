"""Signed links in emails: unsubscribe (one-click and page), preferences, open pixel, clicks.

A link carries the message id and an HMAC of what it does, made with the project's link
secret. Nothing expires: an unsubscribe link must work years later. A click link signs the
exact destination, so Tidings redirects only to addresses that were in the message it sent
(never an open redirect).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache
from html import escape, unescape
from urllib.parse import quote

PATH_UNSUBSCRIBE = "/email/unsubscribe/"
PATH_PREFERENCES = "/email/preferences/"
PATH_OPEN = "/email/open/"
PATH_CLICK = "/email/click/"


@lru_cache(maxsize=256)
def _keyed(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _sig(secret: str, purpose: str) -> str:
    mac = _keyed(secret).copy()  # the key schedule is done once per secret
    mac.update(purpose.encode())
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def token(secret: str, kind: str, message_id: int) -> str:
    """`<message id>.<signature>` for one kind of link (u, p, o)."""
    return f"{message_id}.{_sig(secret, f'{kind}:{message_id}')}"


def message_of(raw: str) -> int | None:
    """The message id a token claims (verify it with `verify` once the secret is known)."""
    head, _, sig = raw.partition(".")
    if not head.isdigit() or not sig or len(head) > 18:
        return None
    return int(head)


def verify(secret: str, kind: str, raw: str) -> bool:
    """True when the token was made by this project for this kind of link."""
    mid = message_of(raw)
    return mid is not None and hmac.compare_digest(raw, token(secret, kind, mid))


def click_sig(secret: str, message_id: int, url: str) -> str:
    return _sig(secret, f"c:{message_id}:{url}")


def verify_click(secret: str, message_id: int, url: str, sig: str) -> bool:
    return hmac.compare_digest(sig, click_sig(secret, message_id, url))


class Links:
    """The links of one message, built on the public URL."""

    __slots__ = ("base", "message_id", "secret")

    def __init__(self, base: str, secret: str, message_id: int) -> None:
        self.base, self.secret, self.message_id = base.rstrip("/"), secret, message_id

    @property
    def unsubscribe(self) -> str:
        return self.base + PATH_UNSUBSCRIBE + token(self.secret, "u", self.message_id)

    @property
    def preferences(self) -> str:
        return self.base + PATH_PREFERENCES + token(self.secret, "p", self.message_id)

    @property
    def open_pixel(self) -> str:
        return self.base + PATH_OPEN + token(self.secret, "o", self.message_id) + ".gif"

    def click(self, url: str) -> str:
        sig = click_sig(self.secret, self.message_id, url)
        return f"{self.base}{PATH_CLICK}{self.message_id}/{sig}?url={quote(url, safe='')}"


_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'>]+)\2""", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)


def track(html: str, links: Links, *, clicks: bool, opens: bool) -> str:
    """Route the message's web links through click tracking and add the open pixel."""
    own = links.base + "/email/"
    if clicks:

        def rewrite(m: re.Match[str]) -> str:
            url = unescape(m.group(3))
            if url.startswith(own):
                return m.group(0)  # unsubscribe and preference links stay direct
            return f"{m.group(1)}{m.group(2)}{escape(links.click(url))}{m.group(2)}"

        html = _HREF.sub(rewrite, html)
    if opens:
        pixel = (
            f'<img src="{escape(links.open_pixel)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0">'
        )
        closes = list(_BODY_CLOSE.finditer(html))
        match = closes[-1] if closes else None
        html = html[: match.start()] + pixel + html[match.start() :] if match else html + pixel
    return html
