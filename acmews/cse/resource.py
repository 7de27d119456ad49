"""Resources of the embedded CSE and the per-type rules (a registry keyed by ``ty``).

A :class:`Resource` holds its oneM2M representation in ``attrs``. That mapping is never
changed in place once stored: :meth:`Resource.replace` builds a new one. So a representation
handed out in a response (without copying, which keeps RETRIEVE cheap) never changes under
the encoder's feet.

New resource types (remoteCSE, group, ...) are added by registering a :class:`ResourceKind`
in :data:`KINDS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from acmews.codes import ResourceType
from acmews.errors import BadRequest
from acmews.primitive import is_int_not_bool

__all__ = ["KINDS", "Resource", "ResourceKind", "content_size"]

Validator = Callable[[str, Any], Any]

_TIMESTAMP = re.compile(r"^\d{8}T\d{6}(,\d{1,6})?$")
RESERVED_NAMES = frozenset({"la", "ol", "-"})


# --- validators: (attribute name, value) -> value, or BadRequest ------------------------------


def v_str(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise BadRequest(f"attribute '{name}' must be a string")
    return value


def v_bool(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise BadRequest(f"attribute '{name}' must be a boolean")
    return value


def v_nonneg_int(name: str, value: Any) -> Any:
    if not is_int_not_bool(value) or value < 0:
        raise BadRequest(f"attribute '{name}' must be a non-negative integer")
    return value


def v_pos_int(name: str, value: Any) -> Any:
    if not is_int_not_bool(value) or value < 1:
        raise BadRequest(f"attribute '{name}' must be a positive integer")
    return value


def v_str_list(name: str, value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"attribute '{name}' must be a list of strings")
    return value


def v_nonempty_str_list(name: str, value: Any) -> Any:
    v_str_list(name, value)
    if not value or not all(value):
        raise BadRequest(f"attribute '{name}' must be a non-empty list of non-empty strings")
    return value


def v_timestamp(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        raise BadRequest(f"attribute '{name}' must be a timestamp YYYYMMDDThhmmss[,ffffff]")
    return value


def v_rn(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or "/" in value or value in RESERVED_NAMES:
        raise BadRequest(f"attribute '{name}' must be a non-empty name without '/' (not la/ol)")
    return value


def v_api(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or value[0] not in "NR":
        raise BadRequest(f"attribute '{name}' (App-ID) must be a string starting with N or R")
    return value


def v_any(name: str, value: Any) -> Any:
    return value


def v_enc(name: str, value: Any) -> Any:
    if not isinstance(value, dict) or set(value) - {"net"}:
        raise BadRequest(f"attribute '{name}' must be an object with only 'net'")
    net = value.get("net", [1])
    if (
        not isinstance(net, list)
        or not net
        or not all(is_int_not_bool(n) and 1 <= n <= 4 for n in net)
    ):
        raise BadRequest(f"'{name}.net' must be a non-empty list of event types 1-4")
    return {"net": net}


def v_nct(name: str, value: Any) -> Any:
    if not is_int_not_bool(value) or value not in (1, 2, 3):
        raise BadRequest(f"attribute '{name}' must be 1, 2 or 3")
    return value


def v_privileges(name: str, value: Any) -> Any:
    """``{"acr": [{"acor": [...], "acop": 1..63}, ...]}``."""
    if not isinstance(value, dict) or set(value) - {"acr"}:
        raise BadRequest(f"attribute '{name}' must be an object with only 'acr'")
    rules = value.get("acr", [])
    if not isinstance(rules, list):
        raise BadRequest(f"'{name}.acr' must be a list")
    for rule in rules:
        if not isinstance(rule, dict) or set(rule) != {"acor", "acop"}:
            raise BadRequest(f"each '{name}.acr' rule must have exactly 'acor' and 'acop'")
        v_nonempty_str_list(f"{name}.acr.acor", rule["acor"])
        acop = rule["acop"]
        if not is_int_not_bool(acop) or not 1 <= acop <= 63:
            raise BadRequest(f"'{name}.acr.acop' must be an integer 1-63")
    return {"acr": rules}


def content_size(con: Any) -> int:
    """``cs``: the UTF-8 length of ``con`` (serialized as JSON when it is not a string)."""
    if isinstance(con, str):
        return len(con.encode("utf-8"))
    return len(orjson.dumps(con))


# --- the registry ------------------------------------------------------------------------------

_COMMON: dict[str, Validator] = {
    "rn": v_rn,
    "lbl": v_str_list,
    "acpi": v_str_list,
    "et": v_timestamp,
}


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """What the CSE must know about one resource type."""

    ty: ResourceType
    short: str
    #: attributes an originator may set on CREATE, with their validators
    attributes: Mapping[str, Validator]
    mandatory: frozenset[str] = frozenset()
    #: attributes an originator may change on UPDATE (a subset of ``attributes``)
    updatable: frozenset[str] = frozenset()
    children: frozenset[int] = frozenset()
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"m2m:{self.short}")

    def validate_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The validated attributes of a CREATE body; 4000 for anything unknown or wrong."""
        attributes = self.attributes
        out: dict[str, Any] = {}
        for name, value in body.items():
            validator = attributes.get(name)
            if validator is None:
                raise BadRequest(f"attribute '{name}' is not allowed in a CREATE of {self.key}")
            if value is not None:
                out[name] = validator(name, value)
        missing = self.mandatory - out.keys()
        if missing:
            raise BadRequest(
                f"mandatory attribute(s) {', '.join(sorted(missing))} missing for {self.key}"
            )
        return out

    def validate_update(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The validated changes of an UPDATE body; ``None`` values remove an attribute."""
        out: dict[str, Any] = {}
        for name, value in body.items():
            if name not in self.updatable:
                raise BadRequest(f"attribute '{name}' cannot be updated in {self.key}")
            if value is None:
                if name in self.mandatory:
                    raise BadRequest(f"mandatory attribute '{name}' cannot be removed")
                out[name] = None
            else:
                out[name] = self.attributes[name](name, value)
        if not out:
            raise BadRequest(f"nothing to update in {self.key}")
        return out


def _kind(
    ty: ResourceType,
    short: str,
    own: Mapping[str, Validator],
    mandatory: frozenset[str],
    updatable: set[str],
    children: set[ResourceType],
    common: tuple[str, ...] = ("rn", "lbl", "acpi", "et"),
) -> ResourceKind:
    attributes = {name: _COMMON[name] for name in common}
    attributes.update(own)
    return ResourceKind(
        ty,
        short,
        attributes,
        mandatory,
        frozenset(updatable),
        frozenset(int(c) for c in children),
    )


_R = ResourceType
KINDS: dict[int, ResourceKind] = {
    k.ty: k
    for k in (
        _kind(
            _R.CSEBASE,
            "cb",
            {"poa": v_str_list},
            frozenset(),
            {"lbl", "acpi", "poa"},
            {_R.AE, _R.CNT, _R.ACP, _R.SUB},
            ("lbl", "acpi"),
        ),
        _kind(
            _R.AE,
            "ae",
            {
                "api": v_api,
                "apn": v_str,
                "rr": v_bool,
                "poa": v_str_list,
                "srv": v_str_list,
                "csz": v_str_list,
            },
            frozenset({"api", "rr"}),
            {"lbl", "acpi", "et", "apn", "rr", "poa", "srv", "csz"},
            {_R.CNT, _R.SUB, _R.ACP},
        ),
        _kind(
            _R.CNT,
            "cnt",
            {"mni": v_nonneg_int, "mbs": v_nonneg_int},
            frozenset(),
            {"lbl", "acpi", "et", "mni", "mbs"},
            {_R.CNT, _R.CIN, _R.SUB},
        ),
        _kind(
            _R.CIN,
            "cin",
            {"con": v_any, "cnf": v_str},
            frozenset({"con"}),
            set(),
            set(),
            ("rn", "lbl", "et"),
        ),
        _kind(
            _R.SUB,
            "sub",
            {
                "nu": v_nonempty_str_list,
                "enc": v_enc,
                "nct": v_nct,
                "su": v_str,
                "exc": v_pos_int,
            },
            frozenset({"nu"}),
            {"lbl", "acpi", "et", "nu", "enc", "nct", "su", "exc"},
            set(),
        ),
        _kind(
            _R.ACP,
            "acp",
            {"pv": v_privileges, "pvs": v_privileges},
            frozenset({"pv", "pvs"}),
            {"lbl", "et", "pv", "pvs"},
            set(),
            ("rn", "lbl", "et"),
        ),
    )
}


class Resource:
    """One stored resource: its kind, representation, structured address and creator."""

    __slots__ = ("_pc", "attrs", "creator", "kind", "srn")

    def __init__(self, kind: ResourceKind, attrs: dict[str, Any], srn: str, creator: str | None):
        self.kind = kind
        #: the representation; replaced as a whole by :meth:`replace`, never mutated
        self.attrs = attrs
        #: the structured CSE-relative address, e.g. ``cse-in/myae/cnt``
        self.srn = srn
        #: the originator that created it (it and its subtree are the creator's)
        self.creator = creator
        self._pc: dict[str, Any] | None = None

    @property
    def ri(self) -> str:
        ri: str = self.attrs["ri"]
        return ri

    @property
    def rn(self) -> str:
        rn: str = self.attrs["rn"]
        return rn

    @property
    def pi(self) -> str:
        pi: str = self.attrs["pi"]
        return pi

    @property
    def ty(self) -> int:
        return self.kind.ty

    @property
    def pc(self) -> dict[str, Any]:
        """``{"m2m:<short>": attrs}``, built once per version of ``attrs``."""
        pc = self._pc
        if pc is None:
            pc = self._pc = {self.kind.key: self.attrs}
        return pc

    def replace(self, changes: Mapping[str, Any]) -> None:
        """Copy on write: apply ``changes`` (``None`` removes) to a new ``attrs`` mapping."""
        attrs = dict(self.attrs)
        for name, value in changes.items():
            if value is None:
                attrs.pop(name, None)
            else:
                attrs[name] = value
        self.attrs = attrs
        self._pc = None

    def __repr__(self) -> str:
        return f"<Resource {self.kind.short} {self.ri} {self.srn}>"
