"""`tidings segments apply`, run for real against the live server's database: segments as code
in YAML and JSON files, matched by name, idempotent, and all-or-nothing on invalid input."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_support import flat, tidings
from tests.customers.messages import identify, track
from tests.support import Tenant

PRO = {"trait": "plan", "op": "eq", "value": "pro"}
LINE = re.compile(r"^(created|updated|unchanged)\s+(.+) \(id (\d+)\)$")


def apply(tenant: Tenant, *files: Path, project: str | None = None) -> Any:
    return tidings(
        tenant.server.database_url,
        "segments",
        "apply",
        *(str(f) for f in files),
        "--project",
        project or str(tenant.project_id),
        cwd=files[0].parent,
        timeout=180,  # the command starts afresh each time; busy machines start it slowly
    )


def applied(tenant: Tenant, *files: Path, project: str | None = None) -> dict[str, str]:
    """Apply and return {name: action}, checking the output line by line."""
    r = apply(tenant, *files, project=project)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out: dict[str, str] = {}
    ids = {s["name"]: s["id"] for s in tenant.get("/api/segments")["data"]}
    for line in r.stdout.splitlines():
        m = LINE.match(line.strip())
        assert m, (line, r.stdout)
        action, name, sid = m.groups()
        assert ids[name] == int(sid), line
        out[name] = action
    return out


def refused(tenant: Tenant, *files: Path, project: str | None = None) -> str:
    """Apply, expect exit code 1 with a readable error; returns the output, flattened."""
    r = apply(tenant, *files, project=project)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    message = flat(r.stdout + r.stderr)
    assert "Traceback" not in message, message
    assert "error" in message.lower(), message
    assert not LINE.search(r.stdout), r.stdout  # nothing reported as applied
    return message


def write_yaml(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def segments(tenant: Tenant) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in tenant.get("/api/segments")["data"]}


def wait_ready(tenant: Tenant, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = segments(tenant)
        if all(s["status"] == "ready" for s in found.values()):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def members(tenant: Tenant, segment_id: int) -> set[str]:
    body = tenant.get(f"/api/segments/{segment_id}/customers", limit=200)
    return {m["user_id"] for m in body["data"]}


@pytest.fixture
def people(tenant: Tenant) -> Tenant:
    tenant.send(
        [
            identify("ann", {"plan": "pro"}),
            track("ann", "Opened App"),
            identify("bob", {"plan": "pro"}),
            identify("cy", {"plan": "free"}),
            track("cy", "Opened App"),
        ]
    )
    return tenant


# -- creating, idempotence, updating ----------------------------------------------------------


def test_apply_creates_from_yaml_and_json_then_changes_nothing(
    people: Tenant, tmp_path: Path
) -> None:
    tenant = people
    main = tmp_path / "segments.yaml"
    main.write_text(
        """\
segments:
  - name: Pro users
    description: On the pro plan
    rules:
      trait: plan
      op: eq
      value: pro
  - name: Engaged pro users
    rules:
      all:
        - segment: Pro users   # by name: stored as its id
          op: in
        - event: Opened App
          op: performed
          within_days: 30
""",
        encoding="utf-8",
    )
    listed = write_json(
        tmp_path / "more.json",
        [{"name": "Free users", "rules": {"trait": "plan", "op": "eq", "value": "free"}}],
    )
    single = write_json(
        tmp_path / "one.json",
        {"name": "Everyone", "rules": {"trait": "plan", "op": "exists"}},
    )

    assert applied(tenant, main, listed, single) == {
        "Pro users": "created",
        "Engaged pro users": "created",
        "Free users": "created",
        "Everyone": "created",
    }
    found = wait_ready(tenant)
    assert set(found) == {"Pro users", "Engaged pro users", "Free users", "Everyone"}
    pro = found["Pro users"]
    assert (pro["description"], pro["rules"]) == ("On the pro plan", PRO)
    assert found["Engaged pro users"]["rules"]["all"][0] == {"segment": pro["id"], "op": "in"}
    assert members(tenant, pro["id"]) == {"ann", "bob"}
    assert members(tenant, found["Engaged pro users"]["id"]) == {"ann"}
    assert members(tenant, found["Free users"]["id"]) == {"cy"}
    assert members(tenant, found["Everyone"]["id"]) == {"ann", "bob", "cy"}

    # Running it again changes nothing: same ids, same versions, nothing recomputed.
    assert applied(tenant, main, listed, single) == dict.fromkeys(found, "unchanged")
    again = segments(tenant)
    for name, seg in found.items():
        assert again[name]["id"] == seg["id"]
        assert again[name]["version"] == seg["version"] == 1
        assert again[name]["status"] == "ready"
        assert again[name]["computed_at"] == seg["computed_at"]

    # The same definitions written in the other format are the same definitions.
    as_yaml = write_yaml(tmp_path / "more.yaml", json.loads(listed.read_text()))
    assert applied(tenant, as_yaml) == {"Free users": "unchanged"}


def test_unquoted_yaml_dates_are_dates(tenant: Tenant, tmp_path: Path) -> None:
    """YAML reads 2026-01-01 as a date, not text: such a definition means what the same one
    in JSON (dates as ISO-8601 text) means."""
    dated = tmp_path / "dated.yaml"
    dated.write_text(
        """\
name: January sign-ups
rules:
  all:
    - trait: signed_up_at
      op: after
      value: 2026-01-01
    - event: Signed In
      op: performed
      between: [2026-01-01, 2026-01-31 23:59:59]
""",
        encoding="utf-8",
    )
    assert applied(tenant, dated) == {"January sign-ups": "created"}
    rules = {
        "all": [
            {"trait": "signed_up_at", "op": "after", "value": "2026-01-01"},
            {
                "event": "Signed In",
                "op": "performed",
                "between": ["2026-01-01", "2026-01-31T23:59:59"],
            },
        ]
    }
    assert segments(tenant)["January sign-ups"]["rules"] == rules
    as_json = write_json(tmp_path / "dated.json", {"name": "January sign-ups", "rules": rules})
    assert applied(tenant, as_json) == {"January sign-ups": "unchanged"}


def test_a_changed_definition_is_updated_and_its_dependents_recomputed(
    people: Tenant, tmp_path: Path
) -> None:
    tenant = people
    doc = {
        "segments": [
            {"name": "Paid", "rules": PRO},
            {"name": "Unpaid", "rules": {"segment": "Paid", "op": "not_in"}},
        ]
    }
    path = write_yaml(tmp_path / "paid.yml", doc)
    assert applied(tenant, path) == {"Paid": "created", "Unpaid": "created"}
    before = wait_ready(tenant)
    assert members(tenant, before["Unpaid"]["id"]) == {"cy"}

    doc["segments"][0]["rules"] = {"trait": "plan", "op": "in", "value": ["pro", "free"]}
    write_yaml(path, doc)
    result = applied(tenant, path)
    assert result["Paid"] == "updated"
    after = wait_ready(tenant)
    assert after["Paid"]["id"] == before["Paid"]["id"]
    assert after["Paid"]["version"] == 2
    assert after["Paid"]["rules"] == doc["segments"][0]["rules"]
    assert after["Unpaid"]["version"] == 2  # built on Paid: recomputed
    assert members(tenant, after["Paid"]["id"]) == {"ann", "bob", "cy"}
    assert members(tenant, after["Unpaid"]["id"]) == set()

    # A new description alone is an update too, without a recomputation.
    doc["segments"][0]["description"] = "Any plan"
    write_yaml(path, doc)
    assert applied(tenant, path) == {"Paid": "updated", "Unpaid": "unchanged"}
    now = segments(tenant)
    assert (now["Paid"]["description"], now["Paid"]["version"]) == ("Any plan", 2)
    assert applied(tenant, path) == {"Paid": "unchanged", "Unpaid": "unchanged"}

    # Left out, a description stays as it is; null clears it.
    del doc["segments"][0]["description"]
    write_yaml(path, doc)
    assert applied(tenant, path) == {"Paid": "unchanged", "Unpaid": "unchanged"}
    assert segments(tenant)["Paid"]["description"] == "Any plan"
    doc["segments"][0]["description"] = None
    write_yaml(path, doc)
    assert applied(tenant, path) == {"Paid": "updated", "Unpaid": "unchanged"}
    assert segments(tenant)["Paid"]["description"] is None


def test_the_project_is_found_by_id_name_or_write_key(tenant: Tenant, tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"name": "A", "rules": PRO})
    name = tenant.get("/api/project/settings")["name"]
    assert applied(tenant, path, project=name) == {"A": "created"}
    assert applied(tenant, path, project=tenant.write_key) == {"A": "unchanged"}
    assert applied(tenant, path, project=str(tenant.project_id)) == {"A": "unchanged"}
    message = refused(tenant, path, project="no-such-project-anywhere")
    assert "no-such-project-anywhere" in message


# -- refusing ---------------------------------------------------------------------------------


def test_an_invalid_file_is_refused_and_nothing_is_created(people: Tenant, tmp_path: Path) -> None:
    tenant = people
    existing = write_yaml(tmp_path / "existing.yaml", {"name": "Existing", "rules": PRO})
    assert applied(tenant, existing) == {"Existing": "created"}
    before = wait_ready(tenant)

    good = write_yaml(
        tmp_path / "good.yaml",
        [
            {"name": "Fresh", "rules": {"trait": "plan", "op": "exists"}},
            {"name": "Existing", "rules": {"trait": "plan", "op": "eq", "value": "free"}},
        ],
    )
    bad = write_yaml(
        tmp_path / "bad.yaml",
        {
            "segments": [
                {
                    "name": "Broken",
                    "rules": {
                        "any": [
                            PRO,
                            {"event": "Opened App", "op": "performed", "count": {"atleast": 2}},
                        ]
                    },
                }
            ]
        },
    )
    message = refused(tenant, good, bad)
    assert "Broken" in message
    assert "rules.any[1]" in message
    assert "atleast" in message
    # All or nothing: the valid file did not go in either, and the existing segment is as it was.
    assert segments(tenant) == before

    cases: list[tuple[str, str, list[str]]] = [
        ("op.yaml", "name: Op\nrules: {trait: plan, op: bigger, value: 1}\n", ["Op", "bigger"]),
        ("syntax.yaml", "name: [unclosed\n", ["syntax.yaml"]),
        ("syntax.json", '{"name": "Oops", ', ["syntax.json"]),
        ("norules.yaml", "name: No rules\n", ["rules"]),
        ("extra.yaml", "name: Extra\nrules: {tag: vip, op: has}\ncolour: red\n", ["colour"]),
        (
            "ref.yaml",
            "name: Ref\nrules: {segment: Nobody by this name, op: in}\n",
            ["Ref", "segment"],
        ),
        ("empty.yaml", "", ["definition 1"]),
        ("list.yaml", "- just a string\n", ["definition 1"]),
        # Keys YAML reads as numbers or dates are named like any other unknown key.
        (
            "keys.yaml",
            "name: Keys\nrules: {tag: vip, op: has, 2026-01-01: 1, 7: x}\n",
            ["2026-01-01"],
        ),
    ]
    paths = []
    for filename, text, _ in cases:
        paths.append(tmp_path / filename)
        paths[-1].write_text(text, encoding="utf-8")
    # Each run starts the command afresh: run the refusals side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        messages = list(pool.map(lambda path: refused(tenant, path), paths))
    for (filename, _, words), message in zip(cases, messages, strict=True):
        for word in words:
            assert word in message, (filename, word, message)
    message = refused(tenant, tmp_path / "missing.yaml")
    assert "missing.yaml" in message
    assert segments(tenant) == before


def test_a_cycle_through_files_is_refused(tenant: Tenant, tmp_path: Path) -> None:
    first = write_yaml(
        tmp_path / "first.yaml",
        [
            {"name": "A", "rules": PRO},
            {"name": "B", "rules": {"segment": "A", "op": "in"}},
        ],
    )
    assert applied(tenant, first) == {"A": "created", "B": "created"}
    before = wait_ready(tenant)
    loop = write_yaml(tmp_path / "loop.yaml", {"name": "A", "rules": {"segment": "B", "op": "in"}})
    message = refused(tenant, loop)
    assert "cycle" in message
    assert segments(tenant) == before
