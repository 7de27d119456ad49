"""The poa resolution Deferred chain: how the CSE reaches an originator.

:class:`PoaChain` sends a request the CSE originates (a notification, a verification request, a
forwarded request) to an AE or CSE, stopping at the **first** step that gets an answer:

1. the originator's live connection in the originator map; in a cluster (``cluster``, an
   :class:`~acmews.interfaces.IClusterRelay`), else its live connection on another node,
   the request relayed there and the response back, with this chain's timeout;
2. its ``poa`` entries in order: ``ws://default`` opens nothing (only the live connection could
   have been used), every other URL goes to the :class:`~acmews.interfaces.IPoaConnector`
   registered for its scheme (``ws``/``wss``: :class:`~acmews.poa.websocket.WebSocketConnector`,
   ``http``/``https``: :class:`~acmews.poa.http.HttpConnector`, or a gateway's own);
3. nothing reachable: a NOTIFY sent with ``store=True`` waits in the
   :class:`~acmews.poa.queue.INotificationQueue` and is delivered, in order, when the
   originator connects; anything else fails with 5103.

A transport failure (5103, 4008, any exception) moves on to the next step; any answer, whatever
its rsc, ends the chain (ACME sends to every poa and so duplicates requests; we do not). A failed
poa or URL step is reported (and the chain moves on) only once its timeout has passed, however
fast it failed: the time must not tell which ports are open (``pad_failures``).

Queue policies:

- bound: the queue's own (``queue_size`` entries per originator for the memory queue); a full
  queue first drops its expired entries, then its oldest entry (logged).
- expiry: the request's ``rqet`` (timestamp ``YYYYMMDDThhmmss[,ffffff]`` UTC, or a duration in
  ms counted from the moment it is queued), else ``default_expiry``. Expired entries are dropped
  when a flush reaches them and by one chain-wide purge timer that runs every
  ``purge_interval`` seconds only while something is queued.
- flush: on connect, entries go one at a time on the new connection, each awaited before the
  next. An answer (any rsc) acknowledges the entry. A transport failure (connection lost,
  timeout) stops the flush and keeps that entry and the rest queued for the next connection:
  delivery is at-least-once, bounded by the expiry. While a queue is non-empty and its
  originator connected (or being flushed), new stored notifications join the queue so that
  order holds. While it is not connected, a new notification still tries the chain (a
  reachable ``http://`` poa gets it at once rather than after older, undeliverable ones have
  expired).
- a queued request is sent unchanged; a relative ``rqet`` is therefore read again by the
  receiver from the moment it arrives.
- stopping the chain (it is a Twisted service) cancels timers, flushes and sends in flight but
  keeps the queue; the memory queue is lost when the process exits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from acmews.codes import RSC, Operation
from acmews.errors import NoClusterRoute, OneM2MError, RequestTimeout, TargetNotReachable
from acmews.interfaces import (
    IClusterRelay,
    IConnection,
    IOriginatorMap,
    IOriginatorObserver,
    IPoaConnector,
    IRequestSender,
)
from acmews.logs import Logger, Throttle
from acmews.metrics import ChainCounts
from acmews.options import DEFAULT_NOTIFICATION_EXPIRY, DEFAULT_REQUEST_TIMEOUT
from acmews.poa.limits import OutboundLimits, TargetDenied, TargetPolicy
from acmews.poa.queue import DEFAULT_QUEUE_SIZE, INotificationQueue, MemoryNotificationQueue
from acmews.poa.steps import (
    await_step,
    is_default_poa,
    is_url,
    reason,
    scheme_of,
    target_key,
    unwrap_timeout,
)
from acmews.primitive import Notification, Request, Response, as_request
from acmews.timestamps import parse_expiry

_R = TypeVar("_R")
#: (a module constant: reading an enum member off its class costs about 0.1 us)
_NOTIFY = Operation.NOTIFY

__all__ = ["PoaChain"]


@implementer(IRequestSender, IOriginatorObserver)
class PoaChain(Service):
    """Sends requests to originators: live connection, then poa entries, then the queue.

    A Twisted service: stopping it stops observing the originator map and cancels the purge
    timer, flushes and sends in flight (the queue itself is kept).
    """

    log = Logger()
    name = "poa-chain"

    def __init__(
        self,
        originators: IOriginatorMap,
        clock: IReactorTime,
        connectors: Iterable[IPoaConnector] | Mapping[str, IPoaConnector] = (),
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        queue: INotificationQueue | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        default_expiry: float = DEFAULT_NOTIFICATION_EXPIRY,
        purge_interval: float = 60.0,
        policy: TargetPolicy | None = None,
        limits: OutboundLimits | None = None,
        pad_failures: bool = True,
        cluster: IClusterRelay | None = None,
    ) -> None:
        """
        @param queue: where undeliverable notifications wait; a
            :class:`~acmews.poa.queue.MemoryNotificationQueue` of ``queue_size`` entries per
            originator when None.
        @param policy: which hosts a poa or URL step may contact (default: any; ``twistd
            acmews`` denies link-local addresses unless told otherwise).
        @param limits: outbound steps in flight in all and per host (default 256 and 8).
        @param pad_failures: a failed poa or URL step reports its failure only once its
            ``timeout`` has passed (see :meth:`_through`); False reports it at once (for an
            application that contacts only hosts it trusts and wants fast fail-over).
        @param cluster: the other nodes' live connections (None: a single node, and step 1
            costs nothing more than a dict lookup).
        """
        self._originators = originators
        self._clock = clock
        self._connectors: dict[str, IPoaConnector] = {}
        if isinstance(connectors, Mapping):
            for name, connector in connectors.items():
                self._connectors[name.lower()] = connector
        else:
            for connector in connectors:
                self.add_connector(connector)
        self.timeout = timeout
        self.queue: INotificationQueue = (
            queue if queue is not None else MemoryNotificationQueue(queue_size)
        )
        self.default_expiry = default_expiry
        self.purge_interval = purge_interval
        self.policy = policy if policy is not None else TargetPolicy(deny=())
        self.limits = limits if limits is not None else OutboundLimits()
        self.pad_failures = pad_failures
        self.cluster = cluster
        #: whether this chain purges expired queue entries (in a cluster only the leader's)
        self.purging = True
        #: the failures logged per target (a host, an originator), the rest summed up
        self._failures = Throttle(self.log, clock, "delivery failures")
        #: the originators whose queue is being sent, each with its flush (None while the
        #: flush takes its first steps, which run at once: a notification sent meanwhile must
        #: see it, to join the queue behind what is being sent)
        self._flushing: dict[str, Deferred[bool] | None] = {}
        #: originators told of new entries while their flush ran: it looks again once over
        #: (the entry may have come after its last look)
        self._flush_again: set[str] = set()
        self._in_flight: set[Deferred[Response]] = set()
        #: what :meth:`send_then` sent on live connections, not answered yet
        self._live: set[_LiveSend] = set()
        self._purge_call: IDelayedCall | None = None
        self._stopped = False
        #: notifications by fate, poa steps by scheme and result (read by the metrics)
        self.counts = ChainCounts()
        originators.add_observer(self)

    # -- registry ---------------------------------------------------------------------------

    def add_connector(self, connector: IPoaConnector) -> None:
        """Register ``connector`` for each of its schemes (replacing an earlier one)."""
        for name in connector.schemes:
            self._connectors[name.lower()] = connector

    def connector_for(self, scheme: str) -> IPoaConnector | None:
        return self._connectors.get(scheme.lower())

    def queued(self, originator: str) -> list[Request]:
        """The requests waiting for ``originator``, oldest first (expired ones included)."""
        return [entry.request for entry in self.queue.pending(originator)]

    def startService(self) -> None:
        super().startService()
        if self.queue.total():  # a durable queue restored at start: expire it on time too
            self._schedule_purge()
        watch = getattr(self.queue, "watch", None)
        if watch is not None:  # a queue shared with other processes: they queue for us too
            watch(self._queued_elsewhere)

    def _queued_elsewhere(self, originator: str) -> None:
        """Some process (maybe another) queued a notification for ``originator``: deliver
        it if the originator is connected here."""
        if self._stopped:
            return
        connection = self._originators.lookup(originator)
        if connection is not None:
            self._start_flush(originator, connection)

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def stop(self) -> None:
        """Stop observing, cancel timers, flushes and sends in flight; keep the queue."""
        if self._stopped:
            return
        self._stopped = True
        self._originators.remove_observer(self)
        if self._purge_call is not None and self._purge_call.active():
            self._purge_call.cancel()
        self._purge_call = None
        for d in list(self._flushing.values()):
            if d is not None:
                d.cancel()
        for sent in list(self._in_flight):
            sent.cancel()
        for live in list(self._live):
            live.cancel()
        self._failures.stop()

    # -- IRequestSender ---------------------------------------------------------------------

    def send(
        self,
        target: str,
        request: Request,
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> Deferred[Response]:
        """Deliver ``request`` to ``target`` (an originator ID or a URL); see the module doc.

        Cancelling the returned Deferred cancels the step in flight and ends the chain.
        """
        if type(poa) is not tuple:
            poa = tuple(poa)
        connection = self._live_connection(target, request, store)
        if connection is None:
            if self._relayable(target, request, store):
                return self._track(self._send_relayed(target, request, poa, store))
            return self._track(
                Deferred.fromCoroutine(self._send_other(target, request, poa, store))
            )
        # The common case, a notification to a connected AE, needs no coroutine and no
        # second timer: an IConnection times its requests out itself (4008).
        live = connection.request(request, self.timeout)
        live.addCallbacks(
            self._live_answered,
            self._live_failed,
            callbackArgs=(request,),
            errbackArgs=(target, request, poa, store, connection),
        )
        return self._track(live)

    #: :meth:`send_then` takes a :class:`~acmews.primitive.Notification` too
    takes_notifications = True

    def send_then(
        self,
        target: str,
        request: Request | Notification,
        then: Callable[[Any], object],
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> None:
        """:meth:`send`, calling ``then`` with the outcome: to a live connection without a
        Deferred (the fan-out's common case); any other way as :meth:`send` goes.

        ``request`` may be a :class:`~acmews.primitive.Notification`: a connection that
        has ``notify_then`` (a :class:`~acmews.session.Session`) sends it as it is; every
        other way, and after a failure, it goes as the request it stands for."""
        if type(poa) is not tuple:
            poa = tuple(poa)
        connection = self._live_connection(target, request, store)
        if connection is None:
            request = as_request(request)
            if self._relayable(target, request, store):
                self._track(self._send_relayed(target, request, poa, store)).addBoth(then)
                return
            other = self._send_other(target, request, poa, store)
            self._track(Deferred.fromCoroutine(other)).addBoth(then)
            return
        live = _LiveSend(self, target, request, poa, store, connection, then)
        self._live.add(live)
        if isinstance(request, Notification):
            notify = getattr(connection, "notify_then", None)
            if notify is not None:
                notify(request, live, self.timeout)
                return
            request = live.request = request.request()
        connection.request_then(request, live, self.timeout)

    def _live_connection(
        self, target: str, request: Request | Notification, store: bool
    ) -> IConnection | None:
        """The live connection here that ``request`` goes on at once, if any: not for a
        URL, nor for a stored notification that must wait behind queued ones."""
        if is_url(target) or self._waits_behind(target, request, store):
            return None
        return self._originators.lookup(target)

    async def _send_other(
        self, target: str, request: Request, poa: tuple[str, ...], store: bool
    ) -> Response:
        """The ways other than a live connection here: a URL as is; behind the queue; a live
        connection on another node of a cluster; the poa entries, then the queue."""
        if is_url(target):
            return await self._send_url(target, request)
        if self._waits_behind(target, request, store):
            # older notifications are waiting: this one may have to go behind them
            return await self._send_queued(target, request, poa)
        if self.cluster is not None:
            return await self._send_relayed(target, request, poa, store)
        return await self._send_poa(target, request, poa, store, ["no live connection"])

    def _waits_behind(self, target: str, request: Request | Notification, store: bool) -> bool:
        """Whether ``request`` is a stored notification (``store``) for ``target`` that has
        to wait behind others: some queued here, or its queue being delivered here (a shared
        queue's entries that other processes queued). In a cluster on a shared queue, for an
        originator not connected here, the node that holds it decides (it refuses a relayed
        notification while it delivers the queue): what this process counts is only what it
        queued, and another process may have delivered it long since."""
        if not store or request.op != _NOTIFY:
            return False
        if (
            self.cluster is not None
            and getattr(self.queue, "shared", False)
            and target not in self._flushing
            and self._originators.lookup(target) is None
        ):
            return False
        return bool(self.queue.count(target)) or target in self._flushing

    def _live_answered(self, response: Response, request: Request) -> Response:
        if request.op == _NOTIFY:
            self.counts.delivered += 1
        return response

    def _track(self, d: Deferred[Response]) -> Deferred[Response]:
        """Remember ``d`` until it fires, so that :meth:`stop` can cancel it."""
        if not d.called:
            self._in_flight.add(d)

            def forget(result: object) -> object:
                self._in_flight.discard(d)
                return result

            d.addBoth(forget)
        return d

    def _live_failed(
        self,
        failure: Failure,
        target: str,
        request: Request,
        poa: tuple[str, ...],
        store: bool,
        connection: IConnection,
    ) -> Deferred[Response] | Failure:
        if isinstance(failure.value, CancelledError):
            return failure
        error = unwrap_timeout(failure.value or Exception("unknown failure"))
        assert isinstance(error, Exception)
        if not isinstance(error, OneM2MError):
            self._log_unexpected(target, request, "live connection", failure)
        tried = [f"live connection {connection.peer}: {reason(error)}"]
        if isinstance(error, RequestTimeout) and not poa and not (store and request.op == _NOTIFY):
            # the only way there timed out (a forwarded request over a CSE link): 4008
            self._log_failed(target, request, tried)
            return Failure(error)
        return Deferred.fromCoroutine(self._send_poa(target, request, poa, store, tried))

    def _relayable(self, target: str, request: Request, store: bool) -> bool:
        """Whether, with no live connection here, ``request`` goes to the cluster next (not
        a URL, not behind a queue): :meth:`_send_relayed` without a coroutine."""
        return (
            self.cluster is not None
            and not is_url(target)
            and not self._waits_behind(target, request, store)
        )

    def _send_relayed(
        self, target: str, request: Request, poa: tuple[str, ...], store: bool
    ) -> Deferred[Response]:
        """Step 1 in a cluster, for an originator with no live connection here: its live
        connection on another node, then the rest of the chain as for a local one."""
        assert self.cluster is not None
        relayed = self.cluster.relay(
            target, request, self.timeout, store and request.op == _NOTIFY
        )
        relayed.addCallbacks(
            self._live_answered,
            self._relay_failed,
            callbackArgs=(request,),
            errbackArgs=(target, request, poa, store),
        )
        return relayed

    def _relay_failed(
        self,
        failure: Failure,
        target: str,
        request: Request,
        poa: tuple[str, ...],
        store: bool,
    ) -> Deferred[Response] | Failure:
        if failure.check(CancelledError):
            return failure
        if failure.check(NoClusterRoute):
            tried = ["no live connection"]
        else:
            error = unwrap_timeout(failure.value or Exception("unknown failure"))
            assert isinstance(error, Exception)
            if not isinstance(error, OneM2MError):
                self._log_unexpected(target, request, "live connection in the cluster", failure)
            tried = [f"live connection on another node: {reason(error)}"]
            if (
                isinstance(error, RequestTimeout)
                and not poa
                and not (store and request.op == _NOTIFY)
            ):
                self._log_failed(target, request, tried)
                return Failure(error)
        return Deferred.fromCoroutine(self._send_poa(target, request, poa, store, tried))

    async def _send_queued(self, target: str, request: Request, poa: tuple[str, ...]) -> Response:
        """A NOTIFY for an originator with a non-empty queue: keep the order."""
        connection = self._originators.lookup(target)
        if connection is not None or target in self._flushing:
            response = await self._enqueue(target, request)
            if connection is not None:
                self._start_flush(target, connection)
            return response
        if self.cluster is not None and await self.cluster.holder(target) is not None:
            # connected to another node, which flushes the (shared) queue in order
            return await self._enqueue(target, request)
        return await self._send_poa(target, request, poa, True, ["no live connection"])

    async def _send_poa(
        self,
        target: str,
        request: Request,
        poa: tuple[str, ...],
        store: bool,
        tried: list[str],
    ) -> Response:
        """The steps after the live connection: the poa entries, then the queue or 5103.

        ``tried`` is what the client learns of the steps, ``log`` what the log does (one
        line for the whole chain, within the target's :class:`~acmews.logs.Throttle`)."""
        log = list(tried)
        failed = False
        for url in poa:
            if is_default_poa(url):
                tried.append(f"{url}: no new connection")
                log.append(tried[-1])
                continue
            connector = self._connectors.get(scheme_of(url))
            if connector is None:
                tried.append(f"{url}: unsupported scheme")
                log.append(f"{url}: no connector for scheme {scheme_of(url)!r}")
                continue
            self.log.debug(
                "sending {rqi} to {target} via poa {url}", rqi=request.rqi, target=target, url=url
            )
            try:
                response = await self._through(target, connector, url, request)
            except OneM2MError as e:
                tried.append(f"{url}: not reachable")
                log.append(f"{url}: {_account(e.__cause__ or e)}")
                failed = True
                continue
            if failed:
                self._log_failed(target, request, log, f"delivered through {url}")
            return response
        if not poa:
            tried.append("no poa")
            log.append("no poa")
        if store and request.op == _NOTIFY:
            if failed:  # else the queue's own lines say it (an originator offline is common)
                self._log_failed(target, request, log, "stored")
            return await self._enqueue(target, request)
        self._log_failed(target, request, log)
        raise TargetNotReachable(
            f"{target} is not reachable ({'; '.join(tried)})", rqi=request.rqi
        )

    async def _send_url(self, url: str, request: Request) -> Response:
        """A URL target (an ``nu``) is used as is, through the connector for its scheme."""
        scheme = scheme_of(url)
        connector = None if is_default_poa(url) else self._connectors.get(scheme)
        if connector is None:
            self._log_failed(url, request, [f"no connector for scheme {scheme!r}"])
            raise TargetNotReachable(
                f"{url} is not reachable (unsupported scheme {scheme!r})", rqi=request.rqi
            )
        self.log.debug("sending {rqi} to URL {url}", rqi=request.rqi, url=url)
        try:
            return await self._through(url, connector, url, request)
        except OneM2MError as e:
            self._log_failed(url, request, [_account(e.__cause__ or e)])
            raise

    async def _through(
        self, target: str, connector: IPoaConnector, url: str, request: Request
    ) -> Response:
        """The one step both a poa entry and a URL target take: the policy, a slot within the
        outbound limits, the scheme's connector; all of it under the chain's timeout (which
        fires whatever the connector does, and counts the wait for a slot too).

        And their one failure path: a failure is logged; one to reach ``url`` (a transport
        error, a timeout, anything unexpected) is raised as TargetNotReachable, in the same
        words whether refused, silent or reset: the reason reaches the client, which must
        not learn from it which ports are open (the log says). Another oneM2M error (a
        request too large for it, say) is raised as it is.

        Nor may it learn that from the time a failure takes: a closed port refuses at once,
        an open one that is no oneM2M endpoint fails after a round trip or two, a filtered
        one only when the timeout fires (0.00 / 0.30 / 10 s once, for an ``nu`` or a poa
        of the attacker's choosing). So a failed step is reported no earlier than its
        ``timeout`` after it started (with ``pad_failures``): the timeout is the one delay
        that hides a filtered port, since that fails by timing out, and the step takes no
        longer than it was allowed anyway. A success is never delayed, and the live
        connection (the common case) does not come here. The floor's timer is set before
        the step starts, so that a caller's own timer of the same length (a subscription
        verification's) fires after it whatever the cause of the failure.
        """
        floor = self._failure_floor()
        step = Deferred.fromCoroutine(self._outbound(connector, url, request))
        counts = self.counts
        try:
            response = await await_step(step, self.timeout, self._clock)
        except CancelledError:
            _drop(floor)
            raise
        except Exception as e:
            denied = isinstance(e.__cause__, TargetDenied)
            counts.step(scheme_of(url), counts.DENIED if denied else counts.FAILED)
            if not isinstance(e, OneM2MError):
                self._log_unexpected(target, request, url)
            if floor is not None:
                await floor
            if isinstance(e, OneM2MError) and not isinstance(
                e, TargetNotReachable | RequestTimeout
            ):
                raise
            raise TargetNotReachable(f"{url} is not reachable", rqi=request.rqi) from e
        _drop(floor)
        counts.step(scheme_of(url), counts.ANSWERED)
        if request.op == _NOTIFY:
            counts.delivered += 1
        return response

    def _failure_floor(self) -> Deferred[None] | None:
        """Fires when this chain's ``timeout`` has passed (None without ``pad_failures``)."""
        if not self.pad_failures:
            return None
        floor: Deferred[None] = Deferred(lambda _: call.cancel())
        call = self._clock.callLater(self.timeout, floor.callback, None)
        return floor

    async def _outbound(self, connector: IPoaConnector, url: str, request: Request) -> Response:
        try:
            await self.policy.check(url)
        except TargetDenied as e:
            raise TargetNotReachable(f"{url}: not contacted", rqi=request.rqi) from e
        async with self.limits.slot(url):
            return await connector.send(url, request, self.timeout)

    def _log_failed(
        self, target: str, request: Request, steps: Sequence[str], outcome: str = "failed"
    ) -> None:
        """The one line a delivery that did not go straight through leaves (what each step
        met, and how it ended), within the target's budget: a peer that fails every delivery
        must not fill the disk (760 bytes of log per notification once)."""
        self._failures.emit(
            target_key(target),
            self.log.info,
            "request {rqi} to {target} {outcome}: {steps}",
            rqi=request.rqi,
            target=target,
            outcome=outcome,
            steps="; ".join(steps),
        )

    def _log_unexpected(
        self, target: str, request: Request, step: str, failure: Failure | None = None
    ) -> None:
        """An exception that is no oneM2M error (a connector's bug): with its traceback,
        within the target's budget. ``failure`` is None only inside an ``except`` block,
        where log.failure finds the exception itself; an errback must hand its Failure
        over."""
        self._failures.emit(
            target_key(target),
            self.log.failure,
            "request {rqi} to {target}: {step} failed unexpectedly, trying the next",
            failure,
            rqi=request.rqi,
            target=target,
            step=step,
        )

    # -- store and forward ------------------------------------------------------------------

    async def _enqueue(self, originator: str, request: Request) -> Response:
        now = self._clock.seconds()
        expires = parse_expiry(request.rqet, now)
        if expires is None:
            if request.rqet is not None:
                self.log.warn(
                    "notification {rqi} for {originator}: unreadable rqet {rqet!r}, "
                    "keeping it for the default {expiry} s",
                    rqi=request.rqi,
                    originator=originator,
                    rqet=request.rqet,
                    expiry=self.default_expiry,
                )
            expires = now + self.default_expiry
        if expires <= now:
            self.counts.expired += 1
            self.log.info(
                "notification {rqi} for {originator} not reachable and already expired",
                rqi=request.rqi,
                originator=originator,
            )
            raise TargetNotReachable(
                f"{originator} is not reachable and the notification has expired",
                rqi=request.rqi,
            )
        try:
            count = self.queue.enqueue(originator, request, expires, now)
        except TargetNotReachable:
            raise  # QueueFull: the queue logged it
        except OneM2MError as e:
            # it could never be delivered: keep it out rather than let it block the queue
            self.counts.dropped += 1
            self.log.warn(
                "notification {rqi} for {originator} cannot be stored: {reason}",
                rqi=request.rqi,
                originator=originator,
                reason=e.reason,
            )
            raise TargetNotReachable(
                f"{originator} is not reachable and the notification cannot be stored",
                rqi=request.rqi,
            ) from e
        self.counts.queued += 1
        # one line when an originator's queue starts; the flush sums up what it delivers
        (self.log.info if count == 1 else self.log.debug)(
            "notification {rqi} for {originator} queued ({count} waiting) until it expires "
            "in {ttl:.0f} s",
            rqi=request.rqi,
            originator=originator,
            count=count,
            ttl=expires - now,
        )
        self._schedule_purge()
        durable = self.queue.durable()
        if durable is not None:
            await durable  # ACCEPTED promises it survives a restart
        if self.cluster is not None:
            # it may have connected (here or to another node) while the chain went on:
            # whichever node holds it now flushes, so that nothing waits for a reconnect
            connection = self._originators.lookup(originator)
            if connection is not None:
                self._start_flush(originator, connection)
            else:
                self.cluster.queued(originator)
        return Response(RSC.ACCEPTED, request.rqi, request.rvi)

    def _schedule_purge(self) -> None:
        if self._stopped or self._purge_call is not None:
            return
        self._purge_call = self._clock.callLater(self.purge_interval, self._purge_timer)

    def _purge_timer(self) -> None:
        self._purge_call = None
        if self.purging:
            self.queue.purge_expired(self._clock.seconds())
        if self.queue.total():
            self._schedule_purge()

    # -- IOriginatorObserver ----------------------------------------------------------------

    def originator_connected(self, originator: str, connection: IConnection) -> None:
        """Deliver what waits for ``originator``, in order, on its new connection."""
        self._start_flush(originator, connection)

    def originator_disconnected(self, originator: str, connection: IConnection) -> None:
        """Nothing to do: a flush in progress learns of it when its request fails."""

    def flush(self, originator: str) -> None:
        """Deliver what waits for ``originator`` on its live connection here, if it has one
        and nothing is being delivered to it yet (another node of a cluster queued some)."""
        connection = self._originators.lookup(originator)
        if connection is not None:
            self._start_flush(originator, connection)

    def flushing(self, originator: str) -> bool:
        """Whether the queue of ``originator`` is being delivered here (a new notification
        then goes behind it: in a cluster the node holding the connection tells the sender
        to queue it)."""
        return originator in self._flushing

    def _start_flush(self, originator: str, connection: IConnection) -> None:
        if self._stopped:
            return
        if originator in self._flushing:
            self._flush_again.add(originator)
            return
        if not getattr(self.queue, "shared", False) and not self.queue.count(originator):
            return  # (a shared queue may hold entries other processes queued: take asks it)
        self._flushing[originator] = None
        d = self._flushing[originator] = Deferred.fromCoroutine(
            self._flush(originator, connection)
        )

        def done(result: bool | Failure) -> None:
            del self._flushing[originator]
            again = originator in self._flush_again
            self._flush_again.discard(originator)
            if isinstance(result, Failure):
                if not isinstance(result.value, CancelledError):
                    self.log.failure(
                        "flush for {originator} failed", result, originator=originator
                    )
                return
            current = self._originators.lookup(originator)
            if result:
                if again and current is not None:
                    self._start_flush(originator, current)
                return
            # Stopped on a transport failure: a newer connection may have arrived meanwhile.
            if current is not None and current is not connection:
                self._start_flush(originator, current)

        d.addBoth(done)

    async def _flush(self, originator: str, connection: IConnection) -> bool:
        """Send the queue in order; True once empty, False if a transport failure stopped it."""
        queue = self.queue
        delivered = expired = 0
        try:
            while True:
                entry = await _settled(queue.take(originator))
                if entry is None:
                    break
                if entry.expires <= self._clock.seconds():
                    await _settled(queue.acknowledge(originator, entry))
                    expired += 1
                    self.counts.expired += 1
                    continue
                try:
                    response = await await_step(
                        connection.request(entry.request, self.timeout),
                        self.timeout,
                        self._clock,
                    )
                except CancelledError:
                    raise
                except Exception as e:
                    error = unwrap_timeout(e)
                    if isinstance(error, OneM2MError) and not isinstance(
                        error, TargetNotReachable | RequestTimeout
                    ):
                        # this connection can never take it (too large for it, say): a
                        # poisoned entry must not block the ones behind it
                        await _settled(queue.acknowledge(originator, entry))
                        self.counts.dropped += 1
                        self.log.warn(
                            "queued notification {rqi} for {originator} cannot be sent "
                            "({reason}): dropped",
                            rqi=entry.rqi,
                            originator=originator,
                            reason=error.reason,
                        )
                        continue
                    release = getattr(queue, "release", None)
                    if release is not None:  # a shared queue: another process may take it
                        await _settled(release(originator, entry))
                    self.log.info(
                        "flush to {originator} on {peer} stopped ({reason}); "
                        "{count} notifications stay queued",
                        originator=originator,
                        peer=connection.peer,
                        reason=reason(error),
                        count=queue.count(originator),
                    )
                    return False
                # nothing if it was dropped meanwhile
                await _settled(queue.acknowledge(originator, entry))
                delivered += 1
                self.counts.delivered += 1
                self.log.debug(
                    "queued notification {rqi} delivered to {originator}: rsc {rsc}",
                    rqi=entry.rqi,
                    originator=originator,
                    rsc=response.rsc,
                )
        finally:
            if delivered or expired:
                self.log.info(
                    "delivered {count} queued notifications to {originator} "
                    "({expired} had expired)",
                    count=delivered,
                    originator=originator,
                    expired=expired,
                )
        return True


async def _settled(result: _R | Deferred[_R]) -> _R:
    """What a queue's method returned: at once, or once its Deferred fires (a shared queue
    asks its database)."""
    if isinstance(result, Deferred):
        return await result
    return result


def _drop(floor: Deferred[None] | None) -> None:
    """A failure floor no longer needed: its timer cancelled, its CancelledError consumed."""
    if floor is not None and not floor.called:
        floor.cancel()
        floor.addErrback(lambda _: None)


def _account(error: BaseException) -> str:
    """The log's account of a failed step: its reason and those of its causes (the
    client's reason says only "not reachable", the same whatever happened)."""
    reasons = [reason(error)]
    cause = error.__cause__
    while cause is not None and len(reasons) < 4:
        reasons.append(reason(cause))
        cause = cause.__cause__
    return " <- ".join(reasons)


class _LiveSend:
    """A request :meth:`PoaChain.send_then` sent on a live connection: called with its
    outcome, it counts a delivery or goes on with the chain (as :meth:`PoaChain.send` does),
    then hands the result on."""

    __slots__ = ("chain", "connection", "poa", "request", "store", "target", "then")

    def __init__(
        self,
        chain: PoaChain,
        target: str,
        request: Request | Notification,
        poa: tuple[str, ...],
        store: bool,
        connection: IConnection,
        then: Callable[[Any], object],
    ) -> None:
        self.chain = chain
        self.target = target
        self.request = request
        self.poa = poa
        self.store = store
        self.connection = connection
        self.then: Callable[[Any], object] | None = then

    def __call__(self, result: Response | Failure) -> None:
        then = self.then
        if then is None:
            return  # cancelled: the chain has stopped
        self.then = None
        chain = self.chain
        chain._live.discard(self)
        if not isinstance(result, Failure):
            if self.request.op == _NOTIFY:  # (as _live_answered counts)
                chain.counts.delivered += 1
            then(result)
            return
        outcome = chain._live_failed(
            result, self.target, as_request(self.request), self.poa, self.store, self.connection
        )
        if isinstance(outcome, Deferred):
            chain._track(outcome).addBoth(then)
        else:
            then(outcome)

    def cancel(self) -> None:
        then = self.then
        if then is not None:
            self.then = None
            self.chain._live.discard(self)
            then(Failure(CancelledError()))
