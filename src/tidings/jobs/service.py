"""Job queue verbs. Claiming uses FOR UPDATE SKIP LOCKED on PostgreSQL; on SQLite the
IMMEDIATE transaction already serialises claimers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tidings import clock
from tidings.db.bulk import Bulk
from tidings.jobs.models import Job

RETRY_FIRST = timedelta(seconds=5)
RETRY_MAX = timedelta(hours=1)


def enqueue(
    session: Session,
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 5,
) -> Job | None:
    """Add a job in the caller's transaction; a live job with the same dedupe_key wins."""
    if dedupe_key is not None:
        existing = session.scalar(
            select(Job).where(Job.dedupe_key == dedupe_key, Job.status.in_(("queued", "running")))
        )
        if existing is not None:
            return None
    now = clock.now()
    job = Job(
        name=name,
        payload=payload or {},
        run_at=run_at or now,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
        created_at=now,
        status="queued",
        attempts=0,
    )
    session.add(job)
    session.flush()
    return job


def claim(session: Session, *, worker: str, limit: int = 10, lease_seconds: int = 300) -> list[Job]:
    """Take up to `limit` due jobs (or jobs whose previous claimer's lease ran out)."""
    now = clock.now()
    query = (
        select(Job)
        .where(
            or_(
                (Job.status == "queued") & (Job.run_at <= now),
                (Job.status == "running") & (Job.locked_until < now),
            )
        )
        .order_by(Job.run_at, Job.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    jobs = list(session.scalars(query))
    for job in jobs:
        job.status = "running"
        job.attempts += 1
        job.locked_by = worker
        job.locked_until = now + timedelta(seconds=lease_seconds)
    session.flush()
    return jobs


def complete(session: Session, *, job_id: int) -> None:
    """Mark a job done (its dedupe_key is released)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status="done", locked_by=None, locked_until=None, dedupe_key=None)
    )


def retry_delay(failures: int) -> timedelta:
    """How long background work waits after its `failures`-th failure in a row before it is
    tried again: 5 seconds after the first, twice as long after each next one, at most an
    hour."""
    return min(RETRY_MAX, RETRY_FIRST * (1 << min(max(failures, 1) - 1, 16)))


def fail(session: Session, *, job_id: int, error: str, transient: bool) -> None:
    """Record a failure: transient ones retry with exponential backoff until max_attempts."""
    job = session.get(Job, job_id)
    if job is None:
        return
    job.last_error = error[:4000]
    job.locked_by = None
    job.locked_until = None
    if transient and job.attempts < job.max_attempts:
        job.status = "queued"
        job.run_at = clock.now() + retry_delay(job.attempts + 1)
    else:
        job.status = "failed"
        job.dedupe_key = None


def publish(session: Session, events: list[tuple[int, str, int | None, dict[str, Any]]]) -> None:
    """Record domain events (project_id, name, customer_id, payload) in the caller's transaction."""
    if not events:
        return
    bulk = Bulk(session)
    at = bulk.dt(clock.now())
    bulk.insert(
        "domain_events",
        ("project_id", "name", "customer_id", "payload", "occurred_at"),
        [(pid, name, cid, bulk.json(payload), at) for pid, name, cid, payload in events],
    )
