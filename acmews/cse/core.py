"""The embedded CSE: a transport-free :class:`~acmews.interfaces.IRequestHandler`.

Requests are answered synchronously (a plain :class:`Response`) whenever possible; only a
subscription CREATE (which must wait for verification) and a NOTIFY forwarded to an AE return
a Deferred. Notifications caused by a request are sent from ``callLater(0, ...)``, so they
never delay the response to that request, and their failures are only logged.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from acmews.codes import (
    ACOP,
    DEFAULT_RELEASE,
    RSC,
    NotificationEventType,
    Operation,
    ResourceType,
)
from acmews.cse.resource import KINDS, Resource, ResourceKind, content_size
from acmews.cse.store import MemoryResourceStore
from acmews.errors import (
    BadRequest,
    Conflict,
    InternalServerError,
    InvalidChildResourceType,
    NotAcceptable,
    NotFound,
    NotImplementedOp,
    OneM2MError,
    OperationNotAllowed,
    OriginatorHasAlreadyRegistered,
    OriginatorHasNoPrivilege,
    SubscriptionVerificationInitiationFailed,
    TargetNotReachable,
)
from acmews.interfaces import IConnection, IRequestHandler, IRequestSender, IResourceStore
from acmews.primitive import Request, Response, error_response, is_int_not_bool
from acmews.timestamps import Timestamps

__all__ = ["CSE", "CSEConfig"]

_RCNS = frozenset({0, 1, 2, 3, 4, 5, 6, 8})
_FC_KEYS = frozenset({"fu", "ty", "lbl", "lim", "cra", "crb", "lvl"})
_VIRTUAL = frozenset({"la", "ol"})
_AE = ResourceType.AE
_CNT = ResourceType.CNT
_CIN = ResourceType.CIN
_SUB = ResourceType.SUB
_ACP = ResourceType.ACP
_CB = ResourceType.CSEBASE
_KNOWN_TYPES = frozenset(int(t) for t in ResourceType)


@dataclass(frozen=True, slots=True)
class CSEConfig:
    """Identity and policy of the embedded CSE (ACME-compatible defaults)."""

    cse_id: str = "/id-in"
    cse_name: str = "cse-in"
    sp_id: str = "//acmews.example.com"
    admin: str = "CAdmin"
    release: str = DEFAULT_RELEASE
    poa: tuple[str, ...] = ()
    #: seconds a notification may wait in store-and-forward (sent as its ``rqet``)
    notification_expiry: float = 3600.0
    #: seconds until a new resource's default ``et``
    resource_expiry: float = 5 * 365 * 86400.0
    #: seconds to wait for the answer to a subscription verification request
    verification_timeout: float = 10.0


@implementer(IRequestHandler)
class CSE:
    """A small IN-CSE: CSEBase, AE, container, contentInstance, subscription, ACP."""

    log = Logger()

    def __init__(
        self,
        config: CSEConfig,
        sender: IRequestSender,
        clock: IReactorTime,
        store: IResourceStore | None = None,
    ) -> None:
        self.config = config
        self._sender = sender
        self._clock = clock
        self.store: IResourceStore = store if store is not None else MemoryResourceStore()
        self._ts = Timestamps()
        self._cse_id = config.cse_id
        self._admin = config.admin
        self._rqis = itertools.count(1)
        self._rqi_prefix = f"acmews-{secrets.token_hex(3)}-"
        base_ri = config.cse_id.lstrip("/")
        base = self.store.get(base_ri)
        if base is None:
            now = self._now()
            base = Resource(
                KINDS[_CB],
                {
                    "ty": int(_CB),
                    "ri": base_ri,
                    "rn": config.cse_name,
                    "pi": "",
                    "ct": now,
                    "lt": now,
                    "csi": config.cse_id,
                    "cst": 1,
                    "srv": ["2a", "3", "4", "5"],
                    "poa": list(config.poa),
                },
                config.cse_name,
                None,
            )
            self.store.add(base)
        self.base = base
        sp_relative = config.cse_id
        self._base_targets = frozenset(
            {
                config.cse_name,
                "-",
                base_ri,
                sp_relative,
                f"{sp_relative}/{config.cse_name}",
                f"{config.sp_id}{sp_relative}",
                f"{config.sp_id}{sp_relative}/{config.cse_name}",
            }
        )

    # --- the IRequestHandler edge -------------------------------------------------------------

    def handle_request(
        self, request: Request, connection: IConnection
    ) -> Deferred[Response] | Response:
        """Answer ``request``; every error becomes a response, nothing is raised."""
        try:
            op = request.op
            if op == Operation.RETRIEVE:
                result = self._retrieve(request)
            else:
                foreign = self._foreign_cse(request.to)
                if foreign is not None:
                    result = self.forward(request, foreign)
                elif op == Operation.CREATE:
                    result = self._create(request)
                elif op == Operation.UPDATE:
                    result = self._update(request)
                elif op == Operation.DELETE:
                    result = self._delete(request)
                elif op == Operation.NOTIFY:
                    result = self._notify(request)
                else:
                    raise BadRequest(f"unknown operation {op!r}")
        except OneM2MError as e:
            return self._error(request, e)
        except Exception as e:
            self.log.failure(
                "unexpected error answering {rqi} from {originator}",
                rqi=request.rqi,
                originator=request.fr,
            )
            return self._error(request, InternalServerError(f"internal error: {type(e).__name__}"))
        if isinstance(result, Deferred):
            return result.addErrback(self._failed, request)
        return result

    def forward(self, request: Request, cse_id: str) -> Deferred[Response] | Response:
        """Hook for CSE-to-CSE forwarding: a target under another CSE. Not supported yet."""
        raise TargetNotReachable(
            f"target {request.to!r} is on another CSE ({cse_id}); forwarding is not supported"
        )

    def _failed(self, failure: Failure, request: Request) -> Response:
        error = failure.value
        if isinstance(error, OneM2MError):
            return self._error(request, error)
        self.log.failure(
            "unexpected error answering {rqi} from {originator}",
            failure,
            rqi=request.rqi,
            originator=request.fr,
        )
        return self._error(request, InternalServerError(f"internal error: {type(error).__name__}"))

    # --- responses ----------------------------------------------------------------------------

    def _now(self) -> str:
        return self._ts.format(self._clock.seconds())

    def _respond(self, request: Request, rsc: RSC, pc: Any = None) -> Response:
        return Response(
            rsc, request.rqi, request.rvi, pc, to=request.fr, fr=self._cse_id, ot=self._now()
        )

    def _error(self, request: Request, error: OneM2MError) -> Response:
        response = error_response(
            request.rqi, error, rvi=request.rvi, fr=self._cse_id, to=request.fr
        )
        response.ot = self._now()
        return response

    # --- addressing ---------------------------------------------------------------------------

    def _foreign_cse(self, to: str) -> str | None:
        """The CSE-ID (or SP) ``to`` names when that is not this CSE, else None."""
        if not to.startswith(("/", "~", "_")):
            return None
        sp_relative = self._sp_relative(to)
        if sp_relative is None:
            return to
        cse_id = self._cse_id
        if sp_relative == cse_id or sp_relative.startswith(cse_id + "/"):
            return None
        return "/" + sp_relative[1:].split("/", 1)[0]

    def _sp_relative(self, to: str) -> str | None:
        """``to`` in SP-relative form, or None when it names another SP."""
        if to[0] == "~":
            to = to[1:]
        elif to[0] == "_":
            to = "/" + to[1:]
        if to.startswith("//"):
            sp_id = self.config.sp_id
            if to != sp_id and not to.startswith(sp_id + "/"):
                return None
            to = to[len(sp_id) :] or "/"
        return to

    def _locate(self, to: str) -> tuple[Resource, str | None]:
        """The resource ``to`` addresses, and ``la``/``ol`` when it names a virtual child."""
        if to in self._base_targets:
            return self.base, None
        path = to
        if to[0] in "/~_":
            sp_relative = self._sp_relative(to)
            cse_id = self._cse_id
            if sp_relative is None or not sp_relative.startswith(cse_id + "/"):
                raise TargetNotReachable(f"target {to!r} is not on this CSE")
            path = sp_relative[len(cse_id) + 1 :]
        segments = [s for s in path.split("/") if s]
        if not segments:
            raise NotFound(f"no resource at {to!r}")
        first = segments[0]
        store = self.store
        if first == self.config.cse_name or first == "-":
            resource = self.base
        else:
            found = store.get(first)
            if found is None:
                raise NotFound(f"no resource with ID {first!r} ({to!r})")
            resource = found
        last = len(segments) - 1
        for i in range(1, len(segments)):
            name = segments[i]
            if i == last and name in _VIRTUAL and resource.ty == _CNT:
                return resource, name
            child = store.child(resource.ri, name)
            if child is None:
                raise NotFound(f"no resource {name!r} under {resource.srn!r} ({to!r})")
            resource = child
        return resource, None

    def _find(self, address: str) -> Resource | None:
        """A resource by ``ri`` or by any address form (``acpi`` entries), or None."""
        found = self.store.get(address)
        if found is not None or not isinstance(address, str) or not address:
            return found
        try:
            resource, virtual = self._locate(address)
        except OneM2MError:
            return None
        return resource if virtual is None else None

    def _virtual(self, container: Resource, which: str) -> Resource:
        if which == "la":
            cin = self.store.latest_child(container.ri, _CIN)
        else:
            cin = self.store.oldest_child(container.ri, _CIN)
        if cin is None:
            raise NotFound(f"container {container.srn!r} has no contentInstance ({which})")
        return cin

    def _parent(self, resource: Resource) -> Resource | None:
        pi = resource.attrs.get("pi")
        return self.store.get(pi) if pi else None

    # --- access control -----------------------------------------------------------------------

    def _check(self, originator: str | None, resource: Resource, acop: ACOP) -> None:
        if originator == self._admin:
            return
        if not self._allowed(originator, resource, acop):
            raise OriginatorHasNoPrivilege(
                f"originator {originator!r} has no {acop.name} privilege on {resource.srn!r}"
            )

    def _allowed(self, originator: str | None, resource: Resource, acop: ACOP) -> bool:
        """Admin; the owner of the subtree; else the ACPs (nearest ``acpi``, or ``pvs``)."""
        if originator is None:
            return False
        if originator == self._admin:
            return True
        base = self.base
        if resource is base and acop == ACOP.RETRIEVE:
            return True  # anyone may probe the CSEBase
        r: Resource | None = resource
        while r is not None and r is not base:
            if r.creator == originator or (r.ty == _AE and r.ri == originator):
                return True
            r = self._parent(r)
        if resource.ty == _ACP:
            return _rules_allow(resource.attrs["pvs"], originator, acop)
        r = resource
        while r is not None:
            acpi = r.attrs.get("acpi")
            if acpi:
                for acp_id in acpi:
                    acp = self._find(acp_id)
                    if (
                        acp is not None
                        and acp.ty == _ACP
                        and _rules_allow(acp.attrs["pv"], originator, acop)
                    ):
                        return True
                return False
            r = self._parent(r)
        return False

    # --- result content -----------------------------------------------------------------------

    def _rcn(self, request: Request, default: int) -> int:
        rcn = request.rcn
        if rcn is None:
            return default
        if rcn not in _RCNS:
            raise BadRequest(f"result content (rcn) {rcn} is not supported for this operation")
        return rcn

    def _visible_children(self, resource: Resource, originator: str | None) -> list[Resource]:
        children = self.store.children(resource.ri)
        if originator == self._admin:
            return list(children)
        return [c for c in children if self._allowed(originator, c, ACOP.RETRIEVE)]

    def _tree(self, resource: Resource, originator: str | None) -> dict[str, Any]:
        attrs = dict(resource.attrs)
        for child in self._visible_children(resource, originator):
            attrs.setdefault(child.kind.key, []).append(self._tree(child, originator))
        return attrs

    @staticmethod
    def _reference(resource: Resource) -> dict[str, Any]:
        return {"nm": resource.rn, "typ": resource.ty, "val": resource.srn}

    def _content(self, resource: Resource, rcn: int, originator: str | None) -> Any:
        if rcn == 1:
            return resource.pc
        if rcn == 0:
            return None
        key = resource.kind.key
        if rcn == 2:
            return {"m2m:uri": resource.srn}
        if rcn == 3:
            return {"m2m:rce": {key: resource.attrs, "uri": resource.srn}}
        if rcn == 4:
            return {key: self._tree(resource, originator)}
        children = self._visible_children(resource, originator)
        if rcn == 5:
            return {key: {**resource.attrs, "ch": [self._reference(c) for c in children]}}
        if rcn == 6:
            return {"m2m:rrl": {"rrf": [self._reference(c) for c in children]}}
        grouped: dict[str, list[dict[str, Any]]] = {}  # rcn 8: the child resources only
        for child in children:
            grouped.setdefault(child.kind.key, []).append(self._tree(child, originator))
        return grouped

    # --- RETRIEVE -----------------------------------------------------------------------------

    def _retrieve(self, request: Request) -> Deferred[Response] | Response:
        to = request.to
        if to in self._base_targets and request.fc is None and request.rcn in (None, 1):
            # the hot path (probes, benchmarks): a cached representation, no ACL walk
            return Response(
                RSC.OK,
                request.rqi,
                request.rvi,
                self.base.pc,
                to=request.fr,
                fr=self._cse_id,
                ot=self._now(),
            )
        foreign = self._foreign_cse(to)
        if foreign is not None:
            return self.forward(request, foreign)
        resource, virtual = self._locate(to)
        if virtual is not None:
            resource = self._virtual(resource, virtual)
        if request.fc is not None:
            return self._discover(request, resource, request.fc)
        rcn = self._rcn(request, 1)
        self._check(request.fr, resource, ACOP.RETRIEVE)
        return self._respond(request, RSC.OK, self._content(resource, rcn, request.fr))

    def _discover(self, request: Request, root: Resource, fc: dict[str, Any]) -> Response:
        unknown = fc.keys() - _FC_KEYS
        if unknown:
            raise BadRequest(f"filter criteria {', '.join(sorted(unknown))} not supported")
        fu = fc.get("fu", 2)
        if fu == 2:
            raise NotImplementedOp("conditional retrieval (fc.fu 2) is not supported")
        if fu != 1:
            raise BadRequest("'fc.fu' must be 1 (discovery) or 2")
        tys = fc.get("ty")
        if tys is not None:
            tys = tys if isinstance(tys, list) else [tys]
            if not all(is_int_not_bool(t) for t in tys):
                raise BadRequest("'fc.ty' must be a resource type or a list of them")
        labels = fc.get("lbl")
        if labels is not None and (
            not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
        ):
            raise BadRequest("'fc.lbl' must be a list of strings")
        lim = _fc_int(fc, "lim", 0)
        lvl = _fc_int(fc, "lvl", 1)
        cra = fc.get("cra")
        crb = fc.get("crb")
        for name, value in (("cra", cra), ("crb", crb)):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"'fc.{name}' must be a timestamp")
        drt = request.drt if request.drt is not None else 1
        if drt not in (1, 2):
            raise BadRequest("'drt' must be 1 (structured) or 2 (unstructured)")
        originator = request.fr
        found: list[str] = []
        label_set = frozenset(labels) if labels is not None else None
        type_set = frozenset(tys) if tys is not None else None

        def matches(r: Resource) -> bool:
            attrs = r.attrs
            if type_set is not None and r.ty not in type_set:
                return False
            if label_set is not None and label_set.isdisjoint(attrs.get("lbl", ())):
                return False
            if cra is not None and not attrs["ct"] > cra:
                return False
            if crb is not None and not attrs["ct"] < crb:
                return False
            return self._allowed(originator, r, ACOP.DISCOVERY)

        stack: list[tuple[Resource, int]] = [
            (c, 1) for c in reversed(self.store.children(root.ri))
        ]
        while stack and (lim is None or len(found) < lim):
            resource, level = stack.pop()
            if matches(resource):
                found.append(resource.srn if drt == 1 else resource.ri)
            if lvl is None or level < lvl:
                stack.extend((c, level + 1) for c in reversed(self.store.children(resource.ri)))
        return self._respond(request, RSC.OK, {"m2m:uril": found})

    # --- CREATE -------------------------------------------------------------------------------

    def _create(self, request: Request) -> Deferred[Response] | Response:
        parent, virtual = self._locate(request.to)
        if virtual is not None:
            raise OperationNotAllowed(f"cannot CREATE under the virtual resource {virtual!r}")
        ty = request.ty
        kind = KINDS.get(ty) if ty is not None else None
        if kind is None or ty == _CB:
            if ty in _KNOWN_TYPES:
                raise NotImplementedOp(f"resource type {ty} is not supported by this CSE")
            raise BadRequest(f"unknown resource type {ty!r}")
        body = _body(request.pc, kind)
        rcn = self._rcn(request, 1)
        if kind.ty not in parent.kind.children:
            raise InvalidChildResourceType(
                f"a {kind.key} cannot be created under {parent.kind.key} {parent.srn!r}"
            )
        attrs = kind.validate_create(body)
        originator: str | None
        if kind.ty == _AE:
            ri = originator = self._register(request.fr)
        else:
            originator = request.fr
            self._check(originator, parent, ACOP.CREATE)
            ri = self._new_ri(kind)
        if kind.ty == _CNT:
            attrs["cni"] = 0
            attrs["cbs"] = 0
        elif kind.ty == _CIN:
            attrs["cs"] = cs = content_size(attrs["con"])
            mbs = parent.attrs.get("mbs")
            if mbs is not None and cs > mbs:
                raise NotAcceptable(f"contentInstance size {cs} exceeds the container's mbs {mbs}")
        elif kind.ty == _SUB:
            attrs.setdefault("enc", {"net": [1]})
            attrs.setdefault("nct", 1)
        rn = attrs.pop("rn", None) or ri
        if self.store.child(parent.ri, rn) is not None:
            raise Conflict(f"a resource named {rn!r} already exists under {parent.srn!r}")
        now = self._now()
        full: dict[str, Any] = {
            "ty": int(kind.ty),
            "ri": ri,
            "rn": rn,
            "pi": parent.ri,
            "ct": now,
            "lt": now,
            "et": attrs.pop("et", None)
            or self._ts.format(self._clock.seconds() + self.config.resource_expiry),
        }
        if kind.ty == _AE:
            full["aei"] = ri
        full.update(attrs)
        resource = Resource(kind, full, f"{parent.srn}/{rn}", originator)
        if kind.ty == _SUB:
            return Deferred.fromCoroutine(
                self._create_subscription(request, parent, resource, rcn)
            )
        self._commit_create(parent, resource)
        return self._created(request, resource, rcn)

    def _created(self, request: Request, resource: Resource, rcn: int) -> Response:
        pc = self._content(resource, rcn, request.fr)
        if pc is None and resource.ty == _AE:
            # the protocol layer binds an unbound connection to the aei it reads here
            pc = {"m2m:ae": {"aei": resource.ri}}
        return self._respond(request, RSC.CREATED, pc)

    def _register(self, fr: str | None) -> str:
        """The AE-ID for an AE CREATE from ``fr``: assigned, or the requested one if free."""
        if not fr or fr == "C":
            while True:
                aei = "C" + secrets.token_hex(8)
                if self.store.get(aei) is None:
                    return aei
        if fr[0] not in "CS" or "/" in fr:
            raise BadRequest(
                f"an AE originator must be empty, 'C', or an AE-ID starting with C or S: {fr!r}"
            )
        if fr == self._admin:
            # the protocol layer binds a connection to the aei it gets: never to the admin
            raise OriginatorHasAlreadyRegistered(f"the AE-ID {fr!r} is reserved")
        if self.store.get(fr) is not None:
            raise OriginatorHasAlreadyRegistered(f"the AE-ID {fr!r} is already registered")
        return fr

    def _new_ri(self, kind: ResourceKind) -> str:
        while True:
            ri = kind.short + secrets.token_hex(6)
            if self.store.get(ri) is None:
                return ri

    def _commit_create(self, parent: Resource, resource: Resource) -> None:
        self.store.add(resource)
        self._event(parent, NotificationEventType.CREATE_CHILD, resource, exclude=resource)
        if resource.ty == _CIN:
            attrs = parent.attrs
            parent.replace({"cni": attrs["cni"] + 1, "cbs": attrs["cbs"] + resource.attrs["cs"]})
            self.store.update(parent)
            self._enforce_limits(parent)

    def _enforce_limits(self, container: Resource) -> None:
        """Delete the oldest instances until ``mni`` and ``mbs`` hold."""
        while True:
            attrs = container.attrs
            mni = attrs.get("mni")
            mbs = attrs.get("mbs")
            if (mni is None or attrs["cni"] <= mni) and (mbs is None or attrs["cbs"] <= mbs):
                return
            oldest = self.store.oldest_child(container.ri, _CIN)
            if oldest is None:
                return
            self._delete_tree(oldest, container)

    async def _create_subscription(
        self, request: Request, parent: Resource, sub: Resource, rcn: int
    ) -> Response:
        """Verify every ``nu`` that is not the originator, then create (or fail with 5204)."""
        originator = request.fr
        sur = self._sur(sub)
        pending: list[tuple[str, Deferred[Response]]] = []
        for nu in sub.attrs["nu"]:
            target, poa = self._resolve_nu(nu)
            if target == originator:
                continue
            verification = self._notification(
                target, {"m2m:sgn": {"vrq": True, "sur": sur, "cr": originator}}, expires=False
            )
            d = maybeDeferred(self._sender.send, target, verification, poa=poa, store=False)
            d.addTimeout(self.config.verification_timeout, self._clock)
            pending.append((nu, d))
        problems: list[str] = []
        for nu, d in pending:
            try:
                answer = await d
            except OneM2MError as e:
                problems.append(f"{nu}: {int(e.rsc)} {e.reason}")
            except Exception as e:
                problems.append(f"{nu}: {type(e).__name__}")
            else:
                if answer.rsc != RSC.OK:
                    problems.append(f"{nu}: answered {int(answer.rsc)}")
        if problems:
            raise SubscriptionVerificationInitiationFailed(
                "subscription verification failed for " + "; ".join(problems)
            )
        if self.store.get(parent.ri) is not parent:
            raise NotFound(f"{parent.srn!r} was deleted during the subscription verification")
        if self.store.child(parent.ri, sub.rn) is not None:
            raise Conflict(f"a resource named {sub.rn!r} already exists under {parent.srn!r}")
        self._commit_create(parent, sub)
        return self._created(request, sub, rcn)

    # --- UPDATE -------------------------------------------------------------------------------

    def _update(self, request: Request) -> Response:
        resource, virtual = self._locate(request.to)
        if virtual is not None:
            raise OperationNotAllowed(f"the virtual resource {virtual!r} cannot be updated")
        kind = resource.kind
        if kind.ty == _CIN:
            raise OperationNotAllowed("a contentInstance cannot be updated")
        body = _body(request.pc, kind)
        rcn = self._rcn(request, 1)
        self._check(request.fr, resource, ACOP.UPDATE)
        changes = kind.validate_update(body)
        if kind.ty == _SUB and "enc" in changes and changes["enc"] is None:
            changes["enc"] = {"net": [1]}
        if kind.ty == _SUB and "nct" in changes and changes["nct"] is None:
            changes["nct"] = 1
        changes["lt"] = self._now()
        resource.replace(changes)
        self.store.update(resource)
        if kind.ty == _CNT:
            self._enforce_limits(resource)
        self._event(resource, NotificationEventType.UPDATE, resource, modified=changes)
        return self._respond(request, RSC.UPDATED, self._content(resource, rcn, request.fr))

    # --- DELETE -------------------------------------------------------------------------------

    def _delete(self, request: Request) -> Response:
        resource, virtual = self._locate(request.to)
        if virtual is not None:
            resource = self._virtual(resource, virtual)
        if resource is self.base:
            raise OperationNotAllowed("the CSEBase cannot be deleted")
        rcn = self._rcn(request, 0)
        self._check(request.fr, resource, ACOP.DELETE)
        pc = self._content(resource, rcn, request.fr)
        parent = self._parent(resource)
        assert parent is not None
        self._delete_tree(resource, parent)
        return self._respond(request, RSC.DELETED, pc)

    def _delete_tree(self, resource: Resource, parent: Resource) -> None:
        """Delete ``resource`` and its subtree; tell subscribers (net 2, net 4, sud)."""
        if self.store.get(resource.ri) is not resource:
            return  # already gone (an exc-expired subscription, say)
        self._event(resource, NotificationEventType.DELETE, resource)
        doomed: list[Resource] = []
        stack = [resource]
        while stack:
            r = stack.pop()
            doomed.append(r)
            stack.extend(self.store.children(r.ri))
        for r in reversed(doomed):  # children before their parents
            self.store.remove(r.ri)
            if r.ty == _SUB:
                su = r.attrs.get("su")
                if su:
                    self._schedule([su], {"m2m:sgn": {"sud": True, "sur": self._sur(r)}})
        if resource.ty == _CIN and parent.ty == _CNT:
            attrs = parent.attrs
            parent.replace({"cni": attrs["cni"] - 1, "cbs": attrs["cbs"] - resource.attrs["cs"]})
            self.store.update(parent)
        self._event(parent, NotificationEventType.DELETE_CHILD, resource)

    # --- NOTIFY -------------------------------------------------------------------------------

    def _notify(self, request: Request) -> Deferred[Response]:
        resource, virtual = self._locate(request.to)
        if virtual is not None or resource.ty != _AE:
            raise OperationNotAllowed("NOTIFY is only accepted for an AE")
        self._check(request.fr, resource, ACOP.NOTIFY)
        aei = resource.ri
        outgoing = replace(request, to=aei, rqi=self._new_rqi())
        d = maybeDeferred(
            self._sender.send, aei, outgoing, poa=tuple(resource.attrs.get("poa", ())), store=False
        )

        def answered(response: Response) -> Response:
            return replace(response, rqi=request.rqi, rvi=request.rvi, to=request.fr)

        return d.addCallback(answered)

    # --- notifications ------------------------------------------------------------------------

    def _sur(self, sub: Resource) -> str:
        return f"{self._cse_id}/{sub.ri}"

    def _new_rqi(self) -> str:
        return f"{self._rqi_prefix}{next(self._rqis)}"

    def _notification(self, target: str, pc: dict[str, Any], expires: bool = True) -> Request:
        rqet = None
        if expires:
            rqet = self._ts.format(self._clock.seconds() + self.config.notification_expiry)
        return Request(
            Operation.NOTIFY,
            target,
            self._new_rqi(),
            self.config.release,
            fr=self._cse_id,
            pc=pc,
            rqet=rqet,
        )

    def _resolve_nu(self, nu: str) -> tuple[str, tuple[str, ...]]:
        """(target, poa) for a notification URI: a URL as is, an AE by its aei and poa."""
        target, poa, _ = self._resolve_target(nu)
        return target, poa

    def _resolve_target(self, nu: str) -> tuple[str, tuple[str, ...], bool]:
        """(target, poa, registered): ``registered`` when ``nu`` names an AE registered here.

        Only notifications to a registered AE (or, later, CSE) may wait in store-and-forward;
        a URL or an unknown originator is tried once.
        """
        if "://" in nu:
            return nu, (), False
        try:
            if self._foreign_cse(nu) is None:
                resource, virtual = self._locate(nu)
                if virtual is None and resource.ty == _AE:
                    return resource.ri, tuple(resource.attrs.get("poa", ())), True
        except OneM2MError:
            pass
        return nu, (), False

    def _event(
        self,
        subject: Resource,
        net: NotificationEventType,
        rep: Resource,
        modified: dict[str, Any] | None = None,
        exclude: Resource | None = None,
    ) -> None:
        """Notify the subscriptions that are children of ``subject`` about event ``net``."""
        expired: list[Resource] = []
        for sub in self.store.children(subject.ri):
            if sub.ty != _SUB or sub is exclude:
                continue
            attrs = sub.attrs
            if net not in attrs["enc"]["net"]:
                continue
            nct = attrs["nct"]
            if nct == 3:
                representation: Any = {"m2m:uri": rep.ri}
            elif nct == 2 and modified is not None:
                representation = {rep.kind.key: {k: rep.attrs.get(k) for k in modified}}
            else:
                representation = rep.pc
            self._schedule(
                attrs["nu"],
                {
                    "m2m:sgn": {
                        "nev": {"rep": representation, "net": int(net)},
                        "sur": self._sur(sub),
                    }
                },
            )
            exc = attrs.get("exc")
            if exc is not None:
                if exc <= 1:
                    expired.append(sub)
                else:
                    sub.replace({"exc": exc - 1})
                    self.store.update(sub)
        for sub in expired:
            self._delete_tree(sub, subject)

    def _schedule(self, nus: Sequence[str], pc: dict[str, Any]) -> None:
        """Send ``pc`` to every ``nu`` after the current request has been answered.

        The targets are resolved now: an AE being deleted (with its subscriptions) is still
        known, so its ``sud`` still finds its poa.
        """
        targets = [self._resolve_target(nu) for nu in nus]
        self._clock.callLater(0, self._deliver, targets, pc)

    def _deliver(
        self, targets: list[tuple[str, tuple[str, ...], bool]], pc: dict[str, Any]
    ) -> None:
        for target, poa, registered in targets:
            try:
                request = self._notification(target, pc)
                d = self._sender.send(target, request, poa=poa, store=registered)
            except Exception:
                self.log.failure("could not send a notification to {target}", target=target)
                continue
            d.addCallbacks(
                self._delivered,
                self._not_delivered,
                callbackArgs=(target,),
                errbackArgs=(target,),
            )

    def _delivered(self, response: Response, target: str) -> None:
        if not response.ok:
            self.log.warn(
                "notification to {target} answered {rsc}: {reason}",
                target=target,
                rsc=response.rsc,
                reason=response.debug,
            )

    def _not_delivered(self, failure: Failure, target: str) -> None:
        if isinstance(failure.value, OneM2MError):
            self.log.warn(
                "notification to {target} failed: {error!r}", target=target, error=failure.value
            )
        else:
            self.log.failure("notification to {target} failed", failure, target=target)


def _rules_allow(privileges: dict[str, Any], originator: str, acop: ACOP) -> bool:
    bit = int(acop)  # int & int: an IntFlag operand would build a flag for every rule
    for rule in privileges.get("acr", ()):
        if rule["acop"] & bit and ("*" in rule["acor"] or originator in rule["acor"]):
            return True
    return False


def _body(pc: Any, kind: ResourceKind) -> dict[str, Any]:
    """The resource body of a CREATE/UPDATE ``pc``: exactly ``{"m2m:<short>": {...}}``."""
    if not isinstance(pc, dict) or len(pc) != 1 or kind.key not in pc:
        raise BadRequest(f"'pc' must hold exactly one {kind.key!r} for this resource type")
    body = pc[kind.key]
    if not isinstance(body, dict):
        raise BadRequest(f"'{kind.key}' must be an object")
    return body


def _fc_int(fc: dict[str, Any], name: str, minimum: int) -> int | None:
    value = fc.get(name)
    if value is None:
        return None
    if not is_int_not_bool(value) or value < minimum:
        raise BadRequest(f"'fc.{name}' must be an integer >= {minimum}")
    return value
