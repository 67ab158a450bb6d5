"""Trait normalisation: reserved keys, dates in `_at` keys, inferred types, money parsing.

Pure functions with no database access; the processor and the API both call them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from tidings.clock import isoformat

# Reserved traits arrive in camelCase or snake_case; profiles keep one snake_case spelling so
# templates and segments can say `first_name` whatever the client sent.
RESERVED = {
    "email": "email",
    "name": "name",
    "firstName": "first_name",
    "first_name": "first_name",
    "lastName": "last_name",
    "last_name": "last_name",
    "phone": "phone",
    "avatar": "avatar",
    "photoUrl": "avatar",
    "photo_url": "avatar",
    "avatarUrl": "avatar",
    "avatar_url": "avatar",
    "createdAt": "created_at",
    "created_at": "created_at",
    "title": "title",
    "username": "username",
    "website": "website",
    "birthday": "birthday",
    "age": "age",
    "gender": "gender",
    "description": "description",
    "address": "address",
    "company": "company",
}
DATE_KEYS = frozenset({"birthday"})
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Epoch values above this are milliseconds (1e11 seconds is the year 5138).
_MS_THRESHOLD = 100_000_000_000
_MONEY_RE = re.compile(r"[^0-9.\-]")


def looks_like_email(value: object) -> bool:
    """True for a string shaped like an email address."""
    return isinstance(value, str) and len(value) <= 320 and EMAIL_RE.match(value) is not None


def is_date_key(key: str) -> bool:
    """Keys ending in `_at` (and a few reserved ones) hold dates."""
    return key.endswith("_at") or key in DATE_KEYS


def parse_datetime(value: Any) -> datetime | None:
    """Parse ISO-8601 strings and epoch seconds/milliseconds (numbers or digit strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) >= _MS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.lstrip("-").replace(".", "", 1).isdigit():
            try:
                return parse_datetime(float(text) if "." in text else int(text))
            except ValueError:
                return None
        return _parse_iso(text)
    return None


@lru_cache(maxsize=4096)
def _parse_iso(text: str) -> datetime | None:
    # Cached: a batch's sentAt and many timestamps repeat.
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def normalize_traits(raw: dict[str, Any]) -> dict[str, Any]:
    """Canonical trait dict: reserved keys in snake_case, dates as ISO strings, name filled."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            continue
        canonical = RESERVED.get(key, key)
        if is_date_key(canonical):
            parsed = parse_datetime(value)
            if parsed is not None:
                value = isoformat(parsed)
        elif canonical == "email" and isinstance(value, str):
            value = value.strip().lower()
        out[canonical] = value
    if "name" not in out:
        first, last = out.get("first_name"), out.get("last_name")
        parts = [p for p in (first, last) if isinstance(p, str) and p.strip()]
        if parts:
            out["name"] = " ".join(p.strip() for p in parts)
    return out


def infer_type(key: str, value: Any) -> str:
    """The catalog type of a trait or property value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "date" if is_date_key(key) else "number"
    if isinstance(value, str):
        if is_date_key(key) and parse_datetime(value) is not None:
            return "date"
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_money(value: Any) -> Decimal | None:
    """A revenue amount from a number or a string such as "$39.95" or "1,200.50"."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            return None
        return amount if amount.is_finite() else None
    if isinstance(value, str):
        cleaned = _MONEY_RE.sub("", value)
        if not cleaned or cleaned in {"-", ".", "-."}:
            return None
        try:
            amount = Decimal(cleaned)
        except InvalidOperation:
            return None
        return amount if amount.is_finite() else None
    return None
