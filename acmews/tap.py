"""``twistd acmews``: a small, real CSE on the oneM2M WebSocket binding.

Wires the pieces together: the originator map (a service), the poa resolution chain (live
connection, ``ws://default``, ``ws://``/``wss://`` poa, ``http://`` poa, store-and-forward) as
the CSE's way of sending notifications, the embedded CSE as the request handler, and one
listening endpoint per ``--listen``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.python import usage

from acmews.client import connect
from acmews.cse import CSE, CSEConfig
from acmews.link import RegistrarLink
from acmews.logs import Logger
from acmews.options import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    ConnectionOptions,
)
from acmews.originators import OriginatorMap
from acmews.poa import (
    HttpConnector,
    MemoryNotificationQueue,
    OutboundLimits,
    PoaChain,
    TargetPolicy,
    WebSocketConnector,
)
from acmews.poa.limits import DEFAULT_DENY, system_resolver
from acmews.protocol import OneM2MServerFactory

__all__ = ["Options", "makeService", "poa_for_endpoint"]

log = Logger()

_DEFAULTS = ConnectionOptions()

#: a backlog of 1024 (Twisted's default is 50): a thousand clients connecting at once must not
#: see refused connections
DEFAULT_LISTEN = "tcp:8180:interface=127.0.0.1:backlog=1024"


def _positive_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _nonzero_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


class Options(usage.Options):
    """Command-line options of ``twistd acmews``."""

    synopsis = "[options]"
    longdesc = (
        "Runs a oneM2M CSE (IN-CSE) on the WebSocket binding TS-0020 with the ACME "
        "extensions: X-M2M-Origin on the opening handshake, connections in either direction, "
        "and poa resolution (live connection, ws://default, ws:// or wss:// poa, http:// poa, "
        "store-and-forward for notifications). Defaults match ACME's."
    )
    optFlags: list[Any] = [
        [
            "keep-registration",
            None,
            "With --registrar: keep this CSE's remoteCSE at the registrar when it stops.",
        ],
    ]
    optParameters: list[Any] = [
        [
            "registrar",
            None,
            None,
            "ws:// or wss:// URL of this CSE's registrar (an IN-CSE): register there at "
            "start and keep one WebSocket to it (this CSE is then an MN-CSE, cst 2).",
        ],
        ["registrar-cse-id", None, "/id-in", "With --registrar: the registrar's CSE-ID."],
        [
            "registrar-cse-name",
            None,
            "cse-in",
            "With --registrar: the resource name of the registrar's CSEBase.",
        ],
        [
            "registrar-serialization",
            None,
            "json",
            "With --registrar: json or cbor on the link to the registrar.",
        ],
        ["cse-id", None, "/id-in", "The CSE-ID (with its leading slash)."],
        ["cse-name", None, "cse-in", "The resource name of the CSEBase."],
        ["sp-id", None, "//acmews.example.com", "The M2M Service Provider ID."],
        ["admin", None, "CAdmin", "The admin originator, allowed to do everything."],
        [
            "request-timeout",
            None,
            10.0,
            "Seconds to wait for the answer to a request the CSE sends (notification, "
            "verification, poa delivery).",
            _positive_float,
        ],
        [
            "max-message-size",
            None,
            DEFAULT_MAX_MESSAGE_SIZE,
            "Largest WebSocket message in bytes; a larger one closes the connection (1009).",
            _positive_int,
        ],
        [
            "ping-interval",
            None,
            DEFAULT_PING_INTERVAL,
            "Seconds between WebSocket pings (0 turns keep-alive off).",
            _positive_float,
        ],
        [
            "ping-timeout",
            None,
            DEFAULT_PING_TIMEOUT,
            "Seconds without a pong before the connection is closed.",
            _positive_float,
        ],
        [
            "write-buffer-size",
            None,
            _DEFAULTS.write_buffer_size,
            "Bytes queued for a peer that does not read before the CSE stops reading from it; "
            "still backed up after the ping timeout, it is closed (1008).",
            _positive_int,
        ],
        [
            "max-message-frames",
            None,
            _DEFAULTS.max_message_frames,
            "Frames one WebSocket message may span (zero-length frames count); beyond: 1008.",
            _positive_int,
        ],
        [
            "message-timeout",
            None,
            _DEFAULTS.message_timeout,
            "Seconds a message sent in several frames may take to complete; beyond: 1008.",
            _nonzero_float,
        ],
        [
            "max-outbound",
            None,
            256,
            "Outbound poa/nu deliveries in flight at once (connections the CSE opens); "
            "more wait their turn.",
            _positive_int,
        ],
        [
            "max-outbound-per-host",
            None,
            8,
            "Outbound poa/nu deliveries in flight at once to one host.",
            _positive_int,
        ],
        [
            "queue-size",
            None,
            1000,
            "Notifications kept per unreachable originator (store-and-forward); the oldest is "
            "dropped beyond that.",
            _positive_int,
        ],
        [
            "queue-bytes",
            None,
            256 * 1024 * 1024,
            "Bytes all stored notifications may hold together; beyond it new ones are refused.",
            _positive_int,
        ],
        [
            "queue-bytes-per-originator",
            None,
            16 * 1024 * 1024,
            "Bytes the stored notifications of one originator may hold; the oldest go first.",
            _positive_int,
        ],
        [
            "notification-expiry",
            None,
            3600.0,
            "Seconds a stored notification without its own rqet is kept.",
            _positive_float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["poa"] = []
        self["allow-targets"] = []
        self["allowed-csr-originators"] = []
        self["deny-targets"] = None

    def opt_listen(self, endpoint: str) -> None:
        """A server endpoint to listen on, e.g. tcp:8180:interface=127.0.0.1:backlog=1024, or
        an ssl: endpoint for wss:// (repeatable; default
        tcp:8180:interface=127.0.0.1:backlog=1024)."""
        self["listen"].append(endpoint)

    def opt_poa(self, poa: str) -> None:
        """A point of access the CSEBase advertises, e.g. ws://cse.example.com:8180
        (repeatable; default: derived from the --listen endpoints)."""
        self["poa"].append(poa)

    def opt_allowed_csr_originators(self, patterns: str) -> None:
        """CSE-IDs that may register a remoteCSE here: comma-separated glob patterns
        (/id-mn*); repeatable (default: any CSE-ID, /*)."""
        self["allowed-csr-originators"].extend(p for p in patterns.split(",") if p.strip())

    def opt_allow_targets(self, rules: str) -> None:
        """Hosts the CSE may contact for a poa or an nu: comma-separated CIDR networks
        (10.0.0.0/8) or host patterns (*.devices.example); repeatable. When given, every
        other host is refused."""
        self["allow-targets"].extend(r for r in rules.split(",") if r.strip())

    def opt_deny_targets(self, rules: str) -> None:
        """Hosts the CSE must never contact for a poa or an nu, in the same forms; repeatable
        (default: 169.254.0.0/16,fe80::/10, the link-local addresses of cloud metadata
        services; give 'none' to deny nothing)."""
        if self["deny-targets"] is None or rules.strip().lower() == "none":
            self["deny-targets"] = []
        if rules.strip().lower() != "none":
            self["deny-targets"].extend(r for r in rules.split(",") if r.strip())

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        registrar = self["registrar"]
        if registrar is not None and not registrar.startswith(("ws://", "wss://")):
            raise usage.UsageError("--registrar must be a ws:// or wss:// URL")
        if self["registrar-serialization"] not in ("json", "cbor"):
            raise usage.UsageError("--registrar-serialization must be json or cbor")
        rid = self["registrar-cse-id"]
        if registrar is not None and (
            not rid.startswith("/") or rid.startswith("//") or rid == self["cse-id"]
        ):
            raise usage.UsageError("--registrar-cse-id must look like /id-in (not this CSE's)")
        if self["deny-targets"] is None:
            self["deny-targets"] = list(DEFAULT_DENY)
        try:
            TargetPolicy(self["allow-targets"], self["deny-targets"])
        except ValueError as e:
            raise usage.UsageError(f"--allow-targets/--deny-targets: {e}") from None
        if not self["cse-id"].startswith("/") or self["cse-id"].startswith("//"):
            raise usage.UsageError("--cse-id must look like /id-in")
        if not self["sp-id"].startswith("//"):
            raise usage.UsageError("--sp-id must look like //acmews.example.com")
        if "/" in self["cse-name"] or not self["cse-name"]:
            raise usage.UsageError("--cse-name must be a plain resource name")


def poa_for_endpoint(description: str) -> str | None:
    """The ws:// or wss:// URL a client would use for a tcp:/ssl: server endpoint string."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind = parts[0]
    if kind not in ("tcp", "ssl", "tls") or len(parts) < 2:
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = keywords.get("port") or (positional[0] if positional else "")
    if not port.isdigit() or port == "0":
        return None
    host = keywords.get("interface", "127.0.0.1")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "ws" if kind == "tcp" else "wss"
    return f"{scheme}://{host}:{port}"


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


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> MultiService:
    """The whole CSE as a MultiService; ``reactor`` is the global one when None."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    warn_without_nvx()
    listen: Sequence[str] = options["listen"] or [DEFAULT_LISTEN]
    poa = list(options["poa"]) or [p for p in map(poa_for_endpoint, listen) if p is not None]
    request_timeout = float(options["request-timeout"])
    connection_options = ConnectionOptions(
        request_timeout=request_timeout,
        max_message_size=int(options["max-message-size"]),
        ping_interval=float(options["ping-interval"]),
        ping_timeout=float(options["ping-timeout"]),
        write_buffer_size=int(options["write-buffer-size"]),
        max_message_frames=int(options["max-message-frames"]),
        message_timeout=float(options["message-timeout"]),
    )
    # an outbound poa connection serves one request and is closed: no keep-alive
    poa_options = replace(connection_options, ping_interval=0)

    top = MultiService()
    originators = OriginatorMap()
    originators.setServiceParent(top)

    def ws_connect(url: str, originator: str, subprotocols: Sequence[str]) -> Deferred[Any]:
        """An outbound connection to a registree's ws:// poa (the chain closes it)."""
        connecting = connect(
            url,
            originator=originator,
            serialization=subprotocols,
            reactor=reactor,
            options=poa_options,
        )
        return connecting.addCallback(lambda client: client.session)

    chain = PoaChain(
        originators,
        reactor,
        [
            WebSocketConnector(ws_connect, options["cse-id"], reactor),
            HttpConnector(reactor),
        ],
        timeout=request_timeout,
        queue=MemoryNotificationQueue(
            int(options["queue-size"]),
            originator_bytes=int(options.get("queue-bytes-per-originator", 16 * 1024 * 1024)),
            total_bytes=int(options.get("queue-bytes", 256 * 1024 * 1024)),
        ),
        default_expiry=float(options["notification-expiry"]),
        policy=TargetPolicy(
            options.get("allow-targets") or (),
            DEFAULT_DENY if options.get("deny-targets") is None else options["deny-targets"],
            resolve=system_resolver(reactor),
        ),
        limits=OutboundLimits(
            int(options.get("max-outbound", 256)), int(options.get("max-outbound-per-host", 8))
        ),
    )
    chain.setServiceParent(top)
    config = CSEConfig(
        cse_id=options["cse-id"],
        cse_name=options["cse-name"],
        sp_id=options["sp-id"],
        admin=options["admin"],
        poa=tuple(poa),
        verification_timeout=request_timeout,
        notification_expiry=float(options["notification-expiry"]),
        allowed_csr_originators=tuple(options.get("allowed-csr-originators") or ("/*",)),
        registrar_cse_id=options["registrar-cse-id"] if options.get("registrar") else None,
        cse_type=2 if options.get("registrar") else 1,
    )
    cse = CSE(config, chain, reactor)
    if options.get("registrar"):
        link = RegistrarLink(
            cse,
            originators,
            options["registrar"],
            options["registrar-cse-id"],
            options["registrar-cse-name"],
            reactor=reactor,
            serialization=options.get("registrar-serialization", "json"),
            options=connection_options,
            keep_registration=bool(options.get("keep-registration")),
        )
        link.setServiceParent(top)
        top.link = link  # type: ignore[attr-defined]
    factory = OneM2MServerFactory(
        cse,
        originators,
        reactor=reactor,
        options=connection_options,
    )
    for description in listen:
        service: IService = strports.service(description, factory, reactor=reactor)
        service.setServiceParent(top)
    top.cse = cse  # type: ignore[attr-defined]
    top.factory = factory  # type: ignore[attr-defined]
    top.chain = chain  # type: ignore[attr-defined]
    log.info(
        "acmews CSE {cse_id} ({cse_name}) listening on {listen}, poa {poa}",
        cse_id=config.cse_id,
        cse_name=config.cse_name,
        listen=", ".join(listen),
        poa=", ".join(poa) or "(none)",
    )
    return top
