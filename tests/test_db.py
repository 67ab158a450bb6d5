"""Sessions and connections of the databases: bulk units of work, SQLite checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.cli_support import scratch_db
from tidings.auth import service as projects
from tidings.config import Settings
from tidings.customers import service as customers
from tidings.customers.models import Customer
from tidings.db import Database
from tidings.db.bulk import Bulk
from tidings.errors import BadRequest
from tidings.ingest.processor import Entry, apply_entries

ORPHAN = "INSERT INTO customer_tags (customer_id, tag, project_id) VALUES (999999, 'x', 1)"


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[Database]:
    with scratch_db(backend, tmp_path) as database:
        yield database


def foreign_keys_on(db: Database, **kind: bool) -> bool:
    with db.session(**kind) as session:
        if session.get_bind().dialect.name != "sqlite":
            return True
        return bool(session.execute(text("PRAGMA foreign_keys")).scalar_one())


def test_only_a_bulk_session_leaves_foreign_key_lookups_out(db: Database) -> None:
    sqlite = db.engine.dialect.name == "sqlite"
    # One connection serves these sessions in turn, so each must set what it needs itself.
    db.engine.pool.dispose()
    assert foreign_keys_on(db, write=True)
    assert foreign_keys_on(db, write=True, bulk=True) is not sqlite
    assert foreign_keys_on(db, write=True)
    assert foreign_keys_on(db)
    assert foreign_keys_on(db, write=True, bulk=True) is not sqlite
    with pytest.raises(IntegrityError), db.session(write=True) as session:
        session.execute(text(ORPHAN))
    if not sqlite:  # PostgreSQL checks them in bulk too
        with pytest.raises(IntegrityError), db.session(write=True, bulk=True) as session:
            session.execute(text(ORPHAN))
    with db.session(write=True) as session:
        assert session.execute(text("SELECT count(*) FROM customer_tags")).scalar_one() == 0


def test_sqlite_checkpoints_the_main_file_in_larger_steps_than_the_inbox(tmp_path: Path) -> None:
    # The processor rewrites the same pages chunk after chunk: fewer checkpoints write them
    # back fewer times. The inbox's checkpoints run in request handlers, so they stay short.
    database = Database(Settings(database_url=f"sqlite:///{tmp_path / 'tidings.db'}"))
    try:
        assert database.separate_inbox
        with database.engine.connect() as conn:
            main = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        with database.inbox_engine.connect() as conn:
            inbox = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    finally:
        database.dispose()
    assert (main, inbox) == (40_000, 10_000)


def test_postgresql_plans_each_execution_for_its_own_values(db: Database, backend: str) -> None:
    """A bulk statement run again and again on one connection (psycopg prepares it) is planned
    for its parameters every time, never with a generic plan that can read a whole table."""
    if backend == "sqlite":
        pytest.skip("SQLite keeps no plans between executions")
    sql = "SELECT message_id FROM ingest_messages WHERE project_id = {m}"
    with db.session() as session:
        bulk = Bulk(session)
        for i in range(12):
            bulk.select_in(sql, "message_id", [f"m{i}", f"m{i + 1}", f"m{i + 2}"], (1,))
        generic, custom = session.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE 'SELECT message_id FROM ingest_messages%'"
            )
        ).one()
    assert generic == 0
    assert custom >= 5


def _rows_fetched(session: Session, table: str) -> int:
    return int(
        session.execute(
            text(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                "FROM pg_stat_xact_all_tables WHERE relname = :t"
            ),
            {"t": table},
        ).scalar_one()
    )


def test_a_probe_looks_each_value_up_whatever_the_statistics(db: Database, backend: str) -> None:
    """`select_in(probe=True)` finds what the IN form finds (each row once, however often its
    value is listed). On PostgreSQL it reads only those rows even from a table never analyzed,
    where the planner guesses that a project holds a handful of rows and would rather read the
    project's every row and filter them."""
    rows = [(1, f"k{i}", i) for i in range(20_000)] + [(2, "k5", -5)]
    # A full IN list (as the processor sends), some values twice, some absent.
    found = [f"k{i}" for i in range(0, 20_000, 50)]
    keys = found + [f"nope{i}" for i in range(90)] + found[:10]
    sql = "SELECT key, n FROM probed WHERE project_id = {m}"
    with db.session(write=True) as session:
        # A temporary table is never analyzed by autovacuum.
        session.execute(text("CREATE TEMPORARY TABLE probed (project_id int, key text, n int)"))
        session.execute(text("CREATE INDEX probed_key ON probed (project_id, key)"))
        session.execute(text("CREATE INDEX probed_n ON probed (project_id, n)"))
        bulk = Bulk(session)
        bulk.insert("probed", ("project_id", "key", "n"), rows)
        plain = sorted(bulk.select_in(sql, "key", keys, (1,)))
        before = 0 if backend == "sqlite" else _rows_fetched(session, "probed")
        probed = sorted(bulk.select_in(sql, "key", keys, (1,), probe=True, lock=None))
        fetched = 0 if backend == "sqlite" else _rows_fetched(session, "probed") - before
        session.execute(text("DROP TABLE probed"))
    assert plain == probed == sorted((f"k{i}", i) for i in range(0, 20_000, 50))
    assert fetched <= len(found)


def test_moving_last_seen_within_its_minute_leaves_the_customer_indexes_alone(
    db: Database, backend: str
) -> None:
    """Most processed messages only move a customer's last_seen. The customer list's recency
    index is on `seen_minute` (last_seen to the minute), so on PostgreSQL such an update within
    the minute is HOT (no index entry written); crossing into the next minute is not."""
    with db.session(write=True) as session:
        pid = projects.create(session, name="seen").id

    def process(second: float) -> tuple[datetime, datetime | None, tuple[int, int]]:
        """One track for the customer at 10:00 plus `second` seconds; returns its last_seen,
        seen_minute and the chunk's (updates, HOT updates) of the customers table."""
        at = datetime(2026, 11, 2, 10, 0, tzinfo=UTC) + timedelta(seconds=second)
        raw = {"type": "track", "userId": "u1", "event": "Seen", "timestamp": at.isoformat()}
        with db.session(write=True) as session:
            apply_entries(session, [Entry(pid, f"m{second}", at + timedelta(seconds=1), raw)])
            updates = (0, 0)
            if backend == "postgres":
                row = session.execute(
                    text(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                        "WHERE relname = 'customers'"
                    )
                ).one()
                updates = (row[0], row[1])
            customer = session.execute(
                select(Customer.last_seen, Customer.seen_minute).where(Customer.project_id == pid)
            ).one()
        return customer.last_seen, customer.seen_minute, updates

    if backend == "postgres":
        with db.session() as session:
            options = session.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'customers'")
            ).scalar_one()
        assert "fillfactor=90" in (options or [])  # room on each page for HOT versions
    minute = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    assert process(5.25)[:2] == (minute + timedelta(seconds=5.25), minute)
    last_seen, seen_minute, updates = process(40.5)
    assert (last_seen, seen_minute) == (minute + timedelta(seconds=40.5), minute)
    if backend == "postgres":
        assert updates[0] >= 1
        assert updates[1] == updates[0]
    last_seen, seen_minute, updates = process(62)
    assert (last_seen, seen_minute) == (
        minute + timedelta(seconds=62),
        minute + timedelta(minutes=1),
    )
    if backend == "postgres":
        assert updates[0] >= 1
        assert updates[1] < updates[0]


def test_binary_copy_stores_what_text_copy_stores(db: Database, backend: str) -> None:
    """`Bulk.insert` with the columns' types (binary COPY on PostgreSQL) stores the same values
    as without: JSON text as JSON documents (not as JSON strings), timestamps, NULLs, text."""
    at = datetime(2026, 11, 2, 10, 0, 5, 123456, tzinfo=UTC)
    columns = ("k", "n", "doc", "at", "note")
    types = ("int4", "int8", "jsonb", "timestamp", "text")
    with db.session(write=True) as session:
        bulk = Bulk(session)
        rows = [
            (
                1,
                2**40,
                bulk.json({"plan": "pro", "n": [1, 2.5, None], "é": "ü"}),
                bulk.dt(at),
                "a\tb\nc",
            ),
            (2, None, bulk.json([1, "x"]), None, None),
        ]
        doc_type = "jsonb" if backend == "postgres" else "text"
        for table in ("plain", "typed"):
            session.execute(
                text(
                    f"CREATE TEMPORARY TABLE {table} "
                    f"(k int, n bigint, doc {doc_type}, at timestamp, note text)"
                )
            )
        bulk.insert("plain", columns, rows)
        bulk.insert("typed", columns, rows, types=types)
        read = "SELECT k, n, doc, at, note FROM {t} ORDER BY k"
        plain = bulk.fetch(read.format(t="plain"))
        typed = bulk.fetch(read.format(t="typed"))
        if backend == "postgres":
            kinds = bulk.fetch("SELECT jsonb_typeof(doc) FROM typed ORDER BY k")
            assert kinds == [("object",), ("array",)]
    assert typed == plain
    assert [bulk.read_json(r[2]) for r in typed] == [
        {"plan": "pro", "n": [1, 2.5, None], "é": "ü"},
        [1, "x"],
    ]
    assert [bulk.read_dt(r[3]) for r in typed] == [at, None]
    assert [r[4] for r in typed] == ["a\tb\nc", None]


def test_json_text_beyond_a_double_still_reads(db: Database) -> None:
    """jsonb stores numbers as numeric, which holds what a double cannot: such a value still
    reads back (as the standard library reads it) instead of failing the customer's chunk."""
    with db.session() as session:
        bulk = Bulk(session)
        huge = "1" + "0" * 400  # as PostgreSQL prints such a jsonb number
        assert bulk.read_json(f'{{"n": {huge}, "m": 2}}') == {"n": 10**400, "m": 2}
        assert bulk.read_json(b'{"plan": "pro"}') == {"plan": "pro"}


def test_recency_pages_hold_whatever_the_session_time_zone_and_the_cursor_offset(
    db: Database, backend: str
) -> None:
    """The list by last seen pages through everyone once, in order, when the database session
    runs in another time zone than UTC and when a cursor states its time with another offset;
    a cursor whose time is out of range is a 400, not a crash."""
    with db.session(write=True) as session:
        pid = projects.create(session, name="zones").id
    base = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    seconds = [5, 20, 20, 50, 75, 130]  # a tie, three in one minute, then later minutes
    with db.session(write=True) as session:
        apply_entries(
            session,
            [
                Entry(
                    pid,
                    f"z{i}",
                    base + timedelta(seconds=s + 1),
                    {
                        "type": "identify",
                        "userId": f"z{i}",
                        "timestamp": (base + timedelta(seconds=s)).isoformat(),
                    },
                )
                for i, s in enumerate(seconds)
            ],
        )
    expected = [f"z{i}" for i in (5, 4, 3, 2, 1, 0)]  # newest first; the tie by id

    def walk(cursor: str | None = None) -> list[str]:
        seen: list[str] = []
        with db.session() as session:
            if backend == "postgres":
                session.execute(text("SET TimeZone = 'Asia/Kolkata'"))
            while True:
                page = customers.browse(
                    session, project_id=pid, sort="last_seen", limit=2, cursor=cursor
                )
                seen += [c.user_id or "" for c in page.data]
                if page.next_cursor is None or len(seen) > len(expected):  # or it repeats
                    return seen
                cursor = page.next_cursor

    assert walk() == expected
    # The cursor after z3 (seen at 10:00:50 UTC), stated as 15:30:50+05:30.
    after_z3 = customers.encode_cursor("2026-11-02T15:30:50+05:30", int(_id_of(db, pid, "z3")))
    assert walk(after_z3) == expected[3:]
    with pytest.raises(BadRequest):
        walk(customers.encode_cursor("0001-01-01T00:00:00+05:00", 1))


def _id_of(db: Database, pid: int, user_id: str) -> int:
    with db.session() as session:
        return int(
            session.execute(
                select(Customer.id).where(Customer.project_id == pid, Customer.user_id == user_id)
            ).scalar_one()
        )


def test_binary_copy_types_are_the_columns_types(db: Database, backend: str) -> None:
    """Binary COPY does not convert: the types the processor declares for the timeline's and
    the message log's columns must be the tables' own (a migration changing one must change
    them too)."""
    if backend == "sqlite":
        pytest.skip("SQLite has no binary COPY")
    from tidings.customers.batch import _EVENT_COLUMNS
    from tidings.ingest.processor import _LOG

    with db.session() as session:
        for table, declared in (("events", _EVENT_COLUMNS), ("ingest_messages", _LOG)):
            actual = dict(
                session.execute(
                    text(
                        "SELECT column_name, udt_name FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND table_name = :t"
                    ),
                    {"t": table},
                ).all()
            )
            assert {c: actual.get(c) for c, _ in declared} == dict(declared), table


def test_a_set_based_delete_removes_exactly_the_listed_rows(db: Database) -> None:
    """`Bulk.delete` with the keys' types (one statement on PostgreSQL) removes the rows whose
    keys are listed, each once however often listed, and nothing else."""
    rows = [(s, c) for s in (1, 2) for c in (10, 11, 12)]
    gone = [(1, 11), (2, 10), (1, 11), (3, 10)]  # a pair twice, one that matches nothing
    with db.session(write=True) as session:
        session.execute(text("CREATE TEMPORARY TABLE pairs (s int, c bigint)"))
        bulk = Bulk(session)
        bulk.insert("pairs", ("s", "c"), rows)
        bulk.delete("pairs", ("s", "c"), gone, types=("integer", "bigint"))
        left = sorted(bulk.fetch("SELECT s, c FROM pairs"))
        session.execute(text("DROP TABLE pairs"))
    assert left == [(1, 10), (1, 12), (2, 11), (2, 12)]
