"""The embedded CSE: a transport-free :class:`~acmews.interfaces.IRequestHandler`.

Requests are answered synchronously (a plain :class:`Response`) whenever possible; only a
subscription CREATE or an UPDATE adding notification targets (which wait for verification),
an UPDATE that a blocking-update subscription holds, a NOTIFY forwarded to an AE, and any
change while the store makes changes durable (its ``apply`` returns a Deferred) return a
Deferred. Notifications caused by a request are sent from ``callLater(0, ...)`` once its
changes are applied, so they never delay the response to that request (but for a deleted
subscription's notice, which TS-0004 has leave first), and their failures are only logged.

A request that changes resources collects its changes in one :class:`Batch` (every check
that may refuse it comes before the first change) and ends with one ``store.apply(batch)``.
The batch also carries the notifications its changes cause (the notifier puts them there);
once it is applied, the CSE hands them to the notifier to send.

The CSE dispatches by operation and holds its collaborators: :class:`Addressing` (which
resource a target names), :class:`AccessControl`, :class:`Content` (what a response carries)
and :class:`Notifier` (events, notifications, verification).
"""

from __future__ import annotations

import fnmatch
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeGuard, TypeVar
from weakref import WeakKeyDictionary

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

import acmews.cse.flexcontainer  # noqa: F401  (registers the flexContainer kinds)
from acmews.codes import ACOP, RSC, NotificationEventType, Operation, ResourceType
from acmews.cse import mgmt as _mgmt  # noqa: F401 (registers <node> and <mgmtObj>)
from acmews.cse.access import AccessControl
from acmews.cse.addressing import Addressing
from acmews.cse.config import CSEConfig
from acmews.cse.content import PARTIAL_CONTENT, Content
from acmews.cse.expiry import Expirations
from acmews.cse.group import FanOut
from acmews.cse.kinds import CSE_BASE
from acmews.cse.nonblocking import NonBlocking
from acmews.cse.notifier import Notifier
from acmews.cse.polling import Polling
from acmews.cse.resource import (
    KINDS,
    MAX_DEPTH,
    Changes,
    Resource,
    ResourceKind,
    body_of,
)
from acmews.cse.store import Batch, IResourceStore, MemoryResourceStore
from acmews.cse.timeseries import TimeSeriesMonitor
from acmews.cse.timing import MAX_DELAYED, execution_delay
from acmews.errors import (
    BadRequest,
    Conflict,
    InternalServerError,
    InvalidChildResourceType,
    NotFound,
    NotImplementedOp,
    OneM2MError,
    OperationNotAllowed,
    OriginatorHasNoPrivilege,
    TargetNotReachable,
)
from acmews.interfaces import IConnection, IRequestHandler, IRequestSender
from acmews.logs import Budget, Logger
from acmews.primitive import Request, Response, copy_request, error_response
from acmews.timestamps import Timestamps

__all__ = ["CSE", "CSEConfig"]

#: AE registrations one connection may make per minute
REGISTRATIONS_PER_MINUTE = 30

#: the serializations this CSE speaks (its CSEBase's ``csz``, TS-0001 9.6.3)
_SERIALIZATIONS = ("application/json", "application/cbor")
_KNOWN_TYPES = frozenset(int(t) for t in ResourceType)
_SUB = ResourceType.SUB
_CNT = ResourceType.CNT
_CIN = ResourceType.CIN

_T = TypeVar("_T")
_K = TypeVar("_K")


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
        self._clock = clock
        self.store: IResourceStore = store if store is not None else MemoryResourceStore()
        #: a shared store's gate (``ready(request) -> Deferred | None``), None for the others
        self._gate: Callable[[Request], Deferred[None] | None] | None = getattr(
            self.store, "ready", None
        )
        #: requests for an AE with rr false wait in its <pollingChannel> (acmews.cse.polling)
        self.polling = Polling(sender, clock, self.store)
        self._sender = sender = self.polling
        self._ts = Timestamps()
        self._cse_id = config.cse_id
        base_ri = config.cse_id.lstrip("/")
        base = self.store.get(base_ri)
        if base is None:
            now = self._now()
            base = Resource(
                CSE_BASE,
                {
                    "ty": int(CSE_BASE.ty),
                    "ri": base_ri,
                    "rn": config.cse_name,
                    "pi": "",
                    "ct": now,
                    "lt": now,
                    "csi": config.cse_id,
                    "cst": config.cse_type,
                    "srv": ["2a", "3", "4", "5"],
                    "poa": list(config.poa),
                    "srt": _supported_types(),
                    "csz": list(_SERIALIZATIONS),
                },
                config.cse_name,
                None,
            )
            batch = Batch(self.store)
            batch.add(base)
            done = self.store.apply(batch)
            if done is not None:
                done.addErrback(self._base_not_created)
        self.base = base
        self.polling.load(base)
        self._advertise_configured()
        #: the CSEBase's representation with its currentTime (ctm), and the second and
        #: the attrs it was made for: the RETRIEVE fast path makes it anew once a second
        self._base_pc: dict[str, Any] = {}
        self._base_second = -1
        self._base_attrs: dict[str, Any] | None = None
        self.addressing = addressing = Addressing(config, self.store, base)
        self.access = access = AccessControl(addressing, config.admin, clock)
        self.content = Content(self.store, access, config.admin)
        self.notifier = Notifier(
            config, sender, clock, self._ts, addressing, self.route, self.store
        )
        self._base_targets = addressing.base_targets
        self._registrations: WeakKeyDictionary[IConnection, Budget] = WeakKeyDictionary()
        #: requests waiting for their operation execution time (oet)
        self.delayed = 0
        #: forwarded requests waiting for an answer, per next hop and per (hop, originator)
        self.forwarding: dict[str, int] = {}
        self.forwarding_by: dict[tuple[str, str], int] = {}
        #: the ``et`` of every resource; deletes the expired (see acmews.cse.expiry)
        self.expiry = Expirations(config, clock, self._ts, self.store, self._expire)
        self.expiry.load(self._every_resource())
        #: the missing-data timers of the timeSeries (see acmews.cse.timeseries)
        self.timeseries = TimeSeriesMonitor(
            self._event, clock, self.store, self._apply, self._every_resource
        )
        observers = getattr(self.store, "observers", None)
        if observers is not None:  # a shared store: what other CSE nodes changed
            observers.append(self._changed_elsewhere)
        #: requests to a group's fan-out point (fopt), sent to its members
        self.fan_out = FanOut(
            config.cse_id, config.admin, addressing, access, self.handle_request, clock
        )
        #: non-blocking requests (rt 1 and 2) and their <request> resources
        self.nonblocking = NonBlocking(
            config,
            self.store,
            base,
            clock,
            self._apply,
            self.handle_request,
            self.delete_tree,
            self.notify,
            self.new_id,
        )

    def advertise(self, poa: Sequence[str]) -> None:
        """Advertise ``poa`` as the CSEBase's points of access from now on: the addresses
        actually listened on, known once listening (a port 0 was chosen by the system)."""
        poa = tuple(poa)
        if poa != self.config.poa:
            self.config = replace(self.config, poa=poa)
            self._update_base({"poa": list(poa)})

    def _update_base(self, changes: dict[str, Any]) -> None:
        batch = Batch(self.store)
        self.base.replace({**changes, "lt": self._now()})
        batch.update(self.base)
        done = self.store.apply(batch)
        if done is not None:
            done.addErrback(self._base_not_updated)

    def _base_not_updated(self, failure: Failure) -> Deferred[None] | None:
        """The CSEBase's changes could not be stored. On a shared store another CSE node may
        have changed it meanwhile (nodes that start together each advertise their own poa:
        one is stored, as when they start one after the other; see ``--poa``): once a
        refresh has read the stored one, that is what this node answers, and it says so."""

        def answered_stored() -> None:
            self.log.info(
                "the CSEBase was changed by another CSE node meanwhile: {reason}; "
                "this node answers the stored one",
                reason=failure.getErrorMessage(),
            )

        return self._after_refresh(failure, answered_stored)

    def _base_not_created(self, failure: Failure) -> Deferred[None] | None:
        """The CSEBase this start made could not be stored. On a shared store another CSE
        node may have stored one first (nodes started together on an empty database): once
        a refresh has brought it in, this node uses that one (:meth:`_use_base`), as if it
        had started after it."""

        def use_stored() -> None:
            stored = self.store.get(self.base.ri)
            if stored is None:
                self._log_failure(failure, "could not store the CSEBase")
            elif stored is not self.base:
                self._use_base(stored)

        return self._after_refresh(failure, use_stored)

    def _after_refresh(self, failure: Failure, then: Callable[[], None]) -> Deferred[None] | None:
        """A change of the CSEBase was refused (``failure``): on a shared store call
        ``then`` once a refresh has read what is stored; anything else, or a refresh that
        fails, is logged as the failure it is."""
        gate = self._gate
        if gate is None:
            self._log_failure(failure, "could not store the CSEBase")
            return None
        refreshed = gate(Request(Operation.RETRIEVE, self.base.ri, "acmews-cse-base"))
        if refreshed is None:
            then()
            return None
        refreshed.addCallback(lambda _: then())
        refreshed.addErrback(self._log_failure, "could not store the CSEBase")
        return refreshed

    def _use_base(self, stored: Resource) -> None:
        """Take ``stored``, the CSEBase another node stored, instead of the one this start
        made; what this node advertises follows its configuration, as for any start."""
        self.log.info("the CSEBase was stored by another CSE node first: using that one")
        self.base = stored
        self.addressing.base = stored
        self.nonblocking.use_base(stored)
        self.polling.load(stored)
        self._advertise_configured()

    def _advertise_configured(self) -> None:
        """What the CSEBase advertises follows this start's configuration (a stored one,
        made by an earlier start or another node, is updated where it differs)."""
        config = self.config
        advertised = {
            "poa": list(config.poa),
            "cst": config.cse_type,
            "srt": _supported_types(),
            "csz": list(_SERIALIZATIONS),
        }
        if any(self.base.attrs.get(name) != value for name, value in advertised.items()):
            self._update_base(advertised)

    def owner_of(self, aei: str) -> str | None:
        """The credential an AE registered through (``Resource.owner``), or None: for
        :class:`acmews.auth.CredentialAuthorizer`'s ``owner_of``."""
        resource = self.store.get(aei)
        return None if resource is None or not resource.kind.registrant else resource.owner

    def _count_registration(self, connection: IConnection) -> None:
        """At most :data:`REGISTRATIONS_PER_MINUTE` AE registrations per connection (a CSE's
        connection may register AEs with any AE-ID: that must not be a flood)."""
        budget = self._registrations.get(connection)
        if budget is None:
            budget = self._registrations[connection] = Budget(REGISTRATIONS_PER_MINUTE, 60.0)
        if not budget.allow(self._clock.seconds()):
            raise OriginatorHasNoPrivilege(
                f"more than {REGISTRATIONS_PER_MINUTE} AE registrations a minute on this "
                "connection: try again later"
            )

    def _check_registrant(
        self,
        kind: ResourceKind,
        originator: str | None,
        ri: str,
        connection: IConnection | None,
    ) -> None:
        """Who may register: a remoteCSE only a CSE that proved its CSE-ID (or one
        ``allowed_csr_originators`` names); an AE, on an AE's connection, only with an AE-ID
        its credential may hold (its list; never another credential's reserved IDs)."""
        if kind.ty == ResourceType.CSR:
            if not self.acts_as_cse(originator, connection):
                raise OriginatorHasNoPrivilege(
                    f"{originator!r} may not register here: a remoteCSE needs a credential "
                    "that names its CSE-ID (or --allowed-csr-originators)"
                )
            return
        if connection is None:
            return
        may_hold = connection.authorization.may_hold
        cse_connection = (connection.originator or "").startswith("/")
        if may_hold is not None and not cse_connection and not may_hold(ri):
            raise OriginatorHasNoPrivilege(
                f"the credential of this connection may not register the AE-ID {ri!r}"
            )

    # --- the IRequestHandler edge -------------------------------------------------------------

    def handle_request(
        self, request: Request, connection: IConnection
    ) -> Deferred[Response] | Response:
        """Answer ``request``; every error becomes a response, nothing is raised."""
        gate = self._gate
        if gate is not None:
            # a shared store: the request waits until the cache is current (see
            # acmews.pgstore); a store that cannot say so answers 5000
            try:
                ready = gate(request)
            except Exception as e:
                return self._answer_error(request, e)
            if ready is not None:
                d = ready.addCallback(lambda _: self._handle(request, connection))
                return d.addErrback(self._failed, request)
        return self._handle(request, connection)

    def _handle(self, request: Request, connection: IConnection) -> Deferred[Response] | Response:
        access = self.access
        access.request = request
        access.connection = connection
        try:
            if request.rt is not None and self.nonblocking.takes(request):
                result = self.nonblocking.accept(request, connection)
            elif request.rqet is None and request.rset is None and request.oet is None:
                result = self._dispatch(request, connection)
            else:
                result = self._timed(request, connection)
        except Exception as e:
            return self._answer_error(request, e)
        finally:
            access.request = access.connection = None
        if isinstance(result, Deferred):
            return result.addErrback(self._failed, request)
        return result

    def _dispatch(
        self, request: Request, connection: IConnection | None
    ) -> Deferred[Response] | Response:
        if "/fopt" in request.to:  # a group's fan-out point (acmews.cse.group)
            fanned = self.fan_out.handle(request, connection)
            if fanned is not None:
                return fanned
        op = request.op
        if op == Operation.RETRIEVE:
            return self._retrieve(request, connection)
        if self._clock.seconds() >= self.expiry.due:
            self._sweep()
        foreign = self.addressing.foreign_cse(request.to)
        if foreign is not None:
            return self.forward(request, foreign, connection)
        if op == Operation.CREATE:
            return self._create(request, connection)
        if op == Operation.UPDATE:
            return self._update(request)
        if op == Operation.DELETE:
            return self._delete(request)
        if op == Operation.NOTIFY:
            return self._notify(request, connection)
        raise BadRequest(f"unknown operation {op!r}")

    def _timed(
        self, request: Request, connection: IConnection | None
    ) -> Deferred[Response] | Response:
        """A request with an ``rqet``, ``rset`` or ``oet`` (see :mod:`acmews.cse.timing`):
        refused if expired; run at its ``oet`` (but one for another CSE is forwarded at once,
        TS-0004 7.3.2.6)."""
        delay = execution_delay(request, self._clock.seconds())
        if not delay or self.addressing.foreign_cse(request.to) is not None:
            return self._dispatch(request, connection)
        if self.delayed >= MAX_DELAYED:
            raise TargetNotReachable(
                f"{self.delayed} requests already wait for their operation execution time "
                "(oet): try again later"
            )
        self.delayed += 1
        waited: Deferred[None] = deferLater(self._clock, delay)
        d = waited.addCallback(lambda _: self._dispatch(request, connection))
        return d.addBoth(self._undelay)

    def _undelay(self, result: _T) -> _T:
        self.delayed -= 1
        return result

    def acts_as_cse(self, originator: str | None, connection: IConnection | None) -> bool:
        """May ``originator`` act as a CSE here (register a remoteCSE, relay notifications)?
        Only a CSE-ID its connection proved (a credential or certificate naming it, or the
        registrar this CSE dialled), or one ``allowed_csr_originators`` names."""
        if not _is_cse_id(originator):
            return False
        if (
            connection is not None
            and connection.originator == originator
            and connection.authorization.verified
        ):
            return True
        return any(fnmatch.fnmatchcase(originator, p) for p in self.config.allowed_csr_originators)

    def _is_peer_cse(self, originator: str | None) -> bool:
        """Is ``originator`` a CSE registered here, or this CSE's registrar?"""
        if not _is_cse_id(originator):
            return False
        if originator == self.config.registrar_cse_id:
            return True
        csr = self.store.get(originator[1:])
        return csr is not None and csr.ty == ResourceType.CSR

    def route(self, cse_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The next hop towards CSE ``cse_id``: ``(originator, poa)``, a CSE registered here
        or this CSE's registrar (so a NOTIFY for it may wait in store-and-forward).

        A remoteCSE registered here with that CSE-ID; else the remoteCSE whose ``dcse`` lists
        it; else this CSE's registrar, when it has one; else None.
        """
        remotes = self.store.children(self.base.ri, ResourceType.CSR)
        for csr in remotes:
            if csr.attrs["csi"] == cse_id:
                if cse_id == self.config.registrar_cse_id:
                    return cse_id, ()  # the link is the way, up or down
                return cse_id, tuple(csr.attrs.get("poa", ()))
        for csr in remotes:
            if cse_id in csr.attrs.get("dcse", ()):
                return csr.attrs["csi"], tuple(csr.attrs.get("poa", ()))
        registrar = self.config.registrar_cse_id
        if registrar is not None:
            return registrar, ()
        return None

    def forward(
        self, request: Request, cse_id: str, connection: IConnection | None = None
    ) -> Deferred[Response] | Response:
        """Send ``request`` (for a target on CSE ``cse_id``) to the next hop and relay its
        answer with the originator's own ``rqi``; 5103 when there is no route or the route
        leads back where the request came from."""
        route = self.route(cse_id)
        if route is None:
            raise TargetNotReachable(
                f"target {request.to!r} is on {cse_id}, which is not registered here "
                "(and this CSE has no registrar)"
            )
        hop, poa = route
        if connection is not None and connection.originator == hop:
            raise TargetNotReachable(
                f"target {request.to!r} is on {cse_id}: its route leads back to {hop}, "
                "where the request came from"
            )
        # without its rt: a non-blocking request is handled here (acmews.cse.nonblocking), a
        # noResponse one is answered (and the answer dropped) here
        outgoing = copy_request(
            request, fr=self._sp_relative(request.fr), rqi=self.notifier.new_rqi(), rt=None
        )
        store = request.op == Operation.NOTIFY  # every hop is a registered CSE
        d = self._pass_on(hop, outgoing, poa, store)

        def relayed(response: Response) -> Response:
            response.rqi = request.rqi  # the answer is ours alone: relayed as it came
            return response

        return d.addCallback(relayed)

    def _pass_on(
        self, hop: str, outgoing: Request, poa: tuple[str, ...], store: bool
    ) -> Deferred[Response]:
        """Send a request this CSE passes on (forwarded to a CSE, relayed to an AE) to
        ``hop``, within the bounds on what may wait for ``hop``'s answers: at most
        ``max_forwarded_per_link`` in all and ``max_forwarded_per_originator`` of one
        originator; past either, 5103 at once. A hop that reads and never answers could
        otherwise hold any number of them (206,000 and 450 MB once); each is counted until
        its Deferred fires, whatever way (an answer, a failure, a timeout, a cancellation).
        """
        originator = outgoing.fr or ""
        key = (hop, originator)
        config = self.config
        waiting = self.forwarding.get(hop, 0)
        if waiting >= config.max_forwarded_per_link:
            raise TargetNotReachable(
                f"the link to {hop} is saturated: {waiting} forwarded requests wait for its "
                "answers; try again later"
            )
        mine = self.forwarding_by.get(key, 0)
        if mine >= config.max_forwarded_per_originator:
            raise TargetNotReachable(
                f"the link to {hop} is saturated for {originator}: {mine} of its forwarded "
                "requests wait for answers; try again later"
            )
        self.forwarding[hop] = waiting + 1
        self.forwarding_by[key] = mine + 1
        d = maybeDeferred(self._sender.send, hop, outgoing, poa=poa, store=store)
        return d.addBoth(self._passed_on, hop, key)

    def _passed_on(self, result: _T, hop: str, key: tuple[str, str]) -> _T:
        _uncount(self.forwarding, hop)
        _uncount(self.forwarding_by, key)
        return result

    def _sp_relative(self, fr: str | None) -> str | None:
        """The originator ``fr`` of a request this CSE passes on (to another CSE, to an
        AE's own server), made SP-relative (``CAdmin`` -> ``/id-in/CAdmin``): there, only
        originators under this CSE-ID may come from here."""
        if fr and not fr.startswith("/"):
            return f"{self._cse_id}/{fr}"
        return fr

    def _failed(self, failure: Failure, request: Request) -> Response:
        return self._answer_error(request, failure.value, failure)

    def _answer_error(
        self, request: Request, error: BaseException | None, failure: Failure | None = None
    ) -> Response:
        """The response to ``request`` that failed with ``error``: its own for a oneM2M
        error; else 5000, and the traceback (``failure``, or the exception being handled) is
        logged."""
        if isinstance(error, OneM2MError):
            return self._error(request, error)
        if isinstance(error, CancelledError):  # what it waited for was stopped (a shutdown)
            return self._error(request, TargetNotReachable("the request was cancelled"))
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
        # positional (to, fr, ot, rset, ec, vsi), half the cost of keywords; vsi is echoed
        return Response(
            rsc,
            request.rqi,
            request.rvi,
            pc,
            request.fr,
            self._cse_id,
            self._now(),
            None,
            None,
            request.vsi,
        )

    def _error(self, request: Request, error: OneM2MError) -> Response:
        response = error_response(
            request.rqi, error, rvi=request.rvi, fr=self._cse_id, to=request.fr
        )
        response.ot = self._now()
        response.vsi = request.vsi
        return response

    # --- RETRIEVE -----------------------------------------------------------------------------

    def _retrieve(
        self, request: Request, connection: IConnection | None = None
    ) -> Deferred[Response] | Response:
        to = request.to
        if (
            to in self._base_targets
            and request.fc is None
            and request.rcn in (None, 1)
            and request.pc is None
        ):
            # the hot path (probes, benchmarks): a cached representation, no ACL walk
            return self._respond(request, RSC.OK, self._base_representation())
        if self._clock.seconds() >= self.expiry.due:
            self._sweep()
        foreign = self.addressing.foreign_cse(to)
        if foreign is not None:
            return self.forward(request, foreign, connection)
        attribute = None
        if "#" in to:  # a partial retrieve of one attribute (TS-0004 7.3.3.6 case 2)
            to, _, attribute = to.partition("#")
        resource, virtual = self.addressing.locate(to)
        if virtual is not None or resource.ty == _CIN:
            if virtual == "pcu":
                return self._poll(request, resource)
            self._check_retrievable(resource, virtual)
        if virtual is not None:
            container = resource
            try:
                resource = self.addressing.virtual(resource, virtual)
            except NotFound:
                self._retrieved(request, container, virtual)
                raise
        pc, rest = self.content.retrieve(request, resource, attribute)
        if virtual is None and self.store.latest_child(resource.ri, _SUB) is not None:
            self._retrieved(request, resource)
        response = self._respond(request, RSC.OK, pc)
        if rest is not None:  # the answer holds part of what was asked: fc.ofst gets the rest
            response.cnst = PARTIAL_CONTENT
            response.cnot = rest
        return response

    def _poll(self, request: Request, pch: Resource) -> Deferred[Response] | Response:
        """A RETRIEVE of a <pollingChannel>'s ``pcu``: the oldest request waiting for its AE,
        at once or when one arrives (long polling, :mod:`acmews.cse.polling`)."""
        self.access.check(request.fr, pch, ACOP.RETRIEVE)
        pc = self.polling.retrieve(pch, request.rqet)
        if isinstance(pc, Deferred):
            return pc.addCallback(lambda rqp: self._respond(request, RSC.OK, rqp))
        return self._respond(request, RSC.OK, pc)

    def _check_retrievable(self, resource: Resource, virtual: str | None) -> None:
        """4005 for a contentInstance (or ``la``/``ol``) of a container whose
        disableRetrieval (``disr``) is true (TS-0004 7.4.7.2.2)."""
        container = resource if virtual is not None else self.store.get(resource.pi)
        if container is not None and container.attrs.get("disr"):
            raise OperationNotAllowed(
                f"the container {container.srn!r} disables the retrieval of its "
                "contentInstances (disr)"
            )

    def _base_representation(self) -> dict[str, Any]:
        """The CSEBase with its ``ctm`` (TS-0001 9.6.3: the CSE's current time), made anew
        only when the second or the CSEBase changed: the fast path stays a comparison."""
        now = self._clock.seconds()
        second = int(now)
        attrs = self.base.attrs
        if second != self._base_second or attrs is not self._base_attrs:
            self._base_second = second
            self._base_attrs = attrs
            self._base_pc = {CSE_BASE.key: {**attrs, "ctm": self._ts.format(second)}}
        return self._base_pc

    def _retrieved(self, request: Request, resource: Resource, virtual: str | None = None) -> None:
        """Tell the subscriptions of ``resource`` about its RETRIEVE: an operationMonitor
        of RETRIEVE; notificationEventType 5 for a container that holds no contentInstance
        (retrieved itself, or its latest or oldest, which then does not exist)."""
        if virtual is not None:
            if resource.ty != _CNT or self.store.latest_child(resource.ri, _SUB) is None:
                return
            try:
                self.access.check(request.fr, resource, ACOP.RETRIEVE)
            except OneM2MError:
                return  # only an originator that may read it makes it heard
        batch = Batch(self.store, request)
        if virtual is None:
            self._event(batch, resource, None, resource)
        if resource.ty == _CNT and not resource.attrs.get("cni"):
            self._event(batch, resource, NotificationEventType.RETRIEVE_EMPTY_CONTAINER, resource)
        done = self._apply(batch)
        if done is not None:
            done.addErrback(self._log_failure, "could not store a RETRIEVE's changes")

    # --- CREATE -------------------------------------------------------------------------------

    def _create(
        self, request: Request, connection: IConnection | None = None
    ) -> Deferred[Response] | Response:
        parent, virtual = self.addressing.locate(request.to)
        if virtual is not None:
            raise OperationNotAllowed(f"cannot CREATE under the virtual resource {virtual!r}")
        ty = request.ty
        kind = KINDS.get(ty) if ty is not None else None
        if kind is None or not kind.creatable:
            if ty in _KNOWN_TYPES:
                raise NotImplementedOp(f"resource type {ty} is not supported by this CSE")
            raise BadRequest(f"unknown resource type {ty!r}")
        if kind.specialized:  # a mgmtObj: its specialization by the content's key
            kind = kind.specialize(request.pc)
        kind, body = kind.unwrap(request.pc)
        rcn = self.content.rcn(request, 1)
        if request.fc is not None:
            raise BadRequest("filter criteria (fc) are not allowed on CREATE (TS-0004 7.3.2.1)")
        if not kind.may_be_created_under(parent.kind):
            if kind.ty == _SUB:
                # TS-0004 7.4.8.2.1 Recv-6.4: 5203 rather than 4108
                raise OneM2MError(
                    f"a {parent.kind.name} is not subscribable", rsc=RSC.TARGET_NOT_SUBSCRIBABLE
                )
            raise InvalidChildResourceType(
                f"a {kind.key} cannot be created under {parent.kind.key} {parent.srn!r}"
            )
        if parent.srn.count("/") >= MAX_DEPTH:
            raise BadRequest(f"the resource tree may be at most {MAX_DEPTH} levels deep")
        if kind.registrant and connection is not None:
            self._count_registration(connection)
        attrs = kind.validate_create(body)
        ri, creator = kind.identify(self, request.fr, parent)
        if "cr" in attrs:  # asked for with a null (TS-0004 7.4.x.2.1): the originator
            if request.fr:
                attrs["cr"] = request.fr
            else:
                del attrs["cr"]
        acpi = attrs.get("acpi")
        if acpi:
            self.access.validate_acpi(acpi)
        et = self.expiry.requested(attrs.pop("et", None))
        kind.prepare_create(self, parent, attrs)
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
            "et": et,
        }
        id_attribute = kind.id_attribute
        if id_attribute is not None:
            full[id_attribute] = ri
        full.update(attrs)
        resource = Resource(kind, full, f"{parent.srn}/{rn}", creator)
        if kind.registrant:
            self._check_registrant(kind, request.fr, ri, connection)
            if connection is not None:
                # registered through a credential: only it may claim the ID (acmews.auth)
                resource.owner = connection.authorization.owner
        waiting = kind.confirm(self, request.fr, resource)
        if waiting is not None:
            return Deferred.fromCoroutine(
                self._create_confirmed(request, parent, resource, rcn, waiting)
            )
        done = self._change(CSE._add, resource, parent, request)
        response = self._created(request, resource, rcn)
        return response if done is None else done.addCallback(_answer, response)

    async def _create_confirmed(
        self,
        request: Request,
        parent: Resource,
        resource: Resource,
        rcn: int,
        waiting: Deferred[None],
    ) -> Response:
        """Create ``resource`` once ``waiting`` (a subscription's verification) has fired."""
        await waiting
        if self.store.get(parent.ri) is not parent:
            raise NotFound(f"{parent.srn!r} was deleted during the subscription verification")
        if self.store.child(parent.ri, resource.rn) is not None:
            raise Conflict(f"a resource named {resource.rn!r} already exists under {parent.srn!r}")
        done = self._change(CSE._add, resource, parent, request)
        response = self._created(request, resource, rcn)
        if done is not None:
            await done
        return response

    def _add(self, batch: Batch, resource: Resource, parent: Resource) -> None:
        """The changes of a CREATE (see :meth:`_change`)."""
        batch.add(resource)
        self._event(batch, parent, NotificationEventType.CREATE_CHILD, resource, resource)
        resource.kind.created(self, batch, resource, parent)

    def _created(self, request: Request, resource: Resource, rcn: int) -> Response:
        pc = resource.kind.created_content(resource, self.content.result(resource, rcn, request))
        return self._respond(request, RSC.CREATED, pc)

    # --- UPDATE -------------------------------------------------------------------------------

    def _update(self, request: Request) -> Deferred[Response] | Response:
        resource, virtual = self.addressing.locate(request.to)
        if virtual is not None:
            raise OperationNotAllowed(f"the virtual resource {virtual!r} cannot be updated")
        kind = resource.kind
        if kind.immutable:
            raise OperationNotAllowed(f"a {kind.name} cannot be updated")
        body = _body(request.pc, kind)
        rcn = self.content.rcn(request, 1)
        if "acpi" in body:
            self.access.check_acpi_update(request.fr, resource, body)
        else:
            self.access.check(request.fr, resource, ACOP.UPDATE)
        if request.fc is not None:
            self.content.check_condition(request.fc, resource)
        changes = kind.validate_update(body)
        if changes.get("acpi"):
            self.access.validate_acpi(changes["acpi"])
        if "et" in changes:
            changes["et"] = self.expiry.requested(changes["et"])
        kind.prepare_update(self, resource, changes)
        waiting = kind.confirm_update(self, request.fr, resource, changes)
        gate = (
            None if waiting is not None else self.notifier.blocking_update(resource, body, request)
        )
        if waiting is not None or gate is not None:
            return Deferred.fromCoroutine(
                self._update_confirmed(request, resource, body, changes, rcn, waiting, gate)
            )
        return self._updated(request, resource, changes, rcn)

    def _updated(
        self, request: Request, resource: Resource, changes: dict[str, Any], rcn: int
    ) -> Deferred[Response] | Response:
        changes["lt"] = self._now()
        before = resource.attrs  # never changed in place: the rcn 9 answer compares with it
        done = self._change(CSE._replace, resource, changes, request)
        response = self._respond(
            request, RSC.UPDATED, self.content.result(resource, rcn, request, before)
        )
        return response if done is None else done.addCallback(_answer, response)

    async def _update_confirmed(
        self,
        request: Request,
        resource: Resource,
        body: dict[str, Any],
        changes: dict[str, Any],
        rcn: int,
        waiting: Deferred[None] | None,
        gate: Deferred[DeferredLock] | None,
    ) -> Response:
        """Update ``resource`` once ``waiting`` (the verification of new notification
        targets) has fired and ``gate`` (a blocking-update subscription's target) let it."""
        if waiting is not None:
            await waiting
            gate = self.notifier.blocking_update(resource, body, request)
        lock = None if gate is None else await gate
        try:
            if self.store.get(resource.ri) is not resource:
                raise NotFound(f"{resource.srn!r} was deleted while its UPDATE waited")
            result = self._updated(request, resource, changes, rcn)
            return await result if isinstance(result, Deferred) else result
        finally:
            if lock is not None:
                self.notifier.unblock(resource, lock)

    def _replace(self, batch: Batch, resource: Resource, changes: dict[str, Any]) -> None:
        """The changes of an UPDATE (see :meth:`_change`)."""
        resource.replace(changes)
        batch.update(resource)
        resource.kind.updated(self, batch, resource)
        self._event(batch, resource, NotificationEventType.UPDATE, resource, None, changes)

    # --- DELETE -------------------------------------------------------------------------------

    def _delete(self, request: Request) -> Deferred[Response] | Response:
        resource, virtual = self.addressing.locate(request.to)
        if virtual is not None:
            resource = self.addressing.virtual(resource, virtual)
        if not resource.kind.deletable:
            raise OperationNotAllowed(f"the {resource.kind.name} cannot be deleted")
        rcn = self.content.rcn(request, 0)
        self.access.check(request.fr, resource, ACOP.DELETE)
        if request.fc is not None:
            self.content.check_condition(request.fc, resource)
        gate = self.notifier.blocked(resource)
        if gate is not None:
            # an UPDATE of it waits for a blocking-update target: this DELETE waits for it
            return Deferred.fromCoroutine(self._delete_unblocked(request, resource, rcn, gate))
        return self._deleted(request, resource, rcn)

    def _deleted(
        self, request: Request, resource: Resource, rcn: int
    ) -> Deferred[Response] | Response:
        pc = self.content.content(resource, rcn, request.fr)
        parent = self.addressing.parent(resource)
        assert parent is not None
        done = self._change(CSE.delete_tree, resource, parent, request)
        response = self._respond(request, RSC.DELETED, pc)
        return response if done is None else done.addCallback(_answer, response)

    async def _delete_unblocked(
        self, request: Request, resource: Resource, rcn: int, gate: Deferred[DeferredLock]
    ) -> Response:
        lock = await gate
        try:
            if self.store.get(resource.ri) is not resource:
                raise NotFound(f"{resource.srn!r} was deleted while its DELETE waited")
            result = self._deleted(request, resource, rcn)
            return await result if isinstance(result, Deferred) else result
        finally:
            self.notifier.unblock(resource, lock)

    # --- applying a request's changes ---------------------------------------------------------

    def _change(
        self,
        change: Callable[[CSE, Batch, Resource, _T], None],
        resource: Resource,
        argument: _T,
        request: Request | None = None,
    ) -> Deferred[None] | None:
        """Make ``request``'s changes, ``change(self, batch, resource, argument)``, in a new
        batch and :meth:`_apply` it.

        Should ``change`` fail unexpectedly half-way, what it changed in memory still
        reaches the store, so that the two agree (every refusal comes before the first
        change), and the error goes on to the caller. (A plain function and its arguments,
        not a closure: the hot path allocates nothing for this.)
        """
        batch = Batch(self.store, request)
        try:
            change(self, batch, resource, argument)
        except BaseException:
            done = self._apply(batch)
            if done is not None:
                done.addErrback(self._log_failure, "could not store a failed request's changes")
            raise
        return self._apply(batch)

    def _apply(self, batch: Batch) -> Deferred[None] | None:
        """Hand ``batch`` to the store (one call); its notifications to the notifier once
        applied.

        A durable store's Deferred fires when the changes are durable; the caller answers
        only then, and the notifications go out only then (the batch's urgent ones before
        the answer).
        """
        if not batch:
            done = None
        else:
            done = self.store.apply(batch)
            self.expiry.track(batch)
            self.notifier.track(batch)
            if self.timeseries.running:
                self.timeseries.track(batch)
            if done is not None:
                done.addErrback(self._undone, batch)
        notifications = batch.notifications
        if notifications is not None:
            deliver = self.notifier.deliver
            urgent = batch.urgent
            if done is None:
                deliver(notifications, urgent)
            else:
                done.addCallback(lambda _: deliver(notifications, urgent))
        return done

    def _changed_elsewhere(self, batch: Batch) -> None:
        """A shared store brought in what another CSE node changed: index it as if it were
        this node's own change (the store has applied it)."""
        base = self.base
        for resource in batch.added:
            if resource.ri == base.ri and resource is not base:
                # (another node's CSEBase, this start's was not stored: see _base_not_created)
                self._use_base(resource)
        self.expiry.track(batch)
        self.notifier.track(batch)
        if self.timeseries.running:
            self.timeseries.track(batch)

    def _undone(self, failure: Failure, batch: Batch) -> Failure:
        """The store could not make ``batch`` durable and put back what it changed: index
        the ``et`` of what is back, and have the notifier's plans made anew."""
        self.notifier.track(batch)
        get = self.store.get
        for resource in (*batch.removed, *batch.updated):
            if get(resource.ri) is resource:
                self.expiry.retrack(resource)
        return failure

    def _log_failure(self, failure: Failure, what: str) -> None:
        self.log.failure(what, failure)

    # --- expiration (acmews.cse.expiry) -------------------------------------------------------

    def _every_resource(self) -> Iterator[Resource]:
        """Every stored resource below the CSEBase (start-up: the expiration index)."""
        children = self.store.children
        stack = list(children(self.base.ri))
        while stack:
            resource = stack.pop()
            yield resource
            stack.extend(children(resource.ri))

    def _sweep(self) -> None:
        """Delete what has expired before a request is handled (outside its context: the
        deletions are no part of it)."""
        access = self.access
        outer = access.request, access.connection
        access.request = access.connection = None
        try:
            self.expiry.sweep()
        finally:
            access.request, access.connection = outer

    def _expire(self, resources: list[Resource]) -> Deferred[None] | None:
        """Delete ``resources`` (expired) and their subtrees in one batch, as a DELETE would:
        with their subscribers' notifications (and a deleted subscription's ``su``'s)."""
        batch = Batch(self.store)
        try:
            for resource in resources:
                parent = batch.get(resource.pi)
                if parent is not None and not batch.gone(resource):
                    self.delete_tree(batch, resource, parent)
        finally:
            done = self._apply(batch)
        return done

    # --- what the hooks of the kinds use (CSEServices) ----------------------------------------

    def check(self, originator: str | None, resource: Resource, acop: ACOP) -> None:
        self.access.check(originator, resource, acop)

    def new_ri(self, kind: ResourceKind) -> str:
        return self.new_id(kind.short)

    def find(self, address: str) -> Resource | None:
        return self.addressing.find(address)

    def foreign_cse(self, address: str) -> str | None:
        return self.addressing.foreign_cse(address)

    def retrieve_remote(self, address: str, originator: str | None) -> Deferred[Response]:
        request = Request(
            Operation.RETRIEVE, address, self.notifier.new_rqi(), self.config.release, originator
        )
        result = self.fan_out.one(request, None)
        return result if isinstance(result, Deferred) else succeed(result)

    def new_id(self, prefix: str) -> str:
        """``prefix``, the store's next number in hex, six random hex digits: never a stored
        resource's ID, and never one a resource of this store had before."""
        store = self.store
        while True:
            ri = f"{prefix}{store.new_number():x}{secrets.token_hex(3)}"
            if store.get(ri) is None:  # a requested AE-ID may look like one
                return ri

    def delete_tree(self, batch: Changes, resource: Resource, parent: Resource) -> None:
        """Delete ``resource`` and its subtree; tell subscribers (net 2, net 4, sud)."""
        if batch.gone(resource):
            return  # already gone (an exc-expired subscription, say)
        self._event(batch, resource, NotificationEventType.DELETE, resource)
        doomed: list[Resource] = []
        stack = [resource]
        while stack:
            r = stack.pop()
            doomed.append(r)
            stack.extend(batch.children(r.ri))
        for r in reversed(doomed):  # children before their parents
            batch.remove(r)
            r.kind.deleted(self, batch, r)
        resource.kind.detached(self, batch, resource, parent)
        self._event(batch, parent, NotificationEventType.DELETE_CHILD, resource)

    def notify(self, batch: Changes, nus: Sequence[str], pc: dict[str, Any]) -> None:
        self.notifier.schedule(batch, nus, pc)

    def sur(self, sub: Resource) -> str:
        return self.notifier.sur(sub)

    def verify(
        self, sub: Resource, originator: str | None, nus: Sequence[str] | None = None
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self.notifier.verify(sub, originator, nus))

    def subscription_deleted(self, batch: Changes, sub: Resource) -> None:
        self.notifier.subscription_deleted(batch, sub)

    def _event(
        self,
        batch: Changes,
        subject: Resource,
        net: NotificationEventType | None,
        rep: Resource,
        exclude: Resource | None = None,
        modified: dict[str, Any] | None = None,
    ) -> None:
        """Notify the subscriptions of ``subject``; delete those that have expired (``exc``)."""
        expired = self.notifier.event(batch, subject, net, rep, modified, exclude)
        if expired is not None:
            for sub in expired:
                self.delete_tree(batch, sub, subject)

    # --- NOTIFY -------------------------------------------------------------------------------

    def _notify(
        self, request: Request, connection: IConnection | None
    ) -> Deferred[Response] | Response:
        resource, virtual = self.addressing.locate(request.to)
        if virtual == "pcu":  # a polled request's answer (acmews.cse.polling)
            self.access.check(request.fr, resource, ACOP.NOTIFY)
            self.polling.answer(resource, request.pc)
            return self._respond(request, RSC.OK)
        if virtual is not None or not resource.kind.registrant:
            raise OperationNotAllowed("NOTIFY is only accepted for an AE")
        # a peer CSE relays its notifications: one registered here that proved its CSE-ID
        if not (self._is_peer_cse(request.fr) and self.acts_as_cse(request.fr, connection)):
            self.access.check(request.fr, resource, ACOP.NOTIFY)
        aei = resource.kind.originator_of(resource)
        outgoing = copy_request(
            request, to=aei, fr=self._sp_relative(request.fr), rqi=self.notifier.new_rqi()
        )
        d = self._pass_on(aei, outgoing, tuple(resource.attrs.get("poa", ())), False)

        def answered(response: Response) -> Response:
            response.rqi, response.rvi, response.to = request.rqi, request.rvi, request.fr
            return response

        return d.addCallback(answered)


def _supported_types() -> list[int]:
    """The CSEBase's ``srt``: every resource type registered (TS-0001 9.6.3)."""
    return sorted(KINDS)


def _body(pc: Any, kind: ResourceKind) -> dict[str, Any]:
    """The resource body of an UPDATE ``pc``: exactly ``{"m2m:<short>": {...}}``."""
    return body_of(pc, kind.key)


def _uncount(counts: dict[_K, int], key: _K) -> None:
    """One fewer for ``key``; a key at zero is forgotten (the table holds only what waits)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def _is_cse_id(originator: str | None) -> TypeGuard[str]:
    """Is ``originator`` a CSE-ID (``/id-mn``: one slash, nothing after another)?"""
    return originator is not None and originator.startswith("/") and "/" not in originator[1:]


def _answer(_: None, response: Response) -> Response:
    """The response, once the store has made the request's changes durable."""
    return response
