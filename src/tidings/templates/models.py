"""The templates table: one email design of a project (subject, preheader, HTML, text)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (
        Index("uq_templates_project_name", "project_id", "name", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text)
    preheader: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text)
    # Empty: the plain-text part is generated from the rendered HTML.
    text: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)  # one per project
    starter: Mapped[str | None] = mapped_column(String(40))
    # Bumped on every edit: compiled forms are cached per (id, version).
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# One default layout per project, even when two first uses race.
Index(
    "uq_templates_project_default",
    Template.project_id,
    unique=True,
    sqlite_where=text("is_default"),
    postgresql_where=text("is_default"),
)
