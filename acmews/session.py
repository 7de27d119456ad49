"""One connection's oneM2M state, free of any transport.

A :class:`Session` is given a ``send(data, is_binary)`` callable, a codec, a clock and an
:class:`IRequestHandler`; the protocol feeds it whole messages (:meth:`Session.message_received`)
and tells it when the connection is gone (:meth:`Session.connection_lost`). It matches responses
to outstanding requests by ``rqi`` (any number in flight, answered in any order), times them
out, answers incoming requests through the handler, and applies the originator rules of the
binding (X-M2M-Origin, ``fr`` checks). It never raises into the protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from acmews.codec import CBOR, JSON
from acmews.codes import RSC, Operation
from acmews.errors import (
    BadRequest,
    InternalServerError,
    NotAcceptable,
    OneM2MError,
    OriginatorHasNoPrivilege,
    PrimitiveError,
    RequestTimeout,
    TargetNotReachable,
)
from acmews.handshake import Authorization
from acmews.interfaces import ICodec, IConnection, IRequestHandler
from acmews.logs import Budget, Logger
from acmews.metrics import BindingMetrics
from acmews.options import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_REQUEST_TIMEOUT
from acmews.primitive import Notification, Request, Response, error_response
from acmews.timestamps import expiry_delay

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "Deadlines", "Session", "fr_allowed"]

SendFunction = Callable[[bytes, bool], None]
CloseFunction = Callable[[int, str], None]
BoundCallback = Callable[["Session", str], None]
#: what :meth:`Session.request_then` calls once with the response, or a Failure
Then = Callable[[Any], object]

#: one request we sent: what waits for its response (a Deferred, or a callable), the seconds
#: it was given, and the sequence number of its deadline (see :class:`Deadlines`)
_Entry = tuple["Deferred[Response] | Then", float, int]

#: a heap of timeouts holds the entries already answered until they reach its top, or until
#: it holds this many more than are pending (then it is rebuilt)
_HEAP_SLACK = 1024


def fr_allowed(originator: str, fr: str) -> bool:
    """May a connection bound to ``originator`` send a request with this ``fr``?

    An AE connection only its own AE-ID; a CSE connection (``/cse-id``) its own CSE-ID or an
    originator under it (``/cse-id/...``, forwarded traffic).
    """
    if fr == originator:
        return True
    return originator.startswith("/") and fr.startswith(originator + "/")


def registered_ae_id(response: Response) -> str | None:
    """The AE-ID from a successful AE CREATE response (``pc`` ``m2m:ae`` ``aei``)."""
    if response.rsc != RSC.CREATED or not isinstance(response.pc, dict):
        return None
    ae = response.pc.get("m2m:ae")
    if not isinstance(ae, dict):
        return None
    aei = ae.get("aei")
    return aei if isinstance(aei, str) and aei else None


#: a connection whose peer proved nothing
_UNVERIFIED = Authorization()


@implementer(IConnection)
class Session:
    """The oneM2M side of one WebSocket connection (either role)."""

    #: what each request sent and each response received reads, in the object itself: with a
    #: thousand connections a session's attributes are out of the processor's caches by the
    #: time its next message comes, and slots are one cache line where an instance dict's
    #: values are others (the rest, and anything set later, in the instance dict)
    __slots__ = (  # noqa: RUF023 (in the order they are read)
        "connected",
        "_one_rqi",
        "_one_waiter",
        "_one_delay",
        "_one_seq",
        "_more",
        "_pending",
        "codec",
        "_binary",
        "max_message_size",
        "request_timeout",
        "clock",
        "_deadlines",
        "_send",
        "metrics",
        "__dict__",
        "__weakref__",
    )

    log = Logger()

    def __init__(
        self,
        send: SendFunction,
        codec: ICodec,
        clock: IReactorTime,
        handler: IRequestHandler | None = None,
        *,
        originator: str | None = None,
        enforce_originator: bool = True,
        close: CloseFunction | None = None,
        peer: str = "",
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_bound: BoundCallback | None = None,
        authorization: Authorization = _UNVERIFIED,
        metrics: BindingMetrics | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        """
        @param originator: the remote end's originator (X-M2M-Origin), if known.
        @param enforce_originator: apply the binding's originator rules to incoming requests
            (the accepting side does; a client trusts the CSE it connected to).
        @param on_bound: called when an unbound connection becomes bound by an AE CREATE.
        @param authorization: what the opening handshake proved of the peer
            (:attr:`IConnection.authorization`).
        @param metrics: counts each request answered and its latency (None: nothing counted,
            nothing timed).
        @param deadlines: where the requests this session sends are timed out: shared by the
            sessions of a server (one timer for all of them); one of its own when None.
        """
        self._send = send
        self.codec = codec
        self.subprotocol = codec.name
        self._binary = codec.is_binary
        self.clock = clock
        self.handler = handler
        self.originator = originator
        self.enforce_originator = enforce_originator
        self._close = close
        self.peer = peer
        self.request_timeout = request_timeout
        #: the largest message sent: the peer's limit (the same option on both sides)
        self.max_message_size = max_message_size
        self.on_bound = on_bound
        self.authorization = authorization
        self.connected = True
        #: created when the peer first makes us log something (most connections never do)
        self._log_budget: Budget | None = None
        #: the requests we sent that wait for their responses. The first one is kept in
        #: the session itself, as its rqi and its entry's parts (what waits for the
        #: response, its timeout, its deadline's sequence number); any more sent while it
        #: waits go to :attr:`_pending` (rqi -> entry), :attr:`_more` of them. A fan-out
        #: sends a connection one request at a time, and its answer comes when the
        #: thousand others have pushed a dict of this session's out of the processor's
        #: caches: looking it up, adding to it and taking from it read four or five lines
        #: of memory, the session's own slots one
        self._one_rqi: str | None = None
        self._one_waiter: Deferred[Response] | Then | None = None
        self._one_delay = 0.0
        self._one_seq = 0
        self._more = 0
        self._pending: dict[str, _Entry] = {}
        #: their timeouts
        self._deadlines = deadlines if deadlines is not None else Deadlines(clock)
        #: rqis of incoming requests still being answered
        self._serving: set[str] = set()
        self._closed_waiters: list[Deferred[None]] = []
        #: fired once nothing is being answered (see :meth:`when_idle`)
        self._idle_waiters: list[Deferred[None]] = []
        self.metrics = metrics

    # -- IConnection --------------------------------------------------------------------

    def request(self, request: Request, timeout: float | None = None) -> Deferred[Response]:
        """Send ``request``; the Deferred fires with the response (see IConnection)."""
        d: Deferred[Response] = Deferred(self._cancel_request)
        error = self._send_request(request, timeout, d)
        return d if error is None else fail(error)

    def request_then(
        self, request: Request | Notification, then: Then, timeout: float | None = None
    ) -> None:
        """Send ``request``; call ``then`` once, with the response or a Failure (see
        IConnection). No Deferred: the fan-out of notifications sends many. A session also
        takes a :class:`~acmews.primitive.Notification`, encoded from its parts."""
        error = self._send_request(request, timeout, then)
        if error is not None:
            then(Failure(error))

    #: the name the poa chain looks for on a connection that takes a Notification as it is
    notify_then = request_then

    def _send_request(
        self,
        request: Request | Notification,
        timeout: float | None,
        waiter: Deferred[Response] | Then,
    ) -> OneM2MError | None:
        """Send ``request`` and keep ``waiter`` for its response; or why it cannot be."""
        if not self.connected:
            return TargetNotReachable(f"connection to {self.peer} is closed")
        rqi = request.rqi
        one = self._one_rqi
        if rqi == one or (self._more and rqi in self._pending):
            return BadRequest(f"a request with rqi {rqi!r} is already pending", rqi=rqi)
        try:
            data = self.codec.encode(request)
        except OneM2MError as e:
            return e
        if len(data) > self.max_message_size:
            return NotAcceptable(
                f"the request ({len(data)} bytes) exceeds the message size limit "
                f"({self.max_message_size} bytes)",
                rqi=rqi,
            )
        delay = self.request_timeout if timeout is None else timeout
        now = self.clock.seconds()
        if request.rqet is not None:
            until = self._deadlines.until(request.rqet, now)
            if until is not None:
                delay = max(0.0, min(delay, until))
        sequence = self._deadlines.add(now + delay, self, rqi)
        if one is None:  # (its parts: no tuple to make now and free when the answer comes)
            self._one_rqi = rqi
            self._one_waiter = waiter
            self._one_delay = delay
            self._one_seq = sequence
        else:
            self._pending[rqi] = (waiter, delay, sequence)
            self._more += 1
        self._send(data, self._binary)
        return None

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close is not None and self.connected:
            self._close(code, reason)

    def trace(self, sent: Callable[[bytes], None], received: Callable[[bytes], None]) -> None:
        """Also hand every message this session sends to ``sent`` and every one it receives
        to ``received`` (the ``acmews`` command's ``-v``). The two methods are wrapped on
        this instance only, so that a session nobody traces pays nothing."""
        send, receive = self._send, self.message_received

        def traced_send(data: bytes, binary: bool) -> None:
            sent(data)
            send(data, binary)

        def traced_receive(data: bytes, text: bool = False) -> None:
            received(data)
            receive(data, text)

        self._send = traced_send
        self.message_received = traced_receive  # type: ignore[method-assign]

    # -- state -------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """How many requests we sent are still unanswered."""
        return self._more + (self._one_rqi is not None)

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        d: Deferred[None] = Deferred()
        if self.connected:
            self._closed_waiters.append(d)
        else:
            d.callback(None)
        return d

    @property
    def serving_count(self) -> int:
        """How many incoming requests are being answered (their handler's Deferred waits)."""
        return len(self._serving)

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no incoming request is being answered (at once when
        none is, or the connection is gone): what a graceful shutdown waits for before it
        closes the connection. It fires after the last answer is sent."""
        d: Deferred[None] = Deferred(self._idle_waiters.remove)
        if self._serving and self.connected:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def _cancel_request(self, d: Deferred[Response]) -> None:
        for rqi, (waiter, _, _) in self._entries():
            if waiter is d:
                self._take(rqi)  # its deadline goes when it reaches the top
                self._deadlines.done(1)
                return

    def _entries(self) -> list[tuple[str, _Entry]]:
        """The pending requests' rqis and entries."""
        entries = list(self._pending.items())
        if self._one_rqi is not None:
            entries.insert(0, (self._one_rqi, self._one_entry()))
        return entries

    def _one_entry(self) -> _Entry:
        assert self._one_waiter is not None
        return self._one_waiter, self._one_delay, self._one_seq

    def _entry(self, rqi: str) -> _Entry | None:
        """The entry of pending request ``rqi``, if it is pending."""
        if rqi == self._one_rqi:
            return self._one_entry()
        return self._pending.get(rqi) if self._more else None

    def _take(self, rqi: str) -> _Entry | None:
        """Take request ``rqi``'s entry: it is no longer pending (None: it was not)."""
        if rqi == self._one_rqi:
            entry = self._one_entry()
            self._one_rqi = self._one_waiter = None
            return entry
        if not self._more:
            return None
        taken = self._pending.pop(rqi, None)
        if taken is not None:
            self._more -= 1
        return taken

    def _request_timed_out(self, rqi: str, entry: _Entry) -> None:
        waiter, delay, _ = entry
        self._log_peer_event(
            self.log.info,
            "no response to {rqi} from {peer} within {delay}s",
            rqi=rqi,
            peer=self.peer,
            delay=delay,
        )
        _settle(waiter, Failure(RequestTimeout(f"no response within {delay:g}s", rqi=rqi)))

    def detach_transport(self, send: SendFunction, close: CloseFunction) -> None:
        """Replace the callables that reach the transport (the protocol cuts its reference
        cycle with the session this way once the connection is gone)."""
        self._send = send
        self._close = close

    def connection_lost(self, reason: str = "connection lost") -> None:
        """Fail every pending request with 5103 at once; forget everything."""
        if not self.connected:
            return
        self.connected = False
        pending = self._entries()
        self._one_rqi = self._one_waiter = None
        self._pending = {}
        self._more = 0
        self._deadlines.done(len(pending))
        for rqi, (waiter, _, _) in pending:
            _settle(waiter, Failure(TargetNotReachable(f"{reason} before the response", rqi=rqi)))
        waiters, self._closed_waiters = self._closed_waiters, []
        waiters.extend(self._idle_waiters)
        self._idle_waiters = []
        for w in waiters:
            w.callback(None)
        if self._log_budget is not None:
            self._log_left_out()

    def _log_peer_event(self, emit: Callable[..., None], format: str, **kwargs: object) -> None:
        """Log an event a peer can repeat at will: at most 20 lines a minute per connection;
        the rest are counted and summed up in the next line that gets through."""
        budget = self._log_budget
        if budget is None:
            budget = self._log_budget = Budget(20, 60.0)
        if not budget.allow(self.clock.seconds()):
            return
        self._log_left_out()
        emit(format, **kwargs)

    def _log_left_out(self) -> None:
        assert self._log_budget is not None
        left_out = self._log_budget.take_suppressed()
        if left_out:
            self.log.info(
                "{count} more events on the connection with {peer} were not logged",
                count=left_out,
                peer=self.peer,
            )

    # -- incoming ------------------------------------------------------------------------

    def message_received(self, data: bytes, text: bool = False) -> None:
        """One whole WebSocket message: a request or a response primitive.

        @param text: it came in a text frame. On a oneM2M.cbor connection such a message is
            read as JSON, and on a oneM2M.json connection a binary frame that cannot be JSON
            (its first byte is not ASCII) as CBOR: ACME sends its own requests (a NOTIFY, a
            forwarded request) as JSON text frames on a oneM2M.cbor connection, and hands
            its client an answer that came over a oneM2M.cbor link as CBOR on a oneM2M.json
            connection. Either is answered as everything on the connection is: ACME reads
            whatever comes by the negotiated subprotocol (an answer in the form of its
            request would be a bad message to it).
        """
        codec = self.codec
        if text:
            if self._binary:
                codec = JSON
        elif not self._binary and data[:1] >= b"\x80":  # no JSON text starts with it
            codec = CBOR
        try:
            primitive = codec.decode(data)
        except PrimitiveError as e:
            if e.is_response:
                self._log_peer_event(
                    self.log.warn,
                    "dropping an invalid response from {peer}: {reason}",
                    peer=self.peer,
                    reason=e.reason,
                )
            else:
                self._log_peer_event(
                    self.log.warn,
                    "bad message from {peer}: {reason}",
                    peer=self.peer,
                    reason=e.reason,
                )
                if self.metrics is not None:
                    self.metrics.invalid()
                self._reply(error_response(e.rqi, e))
            return
        if type(primitive) is Response:
            self._response_received(primitive)
        else:
            assert type(primitive) is Request
            self._request_received(primitive)

    def _response_received(self, response: Response) -> None:
        rqi = response.rqi
        waiter: Deferred[Response] | Then | None
        # (what _take does, written out: every answer comes here)
        if rqi == self._one_rqi:
            waiter = self._one_waiter
            self._one_rqi = self._one_waiter = None
        elif self._more:
            entry = self._pending.pop(rqi, None)
            if entry is None:
                waiter = None
            else:
                self._more -= 1
                waiter = entry[0]
        else:
            waiter = None
        if waiter is None:
            self._log_peer_event(
                self.log.warn,
                "dropping a response with unknown rqi {rqi} (rsc {rsc}) from {peer}",
                rqi=response.rqi,
                rsc=response.rsc,
                peer=self.peer,
            )
            return
        self._deadlines.done(1)
        # (the waiter is the Deferred :meth:`request` made, or a callable: no isinstance,
        # which costs an ABC check, as Deferred is an Awaitable)
        if type(waiter) is Deferred:
            waiter.callback(response)
        else:
            waiter(response)  # type: ignore[operator]  # (mypy narrows only by isinstance)

    def _request_received(self, request: Request) -> None:
        rqi = request.rqi
        # the arrival time, only when someone counts (:meth:`_answer`)
        started = self.clock.seconds() if self.metrics is not None else 0.0
        try:
            self._check_originator(request)
            if rqi in self._serving:
                raise BadRequest(f"a request with rqi {rqi!r} is still being answered")
            if self.handler is None:
                raise OriginatorHasNoPrivilege("this endpoint accepts no requests")
            result = self.handler.handle_request(request, self)
        except OneM2MError as e:
            self._answer(request, error_response(rqi, e, rvi=request.rvi), started)
            return
        except Exception:
            self.log.failure("request handler failed for {rqi}", rqi=rqi)
            self._answer(
                request,
                error_response(rqi, InternalServerError("internal error"), rvi=request.rvi),
                started,
            )
            return
        if isinstance(result, Deferred):
            self._serving.add(rqi)
            result.addCallbacks(
                self._answer_later,
                self._handler_failed,
                callbackArgs=(request, started),
                errbackArgs=(request, started),
            )
        else:
            self._answer(request, result, started)

    def _check_originator(self, request: Request) -> None:
        if not self.enforce_originator:
            return
        originator = self.originator
        if originator is None:
            if not request.is_ae_create:
                raise OriginatorHasNoPrivilege(
                    "no X-M2M-Origin on this connection: only an AE CREATE is accepted "
                    "until an AE registers on it"
                )
            return
        fr = request.fr
        if fr and not fr_allowed(originator, fr):
            raise OriginatorHasNoPrivilege(
                f"'fr' {fr!r} does not match this connection's originator {originator!r}"
            )

    def _answer_later(self, response: Response, request: Request, started: float) -> None:
        self._serving.discard(request.rqi)
        self._answer(request, response, started)
        if self._idle_waiters:
            self._idle()

    def _idle(self) -> None:
        """Tell :meth:`when_idle`'s waiters once nothing is being answered (after the answer
        is sent: a waiter may close the connection)."""
        if not self._serving:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _handler_failed(self, failure: Failure, request: Request, started: float) -> None:
        self._serving.discard(request.rqi)
        error = failure.value
        if isinstance(error, OneM2MError):
            response = error_response(request.rqi, error, rvi=request.rvi)
        elif isinstance(error, CancelledError):
            response = error_response(
                request.rqi, TargetNotReachable("the request was cancelled"), rvi=request.rvi
            )
        else:
            self.log.failure("request handler failed for {rqi}", failure, rqi=request.rqi)
            response = error_response(
                request.rqi, InternalServerError("internal error"), rvi=request.rvi
            )
        self._answer(request, response, started)
        if self._idle_waiters:
            self._idle()

    def _answer(self, request: Request, response: Response, started: float) -> None:
        if response.rqi != request.rqi:
            response.rqi = request.rqi
        metrics = self.metrics
        if metrics is not None:
            metrics.answered(request.op, response.rsc, self.clock.seconds() - started)
        if response.rsc >= 4000:
            # one log line per error answered, whoever produced it (handler or binding),
            # within the connection's budget
            self._log_peer_event(
                self.log.info,
                "{op} {to} from {fr} ({peer}): {rsc} {reason}",
                op=request.op.name,
                to=request.to,
                fr=request.fr,
                peer=self.peer,
                rsc=int(response.rsc),
                reason=response.debug or "",
            )
        if (
            self.originator is None
            and request.op == Operation.CREATE
            and (aei := registered_ae_id(response)) is not None
        ):
            self.originator = aei
            self.log.info(
                "connection from {peer} bound to {aei} by AE CREATE", peer=self.peer, aei=aei
            )
            if self.on_bound is not None:
                self.on_bound(self, aei)
        if request.wants_no_response:
            return
        self._reply(response)

    def _reply(self, response: Response) -> None:
        if not self.connected:
            self.log.info(
                "connection to {peer} gone; dropping the response to {rqi}",
                peer=self.peer,
                rqi=response.rqi,
            )
            return
        try:
            data = self.codec.encode(response)
        except OneM2MError as e:
            self.log.error(
                "cannot encode the response to {rqi}: {reason}", rqi=response.rqi, reason=e.reason
            )
            data = self.codec.encode(error_response(response.rqi, e, rvi=response.rvi))
        if len(data) > self.max_message_size:
            # the peer would close the connection (1009) rather than take it
            error = NotAcceptable(
                f"the response ({len(data)} bytes) exceeds the message size limit "
                f"({self.max_message_size} bytes); ask for less (e.g. fc lim, another rcn)"
            )
            self._log_peer_event(
                self.log.info,
                "response {rqi} to {peer} not sent: {reason}",
                rqi=response.rqi,
                peer=self.peer,
                reason=error.reason,
            )
            data = self.codec.encode(error_response(response.rqi, error, rvi=response.rvi))
        self._send(data, self._binary)

    def __repr__(self) -> str:
        return f"<Session {self.originator or '(unbound)'} {self.subprotocol} {self.peer}>"


#: orders the deadlines of equal time (the rqis and entries are not comparable)
_sequence = itertools.count()


def _settle(waiter: Deferred[Response] | Then, result: Response | Failure) -> None:
    """Hand ``result`` to what waits for a response."""
    if type(waiter) is Deferred:  # made by Session.request (see _response_received)
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
    else:
        waiter(result)  # type: ignore[operator]  # (see Session._response_received)


class Deadlines:
    """The timeouts of the requests that sessions send, on one timer.

    A deadline is ``(time, sequence, session, rqi)`` in a heap, the timer at the earliest. An
    answered request's deadline is not looked for: it stays until it reaches the top (the
    sequence number in the session's entry tells it from a later request with the same rqi).
    It holds nothing of the request: what waited for the response (and the request it holds)
    goes as the response comes, not with the deadline. The heap is rebuilt once it holds
    :data:`_HEAP_SLACK` more than are pending. Once nothing is pending in any of its sessions
    the timer is cancelled and the heap emptied, so that nothing is left scheduled. A fan-out
    of a thousand notifications thus costs a heap push per notification instead of a timer
    made and cancelled for each.
    """

    __slots__ = ("_at", "_clock", "_expiry", "_heap", "_live", "_timer")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Session, str]] = []
        #: requests pending in all the sessions
        self._live = 0
        self._timer: IDelayedCall | None = None
        self._at = 0.0
        #: the last absolute ``rqet`` read, and when it expires
        self._expiry: tuple[object, float] = (None, 0.0)

    def until(self, rqet: str | int, now: float) -> float | None:
        """Seconds from ``now`` until ``rqet`` (see :func:`expiry_delay`). An absolute
        timestamp is read once while the same string comes again: the notifications of a
        fan-out share theirs."""
        last, at = self._expiry
        if last is rqet:
            return at - now
        delay = expiry_delay(rqet, now)
        if delay is not None and type(rqet) is str and rqet[:1] != "P" and not rqet.isdigit():
            self._expiry = (rqet, now + delay)
        return delay

    def __len__(self) -> int:
        """Deadlines kept (those of answered requests included)."""
        return len(self._heap)

    def add(self, when: float, session: Session, rqi: str) -> int:
        """``session`` sends request ``rqi``, which times out at ``when``; the deadline's
        sequence number, which the session keeps in the request's entry."""
        heap = self._heap
        self._live += 1
        if len(heap) > self._live + _HEAP_SLACK:
            heap[:] = [d for d in heap if _pending_entry(d) is not None]
            heapify(heap)
        sequence = next(_sequence)
        heappush(heap, (when, sequence, session, rqi))
        timer = self._timer
        if timer is None:
            self._at = when
            self._timer = self._clock.callLater(when - self._clock.seconds(), self._time_out)
        elif when < self._at:
            self._at = when
            timer.reset(max(0.0, when - self._clock.seconds()))
        return sequence

    def done(self, count: int) -> None:
        """``count`` requests left their sessions' pending (answered, cancelled, lost)."""
        live = self._live - count
        if live > 0:
            self._live = live
        else:
            self._live = 0
            self._heap = []
            timer, self._timer = self._timer, None
            if timer is not None and timer.active():
                timer.cancel()

    def _time_out(self) -> None:
        """Fail the requests whose time is up (4008); wait for the next one."""
        self._timer = None
        now = self._clock.seconds()
        heap = self._heap
        expired: list[tuple[Session, str, _Entry]] = []
        while heap:
            deadline = heap[0]
            when, _, session, rqi = deadline
            entry = _pending_entry(deadline)
            if entry is None:
                heappop(heap)  # answered (or cancelled) already
                continue
            if when > now:
                self._at = when
                self._timer = self._clock.callLater(when - now, self._time_out)
                break
            heappop(heap)
            session._take(rqi)
            expired.append((session, rqi, entry))
        self._live = max(0, self._live - len(expired)) if heap else 0
        # told last: what they do (send again) finds the timer as it should be
        for session, rqi, entry in expired:
            session._request_timed_out(rqi, entry)


def _pending_entry(deadline: tuple[float, int, Session, str]) -> _Entry | None:
    """The entry of the request ``deadline`` is for, if it is still pending (not a later
    request with the same rqi: its deadline has another sequence number)."""
    _, sequence, session, rqi = deadline
    entry = session._entry(rqi)
    return entry if entry is not None and entry[2] == sequence else None
