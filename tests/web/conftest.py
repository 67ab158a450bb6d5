"""Fixtures for the dashboard page tests: signed-in visitors on the tenant's project.

Signing in costs two argon2 hashes (about a second on a small machine), so accounts are signed
in once per server through the real form and reused: each test adds the account to its own fresh
project with the role it needs. Tests that end a session or look at "/" ask for a fresh account.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

import pytest

from tests.support import LiveServer, Tenant
from tests.web.dash import Visitor, create_user, signed_in
from tidings.auth import users


class SignIn(Protocol):
    def __call__(
        self, role: str, project_ids: list[int] | None = None, *, fresh: bool = False
    ) -> Visitor: ...


class Accounts:
    """Signed-in accounts of one server, by role."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.pool: dict[str, list[Visitor]] = {}

    def new(self, role: str, project_ids: list[int]) -> Visitor:
        email = create_user(self.server.db, role=role, project_ids=project_ids)
        return signed_in(self.server.url, email)

    def take(self, role: str, index: int) -> Visitor:
        accounts = self.pool.setdefault(role, [])
        while len(accounts) <= index:
            accounts.append(self.new(role, []))
        return accounts[index]

    def close(self) -> None:
        for accounts in self.pool.values():
            for visitor in accounts:
                visitor.close()


@pytest.fixture(scope="session")
def accounts(server: LiveServer) -> Iterator[Accounts]:
    pool = Accounts(server)
    yield pool
    pool.close()


@pytest.fixture
def sign_in_as(tenant: Tenant, accounts: Accounts) -> Iterator[SignIn]:
    """sign_in_as(role, project_ids=None, fresh=False) -> a signed-in Visitor with `role` in the
    tenant's project (or in `project_ids`); distinct accounts within a test."""
    used: Counter[str] = Counter()
    opened: list[Visitor] = []

    def make(role: str, project_ids: list[int] | None = None, *, fresh: bool = False) -> Visitor:
        ids = [tenant.project_id] if project_ids is None else project_ids
        if fresh:
            visitor = accounts.new(role, ids)
            opened.append(visitor)
            return visitor
        visitor = accounts.take(role, used[role])
        used[role] += 1
        with tenant.server.db.session(write=True) as session:
            for pid in ids:
                users.invite(session, project_id=pid, email=visitor.email or "", role=role)
        return visitor

    yield make
    for visitor in opened:
        visitor.close()


@pytest.fixture
def owner(sign_in_as: SignIn) -> Visitor:
    """An owner of the tenant's project, signed in."""
    return sign_in_as("owner")
