"""Projects and their keys: write keys (public, for ingestion), secret keys (hashed, for the API).

Owns the `projects` table and key checks. Must not know about customers or ingestion.
"""
