"""The ``<pollingChannel>`` resource (ty 15, TS-0001 9.6.21) and its ``pcu`` virtual child
(pollingChannelURI, TS-0001 9.6.22): how an AE that cannot receive requests (its ``rr`` is
false) gets them all the same.

An AE creates one ``<pollingChannel>`` under its ``<AE>``. From then on, while its ``rr`` is
false, every request the CSE would send it (a notification, a verification, a NOTIFY another
originator relays) waits in that channel instead of being sent (or stored for later, or
refused with 5103). The AE RETRIEVEs ``<pollingChannel>/pcu``: answered at once with the
oldest waiting request as ``{"m2m:rqp": <the request primitive>}``, else as soon as one
arrives, else after :attr:`Polling.poll_timeout` (or the RETRIEVE's own ``rqet``, if sooner)
with 4008 (as ACME does; we did not find the TS-0004 text for the empty case). The AE answers
each polled request with a NOTIFY to ``pcu`` whose content is ``{"m2m:rsp": <the response>}``
(its ``rqi`` the polled request's): that response is the answer the CSE waited for.

A channel holds at most :attr:`Polling.max_waiting` requests (waiting or polled and not
answered yet); past that a new one fails with 5103 at once. A request not polled and answered
before its ``rqet`` (else :attr:`Polling.request_timeout`) fails with 4008. The channels live
in memory: after a restart a stored ``<pollingChannel>`` is known again, empty.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from acmews.codes import RSC, ResourceType
from acmews.cse.resource import (
    Changes,
    CSEServices,
    Resource,
    ResourceKind,
    ResourceReader,
    make_kind,
    register_kind,
)
from acmews.errors import (
    BadRequest,
    NotFound,
    OneM2MError,
    PrimitiveError,
    RequestTimeout,
    TargetNotReachable,
)
from acmews.interfaces import IRequestSender
from acmews.primitive import Notification, Request, Response, as_request
from acmews.timestamps import expiry_delay

if TYPE_CHECKING:
    from acmews.cse.store import IResourceStore

__all__ = ["POLLING_CHANNEL", "Polling", "PollingChannelKind"]

_PCH = ResourceType.PCH
_AE = ResourceType.AE


class PollingChannelKind(ResourceKind):
    """A ``<pollingChannel>``: one per AE; its ``pcu`` is answered by :class:`Polling`."""

    __slots__ = ()
    virtual = frozenset({"pcu"})

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        if cse.store.latest_child(parent.ri, _PCH) is not None:
            raise OneM2MError(
                f"the AE {parent.srn!r} has a <pollingChannel> already",
                rsc=RSC.CONFLICT,
            )

    def created(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        polling = getattr(cse, "polling", None)
        if isinstance(polling, Polling):
            polling.open(parent.ri, resource.ri)

    def deleted(self, cse: CSEServices, batch: Changes, resource: Resource) -> None:
        polling = getattr(cse, "polling", None)
        if isinstance(polling, Polling):
            polling.close(resource.attrs["pi"], resource.ri)

    def virtual_child(self, store: ResourceReader, resource: Resource, which: str) -> Resource:
        # pcu is no resource to represent: the CSE answers it (Polling.retrieve, .answer)
        raise NotFound(f"{resource.srn}/{which} can only be polled (RETRIEVE) or answered")


#: the <pollingChannel> kind, registered with the others
POLLING_CHANNEL = register_kind(
    make_kind(
        PollingChannelKind,
        _PCH,
        "pch",
        "pollingChannel",
        {},
        frozenset(),
        {"lbl", "et"},
        set(),
        ("rn", "lbl", "et"),
        parents={_AE},
    )
)


class _Channel:
    """What waits in one AE's channel: requests not polled yet (oldest first), requests
    polled and not answered (by ``rqi``), and the RETRIEVEs of ``pcu`` waiting for one."""

    __slots__ = ("answers", "pending", "pollers", "ri")

    def __init__(self, ri: str) -> None:
        self.ri = ri
        #: rqi -> (request, its Deferred, its expiry timer)
        self.pending: OrderedDict[str, tuple[Request, Deferred[Response], IDelayedCall]] = (
            OrderedDict()
        )
        self.answers: dict[str, tuple[Deferred[Response], IDelayedCall]] = {}
        self.pollers: list[tuple[Deferred[Request], IDelayedCall]] = []

    def __len__(self) -> int:
        return len(self.pending) + len(self.answers)


@implementer(IRequestSender)
class Polling:
    """The CSE's sender: a request for an AE with ``rr`` false and a polling channel waits
    in the channel; any other goes to ``sender``.

    @param store: where the AE's ``rr`` is read.
    """

    #: requests one channel holds (waiting or polled, not answered)
    max_waiting = 256
    #: seconds a RETRIEVE of pcu waits for a request at most
    poll_timeout = 30.0
    #: seconds a request without an rqet waits to be polled and answered at most
    request_timeout = 60.0

    def __init__(self, sender: IRequestSender, clock: IReactorTime, store: IResourceStore) -> None:
        self._sender = sender
        #: whether :meth:`send_then` takes a Notification: as the sender it wraps does
        self.takes_notifications = bool(getattr(sender, "takes_notifications", False))
        self._clock = clock
        self._store = store
        #: AE ri -> its channel (only AEs that have one: one dict lookup per send)
        self._channels: dict[str, _Channel] = {}

    def load(self, base: Resource) -> None:
        """Know the channels of a stored tree again (a restart), empty."""
        children = self._store.children
        for ae in children(base.ri, _AE):
            for pch in children(ae.ri, _PCH):
                self.open(ae.ri, pch.ri)

    def open(self, ae: str, ri: str) -> None:
        if ae not in self._channels:
            self._channels[ae] = _Channel(ri)

    def close(self, ae: str, ri: str) -> None:
        """The channel ``ri`` of ``ae`` is deleted: what waits in it fails (5103), its
        pollers get 4004."""
        channel = self._channels.get(ae)
        if channel is None or channel.ri != ri:
            return
        del self._channels[ae]
        gone = TargetNotReachable(f"the <pollingChannel> of {ae} was deleted")
        for _, d, timer in channel.pending.values():
            timer.cancel()
            d.errback(gone)
        for d, timer in channel.answers.values():
            timer.cancel()
            d.errback(gone)
        for poller, timer in channel.pollers:
            timer.cancel()
            poller.errback(NotFound(f"the <pollingChannel> of {ae} was deleted"))

    # --- IRequestSender -----------------------------------------------------------------------

    def send(
        self, target: str, request: Request, poa: Sequence[str] = (), store: bool = False
    ) -> Deferred[Response]:
        channel = self._channels.get(target)
        if channel is not None:
            ae = self._store.get(target)
            if ae is not None and ae.attrs.get("rr") is False:
                try:
                    return self._queue(channel, target, request)
                except OneM2MError:  # a failed Deferred, as a sender answers (not a raise)
                    return fail()
        return self._sender.send(target, request, poa=poa, store=store)

    def send_then(
        self,
        target: str,
        request: Request | Notification,
        then: Callable[[Any], object],
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> None:
        """See :class:`IRequestSender`; a :class:`~acmews.primitive.Notification` only if
        the sender it wraps takes one (:attr:`takes_notifications`)."""
        if target in self._channels:
            self.send(target, as_request(request), poa, store).addBoth(then)
        else:
            # (a Notification only if that sender takes one: see takes_notifications)
            self._sender.send_then(target, request, then, poa, store)  # type: ignore[arg-type]

    def _queue(self, channel: _Channel, target: str, request: Request) -> Deferred[Response]:
        if len(channel) >= self.max_waiting:
            raise TargetNotReachable(
                f"the <pollingChannel> of {target} holds {len(channel)} requests already"
            )
        rqi = request.rqi
        if rqi in channel.pending or rqi in channel.answers:
            raise BadRequest(f"a request {rqi!r} waits in the <pollingChannel> already")
        d: Deferred[Response] = Deferred(lambda _: self._forget(channel, rqi))
        delay = self._within(self.request_timeout, request.rqet)
        timer = self._clock.callLater(delay, self._expired, channel, rqi, target)
        if channel.pollers:
            poller, poll_timer = channel.pollers.pop(0)
            poll_timer.cancel()
            channel.answers[rqi] = (d, timer)
            poller.callback(request)
        else:
            channel.pending[rqi] = (request, d, timer)
        return d

    def _within(self, delay: float, rqet: str | int | None) -> float:
        """``delay``, or less when ``rqet`` (a request expiration time) comes sooner."""
        left = expiry_delay(rqet, self._clock.seconds())
        return delay if left is None else max(0.0, min(delay, left))

    def _forget(self, channel: _Channel, rqi: str) -> None:
        """The sender cancelled the request: it waits no longer."""
        entry = channel.pending.pop(rqi, None)
        timer = entry[2] if entry is not None else None
        answer = channel.answers.pop(rqi, None)
        if answer is not None:
            timer = answer[1]
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self, channel: _Channel, rqi: str, target: str) -> None:
        entry = channel.pending.pop(rqi, None)
        d = entry[1] if entry is not None else None
        answer = channel.answers.pop(rqi, None)
        if answer is not None:
            d = answer[0]
        if d is not None:
            d.errback(
                RequestTimeout(f"{target} did not poll and answer the request {rqi!r} in time")
            )

    # --- pcu ----------------------------------------------------------------------------------

    def _channel(self, pch: Resource) -> _Channel:
        channel = self._channels.get(pch.attrs["pi"])
        if channel is None or channel.ri != pch.ri:
            # a channel not opened (cannot happen but for a failed store): open it now
            self.open(pch.attrs["pi"], pch.ri)
            channel = self._channels[pch.attrs["pi"]]
        return channel

    def retrieve(self, pch: Resource, rqet: str | int | None) -> Deferred[Any] | dict[str, Any]:
        """A RETRIEVE of ``pch``'s ``pcu``: the content of the answer (``m2m:rqp``), at once
        or when a request arrives; 4008 after the poll timeout."""
        channel = self._channel(pch)
        if channel.pending:
            rqi, (request, d, timer) = channel.pending.popitem(last=False)
            channel.answers[rqi] = (d, timer)
            return _rqp(request)
        delay = self._within(self.poll_timeout, rqet)
        poller: Deferred[Request] = Deferred(lambda p: self._unpoll(channel, p))
        timer = self._clock.callLater(delay, self._poll_timeout, channel, poller)
        channel.pollers.append((poller, timer))
        return poller.addCallback(_rqp)

    def _unpoll(self, channel: _Channel, poller: Deferred[Request]) -> None:
        for i, (p, timer) in enumerate(channel.pollers):
            if p is poller:
                del channel.pollers[i]
                timer.cancel()
                return

    def _poll_timeout(self, channel: _Channel, poller: Deferred[Request]) -> None:
        for i, (p, _) in enumerate(channel.pollers):
            if p is poller:
                del channel.pollers[i]
                poller.errback(RequestTimeout("no request arrived in the <pollingChannel>"))
                return

    def answer(self, pch: Resource, pc: Any) -> None:
        """A NOTIFY to ``pch``'s ``pcu``: the AE's response (``m2m:rsp``) to a polled
        request, which the CSE's sender gets."""
        if not isinstance(pc, dict) or not isinstance(pc.get("m2m:rsp"), dict):
            raise BadRequest("a NOTIFY to pcu carries {'m2m:rsp': <the response primitive>}")
        try:
            response = Response.from_mapping(pc["m2m:rsp"])
        except PrimitiveError as e:
            raise BadRequest(f"m2m:rsp: {e.reason}") from None
        channel = self._channel(pch)
        entry = channel.answers.pop(response.rqi, None)
        if entry is None:
            raise NotFound(f"no polled request {response.rqi!r} waits for an answer")
        d, timer = entry
        timer.cancel()
        d.callback(response)


def _rqp(request: Request) -> dict[str, Any]:
    return {"m2m:rqp": request.to_dict()}
