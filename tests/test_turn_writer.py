"""The server's frames of a reactor turn go to each socket in one write at the turn's end
(acmews.protocol.TurnWriter): real sockets on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from acmews.client import connect
from acmews.codes import Operation
from acmews.primitive import Request, Response
from acmews.protocol import OneM2MServerProtocol, _AutobahnFastPath

from .helpers import NO_PING, start_cse


def retrieve(rqi: str, fr: str = "CAdmin") -> Request:
    return Request(Operation.RETRIEVE, "cse-in", rqi, "4", fr)


def _frames_in(data: bytes) -> int:
    """How many whole unmasked frames ``data`` holds (a server's)."""
    count = pos = 0
    while pos < len(data):
        length, pos = data[pos + 1] & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        pos += length
        count += 1
    return count


class TurnWriterTests(TestCase):
    timeout = 20

    def start(self) -> Deferred[tuple[Any, str]]:
        return Deferred.fromCoroutine(start_cse(self))

    def writes(self) -> list[int]:
        """Patch the server's direct writes: the frames in each, in order."""
        sizes: list[int] = []
        original = _AutobahnFastPath._send_turn

        def counted(protocol: OneM2MServerProtocol, data: bytes) -> None:
            sizes.append(_frames_in(data))
            original(protocol, data)

        self.patch(_AutobahnFastPath, "_send_turn", counted)
        return sizes

    @inlineCallbacks
    def test_pipelined_answers_share_writes(self) -> Any:
        _, url = yield self.start()
        writes = self.writes()
        client = yield connect(url, originator="CAdmin", options=NO_PING)
        self.addCleanup(client.close)
        answers = yield gatherResults([client.request(retrieve(f"p{i}")) for i in range(64)])
        self.assertEqual([a.rqi for a in answers], [f"p{i}" for i in range(64)])
        self.assertEqual({a.rsc for a in answers}, {2000})
        self.assertEqual(sum(writes), 64)  # every answer went through the turn's writes
        self.assertLess(len(writes), 64)  # several in one write

    @inlineCallbacks
    def test_a_full_socket_hands_the_rest_to_the_transport(self) -> Any:
        """The client does not read for a while: what the socket does not take goes to the
        transport, and everything arrives whole and in order once the client reads."""
        service, url = yield self.start()
        client = yield connect(url, originator="CAdmin", options=NO_PING)
        self.addCleanup(client.close)
        [server_session] = [s for s in service.factory.sessions if s.originator == "CAdmin"]
        handed: list[int] = []
        transports = []
        for protocol in _protocols(service):
            transports.append(protocol.transport)
            original = protocol.transport.write
            protocol.transport.write = lambda data, o=original: (handed.append(len(data)), o(data))
        client_transport = client.session._send.__self__.transport  # type: ignore[attr-defined]
        client_transport.pauseProducing()
        got: list[str] = []

        def answer(request: Request) -> Response:
            got.append(request.rqi)
            return Response(2000, request.rqi, request.rvi)

        big = {"m2m:sgn": {"sur": "x" * 200_000}}
        sent = [
            server_session.request(
                Request(Operation.NOTIFY, "CAdmin", f"n{i}", "4", "/id-in", pc=big), 10
            )
            for i in range(60)
        ]
        client.session.handler = _Handler(answer)
        service.factory.turn_writer.flush()  # the end of this turn, now
        self.assertTrue(handed)  # the socket was full: the transport took the rest
        client_transport.resumeProducing()
        answers = yield gatherResults(sent)
        self.assertEqual([a.rsc for a in answers], [2000] * 60)
        self.assertEqual(got, [f"n{i}" for i in range(60)])

    @inlineCallbacks
    def test_a_close_goes_after_what_waits(self) -> Any:
        """A frame of Autobahn's (here the close) written in the same turn as waiting frames
        goes after them on the wire."""
        service, url = yield self.start()
        client = yield connect(url, originator="CAdmin", options=NO_PING)
        closed = client.session.when_closed()
        [server_session] = [s for s in service.factory.sessions if s.originator == "CAdmin"]
        [protocol] = _protocols(service)
        wire: list[bytes] = []
        transport = protocol.transport
        transport.socket = _Recording(transport.socket, wire)
        pending = server_session.request(
            Request(Operation.NOTIFY, "CAdmin", "last", "4", "/id-in", pc={"m2m:sgn": {}}), 10
        )
        pending.addErrback(lambda f: None)  # the connection closes before the answer
        server_session.close(1000, "bye")
        yield closed
        sent = b"".join(wire)
        self.assertLess(sent.index(b'"last"'), sent.index(b"\x88"))


class _Recording:
    """A socket that keeps a copy of everything sent on it (whoever sends: the turn writer or
    the transport)."""

    def __init__(self, socket: Any, wire: list[bytes]) -> None:
        self._socket = socket
        self._wire = wire

    def send(self, data: bytes) -> int:
        sent: int = self._socket.send(data)
        self._wire.append(bytes(data[:sent]))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def _protocols(service: Any) -> list[OneM2MServerProtocol]:
    """The server protocols of ``service``'s connections (through their sessions' send)."""
    return [s._send.__self__ for s in service.factory.sessions]


class _Handler:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def handle_request(self, request: Request, connection: Any) -> Response:
        return self.answer(request)
