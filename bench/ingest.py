"""Ingestion benchmark: drives a running `tidings serve` over HTTP and prints

  - messages/s acknowledged with batches of 100 (4 concurrent clients), p50/p99 latency,
  - single-message requests/s (/v1/track, 4 concurrent clients, then --many-clients), p50/p99
    latency,
  - messages/s fully processed (profiles, timelines, catalogs and the message log written) by a
    separate `tidings worker` draining what was acknowledged,
  - the same with the embedded worker running while clients send (the default deployment),

on SQLite and, with --postgres-url (or TIDINGS_BENCH_POSTGRES_URL), on PostgreSQL.
A realistic mix: 20% identify, 60% track, 20% page; 10,000 distinct users.

    python bench/ingest.py [--seconds 10] [--backend sqlite|postgres|both] [--keep]

Each run works in a database of its own (a temporary SQLite file, a new PostgreSQL database),
removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

BIN = Path(sys.executable).with_name("tidings")
USERS = 10_000
EVENTS = [
    "Signed In",
    "Viewed Dashboard",
    "Created Project",
    "Invited Teammate",
    "Exported Report",
    "Upgraded Plan",
    "Searched",
    "Commented",
    "Shared Link",
    "Logged Out",
]
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Messages:
    """Unique, realistic messages from 10,000 users."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.counter = itertools.count()

    def one(self) -> dict[str, object]:
        n = next(self.counter)
        user = self.rng.randrange(USERS)
        now = datetime.now(UTC).isoformat()
        base: dict[str, object] = {
            "messageId": f"bench-{uuid.uuid4().hex}-{n}",
            "userId": f"user-{user}",
            "timestamp": now,
            "context": {
                "library": {"name": "bench", "version": "1.0"},
                "userAgent": UA,
                "ip": f"10.0.{user % 250}.{user % 200}",
            },
        }
        roll = self.rng.random()
        if roll < 0.2:
            base |= {
                "type": "identify",
                "traits": {
                    "email": f"user{user}@example.com",
                    "name": f"User {user}",
                    "plan": self.rng.choice(["free", "pro", "team"]),
                    "created_at": 1_600_000_000 + user,
                    "logins": self.rng.randrange(100),
                },
            }
        elif roll < 0.8:
            base |= {
                "type": "track",
                "event": self.rng.choice(EVENTS),
                "properties": {
                    "plan": self.rng.choice(["free", "pro", "team"]),
                    "value": self.rng.random(),
                    "source": self.rng.choice(["web", "ios", "android"]),
                    "count": n % 17,
                },
            }
        else:
            path = self.rng.choice(["/", "/pricing", "/docs", "/blog/launch", "/app"])
            base |= {
                "type": "page",
                "name": path.strip("/") or "home",
                "properties": {
                    "url": f"https://example.com{path}",
                    "path": path,
                    "title": "Example",
                    "referrer": "https://search.example/",
                },
            }
        return base

    def batch_body(self, size: int) -> bytes:
        return orjson.dumps(
            {"batch": [self.one() for _ in range(size)], "sentAt": datetime.now(UTC).isoformat()}
        )

    def single_body(self) -> bytes:
        m = self.one()
        m["type"] = "track"
        m.setdefault("event", "Signed In")
        return orjson.dumps(m)


@dataclass
class Phase:
    requests: int
    messages: int
    seconds: float
    latencies: list[float]

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")


async def _client(
    port: int,
    path: str,
    auth: str,
    bodies: list[bytes],
    per: int,
    deadline: float,
    out: list[float],
    counts: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    i = 0
    try:
        while time.perf_counter() < deadline and i < len(bodies):
            body = bodies[i]
            i += 1
            t0 = time.perf_counter()
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length = 0
            for line in raw.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            out.append(time.perf_counter() - t0)
            counts[0] += 1
            counts[1] += per
    finally:
        writer.close()


async def drive(
    port: int, write_key: str, path: str, bodies: list[list[bytes]], per: int, seconds: float
) -> Phase:
    auth = base64.b64encode(f"{write_key}:".encode()).decode()
    lat: list[float] = []
    counts = [0, 0]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(_client(port, path, auth, b, per, deadline, lat, counts) for b in bodies)
    )
    return Phase(counts[0], counts[1], time.perf_counter() - start, lat)


def run_async(coro):  # type: ignore[no-untyped-def]
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


class Server:
    def __init__(self, env: dict[str, str], workdir: Path, *, worker: bool) -> None:
        self.port = free_port()
        args = [str(BIN), "serve", "--port", str(self.port)] + ([] if worker else ["--no-worker"])
        self.log = (workdir / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(args, env=env, cwd=workdir, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("server did not start") from None
            time.sleep(0.1)

    def metrics(self) -> tuple[int, int]:
        """(processed messages, inbox pending requests)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        processed = pending = 0
        for line in text.splitlines():
            if line.startswith("tidings_messages_processed_total{"):
                processed += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("tidings_inbox_pending_requests "):
                pending = int(float(line.split()[1]))
        return processed, pending

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_processed(server: Server, target: int, timeout: float = 900) -> float:
    start = time.perf_counter()
    while True:
        done, _ = server.metrics()
        if done >= target:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {done} of {target} processed")
        time.sleep(0.25)  # each poll counts the inbox: often enough, without loading the machine


def prepare(url: str, workdir: Path) -> tuple[dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env |= {"TIDINGS_DATABASE_URL": url, "TIDINGS_LOG_LEVEL": "WARNING"}
    subprocess.run([str(BIN), "db", "upgrade"], env=env, check=True, capture_output=True)
    out = subprocess.run(
        [str(BIN), "project", "create", "bench", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return env, json.loads(out)["write_key"]


def bench_backend(name: str, url: str, seconds: float, clients: int, many: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"tidings-bench-{name}-"))
    env, key = prepare(url, workdir)
    gen = Messages()
    results: dict[str, float] = {}
    # Pre-build the bodies so the load generator spends its time on the wire.
    per_client = int(seconds * 130)
    batches = [[gen.batch_body(100) for _ in range(per_client)] for _ in range(clients)]
    singles = [[gen.single_body() for _ in range(int(seconds * 1500))] for _ in range(clients)]
    crowd = [[gen.single_body() for _ in range(int(seconds * 500))] for _ in range(many)]

    server = Server(env, workdir, worker=False)
    try:
        ack = run_async(drive(server.port, key, "/v1/batch", batches, 100, seconds))
        single = run_async(drive(server.port, key, "/v1/track", singles, 1, seconds / 2))
        busy = run_async(drive(server.port, key, "/v1/track", crowd, 1, seconds / 2))
        total = ack.messages + single.messages + busy.messages
        worker_log = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(
            [str(BIN), "worker"], env=env, cwd=workdir, stdout=worker_log, stderr=worker_log
        )
        elapsed = wait_processed(server, total)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        worker_log.close()
    finally:
        server.stop()
    results |= {
        "ack_msgs_per_s": ack.messages / ack.seconds,
        "ack_p50_ms": ack.pct(0.50),
        "ack_p99_ms": ack.pct(0.99),
        "single_req_per_s": single.requests / single.seconds,
        "single_p50_ms": single.pct(0.50),
        "single_p99_ms": single.pct(0.99),
        "many_req_per_s": busy.requests / busy.seconds,
        "many_p50_ms": busy.pct(0.50),
        "many_p99_ms": busy.pct(0.99),
        "processed_msgs_per_s": total / elapsed,
        "processed_total": total,
    }
    # The default deployment: embedded worker processing while clients send.
    server = Server(env, workdir, worker=True)
    try:
        before, _ = server.metrics()
        fresh = [[gen.batch_body(100) for _ in range(per_client)] for _ in range(clients)]
        start = time.perf_counter()
        mixed = run_async(drive(server.port, key, "/v1/batch", fresh, 100, seconds))
        wait_processed(server, before + mixed.messages)
        results |= {
            "mixed_ack_msgs_per_s": mixed.messages / mixed.seconds,
            "mixed_p99_ms": mixed.pct(0.99),
            "mixed_processed_msgs_per_s": mixed.messages / (time.perf_counter() - start),
        }
    finally:
        server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def postgres_database(admin_url: str, name: str, *, drop: bool = False) -> str:
    """Create (or drop) the benchmark's own database on the server of `admin_url`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if drop:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--many-clients", type=int, default=16, help="single messages again, with this many"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", default=os.environ.get("TIDINGS_BENCH_POSTGRES_URL"))
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    backends: list[tuple[str, str]] = []
    cleanups = []
    if args.backend in ("sqlite", "both"):
        tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-db-"))
        backends.append(("SQLite", f"sqlite:///{tmp}/tidings.db"))
        cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    if args.backend in ("postgres", "both"):
        if not args.postgres_url:
            if args.backend == "postgres":
                parser.error("--postgres-url (or TIDINGS_BENCH_POSTGRES_URL) is required")
            print("PostgreSQL skipped: no --postgres-url", file=sys.stderr)
        else:
            name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
            backends.append(("PostgreSQL", postgres_database(args.postgres_url, name)))
            cleanups.append(lambda: postgres_database(args.postgres_url, name, drop=True))
    try:
        run_backends(backends, args)
    finally:
        if not args.keep:
            for cleanup in cleanups:
                cleanup()


def run_backends(backends: list[tuple[str, str]], args: argparse.Namespace) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print(
        f"load: batches of 100 and single messages, {args.clients} concurrent clients, "
        f"{args.seconds:.0f} s per phase, {USERS} users (20% identify, 60% track, 20% page)"
    )
    for name, url in backends:
        r = bench_backend(name.lower(), url, args.seconds, args.clients, args.many_clients)
        print(f"\n{name}")
        print(
            f"  acknowledged (batches of 100): {r['ack_msgs_per_s']:>9,.0f} msg/s   "
            f"p50 {r['ack_p50_ms']:.1f} ms  p99 {r['ack_p99_ms']:.1f} ms"
        )
        print(
            f"  single-message requests:       {r['single_req_per_s']:>9,.0f} req/s   "
            f"p50 {r['single_p50_ms']:.1f} ms  p99 {r['single_p99_ms']:.1f} ms"
        )
        print(
            f"  ... with {args.many_clients} clients:         {r['many_req_per_s']:>9,.0f} req/s   "
            f"p50 {r['many_p50_ms']:.1f} ms  p99 {r['many_p99_ms']:.1f} ms"
        )
        print(
            f"  fully processed (worker):      {r['processed_msgs_per_s']:>9,.0f} msg/s   "
            f"({r['processed_total']:,.0f} messages)"
        )
        print(
            f"  serve + embedded worker:       {r['mixed_ack_msgs_per_s']:>9,.0f} msg/s acked, "
            f"{r['mixed_processed_msgs_per_s']:,.0f} msg/s processed, "
            f"p99 {r['mixed_p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
