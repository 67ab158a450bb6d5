"""Alembic environment: runs on the engine Tidings hands over (batch mode on SQLite)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

import tidings.auth.models
import tidings.customers.models
import tidings.ingest.models
import tidings.jobs.models
import tidings.messaging.models
import tidings.segments.models
import tidings.templates.models
from tidings.db import Base

engine: Engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=[Base.metadata, tidings.ingest.models.InboxBase.metadata],
        render_as_batch=engine.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
