"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1 that keeps every message it
accepts, can refuse chosen recipients with a given reply, and can be slow to answer.

The sink stores a message as soon as its body has arrived and only then waits `delay` before
answering 250, like a server that has queued the message but is slow to say so: a client killed
during that wait has delivered the message (the ambiguous case a sender must never repeat).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

from tests.support import free_port


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: the SMTP envelope and the raw content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> int:
        """The Tidings message id (header X-Tidings-Message)."""
        value = self.message()["X-Tidings-Message"]
        assert value is not None, "no X-Tidings-Message header"
        return int(str(value))


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.sink.refusal(address)
        if reply is not None:
            with self.sink.lock:
                self.sink.refused.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        got = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), content)
        with self.sink.lock:
            self.sink.received.append(got)
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        return "250 Message accepted for delivery"


class Sink:
    """`with Sink() as sink:` a running server at sink.url (smtp://127.0.0.1:port)."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.refused: list[tuple[str, str]] = []
        self._refusals: dict[str, str] = {}
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Sink:
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = self._controller.loop
        self._controller.stop()
        loop.close()  # Controller.stop leaves its loop open (a ResourceWarning otherwise)

    # -- behaviour -----------------------------------------------------------------------------

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO of `address` with `reply` (e.g. "550 5.1.1 no such user")."""
        with self.lock:
            self._refusals[address.lower()] = reply

    def refusal(self, address: str) -> str | None:
        with self.lock:
            return self._refusals.get(address.lower())

    # -- reading -------------------------------------------------------------------------------

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def to(self, address: str) -> list[Received]:
        """Messages whose envelope recipients include `address`."""
        address = address.lower()
        return [m for m in self.messages() if address in (r.lower() for r in m.rcpt_tos)]

    def wait_to(self, address: str, count: int = 1, timeout: float = 20) -> list[Received]:
        """Poll until `count` messages for `address` arrived (more is a failure)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.to(address)
            if len(got) >= count:
                assert len(got) == count, f"{len(got)} messages to {address}, expected {count}"
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {count} messages to {address} arrived")
            time.sleep(0.02)
