"""Messaging: the send gateway every email passes through, delivery and the message log.

Owns email settings, subscription topics and choices, suppressions, messages and their events,
signed links (unsubscribe, preferences, open pixel, click redirects) and the providers (SMTP and
the embedded outbox). Senders (the API, automations, broadcasts, surveys) call
`gateway.send`/`gateway.send_many` inside their own transaction; the worker delivers what is due.
Must not import ingest, segments or anything above: segment upkeep after email events goes
through the `segments.refresh` job.
"""
