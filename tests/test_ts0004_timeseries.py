"""``<timeSeries>`` (ty 29) and ``<timeSeriesInstance>`` (ty 30) through the binding, written
from TS-0001 9.6.36/9.6.37 (the resources and their attributes), TS-0004 7.4.36/7.4.37 (their
procedures) and TS-0001 9.6.8 with TS-0004 6.3.5 (eventNotificationCriteria ``md``, the
missingData notification, notificationEventType 8)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from acmews.codes import RSC, ResourceType
from acmews.cse import CSE, MemoryResourceStore
from acmews.primitive import Response
from acmews.timestamps import Timestamps
from tests.helpers import start_cse
from tests.test_e2e import Notifications, StackTestCase
from tests.test_ts0004_expiry import DurableCSETestCase

TS = "cse-in/cowner/ts"
_fmt = Timestamps().format


class _Series(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.inbox = Notifications()
        self.owner = self.register("Cowner")
        self.watcher = self.register("Cwatch", handler=self.inbox)

    def tearDown(self) -> None:
        self.cse.timeseries.stop()
        super().tearDown()

    def ts(self, **attrs: Any) -> Response:
        body = {"m2m:ts": {"rn": "ts", **attrs}}
        return self.call(self.owner.create("cse-in/cowner", ResourceType.TS, body))

    def tsi(self, dgt: float | str, con: Any = "21.5", **attrs: Any) -> Response:
        stamp = dgt if isinstance(dgt, str) else _fmt(dgt)
        body = {"m2m:tsi": {"dgt": stamp, "con": con, **attrs}}
        return self.call(self.owner.create(TS, ResourceType.TSI, body))

    def series(self) -> dict[str, Any]:
        r = self.call(self.owner.retrieve(TS))
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        got: dict[str, Any] = r.pc["m2m:ts"]
        return got

    def now(self) -> float:
        return self.clock.seconds()


class TimeSeriesTests(_Series):
    def test_instances_count_and_the_oldest_go_past_mni(self) -> None:
        """TS-0001 9.6.36: currentNrOfInstances, currentByteSize, maxNrOfInstances (the
        oldest instance is deleted); ``la``/``ol`` address the latest and oldest."""
        self.assertEqual(self.ts(mni=2).rsc, RSC.CREATED)
        t = self.now()
        for i in range(3):
            self.assertEqual(self.tsi(t + i, con=f"v{i}").rsc, RSC.CREATED)
        got = self.series()
        self.assertEqual((got["cni"], got["cbs"]), (2, 4))
        self.assertEqual(self.call(self.owner.retrieve(f"{TS}/la")).pc["m2m:tsi"]["con"], "v2")
        self.assertEqual(self.call(self.owner.retrieve(f"{TS}/ol")).pc["m2m:tsi"]["con"], "v1")

    def test_discovery_and_access(self) -> None:
        """TS-0004 8.2.2 (discovery, fu 1) finds timeSeries and their instances by ty;
        TS-0001 9.6.36: the series is accessed under its ``acpi`` (another AE: 4103)."""
        self.ts()
        self.tsi(self.now(), rn="i")
        r = self.call(self.owner.retrieve("cse-in/cowner", fc={"fu": 1, "ty": 30}))
        self.assertEqual(r.pc["m2m:uril"], ["cse-in/cowner/ts/i"])
        r = self.call(self.owner.retrieve("cse-in", fc={"fu": 1, "ty": 29}))
        self.assertEqual(r.pc["m2m:uril"], ["cse-in/cowner/ts"])
        r = self.call(self.watcher.retrieve(TS))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)

    def test_data_generation_time_is_mandatory_and_unique(self) -> None:
        """TS-0001 9.6.37: dataGenerationTime is mandatory; TS-0004 7.4.37.2.1: a
        timeSeriesInstance with the dataGenerationTime of one in the series is refused."""
        self.ts()
        body = {"m2m:tsi": {"con": "x"}}
        r = self.call(self.owner.create(TS, ResourceType.TSI, body))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST)
        t = self.now()
        self.assertEqual(self.tsi(t).rsc, RSC.CREATED)
        r = self.tsi(t)
        self.assertEqual(r.rsc, RSC.BAD_REQUEST)
        self.assertIn("dgt", r.debug or "")
        self.assertEqual(self.tsi(t + 1).rsc, RSC.CREATED)

    def test_max_byte_size_and_age(self) -> None:
        """TS-0001 9.6.36: maxByteSize (an instance larger is refused, 5207 as for a
        container) and maxInstanceAge (an instance lives at most ``mia`` seconds)."""
        self.ts(mbs=4, mia=60)
        self.assertEqual(self.tsi(self.now(), con="12345").rsc, RSC.NOT_ACCEPTABLE)
        r = self.tsi(self.now(), con="1234")
        self.assertEqual(r.rsc, RSC.CREATED)
        self.assertEqual(r.pc["m2m:tsi"]["et"], _fmt(self.now() + 60))

    def test_an_instance_is_never_updated(self) -> None:
        """TS-0004 7.4.37.2.3: a timeSeriesInstance cannot be updated (4005)."""
        self.ts()
        self.tsi(self.now(), rn="i")
        r = self.call(self.owner.update(f"{TS}/i", {"m2m:tsi": {"con": "y"}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED)

    def test_detection_needs_a_period(self) -> None:
        """TS-0001 9.6.36: missing-data detection works on periodicInterval: mdd without pei
        is refused; periodicIntervalDelta defaults to half the period here, mdn to 10."""
        self.assertEqual(self.ts(mdd=True).rsc, RSC.BAD_REQUEST)
        got = self.ts(mdd=True, pei=1000).pc["m2m:ts"]
        self.assertEqual((got["peid"], got["mdn"], got["mdc"], got["mdlt"]), (500, 10, 0, []))
        self.assertNotIn("mdt", got)  # detection starts with the first instance
        self.assertEqual(self.call(self.owner.retrieve(TS)).rsc, RSC.OK)
        r = self.call(self.owner.create(TS, ResourceType.TSI, {"m2m:tsi": {"dgt": "x"}}))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST)

    def test_detection_attributes_are_updatable(self) -> None:
        """TS-0004 7.4.36.2.3: pei, peid, mdd and mdn may be updated (the CSE's mdlt, mdc and
        mdt not: 4000); peid follows a new pei unless given."""
        self.ts(pei=1000)
        r = self.call(self.owner.update(TS, {"m2m:ts": {"pei": 2000}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        r = self.call(self.owner.update(TS, {"m2m:ts": {"mdd": True}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(r.pc["m2m:ts"]["peid"], 1000)
        r = self.call(self.owner.update(TS, {"m2m:ts": {"pei": 4000}}))
        self.assertEqual(r.pc["m2m:ts"]["peid"], 2000)
        for ro in ("mdlt", "mdc", "mdt"):
            r = self.call(self.owner.update(TS, {"m2m:ts": {ro: 1}}))
            self.assertEqual(r.rsc, RSC.BAD_REQUEST, ro)


class MissingDataTests(_Series):
    def setUp(self) -> None:
        super().setUp()
        self.cse.timeseries.start()

    def test_a_missing_period_is_recorded_on_time(self) -> None:
        """TS-0001 9.6.36: with missingDataDetect, an instance not received within pei
        (plus peid) of the previous one is a missing data point: its expected time goes into
        missingDataList, missingDataCurrentNr counts it; an arriving instance moves the
        detection on."""
        self.ts(mdd=True, pei=10_000, peid=2_000, mdn=2)
        t = self.now()
        self.tsi(t)
        self.assertEqual(self.series()["mdt"], _fmt(t + 12))
        self.clock.advance(11.9)
        self.flush()
        self.assertEqual(self.series()["mdc"], 0)
        self.clock.advance(0.1)  # t + 12: the instance of t + 10 is overdue
        self.flush()
        got = self.series()
        self.assertEqual((got["mdc"], got["mdlt"]), (1, [_fmt(t + 10)]))
        self.tsi(t + 21)  # arrives: the next is due at t + 31, by t + 33
        self.clock.advance(20.9)  # t + 32.9
        self.flush()
        self.assertEqual(self.series()["mdc"], 1)
        self.clock.advance(10.1)  # t + 33 and t + 43: two more missing, mdn keeps two
        self.flush()
        got = self.series()
        self.assertEqual(got["mdlt"], [_fmt(t + 31), _fmt(t + 41)])
        self.assertEqual(got["mdc"], 2)
        r = self.call(self.owner.update(TS, {"m2m:ts": {"mdn": 1}}))  # keeps the latest
        self.assertEqual((r.pc["m2m:ts"]["mdlt"], r.pc["m2m:ts"]["mdc"]), ([_fmt(t + 41)], 1))

    def test_switching_detection_off_stops_it(self) -> None:
        """TS-0001 9.6.36: missingDataDetect false: no detection."""
        self.ts(mdd=True, pei=1000)
        self.tsi(self.now())
        self.assertEqual(len(self.cse.timeseries), 1)
        r = self.call(self.owner.update(TS, {"m2m:ts": {"mdd": False}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(len(self.cse.timeseries), 0)
        self.clock.advance(5)
        self.flush()
        self.assertEqual(self.series()["mdc"], 0)

    def test_missing_data_notification(self) -> None:
        """TS-0001 9.6.8 / TS-0004 6.3.5 missingData ``md``: a subscription with
        notificationEventType 8 is notified once ``num`` missing data points fall within
        ``dur``, with nct 5 (timeSeriesNotification: the points and their number)."""
        self.ts(mdd=True, pei=1000, peid=0)
        sub = {"rn": "s", "nu": ["Cwatch"], "enc": {"net": [8], "md": {"num": 2, "dur": "PT1M"}}}
        r = self.call(self.owner.create(TS, ResourceType.SUB, {"m2m:sub": sub}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(r.pc["m2m:sub"]["nct"], 5)
        t = self.now()
        self.tsi(t)
        self.inbox.requests.clear()  # the subscription's verification
        self.clock.advance(1)
        self.flush()
        self.assertEqual(self.inbox.events(), [])  # one point: fewer than num
        self.clock.advance(1)
        self.flush()
        (sgn,) = self.inbox.events()
        self.assertEqual(sgn["nev"]["net"], 8)
        tsn = {"mdc": 2, "mdlt": [_fmt(t + 1), _fmt(t + 2)]}
        self.assertEqual(sgn["nev"]["rep"], {"m2m:tsn": tsn})
        self.assertTrue(sgn["sur"].endswith(r.pc["m2m:sub"]["ri"]), sgn["sur"])

    def test_expiration_counter_of_a_missing_data_subscription(self) -> None:
        """TS-0004 7.5.1.2.2: a missing-data notification counts down the subscription's
        expirationCounter like any other: at 0 the subscription is deleted."""
        self.ts(mdd=True, pei=1000, peid=0)
        enc = {"net": [8], "md": {"num": 1, "dur": "PT1M"}}
        sub = {"rn": "s", "nu": ["Cwatch"], "enc": enc, "exc": 1}
        r = self.call(self.owner.create(TS, ResourceType.SUB, {"m2m:sub": sub}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.tsi(self.now())
        self.clock.advance(1)
        self.flush()
        self.assertEqual(len(self.inbox.events()), 1)
        self.assertEqual(self.call(self.owner.retrieve(f"{TS}/s")).rsc, RSC.NOT_FOUND)

    def test_detection_survives_a_restart(self) -> None:
        """The detection's state is the stored series: a CSE started again on the same store
        records the periods missed while it was down."""
        self.ts(mdd=True, pei=1000, peid=0)
        t = self.now()
        self.tsi(t)
        self.cse.timeseries.stop()
        self.clock.advance(3.5)
        again = CSE(self.config, self.chain, self.clock, self.cse.store)
        self.assertIsInstance(again.store, MemoryResourceStore)
        again.timeseries.start()
        self.clock.advance(0)
        series = again.store.get(self.series()["ri"])
        assert series is not None
        self.assertEqual(series.attrs["mdlt"], [_fmt(t + 1), _fmt(t + 2), _fmt(t + 3)])
        self.assertEqual(series.attrs["mdt"], _fmt(t + 4))
        again.timeseries.stop()


class DurableTests(DurableCSETestCase):
    def run_for(self, seconds: float) -> None:
        """Run the CSE (its missing-data timers) for ``seconds``, then stop it and its store."""
        self.cse.timeseries.start()
        self.clock.advance(seconds)
        self.commit()
        self.cse.timeseries.stop()
        self.store.service.stopService()
        self.commit()

    def test_detection_survives_a_restart_on_sqlite(self) -> None:
        """On a SQLite store: the missing data recorded before a restart are kept, and the
        periods missed while the CSE was down are recorded when it starts again."""
        self.create("cse-in", 29, "m2m:ts", rn="ts", mdd=True, pei=1000, peid=0)
        t = self.clock.seconds()
        self.create("cse-in/ts", 30, "m2m:tsi", dgt=_fmt(t), con=1)
        self.run_for(1)
        self.clock.advance(2)  # down: t + 2 and t + 3 go missing
        self.reopen()
        self.run_for(0)
        self.reopen()  # what the store has
        got = self.retrieve("cse-in/ts").pc["m2m:ts"]
        self.assertEqual(got["mdlt"], [_fmt(t + 1), _fmt(t + 2), _fmt(t + 3)])
        self.assertEqual((got["mdc"], got["mdt"]), (3, _fmt(t + 4)))


class ServerTests(TestCase):
    timeout = 20

    def test_the_server_runs_the_detection(self) -> Deferred[None]:
        """``twistd acmews``: the missing-data timers start and stop with the CSE server."""

        async def run() -> None:
            service, _ = await start_cse(self)
            self.assertIs(service.timeseries.timers, service.cse.timeseries)
            self.assertTrue(service.cse.timeseries.running)
            await service.stopService()
            self.assertFalse(service.cse.timeseries.running)

        return ensureDeferred(run())
