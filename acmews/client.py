"""The AE/CSE side: connect to a CSE, send requests, receive notifications, or listen.

Typical use (inside a running reactor)::

    client = await connect("ws://127.0.0.1:8180", originator="Cmyae", handler=on_notify)
    await client.create("cse-in", ResourceType.AE, {"m2m:ae": {"api": "Nmy", "rr": True}})
    response = await client.retrieve("cse-in/Cmyae")
    await client.close()

``handler`` is an :class:`IRequestHandler` or a plain callable ``(request) -> Response``
(or a Deferred/coroutine of one) that answers requests the CSE sends (notifications).
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from acmews.codec import SHORT_NAMES
from acmews.codes import DEFAULT_RELEASE, Operation, ResourceType
from acmews.errors import TargetNotReachable
from acmews.handshake import basic_authorization, bearer_authorization
from acmews.interfaces import IConnection, IHandshakeAuthorizer, IOriginatorMap, IRequestHandler
from acmews.logs import Logger
from acmews.metrics import BindingMetrics
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.protocol import (
    OneM2MClientFactory,
    OneM2MClientProtocolFactory,
    OneM2MServerFactory,
)
from acmews.session import Session, registered_ae_id

__all__ = [
    "Client",
    "ClientCredentials",
    "FunctionHandler",
    "ReconnectingClient",
    "TLSClientSettings",
    "client_credentials",
    "connect",
    "hold_loss",
    "listen",
    "subprotocols_for",
]

HandlerFunction = Callable[[Request], "Response | Deferred[Response] | Awaitable[Response]"]
_Factory = TypeVar("_Factory", bound=OneM2MClientProtocolFactory)


@implementer(IRequestHandler)
class FunctionHandler:
    """Adapts a plain callable ``(request) -> Response`` to IRequestHandler."""

    def __init__(self, function: HandlerFunction) -> None:
        self.function = function

    def handle_request(
        self, request: Request, connection: IConnection
    ) -> Deferred[Response] | Response:
        result = self.function(request)
        if isinstance(result, Response | Deferred):
            return result
        if inspect.isawaitable(result):
            return ensureDeferred(result)  # type: ignore[arg-type]
        raise TypeError(f"handler returned {type(result).__name__}, not a Response")


def as_handler(handler: IRequestHandler | HandlerFunction | None) -> IRequestHandler | None:
    if handler is None or IRequestHandler.providedBy(handler):
        return handler
    return FunctionHandler(handler)


def subprotocols_for(serialization: str | Sequence[str]) -> list[str]:
    """``"json"``/``"cbor"``/a subprotocol name, or a list of them, as subprotocol names."""
    names = [serialization] if isinstance(serialization, str) else list(serialization)
    return [SHORT_NAMES.get(n, n) for n in names]


class Client:
    """An open connection to a CSE (or to any oneM2M WebSocket endpoint)."""

    log = Logger()

    def __init__(self, session: Session, originator: str | None, release: str = DEFAULT_RELEASE):
        self.session = session
        #: the originator used as ``fr``; set from the AE-ID after an AE registration
        self.originator = originator
        self.release = release
        self._prefix = os.urandom(4).hex() + "-"
        self._counter = itertools.count(1)

    @property
    def subprotocol(self) -> str:
        return self.session.subprotocol

    @property
    def connected(self) -> bool:
        return self.session.connected

    def next_rqi(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    def request(self, request: Request, timeout: float | None = None) -> Deferred[Response]:
        """Send a prepared request; fires with the response (any rsc).

        Fails with RequestTimeout (4008) or TargetNotReachable (5103) when no response came.
        """
        d = self.session.request(request, timeout)
        if request.is_ae_create and self.originator is None:
            d.addCallback(self._registered)
        return d

    def _registered(self, response: Response) -> Response:
        aei = registered_ae_id(response)
        if aei is not None and self.originator is None:
            self.originator = aei
        return response

    def _build(self, op: Operation, to: str, **params: Any) -> Request:
        fr = params.pop("fr", self.originator)
        rqi = params.pop("rqi", None) or self.next_rqi()
        rvi = params.pop("rvi", self.release)
        request = Request(op, to, rqi, rvi, fr)
        for name, value in params.items():
            if name in Request.__dataclass_fields__ and name != "extra":
                setattr(request, name, value)
            else:
                request.extra[name] = value
        return request

    def create(
        self,
        to: str,
        ty: int | ResourceType,
        content: dict[str, Any],
        timeout: float | None = None,
        **params: Any,
    ) -> Deferred[Response]:
        """CREATE a resource of type ``ty`` with ``content`` (e.g. ``{"m2m:cnt": {...}}``)."""
        return self.request(
            self._build(Operation.CREATE, to, ty=int(ty), pc=content, **params), timeout
        )

    def retrieve(self, to: str, timeout: float | None = None, **params: Any) -> Deferred[Response]:
        return self.request(self._build(Operation.RETRIEVE, to, **params), timeout)

    def update(
        self, to: str, content: dict[str, Any], timeout: float | None = None, **params: Any
    ) -> Deferred[Response]:
        return self.request(self._build(Operation.UPDATE, to, pc=content, **params), timeout)

    def delete(self, to: str, timeout: float | None = None, **params: Any) -> Deferred[Response]:
        return self.request(self._build(Operation.DELETE, to, **params), timeout)

    def notify(
        self, to: str, content: Any, timeout: float | None = None, **params: Any
    ) -> Deferred[Response]:
        return self.request(self._build(Operation.NOTIFY, to, pc=content, **params), timeout)

    def close(self, code: int = 1000, reason: str = "") -> Deferred[None]:
        """Close cleanly; fires when the connection is gone."""
        d = self.session.when_closed()
        self.session.close(code, reason)
        return d


def connect(
    url: str,
    *,
    originator: str | None = None,
    serialization: str | Sequence[str] = "json",
    handler: IRequestHandler | HandlerFunction | None = None,
    endpoint: str | None = None,
    reactor: Any = None,
    clock: IReactorTime | None = None,
    options: ConnectionOptions | None = None,
    remote_originator: str | None = None,
    release: str = DEFAULT_RELEASE,
    headers: dict[str, str] | None = None,
    tls: TLSClientSettings | None = None,
    metrics: BindingMetrics | None = None,
    compression: bool | None = None,
) -> Deferred[Client]:
    """Open a oneM2M WebSocket connection to ``url`` (``ws://`` or ``wss://``).

    @param originator: sent as ``X-M2M-Origin``; omit it only to register an AE on this
        connection (the client then adopts the AE-ID the CSE assigns).
    @param serialization: ``json``, ``cbor``, or a list in order of preference.
    @param handler: answers requests the other side sends (notifications).
    @param endpoint: a client endpoint string (``tcp:host:port``, ``unix:path`` ...) used
        instead of the URL's host and port.
    @param options: timeouts, message size and keep-alive (defaults when None).
    @param headers: more headers for the opening handshake, e.g. ``Authorization``.
    @param tls: for ``wss://``: a CA to trust and a client certificate to show.
    @param metrics: where the connection is counted (a CSE's own, for the ones it opens).
    @param compression: offer permessage-deflate (RFC 7692), which the server may accept
        (None: as ``options`` says, off by default); inflated messages are bounded by
        ``options.max_message_size`` as they inflate.
    @return: a Deferred that fires with a :class:`Client` once the WebSocket is open, or fails
        with TargetNotReachable. Cancelling it (a timeout, say) aborts the attempt: the TCP
        connect in progress is stopped, a connection made meanwhile is aborted; no socket is
        left behind.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    factory = _protocol_factory(
        OneM2MClientFactory,
        url,
        reactor,
        clock,
        originator,
        serialization=serialization,
        handler=handler,
        options=options,
        compression=compression,
        remote_originator=remote_originator,
        headers=headers,
        metrics=metrics,
    )
    connecting = client_endpoint(url, reactor, endpoint, tls).connect(factory)
    #: the protocol, once the TCP (and TLS) connection is made
    made: list[Any] = []
    connecting.addCallbacks(made.append, lambda failure: factory.fail(_unreachable(url, failure)))

    def abort(_: Deferred[Client]) -> None:
        # Without this a cancelled attempt went on: a connection that opened later stayed
        # open, owned by nobody (thousands of them to one host, each timed out in turn).
        connecting.cancel()
        for protocol in made:
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    opened: Deferred[Client] = Deferred(abort)

    def settle(result: Session | Failure) -> None:
        if opened.called:  # cancelled: whatever opened meanwhile is closed
            if isinstance(result, Session):
                result.close(1000, "the connection attempt was cancelled")
            return
        if isinstance(result, Failure):
            opened.errback(result)
        else:
            opened.callback(Client(result, originator, release))

    factory.ready.addBoth(settle)
    return opened


def hold_loss(protocol: Any) -> Callable[[], None]:
    """Keep the end of ``protocol``'s connection from its ``ClientService`` until the returned
    callable accepts the connection.

    The ``ClientService`` (Twisted 26.10) neither closes a connection that its
    ``prepareConnection`` refused nor expects a connection to end before it accepted it: its
    state machine has no transition for that, and the end raises automat's ``NoTransition``
    out of ``connectionLost``. A refused connection is closed here instead; its end is none
    of the ``ClientService``'s business, which counted the attempt as failed already. Its
    protocol proxy offers no public way to say so: its ``_lostNotification`` is swapped.
    """
    notify = protocol._lostNotification
    protocol._lostNotification = lambda reason: None

    def accept() -> None:
        protocol._lostNotification = notify

    return accept


class ReconnectingClient(Service):
    """A connection to a CSE that comes back by itself: a Twisted service whose
    ``ClientService`` connects again, with exponential backoff, whenever the connection is
    lost or cannot be made (a CSE restarting closes every connection with 1001, going away,
    once it has answered what was in flight).

    Requests go over the connection of the moment (:meth:`request`); while there is none
    they fail at once with 5103 (TargetNotReachable), as those in flight on a connection that
    is lost do: retrying is the application's call. :meth:`when_connected` waits for the next
    connection (an AE re-sending what failed, say). ``originator`` is sent on every
    handshake: a client that registers its AE gives its AE-ID here once it has one.
    Stopping the service closes the connection (1000) and connects no more.

    Takes the keyword arguments of :func:`connect` (``serialization``, ``handler``,
    ``options``, ``headers``, ``compression``...), and the backoff's ``initial_delay`` and
    ``max_delay`` in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        originator: str | None = None,
        release: str = DEFAULT_RELEASE,
        endpoint: str | None = None,
        tls: TLSClientSettings | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        **connect_args: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.originator = originator
        self.release = release
        self._factory = _protocol_factory(
            OneM2MClientProtocolFactory, url, reactor, clock, originator, **connect_args
        )
        self._service = ClientService(
            client_endpoint(url, reactor, endpoint, tls),
            self._factory,
            retryPolicy=backoffPolicy(initialDelay=initial_delay, maxDelay=max_delay),
            clock=clock if clock is not None else reactor,
            prepareConnection=self._prepare,
        )
        #: the connection of the moment (None while there is none)
        self.client: Client | None = None
        #: connections opened so far
        self.connections = 0
        self._waiters: list[Deferred[Client]] = []

    def _prepare(self, protocol: Any) -> Deferred[None]:
        """The ``ClientService``'s ``prepareConnection``: the connection counts once its
        WebSocket is open (see :func:`hold_loss`)."""
        accept = hold_loss(protocol)

        def opened(session: Session) -> None:
            self.client = client = Client(session, self.originator, self.release)
            self.connections += 1
            session.when_closed().addCallback(self._lost, client)
            accept()
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(client)

        opening: Deferred[Session] = protocol.when_open()
        return opening.addCallback(opened)

    def _lost(self, _: object, client: Client) -> None:
        if self.client is client:
            self.client = None

    def when_connected(self) -> Deferred[Client]:
        """The :class:`Client` of the connection of the moment, or of the next one (the
        ``ClientService``'s ``whenConnected`` would give a connection just lost, as it hears
        of a loss after the protocol does)."""
        if self.client is not None and self.client.connected:
            return succeed(self.client)
        waiter: Deferred[Client] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def request(self, request: Request, timeout: float | None = None) -> Deferred[Response]:
        """Send ``request`` over the connection of the moment (5103 at once without one)."""
        client = self.client
        if client is None or not client.connected:
            return fail(TargetNotReachable("not connected (reconnecting)", rqi=request.rqi))
        return client.request(request, timeout)

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(TargetNotReachable("the client was stopped"))
        client, self.client = self.client, None
        if client is not None and client.connected:
            await client.close()
        await self._service.stopService()


def _protocol_factory(
    factory_class: type[_Factory],
    url: str,
    reactor: Any,
    clock: IReactorTime | None,
    originator: str | None,
    *,
    serialization: str | Sequence[str] = "json",
    handler: IRequestHandler | HandlerFunction | None = None,
    options: ConnectionOptions | None = None,
    compression: bool | None = None,
    **rest: Any,
) -> _Factory:
    """The client factory :func:`connect` and :class:`ReconnectingClient` use, from
    :func:`connect`'s arguments."""
    if compression is not None:
        options = replace(options or ConnectionOptions(), compression=compression)
    return factory_class(
        url,
        originator=originator,
        handler=as_handler(handler),
        subprotocols=subprotocols_for(serialization),
        reactor=reactor,
        clock=clock,
        options=options,
        **rest,
    )


@implementer(IPolicyForHTTPS)
class TLSClientSettings:
    """What a ``wss://`` client trusts and shows: a CA file (PEM) instead of the system's
    authorities, and a client certificate with its key. The files are read once, here."""

    def __init__(
        self,
        ca_file: str | None = None,
        certificate_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        from twisted.internet.ssl import Certificate, PrivateCertificate

        self.trust_root: Any = None
        self.client_certificate: Any = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                self.trust_root = Certificate.loadPEM(f.read())
        if certificate_file is not None:
            with open(certificate_file, "rb") as f:
                pem = f.read()
            if key_file is not None and key_file != certificate_file:
                with open(key_file, "rb") as f:
                    pem += b"\n" + f.read()
            self.client_certificate = PrivateCertificate.loadPEM(pem)

    def options_for(self, hostname: str) -> Any:
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(
            hostname, trustRoot=self.trust_root, clientCertificate=self.client_certificate
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """IPolicyForHTTPS: the same trust and certificate for ``https://``."""
        return self.options_for(hostname.decode("idna"))


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a client shows the server it connects to: the handshake's headers (an
    ``Authorization``) and its TLS settings."""

    headers: Mapping[str, str] = field(default_factory=dict)
    tls: TLSClientSettings | None = None


def client_credentials(
    *,
    prefix: str = "",
    environ: Mapping[str, str] | None = None,
    user: str | None = None,
    password: str | None = None,
    password_option: bool = False,
    token: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
    certificate: str | None = None,
    key: str | None = None,
) -> ClientCredentials:
    """The credentials given by command-line options, checked: one parser for ``twistd
    acmews``'s ``--registrar-*`` options (``prefix="registrar-"``) and the ``acmews``
    command's (``prefix=""``).

    The password and the token may also come from ``ACMEWS_[PREFIX_]PASSWORD`` and
    ``ACMEWS_[PREFIX_]TOKEN`` in ``environ`` (``os.environ`` by default), which keeps them off
    the command line; a user means HTTP Basic, else a token means Bearer.
    ``password_option``: the caller has a ``--[prefix]password`` option (named in the
    messages).

    @raise ValueError: one line naming the option at fault (never a secret).
    """
    environ = os.environ if environ is None else environ
    option = f"--{prefix}"
    variable = "ACMEWS_" + prefix.upper().replace("-", "_")
    given = [n for n, v in (("user", user), ("token", token), ("token-file", token_file)) if v]
    if len(given) > 1:
        raise ValueError(", ".join(option + n for n in given) + ": only one")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, ValueError) as e:
            raise ValueError(f"{option}token-file {token_file}: {e}") from None
        if not token:
            raise ValueError(f"{option}token-file {token_file}: no token on line 1")
    headers: dict[str, str] = {}
    if user is not None:
        password = password if password is not None else environ.get(variable + "PASSWORD")
        if password is None:
            source = f"{option}password or " if password_option else ""
            raise ValueError(f"{option}user needs {source}{variable}PASSWORD set")
        try:
            headers["Authorization"] = basic_authorization(user, password)
        except ValueError as e:
            raise ValueError(f"{option}user: {e}") from None
    elif password is not None:
        raise ValueError(f"{option}password needs {option}user")
    else:
        token = token or environ.get(variable + "TOKEN")
        if token:
            try:
                headers["Authorization"] = bearer_authorization(token)
            except ValueError as e:
                raise ValueError(f"the token ({option}token or {variable}TOKEN): {e}") from None
    if key is not None and certificate is None:
        raise ValueError("--client-key needs --client-certificate")
    tls = None
    if ca_file is not None or certificate is not None:
        try:
            tls = TLSClientSettings(ca_file, certificate, key)
        except Exception as e:
            raise ValueError(f"--ca-file/--client-certificate/--client-key: {e}") from None
    return ClientCredentials(headers, tls)


def client_endpoint(
    url: str, reactor: Any, endpoint: str | None = None, tls: TLSClientSettings | None = None
) -> Any:
    """The client endpoint for a ``ws://``/``wss://`` URL (TLS for ``wss``, with ``tls``'s
    trust and client certificate when given), or the endpoint string ``endpoint``."""
    if endpoint is not None:
        return clientFromString(reactor, endpoint)
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    ep: Any = HostnameEndpoint(reactor, parts.hostname, port)
    if parts.scheme == "wss":
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        creator = (
            tls.options_for(parts.hostname)
            if tls is not None
            else optionsForClientTLS(parts.hostname)
        )
        ep = wrapClientTLS(creator, ep)
    return ep


def _unreachable(url: str, failure: Any) -> Exception:
    return TargetNotReachable(f"cannot connect to {url}: {failure.getErrorMessage()}")


def listen(
    endpoint: str,
    handler: IRequestHandler | HandlerFunction,
    *,
    reactor: Any = None,
    originators: IOriginatorMap | None = None,
    serialization: Sequence[str] | None = None,
    options: ConnectionOptions | None = None,
    authorizer: IHandshakeAuthorizer | None = None,
) -> Deferred[IListeningPort]:
    """Run a oneM2M WebSocket server for an AE or CSE, so a registrar can connect to it.

    The same negotiation and originator rules apply as on the CSE side: the registrar names
    itself with ``X-M2M-Origin`` (its CSE-ID) and may then send requests (notifications) that
    ``handler`` answers. ``endpoint`` is a server endpoint string, e.g.
    ``tcp:9000:interface=127.0.0.1``. The connections are in ``originators`` (a fresh map if
    None), so the AE can also send requests back over them. ``authorizer`` decides which
    originator a connection speaks for (default: its X-M2M-Origin, any claim accepted).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    factory = OneM2MServerFactory(
        as_handler(handler),
        originators,
        reactor=reactor,
        subprotocols=subprotocols_for(serialization) if serialization else None,
        options=options,
        authorizer=authorizer,
    )
    d: Deferred[IListeningPort] = serverFromString(reactor, endpoint).listen(factory)
    return d
