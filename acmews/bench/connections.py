"""Connections to the server under test: pre-serialised requests, opening a lean client, and
:class:`RequestChannel` for one request at a time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cbor2
import orjson
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime

from acmews.bench.leanclient import HandshakeError, LeanWebSocketClient
from acmews.bench.ledger import RQI_DIGITS, Ledger

__all__ = [
    "RVI",
    "SUBPROTOCOLS",
    "BenchError",
    "RequestChannel",
    "Target",
    "Template",
    "ae_create",
    "close_all",
    "open_client",
    "response_frame",
]


SUBPROTOCOLS = {"json": "oneM2M.json", "cbor": "oneM2M.cbor"}
RVI = "4"


class BenchError(Exception):
    """The run could not be done (connection refused, setup failed): exit code 2."""


# ---------------------------------------------------------------------------------------------
# pre-serialised requests


def _dumps(obj: Any, serialization: str) -> bytes:
    return orjson.dumps(obj) if serialization == "json" else cbor2.dumps(obj)


def _loads(data: bytes, serialization: str) -> Any:
    return orjson.loads(data) if serialization == "json" else cbor2.loads(data)


class Template:
    """A request serialised once; ``build(n)`` splices in the rqi ``prefix + n`` (fixed width)."""

    def __init__(self, request: dict[str, Any], serialization: str, prefix: str) -> None:
        width = len(prefix) + RQI_DIGITS
        placeholder = secrets.token_hex(width)[:width]
        data = _dumps({**request, "rqi": placeholder}, serialization)
        at = data.index(placeholder.encode())
        if data.count(placeholder.encode()) != 1:
            raise ValueError("rqi placeholder is not unique")
        self._head = data[:at] + prefix.encode()
        self._tail = data[at + len(placeholder) :]

    def build(self, n: int) -> bytes:
        return b"%s%010d%s" % (self._head, n, self._tail)


def response_frame(rqi: Any, serialization: str, rsc: int = 2000) -> bytes:
    return _dumps({"rsc": rsc, "rqi": rqi, "rvi": RVI}, serialization)


# ---------------------------------------------------------------------------------------------
# connections


@dataclass
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise BenchError(f"only ws:// URLs are supported, not {url!r}")
        if not parts.hostname:
            raise BenchError(f"no host in {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path or "/")


async def open_client(
    reactor: Any,
    target: Target,
    serialization: str,
    originator: str | None,
    timeout: float,
) -> LeanWebSocketClient:
    """Connect and finish the opening handshake (errors become :class:`BenchError`)."""
    client = LeanWebSocketClient(
        host=target.host,
        port=target.port,
        path=target.path,
        subprotocol=SUBPROTOCOLS[serialization],
        originator=originator,
        clock=reactor,
        handshake_timeout=timeout,
    )
    endpoint = TCP4ClientEndpoint(reactor, target.host, target.port, timeout=max(1, int(timeout)))
    where = f"ws://{target.host}:{target.port}{target.path}"
    try:
        await connectProtocol(endpoint, client)  # type: ignore[no-untyped-call]
        await client.opened
    except HandshakeError as e:
        raise BenchError(f"{where}: {e.reason}") from None
    except Exception as e:
        raise BenchError(f"{where}: cannot connect: {e}") from None
    return client


async def close_all(reactor: Any, clients: Sequence[LeanWebSocketClient], wait: float = 2) -> None:
    for c in clients:
        c.close()
    pending = [c.closed for c in clients if not c.closed.called]
    if pending:
        d: Deferred[Any] = DeferredList(pending)
        d.addTimeout(wait, reactor)
        try:
            await d
        except TimeoutError:
            for c in clients:
                if c.transport is not None and not c.closed.called:
                    c.transport.abortConnection()  # type: ignore[attr-defined]


class RequestChannel:
    """One request at a time and its answer (for set-up, clean-up and fanout), plus answers
    to the server's own requests (verification requests, NOTIFYs) with rsc 2000."""

    def __init__(
        self,
        client: LeanWebSocketClient,
        serialization: str,
        clock: IReactorTime,
        originator: str | None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.serialization = serialization
        self.clock = clock
        self.originator = originator
        self.timeout = timeout
        self.ledger = Ledger(f"s{secrets.token_hex(3)}-")
        self._pending: dict[str, Deferred[dict[str, Any]]] = {}
        self.on_request: Callable[[dict[str, Any]], None] = lambda request: None
        client.on_message = self._on_message

    def request(self, obj: dict[str, Any]) -> Deferred[dict[str, Any]]:
        n = self.ledger.send(time.perf_counter())
        rqi = self.ledger.rqi(n)
        primitive = {"rqi": rqi, "rvi": RVI, **obj}
        if self.originator and "fr" not in primitive:
            primitive["fr"] = self.originator
        if not self.client.is_open:
            return fail(BenchError(f"connection closed ({self.client.close_reason})"))
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[rqi] = d

        def forget(result: Any) -> Any:
            self._pending.pop(rqi, None)
            return result

        d.addTimeout(self.timeout, self.clock)
        d.addBoth(forget)
        self.client.send(_dumps(primitive, self.serialization))
        return d

    def _on_message(self, payload: bytes) -> None:
        try:
            msg = _loads(payload, self.serialization)
        except Exception:
            self.ledger.malformed += 1
            return
        if not isinstance(msg, dict):
            self.ledger.malformed += 1
        elif "rsc" in msg:
            rqi = msg.get("rqi")
            self.ledger.answer(rqi, msg.get("rsc"), time.perf_counter())
            d = self._pending.pop(rqi, None) if isinstance(rqi, str) else None
            if d is not None:
                d.callback(msg)
        elif "op" in msg:
            self.client.send(response_frame(msg.get("rqi"), self.serialization))
            self.on_request(msg)
        else:
            self.ledger.malformed += 1


def ae_create(parent: str, aei: str) -> dict[str, Any]:
    """An AE CREATE asking for the AE-ID ``aei`` (also its resource name)."""
    return {
        "op": 1,
        "to": parent,
        "ty": 2,
        "pc": {
            "m2m:ae": {
                "rn": aei,
                "api": "Nbench",
                "rr": True,
                "srv": [RVI],
                "poa": ["ws://default"],
            }
        },
    }
