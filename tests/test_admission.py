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
