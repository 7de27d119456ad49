"""Expiration: every resource with an ``et`` is deleted, with its subtree, once it has passed.

TS-0001 9.6.1.3 (``expirationTime``): the time after which the Hosting CSE deletes the
resource; what the originator asks for is a hint the Hosting CSE may correct (and says so in
the representation it returns). Here, as in the reference implementation: an ``et`` that is
not in the future is refused (4000), one beyond ``CSEConfig.max_resource_expiry`` is cut down
to it, and none (or, in an UPDATE, a null one) gets ``CSEConfig.resource_expiry``.

:class:`Expirations` keeps an index of every ``et`` (a heap, kept up to date from each
request's batch and rebuilt from the store at start) and deletes what has expired, as a
DELETE would (the subscribers hear of it, a deleted subscription's ``su`` gets its deletion
notification), in one batch per sweep:

- on access: the CSE sweeps before it handles a request when the earliest ``et`` has passed
  (one comparison per request otherwise), so an expired resource is gone (4004) at once;
- on time: while started (:class:`ExpiryService`, a child of the CSE server), a timer set for
  the earliest ``et`` sweeps even when no request comes, and the first sweep, at start, takes
  what expired while the CSE was down. A CSE that is not started (the tests', an embedded
  one driven by its requests) has no timer.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from acmews.cse.resource import Resource
from acmews.cse.store import Batch, IResourceReader
from acmews.errors import BadRequest
from acmews.logs import Logger
from acmews.timestamps import Timestamps, parse_timestamp

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from acmews.cse.config import CSEConfig

__all__ = [
    "MAX_TIMER",
    "RETRY_DELAY",
    "SWEEP_LIMIT",
    "Expirations",
    "ExpiryService",
    "TimerService",
    "Timers",
]

#: expired resources (subtree roots) one sweep deletes; the next sweep follows at once
SWEEP_LIMIT = 1000
#: the longest the timer waits before it looks again (the wall clock may have jumped)
MAX_TIMER = 86400.0
#: seconds before a sweep the store refused (read-only, disk full) is tried again
RETRY_DELAY = 5.0

log = Logger()

#: deletes the given expired resources (and their subtrees) in one batch; the store's answer
Expire = Callable[[list[Resource]], "Deferred[None] | None"]


class Expirations:
    """The ``et`` of every resource, earliest first, and the sweep that deletes the expired.

    The heap holds ``(et, ri)`` entries; an entry is current while ``et`` is still that
    resource's ``et`` (``_live``). Entries left behind by an update or a deletion are skipped
    when they come up, and dropped all at once when they outnumber the current ones.
    Timestamps compare as strings (``YYYYMMDDThhmmss[,ffffff]``, UTC), so no ``et`` is parsed
    but the earliest.
    """

    def __init__(
        self,
        config: CSEConfig,
        clock: IReactorTime,
        ts: Timestamps,
        store: IResourceReader,
        expire: Expire,
    ) -> None:
        self._config = config
        self._clock = clock
        self._ts = ts
        self._store = store
        self._expire = expire
        self._heap: list[tuple[str, str]] = []
        #: ri -> its current et
        self._live: dict[str, str] = {}
        #: the heap's top when :attr:`due` was computed
        self._top: tuple[str, str] | None = None
        #: clock seconds of the earliest et (inf: none); a request at or after it sweeps
        self.due = math.inf
        #: no sweep before this (the store refused the last one)
        self._hold_until = 0.0
        self._running = False
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        """How many resources have an ``et``."""
        return len(self._live)

    @property
    def entries(self) -> int:
        """How many entries the index holds (current ones and those left behind)."""
        return len(self._heap)

    # --- what a CREATE or UPDATE asks for -----------------------------------------------------

    def requested(self, et: Any) -> str:
        """The ``et`` a resource gets for the validated ``et`` a request asks for (None: the
        default). 4000 if it is not in the future; beyond the maximum, the maximum."""
        config = self._config
        now = self._clock.seconds()
        maximum = config.max_resource_expiry
        if et is None:
            return self._ts.format(now + min(config.resource_expiry, maximum))
        try:
            at = parse_timestamp(et)
        except ValueError:
            raise BadRequest(f"attribute 'et' must be a valid time: {et!r}") from None
        if at <= now:
            raise BadRequest(
                f"attribute 'et' (expirationTime) {et} is not in the future "
                f"(now {self._ts.format(now)})"
            )
        if at > now + maximum:
            return self._ts.format(now + maximum)
        return str(et)

    # --- the index ----------------------------------------------------------------------------

    def load(self, resources: Iterable[Resource]) -> None:
        """Index ``resources`` (the whole store, at start)."""
        live = self._live
        for resource in resources:
            et = resource.attrs.get("et")
            if isinstance(et, str):
                live[resource.ri] = et
        self._rebuild()

    def _rebuild(self) -> None:
        heap = self._heap = [(et, ri) for ri, et in self._live.items()]
        heapq.heapify(heap)
        self._moved()

    def track(self, batch: Batch) -> None:
        """Bring the index up to date with ``batch``, just applied."""
        heap = self._heap
        live = self._live
        for resource in batch.added:
            et = resource.attrs.get("et")
            if et is not None:
                ri = resource.ri
                live[ri] = et
                heapq.heappush(heap, (et, ri))
        for resource in batch.updated:
            if resource.attrs.get("et") is not live.get(resource.ri):
                self.retrack(resource)  # (mostly it is the same string: no call)
        for resource in batch.removed:
            live.pop(resource.ri, None)
        if len(heap) > 2 * len(live) + 1024:
            self._rebuild()  # mostly stale entries: O(n), once per n/2 changes at least
        elif heap and heap[0] is not self._top:
            self._moved()

    def retrack(self, resource: Resource) -> None:
        """Index the current ``et`` of ``resource`` (updated, or put back by a store that
        could not write its change)."""
        et = resource.attrs.get("et")
        ri = resource.ri
        live = self._live
        old = live.get(ri)
        if et is old or et == old:
            return
        if et is None:
            del live[ri]
        else:
            live[ri] = et
            heapq.heappush(self._heap, (et, ri))
            if self._heap[0][1] is ri:
                self._moved()

    def _moved(self) -> None:
        """The heap's top may have changed: recompute :attr:`due`, move the timer."""
        heap = self._heap
        while heap:
            top = heap[0]
            if top is self._top:
                return
            try:
                due = parse_timestamp(top[0])
            except ValueError:  # not a time (a store written by hand): it never expires
                heapq.heappop(heap)
                self._live.pop(top[1], None)
                continue
            self._top = top
            self.due = max(due, self._hold_until)
            self._schedule()
            return
        self._top = None
        self.due = math.inf
        self._schedule()

    # --- the sweep ----------------------------------------------------------------------------

    def sweep(self) -> None:
        """Delete what has expired (at most :data:`SWEEP_LIMIT` subtrees); never raises."""
        now = self._clock.seconds()
        if now < self._hold_until:
            return
        # (a microsecond on: the format truncates, and what is due must go in this sweep)
        limit = self._ts.format(now + 1e-6)
        heap = self._heap
        live = self._live
        get = self._store.get
        expired: list[Resource] = []
        while heap and heap[0][0] <= limit and len(expired) < SWEEP_LIMIT:
            et, ri = heapq.heappop(heap)
            if live.get(ri) != et:
                continue  # left behind by an update or a deletion
            resource = get(ri)
            if resource is None or resource.attrs.get("et") != et:
                live.pop(ri, None)  # its change was undone
                continue
            expired.append(resource)
        if expired:
            log.debug("{count} resources expired", count=len(expired))
            try:
                done = self._expire(expired)
            except Exception:
                log.failure("could not delete expired resources")
                self._refused(None)
            else:
                if done is not None:
                    done.addErrback(self._refused)
        self._top = None  # popped: recompute
        self._moved()

    def _refused(self, failure: Failure | None) -> None:
        """The store did not take the sweep's deletions (and put the resources back, which
        the CSE indexes again): try again in :data:`RETRY_DELAY` seconds, not at every
        request (the store logs why)."""
        self._hold_until = self._clock.seconds() + RETRY_DELAY
        self._top = None
        self._moved()

    # --- the timer (while started) ------------------------------------------------------------

    def start(self) -> None:
        """Keep a timer for the earliest ``et`` from now on: what expired while the CSE was
        down goes in the first turn of the reactor."""
        self._running = True
        self._schedule()

    def stop(self) -> None:
        self._running = False
        self._schedule()

    def _schedule(self) -> None:
        call = self._call
        if not self._running or self.due == math.inf:
            if call is not None and call.active():
                call.cancel()
            self._call = None
            return
        delay = min(max(0.0, self.due - self._clock.seconds()), MAX_TIMER)
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        if self._clock.seconds() >= self.due:
            self.sweep()
        self._schedule()


class Timers(Protocol):
    """Timers that run only while started (a CSE that is not started has none)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class TimerService(Service):
    """Runs ``timers`` while the CSE server runs."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.timers.start()

    def stopService(self) -> Deferred[None] | None:
        self.timers.stop()
        result: Deferred[None] | None = super().stopService()  # type: ignore[no-untyped-call]
        return result


class ExpiryService(TimerService):
    """Runs the timer of :class:`Expirations` while the CSE server runs."""

    def __init__(self, expirations: Expirations) -> None:
        super().__init__(expirations)
        self.expirations = expirations
