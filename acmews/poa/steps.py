"""What the chain and the connectors share: URL tests, failure reasons, and one awaited step."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IReactorTime

from acmews.errors import OneM2MError, RequestTimeout
from acmews.primitive import Response

__all__ = [
    "DEFAULT_POA",
    "await_step",
    "is_default_poa",
    "is_url",
    "reason",
    "scheme_of",
    "split_ct",
    "target_key",
    "unwrap_timeout",
]

DEFAULT_POA = "ws://default"


def is_url(target: str) -> bool:
    return "://" in target


def scheme_of(url: str) -> str:
    """The lower-case scheme of ``url`` ('' for something that is not a URL)."""
    return url.split("://", 1)[0].strip().lower() if is_url(url) else ""


def target_key(target: str) -> str:
    """Whose log budget a delivery to ``target`` counts against: a URL's host (however many
    URLs on it an attacker names), else the originator."""
    if is_url(target):
        try:
            return (urlsplit(target).hostname or target).lower()
        except ValueError:
            return target
    return target


def split_ct(uri: str) -> tuple[str, str | None]:
    """``uri`` without its serialization indication (``?ct=cbor``), and that indication.

    TS-0004 7.5.1.2.2 step 2.5: a notification URI may end in ``?ct=json`` (or ``cbor``);
    the notification is serialized so, and the indication is not part of the target.
    """
    base, sep, query = uri.partition("?")
    if not sep or "ct=" not in query:
        return uri, None
    ct = None
    kept = []
    for part in query.split("&"):
        if part.startswith("ct="):
            ct = part[3:]
        else:
            kept.append(part)
    return (f"{base}?{'&'.join(kept)}" if kept else base), ct


def is_default_poa(url: str) -> bool:
    return url.strip().rstrip("/").lower() == DEFAULT_POA


def reason(error: BaseException) -> str:
    """A one-line description of a failed step, for logs and ``m2m:dbg``."""
    if isinstance(error, OneM2MError):
        return f"{int(error.rsc)} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def unwrap_timeout(error: BaseException) -> BaseException:
    """Twisted's ``addTimeout`` error becomes our 4008, so every caller sees one type."""
    if isinstance(error, DeferTimeoutError):
        return RequestTimeout("no response in time")
    return error


async def await_step(step: Deferred[Response], timeout: float, clock: IReactorTime) -> Response:
    """Await one step with a guard timeout, so that a step that never answers cannot stall."""
    step.addTimeout(timeout, clock)
    try:
        return await step
    except DeferTimeoutError:
        raise RequestTimeout(f"no response within {timeout:g} s") from None
