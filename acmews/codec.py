"""Serializations, one codec per WebSocket subprotocol, found by name in one registry.

``oneM2M.json`` uses orjson and text frames; ``oneM2M.cbor`` uses cbor2 (C extension) and
binary frames. ``decode`` returns a validated primitive or raises :class:`PrimitiveError`;
nothing else escapes it, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import cbor2
import orjson
from zope.interface import implementer

from acmews.errors import InternalServerError, PrimitiveError
from acmews.interfaces import ICodec
from acmews.primitive import Primitive, primitive_from_object

__all__ = ["CBOR", "CODECS", "JSON", "CborCodec", "JsonCodec", "get_codec", "register_codec"]

# orjson reads integers beyond 64 bits as floats; a run of 20+ digits sends the message
# through the stdlib parser, which keeps them exact (rare, so the fast path stays fast).
_LONG_DIGITS = re.compile(rb"\d{20}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """As orjson does: a number too large for a double is an error, not infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is infinity when parsed as double")
    return value


@implementer(ICodec)
class JsonCodec:
    """``oneM2M.json``: UTF-8 JSON in text frames."""

    name = "oneM2M.json"
    is_binary = False

    def loads(self, data: bytes) -> Any:
        try:
            if _LONG_DIGITS.search(data) is None:
                return orjson.loads(data)
            return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise PrimitiveError("invalid JSON: nested too deeply") from None
        except Exception as e:
            raise PrimitiveError(f"invalid JSON: {e}"[:300]) from None

    def dumps(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            pass  # integers beyond 64 bits: the stdlib writes them exactly
        try:
            return json.dumps(
                obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
        except (TypeError, ValueError) as e:
            raise InternalServerError(f"cannot serialize as JSON: {e}") from e

    def decode(self, data: bytes) -> Primitive:
        return primitive_from_object(self.loads(data))

    def encode(self, primitive: Primitive) -> bytes:
        return self.dumps(primitive.to_dict())


@implementer(ICodec)
class CborCodec:
    """``oneM2M.cbor``: CBOR in binary frames; floats are written as 64-bit, never 16-bit."""

    name = "oneM2M.cbor"
    is_binary = True

    def loads(self, data: bytes) -> Any:
        try:
            return cbor2.loads(data)
        except RecursionError:
            raise PrimitiveError("invalid CBOR: nested too deeply") from None
        except Exception as e:
            raise PrimitiveError(f"invalid CBOR: {e}"[:300]) from None

    def dumps(self, obj: Any) -> bytes:
        try:
            return cbor2.dumps(obj)
        except Exception as e:
            raise InternalServerError(f"cannot serialize as CBOR: {e}") from e

    def decode(self, data: bytes) -> Primitive:
        return primitive_from_object(self.loads(data))

    def encode(self, primitive: Primitive) -> bytes:
        return self.dumps(primitive.to_dict())


JSON = JsonCodec()
CBOR = CborCodec()

#: subprotocol name -> codec, in the order acmews prefers them when it is the client
CODECS: dict[str, ICodec] = {JSON.name: JSON, CBOR.name: CBOR}

#: short names accepted wherever a user picks a serialization
SHORT_NAMES = {"json": JSON.name, "cbor": CBOR.name}


def register_codec(codec: ICodec) -> None:
    """Add (or replace) the codec for ``codec.name``."""
    CODECS[codec.name] = codec


def get_codec(name: str) -> ICodec:
    """The codec for a subprotocol name (or ``json``/``cbor``); KeyError if none."""
    return CODECS[SHORT_NAMES.get(name, name)]
