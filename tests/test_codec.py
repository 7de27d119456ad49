"""Codecs: lossless round trips, frame types, and no exception but PrimitiveError on input."""

from __future__ import annotations

import math
import struct
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from acmews.codec import CBOR, CODECS, JSON, get_codec
from acmews.codes import RSC
from acmews.errors import PrimitiveError
from acmews.interfaces import ICodec
from acmews.primitive import Request, Response

NESTED = {
    "m2m:cin": {
        "con": "Grüße, 世界 ✓ \U0001f600",
        "lbl": ["a", "ß"],
        "big": 2**63 - 1,
        "neg": -(2**63),
        "u64": 2**64 - 1,
        "huge": 10**40,
        "f": 0.1,
        "g": -1.5e300,
        "t": True,
        "n": None,
        "deep": {"l": [1, [2, [3, {"x": []}]], {}]},
    }
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(max_size=20) | st.floats(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=5)
    ),
    max_leaves=30,
)
primitive_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.integers(-2, 7) | st.sampled_from(["4", "2a", "x", ""])
        for k in ("op", "rsc", "to", "fr", "rqi", "rvi", "ty", "pc", "rt", "fc", "rcn", "rqet")
    },
)


class CodecTests(SynchronousTestCase):
    def test_registry(self) -> None:
        self.assertIs(get_codec("oneM2M.json"), JSON)
        self.assertIs(get_codec("cbor"), CBOR)
        self.assertEqual(list(CODECS), ["oneM2M.json", "oneM2M.cbor"])
        self.assertRaises(KeyError, get_codec, "oneM2M.xml")
        self.assertFalse(JSON.is_binary)
        self.assertTrue(CBOR.is_binary)
        for codec in CODECS.values():
            verifyObject(ICodec, codec)

    def test_round_trip_request(self) -> None:
        r = Request(1, "cse-in/ae", "r-1", "4", "Cae", ty=4, pc=NESTED, rcn=1)  # type: ignore[arg-type]
        r.extra = {"zz": [1.25, "x"]}
        for codec in CODECS.values():
            data = codec.encode(r)
            self.assertIsInstance(data, bytes)
            back = codec.decode(data)
            self.assertEqual(back, r)
            self.assertEqual(back.to_dict(), r.to_dict())

    def test_round_trip_response(self) -> None:
        r = Response(RSC.OK, "r-1", "4", NESTED, fr="/id-in", to="Cae")
        for codec in CODECS.values():
            self.assertEqual(codec.decode(codec.encode(r)), r)

    def test_json_is_utf8_text(self) -> None:
        data = JSON.dumps({"con": "ü"})
        self.assertEqual(data.decode("utf-8"), '{"con":"ü"}')

    def test_cbor_never_half_floats(self) -> None:
        data = CBOR.dumps({"f": 1.5, "g": 0.0, "h": 65504.0})
        self.assertNotIn(b"\xf9", data)  # major type 7, 16-bit float
        self.assertIn(b"\xfb" + struct.pack(">d", 1.5), data)
        self.assertEqual(cbor2.loads(data), {"f": 1.5, "g": 0.0, "h": 65504.0})

    def test_cbor_text_strings_are_major_type_3(self) -> None:
        self.assertEqual(CBOR.dumps("ab"), b"\x62ab")

    def test_bad_input(self) -> None:
        cases = [
            (JSON, b"{", "invalid JSON"),
            (JSON, b"[1,2]", "object"),
            (JSON, b"42", "object"),
            (JSON, b'{"a":1}', "neither"),
            (JSON, b"\xff\xfe", "invalid JSON"),
            (JSON, b"NaN", "invalid JSON"),
            (JSON, b'{"n": 123456789012345678901234, "x": NaN}', "invalid JSON"),
            (JSON, b"[" * 100000, "invalid JSON"),
            (JSON, b'{"a":1e400}', "infinity"),
            (JSON, b'{"a":1e400,"b":"12345678901234567890"}', "infinity"),  # exact-int path
            (CBOR, b"\xff\x00garbage", "invalid CBOR"),
            (CBOR, b'{"op":1}', "invalid CBOR"),
            (CBOR, cbor2.dumps([1, 2]), "object"),
            (CBOR, b"", "invalid CBOR"),
            (CBOR, b"\x81" * 100000 + b"\x01", "CBOR"),
        ]
        for codec, data, text in cases:
            e = self.assertRaises(PrimitiveError, codec.decode, data)
            self.assertEqual(e.rsc, RSC.BAD_REQUEST)
            self.assertIn(text, e.reason)

    def test_json_long_integers_exact(self) -> None:
        m = {"rsc": 2000, "rqi": "a", "pc": {"v": 10**30, "w": -(10**25), "s": "1" * 25}}
        self.assertEqual(JSON.decode(JSON.encode(Response.from_mapping(m))).to_dict(), m)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        for codec in CODECS.values():
            try:
                codec.decode(data)
            except PrimitiveError:
                pass

    @settings(max_examples=300, deadline=None)
    @given(json_values)
    def test_arbitrary_json_values_round_trip(self, value: Any) -> None:
        self.assertEqual(JSON.loads(JSON.dumps(value)), value)
        try:
            JSON.decode(JSON.dumps(value))
        except PrimitiveError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(cbor_values)
    def test_arbitrary_cbor_values_round_trip(self, value: Any) -> None:
        back = CBOR.loads(CBOR.dumps(value))
        if not _has_nan(value):
            self.assertEqual(back, value)
        try:
            CBOR.decode(CBOR.dumps(value))
        except PrimitiveError:
            pass

    @settings(max_examples=500, deadline=None)
    @given(primitive_like)
    def test_arbitrary_primitive_like_mappings(self, value: dict[str, Any]) -> None:
        for codec in CODECS.values():
            try:
                p = codec.decode(codec.dumps(value))
            except PrimitiveError as e:
                self.assertIn(e.rsc, (RSC.BAD_REQUEST, RSC.RELEASE_VERSION_NOT_SUPPORTED))
            else:
                self.assertEqual(codec.decode(codec.encode(p)), p)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False
