"""Subscriptions of the embedded CSE: verification, notifications, exc, sud, nu resolution."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC
from acmews.cse import notifier as notifier_module
from acmews.cse import subscription
from acmews.cse.subscription import compile_policy
from acmews.errors import RequestTimeout, TargetNotReachable
from acmews.primitive import Request
from acmews.testing import ADMIN, Sent
from tests.cse_helpers import CSETestCase


class SubscriptionTestCase(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae", poa=["ws://device:9000"])
        self.cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")

    def assert_notification(
        self, sent: Sent, sub: dict[str, object], net: int
    ) -> dict[str, object]:
        """Check the envelope of an event notification; return its ``nev.rep``."""
        request = sent.request
        self.assertEqual(request.op, 5)
        self.assertEqual(request.to, sent.target)
        self.assertEqual(request.fr, "/id-in")
        self.assertEqual(request.rvi, "4")
        # store-and-forward only for a registered AE, never for a URL
        self.assertEqual(sent.store, "://" not in sent.target)
        self.assertIsNotNone(request.rqet)
        sgn = request.pc["m2m:sgn"]
        self.assertEqual(sgn["sur"], f"/id-in/{sub['ri']}")
        self.assertEqual(sgn["nev"]["net"], net)
        rep: dict[str, object] = sgn["nev"]["rep"]
        return rep


class VerificationTests(SubscriptionTestCase):
    def start(self, nu: list[str], fr: str = ADMIN) -> Deferred[object]:
        d = self.handle(1, "cse-in/Cmyae/c", fr, ty=23, pc={"m2m:sub": {"nu": nu, "rn": "s"}})
        assert isinstance(d, Deferred)
        return d  # type: ignore[return-value]

    def test_verified_then_created(self) -> None:
        d = self.start([self.aei, "http://example.net/n"])
        self.assertNoResult(d)
        self.assertIsNone(self.cse.store.child(self.cnt["ri"], "s"))
        first, second = self.sender.take()
        self.assertEqual(
            (first.target, first.poa, first.store), (self.aei, ("ws://device:9000",), False)
        )
        self.assertEqual(
            (second.target, second.poa, second.store), ("http://example.net/n", (), False)
        )
        for sent in (first, second):
            self.assertEqual(sent.request.op, 5)
            self.assertEqual(sent.request.fr, "/id-in")
            self.assertEqual(sent.request.to, sent.target)
            sgn = sent.request.pc["m2m:sgn"]
            self.assertIs(sgn["vrq"], True)
            self.assertEqual(sgn["cr"], ADMIN)
            self.assertTrue(sgn["sur"].startswith("/id-in/sub"))
        self.assertNotEqual(first.request.rqi, second.request.rqi)
        first.answer(RSC.OK)
        self.assertNoResult(d)
        second.answer(RSC.OK)
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.CREATED)  # type: ignore[attr-defined]
        sub = response.pc["m2m:sub"]  # type: ignore[attr-defined]
        self.assertEqual(first.request.pc["m2m:sgn"]["sur"], f"/id-in/{sub['ri']}")
        self.assertEqual(sub["enc"], {"net": [1]})
        self.assertEqual(sub["nct"], 1)
        self.assertEqual(sub["ty"], 23)
        self.assertIsNotNone(self.cse.store.child(self.cnt["ri"], "s"))

    def assert_not_created(self, d: Deferred[object]) -> None:
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED)  # type: ignore[attr-defined]
        self.assertTrue(response.debug)  # type: ignore[attr-defined]
        self.assertIsNone(self.cse.store.child(self.cnt["ri"], "s"))
        self.assertEqual(self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"].get("cni"), 0)
        self.assertEqual(self.flush(), [])  # no notification of anything either

    def test_error_answer_is_5204(self) -> None:
        d = self.start(["http://a", "http://b"])
        first, second = self.sender.take()
        first.answer(RSC.OK)
        second.answer(RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assert_not_created(d)

    def test_non_2000_success_is_5204(self) -> None:
        d = self.start(["http://a"])
        self.sender.take()[0].answer(RSC.ACCEPTED)
        self.assert_not_created(d)

    def test_sender_failure_is_5204(self) -> None:
        d = self.start(["Cunknown"])
        [sent] = self.sender.take()
        self.assertEqual((sent.target, sent.poa), ("Cunknown", ()))
        sent.fail(TargetNotReachable("no route to Cunknown"))
        self.assert_not_created(d)
        d = self.start(["http://a"])
        self.sender.take()[0].fail(RequestTimeout("late"))
        self.assert_not_created(d)

    def test_no_answer_times_out_5204(self) -> None:
        d = self.start(["http://a"])
        [sent] = self.sender.take()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assert_not_created(d)
        sent.answer(RSC.OK)  # too late: ignored
        self.assertIsNone(self.cse.store.child(self.cnt["ri"], "s"))

    def test_originator_itself_is_not_verified(self) -> None:
        for nu in (self.aei, "cse-in/Cmyae", "/id-in/Cmyae"):
            d = self.handle(1, "cse-in/Cmyae/c", self.aei, ty=23, pc={"m2m:sub": {"nu": [nu]}})
            self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)  # type: ignore[arg-type]
        self.assertEqual(self.sender.sent, [])

    def test_invalid_subscriptions(self) -> None:
        for body in (
            {},
            {"nu": []},
            {"nu": "http://a"},
            {"nu": [""]},
            {"nu": ["x"], "enc": {"net": [0]}},
            {"nu": ["x"], "enc": {"net": []}},
            {"nu": ["x"], "enc": {"xyz": 1}},
            {"nu": ["x"], "nct": 4},
            {"nu": ["x"], "exc": 0},
            {"nu": ["x"], "su": 3},
        ):
            self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=23, pc={"m2m:sub": body})
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            1,
            "cse-in/Cmyae/c",
            "Cother",
            ty=23,
            pc={"m2m:sub": {"nu": ["Cother"]}},
        )
        self.assertEqual(self.sender.sent, [])

    def test_parent_deleted_during_verification_is_4004(self) -> None:
        d = self.start(["http://a"])
        self.ok(4, "cse-in/Cmyae/c", self.aei)
        self.sender.take()[0].answer(RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.NOT_FOUND)  # type: ignore[attr-defined]
        self.assertEqual(len(self.cse.store), 2)  # type: ignore[arg-type]


class NotificationTests(SubscriptionTestCase):
    def test_create_child_notified_after_the_response(self) -> None:
        sub = self.subscribe("cse-in/Cmyae/c", self.aei, nu=[self.aei], enc={"net": [3]})
        response = self.ok(1, "cse-in/Cmyae/c", self.aei, ty=4, pc={"m2m:cin": {"con": "21.5"}})
        self.assertEqual(self.sender.sent, [])  # nothing sent before the response exists
        [sent] = self.flush()
        self.assertEqual((sent.target, sent.poa), (self.aei, ("ws://device:9000",)))
        rep = self.assert_notification(sent, sub, 3)
        self.assertEqual(rep, {"m2m:cin": response.pc["m2m:cin"]})
        # the notification's answer is never waited for; a failure is only logged
        sent.fail(TargetNotReachable("offline"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpected_sender_failure_is_logged(self) -> None:
        self.subscribe("cse-in/Cmyae/c", self.aei, nu=[self.aei], enc={"net": [3]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        [sent] = self.flush()
        sent.fail(ValueError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_targets_outcome_handler_is_made_once(self) -> None:
        """A fan-out notifies the same targets at every event: what takes a target's outcome
        is made once for it, not once per notification; only so many are kept."""
        self.patch(notifier_module, "MAX_KNOWN_TARGETS", 2)
        thens: list[tuple[str, object]] = []
        send_then = self.sender.send_then

        def recording(target: str, request: Request, then: Any, *args: Any) -> None:
            thens.append((target, then))
            send_then(target, request, then, *args)

        self.patch(self.sender, "send_then", recording)
        for rn, nu in (("s1", "http://a"), ("s2", "http://b")):
            self.subscribe("cse-in/Cmyae/c", self.aei, nu=[nu], rn=rn, enc={"net": [3]})
        for con in ("1", "2"):
            self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con=con)
            for sent in self.flush():
                sent.answer(RSC.OK)
        handlers: dict[str, set[int]] = {}
        for target, then in thens:
            handlers.setdefault(target, set()).add(id(then))
        self.assertEqual({t: len(h) for t, h in handlers.items()}, {"http://a": 1, "http://b": 1})
        self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://c"], rn="s3", enc={"net": [3]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="3")
        for sent in self.flush():
            sent.answer(RSC.OK)
        self.assertLessEqual(len(self.cse.notifier._outcome_of), 2)

    def test_update_nct_variants(self) -> None:
        all_attrs = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://all"], rn="s1")
        modified = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://mod"], nct=2, rn="s2")
        ri_only = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://ri"], nct=3, rn="s3")
        self.assertEqual(self.flush(), [])  # creating the subscriptions is no net-1 event
        self.clock.advance(1)
        self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"lbl": ["new"]}})
        sent = {s.target: s for s in self.flush()}
        self.assertEqual(set(sent), {"http://all", "http://mod", "http://ri"})
        rep = self.assert_notification(sent["http://all"], all_attrs, 1)
        self.assertEqual(rep["m2m:cnt"]["lbl"], ["new"])  # type: ignore[index]
        self.assertEqual(rep["m2m:cnt"]["ri"], self.cnt["ri"])  # type: ignore[index]
        rep = self.assert_notification(sent["http://mod"], modified, 1)
        # the stateTag is modified too (TS-0001 9.6.6), as lt is
        self.assertEqual(
            rep, {"m2m:cnt": {"lbl": ["new"], "lt": "20231114T221321,250000", "st": 1}}
        )
        rep = self.assert_notification(sent["http://ri"], ri_only, 1)
        self.assertEqual(rep, {"m2m:uri": self.cnt["ri"]})
        for s in sent.values():
            self.assertEqual(s.poa, ())

    def test_delete_and_delete_child(self) -> None:
        ae_sub = self.subscribe(
            "cse-in/Cmyae", self.aei, nu=["http://ae"], enc={"net": [4]}, rn="s"
        )
        cnt_sub = self.subscribe(
            "cse-in/Cmyae/c",
            self.aei,
            nu=["http://cnt"],
            enc={"net": [2, 3]},
            su="http://su",
            rn="t",
        )
        self.ok(4, "cse-in/Cmyae/c", self.aei)
        sent = self.flush()
        by_target: dict[str, list[Sent]] = {}
        for s in sent:
            by_target.setdefault(s.target, []).append(s)
        [deleted] = by_target["http://cnt"]
        rep = self.assert_notification(deleted, cnt_sub, 2)
        self.assertEqual(rep["m2m:cnt"]["ri"], self.cnt["ri"])  # type: ignore[index]
        [child_deleted] = by_target["http://ae"]
        rep = self.assert_notification(child_deleted, ae_sub, 4)
        self.assertEqual(rep["m2m:cnt"]["ri"], self.cnt["ri"])  # type: ignore[index]
        [sud] = by_target["http://su"]
        self.assertEqual(
            sud.request.pc, {"m2m:sgn": {"sud": True, "sur": f"/id-in/{cnt_sub['ri']}"}}
        )
        # su is a URL here: tried once, not stored
        self.assertEqual((sud.request.op, sud.request.fr, sud.store), (5, "/id-in", False))
        self.assertEqual(len(sent), 3)

    def test_net_filter(self) -> None:
        self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://x"], enc={"net": [1]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        self.ok(4, "cse-in/Cmyae/c/la", self.aei)
        self.assertEqual(self.flush(), [])

    def test_eviction_is_delete_child(self) -> None:
        self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"mni": 1}})
        sub = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://x"], enc={"net": [3, 4]})
        first = self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="2")
        sent = self.flush()
        self.assertEqual([s.request.pc["m2m:sgn"]["nev"]["net"] for s in sent], [3, 3, 4])
        rep = self.assert_notification(sent[2], sub, 4)
        self.assertEqual(rep["m2m:cin"]["ri"], first["ri"])  # type: ignore[index]

    def test_exc_deletes_after_that_many(self) -> None:
        sub = self.subscribe(
            "cse-in/Cmyae/c", self.aei, nu=["http://x"], enc={"net": [3]}, exc=2, su="http://su"
        )
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["exc"], 1)
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="2")
        self.fails(RSC.NOT_FOUND, 2, sub["ri"])
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="3")
        sent = self.flush()
        self.assertEqual([s.target for s in sent], ["http://x", "http://x", "http://su"])
        self.assertIs(sent[2].request.pc["m2m:sgn"]["sud"], True)

    def test_subscriptions_expiring_together(self) -> None:
        """Both hear the CREATE_CHILD that ends them; when the first is deleted the second
        (not yet deleted) hears of it; the first, gone by then, hears nothing more."""
        for rn in ("a", "b"):  # first both (net 1), then what makes them hear each other
            self.subscribe("cse-in/Cmyae/c", self.aei, nu=[f"http://{rn}"], rn=rn)
        change = {"enc": {"net": [3, 4]}, "su": "http://su", "exc": 1}
        a, b = (
            self.ok(3, f"cse-in/Cmyae/c/{rn}", self.aei, pc={"m2m:sub": change}).pc["m2m:sub"]
            for rn in ("a", "b")
        )
        self.assertEqual(self.flush(), [])
        cin = self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        sent = self.flush()
        got = [(s.target, s.request.pc["m2m:sgn"].get("nev", {}).get("net")) for s in sent]
        su = ("http://su", None)
        self.assertEqual(got, [("http://a", 3), ("http://b", 3), su, ("http://b", 4), su])
        rep = self.assert_notification(sent[1], b, 3)
        self.assertEqual(rep["m2m:cin"]["ri"], cin["ri"])  # type: ignore[index]
        rep = self.assert_notification(sent[3], b, 4)
        self.assertEqual(rep["m2m:sub"]["ri"], a["ri"])  # type: ignore[index]
        self.assertEqual(
            [s.request.pc["m2m:sgn"]["sur"] for s in (sent[2], sent[4])],
            [f"/id-in/{a['ri']}", f"/id-in/{b['ri']}"],
        )
        for sub in (a, b):
            self.fails(RSC.NOT_FOUND, 2, sub["ri"])

    def test_a_subscription_may_end_with_the_creation_of_another(self) -> None:
        a = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://a"], enc={"net": [3, 4]},
                           exc=1, su="http://su", rn="a")  # fmt: skip
        b = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://b"], enc={"net": [3, 4]},
                           exc=1, su="http://su", rn="b")  # fmt: skip
        sent = self.flush()
        got = [(s.target, s.request.pc["m2m:sgn"].get("nev", {}).get("net")) for s in sent]
        # b's creation is a's last event; a's deletion is b's
        self.assertEqual(
            got, [("http://a", 3), ("http://su", None), ("http://b", 4), ("http://su", None)]
        )
        self.assertEqual(self.assert_notification(sent[0], a, 3), {"m2m:sub": b})
        for sub in (a, b):
            self.fails(RSC.NOT_FOUND, 2, sub["ri"])

    def test_sud_on_subscription_delete_and_parent_delete(self) -> None:
        sub = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://x"], su="http://su", rn="s")
        quiet = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://y"], rn="q")  # no su
        self.ok(4, "cse-in/Cmyae/c/s", self.aei)
        [sud] = self.flush()
        self.assertEqual(sud.target, "http://su")
        self.assertEqual(sud.request.pc, {"m2m:sgn": {"sud": True, "sur": f"/id-in/{sub['ri']}"}})
        again = self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://x"], su=self.aei, rn="s")
        self.ok(4, "cse-in/Cmyae", self.aei)  # the AE, with the container and both subscriptions
        [sud] = self.flush()
        self.assertEqual((sud.target, sud.poa), (self.aei, ("ws://device:9000",)))
        self.assertEqual(sud.request.pc["m2m:sgn"]["sur"], f"/id-in/{again['ri']}")
        self.assertIsNone(self.cse.store.get(quiet["ri"]))

    def test_nu_resolution(self) -> None:
        other = self.register("Cother", poa=["http://other:1", "ws://default"])
        nus = [
            "cse-in/Cother",  # structured
            "/id-in/Cother",  # SP-relative
            other,  # AE-ID
            "//acmews.example.com/id-in/cse-in/Cother",  # absolute
            "ws://host:1/path",  # URL
            "Cnobody",  # unknown: tried as an originator
            "cse-in/Cmyae/c",  # not an AE: tried as an originator
        ]
        self.subscribe("cse-in/Cmyae/c", ADMIN, nu=nus, enc={"net": [3]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        got = [(s.target, s.poa, s.store) for s in self.flush()]
        poa = ("http://other:1", "ws://default")
        # only a registered AE's notifications may wait in store-and-forward; four names of
        # the same AE are one target: it is notified once
        self.assertEqual(
            got,
            [
                (other, poa, True),
                ("ws://host:1/path", (), False),
                ("Cnobody", (), False),
                ("cse-in/Cmyae/c", (), False),
            ],
        )

    def test_notification_rqis_are_fresh(self) -> None:
        self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://a", "http://b"], enc={"net": [3]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="2")
        rqis = [s.request.rqi for s in self.flush()]
        self.assertEqual(len(rqis), 4)
        self.assertEqual(len(set(rqis)), 4)

    def test_subscription_update(self) -> None:
        self.subscribe("cse-in/Cmyae/c", self.aei, nu=["http://a"], rn="s")
        d = self.handle(
            3,
            "cse-in/Cmyae/c/s",
            self.aei,
            pc={"m2m:sub": {"enc": {"net": [3]}, "nu": ["http://b"]}},
        )
        [verification] = self.sender.take()  # the new target is verified first
        verification.answer(RSC.OK)
        response = self.successResultOf(d)  # type: ignore[arg-type]
        self.assertEqual(response.pc["m2m:sub"]["enc"], {"net": [3]})
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="1")
        self.assertEqual([s.target for s in self.flush()], ["http://b"])
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/Cmyae/c/s", self.aei, pc={"m2m:sub": {"nu": None}})


class SharedPolicyTests(SynchronousTestCase):
    """Subscriptions that ask for the same get one compiled Policy (a fan-out's thousand
    subscriptions read one object and its sets); what differs in any way gets its own."""

    def test_equal_attributes_share_one_policy(self) -> None:
        attrs = {"enc": {"net": [3], "chty": [4]}, "nct": 1, "nu": ["Cae1"]}
        first = compile_policy(attrs)
        second = compile_policy({**attrs, "nu": ["Cae2"], "ri": "sub2"})
        self.assertIs(first, second)
        self.assertIs(first.net, second.net)

    def test_what_differs_is_kept_apart(self) -> None:
        base = {"enc": {"net": [3], "chty": [4]}, "nct": 1}
        policies = [
            compile_policy(base),
            compile_policy({**base, "enc": {"net": [3], "chty": [23]}}),
            compile_policy({**base, "nct": 2}),
            compile_policy({**base, "cr": "Cae1"}),
            compile_policy({**base, "ln": True}),
        ]
        self.assertEqual(len({id(p) for p in policies}), 5)
        self.assertEqual(policies[1].chty, frozenset({23}))
        self.assertEqual(policies[3].creator, "Cae1")

    def test_an_unhashable_value_is_compiled_for_itself(self) -> None:
        attrs = {"enc": {"net": [3], "om": [{"ops": [1, 2], "org": "Cae1"}]}}
        self.assertIsNot(compile_policy(attrs), compile_policy(attrs))
        self.assertEqual(compile_policy(attrs), compile_policy(attrs))

    def test_the_store_of_policies_is_bounded(self) -> None:
        self.patch(subscription, "MAX_SHARED_POLICIES", 3)
        self.patch(subscription, "_SHARED", {})
        for n in range(10):
            compile_policy({"enc": {"net": [3], "chty": [n]}})
            self.assertLessEqual(len(subscription._SHARED), 3)
