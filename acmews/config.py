"""Every setting of a CSE server (``twistd acmews``), each default stated once.

:class:`Config` is what ``twistd acmews``'s options parse into and what
:func:`acmews.server.make_service` builds from; an application embedding the CSE makes one
directly. Defaults that belong to a component stay with it (the CSE's identity in
:class:`~acmews.cse.CSEConfig`, the connections' in :class:`~acmews.options.ConnectionOptions`,
the queue's and the outbound limits' in their modules) and are referred to here, not repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from acmews.admission import ConnectionLimits
from acmews.auth import Credential
from acmews.client import TLSClientSettings
from acmews.cse import CSEConfig
from acmews.endpoints import ServerEndpoint
from acmews.options import ConnectionOptions
from acmews.poa import OutboundCredentials
from acmews.poa.limits import DEFAULT_DENY, DEFAULT_OUTBOUND, DEFAULT_OUTBOUND_PER_HOST
from acmews.poa.queue import DEFAULT_ORIGINATOR_BYTES, DEFAULT_QUEUE_SIZE, DEFAULT_TOTAL_BYTES

__all__ = ["DEFAULT_LISTEN", "DEFAULT_STORE", "SHARED_STORES", "Config", "RegistrarConfig"]

#: a backlog of 1024 (Twisted's default is 50): a thousand clients connecting at once must not
#: see refused connections
DEFAULT_LISTEN = "tcp:8180:interface=127.0.0.1:backlog=1024"
DEFAULT_STORE = "sqlite:acmews.db"
#: stores every node of a cluster can share
SHARED_STORES = ("postgresql://", "postgres://")

_CSE = CSEConfig()


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """This CSE's registrar: it registers there and keeps one WebSocket to it (an MN-CSE)."""

    #: ``ws://`` or ``wss://`` URL
    url: str
    cse_id: str = "/id-in"
    cse_name: str = "cse-in"
    #: ``json`` or ``cbor`` on the link
    serialization: str = "json"
    #: keep this CSE's remoteCSE at the registrar when it stops
    keep_registration: bool = False
    #: more headers for the link's handshake (the ``Authorization`` the registrar asks for)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole CSE server: identity, listeners, store, limits, credentials, registrar."""

    cse_id: str = _CSE.cse_id
    cse_name: str = _CSE.cse_name
    sp_id: str = _CSE.sp_id
    admin: str = _CSE.admin
    #: server endpoint strings
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    #: the CSEBase's points of access; empty: derived from ``listen``
    poa: tuple[str, ...] = ()
    #: ``sqlite:PATH``, ``postgresql://...`` or ``memory:`` (see :func:`acmews.stores.open_store`)
    store: str = DEFAULT_STORE
    #: every connection's options; its ``request_timeout`` is also the timeout of what the
    #: CSE sends (notifications, verifications, poa deliveries)
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    max_outbound: int = DEFAULT_OUTBOUND
    max_outbound_per_host: int = DEFAULT_OUTBOUND_PER_HOST
    queue_size: int = DEFAULT_QUEUE_SIZE
    queue_bytes: int = DEFAULT_TOTAL_BYTES
    queue_bytes_per_originator: int = DEFAULT_ORIGINATOR_BYTES
    #: seconds a stored notification without its own ``rqet`` is kept
    notification_expiry: float = _CSE.notification_expiry
    #: hosts a poa or an ``nu`` may name (empty: any but ``deny_targets``)
    allow_targets: tuple[str, ...] = ()
    deny_targets: tuple[str, ...] = DEFAULT_DENY
    allowed_csr_originators: tuple[str, ...] = _CSE.allowed_csr_originators
    #: forwarded requests waiting for one next hop's answers, in all and per originator
    max_forwarded_per_link: int = _CSE.max_forwarded_per_link
    max_forwarded_per_originator: int = _CSE.max_forwarded_per_originator
    #: who may connect: Basic users, Bearer tokens, client certificates (a CA file)
    basic_credentials: tuple[Credential, ...] = ()
    token_credentials: tuple[Credential, ...] = ()
    client_ca: str | None = None
    #: what the CSE trusts and shows on the wss:// and https:// connections it opens
    client_tls: TLSClientSettings | None = None
    #: the ``Authorization`` it sends to a poa, by URL
    poa_credentials: OutboundCredentials | None = None
    registrar: RegistrarConfig | None = None
    #: accept any originator claim on listeners beyond loopback, without credentials
    insecure: bool = False
    #: log acmews's debug lines too (:func:`acmews.logs.set_debug`)
    log_debug: bool = False
    #: a server endpoint for ``/metrics`` (Prometheus); None: no admin listener, and nothing
    #: counted per request
    admin_listen: str | None = None
    #: seconds a graceful stop (SIGTERM) waits for the answers in flight before it closes
    #: the connections anyway
    shutdown_timeout: float = 10.0
    #: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``: this process is one node of several
    #: serving this CSE (:mod:`acmews.cluster`); None: the only one. ``twistd acmews``
    #: requires a shared store with it; an embedding application is trusted to give one
    cluster: str | None = None
    #: this node's name in the cluster; None: the host name and the first listener's port
    node_name: str | None = None
    #: what this CSE's keys and channels in Redis begin with; None: ``acmews:CSE-ID:``
    cluster_prefix: str | None = None
    #: seconds a node's lease lasts in Redis; renewed every 0.3 of it, the leader's lease
    #: lasts 1.2 of it (10: 3 and 12 s)
    cluster_lease: float = 10.0

    @property
    def endpoints(self) -> list[ServerEndpoint]:
        return [ServerEndpoint.parse(d) for d in self.listen]

    @property
    def authenticates(self) -> bool:
        """Must connections authenticate?"""
        return bool(self.basic_credentials or self.token_credentials or self.client_ca)

    def cluster_problem(self) -> str | None:
        """Why ``cluster`` cannot be used as given (one line), or None."""
        if self.cluster is None:
            return None
        from acmews.cluster import RedisURL, valid_node_name

        if not self.store.startswith(SHARED_STORES):
            return (
                f"--cluster needs a store that every node shares (--store postgresql://...), "
                f"not {self.store.split(':', 1)[0]}:"
            )
        try:
            RedisURL.parse(self.cluster)
        except ValueError as e:
            return f"--cluster: {e}"
        if self.node_name is not None and not valid_node_name(self.node_name):
            return (
                "--node-name must be 1 to 100 letters, digits or ._:@- (starting with a "
                f"letter or digit), not {self.node_name[:100]!r}"
            )
        return None

    def exposure(self) -> str | None:
        """Why this configuration must not start, or None: a listener beyond loopback where
        anyone may claim any originator (no credentials), unless ``insecure`` says so."""
        if self.authenticates or self.insecure:
            return None
        exposed = [e.description for e in self.endpoints if not e.loopback_only]
        if not exposed:
            return None
        return (
            f"{exposed[0]} listens beyond loopback without credentials, where anyone may "
            "claim any originator: give --basic-auth-file, --token-file or --client-ca "
            "(or --insecure to accept that)"
        )

    def advertised_poa(self) -> tuple[str, ...]:
        """The CSEBase's poa: as configured, else a URL for each TCP listener."""
        if self.poa:
            return self.poa
        return tuple(p for p in (e.poa() for e in self.endpoints) if p is not None)

    def cse_config(self) -> CSEConfig:
        """The embedded CSE's configuration."""
        return CSEConfig(
            cse_id=self.cse_id,
            cse_name=self.cse_name,
            sp_id=self.sp_id,
            admin=self.admin,
            poa=self.advertised_poa(),
            verification_timeout=self.connection.request_timeout,
            notification_expiry=self.notification_expiry,
            allowed_csr_originators=self.allowed_csr_originators,
            registrar_cse_id=self.registrar.cse_id if self.registrar else None,
            cse_type=2 if self.registrar else 1,
            max_forwarded_per_link=self.max_forwarded_per_link,
            max_forwarded_per_originator=self.max_forwarded_per_originator,
        )
