"""The fan-out's lean paths: a request sent without a Deferred (``request_then``,
``send_then``), the session's one timer for all its requests, whole frames read without
Autobahn, the rqet's seconds parsed once, and the server's cycle collector."""

from __future__ import annotations

import errno
import gc
import os
import weakref
from dataclasses import replace
from typing import Any, cast

import orjson
from autobahn.websocket.protocol import WebSocketProtocol
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews import session as session_module
from acmews.codec import CBOR, JSON
from acmews.codes import RSC, Operation
from acmews.cse import CSE, CSEConfig
from acmews.cse.notifier import _Compiled, _Member
from acmews.cse.store import Batch
from acmews.cse.subscription import compile_policy
from acmews.errors import BadRequest, RequestTimeout, TargetNotReachable
from acmews.originators import OriginatorMap
from acmews.poa import PoaChain
from acmews.primitive import (
    OPTIONAL_REQUEST_PARAMETERS,
    Notification,
    Request,
    Response,
    Shared,
    as_request,
    optional_request_values,
)
from acmews.protocol import TurnWriter, _AutobahnFastPath
from acmews.server import PYTHON_GC_THRESHOLDS, SERVER_GC_THRESHOLDS, tune_collector
from acmews.session import Deadlines, Session
from acmews.testing import (
    START,
    URL,
    FakeConnection,
    FakeOriginatorMap,
    FakeSender,
    MemoryCSE,
    Pair,
    RecordingHandler,
    connected_pair,
    make_client_factory,
    make_server_factory,
)
from acmews.timestamps import _parse_seconds, parse_timestamp
from acmews.wsframe import Masker, encode_frame, unmask

AE = "Cae1"


def notify(rqi: str, **kw: Any) -> Request:
    return Request(Operation.NOTIFY, AE, rqi, "4", "/id-in", pc={"m2m:sgn": {"sur": "s"}}, **kw)


class Outcomes:
    """A ``then``: keeps every outcome it is called with."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def __call__(self, result: Any) -> None:
        self.results.append(result)

    def rsc(self) -> list[int]:
        return [r.rsc for r in self.results if isinstance(r, Response)]

    def errors(self) -> list[type]:
        return [type(r.value) for r in self.results if isinstance(r, Failure)]


class Wire:
    """The send function of a session: every message it writes, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, data: bytes, binary: bool) -> None:
        self.sent.append(orjson.loads(data))

    def answer(self, session: Session, index: int, rsc: int = RSC.OK) -> None:
        rqi = self.sent[index]["rqi"]
        session.message_received(orjson.dumps({"rsc": rsc, "rqi": rqi, "rvi": "4"}), True)


class RequestThenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        self.session = Session(self.wire, JSON, self.clock, None, originator=AE)

    def test_response_reaches_then_and_no_timer_is_left(self) -> None:
        then = Outcomes()
        self.session.request_then(notify("n1"), then, 10)
        self.assertEqual(self.wire.sent[0]["rqi"], "n1")
        self.assertEqual(then.results, [])
        self.wire.answer(self.session, 0)
        self.assertEqual(then.rsc(), [RSC.OK])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.session.pending_count, 0)

    def test_many_requests_share_one_timer(self) -> None:
        then = Outcomes()
        for i in range(100):
            self.session.request_then(notify(f"n{i}"), then, 10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for i in range(0, 100, 2):
            self.wire.answer(self.session, i)
        self.clock.advance(9.9)
        self.assertEqual(len(then.results), 50)
        self.clock.advance(0.1)
        self.assertEqual(then.rsc(), [RSC.OK] * 50)
        self.assertEqual(then.errors(), [RequestTimeout] * 50)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_shorter_timeout_later_is_kept(self) -> None:
        """The one timer moves forward for a request that must time out earlier."""
        first, second = Outcomes(), Outcomes()
        self.session.request_then(notify("long"), first, 10)
        self.clock.advance(1)
        self.session.request_then(notify("short"), second, 2)
        self.clock.advance(2)
        self.assertEqual((first.results, second.errors()), ([], [RequestTimeout]))
        self.clock.advance(6.9)
        self.assertEqual(first.results, [])
        self.clock.advance(0.1)
        self.assertEqual(first.errors(), [RequestTimeout])

    def test_rqet_shortens_the_timeout(self) -> None:
        then = Outcomes()
        self.session.request_then(notify("n1", rqet="PT3S"), then, 10)
        self.clock.advance(3)
        self.assertEqual(then.errors(), [RequestTimeout])

    def test_a_reused_rqi_keeps_its_own_deadline(self) -> None:
        """An answered request's deadline does not time out a later one with its rqi."""
        first, second = Outcomes(), Outcomes()
        self.session.request_then(notify("same"), first, 10)
        self.session.request_then(notify("other"), Outcomes(), 30)  # keeps the timer alive
        self.wire.answer(self.session, 0)
        self.clock.advance(5)
        self.session.request_then(notify("same"), second, 10)
        self.clock.advance(5)  # the first one's deadline
        self.assertEqual(second.results, [])
        self.clock.advance(5)
        self.assertEqual(second.errors(), [RequestTimeout])
        self.session.connection_lost()

    def test_deadlines_of_answered_requests_do_not_pile_up(self) -> None:
        self.session.request_then(notify("kept"), Outcomes(), 60)
        for i in range(5000):
            self.session.request_then(notify(f"n{i}"), Outcomes(), 60)
            self.wire.answer(self.session, len(self.wire.sent) - 1)
        self.assertLessEqual(len(self.session._deadlines), 1 + 1024 + 1)
        self.session.connection_lost()

    def test_connection_lost_fails_each_with_5103(self) -> None:
        then = Outcomes()
        self.session.request_then(notify("n1"), then, 10)
        self.session.request_then(notify("n2"), then, 10)
        self.session.connection_lost()
        self.assertEqual(then.errors(), [TargetNotReachable] * 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.session.request_then(notify("n3"), then, 10)
        self.assertEqual(then.errors(), [TargetNotReachable] * 3)

    def test_a_pending_rqi_is_refused_at_once(self) -> None:
        then = Outcomes()
        self.session.request_then(notify("n1"), Outcomes(), 10)
        self.session.request_then(notify("n1"), then, 10)
        self.assertEqual(then.errors(), [BadRequest])
        self.assertEqual(len(self.wire.sent), 1)
        self.session.connection_lost()

    def test_cancelling_a_deferred_request_leaves_no_timer(self) -> None:
        d = self.session.request(notify("n1"), 10)
        d.addErrback(lambda f: f.trap(CancelledError))
        d.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.session.pending_count, 0)


class PendingModelTests(SynchronousTestCase):
    """A session's pending requests (the first in the session itself, any more in a dict)
    behave as one table: whatever the order of sends, answers, cancellations, timeouts and
    the connection's loss, each request is settled once, as a plain table says."""

    @hypothesis_settings(max_examples=300, deadline=None, database=None)
    @given(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("send"), st.integers(0, 5), st.sampled_from([5, 10, 20])),
                st.tuples(st.just("answer"), st.integers(0, 5), st.just(0)),
                st.tuples(st.just("cancel"), st.integers(0, 5), st.just(0)),
                st.tuples(st.just("advance"), st.just(0), st.sampled_from([1, 4, 6])),
            ),
            max_size=40,
        )
    )
    def test_like_one_table(self, ops: list[tuple[str, int, int]]) -> None:
        clock = Clock()
        wire = Wire()
        session = Session(wire, JSON, clock, None, originator=AE)
        #: the model: rqi -> (its Deferred's outcomes, its deadline)
        pending: dict[str, tuple[list[Any], float]] = {}
        settled: list[tuple[str, Any]] = []  # (rqi, what settled it), as they come
        expected: list[tuple[str, Any]] = []
        deferreds: dict[str, Any] = {}

        def watch(rqi: str, d: Any) -> None:
            def outcome(r: Any) -> None:
                kind = str(int(r.rsc)) if isinstance(r, Response) else r.type.__name__
                settled.append((rqi, kind))

            d.addBoth(outcome)

        for op, k, value in ops:
            rqi = f"r{k}"
            if op == "send":
                d = session.request(Request(Operation.RETRIEVE, "cse-in", rqi, "4", AE), value)
                if rqi in pending:
                    expected.append((rqi, "BadRequest"))
                    watch(rqi, d)
                else:
                    pending[rqi] = ([], clock.seconds() + value)
                    deferreds[rqi] = d
                    watch(rqi, d)
            elif op == "answer":
                session.message_received(orjson.dumps({"rsc": 2000, "rqi": rqi, "rvi": "4"}), True)
                if pending.pop(rqi, None) is not None:
                    expected.append((rqi, "2000"))
            elif op == "cancel":
                if rqi in pending:
                    del pending[rqi]
                    deferreds[rqi].cancel()
                    expected.append((rqi, "CancelledError"))
            else:
                now = clock.seconds() + value
                due = sorted((when, r) for r, (_, when) in pending.items() if when <= now)
                for _, r in due:
                    del pending[r]
                    expected.append((r, "RequestTimeout"))
                clock.advance(value)
            self.assertEqual(session.pending_count, len(pending))
            self.assertEqual(sorted(settled), sorted(expected))
        session.connection_lost()
        expected.extend((r, "TargetNotReachable") for r in pending)
        self.assertEqual(sorted(settled), sorted(expected))
        self.assertEqual(session.pending_count, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class SharedDeadlinesTests(SynchronousTestCase):
    """The sessions of a server share one timer for their requests' timeouts."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.wires = [Wire(), Wire()]
        self.sessions = [
            Session(w, JSON, self.clock, None, originator=f"C{i}", deadlines=self.deadlines)
            for i, w in enumerate(self.wires)
        ]

    def test_one_timer_until_every_session_is_answered(self) -> None:
        a, b = Outcomes(), Outcomes()
        for i in range(10):
            self.sessions[0].request_then(notify(f"a{i}"), a, 10)
            self.sessions[1].request_then(notify(f"b{i}"), b, 10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for i in range(10):
            self.wires[0].answer(self.sessions[0], i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # b's still wait
        self.clock.advance(10)
        self.assertEqual((a.rsc(), b.errors()), ([RSC.OK] * 10, [RequestTimeout] * 10))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_lost_session_leaves_the_others_timed(self) -> None:
        a, b = Outcomes(), Outcomes()
        self.sessions[0].request_then(notify("a"), a, 10)
        self.sessions[1].request_then(notify("b"), b, 10)
        self.sessions[0].connection_lost()
        self.assertEqual(a.errors(), [TargetNotReachable])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.wires[1].answer(self.sessions[1], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_what_waits_longer_still_times_out(self) -> None:
        """A timeout, then an answer elsewhere, leave a later deadline in force."""
        b = Outcomes()
        self.sessions[0].request_then(notify("a"), Outcomes(), 10)
        self.sessions[1].request_then(notify("b"), b, 30)
        self.clock.advance(10)  # a times out
        self.sessions[0].request_then(notify("c"), Outcomes(), 10)
        self.wires[0].answer(self.sessions[0], 1)  # c answered
        self.clock.advance(20)
        self.assertEqual(b.errors(), [RequestTimeout])

    def test_the_deadline_does_not_hold_what_waited(self) -> None:
        """What waited for a response (and what it holds: the request) goes as the response
        comes, while the deadline stays in the heap."""
        self.sessions[1].request_then(notify("long"), Outcomes(), 30)  # keeps the heap
        then = Outcomes()
        gone = weakref.ref(then)
        self.sessions[0].request_then(notify("n"), then, 10)
        del then
        self.wires[0].answer(self.sessions[0], 0)
        self.assertEqual(len(self.deadlines), 2)
        self.assertIsNone(gone())

    def test_an_absolute_rqet_is_read_once(self) -> None:
        """The notifications of a fan-out share their rqet (one string): it is read once. A
        relative rqet counts from each request's own time, and what is unreadable sets no
        limit."""
        read: list[object] = []
        real = session_module.expiry_delay

        def counting(value: str | int, now: float) -> float | None:
            read.append(value)
            return real(value, now)

        self.patch(session_module, "expiry_delay", counting)
        rqet = "20300101T000000,500000"
        at = parse_timestamp(rqet)
        self.assertEqual(self.deadlines.until(rqet, 100.0), at - 100.0)
        self.assertEqual(self.deadlines.until(rqet, 160.0), at - 160.0)
        self.assertEqual(read, [rqet])
        for relative in ("PT2S", "2000", 2000):
            self.assertEqual(self.deadlines.until(relative, 0.0), 2.0)
            self.assertEqual(self.deadlines.until(relative, 50.0), 2.0)
        for _ in range(2):
            self.assertIsNone(self.deadlines.until("tomorrow", 0.0))
        self.assertEqual(read.count("tomorrow"), 2)

    def test_sending_again_from_a_timeout(self) -> None:
        """What a timed-out request's ``then`` sends gets its own deadline, on one timer."""
        retried = Outcomes()

        def again(result: Any) -> None:
            if isinstance(result, Failure) and not retried.results:
                self.sessions[0].request_then(notify("again"), retried, 5)

        self.sessions[0].request_then(notify("first"), again, 10)
        self.sessions[1].request_then(notify("other"), Outcomes(), 30)
        self.clock.advance(10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertEqual(retried.errors(), [RequestTimeout])
        self.clock.advance(15)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.deadlines), 0)


class _LiveChainTestCase(SynchronousTestCase):
    """A poa chain with a live session bound to the AE."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.map = FakeOriginatorMap()
        self.chain = PoaChain(self.map, self.clock, timeout=10)
        self.wire = Wire()
        self.session = Session(self.wire, JSON, self.clock, None, originator=AE)
        self.map.bind(AE, self.session)

    def tearDown(self) -> None:
        self.chain.stop()


class SendThenTests(_LiveChainTestCase):
    def test_live_delivery_counts_and_calls_then(self) -> None:
        then = Outcomes()
        self.chain.send_then(AE, notify("n1"), then, (), True)
        self.assertEqual(self.wire.sent[0]["rqi"], "n1")
        self.wire.answer(self.session, 0)
        self.assertEqual(then.rsc(), [RSC.OK])
        self.assertEqual(self.chain.counts.delivered, 1)
        self.assertEqual(self.chain._live, set())

    def test_lost_connection_goes_on_to_the_queue(self) -> None:
        then = Outcomes()
        self.chain.send_then(AE, notify("n1"), then, (), True)
        self.map.unbind(AE, self.session)
        self.session.connection_lost()
        self.assertEqual(then.rsc(), [RSC.ACCEPTED])
        self.assertEqual([r.rqi for r in self.chain.queued(AE)], ["n1"])

    def test_timeout_without_store_fails(self) -> None:
        then = Outcomes()
        request = Request(Operation.RETRIEVE, "cse-in", "r1", "4", "/id-in")
        self.chain.send_then(AE, request, then)
        self.clock.advance(10)
        self.assertEqual(then.errors(), [RequestTimeout])

    def test_stop_cancels_and_a_late_answer_is_ignored(self) -> None:
        then = Outcomes()
        self.chain.send_then(AE, notify("n1"), then, (), True)
        self.chain.stop()
        self.assertEqual(then.errors(), [CancelledError])
        self.wire.answer(self.session, 0)
        self.assertEqual(len(then.results), 1)

    def test_behind_a_queue_it_waits_its_turn(self) -> None:
        """With notifications queued for the originator, a new one joins the queue (through
        the chain's general path), so that order holds."""
        self.map.unbind(AE, self.session)
        first = Outcomes()
        self.chain.send_then(AE, notify("n1"), first, (), True)
        self.assertEqual(first.rsc(), [RSC.ACCEPTED])
        self.map.bind(AE, self.session)  # the flush starts: n1 goes out first
        second = Outcomes()
        self.chain.send_then(AE, notify("n2"), second, (), True)
        self.assertEqual([m["rqi"] for m in self.wire.sent], ["n1"])
        self.assertEqual(second.rsc(), [RSC.ACCEPTED])
        self.wire.answer(self.session, 0)
        self.assertEqual([m["rqi"] for m in self.wire.sent], ["n1", "n2"])
        self.wire.answer(self.session, 1)
        self.assertEqual(self.chain.queued(AE), [])

    def test_url_targets_take_the_general_path(self) -> None:
        then = Outcomes()
        self.chain.send_then("ftp://x/y", notify("n1"), then)
        self.assertEqual(then.errors(), [TargetNotReachable])


class HotAttributeTests(SynchronousTestCase):
    """What every notification and every answer reads of a connection is kept in the
    protocol object itself, not in its instance dict (see ``_AutobahnFastPath.__slots__``):
    a thousand connections' dicts do not stay in the processor's caches between messages."""

    def test_the_open_connection_keeps_them_out_of_its_dict(self) -> None:
        clock = Clock()
        pair = connected_pair(
            make_server_factory(RecordingHandler(), clock, OriginatorMap()),
            make_client_factory(clock, AE),
        )
        for protocol in (pair.server, pair.client):
            self.addCleanup(protocol.session.connection_lost)  # type: ignore[union-attr]
            hot = list(_AutobahnFastPath.__slots__)
            self.assertIn("state", hot)
            self.assertEqual([n for n in hot if n in vars(protocol)], [])
            self.assertIs(protocol.session.connected, True)  # type: ignore[union-attr]
            self.assertIsNotNone(protocol.trafficStats)
            self.assertEqual(protocol._fast_mask, 0x80 if protocol is pair.server else 0)

    def test_a_session_keeps_them_out_of_its_dict_and_can_be_weakly_referenced(self) -> None:
        session = Session(Wire(), JSON, Clock(), None, originator=AE)
        hot = [name for name in Session.__slots__ if not name.startswith("__")]
        self.assertIn("_pending", hot)
        self.assertEqual([n for n in hot if n in vars(session)], [])
        self.assertIs(weakref.ref(session)(), session)  # (the CSE keys sessions weakly)
        session.trace(lambda data: None, lambda data: None)  # instance attributes still go
        session.message_received(b"{}", True)


class _SocketLike:
    """What :meth:`_send_now` uses of a TCP transport: everything the socket takes is kept."""

    connected = True
    disconnecting = False

    def __init__(self) -> None:
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""
        self.sent: list[bytes] = []
        self.socket = self

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def write(self, data: bytes) -> None:
        self.sent.append(data)


class _HoldingTransport(_SocketLike):
    """A TCP transport as :class:`TurnWriter` finds it: what is written to it waits in its
    buffer until :meth:`drain`; every read of what it holds is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self._held: list[bytes] = []

    def __getattribute__(self, name: str) -> Any:
        if name in ("connected", "disconnecting", "_tempDataBuffer", "dataBuffer", "socket"):
            object.__setattr__(self, "reads", object.__getattribute__(self, "reads") + 1)
        return object.__getattribute__(self, name)

    @property  # type: ignore[override]
    def _tempDataBuffer(self) -> list[bytes]:
        return self._held

    @_tempDataBuffer.setter
    def _tempDataBuffer(self, value: list[bytes]) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._held.append(data)

    def drain(self) -> None:
        self.sent.extend(self._held)
        self._held.clear()


class TurnWriterTests(SynchronousTestCase):
    """The frames written to a connection during a reactor turn go out together at its end,
    in order, and after them whatever Autobahn writes; a connection that goes drops them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.writer = TurnWriter(self.clock)
        self.protocols: list[Any] = []
        self.sockets: list[_SocketLike] = []
        for k in range(2):
            pair = connected_pair(
                make_server_factory(RecordingHandler(), self.clock, OriginatorMap()),
                make_client_factory(self.clock, f"Cae{k}"),
            )
            server = pair.server
            self.addCleanup(server.session.connection_lost)  # type: ignore[union-attr]
            server.transport = socket = _SocketLike()
            server._turn_writer = self.writer
            self.protocols.append(server)
            self.sockets.append(socket)

    def frame(self, text: bytes) -> bytes:
        return encode_frame(1, text)

    def test_a_turns_frames_go_out_once_per_connection_in_order(self) -> None:
        a, b = self.protocols
        a._send_message(b"a1", False)
        b._send_message(b"b1", False)
        a._send_message(b"a2", False)
        self.assertEqual([s.sent for s in self.sockets], [[], []])
        self.clock.advance(0)
        self.assertEqual(
            [s.sent for s in self.sockets],
            [[self.frame(b"a1") + self.frame(b"a2")], [self.frame(b"b1")]],
        )
        a._send_message(b"a3", False)  # the next turn
        self.clock.advance(0)
        self.assertEqual(self.sockets[0].sent[1:], [self.frame(b"a3")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_what_autobahn_writes_goes_after_the_waiting_frames(self) -> None:
        a, b = self.protocols
        a._send_message(b"a1", False)
        a.sendPing(b"p")
        self.assertEqual(self.sockets[0].sent, [self.frame(b"a1"), encode_frame(9, b"p")])
        for text in (b"b1", b"b2", b"b3"):  # several frames, then Autobahn's
            b._send_message(text, False)
        b.sendPing(b"q")
        frames = self.frame(b"b1") + self.frame(b"b2") + self.frame(b"b3")
        self.assertEqual(self.sockets[1].sent, [frames, encode_frame(9, b"q")])
        self.clock.advance(0)  # nothing left for the end of the turn
        self.assertEqual([len(s.sent) for s in self.sockets], [2, 2])

    def test_what_the_socket_does_not_take_goes_to_the_transport(self) -> None:
        """A full socket (it takes a part, or raises) or a failed one (it raises): the rest
        goes to the transport, which sends it later or finds the failure."""
        a, _ = self.protocols
        socket = self.sockets[0]
        frame = self.frame(b"a1")
        errors = (BlockingIOError(errno.EAGAIN, "full"), ConnectionResetError(errno.ECONNRESET))
        for error in errors:

            def refuse(data: bytes, error: OSError = error) -> int:
                raise error

            socket.send = refuse  # type: ignore[method-assign]
            a._send_message(b"a1", False)
            self.clock.advance(0)
            self.assertEqual(socket.sent, [frame])  # through write
            socket.sent.clear()
        socket.send = lambda data: 3  # type: ignore[method-assign]
        a._send_message(b"a1", False)
        self.clock.advance(0)
        self.assertEqual(socket.sent, [frame[3:]])

    def holding(self) -> tuple[Any, _HoldingTransport]:
        server = self.protocols[0]
        server.transport = transport = _HoldingTransport()
        return server, transport

    def test_an_open_connection_keeps_its_socket(self) -> None:
        """Once a turn's frames went to the socket whole, the next turns' go to it without
        reading anything of the transport (its attributes are memory a fan-out finds out of
        the processor's caches)."""
        a, transport = self.holding()
        a._send_message(b"a1", False)
        self.clock.advance(0)
        self.assertGreater(transport.reads, 0)
        transport.reads = 0
        for text in (b"a2", b"a3"):
            a._send_message(text, False)
            self.clock.advance(0)
        self.assertEqual(transport.sent, [self.frame(b"a1"), self.frame(b"a2"), self.frame(b"a3")])
        self.assertEqual(transport.reads, 0)
        a._release()  # nothing of it is kept once the connection is gone
        self.assertIsNone(a._socket)

    def test_frames_wait_behind_what_the_transport_holds(self) -> None:
        """A short send leaves the rest in the transport: the next turns' frames go behind
        it, through the transport, until it is found empty; then to the socket again."""
        a, transport = self.holding()
        a._send_message(b"a1", False)
        self.clock.advance(0)

        def short(data: bytes) -> int:
            transport.sent.append(data[:3])
            return 3

        transport.send = short  # type: ignore[method-assign]
        a._send_message(b"a2", False)
        self.clock.advance(0)
        del transport.send  # (the class's again: it takes everything)
        a._send_message(b"a3", False)
        self.clock.advance(0)
        self.assertEqual(transport.sent, [self.frame(b"a1"), self.frame(b"a2")[:3]])
        transport.drain()
        a._send_message(b"a4", False)
        a._send_message(b"a5", False)
        self.clock.advance(0)
        a._send_message(b"a6", False)
        self.clock.advance(0)
        frames = [self.frame(t) for t in (b"a1", b"a2", b"a3", b"a4", b"a5", b"a6")]
        self.assertEqual(b"".join(transport.sent), b"".join(frames))
        self.assertEqual(transport.sent[-1], frames[-1])  # to the socket, whole

    def test_frames_wait_behind_what_autobahn_wrote(self) -> None:
        """Autobahn writes through the transport (a ping here): the next turn's frames go
        behind it, though the socket had been kept."""
        a, transport = self.holding()
        a._send_message(b"a1", False)
        self.clock.advance(0)
        a.sendPing(b"p")
        a._send_message(b"a2", False)
        self.clock.advance(0)
        self.assertEqual(transport.sent, [self.frame(b"a1")])
        transport.drain()
        self.assertEqual(transport.sent[1:], [encode_frame(9, b"p"), self.frame(b"a2")])

    def test_a_closing_connection_does_not_use_the_kept_socket(self) -> None:
        """Once the connection is no longer open, frames left for the end of the turn go as
        the transport decides (a disconnecting one drops them)."""
        a, transport = self.holding()
        a._send_message(b"a1", False)
        self.clock.advance(0)
        a._send_message(b"a2", False)
        a.state = WebSocketProtocol.STATE_CLOSING  # (as a close frame received sets it)
        transport.disconnecting = True
        self.clock.advance(0)
        transport.drain()
        self.assertEqual(transport.sent, [self.frame(b"a1")])

    def test_a_connection_that_goes_drops_its_frames_and_not_the_others(self) -> None:
        a, b = self.protocols
        a._send_message(b"a1", False)
        b._send_message(b"b1", False)
        a._release()
        self.clock.advance(0)
        self.assertEqual([s.sent for s in self.sockets], [[], [self.frame(b"b1")]])


class FrameReadingTests(TestCase):
    """Whole one-frame messages are read without Autobahn's per-frame machinery; whatever
    else comes (control frames, fragments, partial frames, broken frames) is Autobahn's,
    with the same outcome as before."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.factory = make_server_factory(
            self.handler, self.clock, OriginatorMap(), max_message_size=100_000
        )
        self.pair: Pair = connected_pair(self.factory, make_client_factory(self.clock, AE))
        self.received: list[tuple[bytes, bool]] = []
        session = self.pair.server.session
        assert session is not None
        self.addCleanup(session.connection_lost)
        self.pair.server.session.message_received = (  # type: ignore[method-assign,union-attr]
            lambda data, text=False: self.received.append((data, text))
        )
        self.masker = Masker(os.urandom(4))

    def frame(self, payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
        return encode_frame(opcode, payload, self.masker, fin=fin)

    def closed_with(self) -> int | None:
        """The close code the server sent, if it sent a close frame."""
        out = b"".join(self.pair.server.transport.stream)
        index = out.rfind(b"\x88")
        if index < 0:
            return None
        return int.from_bytes(out[index + 2 : index + 4], "big")

    def test_every_length_in_any_chunking(self) -> None:
        payloads = [b"", b"x", b"a" * 125, b"b" * 126, b"c" * 1000, b"d" * 65535, b"e" * 70000]
        stream = b"".join(self.frame(p, opcode=1 if i % 2 else 2) for i, p in enumerate(payloads))
        for chunk in (1, 7, 130, len(stream)):
            self.received.clear()
            for i in range(0, len(stream), chunk):
                self.pair.server.dataReceived(stream[i : i + chunk])
            self.assertEqual(self.received, [(p, bool(i % 2)) for i, p in enumerate(payloads)])
        self.assertIsNone(self.closed_with())

    def test_what_is_read_here_is_counted_as_autobahn_counts_it(self) -> None:
        """Autobahn's traffic counters include the messages read without it, once each,
        however often they are looked at, and go on from there in Autobahn's own path."""
        stats = self.pair.server.trafficStats
        before = (
            stats.incomingOctetsWireLevel,
            stats.incomingWebSocketFrames,
            stats.incomingWebSocketMessages,
        )
        data = b"".join(self.frame(b"m%d" % i) for i in range(10))
        self.pair.server.dataReceived(data)
        for _ in range(2):
            stats = self.pair.server.trafficStats
            self.assertEqual(
                (
                    stats.incomingOctetsWireLevel,
                    stats.incomingWebSocketFrames,
                    stats.incomingWebSocketMessages,
                ),
                (before[0] + len(data), before[1] + 10, before[2] + 10),
            )
        fragment = self.frame(b"a", fin=False) + self.frame(b"b", opcode=0)  # Autobahn's
        self.pair.server.dataReceived(fragment)
        self.assertEqual(self.received[-1], (b"ab", True))
        stats = self.pair.server.trafficStats
        self.assertEqual(stats.incomingOctetsWireLevel, before[0] + len(data) + len(fragment))
        self.assertEqual(stats.incomingWebSocketMessages, before[2] + 11)

    def test_whole_frames_skip_autobahn(self) -> None:
        calls: list[int] = []
        original = self.pair.server.processData
        self.pair.server.processData = lambda: calls.append(1) or original()  # type: ignore[method-assign]
        self.pair.server.dataReceived(b"".join(self.frame(b"m%d" % i) for i in range(64)))
        self.assertEqual(len(self.received), 64)
        self.assertEqual(calls, [])
        self.assertEqual(self.pair.server.trafficStats.incomingWebSocketMessages, 64 + 0)

    def test_a_ping_between_messages_is_answered_in_order(self) -> None:
        data = self.frame(b"one") + self.frame(b"p", opcode=9) + self.frame(b"two")
        self.pair.server.dataReceived(data)
        self.assertEqual([m for m, _ in self.received], [b"one", b"two"])
        self.assertIn(b"\x8a\x01p", b"".join(self.pair.server.transport.stream))  # pong

    def test_a_fragmented_message_is_joined(self) -> None:
        data = self.frame(b"fir", fin=False) + self.frame(b"st", opcode=0) + self.frame(b"next")
        self.pair.server.dataReceived(data)
        self.assertEqual(self.received, [(b"first", True), (b"next", True)])

    def test_invalid_utf8_text_closes_1007(self) -> None:
        self.pair.server.dataReceived(self.frame(b"ok") + self.frame(b"\xff\xfe"))
        self.assertEqual(self.received, [(b"ok", True)])
        self.assertEqual(self.closed_with(), 1007)

    def test_utf8_text_and_any_binary_pass(self) -> None:
        self.pair.server.dataReceived(
            self.frame("grüße".encode()) + self.frame(b"\xff\xfe", opcode=2)
        )
        self.assertEqual(self.received, [("grüße".encode(), True), (b"\xff\xfe", False)])

    def test_an_unmasked_frame_from_a_client_closes_1002(self) -> None:
        self.pair.server.dataReceived(encode_frame(1, b"plain"))
        self.assertEqual(self.received, [])
        self.assertEqual(self.closed_with(), 1002)

    def test_over_the_size_limit_closes_1009(self) -> None:
        self.pair.server.dataReceived(self.frame(b"z" * 100_001))
        self.assertEqual(self.received, [])
        self.assertEqual(self.closed_with(), 1009)

    def test_reserved_bits_close_1002(self) -> None:
        frame = bytearray(self.frame(b"x"))
        frame[0] |= 0x40
        self.pair.server.dataReceived(bytes(frame))
        self.assertEqual(self.received, [])
        self.assertEqual(self.closed_with(), 1002)

    def test_unmask(self) -> None:
        key = b"\x37\xfa\x21\x3d"
        self.assertEqual(unmask(b"\x7f\x9f\x4d\x51\x58", key), b"Hello")  # RFC 6455 5.7
        self.assertEqual(unmask(b"", key), b"")


class TimestampTests(SynchronousTestCase):
    def test_fractions(self) -> None:
        self.assertEqual(parse_timestamp("20261206T182012"), 1796581212)
        self.assertEqual(parse_timestamp("20261206T182012,5"), 1796581212.5)
        self.assertAlmostEqual(parse_timestamp("20261206T182012,123456"), 1796581212.123456)
        for bad in ("20261206T182012,12a", "20261206T182012,-1", "2026120GT182012", ""):
            self.assertRaises(ValueError, parse_timestamp, bad)

    def test_the_seconds_are_parsed_once(self) -> None:
        _parse_seconds.cache_clear()
        for micro in range(100):
            parse_timestamp(f"20261206T182013,{micro:06d}")
        self.assertEqual(_parse_seconds.cache_info().misses, 1)


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)

    def test_python_defaults_become_the_servers(self) -> None:
        gc.set_threshold(*PYTHON_GC_THRESHOLDS)
        self.assertTrue(tune_collector())
        self.assertEqual(gc.get_threshold(), SERVER_GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_a_programs_own_thresholds_are_kept(self) -> None:
        gc.set_threshold(1234, 5, 6)
        self.assertFalse(tune_collector())
        self.assertEqual(gc.get_threshold(), (1234, 5, 6))


class ResponseParsingTests(SynchronousTestCase):
    def test_plain_and_full_responses(self) -> None:
        plain = Response.from_mapping({"rsc": 2000, "rqi": "a", "rvi": "4", "pc": {"x": 1}})
        self.assertEqual((plain.rsc, plain.rqi, plain.rvi, plain.pc), (2000, "a", "4", {"x": 1}))
        self.assertIs(plain.rsc, RSC.OK)
        full = Response.from_mapping({"rsc": 2000, "rqi": "a", "rvi": "4", "to": "Cae1"})
        self.assertEqual(full.to, "Cae1")
        other = Response.from_mapping({"rsc": 2000, "rqi": "a", "zz": 1})
        self.assertEqual(other.extra, {"zz": 1})
        from acmews.errors import PrimitiveError

        self.assertRaises(
            PrimitiveError, Response.from_mapping, {"rsc": 2000, "rqi": "a", "rvi": "99"}
        )


class NotificationExpiryTests(SynchronousTestCase):
    def test_one_rqet_per_millisecond(self) -> None:
        from acmews.testing import memory_cse

        cse = memory_cse()
        notifier = cse.cse.notifier
        first = notifier.notification("Cae1", {})
        second = notifier.notification("Cae1", {})
        self.assertIs(first.rqet, second.rqet)
        self.assertEqual(parse_timestamp(str(first.rqet)), cse.clock.seconds() + 3600.0)
        cse.clock.advance(0.002)
        third = notifier.notification("Cae1", {})
        self.assertNotEqual(third.rqet, first.rqet)
        self.assertAlmostEqual(parse_timestamp(str(third.rqet)), cse.clock.seconds() + 3600.0)

    def test_the_same_string_parses_the_same(self) -> None:
        value = "20261206T182012,250000"
        self.assertEqual(parse_timestamp(value), parse_timestamp(value))
        self.assertEqual(parse_timestamp("".join(value)), 1796581212.25)
        self.assertEqual(parse_timestamp("20261206T182013,5"), 1796581213.5)


class _TargetsCase(SynchronousTestCase):
    """A memory CSE whose contentInstances created under :attr:`parent` (by
    :attr:`creator`) notify; what was notified, and where."""

    parent = "cse-in/Cae1/c"
    creator = "Cae1"
    m: MemoryCSE

    def ok(self, op: Operation, to: str, **kw: Any) -> Response:
        response = self.successResultOf(self.m.request(op, to, **kw))
        self.assertLess(response.rsc, 3000, response)
        return response

    def notified(self) -> list[tuple[str, tuple[str, ...], bool]]:
        """Create a contentInstance; the (target, poa, store) of each notification sent,
        sorted (each answered)."""
        cin = {"m2m:cin": {"con": 1}}
        self.ok(Operation.CREATE, self.parent, fr=self.creator, ty=4, pc=cin)
        self.m.clock.advance(0)
        sent = self.m.sender.take()
        for s in sent:
            s.answer()
        return sorted((s.target, s.poa, s.store) for s in sent)


class KnownTargetTests(_TargetsCase):
    """The notifier remembers which registrant an nu named, while that resource is stored
    with the same attributes."""

    def setUp(self) -> None:
        from acmews.testing import memory_cse

        self.m = memory_cse()
        ae = {"rn": "Cae1", "api": "Nx", "rr": True, "srv": ["4"], "poa": ["http://a.example/"]}
        self.ok(Operation.CREATE, "cse-in", fr="Cae1", ty=2, pc={"m2m:ae": ae})
        self.ok(Operation.CREATE, "cse-in/Cae1", fr="Cae1", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        sub = {"rn": "s", "nu": ["Cae1"], "enc": {"net": [3]}}
        self.ok(Operation.CREATE, "cse-in/Cae1/c", fr="Cae1", ty=23, pc={"m2m:sub": sub})
        self.m.sender.take()

    def test_a_new_poa_is_used(self) -> None:
        self.assertEqual(self.notified(), [("Cae1", ("http://a.example/",), True)])
        self.assertEqual(self.notified(), [("Cae1", ("http://a.example/",), True)])
        self.ok(
            Operation.UPDATE,
            "cse-in/Cae1",
            fr="Cae1",
            pc={"m2m:ae": {"poa": ["http://b.example/"]}},
        )
        self.assertEqual(self.notified(), [("Cae1", ("http://b.example/",), True)])

    def test_what_no_longer_names_a_registrant(self) -> None:
        self.notified()
        target = self.m.cse.notifier.resolve_target("Cae1", self.m.cse.store)
        self.assertTrue(target[2])
        self.ok(Operation.DELETE, "cse-in/Cae1", fr="Cae1")
        self.m.sender.take()
        target = self.m.cse.notifier.resolve_target("Cae1", self.m.cse.store)
        self.assertEqual(target, ("Cae1", (), False, "Cae1"))


class PlanTests(_TargetsCase):
    """A subscribed-to resource's plan keeps its subscriptions compiled and where their nu
    went (a fan-out resolves each subscriber once), and is made anew as soon as that may no
    longer hold: a subscription or a registrant created, updated or deleted, here or on
    another CSE node, or put back by a store that could not write the change."""

    parent = "cse-in/c"
    creator = "CAdmin"

    def setUp(self) -> None:
        from acmews.testing import memory_cse

        self.m = memory_cse()
        self.register("http://a.example/")
        self.ok(Operation.CREATE, "cse-in", fr="CAdmin", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        for rn, nu in (("s", "Cae1"), ("u", "http://u.example/n")):
            sub = {"rn": rn, "nu": [nu], "enc": {"net": [3], "chty": [4]}}
            created = self.verified(Operation.CREATE, ty=23, pc={"m2m:sub": sub})
            self.assertEqual(created.rsc, RSC.CREATED)
        self.resolved: list[str] = []
        resolve = self.m.cse.notifier.resolve_target

        def counting(nu: str, reader: Any = None) -> Any:
            self.resolved.append(nu)
            return resolve(nu, reader)

        self.patch(self.m.cse.notifier, "resolve_target", counting)

    def register(self, poa: str) -> None:
        ae = {"rn": "Cae1", "api": "Nx", "rr": True, "srv": ["4"], "poa": [poa]}
        self.ok(Operation.CREATE, "cse-in", fr="Cae1", ty=2, pc={"m2m:ae": ae})

    def verified(self, op: Operation, to: str = "cse-in/c", **kw: Any) -> Response:
        """The response to CAdmin's request that makes the CSE verify a subscription's nu
        (each verification answered 2000)."""
        d = self.m.request(op, to, fr="CAdmin", **kw)
        self.m.clock.advance(0)
        for verification in self.m.sender.take():
            verification.answer()
        return self.successResultOf(d)

    def test_each_subscriber_is_resolved_once(self) -> None:
        expected = [("Cae1", ("http://a.example/",), True), ("http://u.example/n", (), False)]
        for _ in range(3):
            self.assertEqual(self.notified(), expected)
        self.assertEqual(sorted(self.resolved), ["Cae1", "http://u.example/n"])

    def test_the_registrant_updated(self) -> None:
        self.notified()
        self.ok(
            Operation.UPDATE,
            "cse-in/Cae1",
            fr="Cae1",
            pc={"m2m:ae": {"poa": ["http://b.example/"]}},
        )
        self.assertIn(("Cae1", ("http://b.example/",), True), self.notified())
        self.assertEqual(self.resolved.count("Cae1"), 2)

    def test_the_registrant_deleted_then_registered_anew(self) -> None:
        self.notified()
        self.ok(Operation.DELETE, "cse-in/Cae1", fr="Cae1")
        self.m.sender.take()
        self.assertIn(("Cae1", (), False), self.notified())
        self.register("http://c.example/")
        self.assertIn(("Cae1", ("http://c.example/",), True), self.notified())

    def test_a_subscription_created_updated_deleted(self) -> None:
        self.notified()
        sub = {"rn": "v", "nu": ["http://v.example/"], "enc": {"net": [3], "chty": [4]}}
        self.verified(Operation.CREATE, ty=23, pc={"m2m:sub": sub})
        self.assertIn(("http://v.example/", (), False), self.notified())
        nu = {"m2m:sub": {"nu": ["http://w.example/"]}}
        self.assertEqual(self.verified(Operation.UPDATE, "cse-in/c/v", pc=nu).rsc, RSC.UPDATED)
        targets = [t for t, _, _ in self.notified()]
        self.assertIn("http://w.example/", targets)
        self.assertNotIn("http://v.example/", targets)
        self.ok(Operation.DELETE, "cse-in/c/v", fr="CAdmin")
        self.m.sender.take()
        self.assertEqual([t for t, _, _ in self.notified()], ["Cae1", "http://u.example/n"])

    def changed_behind(self, how: str) -> None:
        """The AE's poa changed without a request here: ``how`` the CSE hears of it."""
        ae = self.m.cse.store.get("Cae1")
        assert ae is not None
        ae.restore({**ae.attrs, "poa": ["http://e.example/"]})
        batch = Batch(self.m.cse.store)
        batch.update(ae)
        if how == "elsewhere":
            self.m.cse._changed_elsewhere(batch)
        else:
            self.m.cse._undone(Failure(ValueError("not written")), batch)

    def test_what_another_node_changed(self) -> None:
        self.notified()
        self.changed_behind("elsewhere")
        self.assertIn(("Cae1", ("http://e.example/",), True), self.notified())

    def test_what_a_store_put_back(self) -> None:
        self.notified()
        self.changed_behind("undone")
        self.assertIn(("Cae1", ("http://e.example/",), True), self.notified())

    def test_a_subscription_changed_outside_a_batch(self) -> None:
        """Attributes replaced without a batch the notifier hears of (the statistics, a
        hook) are compiled again when a plan finds them."""
        self.notified()
        sub = self.m.cse.store.child(self.container(), "u")
        assert sub is not None
        sub.replace({"enc": {"net": [1]}})
        self.assertEqual([t for t, _, _ in self.notified()], ["Cae1"])

    def container(self) -> str:
        c = self.m.cse.store.child(self.m.cse.base.ri, "c")
        assert c is not None
        return c.ri

    def test_a_batch_that_changes_subscriptions_leaves_no_plan(self) -> None:
        """A plan made while a batch adds a subscription (not stored yet: the batch may
        still fail) is not kept."""
        self.notified()
        store = self.m.cse.store
        container = store.get(self.container())
        assert container is not None
        phantom = Batch(store)
        [model] = [s for s in store.children(container.ri, 23) if s.rn == "u"]
        attrs = {**model.attrs, "ri": "sub-phantom", "rn": "phantom", "nu": ["http://x.example/"]}
        phantom.add(type(model)(model.kind, attrs, "cse-in/c/phantom", None))
        members = self.m.cse.notifier._plan(container, phantom)
        self.assertIn(["http://x.example/"], [m.sub.attrs["nu"] for m in members])
        self.assertNotIn("http://x.example/", [t for t, _, _ in self.notified()])

    def test_a_subscription_deleted_hears_nothing_of_it(self) -> None:
        """The batch that deletes a subscription does not notify it (a plan kept from before
        that batch would)."""
        sub = {"rn": "d", "nu": ["http://d.example/"], "enc": {"net": [4]}}
        self.verified(Operation.CREATE, ty=23, pc={"m2m:sub": sub})
        self.notified()
        self.ok(Operation.DELETE, "cse-in/c/d", fr="CAdmin")
        self.m.clock.advance(0)
        self.assertEqual([s.target for s in self.m.sender.take()], [])

    def test_a_route_registered(self) -> None:
        """An nu on another CSE goes to the next hop towards it: a remoteCSE registered
        afterwards is that hop from then on."""
        sub = {"rn": "f", "nu": ["/id-mn/Cae9"], "enc": {"net": [3], "chty": [4]}}
        created = self.verified(Operation.CREATE, ty=23, pc={"m2m:sub": sub})
        self.assertEqual(created.rsc, RSC.CREATED)
        self.assertIn(("/id-mn/Cae9", (), False), self.notified())
        self.m.cse.config = replace(self.m.cse.config, allowed_csr_originators=("/id-mn",))
        csr = {
            "rn": "cse-mn",
            "csi": "/id-mn",
            "cb": "/id-mn/cse-mn",
            "rr": True,
            "cst": 2,
            "srv": ["4"],
            "poa": ["http://mn.example/"],
        }
        self.ok(Operation.CREATE, "cse-in", fr="/id-mn", ty=16, pc={"m2m:csr": csr})
        self.m.sender.take()
        self.assertIn(("/id-mn", ("http://mn.example/",), True), self.notified())

    def test_a_deleted_resource_leaves_no_plan(self) -> None:
        self.notified()
        container = self.container()
        self.assertIn(container, self.m.cse.notifier._plans)
        self.ok(Operation.DELETE, "cse-in/c", fr="CAdmin")
        self.m.sender.take()
        self.assertNotIn(container, self.m.cse.notifier._plans)

    def test_no_plan_without_subscriptions(self) -> None:
        """Every change of a resource is an event on it or its parent: a resource without
        subscriptions gets no plan (nor keeps the one it had)."""
        self.notified()
        plans = self.m.cse.notifier._plans
        self.assertEqual(set(plans), {self.container()})
        for rn in ("s", "u"):
            self.ok(Operation.DELETE, f"cse-in/c/{rn}", fr="CAdmin")
        self.m.sender.take()
        self.notified()
        self.assertEqual(plans, {})

    def test_the_outcome_handler_kept_is_the_targets(self) -> None:
        """What takes a notification's outcome is the handler of the target it went to,
        also after the subscriber's target changed."""
        thens: dict[str, set[int]] = {}
        sender = self.m.cse.notifier._sender
        send_then = sender.send_then

        def recording(target: str, request: Any, then: Any, *args: Any) -> None:
            thens.setdefault(target, set()).add(id(then))
            self.assertEqual(then.__self__.hop, target)
            send_then(target, request, then, *args)

        self.patch(sender, "send_then", recording)
        self.notified()
        self.ok(Operation.DELETE, "cse-in/Cae1", fr="Cae1")
        self.m.sender.take()
        self.notified()
        self.notified()
        self.assertEqual(
            {t: len(ids) for t, ids in thens.items()}, {"Cae1": 1, "http://u.example/n": 1}
        )

    def test_a_delivery_made_before_its_subscriber_moved(self) -> None:
        """A notification made for one target and sent after its subscription came to keep
        another (its nu registered anew in between) goes with its own target's outcome
        handler."""
        self.notified()
        notifier = self.m.cse.notifier
        [member] = [
            m
            for _, plan in notifier._plans.values()
            for m in plan
            if m.sub.attrs["nu"] == ["Cae1"]
        ]
        assert member.target is not None
        self.assertEqual(member.target[0], "Cae1")
        thens: list[tuple[str, Any]] = []
        sender = notifier._sender
        send_then = sender.send_then

        def recording(target: str, request: Any, then: Any, *args: Any) -> None:
            thens.append((target, then.__self__.hop))
            send_then(target, request, then, *args)

        self.patch(sender, "send_then", recording)
        self.patch(notifier, "_takes_notifications", True)  # (as a PoaChain does)
        event = Shared(rep={"m2m:cin": {"con": 1}}, net=3)
        before = ("Cae0", (), True, "Cae0")
        notifier._send_range([(before, event, member), (member.target, event, member)], 0, 2)
        self.assertEqual(thens, [("Cae0", "Cae0"), ("Cae1", "Cae1")])


class FrameStreamPropertyTests(SynchronousTestCase):
    """Any stream of frames, valid or not, cut anywhere: the server's own reading of whole
    frames and Autobahn's alone deliver the same messages and close with the same code, and
    nothing is raised out of dataReceived."""

    def run_stream(self, stream: bytes, cuts: list[int], fast: bool) -> tuple[list[Any], Any]:
        clock = Clock()
        factory = make_server_factory(
            RecordingHandler(), clock, OriginatorMap(), max_message_size=1000
        )
        pair = connected_pair(factory, make_client_factory(clock, AE))
        server = pair.server
        session = server.session
        assert session is not None
        got: list[Any] = []
        session.message_received = lambda data, text=False: got.append((data, text))  # type: ignore[method-assign]
        if not fast:
            server._fast_mask = None
        start = 0
        for cut in [*sorted(cuts), len(stream)]:
            if cut > start:
                server.dataReceived(stream[start:cut])
                start = cut
        out = b"".join(server.transport.stream)
        index = out.find(b"\x88")
        code = out[index + 2 : index + 4] if index >= 0 else None
        session.connection_lost()
        for call in clock.getDelayedCalls():
            call.cancel()
        return got, code

    def test_the_same_as_autobahn_alone(self) -> None:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        frame = st.builds(
            lambda opcode, payload, fin, masked, rsv, key: _raw_frame(
                opcode, payload, fin, masked, rsv, key
            ),
            # mostly data frames by the rules, with what is wrong now and then
            st.sampled_from([1, 1, 1, 2, 2, 2, 0, 8, 9, 10, 3]),
            st.one_of(
                st.binary(max_size=300),
                st.text(max_size=100).map(str.encode),
                st.binary(max_size=20).map(lambda b: b + b"\xc3"),  # cut in a code point
                st.just(b"x" * 1001),  # over the limit
            ),
            st.sampled_from([True, True, True, False]),
            st.sampled_from([True, True, True, False]),
            st.sampled_from([0, 0, 0, 0, 4, 7]),
            st.binary(min_size=4, max_size=4),
        )

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            frames=st.lists(frame, max_size=6),
            cuts=st.lists(st.integers(0, 2000), max_size=4),
        )
        def check(frames: list[bytes], cuts: list[int]) -> None:
            stream = b"".join(frames)
            self.assertEqual(
                self.run_stream(stream, cuts, fast=True),
                self.run_stream(stream, cuts, fast=False),
            )

        check()


def _raw_frame(
    opcode: int, payload: bytes, fin: bool, masked: bool, rsv: int, key: bytes
) -> bytes:
    """One frame as a peer might send it, rules broken or not."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    return head + (key + unmask(payload, key) if masked else payload)


class SharedEventTests(SynchronousTestCase):
    """A fan-out's event is encoded once in JSON, its bytes spliced into each message."""

    def notifications(self, rep: dict[str, Any]) -> tuple[Any, list[Request]]:
        from acmews.primitive import Shared

        nev = Shared(rep=rep, net=3)
        return nev, [
            Request(
                Operation.NOTIFY,
                f"Cae{i}",
                f"r{i}",
                "4",
                "/id-in",
                pc={"m2m:sgn": {"nev": nev, "sur": f"/id-in/sub{i}"}},
            )
            for i in range(3)
        ]

    def test_the_same_bytes_as_without_sharing(self) -> None:
        rep = {"m2m:cin": {"con": "x" * 1000, "ty": 4, "ri": "cin1", "lbl": ["ä"]}}
        nev, requests = self.notifications(rep)
        for request in requests:
            plain = Request(
                request.op,
                request.to,
                request.rqi,
                request.rvi,
                request.fr,
                pc={"m2m:sgn": {"nev": dict(nev), "sur": request.pc["m2m:sgn"]["sur"]}},
            )
            self.assertEqual(orjson.loads(JSON.encode(request)), orjson.loads(JSON.encode(plain)))
            from acmews.codec import CBOR

            self.assertEqual(CBOR.encode(request), CBOR.encode(plain))

    def test_encoded_once(self) -> None:
        nev, requests = self.notifications({"m2m:cin": {"con": "y" * 2000}})
        first = JSON.encode(requests[0])
        cached = nev.json
        self.assertIsNotNone(cached)
        self.assertIn(cached, first)
        JSON.encode(requests[1])
        self.assertIs(nev.json, cached)

    def test_integers_beyond_64_bits(self) -> None:
        """In the event (its JSON is made the stdlib's way) or beside it (the whole
        message is)."""
        _, requests = self.notifications({"m2m:cin": {"con": 2**70}})
        self.assertIn(str(2**70).encode(), JSON.encode(requests[0]))
        requests[1].pc["m2m:sgn"]["cr"] = 2**71
        data = JSON.encode(requests[1])
        self.assertIn(str(2**70).encode(), data)
        self.assertIn(str(2**71).encode(), data)

    def test_a_fan_out_shares_its_event(self) -> None:
        from acmews.primitive import Shared
        from acmews.testing import memory_cse

        m = memory_cse()
        for i in range(2):
            ae = {"rn": f"Cae{i}", "api": "Nx", "rr": True, "srv": ["4"]}
            created = m.request(Operation.CREATE, "cse-in", fr=f"Cae{i}", ty=2, pc={"m2m:ae": ae})
            self.assertEqual(self.successResultOf(created).rsc, RSC.CREATED)
        cnt = m.request(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        self.assertEqual(self.successResultOf(cnt).rsc, RSC.CREATED)
        for i in range(2):
            sub = {"rn": f"s{i}", "nu": [f"Cae{i}"], "enc": {"net": [3], "chty": [4]}}
            d = m.request(Operation.CREATE, "cse-in/c", ty=23, pc={"m2m:sub": sub})
            for verification in m.sender.take():
                verification.answer()
            self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        cin = m.request(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": 1}})
        self.assertEqual(self.successResultOf(cin).rsc, RSC.CREATED)
        m.clock.advance(0)
        sent = m.sender.take()
        events = [s.request.pc["m2m:sgn"]["nev"] for s in sent]
        self.assertEqual(len(events), 2)
        self.assertIs(events[0], events[1])
        self.assertIs(type(events[0]), Shared)
        surs = [s.request.pc["m2m:sgn"]["sur"] for s in sent]
        self.assertEqual(len(set(surs)), 2)
        for s in sent:
            s.answer()


class PlainNotificationEncodingTests(SynchronousTestCase):
    """A plain notification (its event shared, nothing but ``nev`` and ``sur``) is put
    together from parts its targets share: byte for byte what encoding it whole gives."""

    @hypothesis_settings(max_examples=200, deadline=None, database=None)
    @given(
        to=st.text(max_size=12),
        fr=st.text(max_size=12),
        rqi=st.text(min_size=1, max_size=12),
        rvi=st.sampled_from(["2a", "3", "4", "5"]),
        rqet=st.one_of(st.text(max_size=24), st.integers(0, 10**6)),
        rep=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=8)),
        sur=st.one_of(st.text(max_size=12), st.integers(0, 9)),
        ec=st.none() | st.integers(1, 4),
        cr=st.none() | st.text(max_size=6),
        size=st.sampled_from([0, 2000]),
        extra=st.dictionaries(st.sampled_from(["xyz", "acmewsx"]), st.integers(), max_size=1),
    )
    def test_the_same_bytes(self, **kw: Any) -> None:
        from acmews.primitive import Shared

        rep = {"m2m:cin": {**kw["rep"], "con": "x" * kw["size"]}}
        nev = Shared(rep=rep, net=3)
        for event in (nev, nev):  # made once, then from the parts kept
            sgn: dict[str, Any] = {"nev": event, "sur": kw["sur"]}
            if kw["cr"] is not None:
                sgn["cr"] = kw["cr"]
            request = Request(
                Operation.NOTIFY,
                kw["to"],
                kw["rqi"],
                kw["rvi"],
                kw["fr"],
                pc={"m2m:sgn": sgn},
                rqet=kw["rqet"],
                ec=kw["ec"],
                extra=dict(kw["extra"]),
            )
            whole = Request(
                Operation.NOTIFY,
                kw["to"],
                kw["rqi"],
                kw["rvi"],
                kw["fr"],
                pc={"m2m:sgn": {**sgn, "nev": dict(nev)}},
                rqet=kw["rqet"],
                ec=kw["ec"],
                extra=dict(kw["extra"]),
            )
            self.assertEqual(JSON.encode(request), JSON.dumps(whole.to_dict()))

    def test_parts_follow_the_rqet(self) -> None:
        """The parts are kept for one (fr, rvi, rqet): the next millisecond's rqet is not
        written with the last one's."""
        from acmews.primitive import Shared

        nev = Shared(rep={"m2m:cin": {"con": 1}}, net=3)
        sent = []
        for rqet in ("20270101T000000,001000", "20270101T000000,002000"):
            request = Request(
                Operation.NOTIFY,
                AE,
                "r1",
                "4",
                "/id-in",
                pc={"m2m:sgn": {"nev": nev, "sur": "/id-in/s"}},
                rqet=rqet,
            )
            sent.append(orjson.loads(JSON.encode(request))["rqet"])
        self.assertEqual(sent, ["20270101T000000,001000", "20270101T000000,002000"])


class PlainSubscriptionTests(SynchronousTestCase):
    """Most subscriptions take the notifier's short path (one nu, the whole resource, no
    creator, no exc, nothing done at delivery): what it sends is what the general path
    would (the notification of TS-0004 7.5.1.2.2: ``m2m:sgn`` with ``nev`` and ``sur``), and
    the eventNotificationCriteria still apply (TS-0001 9.6.8, Table 9.6.8-2: ``net``,
    ``chty``, ``atr``)."""

    def setUp(self) -> None:
        from acmews.testing import memory_cse

        self.m = m = memory_cse()
        ae = {"rn": "Cae1", "api": "Nx", "rr": True, "srv": ["4"]}
        created = m.request(Operation.CREATE, "cse-in", fr=AE, ty=2, pc={"m2m:ae": ae})
        self.assertEqual(self.successResultOf(created).rsc, RSC.CREATED)
        cnt = m.request(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        self.assertEqual(self.successResultOf(cnt).rsc, RSC.CREATED)

    def subscribe(self, rn: str, **attrs: Any) -> None:
        sub = {"rn": rn, "nu": [AE], **attrs}
        d = self.m.request(Operation.CREATE, "cse-in/c", ty=23, pc={"m2m:sub": sub})
        for verification in self.m.sender.take():
            verification.answer()
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)

    def sent(self, op: Operation, to: str, **kw: Any) -> dict[str, Any]:
        """What each subscription (by sur) is sent after request ``op``."""
        d = self.m.request(op, to, **kw)
        self.assertLess(self.successResultOf(d).rsc, 3000)
        self.m.clock.advance(0)
        out = {}
        for s in self.m.sender.take():
            sgn = s.request.pc["m2m:sgn"]
            out[sgn["sur"].rsplit("/", 1)[1]] = (s.target, sgn)
            s.answer()
        return out

    def ri(self, rn: str) -> str:
        d = self.m.request(Operation.RETRIEVE, f"cse-in/c/{rn}")
        ri: str = self.successResultOf(d).pc["m2m:sub"]["ri"]
        return ri

    def test_the_same_as_the_general_path(self) -> None:
        """A plain subscription's notification next to one that takes the general path
        (``exc``): the same target and event; only ``sur`` differs."""
        self.subscribe("plain", enc={"net": [3]})
        self.subscribe("counted", enc={"net": [3]}, exc=10)
        sent = self.sent(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": "v"}})
        self.assertEqual(set(sent), {self.ri("plain"), self.ri("counted")})
        (target_a, plain), (target_b, general) = sent[self.ri("plain")], sent[self.ri("counted")]
        self.assertEqual(target_a, target_b)
        self.assertEqual(dict(plain["nev"]), dict(general["nev"]))
        self.assertEqual(plain["nev"]["net"], 3)
        self.assertEqual(plain["nev"]["rep"]["m2m:cin"]["con"], "v")
        self.assertEqual(set(plain), {"nev", "sur"})
        self.assertEqual(plain["sur"], f"/id-in/{self.ri('plain')}")

    def test_filters_apply(self) -> None:
        """``net``, ``chty`` and ``atr`` on the short path."""
        self.subscribe("cin", enc={"net": [3], "chty": [4]})
        self.subscribe("cnt", enc={"net": [3], "chty": [3]})
        self.subscribe("update", enc={"net": [1]})
        self.subscribe("lbl", enc={"net": [1], "atr": ["lbl"]})
        sent = self.sent(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": "v"}})
        self.assertEqual(set(sent), {self.ri("cin")})
        sent = self.sent(Operation.UPDATE, "cse-in/c", pc={"m2m:cnt": {"mni": 5}})
        self.assertEqual(set(sent), {self.ri("update")})
        sent = self.sent(Operation.UPDATE, "cse-in/c", pc={"m2m:cnt": {"lbl": ["a"]}})
        self.assertEqual(set(sent), {self.ri("update"), self.ri("lbl")})

    def test_a_changed_subscription_is_read_again(self) -> None:
        """The short path's compiled subscription is that of its attrs as they are: after an
        UPDATE of ``enc`` the new filter applies."""
        self.subscribe("s", enc={"net": [3], "chty": [4]})
        sent = self.sent(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": "v"}})
        self.assertEqual(set(sent), {self.ri("s")})
        self.sent(Operation.UPDATE, "cse-in/c/s", pc={"m2m:sub": {"enc": {"net": [1]}}})
        sent = self.sent(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": "w"}})
        self.assertEqual(sent, {})


def plain(rqi: str = "n1", to: str = AE, sur: str = "/id-in/sub1", **rep: Any) -> Notification:
    """A plain notification of a CIN's creation, as the notifier makes one."""
    event = Shared(rep={"m2m:cin": {"con": "v", **rep}}, net=3)
    return Notification(event, sur, to, rqi, "/id-in", "4", "20270101T000000,001000")


class NotificationTests(SynchronousTestCase):
    """A fan-out's plain notification kept as its parts (:class:`Notification`): encoded,
    and wherever it goes other than a live session, the request it stands for (TS-0004
    7.5.1.2.2: ``m2m:sgn`` with ``nev`` and ``sur``, sent with ``rqet``)."""

    def test_the_request_it_stands_for(self) -> None:
        n = plain()
        request = n.request()
        self.assertIs(type(request), Request)
        self.assertEqual(request.op, Operation.NOTIFY)
        self.assertEqual(n.op, Operation.NOTIFY)
        self.assertEqual(
            (request.to, request.rqi, request.fr, request.rvi, request.rqet),
            (AE, "n1", "/id-in", "4", "20270101T000000,001000"),
        )
        self.assertEqual(request.pc, {"m2m:sgn": {"nev": n.event, "sur": "/id-in/sub1"}})
        self.assertIs(request.pc["m2m:sgn"]["nev"], n.event)
        self.assertEqual(
            optional_request_values(request).count(None), len(OPTIONAL_REQUEST_PARAMETERS) - 2
        )
        self.assertEqual(request.extra, {})
        self.assertIs(as_request(request), request)
        self.assertEqual(as_request(n), request)

    @hypothesis_settings(max_examples=200, deadline=None, database=None)
    @given(
        to=st.text(max_size=12),
        fr=st.text(max_size=12),
        rqi=st.text(min_size=1, max_size=12),
        rvi=st.sampled_from(["2a", "3", "4", "5"]),
        rqet=st.text(max_size=24),
        sur=st.text(max_size=12),
        rep=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=8)),
    )
    def test_encoded_as_that_request(self, **kw: Any) -> None:
        """Byte for byte in JSON and CBOR; the parts the event keeps are those of its
        (fr, rvi, rqet), whichever way it was encoded last."""
        event = Shared(rep={"m2m:cin": kw["rep"]}, net=3)
        n = Notification(event, kw["sur"], kw["to"], kw["rqi"], kw["fr"], kw["rvi"], kw["rqet"])
        whole = JSON.dumps(
            Request(
                Operation.NOTIFY,
                kw["to"],
                kw["rqi"],
                kw["rvi"],
                kw["fr"],
                pc={"m2m:sgn": {"nev": dict(event), "sur": kw["sur"]}},
                rqet=kw["rqet"],
            ).to_dict()
        )
        for _ in range(2):  # made once, then from the parts kept
            self.assertEqual(JSON.encode(n), whole)
            self.assertEqual(JSON.encode(n.request()), whole)
        self.assertEqual(CBOR.encode(n), CBOR.encode(n.request()))
        other = Notification(event, kw["sur"], kw["to"], kw["rqi"], kw["fr"], kw["rvi"], "x")
        self.assertEqual(orjson.loads(JSON.encode(other))["rqet"], "x")
        self.assertEqual(JSON.encode(n), whole)


class NotificationSendTests(_LiveChainTestCase):
    """The poa chain sends a :class:`Notification` on a live session as it is; every other
    way, and after a failure, as its request."""

    def test_a_live_session_sends_it_as_it_is(self) -> None:
        self.assertTrue(self.chain.takes_notifications)
        then = Outcomes()
        n = plain()
        self.chain.send_then(AE, n, then, (), True)
        # what waits for the answer holds the parts, not a request made of them
        self.assertEqual([live.request for live in self.chain._live], [n])
        self.assertEqual([self.wire.sent[0]], [orjson.loads(JSON.encode(n.request()))])
        self.wire.answer(self.session, 0)
        self.assertEqual(then.rsc(), [RSC.OK])
        self.assertEqual(self.chain.counts.delivered, 1)
        self.assertEqual(self.chain._live, set())

    def test_a_connection_without_notify_then_gets_the_request(self) -> None:
        connection = FakeConnection(AE)
        self.map.unbind(AE, self.session)
        self.map.bind(AE, connection)
        then = Outcomes()
        n = plain()
        self.chain.send_then(AE, n, then, (), True)
        [(request, _, _)] = connection.sent
        self.assertIs(type(request), Request)
        self.assertEqual(request, n.request())
        connection.answer()
        self.assertEqual(then.rsc(), [RSC.OK])

    def test_a_lost_connection_queues_the_request(self) -> None:
        then = Outcomes()
        n = plain()
        self.chain.send_then(AE, n, then, (), True)
        self.map.unbind(AE, self.session)
        self.session.connection_lost()
        self.assertEqual(then.rsc(), [RSC.ACCEPTED])
        [queued] = self.chain.queued(AE)
        self.assertIs(type(queued), Request)
        self.assertEqual(queued, n.request())

    def test_no_live_connection_queues_the_request(self) -> None:
        self.map.unbind(AE, self.session)
        then = Outcomes()
        n = plain()
        self.chain.send_then(AE, n, then, (), True)
        self.assertEqual(then.rsc(), [RSC.ACCEPTED])
        self.assertEqual(self.chain.queued(AE), [n.request()])
        self.assertIs(type(self.chain.queued(AE)[0]), Request)


class NotificationPoaTests(SynchronousTestCase):
    """A poa step gets the request a :class:`Notification` stands for: with no live
    connection, and after the live connection failed."""

    def setUp(self) -> None:
        from .test_poa import FakeConnector

        self.clock = Clock()
        self.map = FakeOriginatorMap()
        self.http = FakeConnector("http")
        self.chain = PoaChain(self.map, self.clock, [self.http], timeout=10)

    def tearDown(self) -> None:
        self.chain.stop()

    def the_request_reaches_the_poa(self, n: Notification, then: Outcomes) -> None:
        [(url, request, _, d)] = self.http.calls
        self.assertEqual(url, "http://127.0.0.1:9/n")
        self.assertIs(type(request), Request)
        self.assertEqual(request, n.request())
        d.callback(Response(RSC.OK, request.rqi))
        self.assertEqual(then.rsc(), [RSC.OK])

    def test_with_no_live_connection(self) -> None:
        then, n = Outcomes(), plain()
        self.chain.send_then(AE, n, then, ("http://127.0.0.1:9/n",), True)
        self.the_request_reaches_the_poa(n, then)

    def test_after_the_live_connection_is_lost(self) -> None:
        session = Session(Wire(), JSON, self.clock, None, originator=AE)
        self.map.bind(AE, session)
        then, n = Outcomes(), plain()
        self.chain.send_then(AE, n, then, ("http://127.0.0.1:9/n",), True)
        self.assertEqual(self.http.calls, [])
        self.map.unbind(AE, session)
        session.connection_lost()
        self.the_request_reaches_the_poa(n, then)


class _TakesNotifications(FakeSender):
    """A sender that takes a :class:`Notification` (and records it as it is)."""

    takes_notifications = True


class NotifierNotificationTests(SynchronousTestCase):
    """The notifier hands a plain subscription's notification to a sender that takes one as
    a :class:`Notification`, and the request to any other; a subscription that is not plain
    (``exc`` counts down) goes as a request either way."""

    def fan_out(self, sender: FakeSender) -> dict[str, Any]:
        """What each subscription (``plain``, ``counted``) is sent for a CIN's creation."""
        clock = Clock()
        clock.advance(START)
        m = MemoryCSE(CSE(CSEConfig(poa=(URL,)), sender, clock), clock, sender, FakeConnection())
        ae = {"rn": "Cae1", "api": "Nx", "rr": True, "srv": ["4"]}
        created = m.request(Operation.CREATE, "cse-in", fr=AE, ty=2, pc={"m2m:ae": ae})
        self.assertEqual(self.successResultOf(created).rsc, RSC.CREATED)
        cnt = m.request(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        self.assertEqual(self.successResultOf(cnt).rsc, RSC.CREATED)
        for rn, extra in (("plain", {}), ("counted", {"exc": 10})):
            sub = {"rn": rn, "nu": [AE], "enc": {"net": [3]}, **extra}
            d = m.request(Operation.CREATE, "cse-in/c", ty=23, pc={"m2m:sub": sub})
            for verification in sender.take():
                verification.answer()
            self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        cin = m.request(Operation.CREATE, "cse-in/c", ty=4, pc={"m2m:cin": {"con": "v"}})
        self.assertEqual(self.successResultOf(cin).rsc, RSC.CREATED)
        clock.advance(0)
        out = {}
        for sent in sender.take():
            sur = as_request(sent.request).pc["m2m:sgn"]["sur"]
            ri = self.successResultOf(m.request(Operation.RETRIEVE, "cse-in/c/plain"))
            out["plain" if sur.endswith(ri.pc["m2m:sub"]["ri"]) else "counted"] = sent
            sent.answer()
        return out

    def test_to_a_sender_that_takes_one(self) -> None:
        sent = self.fan_out(_TakesNotifications())
        plain, counted = sent["plain"], sent["counted"]
        self.assertIs(type(plain.request), Notification)
        self.assertIs(type(counted.request), Request)
        n = plain.request
        self.assertEqual((plain.target, n.to, n.fr, n.rvi), (AE, AE, "/id-in", "4"))
        self.assertEqual(n.rqet, counted.request.rqet)
        self.assertEqual((plain.poa, plain.store), (counted.poa, counted.store))
        self.assertEqual(dict(n.event), dict(counted.request.pc["m2m:sgn"]["nev"]))
        self.assertEqual(set(n.request().pc["m2m:sgn"]), {"nev", "sur"})

    def test_to_any_other_sender_the_request(self) -> None:
        sent = self.fan_out(FakeSender())
        plain = sent["plain"].request
        self.assertIs(type(plain), Request)
        self.assertEqual(set(plain.pc["m2m:sgn"]), {"nev", "sur"})
        self.assertEqual(plain.rqet, sent["counted"].request.rqet)


class DeliveryRangeTests(SynchronousTestCase):
    """A fan-out's deliveries are sent a range at a time (a reactor turn each); what a range
    has sent is not kept until the last range is (freed while still in the cache)."""

    def test_a_sent_range_is_not_kept(self) -> None:
        from acmews.testing import memory_cse

        m = memory_cse()
        event = Shared(rep={"m2m:cin": {"con": 1}}, net=3)
        plain = [
            _Member(
                cast(Any, None), _Compiled({}, compile_policy({}), f"/id-in/sub{i}", f"Cae{i}")
            )
            for i in range(3)
        ]
        deliveries: list[Any] = [
            ((f"Cae{i}", (), True, f"Cae{i}"), event, plain[i]) for i in range(3)
        ]
        m.cse.notifier._send_range(deliveries, 0, 2)
        self.assertEqual(deliveries[:2], [None, None])
        self.assertIs(deliveries[2][2], plain[2])
        sent = m.sender.take()
        self.assertEqual([s.target for s in sent], ["Cae0", "Cae1"])
        m.cse.notifier._send_range(deliveries, 2, 10)  # the last range: past the end
        self.assertEqual(deliveries, [None, None, None])
        self.assertEqual([s.target for s in m.sender.take()], ["Cae2"])
        for s in sent:
            s.answer()
