"""``twistd acmews``: a small, real CSE on the oneM2M WebSocket binding.

A thin plugin: :class:`Options` parses and checks the command line into a frozen
:class:`~acmews.config.Config` (every default stated there once), and :func:`makeService`
hands it to :func:`acmews.server.make_service`, which composes the service tree.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from twisted.python import usage

from acmews.auth import read_basic_file, read_token_file
from acmews.client import client_credentials
from acmews.config import SHARED_STORES, Config, RegistrarConfig
from acmews.durable import StoreError
from acmews.endpoints import ServerEndpoint
from acmews.options import ConnectionOptions
from acmews.poa import TargetPolicy, read_outbound_credentials
from acmews.server import CSEService, ListenError, make_service, tune_collector

__all__ = ["Options", "TwistdExit", "check_ports", "makeService"]

DEFAULTS = Config()
_CONNECTION = DEFAULTS.connection
_REGISTRAR = RegistrarConfig("")

#: the characters of a resource name, a CSE-ID (after its slash) and an originator: URI
#: unreserved characters
_NAME = re.compile(r"[A-Za-z0-9._~-]+")
_T = TypeVar("_T")


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
        "store-and-forward for notifications). Defaults match ACME's. Logs with bounded "
        "files (10 MB, 5 kept; $ACMEWS_LOGFILE, '-' for standard output): twistd "
        "--logger=acmews.logs.bounded (text) or --logger=acmews.logs.json (one JSON object "
        "per line)."
    )
    optFlags: list[Any] = [
        [
            "insecure",
            None,
            "Listen beyond loopback without credentials: anyone who reaches the port may "
            "claim any originator (without it, such a listener refuses to start).",
        ],
        [
            "keep-registration",
            None,
            "With --registrar: keep this CSE's remoteCSE at the registrar when it stops.",
        ],
        [
            "compression",
            None,
            "Accept permessage-deflate (RFC 7692) from clients that offer it (the websockets "
            "library does by default): the message size limit then applies to the inflated "
            "size, checked while inflating (1009 beyond). Off by default: it costs about 50 "
            "KiB of memory per connection that has passed a message each way, and CPU per "
            "message (JSON notifications take about a tenth of the bytes).",
        ],
        [
            "log-debug",
            None,
            "Also log acmews's debug lines (every poa step, every queued notification); off "
            "by default, as peers can make them plentiful.",
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
        ["registrar-cse-id", None, _REGISTRAR.cse_id, "With --registrar: the registrar's CSE-ID."],
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
            _REGISTRAR.cse_name,
            "With --registrar: the resource name of the registrar's CSEBase.",
        ],
        [
            "registrar-serialization",
            None,
            _REGISTRAR.serialization,
            "With --registrar: json or cbor on the link to the registrar.",
        ],
        [
            "cluster",
            None,
            None,
            "redis://HOST[:PORT][/DB]: this process is one node of several serving one CSE "
            "(behind a TCP load balancer), with the directory of live connections and the "
            "relay between nodes on that Redis; needs a shared --store (postgresql:). A "
            "password: redis://:PASSWORD@HOST or, better, the environment variable "
            "ACMEWS_REDIS_PASSWORD (or REDISCLI_AUTH); it is never logged.",
        ],
        [
            "node-name",
            None,
            None,
            "With --cluster: this node's name, unique in the cluster (default: the host name "
            "and the first listener's port).",
        ],
        [
            "cluster-lease",
            None,
            DEFAULTS.cluster_lease,
            "With --cluster: seconds a node's lease in Redis lasts (renewed every 0.3 of it;"
            " the leader's lasts 1.2 of it): a node that died is passed over, and its"
            " singletons (the registrar link, the sweeps) taken over, within about that long.",
            _seconds("cluster-lease"),
        ],
        ["cse-id", None, DEFAULTS.cse_id, "The CSE-ID (with its leading slash)."],
        ["cse-name", None, DEFAULTS.cse_name, "The resource name of the CSEBase."],
        ["sp-id", None, DEFAULTS.sp_id, "The M2M Service Provider ID."],
        ["admin", None, DEFAULTS.admin, "The admin originator, allowed to do everything."],
        [
            "request-timeout",
            None,
            _CONNECTION.request_timeout,
            "Seconds to wait for the answer to a request the CSE sends (notification, "
            "verification, poa delivery).",
            _seconds("request-timeout"),
        ],
        [
            "max-message-size",
            None,
            _CONNECTION.max_message_size,
            "Largest WebSocket message in bytes; a larger one closes the connection (1009).",
            _count("max-message-size"),
        ],
        [
            "ping-interval",
            None,
            _CONNECTION.ping_interval,
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
            _CONNECTION.ping_timeout,
            "Seconds without a pong before the connection is closed.",
            _seconds("ping-timeout"),
        ],
        [
            "write-buffer-size",
            None,
            _CONNECTION.write_buffer_size,
            "Bytes queued for a peer that does not read before the CSE stops reading from it; "
            "still backed up after the ping timeout, it is closed (1008).",
            _count("write-buffer-size"),
        ],
        [
            "max-message-frames",
            None,
            _CONNECTION.max_message_frames,
            "Frames one WebSocket message may span (zero-length frames count); beyond: 1008.",
            _count("max-message-frames"),
        ],
        [
            "message-timeout",
            None,
            _CONNECTION.message_timeout,
            "Seconds a message sent in several frames may take to complete; beyond: 1008.",
            _seconds("message-timeout"),
        ],
        [
            "unbound-timeout",
            None,
            _CONNECTION.unbound_timeout,
            "Seconds a connection may stay without an originator (no X-M2M-Origin, no AE "
            "registered on it) before it is closed (1008); 0 turns this off.",
            _number(
                "unbound-timeout",
                float,
                "zero (no limit) or a positive number of seconds",
                lambda n: n >= 0,
            ),
        ],
        [
            "max-handshake-size",
            None,
            _CONNECTION.max_handshake_size,
            "Largest opening handshake (request line and headers) in bytes; a larger one is "
            "answered with 431 and closed.",
            _count("max-handshake-size"),
        ],
        [
            "max-connections",
            None,
            DEFAULTS.limits.total,
            "Connections accepted in all; more are aborted at once (logged). At start the "
            "open-file limit is raised, up to its hard limit, to hold them and --max-outbound "
            "+ 64 more files (store, log, deliveries); where the hard limit is lower, fewer "
            "connections are accepted, with a warning (raise it with ulimit -n).",
            _count("max-connections"),
        ],
        [
            "max-connections-per-address",
            None,
            DEFAULTS.limits.per_address,
            "Connections accepted from one client address; keep it under half of "
            "--max-connections (a warning otherwise), so that two addresses cannot lock out "
            "a third (behind a proxy, where every client has the proxy's address, raise it "
            "to --max-connections).",
            _count("max-connections-per-address"),
        ],
        [
            "max-handshakes-per-address",
            None,
            DEFAULTS.limits.handshaking_per_address,
            "Connections from one client address still in their opening handshake.",
            _count("max-handshakes-per-address"),
        ],
        [
            "max-outbound",
            None,
            DEFAULTS.max_outbound,
            "Outbound poa/nu deliveries in flight at once (connections the CSE opens); "
            "more wait their turn.",
            _count("max-outbound"),
        ],
        [
            "max-outbound-per-host",
            None,
            DEFAULTS.max_outbound_per_host,
            "Outbound poa/nu deliveries in flight at once to one host (each counts until its "
            "connection is closed; a timed-out one is aborted).",
            _count("max-outbound-per-host"),
        ],
        [
            "max-forwarded-per-link",
            None,
            DEFAULTS.max_forwarded_per_link,
            "Requests forwarded to one next hop (a remote CSE, the registrar, an AE a NOTIFY is "
            "relayed to) that may wait for its answers at once; past it a forwarded request is "
            "answered 5103 at once (the link is saturated).",
            _count("max-forwarded-per-link"),
        ],
        [
            "max-forwarded-per-originator",
            None,
            DEFAULTS.max_forwarded_per_originator,
            "The same, for the requests of one originator to one next hop (so that one "
            "originator cannot take a whole link); past it: 5103.",
            _count("max-forwarded-per-originator"),
        ],
        [
            "queue-size",
            None,
            DEFAULTS.queue_size,
            "Notifications kept per unreachable originator (store-and-forward); the oldest is "
            "dropped beyond that.",
            _count("queue-size"),
        ],
        [
            "queue-bytes",
            None,
            DEFAULTS.queue_bytes,
            "Bytes all stored notifications may hold together; beyond it new ones are refused.",
            _count("queue-bytes"),
        ],
        [
            "queue-bytes-per-originator",
            None,
            DEFAULTS.queue_bytes_per_originator,
            "Bytes the stored notifications of one originator may hold; the oldest go first.",
            _count("queue-bytes-per-originator"),
        ],
        [
            "store",
            None,
            DEFAULTS.store,
            "Where resources and queued notifications are kept: sqlite:PATH (a SQLite file, "
            "created if missing; every change is on disk before its response is sent), "
            "postgresql://[USER@]HOST[:PORT]/DBNAME[?params] (a libpq URI; a database "
            "several acmews processes share as one CSE; the password the libpq ways) or "
            "memory: (lost when the process exits; for tests and benchmarks).",
        ],
        [
            "notification-expiry",
            None,
            DEFAULTS.notification_expiry,
            "Seconds a stored notification without its own rqet is kept.",
            _seconds("notification-expiry"),
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULTS.shutdown_timeout,
            "Seconds a graceful stop (SIGTERM) may take to answer the requests in flight: "
            "the listeners stop at once, each connection is closed with 1001 (going away) "
            "once its requests are answered, and what is still unanswered after this long is "
            "closed anyway; the store then writes what it holds.",
            _seconds("shutdown-timeout"),
        ],
        [
            "admin-listen",
            None,
            None,
            "A server endpoint for the admin listener, e.g. tcp:9180:interface=127.0.0.1: "
            "Prometheus metrics at /metrics (connections, refused handshakes, requests by "
            "operation and response class with their latency, notifications, queue, store "
            "commits, registrar link, process); /health (200 while the process serves) and "
            "/ready (200, or 503 while not listening, stopping, the store read-only or the "
            "registrar link down), with JSON bodies. Off by default: then nothing is counted "
            "per request. It has no authentication: keep it on loopback or a private network.",
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
        (/id-mn*); repeatable. They may act as CSEs (register a remoteCSE, relay
        notifications to AEs) without proving it; by default only a CSE whose credential or
        certificate names its CSE-ID may (and the registrar this CSE dialled)."""
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

    def getUsage(self, width: int | None = None) -> str:
        """Twisted's layout of the options, without its two faults: ``textwrap``'s defaults
        broke words at hyphens and long values apart (``--max-`` / ``connections``,
        ``tcp:`` / ``8180:interface=...``), and a help taken from an ``opt_`` docstring kept
        its line breaks' indentation as runs of spaces. Each help is one paragraph here,
        wrapped at spaces only."""
        width = width or int(os.environ.get("COLUMNS", "80"))
        rows: list[tuple[str, str]] = []
        for opt in sorted(self.longOpt, key=lambda o: o.rstrip("=")):
            name = opt.rstrip("=")
            doc = " ".join((self.docs.get(name) or "").split())
            default = self.defaults.get(name)
            if opt.endswith("=") and default is not None:
                doc = f"{doc} [default: {default}]"
            rows.append((f"--{opt}", doc))
        label_width = max(len(label) for label, _ in rows)
        indent = 6 + label_width + 2
        text = ["Options:"]
        for label, doc in rows:
            lines = textwrap.wrap(
                doc,
                max(30, width - indent),
                break_long_words=False,
                break_on_hyphens=False,
            ) or [""]
            text.append(f"      {label:<{label_width}}  {lines[0]}".rstrip())
            text.extend(" " * indent + line for line in lines[1:])
        paragraph = textwrap.wrap(
            " ".join(self.longdesc.split()), width, break_long_words=False, break_on_hyphens=False
        )
        return "\n".join(text) + "\n\n" + "\n".join(paragraph) + "\n"

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

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = list(DEFAULTS.listen)
        for description in self["listen"]:
            problem = ServerEndpoint.parse(description).problem()
            if problem:
                raise usage.UsageError(f"--listen {description}: {problem}")
        admin = self["admin-listen"]
        if admin is not None:
            problem = ServerEndpoint.parse(admin).problem()
            if problem:
                raise usage.UsageError(f"--admin-listen {admin}: {problem}")
        store = self["store"]
        if self["node-name"] is not None and self["cluster"] is None:
            raise usage.UsageError("--node-name needs --cluster")
        shared = store.startswith(SHARED_STORES)
        if self["cluster"] is not None and not shared:
            raise usage.UsageError(
                "--cluster needs a store that every node shares (--store postgresql://...)"
            )
        if (
            store != "memory:"
            and not shared
            and (not store.startswith("sqlite:") or store == "sqlite:")
        ):
            raise usage.UsageError(
                "--store must be sqlite:PATH, postgresql://[USER@]HOST[:PORT]/DBNAME or "
                f"memory:, not {store!r}"
            )
        self._identity()
        if self["deny-targets"] is None:
            self["deny-targets"] = list(DEFAULTS.deny_targets)
        try:
            TargetPolicy(self["allow-targets"], self["deny-targets"])
        except ValueError as e:
            raise usage.UsageError(f"--allow-targets/--deny-targets: {e}") from None
        self.config = Config(
            cse_id=self["cse-id"],
            cse_name=self["cse-name"],
            sp_id=self["sp-id"],
            admin=self["admin"],
            listen=tuple(self["listen"]),
            poa=tuple(self["poa"]),
            store=store,
            connection=ConnectionOptions(
                request_timeout=float(self["request-timeout"]),
                max_message_size=int(self["max-message-size"]),
                ping_interval=float(self["ping-interval"]),
                ping_timeout=float(self["ping-timeout"]),
                write_buffer_size=int(self["write-buffer-size"]),
                max_message_frames=int(self["max-message-frames"]),
                message_timeout=float(self["message-timeout"]),
                max_handshake_size=int(self["max-handshake-size"]),
                unbound_timeout=float(self["unbound-timeout"]),
                compression=bool(self["compression"]),
            ),
            limits=type(DEFAULTS.limits)(
                int(self["max-connections"]),
                int(self["max-connections-per-address"]),
                int(self["max-handshakes-per-address"]),
            ),
            max_outbound=int(self["max-outbound"]),
            max_outbound_per_host=int(self["max-outbound-per-host"]),
            max_forwarded_per_link=int(self["max-forwarded-per-link"]),
            max_forwarded_per_originator=int(self["max-forwarded-per-originator"]),
            queue_size=int(self["queue-size"]),
            queue_bytes=int(self["queue-bytes"]),
            queue_bytes_per_originator=int(self["queue-bytes-per-originator"]),
            notification_expiry=float(self["notification-expiry"]),
            allow_targets=tuple(self["allow-targets"]),
            deny_targets=tuple(self["deny-targets"]),
            allowed_csr_originators=tuple(
                self["allowed-csr-originators"] or DEFAULTS.allowed_csr_originators
            ),
            basic_credentials=tuple(self._read("basic-auth-file", read_basic_file) or ()),
            token_credentials=tuple(self._read("token-file", read_token_file) or ()),
            client_ca=self._client_ca(),
            poa_credentials=self._read("poa-credentials", read_outbound_credentials),
            insecure=bool(self["insecure"]),
            log_debug=bool(self["log-debug"]),
            admin_listen=admin,
            shutdown_timeout=float(self["shutdown-timeout"]),
            cluster=self["cluster"],
            node_name=self["node-name"],
            cluster_lease=float(self["cluster-lease"]),
            **self._outbound(),
        )
        problem = self.config.cluster_problem()
        if problem is not None:
            raise usage.UsageError(problem)
        exposure = self.config.exposure()
        if exposure is not None:
            raise usage.UsageError(exposure)

    def _identity(self) -> None:
        """The CSE's names, its admin and its poa: plain URI characters, one line each."""
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

    def _read(self, option: str, reader: Callable[[Any], _T]) -> _T | None:
        """``reader`` over the lines of the file ``--option`` names (None without it)."""
        path = self[option]
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return reader(f)
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"--{option} {path}: {e}") from None

    def _client_ca(self) -> str | None:
        path = self["client-ca"]
        if path is not None:
            from twisted.internet.ssl import Certificate

            try:
                with open(path, "rb") as f:
                    Certificate.loadPEM(f.read())
            except Exception as e:
                raise usage.UsageError(f"--client-ca {path}: {e}") from None
        return path  # type: ignore[no-any-return]

    def _outbound(self) -> dict[str, Any]:
        """What the CSE shows to others: its registrar and the registrar link's
        Authorization, its TLS trust and certificate."""
        url = self["registrar"]
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise usage.UsageError("--registrar must be a ws:// or wss:// URL")
        try:
            credentials = client_credentials(
                prefix="registrar-",
                user=self["registrar-user"],
                password=self["registrar-password"],
                password_option=True,
                token=self["registrar-token"],
                token_file=self["registrar-token-file"],
                ca_file=self["ca-file"],
                certificate=self["client-certificate"],
                key=self["client-key"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        named = (self["registrar-user"], self["registrar-token"], self["registrar-token-file"])
        if url is None:
            if any(named):
                raise usage.UsageError("registrar credentials need --registrar")
            return {"client_tls": credentials.tls}
        if self["registrar-serialization"] not in ("json", "cbor"):
            raise usage.UsageError("--registrar-serialization must be json or cbor")
        rid = self["registrar-cse-id"]
        if not rid.startswith("/") or rid.startswith("//") or rid == self["cse-id"]:
            raise usage.UsageError("--registrar-cse-id must look like /id-in (not this CSE's)")
        registrar = RegistrarConfig(
            url,
            cse_id=rid,
            cse_name=self["registrar-cse-name"],
            serialization=self["registrar-serialization"],
            keep_registration=bool(self["keep-registration"]),
            headers=credentials.headers,
        )
        return {"client_tls": credentials.tls, "registrar": registrar}


class TwistdExit(Exception, SystemExit):
    """An error that ends ``twistd acmews`` at start: twistd's runner (an ``except
    Exception``) removes its pid file and tells a daemon's parent; at the top of the process
    Python prints the message as one line and exits with status 1 (a SystemExit)."""

    def __init__(self, error: BaseException) -> None:
        message = f"twistd acmews: {error}"
        super().__init__(message)
        self.code = message


def makeService(options: Options, reactor: Any = None) -> CSEService:
    """The whole CSE as a service tree; ``reactor`` is the global one when None. Under twistd
    a store or listener that cannot be used ends the process with one line."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if options.parent is None:
        return make_service(options.config, reactor)
    if isinstance(options.parent, dict) and not options.parent.get("nodaemon", True):
        check_ports(options.config.listen)  # twistd without -n: before it forks
    try:
        service = make_service(options.config, reactor)
    except (StoreError, ValueError) as e:  # ValueError: a store this build cannot open
        raise TwistdExit(e) from None
    service.start_error = TwistdExit
    tune_collector()  # the process is the server's: twistd's, not an embedding program's
    return service


def check_ports(listen: Sequence[str]) -> None:
    """Before twistd goes into the background: can each TCP port be bound? A daemon's start
    error reaches the terminal only as the repr of its first 100 bytes (``An error has
    occurred: b'acmews.tap.TwistdExit: twistd acmews: cannot listen on tcp:8180:inte'``), so
    a port in use or not allowed is found here, while the error is still one line on the
    terminal. The socket is bound as Twisted binds (``SO_REUSEADDR``) and closed at once;
    what is missed here (a port taken in between) still stops the daemon, only less
    readably."""
    for description in listen:
        endpoint = ServerEndpoint.parse(description)
        if not endpoint.is_tcp or not endpoint.port.isdigit() or endpoint.port == "0":
            continue
        host = endpoint.interface or ("::" if endpoint.kind == "tcp6" else "")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(endpoint.port)))
            except OSError as e:
                raise TwistdExit(ListenError(description, e)) from None
