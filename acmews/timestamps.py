"""oneM2M timestamps (``YYYYMMDDThhmmss[,ffffff]``, UTC) and expiry arithmetic. Pure functions."""

from __future__ import annotations

import calendar
import functools
import time

__all__ = ["Timestamps", "expiry_delay", "parse_expiry", "parse_timestamp"]


class Timestamps:
    """Formats oneM2M timestamps (``YYYYMMDDThhmmss,ffffff``, UTC), caching the seconds part.

    Many responses fall in the same second, so ``strftime`` runs about once a second.
    """

    __slots__ = ("_base", "_whole")

    def __init__(self) -> None:
        self._whole = -1
        self._base = ""

    def format(self, seconds: float) -> str:
        whole = int(seconds // 1)
        micro = int((seconds - whole) * 1_000_000)
        if micro > 999_999:  # float rounding
            micro = 999_999
        if whole != self._whole:
            self._base = time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole))
            self._whole = whole
        return f"{self._base},{micro:06d}"


@functools.lru_cache(maxsize=256)
def parse_timestamp(value: str) -> float:
    """A oneM2M timestamp to seconds since the epoch; ValueError if it is not one."""
    main, _, fraction = value.partition(",")
    if len(main) != 15 or main[8] != "T" or not (main[:8] + main[9:]).isdigit():
        raise ValueError(f"not a oneM2M timestamp: {value!r}")
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a oneM2M timestamp: {value!r}")
    # by hand: time.strptime costs about 10 us, and every notification's rqet is parsed
    month, day = int(main[4:6]), int(main[6:8])
    hour, minute, second = int(main[9:11]), int(main[11:13]), int(main[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        raise ValueError(f"not a oneM2M timestamp: {value!r}")
    whole = calendar.timegm((int(main[:4]), month, day, hour, minute, second, 0, 0, 0))
    return whole + (float("0." + fraction) if fraction else 0.0)


def expiry_delay(value: str | int | None, now: float) -> float | None:
    """Seconds from ``now`` until ``value`` (a timestamp, or a duration in ms), or None.

    Used for ``rqet``/``rset``: an absolute timestamp, or a relative time in milliseconds
    given as an integer or a string of digits. Unreadable values give None (no limit).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value / 1000.0
    if value.isdigit():
        return int(value) / 1000.0
    try:
        return parse_timestamp(value) - now
    except ValueError:
        return None


def parse_expiry(rqet: object, now: float) -> float | None:
    """The absolute expiry (clock seconds) of a ``rqet``, or None if it is absent or unreadable.

    ``rqet`` is a UTC timestamp ``YYYYMMDDThhmmss[,ffffff]`` or a duration in milliseconds (an
    int or a string of digits), which counts from ``now``. Timestamps assume the clock counts
    seconds since the epoch, as the reactor does.
    """
    if not isinstance(rqet, str | int):
        return None
    delay = expiry_delay(rqet.strip() if isinstance(rqet, str) else rqet, now)
    return None if delay is None else now + delay
