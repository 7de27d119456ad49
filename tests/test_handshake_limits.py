"""What a server reads of an opening handshake before it answers, and how long a connection
may stay without an originator: the request's head is bounded (431) and searched once, and a
connection that binds no originator is closed in time."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from acmews.options import DEFAULT_MAX_HANDSHAKE_SIZE, ConnectionOptions
from acmews.originators import OriginatorMap
from acmews.primitive import Request, Response
from acmews.testing import (
    Pair,
    RecordingHandler,
    connected_pair,
    make_client_factory,
    make_server_factory,
)


def request_head(*extra: bytes) -> bytes:
    """A valid opening request claiming Cae1, with ``extra`` header lines."""
    lines = [
        b"GET / HTTP/1.1",
        b"Host: 127.0.0.1:8180",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Protocol: oneM2M.json",
        b"X-M2M-Origin: Cae1",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class RequestHeadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def server(self, **kw: Any) -> tuple[Any, StringTransport]:
        factory = make_server_factory(RecordingHandler(), self.clock, **kw)
        address = IPv4Address("TCP", "10.0.0.1", 5000)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_default(self) -> None:
        self.assertEqual(ConnectionOptions().max_handshake_size, 16 * 1024)
        self.assertEqual(DEFAULT_MAX_HANDSHAKE_SIZE, 16 * 1024)
        self.assertRaises(ValueError, ConnectionOptions, max_handshake_size=0)

    def test_the_head_is_parsed_once_whatever_the_reads(self) -> None:
        """Autobahn searched its whole buffer for the end of the headers on every read; the
        head now reaches it once, complete, even one byte per read (the end straddles
        reads)."""
        protocol, transport = self.server()
        parsed: list[bytes] = []
        process = protocol.processHandshake

        def counting() -> None:
            parsed.append(protocol.data)
            process()

        protocol.processHandshake = counting
        head = request_head(*[b"X-Pad-%d: %s" % (i, b"a" * 40) for i in range(100)])
        for i in range(len(head)):
            protocol.dataReceived(head[i : i + 1])
        self.assertEqual(parsed, [head])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        self.assertEqual(protocol.session.originator, "Cae1")

    def test_frames_after_the_head_in_the_same_read_are_kept(self) -> None:
        protocol, transport = self.server()
        ping = b"\x89\x80abcd"  # a masked, empty ping
        protocol.dataReceived(request_head()[:10])
        protocol.dataReceived(request_head()[10:] + ping)
        self.assertIn(b"\x8a\x00", transport.value())  # its pong

    def test_a_head_past_the_bound_is_431(self) -> None:
        head = request_head()
        for size, accepted in ((len(head), True), (len(head) - 1, False)):
            protocol, transport = self.server(max_handshake_size=size)
            protocol.dataReceived(head)
            status = transport.value().split(b"\r\n", 1)[0]
            if accepted:
                self.assertEqual(status[:12], b"HTTP/1.1 101")
            else:
                self.assertEqual(status, b"HTTP/1.1 431 Request Header Fields Too Large")
                self.assertTrue(transport.disconnecting)  # the answer is flushed, then closed

    def test_never_ending_headers_are_431_without_being_kept(self) -> None:
        protocol, transport = self.server()
        line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        sent = 16
        while not transport.disconnecting:
            protocol.dataReceived(line)
            sent += len(line)
            self.assertLess(sent, 2 * DEFAULT_MAX_HANDSHAKE_SIZE)
        self.assertGreater(sent, DEFAULT_MAX_HANDSHAKE_SIZE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        answered = len(transport.value())
        for _ in range(100):  # what follows is not parsed, nor answered
            protocol.dataReceived(line)
        self.assertEqual(len(transport.value()), answered)
        self.assertIsNone(protocol.session)


class UnboundTimeoutTests(SynchronousTestCase):
    """A connection holds a slot: one that names no originator and registers no AE is closed
    after ``unbound_timeout``, so that slots cannot be squatted by clients that never say
    who they are."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.originators = OriginatorMap()

        def answer(request: Request, connection: Any) -> Response:
            return Response(2001, request.rqi, "4", {"m2m:ae": {"aei": "Cnew", "api": "Nx"}})

        self.handler = RecordingHandler(answer)

    def connect(self, originator: str | None, **kw: Any) -> Pair:
        factory = make_server_factory(self.handler, self.clock, self.originators, **kw)
        return connected_pair(factory, make_client_factory(self.clock, originator))

    def test_default(self) -> None:
        self.assertEqual(ConnectionOptions().unbound_timeout, 30.0)
        self.assertRaises(ValueError, ConnectionOptions, unbound_timeout=-1)

    def test_an_unbound_connection_is_closed_1008(self) -> None:
        p = self.connect(None)
        self.clock.advance(29.9)
        p.flush()
        self.assertTrue(p.server_session.connected)
        with capturedLogs() as events:
            self.clock.advance(0.1)
            p.flush()
        self.assertEqual(p.client.remoteCloseCode, 1008)
        self.assertEqual(
            p.client.remoteCloseReason, "no AE registered on the connection within 30 s"
        )
        self.assertFalse(p.server_session.connected)
        self.assertEqual(len(self.originators), 0)
        self.assertTrue(any("1008" in formatEvent(e) for e in events))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_registering_an_ae_in_time_keeps_it(self) -> None:
        p = self.connect(None, unbound_timeout=5)
        d = p.client_session.request(
            Request(1, "cse-in", "reg", "4", None, ty=2, pc={"m2m:ae": {"api": "Nx"}})  # type: ignore[arg-type]
        )
        p.flush()
        self.assertEqual(self.successResultOf(d).rsc, 2001)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timer is gone
        self.clock.advance(60)
        p.flush()
        self.assertIs(self.originators.lookup("Cnew"), p.server_session)
        p.client_session.close()
        p.flush()

    def test_no_timer_for_a_bound_connection_or_when_off(self) -> None:
        for originator, timeout in (("Cae1", 30.0), (None, 0.0)):
            p = self.connect(originator, unbound_timeout=timeout)
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.assertTrue(p.server_session.connected)
            p.client_session.close()
            p.flush()

    def test_a_closed_connection_takes_its_timer(self) -> None:
        p = self.connect(None)
        p.client_session.close()
        p.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OptionTests(SynchronousTestCase):
    def factory(self, *argv: str) -> Any:
        from twisted.internet.testing import MemoryReactorClock

        from acmews.tap import Options, makeService

        options = Options()
        options.parseOptions(["--store", "memory:", *argv])
        return makeService(options, MemoryReactorClock()).factory

    def test_max_handshake_size(self) -> None:
        from twisted.python import usage

        self.assertEqual(self.factory().options.max_handshake_size, 16 * 1024)
        size = self.factory("--max-handshake-size", "4096").options.max_handshake_size
        self.assertEqual(size, 4096)
        self.assertRaises(usage.UsageError, self.factory, "--max-handshake-size", "0")

    def test_unbound_timeout(self) -> None:
        from twisted.python import usage

        self.assertEqual(self.factory().options.unbound_timeout, 30.0)
        self.assertEqual(self.factory("--unbound-timeout", "5").options.unbound_timeout, 5.0)
        self.assertEqual(self.factory("--unbound-timeout", "0").options.unbound_timeout, 0.0)
        self.assertRaises(usage.UsageError, self.factory, "--unbound-timeout", "-1")
