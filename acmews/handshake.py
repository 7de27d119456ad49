"""What the opening handshake tells an authorizer, and how it refuses (pure values)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ORIGIN_HEADER",
    "Authorization",
    "Handshake",
    "HandshakeRefused",
    "basic_authorization",
    "bearer_authorization",
    "claimed",
    "origin_header",
]

#: header names arrive lower-cased
ORIGIN_HEADER = "x-m2m-origin"


@dataclass(frozen=True, slots=True)
class Handshake:
    """One opening handshake, as an :class:`~acmews.interfaces.IHandshakeAuthorizer` sees it."""

    #: the request's headers, names lower-cased (a repeated header's values joined by ", ")
    headers: Mapping[str, str]
    #: the peer's address (an ``IAddress``: ``IPv4Address``, ``UNIXAddress``, ...)
    peer: Any
    #: the peer's TLS certificate (pyOpenSSL ``X509``) on a TLS connection that has one
    peer_certificate: Any = None
    #: the request path, e.g. ``/``
    path: str = "/"
    #: the subprotocol chosen for the connection, e.g. ``oneM2M.json``
    subprotocol: str = ""


@dataclass(frozen=True, slots=True)
class Authorization:
    """An authorizer's decision for one handshake, carried by the connection it opens."""

    #: the originator the connection speaks for; None: unbound, it may only register an AE
    originator: str | None = None
    #: the credential that authenticated it (``basic:USER``, ``bearer:<hash>``), or None; an
    #: AE registered on the connection belongs to it
    owner: str | None = None
    #: the peer proved its originator: a credential or a certificate names it explicitly, or
    #: this side dialled the peer. Only a verified CSE-ID may act as a CSE (register a
    #: remoteCSE, relay notifications) beyond what ``--allowed-csr-originators`` allows.
    verified: bool = False
    #: which AE-IDs the credential may hold (an AE it registers must get one of them); None:
    #: any
    may_hold: Callable[[str], bool] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, decision: Authorization | str | None) -> Authorization:
        """A decision as an Authorization: a plain originator (or None) is shorthand for one
        without an owner."""
        return decision if isinstance(decision, Authorization) else cls(decision)


@dataclass(slots=True)
class HandshakeRefused(Exception):
    """Refuse a connection with an HTTP ``status`` and ``reason`` (raised or returned)."""

    status: int
    reason: str
    #: extra response headers, e.g. ``WWW-Authenticate`` for a 401
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def origin_header(headers: Mapping[str, str]) -> str | None:
    """The originator named by ``X-M2M-Origin``, None without the header; refuses (400) an
    empty value or one that names several originators."""
    origin = headers.get(ORIGIN_HEADER)
    if origin is None:
        return None
    origin = origin.strip()
    if not origin or "," in origin or " " in origin:
        raise HandshakeRefused(400, f"invalid X-M2M-Origin header: {origin[:200]!r}")
    return origin


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` value a client sends for HTTP Basic.

    @raise ValueError: for an empty user name or one with ``:`` (Basic cannot carry it).
    """
    if not user or ":" in user:
        raise ValueError("a user name must not be empty or contain ':'")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def bearer_authorization(token: str) -> str:
    """The ``Authorization`` value a client sends for a Bearer token (stripped).

    @raise ValueError: for an empty token or one with white space inside.
    """
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("a token must not be empty or contain white space")
    return "Bearer " + token


def claimed(headers: Mapping[str, str]) -> str:
    """Who a handshake claims to be, for a log line: its user (HTTP Basic) or that it showed
    a token, and the originator it asked for; never a password or a token. What the peer
    wrote is quoted and cut short."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
            who = f"user {user[:100]!r}"
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            who = "an unreadable Basic credential"
    elif scheme == "bearer":
        who = "a Bearer token"
    elif scheme:
        who = f"an Authorization of kind {scheme[:20]!r}"
    else:
        who = "no credential"
    origin = headers.get(ORIGIN_HEADER)
    return f"{who}, originator {origin[:100]!r}" if origin is not None else f"{who}, no originator"
