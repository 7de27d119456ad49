"""Test doubles for code built on acmews: no sockets, no global reactor, no real time.

``acmews.testing`` is to acmews what ``treq.testing`` is to treq. A gateway author tests
the code that sits on acmews (an :class:`~acmews.interfaces.IRequestHandler`, an AE talking to
the CSE, a custom :class:`~acmews.interfaces.IRequestSender`) with these:

- :func:`connected_pair` connects a :class:`~acmews.protocol.OneM2MServerFactory` and a
  :class:`~acmews.protocol.OneM2MClientFactory` in memory (``twisted.test.iosim``) and runs the
  WebSocket handshake; :meth:`Pair.flush` moves the bytes both ways.
  :func:`make_server_factory` and :func:`make_client_factory` build factories on a
  :class:`~twisted.internet.task.Clock`, with Autobahn's timers off (:func:`options`).
- :class:`RecordingHandler` answers every request (2000 by default) and records it.
- :func:`memory_cse` builds the embedded CSE on a memory store, a Clock set to :data:`START`
  and a :class:`FakeSender` that records what the CSE sends (:class:`Sent`: notifications,
  verification requests, forwarded requests), for the test to answer or fail.
- :class:`FakeConnection` is an :class:`~acmews.interfaces.IConnection` that records the
  requests sent on it; :class:`FakeOriginatorMap` is an
  :class:`~acmews.interfaces.IOriginatorMap` whose routes and observers a test can read.

Nothing here starts a listening port or touches the global reactor, so these work in a
``twisted.trial.unittest.SynchronousTestCase``. An example (its tests run as they are)::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    from acmews.codes import RSC, Operation
    from acmews.primitive import Request
    from acmews.testing import (
        RecordingHandler,
        connected_pair,
        make_client_factory,
        make_server_factory,
        memory_cse,
    )


    class GatewayTests(SynchronousTestCase):
        def test_a_request_reaches_the_handler(self) -> None:
            clock = Clock()
            handler = RecordingHandler()
            pair = connected_pair(
                make_server_factory(handler, clock), make_client_factory(clock, "Cae1")
            )
            request = Request(Operation.RETRIEVE, "cse-in", "r1", fr="Cae1")
            d = pair.client_session.request(request)
            pair.flush()
            self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
            [(received, connection)] = handler.requests
            self.assertEqual((received.to, connection.originator), ("cse-in", "Cae1"))

        def test_an_ae_registers_with_the_cse(self) -> None:
            cse = memory_cse()
            ae = {"m2m:ae": {"api": "Nmyapp", "rr": False, "srv": ["4"]}}
            d = cse.request(Operation.CREATE, "cse-in", fr=None, ty=2, pc=ae)
            created = self.successResultOf(d)
            self.assertEqual(created.rsc, RSC.CREATED)
            aei = created.pc["m2m:ae"]["aei"]
            retrieved = self.successResultOf(cse.request(Operation.RETRIEVE, "cse-in", fr=aei))
            self.assertEqual(retrieved.pc["m2m:cb"]["rn"], "cse-in")
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from acmews.admission import ConnectionLimits
from acmews.codes import RSC, Operation
from acmews.cse import CSE, CSEConfig, IResourceStore
from acmews.errors import RequestTimeout
from acmews.handshake import Authorization
from acmews.interfaces import (
    IConnection,
    IHandshakeAuthorizer,
    IOriginatorMap,
    IOriginatorObserver,
    IRequestHandler,
    IRequestSender,
)
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.protocol import (
    OneM2MClientFactory,
    OneM2MClientProtocol,
    OneM2MServerFactory,
    OneM2MServerProtocol,
)
from acmews.session import Session

__all__ = [
    "ADMIN",
    "NO_TIMERS",
    "START",
    "URL",
    "FakeConnection",
    "FakeOriginatorMap",
    "FakeSender",
    "MemoryCSE",
    "Pair",
    "RecordingHandler",
    "Sent",
    "connected_pair",
    "make_client_factory",
    "make_server_factory",
    "memory_cse",
    "options",
]

_T = TypeVar("_T")

#: the embedded CSE's default admin originator (``CSEConfig().admin``)
ADMIN = "CAdmin"
#: where :func:`memory_cse` starts its clock, 2023-11-14T22:13:20.25 UTC: a fixed time, so
#: that timestamps and expiry times in a test are the same on every run
START = 1_700_000_000.25
#: the URL the factories of :func:`make_server_factory` and :func:`make_client_factory` use
#: (nothing listens there: :func:`connected_pair` connects them in memory)
URL = "ws://127.0.0.1:8180"
#: Autobahn's handshake timeouts and keep-alive pings, off: they run on txaio's global loop,
#: not on the Clock a test drives
NO_TIMERS = {"open_handshake_timeout": 0, "close_handshake_timeout": 0, "ping_interval": 0}


def options(**kw: Any) -> ConnectionOptions:
    """Connection options without Autobahn's timers (see :data:`NO_TIMERS`), changed by
    ``kw`` (any :class:`~acmews.options.ConnectionOptions` field)."""
    values: dict[str, Any] = dict(NO_TIMERS)
    values.update(kw)
    return ConnectionOptions(**values)


# -- a connected client and server, in memory ------------------------------------------------


@implementer(IRequestHandler)
class RecordingHandler:
    """Answers with ``answer(request, connection)`` (default: 2000 echoing ``pc``) and
    records every ``(request, connection)`` in :attr:`requests`."""

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
        return Response(RSC.OK, request.rqi, request.rvi, request.pc)


class Pair:
    """A server and a client protocol connected in memory by :func:`connected_pair`."""

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
        #: moves the bytes between the two transports (``pump.pump()`` for one step)
        self.pump = pump
        self.server = server
        self.client = client

    def flush(self) -> None:
        """Deliver everything either side has written, until both are quiet."""
        self.pump.flush()

    @property
    def server_session(self) -> Session:
        """The server side's session (the handshake has completed)."""
        assert self.server.session is not None, "no server session: the handshake failed"
        return self.server.session

    @property
    def client_session(self) -> Session:
        """The client side's session (the handshake has completed)."""
        assert self.client.session is not None, "no client session: the handshake failed"
        return self.client.session


def make_server_factory(
    handler: IRequestHandler | None,
    clock: Clock,
    originators: IOriginatorMap | None = None,
    authorizer: IHandshakeAuthorizer | None = None,
    limits: ConnectionLimits | None = None,
    **kw: Any,
) -> OneM2MServerFactory:
    """A server factory for :data:`URL` whose clock and reactor are ``clock``, with the
    connection options :func:`options` makes of ``kw``.

    @param handler: answers the client's requests (the CSE, a :class:`RecordingHandler`).
    """
    return OneM2MServerFactory(
        handler,
        originators,
        url=URL,
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
    """A client factory for :data:`URL` whose clock and reactor are ``clock``, with the
    connection options :func:`options` makes of ``kw``.

    @param originator: sent as X-M2M-Origin (None: an AE that registers on the connection).
    @param handler: answers the server's requests (notifications), if any.
    """
    return OneM2MClientFactory(
        URL,
        originator=originator,
        subprotocols=subprotocols,
        handler=handler,
        clock=clock,
        reactor=clock,
        options=options(**kw),
    )


#: client ports, so that every pair's client has an address of its own
_client_ports = itertools.count(40001)


def connected_pair(
    server_factory: OneM2MServerFactory, client_factory: OneM2MClientFactory
) -> Pair:
    """Connect a new server protocol and a new client protocol in memory and run the
    WebSocket handshake (whether it succeeds or not: see :attr:`Pair.server_session`)."""
    server_addr = IPv4Address("TCP", "127.0.0.1", 8180)
    client_addr = IPv4Address("TCP", "127.0.0.1", next(_client_ports))
    server = server_factory.buildProtocol(client_addr)
    client = client_factory.buildProtocol(server_addr)
    assert isinstance(server, OneM2MServerProtocol) and isinstance(client, OneM2MClientProtocol)
    server_transport = FakeTransport(
        server, isServer=True, hostAddress=server_addr, peerAddress=client_addr
    )
    client_transport = FakeTransport(
        client, isServer=False, hostAddress=client_addr, peerAddress=server_addr
    )
    pump = connect(server, server_transport, client, client_transport, greet=True)
    pump.flush()
    return Pair(server_factory, client_factory, pump, server, client)


# -- fakes for the CSE's surroundings --------------------------------------------------------


@implementer(IConnection)
class FakeConnection:
    """A connection that records what is sent on it; the test answers each request.

    With a ``clock``, a request sent with a timeout fails with RequestTimeout (4008) once
    it has passed, as :class:`~acmews.interfaces.IConnection` promises.
    """

    subprotocol = "oneM2M.json"

    def __init__(
        self,
        originator: str | None = None,
        peer: str = "fake",
        clock: Clock | None = None,
        authorization: Authorization | None = None,
    ) -> None:
        self.originator = originator
        self.peer = peer
        #: what the handshake proved (default: the originator, verified)
        self.authorization = (
            authorization
            if authorization is not None
            else Authorization(originator, verified=originator is not None)
        )
        self.clock = clock
        #: every request sent, with its timeout and the Deferred :meth:`answer` fires
        self.sent: list[tuple[Request, float | None, Deferred[Response]]] = []
        #: requests whose Deferred was cancelled
        self.cancelled: list[Request] = []
        #: requests that failed with 4008 on the clock
        self.timed_out: list[Request] = []
        #: ``(code, reason)`` of every :meth:`close`
        self.closed: list[tuple[int, str]] = []
        self._closing: list[Deferred[None]] = []

    def request(self, request: Request, timeout: float | None = None) -> Deferred[Response]:
        d: Deferred[Response] = Deferred(lambda _: self.cancelled.append(request))
        self.sent.append((request, timeout, d))
        if self.clock is not None and timeout is not None:

            def expire() -> None:
                self.timed_out.append(request)
                d.errback(RequestTimeout("no response in time"))

            timer = self.clock.callLater(timeout, expire)

            def stop_timer(result: _T) -> _T:
                if timer.active():
                    timer.cancel()
                return result

            d.addBoth(stop_timer)
        return d

    def request_then(
        self, request: Request, then: Callable[[Any], object], timeout: float | None = None
    ) -> None:
        self.request(request, timeout).addBoth(then)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed.append((code, reason))
        closing, self._closing = self._closing, []
        for d in closing:
            d.callback(None)

    def when_closed(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        return d

    def answer(self, index: int = -1, rsc: int = RSC.OK) -> None:
        """Answer the ``index``-th request sent with ``rsc`` (default: the last, 2000)."""
        request, _, d = self.sent[index]
        d.callback(Response(rsc, request.rqi))

    def rqis(self) -> list[str]:
        """The request IDs sent, in order."""
        return [request.rqi for request, _, _ in self.sent]


@implementer(IOriginatorMap)
class FakeOriginatorMap:
    """Originator -> connection, telling its observers, without closing or logging anything
    (:class:`acmews.originators.OriginatorMap` closes a replaced connection)."""

    def __init__(self) -> None:
        self.routes: dict[str, IConnection] = {}
        self.observers: list[IOriginatorObserver] = []

    def bind(self, originator: str, connection: IConnection) -> None:
        self.routes[originator] = connection
        for observer in list(self.observers):
            observer.originator_connected(originator, connection)

    def unbind(self, originator: str, connection: IConnection) -> bool:
        if self.routes.get(originator) is not connection:
            return False
        del self.routes[originator]
        for observer in list(self.observers):
            observer.originator_disconnected(originator, connection)
        return True

    def lookup(self, originator: str) -> IConnection | None:
        return self.routes.get(originator)

    def add_observer(self, observer: IOriginatorObserver) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: IOriginatorObserver) -> None:
        self.observers.remove(observer)

    def add_connection(self, connection: IConnection) -> None:
        pass

    def remove_connection(self, connection: IConnection) -> None:
        if connection.originator is not None:
            self.unbind(connection.originator, connection)


@dataclass
class Sent:
    """One request the CSE sent through a :class:`FakeSender` (the arguments of
    :meth:`~acmews.interfaces.IRequestSender.send`), waiting for the test's answer."""

    target: str
    request: Request
    poa: tuple[str, ...]
    store: bool
    deferred: Deferred[Response]

    def answer(self, rsc: int = RSC.OK, pc: Any = None) -> None:
        """Answer it with ``rsc`` (and content ``pc``)."""
        self.deferred.callback(Response(rsc, self.request.rqi, "4", pc))

    def fail(self, error: Exception) -> None:
        """Fail it, e.g. with :class:`~acmews.errors.TargetNotReachable`."""
        self.deferred.errback(error)


@implementer(IRequestSender)
class FakeSender:
    """Records every send in :attr:`sent` and hands back a Deferred the test fires."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def send(
        self, target: str, request: Request, poa: Sequence[str] = (), store: bool = False
    ) -> Deferred[Response]:
        d: Deferred[Response] = Deferred()
        self.sent.append(Sent(target, request, tuple(poa), store, d))
        return d

    def send_then(
        self,
        target: str,
        request: Request,
        then: Callable[[Any], object],
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> None:
        self.send(target, request, poa, store).addBoth(then)

    def take(self) -> list[Sent]:
        """What was sent since the last take, forgotten here."""
        sent, self.sent = self.sent, []
        return sent


# -- an in-memory CSE ------------------------------------------------------------------------


@dataclass
class MemoryCSE:
    """The embedded CSE of :func:`memory_cse` and what surrounds it."""

    cse: CSE
    #: the CSE's time: advance it to expire resources and run scheduled notifications
    clock: Clock
    #: what the CSE sends (notifications, verifications, forwarded requests)
    sender: FakeSender
    #: the connection :meth:`request` hands the CSE requests on
    connection: FakeConnection
    _rqis: Iterator[int] = field(
        default_factory=lambda: itertools.count(1), init=False, repr=False
    )

    def request(
        self, op: Operation, to: str, fr: str | None = ADMIN, **kw: Any
    ) -> Deferred[Response]:
        """Hand the CSE a request as if it arrived on :attr:`connection`; the Deferred fires
        with its response.

        @param kw: any other :class:`~acmews.primitive.Request` field; ``rqi`` defaults to a
            new one, ``rvi`` to "4".
        """
        kw.setdefault("rqi", f"rq{next(self._rqis)}")
        kw.setdefault("rvi", "4")
        result = self.cse.handle_request(Request(op, to, fr=fr, **kw), self.connection)
        return result if isinstance(result, Deferred) else succeed(result)


def memory_cse(
    config: CSEConfig | None = None,
    store: IResourceStore | None = None,
    now: float = START,
) -> MemoryCSE:
    """An embedded CSE with an empty resource tree on a memory store (or on ``store``), a
    Clock set to ``now`` and a :class:`FakeSender`.

    @param config: its identity and policy (default: ``CSEConfig(poa=(URL,))``).
    """
    clock = Clock()
    clock.advance(now)
    sender = FakeSender()
    if config is None:
        config = CSEConfig(poa=(URL,))
    cse = CSE(config, sender, clock, store)
    return MemoryCSE(cse, clock, sender, FakeConnection())
