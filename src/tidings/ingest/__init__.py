"""Ingestion: the Segment wire format, the durable inbox, and the processor that applies it.

Owns the inbox, the message log (dedup and visibility of every message) and processing order.
Must not know about HTTP: api/tracking.py parses requests and hands bodies to `inbox`.
"""
