"""oneM2M timestamps (``YYYYMMDDThhmmss[,ffffff]``, UTC) and expiry arithmetic. Pure functions."""

from __future__ import annotations

import calendar
import functools
import re
import time

__all__ = ["Timestamps", "expiry_delay", "parse_duration", "parse_expiry", "parse_timestamp"]


class Timestamps:
    """Formats oneM2M timestamps (``YYYYMMDDThhmmss,ffffff``, UTC), caching the seconds part.

    Many responses fall in the same second, so ``strftime`` runs about once a second. Two
    seconds are kept: a request often formats "now" and a time far ahead (a default ``et``, a
    notification's ``rqet``) in turn, and one cached second would be rebuilt at each call.
    """

    __slots__ = ("_base", "_other_base", "_other_whole", "_whole")

    def __init__(self) -> None:
        self._whole = self._other_whole = -1
        self._base = self._other_base = ""

    def format(self, seconds: float) -> str:
        whole = int(seconds // 1)
        micro = int((seconds - whole) * 1_000_000)
        if micro > 999_999:  # float rounding
            micro = 999_999
        if whole != self._whole:
            if whole == self._other_whole:
                base = self._other_base
            else:
                base = time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole))
            # the one just used goes first; the other is kept
            self._other_whole, self._other_base = self._whole, self._base
            self._whole, self._base = whole, base
        return f"{self._base},{micro:06d}"


@functools.lru_cache(maxsize=256)
def parse_timestamp(value: str) -> float:
    """A oneM2M timestamp to seconds since the epoch; ValueError if it is not one. (The
    same string again costs a cache lookup: the notifications of a fan-out share theirs.)"""
    main, _, fraction = value.partition(",")
    seconds = _parse_seconds(main)
    if seconds is None or (fraction and not fraction.isdigit()):
        raise ValueError(f"not a oneM2M timestamp: {value!r}")
    # the fraction apart: timestamps with microseconds (a notification's rqet) are all
    # different, their seconds seldom
    return seconds + int(fraction) / 10 ** len(fraction) if fraction else seconds


@functools.lru_cache(maxsize=256)
def _parse_seconds(main: str) -> int | None:
    """``YYYYMMDDThhmmss`` to seconds since the epoch; None if it is not that."""
    if len(main) != 15 or main[8] != "T" or not (main[:8] + main[9:]).isdigit():
        return None
    # by hand: time.strptime costs about 10 us
    month, day = int(main[4:6]), int(main[6:8])
    hour, minute, second = int(main[9:11]), int(main[11:13]), int(main[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    return calendar.timegm((int(main[:4]), month, day, hour, minute, second, 0, 0, 0))


_NUMBER = r"(\d{1,12}(?:[.,]\d{1,9})?)"
_DURATION = re.compile(
    rf"P(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?"
)
#: seconds per unit of an ISO 8601 duration; a year and a month have no fixed length, so (as
#: the reference implementations do) a year counts 365 days and a month 30
_UNITS = (365 * 86400.0, 30 * 86400.0, 7 * 86400.0, 86400.0, 3600.0, 60.0, 1.0)


@functools.lru_cache(maxsize=64)
def parse_duration(value: str) -> float:
    """An ISO 8601 duration (``PT2S``, ``P1DT2H30M``, ``PT0.5S``) in seconds; ValueError if
    it is not one (a ``T`` with nothing after it, or no part at all, is none)."""
    match = _DURATION.fullmatch(value)
    if match is None or value.endswith(("P", "T")):
        raise ValueError(f"not an ISO 8601 duration: {value!r}")
    return sum(
        float(part.replace(",", ".")) * unit
        for part, unit in zip(match.groups(), _UNITS, strict=True)
        if part is not None
    )


def expiry_delay(value: str | int | None, now: float) -> float | None:
    """Seconds from ``now`` until ``value`` (a timestamp, or a relative time), or None.

    Used for ``rqet``/``rset``/``oet`` (TS-0004's m2m:absRelTimestamp): an absolute timestamp,
    or a relative time: milliseconds given as an integer or a string of digits, or an ISO 8601
    duration (``PT2S``). Unreadable values give None (no limit).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value / 1000.0
    if value.isdigit():
        return int(value) / 1000.0
    try:
        if value[:1] == "P":
            return parse_duration(value)
        return parse_timestamp(value) - now
    except ValueError:
        return None


def parse_expiry(rqet: object, now: float) -> float | None:
    """The absolute expiry (clock seconds) of a ``rqet``, or None if it is absent or unreadable.

    ``rqet`` is a UTC timestamp ``YYYYMMDDThhmmss[,ffffff]`` or a duration (milliseconds as an
    int or a string of digits, or ISO 8601 like ``PT2S``), which counts from ``now``.
    Timestamps assume the clock counts seconds since the epoch, as the reactor does.
    """
    if not isinstance(rqet, str | int):
        return None
    delay = expiry_delay(rqet.strip() if isinstance(rqet, str) else rqet, now)
    return None if delay is None else now + delay
