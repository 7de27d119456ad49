"""The postgresql: store (acmews.pgstore) on a real PostgreSQL: two CSE nodes in one process
share one database, and every rule of a CSE holds across them."""

from __future__ import annotations

from typing import Any

import cbor2
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from acmews.codes import RSC, Operation
from acmews.cse import CSE, CSEConfig
from acmews.durable import Store
from acmews.primitive import Request, Response
from acmews.stores import open_store
from acmews.testing import FakeConnection, FakeSender
from tests.pg_helpers import SKIP, fresh_database, sql

ADMIN = "CAdmin"


class Node:
    """One acmews process's CSE on the shared database (a clock of its own)."""

    def __init__(self, url: str, reactor: Any, clock: Clock) -> None:
        self.store: Store = open_store(url, reactor, cse_id="/id-in")
        self.resources: Any = self.store.resources
        self.sender = FakeSender()
        self.clock = clock
        self.cse = CSE(
            CSEConfig(poa=("ws://127.0.0.1:8180",)), self.sender, clock, self.store.resources
        )
        self.connection = FakeConnection()
        self._n = 0

    def request(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Deferred[Response]:
        self._n += 1
        result = self.cse.handle_request(
            Request(Operation(op), to, f"rq{self._n}", "4", fr, **kw), self.connection
        )
        return result if isinstance(result, Deferred) else succeed(result)

    def stop(self) -> Deferred[None]:
        return defer.maybeDeferred(self.store.service.stopService)


class PostgreSQLCase(TestCase):
    skip = SKIP

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.url = fresh_database(self)
        self.reactor = reactor
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    async def node(self) -> Node:
        node = Node(self.url, self.reactor, self.clock)
        self.addCleanup(node.stop)
        await node.resources.flushed()  # (the first node writes the CSEBase)
        return node

    async def ok(self, node: Node, op: int, to: str, **kw: Any) -> Response:
        response = await node.request(op, to, **kw)
        self.assertTrue(response.ok, f"{response.rsc} {response.debug}")
        return response


class CrossNodeTests(PostgreSQLCase):
    """Two CSE nodes on one database: what one acknowledged, the other serves."""

    async def setUpNodes(self) -> tuple[Node, Node]:
        a = await self.node()
        b = await self.node()
        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        await self.ok(a, 1, "cse-in", fr="Cae", ty=2, pc=ae)
        return a, b

    async def test_read_your_writes_across_nodes_1000_times(self) -> None:
        a, b = await self.setUpNodes()
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        for i in range(1000):
            if i % 2:  # an update, then a new instance: both kinds of write
                await self.ok(a, 3, "cse-in/ae/c", fr="Cae", pc={"m2m:cnt": {"lbl": [str(i)]}})
                r = await self.ok(b, 2, "cse-in/ae/c", fr="Cae")
                self.assertEqual(r.pc["m2m:cnt"]["lbl"], [str(i)])
            else:
                await self.ok(a, 1, "cse-in/ae/c", fr="Cae", ty=4, pc={"m2m:cin": {"con": i}})
                r = await self.ok(b, 2, "cse-in/ae/c/la", fr="Cae")
                self.assertEqual(r.pc["m2m:cin"]["con"], i)
            a, b = b, a  # and the other way round
        self.assertEqual(sql(self.url, "SELECT count(*) FROM resources WHERE ty = 4"), [(500,)])

    async def test_a_notified_ae_reads_la_through_another_node(self) -> None:
        a, b = await self.setUpNodes()
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        # (nu is the subscriber itself: no verification request)
        await self.ok(
            a,
            1,
            "cse-in/ae/c",
            fr="Cae",
            ty=23,
            pc={"m2m:sub": {"nu": ["Cae"], "enc": {"net": [3]}}},
        )
        created = await self.ok(b, 1, "cse-in/ae/c", fr="Cae", ty=4, pc={"m2m:cin": {"con": 7}})
        # the subscription is known on node b (it came with its cache): b notifies
        self.clock.advance(0)
        sent = b.sender.take()
        self.assertEqual(len(sent), 1)
        cin = sent[0].request.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]
        self.assertEqual(cin["ri"], created.pc["m2m:cin"]["ri"])
        sent[0].answer(RSC.OK)
        # the AE, notified, reads la through node a
        r = await self.ok(a, 2, "cse-in/ae/c/la", fr="Cae")
        self.assertEqual(r.pc["m2m:cin"]["ri"], cin["ri"])

    async def test_two_nodes_pipelining_into_one_container_keep_its_bounds(self) -> None:
        a, b = await self.setUpNodes()
        cnt = {"m2m:cnt": {"rn": "c", "mni": 50}}
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc=cnt)
        pending = []
        for i in range(300):  # pipelined: nobody waits for an answer
            node = (a, b)[i % 2]
            con = f"{'ab'[i % 2]}{i:03d}"
            pending.append(
                node.request(1, "cse-in/ae/c", fr="Cae", ty=4, pc={"m2m:cin": {"con": con}})
            )
        answers = await defer.gatherResults(pending)
        self.assertEqual({r.rsc for r in answers}, {RSC.CREATED})
        for node in (a, b):
            c = (await self.ok(node, 2, "cse-in/ae/c", fr="Cae")).pc["m2m:cnt"]
            self.assertEqual(c["cni"], 50)
            kept = sql(self.url, "SELECT ri FROM resources WHERE ty = 4 ORDER BY seq")
            self.assertEqual(len(kept), 50)
            self.assertEqual(c["cbs"], 50 * 4)  # each con is 4 bytes
        # the 50 kept are the newest: in the database and in both caches
        stored = [r[0] for r in kept]
        answered = [r.pc["m2m:cin"]["ri"] for r in answers]
        newest = sql(self.url, "SELECT ri FROM resources WHERE ty = 4 ORDER BY seq")
        self.assertEqual(stored, [r[0] for r in newest])
        for node in (a, b):
            cached = [r.ri for r in node.resources.children(c["ri"], 4)]
            self.assertEqual(cached, stored)
        self.assertTrue(set(stored) <= set(answered))
        self.assertEqual(len(set(answered)), 300)  # resource IDs unique across nodes
        ol = await self.ok(b, 2, "cse-in/ae/c/ol", fr="Cae")
        self.assertEqual(ol.pc["m2m:cin"]["ri"], stored[0])

    async def test_one_name_under_a_parent_across_nodes(self) -> None:
        a, b = await self.setUpNodes()
        for round in range(20):
            rn = f"x{round}"
            answers = await defer.gatherResults(
                [
                    node.request(1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": rn}})
                    for node in (a, b)
                ]
            )
            self.assertEqual(sorted(r.rsc for r in answers), [RSC.CREATED, RSC.CONFLICT])
            self.assertEqual(
                sql(self.url, "SELECT count(*) FROM resources WHERE rn = %s", rn), [(1,)]
            )

    async def test_resource_ids_are_unique_across_nodes(self) -> None:
        a, b = await self.setUpNodes()
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        numbers = []
        for _ in range(4):  # (blocks of 1,000, taken ahead in the write transactions)
            for node in (a, b):
                numbers.extend(node.resources.new_number() for _ in range(400))
                await self.ok(node, 3, "cse-in/ae/c", fr="Cae", pc={"m2m:cnt": {"lbl": []}})
        self.assertEqual(len(set(numbers)), 3200)
        self.assertGreaterEqual(min(numbers), 1)  # (an ID is prefix, hex digits, random part)
        pending = [
            node.request(1, "cse-in/ae/c", fr="Cae", ty=4, pc={"m2m:cin": {"con": "x"}})
            for _ in range(100)
            for node in (a, b)
        ]
        answers = await defer.gatherResults(pending)
        self.assertEqual(len({r.pc["m2m:cin"]["ri"] for r in answers}), 200)

    async def test_a_subtree_delete_on_one_node_is_gone_on_the_other(self) -> None:
        a, b = await self.setUpNodes()
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        for i in range(20):
            await self.ok(a, 1, "cse-in/ae/c", fr="Cae", ty=4, pc={"m2m:cin": {"con": i}})
        await self.ok(b, 2, "cse-in/ae/c/la", fr="Cae")  # (b has the tree in its cache)
        await self.ok(a, 4, "cse-in/ae", fr="Cae")
        self.assertEqual(sql(self.url, "SELECT ri FROM resources"), [("id-in",)])
        r = await b.request(2, "cse-in/ae/c", fr="Cae")
        self.assertEqual(r.rsc, RSC.NOT_FOUND)
        self.assertEqual([x.ri for x in b.resources.children("id-in")], [])
        self.assertEqual(len(b.resources), 1)

    async def test_a_change_made_outside_the_gate_on_stale_state_is_refused_whole(self) -> None:
        """A timer's batch (here an expiry's DELETE on node b) made on what another node has
        changed since is refused as a whole, undone, and the cache reads the row again."""
        a, b = await self.setUpNodes()
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}})
        await self.ok(b, 2, "cse-in/ae/c", fr="Cae")
        await self.ok(a, 3, "cse-in/ae/c", fr="Cae", pc={"m2m:cnt": {"lbl": ["new"]}})
        container = b.resources.child(b.resources.child("id-in", "ae").ri, "c")
        # b, not refreshed since, deletes the container (and its parent's nothing) outside
        # the gate: it must not win over a's acknowledged update
        d = b.cse._expire([container])
        assert d is not None
        failure = await self.assertFailure(d, Exception)
        self.assertIn("another CSE node changed", str(failure))
        self.assertEqual(sql(self.url, "SELECT count(*) FROM resources WHERE rn = 'c'"), [(1,)])
        r = await self.ok(b, 2, "cse-in/ae/c", fr="Cae")
        self.assertEqual(r.pc["m2m:cnt"]["lbl"], ["new"])


def notify(rqi: str, n: int = 0) -> Request:
    return Request(Operation.NOTIFY, "Cae", rqi, "4", "/id-in", pc={"m2m:sgn": {"n": n}})


class SharedQueueTests(PostgreSQLCase):
    """The store-and-forward queue in the shared table."""

    async def test_entries_queued_on_one_node_are_taken_on_another_in_order_once(self) -> None:
        a = await self.node()
        b = await self.node()
        qa: Any = a.store.queue
        qb: Any = b.store.queue
        now = self.reactor.seconds()
        for n in range(4):
            qa.enqueue("Cae", notify(f"n{n}", n), now + 1000 + n, now)
        qa.enqueue("Cother", notify("o0"), now + 1000, now)
        await qa.durable()
        first = await qb.take("Cae")
        self.assertEqual((first.rqi, first.request.pc), ("n0", {"m2m:sgn": {"n": 0}}))
        self.assertAlmostEqual(first.expires, now + 1000)
        # b holds it (leased): a takes nothing meanwhile, not the next one either (order)
        self.assertIsNone(await qa.take("Cae"))
        await qb.acknowledge("Cae", first)
        taken = []
        for node in (a, b, a):  # whichever node the originator reaches next
            queue: Any = node.store.queue
            entry = await queue.take("Cae")
            taken.append(entry.rqi)
            await queue.acknowledge("Cae", entry)
        self.assertEqual(taken, ["n1", "n2", "n3"])
        self.assertIsNone(await qb.take("Cae"))
        self.assertEqual(sql(self.url, "SELECT rqi FROM queue"), [("o0",)])

    async def test_an_entry_not_delivered_is_released_for_the_next_take(self) -> None:
        a = await self.node()
        b = await self.node()
        qa: Any = a.store.queue
        qb: Any = b.store.queue
        now = self.reactor.seconds()
        qa.enqueue("Cae", notify("n0"), now + 1000, now)
        await qa.durable()
        entry = await qb.take("Cae")
        await qb.release("Cae", entry)
        self.assertEqual((await qa.take("Cae")).rqi, "n0")

    async def test_an_entry_held_by_a_session_that_ended_is_taken_at_once(self) -> None:
        """A process killed (kill -9) while it delivered an entry: the kernel closes its
        connections, PostgreSQL ends its session, and the entry is free at once for the
        process its originator reconnects to, not after the lease's minute."""
        import psycopg

        from acmews.pgstore import _take

        a = await self.node()
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        qa.enqueue("Cae", notify("n0"), now + 1000, now)
        await qa.durable()
        other = psycopg.connect(self.url, autocommit=True)  # (the other process's session)
        self.addCleanup(other.close)
        pid = other.info.backend_pid
        self.assertEqual(_take(other, "Cae", now)[2], "n0")
        self.assertIsNone(await qa.take("Cae"))  # held: its session lives
        other.close()
        for _ in range(1000):  # (until PostgreSQL has ended that session)
            if not sql(self.url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid):
                break
        self.assertEqual((await qa.take("Cae")).rqi, "n0")

    def test_durable_waits_for_the_last_write_only(self) -> None:
        """The chain asks durable() after each enqueue: with thousands in flight (a fan-out
        whose relays failed at once) each call must not wait on every write (it did: the
        work and memory grew as their square, and a node grew to gigabytes)."""
        from twisted.python.failure import Failure

        from acmews.pgstore import open_postgresql

        writes: list[Deferred[Any]] = []

        def run(call: Any, function: Any, *args: Any) -> Deferred[Any]:
            writes.append(Deferred())
            return writes[-1]

        opened = open_postgresql(self.url, self.reactor, run=run)
        queue = opened.queue
        now = self.reactor.seconds()
        waits = []
        for n in range(100):
            queue.enqueue("Cae", notify(f"n{n}"), now + 1000, now)
            waits.append(queue.durable())
            if n == 0:
                first = len(writes[0].callbacks)
        self.assertEqual(len(writes[0].callbacks), first)  # later calls added nothing to it
        for n, write in enumerate(writes[:99]):
            write.callback((0, n + 1))
        self.assertTrue(all(w.called for w in waits[:99]))
        self.assertFalse(waits[99].called)
        writes[99].errback(Failure(RuntimeError("lost")))
        self.failureResultOf(waits[99], RuntimeError)
        self.assertIsNone(self.successResultOf(queue.durable()))

    async def test_concurrent_takes_deliver_each_entry_once(self) -> None:
        a = await self.node()
        b = await self.node()
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        for n in range(10):
            qa.enqueue("Cae", notify(f"n{n}"), now + 1000, now)
        await qa.durable()
        delivered: list[str] = []

        async def flush(node: Node) -> None:
            queue: Any = node.store.queue
            while True:
                entry = await queue.take("Cae")
                if entry is None:
                    if not sql(self.url, "SELECT 1 FROM queue"):
                        return
                    await self._turn()  # (the other node holds the head: wait for it)
                    continue
                delivered.append(entry.rqi)
                await queue.acknowledge("Cae", entry)

        await defer.gatherResults([defer.ensureDeferred(flush(a)), defer.ensureDeferred(flush(b))])
        self.assertEqual(delivered, [f"n{n}" for n in range(10)])  # once each, in order

    def _turn(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.reactor.callLater(0, d.callback, None)
        return d

    async def test_an_entry_queued_on_one_node_reaches_an_originator_connected_to_another(
        self,
    ) -> None:
        """Node a cannot reach the AE (it is connected to node b): what a queues, b is told
        of at once (LISTEN/NOTIFY) and delivers on the AE's connection."""
        from acmews.poa import PoaChain
        from acmews.testing import FakeConnection

        a = await self.node()
        b = await self.node()
        connection = FakeConnection("Cae")

        class OnB:
            def lookup(self, originator: str) -> FakeConnection | None:
                return connection if originator == "Cae" else None

            def add_observer(self, observer: object) -> None:
                pass

            def remove_observer(self, observer: object) -> None:
                pass

        chain = PoaChain(OnB(), self.reactor, queue=b.store.queue)  # type: ignore[arg-type]
        chain.startService()
        self.addCleanup(chain.stopService)
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        listening = f'LISTEN "{qa.channel}"'  # (b's listener is there: it hears a's NOTIFY)
        await self._turns(
            lambda: sql(self.url, "SELECT 1 FROM pg_stat_activity WHERE query = %s", listening)
        )
        for n in range(3):
            qa.enqueue("Cae", notify(f"n{n}"), now + 1000, now)
        await qa.durable()
        for expected in ("n0", "n1", "n2"):
            await self._turns(lambda: connection.sent)
            request, _, d = connection.sent.pop(0)
            self.assertEqual(request.rqi, expected)
            d.callback(Response(RSC.OK, request.rqi, "4"))
        await self._turns(lambda: not sql(self.url, "SELECT 1 FROM queue"))

    async def _turns(self, done: Any) -> None:
        """Reactor turns until ``done()`` (no timers: the test's timeout bounds it)."""
        while not done():
            await self._turn()

    async def test_expired_entries_are_purged_from_the_table(self) -> None:
        a = await self.node()
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        qa.enqueue("Cae", notify("old"), now + 10, now)
        qa.enqueue("Cae", notify("new"), now + 1000, now)
        await qa.durable()
        qa.purge_expired(now + 20)
        await qa.durable()
        self.assertEqual(sql(self.url, "SELECT rqi FROM queue"), [("new",)])

    async def test_the_chain_of_another_node_flushes_the_queue_in_order(self) -> None:
        from acmews.poa import PoaChain
        from acmews.testing import FakeConnection

        a = await self.node()
        b = await self.node()
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        for n in range(3):
            qa.enqueue("Cae", notify(f"n{n}"), now + 1000, now)
        await qa.durable()

        class Nobody:
            def lookup(self, originator: str) -> None:
                return None

            def add_observer(self, observer: object) -> None:
                pass

            def remove_observer(self, observer: object) -> None:
                pass

        chain = PoaChain(Nobody(), self.reactor, queue=b.store.queue)  # type: ignore[arg-type]
        chain.startService()
        self.addCleanup(chain.stopService)
        connection = FakeConnection("Cae")
        chain.originator_connected("Cae", connection)
        for expected in ("n0", "n1", "n2"):
            while not connection.sent:
                await self._turn()
            request, _, d = connection.sent.pop(0)
            self.assertEqual(request.rqi, expected)
            d.callback(Response(RSC.OK, request.rqi, "4"))
        while sql(self.url, "SELECT 1 FROM queue"):
            await self._turn()


class SharedQueueOrderTests(PostgreSQLCase):
    async def _turn(self) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, 0)

    async def test_a_new_notification_waits_behind_what_another_node_queued(self) -> None:
        """Node b flushes what node a queued for an AE now connected to b; a notification b
        sends it meanwhile goes behind them, though b itself queued none of them."""
        from acmews.poa import PoaChain
        from acmews.testing import FakeConnection, FakeOriginatorMap

        a = await self.node()
        b = await self.node()
        qa: Any = a.store.queue
        now = self.reactor.seconds()
        for n in range(2):
            qa.enqueue("Cae", notify(f"n{n}"), now + 1000, now)
        await qa.durable()
        originators = FakeOriginatorMap()
        chain = PoaChain(originators, self.reactor, queue=b.store.queue)
        chain.startService()
        self.addCleanup(chain.stopService)
        connection = FakeConnection("Cae")
        originators.bind("Cae", connection)  # the flush starts
        while not connection.sent:
            await self._turn()
        late: list[Any] = []
        chain.send_then("Cae", notify("new"), late.append, (), True)
        order = []
        for _ in range(3):
            while not connection.sent:
                await self._turn()
            request, _, d = connection.sent.pop(0)
            order.append(request.rqi)
            d.callback(Response(RSC.OK, request.rqi, "4"))
        self.assertEqual(order, ["n0", "n1", "new"])
        self.assertEqual([r.rsc for r in late], [RSC.ACCEPTED])


class FaultTests(TestCase):
    """PostgreSQL stopped and started under load: a server of the test's own."""

    skip = SKIP

    def setUp(self) -> None:
        from twisted.internet import reactor

        from tests.pg_helpers import PrivateServer, free_port

        self.reactor = reactor
        self.server = PrivateServer(free_port())
        self.addCleanup(self.server.remove)
        self.server.start()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    async def test_stopped_and_started_under_load(self) -> None:
        from twisted.internet.threads import deferToThread
        from twisted.logger import capturedLogs, formatEvent

        node = Node(self.server.url, self.reactor, self.clock)
        self.addCleanup(node.stop)
        await node.resources.flushed()
        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        self.assertTrue((await node.request(1, "cse-in", fr="Cae", ty=2, pc=ae)).ok)
        cnt = {"m2m:cnt": {"rn": "c"}}
        self.assertTrue((await node.request(1, "cse-in/ae", fr="Cae", ty=3, pc=cnt)).ok)
        acknowledged: list[str] = []
        refused: list[str] = []
        n = 0

        async def load(count: int) -> None:
            nonlocal n
            window = []
            for _ in range(count):
                n += 1
                con = f"v{n}"
                cin = {"m2m:cin": {"con": con}}
                window.append((con, node.request(1, "cse-in/ae/c", fr="Cae", ty=4, pc=cin)))
                read = node.request(2, "cse-in/ae/c", fr="Cae")
                window.append(("", read))
            for con, d in window:
                response = await d
                self.assertIn(response.rsc, (RSC.CREATED, RSC.OK, RSC.INTERNAL_SERVER_ERROR))
                if response.rsc == RSC.INTERNAL_SERVER_ERROR:
                    self.assertIn("database", response.debug)
                    refused.append(con)
                elif con:
                    acknowledged.append(con)

        with capturedLogs() as events:
            await load(20)
            stopping = deferToThread(self.server.stop)
            while not stopping.called:  # requests while it shuts down
                await load(4)
            await stopping
            before = len(refused)
            await load(1)  # (meets the closed server)
            self.assertIn("Connection refused", node.store.down())  # type: ignore[misc]
            await load(10)  # down: every one a clean 5000, at once
            self.assertEqual(len(refused) - before, 22)
            await deferToThread(self.server.start)
            for _ in range(10):  # (the first may meet a broken connection: 5000)
                await load(1)
                if acknowledged[-1] == f"v{n}":
                    break
            await load(20)  # and it serves again, without a restart
        self.assertEqual(acknowledged[-20:], [f"v{i}" for i in range(n - 19, n + 1)])
        stored = {
            cbor2.loads(row[0])[1]["con"]
            for row in sql(self.server.url, "SELECT data FROM resources WHERE ty = 4")
        }
        self.assertIsNone(node.store.down())  # type: ignore[misc]
        self.assertTrue(set(acknowledged) <= stored)  # nothing acknowledged is lost
        # nothing half done: the container counts what the database holds
        c = (await node.request(2, "cse-in/ae/c", fr="Cae")).pc["m2m:cnt"]
        self.assertEqual(c["cni"], len(stored))
        self.assertEqual(c["cbs"], sum(len(con) for con in stored))
        self.assertFalse(stored & set(refused))  # nothing refused is there
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len([x for x in lines if "does not answer" in x]), 1, lines)
        self.assertEqual(len([x for x in lines if "answers again" in x]), 1, lines)
        self.assertFalse([x for x in lines if "password" in x])


class SchemaTests(PostgreSQLCase):
    def test_a_newer_schema_is_refused_in_one_line(self) -> None:
        from acmews.durable import StoreError

        open_store(self.url, self.reactor).service.stopService()
        sql(self.url, "UPDATE meta SET value = 99 WHERE key = 'schema'")
        e = self.assertRaises(StoreError, open_store, self.url, self.reactor)
        self.assertIn("schema version 99, written by a newer acmews", str(e))
        self.assertNotIn("\n", str(e))

    def test_an_older_schema_is_upgraded_at_start(self) -> None:
        # version 0: the meta table of an acmews that kept no schema row
        sql(self.url, "CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)")
        store = open_store(self.url, self.reactor)
        store.service.stopService()
        self.assertEqual(sql(self.url, "SELECT value FROM meta WHERE key = 'schema'"), [(2,)])
        self.assertEqual(sql(self.url, "SELECT count(*) FROM resources"), [(0,)])

    def test_a_version_1_queue_gets_the_columns_of_its_takers(self) -> None:
        store = open_store(self.url, self.reactor)
        store.service.stopService()
        sql(self.url, "ALTER TABLE queue DROP COLUMN taken_by, DROP COLUMN taken_since")
        sql(self.url, "UPDATE meta SET value = 1 WHERE key = 'schema'")
        open_store(self.url, self.reactor).service.stopService()
        self.assertEqual(sql(self.url, "SELECT value FROM meta WHERE key = 'schema'"), [(2,)])
        self.assertEqual(sql(self.url, "SELECT taken_by, taken_since FROM queue"), [])

    def test_the_password_is_never_shown(self) -> None:
        from twisted.logger import capturedLogs, formatEvent

        from acmews.pgstore import redact

        self.assertEqual(
            redact("postgresql://u:s3cret@h:5/db?password=s3cret&x=1"),
            "postgresql://u:***@h:5/db?password=***&x=1",
        )
        url = self.url.replace("://acmews@", "://acmews:s3cret@")  # (trust: not checked)
        with capturedLogs() as events:
            store = open_store(url, self.reactor)
            store.service.stopService()
        self.assertNotIn("s3cret", store.description)
        lines = [formatEvent(e) for e in events]
        self.assertTrue(lines)
        self.assertFalse([x for x in lines if "s3cret" in x])


class CacheTests(PostgreSQLCase):
    async def test_two_batches_on_one_resource_in_one_transaction_are_both_written(self) -> None:
        """Timers' batches (outside the gate) changing the same resource one after the other
        share a transaction: the second was made on the first, not on a stale row."""
        from acmews.cse import Batch

        a = await self.node()
        await self.ok(
            a,
            1,
            "cse-in",
            fr="Cae",
            ty=2,
            pc={"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}},
        )
        ae = a.resources.child("id-in", "ae")
        done = []
        for label in ("one", "two"):
            batch = Batch(a.resources)
            ae.replace({"lbl": [label]})
            batch.update(ae)
            done.append(a.resources.apply(batch))
        await defer.gatherResults(done)
        [(data,)] = sql(self.url, "SELECT data FROM resources WHERE rn = 'ae'")
        self.assertEqual(cbor2.loads(data)[1]["lbl"], ["two"])

    async def test_a_node_behind_the_purged_tombstones_reads_everything_again(self) -> None:
        a = await self.node()
        b = await self.node()
        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        await self.ok(a, 1, "cse-in", fr="Cae", ty=2, pc=ae)
        for rn in ("gone", "kept"):
            await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc={"m2m:cnt": {"rn": rn}})
        await self.ok(b, 2, "cse-in/ae/gone", fr="Cae")
        await self.ok(a, 4, "cse-in/ae/gone", fr="Cae")
        # the tombstone is purged before b reads it (as after a million changes)
        sql(self.url, "DELETE FROM tombstones")
        sql(
            self.url,
            "UPDATE meta SET value = (SELECT value FROM meta WHERE key = 'version')"
            " WHERE key = 'horizon'",
        )
        r = await b.request(2, "cse-in/ae/gone", fr="Cae")
        self.assertEqual(r.rsc, RSC.NOT_FOUND)
        await self.ok(b, 2, "cse-in/ae/kept", fr="Cae")
        self.assertEqual(len(b.resources), 3)

    async def test_a_version_whose_commit_failed_is_not_taken_as_seen(self) -> None:
        """A transaction that could not COMMIT leaves its version to the next writer (on
        any node): the node that failed must still read that writer's rows."""
        import psycopg

        from acmews.pgstore import _abort, _commit

        failing = []

        def run(call: Any, function: Any, *args: Any) -> Deferred[Any]:
            if function is _commit and failing:
                failing.pop()

                def broken(conn: Any, *_: Any) -> None:
                    _abort(conn)
                    raise psycopg.OperationalError("the connection is lost (injected)")

                function = broken
            return defer.maybeDeferred(call, function, *args)

        b = await self.node()  # (writes the CSEBase)
        disk = Clock()
        store = open_store(self.url, disk, run=run)
        self.addCleanup(store.service.stopService)
        a = CSE(CSEConfig(poa=("ws://127.0.0.1:8180",)), FakeSender(), self.clock, store.resources)

        def on_a(op: int, to: str, **kw: Any) -> Response:
            d = a.handle_request(
                Request(Operation(op), to, "rq", "4", "Cae", **kw), FakeConnection()
            )
            disk.advance(0)
            assert isinstance(d, Deferred)
            return self.successResultOf(d)

        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        self.assertEqual(on_a(1, "cse-in", ty=2, pc=ae).rsc, RSC.CREATED)
        failing.append(True)
        r = on_a(1, "cse-in/ae", ty=3, pc={"m2m:cnt": {"rn": "lost"}})
        self.assertEqual(r.rsc, RSC.INTERNAL_SERVER_ERROR)
        # b takes the version the failed transaction had
        await self.ok(b, 3, "cse-in/ae", fr="Cae", pc={"m2m:ae": {"lbl": ["from-b"]}})
        r = on_a(2, "cse-in/ae")
        self.assertEqual(r.pc["m2m:ae"].get("lbl"), ["from-b"])

    async def test_both_nodes_expire_a_resource_once(self) -> None:
        """Each node's expiry timer deletes what expired (outside the gate): one deletion
        is written, the other is refused as made on a row that is gone, and both caches and
        the database agree."""
        a = await self.node()
        b = await self.node()
        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        await self.ok(a, 1, "cse-in", fr="Cae", ty=2, pc=ae)
        cnt = {"m2m:cnt": {"rn": "short", "et": "20270115T080010"}}  # (the clock: 08:00:00)
        await self.ok(a, 1, "cse-in/ae", fr="Cae", ty=3, pc=cnt)
        await self.ok(b, 2, "cse-in/ae/short", fr="Cae")  # (b indexed its et on the way)
        for node in (a, b):
            node.cse.expiry.start()
            self.addCleanup(node.cse.expiry.stop)
        self.clock.advance(11)  # both timers fire
        await defer.gatherResults([a.resources.flushed(), b.resources.flushed()])
        # one node's deletion was refused (its sweep holds off, as for any refusal)
        held = sorted(node.cse.expiry._hold_until > 0 for node in (a, b))
        self.assertEqual(held, [False, True])
        self.assertEqual(
            sql(self.url, "SELECT count(*) FROM resources WHERE rn = 'short'"), [(0,)]
        )
        for node in (a, b):
            r = await node.request(2, "cse-in/ae/short", fr="Cae")
            self.assertEqual(r.rsc, RSC.NOT_FOUND)
            self.assertIsNotNone(node.resources.child("id-in", "ae"))

    async def test_a_row_read_again_leaves_a_change_being_committed_alone(self) -> None:
        """After a refused change its rows are read again. A read doing so while the next
        change to the same container is being committed must not put the container back
        as the database has it (the cache would stay one instance behind for good)."""
        import psycopg

        from acmews.pgstore import _abort, _commit, _select_changes

        failing: list[bool] = []
        hold: set[Any] = set()
        held: dict[Any, tuple[Any, tuple[Any, ...], Deferred[Any]]] = {}

        def run(call: Any, function: Any, *args: Any) -> Deferred[Any]:
            if function is _commit and failing:
                failing.pop()

                def broken(conn: Any, *_: Any) -> None:
                    _abort(conn)
                    raise psycopg.OperationalError("the connection is lost (injected)")

                function = broken
            elif function in hold:
                d: Deferred[Any] = Deferred()
                held[function] = (call, args, d)
                return d
            return defer.maybeDeferred(call, function, *args)

        def release(function: Any) -> None:
            hold.discard(function)
            call, args, d = held.pop(function)
            defer.maybeDeferred(call, function, *args).chainDeferred(d)

        await self.node()  # (writes the CSEBase)
        disk = Clock()
        store = open_store(self.url, disk, run=run)
        self.addCleanup(store.service.stopService)
        a = CSE(CSEConfig(poa=("ws://127.0.0.1:8180",)), FakeSender(), self.clock, store.resources)

        def on_a(op: int, to: str, **kw: Any) -> Deferred[Response]:
            d = a.handle_request(
                Request(Operation(op), to, "rq", "4", "Cae", **kw), FakeConnection()
            )
            disk.advance(0)
            assert isinstance(d, Deferred)
            return d

        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        self.successResultOf(on_a(1, "cse-in", ty=2, pc=ae))
        self.successResultOf(on_a(1, "cse-in/ae", ty=3, pc={"m2m:cnt": {"rn": "c"}}))
        cin = {"m2m:cin": {"con": "x"}}
        failing.append(True)
        r = self.successResultOf(on_a(1, "cse-in/ae/c", ty=4, pc=cin))
        self.assertEqual(r.rsc, RSC.INTERNAL_SERVER_ERROR)  # (its rows are to be read again)
        hold.add(_select_changes)
        read = on_a(2, "cse-in/ae/c")  # a read: its refresh is on its way
        hold.add(_commit)
        created = on_a(1, "cse-in/ae/c", ty=4, pc=cin)  # the next change, COMMIT on its way
        release(_select_changes)  # the read's refresh comes back first (cni 0 in the table)
        self.assertEqual(self.successResultOf(read).rsc, RSC.OK)
        release(_commit)
        self.assertEqual(self.successResultOf(created).rsc, RSC.CREATED)
        r = self.successResultOf(on_a(2, "cse-in/ae/c"))
        self.assertEqual(r.pc["m2m:cnt"]["cni"], 1)
        self.assertEqual(sql(self.url, "SELECT count(*) FROM resources WHERE ty = 4"), [(1,)])


class StartedTogetherTests(PostgreSQLCase):
    """Nodes started at once on an empty database each make a CSEBase; one is stored, and
    the others take it (before: a critical 'could not store the CSEBase' on each of them,
    and a CSEBase of its own answered by each)."""

    async def test_one_cse_base(self) -> None:
        nodes = [Node(self.url, self.reactor, self.clock) for _ in range(3)]
        for node in nodes:
            self.addCleanup(node.stop)
        for node in nodes:
            await node.resources.flushed()
        bases = []
        for node in nodes:
            response = await self.ok(node, 2, "cse-in")  # (a refresh comes first)
            bases.append(response.pc["m2m:cb"])
            self.assertIs(node.cse.base, node.resources.get("id-in"))
            self.assertIs(node.cse.addressing.base, node.cse.base)
        self.assertEqual(len({base["ct"] for base in bases}), 1, bases)
        [(ct,)] = sql(self.url, "SELECT count(*) FROM resources WHERE ri = 'id-in'")
        self.assertEqual(ct, 1)
        # and each works on it: a child made through one is read through the others
        ae = {"m2m:ae": {"rn": "ae", "api": "Nx", "rr": True, "srv": ["4"]}}
        await self.ok(nodes[1], 1, "cse-in", fr="Cae", ty=2, pc=ae)
        for node in nodes:
            await self.ok(node, 2, "cse-in/ae", fr="Cae")
            children = node.resources.children("id-in")
            self.assertEqual([c.rn for c in children if c.ty == 2], ["ae"])

    async def test_nodes_advertising_at_once(self) -> None:
        """Nodes that start together on a database with a CSEBase each write the poa they
        listen on into it: the writes made at once are refused but one (before: a critical
        'could not store the CSEBase' each); every node then answers the stored one."""
        first = await self.node()
        nodes = []
        for port in (8181, 8182, 8183):
            store = open_store(self.url, self.reactor, cse_id="/id-in")
            self.addCleanup(store.service.stopService)
            config = CSEConfig(poa=(f"ws://127.0.0.1:{port}",))
            nodes.append((store, CSE(config, FakeSender(), self.clock, store.resources)))
        for store, _ in nodes:
            await store.resources.flushed()
        seen = [(await self.ok(first, 2, "cse-in")).pc["m2m:cb"]["poa"]]
        for _store, cse in nodes:
            response = cse.handle_request(
                Request(Operation.RETRIEVE, "cse-in", "rq", "4", ADMIN), FakeConnection()
            )
            if isinstance(response, Deferred):
                response = await response
            seen.append(response.pc["m2m:cb"]["poa"])
        self.assertEqual(len({tuple(p) for p in seen}), 1, seen)
        self.assertIn(seen[0], [[f"ws://127.0.0.1:{port}"] for port in (8181, 8182, 8183)])
