"""Password guessing against CredentialAuthorizer: no user list by timing, failures slowed
down per user name and per client address, the expensive checks bounded."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from acmews.auth import CredentialAuthorizer, hash_password, read_basic_file
from acmews.handshake import Authorization, Handshake, HandshakeRefused

SHA = hashlib.sha256(b"secret").hexdigest()
#: a file mixing ACME's SHA-256 entries and scrypt ones
MIXED = [f"acme:{SHA}", f"meters:{hash_password('m3ter', b'0123456789abcdef')}"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def shake(authorization: str, host: str = "10.0.0.1") -> Handshake:
    return Handshake({"authorization": authorization}, IPv4Address("TCP", host, 5000))


class CheckCostTests(SynchronousTestCase):
    """Every Basic attempt costs the same: counted in calls to the expensive function, not
    timed."""

    def setUp(self) -> None:
        self.scrypts = 0
        real = hashlib.scrypt

        def counting(*args: Any, **kw: Any) -> bytes:
            self.scrypts += 1
            return real(*args, **kw)

        self.patch(hashlib, "scrypt", counting)
        self.deferred = 0

    def to_thread(self, f: Any, *args: Any) -> Deferred[Any]:
        self.deferred += 1
        return succeed(f(*args))

    def cost(self, authorizer: CredentialAuthorizer, user: str, password: str) -> tuple[int, int]:
        """(scrypt runs, checks sent to a thread) of one attempt."""
        self.scrypts = self.deferred = 0
        try:
            result: Any = authorizer.authorize(shake(basic(user, password)))
        except HandshakeRefused:
            pass
        else:
            if isinstance(result, Deferred):
                result.addErrback(lambda f: f.trap(HandshakeRefused))
        return self.scrypts, self.deferred

    def test_mixed_file_every_user_costs_one_scrypt_off_the_thread(self) -> None:
        authorizer = CredentialAuthorizer(read_basic_file(MIXED), defer_to_thread=self.to_thread)
        attempts = [
            ("acme", "secret"),  # a SHA-256 user, right and wrong
            ("acme", "wrong"),
            ("meters", "m3ter"),  # a scrypt user
            ("meters", "wrong"),
            ("nobody", "secret"),  # unknown
        ]
        costs = {attempt: self.cost(authorizer, *attempt) for attempt in attempts}
        self.assertEqual(set(costs.values()), {(1, 1)}, costs)

    def test_inline_too(self) -> None:
        authorizer = CredentialAuthorizer(read_basic_file(MIXED))
        costs = [self.cost(authorizer, u, p) for u, p in (("acme", "x"), ("nobody", "x"))]
        self.assertEqual(costs, [(1, 0), (1, 0)])

    def test_sha256_only_file_stays_cheap_and_inline(self) -> None:
        authorizer = CredentialAuthorizer(
            read_basic_file([f"acme:{SHA}"]), defer_to_thread=self.to_thread
        )
        costs = [self.cost(authorizer, u, p) for u, p in (("acme", "x"), ("nobody", "x"))]
        self.assertEqual(costs, [(0, 0), (0, 0)])

    def test_the_right_password_still_opens(self) -> None:
        authorizer = CredentialAuthorizer(read_basic_file(MIXED), defer_to_thread=self.to_thread)
        for user, password in (("acme", "secret"), ("meters", "m3ter")):
            d = authorizer.authorize(shake(basic(user, password)))
            assert isinstance(d, Deferred)
            self.assertEqual(self.successResultOf(d), Authorization(None, f"basic:{user}"))
