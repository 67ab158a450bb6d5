"""Test support: databases, a live server in a subprocess, and a per-project HTTP client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tidings.auth import service as projects
from tidings.config import Settings
from tidings.db import Database
from tidings.db import migrate as migrations
from tidings.ingest.inbox import ensure_inbox_schema

ROOT = Path(__file__).resolve().parent.parent
TIDINGS = str(Path(sys.executable).with_name("tidings"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(url: str, *, name: str | None = None) -> str:
    """Create (PostgreSQL: a new database on the server at `url`) and migrate; returns its URL."""
    if name is not None:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = make_url(url).set(database=name).render_as_string(hide_password=False)
    db = Database(Settings(database_url=url))
    migrations.upgrade(db)
    ensure_inbox_schema(db)
    db.dispose()
    return url


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_DATABASE_URL"] = database_url
    env["TIDINGS_LOG_LEVEL"] = "WARNING"
    env["TIDINGS_PROCESSOR_IDLE_SECONDS"] = "0.02"
    env.update(extra)
    return env


@dataclass
class LiveServer:
    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    db: Database = field(init=False)

    def __post_init__(self) -> None:
        self.db = Database(Settings(database_url=self.database_url))

    def new_tenant(self, name: str | None = None) -> Tenant:
        with self.db.session(write=True) as session:
            created = projects.create(session, name=name or f"test-{uuid.uuid4().hex[:8]}")
        return Tenant(self, created.id, created.write_key, created.secret_key)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.db.dispose()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    database_url: str, workdir: Path, *, worker: bool = True, **env: str
) -> LiveServer:
    """Start `tidings serve` and wait until /healthz answers."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    args = [TIDINGS, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not worker:
        args.append("--no-worker")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, cwd=workdir, env=server_env(database_url, **env), stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # generous: CI machines can be busy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, database_url, process, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


class Tenant:
    """One project on a live server: its keys and an API client."""

    def __init__(self, server: LiveServer, project_id: int, write_key: str, secret_key: str):
        self.server = server
        self.url = server.url
        self.project_id = project_id
        self.write_key = write_key
        self.secret_key = secret_key
        self.api = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {secret_key}"}, timeout=30
        )
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def close(self) -> None:
        self.api.close()
        self.http.close()

    # -- sending ---------------------------------------------------------------------------

    def batch(self, messages: list[dict[str, Any]], **envelope: Any) -> httpx.Response:
        """POST /v1/batch with Basic auth."""
        return self.http.post(
            "/v1/batch", json={"batch": messages, **envelope}, auth=(self.write_key, "")
        )

    def send(self, messages: list[dict[str, Any]], **envelope: Any) -> None:
        """Send a batch, assert it was acknowledged and wait until it is processed."""
        before = self.processed()
        r = self.batch(messages, **envelope)
        assert r.status_code == 200, r.text
        self.wait_processed(before + len(messages))

    # -- reading ---------------------------------------------------------------------------

    def processed(self) -> int:
        """Messages of this project the processor has handled (any outcome, duplicates too)."""
        body = self.http.get("/metrics").text
        total = 0
        marker = f'project="{self.project_id}"'
        for line in body.splitlines():
            if line.startswith("tidings_messages_processed_total{") and marker in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def upkeep_pending(self) -> int:
        """Processed chunks of this project whose segment memberships are not yet updated."""
        marker = f'tidings_segment_upkeep_pending{{project="{self.project_id}"}} '
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(marker):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def wait_processed(self, count: int, timeout: float = 20) -> None:
        """Until `count` messages are processed and their segment memberships updated."""
        deadline = time.monotonic() + timeout
        while self.processed() < count or self.upkeep_pending():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.processed()} of {count} messages processed "
                    f"({self.upkeep_pending()} chunks' segment upkeep pending)\n"
                    f"{self.server.log()}"
                )
            time.sleep(0.02)

    def customer(self, *, user_id: str | None = None, email: str | None = None) -> dict[str, Any]:
        params = {"user_id": user_id} if user_id is not None else {"email": email}
        r = self.api.get("/api/customers/lookup", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def messages(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"limit": 200} | ({"status": status} if status else {})
        return list(self.get("/api/ingestion/messages", **params)["data"])
