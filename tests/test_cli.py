"""The `tidings` command, run for real: schema, projects, settings, serve and CSV import."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_support import (
    all_pages,
    flat,
    scratch_database,
    stop,
    table_names,
    tidings,
    wait_healthy,
)
from tests.support import TIDINGS, Tenant, free_port, server_env, start_server
from tidings import cli
from tidings.config import Settings
from tidings.db import Database
from tidings.db import migrate as migrations


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database nobody has migrated yet, on each backend."""
    with scratch_database(backend, tmp_path, migrated=False) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with scratch_database("sqlite", tmp_path) as url:
        yield url


def create_project(url: str, name: str, cwd: Path) -> dict[str, Any]:
    r = tidings(url, "project", "create", name, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert isinstance(created, dict)
    return created


def tenant_of(live: Any, created: dict[str, Any]) -> Tenant:
    return Tenant(live, created["id"], created["write_key"], created["secret_key"])


# -- db upgrade, project create / list ---------------------------------------------------------


def test_upgrade_then_create_a_project_whose_keys_work(empty_url: str, tmp_path: Path) -> None:
    r = tidings(empty_url, "db", "upgrade", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"projects", "customers", "events", "ingest_messages"} <= table_names(empty_url)

    r = tidings(empty_url, "project", "create", "Acme Shop", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert set(created) == {"id", "name", "write_key", "secret_key"}
    assert created["name"] == "Acme Shop"
    assert isinstance(created["id"], int)
    assert created["write_key"]
    assert created["secret_key"]
    assert created["write_key"] != created["secret_key"]

    r = tidings(empty_url, "project", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Acme Shop" in r.stdout
    assert created["write_key"] in r.stdout
    assert created["secret_key"] not in r.stdout  # shown once, stored hashed

    live = start_server(empty_url, tmp_path)
    try:
        tenant = tenant_of(live, created)
        try:
            settings = tenant.get("/api/project/settings")
            assert settings["id"] == created["id"]
            assert settings["name"] == "Acme Shop"
            assert settings["write_key"] == created["write_key"]
            bad = httpx.get(
                live.url + "/api/project/settings",
                headers={"Authorization": f"Bearer {created['secret_key']}x"},
            )
            assert bad.status_code == 401
            # The write key ingests into this project.
            tenant.send([{"type": "identify", "userId": "cli-1", "traits": {"plan": "pro"}}])
            assert tenant.customer(user_id="cli-1")["traits"]["plan"] == "pro"
        finally:
            tenant.close()
    finally:
        live.stop()


# -- project settings --------------------------------------------------------------------------


def test_project_settings_change_the_identity_policy(tenant: Tenant, tmp_path: Path) -> None:
    url = tenant.server.database_url
    key = tenant.write_key

    r = tidings(url, "project", "settings", key, "--unknown-user-track", "drop", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unknown_user_track"] == "drop"
    assert tenant.get("/api/project/settings")["unknown_user_track"] == "drop"

    r = tidings(url, "project", "settings", key, "--unknown-user-track", "sometimes", cwd=tmp_path)
    assert r.returncode != 0
    message = flat(r.stdout + r.stderr)
    assert "Traceback" not in message
    assert "create" in message
    assert "drop" in message
    assert "sometimes" not in r.stdout  # nothing printed as if it had been applied

    # Unchanged by the rejected call.
    policy = {
        "require_email_to_create": False,
        "require_user_id": False,
        "unknown_user_track": "drop",
        "revenue_as_charge": True,
    }
    api = tenant.get("/api/project/settings")
    assert {k: api[k] for k in policy} == policy

    # The policy is in force: a track of an unknown user is dropped, and kept as such.
    tenant.send(
        [{"type": "track", "anonymousId": "stranger", "event": "Viewed", "messageId": "m-1"}]
    )
    assert [m["message_id"] for m in tenant.messages("dropped")] == ["m-1"]
    assert tenant.get("/api/customers")["data"] == []


def test_a_project_reference_never_picks_one_of_two_projects(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two projects may not both answer to one name: either the name is refused at creation, or
    a reference by that name is refused as ambiguous. Never a silent pick of either."""
    first = create_project(sqlite_url, "Twin", tmp_path)
    r = tidings(sqlite_url, "project", "create", "Twin", "--json", cwd=tmp_path)
    if r.returncode != 0:
        assert "Traceback" not in r.stderr
        return
    second = json.loads(r.stdout)
    r = tidings(
        sqlite_url, "project", "settings", "Twin", "--unknown-user-track", "drop", cwd=tmp_path
    )
    assert r.returncode != 0, (
        f"changed one of projects {first['id']} and {second['id']}: {r.stdout}"
    )
    assert "Traceback" not in r.stderr
    for project in (first, second):
        r = tidings(sqlite_url, "project", "settings", project["write_key"], cwd=tmp_path)
        assert json.loads(r.stdout)["unknown_user_track"] == "create"


# -- serve -------------------------------------------------------------------------------------


def test_serve_refuses_an_unmigrated_database(empty_url: str, tmp_path: Path) -> None:
    port = str(free_port())
    r = tidings(empty_url, "serve", "--host", "127.0.0.1", "--port", port, cwd=tmp_path)
    assert r.returncode != 0
    output = flat(r.stdout + r.stderr)
    assert "tidings db upgrade" in output
    assert "Traceback" not in output
    # Nothing was half-created, and nothing listens.
    assert table_names(empty_url) <= {"alembic_version"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_worker_refuses_an_unmigrated_database(empty_url: str, tmp_path: Path) -> None:
    r = tidings(empty_url, "worker", cwd=tmp_path, timeout=30)
    assert r.returncode != 0
    output = flat(r.stdout + r.stderr)
    assert "tidings db upgrade" in output
    assert "Traceback" not in output


def test_serve_migrate_migrates_and_serves(empty_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TIDINGS, "serve", "--migrate", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=server_env(empty_url),
            stdout=out,
            stderr=out,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from exc
        assert {"projects", "customers", "ingest_messages"} <= table_names(empty_url)
        # The API runs on the new schema: an unknown write key is a 401, not a 500.
        r = httpx.post(url + "/v1/track", json={"userId": "u", "event": "E"}, auth=("nokey", ""))
        assert r.status_code == 401, r.text
    finally:
        code = stop(process)
    # uvicorn shuts down gracefully, then re-raises SIGTERM for the default handler.
    assert code in (0, -signal.SIGTERM), log.read_text()
    # The schema is at the head revision, so a plain `serve` accepts it from now on.
    db = Database(Settings(database_url=empty_url))
    try:
        assert migrations.current(db) == migrations.head(db)
    finally:
        db.dispose()


# -- import customers --------------------------------------------------------------------------

CSV_HEADER = "user_id,email,first_name,last_name,signed_up_at,plan,address\n"


def _csv(plan_of_u1: str) -> str:
    return (
        CSV_HEADER
        # line 2: a good row
        + f"u1,ann@example.com,Ann,Lee,2020-01-02T03:04:05Z,{plan_of_u1},\n"
        # lines 3-4: a good row with a quoted value spanning two lines
        + 'u2,bob@example.com,Bob,Ray,1583564043,basic,"1 Main St\nSpringfield"\n'
        # line 5: neither user_id nor email
        + ",,Nobody,Here,,pro,\n"
        # line 6: an email that is not one
        + "u3,not-an-email,Cat,Sun,,pro,\n"
        # line 7: a date nobody can parse
        + "u4,dan@example.com,Dan,Ho,last tuesday,pro,\n"
        # line 8: a good row with an email and no user_id
        + ",eve@example.com,Eve,Ng,,free,\n"
        # line 9: more values than columns
        + "u5,fay@example.com,Fay,Oz,,pro,Somewhere,surplus\n"
    )


BAD_LINES = [5, 6, 7, 9]


def _run_import(
    url: str, csv_path: Path, project: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    r = tidings(url, "import", "customers", str(csv_path), "--project", project, cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    output = r.stdout + r.stderr
    reported = [int(n) for n in re.findall(r"\bline (\d+)", output)]
    assert sorted(reported) == BAD_LINES, output
    by_line = {int(m.group(1)): m.group(2) for m in re.finditer(r"\bline (\d+)\W+(.*)", output)}
    assert "not-an-email" in by_line[6] or "email" in by_line[6].lower()
    assert "signed_up_at" in by_line[7] or "last tuesday" in by_line[7]
    summary = flat(r.stdout)
    assert re.search(r"\b3\b", summary), summary  # three rows imported
    assert re.search(r"\b4\b", summary), summary  # four skipped
    return r


def test_import_customers_reports_bad_lines_and_upserts(tenant: Tenant, tmp_path: Path) -> None:
    url = tenant.server.database_url
    csv_path = tmp_path / "customers.csv"
    csv_path.write_text(_csv("pro"))

    _run_import(url, csv_path, tenant.write_key, tmp_path)

    customers = all_pages(tenant.api, "/api/customers")
    assert len(customers) == 3, customers

    ann = tenant.customer(user_id="u1")
    assert ann["email"] == "ann@example.com"
    assert ann["name"] == "Ann Lee"
    assert ann["traits"]["plan"] == "pro"
    assert ann["traits"]["signed_up_at"] == "2020-01-02T03:04:05.000Z"

    bob = tenant.customer(user_id="u2")
    assert bob["email"] == "bob@example.com"
    assert bob["traits"]["signed_up_at"] == "2020-03-07T06:54:03.000Z"
    assert bob["traits"]["address"] == "1 Main St\nSpringfield"

    eve = tenant.customer(email="eve@example.com")
    assert eve["name"] == "Eve Ng"
    assert eve["traits"]["plan"] == "free"

    for user_id in ("u3", "u4", "u5"):
        r = tenant.api.get("/api/customers/lookup", params={"user_id": user_id})
        assert r.status_code == 404, (user_id, r.text)
    for email in ("dan@example.com", "fay@example.com"):
        r = tenant.api.get("/api/customers/lookup", params={"email": email})
        assert r.status_code == 404, (email, r.text)

    # Importing again (by project id this time) updates the same customers.
    csv_path.write_text(_csv("team"))
    _run_import(url, csv_path, str(tenant.project_id), tmp_path)
    again = all_pages(tenant.api, "/api/customers")
    assert sorted(c["id"] for c in again) == sorted(c["id"] for c in customers)
    ann2 = tenant.customer(user_id="u1")
    assert ann2["id"] == ann["id"]
    assert ann2["traits"]["plan"] == "team"
    assert tenant.customer(email="eve@example.com")["id"] == eve["id"]


def test_import_finds_existing_customers_by_email(tenant: Tenant, tmp_path: Path) -> None:
    """A row without user_id is matched by email (userId, else email), like any identify."""
    tenant.send(
        [{"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com", "plan": "a"}}]
    )
    before = tenant.customer(user_id="u1")
    csv_path = tmp_path / "by-email.csv"
    csv_path.write_text("user_id,email,plan\n,Ann@Example.com,gold\n")
    r = tidings(
        tenant.server.database_url,
        "import",
        "customers",
        str(csv_path),
        "--project",
        tenant.write_key,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    customers = all_pages(tenant.api, "/api/customers")
    assert [c["id"] for c in customers] == [before["id"]], customers
    after = tenant.customer(user_id="u1")
    assert after["traits"]["plan"] == "gold"
    assert after["email"] == "ann@example.com"


def test_import_reports_an_undecodable_row_and_imports_the_rest(
    tenant: Tenant, tmp_path: Path
) -> None:
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(
        b"user_id,email,city\nu7,g@example.com,Montr\xe9al\nu8,h@example.com,Quebec\n"
    )
    r = tidings(
        tenant.server.database_url,
        "import",
        "customers",
        str(csv_path),
        "--project",
        tenant.write_key,
        cwd=tmp_path,
    )
    output = r.stdout + r.stderr
    assert "Traceback" not in output
    assert re.findall(r"\bline (\d+)", output) == ["2"], output
    assert tenant.customer(user_id="u8")["traits"]["city"] == "Quebec"


def test_import_into_an_unknown_project_fails_cleanly(sqlite_url: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(CSV_HEADER + "u1,a@example.com,A,B,,pro,\n")
    r = tidings(sqlite_url, "import", "customers", str(csv_path), "--project", "nope", cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip()


def test_the_worker_s_sigterm_handler_never_waits_for_the_stop_event_s_lock() -> None:
    """SIGTERM's handler runs in the main thread, which may be inside Event.wait holding the
    stop event's internal (non-reentrant) lock at that moment: the handler must return at once,
    and the worker still stops once the lock is free."""

    class Stoppable:
        def __init__(self) -> None:
            self.stop_event = threading.Event()

        def stop(self) -> None:
            self.stop_event.set()

    w = Stoppable()
    handler = cli.stop_on_signal(w)  # type: ignore[arg-type]
    lock = w.stop_event._cond  # what Event.wait holds around its check

    def signal_lands_inside_wait() -> None:
        with lock:  # this thread plays the main thread, inside Event.wait
            handler(signal.SIGTERM, None)

    landed = threading.Thread(target=signal_lands_inside_wait, daemon=True)
    landed.start()
    landed.join(timeout=5)
    assert not landed.is_alive(), "the handler waited for a lock its own thread holds"
    assert w.stop_event.wait(timeout=5)
