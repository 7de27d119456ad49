"""Common and per-type attributes (issue #25 item 1), written from TS-0001/TS-0004's text:
creator, custodian, labels, stateTag, disableRetrieval, the contentInstance's contentInfo,
dataGenerationTime and deletionCnt, the CSEBase's srt/ctm/csz, an AE's csz and resource
names."""

from __future__ import annotations

from typing import Any

from acmews.codes import RSC, ResourceType
from acmews.testing import ADMIN
from tests.cse_helpers import CSETestCase
from tests.test_e2e import StackTestCase


class _Tree(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cmyae", rn="myae")

    def cnt(self, **attrs: Any) -> dict[str, Any]:
        return self.create("cse-in/myae", 3, "m2m:cnt", self.aei, rn="c", **attrs)

    def cin(self, **attrs: Any) -> dict[str, Any]:
        return self.create("cse-in/myae/c", 4, "m2m:cin", self.aei, con="v", **attrs)

    def bad(self, ty: int, to: str, key: str, **attrs: Any) -> str:
        r = self.fails(RSC.BAD_REQUEST, 1, to, self.aei, ty=ty, pc={key: attrs})
        assert r.debug is not None
        return r.debug


class CreatorTests(_Tree):
    def test_null_creator_is_set_to_the_originator(self) -> None:
        """TS-0004 7.4.6.2.1 / 7.4.7.2.1: a creator sent as null is set to the Originator."""
        self.assertEqual(self.cnt(cr=None)["cr"], self.aei)
        self.assertEqual(self.cin(cr=None)["cr"], self.aei)
        got = self.retrieve("cse-in/myae/c", self.aei).pc["m2m:cnt"]
        self.assertEqual(got["cr"], self.aei)

    def test_no_creator_unless_asked(self) -> None:
        """TS-0001 9.6.1.3.2: creator is optional; without the null it is not there."""
        self.assertNotIn("cr", self.cnt())
        self.assertNotIn("cr", self.cin())

    def test_a_creator_value_is_refused_and_never_updated(self) -> None:
        """TS-0004: creator is set by the Hosting CSE (NP but for null) and read-only."""
        self.assertIn("cr", self.bad(3, "cse-in/myae", "m2m:cnt", cr="Cother"))
        self.cnt(cr=None)
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"cr": "Cx"}})


class LabelTests(_Tree):
    def test_labels_are_tokens(self) -> None:
        """TS-0004 6.3.3: m2m:labels is a list of xs:token (no leading, trailing, double
        spaces; no tabs or line breaks)."""
        for label in ("", " a", "a ", "a  b", "a\tb", "a\nb"):
            self.assertIn("lbl", self.bad(3, "cse-in/myae", "m2m:cnt", lbl=[label]))
        self.assertEqual(self.cnt(lbl=["a b", "key/value"])["lbl"], ["a b", "key/value"])
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"lbl": [""]}})


class StateTagTests(_Tree):
    def test_container_state_tag(self) -> None:
        """TS-0001 9.6.6/9.6.7: a container's stateTag is 0 at creation and goes up by one on
        every modification, an UPDATE or a new contentInstance; the instance gets the
        container's new stateTag."""
        self.assertEqual(self.cnt()["st"], 0)
        self.ok(3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"lbl": ["x"]}})
        self.assertEqual(self.retrieve("cse-in/myae/c", self.aei).pc["m2m:cnt"]["st"], 1)
        self.assertEqual(self.cin()["st"], 2)
        self.assertEqual(self.cin()["st"], 3)
        self.assertEqual(self.retrieve("cse-in/myae/c", self.aei).pc["m2m:cnt"]["st"], 3)

    def test_state_tag_is_not_the_originators(self) -> None:
        """TS-0004 7.4.6.1: stateTag is NP in CREATE and UPDATE."""
        self.bad(3, "cse-in/myae", "m2m:cnt", st=5)
        self.cnt()
        self.fails(RSC.BAD_REQUEST, 3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"st": 9}})


class DisableRetrievalTests(_Tree):
    def test_no_instance_is_retrieved(self) -> None:
        """TS-0004 7.4.7.2.2: while the parent container's disableRetrieval is TRUE, a
        contentInstance (and latest/oldest) is not retrieved: OPERATION_NOT_ALLOWED."""
        self.cnt(disr=True)
        ri = self.cin()["ri"]
        for to in ("cse-in/myae/c/la", "cse-in/myae/c/ol", ri):
            self.fails(RSC.OPERATION_NOT_ALLOWED, 2, to, self.aei)
        # nor listed in the container's children, nor discovered
        pc = self.retrieve("cse-in/myae/c", self.aei, rcn=4).pc["m2m:cnt"]
        self.assertNotIn("m2m:cin", pc)
        found = self.retrieve("cse-in/myae", self.aei, fc={"fu": 1, "ty": [4]}).pc
        self.assertEqual(found.get("m2m:uril", []), [])
        self.ok(3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"disr": False}})
        self.assertEqual(self.retrieve(ri, self.aei).rsc, RSC.OK)

    def test_disr_is_a_boolean(self) -> None:
        self.bad(3, "cse-in/myae", "m2m:cnt", disr="yes")


class AttributeTests(_Tree):
    def test_custodian(self) -> None:
        """TS-0001 9.6.6: a container's custodian, an AE-ID or CSE-ID, settable and
        updatable."""
        self.assertEqual(self.cnt(cstn="Cother")["cstn"], "Cother")
        self.ok(3, "cse-in/myae/c", self.aei, pc={"m2m:cnt": {"cstn": "/id-mn"}})
        self.assertIn("cstn", self.bad(3, "cse-in/myae", "m2m:cnt", rn="d", cstn="a b"))

    def test_content_info(self) -> None:
        """TS-0004 6.3.5 m2m:contentInfo: type/subtype, then optionally :encoding, 0 plain,
        1 base64 string, 2 base64 binary."""
        self.cnt()
        for cnf in ("text/plain", "application/json:0", "image/png:2"):
            self.assertEqual(self.cin(cnf=cnf)["cnf"], cnf)
        for cnf in ("text", "text/plain:7", "text/plain:", "/x", 3):
            self.assertIn("cnf", self.bad(4, "cse-in/myae/c", "m2m:cin", con="v", cnf=cnf))

    def test_data_generation_time_and_deletion_count(self) -> None:
        """TS-0001 9.6.7: dataGenerationTime (a timestamp) and deletionCnt (a count)."""
        self.cnt()
        got = self.cin(dgt="20240101T000000", dcnt=2)
        self.assertEqual((got["dgt"], got["dcnt"]), ("20240101T000000", 2))
        self.bad(4, "cse-in/myae/c", "m2m:cin", con="v", dgt="yesterday")
        self.bad(4, "cse-in/myae/c", "m2m:cin", con="v", dcnt=-1)

    def test_unknown_attribute_is_named(self) -> None:
        self.assertIn("'zz'", self.bad(3, "cse-in/myae", "m2m:cnt", zz=1))

    def test_resource_names(self) -> None:
        """TS-0001 9.6.1.3.1: a resourceName holds only RFC 3986 unreserved characters."""
        for rn in ("a b", "a?b", "a#b", "é", "a%20"):
            self.assertIn("rn", self.bad(3, "cse-in/myae", "m2m:cnt", rn=rn))
        self.create("cse-in/myae", 3, "m2m:cnt", self.aei, rn="A-z_0.9~")

    def test_ae_serializations(self) -> None:
        """TS-0004 6.7: an AE's csz lists the oneM2M serialization MIME types."""
        body = {"api": "Nx", "rr": False, "csz": ["application/text"]}
        self.fails(RSC.BAD_REQUEST, 1, "cse-in", "Cz", ty=2, pc={"m2m:ae": body})
        body["csz"] = ["application/cbor", "application/json"]
        self.ok(1, "cse-in", "Cz", ty=2, pc={"m2m:ae": body})


class CSEBaseTests(StackTestCase):
    def test_cse_base_attributes_over_the_binding(self) -> None:
        """TS-0001 9.6.3: the CSEBase tells its supported resource types (srt), its current
        time (ctm) and serializations (csz)."""
        c = self.client(ADMIN)
        base = self.call(c.retrieve("cse-in", fr=ADMIN)).pc["m2m:cb"]
        self.assertEqual(base["csz"], ["application/json", "application/cbor"])
        for ty in (ResourceType.AE, ResourceType.CNT, ResourceType.CIN, ResourceType.SUB):
            self.assertIn(int(ty), base["srt"])
        self.assertTrue(base["ctm"].startswith("2026"))
        self.clock.advance(3600)
        later = self.call(c.retrieve("cse-in", fr=ADMIN)).pc["m2m:cb"]
        self.assertNotEqual(later["ctm"], base["ctm"])
        self.assertEqual(later["ct"], base["ct"])
