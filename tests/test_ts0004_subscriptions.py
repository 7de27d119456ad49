"""Subscriptions as TS-0004 (and TS-0001 10.2.10.7, which it refers to) has them: the
conditions of eventNotificationCriteria, the notification policies (batches, latest only,
statistics, the event's originator), blocking updates, the verification of targets an UPDATE
adds, the serialization a notification URI asks for, and the deletion notice that leaves
before the DELETE's response.

The CSE-level tests answer or fail what the CSE sends (``acmews.testing.FakeSender``); the
``Stack`` tests run the same through the binding: real server factories, clients paired over
iosim, the poa chain.
"""

from __future__ import annotations

from typing import Any

import cbor2
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource as WebResource
from twisted.web.server import Request as WebRequest

from acmews.client import as_handler
from acmews.codes import RSC, ResourceType
from acmews.errors import TargetNotReachable
from acmews.poa import HttpConnector, PoaChain
from acmews.primitive import Request, Response
from acmews.testing import ADMIN, Sent
from tests.cse_helpers import CSETestCase
from tests.test_e2e import Notifications, StackTestCase

CNT = "cse-in/Cmyae/c"


class SubscriptionTestCase(CSETestCase):
    """An AE ``Cmyae`` (with a poa) owning container ``c``."""

    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae", poa=["ws://device:9000"])
        self.cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")

    def sub(self, to: str = CNT, fr: str | None = None, **attrs: Any) -> dict[str, Any]:
        """A subscription created by ``fr`` (the AE by default), targets verified."""
        attrs.setdefault("nu", ["http://n"])
        return self.subscribe(to, fr or self.aei, **attrs)

    def refused(self, rsc: RSC, to: str = CNT, **attrs: Any) -> None:
        attrs.setdefault("nu", ["http://n"])
        self.fails(rsc, 1, to, self.aei, ty=23, pc={"m2m:sub": attrs})
        self.assertEqual(self.sender.take(), [])  # refused before any verification

    def update_cnt(self, fr: str | None = None, **attrs: Any) -> Response:
        return self.ok(3, CNT, fr or self.aei, pc={"m2m:cnt": attrs})

    def sgn(self, sent: Sent) -> dict[str, Any]:
        sgn: dict[str, Any] = sent.request.pc["m2m:sgn"]
        return sgn


class ConditionTests(SubscriptionTestCase):
    """eventNotificationCriteria (TS-0004 6.3.5.7, 7.4.8.2.1, 7.5.1.2.2 step 1.0)."""

    def test_event_types_1_to_8(self) -> None:
        """TS-0004 6.3.4.2.19: notificationEventType is 1-8; 5 (RETRIEVE of a container with
        no child) and 6 (trigger for an AE) are accepted, 8 (missing data) only with
        ``enc.md`` under a timeSeries (7.4.8.2.1: 4000 otherwise)."""
        for net in ([0], [9], [], "1", [True]):
            self.refused(RSC.BAD_REQUEST, enc={"net": net})
        self.assertEqual(self.sub(enc={"net": [5]}, rn="s5")["nct"], 1)
        self.assertEqual(self.sub(enc={"net": [6]}, rn="s6")["nct"], 4)  # trigger payload
        self.refused(RSC.BAD_REQUEST, enc={"net": [8]})
        self.refused(RSC.BAD_REQUEST, enc={"net": [8], "md": {"num": 2, "dur": "PT10S"}})
        for md in ({"num": 2}, {"num": 0, "dur": "PT1S"}, {"num": 2, "dur": 10}):
            self.refused(RSC.BAD_REQUEST, enc={"net": [8], "md": md})

    def test_notification_content_type_suits_the_event_types(self) -> None:
        """TS-0004 7.4.8.2.1: an nct the event types do not allow is 4000 (modified
        attributes only for an update); without nct, its default."""
        self.refused(RSC.BAD_REQUEST, enc={"net": [3]}, nct=2)
        self.refused(RSC.BAD_REQUEST, enc={"net": [1, 4]}, nct=2)
        self.refused(RSC.BAD_REQUEST, enc={"net": [1, 6]})  # no nct suits both
        self.refused(RSC.BAD_REQUEST, nct=6)
        self.assertEqual(self.sub(enc={"net": [1]}, nct=2, rn="a")["nct"], 2)
        self.assertEqual(self.sub(enc={"net": [1, 3]}, nct=3, rn="b")["nct"], 3)
        sub = self.sub(enc={"net": [1]}, nct=2, rn="c")
        self.fails(RSC.BAD_REQUEST, 3, f"{CNT}/c", self.aei, pc={"m2m:sub": {"enc": {"net": [3]}}})
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["enc"], {"net": [1]})
        self.flush()  # b heard c created

    def test_conditions_not_evaluated_here(self) -> None:
        """TS-0004 7.3.3.3: an unknown attribute is 4000; a known feature this CSE does not
        support is 5001."""
        self.refused(RSC.BAD_REQUEST, enc={"xyz": 1})
        self.refused(RSC.NOT_IMPLEMENTED, enc={"sza": 10})

    def test_event_type_or_operation_monitor(self) -> None:
        """TS-0004 7.4.8.2.1/7.4.8.2.3: net and om together are 4000, also as the result of
        an UPDATE; an UPDATE that replaces net by om leaves only om."""
        self.refused(RSC.BAD_REQUEST, enc={"net": [1], "om": [{"ops": 3}]})
        for om in ([], [{}], [{"ops": 9}], [{"org": ""}], [{"ops": 3, "x": 1}]):
            self.refused(RSC.BAD_REQUEST, enc={"om": om})
        self.sub(rn="s")
        both = {"m2m:sub": {"enc": {"net": [1], "om": [{"ops": 3}]}}}
        self.fails(RSC.BAD_REQUEST, 3, f"{CNT}/s", self.aei, pc=both)
        r = self.ok(3, f"{CNT}/s", self.aei, pc={"m2m:sub": {"enc": {"om": [{"ops": 3}]}}})
        self.assertEqual(r.pc["m2m:sub"]["enc"], {"om": [{"ops": 3}]})

    def test_child_resource_types_must_be_children(self) -> None:
        """TS-0004 7.4.8.2.1/7.4.8.2.3: a childResourceType that is no child type of the
        subscribed-to resource is 4000, at CREATE and UPDATE."""
        self.refused(RSC.BAD_REQUEST, enc={"net": [3], "chty": [2]})  # an AE under a container
        self.sub(enc={"net": [3], "chty": [4]}, rn="s")
        change = {"m2m:sub": {"enc": {"net": [3], "chty": [2]}}}
        self.fails(RSC.BAD_REQUEST, 3, f"{CNT}/s", self.aei, pc=change)

    def test_a_content_instance_is_not_subscribable(self) -> None:
        """TS-0004 7.4.8.2.1 Recv-6.4: TARGET_NOT_SUBSCRIBABLE, not INVALID_CHILD_RESOURCE."""
        cin = self.create(CNT, 4, "m2m:cin", self.aei, con="x")
        self.refused(RSC.TARGET_NOT_SUBSCRIBABLE, to=cin["ri"])

    def test_attribute_condition(self) -> None:
        """TS-0004 7.5.1.2.2 step 1.0: with an attribute condition, an update notifies only
        when one of those attributes was updated."""
        self.sub(enc={"net": [1], "atr": ["lbl"]})
        self.update_cnt(mni=5)
        self.assertEqual(self.flush(), [])
        self.update_cnt(lbl=["hello"])
        [sent] = self.flush()
        self.assertEqual(self.sgn(sent)["nev"]["rep"]["m2m:cnt"]["lbl"], ["hello"])

    def test_child_resource_type_condition(self) -> None:
        """TS-0004 7.5.1.2.2 step 1.0: with childResourceType, a child created or deleted
        notifies only when it is of one of those types."""
        self.sub(enc={"net": [3, 4], "chty": [3]})
        self.create(CNT, 4, "m2m:cin", self.aei, con="x")
        self.assertEqual(self.flush(), [])
        self.create(CNT, 3, "m2m:cnt", self.aei, rn="inner")
        self.ok(4, f"{CNT}/inner", self.aei)
        sent = self.flush()
        self.assertEqual([self.sgn(s)["nev"]["net"] for s in sent], [3, 4])
        self.assertEqual(self.sgn(sent[0])["nev"]["rep"]["m2m:cnt"]["rn"], "inner")

    def test_operation_monitor(self) -> None:
        """TS-0004 6.3.5.57: an operationMonitor notifies of the listed operations by the
        listed originators on the subscribed-to resource; the notification names them (no
        event type)."""
        self.sub(enc={"om": [{"ops": 3, "org": self.aei}, {"ops": 2}]})
        self.update_cnt(fr=ADMIN, lbl=["by admin"])
        self.assertEqual(self.flush(), [])  # an UPDATE, but by another originator
        self.update_cnt(lbl=["by me"])
        [sent] = self.flush()
        nev = self.sgn(sent)["nev"]
        self.assertEqual(nev["om"], {"ops": 3, "org": self.aei})
        self.assertNotIn("net", nev)
        self.assertEqual(nev["rep"]["m2m:cnt"]["lbl"], ["by me"])
        self.assertEqual(self.retrieve(CNT, ADMIN).rsc, RSC.OK)
        [sent] = self.flush()
        self.assertEqual(self.sgn(sent)["nev"]["om"], {"ops": 2, "org": ADMIN})
        self.create(CNT, 4, "m2m:cin", self.aei, con="x")  # a CREATE: not monitored
        self.assertEqual(self.flush(), [])

    def test_operation_monitor_of_create_and_delete(self) -> None:
        """TS-0004 6.3.5.57: a CREATE under the subscribed-to resource and its DELETE are
        operations on it; what the request only causes (an eviction) is not."""
        self.update_cnt(mni=1)
        self.sub(enc={"om": [{"ops": 1}, {"ops": 4}]})
        self.create(CNT, 4, "m2m:cin", self.aei, con="1")
        self.create(CNT, 4, "m2m:cin", self.aei, con="2")  # evicts the first
        self.ok(4, CNT, self.aei)
        sent = self.flush()
        self.assertEqual([self.sgn(s)["nev"]["om"]["ops"] for s in sent], [1, 1, 4])

    def test_retrieve_of_an_empty_container(self) -> None:
        """TS-0004 6.3.4.2.19 event type 5: a RETRIEVE of a container that holds no
        contentInstance (itself, or its latest, then 4004) notifies, if the originator may
        retrieve it."""
        self.sub(enc={"net": [5]})
        self.fails(RSC.NOT_FOUND, 2, f"{CNT}/la", self.aei)
        self.retrieve(CNT, self.aei)
        sent = self.flush()
        self.assertEqual([self.sgn(s)["nev"]["net"] for s in sent], [5, 5])
        self.assertEqual(self.sgn(sent[0])["nev"]["rep"]["m2m:cnt"]["ri"], self.cnt["ri"])
        self.fails(RSC.NOT_FOUND, 2, f"{CNT}/la", "Cstranger")
        self.create(CNT, 4, "m2m:cin", self.aei, con="x")
        self.retrieve(f"{CNT}/la", self.aei)
        self.retrieve(CNT, self.aei)
        self.assertEqual(self.flush(), [])


class PolicyTests(SubscriptionTestCase):
    """Notification policies (TS-0001 10.2.10.7; TS-0004 7.4.8.2.1, 7.5.1.2.2 step 2)."""

    def test_batch_attribute(self) -> None:
        """TS-0004 7.4.8.2.1 Recv-6.5: without batchNotify/duration the CSE sets its default;
        num is a positive integer and dur an ISO 8601 duration."""
        self.assertEqual(self.sub(bn={"num": 2}, rn="a")["bn"], {"num": 2, "dur": "PT60S"})
        self.assertEqual(self.sub(bn={}, rn="b")["bn"], {"dur": "PT60S"})
        self.assertEqual(self.sub(bn={"dur": "PT2S"}, rn="c")["bn"], {"dur": "PT2S"})
        for bn in ({"num": 0}, {"dur": "10"}, {"dur": 10}, {"dur": "PT0S"}, {"x": 1}, []):
            self.refused(RSC.BAD_REQUEST, bn=bn)
        self.flush()
        for rn in "abc":
            self.ok(4, f"{CNT}/{rn}", self.aei)

    def test_batch_by_number(self) -> None:
        """TS-0001 10.2.10.7: notifications are collected until ``num``, then sent as one
        aggregated notification, first in first out."""
        self.sub(bn={"num": 3})
        for i in range(2):
            self.update_cnt(lbl=[str(i)])
        self.assertEqual(self.flush(), [])
        self.update_cnt(lbl=["2"])
        [sent] = self.flush()
        sgns = sent.request.pc["m2m:agn"]["m2m:sgn"]
        self.assertEqual([s["nev"]["rep"]["m2m:cnt"]["lbl"] for s in sgns], [["0"], ["1"], ["2"]])
        self.assertEqual(sent.request.to, "http://n")
        self.assertIsNone(sent.request.ec)

    def test_batch_by_duration(self) -> None:
        """TS-0001 10.2.10.7: the first notification starts the timer; when ``dur`` has
        passed, what was collected is sent; the next notification starts it again."""
        self.sub(bn={"dur": "PT2S"})
        self.update_cnt(lbl=["0"])
        self.assertEqual(self.flush(), [])
        self.clock.advance(1)
        self.update_cnt(lbl=["1"])
        self.assertEqual(self.flush(), [])
        self.clock.advance(0.9)
        self.assertEqual(self.flush(), [])
        self.clock.advance(0.2)
        [sent] = self.flush()
        self.assertEqual(len(sent.request.pc["m2m:agn"]["m2m:sgn"]), 2)
        self.update_cnt(lbl=["2"])
        self.assertEqual(self.flush(), [])
        self.clock.advance(2)
        [sent] = self.flush()
        self.assertEqual(len(sent.request.pc["m2m:agn"]["m2m:sgn"]), 1)

    def test_latest_only(self) -> None:
        """TS-0001 10.2.10.7 / TS-0004 7.5.1.2.2 step 2.3: with latestNotify a batch keeps
        the latest notification only, and notifications carry the Event Category "latest"
        (4)."""
        self.sub(bn={"num": 3}, ln=True, rn="b")
        for i in range(3):
            self.update_cnt(lbl=[str(i)])
        [sent] = self.flush()
        sgns = sent.request.pc["m2m:agn"]["m2m:sgn"]
        self.assertEqual([s["nev"]["rep"]["m2m:cnt"]["lbl"] for s in sgns], [["2"]])
        self.assertEqual(sent.request.ec, 4)
        self.ok(4, f"{CNT}/b", self.aei)
        self.sub(ln=True, nu=["http://latest"])
        self.update_cnt(lbl=["x"])
        [sent] = self.flush()
        self.assertEqual((sent.target, sent.request.ec), ("http://latest", 4))

    def test_batch_sent_before_the_deletion_notice(self) -> None:
        """TS-0004 7.4.8.2.4 (as the reference implementations: the pending batch is sent,
        not dropped) and 7.5.1.2.4: deleting the subscription sends its batch, then its
        deletion notice, both before the DELETE is answered."""
        sub = self.sub(bn={"num": 5}, su="http://su")
        self.update_cnt(lbl=["0"])
        self.update_cnt(lbl=["1"])
        self.ok(4, f"{CNT}/{sub['rn']}", self.aei)
        sent = self.sender.take()  # no flush: handed over before the response
        self.assertEqual([s.target for s in sent], ["http://n", "http://su"])
        self.assertEqual(len(sent[0].request.pc["m2m:agn"]["m2m:sgn"]), 2)
        self.assertEqual(
            sent[1].request.pc, {"m2m:sgn": {"sud": True, "sur": f"/id-in/{sub['ri']}"}}
        )
        self.assertEqual(self.flush(), [])

    def test_notification_statistics(self) -> None:
        """TS-0004 m2m:notificationStatsInfo: with notificationStatsEnable, per target the
        requests sent, responses received and events counted; setting nse to true starts
        afresh, false keeps them, removing nse removes them."""
        sub = self.sub(nse=True, nu=["http://n", "http://m"])
        self.assertNotIn("nsi", sub)
        self.update_cnt(lbl=["x"])
        n, m = self.flush()
        self.assertEqual(self.nsi(sub), {"http://n": (1, 0, 1), "http://m": (1, 0, 1)})
        n.answer(RSC.OK)
        m.fail(TargetNotReachable("down"))  # no response: not counted
        self.flush()
        self.assertEqual(self.nsi(sub), {"http://n": (1, 1, 1), "http://m": (1, 0, 1)})
        self.set_nse(sub, False)
        self.update_cnt(lbl=["y"])
        self.flush()
        self.assertEqual(self.nsi(sub), {"http://n": (1, 1, 1), "http://m": (1, 0, 1)})
        self.set_nse(sub, True)
        self.assertEqual(self.nsi(sub), {})
        self.update_cnt(lbl=["z"])
        self.flush()
        self.assertEqual(self.nsi(sub), {"http://n": (1, 0, 1), "http://m": (1, 0, 1)})
        self.set_nse(sub, None)
        attrs = self.retrieve(sub["ri"]).pc["m2m:sub"]
        self.assertNotIn("nse", attrs)
        self.assertNotIn("nsi", attrs)

    def nsi(self, sub: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
        nsi = self.retrieve(sub["ri"]).pc["m2m:sub"].get("nsi", [])
        return {e["tg"]: (e["rqs"], e["rsr"], e["noec"]) for e in nsi}

    def set_nse(self, sub: dict[str, Any], nse: bool | None) -> None:
        self.ok(3, sub["ri"], self.aei, pc={"m2m:sub": {"nse": nse}})

    def test_statistics_count_each_notification_of_a_batch(self) -> None:
        """TS-0004 m2m:notificationStatsInfo: an aggregated notification counts as the
        notifications it carries."""
        sub = self.sub(nse=True, bn={"num": 2})
        self.update_cnt(lbl=["0"])
        self.update_cnt(lbl=["1"])
        self.flush()[0].answer(RSC.OK)
        self.flush()
        nsi = self.retrieve(sub["ri"]).pc["m2m:sub"]["nsi"]
        self.assertEqual(nsi, [{"tg": "http://n", "rqs": 2, "rsr": 2, "noec": 2}])

    def test_event_originator(self) -> None:
        """enableEventNotificationOriginator (eeno, as the reference implementations carry
        it): the notification's creator is the originator of the event."""
        self.sub(eeno=True)
        self.update_cnt(fr=ADMIN, lbl=["x"])
        [sent] = self.flush()
        self.assertEqual(self.sgn(sent)["cr"], ADMIN)
        self.refused(RSC.BAD_REQUEST, eeno="yes")

    def test_serialization_indication_in_a_notification_uri(self) -> None:
        """TS-0004 7.5.1.2.2 step 2.5: ``?ct=`` is not part of the To parameter; an http(s)
        target keeps it for the HTTP binding to serialize by (see test_poa), a ws URL or an
        originator is sent in its connection's own serialization. Only json and cbor."""
        other = self.register("Cother", poa=["http://other:1"])
        nus = ["http://h/n?ct=cbor", "ws://w/n?ct=cbor", f"{other}?ct=json"]
        self.sub(nu=nus, enc={"net": [3]})
        self.create(CNT, 4, "m2m:cin", self.aei, con="x")
        got = [(s.target, s.request.to, s.poa) for s in self.flush()]
        self.assertEqual(
            got,
            [
                ("http://h/n?ct=cbor", "http://h/n", ()),
                ("ws://w/n", "ws://w/n", ()),
                (other, other, ("http://other:1",)),
            ],
        )
        self.refused(RSC.NOT_IMPLEMENTED, nu=["http://h/n?ct=xml"])
        self.refused(RSC.BAD_REQUEST, nu=["http://h/n?ct=yaml"])


class TargetTests(SubscriptionTestCase):
    def test_new_targets_of_an_update_are_verified(self) -> None:
        """TS-0004 7.4.8.2.3 (the verification of 7.5.1.2.3 for a changed notificationURI,
        as the reference implementations do it): only the targets the UPDATE adds are asked;
        a failed verification is 5204 and leaves the subscription as it was."""
        sub = self.sub(nu=["http://a"], rn="s")
        change = {"m2m:sub": {"nu": ["http://a", "http://b", self.aei]}}
        d = self.handle(3, f"{CNT}/s", self.aei, pc=change)
        [verification] = self.sender.take()  # not the old one, not the originator itself
        self.assertEqual(verification.target, "http://b")
        self.assertIs(self.sgn(verification)["vrq"], True)
        verification.answer(RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assertEqual(
            self.successResultOf(d).rsc,  # type: ignore[arg-type]
            RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED,
        )
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["nu"], ["http://a"])
        d = self.handle(3, f"{CNT}/s", self.aei, pc=change)
        self.sender.take()[0].answer(RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.UPDATED)  # type: ignore[arg-type]
        self.assertEqual(len(self.retrieve(sub["ri"]).pc["m2m:sub"]["nu"]), 3)
        self.ok(3, f"{CNT}/s", self.aei, pc={"m2m:sub": {"nu": ["http://a"]}})  # none added
        self.assertEqual(self.sender.take(), [])

    def test_deletion_notice_before_the_response(self) -> None:
        """TS-0004 7.5.1.2.4: the deletion notice of a subscription is handed to the sender
        before the DELETE is answered, after the notifications earlier requests still have
        waiting (it overtakes none)."""
        sub = self.sub(enc={"net": [3]}, su="http://su", rn="s")
        self.create(CNT, 4, "m2m:cin", self.aei, con="x")  # its notification waits a turn
        self.ok(4, f"{CNT}/s", self.aei)
        sent = self.sender.take()
        self.assertEqual([s.target for s in sent], ["http://n", "http://su"])
        self.assertEqual(self.sgn(sent[1]), {"sud": True, "sur": f"/id-in/{sub['ri']}"})
        self.assertEqual(self.flush(), [])


class BlockingUpdateTests(SubscriptionTestCase):
    """notificationEventType 7 (TS-0004 7.4.8.2.1, 7.5.1.2.19, 7.3.2.9; TS-0001 10.2.10.7)."""

    def setUp(self) -> None:
        super().setUp()
        self.other = self.register("Cother", poa=["ws://other:1"])

    def blocking(self, **attrs: Any) -> dict[str, Any]:
        return self.sub(nu=[self.other], enc={"net": [7], **attrs}, rn="block")

    def test_rules(self) -> None:
        """TS-0004 7.4.8.2.1: one resource-ID target, no other event type, no condition but
        attributes, no batch, latest or counter, one such subscription per resource (4124);
        TS-0004 7.4.8.2.3: an UPDATE may not set it."""
        net = {"net": [7]}
        self.refused(RSC.BAD_REQUEST, nu=[self.other, "Cx"], enc=net)
        self.refused(RSC.BAD_REQUEST, nu=["http://n"], enc=net)
        self.refused(RSC.BAD_REQUEST, nu=[self.other], enc={"net": [1, 7]})
        self.refused(RSC.BAD_REQUEST, nu=[self.other], enc={"net": [7], "chty": [4]})
        self.refused(RSC.BAD_REQUEST, nu=[self.other], enc=net, nct=1)
        for policy in ({"exc": 2}, {"bn": {"num": 2}}, {"ln": True}):
            self.refused(RSC.BAD_REQUEST, nu=[self.other], enc=net, **policy)
        sub = self.blocking(atr=["lbl"])
        self.assertEqual(sub["nct"], 2)
        self.refused(RSC.BLOCKING_SUBSCRIPTION_ALREADY_EXISTS, nu=[self.other], enc=net)
        two = {"m2m:sub": {"nu": [self.other, "Cx"]}}
        self.fails(RSC.BAD_REQUEST, 3, sub["ri"], self.aei, pc=two)
        self.sub(rn="plain", nct=2)  # suits a blocking update too: only the rule refuses
        self.fails(RSC.BAD_REQUEST, 3, f"{CNT}/plain", self.aei, pc={"m2m:sub": {"enc": net}})

    def update(self, **attrs: Any) -> Deferred[Response]:
        d = self.handle(3, CNT, self.aei, pc={"m2m:cnt": attrs})
        assert isinstance(d, Deferred)
        return d

    def test_the_update_waits_for_the_target(self) -> None:
        """TS-0004 7.5.1.2.19: the notification carries the UPDATE's representation; the
        UPDATE is made only once the target has answered successfully."""
        sub = self.blocking(atr=["lbl"])
        d = self.update(lbl=["new"])
        [sent] = self.sender.take()
        self.assertNoResult(d)
        self.assertEqual(
            (sent.target, sent.poa, sent.store), (self.other, ("ws://other:1",), False)
        )
        self.assertEqual(
            self.sgn(sent),
            {
                "nev": {"rep": {"m2m:cnt": {"lbl": ["new"]}}, "net": 7},
                "sur": f"/id-in/{sub['ri']}",
            },
        )
        self.assertNotIn("lbl", self.retrieve(CNT).pc["m2m:cnt"])
        sent.answer(RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.UPDATED)
        self.assertEqual(self.retrieve(CNT).pc["m2m:cnt"]["lbl"], ["new"])
        self.update_cnt(mni=3)  # not an attribute of the condition: not blocked
        self.assertEqual(self.sender.take(), [])

    def test_a_refusal_leaves_the_resource_unchanged(self) -> None:
        """TS-0004 7.3.2.9: TARGET_NOT_REACHABLE becomes REMOTE_ENTITY_NOT_REACHABLE,
        OPERATION_NOT_ALLOWED becomes OPERATION_DENIED_BY_REMOTE_ENTITY; another error is
        answered as it came; no answer in time counts as not reachable."""
        self.blocking()
        outcomes = [
            (lambda s: s.answer(RSC.OPERATION_NOT_ALLOWED), RSC.OPERATION_DENIED_BY_REMOTE_ENTITY),
            (lambda s: s.answer(RSC.TARGET_NOT_REACHABLE), RSC.REMOTE_ENTITY_NOT_REACHABLE),
            (lambda s: s.fail(TargetNotReachable("gone")), RSC.REMOTE_ENTITY_NOT_REACHABLE),
            (lambda s: s.answer(RSC.BAD_REQUEST), RSC.BAD_REQUEST),
            (lambda s: self.clock.advance(10), RSC.REMOTE_ENTITY_NOT_REACHABLE),
        ]
        for i, (answer, rsc) in enumerate(outcomes):
            d = self.update(lbl=[str(i)])
            [sent] = self.sender.take()
            answer(sent)
            response = self.successResultOf(d)
            self.assertEqual(response.rsc, rsc)
            self.assertTrue(response.debug)
        self.assertNotIn("lbl", self.retrieve(CNT).pc["m2m:cnt"])

    def test_other_updates_and_deletes_wait(self) -> None:
        """TS-0001 10.2.10.7: while an UPDATE is blocked, no other UPDATE or DELETE of the
        resource is processed; they follow in order once it is done."""
        self.blocking(atr=["lbl"])
        first = self.update(lbl=["first"])
        second = self.update(mni=2)
        deleted = self.handle(4, CNT, self.aei)
        assert isinstance(deleted, Deferred)
        self.assertNoResult(second)
        self.assertNoResult(deleted)
        self.sender.take()[0].answer(RSC.OK)
        self.assertEqual(self.successResultOf(first).rsc, RSC.UPDATED)
        self.assertEqual(self.successResultOf(second).rsc, RSC.UPDATED)
        self.assertEqual(self.successResultOf(deleted).rsc, RSC.DELETED)
        self.assertEqual(self.cse.notifier._locks, {})

    def test_an_update_behind_a_delete_finds_the_resource_gone(self) -> None:
        """TS-0001 10.2.10.7: an UPDATE that waited behind a DELETE of the resource is 4004,
        and its target hears nothing of it."""
        self.blocking()
        first = self.update(lbl=["first"])
        deleted = self.handle(4, CNT, self.aei)
        late = self.update(lbl=["late"])
        [sent] = self.sender.take()
        sent.answer(RSC.OK)
        self.assertEqual(self.successResultOf(first).rsc, RSC.UPDATED)
        self.assertEqual(self.successResultOf(deleted).rsc, RSC.DELETED)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(late).rsc, RSC.NOT_FOUND)
        self.assertEqual([s.target for s in self.flush()], [])
        self.assertEqual(self.cse.notifier._locks, {})


class StackSubscriptionTests(StackTestCase):
    """The same through the binding: AEs on WebSocket connections, the poa chain."""

    def setUp(self) -> None:
        """``Cowner`` owns container ``c``; ``Cwatch`` answers notifications (``inbox``)."""
        super().setUp()
        self.inbox = Notifications()
        self.owner, self.watcher = (
            self.register(name, handler=handler)
            for name, handler in (("Cowner", None), ("Cwatch", self.inbox))
        )
        cnt = {"m2m:cnt": {"rn": "c"}}
        self.assertEqual(self.call(self.owner.create("cse-in/cowner", 3, cnt)).rsc, RSC.CREATED)

    def subscribe(self, client: Any = None, **sub: Any) -> Response:
        body = {"rn": "s", "nu": ["Cwatch"], **sub}
        return self.call(
            (client or self.owner).create("cse-in/cowner/c", ResourceType.SUB, {"m2m:sub": body})
        )

    def test_deletion_notice_arrives_before_the_delete_response(self) -> None:
        """TS-0004 7.5.1.2.4: on the wire, the subscriber's deletion notice comes before the
        response to the DELETE (here both on the subscriber's own connection)."""
        order: list[str] = []

        def handler(request: Request) -> Response:
            order.append("sud" if request.pc["m2m:sgn"].get("sud") else "other")
            return Response(RSC.OK, request.rqi, request.rvi)

        self.pairs[0].client_session.handler = as_handler(handler)
        self.assertEqual(self.subscribe(su="Cowner").rsc, RSC.CREATED)
        d = self.owner.delete("cse-in/cowner/c/s")
        d.addCallback(lambda r: order.append(f"response {int(r.rsc)}"))
        self.flush()
        self.assertEqual(order, ["sud", "response 2002"])

    def test_blocking_update_through_the_target_connection(self) -> None:
        """TS-0004 7.5.1.2.19 and 7.3.2.9 through the binding: the target AE answers the
        blocking notification on its own connection."""
        self.assertEqual(self.subscribe(enc={"net": [7]}).rsc, RSC.CREATED)
        self.inbox.rsc = RSC.OPERATION_NOT_ALLOWED
        r = self.call(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"lbl": ["a"]}}))
        self.assertEqual(r.rsc, RSC.OPERATION_DENIED_BY_REMOTE_ENTITY)
        self.inbox.rsc = RSC.OK
        r = self.call(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"lbl": ["b"]}}))
        self.assertEqual(r.rsc, RSC.UPDATED)
        blocked = [e for e in self.inbox.events() if e["nev"]["net"] == 7]
        self.assertEqual(
            [e["nev"]["rep"] for e in blocked], [{"m2m:cnt": {"lbl": [x]}} for x in "ab"]
        )

    def test_batch_with_statistics(self) -> None:
        """TS-0001 10.2.10.7 and TS-0004 m2m:notificationStatsInfo through the binding."""
        r = self.subscribe(enc={"net": [3]}, bn={"num": 2}, nse=True)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        for con in "xy":
            cin = {"m2m:cin": {"con": con}}
            self.call(self.owner.create("cse-in/cowner/c", ResourceType.CIN, cin))
        [agn] = [rq.pc["m2m:agn"] for rq in self.inbox.requests if "m2m:agn" in rq.pc]
        self.assertEqual([s["nev"]["rep"]["m2m:cin"]["con"] for s in agn["m2m:sgn"]], ["x", "y"])
        sub = self.call(self.owner.retrieve("cse-in/cowner/c/s")).pc["m2m:sub"]
        self.assertEqual(sub["nsi"], [{"tg": "Cwatch", "rqs": 2, "rsr": 2, "noec": 2}])

    def test_operation_monitor_and_event_originator(self) -> None:
        """TS-0004 6.3.5.57 (operationMonitor) and eeno through the binding."""
        om = {"om": [{"ops": 3, "org": "Cowner"}]}
        self.assertEqual(self.subscribe(enc=om, eeno=True).rsc, RSC.CREATED)
        self.call(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"lbl": ["x"]}}))
        [sgn] = [rq.pc["m2m:sgn"] for rq in self.inbox.requests if "nev" in rq.pc["m2m:sgn"]]
        self.assertEqual((sgn["nev"]["om"], sgn["cr"]), ({"ops": 3, "org": "Cowner"}, "Cowner"))


class StackCborNotificationTests(StackTestCase):
    """``?ct=cbor`` through the binding to an HTTP notification target."""

    def setUp(self) -> None:
        super().setUp()
        self.http = _NotificationServer()
        self.chain = PoaChain(
            self.originators, self.clock, [HttpConnector(self.clock, StubTreq(self.http))]
        )
        self.cse.notifier._sender = self.chain  # type: ignore[assignment]

    def test_notification_in_cbor(self) -> None:
        """TS-0004 7.5.1.2.2 step 2.5: the serialization the notification URI asks for."""
        owner = self.register("Cowner")
        self.call(owner.create("cse-in/cowner", ResourceType.CNT, {"m2m:cnt": {"rn": "c"}}))
        sub = {"m2m:sub": {"nu": ["http://n.example/in?ct=cbor"], "enc": {"net": [3]}}}
        r = self.call(owner.create("cse-in/cowner/c", ResourceType.SUB, sub))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.call(owner.create("cse-in/cowner/c", ResourceType.CIN, {"m2m:cin": {"con": "v"}}))
        [verification, event] = self.http.seen
        for seen in (verification, event):
            self.assertEqual((seen["uri"], seen["ctype"]), ("/in", "application/cbor"))
        self.assertTrue(verification["body"]["m2m:sgn"]["vrq"])
        self.assertEqual(event["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "v")


class _NotificationServer(WebResource):
    """An HTTP notification target answering 2000, recording what it got (decoded)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: WebRequest) -> bytes:
        assert request.content is not None
        ctype = request.getHeader("Content-Type")
        self.seen.append(
            {
                "uri": request.uri.decode(),
                "ctype": ctype,
                "body": cbor2.loads(request.content.read()),
            }
        )
        request.setHeader(b"X-M2M-RSC", b"2000")
        return b""
