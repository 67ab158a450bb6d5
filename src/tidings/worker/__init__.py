"""The worker: drains the ingestion inbox under its lease and runs due jobs.

Runs embedded in `tidings serve` (a thread) or alone as `tidings worker` (any number of them on
PostgreSQL; the inbox lease keeps message order, jobs are claimed with SKIP LOCKED).
"""
