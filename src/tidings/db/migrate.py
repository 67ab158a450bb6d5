"""Schema migrations with Alembic: upgrade, and the check `serve` runs before starting."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from tidings.db.engine import Database
from tidings.errors import NotMigrated

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    return cfg


def head(db: Database) -> str | None:
    return ScriptDirectory.from_config(_config(db)).get_current_head()


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to `revision`."""
    command.upgrade(_config(db), revision)


def downgrade(db: Database, revision: str) -> None:
    command.downgrade(_config(db), revision)


def require_current(db: Database) -> None:
    """Refuse to run against a database whose schema is behind (or ahead of) the code."""
    have, want = current(db), head(db)
    if have != want:
        url = db.engine.url.render_as_string(hide_password=True)
        raise NotMigrated(
            f"The database {url} is at schema revision {have or 'none'} but this version of "
            f"Tidings needs {want}. Run `tidings db upgrade` (or `tidings serve --migrate`)."
        )
