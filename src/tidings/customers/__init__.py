"""Customer profiles: identity, traits, tags, timeline, charges, groups and the catalogs.

Owns the customer tables and every read or write of them. Must not parse wire messages
(that is ingest/) nor know about HTTP.
"""
