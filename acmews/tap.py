"""``twistd acmews``: a small, real CSE on the oneM2M WebSocket binding.

Wires the pieces together: the originator map (a service), the poa resolution chain (live
connection, ``ws://default``, ``ws://``/``wss://`` poa, ``http://`` poa, store-and-forward) as
the CSE's way of sending notifications, the embedded CSE as the request handler, and one
listening endpoint per ``--listen``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.python import usage

from acmews.admission import ConnectionLimits
from acmews.auth import CredentialAuthorizer, read_basic_file, read_token_file
from acmews.client import connect
from acmews.cse import CSE, CSEConfig
from acmews.durable import StoreError, open_store
from acmews.handshake import basic_authorization, bearer_authorization
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
    AgentClient,
    HttpConnector,
    OutboundLimits,
    PoaChain,
    TargetPolicy,
    WebSocketConnector,
    read_outbound_credentials,
)
from acmews.poa.limits import DEFAULT_DENY, system_resolver
from acmews.protocol import OneM2MServerFactory

__all__ = [
    "CSEService",
    "ListenError",
    "Options",
    "endpoint_problem",
    "makeService",
    "poa_for_endpoint",
]

log = Logger()

_DEFAULTS = ConnectionOptions()

#: a backlog of 1024 (Twisted's default is 50): a thousand clients connecting at once must not
#: see refused connections
DEFAULT_LISTEN = "tcp:8180:interface=127.0.0.1:backlog=1024"
DEFAULT_STORE = "sqlite:acmews.db"


#: the characters of a resource name, a CSE-ID (after its slash) and an originator: URI
#: unreserved characters
_NAME = re.compile(r"[A-Za-z0-9._~-]+")


def _number(
    name: str, kind: type[int] | type[float], rule: str, ok: Callable[[float], bool]
) -> Callable[[str], Any]:
    """A coerce function for ``--name``: its UsageError names the option and the rule (a
    ValueError would make usage.Options print "Parameter type enforcement failed")."""

    def coerce(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be {rule}, not {value!r}") from None
        if not math.isfinite(number) or not ok(number):
            raise usage.UsageError(f"--{name} must be {rule}, not {value!r}")
        return number

    return coerce


def _seconds(name: str) -> Callable[[str], Any]:
    return _number(name, float, "a positive number of seconds", lambda n: n > 0)


def _count(name: str) -> Callable[[str], Any]:
    return _number(name, int, "a positive whole number", lambda n: n > 0)


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
            "basic-auth-file",
            None,
            None,
            "A file of user:hash[:originators] lines (ACME's SHA-256 hex, or an entry made by "
            "python -m acmews.auth hash): connections must authenticate (HTTP Basic) and may "
            "claim only the originators listed (none listed: any but the admin's and those "
            "another credential lists).",
        ],
        [
            "client-ca",
            None,
            None,
            "A PEM file of the CA whose client certificates ssl: listeners require: a "
            "certificate's subject CN and SAN URIs are the originators it may claim.",
        ],
        [
            "token-file",
            None,
            None,
            "A file of token[:originators] lines: Bearer tokens, with the same originator rules.",
        ],
        [
            "registrar",
            None,
            None,
            "ws:// or wss:// URL of this CSE's registrar (an IN-CSE): register there at "
            "start and keep one WebSocket to it (this CSE is then an MN-CSE, cst 2).",
        ],
        ["registrar-cse-id", None, "/id-in", "With --registrar: the registrar's CSE-ID."],
        [
            "registrar-user",
            None,
            None,
            "With --registrar: HTTP Basic user name for the registrar's handshake, with "
            "--registrar-password.",
        ],
        [
            "registrar-password",
            None,
            None,
            "With --registrar-user: its password (better: the environment variable "
            "ACMEWS_REGISTRAR_PASSWORD, which keeps it off the command line).",
        ],
        [
            "registrar-token",
            None,
            None,
            "With --registrar: a Bearer token for the registrar's handshake (better: the "
            "environment variable ACMEWS_REGISTRAR_TOKEN, or --registrar-token-file).",
        ],
        [
            "registrar-token-file",
            None,
            None,
            "With --registrar: a file whose first line is a Bearer token for the registrar.",
        ],
        [
            "ca-file",
            None,
            None,
            "PEM file of the CA to trust, instead of the system's, for every wss:// and "
            "https:// connection the CSE opens (its registrar, poa deliveries).",
        ],
        [
            "client-certificate",
            None,
            None,
            "PEM client certificate the CSE shows on the wss:// and https:// connections it "
            "opens (its key in the same file, or --client-key).",
        ],
        ["client-key", None, None, "With --client-certificate: its PEM private key."],
        [
            "poa-credentials",
            None,
            None,
            "A file of lines 'URL user:password' or 'URL Bearer TOKEN': the Authorization "
            "the CSE sends to a ws/wss/http poa under that URL.",
        ],
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
            _seconds("request-timeout"),
        ],
        [
            "max-message-size",
            None,
            DEFAULT_MAX_MESSAGE_SIZE,
            "Largest WebSocket message in bytes; a larger one closes the connection (1009).",
            _count("max-message-size"),
        ],
        [
            "ping-interval",
            None,
            DEFAULT_PING_INTERVAL,
            "Seconds between WebSocket pings (0 turns keep-alive off).",
            _number(
                "ping-interval",
                float,
                "zero (no keep-alive) or a positive number of seconds",
                lambda n: n >= 0,
            ),
        ],
        [
            "ping-timeout",
            None,
            DEFAULT_PING_TIMEOUT,
            "Seconds without a pong before the connection is closed.",
            _seconds("ping-timeout"),
        ],
        [
            "write-buffer-size",
            None,
            _DEFAULTS.write_buffer_size,
            "Bytes queued for a peer that does not read before the CSE stops reading from it; "
            "still backed up after the ping timeout, it is closed (1008).",
            _count("write-buffer-size"),
        ],
        [
            "max-message-frames",
            None,
            _DEFAULTS.max_message_frames,
            "Frames one WebSocket message may span (zero-length frames count); beyond: 1008.",
            _count("max-message-frames"),
        ],
        [
            "message-timeout",
            None,
            _DEFAULTS.message_timeout,
            "Seconds a message sent in several frames may take to complete; beyond: 1008.",
            _seconds("message-timeout"),
        ],
        [
            "max-connections",
            None,
            ConnectionLimits().total,
            "Connections accepted in all; more are aborted at once (logged).",
            _count("max-connections"),
        ],
        [
            "max-connections-per-address",
            None,
            ConnectionLimits().per_address,
            "Connections accepted from one client address.",
            _count("max-connections-per-address"),
        ],
        [
            "max-handshakes-per-address",
            None,
            ConnectionLimits().handshaking_per_address,
            "Connections from one client address still in their opening handshake.",
            _count("max-handshakes-per-address"),
        ],
        [
            "max-outbound",
            None,
            256,
            "Outbound poa/nu deliveries in flight at once (connections the CSE opens); "
            "more wait their turn.",
            _count("max-outbound"),
        ],
        [
            "max-outbound-per-host",
            None,
            8,
            "Outbound poa/nu deliveries in flight at once to one host.",
            _count("max-outbound-per-host"),
        ],
        [
            "queue-size",
            None,
            1000,
            "Notifications kept per unreachable originator (store-and-forward); the oldest is "
            "dropped beyond that.",
            _count("queue-size"),
        ],
        [
            "queue-bytes",
            None,
            256 * 1024 * 1024,
            "Bytes all stored notifications may hold together; beyond it new ones are refused.",
            _count("queue-bytes"),
        ],
        [
            "queue-bytes-per-originator",
            None,
            16 * 1024 * 1024,
            "Bytes the stored notifications of one originator may hold; the oldest go first.",
            _count("queue-bytes-per-originator"),
        ],
        [
            "store",
            None,
            DEFAULT_STORE,
            "Where resources and queued notifications are kept: sqlite:PATH (a SQLite file, "
            "created if missing; every change is on disk before its response is sent) or "
            "memory: (lost when the process exits; for tests and benchmarks).",
        ],
        [
            "notification-expiry",
            None,
            3600.0,
            "Seconds a stored notification without its own rqet is kept.",
            _seconds("notification-expiry"),
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

    def opt_version(self) -> None:
        """Print acmews's version and exit."""
        from acmews import __version__

        print(f"acmews {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """As usage.Options; under twistd (a parent Options), a bad value ends the process
        with one line naming the option and the rule, instead of twistd's whole help text
        followed by the error."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            raise SystemExit(f"twistd acmews: {e}") from None

    def _outbound_credentials(self, registrar: str | None) -> None:
        """Check what the CSE shows to others: its registrar's Authorization, its TLS trust
        and certificate, the poa credentials."""
        headers: dict[str, str] = {}
        user = self["registrar-user"]
        token = self["registrar-token"] or os.environ.get("ACMEWS_REGISTRAR_TOKEN")
        token_file = self["registrar-token-file"]
        if sum(x is not None for x in (user, self["registrar-token"], token_file)) > 1:
            raise usage.UsageError(
                "--registrar-user, --registrar-token and --registrar-token-file: only one"
            )
        if token_file is not None:
            try:
                with open(token_file, encoding="utf-8") as f:
                    token = f.readline().strip()
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--registrar-token-file {token_file}: {e}") from None
            if not token:
                raise usage.UsageError(f"--registrar-token-file {token_file}: no token on line 1")
        if user is not None:
            password = self["registrar-password"] or os.environ.get("ACMEWS_REGISTRAR_PASSWORD")
            if password is None:
                raise usage.UsageError(
                    "--registrar-user needs --registrar-password or ACMEWS_REGISTRAR_PASSWORD"
                )
            try:
                headers["Authorization"] = basic_authorization(user, password)
            except ValueError as e:
                raise usage.UsageError(f"--registrar-user: {e}") from None
        elif self["registrar-password"] is not None:
            raise usage.UsageError("--registrar-password needs --registrar-user")
        elif token:
            try:
                headers["Authorization"] = bearer_authorization(token)
            except ValueError as e:
                raise usage.UsageError(f"the registrar's token: {e}") from None
        if registrar is None and (user or self["registrar-token"] or token_file):
            raise usage.UsageError("registrar credentials need --registrar")
        self["registrar-headers"] = headers
        ca, certificate, key = self["ca-file"], self["client-certificate"], self["client-key"]
        if key is not None and certificate is None:
            raise usage.UsageError("--client-key needs --client-certificate")
        tls = None
        if ca is not None or certificate is not None:
            from acmews.client import TLSClientSettings

            try:
                tls = TLSClientSettings(ca, certificate, key)
            except Exception as e:
                raise usage.UsageError(
                    f"--ca-file/--client-certificate/--client-key: {e}"
                ) from None
        self["client-tls"] = tls
        path = self["poa-credentials"]
        credentials = None
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    credentials = read_outbound_credentials(f)
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--poa-credentials {path}: {e}") from None
        self["poa-credentials-entries"] = credentials

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            problem = endpoint_problem(description)
            if problem:
                raise usage.UsageError(f"--listen {description}: {problem}")
        store = self["store"]
        if store != "memory:" and (not store.startswith("sqlite:") or store == "sqlite:"):
            raise usage.UsageError(f"--store must be sqlite:PATH or memory:, not {store!r}")
        registrar = self["registrar"]
        if registrar is not None and not registrar.startswith(("ws://", "wss://")):
            raise usage.UsageError("--registrar must be a ws:// or wss:// URL")
        if self["client-ca"] is not None:
            from twisted.internet.ssl import Certificate

            try:
                with open(self["client-ca"], "rb") as f:
                    Certificate.loadPEM(f.read())
            except Exception as e:
                raise usage.UsageError(f"--client-ca {self['client-ca']}: {e}") from None
        for option, reader in (
            ("basic-auth-file", read_basic_file),
            ("token-file", read_token_file),
        ):
            path = self[option]
            if path is not None:
                try:
                    with open(path, encoding="utf-8") as f:
                        self[option + "-entries"] = reader(f)
                except (OSError, ValueError) as e:
                    raise usage.UsageError(f"--{option} {path}: {e}") from None
        self._outbound_credentials(registrar)
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
        cse_id = self["cse-id"]
        if not (cse_id.startswith("/") and _NAME.fullmatch(cse_id[1:])):
            raise usage.UsageError(
                f"--cse-id must be one slash then letters, digits or -._~ "
                f"(like /id-in), not {cse_id!r}"
            )
        if not self["sp-id"].startswith("//") or not _NAME.fullmatch(self["sp-id"][2:]):
            raise usage.UsageError(
                f"--sp-id must be two slashes then letters, digits or -._~ "
                f"(like //acmews.example.com), not {self['sp-id']!r}"
            )
        if not _NAME.fullmatch(self["cse-name"]):
            raise usage.UsageError(
                f"--cse-name must be a plain resource name (letters, digits or -._~), "
                f"not {self['cse-name']!r}"
            )
        if not _NAME.fullmatch(self["admin"]):
            raise usage.UsageError(
                f"--admin must be an originator of letters, digits or -._~ (like CAdmin), "
                f"not {self['admin']!r}"
            )
        for poa in self["poa"]:
            url = urlsplit(poa)
            if not url.scheme or not url.hostname or " " in poa:
                raise usage.UsageError(
                    f"--poa must be a URL with a scheme and a host (like "
                    f"ws://cse.example.com:8180), not {poa!r}"
                )


def endpoint_problem(description: str) -> str | None:
    """What is wrong with a server endpoint string, found without listening (None: nothing)."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    if parts[0] in ("tcp", "ssl", "tls", "tcp6"):
        positional = [p for p in parts[1:] if "=" not in p]
        keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        port = keywords.get("port") or (positional[0] if positional else "")
        if not port.isdigit() or int(port) > 65535:
            return f"the port must be a number from 0 to 65535, not {port!r}"
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:  # any parse error, a missing certificate file...
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        return str(e) or type(e).__name__
    return None


class ListenError(CannotListenError):
    """A ``--listen`` endpoint that could not listen; its message is one line naming the
    endpoint and the reason."""

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


class _Listener(StreamServerEndpointService):
    """One ``--listen`` endpoint: a failure to listen raises ListenError at once; ``bound``
    fires with the listening port."""

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self._raiseSynchronously = True
        self.bound: Deferred[Any] = Deferred()

    def privilegedStartService(self) -> None:
        self.bound = Deferred()
        try:
            super().privilegedStartService()
        except Exception as e:
            raise ListenError(self.description, e) from e
        bound = self.bound

        def up(port: Any) -> Any:
            if port is not None:  # None: a failure, already logged
                bound.callback(port)
            return port  # stopService stops the port from this Deferred

        waiting = self._waitingForPort
        assert waiting is not None  # set by privilegedStartService
        waiting.addCallback(up)


class CSEService(MultiService):
    """The whole CSE; says "listening on" once every ``--listen`` endpoint listens (the
    ``listening`` Deferred fires then, with the ports)."""

    def __init__(self, announce: Callable[[list[Any]], None]) -> None:
        super().__init__()
        self.announce = announce
        self.listening: Deferred[list[Any]] = Deferred()

    def listeners(self) -> list[_Listener]:
        return [s for s in self if isinstance(s, _Listener)]

    def privilegedStartService(self) -> None:
        self.listening = Deferred()
        super().privilegedStartService()
        self._watch()

    def startService(self) -> None:
        if not self.listeners() or any(s._waitingForPort is None for s in self.listeners()):
            self.listening = Deferred()
            super().startService()
            self._watch()
        else:
            super().startService()

    def _watch(self) -> None:
        listening = self.listening

        def up(ports: list[Any]) -> None:
            self.announce(ports)
            listening.callback(ports)

        gatherResults([s.bound for s in self.listeners()]).addCallback(up)


def verifying_tls_endpoint(reactor: Any, description: str, ca_file: str) -> Any:
    """An ``ssl:`` server endpoint (``ssl:PORT:privateKey=...:certKey=...:interface=...``)
    that requires a client certificate signed by the CA in ``ca_file``."""
    from twisted.internet.ssl import Certificate, PrivateCertificate

    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)][1:]
    positional = [p for p in parts if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts if "=" in p)
    port = int(keywords.get("port") or positional[0])
    key_file = keywords.get("privateKey", "server.pem")
    cert_file = keywords.get("certKey", key_file)
    with open(cert_file, "rb") as f:
        pem = f.read()
    if cert_file != key_file:
        with open(key_file, "rb") as f:
            pem += b"\n" + f.read()
    with open(ca_file, "rb") as f:
        authority = Certificate.loadPEM(f.read())
    tls = PrivateCertificate.loadPEM(pem).options(authority)
    return endpoints.SSL4ServerEndpoint(
        reactor,
        port,
        tls,
        backlog=int(keywords.get("backlog", 50)),
        interface=keywords.get("interface", ""),
    )


def _loopback_only(description: str) -> bool:
    """Does the server endpoint listen on a loopback interface only?"""
    for part in re.split(r"(?<!\\):", description)[1:]:
        if part.startswith("interface="):
            host = part[len("interface=") :].replace("\\:", ":")
            return host.startswith("127.") or host in ("::1", "localhost")
    return description.startswith("unix:")


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

    def announce(ports: list[Any]) -> None:
        log.info(
            "acmews CSE {cse_id} ({cse_name}) listening on {listen}, poa {poa}",
            cse_id=options["cse-id"],
            cse_name=options["cse-name"],
            listen=", ".join(_address(port) for port in ports),
            poa=", ".join(poa) or "(none)",
        )

    if getattr(options, "parent", None) is not None:
        _one_line_errors()
    queue_options: dict[str, Any] = {
        "size": int(options["queue-size"]),
        "originator_bytes": int(options.get("queue-bytes-per-originator", 16 * 1024 * 1024)),
        "total_bytes": int(options.get("queue-bytes", 256 * 1024 * 1024)),
    }
    store = open_store(options.get("store") or DEFAULT_STORE, reactor, **queue_options)
    base_ri = options["cse-id"].lstrip("/")
    if len(store.resources) and store.resources.get(base_ri) is None:  # type: ignore[arg-type]
        store.service.stopService()
        where = store.description.removeprefix("sqlite:")
        raise StoreError(
            f"the store {where} holds another CSE's resources, not those of "
            f"{options['cse-id']} (another --cse-id?)"
        )
    top = CSEService(announce)
    # the store is the first child: it stops last, once nothing changes any more
    store.service.setServiceParent(top)
    originators = OriginatorMap()
    originators.setServiceParent(top)

    poa_credentials = options.get("poa-credentials-entries")

    def ws_connect(url: str, originator: str, subprotocols: Sequence[str]) -> Deferred[Any]:
        """An outbound connection to a registree's ws:// poa (the chain closes it)."""
        connecting = connect(
            url,
            originator=originator,
            serialization=subprotocols,
            reactor=reactor,
            options=poa_options,
            headers=poa_credentials.headers(url) if poa_credentials else None,
            tls=options.get("client-tls"),
        )
        return connecting.addCallback(lambda client: client.session)

    chain = PoaChain(
        originators,
        reactor,
        [
            WebSocketConnector(ws_connect, options["cse-id"], reactor),
            HttpConnector(
                reactor,
                AgentClient(reactor, options.get("client-tls")),
                credentials=poa_credentials,
            ),
        ],
        timeout=request_timeout,
        queue=store.queue,
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
    cse = CSE(config, chain, reactor, store.resources)
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
            headers=options.get("registrar-headers") or None,
            tls=options.get("client-tls"),
        )
        link.setServiceParent(top)
        top.link = link  # type: ignore[attr-defined]
    authorizer = None
    basic = options.get("basic-auth-file-entries") or []
    tokens = options.get("token-file-entries") or []
    if basic or tokens or options.get("client-ca"):
        from twisted.internet.threads import deferToThread

        authorizer = CredentialAuthorizer(
            basic,
            tokens,
            admin=options["admin"],
            defer_to_thread=deferToThread,
            certificates=bool(options.get("client-ca")),
            owner_of=cse.owner_of,
        )
    elif any(not _loopback_only(d) for d in listen):
        log.warn(
            "listening beyond loopback without authentication: anyone who reaches the port "
            "may claim any originator (see --basic-auth-file, --token-file)"
        )
    factory = OneM2MServerFactory(
        cse,
        originators,
        authorizer=authorizer,
        limits=ConnectionLimits(
            int(options.get("max-connections", ConnectionLimits().total)),
            int(options.get("max-connections-per-address", ConnectionLimits().per_address)),
            int(
                options.get(
                    "max-handshakes-per-address", ConnectionLimits().handshaking_per_address
                )
            ),
        ),
        reactor=reactor,
        options=connection_options,
    )
    client_ca = options.get("client-ca")
    for description in listen:
        if client_ca and description.startswith("ssl:"):
            endpoint = verifying_tls_endpoint(reactor, description, client_ca)
        else:
            endpoint = endpoints.serverFromString(reactor, description)
        service: IService = _Listener(description, endpoint, factory)
        service.setServiceParent(top)
    top.cse = cse  # type: ignore[attr-defined]
    top.factory = factory  # type: ignore[attr-defined]
    top.chain = chain  # type: ignore[attr-defined]
    top.store = store  # type: ignore[attr-defined]
    return top


def _address(port: Any) -> str:
    """A listening port's address as a URL-ish string (tcp:127.0.0.1:8180)."""
    try:
        host = port.getHost()
    except Exception:  # pragma: no cover - a port without an address
        return repr(port)
    if hasattr(host, "port"):
        kind = getattr(host, "type", "TCP").lower()
        return f"{kind}:{host.host}:{host.port}"
    return str(getattr(host, "name", host))


def _one_line_errors() -> None:
    """Under twistd, a ListenError or StoreError reaches the top of the process (twistd
    removes its pid file and re-raises): print it as one line instead of a traceback; exit
    status 1 as before."""
    previous = sys.excepthook
    if getattr(previous, "acmews", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, (ListenError, StoreError)):
            print(f"twistd acmews: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook.acmews = True  # type: ignore[attr-defined]
    sys.excepthook = hook
