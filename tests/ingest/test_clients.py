"""The official client libraries, pointed at a live Tidings, build exactly the right profiles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.support import Tenant


def _segment(tenant: Tenant, errors: list[Any]) -> SegmentClient:
    return SegmentClient(
        write_key=tenant.write_key,
        host=tenant.url,
        on_error=lambda e, b: errors.append(e),
        sync_mode=True,
    )


def _rudder(tenant: Tenant, errors: list[Any]) -> RudderClient:
    return RudderClient(
        write_key=tenant.write_key,
        host=tenant.url,
        on_error=lambda e, b: errors.append(e),
        sync_mode=True,
        gzip=True,
    )


@pytest.mark.parametrize("make_client", [_segment, _rudder], ids=["segment", "rudderstack"])
def test_every_call_type_builds_the_profile(tenant: Tenant, make_client: Any) -> None:
    errors: list[Any] = []
    client = make_client(tenant, errors)
    uid = f"user-{uuid.uuid4().hex[:6]}"
    client.identify(anonymous_id="anon-1", traits={"email": "Ann@Example.com"})
    client.identify(
        uid,
        {
            "email": "ann@example.com",
            "firstName": "Ann",
            "lastName": "Lee",
            "signed_up_at": 1583564043,
            "createdAt": "2020-01-02T03:04:05Z",
            "plan": "pro",
        },
        anonymous_id="anon-1",
    )
    client.track(uid, "Signed In", {"device": "mobile"})
    client.track(uid, "New Charge", {"revenue": "$39.95"})
    client.track(uid, "Order Completed", {"total": 10, "currency": "eur", "order_id": "o1"})
    client.page(uid, "Docs", "Getting started", {"url": "https://x.test/start", "path": "/start"})
    client.screen(uid, "App", "Home", {"variant": "b"})
    client.group(uid, "acme", {"name": "Acme Inc", "employees": 12})
    client.track(anonymous_id="anon-2", event="Viewed Pricing")
    client.alias("anon-2", uid)
    client.flush()
    assert errors == []
    tenant.wait_processed(10)

    c = tenant.customer(user_id=uid)
    assert c["email"] == "ann@example.com"
    assert c["name"] == "Ann Lee"
    assert c["traits"]["first_name"] == "Ann"
    assert c["traits"]["last_name"] == "Lee"
    assert c["traits"]["plan"] == "pro"
    assert c["traits"]["signed_up_at"] == "2020-03-07T06:54:03.000Z"
    assert c["traits"]["created_at"] == "2020-01-02T03:04:05.000Z"
    assert sorted(c["anonymous_ids"]) == ["anon-1", "anon-2"]
    assert c["lifetime_value"] == pytest.approx(49.95)
    assert c["charge_count"] == 2
    assert c["revenue_by_currency"] == {"USD": 39.95, "EUR": 10.0}
    assert c["groups"] == [{"group_id": "acme", "traits": {"name": "Acme Inc", "employees": 12}}]

    events = tenant.get(f"/api/customers/{c['id']}/events")["data"]
    names = [(e["type"], e["name"]) for e in events]
    # The revenue track is a charge, not an event; Order Completed is kept with its data.
    assert sorted(names) == sorted(
        [
            ("track", "Signed In"),
            ("track", "Order Completed"),
            ("page", "Getting started"),
            ("screen", "Home"),
            ("track", "Viewed Pricing"),
        ]
    )
    order = next(e for e in events if e["name"] == "Order Completed")
    assert order["properties"]["order_id"] == "o1"
    page = next(e for e in events if e["type"] == "page")
    assert page["properties"]["path"] == "/start"
    assert page["properties"]["category"] == "Docs"
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)

    charges = tenant.get(f"/api/customers/{c['id']}/charges")["data"]
    assert sorted((ch["amount"], ch["currency"]) for ch in charges) == [
        (10.0, "EUR"),
        (39.95, "USD"),
    ]
    # One profile only: the anonymous visitor was merged into the identified customer.
    assert len(tenant.get("/api/customers")["data"]) == 1
