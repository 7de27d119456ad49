"""One load process (retrieve, create-cin): up to ``window`` requests in flight on each of its
connections until the request budget or the duration ends. Runs in the coordinator or in a
worker process (:mod:`acmews.bench.workers`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import orjson
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall

from acmews.bench.connections import (
    BenchError,
    Target,
    Template,
    close_all,
    open_client,
    response_frame,
)
from acmews.bench.leanclient import LeanWebSocketClient
from acmews.bench.ledger import Ledger, Result

__all__ = [
    "Budget",
    "LoadConfig",
    "LoadConnection",
    "cpu_time",
    "run_load",
    "split_evenly",
]


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
            if self.client.close_code == 1001:
                # going away (a graceful stop): what was outstanding failed cleanly, at once
                failed = self.ledger.fail_all()
                self.budget.errors.append(
                    f"the server went away: {why} ({failed} requests failed with 5103)"
                )
            else:
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
    #: the nodes of one CSE: connection n (counted over every worker) opens to the n-th in
    #: turn; empty: ``url``
    urls: list[str] = field(default_factory=list)

    def url_for(self, i: int) -> str:
        if not self.urls:
            return self.url
        return self.urls[(self.first_connection + i) % len(self.urls)]

    def originator_for(self, i: int) -> str:
        """``--originator`` with ``{k}`` replaced by the global connection number."""
        return self.originator.replace("{k}", str(self.first_connection + i))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one, largest first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_time() -> float:
    """This process's CPU time (user + system), in s."""
    t = os.times()
    return t.user + t.system


async def run_load(
    reactor: Any,
    cfg: LoadConfig,
    go: Callable[[], Deferred[None]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Open the connections, wait for ``go()``, run the load, close; returns the result."""
    clients: list[LeanWebSocketClient] = []
    try:
        for i in range(cfg.connections):
            target = Target.parse(cfg.url_for(i))
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
    started_wall, started_cpu, started = time.time(), cpu_time(), time.perf_counter()
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
    ended_wall, ended_cpu = time.time(), cpu_time()
    for t in ticker:
        if t.active():
            t.cancel()
    await close_all(reactor, clients)
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
