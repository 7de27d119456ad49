"""Connections accepted in all, per client address, and still in their handshake."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from acmews.admission import ConnectionLimits
from acmews.errors import TargetNotReachable
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair


class LimitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = make_server_factory(
            RecordingHandler(),
            self.clock,
            limits=ConnectionLimits(total=5, per_address=3, handshaking_per_address=2),
        )

    def raw(self, host: str) -> tuple[Any, StringTransport]:
        """A TCP connection from ``host`` that says nothing (a half-open handshake)."""
        address = IPv4Address("TCP", host, 5000)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_unfinished_handshakes_per_address(self) -> None:
        first = [self.raw("10.0.0.1") for _ in range(2)]
        with capturedLogs() as events:
            _, refused = self.raw("10.0.0.1")
        self.assertTrue(refused.disconnecting)
        self.assertTrue(any("unfinished handshakes" in str(e.get("reason")) for e in events))
        _, other = self.raw("10.0.0.2")  # another address is not concerned
        self.assertFalse(other.disconnecting)
        self.lose(first[0][0])
        _, again = self.raw("10.0.0.1")  # a slot came free
        self.assertFalse(again.disconnecting)

    def test_open_connections_per_address_and_in_all(self) -> None:
        opened = []
        for _ in range(3):
            p = pair(self.factory, make_client_factory(self.clock, None))
            opened.append(p)
        self.assertEqual(self.factory.admission.from_address("127.0.0.1"), 3)
        # the handshakes are done: only the per-address bound says no now
        refused_client = make_client_factory(self.clock, None)
        p = pair(self.factory, refused_client)
        self.assertIsNone(p.server.session)
        self.failureResultOf(refused_client.ready, TargetNotReachable)
        self.raw("10.0.0.9")
        self.raw("10.0.0.8")
        _, refused = self.raw("10.0.0.7")  # 5 in all
        self.assertTrue(refused.disconnecting)
        for p in opened:
            p.client_session.close()
            p.flush()
        self.assertEqual(self.factory.admission.from_address("127.0.0.1"), 0)

    def test_limits_must_be_positive(self) -> None:
        self.assertRaises(ValueError, ConnectionLimits, total=0)


class LockoutTests(TestCase):
    """Two client addresses must not be able to take every connection from a third."""

    def test_default_leaves_room_for_a_third_address(self) -> None:
        limits = ConnectionLimits()
        self.assertEqual((limits.total, limits.per_address), (20_000, 6_000))
        self.assertIsNone(limits.lockout())
        factory = make_server_factory(RecordingHandler(), Clock(), limits=limits)
        admission = factory.admission
        for address in ("10.0.0.66", "10.0.0.67"):
            while admission.admit(address):
                admission.handshake_done(address)  # open connections, all of its share
        self.assertEqual(admission.total, 12_000)
        self.assertTrue(admission.admit("10.0.0.1"))

    def test_limits_that_allow_a_lockout_are_warned_about(self) -> None:
        self.assertIsNotNone(ConnectionLimits(total=10, per_address=5).lockout())
        self.assertIsNone(ConnectionLimits(total=10, per_address=4).lockout())
        for per_address, warned in ((5, True), (4, False)):
            limits = ConnectionLimits(total=10, per_address=per_address)
            with capturedLogs() as events:
                make_server_factory(RecordingHandler(), Clock(), limits=limits)
            said = [e for e in events if "two client addresses" in str(e.get("lockout"))]
            self.assertEqual(bool(said), warned, per_address)


class OpenFileTests(TestCase):
    """--max-connections against the open-file limit, at start: raised when it can be,
    fewer connections (and a warning) when it cannot."""

    def limit(self, soft: int, hard: int, refuse: bool = False) -> list[tuple[int, int]]:
        """RLIMIT_NOFILE at (soft, hard); the setrlimit calls made."""
        import resource

        calls: list[tuple[int, int]] = []

        def getrlimit(which: int) -> tuple[int, int]:
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            return soft, hard

        def setrlimit(which: int, limits: tuple[int, int]) -> None:
            self.assertEqual(which, resource.RLIMIT_NOFILE)
            if refuse:
                raise ValueError("not allowed")
            calls.append(limits)

        self.patch(resource, "getrlimit", getrlimit)
        self.patch(resource, "setrlimit", setrlimit)
        return calls

    def fit(self, limits: ConnectionLimits) -> tuple[ConnectionLimits, list[str]]:
        from twisted.logger import formatEvent

        from acmews.admission import fit_open_files

        with capturedLogs() as events:
            fitted = fit_open_files(limits, 100)
        return fitted, [formatEvent(e) for e in events]

    def test_enough_already(self) -> None:
        calls = self.limit(20_100, 20_100)
        self.assertEqual(self.fit(ConnectionLimits()), (ConnectionLimits(), []))
        self.assertEqual(calls, [])

    def test_the_soft_limit_is_raised(self) -> None:
        calls = self.limit(1024, 1_048_576)
        fitted, said = self.fit(ConnectionLimits())
        self.assertEqual(fitted, ConnectionLimits())
        self.assertEqual(calls, [(20_100, 1_048_576)])
        self.assertEqual(said, ["open-file limit raised from 1024 to 20100"])

    def test_below_the_hard_limit_fewer_connections_and_a_warning(self) -> None:
        calls = self.limit(1024, 4096)
        fitted, (raised, said) = self.fit(ConnectionLimits())
        self.assertEqual(raised, "open-file limit raised from 1024 to 4096")
        self.assertEqual(calls, [(4096, 4096)])
        self.assertEqual(fitted, ConnectionLimits(3996, 1198, 128))
        self.assertIsNone(fitted.lockout())
        for part in ("20000 connections", "20100 open files", "4096", "3996", "ulimit -n"):
            self.assertIn(part, said)

    def test_a_limit_that_cannot_be_raised(self) -> None:
        self.limit(1024, 1_048_576, refuse=True)
        fitted, said = self.fit(ConnectionLimits())
        self.assertEqual(fitted.total, 924)
        self.assertIn("cannot raise the open-file limit to 20100: not allowed", said[0])

    def test_at_start_of_twistd_acmews(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from acmews.tap import Options, makeService

        calls = self.limit(1024, 2048)
        options = Options()
        options.parseOptions(["--store", "memory:", "--max-outbound", "36"])
        service: Any = makeService(options, MemoryReactorClock())
        self.assertEqual(service.factory.admission.limits.total, 20_000)  # not before start
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(calls, [(2048, 2048)])  # once
        self.assertEqual(service.factory.admission.limits.total, 2048 - 36 - 64)
