"""Correctness accounting and statistics: every request's fate, the mergeable result.

A :class:`Ledger` per connection records what was sent and how it was answered; a
:class:`Result` is what one or more connections (or worker processes) saw.
"""

from __future__ import annotations

import statistics
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "RQI_DIGITS",
    "Ledger",
    "Result",
    "percentile",
    "ratio_summary",
]


RQI_DIGITS = 10


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    if p <= 0:
        return sorted_values[0]
    rank = -(-p * len(sorted_values) // 100)  # ceil
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> tuple[list[float], float]:
    """Per-pair ratios a[i]/b[i] (pairs with b == 0 are skipped) and their median."""
    ratios = [x / y for x, y in zip(a, b, strict=False) if y]
    return ratios, (statistics.median(ratios) if ratios else float("nan"))


# ---------------------------------------------------------------------------------------------
# correctness accounting


_OUTSTANDING, _ANSWERED, _TIMED_OUT, _LATE, _FAILED = 1, 2, 3, 4, 5


class Ledger:
    """Every request of one connection: sent when, answered how often, with which rsc.

    A request's ``rqi`` is ``prefix`` + its sequence number in ``RQI_DIGITS`` digits, so a
    response is matched without a dict lookup. A response whose rqi does not parse to one we
    sent is *unknown*; a second answer is a *duplicate*; a request unanswered after the
    timeout is *timed out* (its window slot is freed) and counts as *unanswered* unless a
    *late* answer still comes before the end. Requests outstanding when the server closes
    the connection going away (1001, a graceful stop) are *failed*: the client knows at once
    (a clean 5103 on its side), nothing is left waiting.
    """

    __slots__ = (
        "_oldest",
        "_plen",
        "_sent",
        "_state",
        "answered_at",
        "duplicates",
        "failed",
        "last",
        "late",
        "latencies",
        "malformed",
        "outstanding",
        "prefix",
        "rsc",
        "timed_out",
        "unknown",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._plen = len(prefix)
        self._sent = array("d")
        self._state = bytearray()
        self._oldest = 0
        self.outstanding = 0
        self.failed = 0
        self.duplicates = 0
        self.unknown = 0
        self.late = 0
        self.timed_out = 0
        self.malformed = 0
        self.last = 0.0  # when the last first answer came
        self.latencies = array("d")
        #: when each first answer came (``perf_counter``), for throughput over time
        self.answered_at = array("d")
        self.rsc: Counter[int] = Counter()

    @property
    def sent(self) -> int:
        return len(self._state)

    def send(self, now: float) -> int:
        """Record a new request; returns its sequence number."""
        n = len(self._state)
        self._sent.append(now)
        self._state.append(_OUTSTANDING)
        self.outstanding += 1
        return n

    def rqi(self, n: int) -> str:
        return f"{self.prefix}{n:0{RQI_DIGITS}d}"

    def answer(self, rqi: object, rsc: object, now: float) -> None:
        """Account for one response."""
        if not isinstance(rqi, str) or not rqi.startswith(self.prefix):
            self.unknown += 1
            return
        tail = rqi[self._plen :]
        if len(tail) != RQI_DIGITS or not tail.isdigit():
            self.unknown += 1
            return
        n = int(tail)
        if n >= len(self._state):
            self.unknown += 1
            return
        state = self._state[n]
        if state == _OUTSTANDING:
            self._state[n] = _ANSWERED
            self.outstanding -= 1
            self.last = now
            self.latencies.append(now - self._sent[n])
            self.answered_at.append(now)
            self.rsc[rsc if isinstance(rsc, int) else -1] += 1
        elif state == _TIMED_OUT:
            self._state[n] = _LATE
            self.late += 1
            self.last = now
            self.rsc[rsc if isinstance(rsc, int) else -1] += 1
        else:
            self.duplicates += 1

    def expire(self, now: float, timeout: float) -> int:
        """Time out the requests sent before ``now - timeout``; returns how many."""
        limit = now - timeout
        state, sent = self._state, self._sent
        i, n, expired = self._oldest, len(state), 0
        while i < n and (state[i] != _OUTSTANDING or sent[i] <= limit):
            if state[i] == _OUTSTANDING:
                state[i] = _TIMED_OUT
                expired += 1
            i += 1
        self._oldest = i
        self.outstanding -= expired
        self.timed_out += expired
        return expired

    def expire_all(self) -> int:
        return self.expire(float("inf"), 0.0)

    def fail_all(self) -> int:
        """Every outstanding request failed at once (5103 on the client's side): the server
        closed the connection going away."""
        state = self._state
        failed = 0
        for i in range(self._oldest, len(state)):
            if state[i] == _OUTSTANDING:
                state[i] = _FAILED
                failed += 1
        self.outstanding -= failed
        self.failed += failed
        if failed:
            self.rsc[5103] = self.rsc.get(5103, 0) + failed
        return failed

    @property
    def unanswered(self) -> int:
        return self.timed_out - self.late + self.outstanding


@dataclass
class Result:
    """What one or more connections saw; JSON-able and mergeable across processes."""

    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    #: failed at once by the client (5103) when the server closed going away (1001)
    failed: int = 0
    duplicates: int = 0
    unknown: int = 0
    late: int = 0
    malformed: int = 0
    rsc: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    #: when each answer came (``perf_counter`` seconds, one clock for every process)
    completions: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    client_cpu: float = 0.0
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> Result:
        return cls(
            sent=ledger.sent,
            answered=len(ledger.latencies) + ledger.late,
            unanswered=ledger.unanswered,
            failed=ledger.failed,
            duplicates=ledger.duplicates,
            unknown=ledger.unknown,
            late=ledger.late,
            malformed=ledger.malformed,
            rsc={str(k): v for k, v in ledger.rsc.items()},
            latencies=ledger.latencies.tolist(),
            completions=ledger.answered_at.tolist(),
            connections=1,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        return cls(**d)

    def merge(self, other: Result) -> Result:
        rsc = Counter(self.rsc)
        rsc.update(other.rsc)
        starts = [t for t in (self.started, other.started) if t]
        ends = [t for t in (self.ended, other.ended) if t]
        return Result(
            sent=self.sent + other.sent,
            answered=self.answered + other.answered,
            unanswered=self.unanswered + other.unanswered,
            failed=self.failed + other.failed,
            duplicates=self.duplicates + other.duplicates,
            unknown=self.unknown + other.unknown,
            late=self.late + other.late,
            malformed=self.malformed + other.malformed,
            rsc=dict(rsc),
            latencies=self.latencies + other.latencies,
            completions=self.completions + other.completions,
            started=min(starts) if starts else 0.0,
            ended=max(ends) if ends else 0.0,
            client_cpu=self.client_cpu + other.client_cpu,
            connections=self.connections + other.connections,
            errors=self.errors + other.errors,
            extra={**self.extra, **other.extra},
        )

    @property
    def elapsed(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def rate(self) -> float:
        """Correctly answered requests per second."""
        good = self.answered - self.late
        return good / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def correct(self) -> bool:
        return not (self.unanswered or self.duplicates or self.unknown or self.malformed)

    def summary(self) -> dict[str, Any]:
        """The machine-readable figures (no raw latencies)."""
        lat = sorted(self.latencies)
        d = asdict(self)
        del d["latencies"], d["completions"]
        d.update(
            elapsed=self.elapsed,
            requests_per_second=self.rate,
            latency_ms={f"p{p}": percentile(lat, p) * 1000 for p in (50, 90, 99)}
            | {"max": (lat[-1] * 1000 if lat else 0.0)},
            client_cpu_us_per_request=(self.client_cpu / self.sent * 1e6 if self.sent else 0.0),
            correct=self.correct,
        )
        return d
