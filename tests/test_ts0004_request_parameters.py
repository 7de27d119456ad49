"""Request parameters as TS-0004/TS-0001 define them, through the binding: rqet, rset and oet
(absolute and relative, ISO 8601 durations too), rcn per operation, partial retrieve (atrl),
vsi, drt, fc on CREATE."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from acmews.codes import RSC, ResourceType
from acmews.cse import CSEConfig
from acmews.cse import core as cse_core
from acmews.cse.timing import MAX_EXECUTION_DELAY
from acmews.primitive import Response
from acmews.testing import ADMIN
from acmews.timestamps import Timestamps
from tests.cse_helpers import CSETestCase
from tests.test_e2e import StackTestCase

CNT = {"m2m:cnt": {"rn": "box", "lbl": ["a"]}}


class Stack(StackTestCase):
    """A CSE behind the binding with the AE Cpar and its container cse-in/cpar/box."""

    def setUp(self) -> None:
        super().setUp()
        self.ae = self.register("Cpar")
        self.ok(self.ae.create("cse-in/cpar", ResourceType.CNT, CNT))

    def at(self, seconds: float) -> str:
        """The timestamp ``seconds`` from now."""
        return Timestamps().format(self.clock.seconds() + seconds)

    def ok(self, d: Deferred[Response]) -> Response:
        response = self.call(d)
        self.assertTrue(response.ok, f"{response.rsc} {response.debug}")
        return response

    def fails(self, rsc: RSC, d: Deferred[Response]) -> Response:
        response = self.call(d)
        self.assertEqual(response.rsc, rsc, response.debug)
        self.assertTrue(response.debug)
        return response

    def cin(self, **params: Any) -> Deferred[Response]:
        return self.ae.create(
            "cse-in/cpar/box", ResourceType.CIN, {"m2m:cin": {"con": "x"}}, **params
        )

    def instances(self) -> int:
        cni: int = self.ok(self.ae.retrieve("cse-in/cpar/box")).pc["m2m:cnt"]["cni"]
        return cni


class ExpirationTests(Stack):
    def test_rqet_passed_is_4008(self) -> None:
        """TS-0004 7.3.2.1: "If the Request Expiration Timestamp is given in the request and
        has expired, the Receiver CSE shall reject the request with a REQUEST_TIMEOUT"; an
        absolute or a relative one (ms, ISO 8601 duration), whatever the operation."""
        for rqet in (self.at(-1), 0, "0", "PT0S"):
            self.fails(RSC.REQUEST_TIMEOUT, self.cin(rqet=rqet))
            self.fails(RSC.REQUEST_TIMEOUT, self.ae.retrieve("cse-in", rqet=rqet))
        self.assertEqual(self.instances(), 0)  # nothing was created
        for rqet in (self.at(5), 5000, "PT5S", "P1D"):
            self.assertEqual(self.ok(self.cin(rqet=rqet)).rsc, RSC.CREATED)
        self.assertEqual(self.ok(self.ae.retrieve("cse-in", rqet="PT1M")).rsc, RSC.OK)

    def test_rset_passed_is_4008_and_must_not_precede_rqet(self) -> None:
        """TS-0001 8.1.2: the result is to be returned before the Result Expiration Timestamp;
        one that has passed gets 4008, one before the request's own expiration 4000 (as the
        reference implementations answer)."""
        self.fails(RSC.REQUEST_TIMEOUT, self.cin(rset=self.at(-1)))
        self.fails(RSC.BAD_REQUEST, self.cin(rqet="PT10S", rset="PT5S"))
        self.assertEqual(self.instances(), 0)
        self.ok(self.cin(rqet="PT5S", rset="PT10S"))
        self.ok(self.ae.retrieve("cse-in/cpar/box", rset=self.at(3)))


class OperationExecutionTimeTests(Stack):
    def test_oet_delays_the_operation(self) -> None:
        """TS-0004 7.3.3.5: "If the Operation Execution Time is given in the request, the
        Hosting CSE should perform the following procedures at the time and shall not perform
        the procedures before the time" (here as an ISO 8601 duration, PT2S)."""
        d = self.cin(oet="PT2S")
        self.flush()
        self.assertNoResult(d)
        self.clock.advance(1.5)
        self.assertEqual(self.instances(), 0)
        self.clock.advance(0.5)
        response = self.call(d)
        self.assertEqual(response.rsc, RSC.CREATED)
        self.assertEqual(response.pc["m2m:cin"]["ct"], self.at(0))
        self.assertEqual(self.instances(), 1)

    def test_oet_absolute_relative_and_passed(self) -> None:
        """TS-0001 8.1.2: "If the execution time has already passed ... the specified
        operation shall be immediately executed"; absolute timestamps and ms count too."""
        self.ok(self.cin(oet=self.at(-10)))
        self.assertEqual(self.instances(), 1)
        for oet in (self.at(3), 3000, "3000"):
            d = self.ae.update("cse-in/cpar/box", {"m2m:cnt": {"lbl": [str(oet)]}}, oet=oet)
            self.flush()
            self.assertNoResult(d)
            self.clock.advance(3)
            self.assertEqual(self.call(d).pc["m2m:cnt"]["lbl"], [str(oet)])

    def test_oet_must_come_before_rqet_and_rset(self) -> None:
        """TS-0001 8.1.2: an operation is executed at its oet "unless the request expiration
        time, if set, has been reached": one that could only expire first gets 4000 (the
        reference implementations' answer), and so does one beyond this CSE's furthest oet."""
        self.fails(RSC.BAD_REQUEST, self.cin(oet="PT5S", rqet="PT2S"))
        self.fails(RSC.BAD_REQUEST, self.cin(oet="PT5S", rset="PT5S"))
        self.fails(RSC.BAD_REQUEST, self.cin(oet=int(MAX_EXECUTION_DELAY * 1000) + 1000))
        d = self.cin(oet="PT1S", rqet="PT2S", rset="PT3S")
        self.flush()
        self.clock.advance(1)
        self.assertEqual(self.call(d).rsc, RSC.CREATED)

    def test_a_delayed_operation_fails_as_it_would_have(self) -> None:
        """The checks run when the operation does: the container gone by then gives 4004."""
        d = self.cin(oet="PT1S")
        self.ok(self.ae.delete("cse-in/cpar/box"))
        self.clock.advance(1)
        self.assertEqual(self.call(d).rsc, RSC.NOT_FOUND)


class DelayBoundTests(CSETestCase):
    def test_delayed_requests_are_bounded(self) -> None:
        """At most MAX_DELAYED requests wait for their oet; beyond, 5103 until they ran."""
        self.patch(cse_core, "MAX_DELAYED", 2)
        waiting = [self.handle(2, "cse-in", ADMIN, oet="PT1S") for _ in range(2)]
        self.fails(RSC.TARGET_NOT_REACHABLE, 2, "cse-in", ADMIN, oet="PT1S")
        self.clock.advance(1)
        for d in waiting:
            assert isinstance(d, Deferred)
            self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.assertEqual(self.cse.delayed, 0)
        d = self.handle(2, "cse-in", ADMIN, oet="PT1S")
        self.clock.advance(1)
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)


class ForwardedTimingTests(CSETestCase):
    config = CSEConfig(poa=("ws://in:1",), registrar_cse_id="/id-up")

    def test_a_request_for_another_cse_is_forwarded_at_once(self) -> None:
        """TS-0004 7.3.2.6: the receiver "should forward the request before the earliest of
        these times. If any of the timestamps are in the past, it shall reject the request
        with a REQUEST_TIMEOUT ... and not forward the request"."""
        d = self.handle(2, "/id-up/cse-up", ADMIN, oet="PT5S")
        (sent,) = self.sender.take()
        self.assertEqual(sent.request.oet, "PT5S")
        sent.answer(RSC.OK)
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)
        self.fails(RSC.REQUEST_TIMEOUT, 2, "/id-up/cse-up", ADMIN, rqet=0)
        self.assertEqual(self.sender.take(), [])


class ResultContentPerOperationTests(Stack):
    def test_allowed_rcn_per_operation(self) -> None:
        """TS-0004 7.3.2.1: "If the Result Content is invalid for a given operation (Refer
        TS-0001 Table 8.1.2-1) ... BAD_REQUEST"; TS-0001 8.1.2: nothing (0) for Create, Update,
        Delete; attributes (1) for all four; hierarchical-address (2) and +attributes (3) for
        Create only; 4, 5, 6 and 8 for Retrieve and Delete; modified-attributes (9) for
        Create and Update."""
        ae = self.ae
        for rcn in (0, 1, 2, 3, 9):
            self.assertEqual(self.ok(self.cin(rcn=rcn)).rsc, RSC.CREATED)
        for rcn in (4, 5, 6, 7, 8, 10, 11, 12):
            self.fails(RSC.BAD_REQUEST, self.cin(rcn=rcn))
        for rcn in (1, 4, 5, 6, 8, 11):
            self.assertEqual(self.ok(ae.retrieve("cse-in/cpar/box", rcn=rcn)).rsc, RSC.OK)
        for rcn in (0, 2, 3, 7, 9, 10, 12):
            self.fails(RSC.BAD_REQUEST, ae.retrieve("cse-in/cpar/box", rcn=rcn))
            self.fails(RSC.BAD_REQUEST, ae.retrieve("cse-in", rcn=rcn))
        for rcn in (0, 1, 9):
            r = self.ok(ae.update("cse-in/cpar/box", {"m2m:cnt": {"mni": 9}}, rcn=rcn))
            self.assertEqual(r.rsc, RSC.UPDATED)
        for rcn in (2, 3, 4, 5, 6, 8, 11):
            self.fails(RSC.BAD_REQUEST, ae.update("cse-in/cpar/box", CNT, rcn=rcn))
        for rcn in (2, 3, 9, 11):
            self.fails(RSC.BAD_REQUEST, ae.delete("cse-in/cpar/box", rcn=rcn))
        for rcn in (0, 1, 4, 5, 6, 8):
            self.ok(ae.create("cse-in/cpar", ResourceType.CNT, {"m2m:cnt": {"rn": f"d{rcn}"}}))
            self.assertEqual(self.ok(ae.delete(f"cse-in/cpar/d{rcn}", rcn=rcn)).rsc, RSC.DELETED)

    def test_create_answers(self) -> None:
        """TS-0001 8.1.2: hierarchical-address is the created resource's address,
        hierarchical-address+attributes both (m2m:rce), nothing no content."""
        self.assertIsNone(self.ok(self.cin(rcn=0)).pc)
        created = self.ok(self.cin(rcn=3)).pc["m2m:rce"]
        self.assertTrue(created["uri"].startswith("cse-in/cpar/box/"))
        self.assertEqual(created["m2m:cin"]["con"], "x")
        address = self.ok(self.cin(rcn=2)).pc["m2m:uri"]
        self.assertEqual(self.ok(self.ae.retrieve(address)).pc["m2m:cin"]["con"], "x")

    def test_modified_attributes(self) -> None:
        """TS-0001 8.1.2 and TS-0004 7.3.3.12, rcn 9: only the attributes that were added,
        modified or deleted otherwise than the request's content said; none: no content."""
        body = {"m2m:cnt": {"rn": "mod", "lbl": ["x"], "mni": 5}}
        created = self.ok(self.ae.create("cse-in/cpar", ResourceType.CNT, body, rcn=9))
        attrs = created.pc["m2m:cnt"]
        for given in ("rn", "lbl", "mni"):
            self.assertNotIn(given, attrs)
        for assigned in ("ri", "pi", "ct", "lt", "et", "ty", "cni", "cbs"):
            self.assertIn(assigned, attrs)
        self.clock.advance(1)
        update = {"m2m:cnt": {"lbl": ["y"], "mni": None}}
        changed = self.ok(self.ae.update("cse-in/cpar/mod", update, rcn=9)).pc["m2m:cnt"]
        self.assertEqual(changed, {"lt": self.at(0), "st": 1})  # stateTag: TS-0001 9.6.6
        self.assertEqual(self.ok(self.ae.retrieve("cse-in/cpar/mod")).pc["m2m:cnt"]["lbl"], ["y"])

    def test_child_resources_has_one_root_element(self) -> None:
        """TS-0004 7.2.1.2: the Content is "a single root element whose name is the name of the
        Resource"; for rcn 8 (child-resources) it holds the children, not the attributes."""
        self.ok(self.cin())
        pc = self.ok(self.ae.retrieve("cse-in/cpar/box", rcn=8)).pc
        self.assertEqual(list(pc), ["m2m:cnt"])
        self.assertEqual(list(pc["m2m:cnt"]), ["m2m:cin"])
        self.assertEqual(pc["m2m:cnt"]["m2m:cin"][0]["con"], "x")


class PartialRetrieveTests(Stack):
    def test_attribute_list(self) -> None:
        """TS-0004 7.3.3.6, partial retrieve case 1: "specific attribute names are provided in
        the Content parameter" (an m2m:atrl, 7.2.1.1): only their values are retrieved."""
        atrl = {"m2m:atrl": ["rn", "lbl", "nosuch"]}
        pc = self.ok(self.ae.retrieve("cse-in/cpar/box", pc=atrl)).pc
        self.assertEqual(pc, {"m2m:cnt": {"rn": "box", "lbl": ["a"]}})
        # the CSEBase too (not its cached whole representation)
        pc = self.ok(self.ae.retrieve("cse-in", pc={"m2m:atrl": ["csi"]})).pc
        self.assertEqual(pc, {"m2m:cb": {"csi": "/id-in"}})

    def test_attribute_in_the_target(self) -> None:
        """TS-0004 7.3.3.6, case 2: "the resource attribute is provided in the To parameter as
        a fragment identifier component of URI following '#'"."""
        pc = self.ok(self.ae.retrieve("cse-in/cpar/box#lbl")).pc
        self.assertEqual(pc, {"m2m:cnt": {"lbl": ["a"]}})
        self.fails(RSC.NOT_FOUND, self.ae.retrieve("cse-in/cpar/nothing#lbl"))

    def test_bad_partial_retrieves(self) -> None:
        """Anything but an m2m:atrl (a list of attribute names) as a RETRIEVE's content gets
        4000 (TS-0004 7.2.1.1 lists what the Content may hold); so does one with rcn 6."""
        for pc in (
            {"m2m:atrl": "rn"},
            {"m2m:atrl": []},
            {"m2m:atrl": [1]},
            {"m2m:cnt": {}},
            {"m2m:atrl": ["rn"], "x": 1},
            ["rn"],
        ):
            self.fails(RSC.BAD_REQUEST, self.ae.retrieve("cse-in/cpar/box", pc=pc))
        self.fails(RSC.BAD_REQUEST, self.ae.retrieve("cse-in", pc={"m2m:atrl": 1}))
        atrl = {"m2m:atrl": ["rn"]}
        self.fails(RSC.BAD_REQUEST, self.ae.retrieve("cse-in/cpar/box", pc=atrl, rcn=6))
        self.fails(RSC.BAD_REQUEST, self.ae.retrieve("cse-in/cpar/box#rn", pc=atrl))


class VendorInformationTests(Stack):
    def test_vsi_is_echoed(self) -> None:
        """TS-0004 Table 7.2.1.2-1: the Vendor Information of a request comes back in its
        response: an answer, an error, the CSEBase's cached answer alike."""
        vsi = {"vendor": "x", "n": 1}
        answers = [
            self.call(self.ae.retrieve("cse-in", vsi=vsi)).vsi,
            self.call(self.ae.retrieve("cse-in/cpar/box", vsi="v0")).vsi,
            self.call(self.cin(vsi="v1")).vsi,
            self.call(self.ae.retrieve("cse-in/cpar/nothing", vsi="v2")).vsi,
            self.call(self.ae.retrieve("cse-in", vsi="v3", rcn=0)).vsi,
        ]
        self.assertEqual(answers, [vsi, "v0", "v1", "v2", "v3"])
        self.assertIsNone(self.call(self.ae.retrieve("cse-in")).vsi)


class IdentifierFormatTests(Stack):
    def test_drt(self) -> None:
        """TS-0001 8.1.2, Desired Identifier Result Type: "the format of the resource
        identifiers in the result of operations that can return a list of resource identifiers
        or Child Resource References": 1 structured (the default), 2 unstructured."""
        box = "cse-in/cpar/box"
        cin = self.ok(self.ae.create(box, ResourceType.CIN, {"m2m:cin": {"rn": "i", "con": 1}}))
        ri = cin.pc["m2m:cin"]["ri"]
        for drt, value in ((None, f"{box}/i"), (1, f"{box}/i"), (2, ri)):
            params = {} if drt is None else {"drt": drt}
            found = self.ok(self.ae.retrieve(box, fc={"fu": 1}, **params)).pc["m2m:uril"]
            self.assertEqual(found, [value])
            refs = self.ok(self.ae.retrieve(box, rcn=6, **params)).pc["m2m:rrl"]["rrf"]
            self.assertEqual(refs, [{"nm": "i", "typ": 4, "val": value}])
            refs = self.ok(self.ae.retrieve(box, rcn=5, **params)).pc["m2m:cnt"]["ch"]
            self.assertEqual(refs, [{"nm": "i", "typ": 4, "val": value}])

    def test_filter_criteria_on_create(self) -> None:
        """TS-0004 7.3.2.1: "If the Filter Criteria parameter is included in a CREATE request,
        the request shall be rejected with ... BAD_REQUEST"."""
        self.fails(RSC.BAD_REQUEST, self.cin(fc={"ty": [4]}))
        self.assertEqual(self.instances(), 0)
