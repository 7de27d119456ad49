"""In-memory pairing of acmews protocols (iosim), fakes and small builders for tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from acmews.interfaces import IConnection, IHandshakeAuthorizer, IRequestHandler
from acmews.options import ConnectionOptions
from acmews.originators import OriginatorMap
from acmews.primitive import Request, Response
from acmews.protocol import (
    OneM2MClientFactory,
    OneM2MClientProtocol,
    OneM2MServerFactory,
    OneM2MServerProtocol,
)
from acmews.session import Session

NO_TIMERS = {"open_handshake_timeout": 0, "close_handshake_timeout": 0, "ping_interval": 0}


#: for loopback tests: no keep-alive pings (the handshake timers stay on the real reactor)
NO_PING = ConnectionOptions(ping_interval=0)


def options(**kw: Any) -> ConnectionOptions:
    """Connection options without Autobahn's timers (they run on txaio's global loop),
    changed by ``kw``."""
    values: dict[str, Any] = dict(NO_TIMERS)
    values.update(kw)
    return ConnectionOptions(**values)


@implementer(IRequestHandler)
class RecordingHandler:
    """Answers with ``answer(request)`` (default: 2000 echoing ``pc``); records requests."""

    def __init__(
        self, answer: Callable[[Request, IConnection], Response | Deferred[Response]] | None = None
    ) -> None:
        self.requests: list[tuple[Request, IConnection]] = []
        self.answer = answer

    def handle_request(
        self, request: Request, connection: IConnection
    ) -> Response | Deferred[Response]:
        self.requests.append((request, connection))
        if self.answer is not None:
            return self.answer(request, connection)
        return Response(2000, request.rqi, request.rvi, request.pc)


class Pair:
    """A server and a client protocol connected through iosim, with their clock."""

    def __init__(
        self,
        server_factory: OneM2MServerFactory,
        client_factory: OneM2MClientFactory,
        pump: IOPump,
        server: OneM2MServerProtocol,
        client: OneM2MClientProtocol,
    ) -> None:
        self.server_factory = server_factory
        self.client_factory = client_factory
        self.pump = pump
        self.server = server
        self.client = client

    def flush(self) -> None:
        self.pump.flush()

    @property
    def server_session(self) -> Session:
        assert self.server.session is not None
        return self.server.session

    @property
    def client_session(self) -> Session:
        assert self.client.session is not None
        return self.client.session


def make_server_factory(
    handler: IRequestHandler | None,
    clock: Clock,
    originators: OriginatorMap | None = None,
    authorizer: IHandshakeAuthorizer | None = None,
    limits: Any = None,
    **kw: Any,
) -> OneM2MServerFactory:
    return OneM2MServerFactory(
        handler,
        originators,
        url="ws://127.0.0.1:8180",
        clock=clock,
        reactor=clock,
        options=options(**kw),
        authorizer=authorizer,
        limits=limits,
    )


def make_client_factory(
    clock: Clock,
    originator: str | None = "Cae1",
    subprotocols: Sequence[str] = ("oneM2M.json",),
    handler: IRequestHandler | None = None,
    **kw: Any,
) -> OneM2MClientFactory:
    return OneM2MClientFactory(
        "ws://127.0.0.1:8180",
        originator=originator,
        subprotocols=subprotocols,
        handler=handler,
        clock=clock,
        reactor=clock,
        options=options(**kw),
    )


_port = [40000]


def pair(server_factory: OneM2MServerFactory, client_factory: OneM2MClientFactory) -> Pair:
    """Connect a new server protocol and client protocol in memory and run the handshake."""
    _port[0] += 1
    server_addr = IPv4Address("TCP", "127.0.0.1", 8180)
    client_addr = IPv4Address("TCP", "127.0.0.1", _port[0])
    server = server_factory.buildProtocol(client_addr)
    client = client_factory.buildProtocol(server_addr)
    server_transport = FakeTransport(
        server, isServer=True, hostAddress=server_addr, peerAddress=client_addr
    )
    client_transport = FakeTransport(
        client, isServer=False, hostAddress=client_addr, peerAddress=server_addr
    )
    pump = connect(server, server_transport, client, client_transport, greet=True)
    pump.flush()
    return Pair(server_factory, client_factory, pump, server, client)


async def start_cse(test: Any, *argv: str) -> tuple[Any, str]:
    """``twistd acmews``'s service (makeService) on 127.0.0.1, port 0, with the global
    reactor, stopped at ``test``'s cleanup; its service and ``ws://`` URL."""
    from twisted.internet import reactor

    from acmews.tap import Options, makeService

    options = Options()
    options.parseOptions(
        [
            *("--listen", "tcp:0:interface=127.0.0.1", "--ping-interval", "0"),
            *("--store", "memory:", *argv),
        ]
    )
    service: Any = makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    test.addCleanup(service.stopService)
    listening = next(s for s in service if hasattr(s, "_waitingForPort"))
    bound: Deferred[Any] = Deferred()

    def found(port: Any) -> Any:
        bound.callback(port)
        return port  # keep it: stopService needs the port from this Deferred

    listening._waitingForPort.addCallback(found)
    port = await bound
    return service, f"ws://127.0.0.1:{port.getHost().port}"
