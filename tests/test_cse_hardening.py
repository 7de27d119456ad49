"""The CSE against an ordinary but hostile AE: bounded names, lists, depth, answers, fan-out."""

from __future__ import annotations

from acmews.codes import RSC
from acmews.cse.content import MAX_TREE
from acmews.cse.core import REGISTRATIONS_PER_MINUTE
from acmews.cse.notifier import DELIVERY_BATCH
from acmews.cse.resource import MAX_DEPTH, MAX_LIST, MAX_NAME, MAX_NU
from acmews.testing import ADMIN
from tests.cse_helpers import CSETestCase


class BoundsTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cbad", poa=["ws://device:9000"])

    def test_name_length(self) -> None:
        self.create("cse-in/Cbad", 3, "m2m:cnt", "Cbad", rn="n" * MAX_NAME)
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in/Cbad", "Cbad", ty=3, pc={"m2m:cnt": {"rn": "n" * 300_000}}
        )

    def test_list_lengths(self) -> None:
        body = {"m2m:cnt": {"lbl": ["x"] * (MAX_LIST + 1)}}
        self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cbad", "Cbad", ty=3, pc=body)
        body = {"m2m:cnt": {"lbl": ["x" * 100_000]}}
        self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cbad", "Cbad", ty=3, pc=body)

    def test_nu_length(self) -> None:
        body = {"m2m:sub": {"nu": ["Cbad"] * (MAX_NU + 1)}}
        self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cbad", "Cbad", ty=23, pc=body)

    def test_depth(self) -> None:
        path = "cse-in/Cbad"  # level 1
        for level in range(2, MAX_DEPTH + 1):
            self.create(path, 3, "m2m:cnt", "Cbad", rn=f"l{level}")
            path += f"/l{level}"
        self.fails(RSC.BAD_REQUEST, 1, path, "Cbad", ty=3, pc={"m2m:cnt": {"rn": "deeper"}})
        # the deepest tree is answered whole, and deleted whole
        tree = self.ok(2, "cse-in/Cbad", "Cbad", rcn=4).pc
        self.assertIn("m2m:cnt", tree["m2m:ae"])
        self.ok(4, "cse-in/Cbad/l2", "Cbad")

    def test_rcn_4_and_8_and_discovery_are_bounded(self) -> None:
        """Beyond MAX_TREE resources an answer is partial (TS-0001 8.1.2, 10.2.6.1: the
        CSE's own bound applies): cnst 1, and cnot is the fc.ofst of the rest."""
        self.create("cse-in/Cbad", 3, "m2m:cnt", "Cbad", rn="c")
        for i in range(MAX_TREE + 1):
            self.create("cse-in/Cbad/c", 4, "m2m:cin", "Cbad", con=str(i))
        for rcn in (4, 8):
            response = self.ok(2, "cse-in/Cbad/c", "Cbad", rcn=rcn)
            self.assertEqual(len(response.pc["m2m:cnt"]["m2m:cin"]), MAX_TREE)
            self.assertEqual((response.cnst, response.cnot), (1, MAX_TREE + 1))
        response = self.ok(2, "cse-in/Cbad/c", "Cbad", fc={"fu": 1})
        self.assertEqual((len(response.pc["m2m:uril"]), response.cnot), (MAX_TREE, MAX_TREE + 1))
        found = self.ok(2, "cse-in/Cbad/c", "Cbad", fc={"fu": 1, "lim": 5}).pc["m2m:uril"]
        self.assertEqual(len(found), 5)
        response = self.ok(2, "cse-in/Cbad/c", "Cbad", rcn=6)
        self.assertEqual(len(response.pc["m2m:rrl"]["rrf"]), MAX_TREE)
        rest = self.ok(2, "cse-in/Cbad/c", "Cbad", rcn=6, fc={"ofst": response.cnot})
        (last,) = rest.pc["m2m:rrl"]["rrf"]
        self.assertEqual(self.ok(2, last["val"], "Cbad").pc["m2m:cin"]["con"], str(MAX_TREE))
        self.assertIsNone(rest.cnst)
        # a DELETE's answer cannot be partial: the rest would be gone
        response = self.fails(RSC.NOT_ACCEPTABLE, 4, "cse-in/Cbad/c", "Cbad", rcn=4)
        self.assertIn("rcn", response.debug or "")

    def test_ae_registrations_per_connection_are_rate_limited(self) -> None:
        for i in range(REGISTRATIONS_PER_MINUTE - 1):  # Cbad was the first
            self.register(f"Cflood{i}")
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            1,
            "cse-in",
            "Cone-more",
            ty=2,
            pc={"m2m:ae": {"api": "Nx", "rr": True}},
        )
        self.clock.advance(60)
        self.register("Clater")


class FanOutTests(CSETestCase):
    def test_duplicate_targets_collapse_in_verification_and_notification(self) -> None:
        aei = self.register("Cdup", poa=["ws://device:9000"])
        other = self.register("Cother", poa=["ws://other:9000"])
        self.create(f"cse-in/{aei}", 3, "m2m:cnt", aei, rn="c")
        d = self.handle(
            1,
            f"cse-in/{aei}/c",
            aei,
            ty=23,
            pc={"m2m:sub": {"nu": [other, f"cse-in/{other}", other] * 20, "enc": {"net": [3]}}},
        )
        verifications = self.sender.take()
        self.assertEqual([s.target for s in verifications], [other])
        verifications[0].answer(RSC.OK)
        self.successResultOf(d)
        self.create(f"cse-in/{aei}/c", 4, "m2m:cin", aei, con="x")
        self.assertEqual([s.target for s in self.flush()], [other])

    def test_a_large_fan_out_goes_out_in_batches_after_the_response(self) -> None:
        owner = self.register("Cowner")
        self.create(f"cse-in/{owner}", 3, "m2m:cnt", owner, rn="c", acpi=[])
        n = DELIVERY_BATCH * 3 + 5
        for i in range(n):
            self.subscribe(f"cse-in/{owner}/c", ADMIN, nu=[f"http://h{i}/n"], enc={"net": [3]})
        self.flush()  # what the subscriptions' own creation caused
        sizes: list[int] = []
        deliver = self.cse.notifier._deliver

        def spy(deliveries: list[object], start: int) -> None:
            before = len(self.sender.sent)
            deliver(deliveries, start)  # type: ignore[arg-type]
            sizes.append(len(self.sender.sent) - before)

        self.patch(self.cse.notifier, "_deliver", spy)
        response = self.call(1, f"cse-in/{owner}/c", owner, ty=4, pc={"m2m:cin": {"con": "x"}})
        self.assertEqual(response.rsc, RSC.CREATED)
        self.assertEqual(self.sender.take(), [])  # nothing before the response
        self.assertEqual(len(self.flush()), n)
        self.assertEqual(sizes, [DELIVERY_BATCH] * 3 + [5])  # one reactor turn each
