"""One set of connection options for every place a oneM2M WebSocket is made or accepted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_HANDSHAKE_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_NOTIFICATION_EXPIRY",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "ConnectionOptions",
]

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
#: bytes of an opening handshake's request line and headers a server reads (431 beyond)
DEFAULT_MAX_HANDSHAKE_SIZE = 16 * 1024
#: seconds a notification may wait in store-and-forward without its own ``rqet``
DEFAULT_NOTIFICATION_EXPIRY = 3600.0


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """What ``connect``, ``listen``, both protocol factories and ``twistd acmews`` share.

    Times are in seconds. ``ping_interval`` 0 turns keep-alive off; a handshake timeout of 0
    turns that timer off (tests do, to keep Autobahn's timers off the global reactor).
    """

    #: how long a request we send may wait for its response (4008 after that)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: the largest WebSocket message (and frame) accepted; larger closes with 1009
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ping_interval: float = DEFAULT_PING_INTERVAL
    #: seconds without a pong before the connection is closed
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    open_handshake_timeout: float = 10.0
    close_handshake_timeout: float = 1.0
    #: bytes queued for a peer that does not read before acmews stops reading from it; a
    #: connection still above it after the ping timeout is closed (1008)
    write_buffer_size: int = 4 * 1024 * 1024
    #: frames one message may span (zero-length frames count); beyond: closed with 1008
    max_message_frames: int = 2048
    #: seconds a message split over several frames may take to complete; beyond: 1008
    message_timeout: float = 30.0
    #: (servers) the largest opening request, request line and headers, in bytes: a larger
    #: one is answered with 431 and closed
    max_handshake_size: int = DEFAULT_MAX_HANDSHAKE_SIZE
    #: (servers) seconds a connection may stay without an originator (no X-M2M-Origin, no AE
    #: registered on it) before it is closed (1008); 0: no limit
    unbound_timeout: float = 30.0
    #: permessage-deflate (RFC 7692): a server accepts it from a client that offers it, a
    #: client offers it; ``max_message_size`` then bounds the inflated size, checked while
    #: inflating. Off by default: it costs memory per connection once a message has passed
    compression: bool = False

    def __post_init__(self) -> None:
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        for name in (
            "max_message_size",
            "write_buffer_size",
            "max_message_frames",
            "max_handshake_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if not self.message_timeout > 0:
            raise ValueError("message_timeout must be positive")
        for name in (
            "ping_interval",
            "ping_timeout",
            "open_handshake_timeout",
            "close_handshake_timeout",
            "unbound_timeout",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def stall_timeout(self) -> float:
        """Seconds a connection whose peer does not read may stay above
        ``write_buffer_size`` before it is closed: the ping timeout."""
        return self.ping_timeout or self.request_timeout

    def autobahn(self) -> dict[str, Any]:
        """The Autobahn protocol options, the same for both roles. ``failByDrop`` off: a peer
        that breaks the rules (e.g. an oversized message) gets a close frame with the code."""
        return {
            "maxMessagePayloadSize": self.max_message_size,
            "maxFramePayloadSize": self.max_message_size,
            # keep-alive is acmews's own (acmews.protocol): Autobahn's batches its timers, so
            # its first ping came 0.66-0.96 s into a 1 s interval, and on a missing pong it
            # dropped the TCP connection without a close frame or a log line
            "autoPingInterval": 0,
            "autoPingTimeout": 0,
            "failByDrop": False,
            "openHandshakeTimeout": self.open_handshake_timeout,
            "closeHandshakeTimeout": self.close_handshake_timeout,
        }
