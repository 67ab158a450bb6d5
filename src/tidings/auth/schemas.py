"""Pydantic shapes for projects and their settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class IdentityPolicy(BaseModel):
    """Who may create a customer and what happens to unknown users' events."""

    require_email_to_create: bool = False
    require_user_id: bool = False
    unknown_user_track: Literal["create", "drop"] = "create"
    revenue_as_charge: bool = True


class PolicyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_email_to_create: bool | None = None
    require_user_id: bool | None = None
    unknown_user_track: Literal["create", "drop"] | None = None
    revenue_as_charge: bool | None = None


class ProjectSettings(IdentityPolicy):
    id: int
    name: str
    write_key: str
    secret_key_hint: str
    webhook_secret: str


class ProjectPatch(PolicyPatch):
    name: str | None = None


class CreatedProject(BaseModel):
    """Printed once by `tidings project create --json`: the secret key is not kept."""

    id: int
    name: str
    write_key: str
    secret_key: str
