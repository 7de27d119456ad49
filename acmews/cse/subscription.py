"""What is particular to ``<subscription>`` beyond its kind's hooks (TS-0004 7.4.8, TS-0001
10.2.10.7): the validation of ``eventNotificationCriteria`` and of the notification policies,
the rules that tie attributes together, and the :class:`Policy` the notifier reads.

A subscription's attributes are compiled once per version (``attrs`` is replaced, never
changed in place) into a :class:`Policy`: an event then costs a few set lookups, and a
subscription that uses none of the policies (batches, latest only, statistics) is notified
exactly as before they existed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from acmews.codes import RSC, NotificationContentType, NotificationEventType, ResourceType
from acmews.cse.resource import KINDS, MAX_LIST, MAX_NAME, Resource
from acmews.errors import BadRequest, NotImplementedOp, OneM2MError
from acmews.poa.steps import split_ct
from acmews.primitive import is_int_not_bool

__all__ = [
    "DEFAULT_BATCH_DURATION",
    "Policy",
    "check_create",
    "check_update",
    "compile_policy",
    "parse_duration",
    "v_batch_notify",
    "v_enc",
    "v_nct",
    "v_subscription_nu",
]

_NET = NotificationEventType
_NCT = NotificationContentType

#: the notificationContentType values allowed per notificationEventType, and the default
#: (TS-0001 Table 9.6.8-4, as TS-0004 7.4.8.2.1 refers to it)
ALLOWED_NCT: dict[int, frozenset[int]] = {
    _NET.UPDATE: frozenset({1, 2, 3}),
    _NET.DELETE: frozenset({1, 3}),
    _NET.CREATE_CHILD: frozenset({1, 3}),
    _NET.DELETE_CHILD: frozenset({1, 3}),
    _NET.RETRIEVE_EMPTY_CONTAINER: frozenset({1, 3}),
    _NET.TRIGGER_FOR_AE: frozenset({4}),
    _NET.BLOCKING_UPDATE: frozenset({2}),
    _NET.MISSING_DATA: frozenset({5}),
}
DEFAULT_NCT: dict[int, int] = {
    _NET.TRIGGER_FOR_AE: _NCT.TRIGGER_PAYLOAD,
    _NET.BLOCKING_UPDATE: _NCT.MODIFIED_ATTRIBUTES,
    _NET.MISSING_DATA: _NCT.TIME_SERIES_NOTIFICATION,
}
#: an operationMonitor notifies about an operation, not a change: all or the ID
OM_NCT = frozenset({1, 3})

#: eventNotificationCriteria condition tags this CSE evaluates
CONDITIONS = frozenset({"net", "atr", "chty", "om", "md"})
#: the other condition tags of m2m:eventNotificationCriteria (TS-0004 6.3.5.7): 5001
UNSUPPORTED_CONDITIONS = frozenset(
    {"crb", "cra", "ims", "ius", "sts", "stb", "exb", "exa", "sza", "szb", "fo"}
)
#: batchNotify/duration when the originator gives none: the M2M Service Provider's default
#: (TS-0004 7.4.8.2.1); one minute, as the reference implementations use
DEFAULT_BATCH_DURATION = "PT60S"
#: policies refused beside a blocking update (TS-0001 10.2.10.7: "all other notification
#: policies shall not be allowed"; the reference implementations refuse these and accept
#: nct 2, su, nse and eeno with it)
BLOCKING_EXCLUDES = ("exc", "bn", "ln")
#: operations an operationMonitor may name (m2m:operation)
OPERATIONS = frozenset({1, 2, 3, 4, 5})

_DURATION = re.compile(
    r"^P(?!$)(?:(\d{1,9})Y)?(?:(\d{1,9})M)?(?:(\d{1,9})W)?(?:(\d{1,9})D)?"
    r"(?:T(?=\d)(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{1,9}(?:[.,]\d{1,9})?)S)?)?$"
)
_UNITS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)


def parse_duration(value: str) -> float:
    """Seconds of an ISO 8601 duration (``PT2S``, ``P1DT2H``); ValueError for anything else.

    A year counts 365 days and a month 30 (xs:duration leaves them calendar-dependent).
    """
    match = _DURATION.match(value)
    if match is None or value.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {value!r}")
    return sum(
        float(part.replace(",", ".")) * unit
        for part, unit in zip(match.groups(), _UNITS, strict=True)
        if part is not None
    )


def _duration(name: str, value: Any) -> str:
    """An xs:duration attribute: an ISO 8601 duration string, longer than zero."""
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be an ISO 8601 duration such as 'PT2S'")
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be an ISO 8601 duration such as 'PT2S'") from None
    if seconds <= 0:
        raise BadRequest(f"'{name}' must be longer than zero")
    return value


# --- validators of single attributes ----------------------------------------------------------


def v_nct(name: str, value: Any) -> Any:
    if not is_int_not_bool(value) or not 1 <= value <= 5:
        raise BadRequest(f"attribute '{name}' must be a notificationContentType 1-5")
    return value


def v_batch_notify(name: str, value: Any) -> Any:
    """``bn``: ``{"num": positive integer, "dur": ISO 8601 duration}``, either or both."""
    if not isinstance(value, dict) or set(value) - {"num", "dur"}:
        raise BadRequest(f"attribute '{name}' must be an object with 'num' and/or 'dur'")
    out: dict[str, Any] = {}
    num = value.get("num")
    if num is not None:
        if not is_int_not_bool(num) or num < 1:
            raise BadRequest(f"'{name}.num' must be a positive integer")
        out["num"] = num
    dur = value.get("dur")
    if dur is not None:
        out["dur"] = _duration(f"{name}.dur", dur)
    return out


def v_subscription_nu(name: str, value: Any) -> Any:
    """``nu`` entries may carry a serialization indication (``?ct=json``, ``?ct=cbor``)."""
    for nu in value:
        ct = split_ct(nu)[1]
        if ct is None or ct in ("json", "cbor"):
            continue
        if ct == "xml":
            raise NotImplementedOp(f"'{name}': this CSE does not serialize notifications as XML")
        raise BadRequest(f"'{name}': unknown serialization ct={ct!r} (json or cbor)")
    return value


def v_enc(name: str, value: Any) -> Any:
    """``eventNotificationCriteria``: ``net``, ``atr``, ``chty``, ``om`` and ``md``.

    The other condition tags of TS-0004 6.3.5.7 are not evaluated here: 5001.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"attribute '{name}' must be an object")
    for key in value:
        if key in CONDITIONS:
            continue
        if key in UNSUPPORTED_CONDITIONS:
            raise NotImplementedOp(f"'{name}.{key}': this CSE does not evaluate that condition")
        raise BadRequest(f"'{name}.{key}' is not a condition of eventNotificationCriteria")
    out: dict[str, Any] = {}
    net = value.get("net")
    if net is not None:
        _list_of(f"{name}.net", net, _is_event_type, "event types 1-8")
        out["net"] = list(dict.fromkeys(net))
    atr = value.get("atr")
    if atr is not None:
        out["atr"] = _list_of(f"{name}.atr", atr, _is_name, "attribute names")
    chty = value.get("chty")
    if chty is not None:
        out["chty"] = _list_of(f"{name}.chty", chty, _is_type, "resource types")
    om = value.get("om")
    if om is not None:
        out["om"] = _operation_monitors(f"{name}.om", om)
    md = value.get("md")
    if md is not None:
        out["md"] = _missing_data(f"{name}.md", md)
    if "net" in out and "om" in out:
        # TS-0004 7.4.8.2.1: both notificationEventType and operationMonitor: 4000
        raise BadRequest(f"'{name}' may hold 'net' or 'om', not both")
    if "net" not in out and "om" not in out:
        out["net"] = [int(_NET.UPDATE)]  # TS-0004 7.5.1.2.2 step 1.0: the default
    return out


def _list_of(name: str, value: Any, valid: Callable[[Any], bool], what: str) -> list[Any]:
    """``value`` if it is a non-empty list (of at most :data:`MAX_LIST`) of ``valid``
    items."""
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_LIST
        or not all(valid(item) for item in value)
    ):
        raise BadRequest(f"'{name}' must be a non-empty list of {what}")
    return value


def _is_event_type(value: Any) -> bool:
    return is_int_not_bool(value) and 1 <= value <= len(_NET)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _is_type(value: Any) -> bool:
    return is_int_not_bool(value) and value > 0


def _operation_monitors(name: str, value: Any) -> list[Any]:
    monitors = _list_of(name, value, lambda entry: isinstance(entry, dict), "operation monitors")
    for entry in monitors:
        if not entry or set(entry) - {"ops", "org"}:
            raise BadRequest(f"each '{name}' entry must have 'ops' and/or 'org'")
        ops = entry.get("ops")
        if ops is not None and (not is_int_not_bool(ops) or ops not in OPERATIONS):
            raise BadRequest(f"'{name}.ops' must be an operation 1-5")
        org = entry.get("org")
        if org is not None and (not isinstance(org, str) or not org or len(org) > MAX_NAME):
            raise BadRequest(f"'{name}.org' must be an originator ID")
    return monitors


def _missing_data(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != {"num", "dur"}:
        raise BadRequest(f"'{name}' must be an object with exactly 'num' and 'dur'")
    if not is_int_not_bool(value["num"]) or value["num"] < 1:
        raise BadRequest(f"'{name}.num' must be a positive integer")
    _duration(f"{name}.dur", value["dur"])
    return value


# --- rules across attributes ------------------------------------------------------------------


def check_create(attrs: dict[str, Any], parent: Resource, siblings: Sequence[Resource]) -> None:
    """Check a new subscription's validated ``attrs`` under ``parent`` and complete their
    defaults (``enc``, ``nct``, ``bn.dur``); ``siblings`` are the subscriptions there already.
    """
    enc = attrs.setdefault("enc", {"net": [int(_NET.UPDATE)]})
    net = enc.get("net", ())
    if _NET.BLOCKING_UPDATE in net:
        _check_blocking(attrs, enc, siblings)
    _check_common(attrs, enc, parent)
    bn = attrs.get("bn")
    if bn is not None and "dur" not in bn:
        attrs["bn"] = {**bn, "dur": DEFAULT_BATCH_DURATION}


def check_update(
    changes: dict[str, Any], attrs: Mapping[str, Any], parent: Resource | None
) -> None:
    """Check the ``changes`` of a subscription whose attributes are ``attrs``, as the
    subscription will be once they are made (TS-0004 7.4.8.2.3); complete their defaults."""
    enc = changes.get("enc")
    if enc is not None and _NET.BLOCKING_UPDATE in enc.get("net", ()):
        raise BadRequest("an UPDATE may not set the notificationEventType blockingUpdate (7)")
    merged = {**attrs, **changes}
    for name, value in changes.items():
        if value is None:
            del merged[name]  # removing nct restores its default (below)
    enc = merged.setdefault("enc", {"net": [int(_NET.UPDATE)]})
    if _NET.BLOCKING_UPDATE in enc.get("net", ()):
        _check_blocking(merged, enc, ())
    if parent is not None:
        _check_common(merged, enc, parent)
        if merged["nct"] != attrs.get("nct"):
            changes["nct"] = merged["nct"]  # its default, restored or changed with enc
    bn = changes.get("bn")
    if bn is not None and "dur" not in bn:
        changes["bn"] = {**bn, "dur": DEFAULT_BATCH_DURATION}
    if "nse" in changes and changes["nse"] is not False:
        # enabling the statistics starts them afresh (collected again from the next
        # notification); removing nse removes them; disabling keeps them
        changes["nsi"] = None


def _check_common(attrs: dict[str, Any], enc: Mapping[str, Any], parent: Resource) -> None:
    """The rules a subscription's attributes obey together, at CREATE and after an UPDATE;
    completes ``nct``."""
    net = enc.get("net")
    allowed: frozenset[int]
    if net is None:
        allowed = OM_NCT
        default = int(_NCT.ALL_ATTRIBUTES)
    else:
        allowed = frozenset.intersection(*(ALLOWED_NCT[n] for n in net))
        default = min(DEFAULT_NCT.get(n, int(_NCT.ALL_ATTRIBUTES)) for n in net)
    nct = attrs.setdefault("nct", default)
    if nct not in allowed:
        raise BadRequest(
            f"nct {nct} is not allowed for enc.net {net}"
            if net is not None
            else f"nct {nct} is not allowed for an operationMonitor (1 or 3)"
        )
    chty = enc.get("chty")
    if chty is not None:
        for ty in chty:
            kind = KINDS.get(ty)
            if kind is None or not kind.may_be_created_under(parent.kind):
                raise BadRequest(
                    f"enc.chty: resource type {ty} is not a child type of {parent.kind.name}"
                )
    if net is not None and _NET.MISSING_DATA in net and "md" not in enc:
        raise BadRequest("enc.net 8 (missing data) needs enc.md")
    if "md" in enc and parent.ty != ResourceType.TS:
        raise BadRequest("enc.md (missing data) applies to a timeSeries only")


def _check_blocking(
    attrs: Mapping[str, Any], enc: Mapping[str, Any], siblings: Sequence[Resource]
) -> None:
    """TS-0004 7.4.8.2.1 Recv-6.4 for notificationEventType blockingUpdate (7), also for
    what an UPDATE leaves of such a subscription."""
    if enc["net"] != [_NET.BLOCKING_UPDATE]:
        raise BadRequest("blockingUpdate (7) must be the only notificationEventType")
    nu = attrs["nu"]
    if len(nu) != 1:
        raise BadRequest("a blocking-update subscription has exactly one notificationURI")
    if "://" in nu[0]:
        raise BadRequest("the notificationURI of a blocking update must be a resource ID")
    excluded = [name for name in BLOCKING_EXCLUDES if name in attrs]
    if excluded:
        raise BadRequest(f"{', '.join(excluded)} may not be used with a blocking update")
    others = set(enc) - {"net", "atr"}
    if others:
        raise BadRequest(
            f"enc.{', enc.'.join(sorted(others))} may not be used with a blocking update"
        )
    for sibling in siblings:
        if _NET.BLOCKING_UPDATE in sibling.attrs.get("enc", {}).get("net", ()):
            raise OneM2MError(
                "the subscribed-to resource has a blocking-update subscription already",
                rsc=RSC.BLOCKING_SUBSCRIPTION_ALREADY_EXISTS,
            )


# --- the compiled policy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """What a subscription's attributes mean for its notifications, read once per version.

    ``tagged``: its notifications need more than a send (a batch, ``ec`` latest, counting),
    so the notifier handles them one by one; a subscription without is on the plain path.
    """

    net: frozenset[int]
    atr: frozenset[str] | None
    chty: frozenset[int] | None
    #: operation monitors, ``(ops, org)`` (None: any)
    om: tuple[tuple[int | None, str | None], ...] | None
    nct: int
    #: ``(num or None, duration in seconds)``
    batch: tuple[int | None, float] | None
    latest: bool
    stats: bool
    eeno: bool
    #: the subscription's ``cr`` attribute, carried by its notifications
    creator: str | None
    tagged: bool


#: the policies compiled so far, each kept once: the subscriptions of a fan-out mostly ask for
#: the same, and one shared Policy (its sets included) stays in the processor's caches while
#: the notifier reads a thousand subscriptions' (bounded: emptied when full)
_SHARED: dict[Policy, Policy] = {}
MAX_SHARED_POLICIES = 4096


def compile_policy(attrs: Mapping[str, Any]) -> Policy:
    """The policy of a subscription with ``attrs``; an equal one compiled before, if any."""
    policy = _compile_policy(attrs)
    try:
        shared = _SHARED.get(policy)
    except TypeError:  # (an unhashable value that slipped through: kept for itself)
        return policy
    if shared is not None:
        return shared
    if len(_SHARED) >= MAX_SHARED_POLICIES:
        _SHARED.clear()
    _SHARED[policy] = policy
    return policy


def _compile_policy(attrs: Mapping[str, Any]) -> Policy:
    enc = attrs.get("enc") or {}
    atr = enc.get("atr")
    chty = enc.get("chty")
    om = enc.get("om")
    bn = attrs.get("bn")
    batch = None
    if bn is not None:
        batch = (bn.get("num"), parse_duration(bn.get("dur", DEFAULT_BATCH_DURATION)))
    latest = attrs.get("ln") is True
    stats = attrs.get("nse") is True
    return Policy(
        net=frozenset(enc.get("net", ())),
        atr=None if atr is None else frozenset(atr),
        chty=None if chty is None else frozenset(chty),
        om=None if om is None else tuple((o.get("ops"), o.get("org")) for o in om),
        nct=attrs.get("nct", 1),
        batch=batch,
        latest=latest,
        stats=stats,
        eeno=attrs.get("eeno") is True,
        creator=attrs.get("cr"),
        tagged=batch is not None or latest or stats,
    )
