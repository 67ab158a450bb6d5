"""Segments through a live `tidings serve`: the /api/segments routes, membership kept current as
messages arrive and as customers are edited, the timeline, preview, explain, errors and project
isolation.

Every test gets a fresh project on the live server of each backend (SQLite, PostgreSQL). The
server's clock is real, so time flips are tested in-process (test_membership.py).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from segment.analytics.client import Client as SegmentClient
from sqlalchemy import update

from tests.customers.messages import ISO_MS, assert_error, identify, iso, track
from tests.support import LiveServer, Tenant
from tidings.segments.models import Segment

T = TypeVar("T")
PRO = {"trait": "plan", "op": "eq", "value": "pro"}


# -- helpers ----------------------------------------------------------------------------------


def create(tenant: Tenant, name: str, rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    r = tenant.api.post("/api/segments", json={"name": name, "rules": rules, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def patch(tenant: Tenant, segment_id: int, **body: Any) -> dict[str, Any]:
    r = tenant.api.patch(f"/api/segments/{segment_id}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def eventually(check: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Poll until `check` returns something truthy (background jobs run about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_ready(tenant: Tenant, segment_id: int) -> dict[str, Any]:
    """Poll the segment until its computation is done; every state seen must make sense."""
    seen: list[tuple[str, int]] = []

    def done() -> dict[str, Any] | None:
        body = dict(tenant.get(f"/api/segments/{segment_id}"))
        seen.append((body["status"], body["progress"]))
        assert body["status"] in ("computing", "ready"), body
        return body if body["status"] == "ready" else None

    body = eventually(done, f"segment {segment_id} to be ready")
    assert body is not None
    progress = [p for s, p in seen if s == "computing"]
    assert progress == sorted(progress), seen
    assert all(0 <= p < 100 for p in progress), seen
    assert body["progress"] == 100
    assert body["error"] is None
    assert ISO_MS.match(body["computed_at"]), body
    return body


def ready(tenant: Tenant, name: str, rules: dict[str, Any]) -> dict[str, Any]:
    return wait_ready(tenant, create(tenant, name, rules)["id"])


def member_ids(tenant: Tenant, segment_id: int, limit: int = 200) -> list[int]:
    ids: list[int] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        body = tenant.get(f"/api/segments/{segment_id}/customers", **params)
        assert len(body["data"]) <= limit
        ids.extend(m["id"] for m in body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the members cursor never ends")


def segments_of(tenant: Tenant, customer_id: int) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in tenant.get(f"/api/customers/{customer_id}/segments")["data"]}


def segment_timeline(tenant: Tenant, customer_id: int) -> list[dict[str, Any]]:
    """The customer's "segment" events, oldest first."""
    body = tenant.get(f"/api/customers/{customer_id}/events", limit=200)
    return [e for e in reversed(body["data"]) if e["type"] == "segment"]


def cid(tenant: Tenant, user_id: str) -> int:
    return int(tenant.customer(user_id=user_id)["id"])


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cursor_of(value: Any) -> str:
    """A syntactically valid cursor (base64 JSON) holding any value: we never issued these."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@pytest.fixture
def other(server: LiveServer) -> Iterator[Tenant]:
    """A second project on the same server."""
    t = server.new_tenant()
    yield t
    t.close()


# -- CRUD -------------------------------------------------------------------------------------


def test_create_read_update_delete(tenant: Tenant) -> None:
    tenant.send([identify("ann", {"plan": "pro"}), identify("bob", {"plan": "free"})])
    created = create(tenant, "Pro users", PRO, description="Paying, pro plan")
    assert created["name"] == "Pro users"
    assert created["description"] == "Paying, pro plan"
    assert created["rules"] == PRO
    assert (created["status"], created["progress"], created["version"]) == ("computing", 0, 1)
    assert created["member_count"] == 0
    assert created["computed_at"] is None
    assert ISO_MS.match(created["created_at"])
    assert ISO_MS.match(created["updated_at"])
    sid = created["id"]

    body = wait_ready(tenant, sid)
    assert body["member_count"] == 1
    # A full computation is not growth: only entries and exits as customers change count.
    assert (body["entered_7d"], body["exited_7d"]) == (0, 0)
    listed = tenant.get("/api/segments")
    assert [s["id"] for s in listed["data"]] == [sid]
    assert listed["data"][0] == body

    # Renaming and describing do not recompute.
    renamed = patch(tenant, sid, name="Pro plan", description="Pro")
    assert (renamed["name"], renamed["description"]) == ("Pro plan", "Pro")
    assert (renamed["status"], renamed["version"], renamed["member_count"]) == ("ready", 1, 1)
    # A description left out stays; sent as null, it is cleared.
    assert patch(tenant, sid, name="Pro plan")["description"] == "Pro"
    assert patch(tenant, sid, description=None)["description"] is None
    assert patch(tenant, sid, description="Pro")["description"] == "Pro"
    # Nor do the same rules.
    assert patch(tenant, sid, rules=PRO)["version"] == 1

    # New rules do, and the members follow.
    changed = patch(tenant, sid, rules={"trait": "plan", "op": "in", "value": ["pro", "free"]})
    assert (changed["status"], changed["version"]) == ("computing", 2)
    body = wait_ready(tenant, sid)
    assert body["member_count"] == 2
    assert sorted(member_ids(tenant, sid)) == sorted([cid(tenant, "ann"), cid(tenant, "bob")])
    assert body["updated_at"] >= created["updated_at"]

    second = ready(tenant, "All", {"trait": "plan", "op": "exists"})
    assert [s["name"] for s in tenant.get("/api/segments")["data"]] == ["All", "Pro plan"]

    r = tenant.api.delete(f"/api/segments/{sid}")
    assert r.status_code == 204, r.text
    assert_error(tenant.api.get(f"/api/segments/{sid}"), 404, "segment_not_found")
    assert [s["id"] for s in tenant.get("/api/segments")["data"]] == [second["id"]]
    assert segments_of(tenant, cid(tenant, "ann")).keys() == {"All"}


def test_the_same_rules_again_recompute_a_failed_segment(tenant: Tenant) -> None:
    """A failed computation (left failed by the worker, say on a database outage) is tried
    again by sending the definition again; for a ready segment that changes nothing."""
    tenant.send([identify("ann", {"plan": "pro"}), identify("bob", {"plan": "free"})])
    sid = ready(tenant, "Pro users", PRO)["id"]
    built_on = ready(tenant, "Not pro", {"not": {"segment": sid, "op": "in"}})
    with tenant.server.db.session(write=True) as session:
        session.execute(
            update(Segment)
            .where(Segment.id == sid)
            .values(status="failed", error="The computation failed.", member_count=0)
        )
    assert patch(tenant, sid, name="Pro")["status"] == "failed"  # no rules: nothing to retry
    retried = patch(tenant, sid, rules=PRO)
    assert (retried["status"], retried["version"]) == ("computing", 2)
    body = wait_ready(tenant, sid)
    assert (body["error"], body["member_count"]) == (None, 1)
    assert member_ids(tenant, sid) == [cid(tenant, "ann")]
    # The segment built on it was not failed, and is not recomputed.
    assert tenant.get(f"/api/segments/{built_on['id']}")["version"] == built_on["version"] == 1


def test_computing_then_ready_and_paged_members(tenant: Tenant) -> None:
    users = [uid() for _ in range(7)]
    tenant.send([identify(u, {"plan": "pro" if i < 5 else "free"}) for i, u in enumerate(users)])
    expected = {cid(tenant, u) for u in users[:5]}
    created = create(tenant, "Pro", PRO)
    assert created["status"] == "computing"
    body = wait_ready(tenant, created["id"])
    assert body["member_count"] == 5

    pages = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = tenant.get(f"/api/segments/{created['id']}/customers", **params)
        pages.append(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    rows = [m for p in pages for m in p]
    assert {m["id"] for m in rows} == expected
    assert len(rows) == 5
    # Most recent entries first (ties by id, newest first).
    keys = [(m["entered_at"], m["id"]) for m in rows]
    assert keys == sorted(keys, reverse=True)
    for m in rows:
        assert set(m) == {"id", "user_id", "email", "name", "entered_at"}
        assert m["user_id"] in users[:5]
        assert ISO_MS.match(m["entered_at"])

    # A later entry comes first, and paging still covers everyone exactly once.
    late = uid("late")
    tenant.send([identify(late, {"plan": "pro"})])
    first = tenant.get(f"/api/segments/{created['id']}/customers", limit=1)["data"]
    assert [m["user_id"] for m in first] == [late]
    for limit in (1, 2, 3, 6, 200):
        ids = member_ids(tenant, created["id"], limit=limit)
        assert sorted(ids) == sorted(expected | {cid(tenant, late)}), limit

    path = f"/api/segments/{created['id']}/customers"
    assert_error(tenant.api.get(path, params={"limit": 0}), 422)
    assert_error(tenant.api.get(path, params={"limit": 201}), 422)
    garbage = [
        "not-a-cursor",
        "%%%",
        cursor_of({"a": 1}),
        cursor_of([]),
        cursor_of(["x"]),
        cursor_of(["not a date", 1]),
        cursor_of(["2020-01-01T00:00:00+00:00", "one"]),
        cursor_of(["2020-01-01T00:00:00", 1]),  # no offset: cursors we issue always have one
    ]
    for cursor in garbage:
        r = tenant.api.get(path, params={"cursor": cursor})
        assert r.status_code == 400, (cursor, r.text)
        assert_error(r, 400, "invalid_cursor")


# -- kept current -----------------------------------------------------------------------------


def test_entry_on_a_new_event_and_exit_on_a_trait_change(tenant: Tenant) -> None:
    buyers = ready(
        tenant,
        "Repeat buyers",
        {"event": "Purchased", "op": "performed", "count": {"gte": 2}, "within_days": 30},
    )
    pro = ready(tenant, "Pro", PRO)
    errors: list[Any] = []
    client = SegmentClient(
        write_key=tenant.write_key,
        host=tenant.url,
        on_error=lambda e, b: errors.append(e),
        sync_mode=True,
    )
    user = uid()
    before = tenant.processed()
    client.identify(user, {"plan": "pro", "email": f"{user}@example.com"})
    client.track(user, "Purchased", {"amount": 10})
    client.flush()
    assert errors == []
    tenant.wait_processed(before + 2)
    customer = cid(tenant, user)
    assert segments_of(tenant, customer).keys() == {"Pro"}
    assert member_ids(tenant, buyers["id"]) == []

    # The second purchase: in, at once (the same transaction as the message).
    client.track(user, "Purchased", {"amount": 20})
    client.flush()
    tenant.wait_processed(before + 3)
    mine = segments_of(tenant, customer)
    assert mine.keys() == {"Pro", "Repeat buyers"}
    assert mine["Repeat buyers"]["id"] == buyers["id"]
    assert ISO_MS.match(mine["Repeat buyers"]["entered_at"])
    assert member_ids(tenant, buyers["id"]) == [customer]
    got = tenant.get(f"/api/segments/{buyers['id']}")
    assert (got["member_count"], got["entered_7d"], got["exited_7d"]) == (1, 1, 0)
    members = tenant.get(f"/api/segments/{buyers['id']}/customers")["data"]
    assert members[0]["email"] == f"{user}@example.com"
    assert members[0]["entered_at"] == mine["Repeat buyers"]["entered_at"]

    # A trait change: out of Pro.
    client.identify(user, {"plan": "free"})
    client.flush()
    tenant.wait_processed(before + 4)
    assert segments_of(tenant, customer).keys() == {"Repeat buyers"}
    got = tenant.get(f"/api/segments/{pro['id']}")
    assert (got["member_count"], got["entered_7d"], got["exited_7d"]) == (0, 1, 1)
    # An edit's answer shows the same growth.
    renamed = patch(tenant, pro["id"], description="On the pro plan")
    assert (renamed["entered_7d"], renamed["exited_7d"]) == (1, 1)
    assert member_ids(tenant, pro["id"]) == []

    # Each entry and exit is on the customer's timeline.
    timeline = segment_timeline(tenant, customer)
    assert [(e["name"], e["properties"]) for e in timeline] == [
        ("Pro", {"segment_id": pro["id"], "change": "entered"}),
        ("Repeat buyers", {"segment_id": buyers["id"], "change": "entered"}),
        ("Pro", {"segment_id": pro["id"], "change": "exited"}),
    ]
    assert all(e["context"] == {"source": "event"} for e in timeline)
    assert timeline[1]["timestamp"] == mine["Repeat buyers"]["entered_at"]
    assert all(ISO_MS.match(e["timestamp"]) for e in timeline)
    stamps = [e["timestamp"] for e in timeline]
    assert stamps == sorted(stamps)
    # An unrelated message changes nothing.
    tenant.send([track(user, "Opened App")])
    assert len(segment_timeline(tenant, customer)) == 3


def test_computing_fills_membership_but_not_timelines(tenant: Tenant) -> None:
    # A new definition is not something the customer did: members and history, no timeline.
    tenant.send([identify("ann", {"plan": "pro"})])
    seg = ready(tenant, "Pro", PRO)
    ann = cid(tenant, "ann")
    assert member_ids(tenant, seg["id"]) == [ann]
    assert segment_timeline(tenant, ann) == []
    assert tenant.get(f"/api/segments/{seg['id']}")["entered_7d"] == 0
    # What happens to the customer afterwards is on the timeline.
    tenant.send([identify("ann", {"plan": "free"})])
    timeline = segment_timeline(tenant, ann)
    assert [(e["name"], e["properties"], e["context"]) for e in timeline] == [
        ("Pro", {"segment_id": seg["id"], "change": "exited"}, {"source": "event"})
    ]


def test_tags_and_trait_edits_re_evaluate_the_customer(tenant: Tenant) -> None:
    tenant.send([identify("ann", {"plan": "free"}), identify("bob", {"plan": "free"})])
    ann = cid(tenant, "ann")
    vip = ready(tenant, "VIP", {"tag": "vip", "op": "has"})
    pro = ready(tenant, "Pro", PRO)
    not_vip = ready(tenant, "Not VIP", {"tag": "vip", "op": "not_has"})
    assert segments_of(tenant, ann).keys() == {"Not VIP"}

    r = tenant.api.put(f"/api/customers/{ann}/tags/vip")
    assert r.status_code == 200, r.text
    eventually(lambda: segments_of(tenant, ann).keys() == {"VIP"}, "ann to enter VIP")
    assert member_ids(tenant, vip["id"]) == [ann]
    assert tenant.get(f"/api/segments/{not_vip['id']}")["member_count"] == 1  # bob

    r = tenant.api.patch(f"/api/customers/{ann}/traits", json={"traits": {"plan": "pro"}})
    assert r.status_code == 200, r.text
    eventually(lambda: segments_of(tenant, ann).keys() == {"VIP", "Pro"}, "ann to enter Pro")

    r = tenant.api.delete(f"/api/customers/{ann}/tags/vip")
    assert r.status_code == 200, r.text
    eventually(lambda: segments_of(tenant, ann).keys() == {"Not VIP", "Pro"}, "ann to leave VIP")
    assert member_ids(tenant, vip["id"]) == []
    assert tenant.get(f"/api/segments/{pro['id']}")["member_count"] == 1

    r = tenant.api.patch(f"/api/customers/{ann}/traits", json={"traits": {"plan": None}})
    assert r.status_code == 200, r.text
    eventually(lambda: segments_of(tenant, ann).keys() == {"Not VIP"}, "ann to leave Pro")
    edits = [
        (e["name"], e["properties"]["change"])
        for e in segment_timeline(tenant, ann)
        if e["context"] == {"source": "edit"}
    ]
    # One evaluation per edit; within one evaluation the order of segments is not specified.
    assert len(edits) == 6, edits
    assert sorted(edits[:2]) == [("Not VIP", "exited"), ("VIP", "entered")]
    assert edits[2] == ("Pro", "entered")
    assert sorted(edits[3:5]) == [("Not VIP", "entered"), ("VIP", "exited")]
    assert edits[5] == ("Pro", "exited")


def test_member_counts_follow_merges_and_erasure(tenant: Tenant) -> None:
    seg = ready(tenant, "Pro", PRO)
    tenant.send(
        [
            identify("u1", {"plan": "pro"}),
            identify(None, {"plan": "pro"}, anonymous_id="visitor"),
            identify("u2", {"plan": "pro"}),
        ]
    )
    assert tenant.get(f"/api/segments/{seg['id']}")["member_count"] == 3
    tenant.send([{"type": "alias", "userId": "u1", "previousId": "visitor"}])
    assert len(member_ids(tenant, seg["id"])) == 2
    assert tenant.get(f"/api/segments/{seg['id']}")["member_count"] == 2
    r = tenant.api.delete(f"/api/customers/{cid(tenant, 'u2')}")
    assert r.status_code in (200, 204), r.text
    assert member_ids(tenant, seg["id"]) == [cid(tenant, "u1")]
    assert tenant.get(f"/api/segments/{seg['id']}")["member_count"] == 1


# -- preview and explain ----------------------------------------------------------------------


def test_preview_counts_and_samples_without_saving(tenant: Tenant) -> None:
    users = [uid() for _ in range(6)]
    tenant.send([identify(u, {"plan": "pro", "n": i}) for i, u in enumerate(users[:4])])
    tenant.send([identify(u, {"plan": "free"}) for u in users[4:]])
    r = tenant.api.post("/api/segments/preview", json={"rules": PRO, "sample": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4
    assert len(body["sample"]) == 3
    pro_ids = {cid(tenant, u) for u in users[:4]}
    assert {s["id"] for s in body["sample"]} <= pro_ids
    for s in body["sample"]:
        assert set(s) == {"id", "user_id", "email", "name"}
        assert s["user_id"] in users[:4]
    # The default sample, and none at all.
    body = tenant.api.post("/api/segments/preview", json={"rules": PRO}).json()
    assert (body["count"], {s["id"] for s in body["sample"]}) == (4, pro_ids)
    body = tenant.api.post("/api/segments/preview", json={"rules": PRO, "sample": 0}).json()
    assert body == {"count": 4, "sample": []}
    nobody = {"trait": "plan", "op": "eq", "value": "enterprise"}
    body = tenant.api.post("/api/segments/preview", json={"rules": nobody}).json()
    assert body == {"count": 0, "sample": []}
    # Groups, negation, and a saved segment by name.
    tenant.api.post("/api/segments", json={"name": "Pro", "rules": PRO})
    rules = {
        "all": [{"segment": "Pro", "op": "in"}, {"not": {"trait": "n", "op": "lt", "value": 2}}]
    }
    body = tenant.api.post("/api/segments/preview", json={"rules": rules}).json()
    assert {s["user_id"] for s in body["sample"]} == set(users[2:4])
    # Nothing was saved by previewing.
    assert [s["name"] for s in tenant.get("/api/segments")["data"]] == ["Pro"]

    bad = {"all": [PRO, {"trait": "plan", "op": "bigger", "value": 1}]}
    err = assert_error(
        tenant.api.post("/api/segments/preview", json={"rules": bad}), 400, "invalid_segment"
    )
    assert "rules.all[1]" in err["message"]
    assert "bigger" in err["message"]
    assert_error(tenant.api.post("/api/segments/preview", json={"rules": PRO, "sample": 101}), 422)
    assert_error(tenant.api.post("/api/segments/preview", json={"sample": 1}), 422)


def test_explain_shows_each_condition_with_its_value(tenant: Tenant) -> None:
    user = uid()
    t1, t2 = now_ms() - timedelta(days=2), now_ms() - timedelta(days=1)
    tenant.send(
        [
            identify(user, {"plan": "pro", "address": {"city": "Paris"}}),
            track(user, "Purchased", {"amount": 5}, timestamp=iso(t1)),
            track(user, "Order Completed", {"total": 25, "order_id": "o-1"}, timestamp=iso(t1)),
            track(user, "Viewed", timestamp=iso(t2)),
        ]
    )
    customer = cid(tenant, user)
    base = ready(tenant, "Parisians", {"trait": "address.city", "op": "eq", "value": "Paris"})
    rules: dict[str, Any] = {
        "all": [
            PRO,
            {"event": "Purchased", "op": "performed", "count": {"gte": 2}, "within_days": 30},
            {"not": {"tag": "vip", "op": "has"}},
            {"revenue": "lifetime_value", "op": "gte", "value": 10},
            {"event": "Viewed", "op": "last_performed", "within_days": 7},
            {"segment": base["id"], "op": "in"},
            {"trait": "age", "op": "gt", "value": 18},
        ]
    }
    seg = ready(tenant, "Explained", rules)
    body = tenant.get(f"/api/segments/{seg['id']}/explain/{customer}")
    assert (body["segment_id"], body["customer_id"]) == (seg["id"], customer)
    assert (body["member"], body["matches"]) == (False, False)
    c: list[dict[str, Any]] = rules["all"]
    assert body["rules"] == {
        "group": "all",
        "holds": False,
        "conditions": [
            {"condition": c[0], "holds": True, "value": "pro"},
            {"condition": c[1], "holds": False, "value": {"count": 1}},
            {
                "group": "not",
                "holds": True,
                "conditions": [{"condition": c[2]["not"], "holds": False, "value": False}],
            },
            {"condition": c[3], "holds": True, "value": 25},
            {
                "condition": c[4],
                "holds": True,
                "value": {"count": 1, "first": iso(t2), "last": iso(t2)},
            },
            {"condition": c[5], "holds": True, "value": True},
            {"condition": c[6], "holds": False, "value": None},
        ],
    }

    # Now the customer qualifies: stored membership and evaluation agree.
    tenant.send(
        [track(user, "Purchased", {"amount": 7}), identify(user, {"age": 40})],
    )
    body = tenant.get(f"/api/segments/{seg['id']}/explain/{customer}")
    assert (body["member"], body["matches"], body["rules"]["holds"]) == (True, True, True)
    values = [k.get("value") for k in body["rules"]["conditions"]]
    assert values[1] == {"count": 2}
    assert values[6] == 40


# -- segments of segments ---------------------------------------------------------------------


def test_segments_built_on_segments(tenant: Tenant) -> None:
    tenant.send(
        [
            identify("ann", {"plan": "pro"}),
            track("ann", "Opened App"),
            identify("bob", {"plan": "pro"}),
            identify("cy", {"plan": "team"}),
            track("cy", "Opened App"),
        ]
    )
    ann, bob, cy = cid(tenant, "ann"), cid(tenant, "bob"), cid(tenant, "cy")
    paid = ready(tenant, "Paid", PRO)
    engaged = {"event": "Opened App", "op": "performed"}
    by_id = ready(tenant, "Engaged paid", {"all": [{"segment": paid["id"], "op": "in"}, engaged]})
    # In files and the API a segment may be named instead of numbered; it is stored by id.
    by_name = create(tenant, "Unpaid", {"segment": "Paid", "op": "not_in"})
    assert by_name["rules"] == {"segment": paid["id"], "op": "not_in"}
    by_name = wait_ready(tenant, by_name["id"])
    assert member_ids(tenant, by_id["id"]) == [ann]
    assert member_ids(tenant, by_name["id"]) == [cy]

    # Incremental upkeep sees through the reference.
    tenant.send([track("bob", "Opened App")])
    assert sorted(member_ids(tenant, by_id["id"])) == sorted([ann, bob])

    # Editing the base recomputes what is built on it.
    edited = patch(
        tenant, paid["id"], rules={"trait": "plan", "op": "in", "value": ["pro", "team"]}
    )
    assert edited["status"] == "computing"
    dependents = {s["id"]: s for s in tenant.get("/api/segments")["data"]}
    assert dependents[by_id["id"]]["version"] == 2
    assert dependents[by_name["id"]]["version"] == 2
    for s in (paid, by_id, by_name):
        wait_ready(tenant, s["id"])
    assert sorted(member_ids(tenant, by_id["id"])) == sorted([ann, bob, cy])
    assert member_ids(tenant, by_name["id"]) == []
    # Recomputation moved cy out of "Unpaid": in the history, not on the timeline.
    assert [e for e in segment_timeline(tenant, cy) if e["name"] == "Unpaid"] == []

    # A base in use cannot go; once nothing refers to it, it can.
    err = assert_error(tenant.api.delete(f"/api/segments/{paid['id']}"), 409, "segment_in_use")
    assert "Engaged paid" in err["message"]
    assert "Unpaid" in err["message"]
    assert tenant.get(f"/api/segments/{paid['id']}")["status"] == "ready"
    assert tenant.api.delete(f"/api/segments/{by_id['id']}").status_code == 204
    assert_error(tenant.api.delete(f"/api/segments/{paid['id']}"), 409, "segment_in_use")
    patch(tenant, by_name["id"], rules={"trait": "plan", "op": "not_exists"})
    assert tenant.api.delete(f"/api/segments/{paid['id']}").status_code == 204


def test_cycles_are_refused(tenant: Tenant) -> None:
    a = ready(tenant, "A", PRO)
    b = ready(tenant, "B", {"segment": a["id"], "op": "in"})
    c = ready(tenant, "C", {"any": [{"segment": b["id"], "op": "in"}, PRO]})
    for target in (a, b, c):
        r = tenant.api.patch(
            f"/api/segments/{a['id']}", json={"rules": {"segment": target["id"], "op": "not_in"}}
        )
        err = assert_error(r, 400, "segment_cycle")
        assert str(a["id"]) in err["message"]
    # Nothing changed.
    got = tenant.get(f"/api/segments/{a['id']}")
    assert (got["rules"], got["version"], got["status"]) == (PRO, 1, "ready")


def test_a_recreated_segment_uses_its_own_rules(tenant: Tenant) -> None:
    """Delete a segment, create another: the new one must never be evaluated with the old
    rules (on SQLite the new segment can reuse the deleted one's id)."""
    tenant.send(
        [
            identify("ann", {"plan": "pro"}),
            identify("bob", {"plan": "free"}),
            identify("cy", {"plan": "team"}),
        ]
    )
    ann, bob, cy = cid(tenant, "ann"), cid(tenant, "bob"), cid(tenant, "cy")
    old = ready(tenant, "Pro", PRO)
    assert member_ids(tenant, old["id"]) == [ann]
    assert tenant.api.delete(f"/api/segments/{old['id']}").status_code == 204

    new = ready(tenant, "Free", {"trait": "plan", "op": "eq", "value": "free"})
    assert member_ids(tenant, new["id"]) == [bob]
    body = tenant.get(f"/api/segments/{new['id']}/explain/{bob}")
    assert (body["member"], body["matches"]) == (True, True)
    r = tenant.api.post("/api/segments/preview", json={"rules": {"segment": new["id"], "op": "in"}})
    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()["sample"]] == [bob]
    tenant.send([identify("dee", {"plan": "free"})])
    assert sorted(member_ids(tenant, new["id"])) == sorted([bob, cid(tenant, "dee")])

    # The same name again, with other rules.
    assert tenant.api.delete(f"/api/segments/{new['id']}").status_code == 204
    again = ready(tenant, "Free", {"trait": "plan", "op": "eq", "value": "team"})
    assert member_ids(tenant, again["id"]) == [cy]
    tenant.send([identify("bob", {"plan": "team"})])
    assert sorted(member_ids(tenant, again["id"])) == sorted([bob, cy])


# -- errors and isolation ---------------------------------------------------------------------


def test_error_codes(tenant: Tenant) -> None:
    tenant.send([identify("ann", {"plan": "pro"})])
    ann = cid(tenant, "ann")
    seg = ready(tenant, "Pro", PRO)
    sid = seg["id"]

    # invalid_segment names the offending condition.
    bad = {"all": [PRO, {"any": [{"event": "Purchased", "op": "performed", "count": {"more": 1}}]}]}
    err = assert_error(
        tenant.api.post("/api/segments", json={"name": "Bad", "rules": bad}), 400, "invalid_segment"
    )
    assert "rules.all[1].any[0]" in err["message"]
    assert "more" in err["message"]
    for rules in (
        {"trait": "plan", "op": "eq"},
        {"nonsense": 1},
        {"all": {"trait": "plan"}},
        {"event": "X", "op": "performed", "within_days": 0},
        {"tag": "vip", "op": "has", "extra": 1},
        {"segment": "No such name", "op": "in"},
    ):
        r = tenant.api.post("/api/segments", json={"name": "Bad", "rules": rules})
        assert_error(r, 400, "invalid_segment")
    assert_error(tenant.api.post("/api/segments", json={"name": "  ", "rules": PRO}), 400)
    for rules in ([PRO], "plan = pro", 3):
        err = assert_error(
            tenant.api.post("/api/segments", json={"name": "x", "rules": rules}),
            400,
            "invalid_segment",
        )
        assert err["message"].startswith("rules: expected an object"), err["message"]
        r = tenant.api.post("/api/segments/preview", json={"rules": rules})
        assert_error(r, 400, "invalid_segment")
    assert_error(tenant.api.post("/api/segments", json={"rules": PRO}), 422)
    r = tenant.api.patch(f"/api/segments/{sid}", json={"rules": {"trait": "plan", "op": "?"}})
    assert_error(r, 400, "invalid_segment")

    # unknown_segment: a reference to a segment that does not exist.
    missing = sid + 100_000
    r = tenant.api.post(
        "/api/segments", json={"name": "Ref", "rules": {"segment": missing, "op": "in"}}
    )
    err = assert_error(r, 400, "unknown_segment")
    assert str(missing) in err["message"]
    r = tenant.api.post("/api/segments/preview", json={"rules": {"segment": missing, "op": "in"}})
    assert_error(r, 400, "unknown_segment")

    # segment_cycle: a segment may not refer to itself.
    r = tenant.api.patch(f"/api/segments/{sid}", json={"rules": {"segment": sid, "op": "in"}})
    assert_error(r, 400, "segment_cycle")
    # A longer one is named by the condition that leads into it.
    via = create(tenant, "Via", {"segment": sid, "op": "in"})
    looped = {"any": [PRO, {"not": {"segment": via["id"], "op": "in"}}]}
    err = assert_error(
        tenant.api.patch(f"/api/segments/{sid}", json={"rules": looped}), 400, "segment_cycle"
    )
    assert err["message"].startswith("rules.any[1].not: segment "), err["message"]
    assert tenant.api.delete(f"/api/segments/{via['id']}").status_code == 204

    # segment_exists: names are unique within the project (creating and renaming).
    r = tenant.api.post("/api/segments", json={"name": "Pro", "rules": PRO})
    assert_error(r, 409, "segment_exists")
    r = tenant.api.post("/api/segments", json={"name": " Pro ", "rules": PRO})
    assert_error(r, 409, "segment_exists")
    other = create(tenant, "Other", PRO)
    assert_error(tenant.api.patch(f"/api/segments/{other['id']}", json={"name": "Pro"}), 409)

    # segment_in_use
    ref = create(tenant, "Ref", {"segment": sid, "op": "in"})
    assert_error(tenant.api.delete(f"/api/segments/{sid}"), 409, "segment_in_use")

    # segment_not_found, on every route that takes an id.
    for method, path in (
        ("GET", f"/api/segments/{missing}"),
        ("PATCH", f"/api/segments/{missing}"),
        ("DELETE", f"/api/segments/{missing}"),
        ("GET", f"/api/segments/{missing}/customers"),
        ("GET", f"/api/segments/{missing}/explain/{ann}"),
    ):
        r = tenant.api.request(method, path, json={"name": "x"} if method == "PATCH" else None)
        assert_error(r, 404, "segment_not_found")
    assert_error(
        tenant.api.get(f"/api/segments/{sid}/explain/987654321"), 404, "customer_not_found"
    )
    assert_error(tenant.api.get("/api/customers/987654321/segments"), 404, "customer_not_found")

    # Without the secret key nothing is shown.
    assert tenant.http.get("/api/segments").status_code == 401
    r = tenant.http.post(
        "/api/segments", json={"name": "x", "rules": PRO}, auth=(tenant.write_key, "")
    )
    assert r.status_code in (401, 403)

    # None of the refused requests changed anything.
    names = sorted(s["name"] for s in tenant.get("/api/segments")["data"])
    assert names == ["Other", "Pro", "Ref"]
    assert tenant.get(f"/api/segments/{sid}")["rules"] == PRO
    assert ref["rules"] == {"segment": sid, "op": "in"}


def test_another_project_cannot_see_or_use_a_segment(tenant: Tenant, other: Tenant) -> None:
    tenant.send([identify("ann", {"plan": "pro"})])
    other.send([identify("ann", {"plan": "pro"})])
    ann = cid(tenant, "ann")
    their_ann = cid(other, "ann")
    seg = ready(tenant, "Pro", PRO)
    sid = seg["id"]

    assert other.get("/api/segments")["data"] == []
    for method, path in (
        ("GET", f"/api/segments/{sid}"),
        ("PATCH", f"/api/segments/{sid}"),
        ("DELETE", f"/api/segments/{sid}"),
        ("GET", f"/api/segments/{sid}/customers"),
        ("GET", f"/api/segments/{sid}/explain/{their_ann}"),
    ):
        r = other.api.request(method, path, json={"name": "Mine"} if method == "PATCH" else None)
        assert_error(r, 404, "segment_not_found")
    # Nor refer to it.
    ref = {"segment": sid, "op": "in"}
    assert_error(
        other.api.post("/api/segments", json={"name": "R", "rules": ref}), 400, "unknown_segment"
    )
    assert_error(
        other.api.post("/api/segments/preview", json={"rules": ref}), 400, "unknown_segment"
    )
    # Nor see the customers of the first project through its own segments.
    assert_error(other.api.get(f"/api/customers/{ann}/segments"), 404, "customer_not_found")
    theirs = ready(other, "Pro", PRO)  # the same name is fine in another project
    assert member_ids(other, theirs["id"]) == [their_ann]
    assert_error(
        other.api.get(f"/api/segments/{theirs['id']}/explain/{ann}"), 404, "customer_not_found"
    )
    assert_error(tenant.api.get(f"/api/segments/{theirs['id']}"), 404, "segment_not_found")

    # The first project's segment is untouched, and its members are its own customers only.
    got = tenant.get(f"/api/segments/{sid}")
    assert (got["name"], got["member_count"]) == ("Pro", 1)
    assert member_ids(tenant, sid) == [ann]
    assert segments_of(tenant, ann).keys() == {"Pro"}
    assert {s["id"] for s in segments_of(other, their_ann).values()} == {theirs["id"]}
