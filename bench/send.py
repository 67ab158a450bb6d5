"""Email sending benchmark: personalised emails through the whole gateway, delivered over SMTP.

Setup (not timed): a fresh database (SQLite file in a temporary directory, or a scratch
database created on the --postgres-url server and dropped afterwards) is migrated with
`tidings db upgrade`, a project is created with `tidings project create`, N customers
(email, first and last name, plan) are written in one bulk insert and a template is made
from the `welcome` starter plus a plan paragraph with `tidings.templates.service.create` (both
in a child process, so this process's peak RSS is the gateway's).
An aiosmtpd sink (on uvloop when installed) starts in its own process on 127.0.0.1: it only
counts what it receives and checks that each message has a text and an HTML part.

Timed:
1. the gateway: `tidings.messaging.gateway.send_many` queues one broadcast email (topic
   `broadcasts`, idempotency key `bench:<customer id>`) per customer, 5,000 recipients per
   transaction, in this process;
2. delivery: K `tidings worker` processes (TIDINGS_SMTP_URL pointing at the sink) render
   every message (Liquid, CSS inlining, text part, tracking links), build the MIME message,
   hand it over to SMTP (one committed hand-over per message) and record the outcome, until
   no message is left to send. The clock starts when the first worker reports that it started
   (their start-up is shown apart) and stops when the last message is recorded as sent.

Prints messages/s of the gateway, of delivery and end to end (gateway + delivery), the CPU
seconds of the workers and of the sink, how busy the machine was, peak RSS of the workers and
of this process, and the load average: the sink, the database server and anything else on
the machine compete for the same cores, as a local relay would.

    python bench/send.py [--emails 100000] [--workers 2] [--batch 200] [--outbox]
                         [--postgres-url postgresql+psycopg://user@host:port/db] [--keep]

    python bench/send.py --sink-ceiling [--seconds 10] [--clients 2]

--sink-ceiling measures the sink alone: the same aiosmtpd sink, fed by K client processes that
each send one pre-rendered message (the same template) over and over with Tidings' own SMTP
provider (the same commands as a worker, no database, no rendering); prints messages/s and CPU
per message of the sink and of the clients. It is the most delivery can reach against this sink.
--outbox delivers to the embedded outbox (no SMTP: the message stays in the database).
--postgres-url is a server where this user may create databases (its own database is only
used to create and drop the scratch one).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import IO, Any

import dashboard
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

import tidings.auth.models  # noqa: F401  (the email settings' foreign key names projects)
from tidings import clock
from tidings.config import Settings
from tidings.db import Database
from tidings.db.bulk import Bulk
from tidings.messaging import gateway, providers
from tidings.messaging import settings as email_settings
from tidings.templates import render
from tidings.templates import service as templates
from tidings.templates.starters import LAYOUT, STARTERS, fill

BIN = Path(sys.executable).with_name("tidings")
CHUNK = 5_000  # recipients per gateway transaction
TARGET = 1_000.0  # messages/s
POLL = 0.5  # seconds between progress counts
STALL = 120.0  # seconds without progress before giving up
PLAN_PARAGRAPH = """<p>You are on the <strong>{{ customer.plan | capitalize }}</strong> plan\
{% if customer.plan == "free" %}: upgrade whenever you need more seats{% endif %}.
Your sign-in is {{ customer.email }}.</p>"""


# -- the SMTP sink (its own process) ------------------------------------------------------------


def _sink_main(
    port: int,
    received: Synchronized[int],
    malformed: Synchronized[int],
    size: Synchronized[int],
    ready: Any,
    stop: Any,
) -> None:
    """Count messages (and those lacking a text or an HTML part) until told to stop."""
    import asyncio

    from aiosmtpd.controller import Controller

    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()

    class Counter:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            body = envelope.content
            if b"text/html" in body and b"text/plain" in body:
                received.value += 1
                size.value += len(body)
            else:
                malformed.value += 1
            return "250 OK"

    controller = Controller(Counter(), hostname="127.0.0.1", port=port, loop=loop)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


class Sink:
    """aiosmtpd in a separate process: its CPU competes with ours, like a local relay's."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = dashboard.free_port()
        self.received = ctx.Value("q", 0, lock=False)
        self.malformed = ctx.Value("q", 0, lock=False)
        self.size = ctx.Value("q", 0, lock=False)
        ready, self.stop_event = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(
            target=_sink_main,
            args=(self.port, self.received, self.malformed, self.size, ready, self.stop_event),
            name="bench-smtp-sink",
            daemon=True,
        )
        self.proc.start()
        if not ready.wait(30):
            self.proc.kill()
            raise RuntimeError("the SMTP sink did not start")

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> None:
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# -- /proc readings -----------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the peak resident set of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


# -- backends -----------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    url: str
    cleanup: Callable[[], None]
    notes: list[str] = field(default_factory=list)


def sqlite_backend(workdir: Path, keep: bool) -> Backend:
    path = workdir / "tidings.db"

    def cleanup() -> None:
        if keep:
            print(f"kept {path}")

    return Backend("SQLite", f"sqlite:///{path}", cleanup)


def postgres_backend(admin_url: str, keep: bool) -> Backend:
    url = make_url(admin_url)
    name = f"tidings_sendbench_{uuid.uuid4().hex[:8]}"
    conninfo = psycopg.conninfo.make_conninfo(
        host=url.host or "",
        port=str(url.port or 5432),
        user=url.username or "",
        password=url.password or "",
        dbname=url.database or "postgres",
    )
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        shown = {
            k: admin.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
            for k in ("server_version", "shared_buffers", "synchronous_commit", "fsync")
        }

    def cleanup() -> None:
        if keep:
            print(f"kept PostgreSQL database {name}")
            return
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    backend = Backend(
        "PostgreSQL", url.set(database=name).render_as_string(hide_password=False), cleanup
    )
    backend.notes.append(
        f"scratch database {name}; " + ", ".join(f"{k} {v}" for k, v in shown.items())
    )
    return backend


# -- setup (not timed) --------------------------------------------------------------------------


def base_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return env | {"TIDINGS_DATABASE_URL": url, "TIDINGS_LOG_LEVEL": "WARNING"}


CUSTOMER_COLUMNS = (
    "project_id",
    "user_id",
    "email",
    "name",
    "traits",
    "audiences",
    "lifetime_value_units",
    "revenue_by_currency",
    "charge_count",
    "first_seen",
    "last_seen",
    "created_at",
    "updated_at",
)


def load_customers(db: Database, project_id: int, count: int, seed: int = 3) -> None:
    """`count` customers with an email, a name and a plan, in one bulk insert."""
    rng = random.Random(seed)
    now = clock.now()
    with db.session(write=True) as session:
        bulk = Bulk(session)
        rows = []
        for n in range(1, count + 1):
            first, last = rng.choice(dashboard.FIRST), rng.choice(dashboard.LAST)
            created = now - timedelta(minutes=rng.randrange(1, 525_600))
            email = f"customer{n}@example.com"
            traits = {
                "email": email,
                "first_name": first,
                "last_name": last,
                "name": f"{first} {last}",
                "plan": rng.choice(dashboard.PLANS),
                "created_at": clock.isoformat(created),
            }
            at = bulk.dt(created)
            rows.append(
                (
                    project_id,
                    f"user-{n}",
                    email,
                    f"{first} {last}",
                    bulk.json(traits),
                    bulk.json({}),
                    0,
                    bulk.json({}),
                    0,
                    at,
                    at,
                    at,
                    at,
                )
            )
        bulk.insert("customers", CUSTOMER_COLUMNS, rows)


def create_template(db: Database, project_id: int) -> int:
    """The `welcome` starter in the project's layout, with a personalised plan paragraph."""
    welcome = STARTERS["welcome"]
    with db.session(write=True) as session:
        s = email_settings.get(session, project_id=project_id)
        s.address = "Tidings Bench Ltd, 1 Sample Street, Springfield"
        layout = templates.get_default(session, project_id=project_id).html
        t = templates.create(
            session,
            project_id=project_id,
            name="Welcome (bench)",
            starter="welcome",
            html=fill(layout, welcome.content + "\n" + PLAN_PARAGRAPH),
        )
        return t.id


@dataclass
class Setup:
    project_id: int
    template_id: int
    customer_ids: list[int]
    seconds: float


def _load_main(url: str, project_id: int, count: int, out: Any) -> None:
    db = Database(Settings(database_url=url, log_level="WARNING"))
    try:
        load_customers(db, project_id, count)
        out.put(create_template(db, project_id))
    finally:
        db.dispose()


def setup(db: Database, env: dict[str, str], emails: int) -> Setup:
    """Migrate, create the project, then load customers and the template in a child process
    (so this process's peak RSS is the gateway's, not the loader's)."""
    t0 = time.perf_counter()
    dashboard.cli(env, "db", "upgrade")
    project = json.loads(dashboard.cli(env, "project", "create", "bench", "--json"))
    pid = int(project["id"])
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    loader = ctx.Process(target=_load_main, args=(env["TIDINGS_DATABASE_URL"], pid, emails, out))
    loader.start()
    loader.join()
    if loader.exitcode != 0:
        raise RuntimeError(f"loading the customers failed (exit code {loader.exitcode})")
    tid = int(out.get(timeout=10))
    with db.session() as session:
        ids = list(
            session.execute(
                text("SELECT id FROM customers WHERE project_id = :p ORDER BY id"), {"p": pid}
            ).scalars()
        )
    assert len(ids) == emails
    return Setup(pid, tid, ids, time.perf_counter() - t0)


# -- timed: the gateway -------------------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    cpu: float


def run_gateway(db: Database, s: Setup) -> Timed:
    request = gateway.Request(
        template_id=s.template_id,
        sender="broadcast",
        topic="broadcasts",
        variables={"data": {"cta_url": "https://app.tidings.example/start?from=welcome"}},
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(s.customer_ids), CHUNK):
        part = s.customer_ids[start : start + CHUNK]
        with db.session(write=True) as session:
            gateway.send_many(
                session,
                project_id=s.project_id,
                request=request,
                recipients=[(cid, f"bench:{cid}") for cid in part],
            )
    return Timed(time.perf_counter() - t0, time.process_time() - cpu0)


# -- timed: delivery by `tidings worker` processes ----------------------------------------------


class Workers:
    """K `tidings worker` processes; `started` is when the first one reported for work."""

    def __init__(self, count: int, env: dict[str, str], workdir: Path) -> None:
        self.spawned = time.perf_counter()
        self.started: list[float] = []
        self.cpu_at_start: dict[int, float] = {}
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        self._files: list[IO[str]] = []
        self._lock = threading.Lock()
        for i in range(count):
            log = workdir / f"worker-{i}.log"
            self.logs.append(log)
            self._files.append(log.open("w"))
            proc = subprocess.Popen(
                [str(BIN), "worker"],
                env=env,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=self._files[-1],
                text=True,
            )
            self.procs.append(proc)
            threading.Thread(target=self._watch, args=(proc,), daemon=True).start()

    def _watch(self, proc: subprocess.Popen[str]) -> None:
        stream = proc.stdout
        assert stream is not None
        seen = False
        for line in stream:  # drained to the end so the pipe never fills
            if not seen and "started" in line:
                seen = True
                self.cpu_at_start[proc.pid] = cpu_seconds(proc.pid)  # imports excluded
                with self._lock:
                    self.started.append(time.perf_counter())

    def wait_started(self, timeout: float = 60) -> float:
        """When the first worker started (all must start within `timeout`)."""
        deadline = time.perf_counter() + timeout
        while len(self.started) < len(self.procs):
            self.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.02)
        return min(self.started)

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"worker {proc.pid} exited ({proc.returncode}):\n{tail}")

    def readings(self) -> list[tuple[float, float]]:
        """(CPU seconds, peak RSS MB) of each worker, read before they exit."""
        return [
            (cpu_seconds(p.pid) - self.cpu_at_start[p.pid], peak_rss_mb(p.pid)) for p in self.procs
        ]

    def errors(self) -> str:
        return "".join(log.read_text() for log in self.logs).strip()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._files:
            f.close()


def statuses(db: Database) -> dict[str, int]:
    with db.session() as session:
        rows = session.execute(text("SELECT status, count(*) FROM messages GROUP BY status")).all()
    return {str(k): int(v) for k, v in rows}


def pending(db: Database) -> int:
    """Messages not yet delivered (the due index answers it)."""
    with db.session() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM messages WHERE status IN ('queued', 'deferred', "
                    "'sending')"
                )
            ).scalar_one()
        )


def wait_delivered(db: Database, workers: Workers, total: int) -> float:
    """Poll until nothing is left to deliver; the moment it was seen."""
    timeout = 120 + total / 20  # generous: 20 messages/s would still finish
    start = time.perf_counter()
    last, last_change = total, start
    while True:
        left = pending(db)
        now = time.perf_counter()
        if left == 0:
            return now
        if left != last:
            last, last_change = left, now
        workers.check_alive()
        if now - last_change > STALL or now - start > timeout:
            raise RuntimeError(
                f"delivery stalled: {left:,} of {total:,} still pending after "
                f"{now - start:,.0f} s; statuses {statuses(db)}\n{workers.errors()}"
            )
        time.sleep(POLL)


@dataclass
class Result:
    backend: str
    emails: int
    setup: float
    gateway: Timed
    startup: float
    delivery: float
    worker_cpu: list[float]
    worker_rss: list[float]
    sink_cpu: float | None
    received: int | None
    size: int
    busy: float
    bench_rss: float
    statuses: dict[str, int]
    load_before: str
    load_after: str


def run(backend: Backend, args: argparse.Namespace, workdir: Path) -> Result:
    env = base_env(backend.url)
    db = Database(Settings(database_url=backend.url, log_level="WARNING"))
    sink: Sink | None = None
    workers: Workers | None = None
    try:
        s = setup(db, env, args.emails)
        if not args.outbox:
            sink = Sink()
            env["TIDINGS_SMTP_URL"] = f"smtp://127.0.0.1:{sink.port}"
        if args.batch:
            env["TIDINGS_SEND_BATCH"] = str(args.batch)
        load_before = dashboard.load_average()
        gw = run_gateway(db, s)
        queued = statuses(db)
        if queued != {"queued": args.emails}:
            raise RuntimeError(f"the gateway queued {queued}, not {args.emails:,} messages")
        sink_cpu0 = cpu_seconds(sink.pid) if sink else 0.0
        busy0 = machine_busy()
        workers = Workers(args.workers, env, workdir)
        spawned, began = workers.spawned, workers.wait_started()
        ended = wait_delivered(db, workers, args.emails)
        busy1 = machine_busy()
        readings = workers.readings()
        sink_cpu = cpu_seconds(sink.pid) - sink_cpu0 if sink else None
        workers.stop()
        workers = None
        done = statuses(db)
        received = None
        if sink is not None:
            time.sleep(0.2)  # the last reply may race the sink's counter by a hair
            received = int(sink.received.value)
            if received != args.emails or sink.malformed.value:
                raise RuntimeError(
                    f"the sink received {received:,} messages with both parts (and "
                    f"{sink.malformed.value:,} without), not {args.emails:,}; statuses {done}"
                )
        if done != {"sent": args.emails}:
            raise RuntimeError(f"after delivery: {done}, not {args.emails:,} sent")
        check_personalised(db, s)
        return Result(
            backend=backend.name,
            emails=args.emails,
            setup=s.seconds,
            gateway=gw,
            startup=began - spawned,
            delivery=ended - began,
            worker_cpu=[c for c, _ in readings],
            worker_rss=[m for _, m in readings],
            sink_cpu=sink_cpu,
            received=received,
            size=int(sink.size.value) if sink else 0,
            busy=(busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
            bench_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            statuses=done,
            load_before=load_before,
            load_after=dashboard.load_average(),
        )
    finally:
        if workers is not None:
            workers.stop()
        if sink is not None:
            sink.stop()
        db.dispose()


def ceiling_message() -> bytes:
    """One message as a worker builds it: the bench template rendered for a sample customer."""
    welcome = STARTERS["welcome"]
    parts = render.Parts(
        subject=welcome.subject,
        preheader=welcome.preheader,
        html=fill(LAYOUT, welcome.content + "\n" + PLAN_PARAGRAPH),
        text="",
    )
    context = dict(templates.SAMPLE_CONTEXT)
    context["customer"] = {**context["customer"], "plan": "pro"}
    out = render.render(parts, context)
    envelope = providers.Envelope(
        from_name="Tidings Bench",
        from_email="bench@example.com",
        to="ada@example.com",
        reply_to=None,
        subject=out.subject,
        header_id="<1.bench@example.com>",
        unsubscribe_url="http://127.0.0.1:8000/u/sample",
        unsubscribe_mailto="mailto:unsubscribe@example.com?subject=unsubscribe",
        message_id=1,
    )
    return providers.build(envelope, html=out.html, text=out.text)


def _ceiling_client(port: int, data: bytes, until: float, sent: Synchronized[int]) -> None:
    smtp = providers.Smtp(providers.parse_smtp_url(f"smtp://127.0.0.1:{port}"), timeout=30)
    n = 0
    while time.time() < until:
        smtp.deliver(
            sender="bench@example.com",
            recipient=f"c{n}@example.com",
            build=lambda _eight_bit: data,
            handover=lambda: None,
        )
        n += 1
    smtp.close()
    sent.value = n


def sink_ceiling(seconds: float, clients: int) -> None:
    """Feed the sink as fast as `clients` processes can, with no rendering and no database."""
    data = ceiling_message()
    sink = Sink()
    ctx = multiprocessing.get_context("spawn")
    try:
        counters = [ctx.Value("q", 0, lock=False) for _ in range(clients)]
        start = time.time() + 2.0  # the clients' start-up is not counted
        procs = [
            ctx.Process(target=_ceiling_client, args=(sink.port, data, start + seconds, c))
            for c in counters
        ]
        for proc in procs:
            proc.start()
        while time.time() < start:
            time.sleep(0.01)
        received0, sink0, busy0 = sink.received.value, cpu_seconds(sink.pid), machine_busy()
        clients0 = sum(cpu_seconds(p.pid) for p in procs if p.pid is not None)
        time.sleep(seconds)
        received = sink.received.value - received0
        sink_cpu = cpu_seconds(sink.pid) - sink0
        clients_cpu = sum(cpu_seconds(p.pid) for p in procs if p.pid is not None) - clients0
        busy1 = machine_busy()
        for proc in procs:
            proc.join(30)
    finally:
        sink.stop()
    print(
        f"\nsink ceiling: {plural(clients, 'client process', 'es')} sending one pre-rendered "
        f"message ({len(data) / 1024:.1f} KB) over and over with Tidings' SMTP provider, "
        f"{seconds:.0f} s"
    )
    print(f"  received by the sink            {received / seconds:>8,.0f} msg/s")
    print(
        f"  CPU per message: sink {1000 * sink_cpu / max(1, received):.2f} ms "
        f"({100 * sink_cpu / seconds:.0f}% of one core), clients "
        f"{1000 * clients_cpu / max(1, received):.2f} ms; machine busy "
        f"{100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]):.0f}% of "
        f"{os.cpu_count()} cores"
    )
    print(f"  after: {dashboard.load_average()}", flush=True)


def check_personalised(db: Database, s: Setup) -> None:
    """One sent message carries its customer's first name and plan."""
    with db.session() as session:
        subject, html, traits = session.execute(
            text(
                "SELECT m.subject, m.html, c.traits FROM messages m JOIN customers c "
                "ON c.id = m.customer_id WHERE m.project_id = :p ORDER BY m.id DESC LIMIT 1"
            ),
            {"p": s.project_id},
        ).one()
    t = json.loads(traits) if isinstance(traits, str) else traits
    if t["first_name"] not in subject or f"{t['plan'].capitalize()}</strong>" not in html:
        raise RuntimeError(f"the message is not personalised: {subject!r}")


def code_version() -> str:
    """The commit measured, and whether src/ differs from it (workers import src/ at start)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes in src/" if dirty else "")


# -- report -------------------------------------------------------------------------------------


def plural(n: int, noun: str, suffix: str = "s") -> str:
    return f"{n:,} {noun}{'' if n == 1 else suffix}"


def report(r: Result, args: argparse.Namespace, batch: int) -> None:
    n = r.emails
    mode = (
        "the outbox provider (no SMTP)"
        if args.outbox
        else "SMTP to an aiosmtpd sink in its own process (its CPU competes with the workers' "
        "on the same cores, as a local relay would)"
    )
    print(
        f"\n{r.backend}: {n:,} personalised emails ('welcome' starter + plan paragraph, open and "
        f"click tracking on), {plural(args.workers, '`tidings worker` process', 'es')}, "
        f"batch {batch} (TIDINGS_SEND_BATCH), {mode}"
    )
    print(f"  setup (not timed): {r.setup:,.1f} s; {r.load_before} before the timed part")

    def rate(label: str, seconds: float, extra: str = "") -> None:
        value = n / seconds
        print(f"  {label:<34} {value:>8,.0f} msg/s  ({seconds:,.1f} s{extra})")

    gw = r.gateway
    rate(
        f"gateway (send_many, {CHUNK:,} per tx)",
        gw.seconds,
        f"; {1000 * gw.cpu / n:.2f} ms CPU/message in this process",
    )
    cpu = sum(r.worker_cpu)
    rate(
        f"delivery ({plural(args.workers, 'worker')})",
        r.delivery,
        f"; target {TARGET:,.0f}: {'yes' if n / r.delivery >= TARGET else 'NO'}; "
        f"worker start-up {r.startup:.1f} s not counted",
    )
    total = gw.seconds + r.delivery
    rate(
        "end to end (gateway + delivery)",
        total,
        f"; target {TARGET:,.0f}: {'yes' if n / total >= TARGET else 'NO'}",
    )
    sink = (
        f"; sink {r.sink_cpu:,.1f} s ({1000 * r.sink_cpu / n:.2f} ms/message)"
        if r.sink_cpu is not None
        else ""
    )
    print(
        f"  CPU during delivery: workers {cpu:,.1f} s ({1000 * cpu / n:.2f} ms/message){sink}; "
        f"machine busy {100 * r.busy:.0f}% of {os.cpu_count()} cores (database server, sink and "
        "everything else included)"
    )
    if r.received is not None:
        print(
            f"  sink received {r.received:,} messages, each with a text and an HTML part "
            f"({r.size / max(1, r.received) / 1024:.1f} KB on average)"
        )
    print(
        "  peak RSS: workers "
        + ", ".join(f"{m:,.0f} MB" for m in r.worker_rss)
        + f"; benchmark process {r.bench_rss:,.0f} MB (the gateway; customers are loaded in a "
        "child process)"
    )
    print(f"  after: {r.load_after}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="`tidings worker` processes")
    parser.add_argument("--batch", type=int, help="TIDINGS_SEND_BATCH (default: Tidings' own)")
    parser.add_argument("--outbox", action="store_true", help="no SMTP: the outbox provider")
    parser.add_argument("--postgres-url", help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--sink-ceiling", action="store_true", help="only the sink, fed pre-rendered messages"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="--sink-ceiling: how long")
    parser.add_argument("--clients", type=int, default=2, help="--sink-ceiling: client processes")
    args = parser.parse_args()
    if args.emails < 1 or args.workers < 1 or args.clients < 1:
        parser.error("--emails, --workers and --clients must be at least 1")
    if args.sink_ceiling:
        print(f"machine: {dashboard.machine()}")
        print(f"machine: {dashboard.load_average()}")
        sink_ceiling(args.seconds, args.clients)
        return
    batch = args.batch or Settings(database_url="sqlite://").send_batch
    print(f"machine: {dashboard.machine()}")
    print(f"machine: {dashboard.load_average()}")
    code = code_version()
    print(f"code: {code}")
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-send-"))
    backend = (
        postgres_backend(args.postgres_url, args.keep)
        if args.postgres_url
        else sqlite_backend(workdir, args.keep)
    )
    for note in backend.notes:
        print(f"{backend.name}: {note}")
    try:
        result = run(backend, args, workdir)
    finally:
        backend.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(result, args, batch)
    if code_version() != code:
        print(f"WARNING: the code changed during the run (now {code_version()})")


if __name__ == "__main__":
    main()
