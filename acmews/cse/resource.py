"""Resources of the embedded CSE, the validators and the registry of kinds keyed by ``ty``.

A :class:`Resource` holds its oneM2M representation in ``attrs``. That mapping is never
changed in place once stored: :meth:`Resource.replace` builds a new one. So a representation
handed out in a response (without copying, which keeps RETRIEVE cheap) never changes under
the encoder's feet.

New resource types (remoteCSE, group, ...) are added by registering a :class:`ResourceKind`
(a subclass with the type's hooks) in :data:`KINDS`; :mod:`acmews.cse.kinds` registers the
built-in ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from acmews.codes import ACOP, ResourceType
from acmews.cse.rules import RULE_EXTRAS, validate_rule_extras
from acmews.errors import BadRequest, NotFound
from acmews.primitive import is_int_not_bool

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from acmews.cse.config import CSEConfig
    from acmews.primitive import Request, Response

__all__ = [
    "KINDS",
    "CSEServices",
    "Record",
    "Resource",
    "ResourceKind",
    "content_size",
    "register_kind",
]

Validator = Callable[[str, Any], Any]

_TIMESTAMP = re.compile(r"^\d{8}T\d{6}(,\d{1,6})?$")
#: TS-0001 9.6.1.3.1 resourceName: only the unreserved characters of RFC 3986 (section 2.3)
_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")
#: TS-0004 6.3.3 m2m:labels is a list of xs:token: no leading, trailing or double spaces,
#: no tabs or line breaks (and, as the reference implementations have it, not empty)
_TOKEN = re.compile(r"^[^\s](?:[^\s]| (?! ))*(?<! )$")
#: TS-0004 6.3.5 m2m:contentInfo: ``type/subtype[:encoding]``, encoding 0 plain,
#: 1 base64-encoded string, 2 base64-encoded binary
_CONTENT_INFO = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(:[0-2])?$")
#: TS-0004 6.7: the MIME types of the oneM2M serializations (an AE's ``csz``)
SERIALIZATIONS = frozenset({"application/json", "application/cbor", "application/xml"})
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


#: TS-0004 leaves these to the implementation; beyond them a request gets 4000
MAX_NAME = 255
MAX_LIST = 256
MAX_LIST_ITEM = 2048
MAX_NU = 64
#: levels of resources below the CSEBase (rcn 4/8, discovery and DELETE walk no deeper)
MAX_DEPTH = 32


def v_str_list(name: str, value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"attribute '{name}' must be a list of strings")
    if len(value) > MAX_LIST or any(len(v) > MAX_LIST_ITEM for v in value):
        raise BadRequest(
            f"attribute '{name}' may hold at most {MAX_LIST} strings of at most "
            f"{MAX_LIST_ITEM} characters"
        )
    return value


def v_nu(name: str, value: Any) -> Any:
    v_nonempty_str_list(name, value)
    if len(value) > MAX_NU:
        raise BadRequest(f"attribute '{name}' may hold at most {MAX_NU} targets")
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
    if len(value) > MAX_NAME:
        raise BadRequest(f"attribute '{name}' may be at most {MAX_NAME} characters long")
    return _matching(
        _NAME,
        name,
        value,
        "may hold only letters, digits and '-', '.', '_', '~' (the unreserved characters of "
        "RFC 3986, TS-0001 9.6.1.3.1)",
    )


def _matching(pattern: re.Pattern[str], name: str, value: Any, says: str) -> Any:
    """``value``, a string ``pattern`` matches (of at most :data:`MAX_NAME` characters);
    else 4000: attribute ``name`` ``says``."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not pattern.match(value):
        raise BadRequest(f"attribute '{name}' {says}")
    return value


def v_labels(name: str, value: Any) -> Any:
    """``lbl``: a list of xs:token (TS-0004 6.3.3 m2m:labels)."""
    v_str_list(name, value)
    for label in value:
        if not _TOKEN.match(label):
            raise BadRequest(
                f"attribute '{name}' holds {label!r}: a label is not empty and has no "
                "leading, trailing or double spaces, tabs or line breaks"
            )
    return value


def v_creator(name: str, value: Any) -> Any:
    """``cr`` in a CREATE: only ``null`` (TS-0004 7.4.x: the hosting CSE then sets it to the
    originator); a value of its own is not the originator's to give (4000)."""
    raise BadRequest(f"attribute '{name}' is set by the CSE: send it as null to ask for it")


def v_entity_id(name: str, value: Any) -> Any:
    """An AE-ID or CSE-ID (``cstn``): a non-empty string without white space."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_NAME
        or any(c.isspace() for c in value)
    ):
        raise BadRequest(f"attribute '{name}' must be an AE-ID or CSE-ID")
    return value


def v_content_info(name: str, value: Any) -> Any:
    """``cnf``: ``type/subtype`` and optionally ``:encoding`` 0-2 (TS-0004 6.3.5)."""
    return _matching(
        _CONTENT_INFO,
        name,
        value,
        "must be 'type/subtype' or 'type/subtype:encoding' with encoding 0 (plain), "
        "1 (base64 string) or 2 (base64 binary)",
    )


def v_serializations(name: str, value: Any) -> Any:
    """An AE's ``csz``: MIME types of oneM2M serializations (TS-0004 6.7)."""
    v_nonempty_str_list(name, value)
    unknown = [v for v in value if v not in SERIALIZATIONS]
    if unknown:
        raise BadRequest(
            f"attribute '{name}' may hold only {', '.join(sorted(SERIALIZATIONS))}: not "
            f"{unknown[0]!r}"
        )
    return value


def v_api(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or value[0] not in "NR":
        raise BadRequest(f"attribute '{name}' (App-ID) must be a string starting with N or R")
    return value


def v_any(name: str, value: Any) -> Any:
    return value


def v_privileges(name: str, value: Any) -> Any:
    """``{"acr": [{"acor": [...], "acop": 1..63, ...}, ...]}``; a rule may also hold
    ``acco``, ``acod``, ``aca`` and ``acaf`` (see :mod:`acmews.cse.rules`)."""
    if not isinstance(value, dict) or set(value) - {"acr"}:
        raise BadRequest(f"attribute '{name}' must be an object with only 'acr'")
    rules = value.get("acr", [])
    if not isinstance(rules, list):
        raise BadRequest(f"'{name}.acr' must be a list")
    if len(rules) > MAX_LIST:
        raise BadRequest(f"'{name}.acr' may hold at most {MAX_LIST} rules")
    for rule in rules:
        if not isinstance(rule, dict) or not {"acor", "acop"} <= rule.keys():
            raise BadRequest(f"each '{name}.acr' rule must have 'acor' and 'acop'")
        unknown = rule.keys() - {"acor", "acop"} - RULE_EXTRAS
        if unknown:
            raise BadRequest(
                f"'{name}.acr' rules may not hold {', '.join(sorted(map(str, unknown)))}"
            )
        v_nonempty_str_list(f"{name}.acr.acor", rule["acor"])
        acop = rule["acop"]
        if not is_int_not_bool(acop) or not 1 <= acop <= 63:
            raise BadRequest(f"'{name}.acr.acop' must be an integer 1-63")
        if len(rule) > 2:
            validate_rule_extras(f"{name}.acr", rule)
    return {"acr": rules}


def content_size(con: Any) -> int:
    """``cs``: the UTF-8 length of ``con`` (serialized as JSON when it is not a string).

    The JSON is what ``oneM2M.json`` would send (integer keys, integers beyond 64 bits); 4000
    for content JSON cannot carry at all (a CBOR byte string or tag, say).
    """
    if isinstance(con, str):
        return len(con.encode("utf-8"))
    try:
        return len(orjson.dumps(con, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        pass  # integers beyond 64 bits (the stdlib writes them), or no JSON at all
    try:
        text = json.dumps(con, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise BadRequest(
            "attribute 'con' must be JSON-compatible content (a string, number, boolean, "
            "null, list or object)"
        ) from None
    return len(text.encode("utf-8"))


# --- kinds ------------------------------------------------------------------------------------

COMMON: dict[str, Validator] = {
    "rn": v_rn,
    "lbl": v_labels,
    "acpi": v_str_list,
    "et": v_timestamp,
    "cr": v_creator,
}


class ResourceReader(Protocol):
    """Reads of the resource tree (a store, or a batch that sees its own changes)."""

    def get(self, ri: str) -> Resource | None: ...

    def child(self, pi: str, rn: str) -> Resource | None: ...

    def children(self, pi: str, ty: int | None = None) -> Sequence[Resource]: ...

    def oldest_child(self, pi: str, ty: int) -> Resource | None: ...

    def latest_child(self, pi: str, ty: int) -> Resource | None: ...


#: a resolved notification target: (next hop, its poa, registered, the request's ``to``);
#: the hop is the target itself except for an ``nu`` on another CSE
Target = tuple[str, tuple[str, ...], bool, str]
#: one notification a request causes: where it goes, its content, and a tag that only the
#: notifier reads (None: send it as it is; else a plain subscription, whose content is the
#: event alone, or which subscription's policy applies)
Delivery = tuple[Target, dict[str, Any], object]


class Changes(ResourceReader, Protocol):
    """One request's changes as the hooks see them (an :class:`acmews.cse.store.Batch`);
    defined here, beside the hooks, so that this module needs nothing from the store."""

    #: the request making the changes (its operation and originator, for the subscriptions
    #: that monitor operations), or None for the CSE's own changes
    request: Request | None

    def add(self, resource: Resource) -> None: ...

    def update(self, resource: Resource) -> None: ...

    def remove(self, resource: Resource) -> None: ...

    def gone(self, resource: Resource) -> bool: ...

    def types(self) -> AbstractSet[int]: ...

    def notify(
        self,
        targets: Iterable[Target],
        pc: dict[str, Any],
        tag: object = None,
        urgent: bool = False,
    ) -> None: ...

    def notify_one(self, target: Target, pc: dict[str, Any], tag: object = None) -> None: ...


class CSEServices(Protocol):
    """What the CSE offers the hooks of a :class:`ResourceKind` (the CSE provides it).

    A hook that changes resources records the change in the request's ``batch`` (and reads
    through it, which sees those changes); the store gets the whole batch at the end.
    """

    @property
    def store(self) -> ResourceReader:
        """The store (for reads before the first change; after it, read through the batch)."""

    @property
    def config(self) -> CSEConfig: ...

    def check(self, originator: str | None, resource: Resource, acop: ACOP) -> None:
        """Raise 4103 unless ``originator`` may do ``acop`` to ``resource``."""

    def new_id(self, prefix: str) -> str:
        """A new resource ID starting with ``prefix``, never used before in this store."""

    def find(self, address: str) -> Resource | None:
        """The resource of this CSE ``address`` names (an ID or any address form), or None."""

    def foreign_cse(self, address: str) -> str | None:
        """The CSE-ID ``address`` names when that is another CSE, else None."""

    def retrieve_remote(self, address: str, originator: str | None) -> Deferred[Response]:
        """RETRIEVE ``address`` on another CSE as ``originator``: its answer, a Response
        whatever happens (4008 past the group member timeout)."""

    def new_ri(self, kind: ResourceKind) -> str:
        """A fresh resource ID for a resource of ``kind``."""

    def delete_tree(self, batch: Changes, resource: Resource, parent: Resource) -> None:
        """Delete ``resource`` (a child of ``parent``) and its subtree, with their events."""

    def notify(self, batch: Changes, nus: Sequence[str], pc: dict[str, Any]) -> None:
        """Add to ``batch`` the notification ``pc`` for ``nus``: sent once it is applied."""

    def sur(self, sub: Resource) -> str:
        """The subscription reference of ``sub``."""

    def verify(
        self, sub: Resource, originator: str | None, nus: Sequence[str] | None = None
    ) -> Deferred[None]:
        """Verify the notification targets of ``sub`` (only ``nus`` if given); fail with
        5204."""

    def subscription_deleted(self, batch: Changes, sub: Resource) -> None:
        """``sub`` is being deleted in ``batch``: its pending batch of notifications and its
        deletion notice (to ``su``) go out before the response."""


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """What the CSE must know about one resource type.

    The fields say which attributes an originator may set and change, and which children a
    resource of this kind may have. What is particular to a type beyond that is in the hooks
    below, overridden by a subclass (see :mod:`acmews.cse.kinds`); the defaults are those of
    an ordinary resource. The CSE calls them in this order:

    - CREATE: :meth:`identify`, :meth:`prepare_create` (both may refuse; nothing has changed
      yet), :meth:`confirm` (may make the CSE wait, or refuse), then the resource is added to
      the request's batch and :meth:`created` runs, then the batch is applied and
      :meth:`created_content` shapes the response.
    - UPDATE: :attr:`immutable` refuses, :meth:`prepare_update` may adjust the changes (or
      refuse), :meth:`confirm_update` may make the CSE wait (or refuse), then they are made
      and :meth:`updated` runs.
    - DELETE: :attr:`deletable` refuses; then for each resource of the subtree, children
      first, :meth:`deleted`; then :meth:`detached` for the subtree's root and its parent.

    A hook may refuse (raise a :class:`~acmews.errors.OneM2MError`) only before the first
    change; the ones that run after it record what they change in the request's batch.
    """

    ty: ResourceType
    short: str
    #: attributes an originator may set on CREATE, with their validators
    attributes: Mapping[str, Validator]
    mandatory: frozenset[str] = frozenset()
    #: attributes an originator may change on UPDATE (a subset of ``attributes``)
    updatable: frozenset[str] = frozenset()
    children: frozenset[int] = frozenset()
    #: the long name, for messages (``contentInstance``)
    name: str = ""
    #: types it may be created under, besides those that list it in their ``children``: a
    #: new kind (remoteCSE under the CSEBase, say) is added without touching its parents
    parents: frozenset[int] = frozenset()
    key: str = field(init=False)

    #: an originator may CREATE one (False: the CSEBase, which exists from the start)
    creatable: ClassVar[bool] = True
    #: an originator may DELETE one
    deletable: ClassVar[bool] = True
    #: no UPDATE at all (4005), whatever the body
    immutable: ClassVar[bool] = False
    #: it stands for a registered originator (an AE): its ``ri`` is that originator's ID and
    #: its ``poa`` the originator's points of access; it receives NOTIFY requests, and
    #: notifications to it may wait in store-and-forward
    registrant: ClassVar[bool] = False
    #: an attribute that repeats the resource ID (an AE's ``aei``)
    id_attribute: ClassVar[str | None] = None
    #: names of virtual children (a container's ``la``/``ol``), see :meth:`virtual_child`
    virtual: ClassVar[frozenset[str]] = frozenset()
    #: one ``ty``, several kinds (a mgmtObj per ``mgd``): see :meth:`specialize`
    specialized: ClassVar[bool] = False

    def specialize(self, pc: Any = None, attrs: Mapping[str, Any] | None = None) -> ResourceKind:
        """The kind of a resource of this ``ty`` (when :attr:`specialized`): by a CREATE's
        content ``pc``, or by a stored resource's ``attrs``; 4000 for one it cannot be."""
        return self

    def originator_of(self, resource: Resource) -> str:
        """The originator a registrant resource stands for (an AE: its ``ri``, the AE-ID)."""
        return resource.ri

    def may_be_created_under(self, parent: ResourceKind) -> bool:
        return self.ty in parent.children or parent.ty in self.parents

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"m2m:{self.short}")
        if not self.name:
            object.__setattr__(self, "name", self.short)

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
            elif name == "cr":
                out[name] = None  # the creator, asked for: the CSE sets it (see identify)
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

    # --- hooks --------------------------------------------------------------------------------

    def unwrap(self, pc: Any) -> tuple[ResourceKind, dict[str, Any]]:
        """The kind a CREATE's ``pc`` makes and its resource body: by default this kind and
        exactly ``{"m2m:<short>": {...}}`` (a flexContainer: its specialization's)."""
        return self, body_of(pc, self.key)

    def restored(self, attrs: Mapping[str, Any]) -> ResourceKind:
        """The kind of a stored resource with ``attrs`` (a flexContainer: by its ``cnd``)."""
        return self

    def identify(
        self, cse: CSEServices, originator: str | None, parent: Resource
    ) -> tuple[str, str | None]:
        """``(ri, creator)`` of the resource ``originator`` CREATEs under ``parent``.

        By default the originator needs the CREATE privilege on the parent, the resource gets
        a fresh ID and the originator becomes its creator.
        """
        cse.check(originator, parent, ACOP.CREATE)
        return cse.new_ri(self), originator

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        """Check and complete the validated ``attrs`` of a new resource under ``parent``."""

    def confirm(
        self, cse: CSEServices, originator: str | None, resource: Resource
    ) -> Deferred[None] | None:
        """A Deferred to wait for before ``resource`` is created (failing refuses), or None."""
        return None

    def created(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        """``resource`` was just created under ``parent`` (``batch`` adds it)."""

    def created_content(self, resource: Resource, pc: Any) -> Any:
        """The ``pc`` of the CREATE response, given the one its ``rcn`` asked for."""
        return pc

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        """Check and complete the validated ``changes`` (``None`` removes) of ``resource``."""

    def confirm_update(
        self,
        cse: CSEServices,
        originator: str | None,
        resource: Resource,
        changes: dict[str, Any],
    ) -> Deferred[None] | None:
        """A Deferred to wait for before ``changes`` are made (failing refuses), or None."""
        return None

    def updated(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        """``resource`` was just updated (``batch`` updates it)."""

    def deleted(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        """``resource`` is being deleted with the subtree it belongs to (``batch`` removes
        it)."""

    def detached(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        """``resource``, the root of a deleted subtree, is no longer a child of ``parent``."""

    def virtual_child(self, store: ResourceReader, resource: Resource, which: str) -> Resource:
        """The resource the virtual child ``which`` (one of :attr:`virtual`) stands for."""
        raise NotFound(f"{resource.srn!r} has no virtual child {which!r}")

    def own_privileges(self, resource: Resource) -> dict[str, Any] | None:
        """The privileges that decide who may access ``resource`` itself (an ACP's ``pvs``),
        instead of the ``acpi`` of it and its ancestors; None for those."""
        return None

    def granted_privileges(self, resource: Resource) -> dict[str, Any] | None:
        """The privileges ``resource`` grants when an ``acpi`` lists it (an ACP's ``pv``)."""
        return None


def body_of(pc: Any, key: str) -> dict[str, Any]:
    """The resource body of a CREATE/UPDATE ``pc``: exactly ``{key: {...}}``."""
    if not isinstance(pc, dict) or len(pc) != 1 or key not in pc:
        raise BadRequest(f"'pc' must hold exactly one {key!r} for this resource type")
    body = pc[key]
    if not isinstance(body, dict):
        raise BadRequest(f"'{key}' must be an object")
    return body


def make_kind(
    cls: type[ResourceKind],
    ty: ResourceType,
    short: str,
    name: str,
    own: Mapping[str, Validator],
    mandatory: frozenset[str],
    updatable: set[str],
    children: set[ResourceType],
    common: tuple[str, ...] = ("rn", "lbl", "acpi", "et"),
    parents: frozenset[ResourceType] | set[ResourceType] = frozenset(),
) -> ResourceKind:
    """A kind of class ``cls`` with the ``common`` attributes and its ``own``."""
    attributes = {a: COMMON[a] for a in common}
    attributes.update(own)
    return cls(
        ty,
        short,
        attributes,
        mandatory,
        frozenset(updatable),
        frozenset(int(c) for c in children),
        name,
        frozenset(int(p) for p in parents),
    )


#: every resource type this CSE knows, by ``ty``; filled by :func:`register_kind`
KINDS: dict[int, ResourceKind] = {}


def register_kind(kind: ResourceKind) -> ResourceKind:
    """Make ``kind`` known (the built-in kinds are registered by :mod:`acmews.cse.kinds`)."""
    if kind.ty in KINDS:
        raise ValueError(f"resource type {int(kind.ty)} is registered already")
    KINDS[kind.ty] = kind
    return kind


#: what a store persists of a resource: ``(ty, attrs, srn, creator)``
Record = tuple[int, dict[str, Any], str, str | None, str | None]


class Resource:
    """One stored resource: its kind, representation, structured address and creator.

    What a store persists is :meth:`record`: ``ty``, ``attrs``, ``srn``, ``creator`` and
    ``owner``. That
    is all there is to a resource: the CSE keeps nothing about it elsewhere (the cached ``pc``
    is derived, the kind is found by ``ty``), so :meth:`from_record` rebuilds it from a stored
    record. ``attrs`` holds what the codecs decode (strings, numbers, booleans, None, lists,
    maps; a ``con`` may have integer map keys or integers beyond 64 bits), so a store writes it
    the way a codec does (CBOR keeps all of it exactly). A store also keeps the children of a
    resource in creation order (``children``, ``oldest_child`` and ``latest_child`` depend on
    it), e.g. with a sequence number.
    """

    __slots__ = ("_pc", "attrs", "creator", "kind", "owner", "srn")

    def __init__(
        self,
        kind: ResourceKind,
        attrs: dict[str, Any],
        srn: str,
        creator: str | None,
        owner: str | None = None,
    ):
        self.kind = kind
        #: the representation; replaced as a whole by :meth:`replace`, never mutated
        self.attrs = attrs
        #: the structured CSE-relative address, e.g. ``cse-in/myae/cnt``
        self.srn = srn
        #: the originator that created it (it and its subtree are the creator's)
        self.creator = creator
        #: an AE registered through a credential: the credential's name, never shown to
        #: clients (only it may claim the AE-ID, see acmews.auth)
        self.owner = owner
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

    def restore(self, attrs: dict[str, Any]) -> None:
        """Put back an earlier ``attrs``: a durable store undoing a change it could not write."""
        self.attrs = attrs
        self._pc = None

    def record(self) -> Record:
        """``(ty, attrs, srn, creator, owner)``: what a store persists (``attrs`` is not
        copied)."""
        return int(self.kind.ty), self.attrs, self.srn, self.creator, self.owner

    @classmethod
    def from_record(
        cls,
        ty: int,
        attrs: dict[str, Any],
        srn: str,
        creator: str | None,
        owner: str | None = None,
    ) -> Resource:
        """The resource a store persisted with :meth:`record`; ValueError for an unknown ty."""
        kind = KINDS.get(ty)
        if kind is None:
            raise ValueError(f"no resource kind is registered for ty {ty!r}")
        if kind.specialized:
            kind = kind.specialize(attrs=attrs)
        return cls(kind.restored(attrs), attrs, srn, creator, owner)

    def __repr__(self) -> str:
        return f"<Resource {self.kind.short} {self.ri} {self.srn}>"
