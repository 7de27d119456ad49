"""Password guessing against CredentialAuthorizer: no user list by timing, failures slowed
down per user name and per client address, the expensive checks bounded."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from acmews.auth import CredentialAuthorizer, hash_password, read_basic_file, read_token_file
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

    def from_two_addresses(self, authorizer: CredentialAuthorizer, times: int) -> int:
        """``times`` attempts from each of two addresses; the checks then waiting."""
        for host in ("10.0.0.66", "10.0.0.67"):
            for _ in range(times):
                self.attempt(authorizer, host)
        return len(self.threads.waiting)

    def test_two_addresses_cannot_lock_out_a_third(self) -> None:
        authorizer = self.authorizer(checks_per_address=4, checks=9)
        self.assertEqual(self.from_two_addresses(authorizer, 10), 8)
        self.assertIsInstance(self.attempt(authorizer, "10.0.0.1"), Deferred)

    def test_in_all(self) -> None:
        authorizer = self.authorizer(checks_per_address=4, checks=6)
        self.assertEqual(self.from_two_addresses(authorizer, 4), 6)
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


class BackoffTests(SynchronousTestCase):
    """Failed logins per user name and per client address: five free, then refused (429)
    for 1 s, doubled by each further failure up to 60 s."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.authorizer = CredentialAuthorizer(
            read_basic_file([f"acme:{SHA}", f"other:{SHA}"]),
            read_token_file(["tok"]),
            clock=self.clock,
        )
        self.hosts = (f"10.1.0.{i}" for i in range(1, 250))

    def status(self, authorization: str, host: str | None = None) -> tuple[int, str | None]:
        """The status of one attempt (200 for a success) and its Retry-After."""
        try:
            self.authorizer.authorize(shake(authorization, host or next(self.hosts)))
        except HandshakeRefused as refusal:
            return refusal.status, refusal.headers.get("Retry-After")
        return 200, None

    def test_per_user_name_known_or_not(self) -> None:
        for user in ("acme", "nobody"):
            for _ in range(5):  # from five addresses: only the name is counted five times
                self.assertEqual(self.status(basic(user, "wrong")), (401, None))
            # refused without a check, even with the right password
            self.assertEqual(self.status(basic(user, "secret")), (429, "1"))
        self.assertEqual(self.status(basic("other", "secret")), (200, None))

    def test_the_wait_doubles_up_to_a_minute(self) -> None:
        for _ in range(5):
            self.status(basic("acme", "wrong"))
        waits = []
        for _ in range(10):
            status, retry = self.status(basic("acme", "wrong"))
            self.assertEqual(status, 429)
            waits.append(int(retry or 0))
            self.clock.advance(waits[-1])
            self.assertEqual(self.status(basic("acme", "wrong")), (401, None))
        self.assertEqual(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60])

    def test_per_address(self) -> None:
        for i in range(5):  # a new name each time: only the address is counted five times
            self.assertEqual(self.status(basic(f"guess{i}", "x"), "10.0.0.66")[0], 401)
        self.assertEqual(self.status(basic("acme", "secret"), "10.0.0.66"), (429, "1"))
        self.assertEqual(self.status("Bearer tok", "10.0.0.66"), (429, "1"))
        self.assertEqual(self.status(basic("acme", "secret"), "10.0.0.1"), (200, None))

    def test_bearer_failures_count_per_address(self) -> None:
        for _ in range(5):
            self.assertEqual(self.status("Bearer nope", "10.0.0.66")[0], 401)
        self.assertEqual(self.status("Bearer tok", "10.0.0.66"), (429, "1"))
        self.assertEqual(self.status("Bearer tok", "10.0.0.1"), (200, None))

    def test_a_success_clears_the_user_count(self) -> None:
        for _ in range(4):
            self.status(basic("acme", "wrong"))
        self.assertEqual(self.status(basic("acme", "secret")), (200, None))
        for _ in range(4):
            self.assertEqual(self.status(basic("acme", "wrong"))[0], 401)
        self.assertEqual(self.status(basic("acme", "secret")), (200, None))

    def test_forgotten_after_a_quiet_while(self) -> None:
        for _ in range(6):
            self.status(basic("acme", "wrong"))
        self.clock.advance(900)
        for _ in range(5):
            self.assertEqual(self.status(basic("acme", "wrong"))[0], 401)

    def test_memory_is_bounded(self) -> None:
        from acmews.throttle import LoginLimits

        self.authorizer = CredentialAuthorizer(
            read_basic_file([f"acme:{SHA}"]),
            clock=self.clock,
            limits=LoginLimits(max_entries=100),
        )
        for i in range(1000):
            self.status(basic(f"guess{i}-" + "x" * 10_000, "x"), f"10.2.{i // 250}.{i % 250}")
        by_user, by_address = self.authorizer.failures_by_user, self.authorizer.failures_by_address
        assert by_user is not None and by_address is not None
        self.assertEqual((len(by_user), len(by_address)), (100, 100))
        self.assertTrue(all(len(key) <= 64 for key in by_user._entries))

    def test_without_a_clock_nothing_is_counted(self) -> None:
        authorizer = CredentialAuthorizer(read_basic_file([f"acme:{SHA}"]))
        for _ in range(10):
            self.assertRaises(HandshakeRefused, authorizer.authorize, shake(basic("acme", "x")))
        self.assertEqual(authorizer.authorize(shake(basic("acme", "secret"))).owner, "basic:acme")


class BindingTests(SynchronousTestCase):
    def test_429_with_retry_after_reaches_the_client(self) -> None:
        from twisted.internet.task import Clock

        from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
        from acmews.testing import connected_pair as pair

        clock = Clock()
        authorizer = CredentialAuthorizer(read_basic_file([f"acme:{SHA}"]), clock=clock)
        factory = make_server_factory(RecordingHandler(), clock, authorizer=authorizer)
        statuses = []
        for _ in range(6):
            client = make_client_factory(clock, "Cx")
            client.headers["Authorization"] = basic("acme", "wrong")
            p = pair(factory, client)
            statuses.append(p.client.http_status_line.split()[1])
            self.failureResultOf(client.ready)
        self.assertEqual(statuses, ["401"] * 5 + ["429"])
        self.assertEqual(p.client.http_headers.get("retry-after"), "1")

    def test_twistd_acmews_times_failures_on_its_reactor(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from acmews.tap import Options, makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"acme:{SHA}\n")
        options = Options()
        options.parseOptions(["--store", "memory:", "--basic-auth-file", path])
        reactor = MemoryReactorClock()
        authorizer: Any = makeService(options, reactor).factory.authorizer
        self.assertIs(authorizer.failures_by_user._clock, reactor)
