"""The projects table: one tenant, its keys and its identity policy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String
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
