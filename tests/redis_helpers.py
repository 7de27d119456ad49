"""What the tests of the cluster share: the real Redis they talk to (never a mock of it).

``ACMEWS_TEST_REDIS=redis://127.0.0.1:PORT`` names it (``.ci/run`` starts one through
``.ci/lib/redis.sh``); without it these tests skip. Each test works under a key prefix of
its own (and deletes its keys at the end), so that ``trial -j2`` runs them side by side.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from acmews.cluster import ClusterNode, RedisClient, RedisURL
from acmews.testing import FakeOriginatorMap

REDIS = os.environ.get("ACMEWS_TEST_REDIS")
SKIP_REDIS = (
    None
    if REDIS
    else "no Redis: set ACMEWS_TEST_REDIS=redis://127.0.0.1:PORT (`. .ci/lib/redis.sh` starts one)"
)


async def connected(client: RedisClient) -> RedisClient:
    """``client``, started and connected (a test's own, to look into Redis)."""
    up: Deferred[None] = Deferred()
    client._on_state = lambda state, why: up.callback(None) if state and not up.called else None
    client.start()
    await up
    return client


class RedisTestCase(TestCase):
    """A test against the real Redis, under a key prefix of its own."""

    skip = SKIP_REDIS
    #: a behaviour that broke shows as a failure soon, not after trial's 120 s
    timeout = 20

    async def asyncSetUp(self) -> None:
        from twisted.internet import reactor

        assert REDIS is not None
        self.reactor: Any = reactor
        self.url = RedisURL.parse(REDIS)
        self.prefix = f"test:{uuid.uuid4().hex}:"
        self.clock = Clock()
        self.redis = await connected(RedisClient(self.url, reactor, name="test"))
        self.addCleanup(self._clean)

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def _clean(self) -> None:
        keys = await self.redis.command("KEYS", self.prefix + "*")
        if keys:
            await self.redis.command("DEL", *keys)
        await self.redis.stop()

    def key(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    async def node(
        self, name: str, originators: Any = None, **kw: Any
    ) -> tuple[ClusterNode, FakeOriginatorMap]:
        """A started node ``name`` (its leases on this test's clock), once it is in Redis."""
        originators = originators if originators is not None else FakeOriginatorMap()
        node = ClusterNode(
            self.url,
            name,
            originators,
            self.reactor,
            prefix=self.prefix,
            clock=kw.pop("clock", self.clock),
            **kw,
        )
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        await node.when_available()
        return node, originators


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"Ready to accept connections" in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output[-500:].decode("utf-8", "replace")))
        self.ended.callback(None)


class PrivateRedis:
    """A redis-server of a test's own (to stop and start again), on a free loopback port,
    without persistence: a restart loses every key, as a Redis that crashed does."""

    def __init__(self, test: TestCase) -> None:
        import socket

        from twisted.internet import reactor

        self.reactor: Any = reactor
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self.directory = test.mktemp()
        os.makedirs(self.directory)
        self.process: _RedisProcess | None = None
        test.addCleanup(self.stop)

    async def start(self) -> None:
        protocol = _RedisProcess()
        binary = shutil.which("redis-server")
        assert binary is not None
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", self.directory, "--daemonize", "no"]
        self.reactor.spawnProcess(protocol, binary, args, env=None)
        self.process = protocol
        await protocol.ready

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.ended.called:
            return
        process.transport.signalProcess("TERM")
        await process.ended


SKIP_SERVER = (
    None if shutil.which("redis-server") else "no redis-server (apt-get install redis-server)"
)
