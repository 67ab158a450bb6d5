"""The Segment wire format: request-level checks (for the gateway) and message normalisation
(for the processor), following shared/SEGMENT.md.

Request checks are cheap and decide the HTTP answer; per-message problems (no user id, a track
without `event`) never fail a request: they are recorded as rejected when processed.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tidings.customers.traits import parse_datetime
from tidings.errors import BadRequest, PayloadTooLarge

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
SHORT_TYPES = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidMessage(Exception):
    """A message that cannot be applied; recorded as rejected with this reason."""


def decode_body(body: bytes, *, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (gzip/deflate) without letting a small bomb grow past `limit`."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        data = body
    elif enc in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if enc != "deflate" else zlib.MAX_WBITS
        try:
            d = zlib.decompressobj(wbits)
            data = d.decompress(body, limit + 1)
            if not d.eof and len(data) <= limit:
                raise BadRequest("The compressed body is truncated.", code="invalid_body")
        except zlib.error as exc:
            raise BadRequest(f"The body is not valid {enc}: {exc}", code="invalid_body") from exc
    else:
        raise BadRequest(f"Unsupported Content-Encoding {encoding!r}.", code="invalid_body")
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB.")
    return data


def parse_json(data: bytes) -> Any:
    """Parse JSON or raise a 400 naming the problem."""
    if not data.strip():
        raise InvalidJSON("The request body is empty; expected a JSON object.")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from exc


def check_batch(payload: Any, size: int) -> list[Any]:
    """Validate a batch envelope's shape and limits; returns its items."""
    if not isinstance(payload, dict):
        raise BadRequest("A batch body must be a JSON object with a `batch` array.")
    items = payload.get("batch")
    if not isinstance(items, list):
        raise BadRequest("A batch body must hold a `batch` array of messages.")
    if len(items) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(
            f"A batch holds at most {MAX_BATCH_MESSAGES} messages; this one has {len(items)}."
        )
    if size > MAX_MESSAGE_BYTES:
        for index, item in enumerate(items):
            if len(orjson.dumps(item)) > MAX_MESSAGE_BYTES:
                raise PayloadTooLarge(f"Message {index} of the batch is larger than 32 KB.")
    return items


def check_webhook(payload: Any) -> list[Any]:
    """Segment's webhook destination posts one message or a JSON array of them."""
    items = payload if isinstance(payload, list) else [payload]
    if len(items) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(f"At most {MAX_BATCH_MESSAGES} messages per request.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"Item {index} is not a JSON object.")
    return items


def basic_auth_user(header: str | None) -> str | None:
    """The username of an HTTP Basic header (the write key), with or without the colon."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=False).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def bearer_token(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _id(value: Any) -> str | None:
    """User ids arrive as strings or numbers; JSON null and empty strings are absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:255] or None


def _has_email(item: dict[str, Any], kind: str) -> bool:
    traits = item.get("traits")
    if kind != "identify" or not isinstance(traits, dict):
        return False
    email = traits.get("email")
    return isinstance(email, str) and "@" in email


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class Message:
    """One message ready to apply: ids, corrected timestamp, merged context."""

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    context: dict[str, Any]
    raw: dict[str, Any]
    traits: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    event: str | None = None
    name: str | None = None
    group_id: str | None = None
    previous_id: str | None = None


def merge_batch_defaults(item: dict[str, Any], envelope: dict[str, Any]) -> dict[str, Any]:
    """Batch-level context/integrations/sentAt apply under each item's own (item keys win)."""
    for key in ("context", "integrations"):
        outer = envelope.get(key)
        if isinstance(outer, dict) and outer:
            inner = item.get(key)
            item[key] = {**outer, **inner} if isinstance(inner, dict) else dict(outer)
    if "sentAt" not in item and envelope.get("sentAt") is not None:
        item["sentAt"] = envelope["sentAt"]
    return item


def fallback_message_id(token: str, index: int) -> str:
    """A stable id for a message that came without one, so reprocessing stays idempotent."""
    digest = hashlib.sha1(f"{token}:{index}".encode(), usedforsecurity=False)
    return "tid-" + digest.hexdigest()[:24]


def corrected_timestamp(item: dict[str, Any], received_at: datetime) -> datetime:
    """timestamp = receivedAt - (sentAt - originalTimestamp); absent parts default to receivedAt."""
    original = parse_datetime(item.get("timestamp")) or parse_datetime(
        item.get("originalTimestamp")
    )
    if original is None:
        return received_at
    sent_at = parse_datetime(item.get("sentAt"))
    if sent_at is None:
        return original
    return received_at - (sent_at - original)


def normalize(
    item: Any, *, default_type: str | None, received_at: datetime, message_id: str
) -> Message:
    """Turn a wire message into a Message, or raise InvalidMessage with the reason."""
    if not isinstance(item, dict):
        raise InvalidMessage("the message is not a JSON object")
    kind = item.get("type") or item.get("action") or default_type
    if isinstance(kind, str):
        kind = kind.strip().lower()
    if kind not in TYPES and kind != "delete":
        raise InvalidMessage(f"unknown message type {kind!r}")
    user_id = _id(item.get("userId"))
    anonymous_id = _id(item.get("anonymousId"))
    context = _object(item.get("context"))
    msg = Message(
        type=kind,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=corrected_timestamp(item, received_at),
        received_at=received_at,
        context=context,
        raw=item,
    )
    if kind == "alias":
        msg.previous_id = _id(item.get("previousId"))
        if msg.previous_id is None:
            raise InvalidMessage("alias without previousId")
        if user_id is None:
            raise InvalidMessage("alias without userId")
        return msg
    if user_id is None and anonymous_id is None and not _has_email(item, kind):
        # An identify carrying only an email is accepted: customers are found by email too.
        raise InvalidMessage("no userId or anonymousId")
    if kind == "identify":
        msg.traits = _object(item.get("traits"))
    elif kind == "track":
        event = item.get("event")
        if not isinstance(event, str) or not event.strip():
            raise InvalidMessage("track without event name")
        msg.event = event.strip()[:255]
        msg.properties = _object(item.get("properties"))
    elif kind in ("page", "screen"):
        props = _object(item.get("properties"))
        name = item.get("name") or props.get("name")
        msg.name = name[:255] if isinstance(name, str) and name else None
        category = item.get("category")
        if isinstance(category, str) and "category" not in props:
            props = {**props, "category": category}
        page = context.get("page")
        if kind == "page" and isinstance(page, dict):
            props = {**{k: v for k, v in page.items() if v is not None}, **props}
        msg.properties = props
    elif kind == "group":
        msg.group_id = _id(item.get("groupId"))
        if msg.group_id is None:
            raise InvalidMessage("group without groupId")
        msg.traits = _object(item.get("traits"))
    return msg
