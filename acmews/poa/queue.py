"""Store-and-forward: notifications waiting for an originator that cannot be reached now.

:class:`INotificationQueue` is the seam a durable queue plugs into; the chain only talks to it.
Entries are kept per originator in arrival order. An entry stays at the head until it is
acknowledged (delivered, or dropped because it expired), so a flush that fails half-way keeps
it for the next connection: delivery is at-least-once, bounded by the expiry.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from zope.interface import Interface, implementer

from acmews.logs import Logger
from acmews.primitive import Request

__all__ = ["INotificationQueue", "MemoryNotificationQueue", "QueuedNotification"]


@dataclass(slots=True, eq=False)
class QueuedNotification:
    """One waiting request; ``expires`` is in clock seconds, ``seq`` orders all entries."""

    request: Request
    expires: float
    seq: int = field(default=0)


class INotificationQueue(Interface):
    """Notifications waiting for their originators, each originator's in order.

    The queue enforces its own bound: it makes room by dropping expired entries first, then
    the originator's oldest, and logs each drop.
    """

    def enqueue(originator: str, request: Request, expires: float, now: float) -> int:
        """Append ``request`` for ``originator``; return how many now wait for it."""

    def count(originator: str) -> int:
        """How many entries wait for ``originator`` (expired ones included)."""

    def pending(originator: str) -> Sequence[QueuedNotification]:
        """The entries waiting for ``originator``, oldest first (a snapshot)."""

    def take(originator: str) -> QueuedNotification | None:
        """The oldest entry for ``originator``; it stays queued until acknowledged."""

    def acknowledge(originator: str, entry: QueuedNotification) -> None:
        """Remove ``entry`` (delivered, or expired); nothing happens if it is gone already."""

    def purge_expired(now: float) -> int:
        """Drop every entry that expired at ``now`` (logged); return how many."""

    def total() -> int:
        """How many entries wait, for all originators together."""


@implementer(INotificationQueue)
class MemoryNotificationQueue:
    """A deque per originator, at most ``size`` entries each; lost when the process exits."""

    log = Logger()

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError("queue_size must be at least 1")
        self.size = size
        self._queues: dict[str, deque[QueuedNotification]] = {}
        self._seq = itertools.count(1)
        #: originators whose full queue has been reported; told again once it has drained
        self._reported_full: set[str] = set()

    def __len__(self) -> int:
        return self.total()

    def total(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def enqueue(self, originator: str, request: Request, expires: float, now: float) -> int:
        queue = self._queues.setdefault(originator, deque())
        if len(queue) >= self.size:
            self._purge_queue(originator, queue, now)
        while len(queue) >= self.size:
            dropped = queue.popleft()
            if originator not in self._reported_full:
                self._reported_full.add(originator)
                self.log.warn(
                    "queue for {originator} full ({size}): dropping the oldest notifications, "
                    "starting with {rqi} (not logged again until it drains)",
                    originator=originator,
                    size=self.size,
                    rqi=dropped.request.rqi,
                )
        queue.append(QueuedNotification(request, expires, next(self._seq)))
        return len(queue)

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
                pass  # dropped meanwhile (the bound, or a purge)
        if not queue:
            del self._queues[originator]
            self._reported_full.discard(originator)

    def purge_expired(self, now: float) -> int:
        dropped = 0
        for originator, queue in list(self._queues.items()):
            dropped += self._purge_queue(originator, queue, now)
            if not queue:
                del self._queues[originator]
                self._reported_full.discard(originator)
        return dropped

    def _purge_queue(self, originator: str, queue: deque[QueuedNotification], now: float) -> int:
        kept = [entry for entry in queue if entry.expires > now]
        if len(kept) == len(queue):
            return 0
        dropped = len(queue) - len(kept)
        self.log.info(
            "{count} queued notifications for {originator} expired, dropped",
            count=dropped,
            originator=originator,
        )
        queue.clear()
        queue.extend(kept)
        return dropped
