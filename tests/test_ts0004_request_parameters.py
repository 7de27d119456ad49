"""Request parameters as TS-0004/TS-0001 define them, through the binding: rqet, rset and oet
(absolute and relative, ISO 8601 durations too)."""

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
