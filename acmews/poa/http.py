"""The ``http``/``https`` poa connector: a request as TS-0009 (the oneM2M HTTP binding) maps it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from acmews.codec import CBOR, JSON
from acmews.codes import Operation
from acmews.errors import OneM2MError, RequestTimeout, TargetNotReachable
from acmews.interfaces import ICodec, IPoaConnector
from acmews.logs import Logger
from acmews.poa.credentials import OutboundCredentials
from acmews.poa.steps import split_ct
from acmews.primitive import Request, Response

__all__ = ["AgentClient", "HttpClient", "HttpConnector", "http_url"]

#: the largest HTTP answer body read (the WebSocket message size limit by default)
DEFAULT_MAX_BODY = 1024 * 1024


class HttpClient(Protocol):
    """What the HTTP connector needs: ``request(method, url, headers=, data=)`` firing with a
    ``twisted.web.iweb.IResponse`` (:class:`AgentClient`; in tests a ``treq`` ``StubTreq``)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...


class AgentClient:
    """A plain ``twisted.web.client.Agent``: it follows no redirect and decodes no content
    (treq always inflates gzip, so a 1 MB answer could become 1 GiB on the reactor thread)."""

    def __init__(self, reactor: Any, tls_policy: Any = None) -> None:
        """
        @param tls_policy: an ``IPolicyForHTTPS`` for ``https://`` (a CA of one's own, a client
            certificate); the system's authorities when None.
        """
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

        self._reactor = reactor
        self._agent = Agent(
            reactor,
            contextFactory=tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS(),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        data = kwargs.get("data")
        body = None
        if data is not None:
            body = FileBodyProducer(io.BytesIO(data), cooperator=_cooperator(self._reactor))
        headers = Headers(
            {k.encode(): [v.encode() for v in vs] for k, vs in kwargs["headers"].items()}
        )
        return self._agent.request(method.encode(), url.encode(), headers, body)


def _cooperator(reactor: Any) -> Any:
    from twisted.internet.task import Cooperator

    return Cooperator(scheduler=lambda work: reactor.callLater(0, work))


class _BodyTooLarge(Exception):
    pass


class _BoundedBody(TwistedProtocol):
    """Collects a response body of at most ``limit`` bytes; past it, stops the transfer."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done = True
            self._parts = []
            self._stop_transfer()
            self._finished.errback(_BodyTooLarge(f"answer body over {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._done:
            return
        self._done = True
        if reason is None or isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)

    def stop(self) -> None:
        if not self._done:
            self._done = True
            self._stop_transfer()

    def _stop_transfer(self) -> None:
        transport: Any = self.transport  # an IPushProducer for a response body
        if transport is not None:
            transport.stopProducing()


def read_body(response: Any, limit: int) -> Deferred[bytes]:
    """The body of ``response`` (an ``IResponse``), failing once it passes ``limit`` bytes."""
    reader: _BoundedBody | None = None

    def cancel(d: Deferred[bytes]) -> None:
        if reader is not None:
            reader.stop()

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _BoundedBody(finished, limit)
    response.deliverBody(reader)
    return finished


#: the media type of a body, per codec (TS-0009 6.4.x: application/json, application/cbor)
_MEDIA = {JSON.name: "application/json", CBOR.name: "application/cbor"}

_HTTP_METHODS = {
    Operation.CREATE: "POST",
    Operation.RETRIEVE: "GET",
    Operation.UPDATE: "PUT",
    Operation.DELETE: "DELETE",
    Operation.NOTIFY: "POST",
}


def _header(answer: Any, name: str) -> str | None:
    """The first value of header ``name``, as latin-1 (asked for as bytes: Twisted decodes a
    str name's values as UTF-8, and a peer's bytes need not be)."""
    values = answer.headers.getRawHeaders(name.encode("ascii"))
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _http_path(to: str) -> str:
    """TS-0009 path of a ``to``: CSE-relative ``/x``, SP-relative ``/~/x``, absolute ``/_/x``."""
    if to.startswith("//"):
        return "/_/" + to[2:]
    if to.startswith("/"):
        return "/~" + to
    return "/" + to


def http_url(poa: str, request: Request) -> str:
    """The URL to send ``request`` to: a NOTIFY goes to the poa itself; other operations
    append the ``to`` path when the poa has no path of its own (else the poa is used as is).
    """
    if request.op == Operation.NOTIFY:
        return poa
    parts = urlsplit(poa)
    if parts.path not in ("", "/"):
        return poa
    return urlunsplit(parts._replace(path=_http_path(request.to)))


@implementer(IPoaConnector)
class HttpConnector:
    """``http``/``https`` poa, mapped per TS-0009 (the oneM2M HTTP binding).

    Only ``X-M2M-Origin``, ``X-M2M-RI``, ``X-M2M-RVI``, ``X-M2M-EC`` and the body (``pc``)
    are mapped; other request parameters (``rcn``, ``rqet``, filter criteria, ...) are not
    sent, which is enough for notifications, the case this connector exists for. The body is
    JSON, or CBOR for a URL that asks for it (``?ct=cbor``, a notification URI's
    serialization indication, which is taken off the URL requested).

    Every peer is hostile: an answer counts only when it carries ``X-M2M-RSC`` (anything else,
    a plain web page, a redirect, fails the step with 5103 and nothing of it is relayed); its
    body is read up to ``max_body`` bytes and never decompressed; redirects are not followed.
    """

    log = Logger()
    schemes: Sequence[str] = ("http", "https")

    def __init__(
        self,
        clock: IReactorTime,
        client: HttpClient | None = None,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        credentials: OutboundCredentials | None = None,
    ) -> None:
        """
        @param clock: the reactor (the default client needs one to connect with).
        @param client: sends the HTTP requests; an :class:`AgentClient` when None.
        @param credentials: the ``Authorization`` to send, by poa URL.
        """
        self._client: HttpClient = client if client is not None else AgentClient(clock)
        self._credentials = credentials
        self._clock = clock
        self.max_body = max_body

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send_timed(url, request, timeout))

    async def _send_timed(self, url: str, request: Request, timeout: float) -> Response:
        d = Deferred.fromCoroutine(self._send(url, request))
        d.addTimeout(timeout, self._clock)
        try:
            return await d
        except DeferTimeoutError:
            raise RequestTimeout(
                f"{url}: no HTTP response within {timeout:g} s", rqi=request.rqi
            ) from None

    async def _send(self, url: str, request: Request) -> Response:
        method = _HTTP_METHODS[request.op]
        target = http_url(url, request)
        codec: ICodec = JSON
        if "ct=" in target:
            # a notification URI's serialization indication (TS-0004 7.5.1.2.2 step 2.5):
            # the body is sent so, and the indication is not part of the URL requested
            target, ct = split_ct(target)
            if ct == "cbor":
                codec = CBOR
        media = _MEDIA[codec.name]
        content_type = media
        if request.op == Operation.CREATE and request.ty is not None:
            content_type += f";ty={int(request.ty)}"
        headers = {
            "X-M2M-RI": [request.rqi],
            "X-M2M-RVI": [request.rvi],
            "Content-Type": [content_type],
            "Accept": [media],
            "Accept-Encoding": ["identity"],
        }
        if request.fr is not None:
            headers["X-M2M-Origin"] = [request.fr]
        if request.ec is not None:
            headers["X-M2M-EC"] = [str(request.ec)]
        if self._credentials is not None:
            authorization = self._credentials.authorization(url)
            if authorization is not None:
                headers["Authorization"] = [authorization]
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if request.pc is not None:
            kwargs["data"] = codec.dumps(request.pc)
        try:
            answer = await self._client.request(method, target, **kwargs)
        except CancelledError:
            raise
        except Exception as e:
            # the chain's log line has the detail (the cause); the same words for the client
            raise TargetNotReachable(f"{target}: no answer", rqi=request.rqi) from e
        rsc = self._rsc(answer)
        if isinstance(rsc, str):
            read_body(answer, 0).addErrback(lambda _: None)  # stop the transfer, read nothing
            raise TargetNotReachable(
                f"{target}: not a oneM2M endpoint (HTTP {answer.code}, {rsc})", rqi=request.rqi
            )
        try:
            body = await read_body(answer, self.max_body)
        except CancelledError:
            raise
        except Exception as e:
            raise TargetNotReachable(f"{target}: answer not readable", rqi=request.rqi) from e
        return self._response(answer, rsc, body, request, target)

    @staticmethod
    def _rsc(answer: Any) -> int | str:
        """The answer's ``X-M2M-RSC``, or why there is none to read (a peer's own words, cut
        short: they reach only the log)."""
        raw = _header(answer, "X-M2M-RSC")
        if raw is None:
            return "no X-M2M-RSC"
        try:
            rsc = int(raw.strip())
        except ValueError:
            rsc = 0
        if not 1000 <= rsc <= 6999:  # a oneM2M rsc has four digits
            return f"unreadable X-M2M-RSC {raw[:40]!r}"
        return rsc

    def _response(
        self, answer: Any, rsc: int, body: bytes, request: Request, url: str
    ) -> Response:
        def header(name: str) -> str | None:
            return _header(answer, name)

        pc: Any = None
        if body.strip():
            content_type = (header("Content-Type") or "").lower()
            codec = CBOR if "cbor" in content_type else JSON
            try:
                pc = codec.loads(body)
            except OneM2MError:
                self.log.debug(
                    "{url}: the response body is not {codec}, ignored", url=url, codec=codec.name
                )
        self.log.debug("{url} answered {rsc} (HTTP {code})", url=url, rsc=rsc, code=answer.code)
        return Response(
            rsc,
            header("X-M2M-RI") or request.rqi,
            header("X-M2M-RVI") or request.rvi,
            pc,
        )
