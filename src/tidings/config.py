"""Settings read from `TIDINGS_*` environment variables; nothing else reads os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a Tidings install, documented in the README."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./var/tidings.db",
        description="SQLAlchemy URL of the main database (SQLite file or postgresql+psycopg://).",
    )
    inbox_url: str | None = Field(
        default=None,
        description=(
            "Where acknowledged raw messages are committed before processing. Defaults to a "
            "second SQLite file beside a SQLite database (so acknowledging never waits for the "
            "processor's write lock) and to the main database on PostgreSQL."
        ),
    )
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        default=None, description="Base URL clients reach Tidings at (for links and settings)."
    )
    log_level: str = "INFO"
    inbox_sync: Literal["full", "normal"] = Field(
        default="normal",
        description=(
            "SQLite inbox durability: `normal` (WAL) keeps every acknowledged request through a "
            "crash or kill of Tidings; `full` also fsyncs each commit, surviving power loss at "
            "a large cost in single-message throughput."
        ),
    )
    processor_chunk: int = Field(default=2000, ge=1, le=20000)
    processor_idle_seconds: float = Field(default=0.05, gt=0)
    accepted_log_retention_hours: int = Field(
        default=72, ge=24, description="How long accepted messages stay in the message log."
    )
    rejected_log_retention_days: int = Field(
        default=0, ge=0, description="Days to keep dropped/rejected/failed messages (0 = keep)."
    )
    smtp_url: str | None = Field(
        default=None,
        description=(
            "Where email goes: smtp://host:port, smtp+starttls://user:pass@host:587 or "
            "smtps://user:pass@host:465. Unset: the embedded outbox keeps every email in the "
            "database, viewable in the dashboard and GET /api/messages."
        ),
    )
    mail_from: str = Field(
        default="Tidings <tidings@localhost>",
        description="Default From of every email (a project's email settings may override it).",
    )
    smtp_timeout: float = Field(default=30.0, gt=0, description="Seconds per SMTP operation.")
    send_lease_seconds: int = Field(
        default=300,
        ge=5,
        description="How long a worker may hold claimed emails before another takes them over.",
    )
    send_batch: int = Field(
        default=200, ge=1, le=5000, description="Emails a worker claims for delivery at a time."
    )
    cors_origins: str = Field(
        default="*", description="Origins allowed to call /v1/* from browsers."
    )

    def base_url(self) -> str:
        """The public URL links are built on (defaults to the address Tidings listens on)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def effective_inbox_url(self) -> str:
        """The inbox database URL: explicit, else beside the SQLite file, else the main database."""
        if self.inbox_url:
            return self.inbox_url
        if self.is_sqlite:
            path = self.database_url.split("///", 1)[1]
            if path in ("", ":memory:"):
                return self.database_url
            p = Path(path)
            return f"sqlite:///{p.with_name(p.stem + '-inbox' + (p.suffix or '.db'))}"
        return self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests clear the cache to change them)."""
    return Settings()
