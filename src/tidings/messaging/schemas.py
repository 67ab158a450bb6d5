"""Pydantic shapes of messages, settings, topics, subscriptions and suppressions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SendIn(BaseModel):
    template_id: int
    customer_id: int
    topic: str | None = Field(default=None, description="Required unless transactional.")
    transactional: bool = False
    idempotency_key: str | None = Field(
        default=None,
        max_length=200,
        description="Sending again with the same key returns the first message, sends nothing.",
    )
    event: dict[str, Any] | None = Field(default=None, description="Liquid `event`.")
    data: dict[str, Any] | None = Field(default=None, description="Liquid `data`.")
    on_cap: Literal["defer", "skip"] = "defer"


class MessageEventOut(BaseModel):
    type: str
    detail: str | None
    data: dict[str, Any]
    at: str


class MessageOut(BaseModel):
    id: int
    customer_id: int | None
    template_id: int | None
    sender: str
    topic: str | None
    transactional: bool
    to: str | None
    status: str = Field(
        description="queued | deferred | sending | sent | skipped | failed | bounced | complained"
    )
    reason: str | None
    decisions: list[dict[str, Any]]
    send_after: str
    attempts: int
    subject: str | None
    header_id: str | None
    sent_at: str | None
    opened_at: str | None
    clicked_at: str | None
    unsubscribed_at: str | None
    created_at: str


class MessageDetail(MessageOut):
    html: str | None
    text: str | None
    events: list[MessageEventOut]


class MessagePage(BaseModel):
    data: list[MessageOut]
    next_cursor: str | None


class EmailSettingsOut(BaseModel):
    from_name: str | None
    from_email: str | None
    reply_to: str | None
    address: str
    frequency_cap: dict[str, int] = Field(description="{count, days}; count 0 means no cap")
    quiet_hours: dict[str, str] | None = Field(description="{start, end} local times, or null")
    timezone: str
    track_opens: bool
    track_clicks: bool
    provider: str = Field(description="smtp or outbox (TIDINGS_SMTP_URL unset)")


class EmailSettingsPatch(BaseModel):
    from_name: str | None = Field(default=None, max_length=200)
    from_email: str | None = Field(default=None, max_length=320)
    reply_to: str | None = Field(default=None, max_length=320)
    address: str | None = Field(default=None, max_length=1000)
    frequency_cap: dict[str, int] | None = None
    quiet_hours: dict[str, str] | None = None
    timezone: str | None = Field(default=None, max_length=64)
    track_opens: bool | None = None
    track_clicks: bool | None = None


class TopicIn(BaseModel):
    key: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class TopicPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class TopicOut(BaseModel):
    key: str
    name: str
    description: str
    builtin: bool
    unsubscribed: int = 0


class CustomerSubscriptions(BaseModel):
    customer_id: int
    unsubscribed_all: bool
    topics: list[dict[str, Any]] = Field(description="[{key, name, subscribed}]")


class SubscriptionsPut(BaseModel):
    topics: dict[str, bool] = Field(default_factory=dict)
    unsubscribed_all: bool | None = None


class SubscriptionOut(BaseModel):
    customer_id: int
    topic: str
    subscribed: bool
    source: str
    updated_at: str


class SubscriptionPage(BaseModel):
    data: list[SubscriptionOut]
    next_cursor: str | None


class SuppressionIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    note: str = Field(default="", max_length=2000)


class SuppressionOut(BaseModel):
    email: str
    reason: str
    note: str
    message_id: int | None
    created_at: str


class SuppressionPage(BaseModel):
    data: list[SuppressionOut]
    next_cursor: str | None


class NotificationResult(BaseModel):
    accepted: int
    suppressed: list[str]
    ignored: int
