"""Credentials the CSE shows when it delivers to a poa: per URL prefix, an ``Authorization``.

A file of lines ``URL CREDENTIAL``: ``URL`` is a ``ws``/``wss``/``http``/``https`` URL (its
scheme, host and port must match exactly; its path is a prefix of the target's path), and
``CREDENTIAL`` is ``user:password`` (HTTP Basic) or ``Bearer TOKEN``. ``#`` starts a comment
line. The longest matching prefix wins; a URL no line matches is sent without credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from acmews.handshake import basic_authorization, bearer_authorization

__all__ = ["OutboundCredentials", "read_outbound_credentials"]

_DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


def _key(url: str) -> tuple[str, str, int, str] | None:
    """``(scheme, host, port, path)`` of ``url``, or None when it is not one we deliver to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path or "/"


def _path_prefix(prefix: str, path: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


class OutboundCredentials:
    """``Authorization`` values by URL prefix."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        """
        @param entries: ``(url, authorization)`` pairs; ``authorization`` is the header's
            whole value (``Basic ...``, ``Bearer ...``).
        @raise ValueError: for a URL that is not ws/wss/http/https with a host.
        """
        self._entries: list[tuple[tuple[str, str, int, str], str]] = []
        for url, authorization in entries:
            key = _key(url)
            if key is None:
                raise ValueError(f"not a ws/wss/http/https URL with a host: {url[:100]!r}")
            self._entries.append((key, authorization))
        # longest path first: the most specific line wins
        self._entries.sort(key=lambda entry: -len(entry[0][3]))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authorization(self, url: str) -> str | None:
        """The ``Authorization`` to send to ``url``, or None."""
        key = _key(url)
        if key is None:
            return None
        for (scheme, host, port, path), value in self._entries:
            if (scheme, host, port) == key[:3] and _path_prefix(path, key[3]):
                return value
        return None

    def headers(self, url: str) -> dict[str, str]:
        """``{"Authorization": ...}`` for ``url``, or ``{}``."""
        value = self.authorization(url)
        return {"Authorization": value} if value is not None else {}


def read_outbound_credentials(lines: Iterable[str]) -> OutboundCredentials:
    """Parse a credentials file (see the module's docstring).

    @raise ValueError: naming the line (never its secret) for a malformed one.
    """
    entries = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        url, _, credential = line.partition(" ")
        credential = credential.strip()
        if credential.lower().startswith("bearer "):
            try:
                value = bearer_authorization(credential[7:])
            except ValueError:
                message = f"line {number}: a Bearer token without spaces is needed"
                raise ValueError(message) from None
        else:
            user, colon, password = credential.partition(":")
            if not user or not colon:
                raise ValueError(f"line {number}: 'URL user:password' or 'URL Bearer TOKEN'")
            value = basic_authorization(user, password)
        if _key(url) is None:
            raise ValueError(f"line {number}: not a ws/wss/http/https URL with a host")
        entries.append((url, value))
    return OutboundCredentials(entries)
