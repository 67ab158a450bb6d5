"""Request-scoped dependencies: a database session and the project of the secret key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from tidings.auth import service as projects
from tidings.db import Database
from tidings.ingest.wire import bearer_token


@dataclass(slots=True)
class Ctx:
    """The session of this request and the project its key belongs to."""

    session: Session
    project_id: int
    db: Database


def _ctx(request: Request, authorization: str | None, *, write: bool) -> Iterator[Ctx]:
    db: Database = request.app.state.db
    with db.session(write=write) as session:
        project = projects.authenticate_secret(session, secret=bearer_token(authorization))
        yield Ctx(session=session, project_id=project.id, db=db)


def read_ctx(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Iterator[Ctx]:
    yield from _ctx(request, authorization, write=False)


def write_ctx(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Iterator[Ctx]:
    yield from _ctx(request, authorization, write=True)


# scope="function": the session commits before the response leaves, so a 200 means committed
# and a read right after it sees the change.
Reader = Annotated[Ctx, Depends(read_ctx, scope="function")]
Writer = Annotated[Ctx, Depends(write_ctx, scope="function")]
