"""The durable store (acmews.durable): real SQLite files in a temporary directory.

Most tests run the store's transactions inline, on a clock of their own (``self.disk``), so
that they decide when a group commit happens; ``ThreadTests`` use the real writer thread."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import cbor2
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from acmews.codec import JSON
from acmews.codes import RSC, Operation
from acmews.cse import CSE, CSEConfig, IResourceStore, MemoryResourceStore
from acmews.cse.resource import Resource
from acmews.durable import (
    PROBE_INTERVAL,
    SCHEMA_VERSION,
    ChangeRefused,
    Database,
    SQLiteNotificationQueue,
    SQLiteResourceStore,
    Store,
    StoreError,
    open_store,
)
from acmews.errors import InternalServerError, TargetNotReachable
from acmews.handshake import Authorization
from acmews.poa import INotificationQueue, MemoryNotificationQueue, PoaChain
from acmews.primitive import Request, Response
from acmews.session import Session
from acmews.testing import START, FakeConnection, FakeOriginatorMap, FakeSender
from tests.test_cse import RecordTree


def inline(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


def notify(rqi: str, n: int = 0) -> Request:
    return Request(Operation.NOTIFY, "Cae", rqi, "4", "/id-in", pc={"m2m:sgn": {"n": n}})


class _Faulty(sqlite3.Connection):
    """A writer whose COMMIT fails while ``full`` is set, as it does when the disk is full."""

    full = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def faulty_writer(database: Database) -> _Faulty:
    """Give ``database`` a writer whose COMMIT fails on demand (``writer.full = True``)."""
    if database._writer is not None:
        database._writer.close()
    writer = sqlite3.connect(
        database._real, isolation_level=None, check_same_thread=False, factory=_Faulty
    )
    writer.execute("PRAGMA synchronous=FULL")
    database._writer = writer
    return writer


def store_lines(events: list[Any]) -> list[str]:
    """The lines the store logged at info level and above."""
    return [
        formatEvent(e)
        for e in events
        if e["log_level"] >= LogLevel.info and "the store" in formatEvent(e)
    ]


class _Nobody:
    """An originator map in which nobody is connected."""

    def lookup(self, originator: str) -> None:
        return None

    def add_observer(self, observer: Any) -> None:
        pass

    def remove_observer(self, observer: Any) -> None:
        pass


class StoreFiles:
    """Opening stores in a temporary directory, closed at cleanup."""

    disk: Clock
    path: str

    def open_store(self, path: str | None = None, **queue_options: Any) -> Store:
        test: Any = self
        store = open_store(f"sqlite:{path or self.path}", self.disk, run=inline, **queue_options)
        test.addCleanup(store.service.stopService)
        return store

    def commit(self) -> None:
        """Run the group commit that is due (everything submitted so far)."""
        self.disk.advance(0)

    def rows(self, query: str, path: str | None = None) -> list[tuple[Any, ...]]:
        """What another reader of the file sees now."""
        with sqlite3.connect(path or self.path) as conn:
            return list(conn.execute(query))


class DatabaseTests(StoreFiles, SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = Clock()
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "acmews.db")

    def test_interfaces(self) -> None:
        store = self.open_store()
        self.assertTrue(verifyObject(IResourceStore, store.resources))
        self.assertTrue(verifyObject(INotificationQueue, store.queue))
        self.assertEqual(self.rows("PRAGMA user_version"), [(SCHEMA_VERSION,)])
        self.assertEqual(self.rows("PRAGMA journal_mode"), [("wal",)])

    def test_a_failing_change_leaves_nothing_of_it_nor_of_those_after_it(self) -> None:
        store = self.open_store()
        database = store.resources.database  # type: ignore[attr-defined]
        insert = "INSERT INTO resources (ri, data) VALUES (?, ?)"
        undone: list[str] = []
        first = database.submit([(insert, ("a", b"1"))], undo=lambda: undone.append("a"))
        broken = database.submit(
            [(insert, ("b", b"2")), (insert, ("a", b"3"))],  # ri twice
            undo=lambda: undone.append("b"),
        )
        last = database.submit([(insert, ("c", b"4"))], undo=lambda: undone.append("c"))
        self.assertEqual(self.rows("SELECT ri FROM resources"), [])  # nothing before commit
        with capturedLogs() as events:
            self.commit()
        self.assertEqual(database.commits, 1)  # one transaction for the three
        self.assertIsNone(self.successResultOf(first))
        # the one after it was made on top of it: it goes too, and the newest is undone first
        for d in (broken, last):
            self.failureResultOf(d, ChangeRefused)
        self.assertEqual(undone, ["c", "b"])
        self.assertEqual(self.rows("SELECT ri, data FROM resources ORDER BY seq"), [("a", b"1")])
        [line] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertIn("UNIQUE constraint failed", line)
        # one change's own error: the store goes on
        self.assertIsNone(database.refused)
        d = database.submit([(insert, ("d", b"5"))])
        self.commit()
        self.successResultOf(d)

    def test_a_transaction_that_cannot_be_written_turns_the_store_read_only(self) -> None:
        store = self.open_store()
        database = store.resources.database  # type: ignore[attr-defined]
        undone: list[int] = []
        d = database.submit(
            [("INSERT INTO nowhere VALUES (1)", ())], undo=lambda: undone.append(1)
        )
        with capturedLogs() as events:
            self.commit()
            self.assertEqual(undone, [1])
            self.assertIsInstance(
                self.failureResultOf(d, ChangeRefused).value, InternalServerError
            )
            self.assertIn("no such table", database.refused)
            e = self.assertRaises(ChangeRefused, database.submit, [])
            self.assertIn("read-only", e.reason)
            self.assertEqual(e.rsc, RSC.INTERNAL_SERVER_ERROR)
            self.assertIs(type(database.refusal()), ChangeRefused)
            self.disk.advance(PROBE_INTERVAL)  # the probe writes: it takes changes again
            self.assertIsNone(database.refused)
        lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(f"the store {self.path} is read-only", lines[0])
        self.assertIn(f"the store {self.path} takes changes again", lines[1])
        d = database.submit([("INSERT INTO meta VALUES ('x', 1)", ())])
        self.commit()
        self.successResultOf(d)
        self.assertIn(("x", 1), self.rows("SELECT key, value FROM meta"))
        self.assertEqual(self.rows("SELECT key FROM meta WHERE key = 'probe'"), [])

    def test_what_a_transaction_makes_moot_is_not_written(self) -> None:
        store = self.open_store(size=100)
        resources: Any = store.resources
        database = resources.database
        clock = Clock()
        clock.advance(START)
        cse = CSE(CSEConfig(), FakeSender(), clock, resources)
        self.commit()
        executed: list[str] = []
        database._writer.set_trace_callback(executed.append)
        for n in range(5):  # mni 2: three of the five instances are evicted again
            cse.handle_request(
                Request(
                    Operation.CREATE,
                    "cse-in/c",
                    f"r{n}",
                    "4",
                    "CAdmin",
                    ty=4,
                    pc={"m2m:cin": {"con": str(n)}},
                ),
                FakeConnection(),
            ) if n else cse.handle_request(
                Request(
                    Operation.CREATE,
                    "cse-in",
                    "r",
                    "4",
                    "CAdmin",
                    ty=3,
                    pc={"m2m:cnt": {"rn": "c", "mni": 2}},
                ),
                FakeConnection(),
            )
        for n in range(3):
            store.queue.enqueue("Ca", notify(f"a{n}"), 100.0, 0.0)
        store.queue.acknowledge("Ca", store.queue.take("Ca"))
        self.commit()
        writes = [e.split(" ")[0] for e in executed if not e.startswith(("BEGIN", "COMMIT"))]
        # the container once (its updates folded in), two instances, two entries, the counter
        self.assertEqual(sorted(writes), ["INSERT"] * 6)
        self.assertEqual(database.commits, 2)
        self.assertEqual(
            [
                cbor2.loads(d)[1]["con"]
                for (d,) in self.rows(
                    "SELECT data FROM resources WHERE ri LIKE 'cin%' ORDER BY seq"
                )
            ],
            ["3", "4"],
        )
        [(data,)] = self.rows("SELECT data FROM resources WHERE ri LIKE 'cnt%'")
        self.assertEqual(cbor2.loads(data)[1]["cni"], 2)
        self.assertEqual([r for (r,) in self.rows("SELECT rqi FROM queue")], ["a1", "a2"])

    def test_transactions_are_written_in_order_while_one_is_in_flight(self) -> None:
        pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def held(function: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, function, args))
            return d

        store = open_store(f"sqlite:{self.path}", self.disk, run=held)
        self.addCleanup(store.service.stopService)
        database = store.resources.database  # type: ignore[attr-defined]
        insert = "INSERT INTO meta VALUES (?, 1)"
        fired: list[str] = []
        for key in ("a", "b", "c"):
            database.submit([(insert, (key,))]).addCallback(lambda _, k=key: fired.append(k))
        self.commit()
        self.assertEqual(len(pending), 1)  # one transaction in flight for all three
        d, function, args = pending.pop()
        database.submit([(insert, ("d",))]).addCallback(lambda _: fired.append("d"))
        self.commit()
        self.assertEqual(pending, [])  # d waits for the transaction in flight
        d.callback(function(*args))
        self.assertEqual(fired, ["a", "b", "c"])
        [(d, function, args)] = pending  # the next one started at once
        d.callback(function(*args))
        self.assertEqual(fired, ["a", "b", "c", "d"])

    def test_a_newer_schema_is_refused(self) -> None:
        self.open_store().service.stopService()
        with sqlite3.connect(self.path) as conn:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        e = self.assertRaises(StoreError, self.open_store)
        self.assertIn(self.path, str(e))
        self.assertIn("newer acmews", str(e))
        self.assertNotIn("\n", str(e))

    def test_a_file_that_is_no_database_is_refused_in_one_line(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"this is not a database, " * 100)
        e = self.assertRaises(StoreError, self.open_store)
        self.assertIn(self.path, str(e))
        self.assertNotIn("\n", str(e))

    def test_a_corrupt_resource_is_refused_in_one_line(self) -> None:
        self.open_store().service.stopService()
        with sqlite3.connect(self.path) as conn:
            conn.execute("INSERT INTO resources (ri, data) VALUES ('x', X'ff00')")
        e = self.assertRaises(StoreError, self.open_store)
        self.assertIn(self.path, str(e))
        self.assertIn("'x'", str(e))

    def test_one_process_per_file(self) -> None:
        store = self.open_store()
        e = self.assertRaises(StoreError, self.open_store)
        self.assertIn("locked", str(e))
        self.assertIn(self.path, str(e))
        store.service.stopService()
        self.open_store()  # free again

    def test_one_process_per_file_whatever_its_name(self) -> None:
        """A symlink and a hard link are other names for the same file: the same store."""
        store = self.open_store()
        directory = os.path.dirname(self.path)
        symlink, hard = os.path.join(directory, "symlink.db"), os.path.join(directory, "hard.db")
        os.symlink(os.path.abspath(self.path), symlink)
        os.link(self.path, hard)
        for other in (symlink, hard):
            e = self.assertRaises(StoreError, self.open_store, other)
            self.assertEqual(str(e), f"the store {other} is locked: another acmews uses it")
        store.service.stopService()
        self.open_store(hard)  # free again

    def test_a_new_file_is_locked_from_the_start(self) -> None:
        """The database file is made by the lock (the inode exists before SQLite opens
        it); a symlink that points to a file to be made names the same store."""
        directory = os.path.dirname(self.path)
        symlink = os.path.join(directory, "symlink.db")
        os.symlink(os.path.abspath(self.path), symlink)
        self.open_store(symlink)
        self.assertTrue(os.path.exists(self.path + ".lock"))
        self.assertFalse(os.path.exists(symlink + ".lock"))
        self.assertRaises(StoreError, self.open_store, self.path)
        hard = os.path.join(directory, "hard.db")
        os.link(self.path, hard)
        self.assertRaises(StoreError, self.open_store, hard)

    def test_a_missing_directory_is_named(self) -> None:
        path = os.path.join(self.path, "nowhere", "x.db")
        e = self.assertRaises(StoreError, self.open_store, path)
        self.assertIn("no directory", str(e))

    def test_closing_writes_what_is_pending(self) -> None:
        store = self.open_store()
        database = store.resources.database  # type: ignore[attr-defined]
        database.submit([("INSERT INTO meta VALUES ('late', 7)", ())])
        closed = store.service.stopService()
        self.commit()
        self.successResultOf(closed)
        self.assertIn(("late", 7), self.rows("SELECT key, value FROM meta"))
        self.assertRaises(StoreError, database.submit, [])

    def test_memory_store(self) -> None:
        store = open_store("memory:", self.disk, size=5)
        self.assertIsInstance(store.resources, MemoryResourceStore)
        self.assertIsInstance(store.queue, MemoryNotificationQueue)
        self.assertIsNone(store.queue.durable())
        self.assertEqual(os.listdir(os.path.dirname(self.path)), [])

    def test_unknown_urls(self) -> None:
        for url in ("sqlite:", "mysql://x", "memory", "acmews.db"):
            self.assertRaises(ValueError, open_store, url, self.disk)


class QueueTests(StoreFiles, SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = Clock()
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "acmews.db")

    def test_round_trip_in_order_with_expiry(self) -> None:
        store = self.open_store(size=10)
        queue = store.queue
        for n in range(4):
            queue.enqueue("Ca", notify(f"a{n}", n), 1000.0 + n, 0.0)
        queue.enqueue("Cb", notify("b0"), 2000.0, 0.0)
        queue.acknowledge("Ca", queue.take("Ca"))  # a0 delivered
        durable = queue.durable()
        self.assertNoResult(durable)
        self.commit()
        self.successResultOf(durable)
        before = {o: [(e.rqi, e.expires, e.seq, e.data) for e in queue.pending(o)] for o in "ab"}
        store.service.stopService()

        again = self.open_store(size=10).queue
        after = {o: [(e.rqi, e.expires, e.seq, e.data) for e in again.pending(o)] for o in "ab"}
        self.assertEqual(after, {"a": [], "b": []})  # keyed by originator: "Ca", "Cb"
        after = {o: [(e.rqi, e.expires, e.seq, e.data) for e in again.pending(o)] for o in before}
        self.assertEqual(
            [e.rqi for e in again.pending("Ca")] + [e.rqi for e in again.pending("Cb")],
            ["a1", "a2", "a3", "b0"],
        )
        self.assertEqual(
            [(e.expires, e.request.pc) for e in again.pending("Ca")],
            [
                (1001.0, {"m2m:sgn": {"n": 1}}),
                (1002.0, {"m2m:sgn": {"n": 2}}),
                (1003.0, {"m2m:sgn": {"n": 3}}),
            ],
        )
        self.assertEqual(again.total(), 4)
        # new entries come after the restored ones
        again.enqueue("Ca", notify("a4"), 1004.0, 0.0)
        seqs = [e.seq for e in again.pending("Ca")]
        self.assertEqual(seqs, sorted(seqs))

    def test_bounds_and_purges_are_written_too(self) -> None:
        store = self.open_store(size=2)
        queue = store.queue
        for n in range(3):  # the oldest is dropped by the bound
            queue.enqueue("Ca", notify(f"a{n}"), 100.0 + n, 0.0)
        queue.enqueue("Cb", notify("b0"), 50.0, 0.0)
        self.assertEqual(queue.purge_expired(60.0), 1)  # b0 expired
        self.commit()
        self.assertEqual(
            [r[0] for r in self.rows("SELECT rqi FROM queue ORDER BY seq")], ["a1", "a2"]
        )

    def test_restored_entries_expire_on_time(self) -> None:
        from acmews.poa import PoaChain

        store = self.open_store()
        store.queue.enqueue("Ca", notify("old"), 100.0, 0.0)
        store.queue.enqueue("Ca", notify("new"), 10_000.0, 0.0)
        store.service.stopService()
        self.commit()
        queue = self.open_store().queue
        clock = Clock()
        chain = PoaChain(_Nobody(), clock, queue=queue, purge_interval=60.0)  # type: ignore[arg-type]
        chain.startService()
        clock.advance(200.0)
        self.assertEqual([e.rqi for e in queue.pending("Ca")], ["new"])
        self.commit()
        self.assertEqual(self.rows("SELECT rqi FROM queue"), [("new",)])
        chain.stopService()

    def test_an_entry_the_disk_refused_leaves_the_queue(self) -> None:
        from acmews.poa import PoaChain

        store = self.open_store()
        queue = store.queue
        queue.enqueue("Ca", notify("kept"), 100.0, 0.0)
        self.commit()
        writer = faulty_writer(store.resources.database)  # type: ignore[attr-defined]
        writer.full = True
        chain = PoaChain(_Nobody(), Clock(), queue=queue)  # type: ignore[arg-type]
        self.addCleanup(chain.stopService)
        d = chain.send("Cae", notify("n1"), store=True)
        self.commit()
        self.failureResultOf(d, ChangeRefused)  # not answered 1000 (ACCEPTED)
        self.assertEqual(queue.pending("Cae"), [])
        self.assertEqual(queue.total(), 1)
        # read-only: a new one is not kept (5103); one delivered leaves memory at once, and
        # the file once a write succeeds
        self.failureResultOf(chain.send("Cae", notify("n2"), store=True), TargetNotReachable)
        self.assertEqual(queue.pending("Cae"), [])
        queue.acknowledge("Ca", queue.take("Ca"))
        self.commit()
        self.assertEqual(queue.total(), 0)
        self.assertEqual(self.rows("SELECT rqi FROM queue"), [("kept",)])
        writer.full = False
        self.disk.advance(PROBE_INTERVAL)
        self.assertEqual(self.rows("SELECT rqi FROM queue"), [])
        self.assertEqual(queue.bytes, 0)

    def test_accepted_only_once_durable(self) -> None:
        from acmews.poa import PoaChain

        store = self.open_store()

        chain = PoaChain(_Nobody(), Clock(), queue=store.queue)  # type: ignore[arg-type]
        d = chain.send("Cae", notify("n1"), store=True)
        self.assertNoResult(d)  # queued, not yet on disk
        self.commit()
        self.assertEqual(self.successResultOf(d).rsc, RSC.ACCEPTED)
        self.assertEqual(self.rows("SELECT rqi FROM queue"), [("n1",)])
        chain.stopService()


class DurableCSETests(StoreFiles, RecordTree):
    """The CSE on a SQLite store: what it answered is in the file, and a CSE started on the
    file again serves the same tree."""

    def new_cse(self) -> None:
        if not hasattr(self, "path"):
            os.mkdir(directory := self.mktemp())
            self.path = os.path.join(directory, "acmews.db")
        self.disk = Clock()
        super().new_cse()
        self.store = self.open_store()
        self.cse = CSE(
            CSEConfig(poa=("ws://127.0.0.1:8180",), allowed_csr_originators=("/id-mn",)),
            self.sender,
            self.clock,
            self.store.resources,
        )
        self.commit()

    def call(self, op: int, to: str, fr: str | None = "CAdmin", **kw: Any) -> Response:
        result = self.handle(op, to, fr, **kw)
        if isinstance(result, Deferred):
            self.commit()
            return self.successResultOf(result)
        return result

    def subscribe(self, to: str, fr: str = "CAdmin", verify: bool = True, **attrs: Any) -> Any:
        d = self.handle(1, to, fr, ty=23, pc={"m2m:sub": attrs})
        for sent in self.sender.take():
            sent.answer(RSC.OK)
        self.commit()
        assert isinstance(d, Deferred)
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.CREATED, response.debug)
        return response.pc["m2m:sub"]

    def restart(self) -> None:
        """Stop the store and start a new CSE on the same file."""
        self.store.service.stopService()
        self.commit()
        self.new_cse()

    def test_answered_only_once_durable(self) -> None:
        aei = self.register("Cmyae")
        d = self.handle(1, f"cse-in/{aei}", aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        self.assertEqual(self.rows("SELECT count(*) FROM resources WHERE ri LIKE 'cnt%'"), [(0,)])
        self.commit()
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        self.assertEqual(self.rows("SELECT count(*) FROM resources WHERE ri LIKE 'cnt%'"), [(1,)])

    def test_pipelined_requests_see_each_other(self) -> None:
        aei = self.register("Cmyae")
        cnt = self.handle(1, f"cse-in/{aei}", aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        cin = self.handle(1, f"cse-in/{aei}/c", aei, ty=4, pc={"m2m:cin": {"con": "x"}})
        assert isinstance(cnt, Deferred) and isinstance(cin, Deferred)
        self.commit()
        self.assertEqual(self.successResultOf(cnt).rsc, RSC.CREATED)
        self.assertEqual(self.successResultOf(cin).rsc, RSC.CREATED)

    def test_every_type_survives_a_restart(self) -> None:
        self.ok(
            1,
            "cse-in",
            "/id-mn",
            ty=16,
            pc={
                "m2m:csr": {
                    "csi": "/id-mn",
                    "cb": "/id-mn/cse-mn",
                    "rr": True,
                    "poa": ["ws://mn:8181"],
                    "cst": 2,
                }
            },
        )
        sub = self.tree()
        before = self.records()
        self.assertEqual({r[0] for r in before}, {5, 2, 3, 4, 1, 23, 16})
        self.restart()
        self.assertEqual(self.records(), before)
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la", "Cmyae").pc["m2m:cin"]["con"], "3")
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "1")
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["exc"], 5)
        # a CIN with its eviction, cni/cbs and the exc countdown: one request, all of it kept
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", "Cmyae", con="4")
        self.restart()
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (3, len('{"1":"x"}') + 2))
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], {1: "x"})
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["exc"], 4)
        self.sender.take()
        # a subtree DELETE
        self.ok(4, "cse-in/Cmyae", "Cmyae")
        self.sender.take()
        self.restart()
        self.assertEqual([r[0] for r in self.records()], [5, 16])
        self.assertEqual(self.retrieve("cse-in/Cmyae").rsc, RSC.NOT_FOUND)

    def test_request_resources_survive_a_restart(self) -> None:
        """<request> resources (ty 17) of non-blocking requests round-trip through the file;
        one still pending when the CSE stopped comes back failed (its result is lost)."""
        aei = self.register("Cmyae")
        done = self.call(2, f"cse-in/{aei}", aei, rt={"rtv": 1}).pc["m2m:uri"]
        self.clock.advance(0)  # carried out, the result recorded
        self.commit()
        pending = self.call(4, f"cse-in/{aei}", aei, rt={"rtv": 1}).pc["m2m:uri"]
        before = self.records()
        self.assertEqual([r[0] for r in before], [5, 2, 17, 17])
        self.restart()
        self.assertEqual(self.records()[:3], before[:3])
        self.assertEqual(self.retrieve(done, aei).pc["m2m:req"]["rs"], 1)
        req = self.retrieve(pending, aei).pc["m2m:req"]
        self.assertEqual((req["rs"], req["ors"]["rsc"]), (2, 5000))
        self.restart()  # that failure was written too
        self.assertEqual(self.retrieve(pending, aei).pc["m2m:req"]["rs"], 2)
        self.assertEqual(self.retrieve(f"cse-in/{aei}", aei).rsc, 2000)  # never deleted
        self.assertEqual(self.retrieve(pending, "Cother").rsc, 4103)

    def test_subscription_policies_and_statistics_survive_a_restart(self) -> None:
        """TS-0004 7.4.8: a subscription's conditions, policies and statistics (``nsi``,
        written as notifications are answered) are in the file."""
        aei = self.register("Cmyae")
        self.create(f"cse-in/{aei}", 3, "m2m:cnt", aei, rn="c")
        policies = {
            "enc": {"net": [1], "atr": ["lbl"]},
            "nct": 2,
            "bn": {"num": 2, "dur": "PT5S"},
            "ln": True,
            "nse": True,
            "eeno": True,
        }
        sub = self.subscribe(f"cse-in/{aei}/c", aei, nu=["http://n?ct=cbor"], **policies)
        om = {"om": [{"ops": 3, "org": aei}]}
        monitor = self.subscribe(f"cse-in/{aei}/c", aei, nu=["http://m"], enc=om)
        for lbl in "ab":
            self.ok(3, f"cse-in/{aei}/c", aei, pc={"m2m:cnt": {"lbl": [lbl]}})
        for sent in self.flush():
            sent.answer(RSC.OK)
        self.flush()
        self.commit()
        before = [self.retrieve(s["ri"]).pc for s in (sub, monitor)]
        self.assertEqual(
            before[0]["m2m:sub"]["nsi"],
            [{"tg": "http://n?ct=cbor", "rqs": 2, "rsr": 2, "noec": 2}],
        )
        self.restart()
        self.assertEqual([self.retrieve(s["ri"]).pc for s in (sub, monitor)], before)

    def test_resource_ids_are_never_used_again(self) -> None:
        aei = self.register()
        seen = {aei}
        for _ in range(3):
            ri = self.create(f"cse-in/{aei}", 3, "m2m:cnt", aei)["ri"]
            self.assertNotIn(ri, seen)
            seen.add(ri)
            self.ok(4, ri, aei)
            self.restart()
        number = self.store.resources.database.last_number  # type: ignore[attr-defined]
        self.assertGreaterEqual(number, 4)
        self.assertEqual(self.rows("SELECT value FROM meta WHERE key='last_number'"), [(number,)])

    def test_the_credential_of_a_registration_is_kept_with_the_ae(self) -> None:
        # an unbound connection, authenticated
        self.connection.authorization = Authorization(None, "basic:alice")
        aei = self.register()
        self.assertEqual(self.cse.owner_of(aei), "basic:alice")
        self.assertNotIn("alice", repr(self.retrieve(f"cse-in/{aei}", aei).pc))
        self.restart()
        self.assertEqual(self.cse.owner_of(aei), "basic:alice")
        # a connection bound by X-M2M-Origin registers its own AE-ID: it belongs to the
        # credential too (#27: whether or not the connection carried the header)
        self.connection = FakeConnection("Cbound")
        self.connection.authorization = Authorization("Cbound", "basic:alice")
        self.assertEqual(self.cse.owner_of(self.register("Cbound")), "basic:alice")
        self.assertIsNone(self.cse.owner_of("id-in"))  # not an AE
        # the binding ends with the AE
        self.ok(4, f"cse-in/{aei}", aei)
        self.restart()
        self.assertIsNone(self.cse.owner_of(aei))

    def test_a_change_the_disk_refused_is_undone_and_never_comes_back(self) -> None:
        aei = self.register("Cmyae")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c", mni=2)
        for con in ("1", "2"):
            self.create("cse-in/Cmyae/c", 4, "m2m:cin", aei, con=con)
        # its exc counts down to 1 on the new instance, and it expires on the evicted one:
        # updated and removed in the same batch
        self.subscribe("cse-in/Cmyae/c", aei, nu=[aei], enc={"net": [3, 4]}, exc=2)
        before = self.records()
        database = self.store.resources.database  # type: ignore[attr-defined]
        writer = faulty_writer(database)
        writer.full = True
        with capturedLogs() as events:
            # pipelined, one transaction: an instance that evicts "1" (and ends the
            # subscription), an UPDATE of its container, a new container, a DELETE of the
            # newest instance (the new one)
            answers = [
                self.handle(1, "cse-in/Cmyae/c", aei, ty=4, pc={"m2m:cin": {"con": "3"}}),
                self.handle(3, "cse-in/Cmyae/c", aei, pc={"m2m:cnt": {"lbl": ["x"]}}),
                self.handle(1, "cse-in/Cmyae", aei, ty=3, pc={"m2m:cnt": {"rn": "d"}}),
                self.handle(4, "cse-in/Cmyae/c/la", aei),
            ]
            self.commit()
            for answer in answers:
                assert isinstance(answer, Deferred)
                response = self.successResultOf(answer)
                self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
                self.assertIn("database or disk is full", response.debug)
            # memory is as it was: every version, every place (the evicted one the oldest)
            self.assertEqual(self.records(), before)
            self.clock.advance(0)
            self.assertEqual(self.sender.take(), [])  # and nobody was told of it
            self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "1")
            self.assertEqual(self.retrieve("cse-in/Cmyae/c/la").pc["m2m:cin"]["con"], "2")
            cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
            self.assertEqual((cnt["cni"], cnt["cbs"], cnt.get("lbl")), (2, 2, None))
            # read-only: a change is refused at once, reads are served
            response = self.call(1, "cse-in/Cmyae/c", aei, ty=4, pc={"m2m:cin": {"con": "4"}})
            self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
            self.assertIn("the store is read-only", response.debug)
            self.assertNotIn(self.path, response.debug)
            response = self.call(3, "cse-in/Cmyae/c", aei, pc={"m2m:cnt": {"lbl": ["y"]}})
            self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
            self.assertEqual(self.records(), before)
            self.disk.advance(PROBE_INTERVAL)  # still full: still read-only, no new line
            self.assertIsNotNone(database.refused)
            writer.full = False
            self.disk.advance(PROBE_INTERVAL)
            self.assertIsNone(database.refused)
        lines = store_lines(events)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn(
            "is read-only: the disk refused a write (database or disk is full)", lines[0]
        )
        self.assertIn("takes changes again", lines[1])
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", aei, con="5")
        after = self.records()
        self.restart()
        self.assertEqual(self.records(), after)
        self.assertEqual(self.retrieve("cse-in/Cmyae/d").rsc, RSC.NOT_FOUND)
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt.get("lbl")), (2, None))

    def test_a_restart_while_read_only_shows_nothing_refused(self) -> None:
        aei = self.register("Cmyae")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c")
        before = self.records()
        faulty_writer(self.store.resources.database).full = True  # type: ignore[attr-defined]
        for n in range(20):
            response = self.call(1, "cse-in/Cmyae/c", aei, ty=4, pc={"m2m:cin": {"con": str(n)}})
            self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
        self.assertEqual(self.records(), before)
        self.restart()
        self.assertEqual(self.records(), before)
        self.assertEqual(self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]["cni"], 0)

    def test_a_full_disk(self) -> None:
        """SQLite's own SQLITE_FULL: the file may not grow beyond its pages now."""
        aei = self.register("Cmyae")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c")
        database = self.store.resources.database  # type: ignore[attr-defined]
        writer = database._writer
        writer.execute(
            f"PRAGMA max_page_count = {writer.execute('PRAGMA page_count').fetchone()[0]}"
        )
        answered: list[str] = []
        with capturedLogs() as events:
            for n in range(100):
                con = f"{n}:" + "x" * 500
                response = self.call(1, "cse-in/Cmyae/c", aei, ty=4, pc={"m2m:cin": {"con": con}})
                if response.rsc != RSC.CREATED:
                    break
                answered.append(con)
        self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
        self.assertIn("database or disk is full", response.debug)
        [line] = store_lines(events)
        self.assertIn("read-only", line)
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual(cnt["cni"], len(answered))
        self.assertTrue(answered)  # the free room of the last page, filled
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la").pc["m2m:cin"]["con"], answered[-1])
        self.disk.advance(PROBE_INTERVAL)  # the probe needs room too
        self.assertIsNotNone(database.refused)
        writer.execute("PRAGMA max_page_count = 1000000")
        self.disk.advance(PROBE_INTERVAL)
        self.assertIsNone(database.refused)
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", aei, con="again")
        self.restart()
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual(cnt["cni"], len(answered) + 1)
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la").pc["m2m:cin"]["con"], "again")

    def test_the_cse_base_follows_the_configured_poa(self) -> None:
        self.store.service.stopService()
        self.commit()
        self.disk = Clock()
        self.store = self.open_store()
        cse = CSE(CSEConfig(poa=("ws://new:1",)), FakeSender(), self.clock, self.store.resources)
        self.commit()
        self.assertEqual(cse.base.attrs["poa"], ["ws://new:1"])
        [(data,)] = self.rows("SELECT data FROM resources WHERE ri = 'id-in'")
        self.assertEqual(cbor2.loads(data)[1]["poa"], ["ws://new:1"])


class ThreadTests(StoreFiles, TestCase):
    """The real writer thread and reactor."""

    def setUp(self) -> None:
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "acmews.db")

    def test_nothing_of_sqlite_or_a_thread_before_the_first_write(self) -> None:
        """twistd forks after makeService to run in the background: neither a thread nor a
        SQLite connection may cross that fork (before, a daemonized CSE never answered a
        change: its writer thread had stayed in the parent)."""
        import threading

        before = threading.active_count()
        store = open_store(f"sqlite:{self.path}", reactor)
        self.addCleanup(store.service.stopService)
        database = store.resources.database  # type: ignore[attr-defined]
        self.assertEqual(threading.active_count(), before)
        self.assertIsNone(database._conn)
        self.assertIsNone(database._writer)
        self.assertEqual(len(database._lock_fds), 2)  # the locks do cross it

    @inlineCallbacks
    def test_changes_through_the_writer_thread(self) -> Any:
        store = open_store(f"sqlite:{self.path}", reactor)
        self.addCleanup(store.service.stopService)
        clock = Clock()
        clock.advance(START)
        cse = CSE(CSEConfig(), FakeSender(), clock, store.resources)
        connection = FakeConnection()
        answers = []
        for n in range(20):  # pipelined: one commit may hold several
            answers.append(
                cse.handle_request(
                    Request(
                        Operation.CREATE,
                        "cse-in",
                        f"r{n}",
                        "4",
                        None,
                        ty=2,
                        pc={"m2m:ae": {"api": "Nx", "rr": False, "rn": f"ae{n}"}},
                    ),
                    connection,
                )
            )
        for d in answers:
            response = yield d
            self.assertEqual(response.rsc, RSC.CREATED)
        yield store.service.stopService()
        self.assertEqual(self.rows("SELECT count(*) FROM resources"), [(21,)])
        database = store.resources.database  # type: ignore[attr-defined]
        self.assertLessEqual(database.commits, 21)
        again = open_store(f"sqlite:{self.path}", reactor)
        self.addCleanup(again.service.stopService)
        self.assertIsInstance(again.resources, SQLiteResourceStore)
        self.assertIsInstance(again.queue, SQLiteNotificationQueue)
        self.assertEqual(len(again.resources), 21)  # type: ignore[arg-type]
        self.assertIsInstance(database, Database)


def tree(resources: Any) -> list[Any]:
    """Every record of ``resources``, parents before children, siblings in creation order."""
    out, stack = [], [resources.get("id-in")]
    while stack:
        resource = stack.pop()
        out.append(resource.record())
        stack.extend(reversed(resources.children(resource.ri)))
    return out


def file_tree(path: str) -> list[Any]:
    """:func:`tree` of what the file holds now (read beside the store that has it open)."""
    resources = MemoryResourceStore()
    with sqlite3.connect(path) as conn:
        for (data,) in conn.execute("SELECT data FROM resources ORDER BY seq"):
            resources._add(Resource.from_record(*cbor2.loads(data)))
    return tree(resources)


class ReplayTests(SynchronousTestCase):
    """Any sequence of changes, committed in any grouping, reads back the same after a
    restart: the file (with what coalescing left out) agrees with memory. Transactions land
    when a step says so (requests go on meanwhile), or fail as on a full disk: then memory is
    what the file holds, until the disk takes writes again."""

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["cnt", "cin", "update", "delete", "commit", "land", "fail"]),
                st.integers(0, 3),
            ),
            max_size=40,
        )
    )
    def test_a_restart_reads_back_what_memory_had(self, steps: list[tuple[str, int]]) -> None:
        import shutil
        import tempfile

        directory = tempfile.mkdtemp()  # a file of its own per example
        try:
            self._replay(os.path.join(directory, "acmews.db"), steps)
        finally:
            shutil.rmtree(directory)

    def _replay(self, path: str, steps: list[tuple[str, int]]) -> None:
        disk = Clock()
        clock = Clock()
        clock.advance(START)
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def run(function: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, function, args))
            return d

        def land() -> None:
            """The transaction in flight ends (and the next one may start)."""
            d, function, args = held.pop(0)
            maybeDeferred(function, *args).chainDeferred(d)

        store = open_store(f"sqlite:{path}", disk, run=run)
        database = store.resources.database  # type: ignore[attr-defined]
        writer = faulty_writer(database)
        cse = CSE(CSEConfig(), FakeSender(), clock, store.resources)
        disk.advance(0)
        land()  # the CSEBase
        connection = FakeConnection("CAdmin")
        answers: list[Any] = []

        def send(op: Operation, to: str, **kw: Any) -> None:
            answers.append(
                cse.handle_request(
                    Request(op, to, f"r{len(answers)}", "4", "CAdmin", **kw), connection
                )
            )

        for step, k in steps:
            if step == "cnt":
                send(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": f"c{k}", "mni": 2}})
            elif step == "cin":
                send(Operation.CREATE, f"cse-in/c{k}", ty=4, pc={"m2m:cin": {"con": str(k)}})
            elif step == "update":
                send(
                    Operation.UPDATE, f"cse-in/c{k}", pc={"m2m:cnt": {"lbl": [str(len(answers))]}}
                )
            elif step == "delete":
                send(Operation.DELETE, f"cse-in/c{k}")
            elif step == "commit":
                disk.advance(0)
            elif held:
                writer.full = step == "fail"
                land()
                if writer.full:  # read-only: memory is what the file holds
                    self.assertIsNotNone(database.refused)
                    self.assertEqual(tree(store.resources), file_tree(path))
                    writer.full = False
                    disk.advance(PROBE_INTERVAL)
                    land()  # the probe
                    self.assertIsNone(database.refused)
        disk.advance(0)
        while held:
            land()
        answered = [0]  # the numbers of the resource IDs answered 2001 (some deleted since)
        for answer in answers:
            response = self.successResultOf(answer) if isinstance(answer, Deferred) else answer
            if response.rsc == RSC.CREATED:
                ri = next(iter(response.pc.values()))["ri"]
                answered.append(int(ri[3:-6], 16))  # cnt/cin, the number, 6 random digits

        before = tree(store.resources)
        self.assertEqual(before, file_tree(path))
        store.service.stopService()
        disk.advance(0)
        again = open_store(f"sqlite:{path}", disk, run=inline)
        try:
            self.assertEqual(tree(again.resources), before)
            self.assertEqual(len(again.resources), len(before))  # type: ignore[arg-type]
            # never used again: a number answered once is at most the one the file keeps
            last = again.resources.database.last_number  # type: ignore[attr-defined]
            self.assertGreaterEqual(last, max(answered))
        finally:
            again.service.stopService()


class DurableFanOutTests(StoreFiles, SynchronousTestCase):
    """A fan-out on the SQLite store: the queue is written only for the subscribers that are
    not connected; the others get their notification on their connection, with no write."""

    def setUp(self) -> None:
        self.disk = Clock()
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "acmews.db")

    def test_only_targets_not_connected_are_queued(self) -> None:
        store = self.open_store()
        clock = Clock()
        clock.advance(START)
        originators = FakeOriginatorMap()
        chain = PoaChain(originators, clock, queue=store.queue, timeout=10)
        self.addCleanup(chain.stop)
        cse = CSE(CSEConfig(poa=("ws://127.0.0.1:8180",)), chain, clock, store.resources)

        def request(op: int, to: str, fr: str, **kw: Any) -> Any:
            result = cse.handle_request(
                Request(op, to, f"rq{next(rqis)}", "4", fr, **kw),  # type: ignore[arg-type]
                FakeConnection(fr),
            )
            self.commit()
            return self.successResultOf(result) if isinstance(result, Deferred) else result

        rqis = iter(range(1, 1000))
        aes = ["Cfan1", "Cfan2", "Cfan3"]
        ae = {"api": "Nfan", "rr": True, "srv": ["4"]}
        cnt = request(1, "cse-in", "CAdmin", ty=3, pc={"m2m:cnt": {"rn": "fan", "mni": 5}})
        self.assertEqual(cnt.rsc, RSC.CREATED)
        sessions: dict[str, tuple[Session, list[dict[str, Any]]]] = {}
        acp = {
            "pv": {"acr": [{"acor": aes, "acop": 63}]},
            "pvs": {"acr": [{"acor": ["CAdmin"], "acop": 63}]},
        }
        request(1, "cse-in", "CAdmin", ty=1, pc={"m2m:acp": {"rn": "fanacp", **acp}})
        request(3, "cse-in/fan", "CAdmin", pc={"m2m:cnt": {"acpi": ["cse-in/fanacp"]}})
        for aei in aes:
            self.assertEqual(
                request(1, "cse-in", aei, ty=2, pc={"m2m:ae": {"rn": aei, **ae}}).rsc, 2001
            )
            sub = {"rn": f"s{aei}", "nu": [aei], "enc": {"net": [3], "chty": [4]}, "nct": 1}
            self.assertEqual(request(1, "cse-in/fan", aei, ty=23, pc={"m2m:sub": sub}).rsc, 2001)
            if aei != "Cfan3":  # Cfan3 is not connected
                sent: list[dict[str, Any]] = []
                session = Session(
                    lambda data, binary, sent=sent: sent.append(orjson.loads(data)),
                    JSON,
                    clock,
                    None,
                    originator=aei,
                )
                originators.bind(aei, session)
                sessions[aei] = (session, sent)
        submitted: list[str] = []
        database = store.database
        assert database is not None
        original = database.submit
        self.patch(
            database,
            "submit",
            lambda ops, *a, **kw: (submitted.extend(op for op, _ in ops), original(ops, *a, **kw))[
                1
            ],
        )
        response = request(1, "cse-in/fan", "CAdmin", ty=4, pc={"m2m:cin": {"con": "x"}})
        self.assertEqual(response.rsc, RSC.CREATED)
        clock.advance(0)  # the notifications go out after the response
        self.commit()
        for session, sent in sessions.values():
            [notification] = [m for m in sent if m.get("op") == 5]
            self.assertEqual(notification["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "x")
            session.message_received(
                orjson.dumps({"rsc": 2000, "rqi": notification["rqi"], "rvi": "4"}), True
            )
        enqueued = [op for op in submitted if op.startswith("INSERT INTO queue")]
        self.assertEqual(len(enqueued), 1)
        self.assertEqual(self.rows("SELECT originator FROM queue"), [("Cfan3",)])
        self.assertEqual(chain.counts.delivered, 2)
