"""Handshake authorizers: who may open a connection, and for which originator."""

from __future__ import annotations

from zope.interface import implementer

from acmews.handshake import Handshake, origin_header
from acmews.interfaces import IHandshakeAuthorizer

__all__ = ["DefaultAuthorizer"]


@implementer(IHandshakeAuthorizer)
class DefaultAuthorizer:
    """The binding's own rules, with no credentials: ``X-M2M-Origin`` names the originator
    (400 for an empty or multi-valued header); no header leaves the connection unbound, so it
    may only register an AE. Any claim is accepted, as ACME does."""

    def authorize(self, handshake: Handshake) -> str | None:
        return origin_header(handshake.headers)

    def registered(self, handshake: Handshake, originator: str) -> None:
        """Nothing to remember: without credentials any claim is accepted."""

    def credential_of(self, handshake: Handshake) -> None:
        """No credentials."""
        return None
