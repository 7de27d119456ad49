"""What a server reads of an opening handshake before it answers: the request's head is
bounded (431), searched once, and a connection that binds no originator is closed in time."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from acmews.options import DEFAULT_MAX_HANDSHAKE_SIZE, ConnectionOptions
from acmews.testing import RecordingHandler, make_server_factory


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


class OptionTests(SynchronousTestCase):
    def test_max_handshake_size(self) -> None:
        from twisted.internet.testing import MemoryReactorClock
        from twisted.python import usage

        from acmews.tap import Options, makeService

        def factory(*argv: str) -> Any:
            options = Options()
            options.parseOptions(["--store", "memory:", *argv])
            return makeService(options, MemoryReactorClock()).factory

        self.assertEqual(factory().options.max_handshake_size, 16 * 1024)
        self.assertEqual(factory("--max-handshake-size", "4096").options.max_handshake_size, 4096)
        self.assertRaises(usage.UsageError, factory, "--max-handshake-size", "0")
