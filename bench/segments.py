"""Segments benchmark: full computation per condition family, and the cost of live segments on
ingestion, on SQLite and PostgreSQL.

Data: the dashboard benchmark's data set (bench/dashboard.py: 1,000,000 customers with traits
such as plan, created_at, country, logins, trial_ends_at; tags, charges and lifetime value,
groups with traits, the `high_value` audience; 10,000,000 track, page and screen events with
properties over two years, denser towards now), loaded straight into SQLite and, for
PostgreSQL, copied from that file with COPY (same rows; then ANALYZE, as autovacuum would).

1. Full computation: for each condition family (trait eq, trait date, event count with a
   property filter, first / last performed, page starts_with, tag, lifetime value, last charge,
   group trait, audience, segment in segment, random bucket and one realistic combined tree) a
   new segment is created with `tidings.segments.service.create` and
   `tidings.segments.membership.compute` is timed end to end: the SQL selection, members,
   history and timers. The breakdown columns are the time spent
   in `compile.member_ids` (select), `membership.timer_plan` (timers) and
   `membership._enter` / `apply_changes` (write: members and history); select and timers run
   at the same time (on two connections), so "other" is the total less the longer of the two
   and the writes (timers, checkpoints). The target is under 10 s each.
2. Ingestion cost, on a data set a tenth of the size by default (--ingest-customers,
   --ingest-events; the same generator, so the same shares and segment sizes in percent): the
   processor (`tidings.ingest.processor.drain`, chunks of TIDINGS_PROCESSOR_CHUNK) applies the
   same kind of realistic stream (interleaved sessions: an identify with traits now and then,
   track events with the names the segments use, pages; 95% of sessions from existing
   customers, 60% of those from the 5% most recently seen, the rest new customers) with no
   segments, with 50 live segments of mixed families (already computed), and with those 50
   switched off again (status "failed" for the run); the target is a throughput drop of less
   than 30%. Each kind runs --runs times: before any segment exists, then alternately with the
   segments live and switched off (so both see the database grow alike), and the drop compares
   the medians. Each run has a stream of its own (another seed: the same shares, other customers
   and events), so no run replays messages whose effects an earlier run (or the computation
   of the segments) has already seen. The process settles its heap first, as the worker does
   (`worker.runner.settle_heap`). `upkeep` is the time spent in `membership.evaluate_pairs`
   (facts: `load_facts`, writes: `apply_changes`): inside the processor's transaction on
   SQLite, beside it on PostgreSQL (`segments.upkeep`; a run ends when its upkeep is done).
   On SQLite each timed run starts from a checkpointed database and ends with a checkpoint,
   so it pays for writing its own pages back, whether or not an automatic checkpoint falls
   inside it (the log's file keeps its size between runs, see `checkpoint`); on PostgreSQL
   each starts
   from a vacuumed database and ends with a VACUUM of the tables it writes, so it pays for
   cleaning up its own dead rows and the next run does not share the cores with autovacuum
   working through them.

Prints the machine and its load (other processes on the same cores inflate every figure).

    python bench/segments.py [--customers 1000000] [--events 10000000] [--reuse DIR]
                             [--postgres-url URL] [--skip-sqlite] [--messages 20000] [--runs 3]
                             [--ingest-customers N] [--ingest-events N]
                             [--skip-families] [--skip-ingest] [--no-analyze] [--keep]

--reuse DIR keeps the loaded SQLite database in DIR (shared with bench/dashboard.py: the same
key) and the loaded PostgreSQL database as a template, so later runs skip the loads; every run
works on a copy, so the cache stays as loaded. --postgres-url (or TIDINGS_BENCH_POSTGRES_URL)
is a URL of a PostgreSQL server where this user may create databases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import dashboard
import orjson
import psycopg
from sqlalchemy import bindparam, insert, text
from sqlalchemy.engine import make_url

from tidings import clock
from tidings.config import Settings
from tidings.db import Database, table_of
from tidings.ingest import processor
from tidings.ingest.inbox import ensure_inbox_schema
from tidings.ingest.models import InboxItem
from tidings.segments import compile as segment_sql
from tidings.segments import membership, service
from tidings.worker.runner import settle_heap

TARGET_SECONDS = 10.0
TARGET_DROP = 30.0
LIVE_SEGMENTS = 50

# -- the segments -------------------------------------------------------------------------------

# (family, segment name, rules): one new segment per family, timed in full.
FAMILIES: list[tuple[str, str, dict[str, Any]]] = [
    ("trait eq", "Plan: pro", {"trait": "plan", "op": "eq", "value": "pro"}),
    (
        "trait date within_last_days",
        "Signed up in the last 30 days",
        {"trait": "created_at", "op": "within_last_days", "value": 30},
    ),
    (
        "event count>=N within_days, where",
        "Used segments 2+ times in 90 days",
        {
            "event": "Feature Used",
            "op": "performed",
            "count": {"gte": 2},
            "within_days": 90,
            "where": [{"property": "feature", "op": "eq", "value": "segments"}],
        },
    ),
    (
        "event first_performed",
        "First sign-in in the last 30 days",
        {"event": "Signed In", "op": "first_performed", "within_days": 30},
    ),
    (
        "event last_performed",
        "Lapsed: last sign-in over 90 days ago",
        {"event": "Signed In", "op": "last_performed", "more_than_days_ago": 90},
    ),
    (
        "page visited starts_with",
        "Read the docs in the last 30 days",
        {"page": "path", "op": "starts_with", "value": "/docs", "within_days": 30},
    ),
    ("tag has", "Tag: newsletter", {"tag": "newsletter", "op": "has"}),
    (
        "revenue lifetime_value gte",
        "Lifetime value 100+",
        {"revenue": "lifetime_value", "op": "gte", "value": 100},
    ),
    (
        "revenue last_charge within",
        "Charged in the last 90 days",
        {"revenue": "last_charge", "op": "within_last_days", "value": 90},
    ),
    (
        "group_trait",
        "Accounts in software",
        {"group_trait": "industry", "op": "eq", "value": "software"},
    ),
    ("audience", "Audience: high value", {"audience": "high_value", "op": "member"}),
    (
        "segment in segment",
        "Pro in DE/FR/NL",
        {
            "all": [
                {"segment": "Plan: pro", "op": "in"},
                {"trait": "country", "op": "in", "value": ["DE", "FR", "NL"]},
            ]
        },
    ),
    ("random bucket", "Holdout 10%", {"random": "holdout", "percent": 10}),
    (
        "combined tree",
        "Engaged paying accounts",
        {
            "all": [
                {"trait": "plan", "op": "in", "value": ["pro", "team", "enterprise"]},
                {
                    "any": [
                        {
                            "event": "Viewed Dashboard",
                            "op": "performed",
                            "count": {"gte": 2},
                            "within_days": 90,
                        },
                        {
                            "page": "path",
                            "op": "starts_with",
                            "value": "/pricing",
                            "within_days": 60,
                        },
                        {"revenue": "lifetime_value", "op": "gte", "value": 50},
                    ]
                },
                {"not": {"tag": "do-not-contact", "op": "has"}},
                {"trait": "created_at", "op": "more_than_days_ago", "value": 14},
            ]
        },
    ),
]

# More live segments of every family, so that ingestion runs with LIVE_SEGMENTS of them.
EXTRA: list[tuple[str, dict[str, Any]]] = [
    ("Plan: free", {"trait": "plan", "op": "eq", "value": "free"}),
    ("Plan: trial", {"trait": "plan", "op": "eq", "value": "trial"}),
    ("Plan: team or enterprise", {"trait": "plan", "op": "in", "value": ["team", "enterprise"]}),
    ("Country: US", {"trait": "country", "op": "eq", "value": "US"}),
    ("Power users (300+ logins)", {"trait": "logins", "op": "gte", "value": 300}),
    ("Has a phone", {"trait": "phone", "op": "exists"}),
    ("Head of Growth", {"trait": "title", "op": "contains", "value": "Growth"}),
    ("Newsletter opt-in", {"trait": "newsletter", "op": "eq", "value": True}),
    ("Trial ends this week", {"trait": "trial_ends_at", "op": "within_next_days", "value": 7}),
    (
        "Signed in this week",
        {"event": "Signed In", "op": "performed", "within_days": 7},
    ),
    (
        "Repeat buyers",
        {"event": "Order Completed", "op": "performed", "count": {"gte": 2}},
    ),
    (
        "Revenue dashboard viewers",
        {
            "event": "Viewed Dashboard",
            "op": "performed",
            "within_days": 60,
            "where": [{"property": "dashboard", "op": "eq", "value": "revenue"}],
        },
    ),
    ("Searched in 14 days", {"event": "Searched", "op": "performed", "within_days": 14}),
    (
        "Email engaged",
        {"event": "Email Opened", "op": "performed", "count": {"gte": 2}, "within_days": 60},
    ),
    ("Exported a report", {"event": "Report Exported", "op": "performed"}),
    (
        "Support ticket this month",
        {"event": "Support Ticket Created", "op": "performed", "within_days": 30},
    ),
    ("Upgraded ever", {"event": "Subscription Upgraded", "op": "performed"}),
    (
        "Cart abandoners",
        {
            "all": [
                {"event": "Product Added", "op": "performed", "within_days": 30},
                {"event": "Order Completed", "op": "not_performed", "within_days": 30},
            ]
        },
    ),
    (
        "Pricing page, 14 days",
        {"page": "path", "op": "eq", "value": "/pricing", "within_days": 14},
    ),
    (
        "Came from the newsletter",
        {"page": "url", "op": "contains", "value": "utm_source=newsletter", "within_days": 30},
    ),
    ("Visited billing", {"page": "name", "op": "eq", "value": "Billing", "within_days": 90}),
    ("Tag: vip", {"tag": "vip", "op": "has"}),
    ("Tag: beta", {"tag": "beta", "op": "has"}),
    ("Tag: churn-risk", {"tag": "churn-risk", "op": "has"}),
    ("Two charges or more", {"revenue": "charge_count", "op": "gte", "value": 2}),
    ("Lifetime value 500+", {"revenue": "lifetime_value", "op": "gte", "value": 500}),
    ("Big accounts", {"group_trait": "employees", "op": "gte", "value": 1000}),
    (
        "Accounts on paid plans",
        {"group_trait": "plan", "op": "in", "value": ["pro", "team", "enterprise"]},
    ),
    ("Member of acct_00042", {"group": "acct_00042", "op": "member"}),
    ("Not high value", {"audience": "high_value", "op": "not_member"}),
    (
        "Pro, not churn risk",
        {
            "all": [
                {"segment": "Plan: pro", "op": "in"},
                {"segment": "Tag: churn-risk", "op": "not_in"},
            ]
        },
    ),
    ("Experiment arm B", {"random": "pricing-test", "percent": 50}),
    (
        "Trial users to nudge",
        {
            "all": [
                {"trait": "plan", "op": "eq", "value": "trial"},
                {"event": "Feature Used", "op": "performed", "within_days": 30},
                {"not": {"event": "Subscription Upgraded", "op": "performed"}},
            ]
        },
    ),
    (
        "Win-back",
        {
            "all": [
                {"revenue": "lifetime_value", "op": "gt", "value": 0},
                {"event": "Signed In", "op": "not_performed", "within_days": 60},
                {"not": {"tag": "do-not-contact", "op": "has"}},
            ]
        },
    ),
    (
        "Onboarding, week one",
        {
            "all": [
                {"trait": "created_at", "op": "within_last_days", "value": 7},
                {"any": [{"tag": "onboarding", "op": "has"}, {"page": "path", "op": "any"}]},
            ]
        },
    ),
    (
        "EU companies",
        {
            "all": [
                {"trait": "country", "op": "in", "value": ["DE", "FR", "NL", "SE", "ES"]},
                {"trait": "company.employees", "op": "gte", "value": 100},
            ]
        },
    ),
]


# -- timing what the product does --------------------------------------------------------------


class Probe:
    """Wall time spent in some functions of the product, wrapped in place (this process only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.results: dict[str, int] = defaultdict(int)

    def wrap(self, module: ModuleType, name: str, label: str) -> None:
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
            if isinstance(out, int):
                self.results[label] += out
            elif isinstance(out, dict):
                self.results[label] += len(out)
            return out

        setattr(module, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.results.clear()


PROBE = Probe()
PROBE.wrap(segment_sql, "member_ids", "select")  # membership.compute calls sql.member_ids
PROBE.wrap(membership, "timer_plan", "timers")  # beside the selection
PROBE.wrap(membership, "_enter", "write")  # a computation's entries
PROBE.wrap(membership, "apply_changes", "write")  # its exits; the processor's changes
PROBE.wrap(membership, "load_facts", "facts")
PROBE.wrap(membership, "live_segments", "live")
# The processor's upkeep, in its transaction (SQLite) or beside it (PostgreSQL, upkeep.Upkeep).
PROBE.wrap(membership, "evaluate_pairs", "upkeep")


# -- databases ----------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_LOG_LEVEL"] = "WARNING"
    return env


def sqlalchemy_url(url: str) -> str:
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def conninfo(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(sqlalchemy_url(url)).set(database=database).render_as_string(False)


def sqlite_db(path: Path) -> Database:
    db = Database(Settings(database_url=f"sqlite:///{path}", log_level="WARNING"))
    ensure_inbox_schema(db)
    return db


def pg_admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(url), autocommit=True)


# Tables the loader fills; their non-primary-key indexes are built after the copy.
COPY_TABLES = (
    "groups",
    "customers",
    "customer_anonymous_ids",
    "customer_tags",
    "customer_groups",
    "events",
    "charges",
    "event_catalog",
    "trait_catalog",
)
COPY_STEP = 20_000  # rows per COPY block


def copy_to_postgres(sqlite_path: Path, url: str, sqlite_pid: int) -> tuple[int, dict[str, float]]:
    """Copy the benchmark rows of a loaded SQLite file into a migrated, empty PostgreSQL
    database (COPY, indexes built afterwards, then ANALYZE); returns the project id."""
    env = base_env() | {"TIDINGS_DATABASE_URL": sqlalchemy_url(url)}
    dashboard.cli(env, "db", "upgrade")
    pid = int(json.loads(dashboard.cli(env, "project", "create", "bench", "--json"))["id"])
    seconds: dict[str, float] = {}
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    src.execute("PRAGMA cache_size=-1000000")
    with psycopg.connect(conninfo(url)) as pg, pg.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # no FK triggers during COPY
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public' "
            "AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)",
            (list(COPY_TABLES),),
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        # Emptied in this transaction, so COPY may write the rows frozen (no VACUUM needed).
        cur.execute(f"TRUNCATE {', '.join(COPY_TABLES)} CASCADE")
        for table in COPY_TABLES:
            t0 = time.perf_counter()
            n = _copy_table(src, cur, table, pid, sqlite_pid)
            seconds[table] = time.perf_counter() - t0
            print(f"    {table}: {n:,} rows in {seconds[table]:,.0f} s", flush=True)
        t0 = time.perf_counter()
        for _name, ddl in indexes:
            cur.execute(ddl)
        seconds["indexes"] = time.perf_counter() - t0
        print(f"    {len(indexes)} indexes in {seconds['indexes']:,.0f} s", flush=True)
        for table in COPY_TABLES:
            if table in ("customer_anonymous_ids", "customer_tags", "customer_groups"):
                continue  # no id column
            if table in ("event_catalog", "trait_catalog"):
                continue
            cur.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,))
            seq = cur.fetchone()
            if seq is not None and seq[0] is not None:
                cur.execute(
                    f"SELECT setval(%s, (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)",
                    (seq[0],),
                )
        pg.commit()
    src.close()
    with psycopg.connect(conninfo(url), autocommit=True) as pg:
        t0 = time.perf_counter()
        pg.execute("ANALYZE")
        pg.execute("CHECKPOINT")
        seconds["ANALYZE"] = time.perf_counter() - t0
    return pid, seconds


def _copy_table(
    src: sqlite3.Connection, cur: psycopg.Cursor[Any], table: str, pid: int, sqlite_pid: int
) -> int:
    cols = src.execute(f"PRAGMA table_info({table})").fetchall()
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = %s AND is_generated = 'NEVER'",  # as table_info: no generated ones
        (table,),
    )
    pg_cols = {r[0] for r in cur.fetchall()}
    names = [c[1] for c in cols]
    if set(names) != pg_cols:
        raise RuntimeError(f"{table}: SQLite {sorted(names)} but PostgreSQL {sorted(pg_cols)}")
    parts = []
    for _, name, decl, *_ in cols:
        quoted = f'"{name}"'
        if name == "project_id":
            parts.append(f"'{pid}'")
        elif decl.upper() in ("INTEGER", "BIGINT", "BOOLEAN"):
            parts.append(f"ifnull({quoted}, '\\N')")
        else:  # COPY text format: a backslash is written twice
            parts.append(f"ifnull(replace({quoted}, '\\', '\\\\'), '\\N')")
    line = " || char(9) || ".join(parts)
    where = "rowid > ? AND rowid <= ?"
    if "project_id" in names:
        where += f" AND project_id = {int(sqlite_pid)}"
    block_sql = (
        "SELECT count(*), group_concat(line, char(10)) "
        f"FROM (SELECT {line} AS line FROM {table} WHERE {where})"
    )
    lo, hi = src.execute(
        f"SELECT ifnull(min(rowid), 1) - 1, ifnull(max(rowid), 0) FROM {table}"
    ).fetchone()
    col_list = ", ".join(f'"{n}"' for n in names)
    total = 0
    t0 = time.perf_counter()
    next_report = 1_000_000
    with cur.copy(f"COPY {table} ({col_list}) FROM STDIN WITH (FREEZE)") as copy:
        for start in range(lo, hi, COPY_STEP):
            n, block = src.execute(block_sql, (start, start + COPY_STEP)).fetchone()
            if n:
                copy.write(block + "\n")
                total += n
            if total >= next_report:
                next_report += 1_000_000
                rate = total / (time.perf_counter() - t0)
                print(f"      {table} {total:>12,}  {rate:,.0f}/s", flush=True)
    return total


def pg_database_comment(admin: psycopg.Connection[Any], name: str) -> str | None:
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return str(row[0] or "")


@dataclass
class Target:
    """One backend's working database and how the benchmark reaches it."""

    name: str
    url: str
    project_id: int
    db: Database
    cleanup: Callable[[], None] = lambda: None
    customers: int = 0
    pool: list[int] = field(default_factory=list)  # recently seen customers (ingestion)
    notes: list[str] = field(default_factory=list)


def sqlite_target(
    source: Path, meta: dict[str, Any], workdir: Path, *, cached: bool, keep: bool
) -> Target:
    notes = []
    if cached:
        path = workdir / "work.db"
        t0 = time.perf_counter()
        shutil.copyfile(source, path)
        # Flush the copy now: otherwise the first checkpoint of the first timed run writes
        # the whole file back to disk and is charged to that run.
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        notes.append(f"working copy of the cached database ({time.perf_counter() - t0:,.0f} s)")
    else:
        path = source
    db = sqlite_db(path)

    def cleanup() -> None:
        db.dispose()
        if cached and not keep:
            for p in workdir.glob("work*"):
                p.unlink(missing_ok=True)

    return Target("SQLite", f"sqlite:///{path}", int(meta["project_id"]), db, cleanup, notes=notes)


def postgres_target(
    args: argparse.Namespace, source: Path, meta: dict[str, Any], key: str
) -> Target:
    """A PostgreSQL database with the same rows: a copy of the cached template (--reuse) or
    loaded from the SQLite file."""
    admin = pg_admin(args.postgres_url)
    run = f"tidings_segbench_run_{uuid.uuid4().hex[:8]}"
    notes: list[str] = []
    pid: int
    if args.reuse:
        cache = (
            "tidings_segbench_" + hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]
        )
        comment = pg_database_comment(admin, cache)
        if comment and comment.startswith("loaded "):
            print(f"reusing PostgreSQL database {cache}")
            pid = int(json.loads(comment[len("loaded ") :])["project_id"])
        else:
            if comment is not None:
                admin.execute(f'DROP DATABASE "{cache}"')
            admin.execute(f'CREATE DATABASE "{cache}"')
            print(f"loading PostgreSQL database {cache} from {source}", flush=True)
            t0 = time.perf_counter()
            pid, _ = copy_to_postgres(
                source, with_database(args.postgres_url, cache), int(meta["project_id"])
            )
            total = time.perf_counter() - t0
            info = json.dumps({"project_id": pid, "key": key, "seconds": total})
            admin.execute(f"COMMENT ON DATABASE \"{cache}\" IS 'loaded {info}'")
            notes.append(f"loaded with COPY in {total:,.0f} s")
        t0 = time.perf_counter()
        admin.execute(f'CREATE DATABASE "{run}" TEMPLATE "{cache}" STRATEGY FILE_COPY')
        notes.append(f"working copy of the cached database ({time.perf_counter() - t0:,.0f} s)")
    else:
        admin.execute(f'CREATE DATABASE "{run}"')
        print(f"loading PostgreSQL database {run} from {source}", flush=True)
        t0 = time.perf_counter()
        pid, _ = copy_to_postgres(
            source, with_database(args.postgres_url, run), int(meta["project_id"])
        )
        notes.append(f"loaded with COPY in {time.perf_counter() - t0:,.0f} s")
    url = with_database(args.postgres_url, run)
    db = Database(Settings(database_url=url, log_level="WARNING"))
    with db.session() as s:
        settings = {
            k: s.execute(text(f"SHOW {k}")).scalar_one()
            for k in ("shared_buffers", "work_mem", "effective_cache_size", "server_version")
        }
    notes.append(", ".join(f"{k} {v}" for k, v in settings.items()))

    def cleanup() -> None:
        db.dispose()
        if args.keep:
            print(f"kept PostgreSQL database {run}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{run}"')
        admin.close()

    return Target("PostgreSQL", url, pid, db, cleanup, notes=notes)


# -- 1. full computation ------------------------------------------------------------------------


@dataclass
class Computed:
    family: str
    name: str
    seconds: float
    members: int
    timers: int
    parts: dict[str, float]
    status: str


def checkpoint(db: Database) -> None:
    """SQLite: move the write-ahead log into the database file (as its automatic checkpoints
    would, later, during someone else's transaction), and start the log again from its
    beginning. The log's file keeps its size, as with the automatic checkpoints (Tidings sets
    no journal_size_limit), and the next run writes over its blocks. Truncating the file
    instead (TRUNCATE) made every run append its log to new blocks, which the file system
    zeroes before the first write into them; on the benchmark machine (ext4, Linux 6.18) a
    commit then took up to three times as long per frame, and the runs that write the most
    paid the most (see the README, Performance)."""
    if db.engine.dialect.name == "sqlite":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)")


# What the processor and segment upkeep write (and the inbox it empties, on PostgreSQL).
WRITTEN_TABLES = (
    "inbox",
    "customers",
    "customer_anonymous_ids",
    "customer_groups",
    "groups",
    "events",
    "charges",
    "event_catalog",
    "trait_catalog",
    "ingest_messages",
    "ingest_stats",
    "segments",
    "segment_members",
    "segment_growth",
    "segment_timers",
    "domain_events",
)


def vacuum(db: Database) -> None:
    """PostgreSQL: clean up the dead rows a run left (as autovacuum would, later, on the same
    cores as someone else's work)."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM {', '.join(WRITTEN_TABLES)}")


def compute_segment(target: Target, family: str, name: str, rules: dict[str, Any]) -> Computed:
    db, pid = target.db, target.project_id
    with db.session(write=True) as s:
        seg = service.create(s, project_id=pid, name=name, rules=rules)
        sid, version = seg.id, seg.version
    checkpoint(db)  # what earlier runs wrote is in the database file before the clock starts
    PROBE.reset()
    t0 = time.perf_counter()
    membership.compute(db, segment_id=sid, version=version)
    checkpoint(db)  # and this run's own writes are counted in full
    seconds = time.perf_counter() - t0
    parts = {k: PROBE.seconds.get(k, 0.0) for k in ("select", "timers", "write")}
    with db.session(write=True) as s:
        status, members, error = s.execute(
            text("SELECT status, member_count, error FROM segments WHERE id = :s"), {"s": sid}
        ).one()
        # No worker runs here: the job that create() enqueued is done.
        s.execute(text("DELETE FROM jobs WHERE name = 'segments.compute'"))
    if status != "ready":
        raise RuntimeError(f"segment {name!r} is {status}: {error}")
    timers = PROBE.results.get("timers", 0)  # the customers with a time flip ahead
    return Computed(family, name, seconds, int(members), timers, parts, status)


def print_computed(rows: list[Computed], *, families: bool, head: bool = True) -> None:
    if head:
        label = "family" if families else "segment"
        print(
            f"  {label:<36} {'seconds':>8} {'members':>9} {'timers':>8} {'select':>7} "
            f"{'timers':>7} {'write':>7} {'other':>7}  < {TARGET_SECONDS:.0f} s"
        )
    for r in rows:
        parts = r.parts
        other = r.seconds - max(parts["select"], parts["timers"]) - parts["write"]
        ok = "yes" if r.seconds < TARGET_SECONDS else "NO (over)"
        label = r.family if families else r.name
        print(
            f"  {label:<36} {r.seconds:>8.1f} {r.members:>9,} {r.timers:>8,} "
            f"{r.parts['select']:>7.1f} {r.parts['timers']:>7.1f} {r.parts['write']:>7.1f} "
            f"{other:>7.1f}  {ok}",
            flush=True,
        )


def bench_families(target: Target) -> list[Computed]:
    print(f"\n{target.name}: full computation of a new segment, one per family; {load()}")
    out = []
    for family, name, rules in FAMILIES:
        out.append(compute_segment(target, family, name, rules))
        print_computed(out[-1:], families=True, head=len(out) == 1)
    return out


def add_live_segments(target: Target, count: int) -> list[Computed]:
    """Create and compute segments (the families' first, then more) until `count` exist."""
    with target.db.session() as s:
        have = set(
            s.execute(
                text("SELECT name FROM segments WHERE project_id = :p"), {"p": target.project_id}
            ).scalars()
        )
    candidates = [(name, rules) for _, name, rules in FAMILIES] + EXTRA
    wanted = [(n, r) for n, r in candidates if n not in have][: max(0, count - len(have))]
    out = []
    t0 = time.perf_counter()
    for name, rules in wanted:
        out.append(compute_segment(target, "", name, rules))
    if out:
        slowest = max(out, key=lambda r: r.seconds)
        print(
            f"\n{target.name}: computed {len(out)} live segments in "
            f"{time.perf_counter() - t0:,.0f} s (slowest: {slowest.name!r} {slowest.seconds:.1f} s,"
            f" {slowest.members:,} members); {load()}"
        )
        print_computed(out, families=False)
    return out


# -- 2. ingestion -------------------------------------------------------------------------------

FIRST_NAMES, LAST_NAMES = dashboard.FIRST, dashboard.LAST


class Stream:
    """A realistic stream: sessions of one customer (an identify now and then, pages and track
    events), interleaved; 95% existing customers (recent sign-ups more active), 5% new."""

    def __init__(self, customers: int, known: dict[int, dict[str, Any]], run: str, seed: int):
        self.rng = random.Random(seed)
        self.customers = customers
        self.known = known
        self.run = run
        self.n = 0
        self.new = 0

    @staticmethod
    def pick_ids(pool: list[int], customers: int, count: int, seed: int) -> list[int]:
        """Customers (of the loaded ones, with a user id) that sessions come from: 60% from
        the most recently seen, 40% from everyone."""
        rng = random.Random(seed)
        ids: list[int] = []
        while len(ids) < count:
            if rng.random() < 0.6:
                ids.append(rng.choice(pool))
                continue
            c = rng.randrange(customers)
            if c % 33 != 32:  # the loader leaves those without a user id
                ids.append(c + 1)
        return ids

    def session(self, cid: int | None) -> list[dict[str, Any]]:
        rng = self.rng
        out: list[dict[str, Any]] = []
        if cid is None:
            self.new += 1
            user = f"new-{self.run}-{self.new}"
            email = f"{user}@example.com"
            traits: dict[str, Any] = {
                "email": email,
                "first_name": rng.choice(FIRST_NAMES),
                "last_name": rng.choice(LAST_NAMES),
                "plan": rng.choice(["free", "free", "trial"]),
                "created_at": clock.isoformat(clock.now()),
                "country": rng.choice(dashboard.COUNTRIES),
                "logins": 1,
            }
            out.append(self.message(user, "identify", traits=traits))
        else:
            user = f"user-{cid}"
            if rng.random() < 0.35:
                now = self.known.get(cid, {})
                plan = now.get("plan", "free")
                if rng.random() < 0.03:
                    plan = rng.choice(["pro", "team"])
                traits = {
                    "email": f"user{cid}@example.com",
                    "plan": plan,
                    "logins": int(now.get("logins", 0)) + 1,
                    "country": now.get("country", "US"),
                }
                out.append(self.message(user, "identify", traits=traits))
        for _ in range(rng.choice([1, 2, 3, 3, 4, 5, 6, 8])):
            if rng.random() < 0.35:
                props, name = dashboard._page_props(rng)
                out.append(self.message(user, "page", name=name, properties=props))
            else:
                event, props = dashboard._track(rng, self.n)
                out.append(self.message(user, "track", event=event, properties=props))
        return out

    def message(self, user: str, kind: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        msg: dict[str, Any] = {
            "type": kind,
            "messageId": f"segbench-{self.run}-{self.n}",
            "userId": user,
            "timestamp": clock.isoformat(clock.now()),
            "context": {
                "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
                "userAgent": dashboard.UAS[self.n % len(dashboard.UAS)],
                "ip": f"203.0.{self.n % 250}.{self.n % 200}",
            },
        }
        if kind == "page":
            msg["context"]["page"] = fields["properties"]
        msg.update({k: v for k, v in fields.items() if v is not None})
        return msg

    def bodies(self, ids: Iterator[int], messages: int, per: int = 100) -> list[bytes]:
        """Batch request bodies of `per` messages, ~`messages` in all, sessions interleaved."""
        pending: list[list[dict[str, Any]]] = []
        flat: list[dict[str, Any]] = []
        while len(flat) < messages:
            while len(pending) < 40:
                pending.append(self.session(None if self.rng.random() < 0.05 else next(ids)))
            i = self.rng.randrange(len(pending))
            flat.append(pending[i].pop(0))
            if not pending[i]:
                pending.pop(i)
        sent = clock.isoformat(clock.now())
        return [
            orjson.dumps({"batch": flat[i : i + per], "sentAt": sent})
            for i in range(0, len(flat), per)
        ]


def known_traits(target: Target, ids: list[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with target.db.session() as s:
        for start in range(0, len(ids), 500):
            part = sorted(set(ids[start : start + 500]))
            for cid, traits in s.execute(
                text("SELECT id, traits FROM customers WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": part},
            ):
                t = orjson.loads(traits) if isinstance(traits, str | bytes) else traits
                out[cid] = t
    return out


@dataclass
class Ingested:
    label: str
    messages: int
    seconds: float
    refresh: float
    facts: float
    write: float
    live: float
    changes: int
    statuses: dict[str, int]
    checkpoint: float  # the final checkpoint (SQLite) or vacuum (PostgreSQL), inside `seconds`

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def fill_inbox(target: Target, bodies: list[bytes]) -> None:
    table = table_of(InboxItem)
    now = clock.now()
    rows = [
        {
            "project_id": target.project_id,
            "kind": "batch",
            "body": b,
            "received_at": now,
            "ip": "127.0.0.1",
            "token": uuid.uuid4().hex,
        }
        for b in bodies
    ]
    with target.db.inbox_write_engine.begin() as conn:
        conn.execute(insert(table), rows)


def statuses(target: Target, run: str) -> dict[str, int]:
    with target.db.session() as s:
        rows = s.execute(
            text(
                "SELECT status, count(*) FROM ingest_messages WHERE project_id = :p "
                "AND message_id LIKE :m GROUP BY status"
            ),
            {"p": target.project_id, "m": f"segbench-{run}-%"},
        ).all()
    return {status: int(n) for status, n in rows}


def ingest_run(target: Target, label: str, messages: int, seed: int) -> Ingested:
    """Warm up on a few chunks, then time the processor draining `messages` messages."""
    run = uuid.uuid4().hex[:6]
    if not target.pool:  # the same for every run on this database
        with target.db.session() as s:
            target.pool = list(
                s.execute(
                    text(
                        "SELECT id FROM customers WHERE project_id = :p AND id <= :n "
                        "AND user_id IS NOT NULL ORDER BY last_seen DESC LIMIT :k"
                    ),
                    {"p": target.project_id, "n": target.customers, "k": target.customers // 20},
                ).scalars()
            )
    ids = Stream.pick_ids(target.pool, target.customers, messages, seed)
    stream = Stream(target.customers, known_traits(target, ids), run, seed)
    id_iter = iter(ids * 2)
    chunk = target.db.settings.processor_chunk
    stream.run = f"{run}w"
    fill_inbox(target, stream.bodies(id_iter, 2 * chunk))
    processor.drain(target.db, chunk_size=chunk)  # warm-up, untimed
    stream.run = run
    bodies = stream.bodies(id_iter, messages)
    fill_inbox(target, bodies)
    checkpoint(target.db)
    vacuum(target.db)
    PROBE.reset()
    t0 = time.perf_counter()
    handled = processor.drain(target.db, chunk_size=chunk)
    # The run pays for writing its own pages back to the database file (SQLite) or cleaning up
    # its dead rows (PostgreSQL), and for nothing else: the next run starts from a quiet
    # database, not in the middle of an automatic checkpoint or autovacuum of this one's work.
    t1 = time.perf_counter()
    checkpoint(target.db)
    vacuum(target.db)
    seconds = time.perf_counter() - t0
    result = Ingested(
        label,
        handled,
        seconds,
        PROBE.seconds.get("upkeep", 0.0),
        PROBE.seconds.get("facts", 0.0),
        PROBE.seconds.get("write", 0.0),
        PROBE.seconds.get("live", 0.0),
        PROBE.results.get("upkeep", 0),
        statuses(target, run),
        t0 + seconds - t1,
    )
    postgres = target.db.engine.dialect.name == "postgresql"
    beside = " beside the processor" if postgres else ""
    print(
        f"  {label:<34} {result.rate:>7,.0f} msg/s  ({handled:,} messages in {seconds:.1f} s; "
        f"in upkeep {result.refresh:.2f} s{beside}: facts {result.facts:.2f} s, writes "
        f"{result.write:.2f} s, live_segments {result.live:.2f} s; "
        f"{result.changes:,} membership changes; final "
        f"{'vacuum' if target.db.engine.dialect.name == 'postgresql' else 'checkpoint'} "
        f"{result.checkpoint:.2f} s; "
        f"{fmt_statuses(result.statuses)})",
        flush=True,
    )
    return result


def fmt_statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def set_live(target: Target, on: bool) -> None:
    """Switch every ready segment off (status failed: not kept current) or back on."""
    old, new = ("failed", "ready") if on else ("ready", "failed")
    with target.db.session(write=True) as s:
        s.execute(
            text("UPDATE segments SET status = :new WHERE project_id = :p AND status = :old"),
            {"new": new, "old": old, "p": target.project_id},
        )


def bench_ingest(
    target: Target, messages: int, baseline: list[Ingested], runs: int
) -> list[Ingested]:
    """`runs` runs with the segments live, each followed by one with them switched off (the
    database grows with each run: both kinds see the same growth); the drop is the medians'."""
    with target.db.session() as s:
        live = s.execute(
            text("SELECT count(*), sum(member_count) FROM segments WHERE project_id = :p"),
            {"p": target.project_id},
        ).one()
    print(
        f"\n{target.name}: ingestion with {live[0]} live segments ({int(live[1] or 0):,} "
        f"memberships), {runs} run(s) each way, alternating; {load()}"
    )
    on: list[Ingested] = []
    off: list[Ingested] = []
    label = f"0 segments (the {live[0]} switched off)"
    for i in range(runs):
        on.append(ingest_run(target, f"{live[0]} live segments", messages, seed=2 + 2 * i))
        set_live(target, False)
        try:
            off.append(ingest_run(target, label, messages, seed=3 + 2 * i))
        finally:
            set_live(target, True)
    with_segments = median_rate(on)
    print(f"  median with {live[0]} live segments: {with_segments:,.0f} msg/s", flush=True)
    for name, base in ((label, off), ("0 segments (before any)", baseline)):
        if not base:
            continue
        rate = median_rate(base)
        drop = 100 * (1 - with_segments / rate)
        ok = "yes" if drop < TARGET_DROP else "NO"
        print(
            f"  drop vs {name} (median {rate:,.0f} msg/s): {drop:.1f}% "
            f"(target < {TARGET_DROP:.0f}%: {ok})",
            flush=True,
        )
    return baseline + on + off


def median_rate(runs: list[Ingested]) -> float:
    return statistics.median(r.rate for r in runs)


# -- the run ------------------------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min)"


@dataclass
class Dataset:
    customers: int
    events: int
    workdir: Path
    source: Path = Path()
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""


def prepare_dataset(ds: Dataset, args: argparse.Namespace) -> None:
    """Load (or find in the cache) the SQLite database of this size."""
    ds.workdir.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(
        customers=ds.customers, events=ds.events, reuse=args.reuse, no_analyze=args.no_analyze
    )
    env, ds.meta = dashboard.prepare(ds.workdir, ns)
    ds.source = Path(env["TIDINGS_DATABASE_URL"].split("///", 1)[1])
    ds.key = dashboard.schema_key(ds.source, ds.customers, ds.events)
    secs = dict(ds.meta["load"]["seconds"])
    cached = " (when the cached database was loaded)" if ds.meta.get("reused") else ""
    print(f"load: SQLite {secs.pop('total'):,.0f} s{cached}")
    for line in dashboard.sizes(ds.source):
        print(f"data: {line}")


def run_target(target: Target, args: argparse.Namespace, *, families: bool, ingest: bool) -> None:
    for note in target.notes:
        print(f"{target.name}: {note}")
    settle_heap()  # as `tidings worker` and `tidings serve` do when they start
    # The previous target's files (a 1 GB working copy and its log) may still be on their way
    # to disk: that writeback would slow this target's own flushes.
    os.sync()
    baseline: list[Ingested] = []
    if ingest:
        print(
            f"\n{target.name}: ingestion on {target.customers:,} customers, before any segment "
            f"exists (processor.drain, chunks of {target.db.settings.processor_chunk:,}; "
            f"{args.messages:,} messages after a warm-up of two chunks)"
        )
        for i in range(args.runs):
            label = "0 segments (before any)"
            baseline.append(ingest_run(target, label, args.messages, seed=1 + 1000 * i))
    if families:
        bench_families(target)
    if ingest:
        add_live_segments(target, LIVE_SEGMENTS)
        refresh_statistics(target)
        bench_ingest(target, args.messages, baseline, args.runs)


def refresh_statistics(target: Target) -> None:
    """Planner statistics for the tables the computations just filled, as a running system
    has them soon after: autovacuum's ANALYZE on PostgreSQL, the worker's periodic
    `PRAGMA optimize` on SQLite."""
    with target.db.session(write=True) as s:
        if target.name == "PostgreSQL":
            for table in ("segment_members", "segment_growth", "segment_timers", "segments"):
                s.execute(text(f"ANALYZE {table}"))
        else:
            s.execute(text("PRAGMA optimize"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument(
        "--ingest-customers",
        type=int,
        help="customers of the ingestion data set (default: a tenth of --customers)",
    )
    parser.add_argument(
        "--ingest-events", type=int, help="its events (default: a tenth of --events)"
    )
    parser.add_argument("--reuse", metavar="DIR", help="cache the loaded databases (see above)")
    parser.add_argument("--postgres-url", default=os.environ.get("TIDINGS_BENCH_POSTGRES_URL"))
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-families", action="store_true", help="only the ingestion part")
    parser.add_argument("--skip-ingest", action="store_true", help="only the full computations")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per ingest run")
    parser.add_argument(
        "--runs", type=int, default=3, help="ingest runs of each kind (the medians are compared)"
    )
    parser.add_argument(
        "--no-analyze", action="store_true", help="SQLite without planner statistics"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working databases")
    args = parser.parse_args()
    ingest_customers = args.ingest_customers or max(1000, args.customers // 10)
    ingest_events = args.ingest_events or max(1000, args.events // 10)
    if min(args.customers, args.events, ingest_customers, ingest_events) < 1000:
        parser.error("every data set needs at least 1000 customers and 1000 events")
    if args.skip_sqlite and not args.postgres_url:
        parser.error("--skip-sqlite needs --postgres-url")
    print(f"machine: {dashboard.machine()}")
    print(f"machine: {dashboard.load_average()}")
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-segments-"))
    # (data set, full computations, ingestion): one database for both when the sizes agree.
    plan: list[tuple[Dataset, bool, bool]] = []
    full = Dataset(args.customers, args.events, workdir / "full")
    if (ingest_customers, ingest_events) == (args.customers, args.events):
        plan.append((full, not args.skip_families, not args.skip_ingest))
    else:
        if not args.skip_families:
            plan.append((full, True, False))
        if not args.skip_ingest:
            plan.append((Dataset(ingest_customers, ingest_events, workdir / "ingest"), False, True))
    try:
        for ds, _, _ in plan:
            prepare_dataset(ds, args)
        # PostgreSQL copies the pristine SQLite files, before the SQLite runs write into them.
        pg_targets = (
            [postgres_target(args, ds.source, ds.meta, ds.key) for ds, _, _ in plan]
            if args.postgres_url
            else []
        )
        runs: list[tuple[Target | None, Dataset, bool, bool]] = []
        if not args.skip_sqlite:
            runs += [(None, ds, fam, ing) for ds, fam, ing in plan]
        runs += [(pg, ds, fam, ing) for pg, (ds, fam, ing) in zip(pg_targets, plan, strict=False)]
        for made, ds, fam, ing in runs:
            target = made or sqlite_target(
                ds.source, ds.meta, ds.workdir, cached=bool(args.reuse), keep=args.keep
            )
            target.customers = ds.customers
            try:
                run_target(target, args, families=fam, ingest=ing)
            finally:
                target.cleanup()
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nafter the runs: {dashboard.load_average()}")


if __name__ == "__main__":
    main()
