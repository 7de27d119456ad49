"""Store-and-forward: notifications waiting for an originator that cannot be reached now.

:class:`INotificationQueue` is the seam a durable queue plugs into; the chain only talks to it.
Entries are kept per originator in arrival order. An entry stays at the head until it is
acknowledged (delivered, or dropped because it expired), so a flush that fails half-way keeps
it for the next connection: delivery is at-least-once, bounded by the expiry.

An entry holds its request encoded (CBOR), so that it costs its encoded size and nothing more
(a request object would keep, say, a 1 MB contentInstance alive long after its container
evicted it), and so that a request that cannot be encoded never enters a queue.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cbor2
from zope.interface import Interface, implementer

from acmews.codec import CBOR
from acmews.codes import Operation
from acmews.errors import TargetNotReachable
from acmews.logs import Logger
from acmews.primitive import REQUEST_PARAMETERS, Request

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "DEFAULT_ORIGINATOR_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TOTAL_BYTES",
    "INotificationQueue",
    "MemoryNotificationQueue",
    "QueueFull",
    "QueuedNotification",
]

#: notifications kept per unreachable originator (the oldest dropped beyond it)
DEFAULT_QUEUE_SIZE = 1000
#: bytes the stored notifications of one originator, and of all, may hold
DEFAULT_ORIGINATOR_BYTES = 16 * 1024 * 1024
DEFAULT_TOTAL_BYTES = 256 * 1024 * 1024

#: bytes an entry costs beyond its encoded request (the entry, its deque slot)
ENTRY_OVERHEAD = 200


class QueueFull(TargetNotReachable):
    """The queue has no room for this notification (its bytes bound)."""


@dataclass(slots=True, eq=False)
class QueuedNotification:
    """One waiting request, encoded; ``expires`` is in clock seconds, ``seq`` orders all."""

    data: bytes
    rqi: str
    expires: float
    seq: int

    @property
    def request(self) -> Request:
        """The request, decoded again (each call a new object)."""
        return decode_request(self.data)

    @property
    def size(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD


def encode_request(request: Request) -> bytes:
    """``request`` as a queue stores it; OneM2MError when it cannot be encoded."""
    return CBOR.encode(request)


def decode_request(data: bytes) -> Request:
    """What :func:`encode_request` wrote, as it was: the queue's own bytes are not checked
    again as if a peer had sent them."""
    mapping = cbor2.loads(data)
    fields = {k: mapping[k] for k in REQUEST_PARAMETERS if k in mapping}
    fields["op"] = Operation(fields["op"])
    extra = {k: v for k, v in mapping.items() if k not in REQUEST_PARAMETERS}
    return Request(**fields, extra=extra)


class INotificationQueue(Interface):
    """Notifications waiting for their originators, each originator's in order.

    The queue enforces its own bounds: it makes room by dropping expired entries first, then
    the originator's oldest, and logs the drops; it raises :class:`QueueFull` when there is
    no room even so, and a OneM2MError for a request it cannot store.
    """

    def enqueue(originator: str, request: Request, expires: float, now: float) -> int:
        """Append ``request`` for ``originator``; return how many now wait for it."""

    def count(originator: str) -> int:
        """How many entries wait for ``originator`` (expired ones included)."""

    def pending(originator: str) -> Sequence[QueuedNotification]:
        """The entries waiting for ``originator``, oldest first (a snapshot)."""

    def take(
        originator: str,
    ) -> QueuedNotification | Deferred[QueuedNotification | None] | None:
        """The oldest entry for ``originator``; it stays queued until acknowledged. (A queue
        shared with other processes answers with a Deferred.)"""

    def acknowledge(originator: str, entry: QueuedNotification) -> Deferred[None] | None:
        """Remove ``entry`` (delivered, expired, or undeliverable); nothing if it is gone.
        (A queue shared with other processes answers with a Deferred.)"""

    def purge_expired(now: float) -> int:
        """Drop every entry that expired at ``now`` (logged); return how many."""

    def total() -> int:
        """How many entries wait, for all originators together."""

    def durable() -> Deferred[None] | None:
        """A Deferred that fires once every change made so far is durable (a durable queue),
        or None when the queue keeps nothing beyond memory. The chain answers a stored
        notification with ACCEPTED only then."""


@implementer(INotificationQueue)
class MemoryNotificationQueue:
    """A deque per originator; lost when the process exits.

    Bounds: ``size`` entries and ``originator_bytes`` per originator (the oldest go first),
    ``total_bytes`` for all originators together (beyond it a new entry is refused: one
    originator's backlog cannot push out everyone else's).
    """

    log = Logger()

    def __init__(
        self,
        size: int = DEFAULT_QUEUE_SIZE,
        *,
        originator_bytes: int = DEFAULT_ORIGINATOR_BYTES,
        total_bytes: int = DEFAULT_TOTAL_BYTES,
    ) -> None:
        if size < 1:
            raise ValueError("queue_size must be at least 1")
        if originator_bytes < 1 or total_bytes < 1:
            raise ValueError("queue byte bounds must be positive")
        self.size = size
        self.originator_bytes = originator_bytes
        self.total_bytes = total_bytes
        self._queues: dict[str, deque[QueuedNotification]] = {}
        self._bytes: dict[str, int] = {}
        self._all_bytes = 0
        self._seq = itertools.count(1)
        #: originators whose full queue has been reported; told again once it has drained
        self._reported_full: set[str] = set()
        self._reported_total = False
        #: entries that left the queue unsent: ``expired`` (purged), ``dropped`` (pushed out
        #: by a bound, refused by a full queue, or not kept by a durable store); read by the
        #: metrics
        self.expired = 0
        self.dropped = 0

    def __len__(self) -> int:
        return self.total()

    @property
    def bytes(self) -> int:
        """Bytes held by all entries together."""
        return self._all_bytes

    def enqueue(self, originator: str, request: Request, expires: float, now: float) -> int:
        data = encode_request(request)
        entry = QueuedNotification(data, request.rqi, expires, 0)
        if entry.size > self.originator_bytes:
            self.dropped += 1
            raise QueueFull(
                f"a notification of {len(data)} bytes exceeds the queue's bound", rqi=request.rqi
            )
        queue = self._queues.setdefault(originator, deque())
        if len(queue) >= self.size or self._bytes.get(originator, 0) + entry.size > (
            self.originator_bytes
        ):
            self._purge_queue(originator, queue, now)
        while queue and (
            len(queue) >= self.size
            or self._bytes.get(originator, 0) + entry.size > self.originator_bytes
        ):
            dropped = queue.popleft()
            self._forget(originator, dropped)
            self.dropped += 1
            if originator not in self._reported_full:
                self._reported_full.add(originator)
                self.log.warn(
                    "queue for {originator} full ({size} entries, {limit} bytes): dropping the "
                    "oldest notifications, starting with {rqi} (not logged again until it "
                    "drains)",
                    originator=originator,
                    size=self.size,
                    limit=self.originator_bytes,
                    rqi=dropped.rqi,
                )
        if self._all_bytes + entry.size > self.total_bytes:
            if not queue:
                self._drop_empty(originator)
            if not self._reported_total:
                self._reported_total = True
                self.log.warn(
                    "store-and-forward holds {limit} bytes in all: new notifications are "
                    "refused until it drains (not logged again until then)",
                    limit=self.total_bytes,
                )
            self.dropped += 1
            raise QueueFull("the store-and-forward queue is full", rqi=request.rqi)
        entry.seq = next(self._seq)
        queue.append(entry)
        self._bytes[originator] = self._bytes.get(originator, 0) + entry.size
        self._all_bytes += entry.size
        self._appended(originator, entry)
        return len(queue)

    def restore(self, originator: str, entry: QueuedNotification) -> None:
        """Put back ``entry``, read from where a durable queue keeps it (oldest first, in
        ``seq`` order, before anything is enqueued); no bound is applied."""
        self._queues.setdefault(originator, deque()).append(entry)
        self._bytes[originator] = self._bytes.get(originator, 0) + entry.size
        self._all_bytes += entry.size
        self._seq = itertools.count(max(entry.seq + 1, next(self._seq)))

    def durable(self) -> None:
        return None

    def _appended(self, originator: str, entry: QueuedNotification) -> None:
        """``entry`` joined the queue (a durable queue writes it)."""

    def count(self, originator: str) -> int:
        queue = self._queues.get(originator)
        return len(queue) if queue is not None else 0

    def pending(self, originator: str) -> Sequence[QueuedNotification]:
        return list(self._queues.get(originator, ()))

    def take(self, originator: str) -> QueuedNotification | None:
        queue = self._queues.get(originator)
        return queue[0] if queue else None

    def acknowledge(self, originator: str, entry: QueuedNotification) -> None:
        queue = self._queues.get(originator)
        if queue is None:
            return
        if queue and queue[0] is entry:
            queue.popleft()
        else:
            try:
                queue.remove(entry)
            except ValueError:
                return  # dropped meanwhile (the bound, or a purge)
        self._forget(originator, entry)
        if not queue:
            self._drop_empty(originator)

    def purge_expired(self, now: float) -> int:
        dropped = 0
        for originator, queue in list(self._queues.items()):
            dropped += self._purge_queue(originator, queue, now)
            if not queue:
                self._drop_empty(originator)
        return dropped

    def total(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _forget(self, originator: str, entry: QueuedNotification) -> None:
        """``entry`` left the queue (a durable queue deletes it)."""
        size = entry.size
        self._bytes[originator] -= size
        self._all_bytes -= size
        if self._all_bytes <= self.total_bytes // 2:
            self._reported_total = False

    def _drop_empty(self, originator: str) -> None:
        del self._queues[originator]
        self._bytes.pop(originator, None)
        self._reported_full.discard(originator)

    def _purge_queue(self, originator: str, queue: deque[QueuedNotification], now: float) -> int:
        kept = [entry for entry in queue if entry.expires > now]
        if len(kept) == len(queue):
            return 0
        for entry in queue:
            if entry.expires <= now:
                self._forget(originator, entry)
        dropped = len(queue) - len(kept)
        self.expired += dropped
        self.log.info(
            "{count} queued notifications for {originator} expired, dropped",
            count=dropped,
            originator=originator,
        )
        queue.clear()
        queue.extend(kept)
        return dropped
