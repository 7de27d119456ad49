"""Bounds on password guessing and on the work it costs a server.

A hostile run guessed 2,682 passwords a second against one user, and queued scrypt checks
without limit (a login waited behind a thousand attackers'). :class:`Backoff` counts failed
logins per user name and per client address and says how long one must wait;
:class:`CheckSlots` bounds the password checks waiting or running, per address and in all.
Both are used by :class:`acmews.auth.CredentialAuthorizer`, with :class:`LoginLimits`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

__all__ = ["Backoff", "CheckSlots", "LoginLimits"]


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """How failed logins are slowed down, and how many password checks may wait."""

    #: failed logins for one user name, or from one client address, before its attempts are
    #: refused (429 with ``Retry-After``) without being checked
    free_failures: int = 5
    #: seconds refused after that many failures; each further failure doubles it
    first_delay: float = 1.0
    #: the longest refusal, in seconds
    max_delay: float = 60.0
    #: seconds without a failure after which a user name or an address starts afresh
    forget_after: float = 900.0
    #: user names and addresses remembered, each (beyond, the oldest are forgotten)
    max_entries: int = 10_000
    #: expensive password checks (scrypt) waiting or running for one client address: more
    #: are refused (503 with ``Retry-After``), so that others still get theirs done
    checks_per_address: int = 4
    #: expensive password checks waiting or running in all; more are refused (503)
    checks: int = 64

    def __post_init__(self) -> None:
        for name in ("free_failures", "max_entries", "checks_per_address", "checks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        for name in ("first_delay", "max_delay", "forget_after"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class _Failures:
    count: int
    #: when the last failure was
    last: float
    #: until when attempts are refused
    until: float


class Backoff:
    """Failures per key (a user name, a client address): after ``free_failures`` of them the
    key waits ``first_delay``, doubled by each further failure up to ``max_delay``. Memory
    is bounded: at most ``max_entries`` keys, long keys by their digest."""

    def __init__(self, limits: LoginLimits, clock: IReactorTime) -> None:
        self._limits = limits
        self._clock = clock
        self._entries: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def wait(self, key: str) -> float:
        """Seconds before ``key`` may try again (0: now)."""
        entry = self._current(_short(key))
        if entry is None:
            return 0.0
        return max(0.0, entry.until - self._clock.seconds())

    def failed(self, key: str) -> None:
        key = _short(key)
        limits = self._limits
        now = self._clock.seconds()
        entry = self._current(key)
        if entry is None:
            entry = self._entries[key] = _Failures(0, now, now)
        else:
            self._entries.move_to_end(key)
        entry.count += 1
        entry.last = now
        beyond = entry.count - limits.free_failures
        if beyond >= 0:
            entry.until = now + min(limits.first_delay * 2 ** min(beyond, 32), limits.max_delay)
        while len(self._entries) > limits.max_entries:
            self._entries.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._entries.pop(_short(key), None)

    def _current(self, key: str) -> _Failures | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock.seconds() - entry.last >= self._limits.forget_after:
            del self._entries[key]
            return None
        return entry


def _short(key: str) -> str:
    """``key``, or its digest when long: a user name may be as long as a request's head."""
    if len(key) <= 64:
        return key
    return "#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class CheckSlots:
    """Checks in progress, per key (a client address) and in all, each bounded."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self.taken = 0
        self._per_key: dict[str, int] = {}

    def take(self, key: str) -> bool:
        """A slot for ``key``, or False when it or everybody has all theirs."""
        held = self._per_key.get(key, 0)
        if held >= self.per_key or self.taken >= self.total:
            return False
        self._per_key[key] = held + 1
        self.taken += 1
        return True

    def give_back(self, key: str) -> None:
        self.taken -= 1
        held = self._per_key.get(key, 0) - 1
        if held > 0:
            self._per_key[key] = held
        else:
            self._per_key.pop(key, None)

    def held(self, key: str) -> int:
        return self._per_key.get(key, 0)
