"""Autobahn protocols and factories for both roles. Thin: negotiate, then move bytes.

The server picks the first subprotocol of the *client's* offer that it supports (exact
names); no acceptable offer is refused with HTTP 400. ``X-M2M-Origin`` on the opening
handshake binds the connection to that originator in the originator map; without it only an
AE CREATE is served until one succeeds on the connection. Everything about oneM2M happens in
:class:`acmews.session.Session`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from typing_extensions import override

from acmews.codec import CODECS
from acmews.errors import TargetNotReachable
from acmews.interfaces import ICodec, IRequestHandler
from acmews.originators import OriginatorMap
from acmews.session import DEFAULT_REQUEST_TIMEOUT, Session
from acmews.wsframe import frame_header

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "OneM2MClientFactory",
    "OneM2MClientProtocol",
    "OneM2MServerFactory",
    "OneM2MServerProtocol",
    "choose_subprotocol",
]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
ORIGIN_HEADER = "x-m2m-origin"

_log = Logger(namespace="acmews.protocol")

_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def choose_subprotocol(offered: Iterable[str], supported: Iterable[str]) -> str | None:
    """The first of the client's offered subprotocols that we support (exact match)."""
    supported = set(supported)
    for name in offered:
        if name in supported:
            return name
    return None


def _codecs(names: Sequence[str] | None) -> dict[str, ICodec]:
    if names is None:
        return dict(CODECS)
    return {name: CODECS[name] for name in names}


def _options(
    max_message_size: int,
    ping_interval: float,
    ping_timeout: float,
    open_handshake_timeout: float,
    close_handshake_timeout: float,
) -> dict[str, Any]:
    """Autobahn protocol options, the same for both roles. ``failByDrop`` off: a peer that
    breaks the rules (e.g. an oversized message) gets a close frame with the code (1009)."""
    return {
        "maxMessagePayloadSize": max_message_size,
        "maxFramePayloadSize": max_message_size,
        "autoPingInterval": ping_interval,
        "autoPingTimeout": ping_timeout if ping_interval else 0,
        "autoPingRestartOnAnyTraffic": True,
        "failByDrop": False,
        "openHandshakeTimeout": open_handshake_timeout,
        "closeHandshakeTimeout": close_handshake_timeout,
    }


class _OneM2MProtocolMixin:
    """What both roles share: the session, the lean message path and closing.

    ``self.log`` stays Autobahn's txaio logger, whose debug calls are no-ops below its
    level; our own messages go to ``_log`` (a Twisted logger on the same namespace).
    """

    session: Session | None = None
    codec: ICodec
    # from Autobahn:
    state: int
    peer: str
    failedByMe: bool
    message_data: list[bytes] | None
    message_is_binary: bool
    transport: Any
    send_queue: Any
    _perMessageCompress: Any

    def dataReceived(self, data: bytes) -> None:
        """Autobahn's own version formats debug-log arguments (hltype/hlval) on every read,
        even when debug logging is off: skipped."""
        self._dataReceived(data)  # type: ignore[attr-defined]

    def onMessageEnd(self) -> None:
        """Autobahn's own version also fires an observer Deferred per message: skipped."""
        if not self.failedByMe:
            assert self.message_data is not None
            data = self.message_data
            payload = data[0] if len(data) == 1 else b"".join(data)
            self.message_data = None
            session = self.session
            if session is not None:
                session.message_received(payload)
            return
        self.message_data = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is not None:
            session.message_received(payload)

    def _start_session(
        self,
        factory: Any,
        originator: str | None,
        enforce_originator: bool,
        on_bound: Any = None,
    ) -> Session:
        """The session for this connection, now that the handshake is done."""
        self.session = Session(
            self._send_message,
            self.codec,
            factory.clock,
            factory.handler,
            originator=originator,
            enforce_originator=enforce_originator,
            close=self._close,
            peer=self.peer,
            request_timeout=factory.request_timeout,
            on_bound=on_bound,
        )
        return self.session

    def _send_message(self, data: bytes, binary: bool) -> None:
        """Send one whole message; a closed connection drops it (the session knows)."""
        if self.state != _STATE_OPEN:
            return
        self.sendMessage(data, binary)  # type: ignore[attr-defined]

    def _close(self, code: int, reason: str) -> None:
        if self.state == _STATE_OPEN:
            reason = reason.encode()[:120].decode("utf-8", "ignore")
            self.sendClose(code, reason)  # type: ignore[attr-defined]

    def _session_closed(self, reason: str) -> None:
        session = self.session
        if session is not None:
            session.connection_lost(reason)


class OneM2MServerProtocol(_OneM2MProtocolMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """The accepting side: a CSE (or a registree's own server, see acmews.client.listen)."""

    factory: OneM2MServerFactory
    originator: str | None = None

    @override
    def onConnect(self, request: ConnectionRequest) -> str:
        factory = self.factory
        chosen = choose_subprotocol(request.protocols, factory.codecs)
        if chosen is None:
            offered = ", ".join(request.protocols) or "none"
            _log.info(
                "refused {peer}: no acceptable subprotocol (offered: {offered})",
                peer=self.peer,
                offered=offered,
            )
            raise ConnectionDeny(
                400,
                f"no acceptable WebSocket subprotocol (offered: {offered}; supported: "
                f"{', '.join(factory.codecs)})",
            )
        origin = request.headers.get(ORIGIN_HEADER)
        if origin is not None:
            origin = origin.strip()
            if not origin or "," in origin or " " in origin:
                raise ConnectionDeny(400, f"invalid X-M2M-Origin header: {origin!r}")
            if factory.accept_originator is not None and not factory.accept_originator(origin):
                raise ConnectionDeny(403, f"originator {origin!r} is not accepted here")
        self.originator = origin
        self.codec = factory.codecs[chosen]
        return chosen

    @override
    def onOpen(self) -> None:
        factory = self.factory
        session = self._start_session(
            factory, self.originator, enforce_originator=True, on_bound=factory.session_bound
        )
        # the handshake text is not needed any more: about 1 KiB per idle connection
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_headers = {}
        factory.session_opened(session)

    @override
    def _send_message(self, data: bytes, binary: bool) -> None:
        # server frames are not masked: write the frame ourselves, skipping Autobahn's
        # per-send bookkeeping and eagerly formatted debug log arguments
        if self.state != _STATE_OPEN:
            return
        if self._perMessageCompress is None and not self.send_queue:
            self.transport.write(frame_header(2 if binary else 1, len(data), masked=False) + data)
        else:
            self.sendMessage(data, binary)

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is not None:
            # the route goes first: whoever is told of the loss (pending requests failing
            # with 5103, when_closed waiters) must not find this connection in the map
            self.factory.session_closed(session)
            self._session_closed(reason or f"connection closed ({code})")


class OneM2MServerFactory(WebSocketServerFactory):
    """Accepts oneM2M WebSocket connections and hands their requests to ``handler``."""

    protocol = OneM2MServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        handler: IRequestHandler | None,
        originators: OriginatorMap | None = None,
        *,
        url: str | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        subprotocols: Sequence[str] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        open_handshake_timeout: float = 10.0,
        close_handshake_timeout: float = 1.0,
        accept_originator: Any = None,
    ) -> None:
        """
        @param handler: answers incoming requests (the CSE, a gateway's own code).
        @param originators: where connections are bound; a fresh map when None.
        @param subprotocols: the supported subprotocol names (default: every codec).
        @param accept_originator: optional callable refusing (403) an X-M2M-Origin at the
            handshake when it returns False.
        @param ping_interval: seconds between pings (0 disables keep-alive).
        """
        self.codecs = _codecs(subprotocols)
        super().__init__(url, protocols=list(self.codecs), reactor=reactor)
        self.handler = handler
        self.originators = originators if originators is not None else OriginatorMap()
        self.clock: IReactorTime = clock if clock is not None else self.reactor
        self.request_timeout = request_timeout
        self.accept_originator = accept_originator
        self.setProtocolOptions(
            **_options(
                max_message_size,
                ping_interval,
                ping_timeout,
                open_handshake_timeout,
                close_handshake_timeout,
            )
        )

    def session_opened(self, session: Session) -> None:
        _log.info(
            "connection from {peer}: originator {originator}, {subprotocol}",
            peer=session.peer,
            originator=session.originator or "(none: AE registration only)",
            subprotocol=session.subprotocol,
        )
        if session.originator is not None:
            self.originators.bind(session.originator, session)
        else:
            self.originators.add_connection(session)

    def session_bound(self, session: Session, originator: str) -> None:
        self.originators.bind(originator, session)

    def session_closed(self, session: Session) -> None:
        self.originators.remove_connection(session)


class OneM2MClientProtocol(_OneM2MProtocolMixin, WebSocketClientProtocol):  # type: ignore[misc]
    """The connecting side: an AE or CSE connecting to its registrar, or a CSE to a poa."""

    factory: OneM2MClientFactory

    @override
    def onConnect(self, response: ConnectionResponse) -> None:
        chosen = response.protocol
        codec = self.factory.codecs.get(chosen) if chosen else None
        if codec is None:
            self.factory.fail(
                TargetNotReachable(f"the server chose no supported subprotocol ({chosen!r})")
            )
            self.dropConnection(abort=True)
            return
        self.codec = codec

    @override
    def onOpen(self) -> None:
        factory = self.factory
        session = self._start_session(
            factory, factory.remote_originator, enforce_originator=factory.enforce_originator
        )
        factory.opened(session)

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        why = reason or getattr(self, "wasNotCleanReason", None) or f"closed ({code})"
        self._session_closed(why)
        self.factory.fail(TargetNotReachable(f"could not open the WebSocket: {why}"))


class OneM2MClientFactory(WebSocketClientFactory):
    """One outgoing oneM2M WebSocket connection; ``ready`` fires with its session."""

    protocol = OneM2MClientProtocol  # type: ignore[assignment]

    def __init__(
        self,
        url: str,
        *,
        originator: str | None = None,
        handler: IRequestHandler | None = None,
        subprotocols: Sequence[str] = ("oneM2M.json",),
        reactor: Any = None,
        clock: IReactorTime | None = None,
        remote_originator: str | None = None,
        enforce_originator: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        open_handshake_timeout: float = 10.0,
        close_handshake_timeout: float = 1.0,
    ) -> None:
        """
        @param originator: sent as X-M2M-Origin (omit only to register an AE).
        @param subprotocols: offered in this order of preference.
        @param remote_originator: who is at the other end, when known (a CSE-ID).
        """
        headers = {"X-M2M-Origin": originator} if originator else None
        self.codecs = {name: CODECS[name] for name in subprotocols if name in CODECS}
        super().__init__(url, protocols=list(subprotocols), headers=headers, reactor=reactor)
        self.originator = originator
        self.handler = handler
        self.clock: IReactorTime = clock if clock is not None else self.reactor
        self.remote_originator = remote_originator
        self.enforce_originator = enforce_originator
        self.request_timeout = request_timeout
        self.ready: Deferred[Session] = Deferred()
        self.setProtocolOptions(
            **_options(
                max_message_size,
                ping_interval,
                ping_timeout,
                open_handshake_timeout,
                close_handshake_timeout,
            )
        )

    def opened(self, session: Session) -> None:
        if not self.ready.called:
            self.ready.callback(session)

    def fail(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.fail(TargetNotReachable(f"cannot connect: {reason.getErrorMessage()}"))
