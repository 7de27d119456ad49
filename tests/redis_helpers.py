"""What the tests of the cluster share: the real Redis they talk to (never a mock of it).

``ACMEWS_TEST_REDIS=redis://127.0.0.1:PORT`` names it (``.ci/run`` starts one through
``.ci/lib/redis.sh``); without it these tests skip. Each test works under a key prefix of
its own (and deletes its keys at the end), so that ``trial -j2`` runs them side by side.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from twisted.internet.defer import Deferred
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
