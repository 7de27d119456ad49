"""Filter criteria (TS-0004 7.3.3.17) for discovery and conditional retrieval, through the
binding: every condition, fo, lim/ofst/lvl, partial answers, fu 1 and 2, drt, privileges."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from acmews.codes import RSC, ResourceType
from acmews.cse import content as cse_content
from acmews.cse.filters import parse_filter
from acmews.cse.kinds import BUILTIN_KINDS
from acmews.cse.resource import Resource
from acmews.errors import BadRequest
from acmews.primitive import Response
from acmews.timestamps import Timestamps
from tests.test_e2e import StackTestCase

AE = "cse-in/cdisc"
CNT, CIN = ResourceType.CNT, ResourceType.CIN


class Tree(StackTestCase):
    """The AE Cdisc with, ten seconds apart (t0 is c1's creation time)::

    cdisc
    +- c1  lbl color:red floor1      (t0)
    |  +- i1  con abc, text/plain      (t0+10)
    |  +- i2  con abcdefgh, json       (t0+20)
    +- c2  lbl color:green, mni 5    (t0+30)
       +- c3  lbl floor2             (t0+40)
    """

    def setUp(self) -> None:
        super().setUp()
        self.ae = self.register("Cdisc")
        self.t0 = self.clock.seconds()
        self.make(AE, CNT, rn="c1", lbl=["color:red", "floor1"])
        self.make(f"{AE}/c1", CIN, rn="i1", con="abc", cnf="text/plain:0")
        self.make(f"{AE}/c1", CIN, rn="i2", con="abcdefgh", cnf="application/json:0")
        self.make(AE, CNT, rn="c2", lbl=["color:green"], mni=5)
        self.make(f"{AE}/c2", CNT, rn="c3", lbl=["floor2"])

    def at(self, seconds: float) -> str:
        return Timestamps().format(self.t0 + seconds)

    def make(self, to: str, ty: int, **attrs: Any) -> dict[str, Any]:
        key = "m2m:cnt" if ty == CNT else "m2m:cin"
        response = self.call(self.ae.create(to, ty, {key: attrs}))
        self.assertEqual(response.rsc, RSC.CREATED, response.debug)
        self.clock.advance(10)
        made: dict[str, Any] = response.pc[key]
        return made

    def discover(self, to: str = AE, **fc: Any) -> list[str]:
        """The names found below ``to`` (in the order found)."""
        response = self.call(self.ae.retrieve(to, fc={"fu": 1, **fc}))
        self.assertEqual(response.rsc, RSC.OK, response.debug)
        return [uri.rsplit("/", 1)[1] for uri in response.pc["m2m:uril"]]

    def fails(self, rsc: RSC, d: Deferred[Response]) -> Response:
        response = self.call(d)
        self.assertEqual(response.rsc, rsc, response.debug)
        self.assertTrue(response.debug)
        return response


class ConditionTests(Tree):
    def test_everything_by_default_in_pre_order(self) -> None:
        """TS-0004 7.3.3.14: discovery finds, among "all the children/descendent resource of
        the addressed resource", those that match; with no condition, all of them, each
        parent before its children (TS-0001 8.1.2)."""
        self.assertEqual(self.discover(), ["c1", "i1", "i2", "c2", "c3"])
        self.assertEqual(self.discover(f"{AE}/c2"), ["c3"])

    def test_creation_time(self) -> None:
        """TS-0004 7.3.3.17.1: creationTime < createdBefore; createdAfter <= creationTime;
        both: an interval."""
        self.assertEqual(self.discover(crb=self.at(20)), ["c1", "i1"])
        self.assertEqual(self.discover(cra=self.at(20)), ["i2", "c2", "c3"])
        self.assertEqual(self.discover(cra=self.at(10), crb=self.at(30)), ["i1", "i2"])
        self.assertEqual(self.discover(cra=self.at(30), crb=self.at(10)), [])
        self.assertEqual(self.discover(cra=self.at(40)[:15]), ["c3"])  # no fraction given

    def test_last_modified_time(self) -> None:
        """TS-0004 7.3.3.17.2: lastModifiedTime < unmodifiedSince; modifiedSince <=
        lastModifiedTime."""
        self.call(self.ae.update(f"{AE}/c1", {"m2m:cnt": {"mni": 3}}))
        self.assertEqual(self.discover(ms=self.at(50)), ["c1"])
        self.assertEqual(self.discover(us=self.at(50)), ["i1", "i2", "c2", "c3"])
        self.assertEqual(self.discover(ms=self.at(30), us=self.at(50)), ["c2", "c3"])

    def test_expiration_time(self) -> None:
        """TS-0004 7.3.3.17.4: expirationTime < expireBefore; expireAfter <= expirationTime."""
        # a year ahead: within the CSE's longest et (a later one would be cut down to it);
        # the others expire later, with the default et, five years on
        et, later = self.at(365 * 86400), self.at(365 * 86400 + 1)
        self.call(self.ae.update(f"{AE}/c2", {"m2m:cnt": {"et": et}}))
        self.assertEqual(self.discover(exb=later), ["c2"])
        self.assertEqual(self.discover(exb=et), [])
        self.assertEqual(self.discover(exa=et), ["c1", "i1", "i2", "c2", "c3"])
        self.assertEqual(self.discover(exa=later), ["c1", "i1", "i2", "c3"])

    def test_labels(self) -> None:
        """TS-0004 7.3.3.17.5: satisfied "if any of the labels in Filter Criteria matches any
        of the labels in the respective resource attribute"."""
        self.assertEqual(self.discover(lbl=["floor1"]), ["c1"])
        self.assertEqual(self.discover(lbl=["floor2", "color:green"]), ["c2", "c3"])
        self.assertEqual(self.discover(lbl=["floor"]), [])

    def test_labels_query(self) -> None:
        """TS-0004 7.3.3.17.16: key, NT key, key:value, key EQ/NE value, key IN/NI (values);
        satisfied if any expression matches."""
        cases = [
            (["color"], ["c1", "c2"]),
            (["floor1"], ["c1"]),
            (["NT color"], ["i1", "i2", "c3"]),
            (["color:red"], ["c1"]),
            (["color EQ green"], ["c2"]),
            (["color NE red"], ["c2"]),
            (["color IN (red, green)"], ["c1", "c2"]),
            (["color NI (red, blue)"], ["c2"]),
            (["floor2", "color EQ red"], ["c1", "c3"]),
        ]
        for query, found in cases:
            self.assertEqual(self.discover(lbq=query), found, query)
        for bad in (["color IN red"], ["a b c d"], [""], ["k:"], "color", ["color EQ "]):
            self.fails(RSC.BAD_REQUEST, self.ae.retrieve(AE, fc={"fu": 1, "lbq": bad}))

    def test_resource_type(self) -> None:
        """TS-0004 7.3.3.17.6: satisfied "if any of the numbers in the resourceType Filter
        Criteria element matches the resourceType attribute"."""
        self.assertEqual(self.discover(ty=[4]), ["i1", "i2"])
        self.assertEqual(self.discover(ty=3), ["c1", "c2", "c3"])
        self.assertEqual(self.discover(ty=[4, 3]), ["c1", "i1", "i2", "c2", "c3"])
        self.assertEqual(self.discover("cse-in", ty=[2]), ["cdisc"])

    def test_content_size(self) -> None:
        """TS-0004 7.3.3.17.7: contentSize < sizeBelow; sizeAbove <= contentSize; only
        resources with a contentSize (contentInstances) can match."""
        self.assertEqual(self.discover(sza=3), ["i1", "i2"])
        self.assertEqual(self.discover(sza=4), ["i2"])
        self.assertEqual(self.discover(szb=8), ["i1"])
        self.assertEqual(self.discover(sza=3, szb=4), ["i1"])

    def test_content_type(self) -> None:
        """TS-0004 7.3.3.17.8: satisfied if any contentType "matches the typeOfContent part of
        the contentInfo attribute in a <contentInstance> resource"."""
        self.assertEqual(self.discover(cty=["text/plain"]), ["i1"])
        self.assertEqual(self.discover(cty=["application/json", "text/plain"]), ["i1", "i2"])
        self.assertEqual(self.discover(cty=["text/plain:0"]), ["i1"])  # the whole cnf too
        self.assertEqual(self.discover(cty=["image/png"]), [])

    def test_attributes(self) -> None:
        """TS-0004 7.3.3.17.9: satisfied if any attribute element "matches both attribute name
        and attribute value"; a value may hold * wildcards in discovery; creationTime and the
        others with conditions of their own may not be named."""
        self.assertEqual(self.discover(atr=[{"nm": "mni", "val": 5}]), ["c2"])
        self.assertEqual(self.discover(atr=[{"nm": "rn", "val": "i*"}]), ["i1", "i2"])
        self.assertEqual(self.discover(atr=[{"nm": "con", "val": "a*c*h"}]), ["i2"])
        self.assertEqual(self.discover(atr=[{"nm": "con", "val": "*b*"}]), ["i1", "i2"])
        for pattern in ("a*a*", "*h*h", "abc*c"):  # each * stands for its own characters
            self.assertEqual(self.discover(atr=[{"nm": "con", "val": pattern}]), [], pattern)
        self.assertEqual(
            self.discover(atr=[{"nm": "rn", "val": "c3"}, {"nm": "con", "val": "abc"}]),
            ["i1", "c3"],
        )
        self.assertEqual(self.discover(atr=[{"nm": "mni", "val": "5"}]), ["c2"])  # as text
        for nm in ("ct", "lbl", "ty", "cs"):
            atr = [{"nm": nm, "val": 1}]
            self.fails(RSC.BAD_REQUEST, self.ae.retrieve(AE, fc={"fu": 1, "atr": atr}))

    def test_attributes_named_directly(self) -> None:
        """An attribute name as an element of its own (as the reference implementations take
        HTTP query parameters): each one a condition."""
        self.assertEqual(self.discover(rn="c*"), ["c1", "c2", "c3"])
        self.assertEqual(self.discover(rn="c*", mni=5), ["c2"])
        self.assertEqual(self.discover(con="abc"), ["i1"])

    def test_filter_operation(self) -> None:
        """TS-0004 7.3.3.17.0 and 7.3.3.17.12: conditions of the same tag are ORed; different
        tags are ANDed unless filterOperation is 2 (OR)."""
        self.assertEqual(self.discover(lbl=["floor2"], ty=[4]), [])
        self.assertEqual(self.discover(lbl=["floor2"], ty=[4], fo=1), [])
        self.assertEqual(self.discover(lbl=["floor2"], ty=[4], fo=2), ["i1", "i2", "c3"])
        self.assertEqual(self.discover(lbl=["floor1"], fo=2), ["c1"])
        self.assertEqual(self.discover(fo=2), ["c1", "i1", "i2", "c2", "c3"])


class StateTagTests(Tree):
    def test_state_tag(self) -> None:
        """TS-0004 7.3.3.17.3: stateTag < stateTagSmaller; stateTagBigger <= stateTag; a
        resource without a stateTag does not match."""
        kinds = {kind.ty: kind for kind in BUILTIN_KINDS}
        resources = [
            Resource(kinds[CNT], {"ri": f"c{st}", "st": st}, f"cse-in/c{st}", None)
            for st in (0, 1, 2, 3)
        ]
        resources.append(Resource(kinds[CNT], {"ri": "none"}, "cse-in/none", None))

        def found(**fc: Any) -> list[str]:
            flt = parse_filter(fc)
            return [r.ri for r in resources if flt.matches(r)]

        self.assertEqual(found(sts=2), ["c0", "c1"])
        self.assertEqual(found(stb=2), ["c2", "c3"])
        self.assertEqual(found(stb=1, sts=3), ["c1", "c2"])
        for bad in ({"sts": -1}, {"stb": "2"}, {"sts": True}):
            self.assertRaises(BadRequest, parse_filter, bad)


class HandlingTests(Tree):
    def test_limit_offset_level(self) -> None:
        """TS-0004 7.3.3.17.10: no more resources than limit; 7.3.3.17.14: level 1 is the
        direct children; 7.3.3.17.15 and TS-0001 10.2.6.1: offset skips matches, 1 being the
        first; the rest is announced as partial content (cnst 1) starting at cnot."""
        self.assertEqual(self.discover(lvl=1), ["c1", "c2"])
        self.assertEqual(self.discover(lvl=2), ["c1", "i1", "i2", "c2", "c3"])
        self.assertEqual(self.discover(lim=2), ["c1", "i1"])
        self.assertEqual(self.discover(lim=2, ofst=3), ["i2", "c2"])
        self.assertEqual(self.discover(ofst=5), ["c3"])
        self.assertEqual(self.discover(ofst=6), [])
        self.assertEqual(self.discover(lim=0), [])
        response = self.call(self.ae.retrieve(AE, fc={"fu": 1, "lim": 2, "ofst": 2}))
        self.assertEqual((response.cnst, response.cnot), (1, 4))
        response = self.call(self.ae.retrieve(AE, fc={"fu": 1, "ofst": 4}))
        self.assertEqual((response.cnst, response.cnot), (None, None))

    def test_the_cse_bounds_every_answer(self) -> None:
        """TS-0001 10.2.6.1: the Hosting CSE "may also implement a configured upper limit on
        the size of the answer ... the smaller of the two shall apply"; the answer says it is
        partial and where the rest starts (TS-0001 8.1.2)."""
        self.patch(cse_content, "MAX_TREE", 2)
        response = self.call(self.ae.retrieve(AE, fc={"fu": 1, "lim": 10}))
        self.assertEqual(len(response.pc["m2m:uril"]), 2)
        self.assertEqual((response.cnst, response.cnot), (1, 3))
        rest = self.call(self.ae.retrieve(AE, rcn=6, fc={"ofst": 5}))
        self.assertEqual([r["nm"] for r in rest.pc["m2m:rrl"]["rrf"]], ["c3"])
        self.assertIsNone(rest.cnst)
        tree = self.call(self.ae.retrieve(AE, rcn=4)).pc["m2m:ae"]
        self.assertEqual([c["rn"] for c in tree["m2m:cnt"]], ["c1"])
        self.assertEqual([i["rn"] for i in tree["m2m:cnt"][0]["m2m:cin"]], ["i1"])

    def test_bad_and_unsupported_elements(self) -> None:
        """TS-0004 7.3.2.1: a parameter value for a feature the Hosting CSE does not support
        gets NOT_IMPLEMENTED; malformed ones, and unknown elements, BAD_REQUEST."""
        for fc in ({"clbl": ["x"]}, {"chty": [4]}, {"arp": "la"}, {"smf": "x"}, {"fu": 3}):
            self.fails(RSC.NOT_IMPLEMENTED, self.ae.retrieve(AE, fc={"fu": 1, **fc}))
        for fc in (
            {"fo": 3},
            {"lim": -1},
            {"ofst": 0},
            {"lvl": 0},
            {"crb": "yesterday"},
            {"cra": 5},
            {"sza": -1},
            {"ty": []},
            {"ty": ["3"]},
            {"lbl": []},
            {"cty": "text/plain"},
            {"atr": {"nm": "rn", "val": 1}},
            {"atr": [{"nm": "rn"}]},
            {"nosuchattribute": 1},
            {"ct": "20261126T000000"},
        ):
            self.fails(RSC.BAD_REQUEST, self.ae.retrieve(AE, fc={"fu": 1, **fc}))


class DiscoveryResultTests(Tree):
    def test_result_content(self) -> None:
        """TS-0001 8.1.2 and 10.2.6: a discovery answers with the discovered resources'
        addresses (rcn 11, the default), or as child resource references (rcn 6) or nested
        resources (rcn 4, 8); not with the target's attributes alone (rcn 1)."""
        refs = self.call(self.ae.retrieve(AE, fc={"fu": 1, "ty": [4]}, rcn=6)).pc["m2m:rrl"]
        self.assertEqual([r["nm"] for r in refs["rrf"]], ["i1", "i2"])
        uril = self.call(self.ae.retrieve(AE, fc={"fu": 1, "ty": [4]}, rcn=11)).pc["m2m:uril"]
        self.assertEqual(uril, [f"{AE}/c1/i1", f"{AE}/c1/i2"])
        nested = self.call(self.ae.retrieve(AE, fc={"fu": 1, "lbl": ["floor2"]}, rcn=8)).pc
        self.assertEqual([c["rn"] for c in nested["m2m:ae"]["m2m:cnt"]], ["c3"])
        self.fails(RSC.BAD_REQUEST, self.ae.retrieve(AE, fc={"fu": 1}, rcn=1))

    def test_discover_privilege(self) -> None:
        """TS-0004 7.3.3.14: the Receiver finds the resources that match "and to which the
        Originator has Discover privilege"; TS-0001 10.2.6.1: "A discovery operation shall
        skip over resources that cannot be discovered due to access rights but shall include
        their descendants, if the Originator has discovered rights on them"."""
        stranger = self.register("Cstranger")
        for rn, acop in (("discover", 32), ("retrieve", 2)):
            body = {
                "m2m:acp": {
                    "rn": rn,
                    "pv": {"acr": [{"acor": ["Cstranger"], "acop": acop}]},
                    "pvs": {"acr": [{"acor": ["Cdisc"], "acop": 63}]},
                }
            }
            self.assertEqual(self.call(self.ae.create(AE, 1, body)).rsc, RSC.CREATED)
        self.call(self.ae.update(f"{AE}/c1", {"m2m:cnt": {"acpi": [f"{AE}/discover"]}}))
        self.call(self.ae.update(f"{AE}/c2", {"m2m:cnt": {"acpi": [f"{AE}/retrieve"]}}))
        self.call(self.ae.update(f"{AE}/c2/c3", {"m2m:cnt": {"acpi": [f"{AE}/discover"]}}))
        found = self.call(stranger.retrieve(AE, fc={"fu": 1, "ty": [3, 4]})).pc["m2m:uril"]
        self.assertEqual(found, [f"{AE}/c1", f"{AE}/c1/i1", f"{AE}/c1/i2", f"{AE}/c2/c3"])
        self.assertEqual(self.call(stranger.retrieve(f"{AE}/c1")).rsc, 4103)
        # a RETRIEVE with child resource references is judged by RETRIEVE (TS-0001 10.2.6.2)
        refs = self.call(stranger.retrieve(f"{AE}/c2", rcn=6)).pc["m2m:rrl"]["rrf"]
        self.assertEqual(refs, [])
        self.assertEqual(self.call(stranger.retrieve(f"{AE}/c1", rcn=6)).rsc, 4103)


class ConditionalRetrievalTests(Tree):
    def test_the_target_must_match(self) -> None:
        """TS-0004 7.3.3.17.11: without filterUsage the request is a generic retrieve, which
        TS-0001 10.1.3 makes verify "the existence (including Filter Criteria checking, if it
        is given) of the target resource": a target that does not match is not found."""
        for fc in ({"lbl": ["floor1"]}, {"fu": 2, "ty": [3]}, {"cra": self.at(0)}):
            response = self.call(self.ae.retrieve(f"{AE}/c1", fc=fc))
            self.assertEqual(response.pc["m2m:cnt"]["rn"], "c1")
        for fc in ({"lbl": ["floor2"]}, {"fu": 2, "ty": [4]}, {"cra": self.at(1)}):
            self.fails(RSC.NOT_FOUND, self.ae.retrieve(f"{AE}/c1", fc=fc))

    def test_children_are_filtered(self) -> None:
        """TS-0001 8.1.2: child resources are returned "in line with any provided filter
        criteria as given in the Filter Criteria parameter" (rcn 4, 5, 6, 8)."""
        fc = {"ty": [4]}
        refs = self.call(self.ae.retrieve(AE, rcn=6, fc=fc)).pc["m2m:rrl"]["rrf"]
        self.assertEqual([r["val"] for r in refs], [f"{AE}/c1/i1", f"{AE}/c1/i2"])
        with_refs = self.call(self.ae.retrieve(AE, rcn=5, fc={"lvl": 1})).pc["m2m:ae"]
        self.assertEqual([r["nm"] for r in with_refs["ch"]], ["c1", "c2"])
        self.assertEqual(with_refs["rn"], "cdisc")
        tree = self.call(self.ae.retrieve(AE, rcn=4, fc={"lbl": ["floor2", "floor1"]}))
        self.assertEqual([c["rn"] for c in tree.pc["m2m:ae"]["m2m:cnt"]], ["c1", "c3"])
        tree = self.call(self.ae.retrieve(AE, rcn=4, fc={"ty": [3, 4], "lvl": 2})).pc["m2m:ae"]
        self.assertEqual([i["rn"] for i in tree["m2m:cnt"][0]["m2m:cin"]], ["i1", "i2"])
        children = self.call(self.ae.retrieve(f"{AE}/c1", rcn=8, fc={"sza": 4})).pc
        self.assertEqual([i["rn"] for i in children["m2m:cnt"]["m2m:cin"]], ["i2"])

    def test_conditional_update_and_delete(self) -> None:
        """TS-0001 10.1.4 and 10.1.5: an UPDATE or DELETE verifies "the existence (including
        Filter Criteria checking, if it is given) of the requested resource"."""
        update = {"m2m:cnt": {"mni": 1}}
        self.fails(RSC.NOT_FOUND, self.ae.update(f"{AE}/c2", update, fc={"lbl": ["floor1"]}))
        r = self.call(self.ae.update(f"{AE}/c2", update, fc={"lbl": ["color:green"]}))
        self.assertEqual(r.rsc, RSC.UPDATED)
        self.fails(RSC.NOT_FOUND, self.ae.delete(f"{AE}/c2", fc={"ty": [4]}))
        self.fails(RSC.BAD_REQUEST, self.ae.delete(f"{AE}/c2", fc={"fu": 1}))
        self.assertEqual(self.call(self.ae.delete(f"{AE}/c2", fc={"ty": [3]})).rsc, 2002)
