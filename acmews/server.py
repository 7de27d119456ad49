"""A whole CSE server from a :class:`~acmews.config.Config`: the service tree of ``twistd
acmews``, for embedding too.

:func:`make_service` composes small builders, one per concern: the store, the poa chain (the
CSE's way of sending: live connection, ``ws://default``, ``ws://``/``wss://`` poa, ``http://``
poa, store-and-forward), the CSE, the registrar link, the server factory with its authorizer,
and one listener per endpoint. The tree's children start in that order and stop in reverse:
the store stops last, once nothing changes any more.
"""

from __future__ import annotations

import gc
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from acmews.admission import FILE_RESERVE, fit_open_files
from acmews.auth import CredentialAuthorizer
from acmews.client import connect
from acmews.config import Config
from acmews.cse import CSE
from acmews.cse.expiry import ExpiryService, TimerService
from acmews.durable import Store
from acmews.endpoints import ServerEndpoint
from acmews.interfaces import IHandshakeAuthorizer
from acmews.link import RegistrarLink
from acmews.logs import Logger, set_debug
from acmews.metrics import BindingMetrics
from acmews.originators import OriginatorMap
from acmews.poa import (
    AgentClient,
    HttpConnector,
    OutboundLimits,
    PoaChain,
    TargetPolicy,
    WebSocketConnector,
)
from acmews.poa.limits import system_resolver
from acmews.poa.queue import INotificationQueue
from acmews.protocol import GOING_AWAY, OneM2MServerFactory
from acmews.session import Session
from acmews.stores import open_store

if TYPE_CHECKING:
    from acmews.cluster import ClusterNode

__all__ = [
    "PYTHON_GC_THRESHOLDS",
    "SERVER_GC_THRESHOLDS",
    "CSEService",
    "ListenError",
    "Listener",
    "build_admin",
    "build_authorizer",
    "build_chain",
    "build_cluster",
    "build_factory",
    "build_link",
    "build_store",
    "make_service",
    "tune_collector",
    "warn_without_nvx",
]

log = Logger()


def build_store(config: Config, reactor: Any) -> Store:
    """The resource tree and the store-and-forward queue (read whole at start)."""
    return open_store(
        config.store,
        reactor,
        cse_id=config.cse_id,
        size=config.queue_size,
        originator_bytes=config.queue_bytes_per_originator,
        total_bytes=config.queue_bytes,
    )


def build_chain(
    config: Config,
    originators: OriginatorMap,
    queue: INotificationQueue,
    reactor: Any,
    metrics: BindingMetrics | None = None,
) -> PoaChain:
    """How the CSE reaches an originator: its live connection, its poa, the queue."""
    # an outbound poa connection serves one request and is closed: no keep-alive
    poa_options = replace(config.connection, ping_interval=0)
    credentials = config.poa_credentials

    def ws_connect(url: str, originator: str, subprotocols: Sequence[str]) -> Deferred[Any]:
        connecting = connect(
            url,
            originator=originator,
            serialization=subprotocols,
            reactor=reactor,
            options=poa_options,
            headers=credentials.headers(url) if credentials else None,
            tls=config.client_tls,
            metrics=metrics,
        )
        return connecting.addCallback(lambda client: client.session)

    return PoaChain(
        originators,
        reactor,
        [
            WebSocketConnector(ws_connect, config.cse_id, reactor),
            HttpConnector(
                reactor, AgentClient(reactor, config.client_tls), credentials=credentials
            ),
        ],
        timeout=config.connection.request_timeout,
        queue=queue,
        default_expiry=config.notification_expiry,
        policy=TargetPolicy(
            config.allow_targets, config.deny_targets, resolve=system_resolver(reactor)
        ),
        limits=OutboundLimits(config.max_outbound, config.max_outbound_per_host),
    )


def build_cluster(
    config: Config, originators: OriginatorMap, chain: PoaChain, reactor: Any
) -> ClusterNode | None:
    """This node's part of a cluster (``config.cluster``), or None for a single node. The
    chain's step 1 then reaches the other nodes' connections too, and its queue purge, like
    every other singleton, runs on the leader only."""
    if config.cluster is None:
        return None
    from acmews.cluster import ClusterNode, RedisURL, Singletons

    node = ClusterNode(
        RedisURL.parse(config.cluster),
        config.node_name or default_node_name(config),
        originators,
        reactor,
        prefix=config.cluster_prefix or f"acmews:{config.cse_id}:",
        singletons=Singletons(),
        lease=config.cluster_lease,
        renew=config.cluster_lease * 3 / 10,
        leader_lease=config.cluster_lease * 12 / 10,
        flush=chain.flush,
        busy=chain.flushing,
    )
    chain.cluster = node
    chain.purging = False
    node.singletons.add(QueuePurge(chain))
    return node


def default_node_name(config: Config) -> str:
    """The host name and the first listener's port (what a node is called without
    ``--node-name``)."""
    host = re.sub(r"[^A-Za-z0-9._@-]", "-", socket.gethostname()) or "node"
    port = next((e.port for e in config.endpoints if e.is_tcp), "")
    return f"{host}:{port}" if port else host


class QueuePurge(Service):
    """The chain's purge of expired queue entries, as a singleton of the cluster."""

    name = "queue-purge"

    def __init__(self, chain: PoaChain) -> None:
        self.chain = chain

    def startService(self) -> None:
        super().startService()
        self.chain.purging = True

    def stopService(self) -> None:
        super().stopService()
        self.chain.purging = False


def build_link(
    config: Config,
    cse: CSE,
    originators: OriginatorMap,
    reactor: Any,
    metrics: BindingMetrics | None = None,
) -> RegistrarLink | None:
    """The one WebSocket to this CSE's registrar, when it has one."""
    registrar = config.registrar
    if registrar is None:
        return None
    return RegistrarLink(
        cse,
        originators,
        registrar.url,
        registrar.cse_id,
        registrar.cse_name,
        reactor=reactor,
        serialization=registrar.serialization,
        options=config.connection,
        # in a cluster the CSE lives on in the other nodes when this one stops or hands the
        # link over to the next leader: its registration stays
        keep_registration=registrar.keep_registration or config.cluster is not None,
        headers=dict(registrar.headers) or None,
        tls=config.client_tls,
        metrics=metrics,
    )


def build_authorizer(config: Config, cse: CSE, reactor: Any) -> IHandshakeAuthorizer | None:
    """Who may connect for which originator: the credentials, or None (any claim, as ACME
    does; said in the log when a listener is reachable beyond loopback). Failed logins are
    timed on ``reactor``."""
    if not config.authenticates:
        if not all(e.loopback_only for e in config.endpoints):
            log.warn(
                "listening beyond loopback without authentication (--insecure): anyone who "
                "reaches the port may claim any originator"
            )
        return None
    from twisted.internet.threads import deferToThread

    return CredentialAuthorizer(
        config.basic_credentials,
        config.token_credentials,
        admin=config.admin,
        defer_to_thread=deferToThread,
        certificates=config.client_ca is not None,
        owner_of=cse.owner_of,
        clock=reactor,
    )


def build_factory(
    config: Config,
    cse: CSE,
    originators: OriginatorMap,
    reactor: Any,
    metrics: BindingMetrics | None = None,
) -> OneM2MServerFactory:
    """The server factory every listener shares."""
    return OneM2MServerFactory(
        cse,
        originators,
        authorizer=build_authorizer(config, cse, reactor),
        limits=config.limits,
        reactor=reactor,
        options=config.connection,
        metrics=metrics,
    )


def build_admin(config: Config, service: CSEService, reactor: Any) -> Listener | None:
    """The admin listener (``/metrics``), when ``config.admin_listen`` names one."""
    if config.admin_listen is None:
        return None
    from acmews.admin import admin_site

    endpoint = ServerEndpoint.parse(config.admin_listen)
    if not endpoint.loopback_only:
        log.warn(
            "the admin listener {description} is reachable beyond loopback: anyone who "
            "reaches it may read the metrics",
            description=config.admin_listen,
        )
    return Listener(config.admin_listen, endpoint.endpoint(reactor), admin_site(service, reactor))


def make_service(config: Config, reactor: Any) -> CSEService:
    """The whole CSE server (not started). Raises
    :class:`~acmews.durable.StoreError` when the store cannot be used, ValueError for a
    listener beyond loopback without credentials (unless ``config.insecure``)."""
    exposure = config.exposure()
    if exposure is not None:
        raise ValueError(exposure)
    if config.log_debug:
        set_debug(True)
    warn_without_nvx()
    store = build_store(config, reactor)
    originators = OriginatorMap()
    # counted per request only when someone reads them
    metrics = BindingMetrics() if config.admin_listen is not None else None
    chain = build_chain(config, originators, store.queue, reactor, metrics)
    cse = CSE(config.cse_config(), chain, reactor, store.resources)
    link = build_link(config, cse, originators, reactor, metrics)
    cluster = build_cluster(config, originators, chain, reactor)
    factory = build_factory(config, cse, originators, reactor, metrics)
    listeners = [
        Listener(e.description, e.endpoint(reactor, config.client_ca), factory)
        for e in config.endpoints
    ]
    service = CSEService(
        config, store, originators, chain, cse, factory, link, listeners, cluster=cluster
    )
    service.add_admin(build_admin(config, service, reactor))
    return service


class ListenError(CannotListenError):
    """A listener that could not listen; its message is one line naming the endpoint and the
    reason."""

    def __init__(self, description: str, reason: BaseException) -> None:
        socket_error = getattr(reason, "socketError", reason)
        port = getattr(reason, "port", None)
        super().__init__(getattr(reason, "interface", ""), port, socket_error)
        self.description = description
        if isinstance(socket_error, OSError) and socket_error.strerror:
            self.reason = socket_error.strerror
        else:
            self.reason = str(socket_error) or type(socket_error).__name__

    def __str__(self) -> str:
        return f"cannot listen on {self.description}: {self.reason}"


class Listener(Service):
    """One server endpoint. It listens when started (in ``privilegedStartService``, before
    twistd drops privileges); a failure to listen raises :class:`ListenError` at once, and
    ``bound`` fires with the listening port."""

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.bound: Deferred[IListeningPort] = Deferred()
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Failure] = []
        self._listening = listening = self.endpoint.listen(self.factory)
        listening.addCallbacks(self._up, failed.append)
        if failed:  # as a TCP endpoint fails: at once
            self._listening = None
            raise ListenError(self.description, failed[0].value or Exception("failed"))
        listening.addErrback(self._failed_later)

    def _up(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.bound.callback(port)
        return port

    def _failed_later(self, failure: Failure) -> None:
        log.failure("cannot listen on {description}", failure, description=self.description)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        self.bound = Deferred()
        if port is not None:
            stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
            return stopped
        if listening is not None:
            listening.cancel()
        return succeed(None)


class CSEService(MultiService):
    """The whole CSE server; says "listening on" once every listener listens (the
    ``listening`` Deferred fires then, with the ports)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        originators: OriginatorMap,
        chain: PoaChain,
        cse: CSE,
        factory: OneM2MServerFactory,
        link: RegistrarLink | None,
        listeners: Sequence[Listener],
        *,
        cluster: ClusterNode | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.originators = originators
        self.chain = chain
        self.cse = cse
        self.factory = factory
        self.link = link
        self.listeners = list(listeners)
        #: this node's part of a cluster (None: a single node)
        self.cluster = cluster
        #: what the binding counts (the factory's), when an admin listener reads it
        self.metrics = factory.metrics
        #: the admin listener (``/metrics``), if any (see :meth:`add_admin`)
        self.admin: Listener | None = None
        #: what a :class:`ListenError` becomes when raised at start (``twistd acmews`` makes
        #: it one line and exit status 1)
        self.start_error: Callable[[ListenError], BaseException] = _as_is
        self.listening: Deferred[list[IListeningPort]] = Deferred()
        self._watching = False
        self._files_fitted = False
        self._stopping = False
        #: deletes expired resources on time (and, at start, what expired while it was down)
        self.expiry = ExpiryService(cse.expiry)
        #: records missing data of the timeSeries on time (and what went missing while down)
        self.timeseries = TimerService(cse.timeseries)
        # the store is the first child: it stops last, once nothing changes any more; the
        # expiry sweep starts once notifications can be sent. In a cluster the sweeps and
        # the registrar link run on the leader only (the node starts them when it leads)
        singletons: tuple[Service | None, ...] = (self.expiry, self.timeseries, link)
        if cluster is not None:
            for singleton in singletons:
                cluster.singletons.add(singleton)
            singletons = (cluster,)
        for child in (store.service, originators, chain, *singletons, *listeners):
            if child is not None:
                child.setServiceParent(self)

    def add_admin(self, admin: Listener | None) -> None:
        """Serve ``admin`` (the admin listener, made for this service) too."""
        if admin is not None:
            self.admin = admin
            admin.setServiceParent(self)

    def readiness(self) -> dict[str, dict[str, Any]]:
        """What ``/ready`` checks, each ``{"ok": bool, ...}``: ``listening`` (every listener
        listens, and the CSE is not stopping), ``store`` (it takes changes), ``registrar``
        (registered; only with a registrar)."""
        unbound = [listener.description for listener in self.listeners if listener.port is None]
        listening: dict[str, Any] = {"ok": self.running and not self._stopping and not unbound}
        if self._stopping:  # (draining: still running, the listeners stopped)
            listening["reason"] = "stopping"
        elif not self.running:
            listening["reason"] = "not started"
        elif unbound:
            listening["reason"] = "not listening on " + ", ".join(unbound)
        store: dict[str, Any] = {"ok": True, "store": self.store.description}
        database = self.store.database
        if database is not None and database.refused is not None:
            store.update(
                ok=False, reason=f"read-only: the disk refused a write ({database.refused})"
            )
        down = self.store.down() if self.store.down is not None else None
        if down is not None:
            store.update(ok=False, reason=f"the database does not answer ({down})")
        checks = {"listening": listening, "store": store}
        if self.link is not None:
            registrar: dict[str, Any] = {"ok": self.link.registered, "state": self.link.state}
            if self.cluster is not None and not self.cluster.leader:
                registrar = {"ok": True, "state": "kept by the cluster's leader"}
            checks["registrar"] = registrar
        return checks

    def privilegedStartService(self) -> None:
        self._start(super().privilegedStartService)

    def startService(self) -> None:
        self._start(super().startService)

    def _start(self, start: Callable[[], None]) -> None:
        """Either way of starting (twistd calls both; a program may call only startService)."""
        self._stopping = False
        self._fit_open_files()
        self._watch()
        try:
            start()
        except ListenError as e:
            raise self.start_error(e) from None

    def stopService(self) -> Deferred[None]:
        """A graceful stop (twistd's on SIGTERM): stop accepting, answer what the
        connections have in flight, close each with 1001 (going away) once it is answered,
        within ``shutdown_timeout``; then stop the rest (the registrar link deregisters,
        what is left is closed with 1001), and the store last, once everything it was given
        is written."""
        self._watching = False
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await gatherResults([maybeDeferred(listener.stopService) for listener in self.listeners])
        await self._drain()
        store = self.store.service
        Service.stopService(self)
        await gatherResults(
            [
                maybeDeferred(child.stopService)
                for child in reversed(list(self))
                if child is not store
            ]
        )
        await maybeDeferred(store.stopService)

    async def _drain(self) -> None:
        """Answer what every accepted connection has in flight, then close it (1001); at
        most ``shutdown_timeout`` seconds, after which the rest is closed as it is."""
        factory = self.factory
        factory.draining = True
        sessions = list(factory.sessions)
        if not sessions:
            return
        timeout = self.config.shutdown_timeout
        serving = sum(session.serving_count for session in sessions)
        log.info(
            "stopping: answering {serving} requests in flight on {count} connections, then "
            "closing them (at most {timeout:g} s)",
            serving=serving,
            count=len(sessions),
            timeout=timeout,
        )
        drained = DeferredList(
            [_closed_when_idle(session) for session in sessions], consumeErrors=True
        )
        # when it is over, what is left is left as it is (cancelled), and closed with the rest
        timer = factory.clock.callLater(timeout, drained.cancel)
        await drained
        if timer.active():
            timer.cancel()
            return
        left = [session for session in factory.sessions if session.serving_count]
        log.warn(
            "stopping: {count} connections still had requests in flight after {timeout:g} s; "
            "closing them unanswered",
            count=len(left),
            timeout=timeout,
        )

    def _fit_open_files(self) -> None:
        """Once, before listening: room in the open-file limit for every connection accepted
        and every outbound delivery (:func:`~acmews.admission.fit_open_files`; the factory
        accepts fewer connections, with a warning, where the hard limit is too low)."""
        if self._files_fitted:
            return
        self._files_fitted = True
        admission = self.factory.admission
        reserve = FILE_RESERVE + self.config.max_outbound
        admission.limits = fit_open_files(admission.limits, reserve)

    def _watch(self) -> None:
        if self._watching:
            return
        self._watching = True
        self.listening = listening = Deferred[list[IListeningPort]]()
        bound = [listener.bound for listener in self.listeners]
        gatherResults(bound).addCallback(self._announce).chainDeferred(listening)
        if self.admin is not None:
            self.admin.bound.addCallback(self._announce_admin)

    def _announce_admin(self, port: IListeningPort) -> IListeningPort:
        log.info("admin listener (/metrics) on {address}", address=_address(port))
        return port

    def _announce(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        config = self.config
        if not config.poa:
            # derived from the listeners: with the ports actually listened on (a port 0)
            derived = (
                ServerEndpoint.parse(listener.description).poa(
                    getattr(port.getHost(), "port", None)
                )
                for listener, port in zip(self.listeners, ports, strict=True)
            )
            self.cse.advertise([p for p in derived if p is not None])
        log.info(
            "acmews CSE {cse_id} ({cse_name}) listening on {listen}, poa {poa}",
            cse_id=config.cse_id,
            cse_name=config.cse_name,
            listen=", ".join(_address(port) for port in ports),
            poa=", ".join(self.cse.config.poa) or "(none)",
        )
        return ports


def _closed_when_idle(session: Session) -> Deferred[None]:
    """Close ``session`` with 1001 once it has answered what it was asked; fires once it is
    gone (cancelling it leaves the connection as it is)."""

    def close(_: None) -> Deferred[None]:
        closed = session.when_closed()
        session.close(1001, GOING_AWAY)
        return closed

    return session.when_idle().addCallback(close)


def _port_number(port: IListeningPort) -> int | None:
    number = getattr(port.getHost(), "port", None)
    return number if isinstance(number, int) else None


def _as_is(error: ListenError) -> BaseException:
    return error


def _address(port: IListeningPort) -> str:
    """A listening port's address as a URL-ish string (tcp:127.0.0.1:8180)."""
    host: Any = port.getHost()
    if hasattr(host, "port"):
        kind = getattr(host, "type", "TCP").lower()
        return f"{kind}:{host.host}:{host.port}"
    return str(getattr(host, "name", host))


#: Python's thresholds for its cycle collector, the ones :func:`tune_collector` replaces
PYTHON_GC_THRESHOLDS = (700, 10, 10)

#: the cycle collector's thresholds for a server: its first generation is collected after
#: 50,000 allocations instead of 700. With Python's, the objects of the notifications in
#: flight (a fan-out to 1,000 subscribers has 1,000) outlived several collections and so
#: reached the oldest generation, whose full collections (every object of every
#: connection, 70 ms with 1,000 connections) then came every few fan-outs: a third of the
#: server's CPU per notification. The full collections' own condition (what reached the
#: oldest generation since the last is over a quarter of it) bounds the garbage it keeps.
SERVER_GC_THRESHOLDS = (50_000, 20, 10)


def tune_collector() -> bool:
    """Set up Python's cycle collector for a long-running server: collect what is garbage
    now, move everything left (the loaded resource tree, the modules) out of the
    collector's sight (``gc.freeze``: it lives as long as the process and is never cyclic
    garbage), and use :data:`SERVER_GC_THRESHOLDS`, unless the program set thresholds of
    its own (then they are kept and False is returned). ``twistd acmews`` calls this once
    its service is made; a program that embeds the CSE decides for itself."""
    gc.collect()
    gc.freeze()
    if gc.get_threshold() != PYTHON_GC_THRESHOLDS:
        return False
    gc.set_threshold(*SERVER_GC_THRESHOLDS)
    return True


def warn_without_nvx() -> bool:
    """Autobahn's NVX (C UTF-8 validation and masking) is worth about 2x: say if it is off."""
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:  # pragma: no cover
        USES_NVX = False
    if not USES_NVX:
        log.warn(
            "Autobahn runs without its NVX acceleration (set AUTOBAHN_USE_NVX=1 and install "
            "a wheel with cffi); WebSocket framing will be about 2x slower"
        )
    return bool(USES_NVX)
