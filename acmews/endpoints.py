"""Server endpoint strings (``tcp:8180:interface=127.0.0.1``), parsed once.

Twisted parses a description when it listens; what ``twistd acmews`` must know before that
(is it valid, does it listen on loopback only, which ``ws://`` URL reaches it, which files make
a TLS endpoint) is read here from one parse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ServerEndpoint", "poa_for_endpoint"]

#: ``:`` separates the parts, ``\\:`` is a colon inside one (an IPv6 interface)
_SEPARATOR = re.compile(r"(?<!\\):")
_LOOPBACK = ("::1", "localhost")


@dataclass(frozen=True, slots=True)
class ServerEndpoint:
    """One server endpoint description, split into its kind, positional and keyword parts."""

    description: str
    #: ``tcp``, ``ssl``, ``unix``, ...
    kind: str
    positional: tuple[str, ...]
    keywords: Mapping[str, str]

    @classmethod
    def parse(cls, description: str) -> ServerEndpoint:
        parts = [p.replace("\\:", ":") for p in _SEPARATOR.split(description)]
        return cls(
            description,
            parts[0],
            tuple(p for p in parts[1:] if "=" not in p),
            dict(p.split("=", 1) for p in parts[1:] if "=" in p),
        )

    @property
    def port(self) -> str:
        """The port as written (``port=`` or the first positional part), or ``""``."""
        return self.keywords.get("port") or (self.positional[0] if self.positional else "")

    @property
    def interface(self) -> str | None:
        return self.keywords.get("interface")

    @property
    def is_tcp(self) -> bool:
        """A TCP endpoint, plain or TLS (one with a port)."""
        return self.kind in ("tcp", "ssl", "tls", "tcp6")

    def problem(self) -> str | None:
        """What is wrong with it, found without listening (None: nothing)."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        if self.is_tcp and (not self.port.isdigit() or int(self.port) > 65535):
            return f"the port must be a number from 0 to 65535, not {self.port!r}"
        try:
            serverFromString(MemoryReactor(), self.description)
        except Exception as e:  # any parse error, a missing certificate file...
            if isinstance(e, OSError) and e.strerror:
                return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
            return str(e) or type(e).__name__
        return None

    @property
    def loopback_only(self) -> bool:
        """Does it listen on a loopback interface only?"""
        host = self.interface
        if host is None:
            return self.kind == "unix"
        return host.startswith("127.") or host in _LOOPBACK

    def poa(self, port: int | None = None) -> str | None:
        """The ``ws://`` or ``wss://`` URL a client would use, or None (not TCP, port 0);
        ``port``: the one actually listened on (for a port 0)."""
        if self.kind not in ("tcp", "ssl", "tls") or not self.port.isdigit():
            return None
        number = str(port) if port is not None else self.port
        if number == "0":
            return None
        host = self.interface or "127.0.0.1"
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "ws" if self.kind == "tcp" else "wss"
        return f"{scheme}://{host}:{number}"

    def endpoint(self, reactor: Any, client_ca: str | None = None) -> Any:
        """The Twisted server endpoint; an ``ssl:`` one that requires a client certificate
        signed by the CA in ``client_ca`` when that is given."""
        from twisted.internet import endpoints

        if client_ca is None or self.kind != "ssl":
            return endpoints.serverFromString(reactor, self.description)
        from twisted.internet.ssl import Certificate, PrivateCertificate

        key_file = self.keywords.get("privateKey", "server.pem")
        cert_file = self.keywords.get("certKey", key_file)
        with open(cert_file, "rb") as f:
            pem = f.read()
        if cert_file != key_file:
            with open(key_file, "rb") as f:
                pem += b"\n" + f.read()
        with open(client_ca, "rb") as f:
            authority = Certificate.loadPEM(f.read())
        return endpoints.SSL4ServerEndpoint(
            reactor,
            int(self.port),
            PrivateCertificate.loadPEM(pem).options(authority),
            backlog=int(self.keywords.get("backlog", 50)),
            interface=self.interface or "",
        )


def poa_for_endpoint(description: str) -> str | None:
    """The ``ws://`` or ``wss://`` URL a client would use for a server endpoint string."""
    return ServerEndpoint.parse(description).poa()
