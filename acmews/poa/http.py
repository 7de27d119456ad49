"""The ``http``/``https`` poa connector: a request as TS-0009 (the oneM2M HTTP binding) maps it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from acmews.codec import JSON
from acmews.codes import RSC, Operation
from acmews.errors import OneM2MError, RequestTimeout, TargetNotReachable
from acmews.interfaces import IPoaConnector
from acmews.logs import Logger
from acmews.poa.steps import reason as _reason
from acmews.primitive import Request, Response

__all__ = ["HttpClient", "HttpConnector", "http_url"]


class HttpClient(Protocol):
    """The part of treq the HTTP connector uses (the ``treq`` module or a ``StubTreq``)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...

    def content(self, response: Any) -> Deferred[bytes]: ...


_HTTP_METHODS = {
    Operation.CREATE: "POST",
    Operation.RETRIEVE: "GET",
    Operation.UPDATE: "PUT",
    Operation.DELETE: "DELETE",
    Operation.NOTIFY: "POST",
}

_HTTP_STATUS_RSC = {400: RSC.BAD_REQUEST, 403: RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 404: RSC.NOT_FOUND}


def _rsc_from_status(status: int) -> int:
    if 200 <= status < 300:
        return RSC.OK
    return _HTTP_STATUS_RSC.get(status, RSC.INTERNAL_SERVER_ERROR)


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
    """``http``/``https`` poa through treq, mapped per TS-0009 (the oneM2M HTTP binding).

    Only ``X-M2M-Origin``, ``X-M2M-RI``, ``X-M2M-RVI`` and the JSON body (``pc``) are mapped;
    other request parameters (``rcn``, ``rqet``, filter criteria, ...) are not sent, which is
    enough for notifications, the case this connector exists for.
    """

    log = Logger()
    schemes: Sequence[str] = ("http", "https")

    def __init__(self, clock: IReactorTime, client: HttpClient | None = None) -> None:
        if client is None:
            import treq  # does not import the reactor; treq uses the global one when called

            client = cast(HttpClient, treq)
        self._client: HttpClient = client
        self._clock = clock

    def send(self, url: str, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send_timed(url, request, timeout))

    async def _send_timed(self, url: str, request: Request, timeout: float) -> Response:
        d = Deferred.fromCoroutine(self._send(url, request))
        d.addTimeout(timeout, self._clock)
        try:
            return await d
        except DeferTimeoutError:
            self.log.info("{url}: no HTTP response within {timeout} s", url=url, timeout=timeout)
            raise RequestTimeout(
                f"{url}: no HTTP response within {timeout:g} s", rqi=request.rqi
            ) from None

    async def _send(self, url: str, request: Request) -> Response:
        method = _HTTP_METHODS[request.op]
        target = http_url(url, request)
        content_type = "application/json"
        if request.op == Operation.CREATE and request.ty is not None:
            content_type += f";ty={int(request.ty)}"
        headers = {
            "X-M2M-RI": [request.rqi],
            "X-M2M-RVI": [request.rvi],
            "Content-Type": [content_type],
            "Accept": ["application/json"],
        }
        if request.fr is not None:
            headers["X-M2M-Origin"] = [request.fr]
        kwargs: dict[str, Any] = {"headers": headers}
        if request.pc is not None:
            kwargs["data"] = JSON.dumps(request.pc)
        try:
            answer = await self._client.request(method, target, **kwargs)
            body = await self._client.content(answer)
        except CancelledError:
            raise
        except Exception as e:
            self.log.info(
                "{method} {url} failed: {reason}", method=method, url=target, reason=_reason(e)
            )
            raise TargetNotReachable(f"{target}: {_reason(e)}", rqi=request.rqi) from e
        return self._response(answer, body, request, target)

    def _response(self, answer: Any, body: bytes, request: Request, url: str) -> Response:
        head = answer.headers

        def header(name: str) -> str | None:
            values = head.getRawHeaders(name)
            if not values:
                return None
            value = values[0]
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)

        raw_rsc = header("X-M2M-RSC")
        rsc: int | None = None
        if raw_rsc is not None:
            try:
                rsc = int(raw_rsc.strip())
            except ValueError:
                self.log.warn("{url}: unreadable X-M2M-RSC {rsc!r}", url=url, rsc=raw_rsc)
        if rsc is None:
            rsc = _rsc_from_status(answer.code)
        pc: Any = None
        if body.strip():
            try:
                pc = JSON.loads(body)
            except OneM2MError:
                self.log.warn("{url}: the response body is not JSON, ignored", url=url)
        self.log.debug("{url} answered {rsc} (HTTP {code})", url=url, rsc=rsc, code=answer.code)
        return Response(
            rsc,
            header("X-M2M-RI") or request.rqi,
            header("X-M2M-RVI") or request.rvi,
            pc,
        )
