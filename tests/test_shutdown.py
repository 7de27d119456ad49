"""A graceful stop (twistd's on SIGTERM): stop accepting, answer what is in flight, close with
1001, within --shutdown-timeout; and a client that comes back by itself."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from acmews.codes import RSC, Operation
from acmews.config import Config
from acmews.errors import TargetNotReachable
from acmews.interfaces import IConnection, IRequestHandler
from acmews.primitive import Request, Response
from acmews.server import make_service
from acmews.testing import connected_pair as pair
from acmews.testing import make_client_factory, options


@implementer(IRequestHandler)
class Gate:
    """Holds every request until :meth:`release`; ``arrived`` fires once ``expect`` came."""

    def __init__(self, expect: int = 0) -> None:
        self.held: list[tuple[Deferred[Response], Request]] = []
        self.expect = expect
        self.arrived: Deferred[None] = Deferred()

    def handle_request(self, request: Request, connection: IConnection) -> Deferred[Response]:
        d: Deferred[Response] = Deferred()
        self.held.append((d, request))
        if len(self.held) == self.expect:
            self.arrived.callback(None)
        return d

    def release(self, count: int | None = None) -> None:
        held, self.held = self.held[:count], self.held[len(self.held[:count]) :]
        for d, request in held:
            d.callback(Response(RSC.OK, request.rqi, request.rvi, {"answered": request.rqi}))


def retrieve(rqi: str) -> Request:
    return Request(Operation.RETRIEVE, "cse-in", rqi, fr="Cae1")


class DrainTests(SynchronousTestCase):
    """The stop's steps, on connections in memory and a clock of the test's."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = Config(store="memory:", connection=options(), shutdown_timeout=5.0)
        self.service: Any = make_service(config, self.reactor)
        self.service.startService()
        self.gate = Gate()
        self.service.factory.handler = self.gate
        self.p = pair(self.service.factory, make_client_factory(self.reactor))
        self.sent = [self.p.client_session.request(retrieve(f"r{n}")) for n in range(3)]
        self.p.flush()
        self.assertEqual(len(self.gate.held), 3)

    def test_in_flight_requests_are_answered_then_1001(self) -> None:
        stopping = self.service.stopService()
        self.p.flush()
        self.assertIsNone(self.service.listeners[0].port)  # accepts no more
        self.assertEqual(
            self.service.readiness()["listening"], {"ok": False, "reason": "stopping"}
        )
        self.assertNoResult(stopping)
        self.gate.release(1)
        self.p.flush()
        self.assertTrue(self.sent[0].called)
        self.assertTrue(self.p.client_session.connected)  # two more to answer
        self.gate.release()
        self.p.flush()
        answers = [self.successResultOf(d).pc for d in self.sent]
        self.assertEqual(answers, [{"answered": f"r{n}"} for n in range(3)])
        self.assertFalse(self.p.client_session.connected)
        self.assertEqual(self.p.client.remoteCloseCode, 1001)
        self.successResultOf(stopping)

    def test_what_is_unanswered_after_the_timeout_is_closed_anyway(self) -> None:
        with capturedLogs() as events:
            stopping = self.service.stopService()
            self.p.flush()
            self.gate.release(1)
            self.p.flush()
            self.reactor.advance(4.9)
            self.assertTrue(self.p.client_session.connected)
            self.reactor.advance(0.1)
            self.p.flush()
        self.successResultOf(stopping)
        self.assertEqual(self.p.client.remoteCloseCode, 1001)
        self.assertEqual(self.successResultOf(self.sent[0]).rsc, RSC.OK)
        for d in self.sent[1:]:
            self.failureResultOf(d, TargetNotReachable)
        lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertTrue(any("after 5 s" in line for line in lines), lines)
        self.gate.release()  # answered into a closed connection: dropped

    def test_a_connection_that_opens_while_draining_is_closed(self) -> None:
        stopping = self.service.stopService()
        late = pair(self.service.factory, make_client_factory(self.reactor, originator="Clate"))
        late.flush()
        self.assertEqual(late.client.remoteCloseCode, 1001)
        self.gate.release()
        self.p.flush()
        self.successResultOf(stopping)


class LoopbackShutdownTests(TestCase):
    """Real sockets on 127.0.0.1."""

    timeout = 20

    async def test_in_flight_answered_then_1001(self) -> None:
        from twisted.internet import reactor

        from acmews.client import client_endpoint
        from acmews.protocol import OneM2MClientFactory

        from .helpers import NO_PING, start_cse

        service, url = await start_cse(self)
        # the server waits for the client's closing handshake however loaded the machine
        # is: after its 1 s default it would abort the connection, and with it a close frame
        # the client (not scheduled meanwhile) had not read yet
        service.factory.setProtocolOptions(closeHandshakeTimeout=60)
        gate = Gate(expect=5)
        service.factory.handler = gate
        factory = OneM2MClientFactory(url, originator="Cae1", reactor=reactor, options=NO_PING)
        protocol = await client_endpoint(url, reactor).connect(factory)
        session = await factory.ready
        sent = [session.request(retrieve(f"r{n}")) for n in range(5)]
        await gate.arrived
        closed = session.when_closed()
        stopping = service.stopService()
        gate.release()
        answers = [await d for d in sent]
        self.assertEqual([a.pc for a in answers], [{"answered": f"r{n}"} for n in range(5)])
        await closed
        self.assertEqual(protocol.remoteCloseCode, 1001)
        await stopping

    async def test_a_reconnecting_client_comes_back(self) -> None:
        from twisted.internet import reactor

        from acmews.client import ReconnectingClient
        from acmews.tap import Options, makeService

        from .helpers import NO_PING, start_cse
        from .interop.acme import settle_autobahn_timers

        # the reconnecting client's handshakes run Autobahn's timers on the real reactor
        settle_autobahn_timers(self)
        first, url = await start_cse(self)
        client = ReconnectingClient(
            url, originator="Crc", reactor=reactor, options=NO_PING, initial_delay=0.05
        )
        client.startService()
        self.addCleanup(client.stopService)
        connected = await client.when_connected()
        self.assertEqual((await connected.retrieve("cse-in")).rsc, RSC.OK)
        lost = connected.session.when_closed()
        await first.stopService()
        await lost
        self.failureResultOf(client.request(retrieve("while-away")), TargetNotReachable)
        port = url.rsplit(":", 1)[1]
        options = Options()
        options.parseOptions(
            [
                *("--listen", f"tcp:{port}:interface=127.0.0.1"),
                *("--store", "memory:", "--ping-interval", "0"),
            ]
        )
        second: Any = makeService(options, reactor)
        second.startService()
        self.addCleanup(second.stopService)
        again = await client.when_connected()
        self.assertIsNot(again, connected)
        self.assertEqual((await again.retrieve("cse-in")).rsc, RSC.OK)
        self.assertEqual(client.connections, 2)
