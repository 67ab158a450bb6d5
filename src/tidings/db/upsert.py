"""INSERT ... ON CONFLICT for SQLite and PostgreSQL (both dialects share the construct)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_for(session: Session, table: Table) -> Any:
    """The dialect's insert construct, which offers on_conflict_do_update/do_nothing."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    set_: Callable[[Any], dict[str, Any]] | None = None,
) -> None:
    """Insert rows; on a key conflict apply set_(excluded) or, without it, do nothing."""
    if not rows:
        return
    stmt = insert_for(session, table)
    if set_ is None:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    else:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=set_(stmt.excluded))
    session.execute(stmt, list(rows))
