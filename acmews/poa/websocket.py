"""The ``ws``/``wss`` poa connector: open a connection, send, await the answer, close."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from acmews.codec import SHORT_NAMES
from acmews.errors import RequestTimeout, TargetNotReachable
from acmews.interfaces import IConnection, IPoaConnector
from acmews.logs import Logger
from acmews.poa.steps import reason as _reason
from acmews.primitive import Request, Response

__all__ = ["CLOSE_WAIT", "ConnectFunction", "WebSocketConnector"]

#: the longest wait for a closed poa connection to be gone (Autobahn's close handshake
#: timeout, 1 s by default, drops it sooner)
CLOSE_WAIT = 5.0

#: ``(url, originator, subprotocols) -> Deferred[IConnection]``: opens an outbound WebSocket
#: that sends ``X-M2M-Origin: originator`` and offers ``subprotocols`` in order.
ConnectFunction = Callable[[str, str, Sequence[str]], Deferred[IConnection]]


@implementer(IPoaConnector)
class WebSocketConnector:
    """``ws``/``wss`` poa: open a connection, send, await the response, close.

    ``connect`` is injected (the client layer provides the real one); it must send
    ``X-M2M-Origin: cse_id`` and offer ``serializations`` in order. ``ws://default`` never
    reaches it: the chain skips that entry. ``timeout`` covers connecting and the answer
    together. The connection serves this one request and is closed with 1000 afterwards,
    whatever happened; the step ends only once the socket is gone (see :meth:`_close`).

    ``connect`` must abort the attempt when its Deferred is cancelled (the TCP connect
    stopped, a connection made meanwhile aborted, as :func:`acmews.client.connect` does): the
    chain's per-host slot is freed when the step ends, and must then stand for no socket.
    """

    log = Logger()
    schemes: Sequence[str] = ("ws", "wss")

    def __init__(
        self,
        connect: ConnectFunction,
        cse_id: str,
        clock: IReactorTime,
        serializations: Sequence[str] = ("oneM2M.json", "oneM2M.cbor"),
    ) -> None:
        self._connect = connect
        self.cse_id = cse_id
        self._clock = clock
        self.subprotocols: tuple[str, ...] = tuple(SHORT_NAMES.get(s, s) for s in serializations)

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send(url, request, timeout))

    async def _send(self, url: str, request: Request, timeout: float) -> Response:
        # one budget for connecting and answering, as the chain allows a step ``timeout``
        deadline = self._clock.seconds() + timeout
        try:
            connecting = self._connect(url, self.cse_id, self.subprotocols)
            connecting.addTimeout(timeout, self._clock)
            connection = await connecting
        except CancelledError:
            raise
        except Exception as e:
            reason = (
                f"no connection within {timeout:g} s"
                if isinstance(e, DeferTimeoutError)
                else _reason(e)
            )
            self.log.debug("cannot connect to {url}: {reason}", url=url, reason=reason)
            # refused or silent: the same words for the client (no port-scan oracle); the
            # chain's log line has the detail (the cause)
            raise TargetNotReachable(f"{url}: cannot connect", rqi=request.rqi) from e
        self.log.debug("connected to {url} ({peer})", url=url, peer=connection.peer)
        try:
            remaining = max(deadline - self._clock.seconds(), 0.001)
            return await connection.request(request, remaining)
        except DeferTimeoutError:
            raise RequestTimeout(f"{url}: no response in time", rqi=request.rqi) from None
        finally:
            await self._close(connection, url)

    async def _close(self, connection: IConnection, url: str) -> None:
        """Close ``connection`` and wait until it is gone (the close handshake, one round
        trip): the chain frees this step's per-host slot only then, so a peer that answers at
        once but never completes the close cannot pile up connections. Autobahn drops a
        connection whose close is not answered within its close handshake timeout;
        :data:`CLOSE_WAIT` bounds the wait should that timer be off. Cancelled meanwhile (the
        CSE stopping), it stops waiting."""
        closed = connection.when_closed()
        try:
            connection.close(1000, "poa delivery done")
        except Exception:
            self.log.failure("closing the connection to {url} failed", url=url)
            return
        closed.addTimeout(CLOSE_WAIT, self._clock)
        try:
            await closed
        except (CancelledError, DeferTimeoutError):
            self.log.debug("{url}: not waiting any longer for the close", url=url)
