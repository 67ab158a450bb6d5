"""/api/project: settings (identity policy) and key rotation."""

from __future__ import annotations

from fastapi import APIRouter

from tidings.api.deps import Reader, Writer
from tidings.auth import service as projects
from tidings.auth.schemas import ProjectPatch, ProjectSettings

router = APIRouter(prefix="/api/project", tags=["project"])


@router.get("/settings", response_model=ProjectSettings)
def get_settings(ctx: Reader) -> ProjectSettings:
    """The project's keys (secret key hint only) and identity policy."""
    return projects.settings(projects.get_or_raise(ctx.session, project_id=ctx.project_id))


@router.patch("/settings", response_model=ProjectSettings)
def patch_settings(ctx: Writer, body: ProjectPatch) -> ProjectSettings:
    """Change the name or the identity policy."""
    return projects.update_settings(ctx.session, project_id=ctx.project_id, patch=body)


@router.post("/secret-key/rotate")
def rotate_secret_key(ctx: Writer) -> dict[str, str]:
    """A new secret key, shown once; the old one stops working."""
    return {"secret_key": projects.rotate_secret_key(ctx.session, project_id=ctx.project_id)}


@router.post("/write-key/rotate")
def rotate_write_key(ctx: Writer) -> dict[str, str]:
    """A new write key; clients sending the old one get 401 within seconds."""
    return {"write_key": projects.rotate_write_key(ctx.session, project_id=ctx.project_id)}
