"""The embedded CSE: resources, registration, addressing, access control, rcn, errors."""

from __future__ import annotations

from typing import Any

import cbor2
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from acmews.codes import RSC, ResourceType
from acmews.cse import CSE, Batch, CSEConfig, IResourceStore, MemoryResourceStore, Resource
from acmews.cse.resource import KINDS, Record
from acmews.errors import TargetNotReachable
from acmews.interfaces import IRequestHandler
from acmews.primitive import Response
from acmews.testing import ADMIN, FakeSender
from tests.cse_helpers import CSETestCase


class CSEBaseTests(CSETestCase):
    def test_provides_interfaces(self) -> None:
        self.assertTrue(verifyObject(IRequestHandler, self.cse))
        self.assertTrue(verifyObject(IResourceStore, self.cse.store))

    def test_retrieve_cse_base(self) -> None:
        response = self.retrieve("cse-in", rqi="abc", rvi="3")
        self.assertEqual(response.rsc, RSC.OK)
        self.assertEqual(
            (response.rqi, response.rvi, response.to, response.fr),
            ("abc", "3", ADMIN, "/id-in"),
        )
        self.assertEqual(response.ot, "20231114T221320,250000")
        cb = response.pc["m2m:cb"]
        self.assertEqual(cb["ri"], "id-in")
        self.assertEqual(cb["rn"], "cse-in")
        self.assertEqual(cb["csi"], "/id-in")
        self.assertEqual(cb["cst"], 1)
        self.assertEqual(cb["ty"], 5)
        self.assertEqual(cb["srv"], ["2a", "3", "4", "5"])
        self.assertEqual(cb["poa"], ["ws://127.0.0.1:8180"])
        self.assertEqual(cb["ct"], "20231114T221320,250000")

    def test_anyone_may_retrieve_cse_base(self) -> None:
        for fr in ("Cunknown", "Sother", "/id-mn"):
            self.assertEqual(self.retrieve("cse-in", fr).rsc, RSC.OK)
            self.assertEqual(self.retrieve("/id-in", fr).rsc, RSC.OK)
            self.assertEqual(self.retrieve("cse-in", fr, rcn=5).rsc, RSC.OK)

    def test_update_is_visible_and_old_representations_unchanged(self) -> None:
        before = self.retrieve("cse-in").pc
        self.clock.advance(2)
        response = self.ok(3, "cse-in", pc={"m2m:cb": {"lbl": ["x"], "poa": ["ws://h:1"]}})
        self.assertEqual(response.rsc, RSC.UPDATED)
        after = self.retrieve("cse-in").pc["m2m:cb"]
        self.assertEqual(after["lbl"], ["x"])
        self.assertEqual(after["poa"], ["ws://h:1"])
        self.assertEqual(after["lt"], "20231114T221322,250000")
        self.assertNotIn("lbl", before["m2m:cb"])
        self.assertEqual(before["m2m:cb"]["poa"], ["ws://127.0.0.1:8180"])

    def test_cse_base_cannot_be_deleted_or_updated_by_others(self) -> None:
        self.fails(RSC.OPERATION_NOT_ALLOWED, 4, "cse-in")
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 3, "cse-in", "Cx", pc={"m2m:cb": {"lbl": []}})
        self.fails(RSC.BAD_REQUEST, 3, "cse-in", pc={"m2m:cb": {"csi": "/x"}})

    def test_injected_store_is_used(self) -> None:
        store = MemoryResourceStore()
        cse = CSE(CSEConfig(), FakeSender(), self.clock, store)
        self.assertIs(cse.store, store)
        self.assertIsNotNone(store.get("id-in"))
        # a second CSE on the same store finds the CSEBase instead of making another
        self.assertIs(CSE(CSEConfig(), FakeSender(), self.clock, store).base, cse.base)
        self.assertEqual(len(store), 1)


class RecordTree(CSETestCase):
    """A tree of every resource type, and its records (no tests of its own)."""

    def tree(self) -> dict[str, Any]:
        aei = self.register("Cmyae", poa=["ws://device:9000"])
        self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c", mni=3)
        for con in ("1", {1: "x"}, "3"):
            self.create("cse-in/Cmyae/c", 4, "m2m:cin", aei, con=con)
        self.create(
            "cse-in/Cmyae",
            1,
            "m2m:acp",
            aei,
            rn="acp",
            pv={"acr": [{"acor": ["Cother"], "acop": 2}]},
            pvs={"acr": [{"acor": [aei], "acop": 63}]},
        )
        return self.subscribe(
            "cse-in/Cmyae/c", aei, nu=[aei], enc={"net": [3]}, exc=5, su="http://su"
        )

    def records(self) -> list[Record]:
        """Every record, parents before children and siblings in creation order."""
        out: list[Record] = []
        stack = [self.cse.base]
        while stack:
            resource = stack.pop()
            out.append(resource.record())
            stack.extend(reversed(self.cse.store.children(resource.ri)))
        return out


class RecordTests(RecordTree):
    """Everything a store persists is a resource's record: a store rebuilt from the records
    serves a new CSE exactly like the old one."""

    def test_round_trip(self) -> None:
        self.tree()
        records = self.records()
        self.assertEqual(len(records), len(self.cse.store))  # type: ignore[arg-type]
        for ty, attrs, srn, creator, owner in records:
            self.assertIsInstance(ty, int)
            resource = Resource.from_record(ty, attrs, srn, creator, owner)
            stored = self.cse.store.get(attrs["ri"])
            assert stored is not None
            self.assertIs(resource.kind, stored.kind)
            self.assertEqual(resource.record(), stored.record())
            self.assertEqual(resource.pc, stored.pc)
        self.assertRaises(ValueError, Resource.from_record, 99, {"ri": "x"}, "cse-in/x", None)

    def test_reloaded_store_serves_a_new_cse(self) -> None:
        sub = self.tree()
        stored = cbor2.dumps(self.records())  # what a durable store keeps
        store = MemoryResourceStore()
        batch = Batch(store)
        for record in cbor2.loads(stored):
            batch.add(Resource.from_record(*record))
        store.apply(batch)
        self.cse = CSE(CSEConfig(poa=("ws://127.0.0.1:8180",)), self.sender, self.clock, store)
        self.assertEqual(self.cse.base.record(), self.records()[0])
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la", "Cmyae").pc["m2m:cin"]["con"], "3")
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "1")
        self.assertEqual(
            self.retrieve("cse-in/Cmyae/c", "Cother").rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        )
        self.ok(3, "cse-in/Cmyae/c", "Cmyae", pc={"m2m:cnt": {"acpi": ["cse-in/Cmyae/acp"]}})
        self.assertEqual(self.retrieve("cse-in/Cmyae/c", "Cother").rsc, RSC.OK)
        self.fails(
            RSC.ORIGINATOR_HAS_ALREADY_REGISTERED,
            1,
            "cse-in",
            "Cmyae",
            ty=2,
            pc={"m2m:ae": {"api": "Nx", "rr": True, "rn": "again"}},
        )
        # the container's counters and limit, the subscription's exc and su
        self.create("cse-in/Cmyae/c", 4, "m2m:cin", "Cmyae", con="4")
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (3, 1 + len('{"1":"x"}') + 1))
        self.assertEqual(self.retrieve(sub["ri"]).pc["m2m:sub"]["exc"], 4)
        [sent] = self.flush()
        self.assertEqual(
            (sent.target, sent.poa, sent.store), ("Cmyae", ("ws://device:9000",), True)
        )
        self.ok(4, "cse-in/Cmyae", "Cmyae")
        [sud] = self.flush()
        self.assertEqual(sud.target, "http://su")
        self.assertEqual(len(store), 1)


class RegistrationTests(CSETestCase):
    def test_assigned_ae_id(self) -> None:
        seen = set()
        for fr in (None, "", "C"):
            response = self.ok(1, "cse-in", fr, ty=2, pc={"m2m:ae": {"api": "Nx", "rr": False}})
            self.assertEqual(response.rsc, RSC.CREATED)
            ae = response.pc["m2m:ae"]
            self.assertTrue(ae["aei"].startswith("C"))
            self.assertGreater(len(ae["aei"]), 1)
            self.assertEqual(ae["ri"], ae["aei"])
            self.assertEqual(ae["pi"], "id-in")
            self.assertEqual(ae["ty"], 2)
            seen.add(ae["aei"])
        self.assertEqual(len(seen), 3)

    def test_requested_ae_id_and_attributes_kept(self) -> None:
        response = self.ok(
            1,
            "cse-in",
            "Cmyae",
            ty=2,
            pc={"m2m:ae": {"api": "Rapp", "rr": True, "poa": ["ws://x"], "srv": ["3"], "rn": "n"}},
        )
        ae = response.pc["m2m:ae"]
        self.assertEqual((ae["aei"], ae["ri"], ae["rn"]), ("Cmyae", "Cmyae", "n"))
        self.assertEqual(
            (ae["rr"], ae["poa"], ae["srv"], ae["api"]), (True, ["ws://x"], ["3"], "Rapp")
        )
        self.assertEqual(self.register("Sgateway"), "Sgateway")
        self.assertEqual(self.retrieve("cse-in/n", "Cmyae").pc["m2m:ae"]["aei"], "Cmyae")

    def test_taken_ae_id_is_4117(self) -> None:
        self.register("Cmyae")
        self.fails(
            RSC.ORIGINATOR_HAS_ALREADY_REGISTERED,
            1,
            "cse-in",
            "Cmyae",
            ty=2,
            pc={"m2m:ae": {"api": "Nx", "rr": True, "rn": "other"}},
        )

    def test_admin_id_cannot_be_registered(self) -> None:
        body = {"m2m:ae": {"api": "Nx", "rr": True, "rn": "a"}}
        self.fails(RSC.ORIGINATOR_HAS_ALREADY_REGISTERED, 1, "cse-in", ADMIN, ty=2, pc=body)
        self.assertIsNone(self.cse.store.get(ADMIN))

    def test_invalid_ae_is_4000(self) -> None:
        for body in (
            {"api": "Xapp", "rr": True},
            {"api": "", "rr": True},
            {"api": 5, "rr": True},
            {"api": "Nx"},
            {"api": "Nx", "rr": "yes"},
            {"api": "Nx", "rr": True, "poa": "ws://x"},
            {"api": "Nx", "rr": True, "bogus": 1},
            {"api": "Nx", "rr": True, "aei": "Cx"},
            {"api": "Nx", "rr": True, "ri": "Cx"},
            {"api": "Nx", "rr": True, "rn": "a/b"},
        ):
            self.fails(RSC.BAD_REQUEST, 1, "cse-in", None, ty=2, pc={"m2m:ae": body})
        self.fails(RSC.BAD_REQUEST, 1, "cse-in", None, ty=2, pc={"m2m:cnt": {}})
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in", "bad", ty=2, pc={"m2m:ae": {"api": "N", "rr": True}}
        )
        self.assertEqual(len(self.cse.store), 1)  # type: ignore[arg-type]

    def test_ae_only_under_cse_base(self) -> None:
        aei = self.register("Cmyae")
        self.fails(
            RSC.INVALID_CHILD_RESOURCE_TYPE,
            1,
            aei,
            "Cother",
            ty=2,
            pc={"m2m:ae": {"api": "Nx", "rr": True}},
        )

    def test_delete_ae_deletes_subtree(self) -> None:
        aei = self.register("Cmyae")
        cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c")
        cin = self.create("cse-in/Cmyae/c", 4, "m2m:cin", aei, con="x")
        response = self.ok(4, "cse-in/Cmyae", aei)
        self.assertEqual(response.rsc, RSC.DELETED)
        self.assertIsNone(response.pc)
        for ri in (aei, cnt["ri"], cin["ri"]):
            self.assertIsNone(self.cse.store.get(ri))
            self.fails(RSC.NOT_FOUND, 2, ri)
        self.assertEqual(len(self.cse.store), 1)  # type: ignore[arg-type]
        self.assertEqual(self.register("Cmyae"), "Cmyae")  # the AE-ID is free again


class ContainerTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae")

    def cin(self, con: Any, to: str = "cse-in/Cmyae/c") -> dict[str, Any]:
        return self.create(to, 4, "m2m:cin", self.aei, con=con)

    def test_container_and_instances(self) -> None:
        cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c", lbl=["a"])
        self.assertEqual((cnt["cni"], cnt["cbs"], cnt["rn"], cnt["ty"]), (0, 0, "c", 3))
        first = self.cin("héllo")
        self.assertEqual(first["cs"], 6)
        self.assertEqual(first["con"], "héllo")
        self.assertEqual(first["pi"], cnt["ri"])
        self.cin({"v": 1}, to=cnt["ri"])
        cnt = self.retrieve("cse-in/Cmyae/c", self.aei).pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (2, 6 + len('{"v":1}')))

    def test_content_json_cannot_carry_is_4000(self) -> None:
        # what only oneM2M.cbor carries; these used to answer 5000 (orjson could not size them)
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        self.assertEqual(self.cin(2**70)["cs"], len(str(2**70)))  # oneM2M.json reads it too
        self.assertEqual(self.cin({1: "x"})["cs"], len('{"1":"x"}'))
        for con in (b"\x00\x01", {"a": [b"x"]}, {1, 2}):
            response = self.fails(
                RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=4, pc={"m2m:cin": {"con": con}}
            )
            self.assertIn("'con'", response.debug or "")
        self.assertEqual(self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]["cni"], 2)

    def test_mni_evicts_oldest(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c", mni=2)
        ris = [self.cin(str(i))["ri"] for i in range(4)]
        self.assertIsNone(self.cse.store.get(ris[0]))
        self.assertIsNone(self.cse.store.get(ris[1]))
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["ri"], ris[2])
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la").pc["m2m:cin"]["ri"], ris[3])
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (2, 2))

    def test_mbs_evicts_oldest_and_rejects_oversize(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c", mbs=10)
        ris = [self.cin(con)["ri"] for con in ("aaaa", "bbbb", "cccc")]
        self.assertIsNone(self.cse.store.get(ris[0]))
        cnt = self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (2, 8))
        self.fails(
            RSC.NOT_ACCEPTABLE,
            1,
            "cse-in/Cmyae/c",
            self.aei,
            ty=4,
            pc={"m2m:cin": {"con": "x" * 11}},
        )

    def test_update_mni_evicts(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        for i in range(3):
            self.cin(str(i))
        response = self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"mni": 1}})
        self.assertEqual(response.rsc, RSC.UPDATED)
        self.assertEqual(response.pc["m2m:cnt"]["cni"], 1)
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "2")

    def test_la_ol_empty_and_delete(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        self.fails(RSC.NOT_FOUND, 2, "cse-in/Cmyae/c/la")
        self.fails(RSC.NOT_FOUND, 2, "cse-in/Cmyae/c/ol")
        self.fails(RSC.NOT_FOUND, 4, "cse-in/Cmyae/c/la")
        for con in ("1", "2", "3"):
            self.cin(con)
        response = self.ok(4, "cse-in/Cmyae/c/la", self.aei, rcn=1)
        self.assertEqual(response.pc["m2m:cin"]["con"], "3")
        self.ok(4, "cse-in/Cmyae/c/ol", self.aei)
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la").pc["m2m:cin"]["con"], "2")
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "2")
        self.assertEqual(self.retrieve("cse-in/Cmyae/c").pc["m2m:cnt"]["cni"], 1)
        self.fails(RSC.OPERATION_NOT_ALLOWED, 3, "cse-in/Cmyae/c/la", pc={"m2m:cin": {"con": "x"}})
        self.fails(
            RSC.OPERATION_NOT_ALLOWED, 1, "cse-in/Cmyae/c/la", ty=4, pc={"m2m:cin": {"con": "x"}}
        )

    def test_cin_immutable_and_validated(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        cin = self.cin("x")
        self.fails(RSC.OPERATION_NOT_ALLOWED, 3, cin["ri"], self.aei, pc={"m2m:cin": {"con": "y"}})
        self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=4, pc={"m2m:cin": {}})
        self.fails(
            RSC.BAD_REQUEST,
            1,
            "cse-in/Cmyae/c",
            self.aei,
            ty=4,
            pc={"m2m:cin": {"con": "x", "cs": 1}},
        )
        self.fails(
            RSC.BAD_REQUEST,
            1,
            "cse-in/Cmyae/c",
            self.aei,
            ty=4,
            pc={"m2m:cin": {"con": "x", "cnf": 1}},
        )
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=3, pc={"m2m:cnt": {"mni": -1}}
        )
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=3, pc={"m2m:cnt": {"mni": True}}
        )
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=3, pc={"m2m:cnt": {"cni": 1}}
        )
        self.fails(
            RSC.BAD_REQUEST, 1, "cse-in/Cmyae/c", self.aei, ty=3, pc={"m2m:cnt": {}, "m2m:cin": {}}
        )
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"cni": 5}})
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/Cmyae/c", self.aei, pc={"m2m:ae": {"lbl": []}})
        self.fails(
            RSC.INVALID_CHILD_RESOURCE_TYPE,
            1,
            cin["ri"],
            self.aei,
            ty=4,
            pc={"m2m:cin": {"con": "x"}},
        )
        self.fails(
            RSC.INVALID_CHILD_RESOURCE_TYPE, 1, "cse-in", ty=4, pc={"m2m:cin": {"con": "x"}}
        )
        for ty in sorted(set(ResourceType) - KINDS.keys()):  # known, with no kind (yet)
            self.fails(RSC.NOT_IMPLEMENTED, 1, "cse-in", ty=ty, pc={"m2m:x": {}})
        self.fails(RSC.BAD_REQUEST, 1, "cse-in", ty=99, pc={"m2m:x": {}})

    def test_name_conflict_and_generated_names(self) -> None:
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        self.fails(RSC.CONFLICT, 1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        # same name under another parent is fine
        self.create("cse-in/Cmyae/c", 3, "m2m:cnt", self.aei, rn="c")
        a = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei)
        b = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei)
        self.assertNotEqual(a["rn"], b["rn"])
        self.assertTrue(a["rn"])
        self.assertEqual(self.retrieve(f"cse-in/Cmyae/{a['rn']}").pc["m2m:cnt"]["ri"], a["ri"])


class AddressingTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae")
        self.cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        self.cin = self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="v")

    def test_every_form_addresses_the_container(self) -> None:
        ri = self.cnt["ri"]
        for to in (
            "cse-in/Cmyae/c",
            "-/Cmyae/c",
            ri,
            "/id-in/cse-in/Cmyae/c",
            f"/id-in/{ri}",
            "//acmews.example.com/id-in/cse-in/Cmyae/c",
            f"//acmews.example.com/id-in/{ri}",
            "~/id-in/cse-in/Cmyae/c",
            f"_/acmews.example.com/id-in/{ri}",
            "Cmyae/c",
            "/id-in/Cmyae/c",
        ):
            response = self.retrieve(to)
            self.assertEqual(response.rsc, RSC.OK, f"{to}: {response.debug}")
            self.assertEqual(response.pc["m2m:cnt"]["ri"], ri, to)

    def test_cse_base_forms(self) -> None:
        for to in (
            "cse-in",
            "/id-in",
            "//acmews.example.com/id-in",
            "id-in",
            "/id-in/cse-in",
            "-",
        ):
            self.assertEqual(self.retrieve(to).pc["m2m:cb"]["ri"], "id-in", to)

    def test_virtual_children_by_ri(self) -> None:
        ri = self.cnt["ri"]
        for to in (f"{ri}/la", f"/id-in/{ri}/ol", "/id-in/cse-in/Cmyae/c/la"):
            self.assertEqual(self.retrieve(to).pc["m2m:cin"]["ri"], self.cin["ri"], to)

    def test_unknown_target_4004(self) -> None:
        for to in ("cse-in/nope", "nope", "/id-in/nope", "cse-in/Cmyae/c/x", "/id-in/"):
            self.fails(RSC.NOT_FOUND, 2, to)
            self.fails(RSC.NOT_FOUND, 4, to)
        self.fails(RSC.NOT_FOUND, 3, "cse-in/nope", pc={"m2m:cnt": {"lbl": []}})
        self.fails(RSC.NOT_FOUND, 1, "cse-in/nope", ty=3, pc={"m2m:cnt": {}})

    def test_other_cse_or_sp_is_5103(self) -> None:
        for to in ("/id-mn/cse-mn", "//other.example.com/id-in/cse-in", "/id-in2/x", "~/id-mn"):
            self.fails(RSC.TARGET_NOT_REACHABLE, 2, to)
            self.fails(RSC.TARGET_NOT_REACHABLE, 1, to, ty=3, pc={"m2m:cnt": {}})
            self.fails(RSC.TARGET_NOT_REACHABLE, 4, to)


class AccessControlTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.owner = self.register("Cowner")
        self.other = self.register("Cother")
        self.create("cse-in/Cowner", 3, "m2m:cnt", self.owner, rn="c")
        self.create("cse-in/Cowner/c", 4, "m2m:cin", self.owner, con="v")

    def test_owner_and_admin_allowed_others_denied(self) -> None:
        self.assertEqual(self.retrieve("cse-in/Cowner/c", self.owner).rsc, RSC.OK)
        self.assertEqual(self.retrieve("cse-in/Cowner/c", ADMIN).rsc, RSC.OK)
        response = self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 2, "cse-in/Cowner/c", self.other)
        self.assertIn("Cother", response.debug or "")
        self.assertEqual(
            response.debug,
            "originator 'Cother' has no RETRIEVE privilege on 'cse-in/Cowner/c'",
        )
        response = self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, "cse-in/Cowner/c", self.other)
        self.assertIn("has no DELETE privilege on", response.debug or "")
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 2, "cse-in/Cowner/c/la", self.other)
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            1,
            "cse-in/Cowner/c",
            self.other,
            ty=4,
            pc={"m2m:cin": {"con": "x"}},
        )
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, "cse-in/Cowner", self.other)
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 1, "cse-in", self.other, ty=3, pc={"m2m:cnt": {}}
        )
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 2, "cse-in/Cowner/c", "Cunregistered")

    def acp(self, acor: list[str], acop: int, pvs: list[str] | None = None) -> str:
        body = self.create(
            "cse-in/Cowner",
            1,
            "m2m:acp",
            self.owner,
            rn="acp",
            pv={"acr": [{"acor": acor, "acop": acop}]},
            pvs={"acr": [{"acor": pvs or [self.owner], "acop": 63}]},
        )
        ri: str = body["ri"]
        return ri

    def test_acp_grants_exactly_its_operations(self) -> None:
        acp = self.acp([self.other], 2 | 1)
        self.ok(3, "cse-in/Cowner/c", self.owner, pc={"m2m:cnt": {"acpi": [acp]}})
        self.assertEqual(self.retrieve("cse-in/Cowner/c", self.other).rsc, RSC.OK)
        # the instance has no acpi: the container's (nearest ancestor) applies
        self.assertEqual(self.retrieve("cse-in/Cowner/c/la", self.other).rsc, RSC.OK)
        self.create("cse-in/Cowner/c", 4, "m2m:cin", self.other, con="from other")
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            3,
            "cse-in/Cowner/c",
            self.other,
            pc={"m2m:cnt": {"lbl": []}},
        )
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, "cse-in/Cowner/c", self.other)
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 2, "cse-in/Cowner/c", "Cthird")
        # what the other AE created is its own
        self.ok(4, "cse-in/Cowner/c/la", self.other)

    def test_wildcard_acor(self) -> None:
        acp = self.acp(["*"], 2)
        self.ok(3, "cse-in/Cowner/c", self.owner, pc={"m2m:cnt": {"acpi": [acp]}})
        self.assertEqual(self.retrieve("cse-in/Cowner/c", "Canyone").rsc, RSC.OK)
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, "cse-in/Cowner/c", "Canyone")

    def test_acp_self_privileges(self) -> None:
        self.acp([self.other], 63, pvs=["Cthird"])
        # pv does not let Cother touch the ACP itself; pvs lets Cthird
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            3,
            "cse-in/Cowner/acp",
            self.other,
            pc={"m2m:acp": {"lbl": ["x"]}},
        )
        self.ok(3, "cse-in/Cowner/acp", "Cthird", pc={"m2m:acp": {"lbl": ["x"]}})
        # TS-0001 9.6.2: an ACP is judged by its pvs alone, even for the AE that created it
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            3,
            "cse-in/Cowner/acp",
            self.owner,
            pc={"m2m:acp": {"lbl": ["y"]}},
        )

    def test_invalid_acp_is_4000(self) -> None:
        for pv in (
            {"acr": [{"acor": ["x"]}]},
            {"acr": [{"acor": [], "acop": 1}]},
            {"acr": [{"acor": ["x"], "acop": 64}]},
            {"acr": "x"},
            {"bad": []},
        ):
            self.fails(
                RSC.BAD_REQUEST,
                1,
                "cse-in/Cowner",
                self.owner,
                ty=1,
                pc={"m2m:acp": {"pv": pv, "pvs": pv}},
            )
        self.fails(
            RSC.BAD_REQUEST,
            1,
            "cse-in/Cowner",
            self.owner,
            ty=1,
            pc={"m2m:acp": {"pv": {"acr": []}}},
        )


class ResultContentTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae")
        self.cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c")
        self.cin = self.create("cse-in/Cmyae/c", 4, "m2m:cin", self.aei, con="v", rn="i")
        self.create("cse-in/Cmyae/c", 3, "m2m:cnt", self.aei, rn="sub")

    def test_retrieve_rcn(self) -> None:
        to = "cse-in/Cmyae/c"
        self.assertEqual(self.retrieve(to).pc["m2m:cnt"]["ri"], self.cnt["ri"])
        tree = self.retrieve("cse-in/Cmyae", rcn=4).pc["m2m:ae"]
        self.assertEqual(tree["aei"], self.aei)
        self.assertEqual(tree["m2m:cnt"][0]["m2m:cin"][0]["con"], "v")
        with_refs = self.retrieve(to, rcn=5).pc["m2m:cnt"]
        self.assertEqual(with_refs["ri"], self.cnt["ri"])
        self.assertEqual(
            with_refs["ch"],
            [
                {"nm": "i", "typ": 4, "val": "cse-in/Cmyae/c/i"},
                {"nm": "sub", "typ": 3, "val": "cse-in/Cmyae/c/sub"},
            ],
        )
        self.assertEqual(self.retrieve(to, rcn=6).pc, {"m2m:rrl": {"rrf": with_refs["ch"]}})
        children = self.retrieve(to, rcn=8).pc["m2m:cnt"]
        self.assertEqual(set(children), {"m2m:cin", "m2m:cnt"})
        self.assertEqual(children["m2m:cin"][0]["ri"], self.cin["ri"])
        for rcn in (0, 2, 3, 7, 9, 10, -1):
            self.fails(RSC.BAD_REQUEST, 2, to, rcn=rcn)

    def test_children_filtered_by_privilege(self) -> None:
        other = self.register("Cother")
        acp = self.create(
            "cse-in/Cmyae",
            1,
            "m2m:acp",
            self.aei,
            rn="acp",
            pv={"acr": [{"acor": [other], "acop": 2}]},
            pvs={"acr": [{"acor": [self.aei], "acop": 63}]},
        )["ri"]
        self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"acpi": [acp]}})
        # (acpi names existing ACPs only: one that grants nothing)
        none = self.create(
            "cse-in/Cmyae",
            1,
            "m2m:acp",
            self.aei,
            pv={"acr": []},
            pvs={"acr": [{"acor": [self.aei], "acop": 63}]},
        )["ri"]
        self.ok(3, "cse-in/Cmyae/c/sub", self.aei, pc={"m2m:cnt": {"acpi": [none]}})
        refs = self.retrieve("cse-in/Cmyae/c", other, rcn=6).pc["m2m:rrl"]["rrf"]
        self.assertEqual([r["nm"] for r in refs], ["i"])

    def test_create_update_delete_rcn(self) -> None:
        response = self.ok(1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {"rn": "n"}}, rcn=0)
        self.assertIsNone(response.pc)
        response = self.ok(1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {"rn": "m"}}, rcn=2)
        self.assertEqual(response.pc, {"m2m:uri": "cse-in/Cmyae/m"})
        response = self.ok(3, "cse-in/Cmyae/m", self.aei, pc={"m2m:cnt": {"lbl": ["l"]}}, rcn=0)
        self.assertIsNone(response.pc)
        response = self.ok(4, "cse-in/Cmyae/m", self.aei, rcn=1)
        self.assertEqual(response.pc["m2m:cnt"]["lbl"], ["l"])
        self.fails(RSC.BAD_REQUEST, 1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {}}, rcn=7)
        # the protocol layer needs the aei even when no content was asked for
        response = self.ok(
            1, "cse-in", None, ty=2, pc={"m2m:ae": {"api": "Nx", "rr": True}}, rcn=0
        )
        self.assertTrue(response.pc["m2m:ae"]["aei"].startswith("C"))


class DiscoveryTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="a", lbl=["red"])
        self.clock.advance(10)
        self.create("cse-in/Cmyae/a", 3, "m2m:cnt", self.aei, rn="b", lbl=["red", "blue"])
        self.clock.advance(10)
        self.create("cse-in/Cmyae/a/b", 4, "m2m:cin", self.aei, con="x", rn="i")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="z")

    def discover(
        self, fr: str = ADMIN, to: str = "cse-in/Cmyae", drt: int | None = None, **fc: Any
    ) -> list[str]:
        response = self.retrieve(to, fr, fc={"fu": 1, **fc}, drt=drt)
        self.assertEqual(response.rsc, RSC.OK, response.debug)
        uril: list[str] = response.pc["m2m:uril"]
        return uril

    def test_filters(self) -> None:
        base = "cse-in/Cmyae"
        self.assertEqual(
            self.discover(), [f"{base}/a", f"{base}/a/b", f"{base}/a/b/i", f"{base}/z"]
        )
        self.assertEqual(self.discover(ty=3), [f"{base}/a", f"{base}/a/b", f"{base}/z"])
        self.assertEqual(self.discover(ty=[4]), [f"{base}/a/b/i"])
        self.assertEqual(self.discover(lbl=["blue"]), [f"{base}/a/b"])
        self.assertEqual(self.discover(lbl=["red", "green"]), [f"{base}/a", f"{base}/a/b"])
        self.assertEqual(self.discover(lim=2), [f"{base}/a", f"{base}/a/b"])
        self.assertEqual(self.discover(lvl=1), [f"{base}/a", f"{base}/z"])
        self.assertEqual(self.discover(lvl=2), [f"{base}/a", f"{base}/a/b", f"{base}/z"])
        created_b = "20231114T221330,250000"
        self.assertEqual(
            self.discover(cra=created_b), [f"{base}/a/b", f"{base}/a/b/i", f"{base}/z"]
        )
        self.assertEqual(self.discover(crb=created_b), [f"{base}/a"])
        self.assertEqual(self.discover(to="cse-in", ty=2), [base])
        ri = self.retrieve("cse-in/Cmyae/a").pc["m2m:cnt"]["ri"]
        self.assertEqual(self.discover(drt=2, lbl=["red"], lvl=1), [ri])

    def test_discovery_respects_privileges(self) -> None:
        self.assertEqual(self.discover(fr="Cstranger"), [])
        self.assertEqual(len(self.discover(fr=self.aei)), 4)
        self.assertEqual(self.discover(fr=self.aei, to="cse-in", ty=2), ["cse-in/Cmyae"])

    def test_bad_filter_criteria(self) -> None:
        for fc in (
            {"fu": 1, "ty": "x"},
            {"fu": 1, "lim": -1},
            {"fu": 1, "lvl": 0},
            {"fu": 1, "xyz": 1},
            {"fu": 5},
            {"fu": 1, "lbl": "red"},
            {"fu": 1, "cra": 5},
        ):
            self.fails(RSC.BAD_REQUEST, 2, "cse-in", fc=fc)
        self.fails(RSC.BAD_REQUEST, 2, "cse-in", fc={"fu": 1}, drt=3)
        self.fails(RSC.NOT_FOUND, 2, "cse-in", fc={"ty": 3})


class NotifyAndErrorTests(CSETestCase):
    def test_notify_to_ae_is_forwarded(self) -> None:
        aei = self.register("Cmyae", poa=["ws://device:9000"])
        d = self.handle(5, "cse-in/Cmyae", ADMIN, rqi="orig", rvi="3", pc={"m2m:sgn": {"x": 1}})
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        [sent] = self.sender.take()
        self.assertEqual((sent.target, sent.poa, sent.store), (aei, ("ws://device:9000",), False))
        self.assertEqual(sent.request.op, 5)
        self.assertEqual(sent.request.pc, {"m2m:sgn": {"x": 1}})
        # SP-relative, so that an AE's own server (which takes only originators under this
        # CSE-ID on the CSE's connection) accepts it
        self.assertEqual(sent.request.fr, f"/id-in/{ADMIN}")
        self.assertNotEqual(sent.request.rqi, "orig")
        sent.answer(RSC.OK, {"answer": True})
        response = self.successResultOf(d)
        self.assertEqual(
            (response.rsc, response.rqi, response.rvi, response.pc),
            (RSC.OK, "orig", "3", {"answer": True}),
        )

    def test_notify_forward_failure(self) -> None:
        self.register("Cmyae")
        d = self.handle(5, "Cmyae", ADMIN, pc={"m2m:sgn": {}})
        assert isinstance(d, Deferred)
        self.sender.take()[0].fail(TargetNotReachable("gone"))
        response = self.successResultOf(d)
        self.assertEqual(
            (response.rsc, response.debug, response.fr),
            (RSC.TARGET_NOT_REACHABLE, "gone", "/id-in"),
        )

    def test_notify_elsewhere_or_unprivileged(self) -> None:
        aei = self.register("Cmyae")
        self.create("cse-in/Cmyae", 3, "m2m:cnt", aei, rn="c")
        self.fails(RSC.OPERATION_NOT_ALLOWED, 5, "cse-in/Cmyae/c", pc={"m2m:sgn": {}})
        self.fails(RSC.OPERATION_NOT_ALLOWED, 5, "cse-in", pc={"m2m:sgn": {}})
        self.fails(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 5, "cse-in/Cmyae", "Cother", pc={"m2m:sgn": {}}
        )
        self.assertEqual(self.sender.sent, [])

    def test_unexpected_exception_is_5000(self) -> None:
        def boom(*args: object) -> None:
            raise RuntimeError("kaputt")

        self.patch(self.cse.addressing, "locate", boom)
        response = self.fails(
            RSC.INTERNAL_SERVER_ERROR, 3, "cse-in", pc={"m2m:cb": {"lbl": []}}, rqi="q", rvi="5"
        )
        self.assertEqual(
            (response.rqi, response.rvi, response.to, response.fr), ("q", "5", ADMIN, "/id-in")
        )
        self.assertIn("RuntimeError", response.debug or "")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unexpected_failure_in_deferred_is_5000(self) -> None:
        self.register("Cmyae")
        d = self.handle(5, "Cmyae", ADMIN, pc={"m2m:sgn": {}})
        assert isinstance(d, Deferred)
        self.sender.take()[0].fail(ValueError("odd"))
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_error_responses_carry_rvi_and_addressing(self) -> None:
        response = self.fails(RSC.NOT_FOUND, 2, "cse-in/none", "Cx", rqi="e1", rvi="2a")
        self.assertIsInstance(response, Response)
        self.assertEqual(
            (response.rqi, response.rvi, response.to, response.fr), ("e1", "2a", "Cx", "/id-in")
        )
        self.assertIsNotNone(response.ot)
