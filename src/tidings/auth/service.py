"""Projects: creation, key checks, key rotation and the identity policy."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import clock
from tidings.auth.models import Project
from tidings.auth.schemas import CreatedProject, ProjectPatch, ProjectSettings
from tidings.errors import BadRequest, NotFound, Unauthorized

SECRET_PREFIX = "sk_"  # noqa: S105 (a prefix, not a secret)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a secret key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _new_write_key() -> str:
    return secrets.token_hex(16)


def create(session: Session, *, name: str) -> CreatedProject:
    """Create a project; the returned secret key is shown once and stored only hashed."""
    name = name.strip()
    if not name:
        raise BadRequest("A project needs a name.")
    if len(name) > 200:
        raise BadRequest("A project name is at most 200 characters.")
    secret = _new_secret()
    project = Project(
        name=name,
        write_key=_new_write_key(),
        secret_key_hash=hash_secret(secret),
        secret_key_hint=secret[:7],
        webhook_secret=secrets.token_hex(16),
        require_email_to_create=False,
        require_user_id=False,
        unknown_user_track="create",
        revenue_as_charge=True,
        created_at=clock.now(),
    )
    session.add(project)
    session.flush()
    return CreatedProject(
        id=project.id, name=project.name, write_key=project.write_key, secret_key=secret
    )


def list_all(session: Session) -> list[Project]:
    """Every project, oldest first."""
    return list(session.scalars(select(Project).order_by(Project.id)))


def get(session: Session, *, project_id: int) -> Project | None:
    return session.get(Project, project_id)


def get_or_raise(session: Session, *, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"No project {project_id}.")
    return project


def get_by_reference(session: Session, *, ref: str) -> Project:
    """A project by id, write key or name (for the CLI); refuses an ambiguous reference."""
    query = select(Project).where(
        (Project.name == ref)
        | (Project.write_key == ref)
        | (Project.id == (int(ref) if ref.isdigit() else -1))
    )
    found = list(session.scalars(query.order_by(Project.id)))
    if not found:
        raise NotFound(f"No project named or numbered {ref!r}.")
    if len(found) > 1:
        ids = ", ".join(str(p.id) for p in found)
        raise BadRequest(
            f"{ref!r} matches several projects (ids {ids}); give the id or the write key.",
            code="ambiguous_project",
        )
    return found[0]


def get_by_write_key(session: Session, *, write_key: str) -> Project | None:
    return session.scalars(select(Project).where(Project.write_key == write_key)).first()


def authenticate_secret(session: Session, *, secret: str | None) -> Project:
    """The project a secret key belongs to, or 401."""
    if not secret:
        raise Unauthorized("Send the project's secret key as `Authorization: Bearer <key>`.")
    digest = hash_secret(secret)
    project = session.scalars(select(Project).where(Project.secret_key_hash == digest)).first()
    if project is None or not hmac.compare_digest(project.secret_key_hash, digest):
        raise Unauthorized("Unknown secret key.", code="invalid_key")
    return project


def rotate_secret_key(session: Session, *, project_id: int) -> str:
    """Replace the secret key; the old one stops working at once."""
    project = get_or_raise(session, project_id=project_id)
    secret = _new_secret()
    project.secret_key_hash = hash_secret(secret)
    project.secret_key_hint = secret[:7]
    return secret


def rotate_write_key(session: Session, *, project_id: int) -> str:
    """Replace the write key (clients must be updated)."""
    project = get_or_raise(session, project_id=project_id)
    project.write_key = _new_write_key()
    return project.write_key


def settings(project: Project) -> ProjectSettings:
    """The project's settings as shown by the API (never the secret key)."""
    return ProjectSettings(
        id=project.id,
        name=project.name,
        write_key=project.write_key,
        secret_key_hint=project.secret_key_hint,
        webhook_secret=project.webhook_secret,
        require_email_to_create=project.require_email_to_create,
        require_user_id=project.require_user_id,
        unknown_user_track=project.unknown_user_track,
        revenue_as_charge=project.revenue_as_charge,
    )


def update_settings(session: Session, *, project_id: int, patch: ProjectPatch) -> ProjectSettings:
    """Change the name or identity policy; only the given fields change."""
    project = get_or_raise(session, project_id=project_id)
    for key, value in patch.model_dump(exclude_none=True).items():
        if key == "name":
            value = value.strip()
            if not value:
                raise BadRequest("A project needs a name.")
        setattr(project, key, value)
    session.flush()
    return settings(project)
