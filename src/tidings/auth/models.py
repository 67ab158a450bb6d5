"""The projects table: one tenant, its keys and its identity policy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The write key is public by design (it ships in browser snippets), so it is stored as is.
    write_key: Mapped[str] = mapped_column(String(64), unique=True)
    # Secret keys are 256-bit random tokens: a SHA-256 digest is enough (no brute force is
    # feasible) and, unlike argon2, costs microseconds on every API request.
    secret_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_key_hint: Mapped[str] = mapped_column(String(16))
    # HMAC key for Segment's webhook destination signatures; must be readable to verify them.
    webhook_secret: Mapped[str] = mapped_column(String(64))
    require_email_to_create: Mapped[bool] = mapped_column(Boolean, default=False)
    require_user_id: Mapped[bool] = mapped_column(Boolean, default=False)
    unknown_user_track: Mapped[str] = mapped_column(String(10), default="create")
    revenue_as_charge: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    """A dashboard user (people, not API clients)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id
    name: Mapped[str | None] = mapped_column(String(200))
    is_owner: Mapped[bool] = mapped_column(Boolean, default=False)  # may create projects
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user's role in one project: owner, admin or member."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginAttempt(Base):
    """Failed sign-ins, for rate limiting across every process."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(400))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
