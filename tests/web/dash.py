"""Dashboard test helpers: users, a signed-in HTTP visitor, Segment message builders."""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any

import httpx
from argon2 import PasswordHasher

from tests.web.dom import Node, parse
from tidings import clock
from tidings.auth import users
from tidings.auth.models import Membership, User
from tidings.db import Database

PASSWORD = "correct horse battery staple"


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@functools.cache
def password_hash(password: str) -> str:
    """The argon2 hash the product would store (same default parameters), computed once: each
    hash costs about 0.3 s and the suite creates many users."""
    return PasswordHasher().hash(password)


def create_user(
    db: Database,
    *,
    role: str,
    project_ids: list[int],
    email: str | None = None,
    password: str = PASSWORD,
) -> str:
    """A dashboard user with `role` in the given projects (the rows `tidings user create`
    writes, with a cached hash); returns the email."""
    assert role in users.ROLES
    email = (email or new_email(role)).lower()
    with db.session(write=True) as session:
        user = User(
            email=email,
            password_hash=password_hash(password),
            is_owner=role == "owner",
            created_at=clock.now(),
        )
        session.add(user)
        session.flush()
        for pid in project_ids:
            session.add(
                Membership(user_id=user.id, project_id=pid, role=role, created_at=clock.now())
            )
    return email


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers of a response by cookie name (the raw header line)."""
    out = {}
    for line in response.headers.get_list("set-cookie"):
        out[line.split("=", 1)[0].strip()] = line
    return out


def cookie_flags(line: str) -> set[str]:
    """The attribute names and name=value attributes of a Set-Cookie line, lower-cased."""
    return {part.strip().lower() for part in line.split(";")[1:]}


class Visitor:
    """One browser-like HTTP client against the live server (cookies kept, no auto-redirect)."""

    def __init__(self, base_url: str, email: str | None = None) -> None:
        self.base_url = base_url
        self.email = email
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self._csrf: str | None = None

    def close(self) -> None:
        self.http.close()

    # -- sign-in ---------------------------------------------------------------------------

    def login_form(self, next: str | None = None) -> str:
        """GET /login; returns the form's csrf token (the cookie is kept)."""
        r = self.http.get("/login", params={"next": next} if next else None)
        assert r.status_code == 200, r.text
        return parse(r.text).find("input", name="csrf_token").attrs["value"]

    def sign_in(
        self, email: str, password: str = PASSWORD, *, next: str | None = None
    ) -> httpx.Response:
        """Fill and post the sign-in form; returns the POST's response (not followed)."""
        self._csrf = None
        token = self.login_form(next)
        data = {"email": email, "password": password, "csrf_token": token}
        if next is not None:
            data["next"] = next
        return self.http.post("/login", data=data)

    @property
    def session_token(self) -> str | None:
        return self.http.cookies.get("tidings_session")

    # -- pages -----------------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def page(self, path: str, status: int = 200, **kwargs: Any) -> Node:
        """GET a page, assert its status and return its parsed HTML."""
        r = self.http.get(path, **kwargs)
        assert r.status_code == status, f"{path}: {r.status_code}\n{r.text[:3000]}"
        return parse(r.text)

    def follow(self, r: httpx.Response) -> httpx.Response:
        """Follow one 303 like a browser does (GET the Location)."""
        assert r.status_code == 303, f"{r.status_code}\n{r.text[:3000]}"
        return self.http.get(r.headers["location"])

    def csrf(self, path: str = "/") -> str:
        """The session's CSRF token, read from a signed-in page's meta tag (then remembered:
        it lives as long as the session)."""
        if self._csrf is None:
            r = self.http.get(path, follow_redirects=True)
            assert r.status_code == 200, r.text
            self._csrf = parse(r.text).find("meta", name="csrf-token").attrs["content"]
        return self._csrf

    def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = "auto", **kw: Any
    ) -> httpx.Response:
        """POST a form; csrf="auto" adds the session's token, None leaves it out."""
        form = dict(data or {})
        if csrf == "auto":
            form["csrf_token"] = self.csrf()
        elif csrf is not None:
            form["csrf_token"] = csrf
        return self.http.post(path, data=form, **kw)


def signed_in(base_url: str, email: str, password: str = PASSWORD) -> Visitor:
    v = Visitor(base_url, email)
    r = v.sign_in(email, password)
    assert r.status_code == 303, f"sign-in failed: {r.status_code}\n{r.text[:2000]}"
    assert v.session_token
    return v


def customer_ids(doc: Node, project_id: int) -> list[int]:
    """Customer ids linked from the rows of a customer list, in order."""
    pattern = re.compile(rf"^/p/{project_id}/customers/(\d+)$")
    out = []
    for row in doc.find("tbody").find_all("tr"):
        for href in row.links():
            m = pattern.match(href)
            if m:
                out.append(int(m.group(1)))
    return out


# -- Segment messages ----------------------------------------------------------------------


def _mid() -> str:
    return uuid.uuid4().hex


def identify(user_id: str, traits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": _mid(), "userId": user_id, "traits": traits, **extra}


def track(
    user_id: str | None, event: str | None, properties: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "track", "messageId": _mid(), "properties": properties or {}}
    if user_id is not None:
        msg["userId"] = user_id
    if event is not None:
        msg["event"] = event
    return {**msg, **extra}


def group(
    user_id: str, group_id: str, traits: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "group",
        "messageId": _mid(),
        "userId": user_id,
        "groupId": group_id,
        "traits": traits or {},
        **extra,
    }


def uid(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
