"""How many connections a server accepts: in all, per client address, and still in their
opening handshake per client address (a hostile run held 15,000 half-open handshakes from one
client, and ~19,400 idle connections until the process ran out of file descriptors)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from acmews.logs import Budget, Logger

__all__ = ["Admission", "ConnectionLimits"]


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
