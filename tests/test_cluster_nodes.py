"""Several nodes of one CSE in one process (#22): each a whole ``make_service`` on a real
loopback port with its own memory store, all sharing one real Redis under the test's key
prefix; devices are real acmews clients."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from acmews.client import connect
from acmews.codes import RSC, Operation
from acmews.config import Config, RegistrarConfig
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.server import CSEService, make_service
from tests.interop.acme import settle_autobahn_timers
from tests.redis_helpers import REDIS, RedisTestCase

AE = "Cae1"
NO_PING = ConnectionOptions(ping_interval=0)


def notify(rqi: str) -> Request:
    return Request(Operation.NOTIFY, AE, rqi, fr="/id-in", pc={"m2m:sgn": {"sur": "s"}})


class Device:
    """A device: records the requests it gets; answers 2000 unless told to hold them."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.hold = False
        self.held: list[Deferred[Response]] = []
        self.arrivals: list[Deferred[None]] = []

    def __call__(self, request: Request) -> Response | Deferred[Response]:
        self.got.append(request.rqi)
        arrivals, self.arrivals = self.arrivals, []
        for d in arrivals:
            d.callback(None)
        if self.hold:
            self.held.append(Deferred())
            return self.held[-1]
        return Response(RSC.OK, request.rqi, request.rvi, {"ok": request.rqi})

    def arrival(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.arrivals.append(d)
        return d


class NodesTestCase(RedisTestCase):
    """Nodes of this test's cluster on loopback ports, devices that connect to them."""

    async def asyncSetUp(self) -> None:
        settle_autobahn_timers(self)  # (first: its clean-up runs last)
        await super().asyncSetUp()

    async def start(self, name: str | None, **kw: Any) -> CSEService:
        """A node ``name`` of this test's cluster (a CSE of its own without a name)."""
        cluster: dict[str, Any] = {}
        if name is not None:
            cluster = {"cluster": REDIS, "node_name": name, "cluster_prefix": self.prefix}
        kw.setdefault("connection", NO_PING)
        config = Config(listen=("tcp:0:interface=127.0.0.1",), store="memory:", **cluster, **kw)
        service = make_service(config, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        await service.listening
        if service.cluster is not None:
            await service.cluster.when_available()
        return service

    def ws_url(self, service: CSEService) -> str:
        port = service.listeners[0].port
        assert port is not None
        return f"ws://127.0.0.1:{port.getHost().port}"

    async def device(self, service: CSEService, device: Device) -> Any:
        client = await connect(
            self.ws_url(service),
            originator=AE,
            handler=device,
            reactor=self.reactor,
            options=NO_PING,
        )
        self.addCleanup(lambda: client.session.close(1000, "done") if client.connected else None)
        return client

    async def held_by(self, asking: CSEService, node: str | None, originator: str = AE) -> None:
        """Until ``asking`` sees ``originator``'s binding on ``node`` (bound on its server
        side right after the handshake the client saw)."""
        assert asking.cluster is not None
        for _ in range(500):
            if await asking.cluster.holder(originator) == node:
                return
        self.fail(f"{originator} never held by {node}")


class NodesTests(NodesTestCase):
    async def test_a_notification_from_one_node_reaches_a_device_on_another(self) -> None:
        a, b = await self.start("a"), await self.start("b")
        device = Device()
        await self.device(b, device)
        await self.held_by(a, "b")
        response = await a.chain.send(AE, notify("n1"), store=True)
        self.assertEqual((response.rsc, response.rqi, response.pc), (RSC.OK, "n1", {"ok": "n1"}))
        self.assertEqual(device.got, ["n1"])
        self.assertEqual(a.chain.queued(AE), [])

    async def test_a_notification_goes_behind_a_queue_being_delivered_on_another_node(
        self,
    ) -> None:
        """b is delivering the device's queue: a stored notification relayed from a
        meanwhile is refused by b and queued by a (behind, in a shared store), not sent
        ahead of what waits; a notification that may not be queued is still relayed."""
        a, b = await self.start("a"), await self.start("b")
        assert b.cluster is not None
        now = self.reactor.seconds()
        b.chain.queue.enqueue(AE, notify("q1"), now + 60, now)
        device = Device()
        device.hold = True
        arrived = device.arrival()
        await self.device(b, device)
        await arrived  # q1 is on its way: b's flush waits for its answer
        await self.held_by(a, "b")
        self.assertTrue(b.chain.flushing(AE))
        response = await a.chain.send(AE, notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in a.chain.queued(AE)], ["n1"])
        self.assertEqual(device.got, ["q1"])
        device.hold = False
        response = await a.chain.send(AE, notify("v1"), store=False)
        self.assertEqual((response.rsc, device.got), (RSC.OK, ["q1", "v1"]))

    async def test_the_leader_runs_the_singletons(self) -> None:
        a, b = await self.start("a"), await self.start("b")
        assert a.cluster is not None and b.cluster is not None
        await b.cluster.refresh()
        self.assertEqual((a.cluster.leader, b.cluster.leader), (True, False))
        self.assertTrue(a.expiry.running)
        self.assertFalse(b.expiry.running)
        self.assertEqual((a.chain.purging, b.chain.purging), (True, False))

    async def test_newest_connection_wins_across_nodes(self) -> None:
        a, b = await self.start("a"), await self.start("b")
        old = await self.device(a, Device())
        protocol = old.session._close.__self__  # (to read the close code the client got)
        await self.held_by(b, "a")
        closed = old.session.when_closed()
        new_device = Device()
        await self.device(b, new_device)
        await closed
        self.assertEqual(protocol.remoteCloseCode, 1000)
        self.assertIn("replaced by a newer connection", protocol.remoteCloseReason)
        await self.held_by(a, "b")
        self.assertEqual((await a.chain.send(AE, notify("n2"), store=True)).rsc, RSC.OK)
        self.assertEqual(new_device.got, ["n2"])

    async def test_a_dead_nodes_devices_get_what_was_queued_where_they_reconnect(self) -> None:
        a, b = await self.start("a"), await self.start("b")
        assert b.cluster is not None
        await self.device(b, Device())
        await self.held_by(a, "b")
        # b dies (as after kill -9): it answers nothing and renews nothing; its lease lapses
        await b.cluster.subscriber.stop()
        await b.cluster.commands.stop()
        await self.redis.command("DEL", self.key("node:b"))
        response = await a.chain.send(AE, notify("n1"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)
        self.assertEqual([r.rqi for r in a.chain.queued(AE)], ["n1"])
        # the device comes back on a: what was queued for it arrives
        device = Device()
        arrived = device.arrival()
        await self.device(a, device)
        await arrived
        self.assertEqual(device.got, ["n1"])

    async def test_a_duplicate_only_across_a_handover(self) -> None:
        """At least once: a notification on its way to a device on b when the device moves to
        a is queued at a (b's answer never came) and delivered again on the new connection."""
        a, b = await self.start("a"), await self.start("b")
        first = Device()
        first.hold = True  # (it never gets to answer on its old connection)
        arrived = first.arrival()
        await self.device(b, first)
        await self.held_by(a, "b")
        sent = a.chain.send(AE, notify("n1"), store=True)
        await arrived
        second = Device()
        again = second.arrival()
        await self.device(a, second)
        self.assertEqual((await sent).rsc, RSC.ACCEPTED)  # queued, since b's send failed
        await again
        self.assertEqual((first.got, second.got), (["n1"], ["n1"]))

    async def test_requests_for_the_registrar_go_through_the_leaders_link(self) -> None:
        """An MN-CSE on two nodes: the leader keeps the one link to the IN-CSE; a request for
        the IN that arrives at the other node goes through it; when the leader stops, the
        other node takes the link over (the registration stays: the CSE lives on)."""
        upper = await self.start(None, allowed_csr_originators=("/id-mn",))
        mn = {"cse_id": "/id-mn", "cse_name": "cse-mn"}
        registrar = RegistrarConfig(url=self.ws_url(upper))
        a = await self.start("a", registrar=registrar, **mn)
        b = await self.start("b", registrar=registrar, **mn)
        assert a.link is not None and b.link is not None and b.cluster is not None
        await b.cluster.refresh()
        await a.link.when_registered()
        self.assertFalse(b.link.running)
        await self.held_by(b, "a", "/id-in")
        admin = await connect(
            self.ws_url(b), originator="CAdmin", reactor=self.reactor, options=NO_PING
        )
        self.addCleanup(lambda: admin.session.close(1000, "") if admin.connected else None)
        response = await admin.retrieve("/id-in/cse-in")
        self.assertEqual((response.rsc, response.pc["m2m:cb"]["csi"]), (RSC.OK, "/id-in"))

        await a.stopService()  # hands the leader's lease back, keeps the registration
        above = await connect(
            self.ws_url(upper), originator="CAdmin", reactor=self.reactor, options=NO_PING
        )
        self.addCleanup(lambda: above.session.close(1000, "") if above.connected else None)
        self.assertEqual((await above.retrieve("cse-in/id-mn")).rsc, RSC.OK)
        await b.cluster.refresh()
        self.assertTrue(b.cluster.leader)
        await b.link.when_registered()
        await self.held_by(b, None, "/id-in")  # b holds the link itself now
        response = await admin.retrieve("/id-in/cse-in")
        self.assertEqual(response.rsc, RSC.OK)

    async def test_the_relay_latency_example_runs(self) -> None:
        """examples/cluster/relay_latency.py (the figures in the docs), with a few sends."""
        import contextlib
        import importlib.util
        import io
        import os

        path = os.path.join(
            os.path.dirname(__file__), "..", "examples", "cluster", "relay_latency.py"
        )
        spec = importlib.util.spec_from_file_location("relay_latency", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await module.main(self.reactor, REDIS, 20)
        lines = out.getvalue().splitlines()
        self.assertEqual([line.split(":")[0] for line in lines], ["same node", "cross node"] * 2)
        self.assertTrue(all("n=20 p50=" in line for line in lines), lines)

    async def test_the_bench_spreads_connections_and_measures_across_nodes(self) -> None:
        """acmews bench with the URLs of two nodes: its connections go to each in turn, and
        the cluster scenario tells same-node from cross-node notification latency."""
        import io

        from acmews.bench.cli import parse_options, run
        from acmews.bench.progress import Progress

        a, b = await self.start("a"), await self.start("b")
        seen: dict[str, set[str]] = {"a": set(), "b": set()}

        class Seen:
            def __init__(self, name: str) -> None:
                self.name = name

            def originator_connected(self, originator: str, connection: Any) -> None:
                seen[self.name].add(originator)

            def originator_disconnected(self, originator: str, connection: Any) -> None:
                pass

        a.originators.add_observer(Seen("a"))
        b.originators.add_observer(Seen("b"))
        urls = [self.ws_url(a), self.ws_url(b)]
        out = io.StringIO()
        argv = [*urls, "--connections", "4", "--originator", "Cload{k}", "--requests", "20"]
        code = await run(self.reactor, parse_options(argv), out, Progress(io.StringIO(), "x"))
        self.assertEqual(code, 0, out.getvalue())
        self.assertEqual((seen["a"], seen["b"]), ({"Cload0", "Cload2"}, {"Cload1", "Cload3"}))

        out = io.StringIO()
        argv = [*urls, "--scenario", "cluster", "--connections", "4", "--requests", "3"]
        code = await run(self.reactor, parse_options(argv), out, Progress(io.StringIO(), "x"))
        self.assertEqual(code, 0, out.getvalue())
        report = out.getvalue()
        self.assertIn("12/12 NOTIFYs", report)
        self.assertRegex(report, r"same node ms +p50 [0-9.]+ .*\(6 NOTIFYs\)")
        self.assertRegex(report, r"cross node ms +p50 [0-9.]+ .*\(6 NOTIFYs\)")
        self.assertNotIn("warning", report)

    async def test_a_remote_cse_on_one_node_is_reached_from_another(self) -> None:
        """An MN-CSE registers to the IN-CSE's node b; node a reaches it over b's link."""
        allowed = {"allowed_csr_originators": ("/id-mn",)}
        a, b = await self.start("a", **allowed), await self.start("b", **allowed)
        mn = await self.start(
            None,
            cse_id="/id-mn",
            cse_name="cse-mn",
            registrar=RegistrarConfig(url=self.ws_url(b)),
        )
        assert mn.link is not None
        await mn.link.when_registered()
        await self.held_by(a, "b", "/id-mn")
        request = Request(Operation.RETRIEVE, "/id-mn/cse-mn", "r1", fr="/id-in")
        response = await a.chain.send("/id-mn", request)
        self.assertEqual((response.rsc, response.rqi), (RSC.OK, "r1"))
        self.assertEqual(response.pc["m2m:cb"]["csi"], "/id-mn")


NODE_PROCESS = """
import sys
from twisted.internet import task
from twisted.internet.defer import Deferred
from acmews.config import Config
from acmews.options import ConnectionOptions
from acmews.server import make_service

async def main(reactor):
    config = Config(
        listen=("tcp:0:interface=127.0.0.1",),
        store="memory:",
        connection=ConnectionOptions(ping_interval=0),
        cluster=sys.argv[1],
        node_name=sys.argv[2],
        cluster_prefix=sys.argv[3],
    )
    service = make_service(config, reactor)
    service.privilegedStartService()
    service.startService()
    (port,) = await service.listening
    await service.cluster.when_available()
    print(f"ws://127.0.0.1:{port.getHost().port}", flush=True)
    await Deferred()

task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""


class _Node(ProcessProtocol):
    def __init__(self) -> None:
        self.url: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.url.called and b"\n" in self.output:
            self.url.callback(self.output.split(b"\n", 1)[0].decode())

    def processEnded(self, reason: Any) -> None:
        if not self.url.called:
            self.url.errback(RuntimeError("the node ended before it listened"))
        self.ended.callback(None)


class KilledNodeTests(NodesTestCase):
    async def test_a_node_killed_with_kill_9_loses_no_queued_notification(self) -> None:
        """Node b is a process of its own: killed (SIGKILL) while a device is on it, the
        notifications for that device are queued at once (nothing listens on b's channel any
        more) and delivered when it reconnects to a."""
        import sys

        a = await self.start("a")
        node = _Node()
        root = os.path.join(os.path.dirname(__file__), "..")
        process = self.reactor.spawnProcess(
            node,
            sys.executable,
            [sys.executable, "-c", NODE_PROCESS, REDIS, "b", self.prefix],
            env={**os.environ, "PYTHONPATH": os.path.abspath(root)},
        )
        self.addCleanup(lambda: node.ended)  # (clean-ups run last first: killed, then this)
        self.addCleanup(lambda: None if node.ended.called else process.signalProcess("KILL"))
        b_url = await node.url
        first = Device()
        client = await connect(
            b_url, originator=AE, handler=first, reactor=self.reactor, options=NO_PING
        )
        await self.held_by(a, "b")
        self.assertEqual((await a.chain.send(AE, notify("n1"), store=True)).rsc, RSC.OK)
        self.assertEqual(first.got, ["n1"])

        gone = client.session.when_closed()
        process.signalProcess("KILL")
        await node.ended
        await gone
        response = await a.chain.send(AE, notify("n2"), store=True)
        self.assertEqual(response.rsc, RSC.ACCEPTED)

        second = Device()
        arrived = second.arrival()
        await self.device(a, second)
        await arrived
        self.assertEqual(second.got, ["n2"])

    async def test_the_bench_kills_a_node_and_every_notification_still_arrives(self) -> None:
        """acmews bench --scenario cluster --kill-pid: b is killed after a round; its AEs
        reconnect to a, which delivers what it queued for them meanwhile; every round
        reaches every AE (at least once)."""
        import io
        import sys

        from acmews.bench.cli import parse_options, run
        from acmews.bench.progress import Progress

        # a relay that b took just before it died is given up after 2 s (then queued)
        a = await self.start("a", connection=ConnectionOptions(ping_interval=0, request_timeout=2))
        node = _Node()
        root = os.path.join(os.path.dirname(__file__), "..")
        process = self.reactor.spawnProcess(
            node,
            sys.executable,
            [sys.executable, "-c", NODE_PROCESS, REDIS, "b", self.prefix],
            env={**os.environ, "PYTHONPATH": os.path.abspath(root)},
        )
        self.addCleanup(lambda: node.ended)  # (clean-ups run last first: killed, then this)
        self.addCleanup(lambda: None if node.ended.called else process.signalProcess("KILL"))
        b_url = await node.url
        argv = [self.ws_url(a), b_url, "--scenario", "cluster", "--connections", "4"]
        argv += ["--requests", "4", "--kill-pid", str(process.pid), "--kill-after", "2"]
        argv += ["--duration", "60", "--timeout", "10"]
        out, said = io.StringIO(), io.StringIO()
        code = await run(self.reactor, parse_options(argv), out, Progress(said, "x"))
        report = out.getvalue()
        self.assertEqual(code, 0, report)
        self.assertTrue(node.ended.called)
        self.assertIn("16/16 NOTIFYs", report)
        self.assertRegex(report, r"killed before round 3; 2 AEs reconnected")
        self.assertIn("killed node pid", said.getvalue())
