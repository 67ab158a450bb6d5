"""A profile merged into another (identify tying an anonymousId to a userId) takes its emails
and its opt-outs along: the message log and consent belong to the person."""

from __future__ import annotations

from tests.customers.messages import identify
from tests.messaging.helpers import create_template, send_message, uid, wait_status
from tests.support import Tenant


def test_emails_and_opt_outs_follow_a_merged_profile(tenant: Tenant) -> None:
    anon, user = uid("anon"), uid("user")
    tenant.send([identify(None, {"email": f"{anon}@example.com"}, anonymous_id=anon)])
    guest = tenant.get("/api/customers", email=f"{anon}@example.com")["data"][0]
    template = create_template(tenant, starter="announcement")
    sent = send_message(
        tenant, template_id=template["id"], customer_id=guest["id"], topic="broadcasts"
    )
    assert wait_status(tenant, sent["id"])["status"] == "sent"
    r = tenant.api.put(f"/api/subscriptions/{guest['id']}", json={"topics": {"automations": False}})
    assert r.status_code == 200, r.text

    tenant.send([identify(user, {"email": f"{user}@example.com"})])
    tenant.send([identify(user, {}, anonymous_id=anon)])  # the guest is merged into the user
    person = tenant.customer(user_id=user)
    assert person["id"] != guest["id"]
    assert tenant.api.get(f"/api/customers/{guest['id']}").status_code == 404

    moved = tenant.get(f"/api/customers/{person['id']}/messages")["data"]
    assert [m["id"] for m in moved] == [sent["id"]]
    assert moved[0]["customer_id"] == person["id"]
    choices = tenant.get(f"/api/subscriptions/{person['id']}")
    assert {t["key"]: t["subscribed"] for t in choices["topics"]} == {
        "automations": False,
        "broadcasts": True,
    }
