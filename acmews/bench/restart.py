"""How long a restart takes with a large store: ``python -m acmews.bench.restart``.

It writes a SQLite store of ``--instances`` contentInstances (spread over ``--containers``
containers) through the embedded CSE, then starts ``twistd acmews`` on that file (127.0.0.1,
a free port) and prints how long it took to listen and to answer a RETRIEVE of the newest
instance of the first container. The file goes in a temporary directory, removed at the end
unless ``--keep DIR`` names one to keep it in. With ``--store postgresql://...`` it fills
that database instead (it must be empty: a new database, or a schema of its own).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer

from acmews.codes import Operation
from acmews.cse import CSE, CSEConfig
from acmews.errors import TargetNotReachable
from acmews.interfaces import IRequestSender
from acmews.primitive import Request, Response
from acmews.stores import open_store

__all__ = ["fill", "main"]

_LISTENING = re.compile(r"listening on tcp:127\.0\.0\.1:(\d+)")


@implementer(IRequestSender)
class _Nowhere:
    """The filling CSE sends nothing (no subscriptions); if it did, nothing arrives."""

    def send(
        self, target: str, request: Request, poa: Sequence[str] = (), store: bool = False
    ) -> Deferred[Response]:
        return Deferred.fromCoroutine(_unreachable(target))

    def send_then(
        self,
        target: str,
        request: Request,
        then: Callable[[Any], object],
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> None:
        self.send(target, request, poa, store).addBoth(then)


async def _unreachable(target: str) -> Response:
    raise TargetNotReachable(f"{target}: the filling CSE sends nothing")


def fill(path: str, instances: int, containers: int = 10, size: int = 40) -> int:
    """Write a store at ``path`` (a SQLite file, or a postgresql:// URL) with ``containers``
    containers under the CSEBase (``c0``, ``c1``, ...) and ``instances`` contentInstances of
    about ``size`` bytes spread over them, as the CSE writes them (transactions of 2,000
    requests); the number of resources."""
    disk = Clock()  # transactions run inline, when this clock is advanced
    clock = Clock()
    clock.advance(time.time())
    store = open_store(_url(path), disk, run=lambda f, *a: maybeDeferred(f, *a))
    cse = CSE(CSEConfig(), _Nowhere(), clock, store.resources)
    connection: Any = None
    failed: list[Any] = []

    def check(response: Response) -> None:
        if response.rsc != 2001:
            failed.append(response)

    def create(to: str, ty: int, pc: dict[str, Any]) -> None:
        request = Request(Operation.CREATE, to, "fill", "4", "CAdmin", ty=ty, pc=pc)
        answer = cse.handle_request(request, connection)
        if isinstance(answer, Deferred):
            answer.addCallback(check)
        else:
            check(answer)

    for c in range(containers):
        create("cse-in", 3, {"m2m:cnt": {"rn": f"c{c}", "mni": instances + 1, "mbs": 2**62}})
    for n in range(instances):
        con = f"value {n} ".ljust(size, "x")
        create(f"cse-in/c{n % containers}", 4, {"m2m:cin": {"con": con, "cnf": "text/plain:0"}})
        if n % 2000 == 1999:
            disk.advance(0)
    disk.advance(0)
    if failed:
        raise RuntimeError(f"could not fill the store: {failed[0]!r}")
    count = len(store.resources)  # type: ignore[arg-type]
    store.service.stopService()  # type: ignore[no-untyped-call]
    disk.advance(0)
    return count


def _url(path: str) -> str:
    return path if path.startswith(("postgresql://", "postgres://")) else f"sqlite:{path}"


def time_start(path: str, timeout: float = 60.0) -> tuple[float, float, str]:
    """Start ``twistd acmews`` on ``path``; seconds until it listened and until it answered
    a RETRIEVE of ``cse-in/c0/la`` (``acmews request``, whose own start is included), and
    that answer."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    command = [twistd, "-n", "--pidfile=", "acmews", "--listen", "tcp:0:interface=127.0.0.1"]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--ping-interval", "0", "--store", _url(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = None
        said: list[str] = []
        for line in process.stdout:  # bounded: twistd exits or listens
            said = [*said[-5:], line.rstrip()]
            found = _LISTENING.search(line)
            if found:
                port = found.group(1)
                break
            if time.monotonic() - started > timeout:
                break
        if port is None:
            raise RuntimeError("twistd acmews did not start listening: " + " | ".join(said))
        listening = time.monotonic() - started
        answer = subprocess.run(
            [
                *(sys.executable, "-m", "acmews", "request", "--from", "CAdmin"),
                *(f"ws://127.0.0.1:{port}", "retrieve", "cse-in/c0/la"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        answered = time.monotonic() - started
        return listening, answered, answer.stdout.strip()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m acmews.bench.restart",
        description="Time a restart of twistd acmews on a store (SQLite, or PostgreSQL with "
        "--store) of many instances.",
    )
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--keep", metavar="DIR", help="write the store here and keep it")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="postgresql://[USER@]HOST[:PORT]/DBNAME: fill this empty database instead of a "
        "SQLite file (and keep it)",
    )
    args = parser.parse_args(argv)
    if args.instances < 1 or args.containers < 1:
        parser.error("--instances and --containers must be positive")
    if args.store is not None and not args.store.startswith(("postgresql://", "postgres://")):
        parser.error("--store must be postgresql://...")
    directory = args.keep or tempfile.mkdtemp(prefix="acmews-restart-")
    os.makedirs(directory, exist_ok=True)
    path = args.store or os.path.join(directory, "acmews.db")
    try:
        began = time.monotonic()
        count = fill(path, args.instances, args.containers)
        written = time.monotonic() - began
        if args.store:
            from acmews.pgstore import redact

            print(f"store {redact(path)}: {count} resources, written in {written:.1f} s")
        else:
            size = os.path.getsize(path) / 1e6
            print(f"store {path}: {count} resources, {size:.1f} MB, written in {written:.1f} s")
        listening, answered, answer = time_start(path)
        print(f"twistd acmews listening after {listening:.2f} s")
        print(f"RETRIEVE cse-in/c0/la answered after {answered:.2f} s: {answer[:120]}")
        return 0 if '"rsc":2000' in answer else 1
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
