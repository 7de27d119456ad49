"""Which hosts the CSE may contact for a poa or an ``nu``, and how many connections at once.

Both are operator policy against server-side request forgery and resource exhaustion: a
registree chooses its own ``poa`` and a subscriber its ``nu``, so without them anyone with an
AE could make the CSE connect to any host and port, as often as it likes.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool

__all__ = [
    "DEFAULT_DENY",
    "DEFAULT_OUTBOUND",
    "DEFAULT_OUTBOUND_PER_HOST",
    "OutboundLimits",
    "TargetDenied",
    "TargetPolicy",
    "system_resolver",
]

#: denied unless the operator says otherwise: link-local addresses, where cloud metadata
#: services live (169.254.169.254 hands out credentials)
DEFAULT_DENY = ("169.254.0.0/16", "fe80::/10")
#: outbound steps (poa, nu deliveries) in flight at once, in all and to one host
DEFAULT_OUTBOUND = 256
DEFAULT_OUTBOUND_PER_HOST = 8

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Deferred[Sequence[str]]]


class TargetDenied(Exception):
    """The policy does not allow contacting this target."""


def _parse(rule: str) -> Network | str:
    rule = rule.strip()
    try:
        return ipaddress.ip_network(rule, strict=False)
    except ValueError:
        if not rule or "/" in rule or ":" in rule:
            raise ValueError(f"{rule!r} is neither a CIDR network nor a host pattern") from None
        return rule.lower()


class TargetPolicy:
    """``allow``/``deny`` rules: CIDR networks (``10.0.0.0/8``, ``::1/128``) or host name
    patterns (``*.example.com``). A target must match an ``allow`` rule when there are any,
    and must match no ``deny`` rule. Host names are resolved (with ``resolve``) when a CIDR
    rule must judge them; every address they resolve to must pass.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = DEFAULT_DENY,
        resolve: Resolver | None = None,
    ) -> None:
        self.allow = [_parse(r) for r in allow]
        self.deny = [_parse(r) for r in deny]
        self._resolve = resolve
        self._cidr = any(not isinstance(r, str) for r in (*self.allow, *self.deny))

    @staticmethod
    def _host_matches(rules: Sequence[Network | str], host: str) -> bool:
        return any(isinstance(r, str) and fnmatch.fnmatchcase(host, r) for r in rules)

    @staticmethod
    def _in_networks(rules: Sequence[Network | str], address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(not isinstance(r, str) and ip.version == r.version and ip in r for r in rules)

    def _judge(self, host: str, addresses: Sequence[str]) -> None:
        allow, deny = self.allow, self.deny
        permitted = self._host_matches(allow, host) or (
            addresses and all(self._in_networks(allow, a) for a in addresses)
        )
        if allow and not permitted:
            raise TargetDenied(f"{host} is not an allowed target")
        if self._host_matches(deny, host) or any(self._in_networks(deny, a) for a in addresses):
            raise TargetDenied(f"{host} is a denied target")

    async def check(self, url: str) -> None:
        """Raise :class:`TargetDenied` unless ``url``'s host may be contacted."""
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            raise TargetDenied(f"{url!r} has no readable host") from None
        if not host:
            raise TargetDenied(f"{url!r} has no host")
        try:
            addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = await self._addresses(host) if self._cidr else []
        self._judge(host, addresses)

    async def _addresses(self, host: str) -> Sequence[str]:
        if self._resolve is None:
            raise TargetDenied(f"{host}: no resolver to judge it by address")
        try:
            addresses = list(await self._resolve(host))
        except Exception:
            addresses = []
        if not addresses:
            raise TargetDenied(f"{host} does not resolve")
        return addresses


class OutboundLimits:
    """At most ``total`` outbound steps in flight, ``per_host`` to one host; the rest wait
    their turn (a waiting step still counts against its own timeout)."""

    def __init__(
        self, total: int = DEFAULT_OUTBOUND, per_host: int = DEFAULT_OUTBOUND_PER_HOST
    ) -> None:
        if total < 1 or per_host < 1:
            raise ValueError("outbound limits must be positive")
        self.total = total
        self.per_host = per_host
        self._all = DeferredSemaphore(total)
        self._hosts: dict[str, DeferredSemaphore] = {}

    def in_flight(self) -> int:
        return self.total - self._all.tokens

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            host = ""
        per_host = self._hosts.get(host)
        if per_host is None:
            per_host = self._hosts[host] = DeferredSemaphore(self.per_host)
        await per_host.acquire()
        try:
            await self._all.acquire()
            try:
                yield
            finally:
                self._all.release()
        finally:
            per_host.release()
            if per_host.tokens == self.per_host and not per_host.waiting:
                self._hosts.pop(host, None)


def _lookup(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def system_resolver(reactor: Any) -> Resolver:
    """Every address of a host name, from the system resolver, off the reactor thread."""

    def resolve(host: str) -> Deferred[Sequence[str]]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), _lookup, host)

    return resolve
