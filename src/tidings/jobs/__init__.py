"""Background jobs: enqueue in the caller's transaction, claim, complete, retry with backoff.

Owns the `jobs` table. Handlers live with their domains and are registered by worker/.
"""

from tidings.jobs.service import claim, complete, enqueue, fail

__all__ = ["claim", "complete", "enqueue", "fail"]
