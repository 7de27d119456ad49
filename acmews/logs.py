"""Logging that a peer cannot turn against the disk.

- :class:`Logger`: Twisted's, except that every value a log event carries is cut to
  :data:`MAX_VALUE` characters (a 1 MiB ``to`` must not become 3 MB of log).
- :class:`Budget`: lets a repeated event through a few times per period, then counts it, and
  says how many were left out the next time one gets through (or when asked to summarise).
- :func:`bounded`: a log observer for ``twistd --logger=acmews.logs.bounded``: a text log
  file that rotates at 10 MB and keeps 5 old files (twistd's own ``--logfile`` rotates at
  1 MB and keeps every old file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.logger import Logger as _TwistedLogger
from twisted.python.logfile import LogFile

__all__ = ["MAX_VALUE", "Budget", "Logger", "bounded", "short"]

#: the most characters of one value that reach a log event
MAX_VALUE = 300


def short(value: Any, limit: int = MAX_VALUE) -> Any:
    """``value``, or a truncated text of it when it would print longer than ``limit``."""
    if isinstance(value, str | bytes):
        if len(value) <= limit:
            return value
        return f"{value[:limit]!r}... ({len(value)} in all)"
    if isinstance(value, list | tuple | dict | set | frozenset):
        items = list(value)[:50] if len(value) > 50 else value
        text = repr(items)
        if items is value and len(text) <= limit:
            return value
        return f"{text[:limit]}... ({len(value)} items)"
    return value


class Logger(_TwistedLogger):
    """A Twisted :class:`~twisted.logger.Logger` whose event values are cut to size."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        for key, value in kwargs.items():
            if not key.startswith("log_") and isinstance(
                value, str | bytes | list | tuple | dict | set | frozenset
            ):
                kwargs[key] = short(value)
        super().emit(level, format, **kwargs)


class Budget:
    """At most ``count`` events per ``period`` seconds get through; the rest are counted.

    ``allow(now)`` says whether to log this one; ``take_suppressed()`` returns (and resets) how
    many were left out, so that the next line that gets through can say so.
    """

    __slots__ = ("_count", "_left", "_period", "_suppressed", "_window")

    def __init__(self, count: int = 10, period: float = 60.0) -> None:
        self._count = count
        self._period = period
        self._window = float("-inf")
        self._left = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window >= self._period:
            self._window = now
            self._left = self._count
        if self._left > 0:
            self._left -= 1
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        suppressed = self._suppressed
        self._suppressed = 0
        return suppressed


def bounded(
    path: str | None = None, rotate_length: int = 10_000_000, max_files: int = 5
) -> ILogObserver:
    """A text log observer writing to ``path`` (``$ACMEWS_LOGFILE``, else ``acmews.log``),
    rotated at ``rotate_length`` bytes with at most ``max_files`` old files kept. Meant for
    ``twistd --logger=acmews.logs.bounded acmews``."""
    path = path or os.environ.get("ACMEWS_LOGFILE") or "acmews.log"
    directory, name = os.path.split(os.path.abspath(path))
    logfile = LogFile(name, directory, rotateLength=rotate_length, maxRotatedFiles=max_files)
    format_event: Callable[[dict[str, Any]], str | None] = formatEventAsClassicLogText
    return FileLogObserver(logfile, format_event)  # type: ignore[arg-type]  # a file-like
