"""Non-blocking requests (``rt`` 1 and 2, TS-0001 8.2.2 and 8.2.3) and the ``<request>``
resource (ty 17, TS-0001 9.6.12) that stands for each.

A request with ``rt.rtv`` 1 (nonBlockingRequestSynch) is answered at once with 1001 and the
address of a new ``<request>`` under the CSEBase (``{"m2m:uri": "/id-in/req..."}``); with 2
(nonBlockingRequestAsynch), 1002 and the same. The operation then runs as a blocking request
would (from ``callLater(0)``, after that answer has gone), and its result goes into the
``<request>``: ``rs`` (requestStatus) 1 COMPLETED or 2 FAILED instead of 3 PENDING, ``ors``
(operationResult) the response primitive. The originator polls it (RETRIEVE). With ``rt`` 2 the
result is also sent as a NOTIFY whose content is ``{"m2m:rsp": <the response>}``: to the
``rt.nu`` targets, or when there are none to the originator itself (its live connection
first, then its poa, as any notification; ACME does the same).

Where TS-0001 leaves a choice, acmews does what ACME does by default: ``rt`` 4 (flexBlocking)
is answered blocking; ``rt`` 5 (noResponse) is carried out and nothing is answered (the
session drops the response). A registration (AE, remoteCSE CREATE) is always answered
blocking: the binding binds a connection by the answer to its AE CREATE. A request for a
resource on another CSE with ``rt`` 1 or 2 is handled here (the ``<request>`` is on this CSE,
where the originator asked) and forwarded to the next hop as a blocking request; any request
is forwarded without its ``rt``.

A ``<request>`` is the CSE's: an originator cannot CREATE or UPDATE one (4005); only its
originator and the admin may RETRIEVE, discover or DELETE it (DELETE does not stop the
operation: its result is dropped, or with ``rt`` 2 still notified). Its ``et`` comes from the
request's ``rset``, else its ``rqet``, else ``CSEConfig.request_expiry`` (60 s), at most
``CSEConfig.resource_expiry`` away. At most ``max_requests_per_originator`` are kept per
originator and ``max_requests`` in all: a new one deletes the oldest past either bound, and
those of its originator whose ``et`` has passed (and a few expired ones of anyone's).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from acmews.codes import RSC, Operation, RequestStatus, ResourceType, ResponseType
from acmews.cse.config import CSEConfig
from acmews.cse.resource import (
    Changes,
    Resource,
    ResourceKind,
    make_kind,
    register_kind,
    v_nu,
)
from acmews.cse.store import Batch, IResourceStore
from acmews.errors import BadRequest, OperationNotAllowed
from acmews.interfaces import IConnection
from acmews.logs import Logger
from acmews.primitive import Request, Response, copy_request
from acmews.timestamps import Timestamps, expiry_delay, parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["REQUEST", "NonBlocking", "RequestKind"]

_REQ = ResourceType.REQ
#: expired <request>s of anyone's deleted at most per new one (bounded work per request)
SWEEP = 8
#: the request parameters a <request>'s ``mi`` (metaInformation) keeps
_META = ("ty", "rt", "rqet", "rset", "oet", "ot", "rcn", "fc", "drt", "rvi", "vsi")
_REGISTRANTS = frozenset({int(ResourceType.AE), int(ResourceType.CSR)})


class RequestKind(ResourceKind):
    """A ``<request>``: made and updated by the CSE only; its originator's and the admin's."""

    __slots__ = ()

    def validate_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise OperationNotAllowed(
            "a <request> is made by the CSE for a non-blocking request (rt 1 or 2); it cannot "
            "be created"
        )

    def validate_update(self, body: Mapping[str, Any]) -> dict[str, Any]:
        raise OperationNotAllowed("a <request> cannot be updated")

    def own_privileges(self, resource: Resource) -> dict[str, Any] | None:
        # its originator (the creator) and the admin, nobody else: an acpi of the CSEBase
        # grants nothing here (an UPDATE is refused by the kind, whoever asks)
        originator = resource.creator or resource.attrs.get("org")
        return {"acr": [{"acor": [originator], "acop": 63}] if originator else []}


#: the <request> kind, registered with the others
REQUEST = register_kind(
    make_kind(
        RequestKind,
        _REQ,
        "req",
        "request",
        {},
        frozenset(),
        set(),
        set(),
        (),
        parents={ResourceType.CSEBASE},
    )
)


class _Ledger:
    """The ``<request>`` resources, oldest first, in all and per originator: which to delete
    to keep within the bounds. Entries may outlive their resource (a DELETE, an expiry
    sweep): each is checked with ``alive`` when met, and forgotten if gone."""

    def __init__(self, per_originator: int, total: int) -> None:
        self.per_originator = max(1, per_originator)
        self.total = max(1, total)
        #: ri -> (originator, expiry in clock seconds)
        self._all: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: originator -> ri -> expiry
        self._by: dict[str, OrderedDict[str, float]] = {}

    def add(self, ri: str, originator: str, expires: float) -> None:
        self._all[ri] = (originator, expires)
        self._by.setdefault(originator, OrderedDict())[ri] = expires

    def _drop(self, ri: str) -> None:
        originator, _ = self._all.pop(ri)
        mine = self._by[originator]
        del mine[ri]
        if not mine:
            del self._by[originator]

    def doomed(self, originator: str, now: float, alive: Callable[[str], bool]) -> list[str]:
        """The ``<request>`` resources to delete before one more of ``originator`` is kept
        (they are forgotten here)."""
        doomed: list[str] = []
        entries = self._all
        for _ in range(SWEEP):  # the oldest of anyone's, while expired or gone
            if not entries:
                break
            ri, (_, expires) = next(iter(entries.items()))
            if expires > now and alive(ri):
                break
            self._drop(ri)
            doomed.append(ri)
        mine = self._by.get(originator)
        if mine is not None and len(mine) >= self.per_originator:
            for ri, expires in list(mine.items()):  # at most per_originator of them
                if expires <= now or not alive(ri):
                    self._drop(ri)
                    doomed.append(ri)
            while originator in self._by and len(mine) >= self.per_originator:
                ri = next(iter(mine))
                self._drop(ri)
                doomed.append(ri)
        while len(entries) >= self.total:
            ri = next(iter(entries))
            self._drop(ri)
            doomed.append(ri)
        return doomed


class NonBlocking:
    """Takes the non-blocking requests of a CSE (see the module docstring).

    @param apply: the CSE's way to apply a batch (and send the notifications it carries).
    @param execute: answers a request as the CSE does (never raises).
    @param delete_tree: deletes a resource with its subtree (and events) in a batch.
    @param notify: adds a notification for targets to a batch.
    @param new_id: a new resource ID with a prefix.
    """

    log = Logger()

    def __init__(
        self,
        config: CSEConfig,
        store: IResourceStore,
        base: Resource,
        clock: IReactorTime,
        apply: Callable[[Batch], Deferred[None] | None],
        execute: Callable[[Request, IConnection], Deferred[Response] | Response],
        delete_tree: Callable[[Changes, Resource, Resource], None],
        notify: Callable[[Changes, Sequence[str], dict[str, Any]], None],
        new_id: Callable[[str], str],
    ) -> None:
        self._config = config
        self._store = store
        self._base = base
        self._clock = clock
        self._apply = apply
        self._execute = execute
        self._delete_tree = delete_tree
        self._notify = notify
        self._new_id = new_id
        self._ts = Timestamps()
        self._ledger = _Ledger(config.max_requests_per_originator, config.max_requests)
        self._restore()

    def use_base(self, base: Resource) -> None:
        """The CSEBase is ``base`` from now on (another CSE node stored it first)."""
        self._base = base

    def _restore(self) -> None:
        """Know the ``<request>`` resources a durable store kept; those still pending were
        cut short by a stop (their result is lost): they are marked failed."""
        batch = Batch(self._store)
        now = self._now()
        for resource in self._store.children(self._base.ri, _REQ):
            attrs = resource.attrs
            try:
                expires = parse_timestamp(attrs["et"])
            except (KeyError, ValueError):
                expires = 0.0
            self._ledger.add(resource.ri, resource.creator or "", expires)
            if attrs.get("rs") == RequestStatus.PENDING:
                reason = "the CSE stopped before the result was recorded (the operation may "
                reason += "or may not have been made)"
                ors = {
                    "rsc": int(RSC.INTERNAL_SERVER_ERROR),
                    "rqi": attrs.get("rid"),
                    "pc": {"m2m:dbg": reason},
                    "to": attrs.get("org"),
                    "fr": self._config.cse_id,
                    "ot": now,
                }
                resource.replace({"rs": int(RequestStatus.FAILED), "ors": ors, "lt": now})
                batch.update(resource)
        if batch:
            self._applied(self._apply(batch), "could not mark the interrupted requests failed")

    def _now(self) -> str:
        return self._ts.format(self._clock.seconds())

    def takes(self, request: Request) -> bool:
        """Is ``request`` (one with an ``rt``) answered non-blocking? 4000 for an ``rt`` that
        cannot be honoured."""
        rt = request.rt
        assert rt is not None
        rtv = rt.get("rtv", ResponseType.BLOCKING)
        nu = rt.get("nu")
        if nu is not None:
            if rtv != ResponseType.NON_BLOCKING_ASYNC:
                raise BadRequest(
                    "'rt.nu' (where the result goes) is only for rt.rtv 2 "
                    "(nonBlockingRequestAsynch)"
                )
            v_nu("rt.nu", nu)
        if rtv not in (ResponseType.NON_BLOCKING_SYNC, ResponseType.NON_BLOCKING_ASYNC):
            return False  # 3, 4 (answered blocking, as ACME does by default) and 5
        return not (request.op == Operation.CREATE and request.ty in _REGISTRANTS)

    def accept(self, request: Request, connection: IConnection) -> Deferred[Response] | Response:
        """Make the ``<request>`` for ``request`` (one :meth:`takes`), answer 1001 or 1002 with
        its address, and carry the request out once that answer has gone."""
        store = self._store
        base = self._base
        originator = request.fr or ""
        seconds = self._clock.seconds()
        now = self._ts.format(seconds)
        expires = self._expiry(request, seconds)
        batch = Batch(store)
        for ri in self._ledger.doomed(originator, seconds, lambda ri: store.get(ri) is not None):
            old = batch.get(ri)
            if old is not None:
                self._delete_tree(batch, old, base)
        ri = self._new_id(REQUEST.short)
        attrs: dict[str, Any] = {
            "ty": int(_REQ),
            "ri": ri,
            "rn": ri,
            "pi": base.ri,
            "ct": now,
            "lt": now,
            "et": self._ts.format(expires),
            "op": int(request.op),
            "tg": request.to,
            "org": originator,
            "rid": request.rqi,
            "mi": {name: value for name in _META if (value := getattr(request, name)) is not None},
            "rs": int(RequestStatus.PENDING),
        }
        if request.pc is not None:
            attrs["pc"] = request.pc
        resource = Resource(REQUEST, attrs, f"{base.srn}/{ri}", request.fr)
        batch.add(resource)
        done = self._apply(batch)
        self._ledger.add(ri, originator, expires)
        synch = request.rt is not None and request.rt.get("rtv") == ResponseType.NON_BLOCKING_SYNC
        rsc = RSC.ACCEPTED_NON_BLOCKING_SYNC if synch else RSC.ACCEPTED_NON_BLOCKING_ASYNC
        response = Response(
            rsc,
            request.rqi,
            request.rvi,
            {"m2m:uri": f"{self._config.cse_id}/{ri}"},
            to=request.fr,
            fr=self._config.cse_id,
            ot=now,
        )
        if done is None:
            self._clock.callLater(0, self._run, request, resource, connection)
            return response

        def durable(_: None) -> Response:
            self._clock.callLater(0, self._run, request, resource, connection)
            return response

        return done.addCallback(durable)

    def _expiry(self, request: Request, now: float) -> float:
        """When the ``<request>`` for ``request`` expires (clock seconds)."""
        limit = self._config.resource_expiry
        for value in (request.rset, request.rqet):
            delay = expiry_delay(value, now)
            if delay is not None and delay > 0:
                return now + min(delay, limit)
        return now + min(self._config.request_expiry, limit)

    def _run(self, request: Request, resource: Resource, connection: IConnection) -> None:
        """Carry ``request`` out as a blocking one; record (and notify) its result."""
        result = self._execute(copy_request(request, rt=None), connection)
        if isinstance(result, Deferred):
            result.addCallback(self._done, request, resource)
            result.addErrback(
                self._log_failure, "could not record a non-blocking request's result"
            )
        else:
            self._done(result, request, resource)

    def _done(self, response: Response, request: Request, resource: Resource) -> None:
        extra = response.extra
        ors = {k: v for k, v in response.to_dict().items() if k not in extra}
        ors["rqi"] = request.rqi  # the originator's, whatever a next hop answered with
        batch = Batch(self._store)
        if self._store.get(resource.ri) is resource:  # not deleted meanwhile
            status = RequestStatus.COMPLETED if response.ok else RequestStatus.FAILED
            resource.replace({"rs": int(status), "ors": ors, "lt": self._now()})
            batch.update(resource)
        rt = request.rt
        if rt is not None and rt.get("rtv") == ResponseType.NON_BLOCKING_ASYNC:
            nu = rt.get("nu") or ([request.fr] if request.fr else [])
            self._notify(batch, nu, {"m2m:rsp": ors})
        self._applied(self._apply(batch), "could not record a non-blocking request's result")

    def _applied(self, done: Deferred[None] | None, what: str) -> None:
        if done is not None:
            done.addErrback(self._log_failure, what)

    def _log_failure(self, failure: Failure, what: str) -> None:
        self.log.failure(what, failure)
