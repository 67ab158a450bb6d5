"""Helpers for tests that drive the `tidings` command itself: scratch databases (migrated or
not) that belong to one test, running the CLI, and paging through the management API."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.conftest import postgres_admin_url
from tests.support import TIDINGS, create_database, drop_database, server_env
from tidings.config import Settings
from tidings.db import Database


@contextmanager
def scratch_database(backend: str, workdir: Path, *, migrated: bool = True) -> Iterator[str]:
    """A database of its own for one test (PostgreSQL: dropped afterwards); its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'tidings-{uuid.uuid4().hex[:6]}.db'}"
        if migrated:
            create_database(url)
        yield url
        return
    admin = postgres_admin_url()
    assert admin is not None
    name = f"tidings_test_{uuid.uuid4().hex[:10]}"
    if migrated:
        url = create_database(admin, name=name)
    else:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        drop_database(admin, url)


@contextmanager
def scratch_db(backend: str, workdir: Path) -> Iterator[Database]:
    """A migrated `scratch_database`, opened (and closed afterwards)."""
    with scratch_database(backend, workdir) as url:
        database = Database(Settings(database_url=url))
        try:
            yield database
        finally:
            database.dispose()


def table_names(url: str) -> set[str]:
    """The tables of the main database at `url`."""
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def tidings(
    url: str, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `tidings ARGS` against the database at `url`; output captured as text."""
    return subprocess.run(
        [TIDINGS, *args],
        cwd=cwd,
        env=server_env(url, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def flat(text_: str) -> str:
    """Whitespace collapsed, so messages wrapped by the terminal compare as one line."""
    return " ".join(text_.split())


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url}/healthz never answered 200")


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> int:
    """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a `{"data", "next_cursor"}` list, following the cursor."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": 200, **params}
    for _ in range(10_000):
        r = client.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items.extend(body["data"])
        if not body["next_cursor"]:
            return items
        query["cursor"] = body["next_cursor"]
    raise AssertionError(f"{path}: the cursor never ends")
