"""The ``<flexContainer>`` (ty 28, TS-0001 9.6.35, TS-0004 7.4.37) and its
``<flexContainerInstance>`` history (ty 58, TS-0001 9.6.61).

A flexContainer holds, besides the common attributes, ``cnd`` (containerDefinition: which
model it follows), ``st`` (stateTag), ``cs`` (the size of its custom attributes) and the
custom attributes themselves. Its key in a ``pc`` is its specialization's short name
(``cod:binSh``) when the CSE knows the definition its ``cnd`` names: its custom attributes
are then checked against that definition (:mod:`acmews.cse.moduleclasses`; more with
:func:`register_specialization`). Any other ``cnd`` makes a generic ``m2m:fcnt`` whose custom
attributes are stored and returned as given. A CREATE may also send a known specialization as
``m2m:fcnt``: it is validated and answered under its own key.

With ``mni`` or ``mbs`` set, the CSE keeps a history: at the CREATE and at each UPDATE of
custom attributes it adds a ``<flexContainerInstance>`` (``m2m:fcin``) holding all the custom
attributes at that moment, its ``cs``, the stateTag and the originator (``org``); the oldest are
deleted beyond ``mni`` instances or ``mbs`` bytes, as a container's, and ``la``/``ol`` address
the latest and oldest. An instance is the CSE's: it cannot be created or updated by a request.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from acmews.codes import ResourceType
from acmews.cse.kinds import enforce_limits, latest_or_oldest
from acmews.cse.moduleclasses import MODULE_CLASSES
from acmews.cse.resource import (
    Changes,
    CSEServices,
    Resource,
    ResourceKind,
    ResourceReader,
    Validator,
    body_of,
    content_size,
    make_kind,
    register_kind,
    v_nonneg_int,
    v_str,
)
from acmews.errors import BadRequest, NotAcceptable, OperationNotAllowed
from acmews.primitive import is_int_not_bool

__all__ = [
    "FLEX_CONTAINER",
    "FLEX_INSTANCE",
    "SPECIALIZATIONS",
    "FlexContainerKind",
    "register_specialization",
    "unregister_specialization",
]

_R = ResourceType
_FCI = _R.FCI
GENERIC_KEY = "m2m:fcnt"
#: the flexContainer's own attributes (besides the common ones); every other is custom
_OWN: dict[str, Validator] = {
    "cnd": v_str,
    "or": v_str,
    "nl": v_str,
    "mni": v_nonneg_int,
    "mbs": v_nonneg_int,
}
_COMMON = ("rn", "lbl", "acpi", "et", "cr")
#: names a custom attribute may not take: the universal, common and own ones
RESERVED = frozenset(
    {"ty", "ri", "rn", "pi", "ct", "lt", "et", "st", "cs", "cni", "cbs", "cr", "lbl", "acpi"}
    | set(_OWN)
    | {"at", "aa", "ast", "daci", "mia", "cstn", "la", "ol"}
)
#: a custom attribute's name: a short name as TS-0023 writes them
_CUSTOM = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_UPDATABLE = frozenset({"lbl", "acpi", "et", "or", "nl", "mni", "mbs"})


@dataclasses.dataclass(frozen=True, slots=True)
class FlexContainerKind(ResourceKind):
    """A flexContainer: generic (``spec`` None, key ``m2m:fcnt``, any custom attribute) or
    of a known specialization (its key, its attributes checked)."""

    #: the definition's name and short name, or None for the generic form
    spec: str | None = None
    virtual = frozenset({"la", "ol"})

    def __post_init__(self) -> None:
        ResourceKind.__post_init__(self)
        if self.spec is not None:
            object.__setattr__(self, "key", self.spec)

    def unwrap(self, pc: Any) -> tuple[ResourceKind, dict[str, Any]]:
        if not isinstance(pc, dict) or len(pc) != 1:
            raise BadRequest("'pc' must hold exactly one flexContainer")
        key = next(iter(pc))
        if key == GENERIC_KEY:
            body = body_of(pc, key)
            cnd = body.get("cnd")
            return _by_cnd.get(cnd, FLEX_CONTAINER) if isinstance(cnd, str) else self, body
        kind = SPECIALIZATIONS.get(key)
        if kind is None:
            raise BadRequest(
                f"{key!r} is not a flexContainer specialization this CSE knows: send it as "
                f"{GENERIC_KEY!r} (custom attributes are then stored as given)"
            )
        body = body_of(pc, key)
        cnd = body.get("cnd")
        if cnd is None:
            body = {**body, "cnd": _cnd_of[kind.key]}  # TS-0023: implied by the short name
        elif cnd != _cnd_of[kind.key]:
            raise BadRequest(f"cnd {cnd!r} is not that of {key} ({_cnd_of[kind.key]!r})")
        return kind, body

    def restored(self, attrs: Mapping[str, Any]) -> ResourceKind:
        return _by_cnd.get(attrs.get("cnd"), FLEX_CONTAINER)

    def validate_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        own, custom = self._split(body)
        out = ResourceKind.validate_create(self, own)
        out.update(self._custom(custom, create=True))
        return out

    def validate_update(self, body: Mapping[str, Any]) -> dict[str, Any]:
        own, custom = self._split(body)
        out = ResourceKind.validate_update(self, own) if own else {}
        out.update(self._custom(custom, create=False))
        if not out:
            raise BadRequest(f"nothing to update in {self.key}")
        return out

    def _split(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        own: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for name, value in body.items():
            (own if name in self.attributes or name in RESERVED else custom)[name] = value
        return own, custom

    def _custom(self, custom: dict[str, Any], create: bool) -> dict[str, Any]:
        """The custom attributes, checked against the specialization if there is one."""
        if self.spec is None:
            for name in custom:
                if not _CUSTOM.match(name):
                    raise BadRequest(f"{name!r} is not a custom attribute name")
            if create:  # null asks nothing of a new resource
                return {k: v for k, v in custom.items() if v is not None}
            return custom
        if not custom:
            return {}
        unknown = sorted(custom)
        raise BadRequest(f"attribute '{unknown[0]}' is not an attribute of {self.key}")

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        attrs["st"] = 0  # TS-0001 9.6.35: stateTag, 0 at creation
        attrs["cs"] = _size(attrs)
        if _keeps_history(attrs):
            _fits(attrs["cs"], attrs)
            attrs["cni"] = 0
            attrs["cbs"] = 0

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        attrs = resource.attrs
        after = {**attrs, **changes}
        if any(name not in RESERVED for name in changes):
            changes["cs"] = _size({k: v for k, v in after.items() if v is not None})
            if _keeps_history(after):  # refused here, before anything has changed
                _fits(changes["cs"], after)
        if _keeps_history(after):
            if "cni" not in attrs:
                changes["cni"] = 0
                changes["cbs"] = 0
        elif "cni" in attrs:  # neither mni nor mbs any longer: the history stops
            changes["cni"] = changes["cbs"] = None
        changes["st"] = attrs.get("st", 0) + 1  # TS-0001 9.6.35: every modification

    def created(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        if "cni" in resource.attrs and resource.attrs["cs"]:
            _record_instance(cse, batch, resource)

    def updated(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        if "cni" not in resource.attrs:
            return
        if _customs_changed(batch):
            _record_instance(cse, batch, resource)
        else:
            enforce_limits(cse, batch, resource, _FCI)  # a smaller mni or mbs

    def virtual_child(self, store: ResourceReader, resource: Resource, which: str) -> Resource:
        return latest_or_oldest(store, resource, which, _FCI, "flexContainerInstance")


def custom_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The custom attributes among a flexContainer's ``attrs``."""
    return {k: v for k, v in attrs.items() if k not in RESERVED}


def _size(attrs: Mapping[str, Any]) -> int:
    """``cs``: the JSON size of the custom attributes, 0 without any."""
    custom = custom_attributes(attrs)
    return content_size(custom) if custom else 0


def _fits(cs: int, attrs: Mapping[str, Any]) -> None:
    """5207 for custom attributes an instance of which would exceed ``mbs``."""
    mbs = attrs.get("mbs")
    if mbs is not None and cs > mbs:
        raise NotAcceptable(f"the custom attributes ({cs} bytes) exceed the mbs {mbs}")


def _keeps_history(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("mni") is not None or attrs.get("mbs") is not None


def _customs_changed(batch: Changes) -> bool:
    """Whether the UPDATE in ``batch`` changes custom attributes."""
    request = batch.request
    if request is None or not isinstance(request.pc, dict):
        return False
    body = next(iter(request.pc.values()), None)
    return isinstance(body, dict) and any(k not in RESERVED for k in body)


def _record_instance(cse: CSEServices, batch: Changes, fcnt: Resource) -> None:
    """Add a flexContainerInstance with the custom attributes of ``fcnt`` as they are now,
    then keep ``mni``/``mbs``."""
    attrs = fcnt.attrs
    custom = custom_attributes(attrs)
    cs = attrs["cs"]
    ri = cse.new_ri(FLEX_INSTANCE)
    request = batch.request
    instance: dict[str, Any] = {
        "ty": int(_FCI),
        "ri": ri,
        "rn": ri,
        "pi": fcnt.ri,
        "ct": attrs["lt"],
        "lt": attrs["lt"],
        "et": attrs["et"],
        "st": attrs["st"],
        "cs": cs,
        **custom,
    }
    if request is not None and request.fr:
        instance["org"] = request.fr
    batch.add(Resource(FLEX_INSTANCE, instance, f"{fcnt.srn}/{ri}", fcnt.creator))
    fcnt.replace({"cni": attrs["cni"] + 1, "cbs": attrs["cbs"] + cs})
    batch.update(fcnt)
    enforce_limits(cse, batch, fcnt, _FCI)


class FlexInstanceKind(ResourceKind):
    """A flexContainerInstance: made by the CSE only, never updated; its size counts in its
    flexContainer."""

    __slots__ = ()
    immutable = True

    def validate_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise OperationNotAllowed(
            "a flexContainerInstance is made by the CSE at an UPDATE of its flexContainer"
        )

    def detached(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        attrs = parent.attrs
        if "cni" in attrs:
            parent.replace({"cni": attrs["cni"] - 1, "cbs": attrs["cbs"] - resource.attrs["cs"]})
            batch.update(parent)


_GENERIC = make_kind(
    FlexContainerKind,
    _R.FCNT,
    "fcnt",
    "flexContainer",
    _OWN,
    frozenset({"cnd"}),
    set(_UPDATABLE),
    {_R.FCNT, _R.CNT, _R.SUB, _FCI},
    _COMMON,
    parents={_R.CSEBASE, _R.AE, _R.CNT, _R.CSR},
)
assert isinstance(_GENERIC, FlexContainerKind)
#: the generic flexContainer kind (``m2m:fcnt``), registered for ty 28
FLEX_CONTAINER: FlexContainerKind = _GENERIC
register_kind(FLEX_CONTAINER)
#: the flexContainerInstance kind (``m2m:fcin``), registered for ty 58
FLEX_INSTANCE = register_kind(
    make_kind(
        FlexInstanceKind,
        _FCI,
        "fcin",
        "flexContainerInstance",
        {},
        frozenset(),
        set(),
        set(),
        (),
    )
)

#: the known specializations' kinds, by short name (``cod:binSh``)
SPECIALIZATIONS: dict[str, FlexContainerKind] = {}
_by_cnd: dict[Any, FlexContainerKind] = {}
_cnd_of: dict[str, str] = {}
_TYPES = ("boolean", "integer", "float", "string", "any")


def register_specialization(definition: Mapping[str, Any]) -> FlexContainerKind:
    """Make a flexContainer specialization known (see :mod:`acmews.cse.moduleclasses` for
    the form of ``definition``); ValueError for a malformed or already known one."""
    short = definition.get("short")
    cnd = definition.get("cnd")
    attributes = definition.get("attributes", {})
    if not isinstance(short, str) or ":" not in short or not isinstance(cnd, str) or not cnd:
        raise ValueError("a specialization needs 'short' (prefix:name) and 'cnd'")
    if short in SPECIALIZATIONS or cnd in _by_cnd or short == GENERIC_KEY:
        raise ValueError(f"the specialization {short} ({cnd}) is known already")
    validators: dict[str, Validator] = dict(_OWN)
    mandatory: set[str] = set()
    for name, spec in attributes.items():
        if name in RESERVED or not _CUSTOM.match(name):
            raise ValueError(f"{name!r} cannot be a custom attribute")
        if spec.get("type", "any") not in _TYPES:
            raise ValueError(f"{name}: type must be one of {', '.join(_TYPES)}")
        validators[name] = _validator(spec)
        if spec.get("mandatory"):
            mandatory.add(name)
    kind = dataclasses.replace(
        FLEX_CONTAINER,
        attributes={**FLEX_CONTAINER.attributes, **validators},
        mandatory=frozenset(mandatory | {"cnd"}),
        updatable=_UPDATABLE | set(attributes),
        name=str(definition.get("name", short)),
        spec=short,
    )
    SPECIALIZATIONS[short] = kind
    _by_cnd[cnd] = kind
    _cnd_of[short] = cnd
    return kind


def unregister_specialization(short: str) -> None:
    """Forget the specialization ``short`` (resources of it become generic ``m2m:fcnt``)."""
    del SPECIALIZATIONS[short]
    del _by_cnd[_cnd_of.pop(short)]


def _validator(spec: Mapping[str, Any]) -> Validator:
    """The validator of one custom attribute of a definition."""
    kind = spec.get("type", "any")
    low = spec.get("min")
    high = spec.get("max")
    values = spec.get("values")

    def validate(name: str, value: Any) -> Any:
        if kind == "boolean":
            ok = isinstance(value, bool)
        elif kind == "integer":
            ok = is_int_not_bool(value)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "string":
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise BadRequest(f"attribute '{name}' must be of type {kind}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadRequest(f"attribute '{name}' must be within {low}..{high}")
        if values is not None and value not in values:
            raise BadRequest(f"attribute '{name}' must be one of {values}")
        return value

    return validate


for _definition in MODULE_CLASSES:
    register_specialization(_definition)
