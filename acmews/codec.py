"""Serializations, one codec per WebSocket subprotocol, found by name in one registry.

``oneM2M.json`` uses orjson and text frames; ``oneM2M.cbor`` uses cbor2 (C extension) and
binary frames. ``decode`` returns a validated primitive or raises :class:`PrimitiveError`;
nothing else escapes it, whatever the bytes.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import cbor2
import orjson
from zope.interface import implementer

from acmews.errors import InternalServerError, PrimitiveError
from acmews.interfaces import ICodec
from acmews.primitive import (
    OPTIONAL_REQUEST_PARAMETERS,
    Notification,
    Primitive,
    Request,
    Shared,
    optional_request_values,
    plain_response,
    primitive_from_object,
)

__all__ = [
    "CBOR",
    "CODECS",
    "JSON",
    "MAX_CONTAINERS",
    "MAX_NESTING",
    "PLAIN_RESPONSE_SIZE",
    "CborCodec",
    "JsonCodec",
    "check_data_model",
    "get_codec",
    "register_codec",
]

#: the deepest nesting of objects and arrays accepted in a message (TS-0004 sets none). Both
#: codecs, both JSON parser paths; orjson cannot write more than 254 levels, so anything
#: accepted can be answered.
MAX_NESTING = 64
#: the most objects and arrays one message may hold: content is bounded by what it costs in
#: memory (an empty map is one CBOR byte but about 64 bytes in Python), not only by its size
MAX_CONTAINERS = 100_000

# orjson reads integers beyond 64 bits as floats; a run of 19+ digits (below -2**63 needs only
# 19) sends the message through the stdlib parser, which keeps them exact (rare, so the fast
# path stays fast). The run is looked for in a copy with every ASCII digit made "1" and every
# other byte " ": a substring search for nineteen "1"s. (The regular expression \d{19} took
# 0.4-0.8 us for a 50 to 100-byte message, every NOTIFY's answer among them, and 58 us for
# 4.6 kB; this 0.2 and 4.)
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_NINETEEN_DIGITS = b"1" * 19
#: the longest JSON message :meth:`JsonCodec.decode` tries as a plain response first (longer
#: ones carry content: read once, the general way)
PLAIN_RESPONSE_SIZE = 200


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """As orjson does: a number too large for a double is an error, not infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is infinity when parsed as double")
    return value


_CONTAINERS = (dict, list)


def check_data_model(obj: Any, *, binary_content: bool, text_checked: bool) -> None:
    """Raise :class:`PrimitiveError` unless ``obj`` stays inside the JSON data model.

    Maps with text keys, arrays, text, integers, finite floats, booleans and null, at most
    :data:`MAX_NESTING` levels deep and :data:`MAX_CONTAINERS` maps and arrays; byte strings
    only inside ``pc`` when ``binary_content`` (CBOR). Unless ``text_checked``, text must
    also be valid Unicode (no lone surrogates). Iterative, so neither deep nor cyclic input
    (CBOR shared references) can exhaust the stack.
    """
    stack: list[tuple[Any, int, bool]] = [([obj], 0, False)]
    pop = stack.pop
    push = stack.append
    containers = 0
    while stack:
        value, depth, in_pc = pop()
        if depth > MAX_NESTING:
            raise PrimitiveError(f"nested deeper than {MAX_NESTING} levels")
        if type(value) is dict:
            items: Any = value.items()
        else:
            items = ((None, v) for v in value)
        for key, item in items:
            if key is not None:
                if type(key) is not str:
                    raise PrimitiveError(f"map keys must be text, not {type(key).__name__}")
                if not text_checked and not key.isascii():
                    _check_text(key)
            child_in_pc = in_pc or (depth == 1 and key == "pc")
            kind = type(item)
            if kind is dict or kind is list:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise PrimitiveError(f"more than {MAX_CONTAINERS} objects and arrays")
                push((item, depth + 1, child_in_pc))
            elif kind is str:
                if not text_checked and not item.isascii():
                    _check_text(item)
            elif kind is int or kind is bool or item is None:
                pass
            elif kind is float:
                if not math.isfinite(item):
                    raise PrimitiveError("numbers must be finite")
            elif kind is bytes and binary_content and child_in_pc:
                pass
            else:
                raise PrimitiveError(
                    f"a {kind.__name__} is outside the JSON data model"
                    + (" (byte strings only inside 'pc')" if kind is bytes else "")
                )


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PrimitiveError("text holds a lone surrogate (invalid Unicode)") from None


@implementer(ICodec)
class JsonCodec:
    """``oneM2M.json``: UTF-8 JSON in text frames."""

    name = "oneM2M.json"
    is_binary = False

    def loads(self, data: bytes) -> Any:
        try:
            if _NINETEEN_DIGITS not in data.translate(_DIGITS_AS_ONES):
                obj = orjson.loads(data)
                # orjson checks the text and the numbers itself; the nesting only needs a
                # walk when there are enough brackets to nest that deep
                if len(data) > 2 * MAX_NESTING and (
                    data.count(b"[") + data.count(b"{") > MAX_NESTING
                ):
                    check_data_model(obj, binary_content=False, text_checked=True)
                return obj
            obj = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        except PrimitiveError as e:
            raise PrimitiveError(f"invalid JSON: {e.reason}") from None
        except RecursionError:
            raise PrimitiveError("invalid JSON: nested too deeply") from None
        except Exception as e:
            raise PrimitiveError(f"invalid JSON: {e}"[:300]) from None
        try:
            # the stdlib parser lets lone surrogates (\ud800) through
            check_data_model(obj, binary_content=False, text_checked=False)
        except PrimitiveError as e:
            raise PrimitiveError(f"invalid JSON: {e.reason}") from None
        return obj

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
        if data[:7] == b'{"rsc":' and len(data) <= PLAIN_RESPONSE_SIZE:
            # a NOTIFY's answer, mostly: read by orjson at once. Of a valid rsc, rqi and rvi
            # alone only rsc is a number, the one value orjson could read wrongly (beyond 64
            # bits: a float), and it must come out an int; anything else is read again below
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict:
                response = plain_response(obj)
                if response is not None:
                    return response
        return primitive_from_object(self.loads(data))

    def encode(self, primitive: Primitive | Notification) -> bytes:
        if isinstance(primitive, Notification):
            return self._spliced(
                primitive.event,
                primitive.fr,
                primitive.rvi,
                primitive.rqet,
                primitive.to,
                primitive.rqi,
                primitive.sur,
            )
        if type(primitive) is Request:
            pc = primitive.pc
            if type(pc) is dict and len(pc) == 1:
                sgn = pc.get("m2m:sgn")
                if type(sgn) is dict:
                    nev = sgn.get("nev")
                    if type(nev) is Shared:
                        return self._notification(primitive, sgn, nev)
        return self.dumps(primitive.to_dict())

    def _notification(self, request: Request, sgn: dict[str, Any], nev: Shared) -> bytes:
        """A notification whose event is shared by a fan-out's targets: the event encoded
        once, its bytes spliced into each target's message."""
        data = self._event_json(nev)
        sur = sgn.get("sur")
        rqet = request.rqet
        if (
            len(sgn) == 2
            and type(sur) is str
            and type(rqet) is str
            and request.op == 5
            and type(request.fr) is str
            and not request.extra
            and optional_request_values(request).count(None) == _PLAIN_NOTIFICATION_NONES
        ):
            # the common case (nothing but the event and sur; no ec, no creator)
            return self._spliced(nev, request.fr, request.rvi, rqet, request.to, request.rqi, sur)
        if len(data) < SHARED_MIN:  # encoding it again costs less than splicing it in
            return self.dumps(request.to_dict())
        d = request.to_dict()
        d["pc"] = {"m2m:sgn": {**sgn, "nev": orjson.Fragment(data)}}
        try:
            return orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # integers beyond 64 bits elsewhere: the plain way
            return self.dumps(request.to_dict())

    def _event_json(self, nev: Shared) -> bytes:
        """The JSON of ``nev``, made once."""
        data = nev.json
        if data is None:
            data = nev.json = self.dumps(dict(nev))
        return data

    def _spliced(
        self, nev: Shared, fr: str, rvi: str, rqet: str, to: str, rqi: str, sur: str
    ) -> bytes:
        """A plain notification of ``nev`` (nothing but the event and ``sur``), put together
        as ``to_dict``'s encoding would have it, key for key, from the parts its targets share
        (made again when ``fr``, ``rvi`` or ``rqet`` differ)."""
        key = (fr, rvi, rqet)
        parts = nev.parts
        if parts is None or parts[0] != key:
            parts = nev.parts = (key, *_notification_parts(fr, rvi, rqet, self._event_json(nev)))
        dumps = orjson.dumps
        return b"".join(
            (parts[1], dumps(to), parts[2], dumps(rqi), parts[3], dumps(sur), parts[4])
        )


@implementer(ICodec)
class CborCodec:
    """``oneM2M.cbor``: CBOR in binary frames; floats are written as 64-bit, never 16-bit."""

    name = "oneM2M.cbor"
    is_binary = True

    def loads(self, data: bytes) -> Any:
        """Exactly one CBOR item in the JSON data model (byte strings allowed in ``pc``)."""
        try:
            fp = io.BytesIO(data)
            obj = cbor2.CBORDecoder(fp).decode()
            if fp.tell() != len(data):
                raise PrimitiveError(
                    f"{len(data) - fp.tell()} bytes after the CBOR item (one item per message)"
                )
            check_data_model(obj, binary_content=True, text_checked=True)
        except PrimitiveError as e:
            raise PrimitiveError(f"invalid CBOR: {e.reason}") from None
        except RecursionError:
            raise PrimitiveError("invalid CBOR: nested too deeply") from None
        except Exception as e:
            raise PrimitiveError(f"invalid CBOR: {e}"[:300]) from None
        return obj

    def dumps(self, obj: Any) -> bytes:
        try:
            return cbor2.dumps(obj)
        except Exception as e:
            raise InternalServerError(f"cannot serialize as CBOR: {e}") from e

    def decode(self, data: bytes) -> Primitive:
        return primitive_from_object(self.loads(data))

    def encode(self, primitive: Primitive | Notification) -> bytes:
        if isinstance(primitive, Notification):
            primitive = primitive.request()
        return self.dumps(primitive.to_dict())


def _notification_parts(fr: str, rvi: str, rqet: str, nev: bytes) -> tuple[bytes, ...]:
    """The JSON of a plain notification around its ``to``, ``rqi`` and ``sur``."""
    dumps = orjson.dumps
    return (
        b'{"op":5,"to":',
        b',"fr":' + dumps(fr) + b',"rqi":',
        b',"rvi":' + dumps(rvi) + b',"pc":{"m2m:sgn":{"nev":' + nev + b',"sur":',
        b'}},"rqet":' + dumps(rqet) + b"}",
    )


#: a plain notification's optional parameters: all None but pc and rqet
_PLAIN_NOTIFICATION_NONES = len(OPTIONAL_REQUEST_PARAMETERS) - 2

#: the smallest JSON of a shared event (:class:`~acmews.primitive.Shared`) that is spliced
#: into each message rather than encoded again: a contentInstance of a few bytes costs more
#: to splice (20 KB: 37.6 -> 31.4 us per notification of a fan-out to 1,000, server side)
SHARED_MIN = 1024

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
