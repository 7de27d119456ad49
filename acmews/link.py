"""The registree side of CSE-to-CSE: one persistent WebSocket to the registrar.

:class:`RegistrarLink` is a Twisted service with a ``ClientService`` as its child (reconnects
with exponential backoff). The ``ClientService`` prepares every connection by (re)registering
this CSE at the registrar (a remoteCSE CREATE; a registrar that answers "registered already"
gets an UPDATE instead), retrieving the registrar's CSEBase and creating (or refreshing) the
registrar's remoteCSE in this CSE; a connection whose registration fails is closed and counts
as a failed attempt, so one retry policy covers both. The connection stays open and carries
requests both ways: the registrar's requests are answered by this CSE, and this CSE's
originator map routes the registrar's CSE-ID to it, so that forwarding and notifications reach
the registrar through the poa chain. While it is down, forwarded requests fail at once (5103)
and notifications for the registrar wait in store-and-forward. On a clean stop it deletes its
remoteCSE at the registrar unless told to keep it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from acmews.client import (
    Client,
    TLSClientSettings,
    client_endpoint,
    hold_loss,
    subprotocols_for,
)
from acmews.codes import RSC, Operation, ResourceType
from acmews.cse import CSE
from acmews.errors import OneM2MError, RemoteError, TargetNotReachable
from acmews.interfaces import IOriginatorMap
from acmews.logs import Logger
from acmews.metrics import BindingMetrics
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.protocol import OneM2MClientProtocolFactory
from acmews.session import Session

__all__ = ["RegistrarLink"]

#: the release versions this CSE supports, announced in its remoteCSE
_SRV = ["2a", "3", "4", "5"]


class RegistrarLink(MultiService):
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
        metrics: BindingMetrics | None = None,
    ) -> None:
        """
        @param initial_delay: and
        @param max_delay: the exponential backoff of the one retry policy, after a connection
            that failed, was lost or was refused by the registrar.
        @param headers: more headers for every opening handshake, e.g. the ``Authorization``
            the registrar asks of this CSE.
        @param tls: for a ``wss://`` registrar: the CA to trust and this CSE's certificate.
        @param metrics: where the link's connection and the requests it answers are counted.
        """
        super().__init__()
        self.cse = cse
        self.originators = originators
        self.url = url
        self.registrar_cse_id = registrar_cse_id
        self.registrar_cse_name = registrar_cse_name
        self.keep_registration = keep_registration
        self.clock: IReactorTime = clock if clock is not None else reactor
        self._factory = OneM2MClientProtocolFactory(
            url,
            originator=cse.config.cse_id,
            handler=cse,
            subprotocols=subprotocols_for(serialization),
            reactor=reactor,
            clock=self.clock,
            remote_originator=registrar_cse_id,
            options=options,
            headers=headers,
            metrics=metrics,
        )
        self._policy = backoffPolicy(initialDelay=initial_delay, maxDelay=max_delay)
        self._service = ClientService(
            endpoint if endpoint is not None else client_endpoint(url, reactor, tls=tls),
            self._factory,
            retryPolicy=self._retry_after,
            clock=self.clock,
            prepareConnection=self._prepare,
        )
        self._service.setServiceParent(self)
        self.session: Session | None = None
        self.registered = False
        self.state = "stopped"
        self._rqis = itertools.count(1)
        self._registered_waiters: list[Deferred[None]] = []
        #: why the registrar refused the last connection, for the retry policy to report
        self._refused: Exception | None = None

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

    def _retry_after(self, attempt: int) -> float:
        """The ``ClientService``'s retry policy: exponential backoff, the attempts failed in a
        row counting connections refused at registration too (see :meth:`_prepare`)."""
        delay = float(self._policy(attempt))
        refused, self._refused = self._refused, None
        if refused is None:
            self._state(f"backing off: next try in {delay:.1f} s")
        else:
            self.log.warn(
                "registration at {registrar} failed: {error}; trying again in {delay:.0f} s",
                registrar=self.registrar_cse_id,
                error=str(refused),
                rsc=int(refused.rsc) if isinstance(refused, OneM2MError) else None,
                delay=delay,
            )
            self._state("registration failed")
        return delay

    # -- the service ------------------------------------------------------------------------

    def startService(self) -> None:
        self._state("connecting")
        super().startService()

    def stopService(self) -> Deferred[None]:
        # not running from here on: a registration that fails now is abandoned, not retried
        Service.stopService(self)
        self._refused = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
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
        await super().stopService()
        self._state("stopped")

    # -- each connection --------------------------------------------------------------------

    def _prepare(self, protocol: Any) -> Deferred[None]:
        """The ``ClientService``'s ``prepareConnection``: register on each new connection.

        A connection that does not open, or whose registration fails, fails this: the
        ``ClientService`` counts it as a failed attempt and tries again after the delay of
        its retry policy, which grows with each failure in a row. The connection itself is
        closed here (the ``ClientService`` leaves it open).
        """
        accept = hold_loss(protocol)
        d = Deferred.fromCoroutine(self._connected(protocol))
        return d.addCallback(lambda _: accept())

    async def _connected(self, protocol: Any) -> None:
        try:
            session: Session = await protocol.when_open()
        except CancelledError:  # stopping while the WebSocket opens
            protocol.transport.loseConnection()
            raise
        except Exception as e:
            self.log.debug("link connection ended: {error}", error=str(e))
            raise
        self.session = session
        self.originators.bind(self.registrar_cse_id, session)
        session.when_closed().addCallback(self._closed, session)
        try:
            await self._register(session)
        except Exception as e:
            self._refuse(session, e)
            raise

    def _closed(self, _: object, session: Session) -> None:
        self.originators.remove_connection(session)
        if self.session is session:
            self.session = None
            self.registered = False
            if self.running:
                self._state("connection lost: reconnecting")

    def _refuse(self, session: Session, error: Exception) -> None:
        """Close a connection whose registration failed; say why when the retry policy tells
        when the next try is (unless the link is stopping: then there is none)."""
        self.session = None  # its end is no news: the registration failed already
        if self.running:
            self._refused = error
        else:
            self.log.info(
                "registration at {registrar} abandoned: stopping ({error})",
                registrar=self.registrar_cse_id,
                error=str(error),
            )
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
            raise _refused(f"the registrar answered {int(created.rsc)}", created)
        base = await client.retrieve(self._registrar_base())
        if base.rsc != RSC.OK or not isinstance(base.pc, dict):
            raise _refused(f"the registrar's CSEBase: {int(base.rsc)}", base)
        cb = base.pc.get("m2m:cb") or {}
        await self._registrar_csr(session, cb)
        if not session.connected:
            raise TargetNotReachable("the connection to the registrar closed while registering")
        self.registered = True
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
            raise _refused(f"the registrar's remoteCSE here: {int(response.rsc)}", response)

    async def _local(self, session: Session, op: Operation, to: str, **kw: Any) -> Response:
        request = Request(op, to, f"link-{next(self._rqis)}", fr=self.registrar_cse_id, **kw)
        result = self.cse.handle_request(request, session)
        if isinstance(result, Deferred):
            return await result
        return result


def _refused(what: str, response: Response) -> RemoteError:
    """A oneM2M answer refusing a step of the registration, as an error with its rsc."""
    debug = response.debug
    return RemoteError(f"{what}: {debug}" if debug else what, response.rsc, debug)
