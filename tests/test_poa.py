"""The poa chain (order, first success, queue) and its HTTP and WebSocket connectors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import cbor2
from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request as WebRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from acmews import testing
from acmews.codes import RSC, Operation
from acmews.errors import NotAcceptable, RequestTimeout, TargetNotReachable
from acmews.interfaces import (
    IConnection,
    IOriginatorMap,
    IOriginatorObserver,
    IPoaConnector,
    IRequestSender,
)
from acmews.poa import (
    HttpConnector,
    INotificationQueue,
    MemoryNotificationQueue,
    PoaChain,
    WebSocketConnector,
    http_url,
)
from acmews.poa.queue import QueueFull
from acmews.poa.websocket import CLOSE_WAIT
from acmews.primitive import Request, Response
from acmews.testing import FakeOriginatorMap as FakeMap
from acmews.timestamps import parse_expiry

AE = "Cae1"


def notify(rqi: str = "n1", **kw: Any) -> Request:
    return Request(Operation.NOTIFY, AE, rqi, fr="/id-in", pc={"m2m:sgn": {"sur": "sub1"}}, **kw)


def retrieve(rqi: str = "r1") -> Request:
    return Request(Operation.RETRIEVE, "cse-in/ae1", rqi, fr="/id-in")


def ok(request: Request, rsc: int = RSC.OK) -> Response:
    return Response(rsc, request.rqi)


class FakeConnection(testing.FakeConnection):
    """acmews.testing's, bound to the AE by default."""

    def __init__(
        self, originator: str | None = AE, peer: str = "peer", clock: Clock | None = None
    ) -> None:
        super().__init__(originator, peer, clock)


@implementer(IPoaConnector)
class FakeConnector:
    """Records calls; each returns a Deferred the test fires (or a preset result)."""

    def __init__(self, *schemes: str) -> None:
        self.schemes = schemes
        self.calls: list[tuple[str, Request, float, Deferred[Response]]] = []
        self.cancelled: list[str] = []
        self.results: list[Response | Exception] = []

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        d: Deferred[Response] = Deferred(lambda _: self.cancelled.append(url))
        self.calls.append((url, request, timeout, d))
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
        return d

    def urls(self) -> list[str]:
        return [c[0] for c in self.calls]


class ChainTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.map = FakeMap()
        self.ws = FakeConnector("ws", "wss")
        self.http = FakeConnector("http", "https")
        self.chain = PoaChain(self.map, self.clock, [self.ws, self.http])
        self.addCleanup(self.check_clean)

    def check_clean(self) -> None:
        self.chain.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.map.observers, [])


class ProvidersTests(ChainTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IRequestSender, self.chain))
        self.assertTrue(verifyObject(IOriginatorObserver, self.chain))
        self.assertTrue(
            verifyObject(IPoaConnector, HttpConnector(self.clock, StubTreq(Resource())))
        )
        self.assertTrue(
            verifyObject(
                IPoaConnector, WebSocketConnector(lambda *a: Deferred(), "/id-in", self.clock)
            )
        )
        for fake, iface in (
            (FakeConnection(), IConnection),
            (self.map, IOriginatorMap),
            (self.ws, IPoaConnector),
        ):
            self.assertTrue(verifyObject(iface, fake))

    def test_registers_as_observer(self) -> None:
        self.assertEqual(self.map.observers, [self.chain])

    def test_add_connector_registers_each_scheme(self) -> None:
        mqtt = FakeConnector("mqtt", "mqtts")
        self.chain.add_connector(mqtt)
        self.assertIs(self.chain.connector_for("mqtt"), mqtt)
        self.assertIs(self.chain.connector_for("MQTTS"), mqtt)
        mqtt.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["mqtt://broker/ae1"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(mqtt.urls(), ["mqtt://broker/ae1"])

    def test_connectors_as_mapping(self) -> None:
        chain = PoaChain(self.map, self.clock, {"coap": self.http})
        self.addCleanup(chain.stop)
        self.assertIs(chain.connector_for("coap"), self.http)
        self.assertIsNone(chain.connector_for("http"))


class OrderTests(ChainTestCase):
    def test_live_connection_first(self) -> None:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        request = notify()
        d = self.chain.send(AE, request, ["ws://h:1", "http://h:2"])
        self.assertNoResult(d)
        self.assertEqual(conn.sent[0][:2], (request, 10.0))
        conn.answer()
        self.assertEqual(self.successResultOf(d), ok(request))
        self.assertEqual(self.ws.calls, [])
        self.assertEqual(self.http.calls, [])

    def test_live_connection_failure_moves_on_to_poa_in_order(self) -> None:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        request = notify()
        d = self.chain.send(AE, request, ["http://h:2/a", "ws://h:1"])
        conn.sent[0][2].errback(TargetNotReachable("connection lost"))
        self.assertEqual(self.http.urls(), ["http://h:2/a"])
        self.assertEqual(self.ws.calls, [])
        self.http.calls[0][3].errback(TargetNotReachable("refused"))
        self.clock.advance(10)  # a failed step is reported once its timeout has passed
        self.assertEqual(self.ws.urls(), ["ws://h:1"])
        self.assertEqual(self.ws.calls[0][1:3], (request, 10.0))
        self.ws.calls[0][3].callback(ok(request))
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_first_success_stops_the_chain(self) -> None:
        self.ws.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2", "wss://h:3"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(self.ws.urls(), ["ws://h:1"])
        self.assertEqual(self.http.calls, [])

    def test_error_rsc_ends_the_chain_as_is(self) -> None:
        answer = Response(RSC.NOT_FOUND, "n1", pc={"m2m:dbg": "no such thing"})
        self.ws.results.append(answer)
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2"], store=True)
        self.assertIs(self.successResultOf(d), answer)
        self.assertEqual(self.http.calls, [])
        self.assertEqual(self.chain.queued(AE), [])

    def test_error_rsc_on_live_connection_ends_the_chain(self) -> None:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        d = self.chain.send(AE, notify(), ["ws://h:1"])
        conn.answer(rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assertEqual(self.successResultOf(d).rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assertEqual(self.ws.calls, [])

    def test_ws_default_opens_no_connection(self) -> None:
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["ws://default", "http://h:2"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(self.ws.calls, [])
        self.assertEqual(self.http.urls(), ["http://h:2"])

    def test_ws_default_alone_is_not_reachable(self) -> None:
        f = self.failureResultOf(self.chain.send(AE, retrieve(), ["WS://default/"]))
        f.trap(TargetNotReachable)
        self.assertEqual(f.value.rsc, RSC.TARGET_NOT_REACHABLE)
        self.assertIn("ws://default", f.value.reason.lower())
        self.assertEqual(f.value.rqi, "r1")
        self.assertEqual(self.ws.calls, [])

    def test_transport_failures_move_on_and_reason_lists_them(self) -> None:
        self.ws.results.append(TargetNotReachable("refused"))
        self.http.results.append(RequestTimeout("slow"))
        d = self.chain.send(AE, retrieve(), ["ws://h:1", "mqtt://b", "http://h:2"])
        self.clock.advance(10)
        self.clock.advance(10)
        f = self.failureResultOf(d, TargetNotReachable)
        reason = f.value.reason
        for part in ("no live connection", "ws://h:1", "mqtt://b", "http://h:2"):
            self.assertIn(part, reason)
        # refused and silent read the same to the client: no port-scan oracle
        self.assertIn("ws://h:1: not reachable", reason)
        self.assertIn("http://h:2: not reachable", reason)
        for detail in ("refused", "slow", "4008"):
            self.assertNotIn(detail, reason)

    def test_unexpected_exception_moves_on_and_is_logged(self) -> None:
        self.ws.results.append(ConnectionRefusedError())
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2"])
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionRefusedError)), 1)

    def test_step_that_never_answers_times_out_and_moves_on(self) -> None:
        chain = PoaChain(self.map, self.clock, [self.ws, self.http], timeout=5)
        self.addCleanup(chain.stop)
        d = chain.send(AE, notify(), ["ws://h:1", "http://h:2"])
        self.assertEqual(self.ws.calls[0][2], 5)
        self.clock.advance(4.9)
        self.assertEqual(self.http.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ws.cancelled, ["ws://h:1"])
        self.assertEqual(self.http.urls(), ["http://h:2"])
        self.clock.advance(5)
        f = self.failureResultOf(d, TargetNotReachable)
        self.assertIn("ws://h:1: not reachable", f.value.reason)

    def test_live_connection_that_never_answers_times_out(self) -> None:
        conn = FakeConnection(clock=self.clock)
        self.map.bind(AE, conn)
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["http://h:2"])
        self.assertEqual(conn.sent[0][1], 10)  # the chain's timeout, which the connection keeps
        self.assertEqual(self.http.calls, [])
        self.clock.advance(10)
        self.assertEqual(conn.timed_out, [conn.sent[0][0]])
        self.assertEqual(self.http.urls(), ["http://h:2"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_live_connection_failing_with_any_exception_moves_on(self) -> None:
        # a connection reset is not a oneM2M error: the chain must still go on to the poa
        # (it used to fail with NoCurrentExceptionError from log.failure outside an except)
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["http://h:2"])
        conn.sent[0][2].errback(ConnectionResetError("reset by peer"))
        self.assertEqual(self.http.urls(), ["http://h:2"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionResetError)), 1)

    def test_cancel_cancels_step_in_flight_and_ends_chain(self) -> None:
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2"], store=True)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.ws.cancelled, ["ws://h:1"])
        self.assertEqual(self.http.calls, [])
        self.assertEqual(self.chain.queued(AE), [])

    def test_cancel_on_live_connection(self) -> None:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        d = self.chain.send(AE, retrieve(), ["ws://h:1"])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(conn.cancelled), 1)
        self.assertEqual(self.ws.calls, [])

    def test_stop_cancels_sends_in_flight(self) -> None:
        d = self.chain.send(AE, notify(), ["ws://h:1"])
        self.chain.stop()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.ws.cancelled, ["ws://h:1"])


class UrlTargetTests(ChainTestCase):
    def test_ws_url_goes_to_connector_and_response_is_awaited(self) -> None:
        request = notify()
        d = self.chain.send("ws://127.0.0.1:9000", request, store=True)
        self.assertNoResult(d)
        self.assertEqual(self.ws.urls(), ["ws://127.0.0.1:9000"])
        self.ws.calls[0][3].callback(ok(request, RSC.NOT_FOUND))
        self.assertEqual(self.successResultOf(d).rsc, RSC.NOT_FOUND)

    def test_http_url(self) -> None:
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send("http://host/path", notify(), ["ws://x:1"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(self.http.urls(), ["http://host/path"])
        self.assertEqual(self.ws.calls, [])

    def test_url_target_failure_is_not_queued(self) -> None:
        self.ws.results.append(TargetNotReachable("refused"))
        d = self.chain.send("ws://127.0.0.1:9000", notify(), store=True)
        self.clock.advance(10)
        self.failureResultOf(d, TargetNotReachable)
        self.assertEqual(self.chain.queued("ws://127.0.0.1:9000"), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_url_target_timeout_reads_like_a_refusal(self) -> None:
        d = self.chain.send("http://host/path", notify())
        self.clock.advance(10)
        silent = self.failureResultOf(d, TargetNotReachable).value
        self.http.results.append(TargetNotReachable("http://host/path: connection refused"))
        d = self.chain.send("http://host/path", notify())
        self.clock.advance(10)
        refused = self.failureResultOf(d, TargetNotReachable).value
        self.assertEqual((silent.rsc, silent.reason), (refused.rsc, refused.reason))
        self.assertEqual(silent.rsc, RSC.TARGET_NOT_REACHABLE)

    def test_url_failures_read_the_same_whatever_the_cause(self) -> None:
        for failure in (TargetNotReachable("connection refused"), ConnectionRefusedError()):
            self.ws.results.append(failure)
            d = self.chain.send("ws://h:1", notify())
            self.clock.advance(10)
            f = self.failureResultOf(d, TargetNotReachable)
            self.assertEqual(f.value.reason, "ws://h:1 is not reachable")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionRefusedError)), 1)

    def test_an_error_not_about_reaching_it_ends_a_url_but_not_a_poa_entry(self) -> None:
        too_large = NotAcceptable("too large for it")
        self.ws.results.append(too_large)
        d = self.chain.send("ws://h:1", notify())
        self.clock.advance(10)
        f = self.failureResultOf(d, NotAcceptable)
        self.assertIs(f.value, too_large)
        self.ws.results.append(NotAcceptable("too large for it"))
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2"])
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_url_with_unknown_scheme(self) -> None:
        self.failureResultOf(self.chain.send("coap://h/x", notify()), TargetNotReachable)
        self.failureResultOf(self.chain.send("ws://default", notify()), TargetNotReachable)
        self.assertEqual(self.ws.calls, [])

    def test_live_connection_map_not_consulted_for_url(self) -> None:
        conn = FakeConnection(originator="ws://h:1")
        self.map.bind("ws://h:1", conn)
        self.ws.results.append(Response(RSC.OK, "n1"))
        self.successResultOf(self.chain.send("ws://h:1", notify()))
        self.assertEqual(conn.sent, [])


class QueueTests(ChainTestCase):
    def test_notify_queued_and_delivered_in_order_on_connect(self) -> None:
        requests = [notify(f"n{i}") for i in range(3)]
        for request in requests:
            d = self.chain.send(AE, request, ["ws://default"], store=True)
            response = self.successResultOf(d)
            self.assertEqual((response.rsc, response.rqi), (RSC.ACCEPTED, request.rqi))
        self.assertEqual(self.chain.queued(AE), requests)
        conn = FakeConnection()
        self.map.bind(AE, conn)
        # one at a time: the next is sent only when the previous one is answered
        self.assertEqual(conn.rqis(), ["n0"])
        conn.answer()
        self.assertEqual(conn.rqis(), ["n0", "n1"])
        conn.answer(rsc=RSC.NOT_FOUND)  # an answer, even an error, counts as delivered
        conn.answer()
        self.assertEqual(conn.rqis(), ["n0", "n1", "n2"])
        self.assertEqual(self.chain.queued(AE), [])

    def test_unreachable_poa_then_queued(self) -> None:
        self.ws.results.append(TargetNotReachable("refused"))
        d = self.chain.send(AE, notify(), ["ws://h:1"], store=True)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d).rsc, RSC.ACCEPTED)
        self.assertEqual(len(self.chain.queued(AE)), 1)

    def test_only_notify_with_store_is_queued(self) -> None:
        f = self.failureResultOf(self.chain.send(AE, retrieve(), store=True), TargetNotReachable)
        self.assertEqual(f.value.rsc, RSC.TARGET_NOT_REACHABLE)
        self.failureResultOf(self.chain.send(AE, notify(), store=False), TargetNotReachable)
        self.assertEqual(self.chain.queued(AE), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_originators_not_flushed(self) -> None:
        self.successResultOf(self.chain.send(AE, notify(), store=True))
        other = FakeConnection("Cother")
        self.map.bind("Cother", other)
        self.assertEqual(other.sent, [])
        self.assertEqual(len(self.chain.queued(AE)), 1)

    def test_connection_lost_mid_flush_keeps_the_rest(self) -> None:
        for i in range(3):
            self.successResultOf(self.chain.send(AE, notify(f"n{i}"), store=True))
        first = FakeConnection(peer="first")
        self.map.bind(AE, first)
        first.answer()
        first.sent[1][2].errback(TargetNotReachable("connection lost"))
        self.assertEqual(first.rqis(), ["n0", "n1"])
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n1", "n2"])
        self.map.unbind(AE, first)
        second = FakeConnection(peer="second")
        self.map.bind(AE, second)
        self.assertEqual(second.rqis(), ["n1"])
        second.answer()
        second.answer()
        self.assertEqual(second.rqis(), ["n1", "n2"])
        self.assertEqual(self.chain.queued(AE), [])

    def test_replaced_connection_mid_flush_resumes_on_new_one(self) -> None:
        for i in range(2):
            self.successResultOf(self.chain.send(AE, notify(f"n{i}"), store=True))
        first = FakeConnection(peer="first")
        self.map.bind(AE, first)
        second = FakeConnection(peer="second")
        self.map.bind(AE, second)  # newest wins; the old one is then closed by the map
        self.assertEqual(second.sent, [])
        first.sent[0][2].errback(TargetNotReachable("closed"))
        self.assertEqual(second.rqis(), ["n0"])
        second.answer()
        second.answer()
        self.assertEqual(self.chain.queued(AE), [])

    def test_flush_timeout_keeps_entry(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.clock.advance(10)
        self.assertEqual(conn.cancelled, [conn.sent[0][0]])
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n0"])

    def test_new_notification_waits_behind_queue_while_flushing(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        conn = FakeConnection()
        self.map.bind(AE, conn)
        d = self.chain.send(AE, notify("n1"), store=True)
        self.assertEqual(self.successResultOf(d).rsc, RSC.ACCEPTED)
        self.assertEqual(conn.rqis(), ["n0"])
        conn.answer()
        self.assertEqual(conn.rqis(), ["n0", "n1"])
        conn.answer()
        # queue empty: the next one goes straight on the live connection, with its answer
        d = self.chain.send(AE, notify("n2"), store=True)
        self.assertNoResult(d)
        conn.answer(rsc=RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_notification_sent_while_the_flush_starts_waits_behind(self) -> None:
        # a peer in this process may answer at once, by having the CSE notify it again
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        conn = FakeConnection()
        again: list[Deferred[Response]] = []
        send = conn.request

        def request(request: Request, timeout: float | None = None) -> Deferred[Response]:
            if not again:
                again.append(self.chain.send(AE, notify("n1"), store=True))
            return send(request, timeout)

        conn.request = request  # type: ignore[method-assign]
        self.map.bind(AE, conn)
        self.assertEqual(self.successResultOf(again[0]).rsc, RSC.ACCEPTED)
        self.assertEqual(conn.rqis(), ["n0"])  # no second flush beside the first
        conn.answer()
        self.assertEqual(conn.rqis(), ["n0", "n1"])
        conn.answer()
        self.assertEqual(self.chain.queued(AE), [])

    def test_new_notification_restarts_stopped_flush(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.clock.advance(10)  # n0 timed out, stays queued, connection still live
        self.successResultOf(self.chain.send(AE, notify("n1"), store=True))
        self.assertEqual(conn.rqis(), ["n0", "n0"])
        conn.answer()
        self.assertEqual(conn.rqis(), ["n0", "n0", "n1"])
        conn.answer()
        self.assertEqual(self.chain.queued(AE), [])

    def test_queue_does_not_block_a_reachable_poa_while_disconnected(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        self.http.results.append(Response(RSC.OK, "n1"))
        d = self.chain.send(AE, notify("n1"), ["http://h:2"], store=True)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n0"])

    def test_bound_drops_oldest(self) -> None:
        chain = PoaChain(self.map, self.clock, queue_size=3)
        self.addCleanup(chain.stop)
        for i in range(5):
            self.successResultOf(chain.send(AE, notify(f"n{i}"), store=True))
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["n2", "n3", "n4"])

    def test_full_queue_drops_expired_before_oldest(self) -> None:
        chain = PoaChain(self.map, self.clock, queue_size=2)
        self.addCleanup(chain.stop)
        self.successResultOf(chain.send(AE, notify("old"), store=True))
        self.successResultOf(chain.send(AE, notify("short", rqet=1000), store=True))
        self.clock.advance(2)
        self.successResultOf(chain.send(AE, notify("new"), store=True))
        self.assertEqual([r.rqi for r in chain.queued(AE)], ["old", "new"])

    def test_stop_keeps_queue_and_cancels_flush(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0"), store=True))
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.chain.stop()
        self.assertEqual(len(conn.cancelled), 1)
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n0"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ExpiryTests(ChainTestCase):
    def connect(self) -> FakeConnection:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        return conn

    def test_default_expiry(self) -> None:
        chain = PoaChain(self.map, self.clock, default_expiry=100, purge_interval=1000)
        self.addCleanup(chain.stop)
        self.successResultOf(chain.send(AE, notify("n0"), store=True))
        self.clock.advance(50)
        self.successResultOf(chain.send(AE, notify("n1"), store=True))
        self.clock.advance(51)  # n0 expired, n1 not
        conn = self.connect()
        self.assertEqual(conn.rqis(), ["n1"])
        conn.answer()

    def test_relative_rqet_int_and_string(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0", rqet=5000), store=True))
        self.successResultOf(self.chain.send(AE, notify("n1", rqet="20000"), store=True))
        self.successResultOf(self.chain.send(AE, notify("n2"), store=True))
        self.clock.advance(10)
        conn = self.connect()
        self.assertEqual(conn.rqis(), ["n1"])
        conn.answer()
        conn.answer()
        self.assertEqual(conn.rqis(), ["n1", "n2"])

    def test_absolute_rqet(self) -> None:
        now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
        self.clock.advance(now)
        self.successResultOf(self.chain.send(AE, notify("n0", rqet="20300101T120030"), store=True))
        self.successResultOf(
            self.chain.send(AE, notify("n1", rqet="20300101T120100,5"), store=True)
        )
        self.clock.advance(45)
        conn = self.connect()
        self.assertEqual(conn.rqis(), ["n1"])
        conn.answer()

    def test_already_expired_is_not_queued(self) -> None:
        self.clock.advance(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
        d = self.chain.send(AE, notify(rqet="20291231T235959"), store=True)
        self.failureResultOf(d, TargetNotReachable)
        self.assertEqual(self.chain.queued(AE), [])

    def test_unreadable_rqet_uses_default(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0", rqet="soon"), store=True))
        self.clock.advance(3599)
        self.assertEqual(len(self.chain.queued(AE)), 1)
        self.clock.advance(61)  # past 3600 s and a purge run
        self.assertEqual(self.chain.queued(AE), [])

    def test_periodic_purge_drops_expired_and_stops_when_empty(self) -> None:
        self.successResultOf(self.chain.send(AE, notify("n0", rqet=30_000), store=True))
        self.successResultOf(self.chain.send(AE, notify("n1", rqet=90_000), store=True))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(self.chain.send("Cother", notify("n2", rqet=30_000), store=True))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer for everything
        self.clock.advance(60)
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n1"])
        self.assertEqual(self.chain.queued("Cother"), [])
        self.clock.advance(60)
        self.assertEqual(self.chain.queued(AE), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_parse_expiry(self) -> None:
        self.assertEqual(parse_expiry(1500, 10.0), 11.5)
        self.assertEqual(parse_expiry("1500", 10.0), 11.5)
        stamp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
        self.assertEqual(parse_expiry("20300102T030405", 0), stamp)
        self.assertEqual(parse_expiry("20300102T030405,250000", 0), stamp + 0.25)
        for bad in (None, True, "tomorrow", "20301302T030405", 1.5, "20300102T030405,x"):
            self.assertIsNone(parse_expiry(bad, 0))


# -- WebSocket connector -------------------------------------------------------------------


class MemoryQueueTests(SynchronousTestCase):
    """The store-and-forward seam on its own: what a durable queue must do too."""

    def setUp(self) -> None:
        self.queue = MemoryNotificationQueue(size=3)

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(INotificationQueue, self.queue))

    def test_take_leaves_the_entry_until_acknowledged(self) -> None:
        self.assertEqual(self.queue.enqueue(AE, notify("n0"), 100.0, 0.0), 1)
        self.assertEqual(self.queue.enqueue(AE, notify("n1"), 100.0, 0.0), 2)
        first = self.queue.take(AE)
        assert first is not None
        self.assertEqual(first.request.rqi, "n0")
        self.assertIs(self.queue.take(AE), first)
        self.queue.acknowledge(AE, first)
        self.queue.acknowledge(AE, first)  # twice: nothing happens
        second = self.queue.take(AE)
        assert second is not None
        self.assertEqual(second.request.rqi, "n1")
        self.assertGreater(second.seq, first.seq)
        self.queue.acknowledge(AE, second)
        self.assertIsNone(self.queue.take(AE))
        self.assertEqual((self.queue.count(AE), self.queue.total()), (0, 0))

    def test_pending_is_per_originator_in_order(self) -> None:
        for rqi, who in (("a", AE), ("b", "Cother"), ("c", AE)):
            self.queue.enqueue(who, notify(rqi), 100.0, 0.0)
        self.assertEqual([e.request.rqi for e in self.queue.pending(AE)], ["a", "c"])
        self.assertEqual([e.request.rqi for e in self.queue.pending("Cother")], ["b"])
        self.assertEqual(self.queue.total(), 3)

    def test_bound_drops_expired_first_then_oldest(self) -> None:
        self.queue.enqueue(AE, notify("old"), 100.0, 0.0)
        self.queue.enqueue(AE, notify("soon"), 5.0, 0.0)
        self.queue.enqueue(AE, notify("mid"), 100.0, 0.0)
        self.queue.enqueue(AE, notify("new"), 100.0, 10.0)  # "soon" has expired by now
        self.assertEqual([e.request.rqi for e in self.queue.pending(AE)], ["old", "mid", "new"])
        self.queue.enqueue(AE, notify("newer"), 100.0, 10.0)  # full: the oldest goes
        self.assertEqual([e.request.rqi for e in self.queue.pending(AE)], ["mid", "new", "newer"])

    def test_purge_expired(self) -> None:
        self.queue.enqueue(AE, notify("a"), 5.0, 0.0)
        self.queue.enqueue("Cother", notify("b"), 50.0, 0.0)
        self.assertEqual(self.queue.purge_expired(5.0), 1)
        self.assertEqual(self.queue.count(AE), 0)
        self.assertEqual(self.queue.count("Cother"), 1)

    def test_size_must_be_positive(self) -> None:
        self.assertRaises(ValueError, MemoryNotificationQueue, 0)


class ChainServiceTests(SynchronousTestCase):
    def test_stopping_the_service_stops_the_chain(self) -> None:
        clock = Clock()
        originators = FakeMap()
        parent = MultiService()
        chain = PoaChain(originators, clock, [FakeConnector("http")])
        chain.setServiceParent(parent)
        parent.startService()
        self.assertEqual(originators.observers, [chain])
        self.successResultOf(chain.send(AE, notify("n0"), store=True))
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the purge timer
        pending = chain.send(AE, notify("n1"), ["http://h:1"])
        parent.stopService()
        self.failureResultOf(pending, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(originators.observers, [])
        self.assertEqual(chain.queued(AE)[0].rqi, "n0")  # the queue is kept

    def test_a_given_queue_is_used(self) -> None:
        queue = MemoryNotificationQueue()
        chain = PoaChain(FakeMap(), Clock(), queue=queue)
        self.addCleanup(chain.stop)
        self.successResultOf(chain.send(AE, notify("n0"), store=True))
        self.assertEqual([e.request.rqi for e in queue.pending(AE)], ["n0"])


class WebSocketConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connects: list[tuple[str, str, Sequence[str], Deferred[IConnection]]] = []
        self.cancelled: list[str] = []
        self.connector = WebSocketConnector(
            self.connect, "/id-in", self.clock, serializations=["cbor", "oneM2M.json"]
        )
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def connect(self, url: str, originator: str, subprotocols: Sequence[str]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(url))
        self.connects.append((url, originator, subprotocols, d))
        return d

    def open(self, request: Request) -> tuple[Deferred[Response], FakeConnection]:
        d = self.connector.send("ws://h:1", request, 7)
        conn = FakeConnection(originator=None)
        self.connects[-1][3].callback(conn)
        return d, conn

    def test_connect_send_response_close(self) -> None:
        request = notify()
        d = self.connector.send("ws://h:1", request, 7)
        url, originator, subprotocols, connecting = self.connects[0]
        self.assertEqual((url, originator), ("ws://h:1", "/id-in"))
        self.assertEqual(list(subprotocols), ["oneM2M.cbor", "oneM2M.json"])
        conn = FakeConnection(originator=None)
        connecting.callback(conn)
        self.assertEqual(conn.sent[0][:2], (request, 7))
        self.assertEqual(conn.closed, [])
        conn.answer(rsc=RSC.NOT_FOUND)
        self.assertEqual(self.successResultOf(d).rsc, RSC.NOT_FOUND)
        self.assertEqual([c for c, _ in conn.closed], [1000])

    def test_timeout_covers_connect_and_answer(self) -> None:
        d = self.connector.send("ws://h:1", notify(), 7)
        self.clock.advance(3)
        conn = FakeConnection(originator=None)
        self.connects[0][3].callback(conn)
        self.assertEqual(conn.sent[0][1], 4)
        conn.answer()
        self.successResultOf(d)

    def test_closed_when_request_fails(self) -> None:
        d, conn = self.open(notify())
        conn.sent[0][2].errback(RequestTimeout("no response"))
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual([c for c, _ in conn.closed], [1000])

    def test_closed_when_cancelled(self) -> None:
        d, conn = self.open(notify())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(conn.cancelled), 1)
        self.assertEqual([c for c, _ in conn.closed], [1000])

    def test_the_step_ends_once_the_connection_is_gone(self) -> None:
        """The chain frees the per-host slot when the step ends: only once the socket is
        closed, so that a peer that answers but never closes cannot pile up connections."""

        class Lingering(FakeConnection):
            def close(self, code: int = 1000, reason: str = "") -> None:
                self.closed.append((code, reason))  # the peer does not answer the close

            def gone(self) -> None:
                FakeConnection.close(self)

        conn = Lingering(originator=None)
        d = self.connector.send("ws://h:1", notify(), 7)
        self.connects[0][3].callback(conn)
        conn.answer()
        self.assertEqual(len(conn.closed), 1)
        self.assertNoResult(d)
        conn.gone()
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        # a close that never completes is waited for CLOSE_WAIT seconds at most
        other = Lingering(originator=None)
        d = self.connector.send("ws://h:1", notify(), 7)
        self.connects[1][3].callback(other)
        other.answer()
        self.clock.advance(CLOSE_WAIT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_connect_failure_is_5103(self) -> None:
        d = self.connector.send("ws://h:1", notify(), 7)
        self.connects[0][3].errback(ConnectionRefusedError())
        f = self.failureResultOf(d, TargetNotReachable)
        self.assertIn("ws://h:1", f.value.reason)

    def test_connect_raising_is_5103(self) -> None:
        def broken(url: str, originator: str, subprotocols: Sequence[str]) -> Deferred[Any]:
            raise ValueError("bad url")

        connector = WebSocketConnector(broken, "/id-in", self.clock)
        self.failureResultOf(connector.send("ws://[", notify(), 7), TargetNotReachable)

    def test_connect_timeout_is_5103(self) -> None:
        d = self.connector.send("ws://h:1", notify(), 7)
        self.clock.advance(7)
        silent = self.failureResultOf(d, TargetNotReachable).value
        d = self.connector.send("ws://h:1", notify(), 7)
        self.connects[1][3].errback(ConnectionRefusedError())
        refused = self.failureResultOf(d, TargetNotReachable).value
        self.assertEqual(silent.reason, refused.reason)  # no port-scan oracle

    def test_cancel_while_connecting(self) -> None:
        d = self.connector.send("ws://h:1", notify(), 7)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.cancelled, ["ws://h:1"])

    def test_in_chain_ws_default_never_connects(self) -> None:
        omap = FakeMap()
        chain = PoaChain(omap, self.clock, [self.connector])
        self.addCleanup(chain.stop)
        d = chain.send(AE, notify(), ["ws://default", "ws://h:1"])
        self.assertEqual([c[0] for c in self.connects], ["ws://h:1"])
        conn = FakeConnection(originator=None)
        self.connects[0][3].callback(conn)
        conn.answer()
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(len(conn.closed), 1)


# -- HTTP connector --------------------------------------------------------------------------


class OneM2MResource(Resource):
    """Records each request and answers as told."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.status = 200
        self.rsc: str | None = "2000"
        self.body = b'{"m2m:ae": {"rn": "ae1"}}'
        self.headers: dict[bytes, bytes] = {}

    def render(self, request: WebRequest) -> bytes:
        def h(name: str) -> str | None:
            v = request.getHeader(name)
            return v.decode() if isinstance(v, bytes) else v

        assert request.method is not None and request.content is not None
        self.seen.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "origin": h("X-M2M-Origin"),
                "ri": h("X-M2M-RI"),
                "rvi": h("X-M2M-RVI"),
                "ctype": h("Content-Type"),
                "accept": h("Accept"),
                "encoding": h("Accept-Encoding"),
                "authorization": h("Authorization"),
                "ec": h("X-M2M-EC"),
                "body": request.content.read(),
            }
        )
        request.setResponseCode(self.status)
        if self.rsc is not None:
            request.setHeader(b"X-M2M-RSC", self.rsc.encode())
            request.setHeader(b"X-M2M-RI", (h("X-M2M-RI") or "").encode())
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.body


class HttpConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = OneM2MResource()
        self.connector = HttpConnector(self.clock, StubTreq(self.resource))
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def test_create_posts_with_ty(self) -> None:
        request = Request(
            Operation.CREATE, "cse-in", "c1", fr="Cae1", ty=2, pc={"m2m:ae": {"api": "Nx"}}
        )
        self.resource.rsc = "2001"
        response = self.successResultOf(self.connector.send("http://h:8080", request, 5))
        seen = self.resource.seen[0]
        self.assertEqual((seen["method"], seen["uri"]), ("POST", "/cse-in"))
        self.assertEqual(seen["ctype"], "application/json;ty=2")
        self.assertEqual(
            (seen["origin"], seen["ri"], seen["rvi"], seen["accept"]),
            ("Cae1", "c1", "4", "application/json"),
        )
        self.assertEqual(json.loads(seen["body"]), {"m2m:ae": {"api": "Nx"}})
        self.assertEqual((response.rsc, response.rqi), (2001, "c1"))
        self.assertEqual(response.pc, {"m2m:ae": {"rn": "ae1"}})

    def test_notify_posts_to_the_poa_itself(self) -> None:
        request = notify()
        self.resource.body = b""
        response = self.successResultOf(
            self.connector.send("http://h:8080/notify/here?x=1", request, 5)
        )
        seen = self.resource.seen[0]
        self.assertEqual((seen["method"], seen["uri"]), ("POST", "/notify/here?x=1"))
        self.assertEqual(seen["ctype"], "application/json")
        self.assertEqual((seen["origin"], seen["ri"]), ("/id-in", "n1"))
        self.assertEqual(json.loads(seen["body"]), {"m2m:sgn": {"sur": "sub1"}})
        self.assertEqual((response.rsc, response.pc), (2000, None))

    def test_a_serialization_indication_chooses_the_body_and_leaves_the_url(self) -> None:
        """TS-0004 7.5.1.2.2 step 2.5: a notification URI ending in ``?ct=cbor`` has its
        notification serialized as CBOR, and the indication is not part of the target (its
        other query parameters are); ``?ct=json`` is JSON. An Event Category goes in
        ``X-M2M-EC`` (TS-0009)."""
        self.resource.body = cbor2.dumps({"m2m:dbg": "ok"})
        self.resource.headers = {b"Content-Type": b"application/cbor"}
        response = self.successResultOf(
            self.connector.send("http://h:8080/n?x=1&ct=cbor", notify(ec=4), 5)
        )
        seen = self.resource.seen[0]
        self.assertEqual(seen["uri"], "/n?x=1")
        self.assertEqual((seen["ctype"], seen["accept"]), ("application/cbor",) * 2)
        self.assertEqual(cbor2.loads(seen["body"]), {"m2m:sgn": {"sur": "sub1"}})
        self.assertEqual(seen["ec"], "4")
        self.assertEqual(response.pc, {"m2m:dbg": "ok"})
        self.resource.body = b""
        self.successResultOf(self.connector.send("http://h:8080/n?ct=json", notify(), 5))
        seen = self.resource.seen[1]
        self.assertEqual(
            (seen["uri"], seen["ctype"], seen["ec"]), ("/n", "application/json", None)
        )
        self.assertEqual(json.loads(seen["body"]), {"m2m:sgn": {"sur": "sub1"}})

    def test_credentials_for_the_poa_only(self) -> None:
        from acmews.poa import read_outbound_credentials

        credentials = read_outbound_credentials(
            ["http://h:8080/notify app:pw", "http://h:8080/notify/b Bearer tb"]
        )
        connector = HttpConnector(self.clock, StubTreq(self.resource), credentials=credentials)
        for url in ("http://h:8080/notify", "http://h:8080/notify/b/c", "http://h:8080/other"):
            self.resource.body = b""
            self.successResultOf(connector.send(url, notify(), 5))
        self.assertEqual(
            [seen["authorization"] for seen in self.resource.seen],
            ["Basic YXBwOnB3", "Bearer tb", None],
        )
        self.assertIsNone(self.connector._credentials)

    def test_retrieve_gets(self) -> None:
        request = Request(Operation.RETRIEVE, "/id-mn/cse-mn/ae1", "g1", fr="/id-in")
        self.successResultOf(self.connector.send("http://h:8080", request, 5))
        seen = self.resource.seen[0]
        self.assertEqual(
            (seen["method"], seen["uri"], seen["body"]), ("GET", "/~/id-mn/cse-mn/ae1", b"")
        )

    def test_update_and_delete(self) -> None:
        update = Request(Operation.UPDATE, "cse-in/ae1", "u1", fr="C1", pc={"m2m:ae": {"lbl": []}})
        delete = Request(Operation.DELETE, "cse-in/ae1", "d1", fr="C1")
        self.successResultOf(self.connector.send("http://h:8080/", update, 5))
        self.successResultOf(self.connector.send("http://h:8080", delete, 5))
        self.assertEqual([s["method"] for s in self.resource.seen], ["PUT", "DELETE"])

    def test_no_rsc_is_not_a_oneM2M_answer(self) -> None:
        # a plain web service (or an internal one reached through a poa): the step fails and
        # nothing of its body is relayed to anyone
        self.resource.rsc = None
        self.resource.body = b'{"secret": "internal token"}'
        for status in (200, 201, 303, 400, 404, 502):
            self.resource.status = status
            f = self.failureResultOf(
                self.connector.send("http://h:8080", retrieve(), 5), TargetNotReachable
            )
            self.assertIn("not a oneM2M endpoint", f.value.reason)
            self.assertNotIn("secret", f.value.reason)

    def test_a_peer_s_bytes_are_no_traceback(self) -> None:
        """Header values that are not UTF-8 are read as latin-1 (Twisted decoded them as UTF-8
        and the step failed with a logged traceback); an X-M2M-RSC that is no oneM2M rsc is
        not a oneM2M answer."""
        self.resource.headers = {b"X-M2M-RI": b"\xff\xfe"}
        response = self.successResultOf(self.connector.send("http://h:8080", retrieve(), 5))
        self.assertEqual((response.rsc, response.rqi), (2000, "\xff\xfe"))
        self.resource.rsc = None
        for rsc in (b"\xff", b"-5", b"999", b"70000", b"9" * 5000):
            self.resource.headers = {b"X-M2M-RSC": rsc}
            f = self.failureResultOf(
                self.connector.send("http://h:8080", retrieve(), 5), TargetNotReachable
            )
            self.assertIn("not a oneM2M endpoint (HTTP 200, unreadable X-M2M-RSC", f.value.reason)
            self.assertLess(len(f.value.reason), 150)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_redirects_are_not_followed(self) -> None:
        self.resource.status = 303
        self.resource.rsc = None
        self.resource.headers = {b"Location": b"http://h:8080/elsewhere"}
        self.failureResultOf(self.connector.send("http://h:8080", retrieve(), 5))
        self.assertEqual([seen["uri"] for seen in self.resource.seen], ["/cse-in/ae1"])

    def test_body_over_the_limit_is_not_read(self) -> None:
        connector = HttpConnector(self.clock, StubTreq(self.resource), max_body=100)
        self.resource.body = b'{"x": "' + b"y" * 1000 + b'"}'
        f = self.failureResultOf(
            connector.send("http://h:8080", retrieve(), 5), TargetNotReachable
        )
        self.assertIn("not readable", f.value.reason)

    def test_url_helper(self) -> None:
        self.assertEqual(http_url("http://h:1", retrieve()), "http://h:1/cse-in/ae1")
        abs_req = Request(Operation.RETRIEVE, "//sp/id-in/x", "r", fr="C")
        self.assertEqual(http_url("https://h/", abs_req), "https://h/_/sp/id-in/x")
        self.assertEqual(http_url("http://h:1/base", retrieve()), "http://h:1/base")

    def test_connection_error_is_5103(self) -> None:
        class Refusing:
            def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
                return fail(ConnectionRefusedError())

        connector = HttpConnector(self.clock, Refusing())
        f = self.failureResultOf(connector.send("http://h:1", notify(), 5), TargetNotReachable)
        self.assertEqual(f.value.rqi, "n1")

    def test_timeout_is_4008_and_cancels(self) -> None:
        pending: list[Deferred[Any]] = []
        cancelled: list[str] = []

        class Silent:
            def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
                pending.append(Deferred(lambda _: cancelled.append(url)))
                return pending[-1]

        connector = HttpConnector(self.clock, Silent())
        d = connector.send("http://h:1", notify(), 5)
        self.clock.advance(5)
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual(cancelled, ["http://h:1"])

    def test_chain_falls_back_to_http(self) -> None:
        omap = FakeMap()
        chain = PoaChain(omap, self.clock, [self.connector])
        self.addCleanup(chain.stop)
        d = chain.send(AE, notify(), ["ws://default", "http://h:8080/n"])
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(self.resource.seen[0]["uri"], "/n")


class QueueBoundsTests(SynchronousTestCase):
    def test_entries_hold_a_copy_of_their_encoded_size(self) -> None:
        queue = MemoryNotificationQueue()
        request = notify("n1")
        request.pc = {"m2m:sgn": {"nev": {"rep": {"con": "x" * 1000}}}}
        queue.enqueue(AE, request, 100.0, 0.0)
        request.pc["m2m:sgn"]["nev"]["rep"]["con"] = "changed"
        (entry,) = queue.pending(AE)
        self.assertIsInstance(entry.data, bytes)
        self.assertEqual(entry.request.pc["m2m:sgn"]["nev"]["rep"]["con"], "x" * 1000)
        self.assertEqual(queue.bytes, entry.size)
        self.assertLess(entry.size, 1400)
        queue.acknowledge(AE, entry)
        self.assertEqual(queue.bytes, 0)

    def test_originator_bytes_drop_the_oldest(self) -> None:
        queue = MemoryNotificationQueue(originator_bytes=3500)  # about 1100 bytes each
        for i in range(5):
            request = notify(f"n{i}")
            request.pc = {"con": "x" * 800}
            queue.enqueue(AE, request, 100.0, 0.0)
        self.assertEqual([e.rqi for e in queue.pending(AE)], ["n2", "n3", "n4"])
        self.assertLessEqual(queue.bytes, 3500)

    def test_total_bytes_refuse_new_entries(self) -> None:
        queue = MemoryNotificationQueue(total_bytes=3500)
        for i in range(3):
            request = notify(f"n{i}")
            request.pc = {"con": "x" * 800}
            queue.enqueue(f"C{i}", request, 100.0, 0.0)
        late = notify("late")
        late.pc = {"con": "x" * 800}
        self.assertRaises(QueueFull, queue.enqueue, "Clate", late, 100.0, 0.0)
        self.assertEqual(queue.count("Clate"), 0)
        chain = PoaChain(FakeMap(), Clock(), queue=queue)
        self.addCleanup(chain.stop)
        self.failureResultOf(chain.send("Clate", late, store=True), TargetNotReachable)

    def test_a_notification_the_connection_cannot_take_does_not_block_the_queue(self) -> None:
        clock = Clock()
        omap = FakeMap()
        chain = PoaChain(omap, clock)
        self.addCleanup(chain.stop)
        for rqi in ("poison", "n1"):
            self.successResultOf(chain.send(AE, notify(rqi), store=True))
        conn = FakeConnection()
        omap.bind(AE, conn)
        conn.sent[0][2].errback(NotAcceptable("too large for this connection"))
        self.assertEqual(conn.rqis(), ["poison", "n1"])
        conn.answer()
        self.assertEqual(chain.queued(AE), [])


class FailureTimingTests(ChainTestCase):
    """A failed poa or URL step is reported when its timeout would have fired, whatever the
    cause: the time must not tell open, closed and filtered ports apart (0.00 / 0.30 / 10 s
    once)."""

    def when(self, d: Deferred[Response]) -> list[tuple[float, str]]:
        """Fills with (time, rsc or reason) when ``d`` fires."""
        fired: list[tuple[float, str]] = []

        def record(result: Any) -> None:
            outcome = result.value.reason if hasattr(result, "value") else str(result.rsc)
            fired.append((self.clock.seconds(), outcome))

        d.addBoth(record)
        return fired

    def test_refused_not_oneM2M_and_filtered_fail_at_the_same_time(self) -> None:
        self.ws.results.append(TargetNotReachable("ws://h:1: connection refused"))
        refused = self.when(self.chain.send("ws://h:1", notify()))
        not_onem2m = self.when(self.chain.send("http://h:1", notify()))
        filtered = self.when(self.chain.send("wss://h:1", notify()))
        self.clock.advance(0.25)
        self.http.calls[0][3].errback(TargetNotReachable("no X-M2M-RSC"))
        self.clock.advance(9.5)
        self.assertEqual((refused, not_onem2m, filtered), ([], [], []))
        self.clock.advance(0.25)
        self.assertEqual(
            [refused, not_onem2m, filtered],
            [
                [(10.0, f"{url} is not reachable")]
                for url in ("ws://h:1", "http://h:1", "wss://h:1")
            ],
        )

    def test_the_next_poa_and_the_queue_come_after_the_padding(self) -> None:
        self.ws.results.append(TargetNotReachable("refused"))
        d = self.chain.send(AE, notify(), ["ws://h:1", "http://h:2"])
        self.clock.advance(9.9)
        self.assertEqual(self.http.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.http.urls(), ["http://h:2"])
        self.http.calls[0][3].callback(Response(RSC.OK, "n1"))  # a success: not delayed
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.ws.results.append(TargetNotReachable("refused"))
        stored = self.when(self.chain.send(AE, notify("n2"), ["ws://h:1"], store=True))
        self.clock.advance(10)
        self.assertEqual(stored, [(20.0, str(int(RSC.ACCEPTED)))])
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n2"])

    def test_the_live_connection_and_successes_are_not_delayed(self) -> None:
        conn = FakeConnection()
        self.map.bind(AE, conn)
        d = self.chain.send(AE, notify(), ["ws://h:1"])
        conn.answer()
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.ws.results.append(Response(RSC.OK, "n1"))
        self.assertEqual(self.successResultOf(self.chain.send("ws://h:1", notify())).rsc, 2000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_padding_can_be_turned_off(self) -> None:
        chain = PoaChain(self.map, self.clock, [self.ws], pad_failures=False)
        self.addCleanup(chain.stop)
        self.ws.results.append(TargetNotReachable("refused"))
        self.failureResultOf(chain.send("ws://h:1", notify()), TargetNotReachable)

    def test_a_subscription_verification_reads_the_same_whatever_the_cause(self) -> None:
        from acmews.cse import CSE, CSEConfig

        cse = CSE(CSEConfig(), self.chain, self.clock)
        reasons = []
        for port, refused in ((1, True), (2, False)):
            if refused:
                self.ws.results.append(TargetNotReachable("connection refused"))
            subscription = Request(
                Operation.CREATE,
                "cse-in",
                f"s{port}",
                "4",
                "CAdmin",
                ty=23,
                pc={"m2m:sub": {"nu": [f"ws://h:{port}"]}},
            )
            d = cse.handle_request(subscription, FakeConnection("CAdmin"))
            assert isinstance(d, Deferred)
            self.clock.advance(10)
            response = self.successResultOf(d)
            self.assertEqual(response.rsc, RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED)
            reasons.append((response.debug or "").replace(f":{port}", ":N"))
        self.assertEqual(reasons[0], reasons[1])
        self.assertIn("not reachable", reasons[0])


class OnlyRouteTests(SynchronousTestCase):
    def test_the_only_route_timing_out_is_4008(self) -> None:
        clock = Clock()
        omap = FakeMap()
        chain = PoaChain(omap, clock)
        self.addCleanup(chain.stop)
        conn = FakeConnection("/id-mn", clock=clock)
        omap.bind("/id-mn", conn)
        d = chain.send("/id-mn", retrieve())
        clock.advance(10)
        self.assertEqual(self.failureResultOf(d, RequestTimeout).value.rsc, RSC.REQUEST_TIMEOUT)
        # with a poa left to try, or a notification that may wait, the chain goes on
        d = chain.send("/id-mn", retrieve("r2"), ["ws://default"])
        clock.advance(10)
        self.assertEqual(self.failureResultOf(d, TargetNotReachable).value.rsc, 5103)


class OutboundCredentialsTests(SynchronousTestCase):
    def test_matching(self) -> None:
        from acmews.poa import read_outbound_credentials

        c = read_outbound_credentials(
            [
                "# comment",
                "",
                "ws://gw.example Bearer t-gw",
                "wss://gw.example:8443/a u:p:with:colons",
                "https://App.Example/n/ Bearer t-app",
            ]
        )
        self.assertEqual(len(c), 3)
        self.assertEqual(c.headers("ws://gw.example:80/x"), {"Authorization": "Bearer t-gw"})
        self.assertEqual(
            c.authorization("wss://gw.example:8443/a/b"), "Basic dTpwOndpdGg6Y29sb25z"
        )
        self.assertEqual(c.authorization("https://app.example/n/1"), "Bearer t-app")
        for other in (
            "ws://gw.example.evil.com/",  # another host
            "ws://gw.example:81/",  # another port
            "wss://gw.example/",  # another scheme (and port)
            "wss://gw.example:8443/ab",  # a path that only starts with the prefix's text
            "https://app.example/n",
            "mqtt://gw.example",
            "ws://[::1:bad",
        ):
            self.assertIsNone(c.authorization(other), other)
        self.assertEqual(c.headers("http://nowhere"), {})

    def test_bad_lines_name_the_line_not_the_secret(self) -> None:
        from acmews.poa import read_outbound_credentials

        for line in (
            "http://h secret-without-colon",
            "ftp://h u:p",
            "http://h Bearer ",
            "http://h",
        ):
            with self.assertRaises(ValueError) as caught:
                read_outbound_credentials(["", line])
            self.assertIn("line 2", str(caught.exception))
            self.assertNotIn("secret", str(caught.exception))


class _SharedQueue(MemoryNotificationQueue):
    """A queue shared with other processes, as the PostgreSQL one is: ``take`` answers later
    (the test fires it) and may find entries this process did not queue."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.takes: list[Deferred[Any]] = []

    def take(self, originator: str) -> Deferred[Any]:  # type: ignore[override]
        d: Deferred[Any] = Deferred()
        self.takes.append(d)
        return d


class SharedQueueFlushTests(SynchronousTestCase):
    """The chain on a queue other processes fill too (a cluster on PostgreSQL)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.map = FakeMap()
        self.queue = _SharedQueue()
        self.chain = PoaChain(self.map, self.clock, queue=self.queue)
        self.addCleanup(self.chain.stop)

    def test_an_entry_queued_elsewhere_as_a_flush_ends_is_not_left_waiting(self) -> None:
        """Told of a new entry after the flush's last look (its take in flight): the flush
        looks once more when it ends, rather than leave the entry until the next connect."""
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.assertEqual(len(self.queue.takes), 1)
        self.chain._queued_elsewhere(AE)  # (another process's NOTIFY, or a cluster's F)
        self.queue.takes[0].callback(None)  # the last look found nothing
        self.assertEqual(len(self.queue.takes), 2)
        self.queue.takes[1].callback(None)
        self.assertEqual(len(self.queue.takes), 2)
        self.assertFalse(self.chain.flushing(AE))

    def test_a_notification_waits_behind_a_flush_of_entries_queued_elsewhere(self) -> None:
        """While the queue (entries other processes queued, none counted here) is being
        delivered, a new notification goes behind it, not straight on the connection."""
        conn = FakeConnection()
        self.map.bind(AE, conn)
        self.assertTrue(self.chain.flushing(AE))
        d = self.chain.send(AE, notify("n9"), store=True)
        self.assertEqual(conn.sent, [])
        self.assertEqual(self.successResultOf(d).rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n9"])
