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
