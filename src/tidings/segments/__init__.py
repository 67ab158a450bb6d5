"""Segments: rule trees over customers, kept current on every change.

Owns the segment tables, the rule language (`rules`), its two evaluators (`evaluate` in Python
per customer, `compile` to SQL for whole projects), membership upkeep (`membership`) and the
use cases (`service`). Must not import ingest or anything above it: the processor calls
`membership.refresh` after each chunk, and customer edits reach it through a job.
"""
