"""A lean RFC 6455 WebSocket client on a plain Twisted ``Protocol``, for the load generator.

Autobahn costs more per message than the servers we want to measure, so ``acmews.bench`` drives
them with this instead: no extensions, no UTF-8 validation, one mask key per connection (the
mask for a payload length is computed once and cached, masking is one big-integer XOR), and
server frames parsed from one buffer. It is a client only; it is not a general-purpose library.
The frames themselves (shared with the server's fast path) are in :mod:`acmews.wsframe`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from acmews.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Masker,
    WebSocketProtocolError,
    encode_frame,
    frame_header,
)

__all__ = [
    "HandshakeError",
    "LeanWebSocketClient",
    "accept_key",
    "build_handshake",
    "parse_handshake",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_H2 = struct.Struct("!H")


class HandshakeError(Exception):
    """The opening handshake failed: not 101, wrong accept key, wrong or missing subprotocol."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# ---------------------------------------------------------------------------------------------
# opening handshake


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (both base64, as bytes)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def build_handshake(
    host: str, port: int, path: str, key: bytes, subprotocol: str, originator: str | None
) -> bytes:
    """The client's HTTP upgrade request."""
    lines = [
        f"GET {path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode('ascii')}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {subprotocol}",
    ]
    if originator:
        lines.append(f"X-M2M-Origin: {originator}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_handshake(data: bytes, key: bytes, offered: str) -> tuple[str, int] | None:
    """Parse the server's answer: ``None`` while incomplete, else ``(subprotocol, length)``.

    ``length`` is how many bytes of ``data`` the answer took (frames may follow at once).
    Raises :class:`HandshakeError` for anything but a valid 101 choosing ``offered``.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > 65536:
            raise HandshakeError("handshake answer over 64 KiB without an end")
        return None
    head = data[:end].decode("iso-8859-1").split("\r\n")
    status_line = head[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise HandshakeError(f"not an HTTP answer: {head[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise HandshakeError(f"bad HTTP status line: {head[0][:80]!r}") from None
    if status != 101:
        reason = status_line[2] if len(status_line) > 2 else ""
        body = data[end + 4 : end + 4 + 200].decode("utf-8", "replace").strip()
        detail = f"{status} {reason}" + (f": {body}" if body else "")
        raise HandshakeError(f"server refused the WebSocket upgrade: {detail}", status)
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError("101 without 'Upgrade: websocket'", status)
    if headers.get("sec-websocket-accept", "").encode("ascii", "replace") != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept", status)
    chosen = headers.get("sec-websocket-protocol")
    if chosen is None:
        raise HandshakeError(f"server chose no subprotocol (offered {offered})", status)
    if chosen != offered:
        raise HandshakeError(f"server chose subprotocol {chosen!r}, offered {offered}", status)
    return chosen, end + 4


# ---------------------------------------------------------------------------------------------
# the protocol


class LeanWebSocketClient(Protocol):
    """One client connection. The owner sets ``on_message`` and calls ``send``.

    ``opened`` fires with the chosen subprotocol (or fails with :class:`HandshakeError`, or
    with the reason the connection was lost). ``closed`` fires with a short text saying why
    the connection ended, once it has.
    """

    log = Logger()

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        subprotocol: str,
        originator: str | None,
        clock: IReactorTime,
        handshake_timeout: float = 10.0,
        key: bytes | None = None,
        mask_key: bytes | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.subprotocol = subprotocol
        self.originator = originator
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self._key = key if key is not None else base64.b64encode(os.urandom(16))
        self._masker = Masker(mask_key if mask_key is not None else os.urandom(4))
        self._data_opcode = OP_TEXT if subprotocol.endswith(".json") else OP_BINARY
        self._hs_buf = b""
        self._parser = FrameParser()
        self._timer: IDelayedCall | None = None
        self.is_open = False
        self.close_sent = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.opened: Deferred[str] = Deferred()
        self.closed: Deferred[str] = Deferred()
        self.on_message: Callable[[bytes], None] = lambda payload: None

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            build_handshake(
                self.host, self.port, self.path, self._key, self.subprotocol, self.originator
            )
        )
        if self.handshake_timeout > 0:
            self._timer = self.clock.callLater(self.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._fail_open(HandshakeError(f"no handshake answer in {self.handshake_timeout} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _fail_open(self, err: Exception) -> None:
        self._cancel_timer()
        if not self.opened.called:
            self.opened.errback(err)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        if not self.is_open:
            if self.opened.called:
                return  # failed already, the connection is going away
            self._hs_buf += data
            try:
                parsed = parse_handshake(self._hs_buf, self._key, self.subprotocol)
            except HandshakeError as e:
                self._fail_open(e)
                return
            if parsed is None:
                return
            _, used = parsed
            data = self._hs_buf[used:]
            self._hs_buf = b""
            self._cancel_timer()
            self.is_open = True
            self.opened.callback(self.subprotocol)
            if not data or not self.is_open:
                return
        try:
            events = self._parser.feed(data)
        except WebSocketProtocolError as e:
            self.log.warn("WebSocket protocol error from server: {e}", e=e)
            self.close(1002, str(e)[:100])
            self._abort()
            return
        for opcode, payload in events:
            if opcode in (OP_TEXT, OP_BINARY):
                self.on_message(payload)
            elif opcode == OP_PING:
                self._write(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self._close_received(payload)
                return
            # pong: nothing to do

    def _close_received(self, payload: bytes) -> None:
        if len(payload) >= 2:
            self.close_code = _H2.unpack_from(payload)[0]
            self.close_reason = payload[2:].decode("utf-8", "replace")
        else:
            self.close_code = 1005
        if not self.close_sent:
            self.close_sent = True
            self._write(OP_CLOSE, payload[:2])
        self.is_open = False
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        self.is_open = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(encode_frame(opcode, payload, self._masker))

    def send(self, payload: bytes) -> None:
        """Send one message (text for ``oneM2M.json``, binary otherwise) in one frame."""
        if self.is_open:
            n = len(payload)
            if n < 126:
                header = bytes((0x80 | self._data_opcode, 0x80 | n))
            else:
                header = frame_header(self._data_opcode, n, masked=True)
            m = self._masker
            self.transport.write(header + m.key + m.mask(payload))  # type: ignore[union-attr]

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (the server closes TCP after answering)."""
        if self.transport is None:
            return
        if not self.is_open and not self.opened.called:
            self._fail_open(HandshakeError("closed before the handshake ended"))
            return
        if not self.close_sent:
            self.close_sent = True
            self._write(OP_CLOSE, _H2.pack(code) + reason.encode("utf-8")[:120])
        self.is_open = False

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self.is_open = False
        if not self.opened.called:
            self.opened.errback(reason)
        if not self.closed.called:
            why = (
                f"close {self.close_code} {self.close_reason}".strip()
                if self.close_code is not None
                else reason.getErrorMessage()
            )
            self.closed.callback(why)
