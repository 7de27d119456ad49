"""The <group> resource (ty 9) and its fan-out point ``fopt``.

Written from TS-0001 9.6.13 (<group>: memberType, currentNrOfMembers, maxNrOfMembers,
memberIDs, membersAccessControlPolicyIDs, memberTypeValidated, consistencyStrategy,
groupName), 9.6.14 (<fanOutPoint>), 10.2.7.2/10.2.7.4 (group CREATE/UPDATE: member validation)
and 10.2.7.6 (access members through the fanOutPoint: one request to each member, the
responses aggregated), TS-0004 7.4.13 and its codes 6010 MAX_NUMBER_OF_MEMBER_EXCEEDED and
6011 MEMBER_TYPE_INCONSISTENT.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.codes import RSC, Operation, ResourceType
from acmews.cse import CSEConfig
from acmews.cse.group import MAX_MEMBERS, MEMBER_TIMEOUT
from acmews.primitive import Response
from acmews.testing import ADMIN, URL
from tests.cse_helpers import CSETestCase

from .test_cse_remote import MN, csr
from .test_e2e import Notifications, StackTestCase
from .test_link import LinkTests
from .test_store_roundtrip_property import _Side

GRP = ResourceType.GRP
CNT = ResourceType.CNT


def grp(mid: list[str], mt: int = CNT, mnm: int = 10, **attrs: Any) -> dict[str, Any]:
    return {"m2m:grp": {"rn": "g", "mt": mt, "mid": mid, "mnm": mnm, **attrs}}


class GroupTestCase(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ae = self.register("Cgrp")
        self.cnts = [self.container(f"c{i}") for i in range(3)]

    def container(self, rn: str) -> str:
        r = self.call(self.ae.create("cse-in/cgrp", CNT, {"m2m:cnt": {"rn": rn}}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        ri: str = r.pc["m2m:cnt"]["ri"]
        return ri

    def group(self, mid: list[str], **attrs: Any) -> Response:
        return self.call(self.ae.create("cse-in/cgrp", GRP, grp(mid, **attrs)))

    def created(self, mid: list[str], **attrs: Any) -> dict[str, Any]:
        r = self.group(mid, **attrs)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        body: dict[str, Any] = r.pc["m2m:grp"]
        return body

    def rsps(self, r: Response) -> list[dict[str, Any]]:
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.assertEqual(list(r.pc), ["m2m:agr"])
        rsps: list[dict[str, Any]] = r.pc["m2m:agr"]["m2m:rsp"]
        return rsps


class GroupResourceTests(GroupTestCase):
    def test_created_with_its_members(self) -> None:
        """TS-0001 9.6.13: cnm counts mid; csy defaults to 1 (ABANDON_MEMBER); mtv is true
        once every member was validated; a duplicate member is kept once (10.2.7.2)."""
        body = self.created([*self.cnts, self.cnts[0]], gn="all")
        self.assertEqual(body["ty"], GRP)
        self.assertEqual(body["mid"], self.cnts)
        self.assertEqual((body["cnm"], body["mnm"], body["mt"]), (3, 10, CNT))
        self.assertEqual((body["mtv"], body["csy"], body["gn"]), (True, 1, "all"))
        got = self.call(self.ae.retrieve("cse-in/cgrp/g")).pc["m2m:grp"]
        self.assertEqual(got, body)
        self.assertIn(int(GRP), self.cse.base.attrs["srt"])

    def test_more_members_than_mnm_is_6010(self) -> None:
        """TS-0001 10.2.7.2/10.2.7.4: MAX_NUMBER_OF_MEMBER_EXCEEDED on CREATE and UPDATE."""
        r = self.group(self.cnts, mnm=2)
        self.assertEqual(r.rsc, RSC.MAX_NUMBER_OF_MEMBER_EXCEEDED, r.debug)
        self.created(self.cnts, mnm=3)
        r = self.call(self.ae.update("cse-in/cgrp/g", {"m2m:grp": {"mnm": 2}}))
        self.assertEqual(r.rsc, RSC.MAX_NUMBER_OF_MEMBER_EXCEEDED, r.debug)

    def test_a_thousand_members(self) -> None:
        """mid may hold more than the 256 entries of other lists (TS-0001 leaves mnm open):
        up to acmews.cse.group.MAX_MEMBERS."""
        mid = [f"m{i}" for i in range(MAX_MEMBERS)]
        r = self.group(mid, mnm=MAX_MEMBERS)
        self.assertEqual((r.rsc, r.pc["m2m:grp"]["cnm"]), (RSC.CREATED, 0), r.debug)
        r = self.call(self.ae.create("cse-in/cgrp", GRP, grp([*mid, "x"], rn="h", mnm=20_000)))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)

    def test_abandon_member(self) -> None:
        """csy 1: a member of another type, or that does not exist, is removed from mid."""
        body = self.created([self.cnts[0], "Cgrp", "nothing-here", self.cnts[1]])
        self.assertEqual((body["mid"], body["cnm"]), (self.cnts[:2], 2))

    def test_abandon_group(self) -> None:
        """csy 2: the group is not created (6011 MEMBER_TYPE_INCONSISTENT)."""
        for bad in ("Cgrp", "nothing-here"):
            r = self.group([self.cnts[0], bad], csy=2)
            self.assertEqual(r.rsc, RSC.MEMBER_TYPE_INCONSISTENT, r.debug)
            self.assertIn(bad, r.debug or "")

    def test_set_mixed(self) -> None:
        """csy 3: memberType becomes mixed (24) and the member stays."""
        body = self.created([self.cnts[0], "Cgrp"], csy=3)
        self.assertEqual(
            (body["mt"], body["mid"], body["mtv"]), (24, [self.cnts[0], "Cgrp"], True)
        )

    def test_update_validates_mid_again(self) -> None:
        """TS-0001 10.2.7.4: new memberIDs are validated as on CREATE; cnm follows."""
        self.created(self.cnts[:1])
        r = self.call(self.ae.update("cse-in/cgrp/g", {"m2m:grp": {"mid": [*self.cnts, "Cgrp"]}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual((r.pc["m2m:grp"]["mid"], r.pc["m2m:grp"]["cnm"]), (self.cnts, 3))
        for readonly in ({"cnm": 1}, {"mtv": False}, {"mt": 4}, {"csy": 2}):
            r = self.call(self.ae.update("cse-in/cgrp/g", {"m2m:grp": readonly}))
            self.assertEqual(r.rsc, RSC.BAD_REQUEST, readonly)

    def test_bad_attributes(self) -> None:
        """TS-0004 7.4.13: mt, mnm, mid mandatory; csy 1-3; macp names ACPs."""
        for body in (
            {"rn": "x", "mt": 3, "mid": []},
            {"rn": "x", "mt": 3, "mid": [], "mnm": 0},
            {"rn": "x", "mt": 99, "mid": [], "mnm": 1},
            {"rn": "x", "mt": 3, "mid": [], "mnm": 1, "csy": 4},
            {"rn": "x", "mt": 3, "mid": [], "mnm": 1, "macp": ["nothing"]},
            {"rn": "x", "mt": 3, "mid": [""], "mnm": 1},
            {"rn": "x", "mt": 3, "mid": "c0", "mnm": 1},
        ):
            r = self.call(self.ae.create("cse-in/cgrp", GRP, {"m2m:grp": body}))
            self.assertEqual(r.rsc, RSC.BAD_REQUEST, body)


class FanOutTests(GroupTestCase):
    def test_retrieve_through_fopt(self) -> None:
        """TS-0001 10.2.7.6: the request goes to each member and the answers come back
        aggregated (m2m:agr), one response primitive per member."""
        self.created(self.cnts)
        r = self.call(self.ae.retrieve("cse-in/cgrp/g/fopt"))
        rsps = self.rsps(r)
        self.assertEqual([x["fr"] for x in rsps], self.cnts)
        self.assertEqual({x["rsc"] for x in rsps}, {RSC.OK})
        self.assertEqual([x["pc"]["m2m:cnt"]["ri"] for x in rsps], self.cnts)
        self.assertEqual({x["rqi"] for x in rsps}, {r.rqi})
        self.assertEqual({x["to"] for x in rsps}, {"Cgrp"})

    def test_create_through_fopt_with_a_relative_path(self) -> None:
        """TS-0001 9.6.14: a request to fopt/<path> goes to each member's <path>: a CREATE
        into each container, then its latest (la) retrieved through fopt/la."""
        self.created(self.cnts)
        r = self.call(
            self.ae.create("cse-in/cgrp/g/fopt", ResourceType.CIN, {"m2m:cin": {"con": "on"}})
        )
        self.assertEqual({x["rsc"] for x in self.rsps(r)}, {RSC.CREATED})
        for ri in self.cnts:
            self.assertEqual(self.call(self.ae.retrieve(ri)).pc["m2m:cnt"]["cni"], 1)
        rsps = self.rsps(self.call(self.ae.retrieve("cse-in/cgrp/g/fopt/la")))
        self.assertEqual([x["pc"]["m2m:cin"]["con"] for x in rsps], ["on"] * 3)
        self.assertEqual([x["fr"] for x in rsps], [f"{ri}/la" for ri in self.cnts])

    def test_a_members_failure_is_its_own(self) -> None:
        """TS-0001 10.2.7.6: each member's response in the aggregate (a member deleted
        since: 4004 for it alone)."""
        self.created(self.cnts)
        self.assertEqual(self.call(self.ae.delete("cse-in/cgrp/c1")).rsc, RSC.DELETED)
        rsps = self.rsps(self.call(self.ae.retrieve("cse-in/cgrp/g/fopt")))
        self.assertEqual([x["rsc"] for x in rsps], [RSC.OK, RSC.NOT_FOUND, RSC.OK])
        self.assertIn("m2m:dbg", rsps[1]["pc"])

    def test_update_and_delete_through_fopt(self) -> None:
        """TS-0001 10.2.7.6: any operation is fanned out (UPDATE, DELETE)."""
        self.created(self.cnts)
        r = self.call(self.ae.update("cse-in/cgrp/g/fopt", {"m2m:cnt": {"lbl": ["x"]}}))
        self.assertEqual([x["pc"]["m2m:cnt"]["lbl"] for x in self.rsps(r)], [["x"]] * 3)
        r = self.call(self.ae.delete("cse-in/cgrp/g/fopt"))
        self.assertEqual({x["rsc"] for x in self.rsps(r)}, {RSC.DELETED})
        self.assertEqual(self.call(self.ae.retrieve(self.cnts[0])).rsc, RSC.NOT_FOUND)

    def test_access_through_macp(self) -> None:
        """TS-0001 9.6.13: the ACPs of membersAccessControlPolicyIDs decide who may access
        the members through fopt; without them the group's own privileges; each member
        request is still the originator's own (its host checks it)."""
        self.created(self.cnts)
        other = self.register("Cother")
        r = self.call(other.retrieve("cse-in/cgrp/g/fopt"))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)
        acr = {"acr": [{"acor": ["Cother"], "acop": 2}]}
        admin = {"acr": [{"acor": ["Cgrp"], "acop": 63}]}
        r = self.call(
            self.ae.create(
                "cse-in/cgrp", ResourceType.ACP, {"m2m:acp": {"rn": "p", "pv": acr, "pvs": admin}}
            )
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        acp = r.pc["m2m:acp"]["ri"]
        r = self.call(self.ae.update("cse-in/cgrp/g", {"m2m:grp": {"macp": [acp]}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        rsps = self.rsps(self.call(other.retrieve("cse-in/cgrp/g/fopt")))
        # past the fan-out point, each container refuses Cother (no acpi of its own)
        self.assertEqual({x["rsc"] for x in rsps}, {RSC.ORIGINATOR_HAS_NO_PRIVILEGE})
        r = self.call(self.ae.update(self.cnts[0], {"m2m:cnt": {"acpi": [acp]}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        rsps = self.rsps(self.call(other.retrieve("cse-in/cgrp/g/fopt")))
        self.assertEqual([x["rsc"] for x in rsps], [RSC.OK, 4103, 4103])
        r = self.call(other.delete("cse-in/cgrp/g/fopt"))  # macp grants RETRIEVE only
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)

    def test_subscribing_to_the_members_through_fopt(self) -> None:
        """TS-0001 10.2.7.6 and 10.2.7.11 (subscribe to the members of a group): a
        <subscription> CREATE to fopt is made on each member, each verified with the
        notification target; a member's change is then notified by that member's
        subscription."""
        self.created(self.cnts)
        inbox = Notifications()
        self.register("Cwatch", handler=inbox)
        sub = {"m2m:sub": {"rn": "s", "nu": ["Cwatch"], "enc": {"net": [3]}}}
        r = self.call(self.ae.create("cse-in/cgrp/g/fopt", ResourceType.SUB, sub))
        rsps = self.rsps(r)
        self.assertEqual({x["rsc"] for x in rsps}, {RSC.CREATED})
        self.assertEqual([q.pc["m2m:sgn"].get("vrq") for q in inbox.requests], [True] * 3)
        r = self.call(
            self.ae.create("cse-in/cgrp/c2", ResourceType.CIN, {"m2m:cin": {"con": "hot"}})
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        (event,) = inbox.events()
        self.assertEqual(event["nev"]["rep"]["m2m:cin"]["con"], "hot")
        self.assertEqual(event["sur"], f"/id-in/{rsps[2]['pc']['m2m:sub']['ri']}")

    def test_not_a_fan_out_point(self) -> None:
        """Only the segment fopt of a group fans out."""
        self.created(self.cnts)
        self.assertEqual(self.call(self.ae.retrieve("cse-in/cgrp/g/foptx")).rsc, RSC.NOT_FOUND)
        r = self.call(self.ae.retrieve("cse-in/cgrp/c0/fopt"))
        self.assertEqual(r.rsc, RSC.NOT_FOUND, r.debug)


class RemoteMemberTests(CSETestCase):
    config = CSEConfig(poa=(URL,), allowed_csr_originators=("/*",))

    def setUp(self) -> None:
        super().setUp()
        self.ok(1, "cse-in", MN, ty=16, pc=csr())
        self.cnt = self.create("cse-in", CNT, "m2m:cnt", rn="local")["ri"]

    def group(self, mid: list[str], answers: list[Response | None], **attrs: Any) -> Response:
        """CREATE a group; each member on MN is RETRIEVEd (all at once) and answered with
        ``answers`` in turn (None: never, so it times out)."""
        d = self.handle(1, "cse-in", ty=9, pc=grp(mid, **attrs))
        assert isinstance(d, Deferred)
        sent = self.sender.take()
        self.assertEqual([s.request.op for s in sent], [2] * len(answers))
        self.assertEqual([s.request.to for s in sent], [m for m in mid if m.startswith(MN)])
        for s, answer in zip(sent, answers, strict=True):
            if answer is not None:
                answer.rqi = s.request.rqi
                s.deferred.callback(answer)
        if None in answers:
            self.assertNoResult(d)
            self.clock.advance(MEMBER_TIMEOUT)
        return self.successResultOf(d)

    def test_members_on_another_cse_are_retrieved_and_validated(self) -> None:
        """TS-0001 10.2.7.2: the group's host checks each member, also one on another CSE
        (through it): one that does not exist or has another type is handled by csy; one
        that cannot be reached in time stays unchecked, and memberTypeValidated is false."""
        remote = [f"{MN}/c{i}" for i in range(4)]
        answers: list[Response | None] = [
            Response(2000, "", "4", {"m2m:cnt": {"ty": 3}}),
            Response(4004, "", "4", {"m2m:dbg": "no"}),
            Response(2000, "", "4", {"m2m:cin": {"ty": 4}}),
            None,
        ]
        r = self.group([self.cnt, *remote], answers)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        body = r.pc["m2m:grp"]
        self.assertEqual(body["mid"], [self.cnt, remote[0], remote[3]])
        self.assertEqual((body["cnm"], body["mtv"]), (3, False))
        ok = Response(2000, "", "4", {"m2m:cnt": {"ty": 3}})
        r = self.group([remote[0]], [ok], rn="g2")
        self.assertTrue(r.pc["m2m:grp"]["mtv"])
        r = self.group([remote[1]], [Response(4004, "", "4", {})], rn="g3", csy=2)
        self.assertEqual(r.rsc, RSC.MEMBER_TYPE_INCONSISTENT, r.debug)
        # TS-0001 10.2.7.4: an UPDATE of mid is checked the same way
        d = self.handle(3, "cse-in/g2", pc={"m2m:grp": {"mid": remote[:2]}})
        assert isinstance(d, Deferred)
        sent = self.sender.take()
        self.assertEqual([s.request.to for s in sent], remote[:2])
        sent[0].deferred.callback(Response(2000, sent[0].request.rqi, "4", {"m2m:cnt": {"ty": 3}}))
        self.assertNoResult(d)
        sent[1].deferred.callback(Response(4004, sent[1].request.rqi, "4", {}))
        r = self.successResultOf(d)
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual((r.pc["m2m:grp"]["mid"], r.pc["m2m:grp"]["mtv"]), (remote[:1], True))

    def test_remote_members_forwarded_at_once(self) -> None:
        """TS-0001 10.2.7.6: a member on another CSE gets its request through the CSE that
        hosts it (one forwarded request each, all sent before any answer: pipelined on the
        link); a member's timeout is its own 4008 (TS-0004 REQUEST_TIMEOUT)."""
        remote = [f"{MN}/cnt{i}" for i in range(3)]
        ok = [Response(2000, "", "4", {"m2m:cnt": {"ty": 3}}) for _ in remote]
        r = self.group([self.cnt, *remote], list(ok))
        self.assertTrue(r.pc["m2m:grp"]["mtv"])
        d = self.handle(2, "cse-in/g/fopt/la", rqi="fan")
        assert isinstance(d, Deferred)
        sent = self.sender.take()
        self.assertEqual([s.request.to for s in sent], [f"{m}/la" for m in remote])
        self.assertEqual({s.target for s in sent}, {MN})
        self.assertEqual(len({s.request.rqi for s in sent}), 3)
        self.assertNoResult(d)
        sent[0].deferred.callback(Response(2000, sent[0].request.rqi, "4", {"m2m:cin": {}}))
        sent[2].deferred.callback(Response(4004, sent[2].request.rqi, "4", {"m2m:dbg": "no"}))
        self.assertNoResult(d)
        self.clock.advance(MEMBER_TIMEOUT)
        r = self.successResultOf(d)
        rsps = r.pc["m2m:agr"]["m2m:rsp"]
        self.assertEqual([x["rsc"] for x in rsps], [4004, 2000, 4008, 4004])  # la: no cin
        self.assertEqual([x["fr"] for x in rsps], [f"{m}/la" for m in [self.cnt, *remote]])
        self.assertEqual({x["rqi"] for x in rsps}, {"fan"})
        self.assertEqual(self.cse.forwarding, {})


class StoreTests(SynchronousTestCase):
    def test_a_group_round_trips_through_both_stores(self) -> None:
        """A group (and its fan-out through fopt) is the same on the memory and the SQLite
        store, also after the SQLite one restarts."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        memory = _Side(self, None)
        durable = _Side(self, os.path.join(directory, "acmews.db"))
        for side in (memory, durable):
            r = side.call(Operation.CREATE, "cse-in", ADMIN, ty=3, pc={"m2m:cnt": {"rn": "c"}})
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            body = grp([r.pc["m2m:cnt"]["ri"], "nothing"], macp=[], gn="n", lbl=["a"])
            r = side.call(Operation.CREATE, "cse-in", ADMIN, ty=9, pc=body)
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        before = memory.tree()
        self.assertEqual(durable.tree(), before)
        self.assertEqual(before["cse-in/g"]["m2m:grp"]["cnm"], 1)
        durable.restart()
        self.assertEqual(durable.tree(), before)
        r = durable.call(Operation.RETRIEVE, "cse-in/g/fopt", ADMIN)
        self.assertEqual(r.pc["m2m:agr"]["m2m:rsp"][0]["pc"]["m2m:cnt"]["rn"], "c")
        durable.stop()


class LinkedMemberTests(TestCase):
    """Members on an MN-CSE reached through its one WebSocket to this IN-CSE (iosim)."""

    setUp = LinkTests.setUp
    tearDown = LinkTests.tearDown
    flush = LinkTests.flush
    make_link = LinkTests.make_link
    start = LinkTests.start
    on = LinkTests.on

    def test_fopt_over_the_cse_link(self) -> None:
        """TS-0001 10.2.7.6: members on another CSE get their requests through the
        CSE-to-CSE link, all on its one connection; the answers are aggregated here."""
        self.start()
        allow = {"acr": [{"acor": ["/id-in/CAdmin"], "acop": 63}]}
        r = self.on(
            self.mn,
            Operation.CREATE,
            "cse-mn",
            "CAdmin",
            ty=1,
            pc={"m2m:acp": {"rn": "p", "pv": allow, "pvs": allow}},
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        acp = r.pc["m2m:acp"]["ri"]
        mid = []
        for i in range(3):
            r = self.on(
                self.mn,
                Operation.CREATE,
                "cse-mn",
                "CAdmin",
                ty=3,
                pc={"m2m:cnt": {"rn": f"c{i}", "acpi": [acp]}},
            )
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            mid.append(f"/id-mn/{r.pc['m2m:cnt']['ri']}")
        r = self.on(self.inn, Operation.CREATE, "cse-in", "CAdmin", ty=9, pc=grp(mid))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual((r.pc["m2m:grp"]["mid"], r.pc["m2m:grp"]["mtv"]), (mid, True))
        r = self.on(self.inn, Operation.RETRIEVE, "cse-in/g/fopt", "CAdmin")
        rsps = r.pc["m2m:agr"]["m2m:rsp"]
        self.assertEqual([x["rsc"] for x in rsps], [RSC.OK] * 3)
        self.assertEqual([x["pc"]["m2m:cnt"]["rn"] for x in rsps], ["c0", "c1", "c2"])
        self.assertEqual(len(self.endpoint.pumps), 1)
