"""oneM2M request and response primitives (TS-0004), validated on the way in.

Pure data: nothing here knows of Twisted or of a wire format. A primitive is parsed from the
mapping a codec decoded (:meth:`Request.from_mapping`, :meth:`Response.from_mapping`) and turned
back into one with ``to_dict()``. Parameters that are not modelled as attributes are kept in
``extra`` so that a primitive can be forwarded unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import TypeIs

from acmews.codes import (
    DEFAULT_RELEASE,
    RSC,
    SUPPORTED_RELEASES,
    Operation,
    ResourceType,
    ResponseType,
)
from acmews.errors import OneM2MError, PrimitiveError
from acmews.timestamps import parse_duration, parse_timestamp

__all__ = [
    "Notification",
    "Primitive",
    "Request",
    "Response",
    "Shared",
    "as_request",
    "error_response",
    "plain_response",
    "primitive_from_object",
]


class Shared(dict):  # type: ignore[type-arg]
    """A part of many primitives' content that is the same in each: a fan-out's event (the
    ``nev`` of every target's notification, whose ``sur`` and ``rqi`` differ). It reads as
    the dict it is; the JSON codec encodes it once and splices the bytes into each message
    (:meth:`acmews.codec.JsonCodec.encode`)."""

    __slots__ = ("json", "parts")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: its JSON, once a codec has made it
        self.json: bytes | None = None
        #: what the JSON codec keeps of the notifications that carry it
        self.parts: tuple[Any, ...] | None = None


#: Request parameters modelled as attributes, in wire order (TS-0004's short names).
REQUEST_PARAMETERS = (
    "op",
    "to",
    "fr",
    "rqi",
    "rvi",
    "ty",
    "pc",
    "rcn",
    "rt",
    "rqet",
    "rset",
    "oet",
    "ot",
    "fc",
    "drt",
    "ec",
    "da",
    "gid",
    "tids",
    "ltids",
    "tkns",
    "vsi",
    "rids",
)
RESPONSE_PARAMETERS = (
    "rsc",
    "rqi",
    "rvi",
    "pc",
    "to",
    "fr",
    "ot",
    "rset",
    "ec",
    "vsi",
    "cnst",
    "cnot",
)
_REQUEST_KEYS = frozenset(REQUEST_PARAMETERS)
_RESPONSE_KEYS = frozenset(RESPONSE_PARAMETERS)
_OPERATIONS = {int(o): o for o in Operation}
_RSCS = {int(r): r for r in RSC}


def is_int_not_bool(value: object) -> TypeIs[int]:
    """True for an int (an IntEnum too) that is not a bool: JSON ``true`` is no ``1`` here."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _readable_rqi(m: Mapping[Any, Any]) -> str | None:
    rqi = m.get("rqi")
    return rqi if isinstance(rqi, str) else None


def _fail(reason: str, rqi: str | None, rsc: RSC = RSC.BAD_REQUEST) -> PrimitiveError:
    return PrimitiveError(reason, rqi=rqi, rsc=rsc)


def _opt_int(
    m: Mapping[Any, Any], key: str, rqi: str | None, low: int = 0, high: int = 0xFFFF
) -> int | None:
    """An integer parameter within ``low``..``high`` (a CBOR bignum ``ty`` is no resource
    type: every integer parameter of TS-0004 is small)."""
    value = m.get(key)
    if value is None:
        return None
    if is_int_not_bool(value) and low <= value <= high:
        return value
    raise _fail(f"'{key}' must be an integer from {low} to {high}", rqi)


def _opt_str(m: Mapping[Any, Any], key: str, rqi: str | None) -> str | None:
    value = m.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _fail(f"'{key}' must be a string", rqi)


def _opt_map(m: Mapping[Any, Any], key: str, rqi: str | None) -> dict[str, Any] | None:
    value = m.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _fail(f"'{key}' must be an object", rqi)


#: the longest relative time accepted, in ms (about 300 years)
MAX_DURATION_MS = 10**13


def _opt_time(m: Mapping[Any, Any], key: str, rqi: str | None) -> str | int | None:
    """TS-0004's m2m:absRelTimestamp: a timestamp (``YYYYMMDDThhmmss[,ffffff]``) or a relative
    time, in ms (an integer, or a string of digits) or an ISO 8601 duration (``PT2S``), 0 to
    :data:`MAX_DURATION_MS`."""
    value = m.get(key)
    if value is None:
        return None
    if is_int_not_bool(value):
        if 0 <= value <= MAX_DURATION_MS:
            return value
    elif isinstance(value, str):
        if value.isascii() and value.isdigit():
            if int(value) <= MAX_DURATION_MS:
                return value
        else:
            try:
                if value[:1] == "P":
                    if parse_duration(value) * 1000 <= MAX_DURATION_MS:
                        return value
                else:
                    parse_timestamp(value)
                    return value
            except ValueError:
                pass
    raise _fail(
        f"'{key}' must be a timestamp YYYYMMDDThhmmss[,ffffff] or a relative time: ms (0 to "
        f"{MAX_DURATION_MS}) or an ISO 8601 duration like PT2S",
        rqi,
    )


def _check_rvi(m: Mapping[Any, Any], rqi: str | None, required: bool) -> str | None:
    rvi = m.get("rvi")
    if rvi is None:
        if required:
            raise _fail(
                "'rvi' (release version indicator) is missing",
                rqi,
                RSC.RELEASE_VERSION_NOT_SUPPORTED,
            )
        return None
    if not isinstance(rvi, str):
        raise _fail("'rvi' must be a string", rqi)
    if rvi not in SUPPORTED_RELEASES:
        raise _fail(
            f"release version {rvi!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_RELEASES))})",
            rqi,
            RSC.RELEASE_VERSION_NOT_SUPPORTED,
        )
    return rvi


@dataclass(slots=True, eq=True)
class Request:
    """A request primitive. ``fr`` may be ``None`` only for an AE CREATE."""

    op: Operation
    to: str
    rqi: str
    rvi: str = DEFAULT_RELEASE
    fr: str | None = None
    ty: int | None = None
    pc: Any = None
    rcn: int | None = None
    rt: dict[str, Any] | None = None
    rqet: str | int | None = None
    rset: str | int | None = None
    oet: str | int | None = None
    ot: str | None = None
    fc: dict[str, Any] | None = None
    drt: int | None = None
    ec: Any = None
    da: Any = None
    gid: Any = None
    tids: Any = None
    ltids: Any = None
    tkns: Any = None
    vsi: Any = None
    rids: Any = None
    #: parameters not modelled above, kept for forwarding
    extra: dict[Any, Any] = field(default_factory=dict)

    @property
    def is_ae_create(self) -> bool:
        return self.op == Operation.CREATE and self.ty == ResourceType.AE

    @property
    def wants_no_response(self) -> bool:
        """``rt.rtv`` is 5 (noResponse): the receiver sends nothing back."""
        rt = self.rt
        return rt is not None and rt.get("rtv") == ResponseType.NO_RESPONSE

    def to_dict(self) -> dict[Any, Any]:
        d: dict[Any, Any] = {"op": int(self.op), "to": self.to}
        if self.fr is not None:
            d["fr"] = self.fr
        d["rqi"] = self.rqi
        d["rvi"] = self.rvi
        # the optional parameters read in one call (a notification has two of eighteen)
        for name, value in zip(
            OPTIONAL_REQUEST_PARAMETERS, optional_request_values(self), strict=True
        ):
            if value is not None:
                d[name] = value
        if self.extra:
            d.update(self.extra)
        return d

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> Request:
        """Validate a decoded mapping as a request; raise :class:`PrimitiveError` if invalid."""
        rqi = _readable_rqi(m)
        op = m.get("op")
        if not is_int_not_bool(op) or op not in _OPERATIONS:
            raise _fail(f"'op' must be an integer 1-5, not {op!r}"[:200], rqi)
        operation = _OPERATIONS[op]
        if "rqi" not in m:
            raise _fail("'rqi' (request identifier) is missing", None)
        if rqi is None:
            raise _fail("'rqi' must be a string", None)
        if not rqi:
            raise _fail("'rqi' must not be empty", None)
        to = m.get("to")
        if not isinstance(to, str) or not to:
            raise _fail("'to' must be a non-empty string" if "to" in m else "'to' is missing", rqi)
        rvi = _check_rvi(m, rqi, required=True)
        assert rvi is not None
        ty = _opt_int(m, "ty", rqi)
        if operation == Operation.CREATE:
            if ty is None:
                raise _fail("'ty' (resource type) is mandatory on CREATE", rqi)
        elif ty is not None:
            raise _fail("'ty' is only allowed on CREATE", rqi)
        fr = _opt_str(m, "fr", rqi)
        if not fr and not (operation == Operation.CREATE and ty == ResourceType.AE):
            raise _fail("'fr' (originator) is missing", rqi)
        pc = m.get("pc")
        if operation in (Operation.CREATE, Operation.UPDATE):
            if not isinstance(pc, dict) or not pc:
                raise _fail(f"'pc' (content) must be a non-empty object on {operation.name}", rqi)
        elif operation == Operation.NOTIFY and pc is None:
            raise _fail("'pc' (content) is mandatory on NOTIFY", rqi)
        rt = _opt_map(m, "rt", rqi)
        if rt is not None:
            rtv = rt.get("rtv")
            if rtv is not None and (not is_int_not_bool(rtv) or not 1 <= rtv <= 5):
                raise _fail("'rt.rtv' must be an integer 1-5", rqi)
        request = cls(
            operation,
            to,
            rqi,
            rvi,
            fr,
            ty,
            pc,
            _opt_int(m, "rcn", rqi, 0, 99),
            rt,
            _opt_time(m, "rqet", rqi),
            _opt_time(m, "rset", rqi),
            _opt_time(m, "oet", rqi),
            _opt_str(m, "ot", rqi),
            _opt_map(m, "fc", rqi),
            _opt_int(m, "drt", rqi, 1, 2),
            m.get("ec"),
            m.get("da"),
            m.get("gid"),
            m.get("tids"),
            m.get("ltids"),
            m.get("tkns"),
            m.get("vsi"),
            m.get("rids"),
        )
        if len(m) > 5:
            extra = {k: v for k, v in m.items() if k not in _REQUEST_KEYS}
            if extra:
                request.extra = extra
        return request


@dataclass(slots=True, eq=True)
class Response:
    """A response primitive."""

    rsc: int
    rqi: str
    rvi: str | None = DEFAULT_RELEASE
    pc: Any = None
    to: str | None = None
    fr: str | None = None
    ot: str | None = None
    rset: str | int | None = None
    ec: Any = None
    vsi: Any = None
    cnst: Any = None
    cnot: Any = None
    extra: dict[Any, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The rsc is in the 1xxx or 2xxx class."""
        return 1000 <= self.rsc < 3000

    @property
    def debug(self) -> str | None:
        """The ``m2m:dbg`` reason of an error response, if any."""
        pc = self.pc
        if isinstance(pc, dict):
            dbg = pc.get("m2m:dbg")
            return dbg if isinstance(dbg, str) else None
        return None

    def to_dict(self) -> dict[Any, Any]:
        d: dict[Any, Any] = {"rsc": int(self.rsc), "rqi": self.rqi}
        for name in RESPONSE_PARAMETERS[2:]:
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.extra:
            d.update(self.extra)
        return d

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> Response:
        """Validate a decoded mapping as a response; raise :class:`PrimitiveError` if invalid."""
        # (the checks of _readable_rqi, is_int_not_bool and _check_rvi written out for the
        # common case: every NOTIFY of a fan-out is answered, and read, this way)
        rqi = m.get("rqi")
        if not isinstance(rqi, str):
            rqi = None
        rsc: int = m.get("rsc")  # type: ignore[assignment]
        if not (type(rsc) is int or is_int_not_bool(rsc)) or not 1000 <= rsc <= 6999:
            raise _fail("'rsc' must be an integer from 1000 to 6999", rqi)
        if rqi is None:
            if "rqi" not in m:
                raise _fail("'rqi' (request identifier) is missing", None)
            raise _fail("'rqi' must be a string", None)
        if len(m) <= 4 and _PLAIN_RESPONSE_KEYS.issuperset(m):  # most answers (a NOTIFY's)
            rvi = m.get("rvi")
            if rvi is not None and (type(rvi) is not str or rvi not in SUPPORTED_RELEASES):
                rvi = _check_rvi(m, rqi, required=False)  # says why it is not one
            return cls(_RSCS.get(rsc) or rsc, rqi, rvi, m.get("pc"))
        response = cls(
            _RSCS.get(rsc) or rsc,
            rqi,
            _check_rvi(m, rqi, required=False),
            m.get("pc"),
            _opt_str(m, "to", rqi),
            _opt_str(m, "fr", rqi),
            _opt_str(m, "ot", rqi),
            _opt_time(m, "rset", rqi),
            m.get("ec"),
            m.get("vsi"),
            m.get("cnst"),
            m.get("cnot"),
        )
        if len(m) > 2:  # rsc and rqi are the only mandatory keys
            extra = {k: v for k, v in m.items() if k not in _RESPONSE_KEYS}
            if extra:
                response.extra = extra
        return response


class Notification:
    """A plain notification of a fan-out's event to one target, kept as the parts that make
    it: the event (a :class:`Shared` ``nev``, the same for every target), the subscription
    reference ``sur``, ``to`` and ``rqi``, and ``fr``, ``rvi`` and ``rqet``; nothing else (no
    ``ec``, no creator). A session (:meth:`acmews.session.Session.notify_then`) encodes it
    from these parts; every other way it goes as the :class:`Request` :meth:`request` makes
    (:func:`as_request`). A fan-out of a thousand thus keeps a small object per target while
    it waits for the answers, not a request of 26 parameters and the two dicts of its
    ``pc``."""

    __slots__ = ("event", "fr", "rqet", "rqi", "rvi", "sur", "to")

    #: what a request's ``op`` says (read as a request's is)
    op = Operation.NOTIFY

    def __init__(
        self, event: Shared, sur: str, to: str, rqi: str, fr: str, rvi: str, rqet: str
    ) -> None:
        self.event = event
        self.sur = sur
        self.to = to
        self.rqi = rqi
        self.fr = fr
        self.rvi = rvi
        self.rqet = rqet

    def request(self) -> Request:
        """The same notification as a :class:`Request`."""
        return Request(
            Operation.NOTIFY,
            self.to,
            self.rqi,
            self.rvi,
            self.fr,
            None,  # ty
            {"m2m:sgn": {"nev": self.event, "sur": self.sur}},
            None,  # rcn
            None,  # rt
            self.rqet,
        )

    def __repr__(self) -> str:
        return f"Notification(to={self.to!r}, rqi={self.rqi!r}, sur={self.sur!r})"


def as_request(request: Request | Notification) -> Request:
    """``request`` as a :class:`Request` (a :class:`Notification` made into one)."""
    return request.request() if type(request) is Notification else request  # type: ignore[return-value]


#: the parameters of a response that needs no more than its constructor's first four
_PLAIN_RESPONSE_KEYS = frozenset(("rsc", "rqi", "rvi", "pc"))

Primitive = Request | Response

_REQUEST_FIELDS = operator.attrgetter(*Request.__slots__)
#: the request parameters after ``rvi``, and a function that reads them off a request
OPTIONAL_REQUEST_PARAMETERS = REQUEST_PARAMETERS[5:]
optional_request_values = operator.attrgetter(*OPTIONAL_REQUEST_PARAMETERS)


def copy_request(request: Request, **changes: Any) -> Request:
    """A copy of ``request`` with ``changes`` (``dataclasses.replace`` costs 3.5 us, this 1:
    it is on the path of every forwarded request); ``extra`` and ``pc`` are shared."""
    copy = Request(*_REQUEST_FIELDS(request))
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


def plain_response(m: dict[Any, Any]) -> Response | None:
    """``m`` as a response if it is a valid ``rsc``, ``rqi`` and ``rvi`` and nothing else
    (every NOTIFY's answer, mostly), else None: what :meth:`Response.from_mapping` makes of
    it, with none of its checks that such a response does not need."""
    if len(m) == 3:
        rsc = m.get("rsc")
        rqi = m.get("rqi")
        rvi = m.get("rvi")
        if (
            type(rsc) is int
            and 1000 <= rsc <= 6999
            and type(rqi) is str
            and type(rvi) is str
            and rvi in SUPPORTED_RELEASES
        ):
            return Response(_RSCS.get(rsc) or rsc, rqi, rvi)
    return None


def primitive_from_object(obj: object) -> Primitive:
    """Classify a decoded value: ``rsc`` makes a response, ``op`` a request, else 4000."""
    if not isinstance(obj, dict):
        raise _fail(f"a primitive must be an object, not {type(obj).__name__}", None)
    is_response = "rsc" in obj
    try:
        if is_response:
            return Response.from_mapping(obj)
        if "op" in obj:
            return Request.from_mapping(obj)
    except PrimitiveError as e:
        e.is_response = is_response
        raise
    except Exception as e:  # unhashable oddities from CBOR and the like
        error = _fail(f"invalid primitive: {type(e).__name__}", _readable_rqi(obj))
        error.is_response = is_response
        raise error from e
    raise _fail("neither 'op' (request) nor 'rsc' (response) is present", _readable_rqi(obj))


def error_response(
    rqi: str | None,
    error: OneM2MError | RSC,
    reason: str | None = None,
    *,
    rvi: str | None = None,
    fr: str | None = None,
    to: str | None = None,
) -> Response:
    """The response that answers a request with an error: rsc plus ``m2m:dbg`` reason."""
    if isinstance(error, OneM2MError):
        rsc = error.rsc
        reason = reason or error.reason
    else:
        rsc = error
    if rvi not in SUPPORTED_RELEASES:
        rvi = DEFAULT_RELEASE
    return Response(
        rsc,
        rqi if rqi is not None else "",
        rvi,
        {"m2m:dbg": reason or RSC(rsc).name.lower().replace("_", " ")},
        to=to,
        fr=fr,
    )
