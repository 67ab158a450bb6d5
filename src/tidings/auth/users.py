"""Dashboard users: accounts (argon2 passwords), roles per project, sessions, sign-in limits."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tidings import clock
from tidings.auth.models import LoginAttempt, Membership, Project, User, WebSession
from tidings.errors import AppError, BadRequest, Conflict, Forbidden, NotFound, Unauthorized

ROLES = ("owner", "admin", "member")
MANAGERS = frozenset({"owner", "admin"})  # may see and rotate keys and change settings
SESSION_DAYS = 14
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_MAX_FAILURES = 5
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()


class TooManyAttempts(AppError):
    code = "too_many_attempts"
    http_status = 429


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who is behind a session cookie."""

    user_id: int
    email: str
    name: str | None
    is_owner: bool
    csrf_token: str


def _check_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise BadRequest(f"{email!r} is not an email address.", code="invalid_email")
    return email


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}.", code="invalid_role")
    return role


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise BadRequest("A password has at least 8 characters.", code="weak_password")


def create_user(
    session: Session,
    *,
    email: str,
    password: str,
    role: str = "member",
    project_ids: list[int] | None = None,
    name: str | None = None,
) -> User:
    """Create a user with `role` in the given projects (all projects when None)."""
    email = _check_email(email)
    role = _check_role(role)
    _check_password(password)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user {email} already exists.", code="user_exists")
    user = User(
        email=email,
        password_hash=_hasher.hash(password),
        name=name,
        is_owner=role == "owner",
        created_at=clock.now(),
    )
    session.add(user)
    session.flush()
    if project_ids is None:
        project_ids = list(session.scalars(select(Project.id)))
    for pid in project_ids:
        session.add(Membership(user_id=user.id, project_id=pid, role=role, created_at=clock.now()))
    session.flush()
    return user


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)


def authenticate(session: Session, *, email: str, password: str, client: str) -> User:
    """Check a password; refuses with 429 after repeated failures for this email or client."""
    email = email.strip().lower()
    now = clock.now()
    keys = [f"email:{email}", f"client:{client}"]
    since = now - LOGIN_WINDOW
    for key in keys:
        failures = session.scalar(
            select(func.count()).where(LoginAttempt.key == key, LoginAttempt.at >= since)
        )
        limit = LOGIN_MAX_FAILURES if key.startswith("email:") else LOGIN_MAX_FAILURES * 4
        if (failures or 0) >= limit:
            raise TooManyAttempts("Too many failed sign-ins. Try again in 15 minutes.")
    user = session.scalars(select(User).where(User.email == email)).first()
    ok = False
    if user is not None:
        try:
            ok = _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            ok = False
    else:
        _hasher.hash(password)  # same cost whether or not the account exists
    if not ok or user is None:
        for key in keys:
            session.add(LoginAttempt(key=key, at=now))
        raise Unauthorized("Wrong email or password.", code="invalid_credentials")
    session.execute(delete(LoginAttempt).where(LoginAttempt.key == keys[0]))
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = now
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, *, user_id: int) -> str:
    """A new session for the user; returns the cookie token (only its hash is kept)."""
    token = secrets.token_urlsafe(32)
    now = clock.now()
    session.add(
        WebSession(
            token_hash=_token_hash(token),
            user_id=user_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(days=SESSION_DAYS),
        )
    )
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session.flush()
    return token


def signed_in(session: Session, *, token: str | None) -> SignedIn | None:
    """The user behind a session cookie, or None when absent or expired."""
    if not token:
        return None
    row = session.execute(
        select(
            WebSession.csrf_token,
            WebSession.expires_at,
            User.id,
            User.email,
            User.name,
            User.is_owner,
        )
        .join(User, User.id == WebSession.user_id)
        .where(WebSession.token_hash == _token_hash(token))
    ).first()
    if row is None or row.expires_at < clock.now():
        return None
    return SignedIn(
        user_id=row.id,
        email=row.email,
        name=row.name,
        is_owner=row.is_owner,
        csrf_token=row.csrf_token,
    )


def end_session(session: Session, *, token: str | None) -> None:
    if token:
        session.execute(delete(WebSession).where(WebSession.token_hash == _token_hash(token)))


def projects_of(session: Session, *, user_id: int) -> list[tuple[Project, str]]:
    """The projects a user belongs to, with the role in each."""
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == user_id)
        .order_by(Project.id)
    ).all()
    return [(p, r) for p, r in rows]


def role_in(session: Session, *, user_id: int, project_id: int) -> str:
    """The user's role in the project; 404 when not a member (projects stay invisible)."""
    role = session.scalar(
        select(Membership.role).where(
            Membership.user_id == user_id, Membership.project_id == project_id
        )
    )
    if role is None:
        raise NotFound("No such project.", code="project_not_found")
    return role


def require_manager(session: Session, *, user_id: int, project_id: int) -> str:
    """Owners and admins only (keys, settings, users)."""
    role = role_in(session, user_id=user_id, project_id=project_id)
    if role not in MANAGERS:
        raise Forbidden("Only owners and admins can do this.", code="forbidden_role")
    return role


def members(session: Session, *, project_id: int) -> list[tuple[User, str]]:
    rows = session.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.project_id == project_id)
        .order_by(User.email)
    ).all()
    return [(u, r) for u, r in rows]


def invite(
    session: Session, *, project_id: int, email: str, role: str, password: str | None = None
) -> tuple[User, str | None]:
    """Add a user to the project; creates the account (with a one-time password) if needed.

    Returns the user and the generated password when one was made.
    """
    email = _check_email(email)
    role = _check_role(role)
    user = session.scalars(select(User).where(User.email == email)).first()
    generated = None
    if user is None:
        generated = password or secrets.token_urlsafe(12)
        user = create_user(
            session, email=email, password=generated, role=role, project_ids=[project_id]
        )
        return user, generated if password is None else None
    existing = session.get(Membership, (user.id, project_id))
    if existing is not None:
        existing.role = role
    else:
        session.add(
            Membership(user_id=user.id, project_id=project_id, role=role, created_at=clock.now())
        )
    session.flush()
    return user, None


def current_role(session: Session, *, project_id: int, email: str) -> str | None:
    """The role the user with this email holds in the project, if any."""
    return session.scalar(
        select(Membership.role)
        .join(User, User.id == Membership.user_id)
        .where(Membership.project_id == project_id, User.email == email.strip().lower())
    )


def add_owner_to_project(session: Session, *, project_id: int, user_id: int) -> None:
    """The creator of a project owns it."""
    if session.get(Membership, (user_id, project_id)) is None:
        session.add(
            Membership(user_id=user_id, project_id=project_id, role="owner", created_at=clock.now())
        )
        session.flush()
