"""Codecs: lossless round trips, frame types, and no exception but PrimitiveError on input."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from acmews import codec as codec_module
from acmews.codec import CBOR, CODECS, JSON, MAX_CONTAINERS, MAX_NESTING, get_codec
from acmews.codes import RSC
from acmews.errors import PrimitiveError
from acmews.interfaces import ICodec
from acmews.primitive import Request, Response, primitive_from_object

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
#: CBOR values inside the JSON data model, plus byte strings (allowed inside ``pc``)
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.binary(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
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

    def test_outside_the_json_data_model_is_4000(self) -> None:
        import datetime
        import decimal
        import fractions
        import re
        import uuid

        def request(**pc: Any) -> dict[str, Any]:
            return {"op": 5, "to": "cse-in", "fr": "Cx", "rqi": "r1", "rvi": "4", **pc}

        shared = [1]
        cyclic = cbor2.dumps(
            cbor2.CBORTag(28, [cbor2.CBORTag(29, 0)])
        )  # a list that contains itself
        cases = [
            cbor2.dumps(request(pc={"con": {1, 2}})),
            cbor2.dumps(request(pc={"con": cbor2.undefined})),
            cbor2.dumps(request(pc={"con": re.compile("a+")})),
            cbor2.dumps(request(pc={"con": {1: "int key"}})),
            cbor2.dumps(request(pc={"con": float("nan")})),
            cbor2.dumps(request(pc={"con": float("inf")})),
            cbor2.dumps(request(pc={"con": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)})),
            cbor2.dumps(request(pc={"con": decimal.Decimal("1.5")})),
            cbor2.dumps(request(pc={"con": fractions.Fraction(1, 3)})),
            cbor2.dumps(request(pc={"con": uuid.UUID(int=1)})),
            cbor2.dumps(request(pc={"con": cbor2.CBORTag(999, "x")})),
            cbor2.dumps(request(pc={"con": cbor2.CBORSimpleValue(99)})),
            cbor2.dumps(request(pc={"con": shared}, rqi2=b"bytes outside pc")),
            b"\xa1\x62pc" + cyclic,
            cbor2.dumps(request(pc={"con": "x"})) + b"\x00",  # trailing garbage
            cbor2.dumps(request(pc={"con": "x"})) * 2,  # two items
        ]
        for data in cases:
            e = self.assertRaises(PrimitiveError, CBOR.decode, data)
            self.assertEqual(e.rsc, RSC.BAD_REQUEST, data)
            self.assertTrue(e.reason.startswith("invalid CBOR"), e.reason)
        # byte strings are fine as content
        self.assertEqual(
            CBOR.decode(cbor2.dumps(request(pc={"con": b"\x00\x01"}))).pc["con"], b"\x00\x01"
        )

    def test_nesting_limit_is_the_same_everywhere(self) -> None:
        def nested(depth: int) -> Any:
            value: Any = "x"
            for _ in range(depth):
                value = {"a": value}
            return value

        def message(depth: int, big: bool = False) -> dict[str, Any]:
            # a primitive is one level, pc another: ``depth`` levels of content below that
            m = {"op": 5, "to": "cse-in", "fr": "Cx", "rqi": "r1", "rvi": "4", "pc": nested(depth)}
            if big:
                m["n"] = 10**30  # the stdlib JSON path
            return m

        ok = MAX_NESTING - 1  # the primitive itself is the first level
        for codec in (JSON, CBOR):
            for big in (False, True):
                self.assertEqual(codec.decode(codec.dumps(message(ok, big))).pc, nested(ok))
                for depth in (ok + 1, 300, 900):
                    e = self.assertRaises(
                        PrimitiveError, codec.decode, codec.dumps(message(depth, big))
                    )
                    self.assertEqual(e.rsc, RSC.BAD_REQUEST)
                    self.assertIn("nest", e.reason)

    def test_containers_are_counted_in_both_codecs(self) -> None:
        # an empty map is one CBOR byte, about 64 bytes of memory: 1 M of them in one CIN
        # held 39 MB
        def message(count: int) -> dict[str, Any]:
            pc = {"m2m:cin": {"con": [{} for _ in range(count)]}}
            return {
                "op": 1,
                "to": "cse-in/c",
                "fr": "Cx",
                "rqi": "r",
                "rvi": "4",
                "ty": 4,
                "pc": pc,
            }

        for codec in (JSON, CBOR):
            # the primitive, pc, m2m:cin and con are four of them
            self.assertIsInstance(codec.decode(codec.dumps(message(MAX_CONTAINERS - 4))), Request)
            e = self.assertRaises(
                PrimitiveError, codec.decode, codec.dumps(message(MAX_CONTAINERS))
            )
            self.assertEqual(e.rsc, RSC.BAD_REQUEST)
            self.assertIn("objects and arrays", e.reason)

    def test_lone_surrogates_are_4000_on_both_json_paths(self) -> None:
        for extra in (b"", b',"n":123456789012345678901'):
            for field in (b'"rqi":"\\ud800"', b'"pc":{"lbl":["a\\udfffb"]}'):
                data = (
                    b'{"op":5,"to":"cse-in","fr":"Cx","rvi":"4","rqi":"r",' + field + extra + b"}"
                )
                data = data.replace(b'"rqi":"r",', b"") if field.startswith(b'"rqi"') else data
                e = self.assertRaises(PrimitiveError, JSON.decode, data)
                self.assertEqual(e.rsc, RSC.BAD_REQUEST)
        # a proper pair is one character, on both paths
        pair = JSON.loads(b'{"s":"\\ud83d\\ude00","n":123456789012345678901}')
        self.assertEqual(pair["s"], "\U0001f600")

    def test_json_19_digit_negatives_stay_exact(self) -> None:
        self.assertEqual(JSON.loads(b"[-9223372036854775809]"), [-(2**63) - 1])

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.one_of(
                # digit runs of every length around 19, between the bytes next to the digits
                st.tuples(st.sampled_from(b"0123456789"), st.integers(0, 24)).map(
                    lambda run: bytes([run[0]]) * run[1]
                ),
                st.sampled_from([b"/", b":", b"-", b".", b" ", b"\xb9", b"\xd9"]),
                st.binary(max_size=8),
            ),
            max_size=12,
        )
    )
    def test_long_digit_runs_are_found_as_a_regular_expression_finds_them(
        self, parts: list[bytes]
    ) -> None:
        """A message is parsed by the stdlib (exact integers) exactly when it holds a run of
        19 ASCII digits, as ``\\d{19}`` on bytes would find it."""
        data = b"".join(parts)
        found = codec_module._NINETEEN_DIGITS in data.translate(codec_module._DIGITS_AS_ONES)
        self.assertEqual(found, re.search(rb"\d{19}", data) is not None)

    def test_long_digit_runs_at_the_boundaries(self) -> None:
        """18 digits are not a long run, 19 are; the bytes next to the digits ("/" and ":")
        break a run."""
        for data, long in (
            (b"1" * 18, False),
            (b"x" + b"0" * 19 + b"x", True),
            (b"9" * 9 + b":" + b"9" * 9, False),
            (b"0" * 9 + b"/" + b"0" * 9, False),
        ):
            found = codec_module._NINETEEN_DIGITS in data.translate(codec_module._DIGITS_AS_ONES)
            self.assertEqual(found, long, data)

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
        wrapped = {"pc": value}  # byte strings are content: allowed inside pc only
        self.assertEqual(CBOR.loads(CBOR.dumps(wrapped)), wrapped)
        try:
            CBOR.decode(CBOR.dumps(wrapped))
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


def _general(data: bytes) -> Any:
    """What the JSON codec makes of ``data`` without its plain-response path."""
    try:
        return primitive_from_object(JSON.loads(data))
    except PrimitiveError as e:
        return ("error", e.reason, e.rqi)


def _decoded(data: bytes) -> Any:
    try:
        return JSON.decode(data)
    except PrimitiveError as e:
        return ("error", e.reason, e.rqi)


_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1000, 2000, 2001, 4004, 6999, 999, 7000, 2**64, 2**70]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["1", "2", "2a", "3", "4", "5", "6"]),
    st.just({"m2m:dbg": "x"}),
)


class PlainResponseTests(SynchronousTestCase):
    """A JSON message that starts as a response is read at once as one when it is a valid
    rsc, rqi and rvi alone (a NOTIFY's answer): whatever it holds, it comes out as the
    general reading makes it, or refused with the same reason."""

    @settings(max_examples=400, deadline=None)
    @given(
        rsc=st.one_of(st.sampled_from([2000, 2001, 4004, 999, 7000, 2**64]), _VALUES),
        rqi=st.one_of(st.text(max_size=12), _VALUES),
        rvi=st.one_of(st.sampled_from(["1", "2", "2a", "3", "4", "5", "6"]), _VALUES),
        rest=st.lists(
            st.tuples(st.sampled_from(["rqi", "rvi", "pc", "to", "rsc"]), _VALUES), max_size=2
        ),
        plain=st.booleans(),
    )
    def test_the_same_as_the_general_reading(
        self, rsc: Any, rqi: Any, rvi: Any, rest: list[tuple[str, Any]], plain: bool
    ) -> None:
        # half of them three members: the answers the plain reading takes, or nearly
        members = [("rsc", rsc), ("rqi", rqi), ("rvi", rvi), *([] if plain else rest)]
        data = (
            "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
        ).encode()
        general, decoded = _general(data), _decoded(data)
        self.assertEqual(decoded, general)
        if isinstance(general, Response):
            self.assertIs(type(decoded.rsc), type(general.rsc))

    def test_an_answer(self) -> None:
        data = b'{"rsc":2000,"rqi":"acmews-1-7","rvi":"4"}'

        def not_read_twice(data: bytes) -> Any:
            raise AssertionError("read the general way")

        patched = self.patch(JSON, "loads", not_read_twice)
        response = JSON.decode(data)
        patched.restore()
        self.assertEqual(response, Response(RSC.OK, "acmews-1-7", "4"))
        response = JSON.decode(data)
        self.assertEqual(response, Response(RSC.OK, "acmews-1-7", "4"))
        self.assertIs(response.rsc, RSC.OK)
        # beyond 64 bits, orjson would read a float: the general reading refuses it as such
        big = b'{"rsc":20000000000000000000,"rqi":"q","rvi":"4"}'
        self.assertEqual(_decoded(big), _general(big))
        self.assertEqual(_decoded(big)[0], "error")
        # rsc out of range, an rqi that is not text, a release not supported: refused alike
        for bad in (
            b'{"rsc":999,"rqi":"q","rvi":"4"}',
            b'{"rsc":7000,"rqi":"q","rvi":"4"}',
            b'{"rsc":2000,"rqi":7,"rvi":"4"}',
            b'{"rsc":2000,"rqi":"q","rvi":"9"}',
            b'{"rsc":true,"rqi":"q","rvi":"4"}',
        ):
            self.assertEqual(_decoded(bad), _general(bad))
            self.assertIsInstance(_decoded(bad), tuple)
        # a fourth member: the general reading
        for more in (b',"pc":{"n":20000000000000000000}', b',"to":"Cae1"'):
            data = b'{"rsc":2000,"rqi":"q","rvi":"4"' + more + b"}"
            self.assertEqual(_decoded(data), _general(data))
            self.assertNotEqual(_decoded(data), Response(RSC.OK, "q", "4"))
