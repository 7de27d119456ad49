"""``<node>`` (ty 14) and ``<mgmtObj>`` (ty 13) through the binding (TS-0001 9.6.15, 9.6.18
and annex D; TS-0004 7.4.15, 7.4.18 and Table 6.3.4.2.x for ``mgd``): specializations
validated, an action attribute carried out by the device's AE."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation, ResourceType
from acmews.primitive import Response
from acmews.testing import ADMIN

from .test_e2e import Notifications, StackTestCase
from .test_store_roundtrip_property import _Side

MGO = ResourceType.MGMTOBJ
REBOOT = {"m2m:rbo": {"rn": "reboot", "mgd": 1009, "rbo": False, "far": False}}


class ManagementTests(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.device = Notifications()
        self.ae = self.register("Cdev", self.device, nl="nod1")
        self.admin = self.client(ADMIN)
        node = {"m2m:nod": {"rn": "node1", "ni": "urn:dev:1", "hael": ["Cdev"]}}
        r = self.call(self.admin.create("cse-in", ResourceType.NOD, node, rqi="n"))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(r.pc["m2m:nod"]["ty"], 14)

    def create(self, content: dict[str, Any]) -> Response:
        return self.call(self.admin.create("cse-in/node1", MGO, content))

    def test_specializations_validated(self) -> None:
        """TS-0001 annex D: each specialization has its own attributes and mgd; its content
        key tells which (4000 for a wrong mgd, a missing mandatory one, a bad value)."""
        r = self.create({"m2m:bat": {"rn": "bat", "mgd": 1006, "btl": 80, "bts": 1}})
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(r.pc["m2m:bat"]["ty"], 13)
        self.assertEqual(r.pc["m2m:bat"]["mgd"], 1006)
        for bad in (
            {"m2m:bat": {"mgd": 1007, "btl": 80, "bts": 1}},  # the wrong mgd
            {"m2m:bat": {"mgd": 1006, "btl": 101, "bts": 1}},  # 0..100
            {"m2m:bat": {"mgd": 1006, "btl": 80}},  # bts mandatory
            {"m2m:mem": {"mgd": 1003, "mma": 1, "mmt": 2, "btl": 3}},  # not memory's
            {"m2m:xyz": {"mgd": 1006}},  # no such specialization
        ):
            r = self.create(bad)
            self.assertEqual(r.rsc, RSC.BAD_REQUEST, bad)
        r = self.create({"m2m:dvi": {"mgd": 1007, "dlb": "l", "man": "m", "mod": "x", "dty": "t"}})
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        r = self.call(self.admin.retrieve("cse-in/node1/bat"))
        self.assertEqual(r.pc["m2m:bat"]["btl"], 80)
        r = self.call(self.admin.update("cse-in/node1/bat", {"m2m:bat": {"btl": 20}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        r = self.call(self.admin.update("cse-in/node1/bat", {"m2m:bat": {"mgd": 1003}}))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)

    def test_discovered_by_type(self) -> None:
        """TS-0004 7.3.3.17: discovery by ty finds the node and its mgmtObjs of any
        specialization."""
        self.assertEqual(self.create(REBOOT).rsc, RSC.CREATED)
        bat = {"m2m:bat": {"rn": "bat", "mgd": 1006, "btl": 80, "bts": 1}}
        self.assertEqual(self.create(bat).rsc, RSC.CREATED)
        r = self.call(self.admin.retrieve("cse-in", fc={"fu": 1, "ty": [13]}))
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.assertEqual(sorted(r.pc["m2m:uril"]), ["cse-in/node1/bat", "cse-in/node1/reboot"])
        r = self.call(self.admin.retrieve("cse-in", fc={"fu": 1, "ty": [14]}))
        self.assertEqual(r.pc["m2m:uril"], ["cse-in/node1"])

    def test_only_under_a_node(self) -> None:
        """TS-0001 9.6.15: a mgmtObj is a child of a <node> (4108 elsewhere)."""
        r = self.call(self.admin.create("cse-in", MGO, REBOOT))
        self.assertEqual(r.rsc, RSC.INVALID_CHILD_RESOURCE_TYPE, r.debug)
        r = self.call(self.admin.create("cse-in", ResourceType.NOD, {"m2m:nod": {}}))
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)  # ni mandatory

    def test_reboot_delivered_to_the_device(self) -> None:
        """An UPDATE of reboot's rbo to true is delivered to the node's hosted AE (hael) as
        a NOTIFY over its connection; its 2000 makes the UPDATE 2004."""
        self.assertEqual(self.create(REBOOT).rsc, RSC.CREATED)
        r = self.call(self.admin.update("cse-in/node1/reboot", {"m2m:rbo": {"rbo": True}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(len(self.device.requests), 1)
        action = self.device.requests[0]
        self.assertEqual(action.op, Operation.NOTIFY)
        self.assertEqual(action.pc["m2m:rbo"]["rbo"], True)
        self.assertEqual(action.pc["m2m:rbo"]["mgd"], 1009)
        r = self.call(self.admin.update("cse-in/node1/reboot", {"m2m:rbo": {"rbo": False}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(len(self.device.requests), 1)  # not an action: nothing sent

    def test_device_error_reflected(self) -> None:
        """The device's error answer refuses the UPDATE with its rsc; nothing changes."""
        self.assertEqual(self.create(REBOOT).rsc, RSC.CREATED)
        self.device.rsc = 5000
        r = self.call(self.admin.update("cse-in/node1/reboot", {"m2m:rbo": {"far": True}}))
        self.assertEqual(r.rsc, 5000, r.debug)
        r = self.call(self.admin.retrieve("cse-in/node1/reboot"))
        self.assertEqual(r.pc["m2m:rbo"]["far"], False)

    def test_device_found_by_nl(self) -> None:
        """Without hael, the AE whose nl names the node carries out its actions; none at
        all: 5103."""
        r = self.call(self.admin.update("cse-in/node1", {"m2m:nod": {"hael": []}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        node_ri = r.pc["m2m:nod"]["ri"]
        self.assertEqual(self.create(REBOOT).rsc, RSC.CREATED)
        r = self.call(self.admin.update("cse-in/node1/reboot", {"m2m:rbo": {"rbo": True}}))
        self.assertEqual(r.rsc, RSC.TARGET_NOT_REACHABLE, r.debug)  # nl is "nod1", not it
        r = self.call(self.ae.update("cse-in/cdev", {"m2m:ae": {"nl": node_ri}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        r = self.call(self.admin.update("cse-in/node1/reboot", {"m2m:rbo": {"rbo": True}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        self.assertEqual(len(self.device.requests), 1)


class DurableManagementTests(SynchronousTestCase):
    def test_mgmt_obj_round_trips(self) -> None:
        """A node and a mgmtObj round-trip through the SQLite store, the mgmtObj still of
        its specialization (its key) after a restart."""
        side = _Side(self, self.mktemp())
        self.addCleanup(side.stop)
        nod = {"m2m:nod": {"rn": "n", "ni": "urn:dev:1"}}
        self.assertEqual(side.call(Operation.CREATE, "cse-in", ADMIN, ty=14, pc=nod).rsc, 2001)
        fwr = {"m2m:fwr": {"rn": "f", "mgd": 1001, "vr": "1", "fwn": "x", "url": "u", "ud": False}}
        created = side.call(Operation.CREATE, "cse-in/n", ADMIN, ty=13, pc=fwr)
        self.assertEqual(created.rsc, RSC.CREATED, created.debug)
        side.restart()
        self.assertEqual(side.call(Operation.RETRIEVE, "cse-in/n/f", ADMIN).pc, created.pc)
        updated = side.call(Operation.UPDATE, "cse-in/n/f", ADMIN, pc={"m2m:fwr": {"vr": "2"}})
        self.assertEqual(updated.rsc, RSC.UPDATED, updated.debug)
        self.assertEqual(updated.pc["m2m:fwr"]["vr"], "2")
