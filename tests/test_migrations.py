"""Alembic migrations on SQLite and PostgreSQL: up, down, up again, and models == migrations."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import SAWarning

import tidings.auth.models
import tidings.customers.models
import tidings.ingest.models
import tidings.jobs.models
import tidings.segments.models
from tests.cli_support import scratch_database
from tidings.auth import service as projects
from tidings.config import Settings
from tidings.db import Base, Database
from tidings.db import migrate as migrations
from tidings.ingest.models import InboxBase

MODEL_MODULES = (
    tidings.auth.models,
    tidings.customers.models,
    tidings.ingest.models,
    tidings.jobs.models,
)


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[Database]:
    """A Database on an empty, never migrated database of its own."""
    with scratch_database(backend, tmp_path, migrated=False) as url:
        database = Database(Settings(database_url=url))
        try:
            yield database
        finally:
            database.dispose()


def model_tables() -> set[str]:
    assert MODEL_MODULES  # every model is imported, so the metadata is complete
    return set(Base.metadata.tables) | set(InboxBase.metadata.tables)


@contextmanager
def expression_indexes_unreflected() -> Iterator[None]:
    """SQLAlchemy cannot reflect SQLite expression indexes and warns; `indexes()` sees them."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", SAWarning
        )
        warnings.filterwarnings(
            "ignore", "autogenerate skipping metadata-specified expression-based index", UserWarning
        )
        yield


def indexes(engine: Engine) -> dict[str, tuple[str, str]]:
    """Every index (not backing a primary key or unique constraint) by name, with its table and
    definition, read from the database's catalog itself."""
    if engine.dialect.name == "sqlite":
        query = (
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    else:
        query = (
            "SELECT indexname, tablename, indexdef FROM pg_indexes i WHERE schemaname = 'public' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
        )
    with engine.connect() as conn:
        return {name: (table, sql) for name, table, sql in conn.execute(text(query))}


def metadata_indexes() -> dict[str, str]:
    return {
        str(index.name): table.name
        for metadata in (Base.metadata, InboxBase.metadata)
        for table in metadata.tables.values()
        for index in table.indexes
    }


def snapshot(engine: Engine) -> dict[str, Any]:
    """Tables with their columns, keys and indexes: enough to compare two runs."""
    insp = inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        with expression_indexes_unreflected():
            unique = insp.get_unique_constraints(table)
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in unique),
            "fks": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in insp.get_foreign_keys(table)
            ),
        }
    return shape


def leftovers(engine: Engine) -> list[str]:
    """Schema objects other than tables that a downgrade should also remove (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relkind::text || ':' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('S', 'v', 'm') "
                "UNION ALL SELECT 'type:' || t.typname FROM pg_type t "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'"
            )
        ).scalars()
        return sorted(rows)


def test_upgrade_downgrade_upgrade(db: Database) -> None:
    assert migrations.current(db) is None

    migrations.upgrade(db)
    assert migrations.current(db) == migrations.head(db)
    migrations.require_current(db)  # what `serve` checks
    first = snapshot(db.engine)
    first_indexes = indexes(db.engine)
    assert model_tables() <= set(first)
    assert set(first) - model_tables() == {"alembic_version"}

    migrations.downgrade(db, "base")
    assert migrations.current(db) is None
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    assert indexes(db.engine) == {}
    assert leftovers(db.engine) == []

    migrations.upgrade(db)
    assert migrations.current(db) == migrations.head(db)
    assert snapshot(db.engine) == first
    assert indexes(db.engine) == first_indexes


def test_models_match_migrations(db: Database) -> None:
    migrations.upgrade(db)
    with db.engine.connect() as conn, expression_indexes_unreflected():
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, [Base.metadata, InboxBase.metadata])  # type: ignore[arg-type]
    assert diff == []
    # Autogenerate does not see every index (expressions on SQLite): same names, same tables.
    in_db = {name: table for name, (table, _) in indexes(db.engine).items()}
    assert in_db == metadata_indexes()


def test_postgresql_compresses_inbox_bodies_with_lz4(db: Database, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite does not compress the inbox")
    migrations.upgrade(db)

    def method() -> str:
        with db.engine.connect() as conn:
            return str(
                conn.execute(
                    text(
                        "SELECT attcompression FROM pg_attribute "
                        "WHERE attrelid = 'inbox'::regclass AND attname = 'body'"
                    )
                ).scalar_one()
            )

    with db.engine.connect() as conn:
        lz4 = conn.execute(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        ).scalar_one()
    assert method() == ("l" if lz4 else "")
    migrations.downgrade(db, "0007")
    assert method() == ""


def test_segment_timers_become_one_per_customer_and_back(db: Database) -> None:
    """0010 keeps each customer's earliest timer; going back, each customer gets that instant
    in every segment of its project (each falls due then, and is planned again)."""
    migrations.upgrade(db, "0009")
    early, late = "2030-01-01 00:00:00.000000", "2030-02-01 00:00:00.000000"
    with db.session(write=True) as session:
        pid = projects.create(session, name="timers").id
    with db.engine.begin() as conn:
        now = "2026-11-24 00:00:00.000000"
        for sid in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO segments (id, project_id, name, rules, refs, version, status, "
                    "progress, member_count, created_at, updated_at) "
                    "VALUES (:s, :p, :n, '{}', '[]', 1, 'ready', 100, 0, :t, :t)"
                ),
                {"s": sid, "p": pid, "n": f"s{sid}", "t": now},
            )
        rows = [(1, 7, late), (2, 7, early), (2, 8, late)]
        for sid, cid, due in rows:
            conn.execute(
                text(
                    "INSERT INTO segment_timers (segment_id, customer_id, project_id, due_at) "
                    "VALUES (:s, :c, :p, :d)"
                ),
                {"s": sid, "c": cid, "p": pid, "d": due},
            )

    def timers(*columns: str) -> set[tuple[Any, ...]]:
        with db.engine.connect() as conn:
            got = conn.execute(text(f"SELECT {', '.join(columns)} FROM segment_timers"))
            return {tuple(str(v)[:10] if i else v for i, v in enumerate(r)) for r in got}

    migrations.upgrade(db)
    assert timers("customer_id", "due_at") == {(7, "2030-01-01"), (8, "2030-02-01")}
    migrations.downgrade(db, "0009")
    assert timers("customer_id", "segment_id", "due_at") == {
        (7, "1", "2030-01-01"),
        (7, "2", "2030-01-01"),
        (8, "1", "2030-02-01"),
        (8, "2", "2030-02-01"),
    }


def test_segment_changes_become_hourly_growth(db: Database) -> None:
    """0013 counts the log's entries and exits per segment and hour (a full computation's
    left out), then drops the log; going back brings an empty log."""
    migrations.upgrade(db, "0012")
    with db.engine.begin() as conn:
        rows = [
            (1, 7, "entered", "event", "2026-11-24 09:00:00.000000"),
            (1, 8, "entered", "time", "2026-11-24 09:59:59.999999"),
            (1, 7, "exited", "edit", "2026-11-24 09:30:00.000000"),
            (1, 9, "entered", "event", "2026-11-24 10:00:00.000000"),
            (1, 10, "entered", "compute", "2026-11-24 09:10:00.000000"),
            (2, 7, "exited", "event", "2026-11-23 23:15:00.000000"),
            (3, 7, "entered", "compute", "2026-11-23 23:15:00.000000"),
        ]
        for sid, cid, change, source, at in rows:
            conn.execute(
                text(
                    "INSERT INTO segment_changes (project_id, segment_id, customer_id, change, "
                    "source, at) VALUES (1, :s, :c, :k, :src, :at)"
                ),
                {"s": sid, "c": cid, "k": change, "src": source, "at": at},
            )
    migrations.upgrade(db)
    hour = 1_795_510_800 // 3600  # 2026-11-24 09:00 UTC
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT segment_id, hour, entered, exited FROM segment_growth"))
        got = {tuple(r) for r in rows}
    assert got == {(1, hour, 2, 1), (1, hour + 1, 1, 0), (2, hour - 10, 0, 1)}
    assert "segment_changes" not in inspect(db.engine).get_table_names()
    assert "ix_segment_members_customer" not in indexes(db.engine)
    migrations.downgrade(db, "0012")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM segment_changes")).scalar_one() == 0
    assert "segment_growth" not in inspect(db.engine).get_table_names()
    assert "ix_segment_members_customer" in indexes(db.engine)
