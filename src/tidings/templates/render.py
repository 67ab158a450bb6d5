"""Rendering an email: Liquid in a sandbox, CSS inlined, a preheader, a plain-text part.

Owns the Liquid environments and the compiled-template cache. It knows nothing of customers or
sending: callers pass plain JSON-like dicts (`customer`, `event`, `project`, ...), and Liquid can
only read keys of those dicts. There is no loader (no `include` or `render` of files), and loops,
output size and nesting are bounded so a template cannot hang or exhaust a worker.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape as html_escape
from html import unescape
from typing import Any

import css_inline
from liquid import DictLoader, Environment
from liquid.exceptions import LiquidError

from tidings.errors import BadRequest


class _Sandbox(Environment):
    """Bounded Liquid: no file access, limited loops, output and nesting."""

    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30
    local_namespace_limit = 100_000


def _env(*, autoescape: bool, strict: bool) -> Environment:
    return _Sandbox(loader=DictLoader({}), autoescape=autoescape, strict_filters=strict)


# Sends are lenient (an unknown filter in a branch never taken must not fail a send); saving
# checks with strict filters so such mistakes are caught when the template is written.
_SEND = {True: _env(autoescape=True, strict=False), False: _env(autoescape=False, strict=False)}
_CHECK = {True: _env(autoescape=True, strict=True), False: _env(autoescape=False, strict=True)}

_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


class TemplateSyntaxError(BadRequest):
    """A template part that does not parse (or uses an unknown filter), with its line."""

    code = "invalid_template"

    def __init__(self, part: str, line: int, column: int, detail: str) -> None:
        super().__init__(f"{part}: line {line}, column {column}: {detail}")
        self.part, self.line, self.column, self.detail = part, line, column, detail


def _position(source: str, index: Any) -> tuple[int, int]:
    if not isinstance(index, int):
        return 1, 1
    if index < 0 or index > len(source):  # the end of the template (an unclosed block)
        index = len(source)
    before = source[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def check(part: str, source: str, *, html: bool, sample: Mapping[str, Any]) -> None:
    """Refuse a part that does not parse, uses an unknown filter (in any branch), or fails to
    render against a sample context."""
    env = _CHECK[html]
    try:
        template = env.from_string(source)
        for name, spans in template.analyze().filters.items():
            if name not in env.filters:
                line, column = _position(source, getattr(spans[0], "index", None))
                raise TemplateSyntaxError(part, line, column, f"unknown filter {name!r}")
        template.render(**sample)
    except LiquidError as exc:
        index = getattr(getattr(exc, "token", None), "start_index", None)
        line, column = _position(source, index)
        raise TemplateSyntaxError(part, line, column, str(getattr(exc, "message", exc))) from exc


@dataclass(frozen=True, slots=True)
class Parts:
    """The source of one template version."""

    subject: str
    preheader: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class Rendered:
    """What leaves: subject, html (CSS inlined, preheader in place) and text."""

    subject: str
    html: str
    text: str


class _Compiled:
    __slots__ = ("html", "preheader", "subject", "text")

    def __init__(self, parts: Parts) -> None:
        self.subject = _SEND[False].from_string(parts.subject)
        self.preheader = _SEND[False].from_string(parts.preheader)
        self.html = _SEND[True].from_string(parts.html)
        self.text = _SEND[False].from_string(parts.text) if parts.text.strip() else None


_cache: dict[tuple[int, int], _Compiled] = {}
_cache_lock = threading.Lock()


def _compiled(key: tuple[int, int] | None, parts: Parts) -> _Compiled:
    if key is None:
        return _Compiled(parts)
    found = _cache.get(key)
    if found is None:
        found = _Compiled(parts)
        with _cache_lock:
            if len(_cache) > 2000:
                _cache.clear()
            _cache[key] = found
    return found


def render(
    parts: Parts, context: Mapping[str, Any], *, key: tuple[int, int] | None = None
) -> Rendered:
    """Render a template; `key` (template id, version) reuses its compiled form."""
    compiled = _compiled(key, parts)
    try:
        subject = " ".join(compiled.subject.render(**context).split())
        preheader = " ".join(compiled.preheader.render(**context).split())
        body = compiled.html.render(**context)
        text = compiled.text.render(**context) if compiled.text is not None else None
    except LiquidError as exc:
        raise BadRequest(
            f"The template could not be rendered: {exc}", code="render_failed"
        ) from exc
    html = _INLINER.inline(_with_preheader(body, preheader))
    if text is None:
        text = html_to_text(body)
    return Rendered(subject=subject, html=html, text=text.strip() + "\n")


_BODY_OPEN = re.compile(r"<body[^>]*>", re.IGNORECASE)
_HIDDEN = (
    '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all;font-size:1px;'
    'line-height:1px;color:transparent;opacity:0">{}</div>'
)


def _with_preheader(html: str, preheader: str) -> str:
    # Mail clients show the first text of the body after the subject: a hidden preheader.
    if not preheader:
        return html
    block = _HIDDEN.format(html_escape(preheader))
    match = _BODY_OPEN.search(html)
    if match is None:
        return block + html
    return html[: match.end()] + block + html[match.end() :]


# HTML to text with a few C-speed regular expressions: this runs for every email whose text
# part is left empty, and an HTML parser in Python costs more than the whole render.
_DROP = re.compile(r"<(style|script|head|title)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_LINK = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(["'])(.*?)\1[^>]*>(.*?)</a\s*>""", re.S | re.I)
_IMG_ALT = re.compile(r"""<img\b[^>]*?\balt\s*=\s*(["'])(.*?)\1[^>]*>""", re.S | re.I)
_BR = re.compile(r"<br\b[^>]*>", re.I)
_LI = re.compile(r"<li\b[^>]*>", re.I)
_PARAGRAPH = re.compile(r"</?(?:p|h[1-6]|table|hr|blockquote|pre)\b[^>]*>", re.I)
_LINE = re.compile(r"</?(?:div|tr|ul|ol|li|section|header|footer|article|center)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]*>")
_BLANK_LINES = re.compile(r"\n{3,}")
_LIST_GAP = re.compile(r"\n\n(?=- )")


def _link(m: re.Match[str]) -> str:
    href = unescape(m.group(2)).strip()
    label = " ".join(unescape(_TAG.sub("", m.group(3))).split())
    if not href or href.startswith("#") or href == label:
        return label or href
    return f"{label} ({href})" if label else href


def html_to_text(html: str) -> str:
    """A plain-text version of an HTML email: blocks become lines, links keep their address."""
    text = _DROP.sub("", html)
    text = " ".join(text.split("\n"))  # source line breaks are only whitespace in HTML
    text = _LINK.sub(lambda m: _link(m).replace("&", "&amp;").replace("<", "&lt;"), text)
    text = _IMG_ALT.sub(lambda m: m.group(2), text)
    text = _BR.sub("\n", text)
    text = _LI.sub("\n- ", text)
    text = _PARAGRAPH.sub("\n\n", text)
    text = _LINE.sub("\n", text)
    text = unescape(_TAG.sub("", text))
    lines = [" ".join(line.split()) for line in text.split("\n")]  # any run of spaces: one
    out = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    return _LIST_GAP.sub("\n", out)
