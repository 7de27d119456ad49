"""Autobahn protocols and factories for both roles. Thin: negotiate, then move bytes.

The server picks the first subprotocol of the *client's* offer that it supports (exact
names); no acceptable offer is refused with HTTP 400. ``X-M2M-Origin`` on the opening
handshake binds the connection to that originator in the originator map; without it only an
AE CREATE is served until one succeeds on the connection, which must happen within
``unbound_timeout`` (the connection is closed with 1008 otherwise). Everything about oneM2M
happens in :class:`acmews.session.Session`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse
from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from acmews.admission import Admission, ConnectionLimits
from acmews.auth import DefaultAuthorizer
from acmews.codec import CODECS
from acmews.errors import TargetNotReachable
from acmews.handshake import Authorization, Handshake, HandshakeRefused, claimed
from acmews.interfaces import ICodec, IHandshakeAuthorizer, IOriginatorMap, IRequestHandler
from acmews.logs import Budget, Logger
from acmews.metrics import BindingMetrics
from acmews.options import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    ConnectionOptions,
)
from acmews.originators import OriginatorMap
from acmews.session import Deadlines, Session
from acmews.wsframe import frame_header, unmask

_NOTHING_PROVED = Authorization()

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "OneM2MClientFactory",
    "OneM2MClientProtocol",
    "OneM2MClientProtocolFactory",
    "OneM2MServerFactory",
    "OneM2MServerProtocol",
    "choose_subprotocol",
]

#: bytes a client may send while its handshake is being authorized (its first frames)
MAX_EARLY_DATA = 64 * 1024

#: the reason of the close (1001, going away) of a server that stops
GOING_AWAY = "the CSE is shutting down"

#: permessage-deflate's sliding window (2**12 bytes, several notifications of context) and
#: zlib's memory level, for what this side compresses and asks the peer to compress: about
#: 50 KiB of zlib state per connection once a message has passed each way, where zlib's
#: defaults (15, 8) take about 300 KiB
DEFLATE_WINDOW_BITS = 12
DEFLATE_MEM_LEVEL = 5


def _deflate_acceptor(max_message_size: int) -> Any:
    """A server's ``perMessageCompressionAccept``: the client's permessage-deflate offer,
    with the small window, and ``max_message_size`` as the inflated bound."""

    def accept(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                asked = offer.request_max_window_bits
                return PerMessageDeflateOfferAccept(
                    offer,
                    request_max_window_bits=(
                        DEFLATE_WINDOW_BITS if offer.accept_max_window_bits else 0
                    ),
                    window_bits=min(DEFLATE_WINDOW_BITS, asked or DEFLATE_WINDOW_BITS),
                    mem_level=DEFLATE_MEM_LEVEL,
                    max_message_size=max_message_size,
                )
        return None

    return accept


def _deflate_client_options(max_message_size: int) -> dict[str, Any]:
    """A client's Autobahn options for permessage-deflate: offered with the small window."""

    def accept(response: Any) -> PerMessageDeflateResponseAccept | None:
        if isinstance(response, PerMessageDeflateResponse):
            return PerMessageDeflateResponseAccept(
                response, mem_level=DEFLATE_MEM_LEVEL, max_message_size=max_message_size
            )
        return None

    return {
        "perMessageCompressionOffers": [
            PerMessageDeflateOffer(
                accept_max_window_bits=True, request_max_window_bits=DEFLATE_WINDOW_BITS
            )
        ],
        "perMessageCompressionAccept": accept,
    }


_log = Logger(namespace="acmews.protocol")

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CLOSED = WebSocketProtocol.STATE_CLOSED


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


def _peer_certificate(transport: Any) -> Any:
    """The peer's TLS certificate when ``transport`` is a TLS connection that has one."""
    if ISSLTransport.providedBy(transport):
        return transport.getPeerCertificate()
    return None


@implementer(IPushProducer)
class _WriteBackPressure:
    """Registered on the transport, which pauses it once more than its ``bufferSize`` (64 KiB
    for TCP) waits for the peer and resumes it when all of that has been sent. From the pause
    on, the protocol counts what it writes; past ``write_buffer_size`` it stops reading from
    the peer (its requests, its pings) until the transport has drained. (The transport's own
    ``bufferSize`` is left alone: TCP reads ``bufferSize`` bytes at a time, so a larger one
    makes every read dearer.)"""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _AutobahnFastPath) -> None:
        self._protocol: _AutobahnFastPath | None = protocol

    def pauseProducing(self) -> None:
        if self._protocol is not None:
            self._protocol._backed_up()

    def resumeProducing(self) -> None:
        if self._protocol is not None:
            self._protocol._drained()

    def stopProducing(self) -> None:
        self._protocol = None


def _dropped(*args: object) -> None:
    """What a session's send and close become once its connection is gone."""


class TurnWriter:
    """Sends, at the end of a reactor turn, the frames each connection wrote during it: one
    system call per connection and turn, straight to its socket.

    Twisted's transport would do the same in the next turn, but registers the socket for
    writing and removes it again each time (two more system calls and its bookkeeping per
    connection and turn): a fan-out writes one notification to each of a thousand
    connections in a turn. What the socket does not take at once (its buffer is full) goes
    to the transport as usual, and so does everything while the transport still holds
    something, so that order holds.

    The frames wait here, not in each connection: the writer's two lists stay in the
    processor's caches while a fan-out writes to a thousand connections, a list of each
    connection's would not. A connection knows the index of its frames (``_turn_index``,
    -1 while it has none waiting).
    """

    __slots__ = ("_call", "_clock", "_frames", "_waiting")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: the connections with frames waiting, and their frames: one, or a list of several
        #: (joined once, when sent: a pipelined connection writes dozens in a turn)
        self._waiting: list[_AutobahnFastPath] = []
        self._frames: list[bytes | list[bytes]] = []
        self._call: IDelayedCall | None = None

    def add(self, protocol: _AutobahnFastPath, frame: bytes) -> None:
        """``protocol``'s first frame of this turn."""
        waiting = self._waiting
        protocol._turn_index = len(waiting)
        waiting.append(protocol)
        self._frames.append(frame)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def append(self, index: int, frame: bytes) -> None:
        """One more frame of the connection at ``index`` in this turn."""
        frames = self._frames
        waiting = frames[index]
        if isinstance(waiting, list):
            waiting.append(frame)
        else:
            frames[index] = [waiting, frame]

    def take(self, index: int) -> bytes:
        """The frames of the connection at ``index``, which sends them itself (or drops
        them): nothing is left here for it."""
        frames = self._frames
        data, frames[index] = frames[index], b""
        return b"".join(data) if isinstance(data, list) else data

    def flush(self) -> None:
        """Send what every connection has waiting (also called when the turn ends)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        waiting, frames = self._waiting, self._frames
        self._waiting, self._frames = [], []
        # (the function, not each protocol's bound method: looking a method up on an object
        # with an instance dict reads that dict, out of the processor's caches here)
        send = _AutobahnFastPath._send_turn
        for protocol, data in zip(waiting, frames, strict=True):
            protocol._turn_index = -1
            if isinstance(data, list):
                send(protocol, b"".join(data))
            elif data:
                send(protocol, data)


def _direct_writes(transport: Any) -> bool:
    """Can frames be written to ``transport``'s socket directly (:class:`TurnWriter`)? A plain
    TCP connection of Twisted's, not TLS nor anything in memory."""
    return (
        isinstance(transport, tcp.Connection)
        and hasattr(transport, "socket")
        and hasattr(transport, "_tempDataBuffer")
    )


#: a server connection's attributes that nothing reads once it is open (#22: 100,000 idle
#: connections): Autobahn's handshake text and the options only ``processHandshake`` reads
#: (checked against Autobahn 26.10.2), and ours for the opening request, whose class defaults
#: (``None``, ``0``, ``False``) are their values once open
_HANDSHAKE_ONLY = frozenset(
    {
        "_wskey",
        "allowNullOrigin",
        "allowedOrigins",
        "allowedOriginsPatterns",
        "flashSocketPolicy",
        "serveFlashSocketPolicy",
        "http_headers",
        "http_request_data",
        "http_request_host",
        "http_request_params",
        "http_request_path",
        "http_request_uri",
        "http_response_data",
        "http_status_line",
        "perMessageCompressionAccept",
        "versions",
        "webStatus",
        "maxConnections",
        "trustXForwardedFor",
        "websocket_extensions",
        "websocket_origin",
        "websocket_protocols",
        "_head_size",
        "_head_tail",
        "_handshaking",
    }
)


class _AutobahnFastPath:
    """Every override of Autobahn internals, in one place (checked against Autobahn 26.10.2).

    Privates touched, and why:

    - ``_dataReceived`` (called instead of Autobahn's ``dataReceived``, which formats its
      debug-log arguments with ``hltype``/``hlval`` on every read even when debug logging is
      off); ``data`` (its receive buffer: while an asynchronous authorizer decides, bytes are
      only buffered, because Autobahn would parse the HTTP request again on the next read);
    - ``message_data``, ``failedByMe`` (``onMessageEnd`` without Autobahn's per-message
      observer Deferred: the joined payload goes straight to the session);
    - ``_perMessageCompress``, ``send_queue``, ``state`` (the server writes its own unmasked
      frames when no compression and nothing queued would reorder them);
    - the attributes in :data:`_HANDSHAKE_ONLY` (the handshake text, about 1 KiB per idle
      connection, and the options only the opening handshake reads): dropped once open and
      the instance dict rebuilt, 106 entries (3.3 KB) down to 80 (1.6 KB) before the hot
      attributes moved to slots, 60 now;
    - ``is_closed`` (fired with the protocol itself: replaced by a fired Deferred of None
      once closed, to cut that cycle);
    - ``current_frame`` (is the first frame of a message its last?) for the bounds on
      fragmented messages;
    - ``_fail_connection`` (close with a code: used for those bounds, and overridden so that
      reading stops after any failure, 1009 and 1002 included).

    ``_onMessageFrameBegin`` (the Twisted adapter's, which only calls ``onMessageFrameBegin``)
    counts frames per message and times fragmented ones.

    The server hands Autobahn its opening request whole, once its end is seen (see
    :meth:`OneM2MServerProtocol._request_head`): Autobahn appends every read to ``data`` and
    searches all of it for the end of the headers each time, without any bound.

    Public hooks overridden: ``connectionMade`` (the write bound and the back-pressure
    producer) and
    ``connectionLost`` (timers cancelled, the session's references to this protocol cut, so
    that a closed connection is freed by reference counting, without waiting for a garbage
    collection).

    ``self.log`` stays Autobahn's txaio logger, whose debug calls are no-ops below its level;
    our own messages go to ``_log`` (a Twisted logger on the same namespace).
    """

    #: The attributes every notification and every answer reads, in the object itself
    #: rather than in its (Autobahn-sized) instance dict: with a thousand connections these
    #: objects are out of the processor's caches by the time the next message comes, and
    #: a slot costs one cache line where a dict entry costs its table's lines too. Autobahn
    #: sets its own (``state`` ... ``send_queue``) as before: a slot takes the assignment.
    __slots__ = (  # noqa: RUF023 (in the order they are read: a message's are together)
        "_spoke",
        "_handshake_pending",
        "_fast_mask",
        "state",
        "data",
        "current_frame",
        "inside_message",
        "_fast_limit",
        "_in_octets",
        "_in_messages",
        "message_is_binary",
        "session",
        "failedByMe",
        "_perMessageCompress",
        "send_queue",
        "_behind",
        "_turn_index",
        "_turn_writer",
        "_socket",
        "transport",
        "_head",
        "_traffic",
        # the rest, Autobahn's many, in the instance dict as before
        "__dict__",
    )

    def __init__(self) -> None:
        super().__init__()
        # (Twisted's and our class defaults, which a slot of the same name cannot have)
        self.transport = None
        self.session = None
        self._handshake_pending = False
        self._behind = None
        self._fast_mask = None
        self._fast_limit = 0
        self._turn_index = -1
        self._turn_writer = None
        self._socket = None
        self._head = None
        self._spoke = False
        self._in_octets = self._in_messages = 0

    @property
    def trafficStats(self) -> Any:
        """Autobahn's counters, with the whole messages :meth:`_read_frames` read added
        first: it counts them in two slots of the protocol itself rather than in three
        attributes of another object per message (one cache line less per message)."""
        stats = self._traffic
        messages = self._in_messages
        if messages:
            stats.incomingOctetsWireLevel += self._in_octets
            stats.incomingWebSocketFrames += messages
            stats.incomingWebSocketMessages += messages
            self._in_octets = self._in_messages = 0
        return stats

    @trafficStats.setter
    def trafficStats(self, stats: Any) -> None:
        self._traffic = stats
        self._in_octets = self._in_messages = 0

    _traffic: Any
    #: the server's opening request so far (None once seen; see ``_request_head``)
    _head: list[bytes] | None
    _in_octets: int
    _in_messages: int

    # from Autobahn:
    state: int
    peer: str
    failedByMe: bool
    message_data: list[bytes] | None
    message_is_binary: bool
    transport: Any
    send_queue: Any
    data: bytes
    _perMessageCompress: Any
    current_frame: Any
    inside_message: bool
    logFrames: bool
    logOctets: bool
    is_closed: Any
    factory: Any
    session: Session | None
    #: an asynchronous authorizer is deciding: incoming bytes are only buffered
    _handshake_pending: bool
    _backpressure: _WriteBackPressure | None = None
    #: bytes written since the transport passed its own bound (None: it is below it)
    _behind: int | None
    #: set while reading is paused because the peer does not read what we send
    _stall_call: IDelayedCall | None = None
    _message_frames: int = 0
    _message_call: IDelayedCall | None = None
    #: the mask bit every frame from the peer has (0x80 from a client, 0 from a server)
    #: while whole one-frame messages are read here without Autobahn (:meth:`_read_frames`);
    #: None: Autobahn reads everything (compression, frame logging)
    _fast_mask: int | None
    #: the largest payload :meth:`_read_frames` takes (the message size limit, at most 64 KiB)
    _fast_limit: int
    #: frames written in this reactor turn, sent at its end (:class:`TurnWriter`); None:
    #: each frame goes to the transport at once
    _turn_index: int
    _turn_writer: TurnWriter | None
    #: keep-alive: whether the peer sent anything since the last check (a constant stored
    #: per read: a count would make an int per read and read the last one, out of the
    #: processor's caches in a fan-out), and its two timers
    _spoke: bool
    _ping_call: IDelayedCall | None = None
    _pong_call: IDelayedCall | None = None

    def _start_keepalive(self) -> None:
        """A ping after ``ping_interval`` of silence; no pong (nor any other traffic) within
        ``ping_timeout`` closes the connection with a close frame and a log line."""
        if self.factory.options.ping_interval > 0:
            self._spoke = False
            self._ping_call = self.factory.clock.callLater(
                self.factory.options.ping_interval, self._keepalive
            )

    def _keepalive(self) -> None:
        self._ping_call = None
        if self.state != _STATE_OPEN:
            return
        options = self.factory.options
        clock = self.factory.clock
        if self._spoke:  # the peer spoke meanwhile: a full interval more
            self._spoke = False
            self._ping_call = clock.callLater(options.ping_interval, self._keepalive)
            return
        self.sendPing()  # type: ignore[attr-defined]
        self._pong_call = clock.callLater(options.ping_timeout, self._no_pong)

    def onPong(self, payload: bytes) -> None:
        call = self._pong_call
        if call is not None:
            self._pong_call = None
            if call.active():
                call.cancel()
            self._start_keepalive()

    def _no_pong(self) -> None:
        self._pong_call = None
        if self._spoke:  # no pong, but it spoke: alive
            self._start_keepalive()
            return
        timeout = self.factory.options.ping_timeout
        _log.info(
            "closing {peer} (1001): no answer to a ping within {timeout} s",
            peer=self.peer,
            timeout=timeout,
        )
        self._fail_connection(1001, f"no answer to a ping within {timeout:g} s")

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]
        self._backpressure = _WriteBackPressure(self)
        self.transport.registerProducer(self._backpressure, True)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)  # type: ignore[misc]
        finally:
            self._release()

    def _release(self) -> None:
        self._take_turn()  # dropped, as the transport would drop them
        self._turn_writer = None
        self._socket = None
        for call in (self._stall_call, self._message_call, self._ping_call, self._pong_call):
            if call is not None and call.active():
                call.cancel()
        self._stall_call = self._message_call = self._ping_call = self._pong_call = None
        if self._backpressure is not None:
            self._backpressure.stopProducing()
            self._backpressure = None
        session = self.session
        if session is not None:
            session.detach_transport(_dropped, _dropped)
        # A TLS transport keeps its wrapped protocol, and Autobahn's ``is_closed`` has fired
        # with the protocol itself: with these edges gone, nothing of this connection (its
        # buffers included) waits for a garbage collection.
        self.transport = None
        self.is_closed = succeed(None)

    def _backed_up(self) -> None:
        """The transport holds more than its own bound: count what is written from now on."""
        if self._behind is None:
            self._behind = 0

    def _count_behind(self, size: int) -> None:
        behind = self._behind = (self._behind or 0) + size
        if behind > self.factory.options.write_buffer_size and self._stall_call is None:
            if self.state == _STATE_CLOSED or self.transport is None:
                return
            _log.info(
                "{peer} does not read what is sent to it (over {size} bytes queued): "
                "reading from it paused",
                peer=self.peer,
                size=self.factory.options.write_buffer_size,
            )
            self.transport.pauseProducing()
            self._stall_call = self.factory.clock.callLater(
                self.factory.options.stall_timeout, self._stalled
            )

    def _drained(self) -> None:
        """The transport has sent everything: read again if reading was paused."""
        self._behind = None
        call = self._stall_call
        if call is None:
            return
        self._stall_call = None
        if call.active():
            call.cancel()
        _log.debug("{peer} caught up: reading from it again", peer=self.peer)
        if self.transport is not None:
            self.transport.resumeProducing()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's way out for every frame but the server's own fast path (pongs, close
        frames, the client role): counted while the peer is behind; after the frames that
        wait for the end of the turn."""
        waiting = self._take_turn()
        if waiting:
            self._send_now(waiting)
        self._socket = None  # the transport holds data now: frames go through it
        if self._behind is not None:
            self._count_behind(len(data))
        super().sendData(data, sync, chopsize)  # type: ignore[misc]

    def _take_turn(self) -> bytes:
        """The frames this connection has waiting for the end of the turn, taken from the
        turn writer (nothing is left there for it)."""
        index, self._turn_index = self._turn_index, -1
        writer = self._turn_writer
        return writer.take(index) if index >= 0 and writer is not None else b""

    def _send_turn(self, data: bytes) -> None:
        """Send the frames written in this turn (the turn writer's flush): to the socket
        kept in ``_socket`` while the connection is open and nothing has gone through the
        transport since it was last found empty, without reading the transport at all (its
        attributes are lines of memory a fan-out to a thousand connections finds out of
        the processor's caches); else as :meth:`_send_now` does."""
        socket = self._socket
        if socket is None or self.state != _STATE_OPEN:
            self._send_now(data)
            return
        try:
            sent = socket.send(data)
        except OSError:  # full, or failed: the transport finds out which as it writes
            sent = 0
        if sent != len(data):
            self._socket = None
            self.transport.write(data[sent:] if sent else data)

    def _send_now(self, data: bytes) -> None:
        """Send ``data``: to the socket directly if the transport holds nothing; what the
        socket does not take, through the transport. Once all of it went to the socket of
        an open connection with a turn writer, the socket is kept for :meth:`_send_turn`
        (until something goes through the transport: :meth:`sendData`, a short send, a
        failure, the connection lost)."""
        self._socket = None
        transport = self.transport
        if transport is None or not transport.connected or transport.disconnecting:
            return  # the connection is gone or going: as the transport would drop it
        if not transport._tempDataBuffer and not transport.dataBuffer:
            # the socket's own send, not the transport's writeSomeData (which wraps the data
            # in a memoryview and calls send through untilConcludes: five calls more per
            # notification of a fan-out)
            socket = transport.socket
            try:
                sent = socket.send(data)
            except OSError:  # full, or failed: the transport finds out which as it writes
                sent = 0
            if sent == len(data):
                if self._turn_writer is not None and self.state == _STATE_OPEN:
                    self._socket = socket
                return
            if sent:
                data = data[sent:]
        transport.write(data)

    def _stalled(self) -> None:
        self._stall_call = None
        timeout = self.factory.options.stall_timeout
        # the close frame cannot reach a peer that does not read: say it, then abort
        self._close_for_policy(f"it has not read what was sent to it for {timeout:g} s")
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """Autobahn's (a close frame with ``code``), then no more reading: Autobahn would
        otherwise go on parsing (and paying for) every frame the peer sends until the close
        handshake ends. The close frame is still flushed; Autobahn's close handshake timeout
        aborts a peer that never reads it."""
        super()._fail_connection(code, reason)  # type: ignore[misc]
        self._socket = None
        self.data = b""  # what is already buffered is not parsed either
        transport = self.transport
        if transport is not None:
            transport.loseConnection()

    def _protocol_violation(self, reason: str) -> bool:
        """Autobahn's (close with 1002), then stop parsing: with ``failByDrop`` off Autobahn
        would go on with the frame in hand, whose bytes :meth:`_fail_connection` has dropped
        (a frame with reserved bits set then ended in an AssertionError raised into the
        reactor, from a mask of no bytes)."""
        super()._protocol_violation(reason)  # type: ignore[misc]
        return True

    def _invalid_payload(self, reason: str) -> bool:
        """As :meth:`_protocol_violation`, with 1007 (a text message that is not UTF-8)."""
        super()._invalid_payload(reason)  # type: ignore[misc]
        return True

    def _onMessageFrameBegin(self, length: int) -> None:
        # in place of Autobahn's adapter method, which only calls this hook: no extra call
        # per frame for the count
        self.onMessageFrameBegin(length)  # type: ignore[attr-defined]  # its size limits
        frames = self._message_frames = self._message_frames + 1
        if frames == 1:
            if not self.current_frame.fin:
                self._message_call = self.factory.clock.callLater(
                    self.factory.options.message_timeout, self._message_too_slow
                )
        elif frames > self.factory.options.max_message_frames and not self.failedByMe:
            limit = self.factory.options.max_message_frames
            self._close_for_policy(f"a message may span at most {limit} frames")

    def _message_too_slow(self) -> None:
        self._message_call = None
        timeout = self.factory.options.message_timeout
        self._close_for_policy(f"a message must be completed within {timeout:g} s")

    def _close_for_policy(self, reason: str) -> None:
        """Close with 1008 (policy violation), logged once with the reason."""
        _log.info("closing {peer} (1008): {reason}", peer=self.peer, reason=reason)
        self._fail_connection(1008, reason)

    def _message_timer_done(self) -> None:
        call = self._message_call
        self._message_call = None
        if call is not None and call.active():
            call.cancel()

    def dataReceived(self, data: bytes) -> None:
        self._spoke = True  # traffic: the keep-alive notes reads instead of timing each one
        if self._handshake_pending:
            self.data += data
            if len(self.data) > MAX_EARLY_DATA:
                _log.info(
                    "{peer}: {size} bytes sent before the handshake was answered, dropped",
                    peer=self.peer,
                    size=len(self.data),
                )
                self.transport.abortConnection()
            return
        if (
            self._fast_mask is not None
            and self.state == _STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message
        ):
            # (the function: a method looked up on self reads its instance dict first)
            data = _AutobahnFastPath._read_frames(self, data)
            if not data:
                return
        self._dataReceived(data)  # type: ignore[attr-defined]

    def _read_frames(self, data: bytes) -> bytes:
        """Read the whole one-frame text and binary messages at the start of ``data`` (most
        messages: a oneM2M primitive is seldom fragmented) and hand each to the session,
        without Autobahn's per-frame machinery; what is left (a control frame, a fragment, a
        frame not complete yet, anything unusual) is returned for Autobahn to read, which
        also refuses what breaks the rules. A text message must be UTF-8 here too."""
        mask = self._fast_mask
        limit = self._fast_limit
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if (b0 != 0x81 and b0 != 0x82) or b1 & 0x80 != mask:
                break
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    break
                length = (data[head] << 8) | data[head + 1]
                head += 2
            elif length == 127:
                break
            if mask:
                key = data[head : head + 4]
                head += 4
            end = head + length
            if end > n or length > limit:
                break
            payload = data[head:end]
            if mask and length:
                payload = unmask(payload, key)
            text = b0 == 0x81
            if text and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection (1007)
            self._in_octets += end - pos
            self._in_messages += 1
            pos = end
            self.message_is_binary = not text  # as Autobahn leaves it
            session = self.session
            if session is not None:
                session.message_received(payload, text)
            if self.state != _STATE_OPEN or self.failedByMe:
                break
        return data[pos:] if pos else data

    def onMessageEnd(self) -> None:
        self._message_frames = 0
        if self._message_call is not None:
            self._message_timer_done()
        if not self.failedByMe:
            assert self.message_data is not None
            data = self.message_data
            payload = data[0] if len(data) == 1 else b"".join(data)
            self.message_data = None
            session = self.session
            if session is not None:
                # the frame type: a peer may send the other serialization (see the session)
                session.message_received(payload, not self.message_is_binary)
            return
        self.message_data = None

    def _send_unmasked(self, data: bytes, binary: bool) -> None:
        """Send one whole message as a server does (unmasked): the frame written here, to the
        turn writer, skipping Autobahn's per-send bookkeeping and its eagerly formatted debug
        log arguments; through Autobahn's ``sendMessage`` only when compression or its own
        send queue is in the way. A closed connection drops it (the session knows). The
        server's ``_send_message`` is this method itself: a call less per message."""
        if self.state != _STATE_OPEN:
            return
        if self._perMessageCompress is None and not self.send_queue:
            frame = frame_header(2 if binary else 1, len(data), masked=False) + data
            if self._behind is not None:
                self._count_behind(len(frame))
            writer = self._turn_writer
            if writer is None:
                self.transport.write(frame)
            else:
                index = self._turn_index
                if index < 0:
                    writer.add(self, frame)
                else:
                    writer.append(index, frame)
            return
        self.sendMessage(data, binary)  # type: ignore[attr-defined]

    def _forget_handshake_text(self) -> None:
        """Drop what only the opening handshake reads and rebuild the instance dict: a dict
        never shrinks, and Autobahn's attributes had grown this one past 85 entries, to its
        next size (memory only: every attribute read later keeps its value)."""
        self.__dict__ = {
            name: value for name, value in self.__dict__.items() if name not in _HANDSHAKE_ONLY
        }


class _OneM2MProtocolMixin(_AutobahnFastPath):
    """What both roles share: the session and closing."""

    __slots__ = ()

    codec: ICodec
    #: the ``direction`` label of this side's connections in the metrics
    _direction = "in"
    #: where this connection is counted, once open (the factory's metrics)
    _metrics: BindingMetrics | None = None

    def _start_session(
        self,
        factory: Any,
        originator: str | None,
        enforce_originator: bool,
        on_bound: Any = None,
        authorization: Authorization = _NOTHING_PROVED,
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
            request_timeout=factory.options.request_timeout,
            max_message_size=factory.options.max_message_size,
            on_bound=on_bound,
            authorization=authorization,
            metrics=factory.metrics,
            # a server's sessions share one timer for their requests' timeouts
            deadlines=getattr(factory, "deadlines", None),
        )
        if factory.metrics is not None:
            self._metrics = factory.metrics
            factory.metrics.opened(self._direction, self.codec.name)
        if self._perMessageCompress is None and not (self.logFrames or self.logOctets):
            self._fast_mask = 0x80 if factory.isServer else 0
            self._fast_limit = min(factory.options.max_message_size, 65535)
            writer = getattr(factory, "turn_writer", None)
            if writer is not None and _direct_writes(self.transport):
                self._turn_writer = writer
        self._start_keepalive()
        return self.session

    def _send_message(self, data: bytes, binary: bool) -> None:
        """Send one whole message; a closed connection drops it (the session knows)."""
        if self.state != _STATE_OPEN:
            return
        self.sendMessage(data, binary)  # type: ignore[attr-defined]

    def _close(self, code: int, reason: str) -> None:
        if self.state == _STATE_OPEN:
            data = reason.encode()[:120].decode("utf-8", "ignore").encode()
            # Autobahn's sendClose takes only 1000 and 3000-4999 from applications; 1001
            # (going away, when the CSE stops) is a protocol code it must still be able to
            # send: its sendCloseFrame does, with the same state handling
            self.sendCloseFrame(code=code, reasonUtf8=data, isReply=False)  # type: ignore[attr-defined]

    def _session_closed(self, reason: str) -> None:
        session = self.session
        if session is not None:
            metrics = self._metrics
            if metrics is not None and session.connected:
                metrics.closed(self._direction, session.subprotocol)
            session.connection_lost(reason)


class OneM2MServerProtocol(_OneM2MProtocolMixin, WebSocketServerProtocol):  # type: ignore[misc]
    """The accepting side: a CSE (or a registree's own server, see acmews.client.listen)."""

    factory: OneM2MServerFactory
    originator: str | None = None
    _refusal_headers: Any = None
    #: why the handshake is refused, where its HTTP status does not tell (the metrics)
    _refusal_kind: str | None = None
    #: the authorizer's decision, once made (the session carries its owner)
    _authorization = Authorization()
    #: the client address this connection counts against (None: not admitted)
    _admitted: str | None = None
    _handshaking = False
    #: the opening request's reads, held until the end of its headers is seen (None: seen)
    _head_size = 0
    _head_tail = b""
    #: closes the connection if it is still unbound when it fires
    _unbound_call: IDelayedCall | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            head = self._request_head(data)
            if head is None:
                return
            data = head
        super().dataReceived(data)

    def _request_head(self, data: bytes) -> bytes | None:
        """The whole opening request so far once the end of its headers is among its bytes
        (None: not yet, or refused). Only the new bytes, and the three before them, are
        searched for the end: Autobahn would search its whole buffer on every read (128
        never-ending requests took 430 MB and a core). A request whose headers exceed
        ``max_handshake_size`` is answered with 431 and closed."""
        head = self._head
        assert head is not None
        seen = self._head_size
        overlap = self._head_tail  # the end may straddle two reads
        window = overlap + data
        end = window.find(b"\r\n\r\n")
        size = seen + len(data) if end < 0 else seen - len(overlap) + end + 4
        limit = self.factory.options.max_handshake_size
        if size > limit:
            self._head = None
            self._handshake_pending = True  # what it sends from now on is not parsed
            reason = "Request Header Fields Too Large"
            self._log_refusal(431, f"{reason} (over {limit} bytes)")
            self.failHandshake(reason, 431)
            return None
        head.append(data)
        self._head_size = seen + len(data)
        if end < 0:
            self._head_tail = window[-3:]
            return None
        self._head = None
        return head[0] if len(head) == 1 else b"".join(head)

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        address = str(getattr(peer, "host", peer))
        if not self.factory.admission.admit(address):
            if self.factory.metrics is not None:
                self.factory.metrics.refusal(503, "connection_limit")
            # nothing it sent is read (buffered at most, as while a handshake is decided)
            self._handshake_pending = True
            self.transport.abortConnection()
            return
        self._admitted = address
        self._handshaking = True
        self._head = []

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._unbound_done()
        if self.session is not None:
            self.session.on_bound = None  # the session's last edge to this protocol
        address, self._admitted = self._admitted, None
        if address is not None:
            self.factory.admission.closed(address, self._handshaking)
        super().connectionLost(reason)

    @override
    def onConnect(  # type: ignore[override]  # Autobahn awaits a Deferred (txaio.as_future)
        self, request: ConnectionRequest
    ) -> str | Deferred[str]:
        factory = self.factory
        chosen = choose_subprotocol(request.protocols, factory.codecs)
        if chosen is None:
            offered = ", ".join(request.protocols) or "none"
            _log.info(
                "refused {peer}: no acceptable subprotocol (offered: {offered})",
                peer=self.peer,
                offered=offered[:200],
            )
            self._refusal_kind = "no_subprotocol"
            raise ConnectionDeny(
                400,
                f"no acceptable WebSocket subprotocol (offered: {offered[:200]}; supported: "
                f"{', '.join(factory.codecs)})",
            )
        handshake = Handshake(
            headers=request.headers,
            peer=self.transport.getPeer(),
            peer_certificate=_peer_certificate(self.transport),
            path=request.path,
            subprotocol=chosen,
        )
        try:
            decision = factory.authorizer.authorize(handshake)
        except HandshakeRefused as refusal:
            raise self._refuse(refusal) from None
        if isinstance(decision, Deferred):
            self._handshake_pending = True
            return decision.addCallbacks(
                self._authorized, self._not_authorized, callbackArgs=(chosen,)
            )
        return self._authorized(decision, chosen)

    def _authorized(self, decision: Authorization | str | None, chosen: str) -> str:
        self._handshake_pending = False
        if self.state == _STATE_CLOSED:
            # the peer left while an asynchronous authorizer decided: bind nothing
            raise ConnectionDeny(400, "connection closed during the handshake")
        self._authorization = authorization = Authorization.of(decision)
        taken = self.factory.taken(authorization)
        if taken is not None:
            raise self._refuse(HandshakeRefused(403, taken))
        self.originator = authorization.originator
        self.codec = self.factory.codecs[chosen]
        return chosen

    def _not_authorized(self, failure: Any) -> NoReturn:
        self._handshake_pending = False
        if isinstance(failure.value, HandshakeRefused):
            raise self._refuse(failure.value)
        raise failure.value  # Autobahn logs it and answers 500

    def _refuse(self, refusal: HandshakeRefused) -> ConnectionDeny:
        self._log_refusal(refusal.status, refusal.reason)
        self._refusal_headers = list(refusal.headers.items()) or None
        return ConnectionDeny(refusal.status, refusal.reason)

    def _log_refusal(self, status: int, reason: str) -> None:
        # one budget for the whole factory: a peer retrying bad credentials in a loop, on
        # new connections each time, must not fill the log
        budget = self.factory.refusal_log_budget
        if budget.allow(self.factory.clock.seconds()):
            left_out = budget.take_suppressed()
            # who it claimed to be, never the secret: an operator can tell a typo from a guess
            _log.info(
                "refused {peer}: {status} {reason} ({claimed})"
                + (" ({left_out} more refusals not logged)" if left_out else ""),
                peer=self.peer,
                status=status,
                reason=reason[:300],
                claimed=claimed(getattr(self, "http_headers", None) or {}),
                left_out=left_out,
            )

    @override
    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Autobahn's, plus the headers of our refusal (e.g. ``WWW-Authenticate``); every
        refused handshake comes here (counted by reason)."""
        if self.factory.metrics is not None:
            self.factory.metrics.refusal(code, self._refusal_kind)
        if self.transport is None:
            return  # the peer left while an asynchronous authorizer decided
        if responseHeaders is None:
            responseHeaders = self._refusal_headers
        super().failHandshake(reason, code, responseHeaders)

    @override
    def onOpen(self) -> None:
        factory = self.factory
        if self._admitted is not None and self._handshaking:
            self._handshaking = False
            factory.admission.handshake_done(self._admitted)
        session = self._start_session(
            factory,
            self.originator,
            enforce_originator=True,
            on_bound=self._bound,
            authorization=self._authorization,
        )
        self._forget_handshake_text()
        timeout = factory.options.unbound_timeout
        if session.originator is None and timeout > 0:
            # an unbound connection holds a slot and may only register an AE: it must do
            # so in time, or a client could hold every slot without ever saying who it is
            self._unbound_call = factory.clock.callLater(timeout, self._still_unbound)
        factory.session_opened(session)

    def _bound(self, session: Session, originator: str) -> None:
        self._unbound_done()
        self.factory.session_bound(session, originator)

    def _still_unbound(self) -> None:
        self._unbound_call = None
        timeout = self.factory.options.unbound_timeout
        self._close_for_policy(f"no AE registered on the connection within {timeout:g} s")

    def _unbound_done(self) -> None:
        call, self._unbound_call = self._unbound_call, None
        if call is not None and call.active():
            call.cancel()

    # server frames are not masked: written by the fast path itself
    _send_message = _AutobahnFastPath._send_unmasked

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
        originators: IOriginatorMap | None = None,
        *,
        url: str | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        subprotocols: Sequence[str] | None = None,
        options: ConnectionOptions | None = None,
        authorizer: IHandshakeAuthorizer | None = None,
        limits: ConnectionLimits | None = None,
        metrics: BindingMetrics | None = None,
    ) -> None:
        """
        @param handler: answers incoming requests (the CSE, a gateway's own code).
        @param limits: connections accepted in all and per client address (defaults when
            None).
        @param originators: where connections are bound; a fresh map when None.
        @param subprotocols: the supported subprotocol names (default: every codec).
        @param options: timeouts, message size and keep-alive (defaults when None).
        @param authorizer: decides which originator a connection speaks for, or refuses it
            (default: X-M2M-Origin as sent, any claim accepted).
        @param metrics: counts connections, refused handshakes and requests (None: none).
        """
        self.codecs = _codecs(subprotocols)
        super().__init__(url, protocols=list(self.codecs), reactor=reactor)
        self.handler = handler
        self.originators: IOriginatorMap = (
            originators if originators is not None else OriginatorMap()
        )
        self.clock: IReactorTime = clock if clock is not None else self.reactor
        self.options = options if options is not None else ConnectionOptions()
        self.authorizer: IHandshakeAuthorizer = (
            authorizer if authorizer is not None else DefaultAuthorizer()
        )
        self.setProtocolOptions(**self.options.autobahn())
        if self.options.compression:
            self.setProtocolOptions(
                perMessageCompressionAccept=_deflate_acceptor(self.options.max_message_size)
            )
        self.admission = Admission(limits or ConnectionLimits(), self.clock)
        #: handshake refusals (401, 403, ...) logged: 20 a minute, then summed up
        self.refusal_log_budget = Budget(20, 60.0)
        self.metrics = metrics
        #: every session open on this factory's connections (what a graceful stop drains)
        self.sessions: set[Session] = set()
        #: set by a graceful stop: a connection that opens now is closed at once (1001)
        self.draining = False
        #: sends what the connections wrote in a reactor turn at its end
        self.turn_writer = TurnWriter(self.clock)
        #: times out the requests sent on all of them (notifications) on one timer
        self.deadlines = Deadlines(self.clock)

    def taken(self, authorization: Authorization) -> str | None:
        """Why the originator ``authorization`` claims is taken, or None. A CSE-ID with a
        live link here (a registree's, or the registrar link this CSE dialled) is not
        displaced by a newcomer, unless the same credential comes back: one dishonest peer
        must not take over another CSE's traffic. (An AE's newest connection wins.)"""
        originator = authorization.originator
        if originator is None or not originator.startswith("/"):
            return None
        live = self.originators.lookup(originator)
        if live is None:
            return None
        owner = authorization.owner
        if owner is not None and live.authorization.owner == owner:
            return None
        return f"the CSE-ID {originator} has a live link here"

    def session_opened(self, session: Session) -> None:
        if self.draining:  # its handshake began before the listeners stopped
            session.close(1001, GOING_AWAY)
            return
        taken = self.taken(session.authorization)
        if taken is not None:  # a link came up while this handshake was decided
            session.close(1008, taken)
            return
        self.sessions.add(session)

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
        self.sessions.discard(session)
        self.originators.remove_connection(session)


class OneM2MClientProtocol(_OneM2MProtocolMixin, WebSocketClientProtocol):  # type: ignore[misc]
    """The connecting side: an AE or CSE connecting to its registrar, or a CSE to a poa."""

    factory: OneM2MClientProtocolFactory
    _direction = "out"
    #: why the connection ended before the WebSocket opened (see when_open)
    _not_opened: Exception | None = None
    _open_waiters: list[Deferred[Session]] | None = None

    def when_open(self) -> Deferred[Session]:
        """Fires with this connection's session once the WebSocket is open, or fails with
        TargetNotReachable when it ended before: what a ``ClientService``'s
        ``prepareConnection`` waits on, its factory serving every connection in turn."""
        if self.session is not None:
            return succeed(self.session)
        if self._not_opened is not None:
            return fail(self._not_opened)
        d: Deferred[Session] = Deferred()
        self._open_waiters = [*(self._open_waiters or ()), d]
        return d

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            super().dataReceived(data)
            return
        try:
            super().dataReceived(data)
        except Exception as e:
            # Autobahn raises on some malformed handshake answers (bytes that are not
            # UTF-8, say): the connection fails with one reason, as for any bad answer
            self.wasNotCleanReason = (
                f"malformed handshake answer from the server ({type(e).__name__})"
            )
            self.dropConnection(abort=True)

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
        peer = factory.remote_originator
        session = self._start_session(
            factory,
            peer,
            enforce_originator=factory.enforce_originator,
            # the peer this side dialled is who it was dialled as (its URL, its TLS)
            authorization=Authorization(peer, verified=peer is not None),
        )
        factory.opened(session)
        waiters, self._open_waiters = self._open_waiters or [], None
        for waiter in waiters:
            waiter.callback(session)

    @override
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        why = reason or getattr(self, "wasNotCleanReason", None) or f"closed ({code})"
        self._session_closed(why)
        error = TargetNotReachable(f"could not open the WebSocket: {why}")
        if self.session is None:
            self._not_opened = error
            waiters, self._open_waiters = self._open_waiters or [], None
            for waiter in waiters:
                waiter.errback(error)
        self.factory.fail(error)


class OneM2MClientProtocolFactory(WebSocketClientFactory):
    """Builds a oneM2M client protocol for each outgoing connection, as many as asked for
    (e.g. by a ``ClientService``, which connects again after each loss); each protocol's
    :meth:`~OneM2MClientProtocol.when_open` gives its session."""

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
        options: ConnectionOptions | None = None,
        headers: dict[str, str] | None = None,
        metrics: BindingMetrics | None = None,
    ) -> None:
        """
        @param originator: sent as X-M2M-Origin (omit only to register an AE).
        @param subprotocols: offered in this order of preference.
        @param remote_originator: who is at the other end, when known (a CSE-ID).
        @param options: timeouts, message size and keep-alive (defaults when None).
        @param metrics: counts the connections (direction ``out``) and the requests they
            answer (None: none).
        """
        headers = dict(headers or {})
        if originator:
            headers["X-M2M-Origin"] = originator
        self.codecs = {name: CODECS[name] for name in subprotocols if name in CODECS}
        super().__init__(
            url, protocols=list(subprotocols), headers=headers or None, reactor=reactor
        )
        self.originator = originator
        self.handler = handler
        self.clock: IReactorTime = clock if clock is not None else self.reactor
        self.remote_originator = remote_originator
        self.enforce_originator = enforce_originator
        self.options = options if options is not None else ConnectionOptions()
        self.setProtocolOptions(**self.options.autobahn())
        if self.options.compression:
            self.setProtocolOptions(**_deflate_client_options(self.options.max_message_size))
        self.metrics = metrics

    def opened(self, session: Session) -> None:
        """A connection opened (its protocol's ``when_open`` fires too)."""

    def fail(self, error: Exception) -> None:
        """A connection could not be made, or ended before it opened."""

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.fail(TargetNotReachable(f"cannot connect: {reason.getErrorMessage()}"))


class OneM2MClientFactory(OneM2MClientProtocolFactory):
    """One outgoing oneM2M WebSocket connection; ``ready`` fires with its session.

    Takes the arguments of :class:`OneM2MClientProtocolFactory`.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.ready: Deferred[Session] = Deferred()

    def opened(self, session: Session) -> None:
        if not self.ready.called:
            self.ready.callback(session)

    def fail(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
