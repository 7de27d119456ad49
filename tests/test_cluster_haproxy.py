"""The HAProxy configuration the docs give (examples/cluster/haproxy.cfg), tested: a real
HAProxy in front of two nodes of one CSE; devices connect through it and are reached from
either node (#22 item 7). Skipped without haproxy (``apt-get install haproxy``)."""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from acmews.client import connect
from acmews.codes import RSC, Operation
from acmews.config import Config
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.server import CSEService, make_service
from tests.interop.acme import settle_autobahn_timers
from tests.redis_helpers import REDIS, RedisTestCase

CONFIG = os.path.join(os.path.dirname(__file__), "..", "examples", "cluster", "haproxy.cfg")
NO_PING = ConnectionOptions(ping_interval=0)
SGN = {"m2m:sgn": {"sur": "s"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _HAProxy(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.waiting: list[tuple[bytes, Deferred[None]]] = []

    def saw(self, text: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if text in self.output:
            d.callback(None)
        else:
            self.waiting.append((text, d))
        return d

    def _received(self, data: bytes) -> None:
        self.output += data
        waiting, self.waiting = self.waiting, []
        for text, d in waiting:
            if text in self.output:
                d.callback(None)
            else:
                self.waiting.append((text, d))

    def outReceived(self, data: bytes) -> None:
        self._received(data)

    def errReceived(self, data: bytes) -> None:
        self._received(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class HAProxyTests(RedisTestCase):
    if not shutil.which("haproxy"):
        skip = "no haproxy (apt-get install haproxy)"
    timeout = 30

    async def start_node(self, name: str) -> CSEService:
        config = Config(
            listen=("tcp:0:interface=127.0.0.1",),
            store="memory:",
            connection=NO_PING,
            cluster=REDIS,
            node_name=name,
            cluster_prefix=self.prefix,
            admin_listen="tcp:0:interface=127.0.0.1",
        )
        service = make_service(config, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        await service.listening
        assert service.cluster is not None and service.admin is not None
        await service.admin.bound
        await service.cluster.when_available()
        return service

    async def test_devices_through_haproxy_are_reached_from_every_node(self) -> None:
        settle_autobahn_timers(self)  # (first: its clean-up runs last)
        nodes = [await self.start_node("node-1"), await self.start_node("node-2")]
        front = free_port()
        env = dict(os.environ, ACMEWS_LISTEN=f"127.0.0.1:{front}")
        for index, node in enumerate(nodes, 1):
            listener, admin = node.listeners[0].port, node.admin
            assert listener is not None and admin is not None and admin.port is not None
            env[f"ACMEWS_NODE{index}"] = f"127.0.0.1:{listener.getHost().port}"
            env[f"ACMEWS_NODE{index}_ADMIN"] = str(admin.port.getHost().port)
        haproxy = _HAProxy()
        binary = shutil.which("haproxy")
        assert binary is not None
        process = self.reactor.spawnProcess(
            haproxy, binary, [binary, "-db", "-f", CONFIG], env=env
        )

        async def stop() -> None:
            if not haproxy.ended.called:
                process.signalProcess("TERM")
            await haproxy.ended

        self.addCleanup(stop)
        got: dict[str, list[str]] = {}
        for originator in ("Cdev1", "Cdev2", "Cdev3", "Cdev4"):
            got[originator] = []
            await self.device(front, originator, got[originator])
        # leastconn spread them over both nodes
        here = [o for o in got if o in nodes[0].originators]
        there = [o for o in got if o in nodes[1].originators]
        self.assertEqual(sorted(here + there), sorted(got))
        self.assertTrue(here and there, (here, there))
        for originator in got:  # (bound on their node's side as the handshake ended)
            await self.held(nodes, originator)
        # each node reaches every device, on its own node or through the other
        for node in nodes:
            name = node.config.node_name
            for originator in got:
                request = Request(
                    Operation.NOTIFY, originator, f"{name}-{originator}", fr="/id-in", pc=SGN
                )
                response = await node.chain.send(originator, request, store=True)
                self.assertEqual(response.rsc, RSC.OK)
        for originator, seen in got.items():
            self.assertEqual(seen, [f"node-1-{originator}", f"node-2-{originator}"])
        # a node that is not ready is taken out (its /ready fails the health check)
        down = haproxy.saw(b"Server acmews/node-2 is DOWN")
        await nodes[1].stopService()
        await down
        for originator in ("Cdev5", "Cdev6"):
            await self.device(front, originator, [])
            self.assertIn(originator, nodes[0].originators)

    async def device(self, front: int, originator: str, seen: list[str]) -> Any:
        """A device connected through HAProxy (which may still be starting)."""

        def handler(request: Request) -> Response:
            seen.append(request.rqi)
            return Response(RSC.OK, request.rqi, request.rvi)

        for attempt in range(200):
            try:
                client = await connect(
                    f"ws://127.0.0.1:{front}",
                    originator=originator,
                    handler=handler,
                    reactor=self.reactor,
                    options=NO_PING,
                )
            except Exception:
                if attempt == 199:
                    raise
                continue
            self.addCleanup(lambda c=client: c.session.close(1000, "") if c.connected else None)
            return client

    async def held(self, nodes: list[CSEService], originator: str) -> None:
        for node in nodes:
            other = nodes[1] if node is nodes[0] else nodes[0]
            if originator in node.originators:
                assert other.cluster is not None
                for _ in range(500):
                    if await other.cluster.holder(originator) == node.config.node_name:
                        return
        self.fail(f"{originator} never published")
