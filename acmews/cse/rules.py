"""The optional parts of an access control rule (TS-0004 6.3.5.x ``m2m:accessControlRule``):
their validation and what they ask of a request.

A rule (``acr``) grants its ``acop`` to its ``acor`` originators; it may narrow that with

- ``acco`` (accessControlContexts): a list of contexts, one of which the request must be in.
  A context holds up to three parts and the request must meet each one it holds:
  ``actw`` (accessControlWindow: schedule entries, one of which matches the time),
  ``acip`` (accessControlIpAddresses: ``ipv4``/``ipv6`` addresses or prefixes, one of which
  holds the address the request came from, the peer of its connection) and ``aclr``
  (accessControlLocationRegion: this CSE does not know where an originator is, so a context
  holding one is never met: a rule is never widened by what cannot be checked).
- ``acod`` (accessControlObjectDetails): a list of ``{ty, chty, spty}``, one of which must
  describe the target: its resource type ``ty`` and, for a CREATE, the type being created
  among ``chty``. This CSE has no specializations: an entry with ``spty`` matches nothing.
- ``aca`` (accessControlAttributes): the attributes the rule covers. It grants an operation
  only if every attribute that operation touches is among them (the body's attributes of a
  CREATE or UPDATE, every attribute of the resource otherwise): all or nothing, no partial
  results.
- ``acaf`` (accessControlAuthenticationFlag): true, the request must come over a connection
  that authenticated (a credential or a certificate).

A schedule entry (TS-0004 ``m2m:scheduleEntry``) has seven fields, ``second minute hour
day-of-month month day-of-week year``; the five-field crontab form ``minute hour day-of-month
month day-of-week`` (what some implementations send) is read too. A field is ``*``, a number,
a range ``a-b``, either with a step ``/n``, or a comma-separated list of those; day of week 0
(or 7) is Sunday. Every field must match (UTC).
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Mapping
from typing import Any

from acmews.errors import BadRequest
from acmews.primitive import is_int_not_bool

__all__ = [
    "RULE_EXTRAS",
    "in_networks",
    "parse_peer_address",
    "parse_schedule",
    "schedule_matches",
    "validate_rule_extras",
]

#: the optional keys of an access control rule
RULE_EXTRAS = frozenset({"acco", "acod", "aca", "acaf"})
#: entries a list of a rule may hold (schedule entries, addresses, attributes, ...)
MAX_ENTRIES = 64

#: (low, high) of the seven fields of a schedule entry
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7), (1970, 9999))
_NAMES = ("second", "minute", "hour", "day of month", "month", "day of week", "year")
#: one field: None (any value), else (start, end, step) ranges, one of which holds the value
Field = tuple[tuple[int, int, int], ...] | None
Schedule = tuple[Field, Field, Field, Field, Field, Field, Field]


def _field(text: str, index: int) -> Field:
    low, high = _BOUNDS[index]
    if text == "*":
        return None
    ranges: list[tuple[int, int, int]] = []
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"bad step in {part!r}")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        else:
            first, dash, last = span.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"{part!r} is not a number, range or step")
            start = int(first)
            end = int(last) if dash else (high if slash else start)
        if not low <= start <= end <= high:
            raise ValueError(f"{part!r} is outside {low}-{high} for the {_NAMES[index]}")
        ranges.append((start, end, step))
    return tuple(ranges)


@functools.lru_cache(maxsize=256)
def parse_schedule(entry: str) -> Schedule:
    """A schedule entry, parsed; ValueError if it is not one (see the module's docstring)."""
    fields = entry.split()
    if len(fields) == 5:
        fields = ["*", *fields, "*"]  # crontab: any second, any year
    elif len(fields) != 7:
        raise ValueError("a schedule entry has 7 fields (or the 5 of crontab)")
    s, mi, h, dom, mo, dow, y = (_field(f, i) for i, f in enumerate(fields))
    return s, mi, h, dom, mo, dow, y


def _holds(field: Field, value: int) -> bool:
    if field is None:
        return True
    return any(start <= value <= end and (value - start) % step == 0 for start, end, step in field)


def schedule_matches(schedule: Schedule, now: float) -> bool:
    """Does ``schedule`` match the (UTC) time ``now``, in seconds since the epoch?"""
    t = time.gmtime(now)
    weekday = (t.tm_wday + 1) % 7  # tm_wday counts from Monday; cron from Sunday
    second, minute, hour, day, month, dow, year = schedule
    return (
        _holds(second, t.tm_sec)
        and _holds(minute, t.tm_min)
        and _holds(hour, t.tm_hour)
        and _holds(day, t.tm_mday)
        and _holds(month, t.tm_mon)
        and (_holds(dow, weekday) or (weekday == 0 and _holds(dow, 7)))
        and _holds(year, t.tm_year)
    )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=1024)
def parse_peer_address(peer: str) -> Address | None:
    """The IP address of a connection's peer (``tcp4:1.2.3.4:port``, ``tcp6:::1:port``), or
    None when it has none (a UNIX socket, a test double)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("tcp4", "tcp6"):
        return None
    host = rest.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
    return address


def in_networks(address: Address, acip: Mapping[str, Any]) -> bool:
    """Is ``address`` in one of the ``ipv4``/``ipv6`` entries of ``acip``?"""
    for text in acip.get("ipv4" if address.version == 4 else "ipv6", ()):
        if address in _network(text):
            return True
    return False


# --- validation (at CREATE and UPDATE of an ACP: 4000 with the reason) ------------------------


def _strings(name: str, value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_ENTRIES
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise BadRequest(
            f"'{name}' must be a list of 1 to {MAX_ENTRIES} non-empty strings: {value!r}"
        )
    return value


def _addresses(name: str, value: Any, version: int) -> None:
    for text in _strings(name, value):
        try:
            network = _network(text)
        except ValueError:
            raise BadRequest(f"'{name}' holds {text!r}: not an IP address or prefix") from None
        if network.version != version:
            raise BadRequest(f"'{name}' holds {text!r}: not an IPv{version} address or prefix")


def _context(name: str, context: Any) -> None:
    if not isinstance(context, dict) or not context or set(context) - {"actw", "acip", "aclr"}:
        raise BadRequest(f"each '{name}' entry must be an object of actw, acip and/or aclr")
    actw = context.get("actw")
    if actw is not None:
        for entry in _strings(f"{name}.actw", actw):
            try:
                parse_schedule(entry)
            except ValueError as e:
                raise BadRequest(f"'{name}.actw' holds {entry!r}: {e}") from None
    acip = context.get("acip")
    if acip is not None:
        if not isinstance(acip, dict) or not acip or set(acip) - {"ipv4", "ipv6"}:
            raise BadRequest(f"'{name}.acip' must be an object of ipv4 and/or ipv6 lists")
        if "ipv4" in acip:
            _addresses(f"{name}.acip.ipv4", acip["ipv4"], 4)
        if "ipv6" in acip:
            _addresses(f"{name}.acip.ipv6", acip["ipv6"], 6)
    aclr = context.get("aclr")
    if aclr is not None and not isinstance(aclr, dict | list):
        raise BadRequest(f"'{name}.aclr' must be a location region (an object)")


def _object_details(name: str, details: Any) -> None:
    if not isinstance(details, dict) or not details or set(details) - {"ty", "chty", "spty"}:
        raise BadRequest(f"each '{name}' entry must be an object of ty, chty and/or spty")
    ty = details.get("ty")
    if ty is not None and (not is_int_not_bool(ty) or ty < 1):
        raise BadRequest(f"'{name}.ty' must be a resource type (a positive integer)")
    chty = details.get("chty")
    if chty is not None and (
        not isinstance(chty, list)
        or not chty
        or len(chty) > MAX_ENTRIES
        or not all(is_int_not_bool(t) and t >= 1 for t in chty)
    ):
        raise BadRequest(f"'{name}.chty' must be a non-empty list of resource types")
    spty = details.get("spty")
    if spty is not None and not isinstance(spty, str | list):
        raise BadRequest(f"'{name}.spty' must be a specialization ID")


def validate_rule_extras(name: str, rule: dict[str, Any]) -> None:
    """Check the optional parts of one rule of ``name`` (``pv.acr``, ``pvs.acr``)."""
    for key, what, check in (
        ("acco", "contexts", _context),
        ("acod", "object details", _object_details),
    ):
        entries = rule.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
            raise BadRequest(f"'{name}.{key}' must be a list of 1 to {MAX_ENTRIES} {what}")
        for entry in entries:
            check(f"{name}.{key}", entry)
    aca = rule.get("aca")
    if aca is not None:
        _strings(f"{name}.aca", aca)
    acaf = rule.get("acaf")
    if acaf is not None and not isinstance(acaf, bool):
        raise BadRequest(f"'{name}.acaf' must be a boolean")
