"""The cluster's directory, relay and leader's lease (acmews.cluster), against a real Redis.

Each node runs its leases and relay timeouts on the test's Clock; only the talk to Redis is
real. A node's death is what Redis sees of it: its lease gone (what PX does when it is not
renewed) or its channel without a listener (a process killed).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.cluster import ClusterNode, RedisURL, Singletons
from acmews.cluster.node import LOOKUP
from acmews.codes import RSC, Operation
from acmews.errors import NoClusterRoute, RequestTimeout
from acmews.poa import PoaChain
from acmews.primitive import Request, Response
from acmews.testing import FakeConnection, FakeOriginatorMap
from tests.redis_helpers import SKIP_SERVER, PrivateRedis, RedisTestCase

AE = "Cae1"


def notify(rqi: str = "n1") -> Request:
    return Request(Operation.NOTIFY, AE, rqi, fr="/id-in", pc={"m2m:sgn": {"sur": "sub1"}})


class Arrivals(FakeConnection):
    """A fake connection that also says when a request arrives on it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._arrivals: list[Deferred[Request]] = []

    def arrival(self) -> Deferred[Request]:
        d: Deferred[Request] = Deferred()
        self._arrivals.append(d)
        return d

    def request(self, request: Request, timeout: float | None = None) -> Deferred[Response]:
        sent = super().request(request, timeout)
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            d.callback(request)
        return sent


class RedisURLTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        url = RedisURL.parse("redis://10.0.0.5", environ={})
        self.assertEqual((url.host, url.port, url.db, url.password), ("10.0.0.5", 6379, 0, None))

    def test_port_db_and_credentials(self) -> None:
        url = RedisURL.parse("redis://user:s%40cret@h:6380/3", environ={})
        self.assertEqual(
            (url.port, url.db, url.username, url.password), (6380, 3, "user", "s@cret")
        )

    def test_password_from_the_environment(self) -> None:
        url = RedisURL.parse("redis://h", environ={"ACMEWS_REDIS_PASSWORD": "pw"})
        self.assertEqual(url.password, "pw")
        url = RedisURL.parse("redis://h", environ={"REDISCLI_AUTH": "pw2"})
        self.assertEqual(url.password, "pw2")

    def test_the_password_is_never_shown(self) -> None:
        url = RedisURL.parse("redis://:topsecret@h:1/2", environ={})
        self.assertEqual(url.description, "redis://h:1/2")
        self.assertNotIn("topsecret", repr(url))
        self.assertNotIn("topsecret", str(url))

    def test_bad_urls_say_why_in_one_line(self) -> None:
        for bad in (
            "http://h",
            "h:6379",
            "redis://",
            "redis://h/x",
            "redis://h:99999",
            "redis://h?a=1",
        ):
            with self.assertRaises(ValueError) as caught:
                RedisURL.parse(bad, environ={})
            self.assertNotIn("\n", str(caught.exception))

    def test_a_bad_url_never_shows_its_password(self) -> None:
        with self.assertRaises(ValueError) as caught:
            RedisURL.parse("redis://:topsecret@h/notanumber", environ={})
        self.assertNotIn("topsecret", str(caught.exception))

    def test_node_names(self) -> None:
        with self.assertRaises(ValueError):
            ClusterNode(RedisURL("h"), "has space", FakeOriginatorMap(), None)

    def test_takeover_within_15_s(self) -> None:
        """The leader's lease (12 s) plus a follower's renewal period (3 s) is the longest
        a dead leader's singletons go unrun; a node's lease (10 s) is how long a dead node's
        bindings count."""
        node = ClusterNode(RedisURL("h"), "a", FakeOriginatorMap(), None)
        self.assertLessEqual(node.leader_lease + node.renew, 15)
        self.assertLessEqual(node.lease, 10)


class DirectoryTests(RedisTestCase):
    async def lookup(self, originator: str) -> bytes | None:
        value = await self.redis.eval(LOOKUP, [self.key("o:" + originator)], [self.key("node:")])
        return value if isinstance(value, bytes) else None

    async def test_a_binding_names_the_node_while_its_lease_holds(self) -> None:
        a, a_map = await self.node("a")
        a_map.bind(AE, FakeConnection(AE))
        await a.sync()
        binding = await self.lookup(AE)
        assert binding is not None
        self.assertEqual(binding.split(b" ")[:2], [b"a", a.incarnation.encode()])
        ttl = await self.redis.command("PTTL", self.key("node:a"))
        self.assertGreater(ttl, 0)
        self.assertLessEqual(ttl, 10_000)
        # the lease lapses (as Redis makes it when the node no longer renews it)
        await self.redis.command("DEL", self.key("node:a"))
        self.assertIsNone(await self.lookup(AE))

    async def test_a_restarted_node_does_not_revive_its_old_bindings(self) -> None:
        a, a_map = await self.node("a")
        a_map.bind(AE, FakeConnection(AE))
        await a.sync()
        # a new incarnation of "a" (killed and restarted): its lease holds another token
        await self.redis.command("SET", self.key("node:a"), "another-incarnation")
        self.assertIsNone(await self.lookup(AE))

    async def test_disconnect_removes_the_binding(self) -> None:
        a, a_map = await self.node("a")
        connection = FakeConnection(AE)
        a_map.bind(AE, connection)
        a_map.unbind(AE, connection)
        await a.sync()
        self.assertIsNone(await self.lookup(AE))
        self.assertEqual(await self.redis.command("SMEMBERS", self.key("held:a")), [])

    async def test_newest_connection_wins_and_the_old_node_closes_its_connection(self) -> None:
        a, a_map = await self.node("a")
        b, b_map = await self.node("b")
        old = FakeConnection(AE)
        a_map.bind(AE, old)
        await a.sync()
        new = FakeConnection(AE)
        b_map.bind(AE, new)
        await old.when_closed()
        self.assertEqual(
            old.closed, [(1000, f"replaced by a newer connection for {AE} on another node")]
        )
        self.assertIsNone(a_map.lookup(AE))
        self.assertEqual(new.closed, [])
        binding = await self.lookup(AE)
        assert binding is not None
        self.assertEqual(binding.split(b" ")[0], b"b")
        self.assertEqual(await b.holder(AE), None)  # b holds it itself
        self.assertEqual(await a.holder(AE), "b")

    async def test_a_late_close_on_the_old_node_never_removes_the_new_route(self) -> None:
        a, a_map = await self.node("a")
        b, _b_map = await self.node("b")
        old = FakeConnection(AE)
        a_map.bind(AE, old)
        await a.sync()
        # b's binding lands while a has not heard of it yet (its message is still on the
        # way): a's connection closes on its own then, and a withdraws its binding
        b._bound[AE] = (FakeConnection(AE), b"b " + b.incarnation.encode() + b" 99")
        await self.redis.command(
            "SET", self.key("o:" + AE), b"b " + b.incarnation.encode() + b" 99"
        )
        a_map.unbind(AE, old)
        await a.sync()
        binding = await self.lookup(AE)
        assert binding is not None
        self.assertEqual(binding.split(b" ")[0], b"b")
        self.assertEqual(await a.holder(AE), "b")

    async def test_a_reconnection_on_the_same_node_keeps_the_route(self) -> None:
        a, a_map = await self.node("a")
        b, _ = await self.node("b")
        first, second = FakeConnection(AE), FakeConnection(AE)
        a_map.bind(AE, first)
        a_map.bind(AE, second)  # the local map replaced it (and closes it itself)
        a.originator_disconnected(AE, first)  # its late close
        await a.sync()
        self.assertEqual(await b.holder(AE), "a")
        self.assertEqual(second.closed, [])


class RelayTests(RedisTestCase):
    async def two_nodes(self) -> tuple[PoaChain, ClusterNode, ClusterNode, Arrivals]:
        a, a_map = await self.node("a")
        b, b_map = await self.node("b")
        connection = Arrivals(AE, clock=self.clock)
        b_map.bind(AE, connection)
        await b.sync()
        chain = PoaChain(a_map, self.clock, timeout=5, cluster=a, pad_failures=False)
        return chain, a, b, connection

    async def test_a_request_reaches_the_connection_on_the_other_node(self) -> None:
        chain, a, b, connection = await self.two_nodes()
        arrived = connection.arrival()
        sent = chain.send(AE, notify("n1"), store=True)
        request = await arrived
        self.assertEqual(request.rqi, "n1")  # the originator's rqi, unchanged
        self.assertEqual(request.pc, {"m2m:sgn": {"sur": "sub1"}})
        self.assertEqual(connection.sent[0][1], 5)  # the sender's timeout
        connection.sent[0][2].callback(Response(RSC.OK, "n1", "4", {"x": 1}))
        response = await sent
        self.assertEqual((response.rsc, response.rqi, response.pc), (RSC.OK, "n1", {"x": 1}))
        self.assertEqual(chain.queued(AE), [])
        self.assertEqual((a.counts["relayed"], b.counts["served"]), (1, 1))

    async def test_requests_arrive_in_order(self) -> None:
        chain, _a, _b, connection = await self.two_nodes()
        sends = [chain.send(AE, notify(f"n{i}"), store=True) for i in range(20)]
        while len(connection.sent) < 20:
            await connection.arrival()
        self.assertEqual(connection.rqis(), [f"n{i}" for i in range(20)])
        for index in range(20):
            connection.answer(index)
        for sent in sends:
            self.assertEqual((await sent).rsc, RSC.OK)

    async def test_no_answer_in_time_falls_through_to_the_queue(self) -> None:
        """The holding node took the request but no answer came back in the sender's
        timeout: it is queued (a duplicate, if it was delivered after all: at least once)."""
        chain, a, _b, connection = await self.two_nodes()
        arrived = connection.arrival()
        sent = chain.send(AE, notify("n1"), store=True)
        await arrived
        await a.sync()  # a's timer runs from the moment its relay was published
        self.clock.advance(5)
        response = await sent
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])

    async def test_a_retrieve_with_no_answer_is_4008_as_on_a_local_connection(self) -> None:
        chain, a, _b, connection = await self.two_nodes()
        arrived = connection.arrival()
        sent = chain.send(AE, Request(Operation.RETRIEVE, "cse-in/x", "r1", fr="/id-in"))
        await arrived
        await a.sync()
        self.clock.advance(5)
        failure = await self.assertFailure(sent, RequestTimeout)
        self.assertIn("relayed to node b", failure.reason)

    async def test_a_dead_node_sends_notifications_to_the_queue(self) -> None:
        chain, _a, _b, connection = await self.two_nodes()
        await self.redis.command("DEL", self.key("node:b"))  # its lease lapsed
        response = await chain.send(AE, notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])
        self.assertEqual(connection.sent, [])

    async def test_a_killed_node_is_passed_at_once(self) -> None:
        """Its lease still holds, but nothing listens on its channel: no waiting."""
        chain, _a, b, _connection = await self.two_nodes()
        await b.subscriber.stop()
        response = await chain.send(AE, notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])  # the clock never moved

    async def test_an_originator_connected_nowhere_is_queued(self) -> None:
        chain, a, _b, _connection = await self.two_nodes()
        response = await chain.send("Cother", notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued("Cother")], ["n1"])
        with self.assertRaises(NoClusterRoute):
            await a.relay("Cother", notify("n2"), 5)

    async def test_a_handover_between_lookup_and_delivery_falls_through(self) -> None:
        chain, _a, b, connection = await self.two_nodes()
        # b's connection went away after a looked it up: b answers "not here"
        b._bound.pop(AE)
        response = await chain.send(AE, notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual(connection.sent, [])

    async def test_a_connection_failing_on_the_holding_node_is_5103_there(self) -> None:
        _chain, a, _b, connection = await self.two_nodes()
        arrived = connection.arrival()
        sent = a.relay(AE, notify("n1"), 5)
        await arrived
        from acmews.errors import TargetNotReachable

        connection.sent[0][2].errback(TargetNotReachable("connection lost"))
        failure = await self.assertFailure(sent, TargetNotReachable)
        self.assertIn("connection lost", failure.reason)

    async def test_a_relay_whose_redis_answer_was_lost_waits_for_the_holders(self) -> None:
        """Redis ran the RELAY but its answer was lost (the connection broke, or no answer
        came in time from a node too busy to read it): the holding node has the request,
        and its answer comes on the channel; failing into the queue would deliver twice."""
        from acmews.cluster.node import RELAY
        from acmews.cluster.redis import RedisUnavailable

        _chain, a, _b, connection = await self.two_nodes()
        real = a.commands.eval

        def lossy(script: Any, keys: Any, args: Any) -> Deferred[Any]:
            d = real(script, keys, args)
            if script is RELAY:

                def lost(_: object) -> None:
                    raise RedisUnavailable("no answer from Redis in 5 s")

                d.addCallback(lost)
            return d

        a.commands.eval = lossy  # type: ignore[method-assign]
        arrived = connection.arrival()
        sent = a.relay(AE, notify("n1"), 5)
        await arrived
        connection.answer()
        self.assertEqual((await sent).rsc, RSC.OK)

    async def test_a_connection_that_refuses_at_once_is_answered_at_once(self) -> None:
        from acmews.errors import NotAcceptable, TargetNotReachable

        _chain, a, _b, connection = await self.two_nodes()

        def refuse(request: Request, timeout: float | None = None) -> Deferred[Response]:
            raise NotAcceptable("too large for this connection")

        connection.request = refuse  # type: ignore[method-assign]
        failure = await self.assertFailure(a.relay(AE, notify("n1"), 5), TargetNotReachable)
        self.assertIn("too large", failure.reason)

    async def test_queued_notifications_are_flushed_by_the_holding_node(self) -> None:
        """b is told (F) when a queues for an originator b holds; b flushes its chain."""
        flushed: list[str] = []
        a, _a_map = await self.node("a")
        b, b_map = await self.node("b", flush=flushed.append)
        b_map.bind(AE, FakeConnection(AE))
        await b.sync()
        a.queued(AE)
        await a.sync()  # the lookup, then the publish
        await a.sync()
        await b.sync()
        # the message reaches b's subscriber connection; wait until it did
        for _ in range(1000):
            if flushed:
                break
            await self.redis.command("PING")
        self.assertEqual(flushed, [AE])

    async def test_behind_a_queue_a_notification_waits_its_turn(self) -> None:
        """Notifications already wait for an originator connected to another node: a new
        one joins the queue (not its poa, not the relay: order) and that node is told to
        deliver the queue."""
        from tests.test_poa import FakeConnector

        flushed: list[str] = []
        a, a_map = await self.node("a")
        b, b_map = await self.node("b", flush=flushed.append)
        connection = FakeConnection(AE)
        b_map.bind(AE, connection)
        await b.sync()
        http = FakeConnector("http")
        chain = PoaChain(a_map, self.clock, [http], timeout=5, cluster=a, pad_failures=False)
        chain.queue.enqueue(AE, notify("old"), 3600.0, 0.0)
        poa = ("http://device.example/notify",)
        response = await chain.send(AE, notify("new"), poa=poa, store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["old", "new"])
        self.assertEqual((http.calls, connection.sent), ([], []))
        for _ in range(1000):
            if flushed:
                break
            await self.redis.command("PING")
        self.assertEqual(flushed, [AE])

    async def test_malformed_messages_are_dropped(self) -> None:
        a, a_map = await self.node("a")
        for junk in (b"", b"Z\0x", b"Q\0only", b"R\0x", b"T\0x"):
            a._message(b"ch", junk)
        chain = PoaChain(a_map, self.clock, timeout=5, cluster=a, pad_failures=False)
        self.assertEqual((await chain.send("Cx", notify(), store=True)).rsc, RSC.ACCEPTED)
        self.flushLoggedErrors()


def record_messages(node: ClusterNode) -> list[bytes]:
    """The messages ``node`` receives on its channel, as they come (it still handles them)."""
    received: list[bytes] = []
    handle = node.subscriber._on_message
    assert handle is not None

    def recording(channel: bytes, data: bytes) -> None:
        received.append(data)
        handle(channel, data)

    node.subscriber._on_message = recording
    return received


class BatchedRelayTests(RedisTestCase):
    """The relays of one turn go together: one RELAY for them, one message a holding node,
    the answers back in one message a turn; each request keeps its own rqi, timeout and
    outcome."""

    async def two_nodes(
        self, **kw: Any
    ) -> tuple[PoaChain, ClusterNode, ClusterNode, FakeConnection, list[bytes], list[bytes]]:
        a, a_map = await self.node("a", **kw)
        b, b_map = await self.node("b", **kw)
        # (no clock: the connection never times out by itself, an answer not given is lost)
        connection = FakeConnection(AE)
        b_map.bind(AE, connection)
        await b.sync()
        chain = PoaChain(a_map, self.clock, timeout=5, cluster=a, pad_failures=False)
        return chain, a, b, connection, record_messages(a), record_messages(b)

    async def arrivals(self, connection: FakeConnection, count: int) -> None:
        for _ in range(2000):
            if len(connection.sent) >= count:
                return
            await self.redis.command("PING")
        self.fail(f"{len(connection.sent)} of {count} requests arrived")

    async def answers(self, node: ClusterNode, received: list[bytes], kind: bytes) -> None:
        for _ in range(2000):
            if any(data.startswith(kind) for data in received):
                return
            await self.redis.command("PING")
        self.fail(f"no {kind!r} message reached node {node.node_name}")

    async def test_a_turns_requests_for_one_node_go_in_one_message(self) -> None:
        from acmews.cluster.node import RELAY

        chain, a, _b, connection, _a_got, b_got = await self.two_nodes()
        real = a.commands.eval
        relays: list[int] = []

        def counting(script: Any, keys: Any, args: Any) -> Deferred[Any]:
            if script is RELAY:
                relays.append(len(keys))
            return real(script, keys, args)

        a.commands.eval = counting  # type: ignore[method-assign]
        sends = [chain.send(AE, notify(f"n{i}"), store=True) for i in range(5)]
        await self.arrivals(connection, 5)
        self.assertEqual(relays, [5])  # one round trip to Redis for the five
        self.assertEqual([data[:2] for data in b_got], [b"B\0"])  # one message to b
        self.assertEqual(connection.rqis(), [f"n{i}" for i in range(5)])
        self.assertEqual([timeout for _, timeout, _ in connection.sent], [5] * 5)
        for index in range(5):
            connection.answer(index)
        for sent in sends:
            self.assertEqual((await sent).rsc, RSC.OK)

    async def test_answers_come_back_together_each_to_its_request(self) -> None:
        _chain, a, b, connection, a_got, _b_got = await self.two_nodes()
        sends = [a.relay(AE, notify(f"n{i}"), 5) for i in range(4)]
        await self.arrivals(connection, 4)
        # answered in another order, each with a content of its own, in one turn of b's
        for index in (2, 0, 3, 1):
            request, _, d = connection.sent[index]
            d.callback(Response(RSC.OK, request.rqi, "4", {"n": index}))
        responses = [await sent for sent in sends]
        self.assertEqual(
            [(r.rqi, r.pc) for r in responses], [(f"n{i}", {"n": i}) for i in range(4)]
        )
        self.assertEqual([data[:2] for data in a_got], [b"A\0"])  # one message back
        self.assertEqual((a.counts["relayed"], b.counts["served"]), (4, 4))

    async def test_a_lost_answer_sends_that_request_alone_to_the_queue(self) -> None:
        chain, _a, _b, connection, _a_got, _b_got = await self.two_nodes()
        sends = [chain.send(AE, notify(f"n{i}"), store=True) for i in range(3)]
        await self.arrivals(connection, 3)
        connection.answer(0)
        connection.answer(2)  # n1's answer never comes
        self.assertEqual((await sends[0]).rsc, RSC.OK)
        self.assertEqual((await sends[2]).rsc, RSC.OK)
        self.assertFalse(sends[1].called)
        self.clock.advance(5)
        self.assertEqual((await sends[1]).rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])

    async def test_order_per_originator_across_messages(self) -> None:
        """More relays in a turn than go in one message: several messages, in order."""
        chain, _a, _b, connection, _a_got, b_got = await self.two_nodes(relay_batch=3)
        sends = [chain.send(AE, notify(f"n{i}"), store=True) for i in range(10)]
        await self.arrivals(connection, 10)
        self.assertEqual([data[:2] for data in b_got], [b"B\0"] * 4)
        self.assertEqual(connection.rqis(), [f"n{i}" for i in range(10)])
        for index in range(10):
            connection.answer(index)
        for sent in sends:
            self.assertEqual((await sent).rsc, RSC.OK)

    async def test_each_request_keeps_its_own_timeout(self) -> None:
        _chain, a, _b, connection, _a_got, _b_got = await self.two_nodes()
        long = a.relay(AE, notify("n1"), 10)
        short = a.relay(AE, notify("n2"), 5)
        await self.arrivals(connection, 2)
        self.assertEqual([timeout for _, timeout, _ in connection.sent], [10, 5])
        self.clock.advance(4.9)
        self.assertFalse(short.called)
        self.clock.advance(0.1)
        failure = await self.assertFailure(short, RequestTimeout)
        self.assertIn("no response within 5 s (relayed to node b)", failure.reason)
        self.assertEqual(failure.rqi, "n2")
        self.assertFalse(long.called)
        connection.answer(0)
        self.assertEqual((await long).rqi, "n1")

    async def test_an_answer_waiting_to_be_read_when_the_timeout_fires_counts(self) -> None:
        """Twisted runs its timers before it reads what came in: an answer that reached
        this node in time but was not read yet (a busy node) is still taken, not queued
        (which would deliver the notification twice)."""
        chain, a, b, connection, a_got, _b_got = await self.two_nodes()
        sent = chain.send(AE, notify("n1"), store=True)
        await self.arrivals(connection, 1)
        a.subscriber._protocol.transport.pauseProducing()  # a reads nothing meanwhile
        connection.answer()
        await b.sync()  # (b's answers go at the end of its turn; wait for that turn)
        while b._replies or b._replies_call is not None:
            await b.sync()
        await b.sync()  # b's PUBLISH is done: the answer waits for a
        self.assertEqual(a_got, [])
        self.clock.advance(5)  # a's timer first
        a.subscriber._protocol.transport.resumeProducing()
        self.assertEqual((await sent).rsc, RSC.OK)
        self.assertEqual(chain.queued(AE), [])

    async def test_without_the_marker_the_catch_up_ends_after_its_grace(self) -> None:
        """Redis does not hand the marker over in time: the relay times out then."""
        chain, a, _b, connection, _a_got, _b_got = await self.two_nodes()
        sent = chain.send(AE, notify("n1"), store=True)
        await self.arrivals(connection, 1)
        a.subscriber._protocol.transport.pauseProducing()
        self.clock.advance(5)
        await a.sync()
        self.assertFalse(sent.called)
        self.clock.advance(a.catch_up)
        self.assertEqual((await sent).rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])
        a.subscriber._protocol.transport.resumeProducing()

    async def test_send_then_relays_and_falls_through_per_request(self) -> None:
        """The fan-out's way (send_then): relayed, answered or, unanswered, queued."""
        chain, _a, _b, connection, _a_got, _b_got = await self.two_nodes()
        outcomes: dict[str, Any] = {}
        for rqi in ("n0", "n1"):
            chain.send_then(
                AE,
                notify(rqi),
                lambda result, rqi=rqi: outcomes.setdefault(rqi, result),
                store=True,
            )
        await self.arrivals(connection, 2)
        connection.answer(0)
        for _ in range(2000):
            if "n0" in outcomes:
                break
            await self.redis.command("PING")
        self.assertEqual(outcomes["n0"].rsc, RSC.OK)
        self.clock.advance(5)
        for _ in range(2000):
            if "n1" in outcomes:
                break
            await self.redis.command("PING")
        self.assertEqual(outcomes["n1"].rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])
        self.assertEqual(chain.counts.delivered, 1)

    async def test_malformed_batches_are_dropped(self) -> None:
        a, a_map = await self.node("a")
        for junk in (b"B\0", b"B\0x", b"B\0x\0bad", b"B\0x\0b\099\0short", b"A\0x\0ok"):
            a._message(b"ch", junk)
        a._message(b"ch", b"A\0x\0ok\0999\0short")
        chain = PoaChain(a_map, self.clock, timeout=5, cluster=a, pad_failures=False)
        self.assertEqual((await chain.send("Cx", notify(), store=True)).rsc, RSC.ACCEPTED)
        self.flushLoggedErrors()


class Recorder(Service):
    def __init__(self) -> None:
        self.events: list[str] = []

    def startService(self) -> None:
        super().startService()
        self.events.append("start")

    def stopService(self) -> None:
        super().stopService()
        self.events.append("stop")


class LeaderTests(RedisTestCase):
    async def test_one_leader_runs_the_singletons(self) -> None:
        on_a, on_b = Recorder(), Recorder()
        a, _ = await self.node("a", singletons=Singletons([on_a]))
        b, _ = await self.node("b", singletons=Singletons([on_b]))
        await b.refresh()
        self.assertEqual((a.leader, b.leader), (True, False))
        self.assertEqual((on_a.events, on_b.events), (["start"], []))
        ttl = await self.redis.command("PTTL", self.key("leader"))
        self.assertGreater(ttl, 0)
        self.assertLessEqual(ttl, 12_000)

    async def test_another_node_takes_over_when_the_lease_lapses(self) -> None:
        on_b = Recorder()
        a, _ = await self.node("a")
        b, _ = await self.node("b", singletons=Singletons([on_b]))
        # a is killed: it renews nothing any more, and its lease lapses
        await a.commands.stop()
        await self.redis.command("DEL", self.key("leader"))
        await b.refresh()
        self.assertTrue(b.leader)
        self.assertEqual(on_b.events, ["start"])

    async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_lapses(self) -> None:
        on_a = Recorder()
        a, _ = await self.node("a", singletons=Singletons([on_a]))
        self.assertTrue(a.leader)
        await a.commands.stop()  # Redis unreachable from a
        self.clock.advance(a.leader_lease - a.renew)
        self.assertFalse(a.leader)
        self.assertEqual(on_a.events, ["start", "stop"])

    async def test_a_leader_that_lost_its_lease_steps_down(self) -> None:
        on_a = Recorder()
        a, _ = await self.node("a", singletons=Singletons([on_a]))
        await self.redis.command("SET", self.key("leader"), "b other")
        await a.refresh()
        self.assertFalse(a.leader)
        self.assertEqual(on_a.events, ["start", "stop"])

    async def test_a_stopping_leader_hands_the_lease_back(self) -> None:
        a, _ = await self.node("a")
        b, _ = await self.node("b")
        await a.stopService()
        await b.refresh()
        self.assertTrue(b.leader)


class RedisDownTests(TestCase):
    """Redis stopped and started again (a real redis-server of the test's own)."""

    skip = SKIP_SERVER
    timeout = 30

    async def test_a_node_serves_its_own_queues_for_others_and_recovers(self) -> None:
        from twisted.internet import reactor

        from acmews.cluster import RedisURL

        redis = PrivateRedis(self)
        await redis.start()
        clock = Clock()  # the leases' timers: only the reconnecting runs on the reactor
        url = RedisURL.parse(redis.url)
        nodes = []
        with capturedLogs() as events:
            for name in ("a", "b"):
                originators = FakeOriginatorMap()
                node = ClusterNode(url, name, originators, reactor, clock=clock, retry=0.05)
                node.startService()
                self.addCleanup(node.stopService)
                await node.when_available()
                nodes.append((node, originators))
            (a, a_map), (b, b_map) = nodes
            local = FakeConnection("Clocal", clock=clock)
            a_map.bind("Clocal", local)
            remote = FakeConnection(AE, clock=clock)
            b_map.bind(AE, remote)
            await b.sync()
            chain = PoaChain(a_map, clock, timeout=5, cluster=a, pad_failures=False)

            down = [a.when_unavailable(), b.when_unavailable()]
            await redis.stop()
            for d in down:
                await d
            await a.commands.after_failed_attempts(3)  # it kept trying, and said so once

            # its own connections: served as ever
            sent = chain.send("Clocal", Request(Operation.NOTIFY, "Clocal", "l1", fr="/id-in"))
            local.answer()
            self.assertEqual((await sent).rsc, RSC.OK)
            # another node's originator: to the queue, at once
            self.assertEqual((await chain.send(AE, notify("n1"), store=True)).rsc, RSC.ACCEPTED)
            self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])
            self.assertEqual(remote.sent, [])

            await redis.start()  # empty: it lost every key
            await a.when_available()
            await b.when_available()
            # the bindings are back, and relaying with them
            self.assertEqual(await a.holder(AE), "b")
            self.assertEqual(await b.holder("Clocal"), "a")
            sent = chain.send(AE, Request(Operation.RETRIEVE, "x", "r1", fr="/id-in"))
            while not remote.sent:
                await b.sync()
            remote.answer()
            self.assertEqual((await sent).rsc, RSC.OK)

        lines = [formatEvent(e) for e in events]
        for node in ("a", "b"):
            unreachable = [
                line
                for line in lines
                if "is unreachable" in line and f"node {node} serves" in line
            ]
            back = [line for line in lines if f"node {node} reaches Redis" in line]
            self.assertEqual(len(unreachable), 1, lines)
            self.assertEqual(len(back), 2, lines)  # at start, and once it was back


class StatusCommandTests(RedisTestCase):
    """``acmews cluster``: the nodes, the leader, the originators per node in one command."""

    async def test_nodes_leader_and_originators(self) -> None:
        import io
        import uuid

        from twisted.internet import reactor

        from acmews.cli import run

        cse = f"/id-{uuid.uuid4().hex[:12]}"
        self.prefix = f"acmews:{cse}:"  # the keys of that CSE's cluster
        a, a_map = await self.node("a")
        b, b_map = await self.node("b")
        await self.node("c")
        for name in ("Cone", "Ctwo"):
            a_map.bind(name, FakeConnection(name))
        b_map.bind("Cthree", FakeConnection("Cthree"))
        await a.sync()
        await b.sync()
        await self.redis.command("DEL", self.key("node:c"))  # c's lease lapsed
        out, err = io.StringIO(), io.StringIO()
        code = await run(
            reactor,
            ["cluster", self.url.description, "--cse-id", cse, "--originators", "5"],
            out,
            err,
        )
        self.assertEqual((code, err.getvalue()), (0, ""))
        self.assertEqual(
            out.getvalue().splitlines()[1:],
            [
                "leader: a",
                "nodes: 2 up, 1 down",
                "  a  leader               2 originators",
                "    Cone",
                "    Ctwo",
                "  b                       1 originator",
                "    Cthree",
                "  c  down (lease lapsed)",
            ],
        )

    async def test_redis_unreachable_is_one_line_and_status_2(self) -> None:
        import io
        import socket

        from twisted.internet import reactor

        from acmews.cli import run

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there once closed
        out, err = io.StringIO(), io.StringIO()
        code = await run(reactor, ["cluster", f"redis://:pw@127.0.0.1:{port}"], out, err)
        self.assertEqual(code, 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn("cannot reach", err.getvalue())
        self.assertNotIn("pw", err.getvalue())


class SweepTests(RedisTestCase):
    async def test_the_leader_forgets_dead_nodes_and_their_bindings(self) -> None:
        a, _ = await self.node("a")
        b, b_map = await self.node("b")
        b_map.bind(AE, FakeConnection(AE))
        b_map.bind("Cmoved", FakeConnection("Cmoved"))
        await b.sync()
        # Cmoved went to a meanwhile; then b died and its lease lapsed
        await self.redis.command("SET", self.key("o:Cmoved"), b"a x 1")
        await b.commands.stop()
        await self.redis.command("DEL", self.key("node:b"))
        await a.refresh()  # a leads: its renewal sweeps
        self.assertEqual(await self.redis.command("EXISTS", self.key("o:" + AE)), 0)
        self.assertEqual(await self.redis.command("GET", self.key("o:Cmoved")), b"a x 1")
        self.assertEqual(await self.redis.command("EXISTS", self.key("held:b")), 0)
        self.assertEqual(await self.redis.command("SMEMBERS", self.key("nodes")), [b"a"])

    async def test_a_sweep_takes_a_batch_at_a_time(self) -> None:
        a, _ = await self.node("a")
        b, b_map = await self.node("b")
        for i in range(5):
            b_map.bind(f"C{i}", FakeConnection(f"C{i}"))
        await b.sync()
        await b.commands.stop()
        await self.redis.command("DEL", self.key("node:b"))
        a.sweep_batch = 2
        await a.refresh()
        self.assertEqual(await self.redis.command("SCARD", self.key("held:b")), 3)
        await a.refresh()
        await a.refresh()
        self.assertEqual(await self.redis.command("EXISTS", self.key("held:b")), 0)
        self.assertEqual(await self.redis.command("KEYS", self.key("o:*")), [])


class RedisHangsTests(TestCase):
    """A Redis that stops answering (CLIENT PAUSE on one of the test's own)."""

    skip = SKIP_SERVER
    timeout = 30

    async def test_a_redis_that_hangs_costs_no_more_than_the_senders_timeout(self) -> None:
        """... and the catch-up's grace (a relay that times out first waits that long at
        most for what Redis already has for its node; a hung Redis hands nothing over)."""
        from twisted.internet import reactor

        from acmews.cluster import RedisClient, RedisURL
        from tests.redis_helpers import connected

        redis = PrivateRedis(self)
        await redis.start()
        clock = Clock()
        url = RedisURL.parse(redis.url)
        a_map = FakeOriginatorMap()
        a = ClusterNode(url, "a", a_map, reactor, clock=clock)
        a.startService()
        self.addCleanup(a.stopService)
        await a.when_available()
        raw = await connected(RedisClient(url, reactor))
        self.addCleanup(raw.stop)
        await raw.command("CLIENT", "PAUSE", 300, "ALL")  # Redis answers nothing meanwhile
        chain = PoaChain(a_map, clock, timeout=5, cluster=a, pad_failures=False)
        sent = chain.send(AE, notify("n1"), store=True)
        clock.advance(5)
        self.assertFalse(sent.called)
        clock.advance(a.catch_up)
        self.assertEqual((await sent).rsc, RSC.ACCEPTED)
        retrieve = chain.send(AE, Request(Operation.RETRIEVE, "x", "r1", fr="/id-in"))
        clock.advance(5)
        clock.advance(a.catch_up)
        failure = await self.assertFailure(retrieve, RequestTimeout)
        self.assertIn("no response within 5 s (directory)", failure.reason)


class DefaultNodeNameTests(SynchronousTestCase):
    def test_the_host_name_and_the_first_listeners_port(self) -> None:
        import socket

        from acmews.config import Config
        from acmews.server import default_node_name

        config = Config(listen=("unix:/tmp/x.sock", "tcp:8181:interface=127.0.0.1"))
        name = default_node_name(config)
        self.assertTrue(name.endswith(":8181"), name)
        self.assertTrue(name.startswith(socket.gethostname()[:10].replace(" ", "-")), name)
        from acmews.cluster import valid_node_name

        self.assertTrue(valid_node_name(name))


class LeaderStopRaceTests(RedisTestCase):
    async def test_a_node_stopped_while_it_takes_the_lease_starts_nothing(self) -> None:
        on_a = Recorder()
        a, _ = await self.node("a")
        b, _ = await self.node("b", singletons=Singletons([on_a]))
        await a.stopService()  # the lease is free
        refreshing = b.refresh()  # b asks for it ...
        stopping = b.stopService()  # ... and is stopped before the answer comes
        await refreshing
        await stopping
        self.assertEqual(on_a.events, [])
        self.assertFalse(b.leader)
        self.assertIsNone(await self.redis.command("GET", self.key("leader")))


class StoppingTests(RedisTestCase):
    async def test_a_relay_in_flight_when_the_node_stops_is_queued(self) -> None:
        a, a_map = await self.node("a")
        b, b_map = await self.node("b")
        connection = Arrivals(AE, clock=self.clock)
        b_map.bind(AE, connection)
        await b.sync()
        chain = PoaChain(a_map, self.clock, timeout=5, cluster=a, pad_failures=False)
        arrived = connection.arrival()
        sent = chain.send(AE, notify("n1"), store=True)
        await arrived
        await a.sync()  # (the relay waits for b's answer)
        await a.stopService()
        self.assertEqual((await sent).rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n1"])
