"""``<pollingChannel>`` (ty 15) and its ``pcu`` through the binding (TS-0001 9.6.21, 9.6.22,
10.2.5.x; TS-0004 7.4.21, 7.4.22): an AE with ``rr`` false gets the requests for it by
polling ``pcu`` and answers each with a NOTIFY carrying ``m2m:rsp``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation, ResourceType
from acmews.cse.polling import Polling
from acmews.errors import RequestTimeout, TargetNotReachable
from acmews.primitive import Request, Response
from acmews.testing import ADMIN, FakeConnection
from acmews.timestamps import Timestamps

from .test_e2e import Notifications, StackTestCase
from .test_store_roundtrip_property import _Side

PCU = "cse-in/cpoll/pch/pcu"


class PollingChannelTests(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.polled = Notifications()
        self.ae = self.register("Cpoll", self.polled, rr=False)
        r = self.call(self.ae.create("cse-in/cpoll", ResourceType.PCH, {"m2m:pch": {"rn": "pch"}}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.other = self.client("CAdmin")  # may NOTIFY any AE

    def relay(self, pc: Any = None) -> Deferred[Response]:
        """A NOTIFY from the admin to Cpoll: the CSE relays it to Cpoll (TS-0001 10.2.5.x)."""
        d = self.other.notify("cse-in/cpoll", pc or {"m2m:sgn": {"nev": {"net": 1}}}, timeout=300)
        self.flush()
        return d

    def poll(self, **params: Any) -> Deferred[Response]:
        d = self.ae.retrieve(PCU, timeout=120, **params)
        self.flush()
        return d

    def answer(self, rqp: dict[str, Any], rsc: int = 2000, pc: Any = None) -> Response:
        rsp: dict[str, Any] = {"rsc": rsc, "rqi": rqp["rqi"], "rvi": "3"}
        if pc is not None:
            rsp["pc"] = pc
        return self.call(self.ae.notify(PCU, {"m2m:rsp": rsp}))

    def test_one_channel_per_ae_under_an_ae_only(self) -> None:
        """TS-0001 9.6.21: a <pollingChannel> is a child of an <AE> (4108 elsewhere); one
        per AE here (4105 for a second)."""
        r = self.call(self.ae.create("cse-in/cpoll", ResourceType.PCH, {"m2m:pch": {}}))
        self.assertEqual(r.rsc, RSC.CONFLICT, r.debug)
        r = self.call(self.ae.create("cse-in", ResourceType.PCH, {"m2m:pch": {}}))
        self.assertEqual(r.rsc, RSC.INVALID_CHILD_RESOURCE_TYPE, r.debug)
        r = self.call(self.ae.retrieve("cse-in/cpoll/pch"))
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.assertEqual(r.pc["m2m:pch"]["ty"], 15)

    def test_request_waits_polled_and_answered(self) -> None:
        """TS-0001 10.2.5.x: a request for an AE with rr false waits in its channel (not sent
        on the AE's connection); the RETRIEVE of pcu gets it as m2m:rqp; the AE's NOTIFY to
        pcu carrying m2m:rsp is the answer the original originator gets."""
        relayed = self.relay()
        self.assertNoResult(relayed)
        self.assertEqual(self.polled.requests, [])
        r = self.successResultOf(self.poll())
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        rqp = r.pc["m2m:rqp"]
        self.assertEqual(rqp["op"], int(Operation.NOTIFY))
        self.assertEqual(rqp["to"], "Cpoll")
        self.assertEqual(rqp["pc"], {"m2m:sgn": {"nev": {"net": 1}}})
        self.assertNoResult(relayed)
        done = self.answer(rqp, 2000, {"m2m:dbg": "seen"})
        self.assertEqual(done.rsc, RSC.OK, done.debug)
        self.flush()
        got = self.successResultOf(relayed)
        self.assertEqual(got.rsc, RSC.OK)
        self.assertEqual(got.pc, {"m2m:dbg": "seen"})

    def test_subscription_notification_polled(self) -> None:
        """TS-0001 10.2.5.x: a notification for an AE with rr false (its own subscription
        here) waits in its channel; once answered through pcu nothing is left waiting."""
        cnt = {"m2m:cnt": {"rn": "box"}}
        self.assertEqual(self.call(self.ae.create("cse-in/cpoll", 3, cnt)).rsc, RSC.CREATED)
        sub = {"m2m:sub": {"rn": "s", "nu": ["Cpoll"], "enc": {"net": [3]}}}
        r = self.call(self.ae.create("cse-in/cpoll/box", ResourceType.SUB, sub))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        cin = {"m2m:cin": {"con": "21"}}
        self.call(self.ae.create("cse-in/cpoll/box", ResourceType.CIN, cin))
        self.assertEqual(self.polled.requests, [])
        rqp = self.successResultOf(self.poll()).pc["m2m:rqp"]
        self.assertEqual(rqp["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "21")
        self.assertEqual(self.answer(rqp).rsc, RSC.OK)
        self.assertEqual(self.answer(rqp).rsc, RSC.NOT_FOUND)  # answered once only

    def test_long_poll_answered_when_a_request_arrives(self) -> None:
        """TS-0004 7.4.22 (long polling): a RETRIEVE of an empty pcu waits for a request."""
        polling = self.poll()
        self.assertNoResult(polling)
        relayed = self.relay()
        r = self.successResultOf(polling)
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.answer(r.pc["m2m:rqp"], 4004)
        self.flush()
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.NOT_FOUND)

    def test_long_poll_times_out(self) -> None:
        """An empty pcu is answered 4008 after the poll timeout (or the RETRIEVE's rqet);
        ACME's answer, we did not find TS-0004's text for it."""
        polling = self.poll()
        self.clock.advance(Polling.poll_timeout - 1)
        self.flush()
        self.assertNoResult(polling)
        self.clock.advance(1)
        self.flush()
        self.assertEqual(self.successResultOf(polling).rsc, RSC.REQUEST_TIMEOUT)
        # a poll with an rqet waits no longer than it: a request arriving later is kept for
        # the next poll, not handed to the one nobody waits for any more
        polling = self.poll(rqet=5000)  # 5 s, relative
        self.clock.advance(5)
        self.flush()
        self.failureResultOf(polling, RequestTimeout)
        relayed = self.relay()
        r = self.successResultOf(self.poll())
        self.answer(r.pc["m2m:rqp"])
        self.flush()
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.OK)

    def test_unanswered_request_times_out(self) -> None:
        """A request never polled (or polled and never answered) fails with 4008 at its
        rqet: its originator is not kept waiting, no timer is left."""
        relayed = self.relay()
        self.clock.advance(Polling.request_timeout)
        self.flush()
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.REQUEST_TIMEOUT)
        relayed = self.relay()
        self.successResultOf(self.poll())
        self.clock.advance(Polling.request_timeout)
        self.flush()
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.REQUEST_TIMEOUT)

    def test_answer_to_unknown_request_refused(self) -> None:
        """A NOTIFY to pcu must carry the m2m:rsp of a polled request."""
        r = self.answer({"rqi": "nope"})
        self.assertEqual(r.rsc, RSC.NOT_FOUND, r.debug)
        r = self.call(self.ae.notify(PCU, {"m2m:sgn": {}}))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)

    def test_only_the_ae_polls(self) -> None:
        """The channel is its AE's: another originator may not poll it (4103)."""
        r = self.call(self.register("Cstranger").retrieve(PCU))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)

    def test_rr_true_is_sent_directly(self) -> None:
        """An AE that is request-reachable (rr true) gets its requests on its connection."""
        r = self.call(self.ae.update("cse-in/cpoll", {"m2m:ae": {"rr": True}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(self.successResultOf(self.relay()).rsc, RSC.OK)
        self.assertEqual(len(self.polled.requests), 1)

    def test_channel_deleted_fails_what_waits(self) -> None:
        """Deleting the channel: what waits in it fails at once (5103)."""
        relayed = self.relay()
        r = self.call(self.ae.delete("cse-in/cpoll/pch"))
        self.assertEqual(r.rsc, RSC.DELETED, r.debug)
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.TARGET_NOT_REACHABLE)

    def test_expired_channel_closed(self) -> None:
        """A channel deleted at its et (TS-0001 9.6.1.3.2) is closed like a DELETE: what
        waits fails (5103) and later requests for the AE are sent to it as before."""
        et = Timestamps().format(self.clock.seconds() + 10)
        r = self.call(self.ae.update("cse-in/cpoll/pch", {"m2m:pch": {"et": et}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        relayed = self.relay()
        self.clock.advance(11)
        self.call(self.ae.retrieve("cse-in/cpoll"))  # any request sweeps what has expired
        self.assertEqual(self.successResultOf(relayed).rsc, RSC.TARGET_NOT_REACHABLE)
        self.assertEqual(self.successResultOf(self.relay()).rsc, RSC.OK)
        self.assertEqual(len(self.polled.requests), 1)

    def test_channel_is_bounded(self) -> None:
        """At most Polling.max_waiting requests wait per channel; past that 5103 at once."""
        self.patch(Polling, "max_waiting", 2)
        first, second = self.relay(), self.relay()
        self.assertEqual(self.successResultOf(self.relay()).rsc, RSC.TARGET_NOT_REACHABLE)
        # as any sender: a failed Deferred, not a raise (the notifier would log a traceback)
        extra = Request(Operation.NOTIFY, "Cpoll", "x", "4", "/id-in", pc={})
        self.failureResultOf(self.cse.polling.send("Cpoll", extra), TargetNotReachable)
        self.clock.advance(Polling.request_timeout)
        self.flush()
        for d in (first, second):
            self.assertEqual(self.successResultOf(d).rsc, RSC.REQUEST_TIMEOUT)


class DurablePollingChannelTests(SynchronousTestCase):
    def test_channel_known_after_restart(self) -> None:
        """A stored <pollingChannel> round-trips through the SQLite store and is a channel
        again after a restart: a request for its AE waits there, not sent (TS-0001 9.6.21)."""
        side = _Side(self, self.mktemp())
        self.addCleanup(side.stop)
        ae = {"m2m:ae": {"rn": "cpoll", "api": "Nt", "rr": False, "srv": ["4"]}}
        created = side.call(Operation.CREATE, "cse-in", "Cpoll", ty=2, pc=ae)
        self.assertEqual(created.rsc, RSC.CREATED, created.debug)
        pch = side.call(Operation.CREATE, "cse-in/cpoll", "Cpoll", ty=15, pc={"m2m:pch": {}})
        self.assertEqual(pch.rsc, RSC.CREATED, pch.debug)
        side.restart()
        stored = side.call(Operation.RETRIEVE, f"cse-in/cpoll/{pch.pc['m2m:pch']['rn']}", "Cpoll")
        self.assertEqual(stored.pc, pch.pc)
        result = side.cse.handle_request(
            Request(Operation.NOTIFY, "cse-in/cpoll", "n1", "4", ADMIN, pc={"m2m:sgn": {}}),
            FakeConnection(),
        )
        assert isinstance(result, Deferred)
        self.assertEqual(side.sender.take(), [])
        pcu = f"cse-in/cpoll/{pch.pc['m2m:pch']['rn']}/pcu"
        rqp = side.call(Operation.RETRIEVE, pcu, "Cpoll").pc["m2m:rqp"]
        rsp = {"m2m:rsp": {"rsc": 2000, "rqi": rqp["rqi"], "rvi": "4"}}
        self.assertEqual(side.call(Operation.NOTIFY, pcu, "Cpoll", pc=rsp).rsc, RSC.OK)
        self.assertEqual(self.successResultOf(result).rsc, RSC.OK)
