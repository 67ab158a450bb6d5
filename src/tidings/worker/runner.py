"""The worker loop and the job handler registry."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tidings import clock, jobs
from tidings.db import Database
from tidings.db.engine import is_postgres
from tidings.ingest import processor
from tidings.ingest import service as ingestion
from tidings.messaging import delivery
from tidings.segments import membership, upkeep

log = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(minutes=10)
Handler = Callable[[Session, Database, dict[str, Any]], None]


def _prune(session: Session, db: Database, payload: dict[str, Any]) -> None:
    removed = ingestion.prune(session, settings=db.settings)
    log.info("message log pruned", extra={"removed": removed})
    if session.get_bind().dialect.name == "sqlite":
        # Keep SQLite's planner statistics fresh (PostgreSQL's autovacuum does this itself).
        session.execute(text("PRAGMA optimize"))


def _compute_segment(session: Session, db: Database, payload: dict[str, Any]) -> None:
    # Runs its own transactions (batches with progress); the job's session only completes it.
    sid, version = int(payload["segment_id"]), int(payload["version"])
    try:
        membership.compute(db, segment_id=sid, version=version)
    except Exception as exc:
        log.exception("segment computation failed", extra={"segment": sid})
        membership.mark_failed(
            db,
            segment_id=sid,
            version=version,
            error=f"The computation failed ({type(exc).__name__}); the worker's log has details.",
        )


def _refresh_segments(session: Session, db: Database, payload: dict[str, Any]) -> None:
    ids = [int(c) for c in payload["customer_ids"]]
    # Facets narrow the work to the segments the change can affect (email events, say).
    facets: set[Any] = {tuple(f) for f in payload.get("facets") or []} or {membership.EVERYTHING}
    membership.refresh(
        session,
        project_id=int(payload["project_id"]),
        changed={cid: set(facets) for cid in ids},
        source="edit",
    )


HANDLERS: dict[str, Handler] = {
    "ingest.prune": _prune,
    "segments.compute": _compute_segment,
    "segments.refresh": _refresh_segments,
}


def settle_heap() -> None:
    """Take what start-up allocated (modules, table metadata, compiled templates: some 150,000
    objects) out of the cyclic garbage collector's reach, and collect young objects less often.

    Processing a chunk allocates hundreds of thousands of objects that live until the chunk is
    done, so full collections come every chunk or two; each walked the whole start-up heap
    again (about 90 ms). Young objects are collected every 50,000 allocations (the default is
    700): each collection walks every young object still alive, and with live segments a chunk
    keeps many (profiles, facts, summaries, changes): at 10,000 the collections of a chunk of
    2,000 messages took about 6 ms with segments switched off and 16 ms with 50 live ones, at
    50,000 about 1.5 and 2 to 5 ms. Called once by `tidings serve` and `tidings worker` when
    they start.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


class Worker:
    """Processes the inbox and jobs until stopped."""

    def __init__(self, db: Database, *, name: str | None = None) -> None:
        self.db = db
        self.name = name or processor.worker_name()
        self.stop_event = threading.Event()
        self._last_jobs = 0.0
        self.reader = processor.InboxReader(db, limit=db.settings.processor_chunk)
        # PostgreSQL: chunks' segment upkeep runs beside the processor (see segments.upkeep).
        self.upkeep = upkeep.Upkeep(db) if is_postgres(db.engine) else None

    def run_once(self) -> int:
        """One round: a chunk of the inbox if this worker holds the lease, then due jobs."""
        handled = 0
        # The lease is renewed before every chunk, so it cannot lapse during a long drain.
        try:
            for _ in range(20):
                if not processor.acquire_lease(self.db, self.name):
                    break
                done = processor.drain(
                    self.db,
                    chunk_size=self.db.settings.processor_chunk,
                    max_chunks=1,
                    reader=self.reader,
                    segment_upkeep=self.upkeep,
                )
                if not done:
                    break
                handled += done
        finally:
            if self.upkeep is not None:
                self.upkeep.wait()  # memberships catch up whenever the processor pauses
        now = time.monotonic()
        if now - self._last_jobs > 1.0:
            self._last_jobs = now
            handled += self.run_jobs()
            handled += self.run_timers()
            handled += self.recover_upkeep()
        handled += self.run_sends()
        return handled

    def run_sends(self) -> int:
        """A batch of due emails (checked cheaply first: most rounds have none)."""
        with self.db.session() as session:
            if not delivery.has_due(session):
                return 0
        try:
            return delivery.deliver_due(self.db)
        except Exception:
            log.exception("email delivery round failed")
            return 0

    def run_timers(self) -> int:
        """Segment memberships whose time flip is due."""
        with self.db.session() as session:
            if not membership.has_due_timers(session):
                return 0
        try:
            with self.db.session(write=True) as session:
                return membership.run_due_timers(session)
        except Exception:
            # A deadlock with upkeep, say: the timers stay due for the next round.
            log.exception("segment timers round failed")
            return 0

    def recover_upkeep(self) -> int:
        """Segment upkeep that a crashed or failed round left queued (PostgreSQL)."""
        if self.upkeep is None:
            return 0
        try:
            return self.upkeep.recover()
        except Exception:
            log.exception("segment upkeep recovery failed")
            return 0

    def run_jobs(self) -> int:
        with self.db.session(write=True) as session:
            # A prune is always scheduled; the dedupe key keeps exactly one waiting.
            jobs.enqueue(
                session, "ingest.prune", run_at=clock.now() + PRUNE_EVERY, dedupe_key="ingest.prune"
            )
            claimed = [
                (j.id, j.name, dict(j.payload))
                for j in jobs.claim(session, worker=self.name, limit=10)
            ]
        for job_id, name, payload in claimed:
            handler = HANDLERS.get(name)
            try:
                if handler is None:
                    raise LookupError(f"no handler for job {name!r}")
                with self.db.session(write=True) as session:
                    handler(session, self.db, payload)
                    jobs.complete(session, job_id=job_id)
            except Exception as exc:
                log.exception("job failed", extra={"job": job_id, "job_name": name})
                with self.db.session(write=True) as session:
                    jobs.fail(
                        session,
                        job_id=job_id,
                        error=repr(exc),
                        transient=not isinstance(exc, LookupError),
                    )
        return len(claimed)

    def run(self) -> None:
        """Loop until stop(); sleeps briefly whenever there is nothing to do."""
        idle = self.db.settings.processor_idle_seconds
        while not self.stop_event.is_set():
            try:
                handled = self.run_once()
            except Exception:
                log.exception("worker round failed")
                handled = 0
                self.stop_event.wait(1.0)
            if not handled:
                self.stop_event.wait(idle)
        self.reader.close()
        if self.upkeep is not None:
            self.upkeep.close()
        try:
            processor.release_lease(self.db, self.name)
        except Exception:
            log.exception("could not release the ingest lease")

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="tidings-worker", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()
