"""Load generator for oneM2M over WebSocket (TS-0020): ``python -m acmews.bench URL``.

It measures requests/s, latency percentiles and response codes, and - first of all - whether
every request got exactly one answer with its own ``rqi`` (a server that mixes up pipelined
responses is caught here). With ``--server-pid`` it reads the server's CPU time from /proc,
which gives *server CPU per request*, the figure that survives a noisy machine.

The client side is built to cost less than the server it measures: its own lean WebSocket
client (:mod:`acmews.leanws`), requests pre-serialised once (only the fixed-width ``rqi``
changes), responses parsed for ``rqi``/``rsc`` only, and ``--processes`` worker processes, each
with its own reactor, for servers faster than one client process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import cbor2
import orjson
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.python.failure import Failure

from acmews.leanws import HandshakeError, LeanWebSocketClient

__all__ = [
    "BenchError",
    "BenchOptions",
    "Ledger",
    "LoadConnection",
    "RequestChannel",
    "Result",
    "Template",
    "main",
    "parse_options",
    "percentile",
    "ratio_summary",
]

SCENARIOS = ("retrieve", "create-cin", "fanout", "idle")
MODES = ("sequential", "pipelined")
SUBPROTOCOLS = {"json": "oneM2M.json", "cbor": "oneM2M.cbor"}
RQI_DIGITS = 10
RVI = "4"


class BenchError(Exception):
    """The run could not be done (connection refused, setup failed): exit code 2."""


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

_OUTSTANDING, _ANSWERED, _TIMED_OUT, _LATE = 1, 2, 3, 4


class Ledger:
    """Every request of one connection: sent when, answered how often, with which rsc.

    A request's ``rqi`` is ``prefix`` + its sequence number in ``RQI_DIGITS`` digits, so a
    response is matched without a dict lookup. A response whose rqi does not parse to one we
    sent is *unknown*; a second answer is a *duplicate*; a request unanswered after the
    timeout is *timed out* (its window slot is freed) and counts as *unanswered* unless a
    *late* answer still comes before the end.
    """

    __slots__ = (
        "_oldest",
        "_plen",
        "_sent",
        "_state",
        "duplicates",
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
        self.duplicates = 0
        self.unknown = 0
        self.late = 0
        self.timed_out = 0
        self.malformed = 0
        self.last = 0.0  # when the last first answer came
        self.latencies = array("d")
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

    @property
    def unanswered(self) -> int:
        return self.timed_out - self.late + self.outstanding


@dataclass
class Result:
    """What one or more connections saw; JSON-able and mergeable across processes."""

    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    duplicates: int = 0
    unknown: int = 0
    late: int = 0
    malformed: int = 0
    rsc: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
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
            duplicates=ledger.duplicates,
            unknown=ledger.unknown,
            late=ledger.late,
            malformed=ledger.malformed,
            rsc={str(k): v for k, v in ledger.rsc.items()},
            latencies=ledger.latencies.tolist(),
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
            duplicates=self.duplicates + other.duplicates,
            unknown=self.unknown + other.unknown,
            late=self.late + other.late,
            malformed=self.malformed + other.malformed,
            rsc=dict(rsc),
            latencies=self.latencies + other.latencies,
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
        del d["latencies"]
        d.update(
            elapsed=self.elapsed,
            requests_per_second=self.rate,
            latency_ms={f"p{p}": percentile(lat, p) * 1000 for p in (50, 90, 99)}
            | {"max": (lat[-1] * 1000 if lat else 0.0)},
            client_cpu_us_per_request=(self.client_cpu / self.sent * 1e6 if self.sent else 0.0),
            correct=self.correct,
        )
        return d


# ---------------------------------------------------------------------------------------------
# pre-serialised requests


def _dumps(obj: Any, serialization: str) -> bytes:
    return orjson.dumps(obj) if serialization == "json" else cbor2.dumps(obj)


def _loads(data: bytes, serialization: str) -> Any:
    return orjson.loads(data) if serialization == "json" else cbor2.loads(data)


class Template:
    """A request serialised once; ``build(n)`` splices in the rqi ``prefix + n`` (fixed width)."""

    def __init__(self, request: dict[str, Any], serialization: str, prefix: str) -> None:
        width = len(prefix) + RQI_DIGITS
        placeholder = secrets.token_hex(width)[:width]
        data = _dumps({**request, "rqi": placeholder}, serialization)
        at = data.index(placeholder.encode())
        if data.count(placeholder.encode()) != 1:
            raise ValueError("rqi placeholder is not unique")
        self._head = data[:at] + prefix.encode()
        self._tail = data[at + len(placeholder) :]

    def build(self, n: int) -> bytes:
        return b"%s%010d%s" % (self._head, n, self._tail)


def response_frame(rqi: Any, serialization: str, rsc: int = 2000) -> bytes:
    return _dumps({"rsc": rsc, "rqi": rqi, "rvi": RVI}, serialization)


# ---------------------------------------------------------------------------------------------
# connections


@dataclass
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise BenchError(f"only ws:// URLs are supported, not {url!r}")
        if not parts.hostname:
            raise BenchError(f"no host in {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path or "/")


async def open_client(
    reactor: Any,
    target: Target,
    serialization: str,
    originator: str | None,
    timeout: float,
) -> LeanWebSocketClient:
    """Connect and finish the opening handshake (errors become :class:`BenchError`)."""
    client = LeanWebSocketClient(
        host=target.host,
        port=target.port,
        path=target.path,
        subprotocol=SUBPROTOCOLS[serialization],
        originator=originator,
        clock=reactor,
        handshake_timeout=timeout,
    )
    endpoint = TCP4ClientEndpoint(reactor, target.host, target.port, timeout=max(1, int(timeout)))
    where = f"ws://{target.host}:{target.port}{target.path}"
    try:
        await connectProtocol(endpoint, client)  # type: ignore[no-untyped-call]
        await client.opened
    except HandshakeError as e:
        raise BenchError(f"{where}: {e.reason}") from None
    except Exception as e:
        raise BenchError(f"{where}: cannot connect: {e}") from None
    return client


class RequestChannel:
    """One request at a time and its answer (for set-up, clean-up and fanout), plus answers
    to the server's own requests (verification requests, NOTIFYs) with rsc 2000."""

    def __init__(
        self,
        client: LeanWebSocketClient,
        serialization: str,
        clock: IReactorTime,
        originator: str | None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.serialization = serialization
        self.clock = clock
        self.originator = originator
        self.timeout = timeout
        self.ledger = Ledger(f"s{secrets.token_hex(3)}-")
        self._pending: dict[str, Deferred[dict[str, Any]]] = {}
        self.on_request: Callable[[dict[str, Any]], None] = lambda request: None
        client.on_message = self._on_message

    def request(self, obj: dict[str, Any]) -> Deferred[dict[str, Any]]:
        n = self.ledger.send(time.perf_counter())
        rqi = self.ledger.rqi(n)
        primitive = {"rqi": rqi, "rvi": RVI, **obj}
        if self.originator and "fr" not in primitive:
            primitive["fr"] = self.originator
        if not self.client.is_open:
            return fail(BenchError(f"connection closed ({self.client.close_reason})"))
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[rqi] = d

        def forget(result: Any) -> Any:
            self._pending.pop(rqi, None)
            return result

        d.addTimeout(self.timeout, self.clock)
        d.addBoth(forget)
        self.client.send(_dumps(primitive, self.serialization))
        return d

    def _on_message(self, payload: bytes) -> None:
        try:
            msg = _loads(payload, self.serialization)
        except Exception:
            self.ledger.malformed += 1
            return
        if not isinstance(msg, dict):
            self.ledger.malformed += 1
        elif "rsc" in msg:
            rqi = msg.get("rqi")
            self.ledger.answer(rqi, msg.get("rsc"), time.perf_counter())
            d = self._pending.pop(rqi, None) if isinstance(rqi, str) else None
            if d is not None:
                d.callback(msg)
        elif "op" in msg:
            self.client.send(response_frame(msg.get("rqi"), self.serialization))
            self.on_request(msg)
        else:
            self.ledger.malformed += 1


class LoadConnection:
    """Keeps up to ``window`` requests in flight on one connection until the budget ends."""

    def __init__(
        self,
        client: LeanWebSocketClient,
        template: Template,
        ledger: Ledger,
        window: int,
        budget: Budget,
        serialization: str,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.client = client
        self.template = template
        self.ledger = ledger
        self.window = window
        self.budget = budget
        self.serialization = serialization
        self.timer = timer
        self.done: Deferred[None] = Deferred()
        self._loads = orjson.loads if serialization == "json" else cbor2.loads
        client.on_message = self.on_message
        client.closed.addCallback(self._lost)

    def fill(self) -> None:
        ledger, budget = self.ledger, self.budget
        if self.client.is_open:
            while ledger.outstanding < self.window and budget.take():
                self.client.send(self.template.build(ledger.send(self.timer())))
        self.check_done()

    def check_done(self) -> None:
        if self.done.called:
            return
        if self.ledger.outstanding == 0 and (self.budget.exhausted or not self.client.is_open):
            self.done.callback(None)

    def _lost(self, why: str) -> None:
        if not self.done.called:
            self.ledger.expire_all()
            self.budget.errors.append(f"connection closed during the run: {why}")
            self.done.callback(None)

    def on_message(self, payload: bytes) -> None:
        try:
            msg = self._loads(payload)
            rsc = msg.get("rsc")
        except Exception:
            self.ledger.malformed += 1
            return
        if rsc is not None:
            self.ledger.answer(msg.get("rqi"), rsc, self.timer())
            if self.ledger.outstanding < self.window:
                self.fill()
        elif "op" in msg:
            self.client.send(response_frame(msg.get("rqi"), self.serialization))
        else:
            self.ledger.malformed += 1


class Budget:
    """Requests left for one process's connections; ``stop()`` ends it early (duration)."""

    def __init__(self, requests: int) -> None:
        self.remaining = requests
        self.errors: list[str] = []

    def take(self) -> bool:
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False

    def stop(self) -> None:
        self.remaining = 0

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0


# ---------------------------------------------------------------------------------------------
# one load process (retrieve, create-cin)


@dataclass
class LoadConfig:
    """What a worker process needs (sent to it as JSON)."""

    url: str
    serialization: str
    originator: str
    request: dict[str, Any]
    connections: int
    window: int
    requests: int
    duration: float
    timeout: float
    tag: str
    first_connection: int = 0

    def originator_for(self, i: int) -> str:
        """``--originator`` with ``{k}`` replaced by the global connection number."""
        return self.originator.replace("{k}", str(self.first_connection + i))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one, largest first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run_load(
    reactor: Any,
    cfg: LoadConfig,
    go: Callable[[], Deferred[None]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Open the connections, wait for ``go()``, run the load, close; returns the result."""
    target = Target.parse(cfg.url)
    clients: list[LeanWebSocketClient] = []
    try:
        for i in range(cfg.connections):
            clients.append(
                await open_client(
                    reactor, target, cfg.serialization, cfg.originator_for(i), cfg.timeout
                )
            )
    except BenchError:
        for c in clients:
            c.close()
        raise
    if go is not None:
        await go()
    budget = Budget(cfg.requests)
    conns = []
    for i, client in enumerate(clients):
        prefix = f"b{cfg.tag}.{i}."
        ledger = Ledger(prefix)
        conns.append(
            LoadConnection(
                client,
                Template({**cfg.request, "fr": cfg.originator_for(i)}, cfg.serialization, prefix),
                ledger,
                cfg.window,
                budget,
                cfg.serialization,
            )
        )
    started_wall, started_cpu, started = time.time(), _cpu(), time.perf_counter()
    deadline = started + cfg.duration
    ticker: list[IDelayedCall] = []

    def tick() -> None:
        now = time.perf_counter()
        if now >= deadline:
            budget.stop()
        for c in conns:
            if c.ledger.expire(now, cfg.timeout):
                c.fill()
            c.check_done()
        if progress is not None:
            progress(sum(len(c.ledger.latencies) for c in conns))
        if not all(c.done.called for c in conns):
            ticker[:] = [reactor.callLater(0.2, tick)]

    for lc in conns:
        lc.fill()
    tick()
    await DeferredList([c.done for c in conns])
    ended_wall, ended_cpu = time.time(), _cpu()
    for t in ticker:
        if t.active():
            t.cancel()
    await _close_all(reactor, clients)
    result = Result(connections=0)
    for lc in conns:
        result = result.merge(Result.from_ledger(lc.ledger))
    # the rate counts until the last answer, not the wait for answers that never came
    last = max((lc.ledger.last for lc in conns), default=0.0)
    result.started = started_wall
    result.ended = started_wall + (last - started) if last else ended_wall
    result.client_cpu = ended_cpu - started_cpu
    result.errors = budget.errors
    return result


async def _close_all(
    reactor: Any, clients: Sequence[LeanWebSocketClient], wait: float = 2
) -> None:
    for c in clients:
        c.close()
    pending = [c.closed for c in clients if not c.closed.called]
    if pending:
        d: Deferred[Any] = DeferredList(pending)
        d.addTimeout(wait, reactor)
        try:
            await d
        except TimeoutError:
            for c in clients:
                if c.transport is not None and not c.closed.called:
                    c.transport.abortConnection()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# the server process


@dataclass
class ServerSample:
    cpu: float  # seconds, utime + stime
    rss_kib: int


def sample_server(pid: int | None) -> ServerSample | None:
    """CPU time and RSS of a local process, from /proc (``None`` without a pid)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError as e:
        raise BenchError(f"cannot read /proc/{pid}: {e}") from None
    return parse_proc(stat, status, os.sysconf("SC_CLK_TCK"))


def parse_proc(stat: bytes, status: bytes, ticks: int) -> ServerSample:
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    rss = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
    return ServerSample((utime + stime) / ticks, rss)


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass
class BenchOptions:
    url: str
    originator: str = "CAdmin"
    target: str = "cse-in"
    scenario: str = "retrieve"
    mode: str = "sequential"
    window: int = 64
    connections: int = 1
    processes: int = 1
    requests: int = 2000
    duration: float = 5.0
    timeout: float = 5.0
    serialization: str = "json"
    json_file: str | None = None
    server_pid: int | None = None
    compare: str | None = None
    compare_pid: int | None = None
    rounds: int = 3
    register: bool = False

    @property
    def effective_window(self) -> int:
        return 1 if self.mode == "sequential" else self.window


class Worker(ProcessProtocol):
    """A ``--worker`` child: lines ``ready``, ``progress N``, ``result {json}``, ``error msg``."""

    def __init__(self, on_progress: Callable[[], None]) -> None:
        self.ready: Deferred[None] = Deferred()
        self.finished: Deferred[Result] = Deferred()
        self.progress = 0
        self._on_progress = on_progress
        self._buf = b""
        self._result: Result | None = None
        self._error = ""
        self._stderr = b""

    def go(self) -> None:
        assert self.transport is not None
        self.transport.write(b"go\n")

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            word, _, rest = line.decode().partition(" ")
            if word == "ready" and not self.ready.called:
                self.ready.callback(None)
            elif word == "progress":
                self.progress = int(rest)
                self._on_progress()
            elif word == "result":
                self._result = Result.from_dict(json.loads(rest))
            elif word == "error":
                self._error = rest

    def errReceived(self, data: bytes) -> None:
        self._stderr = (self._stderr + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        err = BenchError(
            self._error or f"worker died: {self._stderr.decode(errors='replace').strip()}"
        )
        if not self.ready.called:
            self.ready.errback(err)
        if self._result is not None:
            self.finished.callback(self._result)
        else:
            self.finished.errback(err)


def _progress_printer(out: TextIO, total: int) -> Callable[[int], None]:
    if not out.isatty():
        return lambda n: None
    last = [0.0]

    def show(n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            out.write(f"\r  {n}/{total} answered ")
            out.flush()

    return show


def ae_create(parent: str, aei: str) -> dict[str, Any]:
    """An AE CREATE asking for the AE-ID ``aei`` (also its resource name)."""
    return {
        "op": 1,
        "to": parent,
        "ty": 2,
        "pc": {
            "m2m:ae": {
                "rn": aei,
                "api": "Nbench",
                "rr": True,
                "srv": [RVI],
                "poa": ["ws://default"],
            }
        },
    }


async def admin_requests(
    reactor: Any,
    opts: BenchOptions,
    target: Target,
    originator: str,
    requests: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Send requests one after the other on a connection of their own; their responses."""
    client = await open_client(reactor, target, opts.serialization, originator, opts.timeout)
    channel = RequestChannel(client, opts.serialization, reactor, originator, opts.timeout)
    try:
        return [await channel.request(r) for r in requests]
    finally:
        await _close_all(reactor, [client])


async def run_requests(
    reactor: Any, opts: BenchOptions, url: str, pid: int | None, out: TextIO
) -> tuple[Result, dict[str, Any]]:
    """retrieve / create-cin: set up, run the load (in-process or in workers), clean up."""
    tag = secrets.token_hex(3)
    target = Target.parse(url)
    cleanup: list[str] = []
    first = opts.originator.replace("{k}", "0")
    request: dict[str, Any] = {"op": 2, "to": opts.target, "fr": first, "rvi": RVI}
    registered: list[str] = []
    try:
        if opts.register:
            for k in range(max(opts.connections, opts.processes)):
                aei = opts.originator.replace("{k}", str(k))
                [resp] = await admin_requests(
                    reactor, opts, target, aei, [ae_create(opts.target, aei)]
                )
                if resp.get("rsc") != 2001:
                    raise BenchError(f"cannot register the AE {aei}: {resp}")
                registered.append(aei)
        if opts.scenario == "create-cin":
            # set-up and clean-up on their own short connections: a server closes an older
            # connection of the same originator when the load connections open
            rn = f"bench{tag}"
            [resp] = await admin_requests(
                reactor,
                opts,
                target,
                first,
                [{"op": 1, "to": opts.target, "ty": 3, "pc": {"m2m:cnt": {"rn": rn, "mni": 10}}}],
            )
            if resp.get("rsc") != 2001:
                raise BenchError(f"cannot create the container {opts.target}/{rn}: {resp}")
            cleanup.append(f"{opts.target}/{rn}")
            request = {
                "op": 1,
                "to": f"{opts.target}/{rn}",
                "fr": first,
                "rvi": RVI,
                "ty": 4,
                "pc": {"m2m:cin": {"con": "bench", "cnf": "text/plain:0"}},
            }
        n_proc = max(1, opts.processes)
        conns = split_evenly(max(opts.connections, n_proc), n_proc)
        reqs = split_evenly(opts.requests, n_proc)
        cfgs = [
            LoadConfig(
                url=url,
                serialization=opts.serialization,
                originator=opts.originator,
                request=request,
                connections=conns[i],
                window=opts.effective_window,
                requests=reqs[i],
                duration=opts.duration,
                timeout=opts.timeout,
                tag=f"{tag}{i}",
                first_connection=sum(conns[:i]),
            )
            for i in range(n_proc)
        ]
        show = _progress_printer(out, opts.requests)
        before: ServerSample | None = None

        def sample_before() -> Deferred[None]:
            nonlocal before
            before = sample_server(pid)
            return Deferred.fromCoroutine(_noop())

        if n_proc == 1:
            result = await run_load(reactor, cfgs[0], go=sample_before, progress=show)
        else:
            result = await _run_workers(reactor, cfgs, sample_before, show)
        after = sample_server(pid)
        if out.isatty():
            out.write("\r" + " " * 40 + "\r")
    finally:
        if cleanup:
            try:
                for path, r in zip(
                    cleanup,
                    await admin_requests(
                        reactor, opts, target, first, [{"op": 4, "to": p} for p in cleanup]
                    ),
                    strict=True,
                ):
                    if r.get("rsc") != 2002:
                        out.write(f"  warning: could not delete {path}: {r}\n")
            except Exception as e:
                out.write(f"  warning: clean-up failed: {e}\n")
        for aei in registered:  # an AE may delete itself
            try:
                [r] = await admin_requests(
                    reactor, opts, target, aei, [{"op": 4, "to": f"{opts.target}/{aei}"}]
                )
                if r.get("rsc") != 2002:
                    out.write(f"  warning: could not delete the AE {aei}: {r}\n")
            except Exception as e:
                out.write(f"  warning: could not delete the AE {aei}: {e}\n")
    server: dict[str, Any] = {}
    if before is not None and after is not None:
        server = {"cpu_s": after.cpu - before.cpu, "rss_kib": after.rss_kib}
    return result, server


async def _noop() -> None:
    return None


async def _run_workers(
    reactor: Any,
    cfgs: list[LoadConfig],
    sample_before: Callable[[], Deferred[None]],
    show: Callable[[int], None],
) -> Result:
    workers: list[Worker] = []

    def on_progress() -> None:
        show(sum(w.progress for w in workers))

    for cfg in cfgs:
        w = Worker(on_progress)
        workers.append(w)
        args = [sys.executable, "-m", "acmews.bench", "--worker", json.dumps(asdict(cfg))]
        reactor.spawnProcess(w, sys.executable, args, env=os.environ)
    try:
        await gatherResults([w.ready for w in workers])
    except Exception:
        for w in workers:
            if w.transport is not None:
                w.transport.closeStdin()
        await DeferredList([w.finished for w in workers])
        raise
    await sample_before()
    for w in workers:
        w.go()
    results = await gatherResults([w.finished for w in workers])
    merged = Result(connections=0)
    for r in results:
        merged = merged.merge(r)
    return merged


async def run_fanout(
    reactor: Any, opts: BenchOptions, url: str, pid: int | None, out: TextIO
) -> tuple[Result, dict[str, Any]]:
    """N AEs subscribe to one container; each CIN must reach all N (rounds, timed)."""
    tag = secrets.token_hex(2)
    target = Target.parse(url)
    t = opts.timeout
    admin_client = await open_client(reactor, target, opts.serialization, opts.originator, t)
    admin = RequestChannel(admin_client, opts.serialization, reactor, opts.originator, t)
    channels: list[RequestChannel] = []
    created_aes: list[str] = []
    cnt = f"{opts.target}/benchfan{tag}"
    result = Result(connections=0)
    rounds: dict[int, dict[str, Any]] = {}
    before = after = None
    try:
        resp = await admin.request(
            {
                "op": 1,
                "to": opts.target,
                "ty": 3,
                "pc": {"m2m:cnt": {"rn": cnt.rsplit("/")[-1], "mni": 10}},
            }
        )
        if resp.get("rsc") != 2001:
            raise BenchError(f"cannot create the container {cnt}: {resp}")
        for k in range(opts.connections):
            aei = f"Cbench{tag}x{k}"
            client = await open_client(reactor, target, opts.serialization, aei, t)
            s = RequestChannel(client, opts.serialization, reactor, aei, t)
            channels.append(s)
            resp = await s.request(ae_create(opts.target, aei))
            if resp.get("rsc") != 2001:
                raise BenchError(f"AE CREATE for {aei} failed: {resp}")
            created_aes.append(aei)
            aei = resp.get("pc", {}).get("m2m:ae", {}).get("aei") or aei
            sub = {
                "op": 1,
                "to": cnt,
                "ty": 23,
                "pc": {"m2m:sub": {"rn": f"sub{k}", "nu": [aei], "enc": {"net": [3]}, "nct": 1}},
            }
            resp = await s.request(sub)
            if resp.get("rsc") == 4103:
                # the AE may not subscribe to the admin's container (ACME's default ACPs):
                # the admin subscribes on its behalf; the CSE verifies with the AE (vrq)
                resp = await admin.request(sub)
            if resp.get("rsc") != 2001:
                raise BenchError(f"subscription for {aei} failed: {resp}")

        def on_notify(k: int) -> Callable[[dict[str, Any]], None]:
            def handle(msg: dict[str, Any]) -> None:
                sgn = (msg.get("pc") or {}).get("m2m:sgn") or {}
                rep = (sgn.get("nev") or {}).get("rep") or {}
                con = (rep.get("m2m:cin") or {}).get("con", "")
                if not (isinstance(con, str) and con.startswith("r")):
                    return  # verification request or other
                r = rounds.get(int(con[1:]))
                if r is None:
                    result.unknown += 1
                elif k in r["got"]:
                    result.duplicates += 1
                else:
                    r["got"][k] = time.perf_counter() - r["t0"]
                    if len(r["got"]) == opts.connections and not r["all"].called:
                        r["all"].callback(None)

            return handle

        for k, s in enumerate(channels):
            s.on_request = on_notify(k)
        before = sample_server(pid)
        result.started, cpu0 = time.time(), _cpu()
        end = time.perf_counter() + opts.duration
        n = 0
        while n < opts.requests and time.perf_counter() < end:
            r = rounds[n] = {"t0": time.perf_counter(), "got": {}, "all": Deferred()}
            cin = await admin.request(
                {"op": 1, "to": cnt, "ty": 4, "pc": {"m2m:cin": {"con": f"r{n}"}}}
            )
            result.sent += 1
            result.rsc[str(cin.get("rsc"))] = result.rsc.get(str(cin.get("rsc")), 0) + 1
            if cin.get("rsc") == 2001:
                try:
                    await r["all"].addTimeout(t, reactor)
                    result.latencies.append(time.perf_counter() - r["t0"])
                except TimeoutError:
                    pass
            result.answered += len(r["got"])
            result.unanswered += opts.connections - len(r["got"])
            n += 1
        result.ended, result.client_cpu = time.time(), _cpu() - cpu0
        after = sample_server(pid)
        result.extra["rounds"] = n
        result.extra["notify_latencies_ms"] = sorted(
            v * 1000 for r in rounds.values() for v in r["got"].values()
        )
        for s in [admin, *channels]:
            result.duplicates += s.ledger.duplicates
            result.unknown += s.ledger.unknown
            result.malformed += s.ledger.malformed
    finally:
        for rn in created_aes:
            try:
                await admin.request({"op": 4, "to": f"{opts.target}/{rn}"})
            except Exception as e:
                out.write(f"  warning: could not delete AE {rn}: {e}\n")
        try:
            await admin.request({"op": 4, "to": cnt})
        except Exception as e:
            out.write(f"  warning: could not delete {cnt}: {e}\n")
        await _close_all(reactor, [s.client for s in channels] + [admin_client])
    result.connections = opts.connections
    server: dict[str, Any] = {}
    if before is not None and after is not None:
        server = {"cpu_s": after.cpu - before.cpu, "rss_kib": after.rss_kib}
    return result, server


async def run_idle(
    reactor: Any, opts: BenchOptions, url: str, pid: int | None, out: TextIO
) -> tuple[Result, dict[str, Any]]:
    """Open N connections (distinct originators), hold them, measure the server's RSS."""
    tag = secrets.token_hex(2)
    target = Target.parse(url)
    before = sample_server(pid)
    result = Result(started=time.time())
    clients: list[LeanWebSocketClient] = []
    try:
        for k in range(opts.connections):
            clients.append(
                await open_client(
                    reactor, target, opts.serialization, f"Cidle{tag}x{k}", opts.timeout
                )
            )
        hold: Deferred[None] = Deferred()
        reactor.callLater(opts.duration, hold.callback, None)
        await hold
        after = sample_server(pid)
        result.ended = time.time()
        result.connections = len(clients)
        result.extra["open_connections"] = sum(c.is_open for c in clients)
        result.unanswered = len(clients) - result.extra["open_connections"]
    finally:
        await _close_all(reactor, clients)
    server: dict[str, Any] = {}
    if before is not None and after is not None:
        server = {
            "cpu_s": after.cpu - before.cpu,
            "rss_kib": after.rss_kib,
            "rss_growth_kib": after.rss_kib - before.rss_kib,
            "rss_per_connection_kib": (after.rss_kib - before.rss_kib) / max(1, len(clients)),
        }
    return result, server


RUNNERS = {
    "retrieve": run_requests,
    "create-cin": run_requests,
    "fanout": run_fanout,
    "idle": run_idle,
}


# ---------------------------------------------------------------------------------------------
# reporting


def report(opts: BenchOptions, url: str, result: Result, server: dict[str, Any]) -> dict[str, Any]:
    d = result.summary()
    d.update(
        url=url,
        scenario=opts.scenario,
        mode=opts.mode,
        window=opts.effective_window,
        serialization=opts.serialization,
        processes=opts.processes,
        server=server,
    )
    if server.get("cpu_s") is not None and opts.scenario != "idle":
        n = result.sent if opts.scenario != "fanout" else result.answered
        if n:
            d["server_cpu_us_per_request"] = server["cpu_s"] / n * 1e6
    return d


def format_report(d: dict[str, Any]) -> str:
    lines = [
        f"{d['scenario']} {d['mode']} {d['serialization']} -> {d['url']}"
        f"  ({d['processes']} proc, {d['connections']} conn, window {d['window']})"
    ]
    lat = d["latency_ms"]
    pcts = (
        f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}"
    )
    rsc = ", ".join(f"{k}: {v}" for k, v in sorted(d["rsc"].items())) or "-"
    unit = "request"
    if d["scenario"] == "idle":
        lines.append(f"  open connections  {d['extra'].get('open_connections', 0)}")
    elif d["scenario"] == "fanout":
        unit = "notification"
        n = d["connections"] * d["extra"].get("rounds", 0)
        lines.append(
            f"  rounds            {d['extra'].get('rounds', 0)} CIN CREATEs (rsc {rsc}), "
            f"{d['answered']}/{n} NOTIFYs in {d['elapsed']:.2f} s"
            f" -> {d['requests_per_second']:.1f} notifications/s"
        )
        lines.append(f"  all N notified ms {pcts}")
        per = d["extra"].get("notify_latencies_ms", [])
        lines.append(
            f"  each NOTIFY ms    p50 {percentile(per, 50):.2f}  p99 {percentile(per, 99):.2f}"
            f"  max {(per[-1] if per else 0.0):.2f}"
        )
        lines.append(
            f"  client CPU        {d['client_cpu'] / max(1, d['answered']) * 1e6:.0f}"
            f" us/notification ({d['client_cpu']:.2f} s)"
        )
    else:
        lines.append(
            f"  requests          {d['sent']} sent, {d['answered']} answered in "
            f"{d['elapsed']:.2f} s -> {d['requests_per_second']:.1f} req/s"
        )
        lines.append(f"  latency (ms)      {pcts}")
        lines.append(f"  rsc               {rsc}")
        lines.append(
            f"  client CPU        {d['client_cpu_us_per_request']:.0f} us/request"
            f" ({d['client_cpu']:.2f} s)"
        )
    if "server_cpu_us_per_request" in d:
        lines.append(
            f"  server CPU        {d['server_cpu_us_per_request']:.0f} us/{unit}"
            f" ({d['server']['cpu_s']:.2f} s)"
        )
    if "rss_growth_kib" in d["server"]:
        lines.append(
            f"  server RSS        +{d['server']['rss_growth_kib']} KiB"
            f" ({d['server']['rss_per_connection_kib']:.1f} KiB/connection)"
        )
    for e in d["errors"]:
        lines.append(f"  error: {e}")
    if d["correct"]:
        lines.append(
            "  correctness       OK: "
            + {
                "idle": "every connection opened and stayed open",
                "fanout": "every NOTIFY arrived exactly once, every request answered once",
            }.get(d["scenario"], "every request answered exactly once, with its own rqi")
        )
    else:
        lines.append(
            f"  !!! CORRECTNESS FAILURE: {d['unanswered']} never answered, "
            f"{d['duplicates']} answered twice, {d['unknown']} with an rqi never sent, "
            f"{d['malformed']} malformed (late answers: {d['late']}) !!!"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m acmews.bench",
        description="Load generator for oneM2M over WebSocket (TS-0020). Exit code 1 when "
        "any request was never answered, answered twice or answered with a foreign rqi; "
        "2 when the run could not be done.",
    )
    p.add_argument("url", help="ws://host:port[/path] of the CSE")
    p.add_argument(
        "--originator",
        default="CAdmin",
        help="X-M2M-Origin and fr (CAdmin); '{k}' is replaced by the connection number - "
        "servers close an older connection of the same originator (ACME does, acmews too)",
    )
    p.add_argument("--target", default="cse-in", help="target resource (the CSEBase, cse-in)")
    p.add_argument("--scenario", choices=SCENARIOS, default="retrieve")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="sequential",
        help="sequential: one request in flight per connection; pipelined: --window",
    )
    p.add_argument("--window", type=int, default=64, help="in flight per connection (64)")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="connections in all (for fanout: AEs; for idle: idle connections)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load processes (retrieve/create-cin only), each with its own reactor",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="stop after this many requests (fanout: rounds) (2000)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="stop after this many s (5)")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="a request unanswered after this many s counts as never answered (5)",
    )
    p.add_argument("--serialization", choices=tuple(SUBPROTOCOLS), default="json")
    p.add_argument("--json", dest="json_file", metavar="FILE", help="write the result as JSON")
    p.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="local server process: report its CPU us/request (and RSS for idle)",
    )
    p.add_argument("--compare", metavar="URL2", help="alternate runs against a second server")
    p.add_argument("--compare-pid", type=int, metavar="PID2", help="server pid of URL2")
    p.add_argument(
        "--register",
        action="store_true",
        help="retrieve/create-cin: first register one AE per connection as --originator "
        "(use '{k}', e.g. Cbench{k}), delete them at the end",
    )
    p.add_argument("--rounds", type=int, default=3, help="A/B pairs with --compare (3)")
    return p


def parse_options(argv: Sequence[str]) -> BenchOptions:
    parser = build_parser()
    ns = parser.parse_args(list(argv))
    opts = BenchOptions(**vars(ns))
    for name in ("window", "connections", "processes", "requests", "rounds"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if opts.duration <= 0 or opts.timeout <= 0:
        parser.error("--duration and --timeout must be positive")
    if (
        (opts.register or opts.scenario in ("retrieve", "create-cin"))
        and max(opts.connections, opts.processes) > 1
        and "{k}" not in opts.originator
    ):
        sys.stderr.write(
            "bench: warning: several connections share the originator "
            f"{opts.originator}; servers close the older ones (use '{{k}}' and --register)\n"
        )
    if opts.register and opts.scenario not in ("retrieve", "create-cin"):
        parser.error("--register is for retrieve and create-cin")
    try:
        Target.parse(opts.url)
        if opts.compare:
            Target.parse(opts.compare)
    except BenchError as e:
        parser.error(str(e))
    return opts


async def run(reactor: Any, opts: BenchOptions, out: TextIO) -> int:
    """Run the whole benchmark (with --compare: A B A B ...); returns the exit code."""
    runner = RUNNERS[opts.scenario]
    runs: list[dict[str, Any]] = []
    if opts.compare is None:
        result, server = await runner(reactor, opts, opts.url, opts.server_pid, out)
        d = report(opts, opts.url, result, server)
        runs.append(d)
        out.write(format_report(d) + "\n")
        summary: dict[str, Any] = d
    else:
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for i in range(opts.rounds):
            pair = []
            for url, pid in ((opts.url, opts.server_pid), (opts.compare, opts.compare_pid)):
                result, server = await runner(reactor, opts, url, pid, out)
                d = report(opts, url, result, server)
                runs.append(d)
                pair.append(d)
                out.write(f"[round {i + 1} {'AB'[len(pair) - 1]}] " + format_report(d) + "\n")
            pairs.append((pair[0], pair[1]))
        summary = {"runs": runs, "compare": compare_summary(pairs)}
        out.write(format_compare(summary["compare"]) + "\n")
    if opts.json_file:
        with open(opts.json_file, "w") as f:
            json.dump(summary, f, indent=2)
    if all(r["correct"] for r in runs):
        return 0
    out.write("bench: CORRECTNESS FAILURE (see above)\n")
    return 1


def compare_summary(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Ratios A/B per pair (requests/s, and server CPU/request when both are known)."""
    rates, median = ratio_summary(
        [a["requests_per_second"] for a, _ in pairs], [b["requests_per_second"] for _, b in pairs]
    )
    d: dict[str, Any] = {"rate_ratios": rates, "rate_ratio_median": median}
    if all("server_cpu_us_per_request" in x for pair in pairs for x in pair):
        cpu, cmed = ratio_summary(
            [a["server_cpu_us_per_request"] for a, _ in pairs],
            [b["server_cpu_us_per_request"] for _, b in pairs],
        )
        d.update(cpu_ratios=cpu, cpu_ratio_median=cmed)
    return d


def format_compare(c: dict[str, Any]) -> str:
    lines = [
        "compare A/B  requests/s ratios: "
        + ", ".join(f"{r:.2f}" for r in c["rate_ratios"])
        + f"  median {c['rate_ratio_median']:.2f}"
    ]
    if "cpu_ratios" in c:
        lines.append(
            "compare A/B  server CPU/request ratios: "
            + ", ".join(f"{r:.2f}" for r in c["cpu_ratios"])
            + f"  median {c['cpu_ratio_median']:.2f}"
        )
    return "\n".join(lines)


def _worker_main(cfg_json: str) -> int:
    """Child process: connect, print ``ready``, wait for ``go`` on stdin, run, print result."""
    from twisted.internet import reactor, stdio
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    cfg = LoadConfig(**json.loads(cfg_json))
    go: Deferred[None] = Deferred()

    @implementer(IHalfCloseableProtocol)
    class Control(LineReceiver):
        """stdin: ``go``; stdout: our lines. Stopping waits until stdout is flushed."""

        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"go" and not go.called:
                go.callback(None)

        def readConnectionLost(self) -> None:
            if not go.called:
                go.errback(BenchError("coordinator went away"))

        def writeConnectionLost(self) -> None:
            pass

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            self.readConnectionLost()
            if reactor.running:
                reactor.stop()

    control = Control()
    stdio.StandardIO(control)  # type: ignore[no-untyped-call]
    code = [0]

    def emit(line: str) -> None:
        control.sendLine(line.encode())  # type: ignore[no-untyped-call]

    def ready() -> Deferred[None]:
        emit("ready")
        return go

    async def body() -> None:
        try:
            result = await run_load(
                reactor, cfg, go=ready, progress=lambda n: emit(f"progress {n}")
            )
            emit("result " + json.dumps(asdict(result)))
        except Exception as e:
            emit(f"error {e}")
            code[0] = 2
        finally:
            assert control.transport is not None
            control.transport.loseConnection()  # flushes, then connectionLost stops

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(body()))
    reactor.run()
    return code[0]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1])
    opts = parse_options(argv)
    from twisted.internet import reactor

    code = [2]

    async def body() -> None:
        try:
            code[0] = await run(reactor, opts, sys.stdout)
        except BenchError as e:
            sys.stderr.write(f"bench: {e}\n")
        except Exception:
            traceback.print_exc()
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(body()))
    reactor.run()
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
