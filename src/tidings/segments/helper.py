"""Segment upkeep in a helper process beside the processor (SQLite).

On SQLite the processor's transactions hold the database's one write lock, and a thread of
the same process would share its interpreter lock: neither runs beside the processor. A helper
process does, on the machine's other core. It runs an `upkeep.Upkeep` of its own, one round at a
time, and judges each round in a snapshot while the processor writes (`Upkeep` says how a round
on SQLite writes only what no one changed meanwhile).

`UpkeepProcess` has `Upkeep`'s interface, so the processor and the worker use either alike. The
chunks' work goes to the helper through a pipe, without the chunk's profiles (the snapshot is
newer). The helper starts with the first round, and again after it dies: the queue rows of the
rounds it had not finished stay in `segment_upkeep`, and `recover` evaluates them. Should a
helper fail to start, the processor evaluates each chunk itself once it commits (as a helper
would, in its own transactions), and says so in its log.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import time
from dataclasses import replace
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from tidings.config import Settings
from tidings.db import Database, is_postgres
from tidings.segments.upkeep import BEHIND, STALE, Runner, Upkeep, Work

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds for a helper to import Tidings and answer


class UpkeepProcess:
    """Segment upkeep for the processor, run by a helper process (see the module)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._local: Upkeep | None = None  # when no helper can start: rounds run here
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._busy = False  # a round was sent and its answer not read
        self._pending: list[Work] = []
        self._behind = 0

    # -- what the processor calls (as on `Upkeep`) ------------------------------------------

    def submit(self, work: list[Work]) -> None:
        """Evaluate `work` (of a committed chunk) in the next round; past `BEHIND` chunks
        waiting, wait for the running round first."""
        if self._local is not None:  # between two transactions: nothing holds the lock
            work, self._pending = [*self._pending, *work], []
            self._local._run(work)
            return
        self._pending.extend(replace(w, base={}, versions={}) for w in work)
        self._behind += 1
        if self._behind >= BEHIND:
            self._finish_round()

    def start(self) -> None:
        """Send the work submitted as a round, unless the helper is still on one."""
        if not self._pending:
            return
        if self._busy:
            conn = self._conn
            if conn is None or not conn.poll():
                return
            self._finish_round()
        work, self._pending, self._behind = self._pending, [], 0
        self._call("round", work, answer=False)

    def wait(self, *, timeout: float = 5.0) -> None:
        """Until everything submitted is evaluated (customers a chunk changed meanwhile are
        tried again for up to `timeout` seconds, then stay queued)."""
        if self._local is not None:
            if self._pending:
                self.submit([])
            self._local.wait(timeout=timeout)
            return
        self._finish_round()
        self.start()
        self._finish_round()
        if self._process is not None:
            self._call("wait", timeout)

    def recover(self, *, older_than: timedelta = STALE) -> int:
        """Queue rows no round is working on (a helper died, a round failed): evaluated by the
        helper, every segment for each of their customers. Returns the rows done."""
        if self._local is not None:
            return self._local.recover(older_than=older_than)
        self._finish_round()
        done = self._call("recover", older_than.total_seconds())
        return int(done or 0)

    def close(self) -> None:
        """Finish what was submitted, then stop the helper."""
        try:
            self.wait()
        finally:
            self._stop()

    # -- the helper -------------------------------------------------------------------------

    def _spawn(self) -> Connection | None:
        """A new helper, ready for requests; None if it cannot start (rounds then run here)."""
        ctx = multiprocessing.get_context("spawn")  # no threads or connections inherited
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=serve,
            args=(theirs, self.db.settings.model_dump()),
            name="tidings-segments",
            daemon=True,
        )
        try:
            process.start()
            theirs.close()
            if not ours.poll(START_TIMEOUT):
                raise TimeoutError(f"no answer in {START_TIMEOUT:.0f} s")
            ours.recv()  # "ready"
        except Exception:
            log.exception("the segment upkeep helper cannot start: the processor evaluates")
            if process.is_alive():
                process.kill()
            ours.close()
            self._local = Upkeep(self.db)
            return None
        self._process, self._conn = process, ours
        return ours

    def _call(self, op: str, arg: Any, *, answer: bool = True) -> Any:
        """Send one request; with `answer`, wait for it. A helper that died is replaced on the
        next request; what it had not finished stays queued, for `recover`."""
        conn = self._conn if self._process is not None and self._process.is_alive() else None
        try:
            if conn is None:
                self._stop()
                conn = self._spawn()
            if conn is None:  # no helper: the work stays queued, and is evaluated here
                self._pending = [*arg, *self._pending] if op == "round" else self._pending
                return None
            conn.send((op, arg))
            self._busy = True
            if answer:
                return self._answer()
        except (EOFError, OSError, BrokenPipeError):
            log.exception("segment upkeep helper failed; its customers stay queued")
            self._stop()
        return None

    def _answer(self) -> Any:
        assert self._conn is not None
        try:
            ok, value = self._conn.recv()
        finally:
            self._busy = False
        if not ok:
            log.error("segment upkeep round failed in the helper: %s", value)
            return None
        return value

    def _finish_round(self) -> None:
        if self._busy:
            try:
                self._answer()
            except (EOFError, OSError):
                log.exception("segment upkeep helper failed; its customers stay queued")
                self._stop()

    def _stop(self) -> None:
        conn, process = self._conn, self._process
        self._conn, self._process, self._busy = None, None, False
        if conn is not None:
            try:
                conn.send(("stop", None))
            except (OSError, BrokenPipeError):
                pass
            conn.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


def upkeep_for(db: Database) -> Runner | None:
    """The worker's segment upkeep as the settings say (`segment_upkeep`); None: inline."""
    if db.settings.segment_upkeep == "inline":
        return None
    return Upkeep(db) if is_postgres(db.engine) else UpkeepProcess(db)


def serve(conn: Connection, settings: dict[str, Any]) -> None:
    """The helper's loop: one request at a time, each answered (ok, value)."""
    logging.basicConfig(level=settings.get("log_level", "INFO"))
    db = Database(Settings(**settings))
    runner = Upkeep(db)
    gc.collect()  # what start-up allocated stays out of the collector's reach (as the worker)
    gc.freeze()
    conn.send("ready")
    try:
        while True:
            try:
                op, arg = conn.recv()
            except EOFError:
                return  # the processor is gone
            if op == "stop":
                return
            started = time.monotonic()
            value: Any = None
            try:
                if op == "round":
                    ok = runner._run(arg)  # False: it failed, and logged why
                elif op == "wait":
                    runner.wait(timeout=float(arg))
                    ok = True
                else:
                    ok, value = True, runner.recover(older_than=timedelta(seconds=float(arg)))
            except Exception as exc:  # the round's customers stay queued
                log.exception("segment upkeep request failed")
                ok, value = False, f"{type(exc).__name__}: {exc}"
            log.debug("segment upkeep %s in %.3f s", op, time.monotonic() - started)
            conn.send((ok, value))
    finally:
        db.dispose()
        conn.close()
