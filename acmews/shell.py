"""``acmews shell URL``: an interactive session on one connection.

Each line read is one request, written as ``acmews request`` takes it without the URL
(``retrieve cse-in``, ``create cse-in --ty cnt --pc '{"m2m:cnt": {}}'``), sent on the one
connection; its response is printed with its status (``2001 Created {...}``). Every request
the CSE sends meanwhile (a notification) is printed as it arrives (``notification {...}``) and
answered 2000. ``wait [N] [SECONDS]`` waits for N more notifications, so that a script can
make something happen and see it; ``help`` and ``quit`` do what they say. The lines come from
stdin (a prompt on a terminal) or, in a program, from any :class:`acmews.command.LineSource`.
"""

from __future__ import annotations

import argparse
import queue
import shlex
import sys
import threading
from typing import Any, TextIO

from twisted.internet.defer import Deferred, DeferredQueue, TimeoutError

from acmews.codes import rsc_text
from acmews.command import (
    LineSource,
    OneLineParser,
    Stay,
    UsageError,
    check_request,
    connect_for,
    format_primitive,
    isatty,
    request_arguments,
    send,
)
from acmews.errors import OneM2MError
from acmews.primitive import Request, Response

__all__ = ["HELP", "StdinLines", "run_shell"]

HELP = """\
OP TARGET [--ty N] [--pc JSON|@FILE] [--rcn N] [--fc NAME=VALUE]...
                    send a request: OP is create, retrieve, update, delete or notify
wait [N] [SECONDS]  wait for N more notifications (default 1, within 10 seconds)
help                this text
quit                end the session (so does the end of the input, Ctrl-D)
"""

#: seconds ``wait`` waits when no SECONDS are given
WAIT_SECONDS = 10.0


class Arrivals:
    """The notifications that arrived, and those ``wait`` has already waited for."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.count = 0
        self.taken = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def arrived(self) -> None:
        self.count += 1
        for entry in list(self._waiters):
            if entry[0] <= self.count:
                self._waiters.remove(entry)
                entry[1].callback(None)

    async def wait(self, more: int, seconds: float) -> bool:
        """True once ``more`` notifications beyond those already waited for have arrived;
        False when ``seconds`` pass first."""
        needed = self.taken + more
        if self.count < needed:
            d: Deferred[None] = Deferred()
            entry = (needed, d)
            self._waiters.append(entry)
            d.addTimeout(seconds, self.reactor)
            try:
                await d
            except TimeoutError:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self.taken = self.count
                return False
        self.taken = needed
        return True


class StdinLines:
    """Lines of stdin, read one at a time when asked for (with a prompt on a terminal) by a
    thread of its own: the reactor never waits on a read, and a line is read only once the
    previous one is done, so the prompt comes after its output."""

    def __init__(self, reactor: Any, stdin: TextIO | None = None) -> None:
        self.reactor = reactor
        self.stdin = sys.stdin if stdin is None else stdin
        self.prompt = "acmews> " if isatty(self.stdin) else None
        self._asks: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lines: DeferredQueue[str | None] = DeferredQueue()
        # a daemon thread: a read that never returns does not keep the process alive
        threading.Thread(target=self._read, name="acmews-shell-stdin", daemon=True).start()

    def get(self) -> Deferred[str | None]:
        self._asks.put(None)
        return self._lines.get()

    def _read(self) -> None:
        if self.prompt is not None:
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:  # pragma: no cover - not on every platform
                pass
        while True:
            self._asks.get()
            line: str | None
            try:
                if self.prompt is not None and self.stdin is sys.stdin:
                    line = input(self.prompt)
                else:
                    line = self.stdin.readline() or None
            except (EOFError, OSError, ValueError):
                line = None
            self.reactor.callFromThread(self._lines.put, line)
            if line is None:
                return


def _line_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="", add_help=False)
    request_arguments(parser)
    return parser


async def run_shell(
    reactor: Any,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stop: Deferred[None] | None,
    lines: LineSource | None,
) -> int:
    """The session: returns its exit status (see ``acmews shell --help``)."""
    pretty = isatty(out)
    arrivals = Arrivals(reactor)

    def on_request(request: Request) -> Response:
        out.write("notification " + format_primitive(request, pretty) + "\n")
        out.flush()
        arrivals.arrived()
        return Response(2000, request.rqi, request.rvi)

    client = await connect_for(reactor, args, args.originator, err, on_request, args.timeout)
    stay = Stay(client, args, err, "acmews shell")
    if args.register is not None and not await stay.register(args.register):
        await stay.end(2)
        return await stay.finished
    source = StdinLines(reactor) if lines is None else lines
    stay.on_stop(reactor, stop)
    parser = _line_parser()
    failed = [False]
    reading: list[Deferred[str | None]] = []

    async def execute(line: str) -> bool:
        """One line; False when it says to end the session."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            err.write(f"acmews shell: {e}\n")
            failed[0] = True
            return True
        if not words:
            return True
        if words[0] in ("quit", "exit"):
            return False
        if words[0] == "help":
            out.write(HELP)
            out.flush()
            return True
        if words[0] == "wait":
            await wait(words[1:])
            return True
        try:
            if "@-" in words:
                raise UsageError("--pc @- is not for the shell: its stdin is the session")
            request = parser.parse_args(words)
            check_request(request, needs_from=False)
        except UsageError as e:
            err.write(f"acmews shell: {e} (type help for the lines it takes)\n")
            failed[0] = True
            return True
        try:
            response = await send(client, request, args.timeout)
        except OneM2MError as e:
            err.write(f"acmews shell: {rsc_text(e.rsc)}: {e.reason}\n")
            failed[0] = True
            return True
        failed[0] = failed[0] or not 2000 <= response.rsc < 3000
        separator = "\n" if pretty else " "
        out.write(rsc_text(response.rsc) + separator + format_primitive(response, pretty) + "\n")
        out.flush()
        return True

    async def wait(words: list[str]) -> None:
        try:
            more = int(words[0]) if words else 1
            seconds = float(words[1]) if len(words) > 1 else WAIT_SECONDS
            if more < 1 or not seconds > 0 or len(words) > 2:
                raise ValueError
        except ValueError:
            err.write("acmews shell: wait [N] [SECONDS]: N from 1, SECONDS above 0\n")
            failed[0] = True
            return
        if not await arrivals.wait(more, seconds):
            err.write(f"acmews shell: no {more} notifications within {seconds:g} seconds\n")
            failed[0] = True

    async def session() -> None:
        while not stay.finished.called:
            d = source.get()
            reading[:] = [d]
            line = await d
            if line is None or not await execute(line):
                break
        stay.end(1 if failed[0] else 0)

    def broken(failure: Any) -> None:
        if not stay.finished.called:  # not the read cancelled at the end: say what, end
            err.write(f"acmews shell: {failure.getErrorMessage()}\n")
            stay.end(2)

    Deferred.fromCoroutine(session()).addErrback(broken)
    try:
        return await stay.finished
    finally:
        for d in reading:
            if not d.called:
                d.cancel()  # the session ended (stopped, the connection lost) while reading
