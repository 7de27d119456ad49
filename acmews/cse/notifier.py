"""Notifications: subscription events, their delivery, and subscription verification.

Events are found synchronously while a request changes resources (through the request's
:class:`~acmews.cse.store.Batch`). The notifications they cause are carried by that batch;
once it has been applied (made durable), the CSE hands them to :meth:`Notifier.deliver`,
which sends them from ``callLater(0, ...)``: they never delay the response to that request,
and their failures are only logged. The exception is a subscription's deletion notice (and
its pending batch): TS-0004 has it sent before the DELETE is answered, so those (and the
notifications before them) are handed to the sender before the response leaves.

A subscription's attributes are read through its :class:`~acmews.cse.subscription.Policy`,
compiled once per version of them. A subscription with a batch (``bn``), ``ln`` or
statistics (``nse``) tags its notifications, which the notifier then collects, marks or
counts; the others are sent as they are.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from acmews.codes import RSC, EventCategory, NotificationEventType, Operation, ResourceType
from acmews.cse.addressing import Addressing
from acmews.cse.config import CSEConfig
from acmews.cse.resource import KINDS, Changes, Delivery, Resource, ResourceReader, Target
from acmews.cse.store import Batch, IResourceStore
from acmews.cse.subscription import Policy, compile_policy
from acmews.errors import (
    NotFound,
    OneM2MError,
    RemoteError,
    RequestTimeout,
    SubscriptionVerificationInitiationFailed,
    TargetNotReachable,
)
from acmews.interfaces import IRequestSender
from acmews.logs import Logger, Throttle
from acmews.poa.steps import scheme_of, split_ct, target_key
from acmews.primitive import Notification, Request, Response, Shared
from acmews.timestamps import Timestamps, parse_duration, parse_timestamp

#: notifications sent per reactor turn in a fan-out
DELIVERY_BATCH = 64
#: notifications a batch (``bn``) collects at most before it is sent, whatever its ``num``
MAX_BATCH = 1000

#: nus whose registrant the notifier remembers (then it forgets them all and starts again)
MAX_KNOWN_TARGETS = 100_000

__all__ = ["Notifier", "missing_data"]

_SUB = ResourceType.SUB
_NOTIFY = Operation.NOTIFY
_NET = NotificationEventType
#: the event an operation on the subscribed-to resource causes, for an operationMonitor
#: (a RETRIEVE causes none: it is monitored with ``net`` None)
_PRIMARY: dict[int, NotificationEventType | None] = {
    Operation.CREATE: _NET.CREATE_CHILD,
    Operation.RETRIEVE: None,
    Operation.UPDATE: _NET.UPDATE,
    Operation.DELETE: _NET.DELETE,
}
#: statistics counters of a notification target: requests, responses, events (``nsi``)
_RQS, _RSR, _NOEC = 0, 1, 2
#: the target of a delivery that goes nowhere itself (a flush)
_NOWHERE: Target = ("", (), False, "")


class _Compiled:
    """A subscription's compiled attributes: the attrs they were compiled from, their
    policy, and for a plain subscription (its notification carries the whole resource to its
    one ``nu`` and nothing else) its ``sur`` and ``nu`` (else None and "")."""

    __slots__ = ("attrs", "nu", "policy", "sur")

    def __init__(self, attrs: Mapping[str, Any], policy: Policy, sur: str | None, nu: str) -> None:
        self.attrs = attrs
        self.policy = policy
        self.sur = sur
        self.nu = nu


class _Member:
    """A subscription in the plan of its subscribed-to resource (:meth:`Notifier._plan`):
    the subscription, and of its compiled entry the attrs it was compiled from, the policy
    and ``sur`` (one object read per subscriber); for a plain one its ``nu``'s target
    and that target's outcome handler (else None). A plain member is also its
    notifications' tag (see :meth:`Notifier._send_range`)."""

    __slots__ = ("attrs", "outcome", "policy", "sub", "sur", "target")

    def __init__(
        self,
        sub: Resource,
        entry: _Compiled,
        target: Target | None = None,
        outcome: Callable[[Any], None] | None = None,
    ) -> None:
        self.sub = sub
        self.attrs = entry.attrs
        self.policy = entry.policy
        self.sur = entry.sur
        self.target = target
        self.outcome = outcome


class _Outcome:
    """A target's outcome handler (:meth:`Notifier._outcome` for ``hop``), kept as its bound
    :meth:`settled`: calling it reads that one small object, and a successful answer
    nothing more. A ``partial`` of the notifier's bound method reads three (itself, its
    arguments, the bound method), each out of the processor's caches by the time the
    answer comes in a fan-out to a thousand targets."""

    __slots__ = ("hop", "notifier")

    def __init__(self, notifier: Notifier, hop: str) -> None:
        self.notifier = notifier
        self.hop = hop

    def settled(self, result: Response | Failure) -> None:
        if type(result) is Response and result.ok:
            return
        self.notifier._outcome(self.hop, result)


def _followed(types: AbstractSet[int]) -> bool:
    """Whether changes of resources of ``types`` may change a plan (:meth:`Notifier._plan`):
    a subscription's, or a registrant's (a target)."""
    for ty in types:
        if ty == _SUB:
            return True
        kind = KINDS.get(ty)
        if kind is not None and kind.registrant:
            return True
    return False


#: the next hop towards a CSE: (originator, poa), or None (see CSE.route)
Route = Callable[[str], "tuple[str, tuple[str, ...]] | None"]


class _Tag:
    """A notification of a subscription whose policy applies at delivery: collected into
    its batch, marked latest, counted (``nu`` as written names the target in ``nsi``)."""

    __slots__ = ("nu", "policy", "ri")

    def __init__(self, ri: str, nu: str, policy: Policy) -> None:
        self.ri = ri
        self.nu = nu
        self.policy = policy


class _Flush:
    """Send the pending batches of a subscription being deleted (TS-0004 7.4.8.2.4)."""

    __slots__ = ("ri",)

    def __init__(self, ri: str) -> None:
        self.ri = ri


class _Pending:
    """The notifications a batch (``bn``) holds for one target of one subscription."""

    __slots__ = ("count", "notifications", "tag", "target", "timer")

    def __init__(self, target: Target, tag: _Tag, timer: IDelayedCall) -> None:
        self.target = target
        self.tag = tag
        self.timer = timer
        self.notifications: list[Any] = []
        #: notifications collected (with ``ln`` only the latest is kept, all count)
        self.count = 0


class Notifier:
    """Builds and sends the notifications (and verification requests) the CSE originates."""

    log = Logger()

    def __init__(
        self,
        config: CSEConfig,
        sender: IRequestSender,
        clock: IReactorTime,
        timestamps: Timestamps,
        addressing: Addressing,
        route: Route | None = None,
        store: IResourceStore | None = None,
    ) -> None:
        """
        @param store: where the notification statistics (``nsi``) are written.
        """
        self._config = config
        self._route = route
        self._cse_id = config.cse_id
        self._sender = sender
        #: whether ``sender`` takes a plain notification as its parts (see _send_plain)
        self._takes_notifications = bool(getattr(sender, "takes_notifications", False))
        self._clock = clock
        self._ts = timestamps
        self._addressing = addressing
        self._store = store
        self._rqis = itertools.count(1)
        #: when the last rqet was made, and it
        self._rqet: tuple[float, str] = (-1.0, "")
        self._rqi_prefix = f"acmews-{secrets.token_hex(3)}-"
        #: lines about a notification's fate, per target (a peer may fail or refuse every
        #: notification); summed up in the next line about it that gets through
        self._outcomes = Throttle(self.log, clock, "notification outcomes", timer=False)
        #: subscription ri -> (the attrs it was compiled from, its policy, and for a plain
        #: subscription its sur and nu: None and "" for another)
        self._policies: dict[str, _Compiled] = {}
        #: subscribed-to resource ri -> (the generation it was made in, its plan): see _plan
        self._plans: dict[str, tuple[int, list[_Member]]] = {}
        #: counts the applied changes of subscriptions and registrants (see track)
        self._generation = 0
        #: subscription ri -> target -> its batch collecting notifications
        self._pending: dict[str, dict[str, _Pending]] = {}
        #: subscription ri -> nu -> counters not written yet, and the call that writes them
        self._stats: dict[str, dict[str, list[int]]] = {}
        self._stats_call: IDelayedCall | None = None
        #: resource ri -> the lock of its blocked UPDATEs (TS-0001 10.2.10.7)
        self._locks: dict[str, DeferredLock] = {}
        #: nu -> the registrant (AE, remote CSE) it named, the attrs it had, and its target:
        #: used again while that resource is stored with those attrs (a fan-out resolves the
        #: same nus at every event)
        self._registrants: dict[str, tuple[Resource, Mapping[str, Any], Target]] = {}
        #: target -> what a notification's outcome is handed to (:meth:`_outcome` for it)
        self._outcome_of: dict[str, Callable[[Any], None]] = {}
        #: deliveries waiting for a later reactor turn, in the order they were scheduled
        self._waiting: dict[int, tuple[list[Delivery], int]] = {}
        self._turns = itertools.count()

    def sur(self, sub: Resource) -> str:
        """The subscription reference of ``sub`` (its SP-relative resource ID)."""
        return f"{self._cse_id}/{sub.ri}"

    def new_rqi(self) -> str:
        """A request identifier for a request the CSE originates."""
        return f"{self._rqi_prefix}{next(self._rqis)}"

    def _rqet_now(self) -> str:
        """The ``rqet`` of a notification sent now."""
        now = self._clock.seconds()
        made, rqet = self._rqet
        if not made <= now < made + 0.001:
            # one string for the notifications of a millisecond (a fan-out's): formatted and
            # parsed again (by the session, for its timeout) once
            rqet = self._ts.format(now + self._config.notification_expiry)
            self._rqet = (now, rqet)
        return rqet

    def notification(self, target: str, pc: dict[str, Any], expires: bool = True) -> Request:
        rqet = self._rqet_now() if expires else None
        # (positional: a third cheaper than by keyword, and a fan-out makes thousands)
        return Request(
            _NOTIFY,
            target,
            f"{self._rqi_prefix}{next(self._rqis)}",
            self._config.release,
            self._cse_id,
            None,  # ty
            pc,
            None,  # rcn
            None,  # rt
            rqet,
        )

    def policy(self, sub: Resource) -> Policy:
        """The policy of ``sub`` as its attributes are now (compiled once per version)."""
        return self._compiled(sub).policy

    def _compiled(self, sub: Resource) -> _Compiled:
        """``sub``'s compiled entry for its attributes as they are now: the one kept, or
        compiled anew if its attributes were replaced since."""
        entry = self._policies.get(sub.ri)
        if entry is None or entry.attrs is not sub.attrs:
            entry = self._compile(sub)
        return entry

    def _compile(self, sub: Resource) -> _Compiled:
        """Compile ``sub``'s policy for its attributes as they are now, and whether it is
        plain: its notification carries the whole resource to its one ``nu`` and nothing
        else (no creator, no counting down ``exc``, nothing done at delivery)."""
        attrs = sub.attrs
        policy = compile_policy(attrs)
        nus = attrs.get("nu")
        sur, nu = None, ""
        if (
            policy.nct == 1
            and policy.om is None
            and policy.creator is None
            and not policy.eeno
            and not policy.tagged
            and attrs.get("exc") is None
            and isinstance(nus, list)
            and len(nus) == 1
            and isinstance(nus[0], str)
        ):
            sur, nu = self.sur(sub), nus[0]
        entry = self._policies[sub.ri] = _Compiled(attrs, policy, sur, nu)
        return entry

    def _member(self, sub: Resource, reader: Changes) -> _Member:
        """``sub`` as its resource's plan keeps it: compiled, and for a plain subscription
        the target of its ``nu``. What :meth:`resolve_target` finds depends only on the
        registrants (an AE, a remote CSE: its originator and poa, and the routes through
        it) and on the configuration, so a plan keeps it until :meth:`track` hears of a
        change."""
        entry = self._compiled(sub)
        if entry.sur is None:
            return _Member(sub, entry)
        target = self.resolve_target(entry.nu, reader)
        return _Member(sub, entry, target, self._outcome_for(target[0]))

    def _plan(self, subject: Resource, batch: Changes) -> list[_Member]:
        """The subscriptions of ``subject`` (children, in creation order) as :class:`_Member`
        objects: made once and kept while no subscription or registrant has changed since
        (:meth:`track`), so that a fan-out reads one object per subscriber instead of
        looking up its subscription's compiled policy and its ``nu``'s registrant again
        (each look-up a few lines of memory that a thousand subscribers have long since
        pushed out of the cache). A plan is not kept from a batch that itself changes a
        subscription or a registrant (it sees changes not applied yet), nor for a resource
        without subscriptions."""
        ri = subject.ri
        clean = not _followed(batch.types())
        kept = self._plans.get(ri)
        if clean and kept is not None and kept[0] == self._generation:
            return kept[1]
        members = [self._member(sub, batch) for sub in batch.children(ri, _SUB)]
        if not members:  # (most resources: nothing kept for them)
            if kept is not None:
                del self._plans[ri]
        elif clean:
            if len(self._plans) >= MAX_KNOWN_TARGETS:
                self._plans.clear()
            self._plans[ri] = (self._generation, members)
        return members

    def track(self, batch: Batch) -> None:
        """``batch`` was applied, put back (a durable store could not write it) or brought
        in from another CSE node: the plans are made anew if it changed a subscription or a
        registrant, and a removed resource's plan is dropped."""
        if _followed(batch.types()):
            self._generation += 1
        plans = self._plans
        if plans:
            for resource in batch.removed:
                plans.pop(resource.ri, None)

    def resolve_target(self, nu: str, reader: ResourceReader | None = None) -> Target:
        """Where a notification for ``nu`` goes: a URL as is; an AE (or remote CSE)
        registered here by its originator and poa (``registered``: it may wait in
        store-and-forward); an ``nu`` on another CSE (``/id-mn/Cxyz``) to the next hop
        towards that CSE, addressed to ``nu``; anything else tried once as an originator.
        ``reader`` is the store by default.

        A serialization indication (``?ct=cbor``) is not part of the request's ``to``
        (TS-0004 7.5.1.2.2 step 2.5); an http(s) hop keeps it, for the HTTP connector to
        serialize by; any other target is sent in its connection's own serialization.
        """
        if "?" in nu:
            plain, ct = split_ct(nu)
            if ct is not None:
                if "://" in plain:
                    hop = nu if scheme_of(plain) in ("http", "https") else plain
                    return hop, (), False, plain
                nu = plain
        if "://" in nu:
            return nu, (), False, nu
        known = self._registrants.get(nu)
        if known is not None and reader is not None:
            # what nu named last time, if it is still that resource, at that version
            resource, attrs, target = known
            if resource.attrs is attrs and reader.get(attrs["ri"]) is resource:
                return target
            del self._registrants[nu]
        addressing = self._addressing
        try:
            foreign = addressing.foreign_cse(nu)
            if foreign is None:
                resource, virtual = addressing.locate(nu, reader)
                if virtual is None and resource.kind.registrant:
                    originator = resource.kind.originator_of(resource)
                    target = originator, tuple(resource.attrs.get("poa", ())), True, originator
                    if len(self._registrants) >= MAX_KNOWN_TARGETS:
                        self._registrants.clear()
                    self._registrants[nu] = (resource, resource.attrs, target)
                    return target
            elif self._route is not None:
                route = self._route(foreign)
                if route is not None:
                    hop, poa = route
                    return hop, poa, True, nu  # a registered CSE: it may wait
        except OneM2MError:
            pass
        return nu, (), False, nu

    # --- events -------------------------------------------------------------------------------

    def event(
        self,
        batch: Changes,
        subject: Resource,
        net: NotificationEventType | None,
        rep: Resource,
        modified: Mapping[str, Any] | None = None,
        exclude: Resource | None = None,
    ) -> list[Resource] | None:
        """Notify the subscriptions that are children of ``subject`` about event ``net``
        (None: a RETRIEVE of ``subject``, which only an operationMonitor hears).

        Only those still there: a subscription ``batch`` removed hears nothing. Counts down
        their ``exc`` (in ``batch``); returns the subscriptions whose last notification this
        was (the caller deletes them), or None.
        """
        expired: list[Resource] | None = None
        #: the event with the whole resource, shared by the subscriptions that get it
        whole: Shared | None = None
        rep_ty = rep.ty
        for member in self._plan(subject, batch):
            sub = member.sub
            if sub is exclude:
                continue
            if sub.attrs is not member.attrs:  # (replaced outside a batch track() heard of)
                member = self._member(sub, batch)
            policy = member.policy
            monitored: dict[str, Any] | None = None
            if net is not None and net in policy.net:
                if net == 3 or net == 4:
                    if policy.chty is not None and rep_ty not in policy.chty:
                        continue
                elif (
                    net == 1
                    and policy.atr is not None
                    and (modified is None or policy.atr.isdisjoint(modified))
                ):
                    continue
                if member.sur is not None:
                    # the common case (a fan-out): what the rest of the loop does for it; the
                    # delivery is the event, its tag the member (see _send_range)
                    if whole is None:
                        whole = Shared(rep=rep.pc, net=int(net))
                    # (a plain member has its target)
                    batch.notify_one(member.target, whole, member)  # type: ignore[arg-type]
                    continue
            elif policy.om is None:
                continue
            else:
                monitored = _monitored(policy, batch.request, net)
                if monitored is None:
                    continue
            nct = policy.nct
            if nct == 3:
                representation: Any = {"m2m:uri": rep.ri}
            elif nct == 2 and modified is not None:
                representation = {rep.kind.key: {k: rep.attrs.get(k) for k in modified}}
            elif nct == 5:  # (only with net 8 alone: a timeSeries's missing data)
                representation = missing_data(sub, rep, self._clock.seconds())
                if representation is None:
                    continue
            else:
                representation = rep.pc
            if monitored is None:
                if representation is rep.pc:  # the whole resource: the same for every one
                    if whole is None:
                        whole = Shared(rep=representation, net=int(net or 0))
                    nev: dict[str, Any] = whole
                else:
                    nev = {"rep": representation, "net": int(net or 0)}
            else:
                nev = {"rep": representation, "om": monitored}
            sgn: dict[str, Any] = {"nev": nev, "sur": self.sur(sub)}
            if policy.creator is not None or policy.eeno:
                _add_creator(sgn, policy, batch.request)
            if policy.tagged:
                self._schedule_tagged(batch, sub, policy, {"m2m:sgn": sgn})
            else:
                self.schedule(batch, sub.attrs["nu"], {"m2m:sgn": sgn})
            exc = sub.attrs.get("exc")
            if exc is not None:
                if exc > 1:
                    sub.replace({"exc": exc - 1})
                    batch.update(sub)
                elif expired is None:
                    expired = [sub]
                else:
                    expired.append(sub)
        return expired

    def subscription_deleted(self, batch: Changes, sub: Resource) -> None:
        """``sub`` is being deleted: its pending batches are sent, then its deletion notice
        to ``su`` (TS-0004 7.5.1.2.4), both before the response to the request."""
        policy = self.policy(sub)
        if policy.batch is not None:
            batch.notify((_NOWHERE,), {}, _Flush(sub.ri), urgent=True)
        su = sub.attrs.get("su")
        if su:
            pc = {"m2m:sgn": {"sud": True, "sur": self.sur(sub)}}
            batch.notify(self._targets(batch, (su,)).values(), pc, urgent=True)
        self._policies.pop(sub.ri, None)  # compiled again should the deletion fail

    # --- delivery -----------------------------------------------------------------------------

    def schedule(self, batch: Changes, nus: Sequence[str], pc: dict[str, Any]) -> None:
        """Add to ``batch`` the notification ``pc`` for every ``nu``: sent once ``batch`` has
        been applied (:meth:`deliver`).

        The targets are resolved now, as ``batch`` leaves the resources at this point: an AE
        being deleted (with its subscriptions) is still known, so its ``sud`` still finds its
        poa; an AE the batch removed already is not.
        """
        if len(nus) == 1:  # most subscriptions: no duplicates to collapse
            batch.notify((self.resolve_target(nus[0], batch),), pc)
        else:
            batch.notify(self._targets(batch, nus).values(), pc)

    def _targets(self, batch: Changes, nus: Sequence[str]) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for nu in nus:
            target = self.resolve_target(nu, batch)
            targets.setdefault(target[3], target)  # duplicates in nu collapse
        return targets

    def _schedule_tagged(
        self, batch: Changes, sub: Resource, policy: Policy, pc: dict[str, Any]
    ) -> None:
        """:meth:`schedule` for a subscription whose policy applies at delivery: each target
        tagged with the ``nu`` that names it."""
        seen: set[str] = set()
        for nu in sub.attrs["nu"]:
            target = self.resolve_target(nu, batch)
            if target[3] not in seen:
                seen.add(target[3])
                batch.notify((target,), pc, _Tag(sub.ri, nu, policy))

    def deliver(self, deliveries: list[Delivery], urgent: int = 0) -> None:
        """Send ``deliveries`` (a batch's notifications, once it has been applied): the
        first ``urgent`` ones now, before the response to its request (after what earlier
        requests still have waiting: they are not overtaken); the others after it, from
        ``callLater(0, ...)``."""
        if urgent:
            self._catch_up()
            self._send_range(deliveries, 0, urgent)
            if urgent < len(deliveries):
                self._later(deliveries, urgent)
        else:
            self._later(deliveries, 0)

    def _later(self, deliveries: list[Delivery], start: int) -> None:
        """:meth:`_deliver` ``deliveries[start:]`` in the next reactor turn."""
        key = next(self._turns)
        self._waiting[key] = (deliveries, start)
        self._clock.callLater(0, self._run, key)

    def _run(self, key: int) -> None:
        entry = self._waiting.pop(key, None)
        if entry is not None:  # else :meth:`_catch_up` has sent it
            self._deliver(*entry)

    def _catch_up(self) -> None:
        """Send at once what is waiting for a later turn, in the order it was scheduled."""
        waiting = self._waiting
        while waiting:
            deliveries, start = waiting.pop(next(iter(waiting)))
            self._send_range(deliveries, start, len(deliveries))

    def _deliver(self, deliveries: list[Delivery], start: int) -> None:
        """Send ``deliveries[start:]``, :data:`DELIVERY_BATCH` at a time: however large the
        fan-out, the reactor gets back between batches (to read, to answer others)."""
        end = start + DELIVERY_BATCH
        if end < len(deliveries):
            self._later(deliveries, end)
        self._send_range(deliveries, start, end)

    def _send_range(self, deliveries: list[Delivery], start: int, end: int) -> None:
        chunk = deliveries[start:end]
        # what is sent is not kept to the end of the fan-out: freed with this chunk, while it
        # is still in the cache, rather than a thousand at once when the last is sent
        deliveries[start : start + len(chunk)] = [None] * len(chunk)  # type: ignore[list-item]
        for target, pc, tag in chunk:
            if type(tag) is _Member:  # a plain subscription's event (pc)
                self._send_plain(target, pc, tag)  # type: ignore[arg-type]
            elif tag is None:
                self._send(target, pc)
            elif isinstance(tag, _Tag):
                self._send_tagged(target, pc, tag)
            elif isinstance(tag, _Flush):
                self._send_batches(tag.ri)

    def _send(
        self,
        target: Target,
        pc: dict[str, Any],
        ec: EventCategory | None = None,
        counted: _Tag | None = None,
        count: int = 1,
    ) -> None:
        """Send ``pc`` to ``target``; its outcome is only logged (and counted in ``nsi`` for
        a ``counted`` subscription's target)."""
        hop, poa, registered, to = target
        try:
            request = self.notification(to, pc)
            if ec is not None:
                request.ec = int(ec)
        except Exception:
            self.log.failure("could not send a notification to {target}", target=hop)
            return
        outcome: Callable[[Any], None] | None = None
        if counted is not None:
            self._count(counted.ri, counted.nu, _RQS, count)
            outcome = partial(self._counted_outcome, hop, counted, count)
        self._hand_over(hop, request, poa, registered, outcome)

    def _hand_over(
        self,
        hop: str,
        request: Request | Notification,
        poa: tuple[str, ...],
        registered: bool,
        outcome: Callable[[Any], None] | None = None,
    ) -> None:
        """Give ``request`` to the sender for ``hop``; its outcome goes to ``outcome``, by
        default the target's own :meth:`_outcome` (made once per target: a fan-out sends to
        the same targets at every event)."""
        if outcome is None:
            outcome = self._outcome_for(hop)
        try:
            # (a Notification only from _send_plain, to a sender that takes one: see
            # IRequestSender.send_then)
            self._sender.send_then(hop, request, outcome, poa, registered)  # type: ignore[arg-type]
        except Exception:
            self.log.failure("could not send a notification to {target}", target=hop)

    def _outcome_for(self, hop: str) -> Callable[[Any], None]:
        """The target's own :meth:`_outcome` (made once per target)."""
        outcome = self._outcome_of.get(hop)
        if outcome is None:
            if len(self._outcome_of) >= MAX_KNOWN_TARGETS:
                self._outcome_of.clear()
            outcome = self._outcome_of[hop] = _Outcome(self, hop).settled
        return outcome

    def _send_plain(self, target: Target, event: Shared, member: _Member) -> None:
        """:meth:`_send` for a plain subscription (``member``):
        ``{"m2m:sgn": {"nev": event, "sur": sur}}`` and nothing else, as a
        :class:`~acmews.primitive.Notification` to a sender that takes one."""
        sur = member.sur
        assert sur is not None
        if not self._takes_notifications:
            self._send(target, {"m2m:sgn": {"nev": event, "sur": sur}})
            return
        hop, poa, registered, to = target
        # the target's outcome handler, kept with its member (else looked up by hop)
        outcome = member.outcome if member.target is target else None
        try:
            notification = Notification(
                event,
                sur,
                to,
                f"{self._rqi_prefix}{next(self._rqis)}",
                self._cse_id,
                self._config.release,
                self._rqet_now(),
            )
        except Exception:
            self.log.failure("could not send a notification to {target}", target=hop)
            return
        self._hand_over(hop, notification, poa, registered, outcome)

    def _outcome(self, target: str, result: Response | Failure) -> None:
        """How a notification went: only what went wrong is logged."""
        if isinstance(result, Failure):
            self._not_delivered(result, target)
        elif not result.ok:
            self._delivered(result, target)

    def _counted_outcome(
        self, target: str, counted: _Tag, count: int, result: Response | Failure
    ) -> None:
        if not isinstance(result, Failure):
            self._answered(result, counted, count)
        self._outcome(target, result)

    def _send_tagged(self, target: Target, pc: dict[str, Any], tag: _Tag) -> None:
        policy = tag.policy
        if policy.stats:
            self._count(tag.ri, tag.nu, _NOEC)
        if policy.batch is not None:
            self._collect(target, pc, tag)
            return
        # TS-0004 7.5.1.2.2 step 2.3: latestNotify sets the Event Category "latest"
        ec = EventCategory.LATEST if policy.latest else None
        self._send(target, pc, ec, tag if policy.stats else None)

    def _delivered(self, response: Response, target: str) -> None:
        if not response.ok:
            self._note(
                target,
                self.log.warn,
                "notification to {target} answered {rsc}: {reason}",
                rsc=response.rsc,
                reason=response.debug,
            )

    def _not_delivered(self, failure: Failure, target: str) -> None:
        if isinstance(failure.value, OneM2MError):
            self._note(
                target,
                self.log.warn,
                "notification to {target} failed: {error!r}",
                error=failure.value,
            )
        else:
            self._note(target, self.log.failure, "notification to {target} failed", failure)

    def _note(
        self, target: str, emit: Callable[..., None], format: str, *args: Any, **kwargs: Any
    ) -> None:
        """A line about a notification's fate, within its target's budget."""
        self._outcomes.emit(target_key(target), emit, format, *args, target=target, **kwargs)

    # --- batches (bn) -------------------------------------------------------------------------

    def _collect(self, target: Target, pc: dict[str, Any], tag: _Tag) -> None:
        """Add a notification to its target's batch (TS-0001 10.2.10.7): the batch is sent
        once it holds ``num`` notifications or ``dur`` has passed since its first one."""
        assert tag.policy.batch is not None
        num, duration = tag.policy.batch
        batches = self._pending.setdefault(tag.ri, {})
        pending = batches.get(target[3])
        if pending is None:
            timer = self._clock.callLater(duration, self._send_batch, tag.ri, target[3])
            pending = batches[target[3]] = _Pending(target, tag, timer)
        if tag.policy.latest:
            pending.notifications = [pc["m2m:sgn"]]  # only the latest is kept
        else:
            pending.notifications.append(pc["m2m:sgn"])
        pending.count += 1
        if pending.count >= MAX_BATCH or (num is not None and pending.count >= num):
            self._send_batch(tag.ri, target[3])

    def _send_batch(self, ri: str, to: str) -> None:
        """Send the batch of subscription ``ri`` for target ``to`` as one aggregated
        notification (``m2m:agn``), first in first out."""
        batches = self._pending.get(ri)
        pending = None if batches is None else batches.pop(to, None)
        if pending is None:
            return
        if not batches:
            del self._pending[ri]
        if pending.timer.active():
            pending.timer.cancel()
        policy = pending.tag.policy
        self._send(
            pending.target,
            {"m2m:agn": {"m2m:sgn": pending.notifications}},
            EventCategory.LATEST if policy.latest else None,
            pending.tag if policy.stats else None,
            pending.count,
        )

    def _send_batches(self, ri: str) -> None:
        """Send every batch subscription ``ri`` holds (it is being deleted)."""
        for to in list(self._pending.get(ri, ())):
            self._send_batch(ri, to)

    # --- statistics (nse, nsi) ----------------------------------------------------------------

    def _answered(self, response: Response, tag: _Tag, count: int) -> Response:
        self._count(tag.ri, tag.nu, _RSR, count)
        return response

    def _count(self, ri: str, nu: str, which: int, count: int = 1) -> None:
        """Count for subscription ``ri``'s target ``nu``; written to its ``nsi`` at the end
        of this reactor turn (with every other count of the turn)."""
        if self._store is None:
            return  # nowhere to write them
        per_target = self._stats.setdefault(ri, {})
        counters = per_target.get(nu)
        if counters is None:
            counters = per_target[nu] = [0, 0, 0]
        counters[which] += count
        if self._stats_call is None:
            self._stats_call = self._clock.callLater(0, self._write_stats)

    def _write_stats(self) -> None:
        """Add the counts of this turn to the ``nsi`` of the subscriptions (TS-0004
        m2m:notificationStatsInfo): one batch for all, for those still collecting them."""
        self._stats_call = None
        stats, self._stats = self._stats, {}
        store = self._store
        assert store is not None
        batch = Batch(store)
        for ri, per_target in stats.items():
            sub = store.get(ri)
            if sub is None or sub.attrs.get("nse") is not True:
                continue
            nsi = [dict(entry) for entry in sub.attrs.get("nsi", ())]
            entries = {entry.get("tg"): entry for entry in nsi}
            for nu, counters in per_target.items():
                entry = entries.get(nu)
                if entry is None:
                    entry = entries[nu] = {"tg": nu, "rqs": 0, "rsr": 0, "noec": 0}
                    nsi.append(entry)
                entry["rqs"] += counters[_RQS]
                entry["rsr"] += counters[_RSR]
                entry["noec"] += counters[_NOEC]
            sub.replace({"nsi": nsi})
            batch.update(sub)
        if batch:
            done = store.apply(batch)
            self.track(batch)
            if done is not None:
                done.addErrback(self._stats_not_written, batch)

    def _stats_not_written(self, failure: Failure, batch: Batch) -> None:
        self.track(batch)  # (put back)
        self.log.failure("could not store notification statistics", failure)

    # --- blocking update (net 7) --------------------------------------------------------------

    def blocking_update(
        self, resource: Resource, body: Mapping[str, Any], request: Request
    ) -> Deferred[DeferredLock] | None:
        """The gate of an UPDATE of ``resource`` (TS-0004 7.5.1.2.19), or None when it has
        none: a Deferred that fires with the resource's lock, held, once the blocking-update
        subscription's target has accepted the update (the caller makes the change and
        :meth:`unblock`); it fails with the rsc of TS-0004 7.3.2.9 when the target refuses.

        While one UPDATE is blocked, the resource's other UPDATEs and DELETEs wait.
        """
        blocking = None
        if self._store is not None and self._store.latest_child(resource.ri, _SUB) is not None:
            for sub in self._store.children(resource.ri, _SUB):
                policy = self.policy(sub)
                if _NET.BLOCKING_UPDATE in policy.net:
                    if policy.atr is None or not policy.atr.isdisjoint(body):
                        blocking = (sub, policy)
                    break
        if blocking is None and resource.ri not in self._locks:
            return None
        return Deferred.fromCoroutine(self._blocked_update(resource, body, request, blocking))

    def blocked(self, resource: Resource) -> Deferred[DeferredLock] | None:
        """The gate of a DELETE of ``resource`` while an UPDATE of it is blocked: fires with
        its lock once that UPDATE is done (the caller deletes and :meth:`unblock`)."""
        lock = self._locks.get(resource.ri)
        return None if lock is None else lock.acquire()

    def unblock(self, resource: Resource, lock: DeferredLock) -> None:
        lock.release()
        if not lock.locked and not lock.waiting:
            self._locks.pop(resource.ri, None)

    async def _blocked_update(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        request: Request,
        blocking: tuple[Resource, Policy] | None,
    ) -> DeferredLock:
        lock = self._locks.get(resource.ri)
        if lock is None:
            lock = self._locks[resource.ri] = DeferredLock()
        await lock.acquire()
        try:
            if self._store is not None and self._store.get(resource.ri) is not resource:
                raise NotFound(f"{resource.srn!r} was deleted while its UPDATE waited")
            if blocking is not None:
                await self._notify_blocking(resource, body, request, *blocking)
        except BaseException:
            self.unblock(resource, lock)
            raise
        return lock

    async def _notify_blocking(
        self,
        resource: Resource,
        body: Mapping[str, Any],
        request: Request,
        sub: Resource,
        policy: Policy,
    ) -> None:
        nu = sub.attrs["nu"][0]
        hop, poa, _, to = self.resolve_target(nu)
        sgn: dict[str, Any] = {
            # the representation the UPDATE carries (nct 2, the only one allowed)
            "nev": {"rep": {resource.kind.key: dict(body)}, "net": int(_NET.BLOCKING_UPDATE)},
            "sur": self.sur(sub),
        }
        if policy.creator is not None or policy.eeno:
            _add_creator(sgn, policy, request)
        notification = self.notification(to, {"m2m:sgn": sgn})
        d = maybeDeferred(self._sender.send, hop, notification, poa=poa, store=False)
        d.addTimeout(self._config.verification_timeout, self._clock)
        try:
            answer = await d
        except (TargetNotReachable, RequestTimeout, DeferTimeoutError) as e:
            raise OneM2MError(
                f"the blocking-update target {nu} is not reachable: {e}",
                rsc=RSC.REMOTE_ENTITY_NOT_REACHABLE,
            ) from None
        if answer.ok:
            return
        if answer.rsc == RSC.TARGET_NOT_REACHABLE:
            raise OneM2MError(
                f"the blocking-update target {nu} is not reachable: {answer.debug}",
                rsc=RSC.REMOTE_ENTITY_NOT_REACHABLE,
            )
        if answer.rsc == RSC.OPERATION_NOT_ALLOWED:
            raise OneM2MError(
                f"the blocking-update target {nu} refused the update: {answer.debug}",
                rsc=RSC.OPERATION_DENIED_BY_REMOTE_ENTITY,
            )
        raise RemoteError(
            f"the blocking-update target {nu} answered {int(answer.rsc)}",
            answer.rsc,
            answer.debug,
        )

    # --- verification -------------------------------------------------------------------------

    async def verify(
        self, sub: Resource, originator: str | None, nus: Sequence[str] | None = None
    ) -> None:
        """Verify every ``nu`` of ``sub`` (only ``nus`` if given) that is not
        ``originator``; 5204 if one fails.

        The verification requests are sent at once (before the first ``await``).
        """
        sur = self.sur(sub)
        pending: list[tuple[str, Deferred[Response]]] = []
        verified: set[str] = set()
        for nu in sub.attrs["nu"] if nus is None else nus:
            target, poa, _, to = self.resolve_target(nu)
            if to == originator or to in verified:
                continue  # the same target named twice is asked once
            verified.add(to)
            verification = self.notification(
                to, {"m2m:sgn": {"vrq": True, "sur": sur, "cr": originator}}, expires=False
            )
            d = maybeDeferred(self._sender.send, target, verification, poa=poa, store=False)
            d.addTimeout(self._config.verification_timeout, self._clock)
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


def _monitored(
    policy: Policy, request: Request | None, net: NotificationEventType | None
) -> dict[str, Any] | None:
    """The ``om`` of a notification when ``policy``'s operationMonitor matches the request
    whose own event ``net`` is (an event the request only causes, say an eviction, is none
    of its operation's), else None."""
    assert policy.om is not None
    if request is None:
        return None
    op = request.op
    if op not in _PRIMARY or _PRIMARY[op] != net:
        return None
    originator = request.fr
    for ops, org in policy.om:
        if (ops is None or ops == op) and (org is None or org == originator):
            monitored: dict[str, Any] = {"ops": int(op)}
            if originator is not None:
                monitored["org"] = originator
            return monitored
    return None


def missing_data(sub: Resource, series: Resource, now: float) -> dict[str, Any] | None:
    """The timeSeriesNotification (nct 5) for ``sub`` about the missing data of ``series``:
    those within the last ``enc.md.dur`` (TS-0001 9.6.8), if at least ``enc.md.num``; else
    None (nothing to notify yet)."""
    md = sub.attrs["enc"]["md"]
    since = now - parse_duration(md["dur"])
    recent = [p for p in series.attrs.get("mdlt", ()) if parse_timestamp(p) >= since]
    if len(recent) < md["num"]:
        return None
    return {"m2m:tsn": {"mdc": len(recent), "mdlt": recent}}


def _add_creator(sgn: dict[str, Any], policy: Policy, request: Request | None) -> None:
    """TS-0001 10.2.10.7: a notification carries its subscription's creator (``cr``);
    with ``eeno`` the originator of the event instead (as the reference implementations)."""
    creator = policy.creator
    if policy.eeno and request is not None and request.fr:
        creator = request.fr
    if creator is not None:
        sgn["cr"] = creator
