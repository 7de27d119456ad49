"""Hostile values in every field, in both codecs, through the binding to the embedded CSE:
the answer is a oneM2M error (4000/4001) or a success, never 5000, and the connection stays."""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from acmews.codec import CBOR, JSON
from acmews.cse import CSE, CSEConfig
from acmews.cse.timing import MAX_EXECUTION_DELAY
from acmews.session import Session
from acmews.testing import START, FakeSender

FIELDS = [
    "op", "to", "fr", "rqi", "rvi", "ty", "pc", "rcn", "rt", "rqet", "rset", "oet", "ot",
    "fc", "drt", "ec", "da", "gid", "tids", "ltids", "tkns", "vsi", "rids",
]  # fmt: skip

DEEP: Any = "x"
for _ in range(300):
    DEEP = {"a": DEEP}

#: the values the hostile run used, and their kin
HOSTILE: list[Any] = [
    None,
    True,
    "",
    "\ud800",
    "a\udfffb",
    "-5",
    "garbage",
    "²",
    10**400,
    -(10**30),
    2**64,
    -1,
    0,
    3,
    1.5,
    1e308,
    "x" * 5000,
    "20301302T030405",
    [],
    {},
    DEEP,
]
hostile_scalars = (
    st.sampled_from(HOSTILE)
    | st.integers()
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
cbor_only = st.sampled_from(
    [
        b"bytes",
        {1, 2},
        cbor2.undefined,
        cbor2.CBORTag(999, "x"),
        cbor2.CBORSimpleValue(99),
        {1: "int key"},
        float("nan"),
        float("inf"),
    ]
)

BASES: list[dict[str, Any]] = [
    {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": "r1", "rvi": "4"},
    {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": "r1", "rvi": "4", "rcn": 4},
    {
        "op": 1,
        "to": "cse-in",
        "fr": "CAdmin",
        "rqi": "r1",
        "rvi": "4",
        "ty": 3,
        "pc": {"m2m:cnt": {"rn": "box", "lbl": ["a"]}},
    },
    {
        "op": 1,
        "to": "cse-in",
        "fr": "Cnew",
        "rqi": "r1",
        "rvi": "4",
        "ty": 2,
        "pc": {"m2m:ae": {"api": "Nx", "rr": True}},
    },
    {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": "r1", "rvi": "4", "fc": {"fu": 1}},
]


def _json_bytes(message: dict[str, Any], long_digits: bool) -> bytes | None:
    try:
        text = json.dumps(message, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    if long_digits:  # the stdlib parser's path: it lets lone surrogates through
        text = text[:-1] + ', "zz": 123456789012345678901234}'
    return text.encode("utf-8", "surrogatepass")


def _cbor_bytes(message: dict[str, Any]) -> bytes | None:
    try:
        return cbor2.dumps(message)
    except Exception:
        return None


class HostileFieldTests(SynchronousTestCase):
    def exchange(self, data: bytes, json_codec: bool) -> list[dict[str, Any]]:
        """One message through a fresh session onto a fresh CSE; the decoded answers."""
        clock = Clock()
        clock.advance(START)
        cse = CSE(CSEConfig(), FakeSender(), clock)
        sent: list[bytes] = []
        closed: list[tuple[int, str]] = []
        session = Session(
            lambda payload, binary: sent.append(payload),
            JSON if json_codec else CBOR,
            clock,
            cse,
            originator=None,
            enforce_originator=False,
            close=lambda code, reason: closed.append((code, reason)),
        )
        session.message_received(data)
        clock.advance(0)
        clock.advance(MAX_EXECUTION_DELAY)  # an oet delays the operation (TS-0004 7.3.3.6)
        self.assertEqual(closed, [])
        self.assertTrue(session.connected)
        session.connection_lost("done")
        return [(JSON if json_codec else CBOR).loads(m) for m in sent]

    def check(self, answers: list[dict[str, Any]], message: Any) -> None:
        self.assertEqual(len(answers), 1, message)
        answer = answers[0]
        self.assertNotEqual(answer["rsc"], 5000, (message, answer))
        if answer["rsc"] >= 4000:
            self.assertTrue(answer["pc"]["m2m:dbg"], answer)

    def test_every_field_with_every_hostile_value(self) -> None:
        """The table, exhaustively: each field of each base, each value, both codecs."""
        for base in BASES:
            for field in [*FIELDS, "zz"]:
                for value in [*HOSTILE, b"bytes", {1, 2}, cbor2.undefined, {1: "k"}]:
                    for where in ("top", "pc"):
                        message = _mutate(base, field, value, where)
                        for long_digits in (False, True):
                            data = _json_bytes(message, long_digits)
                            if data is not None:
                                self.check(self.exchange(data, json_codec=True), message)
                        data = _cbor_bytes(message)
                        if data is not None:
                            self.check(self.exchange(data, json_codec=False), message)

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        base=st.sampled_from(BASES),
        field=st.sampled_from([*FIELDS, "zz"]),
        value=hostile_values,
        where=st.sampled_from(["top", "pc"]),
        long_digits=st.booleans(),
    )
    def test_json(
        self, base: dict[str, Any], field: str, value: Any, where: str, long_digits: bool
    ) -> None:
        message = _mutate(base, field, value, where)
        data = _json_bytes(message, long_digits)
        if data is None:
            return
        self.check(self.exchange(data, json_codec=True), message)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        base=st.sampled_from(BASES),
        field=st.sampled_from([*FIELDS, "zz"]),
        value=hostile_values | cbor_only,
        where=st.sampled_from(["top", "pc"]),
        trailing=st.sampled_from([b"", b"\x00", b"\xa0"]),
    )
    def test_cbor(
        self, base: dict[str, Any], field: str, value: Any, where: str, trailing: bytes
    ) -> None:
        message = _mutate(base, field, value, where)
        data = _cbor_bytes(message)
        if data is None:
            return
        self.check(self.exchange(data + trailing, json_codec=False), message)


def _mutate(base: dict[str, Any], field: str, value: Any, where: str) -> dict[str, Any]:
    message = json.loads(json.dumps(base))
    if where == "pc" and isinstance(message.get("pc"), dict):
        (key,) = message["pc"]
        message["pc"][key][field] = value
    else:
        message[field] = value
    return message
