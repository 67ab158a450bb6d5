"""The job queue's retries: a failed job waits longer after each failure, as background work
does everywhere (`jobs.retry_delay`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cli_support import scratch_db
from tidings import clock, jobs
from tidings.db import Database
from tidings.jobs.models import Job


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[Database]:
    with scratch_db(backend, tmp_path) as database:
        yield database
    clock.reset()


def test_the_retry_delay_doubles_from_five_seconds_up_to_an_hour() -> None:
    delays = [jobs.retry_delay(n).total_seconds() for n in range(1, 13)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert jobs.retry_delay(10_000) == timedelta(hours=1)


def test_a_transient_failure_waits_longer_each_time_until_the_last_attempt(db: Database) -> None:
    with db.session(write=True) as session:
        job = jobs.enqueue(session, "test.flaky", max_attempts=3)
        assert job is not None
        job_id = job.id
    waits = []
    for _ in range(3):
        clock.advance(timedelta(hours=2))  # past any wait
        with db.session(write=True) as session:
            claimed = jobs.claim(session, worker="w")
            assert [j.id for j in claimed] == [job_id]
            failed_at = clock.now()
            jobs.fail(session, job_id=job_id, error="boom", transient=True)
        with db.session() as session:
            row = session.get(Job, job_id)
            assert row is not None
            waits.append((row.status, round((row.run_at - failed_at).total_seconds())))
    # Attempts 1 and 2 wait 10 s and 20 s; the third was the last.
    assert waits[:2] == [("queued", 10), ("queued", 20)]
    assert waits[2][0] == "failed"
