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


class Threads:
    """A fake defer_to_thread: the checks wait for the test to run them."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, f, args))
        return d

    def run(self, count: int | None = None) -> None:
        """Run the first ``count`` checks waiting (all when None)."""
        count = len(self.waiting) if count is None else count
        ran, self.waiting = self.waiting[:count], self.waiting[count:]
        for d, f, args in ran:
            d.callback(f(*args))


class CheckQueueTests(SynchronousTestCase):
    """The scrypt checks waiting are bounded per client address and in all: a flood from a
    few addresses is refused (503) instead of queued in front of everyone's logins."""

    def setUp(self) -> None:
        self.threads = Threads()

    def authorizer(self, **limits: Any) -> CredentialAuthorizer:
        from acmews.throttle import LoginLimits

        return CredentialAuthorizer(
            read_basic_file(MIXED), defer_to_thread=self.threads, limits=LoginLimits(**limits)
        )

    def attempt(
        self, authorizer: CredentialAuthorizer, host: str, password: str = "wrong"
    ) -> Deferred[Authorization] | HandshakeRefused:
        try:
            d: Any = authorizer.authorize(shake(basic("meters", password), host))
        except HandshakeRefused as refusal:
            return refusal
        d.addErrback(lambda f: f.trap(HandshakeRefused))  # a 401 later
        return d  # type: ignore[no-any-return]

    def test_defaults(self) -> None:
        from acmews.throttle import LoginLimits

        limits = LoginLimits()
        self.assertEqual((limits.checks_per_address, limits.checks), (4, 64))
        self.assertRaises(ValueError, LoginLimits, checks=0)

    def test_a_login_is_not_stuck_behind_a_thousand_attempts(self) -> None:
        authorizer = self.authorizer()
        refused = [self.attempt(authorizer, "10.0.0.66") for _ in range(1000)]
        busy = [r for r in refused if isinstance(r, HandshakeRefused)]
        self.assertEqual(len(busy), 996)
        self.assertEqual({(r.status, r.headers["Retry-After"]) for r in busy}, {(503, "1")})
        d = self.attempt(authorizer, "10.0.0.1", "m3ter")
        assert isinstance(d, Deferred)
        self.assertEqual(len(self.threads.waiting), 5)  # its check is the fifth, not 1001st
        self.threads.run()
        self.assertEqual(self.successResultOf(d).owner, "basic:meters")
        self.assertEqual(authorizer.checks.taken, 0)

    def test_two_addresses_cannot_lock_out_a_third(self) -> None:
        authorizer = self.authorizer(checks_per_address=4, checks=9)
        for host in ("10.0.0.66", "10.0.0.67"):
            for _ in range(10):
                self.attempt(authorizer, host)
        self.assertEqual(len(self.threads.waiting), 8)
        self.assertIsInstance(self.attempt(authorizer, "10.0.0.1"), Deferred)

    def test_in_all(self) -> None:
        authorizer = self.authorizer(checks_per_address=4, checks=6)
        for host in ("10.0.0.66", "10.0.0.67"):
            for _ in range(4):
                self.attempt(authorizer, host)
        self.assertEqual(len(self.threads.waiting), 6)
        refusal = self.attempt(authorizer, "10.0.0.1")
        assert isinstance(refusal, HandshakeRefused)
        self.assertEqual(refusal.status, 503)
        self.threads.run(1)  # a slot comes free
        self.assertIsInstance(self.attempt(authorizer, "10.0.0.1"), Deferred)

    def test_a_check_that_cannot_start_gives_its_slot_back(self) -> None:
        def broken(f: Any, *args: Any) -> Deferred[Any]:
            raise RuntimeError("no threads")

        authorizer = CredentialAuthorizer(read_basic_file(MIXED), defer_to_thread=broken)
        self.assertRaises(RuntimeError, authorizer.authorize, shake(basic("meters", "x")))
        self.assertEqual(authorizer.checks.taken, 0)
