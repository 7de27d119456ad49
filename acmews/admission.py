"""How many connections a server accepts: in all, per client address, and still in their
opening handshake per client address (a hostile run held 15,000 half-open handshakes from one
client, and ~19,400 idle connections until the process ran out of file descriptors)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from acmews.logs import Budget, Logger

__all__ = ["FILE_RESERVE", "Admission", "ConnectionLimits", "fit_open_files"]

#: open files a server needs besides its connections and its outbound deliveries: the store,
#: the log, the listening sockets, the registrar link
FILE_RESERVE = 64

_log = Logger()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Beyond any of these a new TCP connection is aborted at once (logged, summed up).

    ``per_address`` is below a third of ``total`` by default: two addresses holding all
    theirs cannot lock out a third (with 12,000 of 20,000, two could). A server behind a
    proxy sees every client at the proxy's address and needs ``per_address`` at ``total``:
    allowed, with a warning when the server starts (:meth:`lockout`).
    """

    total: int = 20_000
    per_address: int = 6_000
    handshaking_per_address: int = 128

    def __post_init__(self) -> None:
        for name in ("total", "per_address", "handshaking_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    def lockout(self) -> str | None:
        """Why two client addresses could take every connection, or None if they cannot."""
        if 2 * self.per_address < self.total:
            return None
        return (
            f"two client addresses with {self.per_address} connections each would take all "
            f"{self.total}: keep the connections per address under half of all"
        )


class Admission:
    """The counts behind :class:`ConnectionLimits`, kept by the server factory."""

    log = Logger()

    def __init__(self, limits: ConnectionLimits, clock: IReactorTime) -> None:
        self.limits = limits
        self._clock = clock
        self.total = 0
        self._per_address: dict[str, int] = {}
        self._handshaking: dict[str, int] = {}
        self._log_budget = Budget(10, 60.0)
        lockout = limits.lockout()
        if lockout is not None:
            self.log.warn("connection limits: {lockout}", lockout=lockout)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, or say (and log) why not."""
        limits = self.limits
        reason = None
        if self.total >= limits.total:
            reason = f"{limits.total} connections in all"
        elif self._per_address.get(address, 0) >= limits.per_address:
            reason = f"{limits.per_address} connections from one address"
        elif self._handshaking.get(address, 0) >= limits.handshaking_per_address:
            reason = f"{limits.handshaking_per_address} unfinished handshakes from one address"
        if reason is not None:
            if self._log_budget.allow(self._clock.seconds()):
                left_out = self._log_budget.take_suppressed()
                self.log.warn(
                    "refused a connection from {address}: already {reason}"
                    + (" ({left_out} more refusals not logged)" if left_out else ""),
                    address=address,
                    reason=reason,
                    left_out=left_out,
                )
            return False
        self.total += 1
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._handshaking[address] = self._handshaking.get(address, 0) + 1
        return True

    def handshake_done(self, address: str) -> None:
        _decrement(self._handshaking, address)

    def closed(self, address: str, handshaking: bool) -> None:
        self.total -= 1
        _decrement(self._per_address, address)
        if handshaking:
            _decrement(self._handshaking, address)

    def from_address(self, address: str) -> int:
        return self._per_address.get(address, 0)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def fit_open_files(limits: ConnectionLimits, reserve: int) -> ConnectionLimits:
    """``limits`` fitted to the process's open-file limit (``RLIMIT_NOFILE``), which must
    hold ``limits.total`` connections and ``reserve`` more files: a hostile run held ~19,400
    connections until the process ran out of file descriptors (nothing more accepted, and no
    file opened). The soft limit is raised as far as needed, up to the hard one; where that
    is not enough, fewer connections are accepted (the per-address limits in proportion),
    with a warning saying both numbers and how to raise the limit.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover  # not on Unix: nothing to read
        return limits
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limits.total + reserve
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    target = needed if hard == resource.RLIM_INFINITY or hard >= needed else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            _log.warn(
                "cannot raise the open-file limit to {target}: {error}", target=target, error=e
            )
            target = soft
        else:
            _log.info("open-file limit raised from {soft} to {target}", soft=soft, target=target)
    if target >= needed:
        return limits
    total = max(1, target - reserve)
    per_address = max(1, limits.per_address * total // limits.total)
    fitted = ConnectionLimits(
        total, per_address, max(1, min(limits.handshaking_per_address, per_address))
    )
    _log.warn(
        "{wanted} connections need {needed} open files, but the limit is {limit}: accepting "
        "at most {total} ({per_address} per address); raise the limit (ulimit -n, or "
        "LimitNOFILE= for a systemd service) to accept more",
        wanted=limits.total,
        needed=needed,
        limit=target,
        total=total,
        per_address=per_address,
    )
    return fitted
