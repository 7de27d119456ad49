"""Expiration (TS-0001 9.6.1.3 ``expirationTime``, TS-0004 7.4.x: ``et`` of every resource type):
an expired resource is deleted by the Hosting CSE with its subtree, as a DELETE would be (the
subscribers are told, a deleted subscription's ``su`` gets its deletion notification); an
``et`` a request asks for is a hint the Hosting CSE corrects (4000 in the past, cut down to
its maximum beyond it); expiry survives a restart."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from acmews.codes import RSC, ResourceType
from acmews.cse import CSE, CSEConfig
from acmews.cse import expiry as expiry_module
from acmews.cse.expiry import RETRY_DELAY
from acmews.durable import PROBE_INTERVAL, Store
from acmews.primitive import Response
from acmews.testing import ADMIN, URL
from acmews.timestamps import Timestamps, parse_timestamp
from tests.cse_helpers import CSETestCase
from tests.helpers import start_cse
from tests.test_durable import StoreFiles, faulty_writer
from tests.test_e2e import Notifications, StackTestCase

_CNT = ResourceType.CNT
_CIN = ResourceType.CIN
_SUB = ResourceType.SUB
_TS = Timestamps()
DAY = 86400.0


class ExpiryStack(StackTestCase):
    """Cowner with its container ``c`` (and an instance in it); Cwatch, which subscribes."""

    def setUp(self) -> None:
        super().setUp()
        self.owner = self.register("Cowner")
        self.inbox = Notifications()
        self.watcher = self.register("Cwatch", handler=self.inbox)

    def at(self, seconds: float) -> str:
        """The timestamp ``seconds`` from now."""
        return _TS.format(self.clock.seconds() + seconds)

    def rsc(self, d: Deferred[Response], expected: int) -> Response:
        r = self.call(d)
        self.assertEqual(r.rsc, expected, r.debug)
        return r

    def container(self, to: str = "cse-in/cowner", **attrs: Any) -> dict[str, Any]:
        r = self.rsc(self.owner.create(to, _CNT, {"m2m:cnt": {"rn": "c", **attrs}}), 2001)
        body: dict[str, Any] = r.pc["m2m:cnt"]
        return body

    def subscribe(self, to: str, **attrs: Any) -> None:
        body = {"nu": ["Cwatch"], **attrs}
        self.rsc(self.owner.create(to, _SUB, {"m2m:sub": body}), 2001)

    def sgn(self) -> list[dict[str, Any]]:
        """The notifications Cwatch got (not the verification requests)."""
        return [r.pc["m2m:sgn"] for r in self.inbox.requests if "vrq" not in r.pc["m2m:sgn"]]


class GoneTests(ExpiryStack):
    def test_an_expired_resource_and_its_subtree_are_gone_at_once(self) -> None:
        """TS-0001 9.6.1.3: after its expirationTime the resource is deleted by the Hosting
        CSE, with its children; no request finds it (4004), with or without a timer."""
        c = self.container(et=self.at(10))
        self.rsc(self.owner.create("cse-in/cowner/c", _CIN, {"m2m:cin": {"con": "v"}}), 2001)
        self.clock.advance(9.999)
        self.rsc(self.owner.retrieve("cse-in/cowner/c/la"), RSC.OK)
        self.clock.advance(0.001)
        self.rsc(self.owner.retrieve("cse-in/cowner/c"), RSC.NOT_FOUND)
        self.rsc(self.owner.retrieve(c["ri"]), RSC.NOT_FOUND)
        self.rsc(self.owner.retrieve("cse-in/cowner/c/la"), RSC.NOT_FOUND)
        self.assertEqual(self.cse.store.children("Cowner"), [])
        self.assertEqual(len(self.cse.expiry), 2)  # the AEs' own
        self.rsc(self.owner.create("cse-in/cowner", _CNT, {"m2m:cnt": {"rn": "c"}}), 2001)

    def test_subscribers_hear_of_it_as_of_a_delete(self) -> None:
        """The deletion is a DELETE's (TS-0004 7.5.1.2.x): net 2 for the resource's own
        subscribers, net 4 for its parent's, and the subscription deleted with the subtree
        sends its deletion notification to its ``su``."""
        self.container(et=self.at(10))
        self.subscribe("cse-in/cowner", rn="parent", enc={"net": [4]})
        self.subscribe("cse-in/cowner/c", rn="own", enc={"net": [2]}, su="Cwatch")
        self.clock.advance(10)
        self.rsc(self.owner.retrieve("cse-in/cowner"), RSC.OK)  # the first request sweeps
        self.flush()
        events = [e for e in self.sgn() if "nev" in e]
        self.assertEqual(sorted(e["nev"]["net"] for e in events), [2, 4], self.inbox.requests)
        for e in events:
            self.assertEqual(e["nev"]["rep"]["m2m:cnt"]["rn"], "c")
        sud = [e for e in self.sgn() if e.get("sud")]
        self.assertEqual(len(sud), 1)

    def test_an_expired_instance_leaves_its_container(self) -> None:
        """A contentInstance's ``et``: once past, the container counts it no more."""
        self.container()
        for con, et in (("a", None), ("bb", self.at(5)), ("ccc", None)):
            body = {"con": con, **({"et": et} if et else {})}
            self.rsc(self.owner.create("cse-in/cowner/c", _CIN, {"m2m:cin": body}), 2001)
        self.clock.advance(5)
        cnt = self.rsc(self.owner.retrieve("cse-in/cowner/c", rcn=4), RSC.OK).pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (2, 4))
        self.assertEqual([i["con"] for i in cnt["m2m:cin"]], ["a", "ccc"])


class TimerTests(ExpiryStack):
    def start(self) -> None:
        self.cse.expiry.start()
        self.addCleanup(self.cse.expiry.stop)

    def test_the_sweep_runs_on_time_without_a_request(self) -> None:
        """While the CSE runs (its server starts the sweep), an expired resource is deleted
        at its expirationTime even if nobody asks for anything."""
        self.start()
        c = self.container(et=self.at(10))
        self.subscribe("cse-in/cowner", enc={"net": [4]})
        self.clock.advance(10)
        self.flush()
        self.assertIsNone(self.cse.store.get(c["ri"]))
        [event] = self.sgn()
        self.assertEqual(event["nev"]["net"], 4)

    def test_a_later_et_postpones_it_and_an_earlier_one_hastens_it(self) -> None:
        """TS-0001 9.6.1.3: the lifetime is extended (or cut) by an UPDATE of ``et``."""
        self.start()
        c = self.container(et=self.at(10))
        self.rsc(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"et": self.at(20)}}), 2004)
        self.clock.advance(10)
        self.assertIsNotNone(self.cse.store.get(c["ri"]))
        self.rsc(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"et": self.at(1)}}), 2004)
        self.clock.advance(1)
        self.assertIsNone(self.cse.store.get(c["ri"]))

    def test_many_at_once_go_in_several_sweeps(self) -> None:
        self.patch(expiry_module, "SWEEP_LIMIT", 2)
        self.start()
        self.container()
        et = self.at(10)
        for i in range(5):
            body = {"m2m:cnt": {"rn": f"d{i}", "et": et}}
            self.rsc(self.owner.create("cse-in/cowner/c", _CNT, body), 2001)
        self.clock.advance(10)
        self.flush()
        self.assertEqual(self.cse.store.children(self.container_ri()), [])

    def container_ri(self) -> str:
        c = self.cse.store.child("Cowner", "c")
        assert c is not None
        return c.ri

    def test_an_idle_cse_has_one_timer_and_none_once_stopped(self) -> None:
        """Far-away expirations cost one timer while started; none when stopped."""
        self.start()
        self.container()
        [call] = self.clock.getDelayedCalls()
        self.assertLessEqual(call.getTime() - self.clock.seconds(), expiry_module.MAX_TIMER)
        self.clock.advance(expiry_module.MAX_TIMER)  # it looks again, and waits again
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.cse.expiry.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RequestedTests(CSETestCase):
    """What a CREATE or UPDATE asks for is a hint (TS-0001 9.6.1.3)."""

    config = CSEConfig(poa=(URL,), resource_expiry=7 * DAY, max_resource_expiry=30 * DAY)

    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cae")

    def at(self, seconds: float) -> str:
        return _TS.format(self.clock.seconds() + seconds)

    def et(self, body: dict[str, Any]) -> float:
        value: str = next(iter(body.values()))["et"]
        return parse_timestamp(value) - self.clock.seconds()

    def test_an_et_that_is_not_in_the_future_is_refused(self) -> None:
        """4000, as the reference implementation answers; a malformed one too."""
        for et in (self.at(-1), self.at(0), "20261340T000000", "tomorrow", 5):
            r = self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cae", ty=3, pc={"m2m:cnt": {"et": et}})
            self.assertIn("et", r.debug or "")
        self.create("cse-in/Cae", 3, "m2m:cnt", rn="c")
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/Cae/c", pc={"m2m:cnt": {"et": self.at(-60)}})

    def test_beyond_the_maximum_it_is_cut_down(self) -> None:
        """The Hosting CSE decides the real expirationTime and returns it."""
        body = self.ok(1, "cse-in/Cae", ty=3, pc={"m2m:cnt": {"et": self.at(90 * DAY)}}).pc
        self.assertAlmostEqual(self.et(body), 30 * DAY, delta=1)
        body = self.ok(1, "cse-in/Cae", ty=3, pc={"m2m:cnt": {"et": self.at(DAY)}}).pc
        self.assertAlmostEqual(self.et(body), DAY, delta=1)
        to = f"cse-in/Cae/{body['m2m:cnt']['rn']}"
        body = self.ok(3, to, pc={"m2m:cnt": {"et": self.at(60 * DAY)}}).pc
        self.assertAlmostEqual(self.et(body), 30 * DAY, delta=1)

    def test_none_or_null_gets_the_default(self) -> None:
        """No ``et`` (or, in an UPDATE, a null one: TS-0001 9.6.1.3, the Hosting CSE decides
        a new value): the configured default."""
        body = self.ok(1, "cse-in/Cae", ty=3, pc={"m2m:cnt": {"rn": "c"}}).pc
        self.assertAlmostEqual(self.et(body), 7 * DAY, delta=1)
        self.ok(3, "cse-in/Cae/c", pc={"m2m:cnt": {"et": self.at(60)}})
        body = self.ok(3, "cse-in/Cae/c", pc={"m2m:cnt": {"et": None}}).pc
        self.assertAlmostEqual(self.et(body), 7 * DAY, delta=1)


class EveryTypeTests(CSETestCase):
    """``et`` is a common attribute of every type that has one: each expires the same way."""

    config = CSEConfig(poa=(URL,), allowed_csr_originators=("/*",))

    def test_each_type_expires(self) -> None:
        et = _TS.format(self.clock.seconds() + 60)
        aei = self.register("Cae", et=et)
        self.create("cse-in", 3, "m2m:cnt", rn="cnt", et=et)
        self.create("cse-in/cnt", 4, "m2m:cin", con="x", rn="cin", et=et)
        pvs = {"acr": [{"acor": [ADMIN], "acop": 63}]}
        self.create("cse-in", 1, "m2m:acp", rn="acp", pv={"acr": []}, pvs=pvs, et=et)
        self.subscribe("cse-in", rn="sub", nu=["http://n"], su="http://su", et=et)
        csr = {"csi": "/id-mn", "cb": "/id-mn/cse-mn", "rr": True, "et": et}
        self.ok(1, "cse-in", "/id-mn", ty=16, pc={"m2m:csr": csr})
        targets = ["cse-in/Cae", "cse-in/cnt", "cse-in/cnt/cin", "cse-in/acp", "cse-in/sub"]
        targets.append("cse-in/id-mn")
        self.assertEqual(len(self.cse.expiry), len(targets))
        self.clock.advance(60)
        for to in targets:
            self.fails(RSC.NOT_FOUND, 2, to)
        [sud] = [s for s in self.flush() if s.request.pc["m2m:sgn"].get("sud")]
        self.assertEqual(sud.target, "http://su")
        sud.answer()
        self.register(aei)  # the AE-ID is free again

    def test_the_index_stays_bounded(self) -> None:
        """Entries left behind by deletions are dropped: an instance churn (mni 1) does not
        grow the index beyond a bound."""
        self.create("cse-in", 3, "m2m:cnt", rn="c", mni=1)
        for i in range(3000):
            self.create("cse-in/c", 4, "m2m:cin", con=i)
        self.assertEqual(len(self.cse.expiry), 2)
        self.assertLessEqual(self.cse.expiry.entries, 2 * 2 + 1024)


class DurableCSETestCase(StoreFiles, CSETestCase):
    """A CSE on a SQLite store that :meth:`reopen` starts again on its file."""

    store: Store

    def new_cse(self) -> None:
        super().new_cse()
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "acmews.db")
        self.disk = self.clock
        self.reopen()

    def reopen(self) -> None:
        self.store = self.open_store()
        self.cse = CSE(CSEConfig(poa=(URL,)), self.sender, self.clock, self.store.resources)
        self.commit()

    def call(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        result = self.handle(op, to, fr, **kw)
        if isinstance(result, Deferred):
            self.commit()
            return self.successResultOf(result)
        return result


class RestartTests(DurableCSETestCase):
    """A durable store keeps the ``et``; what expired while the CSE was down is deleted when it
    starts (the sweep at start), with its notifications."""

    def test_expired_while_down(self) -> None:
        et = _TS.format(self.clock.seconds() + 60)
        self.create("cse-in", 3, "m2m:cnt", rn="c", et=et)
        self.create("cse-in", 3, "m2m:cnt", rn="stays")
        d = self.handle(
            1, "cse-in/c", ty=23, pc={"m2m:sub": {"nu": ["http://n"], "su": "http://su"}}
        )
        self.sender.take()[0].answer()
        self.commit()
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        self.store.service.stopService()
        self.commit()
        self.clock.advance(3600)  # down for an hour
        self.reopen()
        self.cse.expiry.start()
        self.commit()
        self.assertEqual(self.rows("SELECT count(*) FROM resources WHERE ri LIKE 'cnt%'"), [(1,)])
        [sud] = self.flush()
        self.assertEqual((sud.target, sud.request.pc["m2m:sgn"]["sud"]), ("http://su", True))
        sud.answer()
        self.cse.expiry.stop()
        self.fails(RSC.NOT_FOUND, 2, "cse-in/c")
        self.ok(2, "cse-in/stays")

    def test_what_the_disk_refused_still_expires(self) -> None:
        """A deletion the store could not write is undone: the resource is back, and still
        expires; a sweep the store refused is tried again later."""
        et = _TS.format(self.clock.seconds() + 60)
        self.create("cse-in", 3, "m2m:cnt", rn="c", et=et)
        writer = faulty_writer(self.store.resources.database)  # type: ignore[attr-defined]
        writer.full = True
        with capturedLogs():
            self.assertEqual(self.call(4, "cse-in/c").rsc, RSC.INTERNAL_SERVER_ERROR)
            self.ok(2, "cse-in/c")  # back
            self.clock.advance(60)  # expired, and the store is read-only: the sweep fails
            self.ok(2, "cse-in/c")
            # and is not tried again at every request (nor by a timer in a busy loop)
            self.assertEqual(self.cse.expiry.due, self.clock.seconds() + RETRY_DELAY)
            writer.full = False
            # the store takes changes again; the sweep is tried again (RETRY_DELAY)
            self.clock.advance(max(PROBE_INTERVAL, RETRY_DELAY))
            self.fails(RSC.NOT_FOUND, 2, "cse-in/c")
            self.commit()
        self.assertEqual(self.rows("SELECT count(*) FROM resources WHERE ri LIKE 'cnt%'"), [(0,)])


class ServerTests(TestCase):
    timeout = 20

    def test_the_server_runs_the_sweep(self) -> Deferred[None]:
        """``twistd acmews``: the sweep starts and stops with the CSE server."""

        async def run() -> None:
            service, _ = await start_cse(self)
            self.assertTrue(service.expiry.running)
            self.assertIs(service.expiry.expirations, service.cse.expiry)
            await service.stopService()
            self.assertFalse(service.expiry.running)

        return ensureDeferred(run())
