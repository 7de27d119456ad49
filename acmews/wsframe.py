"""RFC 6455 WebSocket frames: opcodes, headers, masking and an incremental parser.

Pure frame code, no protocol and no I/O. The server's fast path (:mod:`acmews.protocol` writes
unmasked frame headers itself instead of going through Autobahn) and the load generator's lean
client (:mod:`acmews.bench.leanclient`) both use it.
"""

from __future__ import annotations

import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameParser",
    "Masker",
    "WebSocketProtocolError",
    "encode_frame",
    "frame_header",
    "unmask",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))
_H2 = struct.Struct("!H")
_Q = struct.Struct("!Q")
#: a header with a 16-bit or a 64-bit length, packed at once (a notification's ~400 bytes
#: need the first: 70 ns against 150 for its two bytes and length made apart and joined)
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455 framing (we close with 1002)."""


class Masker:
    """Client-side masking with one key; the mask integer per payload length is cached."""

    __slots__ = ("_cache", "key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 4:
            raise ValueError("a WebSocket mask key has 4 bytes")
        self.key = key
        self._cache: dict[int, int] = {}

    def mask(self, payload: bytes) -> bytes:
        n = len(payload)
        if n == 0:
            return b""
        m = self._cache.get(n)
        if m is None:
            m = int.from_bytes((self.key * ((n + 3) // 4))[:n], "little")
            if len(self._cache) < 256:
                self._cache[n] = m
        return (int.from_bytes(payload, "little") ^ m).to_bytes(n, "little")


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` masked (or unmasked: the same) with the 4-byte ``key``."""
    n = len(payload)
    m = int.from_bytes((key * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(payload, "little") ^ m).to_bytes(n, "little")


def frame_header(opcode: int, length: int, *, masked: bool, fin: bool = True) -> bytes:
    """The 2/4/10-byte header (without mask key) of one frame."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mbit | length))
    if length < 65536:
        return _HEAD16.pack(b0, mbit | 126, length)
    return _HEAD64.pack(b0, mbit | 127, length)


def encode_frame(
    opcode: int, payload: bytes, masker: Masker | None = None, *, fin: bool = True
) -> bytes:
    """One frame; masked (as a client must) when a masker is given."""
    if masker is None:
        return frame_header(opcode, len(payload), masked=False, fin=fin) + payload
    return (
        frame_header(opcode, len(payload), masked=True, fin=fin)
        + masker.key
        + masker.mask(payload)
    )


class FrameParser:
    """Incremental frame parser: ``feed(bytes)`` returns complete events ``(opcode, payload)``.

    Data messages come out whole (fragments joined, opcode of the first frame); control frames
    (close, ping, pong) come out as they arrive, also between fragments. Masked frames are
    unmasked (a server should not send them, but tolerating it costs nothing).
    """

    def __init__(self, max_message: int = 64 * 1024 * 1024) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._frag_opcode: int | None = None
        self._frags: list[bytes] = []
        self._frag_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        events: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = _H2.unpack_from(buf, pos + 2)[0]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _Q.unpack_from(buf, pos + 2)[0]
                hlen = 10
                if length >> 63:
                    raise WebSocketProtocolError("64-bit frame length has its top bit set")
            masked = b1 & 0x80
            if masked:
                hlen += 4
            if end - pos < hlen + length:
                if length > self.max_message:
                    raise WebSocketProtocolError(f"frame of {length} bytes is too big")
                break
            if b0 & 0x70:
                raise WebSocketProtocolError("reserved bits set without an extension")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            payload = bytes(buf[pos + hlen : pos + hlen + length])
            if masked:
                payload = Masker(bytes(buf[pos + hlen - 4 : pos + hlen])).mask(payload)
            pos += hlen + length
            if opcode in _CONTROL_OPCODES:
                if not fin or length > 125:
                    raise WebSocketProtocolError("control frame fragmented or over 125 bytes")
                events.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._frag_opcode is None:
                    raise WebSocketProtocolError("continuation frame without a message")
                self._add_fragment(payload)
                if fin:
                    events.append((self._frag_opcode, b"".join(self._frags)))
                    self._frag_opcode = None
                    self._frags = []
                    self._frag_size = 0
            elif opcode in _DATA_OPCODES:
                if self._frag_opcode is not None:
                    raise WebSocketProtocolError("new message before the last one ended")
                if fin:
                    if length > self.max_message:
                        raise WebSocketProtocolError(f"message of {length} bytes is too big")
                    events.append((opcode, payload))
                else:
                    self._frag_opcode = opcode
                    self._add_fragment(payload)
            else:
                raise WebSocketProtocolError(f"unknown opcode {opcode}")
        if pos:
            del buf[:pos]
        return events

    def _add_fragment(self, payload: bytes) -> None:
        self._frag_size += len(payload)
        if self._frag_size > self.max_message:
            raise WebSocketProtocolError(f"message over {self.max_message} bytes")
        self._frags.append(payload)
