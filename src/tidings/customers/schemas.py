"""Pydantic shapes of customers, events, charges, tags and catalogs as the API shows them."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """Every list: a page of data and the cursor of the next page (null at the end)."""

    data: list[T]
    next_cursor: str | None = None


class GroupOut(BaseModel):
    group_id: str
    traits: dict[str, Any]


class CustomerOut(BaseModel):
    id: int
    user_id: str | None
    email: str | None
    name: str | None
    anonymous_ids: list[str]
    traits: dict[str, Any]
    tags: list[str]
    audiences: dict[str, Any]
    groups: list[GroupOut]
    lifetime_value: float
    revenue_by_currency: dict[str, float]
    charge_count: int
    last_charge_at: str | None
    first_seen: str
    last_seen: str
    created_at: str
    updated_at: str


class CustomerSummary(BaseModel):
    """A customer in a list: no tags, groups or ids beyond the main ones."""

    id: int
    user_id: str | None
    email: str | None
    name: str | None
    lifetime_value: float
    first_seen: str
    last_seen: str
    created_at: str


class EventOut(BaseModel):
    id: int
    type: str
    name: str | None
    properties: dict[str, Any]
    context: dict[str, Any]
    timestamp: str
    received_at: str
    message_id: str | None


class ChargeOut(BaseModel):
    id: int
    amount: float
    currency: str
    timestamp: str
    message_id: str | None


class TagCount(BaseModel):
    tag: str
    customers: int


class TraitOut(BaseModel):
    key: str
    type: str
    customers: int
    first_seen: str
    last_seen: str


class EventTypeOut(BaseModel):
    name: str
    type: str
    count: int
    properties: dict[str, str]
    first_seen: str
    last_seen: str


class TraitsPatch(BaseModel):
    """Traits to merge into the profile; a null value removes that trait."""

    traits: dict[str, Any] = Field(description="Traits to set; null removes a trait.")
