"""/api/messages, /api/subscriptions, /api/suppressions and /api/project/email."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from tidings.api.deps import Reader, Writer
from tidings.customers.schemas import Page
from tidings.messaging import gateway, service
from tidings.messaging import settings as email_settings
from tidings.messaging.schemas import (
    CustomerSubscriptions,
    EmailSettingsOut,
    EmailSettingsPatch,
    MessageDetail,
    MessageOut,
    NotificationResult,
    SendIn,
    SubscriptionOut,
    SubscriptionsPut,
    SuppressionIn,
    SuppressionOut,
    TopicIn,
    TopicOut,
    TopicPatch,
)

router = APIRouter(prefix="/api", tags=["messages"])
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("/messages", response_model=MessageOut, status_code=201)
def send(ctx: Writer, body: SendIn) -> MessageOut:
    """Send one template to one customer through the gateway; returns the message and status."""
    variables: dict[str, Any] = {"event": body.event or {}, "data": body.data or {}}
    m = gateway.send(
        ctx.session,
        project_id=ctx.project_id,
        template_id=body.template_id,
        customer_id=body.customer_id,
        topic=body.topic,
        transactional=body.transactional,
        key=f"api:{body.idempotency_key}" if body.idempotency_key else None,
        variables=variables,
        on_cap=body.on_cap,
    )
    return service.message_out(m)


@router.get("/messages", response_model=Page[MessageOut])
def list_messages(
    ctx: Reader,
    customer_id: int | None = None,
    status: str | None = None,
    template_id: int | None = None,
    sender: str | None = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Page[MessageOut]:
    """The message log (the outbox when no SMTP server is configured), newest first."""
    data, nxt = service.list_messages(
        ctx.session,
        project_id=ctx.project_id,
        customer_id=customer_id,
        status=status,
        template_id=template_id,
        sender=sender,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=data, next_cursor=nxt)


@router.post("/messages/events", response_model=NotificationResult)
def notifications(ctx: Writer, payload: Annotated[Any, Body()]) -> NotificationResult:
    """Bounce, complaint and unsubscribe notifications: generic JSON, SES (SNS) or arrays."""
    return service.notify(ctx.session, project_id=ctx.project_id, payload=payload)


@router.get("/messages/{message_id}", response_model=MessageDetail)
def get_message(ctx: Reader, message_id: int) -> MessageDetail:
    """One message: content, gateway decisions and its whole log."""
    return service.detail(ctx.session, project_id=ctx.project_id, message_id=message_id)


@router.get("/customers/{customer_id}/messages", response_model=Page[MessageOut])
def customer_messages(
    ctx: Reader, customer_id: int, limit: Limit = 50, cursor: str | None = None
) -> Page[MessageOut]:
    """The messages sent (or not) to one customer."""
    data, nxt = service.list_messages(
        ctx.session, project_id=ctx.project_id, customer_id=customer_id, limit=limit, cursor=cursor
    )
    return Page(data=data, next_cursor=nxt)


@router.get("/subscriptions/topics", response_model=Page[TopicOut])
def topics(ctx: Writer) -> Page[TopicOut]:
    """Subscription topics with how many customers opted out of each."""
    return Page(data=service.topics(ctx.session, project_id=ctx.project_id))


@router.post("/subscriptions/topics", response_model=TopicOut, status_code=201)
def create_topic(ctx: Writer, body: TopicIn) -> TopicOut:
    """A new topic customers can opt out of."""
    t = email_settings.create_topic(ctx.session, project_id=ctx.project_id, **body.model_dump())
    return TopicOut(key=t.key, name=t.name, description=t.description, builtin=False)


@router.patch("/subscriptions/topics/{key}", response_model=TopicOut)
def update_topic(ctx: Writer, key: str, body: TopicPatch) -> TopicOut:
    """Rename or describe a topic."""
    t = email_settings.update_topic(
        ctx.session, project_id=ctx.project_id, key=key, **body.model_dump(exclude_unset=True)
    )
    return TopicOut(
        key=t.key,
        name=t.name,
        description=t.description,
        builtin=t.key in email_settings.BUILTIN_TOPICS,
    )


@router.delete("/subscriptions/topics/{key}", status_code=204)
def delete_topic(ctx: Writer, key: str) -> Response:
    """Delete a topic the project defined."""
    email_settings.delete_topic(ctx.session, project_id=ctx.project_id, key=key)
    return Response(status_code=204)


@router.get("/subscriptions", response_model=Page[SubscriptionOut])
def list_subscriptions(
    ctx: Reader,
    topic: str | None = None,
    subscribed: bool | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> Page[SubscriptionOut]:
    """Customers' recorded choices (no row means subscribed)."""
    data, nxt = service.list_subscriptions(
        ctx.session,
        project_id=ctx.project_id,
        topic=topic,
        subscribed=subscribed,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=data, next_cursor=nxt)


@router.get("/subscriptions/{customer_id}", response_model=CustomerSubscriptions)
def customer_subscriptions(ctx: Writer, customer_id: int) -> CustomerSubscriptions:
    """A customer's choice for every topic."""
    return service.customer_subscriptions(
        ctx.session, project_id=ctx.project_id, customer_id=customer_id
    )


@router.put("/subscriptions/{customer_id}", response_model=CustomerSubscriptions)
def set_subscriptions(
    ctx: Writer, customer_id: int, body: SubscriptionsPut
) -> CustomerSubscriptions:
    """Subscribe or unsubscribe a customer per topic, or from all marketing email."""
    return service.set_subscriptions(
        ctx.session,
        project_id=ctx.project_id,
        customer_id=customer_id,
        topics=body.topics,
        unsubscribed_all=body.unsubscribed_all,
    )


@router.get("/suppressions", response_model=Page[SuppressionOut])
def list_suppressions(
    ctx: Reader, reason: str | None = None, limit: Limit = 100, cursor: str | None = None
) -> Page[SuppressionOut]:
    """Addresses never sent to: hard bounces, complaints, manual."""
    data, nxt = service.list_suppressions(
        ctx.session, project_id=ctx.project_id, reason=reason, limit=limit, cursor=cursor
    )
    return Page(data=data, next_cursor=nxt)


@router.post("/suppressions", response_model=SuppressionOut, status_code=201)
def add_suppression(ctx: Writer, body: SuppressionIn) -> SuppressionOut:
    """Suppress an address by hand."""
    return service.add_suppression(
        ctx.session, project_id=ctx.project_id, email=body.email, note=body.note
    )


@router.delete("/suppressions/{email}", status_code=204)
def remove_suppression(ctx: Writer, email: str) -> Response:
    """Allow sending to an address again."""
    service.remove_suppression(ctx.session, project_id=ctx.project_id, email=email)
    return Response(status_code=204)


@router.get("/project/email", response_model=EmailSettingsOut)
def get_email_settings(ctx: Writer) -> EmailSettingsOut:
    """From, reply-to, footer address, frequency cap, quiet hours, tracking."""
    return service.settings_out(ctx.session, project_id=ctx.project_id, db=ctx.db)


@router.patch("/project/email", response_model=EmailSettingsOut)
def patch_email_settings(ctx: Writer, body: EmailSettingsPatch) -> EmailSettingsOut:
    """Change the email settings."""
    return service.update_settings(ctx.session, project_id=ctx.project_id, patch=body, db=ctx.db)
