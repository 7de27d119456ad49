"""The poa resolution Deferred chain: how the CSE reaches an originator, and the connectors.

:class:`PoaChain` sends a request the CSE originates (a notification, a verification request, a
forwarded request) to an AE or CSE, stopping at the **first** step that gets an answer
(DESIGN.md, "Sending to an originator"):

1. the originator's live connection in the originator map;
2. its ``poa`` entries in order: ``ws://default`` opens nothing (only the live connection could
   have been used), every other URL goes to the :class:`~acmews.interfaces.IPoaConnector`
   registered for its scheme (``ws``/``wss``: :class:`WebSocketConnector`, ``http``/``https``:
   :class:`HttpConnector`, or a gateway's own);
3. nothing reachable: a NOTIFY sent with ``store=True`` waits in a bounded per-originator queue
   and is delivered, in order, when the originator connects; anything else fails with 5103.

A transport failure (5103, 4008, any exception) moves on to the next step; any answer, whatever
its rsc, ends the chain (ACME sends to every poa and so duplicates requests; we do not).

Queue policies:

- bound: ``queue_size`` entries per originator; a full queue first drops its expired entries,
  then its oldest entry (logged).
- expiry: the request's ``rqet`` (timestamp ``YYYYMMDDThhmmss[,ffffff]`` UTC, or a duration in
  ms counted from the moment it is queued), else ``default_expiry``. Expired entries are dropped
  when a flush reaches them and by one chain-wide purge timer that runs every
  ``purge_interval`` seconds only while something is queued.
- flush: on connect, entries go one at a time on the new connection, each awaited before the
  next. An answer (any rsc) removes the entry. A transport failure (connection lost, timeout)
  stops the flush and keeps that entry and the rest queued for the next connection: delivery is
  at-least-once, bounded by the expiry. While a queue is non-empty and its originator connected
  (or being flushed), new stored notifications join the queue so that order holds. While it
  is not connected, a new notification still tries the chain (a reachable ``http://`` poa gets
  it at once rather than after older, undeliverable ones have expired).
- a queued request is sent unchanged; a relative ``rqet`` is therefore read again by the
  receiver from the moment it arrives.
- the queue lives in memory: :meth:`PoaChain.stop` cancels timers and flushes but keeps it; a
  process exit loses it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from acmews.codec import JSON, SHORT_NAMES
from acmews.codes import RSC, Operation
from acmews.errors import OneM2MError, RequestTimeout, TargetNotReachable
from acmews.interfaces import (
    IConnection,
    IOriginatorMap,
    IOriginatorObserver,
    IPoaConnector,
    IRequestSender,
)
from acmews.primitive import Request, Response
from acmews.session import Session
from acmews.timestamps import expiry_delay

__all__ = [
    "ConnectFunction",
    "HttpClient",
    "HttpConnector",
    "PoaChain",
    "WebSocketConnector",
    "parse_expiry",
]

#: ``(url, originator, subprotocols) -> Deferred[IConnection]``: opens an outbound WebSocket
#: that sends ``X-M2M-Origin: originator`` and offers ``subprotocols`` in order.
ConnectFunction = Callable[[str, str, Sequence[str]], Deferred[IConnection]]

DEFAULT_POA = "ws://default"


def _is_url(target: str) -> bool:
    return "://" in target


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].strip().lower() if _is_url(url) else ""


def _is_default_poa(url: str) -> bool:
    return url.strip().rstrip("/").lower() == DEFAULT_POA


def _reason(error: BaseException) -> str:
    if isinstance(error, OneM2MError):
        return f"{int(error.rsc)} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _unwrap(error: BaseException) -> BaseException:
    """Twisted's ``addTimeout`` error becomes our 4008, so every caller sees one type."""
    if isinstance(error, DeferTimeoutError):
        return RequestTimeout("no response in time")
    return error


def parse_expiry(rqet: object, now: float) -> float | None:
    """The absolute expiry (clock seconds) of a ``rqet``, or None if it is absent or unreadable.

    ``rqet`` is a UTC timestamp ``YYYYMMDDThhmmss[,ffffff]`` or a duration in milliseconds (an
    int or a string of digits), which counts from ``now``. Timestamps assume the clock counts
    seconds since the epoch, as the reactor does.
    """
    if not isinstance(rqet, str | int):
        return None
    delay = expiry_delay(rqet.strip() if isinstance(rqet, str) else rqet, now)
    return None if delay is None else now + delay


async def _await_step(step: Deferred[Response], timeout: float, clock: IReactorTime) -> Response:
    """Await one step with a guard timeout, so that a step that never answers cannot stall."""
    step.addTimeout(timeout, clock)
    try:
        return await step
    except DeferTimeoutError:
        raise RequestTimeout(f"no response within {timeout:g} s") from None


@dataclass(slots=True)
class _Queued:
    request: Request
    expires: float


@implementer(IRequestSender, IOriginatorObserver)
class PoaChain:
    """Sends requests to originators: live connection, then poa entries, then the queue."""

    log = Logger()

    def __init__(
        self,
        originators: IOriginatorMap,
        clock: IReactorTime,
        connectors: Iterable[IPoaConnector] | Mapping[str, IPoaConnector] = (),
        *,
        timeout: float = 10.0,
        queue_size: int = 1000,
        default_expiry: float = 3600.0,
        purge_interval: float = 60.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._originators = originators
        self._clock = clock
        self._connectors: dict[str, IPoaConnector] = {}
        if isinstance(connectors, Mapping):
            for scheme, connector in connectors.items():
                self._connectors[scheme.lower()] = connector
        else:
            for connector in connectors:
                self.add_connector(connector)
        self.timeout = timeout
        self.queue_size = queue_size
        self.default_expiry = default_expiry
        self.purge_interval = purge_interval
        self._queues: dict[str, deque[_Queued]] = {}
        self._flushing: dict[str, Deferred[bool]] = {}
        self._flushing_now: set[str] = set()
        self._in_flight: set[Deferred[Response]] = set()
        self._purge_call: IDelayedCall | None = None
        self._stopped = False
        originators.add_observer(self)

    # -- registry ---------------------------------------------------------------------------

    def add_connector(self, connector: IPoaConnector) -> None:
        """Register ``connector`` for each of its schemes (replacing an earlier one)."""
        for scheme in connector.schemes:
            self._connectors[scheme.lower()] = connector

    def connector_for(self, scheme: str) -> IPoaConnector | None:
        return self._connectors.get(scheme.lower())

    def queued(self, originator: str) -> list[Request]:
        """The requests waiting for ``originator``, oldest first (expired ones included)."""
        return [entry.request for entry in self._queues.get(originator, ())]

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
            d.cancel()
        for sent in list(self._in_flight):
            sent.cancel()

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
        poa = tuple(poa)
        if _is_url(target):
            return self._track(Deferred.fromCoroutine(self._send_url(target, request)))
        if store and request.op == Operation.NOTIFY and self._queues.get(target):
            # older notifications are waiting: this one may have to go behind them
            return self._track(Deferred.fromCoroutine(self._send_queued(target, request, poa)))
        connection = self._originators.lookup(target)
        if connection is None:
            return self._track(
                Deferred.fromCoroutine(
                    self._send_poa(target, request, poa, store, ["no live connection"])
                )
            )
        # the common case, a notification to a connected AE, needs no coroutine
        live = connection.request(request, self.timeout)
        if not isinstance(connection, Session):
            # a Session times its requests out itself; another IConnection may not
            live.addTimeout(self.timeout, self._clock)
        live.addErrback(self._live_failed, target, request, poa, store, connection)
        return self._track(live)

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
        error = _unwrap(failure.value or Exception("unknown failure"))
        assert isinstance(error, Exception)
        self._log_step_failed(target, request, "live connection", error)
        tried = [f"live connection {connection.peer}: {_reason(error)}"]
        return Deferred.fromCoroutine(self._send_poa(target, request, poa, store, tried))

    async def _send_queued(self, target: str, request: Request, poa: tuple[str, ...]) -> Response:
        """A NOTIFY for an originator with a non-empty queue: keep the order."""
        connection = self._originators.lookup(target)
        if connection is not None or target in self._flushing_now:
            response = self._enqueue(target, request)
            if connection is not None:
                self._start_flush(target, connection)
            return response
        return await self._send_poa(target, request, poa, True, ["no live connection"])

    async def _send_poa(
        self,
        target: str,
        request: Request,
        poa: tuple[str, ...],
        store: bool,
        tried: list[str],
    ) -> Response:
        """The steps after the live connection: the poa entries, then the queue or 5103."""
        storable = store and request.op == Operation.NOTIFY
        for url in poa:
            if _is_default_poa(url):
                self.log.debug(
                    "{target}: poa {url} skipped, it opens no new connection",
                    target=target,
                    url=url,
                )
                tried.append(f"{url}: no new connection")
                continue
            scheme = _scheme(url)
            connector = self._connectors.get(scheme)
            if connector is None:
                self.log.warn(
                    "{target}: poa {url} skipped, no connector for scheme {scheme!r}",
                    target=target,
                    url=url,
                    scheme=scheme,
                )
                tried.append(f"{url}: unsupported scheme")
                continue
            self.log.debug(
                "sending {rqi} to {target} via poa {url}", rqi=request.rqi, target=target, url=url
            )
            try:
                return await _await_step(
                    connector.send(url, request, self.timeout), self.timeout, self._clock
                )
            except CancelledError:
                raise
            except Exception as e:
                tried.append(f"{url}: {_reason(e)}")
                self._log_step_failed(target, request, url, e)
        if not poa:
            tried.append("no poa")
        if storable:
            return self._enqueue(target, request)
        reason = f"{target} is not reachable ({'; '.join(tried)})"
        self.log.info(
            "request {rqi} to {target} failed: not reachable: {tried}",
            rqi=request.rqi,
            target=target,
            tried=tried,
        )
        raise TargetNotReachable(reason, rqi=request.rqi)

    async def _send_url(self, url: str, request: Request) -> Response:
        """A URL target (an ``nu``) is used as is, through the connector for its scheme."""
        scheme = _scheme(url)
        connector = None if _is_default_poa(url) else self._connectors.get(scheme)
        if connector is None:
            self.log.warn(
                "request {rqi} to {url}: no connector for scheme {scheme!r}",
                rqi=request.rqi,
                url=url,
                scheme=scheme,
            )
            raise TargetNotReachable(
                f"{url} is not reachable (unsupported scheme {scheme!r})", rqi=request.rqi
            )
        self.log.debug("sending {rqi} to URL {url}", rqi=request.rqi, url=url)
        try:
            return await _await_step(
                connector.send(url, request, self.timeout), self.timeout, self._clock
            )
        except (CancelledError, OneM2MError):
            raise
        except Exception as e:
            self._log_step_failed(url, request, url, e)
            raise TargetNotReachable(
                f"{url} is not reachable ({_reason(e)})", rqi=request.rqi
            ) from e

    def _log_step_failed(self, target: str, request: Request, step: str, e: Exception) -> None:
        if isinstance(e, OneM2MError):
            self.log.info(
                "request {rqi} to {target}: {step} failed ({reason}), trying the next",
                rqi=request.rqi,
                target=target,
                step=step,
                reason=_reason(e),
            )
        else:
            # called inside the ``except`` block: log.failure picks the exception up itself
            self.log.failure(
                "request {rqi} to {target}: {step} failed unexpectedly, trying the next",
                rqi=request.rqi,
                target=target,
                step=step,
            )

    # -- store and forward ------------------------------------------------------------------

    def _enqueue(self, originator: str, request: Request) -> Response:
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
            self.log.info(
                "notification {rqi} for {originator} not reachable and already expired",
                rqi=request.rqi,
                originator=originator,
            )
            raise TargetNotReachable(
                f"{originator} is not reachable and the notification has expired",
                rqi=request.rqi,
            )
        queue = self._queues.setdefault(originator, deque())
        if len(queue) >= self.queue_size:
            self._purge_queue(originator, queue, now)
        while len(queue) >= self.queue_size:
            dropped = queue.popleft()
            self.log.warn(
                "queue for {originator} full ({size}): dropped the oldest notification {rqi}",
                originator=originator,
                size=self.queue_size,
                rqi=dropped.request.rqi,
            )
        queue.append(_Queued(request, expires))
        self.log.info(
            "notification {rqi} for {originator} queued ({count} waiting) until it expires "
            "in {ttl:.0f} s",
            rqi=request.rqi,
            originator=originator,
            count=len(queue),
            ttl=expires - now,
        )
        self._schedule_purge()
        return Response(RSC.ACCEPTED, request.rqi, request.rvi)

    def _purge_queue(self, originator: str, queue: deque[_Queued], now: float) -> None:
        """Drop the expired entries of ``queue`` in place (the flush holds the same deque)."""
        kept = [entry for entry in queue if entry.expires > now]
        if len(kept) == len(queue):
            return
        for entry in queue:
            if entry.expires <= now:
                self.log.info(
                    "queued notification {rqi} for {originator} expired, dropped",
                    rqi=entry.request.rqi,
                    originator=originator,
                )
        queue.clear()
        queue.extend(kept)

    def _purge(self) -> None:
        now = self._clock.seconds()
        for originator, queue in list(self._queues.items()):
            self._purge_queue(originator, queue, now)
            if not queue and originator not in self._flushing_now:
                del self._queues[originator]

    def _schedule_purge(self) -> None:
        if self._stopped or self._purge_call is not None:
            return
        self._purge_call = self._clock.callLater(self.purge_interval, self._purge_timer)

    def _purge_timer(self) -> None:
        self._purge_call = None
        self._purge()
        if any(self._queues.values()):
            self._schedule_purge()

    # -- IOriginatorObserver ----------------------------------------------------------------

    def originator_connected(self, originator: str, connection: IConnection) -> None:
        """Deliver what waits for ``originator``, in order, on its new connection."""
        self._start_flush(originator, connection)

    def originator_disconnected(self, originator: str, connection: IConnection) -> None:
        """Nothing to do: a flush in progress learns of it when its request fails."""

    def _start_flush(self, originator: str, connection: IConnection) -> None:
        if self._stopped or originator in self._flushing_now or not self._queues.get(originator):
            return
        d = Deferred.fromCoroutine(self._flush(originator, connection))
        if not d.called:
            self._flushing[originator] = d

        def done(result: bool | Failure) -> None:
            self._flushing.pop(originator, None)
            if isinstance(result, Failure):
                if not isinstance(result.value, CancelledError):
                    self.log.failure(
                        "flush for {originator} failed", result, originator=originator
                    )
                return
            if result:
                return
            # Stopped on a transport failure: a newer connection may have arrived meanwhile.
            current = self._originators.lookup(originator)
            if current is not None and current is not connection:
                self._start_flush(originator, current)

        d.addBoth(done)

    async def _flush(self, originator: str, connection: IConnection) -> bool:
        """Send the queue in order; True once empty, False if a transport failure stopped it."""
        self._flushing_now.add(originator)
        delivered = 0
        try:
            while True:
                queue = self._queues.get(originator)
                if not queue:
                    break
                entry = queue[0]
                if entry.expires <= self._clock.seconds():
                    queue.popleft()
                    self.log.info(
                        "queued notification {rqi} for {originator} expired, dropped",
                        rqi=entry.request.rqi,
                        originator=originator,
                    )
                    continue
                try:
                    response = await _await_step(
                        connection.request(entry.request, self.timeout),
                        self.timeout,
                        self._clock,
                    )
                except CancelledError:
                    raise
                except Exception as e:
                    self.log.info(
                        "flush to {originator} on {peer} stopped ({reason}); "
                        "{count} notifications stay queued",
                        originator=originator,
                        peer=connection.peer,
                        reason=_reason(_unwrap(e)),
                        count=len(queue),
                    )
                    return False
                if queue and queue[0] is entry:  # it may have been dropped meanwhile
                    queue.popleft()
                delivered += 1
                self.log.debug(
                    "queued notification {rqi} delivered to {originator}: rsc {rsc}",
                    rqi=entry.request.rqi,
                    originator=originator,
                    rsc=response.rsc,
                )
        finally:
            self._flushing_now.discard(originator)
            queue = self._queues.get(originator)
            if queue is not None and not queue:
                del self._queues[originator]
        if delivered:
            self.log.info(
                "delivered {count} queued notifications to {originator}",
                count=delivered,
                originator=originator,
            )
        return True


# -- connectors -----------------------------------------------------------------------------


class HttpClient(Protocol):
    """The part of treq the HTTP connector uses (the ``treq`` module or a ``StubTreq``)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...

    def content(self, response: Any) -> Deferred[bytes]: ...


_HTTP_METHODS = {
    Operation.CREATE: "POST",
    Operation.RETRIEVE: "GET",
    Operation.UPDATE: "PUT",
    Operation.DELETE: "DELETE",
    Operation.NOTIFY: "POST",
}

_HTTP_STATUS_RSC = {400: RSC.BAD_REQUEST, 403: RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 404: RSC.NOT_FOUND}


def _rsc_from_status(status: int) -> int:
    if 200 <= status < 300:
        return RSC.OK
    return _HTTP_STATUS_RSC.get(status, RSC.INTERNAL_SERVER_ERROR)


def _http_path(to: str) -> str:
    """TS-0009 path of a ``to``: CSE-relative ``/x``, SP-relative ``/~/x``, absolute ``/_/x``."""
    if to.startswith("//"):
        return "/_/" + to[2:]
    if to.startswith("/"):
        return "/~" + to
    return "/" + to


def http_url(poa: str, request: Request) -> str:
    """The URL to send ``request`` to: a NOTIFY goes to the poa itself; other operations
    append the ``to`` path when the poa has no path of its own (else the poa is used as is).
    """
    if request.op == Operation.NOTIFY:
        return poa
    parts = urlsplit(poa)
    if parts.path not in ("", "/"):
        return poa
    return urlunsplit(parts._replace(path=_http_path(request.to)))


@implementer(IPoaConnector)
class HttpConnector:
    """``http``/``https`` poa through treq, mapped per TS-0009 (the oneM2M HTTP binding).

    Only ``X-M2M-Origin``, ``X-M2M-RI``, ``X-M2M-RVI`` and the JSON body (``pc``) are mapped;
    other request parameters (``rcn``, ``rqet``, filter criteria, ...) are not sent, which is
    enough for notifications, the case this connector exists for.
    """

    log = Logger()
    schemes: Sequence[str] = ("http", "https")

    def __init__(self, clock: IReactorTime, client: HttpClient | None = None) -> None:
        if client is None:
            import treq  # does not import the reactor; treq uses the global one when called

            client = cast(HttpClient, treq)
        self._client: HttpClient = client
        self._clock = clock

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send_timed(url, request, timeout))

    async def _send_timed(self, url: str, request: Request, timeout: float) -> Response:
        d = Deferred.fromCoroutine(self._send(url, request))
        d.addTimeout(timeout, self._clock)
        try:
            return await d
        except DeferTimeoutError:
            self.log.info("{url}: no HTTP response within {timeout} s", url=url, timeout=timeout)
            raise RequestTimeout(
                f"{url}: no HTTP response within {timeout:g} s", rqi=request.rqi
            ) from None

    async def _send(self, url: str, request: Request) -> Response:
        method = _HTTP_METHODS[request.op]
        target = http_url(url, request)
        content_type = "application/json"
        if request.op == Operation.CREATE and request.ty is not None:
            content_type += f";ty={int(request.ty)}"
        headers = {
            "X-M2M-RI": [request.rqi],
            "X-M2M-RVI": [request.rvi],
            "Content-Type": [content_type],
            "Accept": ["application/json"],
        }
        if request.fr is not None:
            headers["X-M2M-Origin"] = [request.fr]
        kwargs: dict[str, Any] = {"headers": headers}
        if request.pc is not None:
            kwargs["data"] = JSON.dumps(request.pc)
        try:
            answer = await self._client.request(method, target, **kwargs)
            body = await self._client.content(answer)
        except CancelledError:
            raise
        except Exception as e:
            self.log.info(
                "{method} {url} failed: {reason}", method=method, url=target, reason=_reason(e)
            )
            raise TargetNotReachable(f"{target}: {_reason(e)}", rqi=request.rqi) from e
        return self._response(answer, body, request, target)

    def _response(self, answer: Any, body: bytes, request: Request, url: str) -> Response:
        head = answer.headers

        def header(name: str) -> str | None:
            values = head.getRawHeaders(name)
            if not values:
                return None
            value = values[0]
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)

        raw_rsc = header("X-M2M-RSC")
        rsc: int | None = None
        if raw_rsc is not None:
            try:
                rsc = int(raw_rsc.strip())
            except ValueError:
                self.log.warn("{url}: unreadable X-M2M-RSC {rsc!r}", url=url, rsc=raw_rsc)
        if rsc is None:
            rsc = _rsc_from_status(answer.code)
        pc: Any = None
        if body.strip():
            try:
                pc = JSON.loads(body)
            except OneM2MError:
                self.log.warn("{url}: the response body is not JSON, ignored", url=url)
        self.log.debug("{url} answered {rsc} (HTTP {code})", url=url, rsc=rsc, code=answer.code)
        return Response(
            rsc,
            header("X-M2M-RI") or request.rqi,
            header("X-M2M-RVI") or request.rvi,
            pc,
        )


@implementer(IPoaConnector)
class WebSocketConnector:
    """``ws``/``wss`` poa: open a connection, send, await the response, close.

    ``connect`` is injected (the client layer provides the real one); it must send
    ``X-M2M-Origin: cse_id`` and offer ``serializations`` in order. ``ws://default`` never
    reaches it: the chain skips that entry. ``timeout`` covers connecting and the answer
    together. The connection serves this one request and is closed with 1000 afterwards,
    whatever happened.
    """

    log = Logger()
    schemes: Sequence[str] = ("ws", "wss")

    def __init__(
        self,
        connect: ConnectFunction,
        cse_id: str,
        clock: IReactorTime,
        serializations: Sequence[str] = ("oneM2M.json", "oneM2M.cbor"),
    ) -> None:
        self._connect = connect
        self.cse_id = cse_id
        self._clock = clock
        self.subprotocols: tuple[str, ...] = tuple(SHORT_NAMES.get(s, s) for s in serializations)

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send(url, request, timeout))

    async def _send(self, url: str, request: Request, timeout: float) -> Response:
        # one budget for connecting and answering, as the chain allows a step ``timeout``
        deadline = self._clock.seconds() + timeout
        try:
            connecting = self._connect(url, self.cse_id, self.subprotocols)
            connecting.addTimeout(timeout, self._clock)
            connection = await connecting
        except CancelledError:
            raise
        except Exception as e:
            reason = (
                f"no connection within {timeout:g} s"
                if isinstance(e, DeferTimeoutError)
                else _reason(e)
            )
            self.log.info("cannot connect to {url}: {reason}", url=url, reason=reason)
            raise TargetNotReachable(f"{url}: cannot connect: {reason}", rqi=request.rqi) from e
        self.log.debug("connected to {url} ({peer})", url=url, peer=connection.peer)
        try:
            remaining = max(deadline - self._clock.seconds(), 0.001)
            return await connection.request(request, remaining)
        except DeferTimeoutError:
            raise RequestTimeout(f"{url}: no response in time", rqi=request.rqi) from None
        finally:
            try:
                connection.close(1000, "poa delivery done")
            except Exception:
                self.log.failure("closing the connection to {url} failed", url=url)
