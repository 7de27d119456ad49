"""The built-in resource types and what is particular to each (the :class:`ResourceKind`
hooks): AE registration, container limits, contentInstance size and counters, subscription
defaults, verification and deletion notice, ACP self-privileges.

Importing this module registers them in :data:`~acmews.cse.resource.KINDS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import Deferred

from acmews.codes import ResourceType
from acmews.cse.resource import (
    Changes,
    CSEServices,
    Resource,
    ResourceKind,
    ResourceReader,
    content_size,
    make_kind,
    register_kind,
    v_any,
    v_api,
    v_bool,
    v_content_info,
    v_entity_id,
    v_nonneg_int,
    v_nu,
    v_pos_int,
    v_privileges,
    v_serializations,
    v_str,
    v_str_list,
    v_timestamp,
)
from acmews.cse.subscription import (
    check_create,
    check_update,
    v_batch_notify,
    v_enc,
    v_nct,
    v_subscription_nu,
)
from acmews.errors import (
    BadRequest,
    Conflict,
    NotAcceptable,
    NotFound,
    OriginatorHasAlreadyRegistered,
    OriginatorHasNoPrivilege,
)

__all__ = [
    "BUILTIN_KINDS",
    "CSE_BASE",
    "ACPKind",
    "AEKind",
    "CSEBaseKind",
    "ContainerKind",
    "InstanceKind",
    "SubscriptionKind",
]

_CIN = ResourceType.CIN


class CSEBaseKind(ResourceKind):
    """The CSEBase: exists from the start, is never created or deleted by a request."""

    __slots__ = ()
    creatable = False
    deletable = False


class AEKind(ResourceKind):
    """An AE: its CREATE registers the originator, and the AE-ID is its ``ri`` and ``aei``."""

    __slots__ = ()
    registrant = True
    id_attribute = "aei"

    def identify(
        self, cse: CSEServices, originator: str | None, parent: Resource
    ) -> tuple[str, str | None]:
        """The AE-ID for an AE CREATE from ``originator``: assigned, or the requested one if
        free. The AE is its own creator (so it may do anything to its subtree)."""
        aei = _register(cse, originator)
        return aei, aei

    def created_content(self, resource: Resource, pc: Any) -> Any:
        if pc is None:
            # the protocol layer binds an unbound connection to the aei it reads here
            pc = {self.key: {"aei": resource.ri}}
        return pc


def _register(cse: CSEServices, fr: str | None) -> str:
    store = cse.store
    if not fr or fr == "C":
        return cse.new_id("C")
    if fr[0] not in "CS" or "/" in fr:
        raise BadRequest(
            f"an AE originator must be empty, 'C', or an AE-ID starting with C or S: {fr!r}"
        )
    if fr == cse.config.admin:
        # the protocol layer binds a connection to the aei it gets: never to the admin
        raise OriginatorHasAlreadyRegistered(f"the AE-ID {fr!r} is reserved")
    if store.get(fr) is not None:
        raise OriginatorHasAlreadyRegistered(f"the AE-ID {fr!r} is already registered")
    return fr


class ContainerKind(ResourceKind):
    """A container: counts its instances (``cni``, ``cbs``) and keeps them within ``mni`` and
    ``mbs`` by deleting the oldest; ``la``/``ol`` name its latest and oldest instance."""

    __slots__ = ()
    virtual = frozenset({"la", "ol"})
    #: the type of the instances it holds (a timeSeries holds timeSeriesInstances)
    instance_ty: ClassVar[int] = _CIN

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        attrs["cni"] = 0
        attrs["cbs"] = 0
        attrs["st"] = 0  # TS-0001 9.6.6: stateTag, 0 at creation

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        # TS-0001 9.6.6: the stateTag counts every modification (also a new instance)
        changes["st"] = resource.attrs.get("st", 0) + 1

    def updated(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        enforce_limits(cse, batch, resource, self.instance_ty)  # a smaller mni or mbs

    def virtual_child(self, store: ResourceReader, resource: Resource, which: str) -> Resource:
        return latest_or_oldest(store, resource, which, self.instance_ty, "instance")


def latest_or_oldest(
    store: ResourceReader, resource: Resource, which: str, ty: int, what: str
) -> Resource:
    """The latest (``la``) or else the oldest child of type ``ty`` (a ``what``) of
    ``resource``; 4004 without any."""
    if which == "la":
        child = store.latest_child(resource.ri, ty)
    else:
        child = store.oldest_child(resource.ri, ty)
    if child is None:
        raise NotFound(f"{resource.kind.name} {resource.srn!r} has no {what} ({which})")
    return child


def enforce_limits(cse: CSEServices, batch: Changes, container: Resource, ty: int = _CIN) -> None:
    """Delete the oldest instances (of type ``ty``) of ``container`` until ``mni`` and
    ``mbs`` hold."""
    while True:
        attrs = container.attrs
        mni = attrs.get("mni")
        mbs = attrs.get("mbs")
        if (mni is None or attrs["cni"] <= mni) and (mbs is None or attrs["cbs"] <= mbs):
            return
        oldest = batch.oldest_child(container.ri, ty)  # not one the batch removed already
        if oldest is None:
            return
        cse.delete_tree(batch, oldest, container)


class InstanceKind(ResourceKind):
    """A contentInstance: never updated; its size ``cs`` counts in its container."""

    __slots__ = ()
    immutable = True

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        attrs["cs"] = cs = content_size(attrs["con"])
        pattrs = parent.attrs
        mbs = pattrs.get("mbs")
        if mbs is not None and cs > mbs:
            raise NotAcceptable(
                f"{self.name} size {cs} exceeds the {parent.kind.name}'s mbs {mbs}"
            )
        # TS-0001 9.6.7: the container's stateTag goes up first and the instance gets it
        attrs["st"] = pattrs.get("st", 0) + 1

    def created(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        attrs = parent.attrs
        new = resource.attrs
        parent.replace({"cni": attrs["cni"] + 1, "cbs": attrs["cbs"] + new["cs"], "st": new["st"]})
        batch.update(parent)
        enforce_limits(cse, batch, parent, self.ty)

    def detached(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        attrs = parent.attrs
        parent.replace({"cni": attrs["cni"] - 1, "cbs": attrs["cbs"] - resource.attrs["cs"]})
        batch.update(parent)


def v_cse_id(name: str, value: Any) -> Any:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith("//")
        or len(value) < 2
        or len(value) > 255
        or any(c.isspace() for c in value)
    ):
        raise BadRequest(f"attribute '{name}' must be a CSE-ID like /id-mn")
    return value


def v_cse_type(name: str, value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool) or value not in (1, 2, 3):
        raise BadRequest(f"attribute '{name}' must be 1 (IN), 2 (MN) or 3 (ASN)")
    return value


class RemoteCSEKind(ResourceKind):
    """A remoteCSE: another CSE registered here. Its CREATE comes from that CSE (its CSE-ID
    as the originator, which must be ``csi``, and allowed by ``allowed_csr_originators``);
    its resource ID and default name are the CSE-ID without its slash. The same CSE
    registering again gets 4105: it UPDATEs its registration (or DELETEs and CREATEs it).
    Requests for that CSE, or for a CSE in its ``dcse``, are forwarded to it."""

    __slots__ = ()
    registrant = True

    def identify(
        self, cse: CSEServices, originator: str | None, parent: Resource
    ) -> tuple[str, str | None]:
        if not originator or not originator.startswith("/") or originator.startswith("//"):
            raise OriginatorHasNoPrivilege("only a CSE (originator /cse-id) registers a remoteCSE")
        ri = originator[1:]
        if "/" in ri:
            raise BadRequest(f"a CSE-ID has one slash: {originator!r}")
        if cse.store.get(ri) is not None:
            raise Conflict(
                f"{originator} is registered already: UPDATE {cse.config.cse_name}/{ri} "
                "(or DELETE it and register again)"
            )
        return ri, originator

    def confirm(
        self, cse: CSEServices, originator: str | None, resource: Resource
    ) -> Deferred[None] | None:
        if resource.attrs["csi"] != originator:
            raise OriginatorHasNoPrivilege(
                f"csi {resource.attrs['csi']!r} must be the originator {originator!r}"
            )
        return None

    def originator_of(self, resource: Resource) -> str:
        csi: str = resource.attrs["csi"]
        return csi


class SubscriptionKind(ResourceKind):
    """A subscription (TS-0004 7.4.8): its attributes are checked together and completed
    with their defaults (:mod:`acmews.cse.subscription`); its notification targets are
    verified before it is created, and new ones before an UPDATE that adds them; its pending
    batch and its deletion notice to ``su`` go out before its DELETE is answered."""

    __slots__ = ()

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        check_create(attrs, parent, cse.store.children(parent.ri, ResourceType.SUB))

    def confirm(
        self, cse: CSEServices, originator: str | None, resource: Resource
    ) -> Deferred[None] | None:
        return cse.verify(resource, originator)

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        if "enc" in changes and changes["enc"] is None:
            changes["enc"] = {"net": [1]}  # removing enc restores its default
        check_update(changes, resource.attrs, cse.store.get(resource.pi))

    def confirm_update(
        self,
        cse: CSEServices,
        originator: str | None,
        resource: Resource,
        changes: dict[str, Any],
    ) -> Deferred[None] | None:
        """TS-0004 7.4.8.2.3: notification targets an UPDATE adds are verified first."""
        nu = changes.get("nu")
        if nu is None:
            return None
        known = set(resource.attrs["nu"])
        added = [n for n in nu if n not in known]
        return cse.verify(resource, originator, added) if added else None

    def deleted(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        cse.subscription_deleted(batch, resource)


def v_subscription_targets(name: str, value: Any) -> Any:
    return v_subscription_nu(name, v_nu(name, value))


class ACPKind(ResourceKind):
    """An accessControlPolicy: grants its ``pv``; is itself accessed under its ``pvs``, which
    may not be empty (no one could ever change or delete the ACP again)."""

    __slots__ = ()

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        _nonempty_pvs(attrs["pvs"])

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        pvs = changes.get("pvs")
        if pvs is not None:
            _nonempty_pvs(pvs)

    def own_privileges(self, resource: Resource) -> dict[str, Any] | None:
        pvs: dict[str, Any] = resource.attrs["pvs"]
        return pvs

    def granted_privileges(self, resource: Resource) -> dict[str, Any] | None:
        pv: dict[str, Any] = resource.attrs["pv"]
        return pv


def _nonempty_pvs(pvs: dict[str, Any]) -> None:
    """4000 for ``pvs`` without a rule: an ACP no one but the admin could change or delete
    (TS-0004 leaves it open; the reference implementation refuses it too)."""
    if not pvs.get("acr"):
        raise BadRequest("attribute 'pvs' must hold at least one access control rule")


_R = ResourceType
#: the CSEBase kind (the CSE makes its CSEBase of it)
CSE_BASE = make_kind(
    CSEBaseKind,
    _R.CSEBASE,
    "cb",
    "CSEBase",
    {"poa": v_str_list},
    frozenset(),
    {"lbl", "acpi", "poa"},
    {_R.AE, _R.CNT, _R.ACP, _R.SUB},
    ("lbl", "acpi"),
)
#: the kinds registered by importing this module
BUILTIN_KINDS: tuple[ResourceKind, ...] = (
    CSE_BASE,
    make_kind(
        AEKind,
        _R.AE,
        "ae",
        "AE",
        {
            "api": v_api,
            "apn": v_str,
            "rr": v_bool,
            "poa": v_str_list,
            "srv": v_str_list,
            "csz": v_serializations,
            "nl": v_str,  # nodeLink: its <node> (acmews.cse.mgmt)
        },
        frozenset({"api", "rr"}),
        {"lbl", "acpi", "et", "apn", "rr", "poa", "srv", "csz", "nl"},
        {_R.CNT, _R.SUB, _R.ACP},
    ),
    make_kind(
        ContainerKind,
        _R.CNT,
        "cnt",
        "container",
        {"mni": v_nonneg_int, "mbs": v_nonneg_int, "disr": v_bool, "cstn": v_entity_id},
        frozenset(),
        {"lbl", "acpi", "et", "mni", "mbs", "disr", "cstn"},
        {_R.CNT, _R.CIN, _R.SUB},
        ("rn", "lbl", "acpi", "et", "cr"),
    ),
    make_kind(
        InstanceKind,
        _R.CIN,
        "cin",
        "contentInstance",
        {"con": v_any, "cnf": v_content_info, "dgt": v_timestamp, "dcnt": v_nonneg_int},
        frozenset({"con"}),
        set(),
        set(),
        ("rn", "lbl", "et", "cr"),
    ),
    make_kind(
        SubscriptionKind,
        _R.SUB,
        "sub",
        "subscription",
        {
            "nu": v_subscription_targets,
            "enc": v_enc,
            "nct": v_nct,
            "su": v_str,
            "exc": v_pos_int,
            "bn": v_batch_notify,
            "ln": v_bool,
            "nse": v_bool,
            "eeno": v_bool,
        },
        frozenset({"nu"}),
        {"lbl", "acpi", "et", "nu", "enc", "nct", "su", "exc", "bn", "ln", "nse", "eeno"},
        set(),
        ("rn", "lbl", "acpi", "et", "cr"),
    ),
    make_kind(
        RemoteCSEKind,
        _R.CSR,
        "csr",
        "remoteCSE",
        {
            "csi": v_cse_id,
            "cb": v_str,
            "rr": v_bool,
            "poa": v_str_list,
            "srv": v_str_list,
            "cst": v_cse_type,
            "dcse": v_str_list,
            "nl": v_str,
            "csz": v_str_list,
            # what ACME's registree also sends: its SP-ID, stateTag and ici
            "spi": v_str,
            "st": v_nonneg_int,
            "ici": v_any,
        },
        frozenset({"csi", "rr"}),
        {"lbl", "acpi", "et", "rr", "poa", "srv", "dcse", "nl", "csz", "spi", "st", "ici"},
        {_R.CNT, _R.SUB, _R.ACP},
        parents={_R.CSEBASE},
    ),
    make_kind(
        ACPKind,
        _R.ACP,
        "acp",
        "accessControlPolicy",
        {"pv": v_privileges, "pvs": v_privileges},
        frozenset({"pv", "pvs"}),
        {"lbl", "et", "pv", "pvs"},
        set(),
        ("rn", "lbl", "et"),
    ),
)
for _kind in BUILTIN_KINDS:
    register_kind(_kind)
