"""RFC 6455 frames (:mod:`acmews.wsframe`): headers, masking, the incremental parser."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from acmews.wsframe import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameParser,
    Masker,
    WebSocketProtocolError,
    encode_frame,
    frame_header,
)

MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 5.7's example mask


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, None, fin=fin)


class FrameTests(SynchronousTestCase):
    def test_rfc_example_masked_hello(self) -> None:
        """RFC 6455 5.7: a masked text "Hello"."""
        frame = encode_frame(OP_TEXT, b"Hello", Masker(MASK))
        self.assertEqual(frame, bytes.fromhex("818537fa213d7f9f4d5158"))

    def test_mask_roundtrip_and_cache(self) -> None:
        m = Masker(b"\x01\x02\x03\x04")
        for n in (0, 1, 3, 4, 5, 127, 1000):
            data = bytes(range(256)) * 4
            data = data[:n]
            masked = m.mask(data)
            self.assertEqual(len(masked), n)
            self.assertEqual(masked, bytes(b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(data)))
            self.assertEqual(m.mask(masked), data)
        self.assertRaises(ValueError, Masker, b"abc")

    def test_header_lengths(self) -> None:
        self.assertEqual(frame_header(OP_TEXT, 125, masked=False), b"\x81\x7d")
        self.assertEqual(frame_header(OP_TEXT, 126, masked=False), b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_header(OP_BINARY, 65535, masked=True), b"\x82\xfe\xff\xff")
        self.assertEqual(
            frame_header(OP_BINARY, 65536, masked=True), b"\x82\xff" + struct.pack("!Q", 65536)
        )
        self.assertEqual(frame_header(OP_CONTINUATION, 1, masked=False, fin=False), b"\x00\x01")

    def test_parse_lengths(self) -> None:
        for n in (0, 125, 126, 65535, 65536):
            payload = bytes(i % 251 for i in range(n))
            p = FrameParser()
            self.assertEqual(p.feed(server_frame(OP_BINARY, payload)), [(OP_BINARY, payload)])

    def test_parse_byte_by_byte(self) -> None:
        data = server_frame(OP_TEXT, b"x" * 300) + server_frame(OP_TEXT, b"y")
        p = FrameParser()
        events = []
        for i in range(len(data)):
            events += p.feed(data[i : i + 1])
        self.assertEqual(events, [(OP_TEXT, b"x" * 300), (OP_TEXT, b"y")])

    def test_many_frames_in_one_chunk(self) -> None:
        data = b"".join(server_frame(OP_TEXT, b"%d" % i) for i in range(100))
        events = FrameParser().feed(data)
        self.assertEqual([e[1] for e in events], [b"%d" % i for i in range(100)])

    def test_fragmented_message_with_ping_between(self) -> None:
        data = (
            server_frame(OP_TEXT, b"Hel", fin=False)
            + server_frame(OP_PING, b"p")
            + server_frame(OP_CONTINUATION, b"lo, ", fin=False)
            + server_frame(OP_CONTINUATION, b"world")
        )
        self.assertEqual(FrameParser().feed(data), [(OP_PING, b"p"), (OP_TEXT, b"Hello, world")])

    def test_masked_server_frame_is_unmasked(self) -> None:
        self.assertEqual(
            FrameParser().feed(encode_frame(OP_TEXT, b"Hello", Masker(MASK))),
            [(OP_TEXT, b"Hello")],
        )

    def test_protocol_errors(self) -> None:
        bad = [
            b"\x80\x00",  # continuation without a message
            b"\xc1\x00",  # RSV1
            b"\x83\x00",  # unknown opcode
            b"\x09\x00",  # fragmented ping
            b"\x89\x7e\x00\x7e" + b"x" * 126,  # ping over 125 bytes
            server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"),
            b"\x82\x7f" + struct.pack("!Q", 1 << 63),
        ]
        for data in bad:
            self.assertRaises(WebSocketProtocolError, FrameParser().feed, data)

    def test_message_size_limit(self) -> None:
        p = FrameParser(max_message=10)
        self.assertRaises(WebSocketProtocolError, p.feed, server_frame(OP_TEXT, b"x" * 11))
        p = FrameParser(max_message=10)
        p.feed(server_frame(OP_TEXT, b"x" * 6, fin=False))
        self.assertRaises(WebSocketProtocolError, p.feed, server_frame(OP_CONTINUATION, b"x" * 6))
