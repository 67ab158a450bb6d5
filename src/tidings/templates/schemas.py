"""Pydantic shapes of templates as the API takes and shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MAX_BODY = 500_000


class TemplateIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    subject: str | None = Field(default=None, max_length=1000)
    preheader: str | None = Field(default=None, max_length=1000)
    html: str | None = Field(default=None, max_length=MAX_BODY)
    text: str | None = Field(default=None, max_length=MAX_BODY)
    starter: str | None = Field(
        default=None, description="Start from a gallery starter (welcome, onboarding, ...)."
    )


class TemplatePatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    subject: str | None = Field(default=None, max_length=1000)
    preheader: str | None = Field(default=None, max_length=1000)
    html: str | None = Field(default=None, max_length=MAX_BODY)
    text: str | None = Field(default=None, max_length=MAX_BODY)


class TemplateOut(BaseModel):
    id: int
    name: str
    subject: str
    preheader: str
    html: str
    text: str
    is_default: bool
    starter: str | None
    version: int
    created_at: str
    updated_at: str


class StarterOut(BaseModel):
    key: str
    name: str
    description: str
    subject: str


class PreviewIn(BaseModel):
    customer_id: int | None = Field(default=None, description="Render for this customer.")
    event: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    # An unsaved draft: any part given here replaces the saved one.
    subject: str | None = Field(default=None, max_length=1000)
    preheader: str | None = Field(default=None, max_length=1000)
    html: str | None = Field(default=None, max_length=MAX_BODY)
    text: str | None = Field(default=None, max_length=MAX_BODY)


class PreviewOut(BaseModel):
    subject: str
    html: str
    text: str


class SendTestIn(BaseModel):
    to: str = Field(min_length=3, max_length=320)
    customer_id: int | None = None
    data: dict[str, Any] | None = None
