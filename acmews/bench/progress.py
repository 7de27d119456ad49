"""What a run is doing while it runs, on a stream of its own (stderr), so that a 20 s run is
not silent and the report on stdout stays clean for a pipe."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """On a terminal, one status line rewritten in place at most 4 times a second; elsewhere
    (a log, a pipe) one line every 5 seconds. ``stream`` None: silent."""

    #: seconds between two updates on a terminal, and elsewhere
    TERMINAL_EVERY = 0.25
    LINE_EVERY = 5.0

    def __init__(
        self,
        stream: TextIO | None,
        prog: str = "bench",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.prog = prog
        self.clock = clock
        self.terminal = _isatty(stream)
        self._started = clock()
        self._last = -float("inf")
        self._shown = False  # a status line is on the terminal

    def say(self, text: str) -> None:
        """A line of its own, always shown (what starts now); restarts the clock."""
        if self.stream is None:
            return
        self.clear()
        self.stream.write(f"{self.prog}: {text}\n")
        self.stream.flush()
        self._started = self.clock()
        self._last = self._started

    def update(self, text: str) -> None:
        """Where the run is (``1200/5000 answered``), with the seconds since ``say``; shown
        when its time has come."""
        if self.stream is None:
            return
        now = self.clock()
        every = self.TERMINAL_EVERY if self.terminal else self.LINE_EVERY
        if now - self._last < every:
            return
        self._last = now
        line = f"{self.prog}: {text}, {now - self._started:.0f} s"
        if self.terminal:
            self.stream.write(f"\r{line}\x1b[K")
            self._shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the status line off the terminal (before the report is printed)."""
        if self.stream is not None and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False
