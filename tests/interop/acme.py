"""Start and stop a real ACME CSE (``acmecse``) for the interop tests.

ACME's configuration lives here as templates (copied from what was tried by hand with
acmecse 2026.5.3): headless, loopback only, in-memory database reset at start."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

ACME = os.environ.get("ACMEWS_ACME")
SKIP = None if ACME else "set ACMEWS_ACME to the acmecse executable to run the interop tests"

#: the parts of the inis common to an IN-CSE and an MN-CSE
_COMMON = """
[websocket]
; the WS *client* code (registrar link) lives in the WebSocket server plugin too
enable=true
port={ws_port}
listenIF=127.0.0.1
address=ws://127.0.0.1:{ws_port}
; seconds ACME waits for the response to a request it sent over WS (notifications etc.)
timeout=5.0

[http]
; used for the readiness poll only
enable=true
port={http_port}
listenIF=127.0.0.1
address=http://127.0.0.1:{http_port}

[mqtt]
enable=false

[coap]
enable=false

[database]
type=memory
resetOnStartup=true

[logging]
enableFileLogging=true
enableScreenLogging=false
path=${{basic.config:baseDirectory}}/logs
level=info
maxLogMessageLength=0
size=20000000
count=2

[console]
headless=true

[textui]
enable=false
startWithTUI=false

[webui]
enable=false

[cse.statistics]
enable=false
"""

#: ACME as IN-CSE /id-in (CSEBase cse-in, admin CAdmin)
IN_INI = (
    """
[basic.config]
cseType=IN
cseID=id-in
cseName=cse-in
adminID=CAdmin
networkInterface=127.0.0.1
cseHost=127.0.0.1
httpPort={http_port}
databaseType=memory
logLevel=info

[cse]
; ACME advertises its WebSocket address only through this key
poa=ws://127.0.0.1:{ws_port}
enableSubscriptionVerificationRequests=true
asyncSubscriptionNotifications=true

[cse.security]
secret=acme-interop-test
enableACPChecks=true

[cse.registration]
allowedAEOriginators=C*,S*,/*/C*,/*/S*
allowedCSROriginators=/id-mn*

[cse.operation.requests]
enable=false
"""
    + _COMMON
)

#: ACME as MN-CSE /id-mn (cse-mn) registering over WebSocket to a registrar /id-in (cse-in)
MN_INI = (
    """
[basic.config]
cseType=MN
cseID=id-mn
cseName=cse-mn
adminID=CAdmin
networkInterface=127.0.0.1
cseHost=127.0.0.1
httpPort={http_port}
databaseType=memory
logLevel=info
registrarCseHost=127.0.0.1
registrarCsePort={registrar_port}
registrarCseID=id-in
registrarCseName=cse-in

[cse]
; only the ws:// poa: ACME sends requests to *every* poa of a target, and the registrar
; should reach this CSE one way
poa=ws://127.0.0.1:{ws_port}

[cse.security]
secret=acme-interop-test-mn
; acmews forwards its admin's requests with fr /id-in/CAdmin, which the ACPs of ACME's
; CSEBase do not grant anything (4103): not a deviation, ACME's own policy; off for the test
enableACPChecks=false

[cse.registrar]
; a ws:// scheme makes ACME send all registrar requests over WebSocket
address=ws://127.0.0.1:{registrar_port}
root=
cseID=/id-in
resourceName=cse-in
serialization={registrar_serialization}

[cse.registration]
checkInterval=30
"""
    + _COMMON
)


def free_ports(count: int) -> list[int]:
    """``count`` different loopback TCP ports free right now.

    They come from below Linux's ephemeral range (32768-60999), so that no outgoing
    connection of this process takes one as its source port before ACME binds it, and they
    are all held open until all are chosen (two ports bound and closed one after the other
    may be the same one)."""
    import random

    held: list[socket.socket] = []
    try:
        while len(held) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", random.randint(20000, 32000)))
            except OSError:
                s.close()
                continue
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """A loopback TCP port free right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


class _AcmeProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.done = False

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.done = True
        self.ended.callback(None)


class Acme:
    """A running ``acmecse`` in its own directory: its ws:// URL and a stop()."""

    def __init__(self, directory: str, ws_port: int, http_port: int) -> None:
        self.directory = directory
        self.ws_port = ws_port
        self.http_port = http_port
        self.url = f"ws://127.0.0.1:{ws_port}"
        self.protocol = _AcmeProtocol()
        self.transport: Any = None

    def log_tail(self) -> str:
        """The end of ACME's output and log, for failure messages."""
        text = self.protocol.output.decode(errors="replace")
        logs = os.path.join(self.directory, "logs")
        if os.path.isdir(logs):
            for name in sorted(os.listdir(logs)):
                path = os.path.join(logs, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text += f"\n--- {name}\n" + f.read()[-4000:]
        return text[-8000:]

    async def stop(self, reactor: Any) -> None:
        """SIGTERM, then SIGKILL if it is still there after 10 s; returns once it is gone."""
        if self.transport is None or self.protocol.done:
            return
        self.transport.signalProcess("TERM")
        for _ in range(100):
            if self.protocol.done:
                return
            await deferLater(reactor, 0.1, lambda: None)
        if not self.protocol.done:
            self.transport.signalProcess("KILL")
            await self.protocol.ended


async def _ready(reactor: Any, http_port: int, cse_name: str) -> bool:
    """Whether an HTTP RETRIEVE of the CSEBase as CAdmin answers 2000."""
    from twisted.web.client import Agent, readBody
    from twisted.web.http_headers import Headers

    agent = Agent(reactor, connectTimeout=2)
    headers = Headers(
        {
            "X-M2M-Origin": ["CAdmin"],
            "X-M2M-RI": ["ready"],
            "X-M2M-RVI": ["4"],
            "Accept": ["application/json"],
        }
    )
    url = f"http://127.0.0.1:{http_port}/{cse_name}".encode()
    try:
        response = await agent.request(b"GET", url, headers)
        await readBody(response)
    except Exception:
        return False
    return response.headers.getRawHeaders("X-M2M-RSC") == ["2000"]


async def start_acme(
    test: Any, ini: str, cse_name: str, *, again: Acme | None = None, **ports: int | str
) -> Acme:
    """Start ``acmecse`` with ``ini`` (a template above, formatted with fresh ws/http ports
    -- or ``again``'s, to restart a stopped ACME on the same ones -- and ``ports``) in a fresh
    directory; stopped at ``test``'s cleanup. Returns once the CSEBase answers over HTTP (the
    ports open before the CSEBase exists), at most 60 s."""
    from twisted.internet import reactor

    if not ACME:
        raise SkipTest(SKIP)
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    acme = Acme(directory, *((again.ws_port, again.http_port) if again else free_ports(2)))
    with open(os.path.join(directory, "acme.ini"), "w", encoding="utf-8") as f:
        f.write(ini.format(ws_port=acme.ws_port, http_port=acme.http_port, **ports))
    acme.transport = reactor.spawnProcess(
        acme.protocol,
        ACME,
        [ACME, "--base-directory", directory, "--headless"],
        env=dict(os.environ),
        path=directory,
    )
    test.addCleanup(lambda: Deferred.fromCoroutine(acme.stop(reactor)))
    for _ in range(120):
        if acme.protocol.done:
            # headless ACME prints no configuration errors and exits 0
            test.fail("acmecse exited during startup:\n" + acme.log_tail())
        if await _ready(reactor, acme.http_port, cse_name):
            return acme
        await deferLater(reactor, 0.5, lambda: None)
    test.fail("acmecse not ready after 60 s:\n" + acme.log_tail())
    raise AssertionError  # not reached


async def _settled(reactor: Any) -> None:
    for _ in range(100):
        if not any("_notify_bucket" in repr(call) for call in reactor.getDelayedCalls()):
            return
        await deferLater(reactor, 0.05, lambda: None)


def settle_autobahn_timers(test: Any) -> None:
    """At ``test``'s very end (call it first), wait up to 5 s for Autobahn's batched timer
    buckets to fire: a cancelled timeout (handshake, close) leaves its bucket's DelayedCall
    scheduled, which trial would report as a dirty reactor."""
    from twisted.internet import reactor

    test.addCleanup(lambda: Deferred.fromCoroutine(_settled(reactor)))


__all__ = [
    "ACME",
    "IN_INI",
    "MN_INI",
    "SKIP",
    "Acme",
    "free_port",
    "free_ports",
    "settle_autobahn_timers",
    "start_acme",
]
