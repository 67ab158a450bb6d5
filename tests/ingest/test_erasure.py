"""Erasing a customer removes their data from the message log too (rows stay for dedup)."""

from __future__ import annotations

import base64

from tests.support import Tenant


def _identify(user: str, email: str, mid: str) -> dict[str, object]:
    return {"type": "identify", "userId": user, "messageId": mid, "traits": {"email": email}}


def test_api_erase_redacts_the_message_log(tenant: Tenant) -> None:
    tenant.send(
        [
            _identify("gone", "gone@example.com", "m-1"),
            {"type": "track", "userId": "gone", "event": "Signed In", "messageId": "m-2"},
            _identify("kept", "kept@example.com", "m-3"),
        ]
    )
    customer = tenant.customer(user_id="gone")
    r = tenant.api.delete(f"/api/customers/{customer['id']}")
    assert r.status_code == 200, r.text

    logged = {m["message_id"]: m for m in tenant.messages()}
    for mid in ("m-1", "m-2"):
        assert logged[mid]["raw"] == {"redacted": True}
        assert logged[mid]["user_id"] is None
        assert logged[mid]["customer_id"] is None
    assert logged["m-3"]["raw"]["traits"] == {"email": "kept@example.com"}
    # The redacted rows still deduplicate a client's retry.
    tenant.send([_identify("gone", "gone@example.com", "m-1")])
    assert tenant.api.get("/api/customers/lookup", params={"user_id": "gone"}).status_code == 404


def test_segment_delete_redacts_messages_of_the_same_chunk(tenant: Tenant) -> None:
    before = tenant.processed()
    body = [
        _identify("bye", "bye@example.com", "d-1"),
        {"type": "delete", "userId": "bye", "messageId": "d-2"},
    ]
    auth = base64.b64encode(f"{tenant.write_key}:".encode()).decode()
    r = tenant.http.post(
        "/v1/webhook/segment", json=body, headers={"Authorization": f"Basic {auth}"}
    )
    assert r.status_code == 200, r.text
    tenant.wait_processed(before + 2)
    logged = {m["message_id"]: m for m in tenant.messages()}
    assert logged["d-1"]["raw"] == {"redacted": True}
    assert logged["d-2"]["type"] == "delete"
    assert logged["d-2"]["raw"]["userId"] == "bye"  # the request itself stays as the record
    assert tenant.api.get("/api/customers/lookup", params={"user_id": "bye"}).status_code == 404
