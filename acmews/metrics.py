"""What ``/metrics`` reports, counted as plain integers where it happens.

The binding, the poa chain, the queue and the store increment attributes of the objects here;
:mod:`acmews.admin` reads them when Prometheus scrapes. Nothing here takes a lock, imports
``prometheus_client`` or allocates per event: a request served costs two clock reads, one
``bisect`` and three list increments (:meth:`BindingMetrics.answered`), and nothing at all
when no admin listener asked for metrics (the session's ``metrics`` is None then).

Every label set is fixed in advance (operations, response classes, reasons, directions, the
codecs' subprotocols, the connectors' schemes): never an originator, a path or a peer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "BATCH_BOUNDS",
    "COMMIT_BOUNDS",
    "LATENCY_BOUNDS",
    "OPERATIONS",
    "REFUSAL_REASONS",
    "RESPONSE_CLASSES",
    "BindingMetrics",
    "ChainCounts",
    "Histogram",
]

#: the ``operation`` label by the request's ``op`` (0: a message that is no valid request)
OPERATIONS = ("invalid", "create", "retrieve", "update", "delete", "notify")
#: the ``response_class`` label by ``rsc // 1000`` (0: anything outside 1xxx-6xxx)
RESPONSE_CLASSES = ("other", "1xxx", "2xxx", "3xxx", "4xxx", "5xxx", "6xxx")
#: why an opening handshake was refused (``reason`` label)
REFUSAL_REASONS = (
    "connection_limit",
    "no_subprotocol",
    "bad_request",
    "unauthorized",
    "forbidden",
    "headers_too_large",
    "other",
)
_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 431: "headers_too_large"}

#: seconds from a request's arrival to its answer (a RETRIEVE from memory: ~50 us; a change
#: on a durable store: one group commit, a few ms)
LATENCY_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: seconds one store transaction takes, its fsync included
COMMIT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: changes written by one transaction (group commit)
BATCH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

_CLASSES = len(RESPONSE_CLASSES)


class Histogram:
    """Counts per bucket (``counts[i]``: values up to ``bounds[i]``; the last: above them
    all) and their sum, as Prometheus wants them (:meth:`cumulative`)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs, the last one ``+Inf``."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class BindingMetrics:
    """What the WebSocket binding counts for one server (its factory and the connections the
    CSE opens): connections, refused handshakes, requests answered and their latency."""

    __slots__ = ("connections", "latency", "refused", "requests")

    def __init__(self) -> None:
        #: (direction ``in``/``out``, subprotocol) -> connections open now
        self.connections: dict[tuple[str, str], int] = {}
        #: reason (one of :data:`REFUSAL_REASONS`) -> handshakes refused
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        #: ``op * 7 + rsc // 1000`` -> requests answered (see :meth:`answered`)
        self.requests = [0] * (len(OPERATIONS) * _CLASSES)
        #: by ``op``: seconds from a request's arrival to its answer
        self.latency = [Histogram(LATENCY_BOUNDS) for _ in OPERATIONS]

    def answered(self, op: int, rsc: int, seconds: float) -> None:
        """A request of operation ``op`` was answered ``rsc`` after ``seconds`` (the one call
        per request: keep it this small)."""
        cls = rsc // 1000
        self.requests[op * _CLASSES + (cls if 0 < cls < _CLASSES else 0)] += 1
        histogram = self.latency[op]
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds

    def invalid(self) -> None:
        """A message that is no valid request was answered with an error (4xxx)."""
        self.requests[4] += 1

    def opened(self, direction: str, subprotocol: str) -> None:
        key = (direction, subprotocol)
        self.connections[key] = self.connections.get(key, 0) + 1

    def closed(self, direction: str, subprotocol: str) -> None:
        key = (direction, subprotocol)
        self.connections[key] = self.connections.get(key, 0) - 1

    def refusal(self, status: int, kind: str | None = None) -> None:
        """A handshake refused with HTTP ``status`` (``kind``: a reason of
        :data:`REFUSAL_REASONS` that the status alone does not tell)."""
        reason = kind if kind in self.refused else _BY_STATUS.get(status, "other")
        self.refused[reason] += 1

    def request_counts(self) -> list[tuple[str, str, int]]:
        """``(operation, response class, count)`` for every count above zero."""
        return [
            (OPERATIONS[i // _CLASSES], RESPONSE_CLASSES[i % _CLASSES], n)
            for i, n in enumerate(self.requests)
            if n
        ]


class ChainCounts:
    """What the poa chain counts: notifications by fate, outbound poa steps by scheme and
    result (the schemes are those of its connectors: a bounded set)."""

    __slots__ = ("delivered", "dropped", "expired", "queued", "steps")

    #: the ``result`` label of a poa step
    ANSWERED = "answered"
    FAILED = "failed"
    DENIED = "denied"

    def __init__(self) -> None:
        #: NOTIFY requests the target answered (live connection, a poa, a flush of its queue)
        self.delivered = 0
        #: NOTIFY requests stored for an originator that could not be reached
        self.queued = 0
        #: queued notifications found expired when their flush reached them
        self.expired = 0
        #: notifications that could not be stored, or were dropped from a queue unsent
        self.dropped = 0
        #: (scheme, result) -> outbound poa or URL steps
        self.steps: dict[tuple[str, str], int] = {}

    def step(self, scheme: str, result: str) -> None:
        key = (scheme, result)
        self.steps[key] = self.steps.get(key, 0) + 1
