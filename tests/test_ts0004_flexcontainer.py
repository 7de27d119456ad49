"""The <flexContainer> (ty 28) and its <flexContainerInstance> history (ty 58), through the
binding.

Written from TS-0001 9.6.35 (<flexContainer>: containerDefinition, stateTag, contentSize, the
custom attributes of its specialization), TS-0004 7.4.37 (its procedures) and TS-0023 (the
ModuleClasses binarySwitch ``cod:binSh``, temperature ``cod:tempe``, battery ``cod:bat``); the
history (``mni``/``mbs``, TS-0001 9.6.61 <flexContainerInstance>) as the Release 4 text
describes it.
"""

from __future__ import annotations

from typing import Any

from acmews.client import Client
from acmews.codes import RSC, ResourceType
from acmews.cse import Resource
from acmews.cse.flexcontainer import (
    SPECIALIZATIONS,
    register_specialization,
    unregister_specialization,
)
from acmews.primitive import Response

from .test_e2e import Notifications, StackTestCase

FCNT = ResourceType.FCNT
AE = "cse-in/cdev"
SWITCH = "org.onem2m.common.moduleclass.binarySwitch"


class FlexTestCase(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ae = self.register("Cdev")

    def make(self, key: str, to: str = AE, **attrs: Any) -> Response:
        return self.call(self.ae.create(to, FCNT, {key: attrs}))

    def made(self, key: str, to: str = AE, **attrs: Any) -> dict[str, Any]:
        r = self.make(key, to, **attrs)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(list(r.pc), [key])
        body: dict[str, Any] = r.pc[key]
        return body

    def get(self, to: str, client: Client | None = None) -> Response:
        return self.call((client or self.ae).retrieve(to))

    def change(self, to: str, key: str, **attrs: Any) -> Response:
        return self.call(self.ae.update(to, {key: attrs}))


class GenericTests(FlexTestCase):
    def test_custom_attributes_stored_and_returned_as_given(self) -> None:
        """TS-0001 9.6.35: a flexContainer of any containerDefinition holds the custom
        attributes of that definition; the CSE that does not know it stores them as given
        (m2m:fcnt), with stateTag 0 and the contentSize of the custom attributes."""
        body = self.made("m2m:fcnt", rn="f", cnd="com.example.sensor", lux=3.5, on=True)
        self.assertEqual(
            (body["ty"], body["cnd"], body["lux"], body["on"]),
            (28, "com.example.sensor", 3.5, True),
        )
        self.assertEqual(body["st"], 0)
        self.assertEqual(body["cs"], len('{"lux":3.5,"on":true}'))
        got = self.get(f"{AE}/f")
        self.assertEqual(got.pc["m2m:fcnt"]["lux"], 3.5)
        r = self.change(f"{AE}/f", "m2m:fcnt", lux=7, extra=[1, 2])
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        got = self.get(f"{AE}/f").pc["m2m:fcnt"]
        self.assertEqual((got["lux"], got["extra"], got["on"], got["st"]), (7, [1, 2], True, 1))
        self.assertEqual(got["cs"], len('{"lux":7,"on":true,"extra":[1,2]}'))
        r = self.change(f"{AE}/f", "m2m:fcnt", extra=None)  # null removes it
        self.assertNotIn("extra", self.get(f"{AE}/f").pc["m2m:fcnt"])
        self.assertEqual(self.call(self.ae.delete(f"{AE}/f")).rsc, RSC.DELETED)
        self.assertEqual(self.get(f"{AE}/f").rsc, RSC.NOT_FOUND)

    def test_cnd_mandatory_and_not_updatable(self) -> None:
        """TS-0001 9.6.35: containerDefinition is mandatory and write-once."""
        self.assertEqual(self.make("m2m:fcnt", rn="f", lux=1).rsc, RSC.BAD_REQUEST)
        self.made("m2m:fcnt", rn="f", cnd="com.example.a")
        r = self.change(f"{AE}/f", "m2m:fcnt", cnd="com.example.b")
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)

    def test_read_only_attributes_are_not_custom(self) -> None:
        """TS-0004 7.4.37: st and cs are the CSE's (4000 when an originator sends them)."""
        self.assertEqual(self.make("m2m:fcnt", cnd="c.d", st=5).rsc, RSC.BAD_REQUEST)
        self.assertEqual(self.make("m2m:fcnt", cnd="c.d", cs=5).rsc, RSC.BAD_REQUEST)
        self.made("m2m:fcnt", rn="f", cnd="c.d")
        self.assertEqual(self.change(f"{AE}/f", "m2m:fcnt", st=9).rsc, RSC.BAD_REQUEST)

    def test_unknown_specialization_key_refused(self) -> None:
        """A short name the CSE has no definition for: 4000 (the generic form is m2m:fcnt)."""
        r = self.make("xyz:thing", cnd="com.example.thing", a=1)
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)

    def test_nested_and_under_the_cse_base(self) -> None:
        """TS-0001 9.6.35: a flexContainer may have flexContainer children (a device's
        modules); it may sit under the CSEBase and an AE."""
        self.made("m2m:fcnt", rn="dev", cnd="com.example.device")
        self.made("cod:binSh", to=f"{AE}/dev", rn="switch", powerSe=False)
        got = self.get(f"{AE}/dev/switch")
        self.assertEqual(got.pc["cod:binSh"]["powerSe"], False)

    def test_a_stored_one_comes_back_with_its_kind(self) -> None:
        """A stored flexContainer comes back with its kind (its specialization by cnd)."""
        self.made("cod:binSh", rn="s", powerSe=True)
        self.made("m2m:fcnt", rn="g", cnd="com.example.g", x=1)
        for rn, key in (("s", "cod:binSh"), ("g", "m2m:fcnt")):
            stored = self.cse.store.child(self.ae_ri(), rn)
            assert stored is not None
            back = Resource.from_record(*stored.record())
            self.assertEqual(list(back.pc), [key])
            self.assertEqual(back.pc, stored.pc)

    def ae_ri(self) -> str:
        ae = self.cse.store.child(self.cse.base.ri, "cdev")
        assert ae is not None
        return ae.ri


class SpecializationTests(FlexTestCase):
    def test_binary_switch(self) -> None:
        """TS-0023 binarySwitch (cod:binSh): powerState (powerSe) is a mandatory boolean; the
        CSE fills in the cnd the short name implies."""
        body = self.made("cod:binSh", rn="sw", powerSe=True)
        self.assertEqual(body["cnd"], SWITCH)
        self.assertEqual(self.make("cod:binSh", rn="x").rsc, RSC.BAD_REQUEST)  # no powerSe
        self.assertEqual(self.make("cod:binSh", rn="x", powerSe="on").rsc, RSC.BAD_REQUEST)
        self.assertEqual(self.make("cod:binSh", rn="x", powerSe=True, bogus=1).rsc, 4000)
        r = self.make("cod:binSh", rn="x", powerSe=True, cnd="org.example.other")
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)
        self.assertEqual(self.change(f"{AE}/sw", "cod:binSh", powerSe=1).rsc, 4000)
        self.assertEqual(self.change(f"{AE}/sw", "cod:binSh", powerSe=False).rsc, RSC.UPDATED)
        self.assertEqual(self.get(f"{AE}/sw").pc["cod:binSh"]["powerSe"], False)
        # another specialization's key is not this resource's
        self.assertEqual(self.change(f"{AE}/sw", "cod:tempe", curT0=1.0).rsc, 4000)

    def test_generic_key_with_a_known_cnd_is_validated(self) -> None:
        """A CREATE as m2m:fcnt naming a known definition: checked against it and answered
        under the specialization's short name."""
        r = self.make("m2m:fcnt", rn="sw", cnd=SWITCH, powerSe="yes")
        self.assertEqual(r.rsc, RSC.BAD_REQUEST, r.debug)
        r = self.make("m2m:fcnt", rn="sw", cnd=SWITCH, powerSe=True)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(r.pc["cod:binSh"]["cnd"], SWITCH)
        self.assertEqual(list(self.get(f"{AE}/sw").pc), ["cod:binSh"])

    def test_temperature_and_battery(self) -> None:
        """TS-0023 temperature (curT0 a float, unit) and battery (level 0-100)."""
        self.made("cod:tempe", rn="t", curT0=21, unit=1, minVe=-20.0, maxVe=50.5)
        self.assertEqual(self.make("cod:tempe", rn="u", curT0=True).rsc, 4000)
        self.made("cod:bat", rn="b", lvl=100, charg=False)
        self.assertEqual(self.make("cod:bat", rn="c", lvl=101).rsc, 4000)
        self.assertEqual(self.make("cod:bat", rn="c", lvl=-1).rsc, 4000)
        self.assertEqual(self.make("cod:bat", rn="c", lvl=5.5).rsc, 4000)

    def test_register_a_definition(self) -> None:
        """A deployment adds its own ModuleClass: validated from then on."""
        kind = register_specialization(
            {
                "name": "doorLock",
                "short": "tst:dooLk",
                "cnd": "org.example.doorLock",
                "attributes": {"lock": {"type": "boolean", "mandatory": True}},
            }
        )
        self.addCleanup(unregister_specialization, kind.key)
        self.assertEqual(self.make("tst:dooLk", rn="d", lock="no").rsc, 4000)
        self.assertEqual(self.made("tst:dooLk", rn="d", lock=True)["cnd"], "org.example.doorLock")
        with self.assertRaises(ValueError):
            register_specialization({"short": "tst:dooLk", "cnd": "org.example.doorLock"})
        self.assertIn("tst:dooLk", SPECIALIZATIONS)


class HistoryTests(FlexTestCase):
    """TS-0001 9.6.35/9.6.61: with maxNrOfInstances or maxByteSize set, each change of the
    custom attributes is kept in a <flexContainerInstance>, the oldest removed beyond them."""

    def instances(self, to: str) -> list[dict[str, Any]]:
        r = self.call(self.ae.retrieve(to, rcn=8))  # child resources
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        return [i for i in r.pc[next(iter(r.pc))].get("m2m:fcin", [])]

    def test_each_update_of_custom_attributes_records_an_instance(self) -> None:
        """TS-0001 9.6.61: an instance holds the custom attributes, stateTag and contentSize
        of its flexContainer at that change; la/ol address the latest and oldest."""
        self.made("cod:bat", rn="b", lvl=90, mni=2)
        sw = f"{AE}/b"
        self.assertEqual(self.change(sw, "cod:bat", lvl=80).rsc, RSC.UPDATED)
        self.assertEqual(self.change(sw, "cod:bat", lbl=["x"]).rsc, RSC.UPDATED)  # not custom
        self.assertEqual(self.change(sw, "cod:bat", lvl=70, charg=True).rsc, RSC.UPDATED)
        fcnt = self.get(sw).pc["cod:bat"]
        kept = self.instances(sw)
        self.assertEqual([i["lvl"] for i in kept], [80, 70])  # the first (90) evicted
        self.assertEqual(kept[1]["charg"], True)
        self.assertEqual(kept[1]["ty"], ResourceType.FCI)
        self.assertEqual(kept[1]["st"], fcnt["st"])
        self.assertEqual(kept[1]["org"], "Cdev")
        self.assertEqual(kept[1]["cs"], fcnt["cs"])
        self.assertEqual((fcnt["cni"], fcnt["cbs"]), (2, kept[0]["cs"] + kept[1]["cs"]))
        la = self.get(f"{sw}/la").pc["m2m:fcin"]
        ol = self.get(f"{sw}/ol").pc["m2m:fcin"]
        self.assertEqual((la["lvl"], ol["lvl"]), (70, 80))

    def test_mbs_and_a_smaller_mni(self) -> None:
        """TS-0001 9.6.35: maxByteSize bounds the instances' sizes; lowering
        maxNrOfInstances removes the oldest; a change larger than mbs is refused."""
        self.made("m2m:fcnt", rn="g", cnd="c.g", v="aaaa", mbs=24)
        g = f"{AE}/g"
        one = self.get(g).pc["m2m:fcnt"]["cs"]
        self.assertEqual(one, 12)  # {"v":"aaaa"}: 12 bytes, two fit in 24
        self.change(g, "m2m:fcnt", v="bbbb")
        self.change(g, "m2m:fcnt", v="cccc")
        self.assertEqual([i["v"] for i in self.instances(g)], ["bbbb", "cccc"])
        self.assertEqual(self.get(g).pc["m2m:fcnt"]["cbs"], 2 * one)
        self.assertEqual(self.change(g, "m2m:fcnt", mni=1).rsc, RSC.UPDATED)
        self.assertEqual([i["v"] for i in self.instances(g)], ["cccc"])
        r = self.change(g, "m2m:fcnt", v="x" * 40)  # larger than mbs
        self.assertEqual(r.rsc, RSC.NOT_ACCEPTABLE, r.debug)
        after = self.get(g).pc["m2m:fcnt"]  # refused: nothing changed
        self.assertEqual((after["v"], after["st"], after["cni"]), ("cccc", 3, 1))
        r = self.make("m2m:fcnt", rn="big", cnd="c.g", v="x" * 40, mbs=24)
        self.assertEqual(r.rsc, RSC.NOT_ACCEPTABLE, r.debug)
        self.assertEqual(self.get(f"{AE}/big").rsc, RSC.NOT_FOUND)

    def test_no_history_without_limits_and_instances_are_the_cses(self) -> None:
        """Without mni/mbs no instance is kept; an instance is created by the CSE only and
        never updated (TS-0004: 4005), but may be deleted (its flexContainer's cni drops)."""
        self.made("cod:binSh", rn="s", powerSe=True)
        self.change(f"{AE}/s", "cod:binSh", powerSe=False)
        self.assertEqual(self.instances(f"{AE}/s"), [])
        self.assertNotIn("cni", self.get(f"{AE}/s").pc["cod:binSh"])
        self.assertEqual(self.get(f"{AE}/s/la").rsc, RSC.NOT_FOUND)
        self.made("cod:binSh", rn="h", powerSe=True, mni=3)
        r = self.call(self.ae.create(f"{AE}/h", ResourceType.FCI, {"m2m:fcin": {"powerSe": 1}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED, r.debug)
        [first] = self.instances(f"{AE}/h")
        r = self.call(self.ae.update(f"{AE}/h/{first['rn']}", {"m2m:fcin": {"lbl": ["x"]}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED, r.debug)
        self.assertEqual(self.call(self.ae.delete(f"{AE}/h/{first['rn']}")).rsc, RSC.DELETED)
        self.assertEqual(self.get(f"{AE}/h").pc["cod:binSh"]["cni"], 0)
        self.made("m2m:fcnt", rn="e", cnd="c.e", mni=3)  # no custom attribute: no instance
        self.assertEqual(self.instances(f"{AE}/e"), [])
        self.assertEqual(self.get(f"{AE}/e").pc["m2m:fcnt"]["cs"], 0)


class SubscriptionTests(FlexTestCase):
    """TS-0004 7.5.1.2.2 step 1.0 (attribute condition) on a flexContainer's custom
    attributes; TS-0001 9.6.35 lists <subscription> among its children."""

    def setUp(self) -> None:
        super().setUp()
        self.inbox = Notifications()
        self.register("Cwatch", handler=self.inbox)
        self.made("cod:binSh", rn="sw", powerSe=False)

    def subscribe(self, **enc: Any) -> None:
        body = {"rn": "s", "nu": ["Cwatch"], "enc": enc, "nct": 2}
        r = self.call(self.ae.create(f"{AE}/sw", ResourceType.SUB, {"m2m:sub": body}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)

    def test_notified_of_a_custom_attribute_it_names(self) -> None:
        """enc.atr naming a custom attribute: an UPDATE of it notifies (the modified
        attributes under the specialization's key), an UPDATE of others does not."""
        self.subscribe(net=[1], atr=["powerSe"])
        self.change(f"{AE}/sw", "cod:binSh", lbl=["kitchen"])
        self.flush()
        self.assertEqual(self.inbox.events(), [])
        self.change(f"{AE}/sw", "cod:binSh", powerSe=True)
        self.flush()
        [event] = self.inbox.events()
        self.assertEqual(event["nev"]["net"], 1)
        self.assertEqual(event["nev"]["rep"]["cod:binSh"]["powerSe"], True)

    def test_generic_custom_attribute_condition(self) -> None:
        """The same for a generic flexContainer's custom attribute the CSE has no definition
        of."""
        self.made("m2m:fcnt", rn="g", cnd="com.example.g", lux=1)
        body = {"rn": "s", "nu": ["Cwatch"], "enc": {"net": [1], "atr": ["lux"]}}
        r = self.call(self.ae.create(f"{AE}/g", ResourceType.SUB, {"m2m:sub": body}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.change(f"{AE}/g", "m2m:fcnt", other=2)
        self.flush()
        self.assertEqual(self.inbox.events(), [])
        self.change(f"{AE}/g", "m2m:fcnt", lux=5)
        self.flush()
        [event] = self.inbox.events()
        self.assertEqual(event["nev"]["rep"]["m2m:fcnt"]["lux"], 5)


class DiscoveryTests(FlexTestCase):
    def test_by_type_and_custom_attribute(self) -> None:
        """TS-0004 7.3.3.17 (filterCriteria ty, atr) on flexContainers: found by their type
        and by the value of a custom attribute."""
        self.made("cod:binSh", rn="on", powerSe=True)
        self.made("cod:binSh", rn="off", powerSe=False)
        self.made("m2m:fcnt", rn="g", cnd="c.g", powerSe=True)
        r = self.call(self.ae.retrieve(AE, fc={"fu": 1, "ty": [28]}))
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.assertEqual(sorted(r.pc["m2m:uril"]), [f"{AE}/g", f"{AE}/off", f"{AE}/on"])
        fc = {"fu": 1, "atr": [{"nm": "powerSe", "val": True}]}
        r = self.call(self.ae.retrieve(AE, fc=fc))
        self.assertEqual(r.rsc, RSC.OK, r.debug)
        self.assertEqual(sorted(r.pc["m2m:uril"]), [f"{AE}/g", f"{AE}/on"])
