"""Notifications: subscription events, their delivery, and subscription verification.

Events are found synchronously while a request changes resources (through the request's
:class:`~acmews.cse.store.Batch`). The notifications they cause are carried by that batch;
once it has been applied (made durable), the CSE hands them to :meth:`Notifier.deliver`,
which sends them from ``callLater(0, ...)``: they never delay the response to that request,
and their failures are only logged.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from acmews.codes import RSC, NotificationEventType, Operation, ResourceType
from acmews.cse.addressing import Addressing
from acmews.cse.config import CSEConfig
from acmews.cse.resource import Changes, Delivery, Resource, ResourceReader, Target
from acmews.errors import OneM2MError, SubscriptionVerificationInitiationFailed
from acmews.interfaces import IRequestSender
from acmews.logs import Logger, Throttle
from acmews.poa.steps import target_key
from acmews.primitive import Request, Response
from acmews.timestamps import Timestamps

#: notifications sent per reactor turn in a fan-out
DELIVERY_BATCH = 64

__all__ = ["Notifier"]

_SUB = ResourceType.SUB

#: the next hop towards a CSE: (originator, poa), or None (see CSE.route)
Route = Callable[[str], "tuple[str, tuple[str, ...]] | None"]


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
    ) -> None:
        self._config = config
        self._route = route
        self._cse_id = config.cse_id
        self._sender = sender
        self._clock = clock
        self._ts = timestamps
        self._addressing = addressing
        self._rqis = itertools.count(1)
        self._rqi_prefix = f"acmews-{secrets.token_hex(3)}-"
        #: lines about a notification's fate, per target (a peer may fail or refuse every
        #: notification); summed up in the next line about it that gets through
        self._outcomes = Throttle(self.log, clock, "notification outcomes", timer=False)

    def sur(self, sub: Resource) -> str:
        """The subscription reference of ``sub`` (its SP-relative resource ID)."""
        return f"{self._cse_id}/{sub.ri}"

    def new_rqi(self) -> str:
        """A request identifier for a request the CSE originates."""
        return f"{self._rqi_prefix}{next(self._rqis)}"

    def notification(self, target: str, pc: dict[str, Any], expires: bool = True) -> Request:
        rqet = None
        if expires:
            rqet = self._ts.format(self._clock.seconds() + self._config.notification_expiry)
        return Request(
            Operation.NOTIFY,
            target,
            self.new_rqi(),
            self._config.release,
            fr=self._cse_id,
            pc=pc,
            rqet=rqet,
        )

    def resolve_target(self, nu: str, reader: ResourceReader | None = None) -> Target:
        """Where a notification for ``nu`` goes: a URL as is; an AE (or remote CSE)
        registered here by its originator and poa (``registered``: it may wait in
        store-and-forward); an ``nu`` on another CSE (``/id-mn/Cxyz``) to the next hop
        towards that CSE, addressed to ``nu``; anything else tried once as an originator.
        ``reader`` is the store by default."""
        if "://" in nu:
            return nu, (), False, nu
        addressing = self._addressing
        try:
            foreign = addressing.foreign_cse(nu)
            if foreign is None:
                resource, virtual = addressing.locate(nu, reader)
                if virtual is None and resource.kind.registrant:
                    originator = resource.kind.originator_of(resource)
                    return originator, tuple(resource.attrs.get("poa", ())), True, originator
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
        net: NotificationEventType,
        rep: Resource,
        modified: dict[str, Any] | None = None,
        exclude: Resource | None = None,
    ) -> list[Resource] | None:
        """Notify the subscriptions that are children of ``subject`` about event ``net``.

        Only those still there: a subscription ``batch`` removed hears nothing. Counts down
        their ``exc`` (in ``batch``); returns the subscriptions whose last notification this
        was (the caller deletes them), or None.
        """
        expired: list[Resource] | None = None
        for sub in batch.children(subject.ri, _SUB):
            if sub is exclude:
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
            self.schedule(
                batch,
                attrs["nu"],
                {
                    "m2m:sgn": {
                        "nev": {"rep": representation, "net": int(net)},
                        "sur": self.sur(sub),
                    }
                },
            )
            exc = attrs.get("exc")
            if exc is not None:
                if exc > 1:
                    sub.replace({"exc": exc - 1})
                    batch.update(sub)
                elif expired is None:
                    expired = [sub]
                else:
                    expired.append(sub)
        return expired

    # --- delivery -----------------------------------------------------------------------------

    def schedule(self, batch: Changes, nus: Sequence[str], pc: dict[str, Any]) -> None:
        """Add to ``batch`` the notification ``pc`` for every ``nu``: sent once ``batch`` has
        been applied (:meth:`deliver`).

        The targets are resolved now, as ``batch`` leaves the resources at this point: an AE
        being deleted (with its subscriptions) is still known, so its ``sud`` still finds its
        poa; an AE the batch removed already is not.
        """
        targets: dict[str, Target] = {}
        for nu in nus:
            target = self.resolve_target(nu, batch)
            targets.setdefault(target[3], target)  # duplicates in nu collapse
        batch.notify(targets.values(), pc)

    def deliver(self, deliveries: list[Delivery]) -> None:
        """Send ``deliveries`` (a batch's notifications, once it has been applied) after the
        response to its request: from ``callLater(0, ...)``."""
        self._clock.callLater(0, self._deliver, deliveries, 0)

    def _deliver(self, deliveries: list[Delivery], start: int) -> None:
        """Send ``deliveries[start:]``, :data:`DELIVERY_BATCH` at a time: however large the
        fan-out, the reactor gets back between batches (to read, to answer others)."""
        end = start + DELIVERY_BATCH
        if end < len(deliveries):
            self._clock.callLater(0, self._deliver, deliveries, end)
        for (target, poa, registered, to), pc in deliveries[start:end]:
            try:
                request = self.notification(to, pc)
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

    # --- verification -------------------------------------------------------------------------

    async def verify(self, sub: Resource, originator: str | None) -> None:
        """Verify every ``nu`` of ``sub`` that is not ``originator``; 5204 if one fails.

        The verification requests are sent at once (before the first ``await``).
        """
        sur = self.sur(sub)
        pending: list[tuple[str, Deferred[Response]]] = []
        verified: set[str] = set()
        for nu in sub.attrs["nu"]:
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
