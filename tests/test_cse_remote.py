"""The registrar side of CSE-to-CSE: remoteCSE registration and request forwarding."""

from __future__ import annotations

from typing import Any

from acmews.codes import RSC, ResourceType
from acmews.cse import CSE, CSEConfig
from acmews.primitive import Response
from acmews.testing import ADMIN, URL
from tests.cse_helpers import CSETestCase

from .test_e2e import Notifications, StackTestCase

MN = "/id-mn"


def csr(csi: str = MN, **attrs: Any) -> dict[str, Any]:
    body = {"csi": csi, "cb": f"{csi}/cse-mn", "rr": True, "poa": ["ws://mn:8181"], "cst": 2}
    body.update(attrs)
    return {"m2m:csr": body}


#: a CSE that lets any CSE-ID register (the behaviour under test is registration itself)
ANY_CSE = CSEConfig(poa=(URL,), allowed_csr_originators=("/*",))


class RegistrationTests(CSETestCase):
    config = ANY_CSE

    def test_a_cse_registers(self) -> None:
        response = self.ok(1, "cse-in", MN, ty=16, pc=csr())
        self.assertEqual(response.rsc, RSC.CREATED)
        body = response.pc["m2m:csr"]
        self.assertEqual(
            (body["ri"], body["rn"], body["csi"], body["ty"]), ("id-mn", "id-mn", MN, 16)
        )
        self.assertEqual(self.retrieve("cse-in/id-mn", MN).pc["m2m:csr"]["cb"], "/id-mn/cse-mn")

    def test_who_may_register(self) -> None:
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 1, "cse-in", "Cae", ty=16, pc=csr())
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 1, "cse-in", MN, ty=16, pc=csr("/id-other"))
        self.fails(RSC.BAD_REQUEST, 1, "cse-in", MN, ty=16, pc=csr("not a cse id"))
        self.cse = CSE(CSEConfig(allowed_csr_originators=("/id-mn*",)), self.sender, self.clock)
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 1, "cse-in", "/id-x", ty=16, pc=csr("/id-x"))
        self.ok(1, "cse-in", "/id-mn2", ty=16, pc=csr("/id-mn2"))

    def test_registering_again_is_4105_and_an_update_refreshes(self) -> None:
        self.ok(1, "cse-in", MN, ty=16, pc=csr())
        response = self.fails(RSC.CONFLICT, 1, "cse-in", MN, ty=16, pc=csr())
        self.assertIn("UPDATE", response.debug or "")
        self.ok(3, "cse-in/id-mn", MN, pc={"m2m:csr": {"poa": ["ws://mn:9999"]}})
        self.assertEqual(self.retrieve("cse-in/id-mn", MN).pc["m2m:csr"]["poa"], ["ws://mn:9999"])

    def test_only_under_the_csebase(self) -> None:
        aei = self.register("Cae")
        self.fails(RSC.INVALID_CHILD_RESOURCE_TYPE, 1, f"cse-in/{aei}", MN, ty=16, pc=csr())


class ForwardingTests(CSETestCase):
    config = ANY_CSE

    def setUp(self) -> None:
        super().setUp()
        self.ok(1, "cse-in", MN, ty=16, pc=csr(dcse=["/id-asn"]))

    def forwarded(self, to: str, fr: str = ADMIN, rqi: str = "orig", **kw: Any) -> tuple[Any, Any]:
        result = self.handle(2, to, fr, rqi=rqi, **kw)
        (sent,) = self.sender.take()
        return result, sent

    def test_to_a_registered_cse_with_sp_relative_fr_and_the_own_rqi(self) -> None:
        for to in ("/id-mn/cse-mn", "//acmews.example.com/id-mn/cse-mn/x", "~/id-mn/cse-mn"):
            result, sent = self.forwarded(to)
            self.assertEqual((sent.target, sent.poa, sent.store), (MN, ("ws://mn:8181",), False))
            self.assertEqual(sent.request.fr, "/id-in/CAdmin")
            self.assertEqual(sent.request.to, to)
            self.assertNotEqual(sent.request.rqi, "orig")
            sent.deferred.callback(
                Response(2000, sent.request.rqi, "4", {"m2m:cb": {"csi": MN}}, fr=MN)
            )
            relayed = self.successResultOf(result)
            self.assertEqual((relayed.rsc, relayed.rqi, relayed.fr), (2000, "orig", MN))
            self.assertEqual(relayed.pc, {"m2m:cb": {"csi": MN}})

    def test_a_cse_it_lists_in_dcse(self) -> None:
        _, sent = self.forwarded("/id-asn/cse-asn")
        self.assertEqual(sent.target, MN)

    def test_unknown_cse_is_5103_and_the_registrar_is_the_default_route(self) -> None:
        self.fails(RSC.TARGET_NOT_REACHABLE, 2, "/id-nowhere/x")
        self.assertEqual(self.sender.take(), [])
        self.cse = CSE(CSEConfig(registrar_cse_id="/id-up"), self.sender, self.clock)
        _, sent = self.forwarded("/id-nowhere/x")
        self.assertEqual(sent.target, "/id-up")

    def test_never_back_where_it_came_from(self) -> None:
        self.connection.originator = MN
        self.fails(RSC.TARGET_NOT_REACHABLE, 2, "/id-mn/cse-mn", MN)
        self.assertEqual(self.sender.take(), [])

    def test_deleting_the_remote_cse_stops_forwarding(self) -> None:
        self.ok(4, "cse-in/id-mn", MN)
        self.fails(RSC.TARGET_NOT_REACHABLE, 2, "/id-mn/cse-mn")

    def test_a_notify_for_it_may_wait_in_store_and_forward(self) -> None:
        self.handle(5, "/id-mn/cse-mn/Cae", ADMIN, pc={"m2m:sgn": {}})
        (sent,) = self.sender.take()
        self.assertTrue(sent.store)

    def test_a_remote_originator_has_the_rights_acps_give_it(self) -> None:
        aei = self.register("Cowner")
        self.create(
            f"cse-in/{aei}",
            1,
            "m2m:acp",
            aei,
            rn="acp",
            pv={"acr": [{"acor": ["/id-mn/*"], "acop": 2}]},
            pvs={"acr": [{"acor": [aei], "acop": 63}]},
        )
        self.create(f"cse-in/{aei}", 3, "m2m:cnt", aei, rn="c", acpi=[f"cse-in/{aei}/acp"])
        self.ok(2, f"cse-in/{aei}/c", "/id-mn/CAdmin")
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 2, f"cse-in/{aei}/c", "/id-other/CAdmin")
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            3,
            f"cse-in/{aei}/c",
            "/id-mn/CAdmin",
            pc={"m2m:cnt": {"lbl": ["x"]}},
        )


class OverTheBindingTests(StackTestCase):
    """An MN-CSE connects with X-M2M-Origin /id-mn, registers, and the IN forwards to it over
    that one connection; requests from the MN's side reach the IN over the same one."""

    config = ANY_CSE

    def test_register_and_forward_both_ways(self) -> None:
        mn_inbox = Notifications()
        mn = self.client(MN, handler=mn_inbox)
        r = self.call(mn.create("cse-in", ResourceType.CSR, csr(poa=["ws://default"])))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        admin = self.client("CAdmin")
        # IN -> MN: many in flight on the one connection
        ds = [admin.retrieve(f"/id-mn/cse-mn/c{i}") for i in range(20)]
        self.flush()
        self.assertEqual([self.successResultOf(d).rsc for d in ds], [2000] * 20)
        self.assertEqual({q.fr for q in mn_inbox.requests}, {"/id-in/CAdmin"})
        self.assertEqual(len({q.rqi for q in mn_inbox.requests}), 20)
        # MN -> IN: a request of the MN's admin, with the MN's rights
        r = self.call(mn.retrieve("/id-in/cse-in", fr="/id-mn/CAdmin"))
        self.assertEqual((r.rsc, r.pc["m2m:cb"]["csi"]), (2000, "/id-in"))
        # the MN's connection gone: forwarding fails at once, the CSR stays
        mn.session.close()
        self.flush()
        r = self.call(admin.retrieve("/id-mn/cse-mn"))
        self.assertEqual(r.rsc, RSC.TARGET_NOT_REACHABLE)
        self.assertEqual(self.call(admin.retrieve("cse-in/id-mn")).rsc, 2000)


class ForwardingBoundsTests(CSETestCase):
    """Requests forwarded to one next hop that wait for its answers are bounded, per link and
    per originator (206,000 in flight and 450 MB once, for a remote CSE that reads and never
    answers); every way a forwarded request ends gives its place back."""

    config = CSEConfig(
        poa=(URL,),
        allowed_csr_originators=("/*",),
        max_forwarded_per_link=5,
        max_forwarded_per_originator=3,
    )

    def setUp(self) -> None:
        super().setUp()
        self.ok(1, "cse-in", MN, ty=16, pc=csr())

    def saturated(self, fr: str) -> str:
        before = len(self.sender.sent)
        response = self.fails(RSC.TARGET_NOT_REACHABLE, 2, "/id-mn/cse-mn", fr)
        self.assertEqual(len(self.sender.sent), before)  # nothing sent
        return response.debug or ""

    def test_per_originator_then_per_link(self) -> None:
        from twisted.internet.defer import Deferred

        from acmews.errors import RequestTimeout, TargetNotReachable

        results = [self.handle(2, "/id-mn/cse-mn", "Ca") for _ in range(3)]
        self.assertIn("saturated for /id-in/Ca", self.saturated("Ca"))
        results += [self.handle(2, "/id-mn/cse-mn", "Cb") for _ in range(2)]
        self.assertIn("the link to /id-mn is saturated", self.saturated("Cb"))
        self.assertIn("the link to /id-mn is saturated", self.saturated("Cc"))
        self.assertEqual(self.cse.forwarding, {MN: 5})
        self.assertEqual(self.cse.forwarding_by, {(MN, "/id-in/Ca"): 3, (MN, "/id-in/Cb"): 2})
        sent = self.sender.take()
        self.assertEqual(len(sent), 5)
        # an answer, a failure, a timeout, a cancellation: each gives its place back
        sent[0].deferred.callback(Response(2000, sent[0].request.rqi))
        sent[1].deferred.errback(TargetNotReachable("connection lost"))
        sent[2].deferred.errback(RequestTimeout("no response in time"))
        results[3].cancel()  # type: ignore[union-attr]
        self.assertEqual(self.cse.forwarding, {MN: 1})
        answers = [self.successResultOf(r) for r in results[:4] if isinstance(r, Deferred)]
        self.assertEqual([a.rsc for a in answers], [2000, 5103, 4008, 5103])
        # the places are free again
        more = self.handle(2, "/id-mn/cse-mn", "Ca")
        (extra,) = self.sender.take()
        extra.deferred.callback(Response(2000, extra.request.rqi))
        sent[4].deferred.callback(Response(2000, sent[4].request.rqi))
        self.assertEqual(self.successResultOf(more).rsc, 2000)  # type: ignore[arg-type]
        self.assertEqual((self.cse.forwarding, self.cse.forwarding_by), ({}, {}))

    def test_a_sender_that_fails_at_once_takes_no_place(self) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken sender")

        self.sender.send = broken  # type: ignore[method-assign]
        for _ in range(10):
            response = self.call(2, "/id-mn/cse-mn", "Ca")
            self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 10)
        self.assertEqual((self.cse.forwarding, self.cse.forwarding_by), ({}, {}))

    def test_notifications_relayed_to_an_ae_are_bounded_too(self) -> None:
        aei = self.register("Cae", poa=["http://ae:1/n"])
        for _ in range(3):
            self.handle(5, f"cse-in/{aei}", ADMIN, pc={"m2m:sgn": {}})
        response = self.fails(RSC.TARGET_NOT_REACHABLE, 5, f"cse-in/{aei}", ADMIN, pc={})
        self.assertIn(f"the link to {aei} is saturated", response.debug or "")
        for sent in self.sender.take():
            sent.answer(RSC.OK)
        self.assertEqual((self.cse.forwarding, self.cse.forwarding_by), ({}, {}))
