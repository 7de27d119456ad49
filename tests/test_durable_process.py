"""kill -9 at a random moment: ``twistd acmews`` on a SQLite store in a temporary directory,
loopback only. Everything answered 2001/2004/2002 before the kill is there after a restart,
nothing is half done, and the notifications queued for an offline AE arrive in order."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import sys
from contextlib import closing
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

import acmews
from acmews.client import Client, connect
from acmews.codes import RSC, Operation
from acmews.primitive import Request, Response

from .helpers import NO_PING
from .pg_helpers import SKIP, fresh_database

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(acmews.__file__)))
LISTENING = re.compile(rb"listening on tcp:127\.0\.0\.1:(\d+)")


class _Twistd(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-200_000:]
        found = LISTENING.search(self.output)
        if found and not self.port.called:
            self.port.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.status = reason.value.exitCode
        if not self.port.called:
            self.port.errback(Exception(f"twistd ended: {self.output[-2000:]!r}"))
        self.ended.callback(None)


class KillTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        os.mkdir(directory := self.mktemp())
        self.db = os.path.abspath(os.path.join(directory, "acmews.db"))
        self.process: Any = None

    async def start(self) -> str:
        """twistd acmews on the store, port 0; its URL once it listens."""
        twistd = self.twistd = self.spawn(self.db)
        port = await twistd.port
        return f"ws://127.0.0.1:{port}"

    def spawn(self, store: str) -> _Twistd:
        """twistd acmews on ``store`` (killed at cleanup if it still runs)."""
        twistd = _Twistd()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            twistd,
            sys.executable,
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "acmews",
                *("--listen", "tcp:0:interface=127.0.0.1", "--ping-interval", "0"),
                *("--store", self.store_url(store)),
            ],
            env=env,
            path=os.path.dirname(self.db),
        )
        self.process = process

        def kill_at_cleanup() -> Deferred[None]:
            if not twistd.ended.called:
                process.signalProcess("KILL")
            return twistd.ended

        self.addCleanup(kill_at_cleanup)
        return twistd

    def store_url(self, path: str) -> str:
        return f"sqlite:{path}"

    async def client(self, url: str, originator: str, handler: Any = None) -> Client:
        client = await connect(url, originator=originator, handler=handler, options=NO_PING)
        self.addCleanup(lambda: client.close() if client.connected else None)
        return client

    def test_one_process_per_file_whatever_its_name(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._one_process())

    async def _one_process(self) -> None:
        """A second twistd acmews on another name for the file in use (a symlink, a hard
        link) stops at once with one line: two CSEs on one file would each keep their own
        tree in memory, and the file would lose what either answered."""
        url = await self.start()
        directory = os.path.dirname(self.db)
        symlink, hard = os.path.join(directory, "symlink.db"), os.path.join(directory, "hard.db")
        os.symlink(self.db, symlink)
        os.link(self.db, hard)
        for other in (symlink, hard):
            second = self.spawn(other)

            def listening(port: int, second: _Twistd = second) -> int:
                second.transport.signalProcess("KILL")  # type: ignore[union-attr]
                return port

            listened = second.port.addCallbacks(listening, lambda failure: None)
            await second.ended
            self.assertIsNone(self.successResultOf(listened), "it listened")
            self.assertEqual(second.status, 1)
            self.assertIn(
                f"twistd acmews: the store {other} is locked: another acmews uses it\n".encode(),
                second.output,
            )
            self.assertNotIn(b"Traceback", second.output)
        # the first goes on writing; flock is apart from SQLite's own locks: a backup reads
        admin = await self.client(url, "CAdmin")
        r = await admin.create("cse-in", 3, {"m2m:cnt": {"rn": "after"}})
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        copy = os.path.join(directory, "copy.db")
        with closing(sqlite3.connect(self.db)) as source, closing(sqlite3.connect(copy)) as to:
            source.backup(to)
            [(count,)] = to.execute("SELECT count(*) FROM resources WHERE ri LIKE 'cnt%'")
        self.assertEqual(count, 1)

    def test_kill_9_loses_nothing_answered(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._kill_9())

    async def _kill_9(self) -> None:
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        self.addCleanup(lambda: print(f"kill -9 test seed {seed}"))
        url = await self.start()

        # an AE that subscribes to cA, then goes offline: cA's instances queue for it
        watcher = await self.client(url, "Cwatcher")
        r = await watcher.create(
            "cse-in", 2, {"m2m:ae": {"rn": "watcher", "api": "Nw", "rr": True, "srv": ["4"]}}
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        admin = await self.client(url, "CAdmin")
        r = await watcher.create("cse-in/watcher", 3, {"m2m:cnt": {"rn": "cA"}})
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        r = await watcher.create(
            "cse-in/watcher/cA",
            23,
            {"m2m:sub": {"rn": "s", "nu": ["Cwatcher"], "enc": {"net": [3]}}},
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        await watcher.close()
        queued = [f"q{n}" for n in range(rng.randint(5, 30))]
        for con in queued:
            r = await admin.create("cse-in/watcher/cA", 4, {"m2m:cin": {"con": con}})
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)

        # several connections pipelining CREATEs, UPDATEs and DELETEs; kill -9 meanwhile
        created: dict[str, str] = {}  # ri -> con, answered 2001
        deleted: set[str] = set()  # answered 2002
        deleting: set[str] = set()  # DELETE sent (it may have been done, unanswered)
        labels: dict[str, int] = {}  # container -> highest lbl answered 2004
        answered = 0
        kill_after = rng.randint(1, 400)
        killed = False

        def kill() -> None:
            nonlocal killed
            if not killed:
                killed = True
                self.process.signalProcess("KILL")

        async def set_up(k: int) -> tuple[Client, str]:
            client = await self.client(url, "CAdmin" if k == 0 else f"Cload{k}")
            if k:
                r = await client.create(
                    "cse-in", 2, {"m2m:ae": {"rn": f"load{k}", "api": "Nl", "rr": False}}
                )
                self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            parent = "cse-in" if k == 0 else f"cse-in/load{k}"
            r = await client.create(parent, 3, {"m2m:cnt": {"rn": f"c{k}", "mni": 1000}})
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            return client, f"{parent}/c{k}"

        loaders = [await set_up(k) for k in range(3)]

        async def load(k: int) -> None:
            nonlocal answered
            client, cnt = loaders[k]
            mine: list[str] = []
            n = 0
            while not killed:
                window = []
                for _ in range(16):  # pipelined
                    n += 1
                    if n % 5 == 0:
                        window.append(("u", n, client.update(cnt, {"m2m:cnt": {"lbl": [str(n)]}})))
                    elif n % 7 == 0 and mine:
                        ri = mine.pop(0)
                        deleting.add(ri)
                        window.append(("d", ri, client.delete(ri)))
                    else:
                        con = f"{k}-{n}"
                        window.append(("c", con, client.create(cnt, 4, {"m2m:cin": {"con": con}})))
                results = await DeferredList([d for _, _, d in window], consumeErrors=True)
                for (kind, what, _), (ok, response) in zip(window, results, strict=True):
                    if not ok or not isinstance(response, Response):
                        continue  # never answered: the kill came first
                    answered += 1
                    if kind == "c" and response.rsc == RSC.CREATED:
                        ri = response.pc["m2m:cin"]["ri"]
                        created[ri] = what
                        mine.append(ri)
                    elif kind == "u" and response.rsc == RSC.UPDATED:
                        labels[cnt] = max(labels.get(cnt, 0), what)
                    elif kind == "d" and response.rsc == RSC.DELETED:
                        deleted.add(what)
                    elif not killed:
                        self.fail(f"{kind} {what}: {response.rsc} {response.debug}")
                    if answered >= kill_after:
                        kill()

        await DeferredList([Deferred.fromCoroutine(load(k)) for k in range(3)])
        await self.twistd.ended
        self.assertTrue(killed)
        self.assertTrue(created)

        # the same file again
        got: list[Request] = []
        all_there: Deferred[None] = Deferred()

        def on_request(request: Request) -> Response:
            if request.op == Operation.NOTIFY:
                got.append(request)
                if len(got) == len(queued) and not all_there.called:
                    reactor.callLater(0, all_there.callback, None)  # type: ignore[attr-defined]
            return Response(RSC.OK, request.rqi, request.rvi)

        url = await self.start()
        admin = await self.client(url, "CAdmin")
        for ri, con in created.items():
            r = await admin.retrieve(ri)
            if ri in deleted:
                self.assertEqual(r.rsc, RSC.NOT_FOUND, ri)
            elif ri in deleting and r.rsc == RSC.NOT_FOUND:
                continue  # deleted, but the kill came before its answer
            else:
                self.assertEqual(r.rsc, RSC.OK, f"{ri} ({con}): {r.rsc} {r.debug}")
                self.assertEqual(r.pc["m2m:cin"]["con"], con)
        for cnt, label in labels.items():
            r = await admin.retrieve(cnt)
            self.assertGreaterEqual(int(r.pc["m2m:cnt"]["lbl"][0]), label)
        for k in range(3):
            cnt = "cse-in/c0" if k == 0 else f"cse-in/load{k}/c{k}"
            r = await admin.retrieve(cnt)
            self.assertEqual(r.rsc, RSC.OK, cnt)
            # nothing half done: the counters agree with the instances there are
            body = r.pc["m2m:cnt"]
            found = await admin.retrieve(cnt, fc={"fu": 1, "ty": 4}, lim=10_000)
            self.assertEqual(body["cni"], len(found.pc.get("m2m:uril", [])), cnt)

        # the offline AE comes back: its queued notifications arrive, in order
        await self.client(url, "Cwatcher", on_request)
        await all_there
        cons = [n.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] for n in got]
        self.assertEqual(cons, queued)


class PostgreSQLKillTests(KillTests):
    """The same kill -9 on the postgresql: store (a schema of the test's own)."""

    skip = SKIP

    def setUp(self) -> None:
        super().setUp()
        self.url = fresh_database(self)

    def store_url(self, path: str) -> str:
        return self.url

    def test_one_process_per_file_whatever_its_name(self) -> Deferred[None]:
        raise SkipTest("SQLite only: several processes share a PostgreSQL database")
