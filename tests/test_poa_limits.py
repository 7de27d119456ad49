"""Which hosts the poa chain may contact, and how many steps it runs at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC
from acmews.errors import TargetNotReachable
from acmews.poa import OutboundLimits, PoaChain, TargetPolicy
from acmews.poa.limits import DEFAULT_DENY, TargetDenied
from acmews.primitive import Response

from .test_poa import AE, FakeConnector, FakeMap, notify


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str) -> Deferred[Sequence[str]]:
        if host not in table:
            return fail(OSError("no such host"))
        return succeed(table[host])

    return resolve


class PolicyTests(SynchronousTestCase):
    def check(self, policy: TargetPolicy, url: str) -> bool:
        d = Deferred.fromCoroutine(policy.check(url))
        failures: list[object] = []
        d.addErrback(lambda f: failures.append(f.trap(TargetDenied)))
        return not failures

    def test_default_denies_link_local_only(self) -> None:
        policy = TargetPolicy(deny=DEFAULT_DENY, resolve=resolver({"meta": ["169.254.169.254"]}))
        self.assertFalse(self.check(policy, "http://169.254.169.254/latest/meta-data"))
        self.assertFalse(self.check(policy, "ws://[fe80::1]:80"))
        self.assertFalse(self.check(policy, "http://meta/x"))  # a name for a denied address
        self.assertTrue(self.check(policy, "ws://127.0.0.1:9000"))
        self.assertTrue(self.check(policy, "http://10.1.2.3/n"))

    def test_allow_list(self) -> None:
        policy = TargetPolicy(
            allow=["10.0.0.0/8", "*.devices.example"],
            deny=["10.9.0.0/16"],
            resolve=resolver(
                {
                    "gw": ["10.1.1.1"],
                    "web": ["93.184.216.34"],
                    "lamp.devices.example": ["192.0.2.5"],
                }
            ),
        )
        self.assertTrue(self.check(policy, "ws://10.1.2.3:80"))
        self.assertTrue(self.check(policy, "http://lamp.devices.example/n"))
        self.assertTrue(self.check(policy, "http://gw/n"))
        self.assertFalse(self.check(policy, "http://web/n"))
        self.assertFalse(self.check(policy, "http://10.9.1.1/n"))  # deny wins
        self.assertFalse(self.check(policy, "http://127.0.0.1/n"))
        self.assertFalse(self.check(policy, "http://unknown/n"))  # does not resolve

    def test_no_host(self) -> None:
        self.assertFalse(self.check(TargetPolicy(), "http:///path"))

    def test_bad_rule(self) -> None:
        self.assertRaises(ValueError, TargetPolicy, allow=[" "])


class ChainPolicyAndLimitsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.http = FakeConnector("http")

    def chain(self, **kw: object) -> PoaChain:
        chain = PoaChain(FakeMap(), self.clock, [self.http], **kw)  # type: ignore[arg-type]
        self.addCleanup(chain.stop)
        return chain

    def test_denied_target_is_never_contacted(self) -> None:
        chain = self.chain(policy=TargetPolicy(deny=["127.0.0.0/8"]))
        d = chain.send("http://127.0.0.1:8080/x", notify())
        self.clock.advance(10)  # a failed step is reported once its timeout has passed
        self.failureResultOf(d).trap(TargetNotReachable)
        self.assertEqual(self.http.calls, [])
        d = chain.send(AE, notify(), ["http://127.0.0.2/n"])
        self.clock.advance(10)
        f = self.failureResultOf(d)
        self.assertIn("not reachable", f.value.reason)
        self.assertEqual(self.http.calls, [])

    def test_per_host_limit_makes_steps_wait_their_turn(self) -> None:
        chain = self.chain(limits=OutboundLimits(total=10, per_host=1))
        first = chain.send("http://a/1", notify("n1"))
        second = chain.send("http://a/2", notify("n2"))
        other = chain.send("http://b/1", notify("n3"))
        self.assertEqual(self.http.urls(), ["http://a/1", "http://b/1"])
        self.http.calls[0][3].callback(Response(RSC.OK, "n1"))
        self.assertEqual(self.successResultOf(first).rsc, RSC.OK)
        self.assertEqual(self.http.urls(), ["http://a/1", "http://b/1", "http://a/2"])
        self.http.calls[2][3].callback(Response(RSC.OK, "n2"))
        self.http.calls[1][3].callback(Response(RSC.OK, "n3"))
        self.successResultOf(second)
        self.successResultOf(other)
        self.assertEqual(chain.limits.in_flight(), 0)

    def test_total_limit_and_a_waiting_step_times_out_without_leaking(self) -> None:
        chain = self.chain(limits=OutboundLimits(total=1, per_host=1), timeout=5)
        busy = chain.send("http://a/1", notify("n1"))
        waiting = chain.send("http://b/1", notify("n2"))
        self.assertEqual(self.http.urls(), ["http://a/1"])
        self.clock.advance(5)  # both time out: the one in flight and the one waiting
        self.failureResultOf(busy, TargetNotReachable)
        self.failureResultOf(waiting, TargetNotReachable)
        self.assertEqual(chain.limits.in_flight(), 0)
        self.http.results.append(Response(RSC.OK, "n4"))
        self.assertEqual(self.successResultOf(chain.send("http://c/1", notify("n4"))).rsc, 2000)


class ConnectionsPerHostTests(SynchronousTestCase):
    """The real ``ws://`` connector (``acmews.client.connect``) on a fake reactor: a delivery
    that times out aborts the connection it started, and only then frees its per-host slot
    (6,000 simultaneous connections to one host once, against a limit of 8)."""

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from acmews.config import Config
        from acmews.options import ConnectionOptions
        from acmews.originators import OriginatorMap
        from acmews.poa import MemoryNotificationQueue
        from acmews.server import build_chain

        self.reactor = MemoryReactorClock()
        self.events: list[str] = []
        connect_tcp = self.reactor.connectTCP

        def connectTCP(*args: Any, **kwargs: Any) -> Any:
            self.events.append("connect")
            return connect_tcp(*args, **kwargs)

        self.reactor.connectTCP = connectTCP  # type: ignore[method-assign]
        config = Config(max_outbound_per_host=2, connection=ConnectionOptions(request_timeout=5.0))
        self.chain = build_chain(config, OriginatorMap(), MemoryNotificationQueue(), self.reactor)
        self.addCleanup(self.chain.stop)

    def outstanding(self) -> int:
        """TCP connects still in progress (the fake reactor never completes one)."""
        return sum(not connector.stoppedConnecting for connector in self.reactor.connectors)

    def test_timed_out_connects_are_stopped(self) -> None:
        results: list[object] = []
        for second in range(60):
            if second % 5 == 0:
                for i in range(4):
                    d = self.chain.send(f"ws://127.0.0.1:9/{second}-{i}", notify(f"n{i}"))
                    d.addBoth(results.append)
            self.assertLessEqual(self.outstanding(), 2)
            self.reactor.advance(1)
        self.reactor.advance(60)
        self.assertEqual(len(results), 48)
        self.assertTrue(all(isinstance(r, Failure) for r in results))
        self.assertEqual(self.outstanding(), 0)
        self.assertEqual(self.chain.limits.in_flight(), 0)

    def test_a_made_connection_is_aborted_before_its_slot_is_freed(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.error import ConnectionAborted
        from twisted.internet.testing import StringTransport

        events = self.events

        class Transport(StringTransport):
            def abortConnection(self) -> None:
                events.append("abort")
                super().abortConnection()

        self.chain.limits = OutboundLimits(total=10, per_host=1)
        first = self.chain.send("ws://127.0.0.1:9/a", notify("n1"))
        (host, port, factory, _, _) = self.reactor.tcpClients[0]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = Transport()
        protocol.makeConnection(transport)  # connected; the handshake is never answered
        self.assertIn(b"Upgrade: WebSocket", transport.value())
        self.reactor.advance(3)
        second = self.chain.send("ws://127.0.0.1:9/b", notify("n2"))
        self.assertEqual(events, ["connect"])  # waits for the slot
        self.reactor.advance(2)  # the first times out: aborted, then the second connects
        self.assertEqual(events, ["connect", "abort", "connect"])
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.reactor.advance(60)
        self.failureResultOf(first, TargetNotReachable)
        self.failureResultOf(second, TargetNotReachable)
        self.assertTrue(self.reactor.connectors[1].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
