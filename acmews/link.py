"""The registree side of CSE-to-CSE: one persistent WebSocket to the registrar.

:class:`RegistrarLink` is a Twisted service around a ``ClientService`` (reconnects with
exponential backoff). On every connection it (re)registers this CSE at the registrar (a
remoteCSE CREATE; a registrar that answers "registered already" gets an UPDATE instead),
retrieves the registrar's CSEBase and creates (or refreshes) the registrar's remoteCSE in this
CSE. The connection stays open and carries requests both ways: the registrar's requests are
answered by this CSE, and this CSE's originator map routes the registrar's CSE-ID to it, so
that forwarding and notifications reach the registrar through the poa chain. While it is
down, forwarded requests fail at once (5103) and notifications for the registrar wait in
store-and-forward. On a clean stop it deletes its remoteCSE at the registrar unless told to
keep it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from acmews.client import Client, TLSClientSettings, client_endpoint, subprotocols_for
from acmews.codes import RSC, Operation, ResourceType
from acmews.cse import CSE
from acmews.interfaces import IOriginatorMap
from acmews.logs import Logger
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.protocol import OneM2MClientFactory
from acmews.session import Session

__all__ = ["RegistrarLink"]

#: the release versions this CSE supports, announced in its remoteCSE
_SRV = ["2a", "3", "4", "5"]


class _LinkFactory(OneM2MClientFactory):
    """A client factory for many connections in turn: each opened session is handed on."""

    def __init__(self, url: str, on_open: Any, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._on_open = on_open

    def opened(self, session: Session) -> None:
        self._on_open(session)

    def fail(self, error: Exception) -> None:
        """A connection that did not open or closed: the ClientService tries again."""
        self.log.debug("link connection ended: {error}", error=str(error))


class RegistrarLink(Service):
    """This CSE's registration at its registrar, over one persistent WebSocket."""

    log = Logger()
    name = "registrar-link"

    def __init__(
        self,
        cse: CSE,
        originators: IOriginatorMap,
        url: str,
        registrar_cse_id: str,
        registrar_cse_name: str,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        serialization: str | Sequence[str] = "json",
        options: ConnectionOptions | None = None,
        keep_registration: bool = False,
        endpoint: Any = None,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        headers: dict[str, str] | None = None,
        tls: TLSClientSettings | None = None,
    ) -> None:
        """
        @param headers: more headers for every opening handshake, e.g. the ``Authorization``
            the registrar asks of this CSE.
        @param tls: for a ``wss://`` registrar: the CA to trust and this CSE's certificate.
        """
        self.cse = cse
        self.originators = originators
        self.url = url
        self.registrar_cse_id = registrar_cse_id
        self.registrar_cse_name = registrar_cse_name
        self.keep_registration = keep_registration
        self.clock: IReactorTime = clock if clock is not None else reactor
        config = cse.config
        self._factory = _LinkFactory(
            url,
            self._opened,
            originator=config.cse_id,
            handler=cse,
            subprotocols=subprotocols_for(serialization),
            reactor=reactor,
            clock=self.clock,
            remote_originator=registrar_cse_id,
            options=options,
            headers=headers,
        )
        policy = backoffPolicy(initialDelay=initial_delay, maxDelay=max_delay)

        def retry_after(attempt: int) -> float:
            delay = float(policy(attempt))
            self._state(f"backing off: next try in {delay:.1f} s")
            return delay

        self._service = ClientService(
            endpoint if endpoint is not None else client_endpoint(url, reactor, tls=tls),
            self._factory,
            retryPolicy=retry_after,
            clock=self.clock,
        )
        self.session: Session | None = None
        self.registered = False
        self.state = "stopped"
        self._rqis = itertools.count(1)
        self._registered_waiters: list[Deferred[None]] = []
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        #: registrations that failed in a row, and the timer that closes the connection
        self._failures = 0
        self._retry_call: Any = None

    def when_registered(self) -> Deferred[None]:
        """Fires once this CSE is registered at its registrar (at once when it is)."""
        d: Deferred[None] = Deferred()
        if self.registered:
            d.callback(None)
        else:
            self._registered_waiters.append(d)
        return d

    # -- state ------------------------------------------------------------------------------

    def _state(self, state: str) -> None:
        """Log the link's state once per change."""
        if state != self.state:
            self.state = state
            self.log.info(
                "link to the registrar {registrar} ({url}): {state}",
                registrar=self.registrar_cse_id,
                url=self.url,
                state=state,
            )

    # -- the service ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._state("connecting")
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        session = self.session
        if (
            session is not None
            and session.connected
            and self.registered
            and not self.keep_registration
        ):
            try:
                response = await self._client(session).delete(self._own_csr_at_registrar())
                self.log.info(
                    "deregistered from {registrar}: {rsc}",
                    registrar=self.registrar_cse_id,
                    rsc=int(response.rsc),
                )
            except Exception as e:
                self.log.warn(
                    "could not deregister from {registrar}: {error}",
                    registrar=self.registrar_cse_id,
                    error=str(e),
                )
        await self._service.stopService()
        self._state("stopped")

    # -- each connection --------------------------------------------------------------------

    def _opened(self, session: Session) -> None:
        self.session = session
        self.originators.bind(self.registrar_cse_id, session)
        session.when_closed().addCallback(self._closed, session)
        d = Deferred.fromCoroutine(self._register(session))
        d.addErrback(self._registration_failed, session)

    def _closed(self, _: object, session: Session) -> None:
        self.originators.remove_connection(session)
        if self.session is session:
            self.session = None
            self.registered = False
            if self.running:
                self._state("connection lost: reconnecting")

    def _registration_failed(self, failure: Any, session: Session) -> None:
        """Close the connection, so that the ClientService opens a new one and registration
        is tried again; but only after a delay that grows with each failure in a row (the
        connection itself succeeded, so the ClientService would try again at once)."""
        if not self.running:
            # stopping: the registration failed because the link is going away; no retry
            self.log.info(
                "registration at {registrar} abandoned: stopping ({error})",
                registrar=self.registrar_cse_id,
                error=str(failure.value),
            )
            return
        self._failures += 1
        delay = min(self._max_delay, self._initial_delay * 2 ** (self._failures - 1))
        self.log.warn(
            "registration at {registrar} failed: {error}; trying again in {delay:.0f} s",
            registrar=self.registrar_cse_id,
            error=str(failure.value),
            delay=delay,
        )
        self._state("registration failed")
        self._retry_call = self.clock.callLater(delay, self._give_up_on, session)

    def _give_up_on(self, session: Session) -> None:
        self._retry_call = None
        session.close(1000, "registration failed")

    def _client(self, session: Session) -> Client:
        return Client(session, self.cse.config.cse_id)

    def _registrar_base(self) -> str:
        return f"{self.registrar_cse_id}/{self.registrar_cse_name}"

    def _own_csr_at_registrar(self) -> str:
        return f"{self._registrar_base()}/{self.cse.config.cse_id.lstrip('/')}"

    async def _register(self, session: Session) -> None:
        self._state("registering")
        client = self._client(session)
        config = self.cse.config
        own = {
            "rr": True,
            "poa": list(config.poa) or ["ws://default"],
            "srv": _SRV,
        }
        created = await client.create(
            self._registrar_base(),
            ResourceType.CSR,
            {
                "m2m:csr": {
                    "csi": config.cse_id,
                    "cb": f"{config.cse_id}/{config.cse_name}",
                    "cst": config.cse_type,
                    "dcse": [],
                    **own,
                }
            },
        )
        if created.rsc in (RSC.CONFLICT, RSC.ORIGINATOR_HAS_ALREADY_REGISTERED):
            # registered before (a restart): refresh that registration
            created = await client.update(self._own_csr_at_registrar(), {"m2m:csr": own})
        if not created.ok:
            raise RuntimeError(f"the registrar answered {int(created.rsc)}: {created.debug}")
        base = await client.retrieve(self._registrar_base())
        if base.rsc != RSC.OK or not isinstance(base.pc, dict):
            raise RuntimeError(f"the registrar's CSEBase: {int(base.rsc)}")
        cb = base.pc.get("m2m:cb") or {}
        await self._registrar_csr(session, cb)
        self.registered = True
        self._failures = 0
        self._state("registered")
        waiters, self._registered_waiters = self._registered_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _registrar_csr(self, session: Session, cb: dict[str, Any]) -> None:
        """Create (or refresh) the registrar's remoteCSE in this CSE."""
        config = self.cse.config
        registrar = self.registrar_cse_id
        body: dict[str, Any] = {
            "csi": registrar,
            "cb": f"{registrar}/{self.registrar_cse_name}",
            "rr": True,
            "poa": [p for p in cb.get("poa", []) if isinstance(p, str)],
        }
        if cb.get("cst") in (1, 2, 3):
            body["cst"] = cb["cst"]
        srv = cb.get("srv")
        if isinstance(srv, list) and all(isinstance(s, str) for s in srv):
            body["srv"] = srv
        response = await self._local(
            session, Operation.CREATE, config.cse_name, ty=ResourceType.CSR, pc={"m2m:csr": body}
        )
        if response.rsc == RSC.CONFLICT:
            del body["csi"], body["cb"]
            body.pop("cst", None)
            response = await self._local(
                session,
                Operation.UPDATE,
                f"{config.cse_name}/{registrar.lstrip('/')}",
                pc={"m2m:csr": body},
            )
        if not response.ok:
            raise RuntimeError(f"the registrar's remoteCSE here: {int(response.rsc)}")

    async def _local(self, session: Session, op: Operation, to: str, **kw: Any) -> Response:
        request = Request(op, to, f"link-{next(self._rqis)}", fr=self.registrar_cse_id, **kw)
        result = self.cse.handle_request(request, session)
        if isinstance(result, Deferred):
            return await result
        return result
