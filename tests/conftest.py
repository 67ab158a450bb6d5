"""Shared fixtures: a live `tidings serve` per backend (SQLite and PostgreSQL), a fresh project
per test (projects are isolated, so tests never see each other's data), and HTTP helpers.

PostgreSQL runs when TIDINGS_TEST_POSTGRES_URL points at a server (CI starts one); with CI=true
a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support import LiveServer, Tenant, create_database, drop_database, start_server

BACKENDS = ["sqlite", "postgres"]


def postgres_admin_url() -> str | None:
    url = os.environ.get("TIDINGS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but TIDINGS_TEST_POSTGRES_URL is not set: PostgreSQL is mandatory")
        pytest.skip("PostgreSQL suite off: set TIDINGS_TEST_POSTGRES_URL to run it")
    return url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        postgres_admin_url()
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for the session on this backend."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "tidings.db"
        url = f"sqlite:///{path}"
        create_database(url)
        yield url
        return
    admin = postgres_admin_url()
    assert admin is not None
    url = create_database(admin, name=f"tidings_test_{uuid.uuid4().hex[:10]}")
    yield url
    drop_database(admin, url)


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`tidings serve` with its embedded worker, on a random port."""
    live = start_server(database_url, tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def tenant(server: LiveServer) -> Iterator[Tenant]:
    """A new project on the live server, with HTTP helpers bound to its keys."""
    t = server.new_tenant()
    yield t
    t.close()
