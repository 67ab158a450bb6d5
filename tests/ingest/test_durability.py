"""Durability: a 200 means committed. A server killed with SIGKILL right after answering loses
none of the messages it acknowledged, and they are applied exactly once afterwards; a separate
`tidings worker` process drains what a `serve --no-worker` accepted."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.cli_support import all_pages, scratch_database, stop
from tests.support import TIDINGS, LiveServer, Tenant, server_env, start_server

USERS = 8
BATCH = 25
THREADS = 4


@pytest.fixture
def own_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database that only this test uses (the kill must not disturb others)."""
    with scratch_database(backend, tmp_path) as url:
        yield url


def make_batch(tag: str) -> list[dict[str, Any]]:
    """Identifies and tracks over a few users; a track's `seq` property is its messageId."""
    messages: list[dict[str, Any]] = []
    for i in range(BATCH):
        mid = f"{tag}-{i}"
        user = f"user-{i % USERS}"
        if i % 5 == 0:
            messages.append(
                {"type": "identify", "userId": user, "messageId": mid, "traits": {"last": mid}}
            )
        else:
            messages.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": "Step",
                    "messageId": mid,
                    "properties": {"seq": mid},
                }
            )
    return messages


def metric(server_url: str, name: str) -> float:
    for line in httpx.get(server_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing from /metrics")


def wait_drained(tenant: Tenant, at_least: int, timeout: float = 60) -> None:
    """Until the inbox is empty and at least `at_least` messages were processed."""
    deadline = time.monotonic() + timeout
    while True:
        pending = metric(tenant.url, "tidings_inbox_pending_requests")
        done = tenant.processed()
        if pending == 0 and done >= at_least:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{pending} requests still in the inbox, {done}/{at_least} processed\n"
                + tenant.server.log()
            )
        time.sleep(0.05)


class Sent:
    """What was sent, and which messages were acknowledged with a 200."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, dict[str, Any]] = {}
        self.acked: list[str] = []
        self.acked_requests = 0
        self.other: list[str] = []

    def tracks_by_user(self, ids: set[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for mid in ids:
            m = self.sent[mid]
            if m["type"] == "track":
                out[m["userId"]].add(mid)
        return out


def check_applied_exactly_once(tenant: Tenant, sent: Sent, *, exact: bool) -> None:
    """Every acknowledged message is in the log once and applied once (only sent ones at all)."""
    log = all_pages(tenant.api, "/api/ingestion/messages")
    ids = [m["message_id"] for m in log]
    assert len(ids) == len(set(ids)), "a message was processed twice"
    acked = set(sent.acked)
    missing = acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert set(ids) <= set(sent.sent)
    if exact:
        assert set(ids) == acked
    assert {m["status"] for m in log} == {"accepted"}, [m for m in log if m["status"] != "accepted"]

    want = sent.tracks_by_user(acked)
    could = sent.tracks_by_user(set(ids))
    for user in sorted(set(want) | set(could)):
        customer = tenant.customer(user_id=user)
        events = all_pages(tenant.api, f"/api/customers/{customer['id']}/events")
        seqs = [e["properties"]["seq"] for e in events]
        assert len(seqs) == len(set(seqs)), f"{user}: an event was applied twice"
        assert want[user] <= set(seqs), f"{user}: acknowledged events missing"
        assert set(seqs) == could[user]


def test_sigkill_right_after_200_loses_nothing(own_url: str, tmp_path: Path) -> None:
    live = start_server(own_url, tmp_path, worker=False)
    creator = live.new_tenant()
    creator.close()
    sent = Sent()
    target = 60  # acknowledged requests before the kill (1,500 messages)
    killed = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for b in range(10_000):
                if killed.is_set():
                    return
                tag = f"t{n}-b{b}"
                batch = make_batch(tag)
                with sent.lock:
                    sent.sent.update((m["messageId"], m) for m in batch)
                try:
                    r = http.post("/v1/batch", json={"batch": batch}, auth=(creator.write_key, ""))
                except httpx.HTTPError as exc:
                    if not killed.is_set():  # only the kill may interrupt a request
                        sent.other.append(f"{type(exc).__name__}: {exc}")
                    return  # either way, this request was never acknowledged
                with sent.lock:
                    if r.status_code != 200:
                        sent.other.append(f"{r.status_code} {r.text}")
                        return
                    sent.acked.extend(m["messageId"] for m in batch)
                    sent.acked_requests += 1
                    if sent.acked_requests == target:
                        live.process.kill()  # SIGKILL, right after this 200
                        killed.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        if live.process.poll() is None:
            live.process.kill()
        live.process.wait()
        live.stop()
    assert sent.other == [], sent.other[:3]
    assert killed.is_set(), "the server was never killed"
    assert live.process.returncode == -9
    assert sent.acked_requests >= target

    restarted = start_server(own_url, tmp_path)
    tenant = Tenant(restarted, creator.project_id, creator.write_key, creator.secret_key)
    try:
        wait_drained(tenant, len(sent.acked))
        check_applied_exactly_once(tenant, sent, exact=False)
    finally:
        tenant.close()
        restarted.stop()


def _send(tenant: Tenant, sent: Sent, tag: str, batches: int) -> None:
    for b in range(batches):
        batch = make_batch(f"{tag}-{b}")
        sent.sent.update((m["messageId"], m) for m in batch)
        r = tenant.batch(batch)
        assert r.status_code == 200, r.text
        sent.acked.extend(m["messageId"] for m in batch)


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    """A `tidings worker`, returned once it says it started (its SIGTERM handler is set)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [TIDINGS, "worker"], cwd=log.parent, env=server_env(url), stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while "started" not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)
    return process


def test_separate_worker_processes_what_serve_no_worker_accepted(
    own_url: str, tmp_path: Path
) -> None:
    live: LiveServer = start_server(own_url, tmp_path, worker=False)
    tenant = live.new_tenant()
    sent = Sent()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        _send(tenant, sent, "a", 4)
        time.sleep(0.3)
        # Nothing processes them in the server itself.
        assert metric(live.url, "tidings_inbox_pending_requests") == 4
        assert tenant.processed() == 0

        workers.append(_worker(own_url, tmp_path / "worker-a.log"))
        wait_drained(tenant, 4 * BATCH)
        check_applied_exactly_once(tenant, sent, exact=True)
        # SIGTERM stops it cleanly, and it hands the processing lease back.
        assert stop(workers[0]) == 0, (tmp_path / "worker-a.log").read_text()
        with live.db.engine.connect() as conn:
            holders = conn.execute(text("SELECT holder FROM leases")).scalars().all()
        assert holders == [None], holders

        # Two workers at once (one holds the lease); what they process is still applied once.
        _send(tenant, sent, "b", 4)
        workers.append(_worker(own_url, tmp_path / "worker-b.log"))
        workers.append(_worker(own_url, tmp_path / "worker-c.log"))
        wait_drained(tenant, 8 * BATCH)
        check_applied_exactly_once(tenant, sent, exact=True)
        assert tenant.processed() == 8 * BATCH
    finally:
        codes = [stop(w) for w in workers]
        tenant.close()
        live.stop()
    assert codes == [0] * len(workers)
