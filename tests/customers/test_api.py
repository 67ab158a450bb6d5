"""Customers, traits, events, revenue and the management API, through a live `tidings serve`.

Every test gets a fresh project on the live server of each backend (SQLite, PostgreSQL): data is
sent as Segment messages to /v1/batch and read back through /api with the project's secret key.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.customers.messages import (
    ISO_MS,
    alias,
    assert_error,
    at,
    group,
    identify,
    iso,
    page,
    screen,
    track,
)
from tests.support import Tenant

SAME_DATE = "2020-03-07T06:54:03.000Z"  # 1583564043 seconds after the epoch


# -- helpers ----------------------------------------------------------------------------------


def walk(tenant: Tenant, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every page of a cursor-paginated list; returns the pages' bodies in order."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        body = tenant.get(path, **query)
        assert set(body) >= {"data", "next_cursor"}, body
        pages.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


def customer_ids(tenant: Tenant, **params: Any) -> list[int]:
    body = tenant.get("/api/customers", limit=200, **params)
    assert body["next_cursor"] is None
    return [c["id"] for c in body["data"]]


def traits_catalog(tenant: Tenant) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in tenant.get("/api/traits")["data"]}


def tags_catalog(tenant: Tenant) -> dict[str, int]:
    return {t["tag"]: t["customers"] for t in tenant.get("/api/tags")["data"]}


def events_catalog(tenant: Tenant) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["type"], e["name"]): e for e in tenant.get("/api/events")["data"]}


def timeline(tenant: Tenant, customer_id: int) -> list[dict[str, Any]]:
    body = tenant.get(f"/api/customers/{customer_id}/events", limit=200)
    assert body["next_cursor"] is None
    return list(body["data"])


def cursor_of(value: Any) -> str:
    """A syntactically valid cursor (base64 JSON) holding any value: we never issued these."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def write(tenant: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    """A write through the API that must succeed (200)."""
    r = tenant.api.request(method, path, json=body)
    assert r.status_code == 200, (method, path, r.status_code, r.text)
    return r


def set_policy(tenant: Tenant, **policy: Any) -> dict[str, Any]:
    r = write(tenant, "PATCH", "/api/project/settings", body=policy)
    assert r.status_code == 200, r.text
    body = dict(r.json())
    for key, value in policy.items():
        assert body[key] == value, body
    assert tenant.get("/api/project/settings") == body
    return body


def dropped_reasons(tenant: Tenant) -> dict[str, str]:
    rows = tenant.messages("dropped")
    assert all(m["status"] == "dropped" for m in rows), rows
    return {m["message_id"]: m["reason"] for m in rows}


def statuses(tenant: Tenant) -> dict[str, str]:
    return {m["message_id"]: m["status"] for m in tenant.messages()}


def lookup_status(tenant: Tenant, **params: str) -> int:
    return tenant.api.get("/api/customers/lookup", params=params).status_code


# -- list, search, pagination -----------------------------------------------------------------


def test_search_by_text_email_user_id_tag_and_traits(tenant: Tenant) -> None:
    tenant.send(
        [
            identify(
                "u-ann",
                {
                    "email": "Ann.Lee@Example.com",
                    "firstName": "Ann",
                    "lastName": "Lee",
                    "plan": "pro",
                    "age": 30,
                    "vip": True,
                },
            ),
            identify(
                "u-bob",
                {
                    "email": "bob@example.org",
                    "name": "Bob Ray",
                    "plan": "free",
                    "age": 25,
                    "vip": False,
                },
            ),
            identify(
                "u-annie",
                {"email": "annie@sample.com", "first_name": "Annie", "plan": "pro", "age": 41},
            ),
            identify(
                "u-jo",
                {"email": "jo@sample.com", "name": "Joanna Fox", "plan": "pro", "age": 30},
            ),
            identify("ann-lee", {"email": "zed@sample.com", "name": "Zed"}),
        ]
    )
    ids = {u: tenant.customer(user_id=u)["id"] for u in ("u-ann", "u-bob", "u-annie", "u-jo")}
    ids["zed"] = tenant.customer(user_id="ann-lee")["id"]
    ann, bob, annie, jo, zed = (ids[k] for k in ("u-ann", "u-bob", "u-annie", "u-jo", "zed"))

    everyone = customer_ids(tenant)
    assert sorted(everyone) == sorted(ids.values())
    assert everyone == sorted(everyone, reverse=True), "customers are listed newest first"

    def found(**params: Any) -> set[int]:
        result = customer_ids(tenant, **params)
        assert len(result) == len(set(result)), result
        return set(result)

    # q: the start of the email or of the name (any case), or the exact userId.
    assert found(q="ann") == {ann, annie}
    assert found(q="ANN.LEE@example") == {ann}
    assert found(q="annie@") == {annie}
    assert found(q="bob r") == {bob}
    assert found(q="JOANNA") == {jo}
    assert found(q="u-bob") == {bob}
    assert found(q="ann-lee") == {zed}
    assert found(q="nobody-matches") == set()
    assert found(q="%") == set(), "LIKE wildcards in q are literal"
    assert found(q="_") == set(), "LIKE wildcards in q are literal"
    # email= and user_id= are exact (email case-insensitive).
    assert found(email="ANN.LEE@EXAMPLE.COM") == {ann}
    assert found(email="ann.lee") == set()
    assert found(user_id="u-bob") == {bob}
    assert found(user_id="u-bo") == set()
    # tag=
    for customer in (ann, bob):
        write(tenant, "PUT", f"/api/customers/{customer}/tags/vip")
    assert found(tag="vip") == {ann, bob}
    assert found(tag="nope") == set()
    # trait=key:value, compared as the value's type.
    assert found(trait="plan:pro") == {ann, annie, jo}
    assert found(trait="plan=free") == {bob}
    assert found(trait="age:30") == {ann, jo}
    assert found(trait="age:41") == {annie}
    assert found(trait="vip:true") == {ann}
    assert found(trait="vip:false") == {bob}
    assert found(trait="age:25.0") == {bob}
    assert found(trait="name:Zed") == {zed}
    assert found(trait=["plan:pro", "age:30"]) == {ann, jo}
    assert found(q="ann", trait="age:30") == {ann}
    assert found(tag="vip", trait="plan:pro") == {ann}
    assert_error(tenant.api.get("/api/customers", params={"trait": "plan"}), 400)


def test_trait_filter_does_not_match_values_of_another_type(tenant: Tenant) -> None:
    """Traits are free-form: one key may hold numbers for some customers, words for others."""
    tenant.send(
        [
            identify("mix-1", {"age": 30, "vip": True, "score": 0}),
            identify("mix-2", {"age": "unknown", "vip": "maybe", "score": "none"}),
            identify("mix-3", {"age": 41, "vip": False, "score": 7}),
        ]
    )
    ids = {u: tenant.customer(user_id=u)["id"] for u in ("mix-1", "mix-2", "mix-3")}

    def found(spec: str) -> set[str]:
        r = tenant.api.get("/api/customers", params={"trait": spec})
        assert r.status_code == 200, (spec, r.status_code, r.text)
        return {u for u, i in ids.items() if i in {c["id"] for c in r.json()["data"]}}

    assert found("age:30") == {"mix-1"}
    assert found("age:unknown") == {"mix-2"}
    assert found("vip:true") == {"mix-1"}
    assert found("vip:false") == {"mix-3"}
    assert found("vip:maybe") == {"mix-2"}
    assert found("score:0") == {"mix-1"}
    assert found("score:none") == {"mix-2"}
    assert found("score:7") == {"mix-3"}


def test_cursor_pagination_visits_every_customer_once(tenant: Tenant) -> None:
    tenant.send([identify(f"page-{i}", {"plan": "pro" if i % 2 else "free"}) for i in range(5)])
    pages = walk(tenant, "/api/customers", limit=2)
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert [p["next_cursor"] is None for p in pages] == [False, False, True]
    seen = [c["id"] for p in pages for c in p["data"]]
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)
    assert sorted(c["user_id"] for p in pages for c in p["data"]) == [f"page-{i}" for i in range(5)]
    # Filters page the same way: 2 of the 5 are on "pro".
    pages = walk(tenant, "/api/customers", limit=1, trait="plan:pro")
    assert [len(p["data"]) for p in pages] == [1, 1]
    assert sorted(c["user_id"] for p in pages for c in p["data"]) == ["page-1", "page-3"]
    # Exactly as many as the limit: one page, no cursor.
    body = tenant.get("/api/customers", limit=5)
    assert len(body["data"]) == 5
    assert body["next_cursor"] is None


def test_sort_orders_page_through_everyone_in_order(tenant: Tenant) -> None:
    # page-0 and page-2 tie; page-3 and page-4 are seen within the same minute as them, so
    # the second page starts inside that minute (recency sorts on the minute, then the time).
    seen_at = [5.5, 1, 5.5, 5.25, 5.75]
    revenue = [0, 30, 10, 30, 0]  # page-1 and page-3 tie, page-0 and page-4 too
    sent = [identify(f"page-{i}", timestamp=iso(at(m))) for i, m in enumerate(seen_at)]
    sent += [
        track(f"page-{i}", "Paid", {"revenue": r}, timestamp=iso(at(0)))
        for i, r in enumerate(revenue)
        if r
    ]
    tenant.send(sent)
    expected = {
        "created": ["page-4", "page-3", "page-2", "page-1", "page-0"],
        "last_seen": ["page-4", "page-2", "page-0", "page-3", "page-1"],
        "lifetime_value": ["page-3", "page-1", "page-2", "page-4", "page-0"],
    }
    for sort, order in expected.items():
        pages = walk(tenant, "/api/customers", limit=2, sort=sort)
        assert [len(p["data"]) for p in pages] == [2, 2, 1], sort
        assert [c["user_id"] for p in pages for c in p["data"]] == order, sort
    assert_error(tenant.api.get("/api/customers", params={"sort": "name"}), 400)


def test_lookup_by_user_id_and_email(tenant: Tenant) -> None:
    tenant.send([identify("look-1", {"email": "Mixed.Case@Example.COM", "plan": "pro"})])
    by_user = tenant.customer(user_id="look-1")
    for key in (
        "id",
        "user_id",
        "email",
        "anonymous_ids",
        "traits",
        "tags",
        "lifetime_value",
        "charge_count",
        "first_seen",
        "last_seen",
    ):
        assert key in by_user, key
    assert by_user["user_id"] == "look-1"
    assert by_user["email"] == "mixed.case@example.com"
    assert by_user["traits"]["plan"] == "pro"
    for email in ("mixed.case@example.com", "MIXED.CASE@EXAMPLE.COM", "Mixed.Case@Example.COM"):
        assert tenant.customer(email=email)["id"] == by_user["id"]
    assert tenant.get(f"/api/customers/{by_user['id']}") == by_user

    for params in ({"user_id": "nobody"}, {"email": "nobody@example.com"}):
        assert_error(tenant.api.get("/api/customers/lookup", params=params), 404)
    assert_error(tenant.api.get("/api/customers/lookup", params={"user_id": "LOOK-1"}), 404)
    assert_error(tenant.api.get("/api/customers/987654321"), 404)
    assert_error(tenant.api.get("/api/customers/lookup"), 400)


# -- timeline and charges ---------------------------------------------------------------------


def test_timeline_newest_first_with_cursor(tenant: Tenant) -> None:
    u = "time-1"
    # Sent out of order: the timeline sorts by the event's time, then by arrival.
    tenant.send(
        [
            identify(u, {"plan": "pro"}, timestamp=iso(at(0))),
            track(u, "E6", {"n": 6}, timestamp=iso(at(5))),
            track(u, "E1", {"n": 1, "nested": {"a": [1, 2]}}, timestamp=iso(at(1))),
            screen(u, "S", timestamp=iso(at(3))),
            page(u, "P", {"url": "https://x.test/p"}, timestamp=iso(at(2))),
            track(u, "E4", {"n": 4}, timestamp=iso(at(4))),
            track(u, "E5", {"n": 5}, timestamp=iso(at(4))),
        ]
    )
    cid = tenant.customer(user_id=u)["id"]
    events = timeline(tenant, cid)
    assert [e["name"] for e in events] == ["E6", "E5", "E4", "S", "P", "E1"]
    assert [e["type"] for e in events] == ["track", "track", "track", "screen", "page", "track"]
    assert [e["timestamp"] for e in events] == [
        iso(at(5)),
        iso(at(4)),
        iso(at(4)),
        iso(at(3)),
        iso(at(2)),
        iso(at(1)),
    ]
    assert all(ISO_MS.match(e["timestamp"]) for e in events)
    assert events[-1]["properties"] == {"n": 1, "nested": {"a": [1, 2]}}
    assert events[4]["properties"]["url"] == "https://x.test/p"

    pages = walk(tenant, f"/api/customers/{cid}/events", limit=2)
    assert [len(p["data"]) for p in pages] == [2, 2, 2]
    assert [e["id"] for p in pages for e in p["data"]] == [e["id"] for e in events]
    pages = walk(tenant, f"/api/customers/{cid}/events", limit=4)
    assert [len(p["data"]) for p in pages] == [4, 2]
    assert [e["id"] for p in pages for e in p["data"]] == [e["id"] for e in events]


def test_revenue_becomes_charges(tenant: Tenant) -> None:
    u = "buyer-1"
    tenant.send(
        [
            identify(u, {"email": "buyer@example.com"}, timestamp=iso(at(0))),
            track(u, "New Charge", {"revenue": "$39.95", "sku": "x"}, timestamp=iso(at(1))),
            track(u, "Upgrade", {"revenue": 10, "currency": "eur"}, timestamp=iso(at(2))),
            track(u, "Order Completed", {"total": 25.5, "order_id": "o-1"}, timestamp=iso(at(3))),
            track(u, "Big Deal", {"revenue": "1,200.50"}, timestamp=iso(at(4))),
            track(u, "Quote", {"total": 99}, timestamp=iso(at(5))),
        ]
    )
    c = tenant.customer(user_id=u)
    assert c["charge_count"] == 4
    assert c["revenue_by_currency"] == {
        "USD": pytest.approx(39.95 + 25.5 + 1200.50),
        "EUR": pytest.approx(10.0),
    }
    assert c["lifetime_value"] == pytest.approx(39.95 + 10 + 25.5 + 1200.50)
    assert c["last_charge_at"] == iso(at(4))

    charges = tenant.get(f"/api/customers/{c['id']}/charges")["data"]
    got = sorted((ch["timestamp"], ch["amount"], ch["currency"]) for ch in charges)
    assert got == [
        (iso(at(1)), pytest.approx(39.95), "USD"),
        (iso(at(2)), pytest.approx(10.0), "EUR"),
        (iso(at(3)), pytest.approx(25.5), "USD"),
        (iso(at(4)), pytest.approx(1200.5), "USD"),
    ]
    pages = walk(tenant, f"/api/customers/{c['id']}/charges", limit=3)
    assert [len(p["data"]) for p in pages] == [3, 1]
    assert sorted(ch["id"] for p in pages for ch in p["data"]) == sorted(ch["id"] for ch in charges)

    # A charge is not an event (name and other properties ignored); Order Completed stays, and
    # `total` only means revenue on Order Completed.
    events = timeline(tenant, c["id"])
    assert [e["name"] for e in events] == ["Quote", "Order Completed"]
    assert events[1]["properties"] == {"total": 25.5, "order_id": "o-1"}
    names = {name for _, name in events_catalog(tenant)}
    assert {"Quote", "Order Completed"} <= names
    assert not names & {"New Charge", "Upgrade", "Big Deal"}


# -- tags -------------------------------------------------------------------------------------


def test_tags_add_remove_idempotent_with_counts(tenant: Tenant) -> None:
    tenant.send([identify("tag-1"), identify("tag-2")])
    c1, c2 = (tenant.customer(user_id=u)["id"] for u in ("tag-1", "tag-2"))
    for _ in range(2):
        r = write(tenant, "PUT", f"/api/customers/{c1}/tags/vip")
        assert r.json() == {"data": ["vip"]}
    r = write(tenant, "PUT", f"/api/customers/{c1}/tags/beta tester")
    assert r.json() == {"data": ["beta tester", "vip"]}
    write(tenant, "PUT", f"/api/customers/{c2}/tags/vip")
    assert tenant.get(f"/api/customers/{c1}/tags") == {"data": ["beta tester", "vip"]}
    assert tenant.get(f"/api/customers/{c1}")["tags"] == ["beta tester", "vip"]
    assert tenant.get("/api/tags")["data"] == [
        {"tag": "beta tester", "customers": 1},
        {"tag": "vip", "customers": 2},
    ]

    for _ in range(2):
        r = write(tenant, "DELETE", f"/api/customers/{c1}/tags/vip")
        assert r.json() == {"data": ["beta tester"]}
    write(tenant, "DELETE", f"/api/customers/{c1}/tags/never-had")
    assert tags_catalog(tenant) == {"beta tester": 1, "vip": 1}
    write(tenant, "DELETE", f"/api/customers/{c2}/tags/vip")
    assert tags_catalog(tenant) == {"beta tester": 1}
    assert tenant.get(f"/api/customers/{c2}")["tags"] == []

    for bad in ("bad<tag>", "x" * 101, "semi;colon", " "):
        assert_error(tenant.api.put(f"/api/customers/{c1}/tags/{bad}"), 400, "invalid_tag")
    assert tenant.get(f"/api/customers/{c1}")["tags"] == ["beta tester"]
    assert_error(tenant.api.put("/api/customers/987654321/tags/vip"), 404)
    assert_error(tenant.api.delete("/api/customers/987654321/tags/vip"), 404)
    assert tags_catalog(tenant) == {"beta tester": 1}


# -- traits -----------------------------------------------------------------------------------


def test_patch_traits_merges_removes_and_catalog_follows(tenant: Tenant) -> None:
    tenant.send(
        [
            identify("pt-1", {"plan": "pro", "age": 30, "color": "red"}),
            identify("pt-2", {"plan": "free"}),
        ]
    )
    c1, c2 = (tenant.customer(user_id=u)["id"] for u in ("pt-1", "pt-2"))
    cat = traits_catalog(tenant)
    assert {k: cat[k]["customers"] for k in ("plan", "age", "color")} == {
        "plan": 2,
        "age": 1,
        "color": 1,
    }

    r = write(
        tenant,
        "PATCH",
        f"/api/customers/{c1}/traits",
        body={
            "traits": {
                "plan": "enterprise",
                "color": None,
                "seats": 5,
                "firstName": "Ann",
                "renewal_at": 1583564043,
            }
        },
    )
    patched = r.json()
    assert patched["id"] == c1
    traits = patched["traits"]
    assert "color" not in traits
    assert "firstName" not in traits
    assert traits["plan"] == "enterprise"
    assert traits["age"] == 30
    assert traits["seats"] == 5
    assert traits["first_name"] == "Ann"
    assert traits["renewal_at"] == SAME_DATE
    assert tenant.get(f"/api/customers/{c1}")["traits"] == traits

    cat = traits_catalog(tenant)
    assert "color" not in cat, "no customer holds color any more"
    assert cat["plan"]["customers"] == 2
    assert cat["seats"]["customers"] == 1
    assert cat["seats"]["type"] == "number"
    assert cat["first_name"]["customers"] == 1
    assert cat["renewal_at"]["type"] == "date"
    assert "firstName" not in cat

    r = write(tenant, "PATCH", f"/api/customers/{c2}/traits", body={"traits": {"plan": None}})
    assert "plan" not in r.json()["traits"]
    assert traits_catalog(tenant)["plan"]["customers"] == 1
    r = write(tenant, "PATCH", f"/api/customers/{c2}/traits", body={"traits": {"color": "blue"}})
    assert traits_catalog(tenant)["color"]["customers"] == 1

    # Later identifies merge on top of the edited profile.
    tenant.send([identify("pt-1", {"age": 31})])
    after = tenant.get(f"/api/customers/{c1}")["traits"]
    assert after == {**traits, "age": 31}

    assert_error(tenant.api.patch(f"/api/customers/{c1}/traits", json={"traits": {}}), 400)
    assert_error(tenant.api.patch(f"/api/customers/{c1}/traits", json={"nope": 1}), 422)
    assert_error(
        tenant.api.patch("/api/customers/987654321/traits", json={"traits": {"a": 1}}), 404
    )
    assert_error(
        tenant.api.patch(f"/api/customers/{c1}/traits", json={"traits": {"email": 5}}), 400
    )
    assert tenant.get(f"/api/customers/{c1}")["traits"] == after

    # The email trait is the customer's email: lookups follow it.
    r = write(
        tenant, "PATCH", f"/api/customers/{c2}/traits", body={"traits": {"email": "New@X.io"}}
    )
    assert r.json()["email"] == "new@x.io"
    assert r.json()["traits"]["email"] == "new@x.io"
    assert tenant.customer(email="NEW@x.io")["id"] == c2
    assert customer_ids(tenant, q="new@") == [c2]


def test_trait_types_and_dates(tenant: Tenant) -> None:
    tenant.send(
        [
            identify(
                "types-1",
                {
                    "plan": "pro",
                    "seats": 3,
                    "score": 4.5,
                    "beta": True,
                    "signed_up_at": 1583564043,
                    "paid_at": 1583564043000,
                    "seen_at": "2020-03-07T06:54:03Z",
                    "moved_at": "2020-03-07T07:54:03+01:00",
                    "digits_at": "1583564043",
                    "createdAt": 1583564043,
                },
            )
        ]
    )
    traits = tenant.customer(user_id="types-1")["traits"]
    for key in ("signed_up_at", "paid_at", "seen_at", "moved_at", "digits_at", "created_at"):
        assert traits[key] == SAME_DATE, (key, traits[key])
    assert "createdAt" not in traits
    cat = traits_catalog(tenant)
    expected = {
        "plan": "string",
        "seats": "number",
        "score": "number",
        "beta": "boolean",
        "signed_up_at": "date",
        "paid_at": "date",
        "seen_at": "date",
        "moved_at": "date",
        "digits_at": "date",
        "created_at": "date",
    }
    assert {k: cat[k]["type"] for k in expected} == expected
    for entry in cat.values():
        assert entry["customers"] == 1
        assert ISO_MS.match(entry["first_seen"])
        assert ISO_MS.match(entry["last_seen"])


def test_reserved_traits_are_normalised(tenant: Tenant) -> None:
    tenant.send(
        [
            identify(
                "res-1",
                {
                    "firstName": "Ann",
                    "lastName": "Lee",
                    "photoUrl": "https://img.test/a.png",
                    "phone": "+1 555 0100",
                },
            ),
            identify(
                "res-2",
                {"first_name": "Bob", "last_name": "Ray", "avatar": "https://img.test/b.png"},
            ),
            identify("res-3", {"firstName": "Cy", "name": "Cyrus Full"}),
            track(
                "res-4",
                "Visited",
                context={"traits": {"firstName": "Dee", "email": "Dee@Example.com"}},
            ),
        ]
    )
    ann = tenant.customer(user_id="res-1")
    assert ann["traits"] == {
        "first_name": "Ann",
        "last_name": "Lee",
        "name": "Ann Lee",
        "avatar": "https://img.test/a.png",
        "phone": "+1 555 0100",
    }
    assert ann["name"] == "Ann Lee"
    bob = tenant.customer(user_id="res-2")
    assert bob["traits"] == {
        "first_name": "Bob",
        "last_name": "Ray",
        "name": "Bob Ray",
        "avatar": "https://img.test/b.png",
    }
    cy = tenant.customer(user_id="res-3")
    assert cy["traits"]["name"] == "Cyrus Full"
    assert cy["traits"]["first_name"] == "Cy"
    dee = tenant.customer(user_id="res-4")
    assert dee["email"] == "dee@example.com"
    assert dee["traits"]["first_name"] == "Dee"
    assert dee["traits"]["email"] == "dee@example.com"
    cat = traits_catalog(tenant)
    assert {"first_name", "last_name", "name", "avatar", "phone", "email"} <= set(cat)
    assert not set(cat) & {"firstName", "lastName", "photoUrl"}
    assert cat["first_name"]["customers"] == 4
    assert cat["avatar"]["customers"] == 2


def test_email_taken_from_an_email_shaped_user_id(tenant: Tenant) -> None:
    tenant.send([identify("Carl@Example.com"), track("dana@example.com", "Visited")])
    carl = tenant.customer(user_id="Carl@Example.com")
    assert carl["email"] == "carl@example.com"
    assert carl["traits"]["email"] == "carl@example.com"
    assert tenant.customer(email="CARL@example.com")["id"] == carl["id"]
    dana = tenant.customer(email="dana@example.com")
    assert dana["user_id"] == "dana@example.com"
    assert [e["name"] for e in timeline(tenant, dana["id"])] == ["Visited"]
    # A userId that is not an email gives no email.
    tenant.send([identify("plain-user")])
    assert tenant.customer(user_id="plain-user")["email"] is None


def test_identity_resolution_and_merges(tenant: Tenant) -> None:
    tenant.send(
        [
            track(None, "Viewed", anonymous_id="anon-1", timestamp=iso(at(1))),
            identify(None, {"email": "x@y.io", "plan": "trial"}, anonymous_id="anon-1"),
        ]
    )
    assert len(customer_ids(tenant)) == 1
    anon = tenant.customer(email="x@y.io")
    assert anon["user_id"] is None
    assert anon["anonymous_ids"] == ["anon-1"]

    # An identify tying the anonymousId to a userId: the same customer, now identified.
    tenant.send([identify("id-1", {"plan": "pro"}, anonymous_id="anon-1")])
    c = tenant.customer(user_id="id-1")
    assert c["id"] == anon["id"]
    assert c["traits"]["plan"] == "pro"
    assert c["traits"]["email"] == "x@y.io"

    # alias merges another anonymous visitor into it.
    tenant.send(
        [
            track(None, "Browsed", anonymous_id="anon-2", timestamp=iso(at(2))),
            alias("id-1", "anon-2"),
        ]
    )
    c = tenant.customer(user_id="id-1")
    assert c["anonymous_ids"] == ["anon-1", "anon-2"]
    assert sorted(e["name"] for e in timeline(tenant, c["id"])) == ["Browsed", "Viewed"]
    assert customer_ids(tenant) == [c["id"]]

    # An anonymous message carrying the customer's email finds it.
    tenant.send(
        [
            track(
                None,
                "Emailed",
                anonymous_id="anon-3",
                context={"traits": {"email": "X@Y.io"}},
                timestamp=iso(at(3)),
            )
        ]
    )
    c = tenant.customer(user_id="id-1")
    assert c["anonymous_ids"] == ["anon-1", "anon-2", "anon-3"]
    assert customer_ids(tenant) == [c["id"]]

    # An anonymous profile merged by an identify: its traits join, the identified side wins.
    tenant.send(
        [
            identify(None, {"plan": "anon-plan", "color": "blue"}, anonymous_id="anon-5"),
            track(None, "Hovered", anonymous_id="anon-5", timestamp=iso(at(4))),
        ]
    )
    assert len(customer_ids(tenant)) == 2
    tenant.send([identify("id-1", {}, anonymous_id="anon-5")])
    c = tenant.customer(user_id="id-1")
    assert c["traits"]["plan"] == "pro"
    assert c["traits"]["color"] == "blue"
    assert "anon-5" in c["anonymous_ids"]
    assert sorted(e["name"] for e in timeline(tenant, c["id"])) == [
        "Browsed",
        "Emailed",
        "Hovered",
        "Viewed",
    ]
    assert customer_ids(tenant) == [c["id"]]

    # Another userId with the same email never lands on this customer.
    tenant.send([identify("id-2", {"email": "X@y.io"}, anonymous_id="anon-1")])
    other = tenant.customer(user_id="id-2")
    assert other["id"] != c["id"]
    assert other["email"] == "x@y.io"
    assert "anon-1" not in other["anonymous_ids"], "anon-1 already belongs to id-1"
    assert tenant.customer(user_id="id-1")["anonymous_ids"] == c["anonymous_ids"]


def test_first_seen_last_seen_and_inactive_messages(tenant: Tenant) -> None:
    u = "seen-1"
    tenant.send(
        [
            identify(u, {"plan": "pro"}, timestamp=iso(at(10))),
            track(u, "Later", timestamp=iso(at(20))),
            page(u, "Between", timestamp=iso(at(15))),
        ]
    )
    c = tenant.customer(user_id=u)
    assert (c["first_seen"], c["last_seen"]) == (iso(at(10)), iso(at(20)))
    tenant.send([track(u, "Earlier", timestamp=iso(at(5)))])
    c = tenant.customer(user_id=u)
    assert (c["first_seen"], c["last_seen"]) == (iso(at(5)), iso(at(20)))
    # context.active false (a server-side sync, not the customer): last_seen does not move.
    tenant.send(
        [
            track(u, "Synced", timestamp=iso(at(30)), context={"active": False}),
            identify(u, {"plan": "max"}, timestamp=iso(at(40)), context={"active": False}),
        ]
    )
    c = tenant.customer(user_id=u)
    assert (c["first_seen"], c["last_seen"]) == (iso(at(5)), iso(at(20)))
    assert c["traits"]["plan"] == "max"
    assert "Synced" in [e["name"] for e in timeline(tenant, c["id"])]
    tenant.send([track(u, "Active", timestamp=iso(at(25)))])
    c = tenant.customer(user_id=u)
    assert (c["first_seen"], c["last_seen"]) == (iso(at(5)), iso(at(25)))


# -- engage, groups ---------------------------------------------------------------------------

AUDIENCE = "order_completed_last_30days"
PERSONAS = {"personas": {"computation_class": "audience", "computation_key": AUDIENCE}}


def test_engage_audiences(tenant: Tenant) -> None:
    tenant.send(
        [
            identify("eng-1", {AUDIENCE: True}, context=PERSONAS),
            identify("eng-2", {AUDIENCE: True}, context=PERSONAS),
            identify("eng-3", {"newsletter": True}),
            identify(
                "eng-4",
                {"ltv_score": True},
                context={"personas": {"computation_class": "trait", "computation_key": "x"}},
            ),
        ]
    )
    assert tenant.customer(user_id="eng-1")["audiences"][AUDIENCE]["member"] is True
    assert tenant.customer(user_id="eng-2")["audiences"][AUDIENCE]["member"] is True
    assert tenant.customer(user_id="eng-3")["audiences"] == {}
    assert tenant.customer(user_id="eng-4")["audiences"] == {}

    tenant.send(
        [
            identify("eng-2", {AUDIENCE: False}, context=PERSONAS),
            track("eng-1", "Audience Entered", {"audience_key": "vip_buyers"}),
        ]
    )
    assert tenant.customer(user_id="eng-2")["audiences"][AUDIENCE]["member"] is False
    eng1 = tenant.customer(user_id="eng-1")
    assert eng1["audiences"][AUDIENCE]["member"] is True
    assert eng1["audiences"]["vip_buyers"]["member"] is True

    tenant.send([track("eng-1", "Audience Exited", {"audience_key": "vip_buyers"})])
    eng1 = tenant.customer(user_id="eng-1")
    assert eng1["audiences"]["vip_buyers"]["member"] is False
    assert eng1["audiences"][AUDIENCE]["member"] is True


def test_groups_on_the_profile(tenant: Tenant) -> None:
    tenant.send(
        [
            identify("grp-1"),
            group("grp-1", "acme", {"name": "Acme Inc", "employees": 12}),
            group("grp-2", "acme", {"plan": "enterprise", "employees": 13}),
            group("grp-1", "globex", {"name": "Globex"}),
        ]
    )
    acme = {
        "group_id": "acme",
        "traits": {"name": "Acme Inc", "employees": 13, "plan": "enterprise"},
    }
    assert tenant.customer(user_id="grp-1")["groups"] == [
        acme,
        {"group_id": "globex", "traits": {"name": "Globex"}},
    ]
    assert tenant.customer(user_id="grp-2")["groups"] == [acme]


# -- catalogs ---------------------------------------------------------------------------------


def _now_iso() -> str:
    return iso(datetime.now(UTC))


def test_event_catalog(tenant: Tenant) -> None:
    before = _now_iso()
    tenant.send(
        [
            track(
                "ev-1",
                "Signed Up",
                {"plan": "pro", "seats": 3, "trial": True, "tags": ["a"], "meta": {"k": 1}},
            ),
            page("ev-1", "Pricing", {"url": "https://x.test/pricing"}),
            screen("ev-1", "Home"),
        ]
    )
    time.sleep(0.05)
    tenant.send(
        [track("ev-2", "Signed Up", {"plan": "free"}), track("ev-3", "Signed Up", {"seats": 1})]
    )
    after = _now_iso()
    cat = events_catalog(tenant)
    assert set(cat) == {("track", "Signed Up"), ("page", "Pricing"), ("screen", "Home")}
    signed = cat[("track", "Signed Up")]
    assert signed["count"] == 3
    assert signed["properties"] == {
        "plan": "string",
        "seats": "number",
        "trial": "boolean",
        "tags": "array",
        "meta": "object",
    }
    assert cat[("page", "Pricing")]["count"] == 1
    assert cat[("page", "Pricing")]["properties"]["url"] == "string"
    assert cat[("screen", "Home")]["count"] == 1
    for entry in cat.values():
        assert ISO_MS.match(entry["first_seen"]), entry
        assert ISO_MS.match(entry["last_seen"]), entry
        assert before <= entry["first_seen"] <= entry["last_seen"] <= after, entry
    assert signed["first_seen"] < signed["last_seen"]
    assert cat[("page", "Pricing")]["first_seen"] == cat[("page", "Pricing")]["last_seen"]
    assert signed["first_seen"] == cat[("page", "Pricing")]["first_seen"]
    # Most frequent first.
    assert tenant.get("/api/events")["data"][0]["name"] == "Signed Up"


# -- deletion ---------------------------------------------------------------------------------


def test_delete_customer_erases_profile_events_and_charges(tenant: Tenant) -> None:
    tenant.send(
        [
            identify(
                "del-1",
                {"email": "del@example.com", "plan": "pro", "only_del": "x"},
                anonymous_id="del-anon",
            ),
            track("del-1", "Clicked", {"a": 1}),
            track("del-1", "Paid", {"revenue": 12}),
            group("del-1", "del-co", {"name": "Del Co"}),
            identify("keep-1", {"plan": "free"}),
            track("keep-1", "Clicked"),
        ]
    )
    victim = tenant.customer(user_id="del-1")
    keep = tenant.customer(user_id="keep-1")
    write(tenant, "PUT", f"/api/customers/{victim['id']}/tags/doomed")
    write(tenant, "PUT", f"/api/customers/{keep['id']}/tags/kept")
    assert traits_catalog(tenant)["plan"]["customers"] == 2
    assert victim["charge_count"] == 1

    r = write(tenant, "DELETE", f"/api/customers/{victim['id']}")
    assert r.json() == {"id": victim["id"], "deleted": True}

    vid = victim["id"]
    assert_error(tenant.api.get(f"/api/customers/{vid}"), 404)
    assert_error(tenant.api.get(f"/api/customers/{vid}/events"), 404)
    assert_error(tenant.api.get(f"/api/customers/{vid}/charges"), 404)
    assert_error(tenant.api.get(f"/api/customers/{vid}/tags"), 404)
    assert lookup_status(tenant, user_id="del-1") == 404
    assert lookup_status(tenant, email="del@example.com") == 404
    assert lookup_status(tenant, user_id="del-anon") == 404
    assert_error(tenant.api.delete(f"/api/customers/{vid}"), 404)

    assert customer_ids(tenant) == [keep["id"]]
    cat = traits_catalog(tenant)
    assert cat["plan"]["customers"] == 1
    assert "only_del" not in cat
    assert "email" not in cat
    assert tags_catalog(tenant) == {"kept": 1}
    assert tenant.get(f"/api/customers/{keep['id']}")["tags"] == ["kept"]
    assert [e["name"] for e in timeline(tenant, keep["id"])] == ["Clicked"]

    # The same person coming back starts from nothing.
    tenant.send([track("del-1", "Came Back")])
    back = tenant.customer(user_id="del-1")
    assert back["id"] != vid
    assert back["charge_count"] == 0
    assert back["lifetime_value"] == 0
    assert back["anonymous_ids"] == []
    assert back["tags"] == []
    assert back["groups"] == []
    assert "plan" not in back["traits"]
    assert [e["name"] for e in timeline(tenant, back["id"])] == ["Came Back"]
    assert tenant.get(f"/api/customers/{back['id']}/charges")["data"] == []


def test_writes_are_visible_as_soon_as_answered(tenant: Tenant) -> None:
    """A 200 from a write means it is committed: the very next read sees it."""
    tenant.send([identify("rw-1", {"n": -1})])
    cid = tenant.customer(user_id="rw-1")["id"]
    stale = []
    for i in range(25):
        r = tenant.api.patch(f"/api/customers/{cid}/traits", json={"traits": {"n": i}})
        assert r.status_code == 200, r.text
        seen = tenant.get(f"/api/customers/{cid}")["traits"]["n"]
        if seen != i:
            stale.append(("PATCH traits", i, seen))
        tag = f"t{i}"
        assert tenant.api.put(f"/api/customers/{cid}/tags/{tag}").status_code == 200
        if tag not in tenant.get(f"/api/customers/{cid}/tags")["data"]:
            stale.append(("PUT tag", tag, None))
        assert tenant.api.delete(f"/api/customers/{cid}/tags/{tag}").status_code == 200
        if tag in tags_catalog(tenant):
            stale.append(("DELETE tag", tag, None))
    assert stale == [], f"reads right after a 200 saw the old state: {stale}"


# -- identity policy --------------------------------------------------------------------------


def test_settings_default_to_crowdpower(tenant: Tenant) -> None:
    body = tenant.get("/api/project/settings")
    assert {
        k: body[k]
        for k in (
            "require_email_to_create",
            "require_user_id",
            "unknown_user_track",
            "revenue_as_charge",
        )
    } == {
        "require_email_to_create": False,
        "require_user_id": False,
        "unknown_user_track": "create",
        "revenue_as_charge": True,
    }


def test_policy_require_email_to_create(tenant: Tenant) -> None:
    set_policy(tenant, require_email_to_create=True)
    no_email = identify("pe-none", {"plan": "x"})
    unknown_track = track("pe-ghost", "Clicked")
    sent = [
        no_email,
        identify("pe-mail", {"email": "pe@mail.io"}),
        identify("Q@Mail.io"),
        unknown_track,
        identify(None, {"email": "anon@mail.io"}, anonymous_id="pe-anon"),
        identify("pe-mail", {"plan": "pro"}),
        track("pe-mail", "Clicked"),
    ]
    tenant.send(sent)
    reasons = dropped_reasons(tenant)
    assert set(reasons) == {no_email["messageId"], unknown_track["messageId"]}
    assert all("email" in (reason or "").lower() for reason in reasons.values()), reasons
    status = statuses(tenant)
    assert [status[m["messageId"]] for m in sent] == [
        "dropped",
        "accepted",
        "accepted",
        "dropped",
        "accepted",
        "accepted",
        "accepted",
    ]
    assert lookup_status(tenant, user_id="pe-none") == 404
    assert lookup_status(tenant, user_id="pe-ghost") == 404
    mail = tenant.customer(user_id="pe-mail")
    assert mail["traits"]["plan"] == "pro"
    assert [e["name"] for e in timeline(tenant, mail["id"])] == ["Clicked"]
    assert tenant.customer(user_id="Q@Mail.io")["email"] == "q@mail.io"
    assert tenant.customer(email="anon@mail.io")["anonymous_ids"] == ["pe-anon"]
    assert len(customer_ids(tenant)) == 3


def test_policy_require_user_id(tenant: Tenant) -> None:
    set_policy(tenant, require_user_id=True)
    anon_identify = identify(None, {"email": "a@b.io"}, anonymous_id="ru-x")
    anon_track = track(None, "Viewed", anonymous_id="ru-y")
    sent = [
        anon_identify,
        anon_track,
        identify("ru-1"),
        identify("ru-1", anonymous_id="ru-z"),
        track(None, "Later", anonymous_id="ru-z"),
    ]
    tenant.send(sent)
    reasons = dropped_reasons(tenant)
    assert set(reasons) == {anon_identify["messageId"], anon_track["messageId"]}
    assert all("userid" in (reason or "").lower() for reason in reasons.values()), reasons
    assert lookup_status(tenant, email="a@b.io") == 404
    c = tenant.customer(user_id="ru-1")
    assert customer_ids(tenant) == [c["id"]]
    assert [e["name"] for e in timeline(tenant, c["id"])] == ["Later"]


def test_policy_unknown_user_track_drop(tenant: Tenant) -> None:
    set_policy(tenant, unknown_user_track="drop")
    drops = [
        track("ghost", "Clicked"),
        page("ghost", "Home"),
        screen("ghost", "Main"),
        track(None, "Anon", anonymous_id="ghost-anon"),
    ]
    tenant.send([*drops, identify("known"), track("known", "Clicked")])
    reasons = dropped_reasons(tenant)
    assert set(reasons) == {m["messageId"] for m in drops}
    assert all("unknown" in (reason or "").lower() for reason in reasons.values()), reasons
    assert len(tenant.messages("accepted")) == 2
    assert lookup_status(tenant, user_id="ghost") == 404
    c = tenant.customer(user_id="known")
    assert customer_ids(tenant) == [c["id"]]
    assert [e["name"] for e in timeline(tenant, c["id"])] == ["Clicked"]
    # The catalog only counts what was kept.
    assert {k: v["count"] for k, v in events_catalog(tenant).items()} == {("track", "Clicked"): 1}


def test_policy_revenue_as_charge_off(tenant: Tenant) -> None:
    set_policy(tenant, revenue_as_charge=False)
    tenant.send(
        [
            identify("rv-1"),
            track("rv-1", "New Charge", {"revenue": "$39.95"}),
            track("rv-1", "Order Completed", {"total": 20}),
        ]
    )
    c = tenant.customer(user_id="rv-1")
    assert c["charge_count"] == 0
    assert c["lifetime_value"] == 0
    assert tenant.get(f"/api/customers/{c['id']}/charges")["data"] == []
    events = {e["name"]: e for e in timeline(tenant, c["id"])}
    assert set(events) == {"New Charge", "Order Completed"}
    assert events["New Charge"]["properties"] == {"revenue": "$39.95"}
    assert dropped_reasons(tenant) == {}
    assert ("track", "New Charge") in events_catalog(tenant)

    set_policy(tenant, revenue_as_charge=True)
    tenant.send([track("rv-1", "New Charge", {"revenue": 5})])
    c = tenant.customer(user_id="rv-1")
    assert c["charge_count"] == 1
    assert c["lifetime_value"] == pytest.approx(5)
    assert len(timeline(tenant, c["id"])) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"unknown_user_track": "sometimes"},
        {"require_user_id": "maybe"},
        {"require_email_to_create": [1]},
        {"revenue_as_charge": {"on": True}},
        {"no_such_setting": True},
    ],
)
def test_invalid_settings_patch_is_422(tenant: Tenant, body: dict[str, Any]) -> None:
    before = tenant.get("/api/project/settings")
    assert_error(tenant.api.patch("/api/project/settings", json=body), 422)
    assert tenant.get("/api/project/settings") == before


# -- isolation and auth -----------------------------------------------------------------------


def test_projects_are_isolated(tenant: Tenant) -> None:
    other = tenant.server.new_tenant()
    try:
        tenant.send(
            [
                identify("shared-id", {"email": "a@iso.io", "plan": "a-plan", "a_only": 1}),
                track("shared-id", "A Event", {"x": 1}),
                track("shared-id", "A Paid", {"revenue": 3}),
            ]
        )
        other.send([identify("shared-id", {"email": "b@iso.io"})])
        a = tenant.customer(user_id="shared-id")
        write(tenant, "PUT", f"/api/customers/{a['id']}/tags/a-tag")
        b = other.customer(user_id="shared-id")
        assert b["id"] != a["id"]
        assert b["email"] == "b@iso.io"

        aid = a["id"]
        attempts = [
            other.api.get(f"/api/customers/{aid}"),
            other.api.get(f"/api/customers/{aid}/events"),
            other.api.get(f"/api/customers/{aid}/charges"),
            other.api.get(f"/api/customers/{aid}/tags"),
            other.api.put(f"/api/customers/{aid}/tags/b-tag"),
            other.api.delete(f"/api/customers/{aid}/tags/a-tag"),
            other.api.patch(f"/api/customers/{aid}/traits", json={"traits": {"plan": "b"}}),
            other.api.delete(f"/api/customers/{aid}"),
            other.api.get("/api/customers/lookup", params={"email": "a@iso.io"}),
        ]
        for r in attempts:
            assert_error(r, 404)

        # A is untouched.
        again = tenant.customer(user_id="shared-id")
        assert again["tags"] == ["a-tag"]
        assert again["traits"]["plan"] == "a-plan"
        assert again["charge_count"] == 1
        assert [e["name"] for e in timeline(tenant, aid)] == ["A Event"]

        # B's lists never show A's data.
        assert customer_ids(other) == [b["id"]]
        assert customer_ids(other, q="a@iso") == []
        assert customer_ids(other, tag="a-tag") == []
        assert customer_ids(other, trait="plan:a-plan") == []
        assert "a_only" not in traits_catalog(other)
        assert "plan" not in traits_catalog(other)
        assert tags_catalog(other) == {}
        assert events_catalog(other) == {}
        assert {m["user_id"] for m in other.messages()} == {"shared-id"}
        assert len(other.messages()) == 1
        assert customer_ids(tenant) == [aid]
    finally:
        other.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/customers"),
        ("GET", "/api/customers/lookup?user_id=x"),
        ("GET", "/api/customers/1"),
        ("DELETE", "/api/customers/1"),
        ("PUT", "/api/customers/1/tags/vip"),
        ("GET", "/api/traits"),
        ("GET", "/api/events"),
        ("GET", "/api/tags"),
        ("GET", "/api/project/settings"),
        ("PATCH", "/api/project/settings"),
        ("GET", "/api/ingestion/messages"),
    ],
)
def test_api_needs_the_secret_key(tenant: Tenant, method: str, path: str) -> None:
    body = {"revenue_as_charge": False} if method == "PATCH" else None
    for headers in (
        {},
        {"Authorization": "Bearer sk_not-a-real-key"},
        {"Authorization": f"Bearer {tenant.write_key}"},
        {"Authorization": tenant.secret_key},
        {"Authorization": "Bearer"},
    ):
        r = httpx.request(method, tenant.url + path, headers=headers, json=body, timeout=30)
        assert_error(r, 401)
    assert tenant.get("/api/project/settings")["revenue_as_charge"] is True


# -- bad input --------------------------------------------------------------------------------


def test_invalid_cursors_are_400(tenant: Tenant) -> None:
    tenant.send([identify("cur-1"), track("cur-1", "E"), track("cur-1", "Paid", {"revenue": 1})])
    cid = tenant.customer(user_id="cur-1")["id"]
    garbage = ["not a cursor!", "%%%", cursor_of({"a": 1}), cursor_of([]), cursor_of("x")]
    by_path = {
        "/api/customers": [*garbage, cursor_of(["x"])],
        "/api/customers?sort=last_seen": [
            *garbage,
            cursor_of(["not a date", 1]),
            cursor_of(["2020-01-01T00:00:00+00:00"]),
            cursor_of(["2020-01-01T00:00:00", 5]),
        ],
        "/api/customers?sort=lifetime_value": [*garbage, cursor_of(["x", 1])],
        f"/api/customers/{cid}/events": [
            *garbage,
            cursor_of(["not a date", 1]),
            cursor_of(["2020-01-01T00:00:00+00:00"]),
            cursor_of(["2020-01-01T00:00:00+00:00", "x"]),
            cursor_of(["2020-01-01T00:00:00", 5]),
        ],
        f"/api/customers/{cid}/charges": [*garbage, cursor_of(["x"])],
        "/api/events": [*garbage, cursor_of(["x"]), cursor_of([-1])],
        "/api/traits": [*garbage, cursor_of(["x"])],
        "/api/tags": [*garbage, cursor_of(["x"])],
        "/api/ingestion/messages": [*garbage, cursor_of(["x"])],
    }
    failures = []
    for path, cursors in by_path.items():
        for cursor in cursors:
            # A fresh connection each time: one bad answer must not hide the next.
            r = httpx.get(
                tenant.url + path,
                params={"cursor": cursor},
                headers={"Authorization": f"Bearer {tenant.secret_key}"},
                timeout=30,
            )
            ok = r.status_code == 400 and r.headers["content-type"].startswith("application/json")
            if not ok or r.json().get("code") != "invalid_cursor":
                failures.append((path, base64_text(cursor), r.status_code, r.text[:200]))
    assert failures == [], failures


def base64_text(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        return cursor


@pytest.mark.parametrize("limit", ["0", "-1", "201", "abc"])
def test_invalid_limits_are_json_errors(tenant: Tenant, limit: str) -> None:
    tenant.send([identify("lim-1")])
    cid = tenant.customer(user_id="lim-1")["id"]
    for path in (
        "/api/customers",
        f"/api/customers/{cid}/events",
        f"/api/customers/{cid}/charges",
        "/api/events",
        "/api/traits",
        "/api/tags",
        "/api/ingestion/messages",
    ):
        r = tenant.api.get(path, params={"limit": limit})
        assert r.status_code in (400, 422), (path, r.status_code, r.text)
        assert_error(r, r.status_code)
