"""``--processes``: load worker processes, each with its own reactor.

Both ends of the line protocol between the coordinator and a worker: :class:`Worker` and
:func:`run_workers` in the coordinator, :func:`worker_main` in the child (which is started as
``python -m acmews.bench --worker CONFIG_JSON``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.python.failure import Failure

from acmews.bench.connections import BenchError
from acmews.bench.idle import IdleConfig, hold
from acmews.bench.ledger import Result
from acmews.bench.load import LoadConfig, run_load

__all__ = [
    "Worker",
    "run_workers",
    "worker_main",
]


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


async def run_workers(
    reactor: Any,
    cfgs: Sequence[LoadConfig | IdleConfig],
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


def worker_main(cfg_json: str) -> int:
    """Child process: connect, print ``ready``, wait for ``go`` on stdin, run, print result."""
    from twisted.internet import reactor, stdio
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    raw = json.loads(cfg_json)
    cfg: LoadConfig | IdleConfig = (
        IdleConfig(**raw) if raw.get("kind") == "idle" else LoadConfig(**raw)
    )
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
            if isinstance(cfg, IdleConfig):
                result = await hold(reactor, cfg, ready, lambda n: emit(f"progress {n}"))
            else:
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
