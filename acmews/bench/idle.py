"""The idle scenario's connections: opened (a bounded number at a time), held, and a sample of
them registered as AEs and subscribed to one container, to show that each is reachable.

:func:`hold` is what one process does (the coordinator itself, or each ``--processes``
worker); the coordinator (:func:`acmews.bench.scenarios.run_idle`) sets up the container,
measures the nodes and creates the contentInstance whose notification every sampled
connection must get.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from acmews.bench.connections import (
    RequestChannel,
    Target,
    ae_create,
    close_all,
    open_client,
)
from acmews.bench.ledger import Result

__all__ = [
    "IdleConfig",
    "IdleCounts",
    "hold",
    "open_concurrency",
    "per_node_concurrency",
    "sample_for",
]

#: connections one process opens at a time at most
MAX_OPEN_CONCURRENCY = 64
#: what all processes together keep in their opening handshake per node: under a node's
#: ``--max-handshakes-per-address`` (128), since every bench connection comes from one address
HANDSHAKES_PER_NODE = 96
#: sampled connections one process registers and subscribes at a time
SUBSCRIBE_CONCURRENCY = 16
#: opened connections between two progress reports
PROGRESS_EVERY = 100
#: errors kept (the first ones; the rest are counted)
KEEP_ERRORS = 5


def open_concurrency(nodes: int, processes: int) -> int:
    """Connections each of ``processes`` opens at a time (to all nodes together); to one
    node it opens at most :func:`per_node_concurrency` at a time."""
    return max(1, min(MAX_OPEN_CONCURRENCY, HANDSHAKES_PER_NODE * nodes // processes))


def per_node_concurrency(processes: int) -> int:
    """Connections each of ``processes`` opens to one node at a time: so that no node sees
    more than :data:`HANDSHAKES_PER_NODE` opening handshakes from the bench at once, even
    when it answers slower than the others (the slots of a process would otherwise pile up
    on it: a 100,000-connection run had 146 refused at 128 unfinished handshakes)."""
    return max(1, HANDSHAKES_PER_NODE // processes)


#: open files a bench process needs besides its connections (the interpreter, the admin's
#: connection, pipes)
FILES_RESERVE = 64


def open_files_limit() -> int:
    """How many files a process of the bench may open: the hard limit (it raises its soft
    limit to it, see :func:`raise_open_files`)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_open_files(needed: int) -> None:
    """The soft open-file limit raised to ``needed`` (at most to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def processes_needed(connections: int, limit: int) -> int:
    """Processes to hold ``connections`` when each may open ``limit`` files."""
    per = max(1, limit - FILES_RESERVE)
    return -(-connections // per)


def sample_for(sample: Sequence[int], first: int, count: int) -> list[int]:
    """The sampled connection numbers in ``[first, first + count)``: one process's share."""
    return [k for k in sample if first <= k < first + count]


@dataclass
class IdleConfig:
    """What one process holds (sent to a worker as JSON): connection ``k`` (counted over
    every process) goes to ``urls[k % len(urls)]`` as originator ``Cidle{tag}x{k}``."""

    urls: list[str]
    serialization: str
    tag: str
    connections: int
    timeout: float
    first_connection: int = 0
    concurrency: int = MAX_OPEN_CONCURRENCY
    #: connections opened to one node at a time
    per_node: int = HANDSHAKES_PER_NODE
    #: the connection numbers (of this process's share) registered as AEs and subscribed
    sample: list[int] = field(default_factory=list)
    #: the container they subscribe to, and the parent of their AEs
    container: str = ""
    parent: str = "cse-in"
    #: ``con`` of the contentInstance whose notification counts
    marker: str = ""
    kind: str = "idle"

    def url_for(self, k: int) -> str:
        return self.urls[k % len(self.urls)]

    def originator_for(self, k: int) -> str:
        return f"Cidle{self.tag}x{k}"


@dataclass
class IdleCounts:
    """One process's counts, kept in :attr:`Result.extra` under ``idle:FIRST``."""

    asked: int = 0
    opened: int = 0
    failed: int = 0
    open_at_end: int = 0
    sampled: int = 0
    subscribed: int = 0
    notified: int = 0

    @classmethod
    def total(cls, extra: dict[str, Any]) -> IdleCounts:
        """The sum over every process's counts in a merged result's ``extra``."""
        total = cls()
        for key, counts in extra.items():
            if key.startswith("idle:"):
                for name, value in counts.items():
                    setattr(total, name, getattr(total, name) + value)
        return total


def subscription(container: str, k: int, aei: str) -> dict[str, Any]:
    """AE ``aei``'s subscription ``sub{k}`` to the contentInstances made in ``container``."""
    return {
        "op": 1,
        "to": container,
        "ty": 23,
        "pc": {
            "m2m:sub": {
                "rn": f"sub{k}",
                "nu": [aei],
                "enc": {"net": [3], "chty": [4]},
                "nct": 1,
            }
        },
    }


def marked(msg: dict[str, Any], marker: str) -> bool:
    """Whether a server request is the notification of the contentInstance ``marker``."""
    sgn = (msg.get("pc") or {}).get("m2m:sgn") or {}
    rep = (sgn.get("nev") or {}).get("rep") or {}
    return bool(marker) and (rep.get("m2m:cin") or {}).get("con") == marker


async def hold(
    reactor: Any,
    cfg: IdleConfig,
    go: Callable[[], Deferred[None]],
    progress: Callable[[int], None] | None = None,
    wall: Callable[[], float] = time.time,
) -> Result:
    """Open the connections (``cfg.concurrency`` at a time; a failure is counted, not fatal:
    how many a server takes is what is measured), register and subscribe the sample, wait
    for ``go()`` (the coordinator holds them meanwhile and then creates the contentInstance),
    wait up to ``cfg.timeout`` for the sample's notifications, close everything.

    The result: ``completions`` are the wall-clock times the notifications came, ``errors``
    the first few failures, ``extra["idle:FIRST"]`` the :class:`IdleCounts`."""
    raise_open_files(cfg.connections + FILES_RESERVE)
    counts = IdleCounts(asked=cfg.connections, sampled=len(cfg.sample))
    result = Result(connections=0, started=wall())
    channels: dict[int, RequestChannel] = {}
    errors: list[str] = []
    arrived: dict[int, float] = {}
    all_notified: Deferred[None] = Deferred()
    expected: set[int] = set()

    def error(text: str) -> None:
        if len(errors) < KEEP_ERRORS:
            errors.append(text)

    def on_request(k: int) -> Callable[[dict[str, Any]], None]:
        def handle(msg: dict[str, Any]) -> None:
            if not marked(msg, cfg.marker):
                return  # a verification request
            if k in arrived:
                result.duplicates += 1
                return
            arrived[k] = wall()
            if expected <= arrived.keys() and not all_notified.called:
                all_notified.callback(None)

        return handle

    slots = DeferredSemaphore(cfg.concurrency)
    node_slots = {url: DeferredSemaphore(cfg.per_node) for url in cfg.urls}

    async def open_one(k: int) -> None:
        await slots.acquire()
        node = node_slots[cfg.url_for(k)]
        await node.acquire()
        try:
            aei = cfg.originator_for(k)
            client = await open_client(
                reactor, Target.parse(cfg.url_for(k)), cfg.serialization, aei, cfg.timeout
            )
            channel = RequestChannel(client, cfg.serialization, reactor, aei, cfg.timeout)
            channel.on_request = on_request(k)
            channels[k] = channel
            counts.opened += 1
            if progress is not None and counts.opened % PROGRESS_EVERY == 0:
                progress(counts.opened)
        except Exception as e:
            counts.failed += 1
            error(str(e) or type(e).__name__)
        finally:
            node.release()
            slots.release()

    first = cfg.first_connection
    await DeferredList(
        [Deferred.fromCoroutine(open_one(k)) for k in range(first, first + cfg.connections)]
    )
    if progress is not None:
        progress(counts.opened)
    subscribing = DeferredSemaphore(SUBSCRIBE_CONCURRENCY)

    async def subscribe(k: int) -> None:
        channel = channels.get(k)
        if channel is None:
            return  # never opened: counted there
        await subscribing.acquire()
        try:
            aei = cfg.originator_for(k)
            resp = await channel.request(ae_create(cfg.parent, aei))
            if resp.get("rsc") != 2001:
                error(f"AE CREATE for {aei}: rsc {resp.get('rsc')}")
                return
            aei = resp.get("pc", {}).get("m2m:ae", {}).get("aei") or aei
            resp = await channel.request(subscription(cfg.container, k, aei))
            if resp.get("rsc") != 2001:
                error(f"subscription for {aei}: rsc {resp.get('rsc')}")
                return
            expected.add(k)
            counts.subscribed += 1
        except Exception as e:
            error(f"subscribing {cfg.originator_for(k)}: {e}")
        finally:
            subscribing.release()

    if cfg.container:
        await DeferredList([Deferred.fromCoroutine(subscribe(k)) for k in cfg.sample])
    try:
        await go()
        if expected and not (expected <= arrived.keys()):
            all_notified.addTimeout(cfg.timeout, reactor)
            try:
                await all_notified
            except Exception:
                pass  # counted below
        counts.open_at_end = sum(c.client.is_open for c in channels.values())
    finally:
        await close_all(reactor, [c.client for c in channels.values()])
    counts.notified = len(expected & arrived.keys())
    result.ended = wall()
    result.connections = counts.opened
    result.sent = counts.subscribed
    result.answered = counts.notified
    result.unanswered = counts.subscribed - counts.notified
    result.completions = [arrived[k] for k in sorted(expected & arrived.keys())]
    result.errors = errors
    result.extra[f"idle:{first}"] = asdict(counts)
    return result
