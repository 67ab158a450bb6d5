"""Background jobs: enqueue in the caller's transaction, claim, complete, retry with backoff.

Owns the `jobs` table and the `domain_events` outbox. Handlers live with their domains and
are registered by worker/.
"""

from tidings.jobs.service import claim, complete, enqueue, fail, publish, retry_delay

__all__ = ["claim", "complete", "enqueue", "fail", "publish", "retry_delay"]
