"""Device management: ``<node>`` (ty 14, TS-0001 9.6.18) and ``<mgmtObj>`` (ty 13, TS-0001
9.6.15, its specializations in TS-0001 annex D and TS-0004 Table 6.3.4.2.x: ``mgd``).

A ``<node>`` stands for a device; its ``hael`` (hostedAELinks) lists the AEs it hosts, and an
AE's ``nl`` (nodeLink) names its node. A ``<mgmtObj>`` under it is one of the specializations
below, told apart by the key of its content (``m2m:bat``) and its ``mgd`` (1006), with the
attributes of that specialization validated (mandatory ones, types, ranges).

An UPDATE that sets an action attribute true (reboot's ``rbo`` or ``far``, firmware's ``ud``,
software's ``in``/``un``/``act``/``dea``, ...) is carried out by the device: the CSE sends the
device's AE (the first of the node's ``hael`` that is registered here, else an AE whose ``nl``
names the node) a NOTIFY whose content is ``{"m2m:rbo": {"ri": ..., "mgd": 1009, "rbo": true}}``
(we did not find the content TS-0004 prescribes for this; the device's answer is what
matters), over its connection (or its polling channel, or its poa, as any request to it). The
UPDATE is made and answered 2004 when the device answers 2000 (any 2xxx); else it is refused
with the device's rsc; 5103 when no AE of the device is known or reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from acmews.codes import Operation, ResourceType
from acmews.cse.resource import (
    CSEServices,
    Resource,
    ResourceKind,
    ResourceReader,
    Validator,
    make_kind,
    register_kind,
    v_bool,
    v_nonneg_int,
    v_str,
    v_str_list,
)
from acmews.errors import BadRequest, RemoteError, TargetNotReachable
from acmews.primitive import Request, Response

__all__ = ["MGMT_OBJ", "NODE", "SPECIALIZATIONS", "MgmtObjKind"]

_R = ResourceType


def _v_range(low: int, high: int) -> Validator:
    def check(name: str, value: Any) -> Any:
        v_nonneg_int(name, value)
        if not low <= value <= high:
            raise BadRequest(f"attribute '{name}' must be from {low} to {high}")
        return value

    return check


def _v_mgd(mgd: int) -> Validator:
    def check(name: str, value: Any) -> Any:
        if value != mgd or isinstance(value, bool):
            raise BadRequest(f"'mgd' must be {mgd} for this mgmtObj specialization")
        return value

    return check


#: TS-0001 9.6.15: the attributes of every mgmtObj besides the common ones
_COMMON_MGMT: dict[str, Validator] = {
    "dc": v_str,  # description
    "objs": v_str_list,  # objectIDs
    "obps": v_str_list,  # objectPaths
    "cmlk": v_str,  # mgmtLink
}

#: short name -> (long name, mgd, own attributes, mandatory, action attributes); TS-0001
#: annex D, TS-0004 Table 6.3.4.2.x (mgmtDefinition)
SPECIALIZATIONS: dict[str, tuple[str, int, dict[str, Validator], set[str], set[str]]] = {
    "fwr": (
        "firmware",
        1001,
        {"vr": v_str, "fwn": v_str, "url": v_str, "ud": v_bool},
        {"vr", "fwn", "url", "ud"},
        {"ud"},
    ),
    "swr": (
        "software",
        1002,
        {
            "vr": v_str,
            "swn": v_str,
            "url": v_str,
            "in": v_bool,
            "un": v_bool,
            "act": v_bool,
            "dea": v_bool,
        },
        {"vr", "swn", "url", "in", "un", "act", "dea"},
        {"in", "un", "act", "dea"},
    ),
    "mem": ("memory", 1003, {"mma": v_nonneg_int, "mmt": v_nonneg_int}, {"mma", "mmt"}, set()),
    "ani": ("areaNwkInfo", 1004, {"ant": v_str, "ldv": v_str_list}, {"ant", "ldv"}, set()),
    "bat": (
        "battery",
        1006,
        {"btl": _v_range(0, 100), "bts": _v_range(1, 7)},
        {"btl", "bts"},
        set(),
    ),
    "dvi": (
        "deviceInfo",
        1007,
        {
            name: v_str
            for name in (
                "dlb",
                "man",
                "mod",
                "dty",
                "fwv",
                "swv",
                "hwv",
                "osv",
                "cnty",
                "loc",
                "spur",
                "purl",
                "dvnm",
            )
        },
        {"dlb", "man", "mod", "dty"},
        set(),
    ),
    "dvc": (
        "deviceCapability",
        1008,
        {"can": v_str, "att": v_bool, "cus": v_bool, "ena": v_bool, "dis": v_bool},
        {"can", "att", "cus"},
        {"ena", "dis"},
    ),
    "rbo": ("reboot", 1009, {"rbo": v_bool, "far": v_bool}, {"rbo", "far"}, {"rbo", "far"}),
    "evl": (
        "eventLog",
        1010,
        {"lgt": v_nonneg_int, "lgd": v_str_list, "lga": v_bool, "lgo": v_bool},
        {"lgt", "lgd"},
        {"lga", "lgo"},
    ),
}


class NodeKind(ResourceKind):
    """A ``<node>``: ``ni`` mandatory; ``hael`` lists the AEs it hosts."""

    __slots__ = ()


#: the <node> kind, registered with the others
NODE = register_kind(
    make_kind(
        NodeKind,
        _R.NOD,
        "nod",
        "node",
        {
            "ni": v_str,
            "hcl": v_str,
            "hael": v_str_list,
            "hsl": v_str_list,
            "mgca": v_str,
            "nid": v_str,
            "nt": v_nonneg_int,
        },
        frozenset({"ni"}),
        {"lbl", "acpi", "et", "ni", "hcl", "hael", "hsl", "mgca", "nid", "nt"},
        {_R.MGMTOBJ, _R.SUB},
        parents={_R.CSEBASE},
    )
)


class MgmtObjKind(ResourceKind):
    """A ``<mgmtObj>`` (ty 13): the generic kind is registered; each resource is of one
    specialization's kind (:meth:`specialize`), whose actions the device carries out."""

    __slots__ = ()
    specialized = True

    def specialize(self, pc: Any = None, attrs: Mapping[str, Any] | None = None) -> ResourceKind:
        if attrs is not None:
            kind = _BY_MGD.get(attrs.get("mgd"))  # type: ignore[arg-type]
            if kind is not None:
                return kind
        if isinstance(pc, dict) and len(pc) == 1:
            key = next(iter(pc))
            if isinstance(key, str) and key.startswith("m2m:") and key[4:] in _KINDS:
                return _KINDS[key[4:]]
        known = ", ".join(f"m2m:{short} ({spec[1]})" for short, spec in SPECIALIZATIONS.items())
        raise BadRequest(f"a mgmtObj's content must be one of {known}")

    def confirm_update(
        self,
        cse: CSEServices,
        originator: str | None,
        resource: Resource,
        changes: dict[str, Any],
    ) -> Deferred[None] | None:
        actions = {a: True for a in _ACTIONS.get(self.short, ()) if changes.get(a) is True}
        if not actions:
            return None
        store = cse.store
        node = store.get(resource.attrs["pi"])
        ae = _device_ae(store, node) if node is not None else None
        sender = getattr(cse, "polling", None)  # the CSE's sender (acmews.cse.polling)
        if ae is None or sender is None:
            raise TargetNotReachable(
                f"no AE of the device of {resource.srn!r} is registered here (its node's hael, "
                "or an AE's nl)"
            )
        aei = ae.kind.originator_of(ae)
        config = cse.config
        request = Request(
            Operation.NOTIFY,
            aei,
            cse.new_id("mgmt"),
            config.release,
            fr=config.cse_id,
            pc={self.key: {"ri": resource.ri, "mgd": resource.attrs["mgd"], **actions}},
        )
        d = maybeDeferred(sender.send, aei, request, poa=tuple(ae.attrs.get("poa", ())))
        return d.addCallback(_device_answered, aei)


def _device_ae(store: ResourceReader, node: Resource) -> Resource | None:
    """The AE that carries out ``node``'s management actions."""
    for link in node.attrs.get("hael", ()):
        ae = store.get(link.rstrip("/").rsplit("/", 1)[-1])
        if ae is not None and ae.kind.registrant:
            return ae
    base = store.get(node.attrs["pi"])
    if base is not None:
        for ae in store.children(base.ri, _R.AE):
            nl = ae.attrs.get("nl")
            if nl is not None and nl.rstrip("/").rsplit("/", 1)[-1] == node.ri:
                return ae
    return None


def _device_answered(response: Response, aei: str) -> None:
    if not 2000 <= int(response.rsc) < 3000:
        raise RemoteError(
            f"the device's AE {aei} refused the management action: {response.debug or ''}",
            response.rsc,
            response.debug,
        )


def _kind(short: str) -> MgmtObjKind:
    name, mgd, own, mandatory, _ = SPECIALIZATIONS[short]
    attributes = {"mgd": _v_mgd(mgd), **_COMMON_MGMT, **own}
    kind = make_kind(
        MgmtObjKind,
        _R.MGMTOBJ,
        short,
        name,
        attributes,
        frozenset({"mgd", *mandatory}),
        {"lbl", "acpi", "et", *_COMMON_MGMT, *own},
        {_R.SUB},
        parents={_R.NOD},
    )
    assert isinstance(kind, MgmtObjKind)
    return kind


#: the kind of each specialization, by its short name
_KINDS: dict[str, MgmtObjKind] = {short: _kind(short) for short in SPECIALIZATIONS}
_BY_MGD = {SPECIALIZATIONS[short][1]: kind for short, kind in _KINDS.items()}
_ACTIONS = {short: spec[4] for short, spec in SPECIALIZATIONS.items()}

#: the generic <mgmtObj> kind registered for ty 13 (a resource is of its specialization's)
MGMT_OBJ = register_kind(
    make_kind(MgmtObjKind, _R.MGMTOBJ, "mgo", "mgmtObj", {}, frozenset(), set(), set())
)
