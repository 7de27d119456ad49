"""One CSE on three real ``twistd acmews --cluster redis://... --store postgresql://...``
processes (#22): one PostgreSQL schema and one Redis shared by them, each node on a port of
its own on loopback, devices that are real acmews clients. Nodes are killed with SIGKILL, a
registrar CSE is a process too, and Redis is restarted under load.

Each test has a CSE-ID of its own (its keys in Redis begin with ``acmews:CSE-ID:``) and a
schema of its own, so that ``trial -j2`` runs them side by side. The nodes' leases are short
(``--cluster-lease``) so that the fault tests take seconds, not the defaults' tens of
seconds.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

import acmews
from acmews.client import Client, connect
from acmews.cluster import RedisClient, RedisURL
from acmews.codes import RSC, ResourceType
from acmews.primitive import Request, Response
from tests.helpers import NO_PING
from tests.interop.acme import settle_autobahn_timers
from tests.pg_helpers import SKIP as SKIP_PG
from tests.pg_helpers import fresh_database, sql
from tests.redis_helpers import REDIS, SKIP_REDIS, SKIP_SERVER, PrivateRedis, connected

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(acmews.__file__)))
LISTENING = re.compile(rb"listening on tcp:127\.0\.0\.1:(\d+)")
reactor: Any = _reactor
TWISTD = "from twisted.scripts.twistd import run; run()"

#: seconds a node's lease lasts in these tests (renewed every 0.3 s of it; the leader's 1.2)
LEASE = 1.5
#: seconds a node waits for the answer to what it sends (a relay to a node that died)
REQUEST_TIMEOUT = 3


class _Twistd(ProcessProtocol):
    """A ``twistd acmews`` process: its output, its port once it listens, its end."""

    def __init__(self, name: str, cluster: bool) -> None:
        self.name = name
        self.cluster = cluster
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._watching: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-500_000:]
        found = LISTENING.search(self.output)
        # (in a cluster: once its lease and bindings are in Redis too)
        if (
            found
            and not self.port.called
            and (not self.cluster or b"reaches Redis" in self.output)
        ):
            self.port.callback(int(found.group(1)))
        for watched in list(self._watching):
            if watched[0] in self.output:
                self._watching.remove(watched)
                watched[1].callback(None)

    errReceived = outReceived

    def saw(self, text: bytes) -> Deferred[None]:
        """Fires once ``text`` is in the output (at once if it is)."""
        d: Deferred[None] = Deferred()
        if text in self.output:
            d.callback(None)
        else:
            self._watching.append((text, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            self.port.errback(Exception(f"twistd {self.name} ended: {self.output[-3000:]!r}"))
        self.ended.callback(None)


class Device:
    """A device: records the ``con`` of each contentInstance it is notified of; answers at
    once unless told to hold."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.hold = False
        self.held: list[Deferred[Response]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, request: Request) -> Response | Deferred[Response]:
        sgn = (request.pc or {}).get("m2m:sgn", {}) if isinstance(request.pc, dict) else {}
        cin = ((sgn.get("nev") or {}).get("rep") or {}).get("m2m:cin")
        if cin is not None:
            self.got.append(cin["con"])
        for waiting in list(self._waiting):
            if len(self.got) >= waiting[0]:
                self._waiting.remove(waiting)
                waiting[1].callback(None)
        if self.hold:
            self.held.append(Deferred())
            return self.held[-1]
        return Response(RSC.OK, request.rqi, request.rvi)

    def has(self, count: int, timeout: float = 20) -> Deferred[None]:
        """Fires once ``count`` notifications came (fails after ``timeout`` s)."""
        d: Deferred[None] = Deferred()
        if len(self.got) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
            d.addTimeout(timeout, reactor)
        return d


class ProcessesTestCase(TestCase):
    skip = SKIP_REDIS or SKIP_PG
    timeout = 90

    def setUp(self) -> Deferred[None]:
        settle_autobahn_timers(self)  # (first: its clean-up runs last)
        self.cse_id = f"/id-{secrets.token_hex(4)}"
        self.prefix = f"acmews:{self.cse_id}:"
        self.store = fresh_database(self)
        self.redis_url = REDIS
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        assert REDIS is not None
        self.redis = await connected(RedisClient(RedisURL.parse(REDIS), reactor, name="test"))
        self.addCleanup(self._clean_redis)

    async def _clean_redis(self) -> None:
        keys = await self.redis.command("KEYS", self.prefix + "*")
        if keys:
            await self.redis.command("DEL", *keys)
        await self.redis.stop()

    def spawn(self, name: str | None, *argv: str, cluster: str | None = None) -> _Twistd:
        """``twistd acmews`` (a node of this test's cluster unless ``name`` is None); killed
        (SIGKILL) at clean-up if it still runs."""
        twistd = _Twistd(name or "cse", name is not None)
        args = ["--listen", "tcp:0:interface=127.0.0.1", "--ping-interval", "0"]
        args += ["--request-timeout", str(REQUEST_TIMEOUT)]
        if name is not None:
            args += ["--store", self.store, "--cluster", cluster or self.redis_url]
            args += ["--node-name", name, "--cluster-lease", str(LEASE), "--cse-id", self.cse_id]
        args += list(argv)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        process = reactor.spawnProcess(
            twistd,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "acmews", *args],
            env=env,
            path=self.mktemp_dir(),
        )
        twistd.process = process  # type: ignore[attr-defined]

        def kill() -> Deferred[None]:
            if not twistd.ended.called:
                process.signalProcess("KILL")
            return twistd.ended

        self.addCleanup(kill)
        return twistd

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    async def node(self, name: str | None, *argv: str, cluster: str | None = None) -> str:
        """A started node; its ws:// URL once it listens (and is in Redis)."""
        twistd = self.spawn(name, *argv, cluster=cluster)
        setattr(self, f"process_{name or 'cse'}", twistd)
        return f"ws://127.0.0.1:{await twistd.port}"

    async def client(self, url: str, originator: str, handler: Any = None) -> Client:
        client = await connect(
            url, originator=originator, handler=handler, reactor=reactor, options=NO_PING
        )
        self.addCleanup(lambda: client.session.close(1000, "") if client.connected else None)
        return client

    async def bound_to(self, originator: str, node: str | None, within: float = 20) -> float:
        """Until Redis names ``node`` as holding ``originator`` (None: nobody); the seconds
        it took (fails after ``within``)."""
        started = reactor.seconds()
        key = f"{self.prefix}o:{originator}"
        while reactor.seconds() - started < within:
            binding = await self.redis.command("GET", key)
            holder = binding.split(b" ", 1)[0].decode() if binding else None
            if holder is not None:
                lease = await self.redis.command("GET", f"{self.prefix}node:{holder}")
                if lease is None or lease.decode() != binding.split(b" ")[1].decode():
                    holder = None  # (its node's lease lapsed: it counts for nothing)
            if holder == node:
                return reactor.seconds() - started
        self.fail(f"{originator} not bound to {node} within {within} s")

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Until ``check()`` (a bounded number of looks, each a round trip)."""
        for _ in range(2000):
            if await check():
                return
        self.fail(f"never: {what}")

    def queued(self) -> Deferred[list[str]]:
        """The rqis in the shared queue table (a thread: the test's reactor goes on)."""
        d = deferToThread(sql, self.store, "SELECT rqi FROM queue ORDER BY seq")
        return d.addCallback(lambda rows: [row[0] for row in rows])

    async def subscribed(self, url: str, device: Device, ae: str = "Cdev") -> Client:
        """``ae`` connected to ``url``, registered, with a container ``c`` and a subscription
        to it that notifies ``ae``."""
        client = await self.client(url, ae, device)
        body = {"rn": ae, "api": "Ntest", "rr": True, "srv": ["3"]}
        response = await client.create("cse-in", ResourceType.AE, {"m2m:ae": body})
        self.assertEqual(response.rsc, RSC.CREATED, response.pc)
        response = await client.create(f"cse-in/{ae}", ResourceType.CNT, {"m2m:cnt": {"rn": "c"}})
        self.assertEqual(response.rsc, RSC.CREATED, response.pc)
        sub = {"rn": "s", "nu": [ae], "enc": {"net": [3]}}
        response = await client.create(f"cse-in/{ae}/c", ResourceType.SUB, {"m2m:sub": sub})
        self.assertEqual(response.rsc, RSC.CREATED, response.pc)
        return client

    async def cin(self, client: Client, con: str, ae: str = "Cdev") -> Response:
        return await client.create(f"cse-in/{ae}/c", ResourceType.CIN, {"m2m:cin": {"con": con}})


class ProcessesTests(ProcessesTestCase):
    async def test_notify_retrieve_and_handover_across_three_processes(self) -> None:
        """A device on node b is notified of a contentInstance created through node a; node
        c reads it back; the device reconnects to c: b closes the old connection with 1000,
        and the next notification reaches it on c."""
        a, b, c = [await self.node(name) for name in "abc"]
        device = Device()
        old = await self.subscribed(b, device)
        await self.bound_to("Cdev", "b")
        admin_a = await self.client(a, "CAdmin")
        self.assertEqual((await self.cin(admin_a, "one")).rsc, RSC.CREATED)
        await device.has(1)
        self.assertEqual(device.got, ["one"])
        admin_c = await self.client(c, "CAdmin")  # (a closes its CAdmin connection)
        response = await admin_c.retrieve("cse-in/Cdev/c/la")
        self.assertEqual((response.rsc, response.pc["m2m:cin"]["con"]), (RSC.OK, "one"))

        protocol = old.session._close.__self__  # (to read the close code the client got)
        closed = old.session.when_closed()
        await self.client(c, "Cdev", device)
        await closed
        self.assertEqual(protocol.remoteCloseCode, 1000)
        self.assertIn("replaced by a newer connection", protocol.remoteCloseReason)
        await self.bound_to("Cdev", "c")
        admin_a = await self.client(a, "CAdmin")
        self.assertEqual((await self.cin(admin_a, "two")).rsc, RSC.CREATED)
        await device.has(2)
        self.assertEqual(device.got, ["one", "two"])
        self.assertEqual(await self.queued(), [])

    async def test_a_node_killed_with_queued_and_in_flight_notifications(self) -> None:
        """Three notifications (queued by node c) wait for a device that is connected
        nowhere; it connects to node b, which sends the first and gets no answer (in
        flight); a fourth, from node a, is relayed to b meanwhile and refused there (b is
        delivering the queue): a queues it behind. b is killed (SIGKILL): the device
        reconnects to c and gets all four there, in order, and then a fifth."""
        a, b, c = [await self.node(name) for name in "abc"]
        device = Device()
        first = await self.subscribed(b, device)
        await self.bound_to("Cdev", "b")
        gone = first.session.when_closed()
        first.session.close(1000, "")
        await gone
        await self.bound_to("Cdev", None)
        admin = await self.client(c, "CAdmin")  # (queued by c: a counts none of them)
        for con in ("n1", "n2", "n3"):
            self.assertEqual((await self.cin(admin, con)).rsc, RSC.CREATED)

        async def queued(count: int) -> bool:
            return len(await self.queued()) == count

        await self.until(lambda: queued(3), "three queued")
        device.hold = True  # (it will not answer on its connection to b)
        first = await self.client(b, "Cdev", device)
        await device.has(1)
        await self.bound_to("Cdev", "b")
        admin = await self.client(a, "CAdmin")
        self.assertEqual((await self.cin(admin, "n4")).rsc, RSC.CREATED)
        await self.until(lambda: queued(4), "the fourth queued behind")
        self.assertEqual(device.got, ["n1"])

        dropped = first.session.when_closed()
        self.process_b.process.signalProcess("KILL")  # type: ignore[attr-defined]
        await self.process_b.ended
        await dropped
        again = Device()
        await self.client(c, "Cdev", again)
        await again.has(4)
        await self.bound_to("Cdev", "c")
        self.assertEqual((await self.cin(admin, "n5")).rsc, RSC.CREATED)
        await again.has(5)
        self.assertEqual(again.got, ["n1", "n2", "n3", "n4", "n5"])
        self.assertEqual(await self.queued(), [])

    async def test_the_registrar_link_moves_to_the_new_leader(self) -> None:
        """An MN-CSE on nodes a and b: the leader a keeps the one link to its registrar (an
        IN-CSE process); a is killed and b holds the link within 15 s; a request for the
        registrar through b reaches it."""
        upper = await self.node(None, "--store", "memory:", "--allowed-csr-originators", "/id-*")
        a = await self.node("a", "--registrar", upper)
        await self.process_a.saw(b"is the leader")
        b = await self.node("b", "--registrar", upper)
        await self.bound_to("/id-in", "a")
        admin = await self.client(b, "CAdmin")
        response = await admin.retrieve("/id-in/cse-in")
        self.assertEqual((response.rsc, response.pc["m2m:cb"]["csi"]), (RSC.OK, "/id-in"))

        killed = reactor.seconds()
        self.process_a.process.signalProcess("KILL")  # type: ignore[attr-defined]
        await self.process_a.ended
        await self.bound_to("/id-in", "b", within=15)
        took = reactor.seconds() - killed
        self.assertLess(took, 15)
        response = await admin.retrieve("/id-in/cse-in")
        self.assertEqual(response.rsc, RSC.OK)
        self.assertIn(b"is the leader", self.process_b.output)
        del a

    async def test_redis_restarted_under_load(self) -> None:
        """Redis stops while contentInstances are created through node a for a device on
        node b, and starts again (empty): every request is answered 2001 or a clean error;
        the notifications go to the queue while the relay cannot be used and b delivers them
        (PostgreSQL tells it); the nodes put their bindings back by themselves."""
        if SKIP_SERVER:
            raise SkipTest(SKIP_SERVER)
        redis = PrivateRedis(self)
        await redis.start()
        a = await self.node("a", cluster=redis.url)
        b = await self.node("b", cluster=redis.url)
        own = await connected(RedisClient(RedisURL.parse(redis.url), reactor, name="test-own"))
        self.addCleanup(own.stop)
        self.redis, shared = own, self.redis
        self.addCleanup(setattr, self, "redis", shared)
        device = Device()
        await self.subscribed(b, device)
        await self.bound_to("Cdev", "b")
        admin = await self.client(a, "CAdmin")
        created: list[str] = []
        answers: dict[int, int] = {}

        async def load(count: int) -> None:
            for _ in range(count):
                con = f"n{sum(answers.values())}"
                response = await self.cin(admin, con)
                answers[int(response.rsc)] = answers.get(int(response.rsc), 0) + 1
                if response.rsc == RSC.CREATED:
                    created.append(con)
                else:
                    self.assertGreaterEqual(int(response.rsc), 4000, response.pc)
                    self.assertIsNotNone(response.debug)

        await load(20)
        down_a = self.process_a.saw(b"is unreachable")
        down_b = self.process_b.saw(b"is unreachable")
        await redis.stop()
        await load(20)
        await down_a
        await down_b
        await load(20)
        # queued by a, delivered by b meanwhile (PostgreSQL told b, Redis could not)
        await device.has(len(created))
        self.process_a.output = self.process_b.output = b""
        back = [self.process_a.saw(b"reaches Redis"), self.process_b.saw(b"reaches Redis")]
        await redis.start()
        again = await connected(RedisClient(RedisURL.parse(redis.url), reactor, name="again"))
        self.addCleanup(again.stop)
        self.redis = again
        for d in back:
            await d
        await load(20)
        await self.bound_to("Cdev", "b")
        await device.has(len(created))
        self.assertEqual(answers, {2001: 80})
        # every one delivered, in order, once (no handover here)
        self.assertEqual(device.got, created)
        self.assertEqual(await self.queued(), [])
