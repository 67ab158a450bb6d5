"""Jinja2 environment, template filters, and the signed-in viewer passed to every page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from tidings.auth.models import Project
from tidings.customers.traits import is_date_key, parse_datetime
from tidings.web.rules_text import describe

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(value: Any) -> str:
    """An ISO date as a short readable UTC time."""
    if not value:
        return "—"
    dt = value if isinstance(value, datetime) else parse_datetime(value)
    if dt is None:
        return str(value)
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def _money(value: Any) -> str:
    try:
        return f"{float(value):,.2f}"
    except (TypeError, ValueError):
        return "—"


def _pretty(value: Any) -> str:
    # Returned as a plain string: Jinja's autoescape escapes it like any user data.
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _trait(value: Any, key: str) -> str | Markup:
    if is_date_key(key) and isinstance(value, str):
        dt = parse_datetime(value)
        if dt is not None:
            return Markup('<time datetime="{}">{}</time>').format(value, _when(dt))
    if isinstance(value, dict | list):
        return _pretty(value)
    return str(value)


def _compact(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


templates.env.filters.update(
    when=_when, money=_money, pretty=_pretty, compact=_compact, trait=_trait
)
templates.env.globals.update(describe=describe)


@dataclass(slots=True)
class Viewer:
    """The signed-in user as pages see them."""

    user_id: int
    email: str
    is_owner: bool
    csrf_token: str
    projects: list[tuple[Project, str]] = field(default_factory=list)
