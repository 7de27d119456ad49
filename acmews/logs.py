"""Logging that a peer cannot turn against the disk.

- :class:`Logger`: Twisted's, except that every value a log event carries is cut to
  :data:`MAX_VALUE` characters (a 1 MiB ``to`` must not become 3 MB of log), and that debug
  events are dropped unless :func:`set_debug` turned them on (``twistd`` writes every level
  it is given; a peer can make debug lines plentiful).
- :class:`Budget`: lets a repeated event through a few times per period, then counts it, and
  says how many were left out the next time one gets through (or when asked to summarise).
- :class:`Throttle`: a :class:`Budget` per key (a delivery target, say) for a bounded number
  of keys, whose left-out lines are summed up when their period is over.
- :func:`bounded`: a log observer for ``twistd --logger=acmews.logs.bounded``: a text log
  file that rotates at 10 MB and keeps 5 old files (twistd's own ``--logfile`` rotates at
  1 MB and keeps every old file).
- :func:`json`: the same, one JSON object per line (``twistd --logger=acmews.logs.json``),
  for log shippers: ``time``, ``level``, ``namespace``, ``message`` (the formatted text), the
  event's own keys, and ``failure`` (a traceback) when there is one.
"""

from __future__ import annotations

import json as _json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.logger import Logger as _TwistedLogger
from twisted.python.logfile import LogFile

__all__ = [
    "MAX_VALUE",
    "Budget",
    "Logger",
    "Throttle",
    "bounded",
    "format_json",
    "json",
    "set_debug",
    "short",
]

#: the most characters of one value that reach a log event
MAX_VALUE = 300

_debug = False


def set_debug(enabled: bool) -> None:
    """Let the debug events of every :class:`Logger` through (off by default)."""
    global _debug
    _debug = enabled


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
        if level is LogLevel.debug and not _debug:
            return
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

    def idle(self, now: float) -> bool:
        """Nothing left out, and its period over: it may be forgotten."""
        return not self._suppressed and now - self._window >= self._period


class Throttle:
    """Lines about many keys (delivery targets, say), each key within its own
    :class:`Budget` of ``count`` lines per ``period``. What a budget leaves out is summed up:
    in the next line about that key that gets through, and (with ``timer``) in one line per
    key once the period is over, should none get through. At most ``keys`` keys are tracked
    at once; past that, new keys share one budget (:data:`OTHERS`), so that a peer naming
    ever new targets cannot grow the table.
    """

    #: the key of every key past the bound
    OTHERS = "(other targets)"

    def __init__(
        self,
        log: _TwistedLogger,
        clock: IReactorTime,
        what: str,
        count: int = 5,
        period: float = 60.0,
        keys: int = 256,
        timer: bool = True,
    ) -> None:
        """
        @param what: what is counted, for the summing up (``delivery failures``).
        @param timer: sum up on a timer too (running only while something is left out);
            whoever asks for one must call :meth:`stop`.
        """
        self._log = log
        self._clock = clock
        self.what = what
        self._count = count
        self._period = period
        self._keys = keys
        self._timer = timer
        self._budgets: dict[str, Budget] = {}
        self._summary: IDelayedCall | None = None

    def emit(
        self, key: str, emit: Callable[..., None], format: str, *args: Any, **kwargs: Any
    ) -> None:
        """``emit(format, *args, **kwargs)`` if ``key``'s budget lets it through, else
        count it."""
        now = self._clock.seconds()
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) >= self._keys:
                self._forget_idle(now)
            if len(self._budgets) >= self._keys:
                key = self.OTHERS
                budget = self._budgets.get(key)
            if budget is None:
                budget = self._budgets[key] = Budget(self._count, self._period)
        if not budget.allow(now):
            if self._timer and self._summary is None:
                self._summary = self._clock.callLater(self._period, self._summarise)
            return
        left_out = budget.take_suppressed()
        if left_out:
            format += " ({left_out} more {throttled} for it were not logged)"
            kwargs.update(left_out=left_out, throttled=self.what)
        emit(format, *args, **kwargs)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, budget in self._budgets.items() if budget.idle(now)]:
            del self._budgets[key]

    def _summarise(self) -> None:
        self._summary = None
        self.summarise()

    def summarise(self) -> None:
        """Log what was left out, one line per key, and forget the idle keys."""
        for key, budget in self._budgets.items():
            left_out = budget.take_suppressed()
            if left_out:
                self._log.info(
                    "{count} more {what} for {key} were not logged (at most {limit} lines "
                    "every {period:g} s)",
                    count=left_out,
                    what=self.what,
                    key=key,
                    limit=self._count,
                    period=self._period,
                )
        self._forget_idle(self._clock.seconds())

    def stop(self) -> None:
        """Cancel the timer; sum up what was left out so far."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        self.summarise()


def _rotating(path: str | None, rotate_length: int, max_files: int) -> Any:
    """``path`` (``$ACMEWS_LOGFILE``, else ``acmews.log``) rotated at ``rotate_length``
    bytes with at most ``max_files`` old files kept; ``-``: standard output."""
    path = path or os.environ.get("ACMEWS_LOGFILE") or "acmews.log"
    if path == "-":
        return sys.stdout
    directory, name = os.path.split(os.path.abspath(path))
    return LogFile(name, directory, rotateLength=rotate_length, maxRotatedFiles=max_files)


def bounded(
    path: str | None = None, rotate_length: int = 10_000_000, max_files: int = 5
) -> ILogObserver:
    """A text log observer writing to ``path`` (``$ACMEWS_LOGFILE``, else ``acmews.log``;
    ``-``: standard output), rotated at ``rotate_length`` bytes with at most ``max_files``
    old files kept. Meant for ``twistd --logger=acmews.logs.bounded acmews``."""
    format_event: Callable[[dict[str, Any]], str | None] = formatEventAsClassicLogText
    return FileLogObserver(_rotating(path, rotate_length, max_files), format_event)


#: the most characters of a JSON line's ``message`` and of its ``failure``, and the most keys
#: of an event a line carries (Twisted's and Autobahn's events are not cut by :class:`Logger`)
MAX_MESSAGE = 2000
MAX_FAILURE = 8000
MAX_KEYS = 40


def _plain(value: Any) -> Any:
    """``value`` as JSON takes it, cut to :data:`MAX_VALUE`."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return short(value)
    return short(str(short(value)))


def format_json(event: dict[str, Any]) -> str:
    """One log event as one line of JSON: ``time`` (ISO 8601, UTC), ``level``,
    ``namespace``, ``message``, the event's own keys (cut to size, at most
    :data:`MAX_KEYS`) and ``failure`` when it carries one."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0.0, UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace") or "",
        "message": (formatEvent(event) or "")[:MAX_MESSAGE],
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()[-MAX_FAILURE:]
        except Exception:  # a failure that cannot print itself must not lose the line
            record["failure"] = repr(failure)[:MAX_FAILURE]
    keys = 0
    for key, value in event.items():
        if key.startswith(("log_", "_")) or key in record or key in ("format", "isError"):
            continue
        if keys == MAX_KEYS:
            break
        keys += 1
        record[key] = _plain(value)
    return _json.dumps(record, ensure_ascii=False) + "\n"


def json(
    path: str | None = None, rotate_length: int = 10_000_000, max_files: int = 5
) -> ILogObserver:
    """A log observer writing one JSON object per line (:func:`format_json`) to ``path``,
    with :func:`bounded`'s file and bounds. Meant for ``twistd --logger=acmews.logs.json
    acmews``."""
    return FileLogObserver(_rotating(path, rotate_length, max_files), format_json)
