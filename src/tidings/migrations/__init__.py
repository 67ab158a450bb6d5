"""Alembic migrations (run by `tidings db upgrade`); reversible, for SQLite and PostgreSQL."""
