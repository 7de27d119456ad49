"""The ``<group>`` resource (ty 9, TS-0001 9.6.13, TS-0004 7.4.13) and its ``fopt`` fan-out
point (``<fanOutPoint>``, TS-0001 9.6.14 and 10.2.7.6).

A group lists its members in ``mid`` (resource IDs, or addresses on other CSEs such as
``/id-mn/cnt123``); ``cnm`` counts them, at most ``mnm``. Members are checked when the group
is created and when ``mid`` or ``mnm`` changes: a duplicate is dropped, more than ``mnm`` is
6010; a member on this CSE that does not exist or is not of the ``mt`` member type is
handled by ``csy`` (1 abandon member: it is dropped; 2 abandon group: 6011; 3 set mixed:
``mt`` becomes 24 mixed, and a member that does not exist is dropped). A member on another
CSE is RETRIEVEd through it (all at once, before the CREATE or UPDATE is done) and judged the
same way; one that does not answer 2000 or 4004 in time stays unchecked. ``mtv`` is true when
every member was checked (or ``mt`` is mixed).

A request to ``<group>/fopt`` or ``<group>/fopt/relative/path`` is sent to every member (its
address with the relative path appended), all at once: a member on this CSE through the
CSE's own request handling, a member on another CSE forwarded over the CSE-to-CSE link (one
forwarded request each, pipelined on the link). Each has :data:`MEMBER_TIMEOUT` seconds; the
answer is 2000 with ``{"m2m:agr": {"m2m:rsp": [...]}}``, one response primitive per member in
``mid`` order (``rsc``, ``rqi``, ``pc``, ``fr`` the member's address, ``to`` the originator):
a member's failure is its own ``rsc``. Who may use ``fopt``: the ACPs ``macp`` lists, or when
there are none whoever has the same privilege on the group itself; each member request is
then checked as the originator's own request by the member's host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from acmews.codes import ACOP, RSC, Operation, ResourceType
from acmews.cse.resource import (
    MAX_LIST,
    CSEServices,
    Resource,
    ResourceKind,
    make_kind,
    register_kind,
    v_nonempty_str_list,
    v_pos_int,
    v_str,
    v_str_list,
)
from acmews.errors import (
    BadRequest,
    InternalServerError,
    OneM2MError,
    OriginatorHasNoPrivilege,
    RequestTimeout,
)
from acmews.primitive import Request, Response, copy_request, error_response, is_int_not_bool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from acmews.cse.access import AccessControl
    from acmews.cse.addressing import Addressing
    from acmews.interfaces import IConnection

__all__ = ["GROUP", "MAX_MEMBERS", "MEMBER_TIMEOUT", "FanOut", "GroupKind"]

_GRP = ResourceType.GRP
#: memberType "mixed" (TS-0004 6.3.4.2.x m2m:memberType)
MIXED = 24
ABANDON_MEMBER, ABANDON_GROUP, SET_MIXED = 1, 2, 3
#: seconds each member has to answer a request through ``fopt``
MEMBER_TIMEOUT = 10.0
#: members a group may have (TS-0001 leaves it to the implementation): past it, 4000
MAX_MEMBERS = 10_000
_ACOPS = {
    Operation.CREATE: ACOP.CREATE,
    Operation.RETRIEVE: ACOP.RETRIEVE,
    Operation.UPDATE: ACOP.UPDATE,
    Operation.DELETE: ACOP.DELETE,
    Operation.NOTIFY: ACOP.NOTIFY,
}


def v_member_type(name: str, value: Any) -> Any:
    known = {int(t) for t in ResourceType} | {MIXED}
    if isinstance(value, bool) or value not in known:
        raise BadRequest(f"attribute '{name}' must be a resource type (or 24, mixed)")
    return value


def v_member_ids(name: str, value: Any) -> Any:
    """``mid``: non-empty addresses, up to :data:`MAX_MEMBERS` (other lists hold fewer: they
    are checked here a list's worth at a time)."""
    if not isinstance(value, list):
        return v_str_list(name, value)  # 4000
    if len(value) > MAX_MEMBERS:
        raise BadRequest(f"attribute '{name}' may hold at most {MAX_MEMBERS} members")
    for start in range(0, len(value), MAX_LIST):
        v_nonempty_str_list(name, value[start : start + MAX_LIST])
    return value


def v_consistency(name: str, value: Any) -> Any:
    if isinstance(value, bool) or value not in (ABANDON_MEMBER, ABANDON_GROUP, SET_MIXED):
        raise BadRequest(
            f"attribute '{name}' must be 1 (abandon member), 2 (abandon group) or 3 (set mixed)"
        )
    return value


class GroupKind(ResourceKind):
    """A ``<group>``: its members are checked (``csy``) whenever ``mid`` or ``mnm`` is set;
    ``fopt`` is its virtual fan-out point (handled by :class:`FanOut`)."""

    __slots__ = ()
    virtual = frozenset({"fopt"})

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        attrs.setdefault("csy", ABANDON_MEMBER)
        _check_macp(cse, attrs.get("macp"))
        attrs.update(_members(cse, attrs["mid"], attrs["mnm"], attrs["mt"], attrs["csy"]))

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        _check_macp(cse, changes.get("macp"))
        if "mid" in changes or "mnm" in changes:
            attrs = resource.attrs
            mid = changes.get("mid", attrs["mid"])
            mnm = changes.get("mnm", attrs["mnm"])
            changes.update(_members(cse, mid, mnm, attrs["mt"], attrs.get("csy", ABANDON_MEMBER)))

    def confirm(
        self, cse: CSEServices, originator: str | None, resource: Resource
    ) -> Deferred[None] | None:
        """TS-0001 10.2.7.2: members on other CSEs are retrieved to check their type."""
        attrs = resource.attrs
        d = _check_remote(cse, originator, attrs["mid"], attrs["mnm"], attrs["mt"], attrs["csy"])
        return None if d is None else d.addCallback(resource.replace)

    def confirm_update(
        self,
        cse: CSEServices,
        originator: str | None,
        resource: Resource,
        changes: dict[str, Any],
    ) -> Deferred[None] | None:
        """TS-0001 10.2.7.4: as on CREATE, for a new ``mid``."""
        if "mid" not in changes:
            return None
        attrs = resource.attrs
        d = _check_remote(
            cse,
            originator,
            changes["mid"],
            changes.get("mnm", attrs["mnm"]),
            changes["mt"],
            attrs.get("csy", ABANDON_MEMBER),
        )
        return None if d is None else d.addCallback(changes.update)


def _check_remote(
    cse: CSEServices, originator: str | None, mid: list[str], mnm: int, mt: int, csy: int
) -> Deferred[dict[str, Any]] | None:
    """The members (as :func:`_members`) once those on other CSEs have answered a RETRIEVE
    (all at once); None when there is nothing to ask (none of them, or ``mt`` mixed)."""
    remote = [m for m in mid if cse.foreign_cse(m) is not None]
    if not remote or mt == MIXED:
        return None
    asked = [cse.retrieve_remote(m, originator) for m in remote]

    def judged(results: list[tuple[bool, Any]]) -> dict[str, Any]:
        types: dict[str, int | None] = {}
        for member, (_, response) in zip(remote, results, strict=True):
            ty = _type_of(response)
            if ty is not False:  # unreachable, refused: left unchecked
                types[member] = ty
        return _members(cse, mid, mnm, mt, csy, types)

    return DeferredList(asked, consumeErrors=True).addCallback(judged)


def _type_of(response: Any) -> int | bool | None:
    """A member's ``ty`` from its RETRIEVE answer; None: it does not exist (4004); False:
    not known (another answer)."""
    if not isinstance(response, Response):
        return False
    if response.rsc == RSC.NOT_FOUND:
        return None
    pc = response.pc
    if response.rsc == RSC.OK and isinstance(pc, dict) and len(pc) == 1:
        body = next(iter(pc.values()))
        ty = body.get("ty") if isinstance(body, dict) else None
        if is_int_not_bool(ty):
            return int(ty)
    return False


def _check_macp(cse: CSEServices, macp: list[str] | None) -> None:
    """4000 unless each ``macp`` entry names an accessControlPolicy of this CSE."""
    for acp_id in macp or ():
        acp = cse.find(acp_id)
        if acp is None or acp.ty != ResourceType.ACP:
            raise BadRequest(f"macp names {acp_id!r}: no such accessControlPolicy")


def _members(
    cse: CSEServices,
    mid: list[str],
    mnm: int,
    mt: int,
    csy: int,
    remote: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """The checked ``mid``, ``cnm``, ``mtv`` (and ``mt``, set mixed) of a group (TS-0001
    10.2.7.2 and 10.2.7.4): 6010 past ``mnm``, 6011 for a bad member under abandon group.
    ``remote``: the types of members on other CSEs (None: it does not exist), as far as
    known; the others are kept unchecked."""
    unique = list(dict.fromkeys(mid))
    if len(unique) > mnm:
        raise OneM2MError(
            f"{len(unique)} members exceed the group's mnm {mnm}",
            rsc=RSC.MAX_NUMBER_OF_MEMBER_EXCEEDED,
        )
    kept: list[str] = []
    validated = True
    for member in unique:
        ty: int | None
        if cse.foreign_cse(member) is not None:
            if remote is None or member not in remote:
                kept.append(member)  # on another CSE, not (yet) checked
                validated = False
                continue
            ty = remote[member]
        else:
            resource = cse.find(member)
            ty = None if resource is None else resource.ty
        if ty is not None and (mt == MIXED or ty == mt):
            kept.append(member)
            continue
        why = "does not exist" if ty is None else f"is of type {ty}, not {mt}"
        if csy == ABANDON_GROUP:
            raise OneM2MError(
                f"member {member!r} {why} (csy 2: abandon group)",
                rsc=RSC.MEMBER_TYPE_INCONSISTENT,
            )
        if csy == SET_MIXED and ty is not None:
            mt = MIXED
            kept.append(member)
    out: dict[str, Any] = {"mid": kept, "cnm": len(kept), "mtv": validated or mt == MIXED}
    out["mt"] = mt
    return out


#: the group kind, registered with the others
GROUP = register_kind(
    make_kind(
        GroupKind,
        _GRP,
        "grp",
        "group",
        {
            "mt": v_member_type,
            "mid": v_member_ids,
            "mnm": v_pos_int,
            "macp": v_str_list,
            "csy": v_consistency,
            "gn": v_str,
        },
        frozenset({"mt", "mid", "mnm"}),
        {"lbl", "acpi", "et", "mid", "mnm", "macp", "gn"},
        {ResourceType.SUB},
        ("rn", "lbl", "acpi", "et", "cr"),
        parents={ResourceType.CSEBASE, ResourceType.AE, ResourceType.CSR},
    )
)

Handler = Callable[[Request, "IConnection"], "Deferred[Response] | Response"]


class FanOut:
    """Requests to a group's ``fopt``: sent to every member, answered aggregated."""

    def __init__(
        self,
        cse_id: str,
        admin: str,
        addressing: Addressing,
        access: AccessControl,
        handle: Handler,
        clock: IReactorTime,
        timeout: float = MEMBER_TIMEOUT,
    ) -> None:
        self._cse_id = cse_id
        self._admin = admin
        self._addressing = addressing
        self._access = access
        self._handle = handle
        self._clock = clock
        self.timeout = timeout

    def handle(
        self, request: Request, connection: IConnection | None
    ) -> Deferred[Response] | Response | None:
        """The aggregated answer to ``request`` if it addresses a group's ``fopt`` on this
        CSE; None for any other request (handled as usual)."""
        to = request.to
        head, sep, rest = to.partition("/fopt")
        while sep and rest and rest[0] != "/":  # "/foptx": not the segment fopt
            more, sep, rest = rest.partition("/fopt")
            head = f"{head}/fopt{more}"
        if not sep or self._addressing.foreign_cse(to) is not None:
            return None
        try:
            group, virtual = self._addressing.locate(head)
        except OneM2MError:
            return None
        if virtual is not None or group.ty != _GRP:
            return None
        acop = _ACOPS.get(request.op)
        if acop is None:
            raise BadRequest(f"unknown operation {request.op!r}")
        self._check(request.fr, group, acop)
        return self._fan_out(request, connection, group, rest)

    def _check(self, originator: str | None, group: Resource, acop: ACOP) -> None:
        """TS-0001 9.6.13: the ACPs of ``macp`` decide who may access the members through
        ``fopt``; without them, the group's own privileges."""
        macp = group.attrs.get("macp")
        access = self._access
        if not macp:
            access.check(originator, group, acop)
            return
        if originator == self._admin:
            return
        if originator is None or not self._granted(macp, originator, acop, group):
            raise OriginatorHasNoPrivilege(
                f"originator {originator!r} has no {acop.name} privilege in the "
                f"membersAccessControlPolicies (macp) of {group.srn!r}"
            )

    def _granted(self, macp: list[str], originator: str, acop: ACOP, group: Resource) -> bool:
        find = self._addressing.find
        for acp_id in macp:
            acp = find(acp_id)
            pv = None if acp is None else acp.kind.granted_privileges(acp)
            if pv is not None and self._access.rules_allow(pv, originator, acop, group):
                return True
        return False

    def _fan_out(
        self, request: Request, connection: IConnection | None, group: Resource, rest: str
    ) -> Deferred[Response] | Response:
        members: list[str] = group.attrs["mid"]
        originator = request.fr
        rsps: list[dict[str, Any]] = []
        # members answered at once (those on this CSE, mostly) need no Deferred: a thousand
        # of them would cost more in Deferreds than in their requests
        waiting: list[Deferred[None]] = []
        for i, member in enumerate(members):
            target = member + rest
            outgoing = copy_request(request, to=target, rt=None)
            result = self.one(outgoing, connection)
            if isinstance(result, Response):
                rsps.append(_member_rsp(result, target, originator))
                continue
            rsps.append({})  # its place, filled in when it answers
            waiting.append(result.addCallback(_fill, rsps, i, target, originator))
        if not waiting:
            return self._aggregate(request, rsps)
        gathered = DeferredList(waiting, consumeErrors=True)
        return gathered.addCallback(lambda _: self._aggregate(request, rsps))

    def _aggregate(self, request: Request, rsps: list[dict[str, Any]]) -> Response:
        return Response(
            RSC.OK,
            request.rqi,
            request.rvi,
            {"m2m:agr": {"m2m:rsp": rsps}},
            request.fr,
            self._cse_id,
            None,
            None,
            None,
            request.vsi,
        )

    def one(
        self, outgoing: Request, connection: IConnection | None
    ) -> Deferred[Response] | Response:
        """One member's answer, a Response whatever happens (4008 after the timeout)."""
        try:
            result = self._handle(outgoing, connection)  # type: ignore[arg-type]
        except Exception as e:  # the handler answers errors; this is a last resort
            result = self._error(outgoing, e)
        if isinstance(result, Response):
            return result
        # a timer of its own rather than addTimeout: cancelling the member's request makes
        # the CSE answer it (5103 "cancelled"), and that answer must not be what is reported
        answer: Deferred[Response] = Deferred()

        def timed_out() -> None:
            answer.callback(
                self._error(
                    outgoing,
                    RequestTimeout(
                        f"member {outgoing.to!r} did not answer within {self.timeout:g} s"
                    ),
                )
            )
            result.cancel()

        timer = self._clock.callLater(self.timeout, timed_out)

        def answered(outcome: Response | Failure) -> None:
            if timer.active():
                timer.cancel()
                if isinstance(outcome, Failure):
                    outcome = self._error(outgoing, outcome.value)
                answer.callback(outcome)

        result.addBoth(answered)
        return answer

    def _error(self, outgoing: Request, error: BaseException | None) -> Response:
        if not isinstance(error, OneM2MError):
            error = InternalServerError(f"internal error: {type(error).__name__}")
        return error_response(
            outgoing.rqi, error, rvi=outgoing.rvi, fr=self._cse_id, to=outgoing.fr
        )


def _fill(
    response: Response,
    rsps: list[dict[str, Any]],
    i: int,
    target: str,
    originator: str | None,
) -> None:
    rsps[i] = _member_rsp(response, target, originator)


def _member_rsp(response: Response, target: str, originator: str | None) -> dict[str, Any]:
    """A member's response primitive in the aggregate: ``fr`` names the member."""
    rsp = response.to_dict()
    rsp["fr"] = target
    if originator is not None:
        rsp["to"] = originator
    else:
        rsp.pop("to", None)
    return rsp
