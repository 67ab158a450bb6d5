"""Pydantic shapes of segments as the API takes and shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Rules are checked by the segments' own parser, whose errors name the offending condition
# (`400 invalid_segment`), a definition that is not even an object included.
RULES = "a condition or an all / any / not group of them (see the README)"


class SegmentIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    rules: Any = Field(description=RULES)


class SegmentPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    rules: Any = Field(default=None, description=RULES)


class PreviewIn(BaseModel):
    rules: Any = Field(description=RULES)
    sample: int = Field(default=10, ge=0, le=100)


class SegmentOut(BaseModel):
    id: int
    name: str
    description: str | None
    rules: dict[str, Any]
    status: str = Field(description="computing | ready | failed")
    progress: int = Field(description="percent done while computing")
    error: str | None
    member_count: int
    entered_7d: int = 0
    exited_7d: int = 0
    version: int
    created_at: str
    updated_at: str
    computed_at: str | None


class MemberOut(BaseModel):
    id: int
    user_id: str | None
    email: str | None
    name: str | None
    entered_at: str


class CustomerSegmentOut(BaseModel):
    id: int
    name: str
    entered_at: str


class SampleCustomer(BaseModel):
    id: int
    user_id: str | None
    email: str | None
    name: str | None


class PreviewOut(BaseModel):
    count: int
    sample: list[SampleCustomer]


class ExplainOut(BaseModel):
    segment_id: int
    customer_id: int
    member: bool = Field(description="stored membership")
    matches: bool = Field(description="the rules evaluated now")
    rules: dict[str, Any] = Field(description="each group and condition, its value and truth")


class ApplyResult(BaseModel):
    name: str
    id: int
    action: str = Field(description="created | updated | unchanged")
