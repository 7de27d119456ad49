"""Access control as TS-0001 9.6.2 / TS-0004 7.4.2 describe it, through the binding: an ACP's
selfPrivileges, the optional parts of an access control rule (contexts: time windows, IP
addresses, location; object details; attributes; the authentication flag) and ``acpi``.

The rules' optional parts are those of TS-0004 6.3.5 ``m2m:accessControlRule``: ``acco``
(``actw``, ``acip``, ``aclr``), ``acod`` (``ty``, ``chty``, ``spty``), ``aca`` and ``acaf``.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred

from acmews.client import Client
from acmews.codes import RSC, Operation, ResourceType
from acmews.cse.rules import parse_peer_address, parse_schedule, schedule_matches
from acmews.handshake import Authorization
from acmews.primitive import Request, Response
from acmews.testing import FakeConnection
from tests.cse_helpers import CSETestCase
from tests.test_e2e import StackTestCase

_ACP = ResourceType.ACP
_CNT = ResourceType.CNT
_CIN = ResourceType.CIN
OWNER_ONLY = [{"acor": ["Cown"], "acop": 63}]


class ACPStack(StackTestCase):
    """The AE Cown with its container ``box``; the AE Cother, to be granted things."""

    def setUp(self) -> None:
        super().setUp()
        self.owner = self.register("Cown")
        self.other = self.register("Cother")
        self.rsc(self.owner.create("cse-in/cown", _CNT, {"m2m:cnt": {"rn": "box"}}), 2001)
        self.rsc(self.owner.create("cse-in/cown/box", _CIN, {"m2m:cin": {"con": "x"}}), 2001)
        self._n = 0

    def rsc(self, d: Deferred[Response], expected: int) -> Response:
        r = self.call(d)
        self.assertEqual(r.rsc, expected, r.debug)
        if expected >= 4000:
            self.assertTrue(r.debug)
        return r

    def acp(
        self,
        pv: list[dict[str, Any]],
        pvs: list[dict[str, Any]] | None = None,
        expected: int = RSC.CREATED,
    ) -> str:
        """An ACP of Cown's (named acp1, acp2, ...) with these rules; its address."""
        self._n += 1
        body = {"rn": f"acp{self._n}", "pv": {"acr": pv}, "pvs": {"acr": pvs or OWNER_ONLY}}
        self.rsc(self.owner.create("cse-in/cown", _ACP, {"m2m:acp": body}), expected)
        return f"cse-in/cown/acp{self._n}"

    def guard(self, *rules: dict[str, Any]) -> None:
        """Put the box under an ACP granting ``rules`` to Cother (replacing the last one)."""
        acp = self.acp(list(rules))
        self.rsc(self.owner.update("cse-in/cown/box", {"m2m:cnt": {"acpi": [acp]}}), 2004)

    def may_retrieve(self, client: Client | None = None, to: str = "cse-in/cown/box") -> bool:
        r = self.call((client or self.other).retrieve(to))
        self.assertIn(r.rsc, (RSC.OK, RSC.ORIGINATOR_HAS_NO_PRIVILEGE), r.debug)
        return r.rsc == RSC.OK


class SelfPrivilegeTests(ACPStack):
    def test_an_acp_is_judged_by_its_pvs_even_for_its_creator(self) -> None:
        """TS-0001 9.6.2 (selfPrivileges): who may access the ACP itself; the AE that
        created it (and owns the subtree it is in) has no other way in."""
        acp = self.acp([], pvs=[{"acor": ["Cother"], "acop": 63}])
        self.rsc(self.owner.retrieve(acp), RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.rsc(
            self.owner.update(acp, {"m2m:acp": {"lbl": ["mine"]}}),
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
        )
        self.rsc(self.owner.delete(acp), RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.rsc(self.other.update(acp, {"m2m:acp": {"lbl": ["theirs"]}}), RSC.UPDATED)
        self.rsc(self.other.delete(acp), RSC.DELETED)

    def test_an_empty_pvs_is_refused(self) -> None:
        """An ACP without a selfPrivileges rule could never be changed or deleted again
        (TS-0004 7.4.2; refused as the reference implementation does)."""
        for pvs in ({"acr": []}, {}):
            body = {"pv": {"acr": []}, "pvs": pvs}
            self.rsc(self.owner.create("cse-in/cown", _ACP, {"m2m:acp": body}), 4000)
        acp = self.acp([])  # an empty pv is fine: it grants nothing
        self.rsc(self.owner.update(acp, {"m2m:acp": {"pvs": {"acr": []}}}), 4000)
        self.rsc(self.owner.update(acp, {"m2m:acp": {"pvs": None}}), 4000)
        pvs = self.call(self.owner.retrieve(acp)).pc["m2m:acp"]["pvs"]
        self.assertEqual(pvs, {"acr": OWNER_ONLY})


class AcpiTests(ACPStack):
    def test_acpi_names_existing_acps(self) -> None:
        """TS-0004 ``accessControlPolicyIDs``: the IDs of ``<accessControlPolicy>``
        resources; one that names nothing, or another resource type, is a bad request."""
        for acpi in (["cse-in/cown/nothing"], ["cse-in/cown/box"], ["unknown-ri"]):
            body = {"m2m:cnt": {"rn": "guarded", "acpi": acpi}}
            r = self.rsc(self.owner.create("cse-in/cown", _CNT, body), 4000)
            self.assertIn(acpi[0], r.debug)
            self.rsc(self.owner.update("cse-in/cown/box", {"m2m:cnt": {"acpi": acpi}}), 4000)
        self.assertNotIn("acpi", self.call(self.owner.retrieve("cse-in/cown/box")).pc["m2m:cnt"])
        acp = self.acp([{"acor": ["Cother"], "acop": 2}])
        body = {"m2m:cnt": {"rn": "guarded", "acpi": [acp]}}
        self.rsc(self.owner.create("cse-in/cown", _CNT, body), RSC.CREATED)
        self.assertTrue(self.may_retrieve(to="cse-in/cown/guarded"))

    def test_acpi_is_updated_alone(self) -> None:
        """TS-0001 9.6.1.3.2: acpi is updated by a request that changes nothing else."""
        acp = self.acp([{"acor": ["Cother"], "acop": 2}])
        body = {"m2m:cnt": {"acpi": [acp], "lbl": ["x"]}}
        r = self.rsc(self.owner.update("cse-in/cown/box", body), 4000)
        self.assertIn("acpi", r.debug)
        self.assertEqual(
            set(self.call(self.owner.retrieve("cse-in/cown/box")).pc["m2m:cnt"]) & {"acpi", "lbl"},
            set(),
        )

    def test_acpi_is_changed_under_the_pvs_of_the_acps_it_lists(self) -> None:
        """TS-0001 9.6.1.3.2: updating acpi needs the UPDATE privilege in the selfPrivileges of
        an ACP it lists, whatever the privileges (pv) grant."""
        first = self.acp([{"acor": ["Cother"], "acop": 63}])
        self.rsc(self.owner.update("cse-in/cown/box", {"m2m:cnt": {"acpi": [first]}}), 2004)
        second = self.acp([])
        # Cother may update the box (pv), not its acpi (first's pvs names Cown only)
        self.rsc(self.other.update("cse-in/cown/box", {"m2m:cnt": {"lbl": ["a"]}}), 2004)
        self.rsc(
            self.other.update("cse-in/cown/box", {"m2m:cnt": {"acpi": [second]}}),
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
        )
        self.rsc(self.owner.update("cse-in/cown/box", {"m2m:cnt": {"acpi": [second]}}), 2004)
        self.assertFalse(self.may_retrieve())


class ContextTests(ACPStack):
    def hour(self) -> int:
        return time.gmtime(self.clock.seconds()).tm_hour

    def test_a_time_window_grants_only_within_it(self) -> None:
        """TS-0004 ``accessControlWindow`` (``m2m:scheduleEntry``: second minute hour
        day-of-month month day-of-week year): the rule applies while the time matches."""
        window = f"* * {self.hour()} * * * *"
        self.guard({"acor": ["Cother"], "acop": 2, "acco": [{"actw": [window]}]})
        self.assertTrue(self.may_retrieve())
        self.clock.advance(3600)
        self.assertFalse(self.may_retrieve())
        # one of the entries is enough; the five-field crontab form is read as well
        later = f"* {self.hour()} * * *"
        self.guard({"acor": ["Cother"], "acop": 2, "acco": [{"actw": [window, later]}]})
        self.assertTrue(self.may_retrieve())
        weekday = (time.gmtime(self.clock.seconds()).tm_wday + 1) % 7
        not_today = f"* * * * * {(weekday + 1) % 7} *"
        self.guard({"acor": ["Cother"], "acop": 2, "acco": [{"actw": [not_today]}]})
        self.assertFalse(self.may_retrieve())

    def test_malformed_schedule_entries_are_refused(self) -> None:
        for entry in (
            "* * *",
            "",
            "60 * * * * * *",
            "* * 24 * * * *",
            "* * * 0 * * *",
            "* * * * 13 * *",
            "* * * * * 8 *",
            "a * * * * * *",
            "*/0 * * * * * *",
            "5-1 * * * * * *",
            "1,,2 * * * * * *",
        ):
            rule = {"acor": ["Cother"], "acop": 2, "acco": [{"actw": [entry]}]}
            self.acp([rule], expected=4000)
        self.acp([{"acor": ["Cother"], "acop": 2, "acco": [{"actw": "* * * * *"}]}], None, 4000)

    def test_ip_addresses_grant_only_to_requests_from_them(self) -> None:
        """TS-0004 ``accessControlIpAddresses``: the rule applies to requests from these IPv4
        or IPv6 addresses (or prefixes); here, the address of the connection's peer (the
        clients of this test connect from 127.0.0.1)."""
        rule = {"acor": ["Cother"], "acop": 2}
        for acip, granted in (
            ({"ipv4": ["127.0.0.1"]}, True),
            ({"ipv4": ["10.0.0.0/8", "127.0.0.0/8"]}, True),
            ({"ipv4": ["10.0.0.0/8"]}, False),
            ({"ipv6": ["::1", "::ffff:127.0.0.1"]}, False),  # an IPv4 peer
            ({"ipv4": ["10.0.0.1"], "ipv6": ["::/0"]}, False),
        ):
            self.guard({**rule, "acco": [{"acip": acip}]})
            self.assertEqual(self.may_retrieve(), granted, acip)
        # each part of a context must hold; one context of the list is enough
        matching = {"actw": [f"* * {self.hour()} * * * *"]}
        self.guard({**rule, "acco": [{**matching, "acip": {"ipv4": ["10.0.0.0/8"]}}]})
        self.assertFalse(self.may_retrieve())
        elsewhere = {"acip": {"ipv4": ["10.0.0.0/8"]}}
        self.guard({**rule, "acco": [elsewhere, {"acip": {"ipv4": ["127.0.0.0/8"]}}]})
        self.assertTrue(self.may_retrieve())

    def test_malformed_contexts_are_refused(self) -> None:
        for acco in (
            [],
            [{}],
            [{"when": ["* * * * *"]}],
            "x",
            [{"acip": {}}],
            [{"acip": {"ipv4": []}}],
            [{"acip": {"ipv4": ["300.1.2.3"]}}],
            [{"acip": {"ipv4": ["::1"]}}],
            [{"acip": {"ipv6": ["10.0.0.1"]}}],
            [{"acip": {"ipv4": "10.0.0.1"}}],
            [{"acip": {"ipv5": ["10.0.0.1"]}}],
            [{"aclr": "here"}],
        ):
            self.acp([{"acor": ["Cother"], "acop": 2, "acco": acco}], expected=4000)

    def test_a_location_region_is_never_met(self) -> None:
        """TS-0004 ``accessControlLocationRegion``: this CSE cannot know where an originator
        is, so a context holding one is not met (the rule grants nothing through it)."""
        region = {"accc": ["DE"]}
        self.guard({"acor": ["Cother"], "acop": 2, "acco": [{"aclr": region}]})
        self.assertFalse(self.may_retrieve())
        acp = self.call(self.owner.retrieve("cse-in/cown/acp1")).pc["m2m:acp"]
        self.assertEqual(acp["pv"]["acr"][0]["acco"], [{"aclr": region}])


class ObjectDetailTests(ACPStack):
    def test_child_resource_types_limit_a_create(self) -> None:
        """TS-0004 ``accessControlObjectDetails``: ``chty``, the resource types a CREATE
        under the target may create."""
        self.guard({"acor": ["Cother"], "acop": 3, "acod": [{"chty": [int(_CIN)]}]})
        self.rsc(
            self.other.create("cse-in/cown/box", _CIN, {"m2m:cin": {"con": "y"}}), RSC.CREATED
        )
        self.rsc(
            self.other.create("cse-in/cown/box", _CNT, {"m2m:cnt": {}}),
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
        )
        self.assertFalse(self.may_retrieve())  # chty names what a CREATE makes: no RETRIEVE

    def test_the_resource_type_limits_the_targets(self) -> None:
        """``ty``: the rule applies to resources of that type only (the box's instance gets
        the box's acpi, but is no container)."""
        self.guard({"acor": ["Cother"], "acop": 2, "acod": [{"ty": int(_CNT)}]})
        self.assertTrue(self.may_retrieve())
        self.assertFalse(self.may_retrieve(to="cse-in/cown/box/la"))
        self.guard({"acor": ["Cother"], "acop": 2, "acod": [{"ty": int(_CNT), "spty": "x"}]})
        self.assertFalse(self.may_retrieve())  # no specialization here

    def test_malformed_object_details_are_refused(self) -> None:
        for acod in ([], [{}], [{"ty": "cnt"}], [{"chty": []}], [{"chty": [0]}], [{"x": 1}]):
            self.acp([{"acor": ["Cother"], "acop": 2, "acod": acod}], expected=4000)


class AttributeTests(ACPStack):
    def test_attributes_limit_what_a_rule_covers(self) -> None:
        """TS-0004 ``accessControlAttributes``: the attributes the rule covers; an UPDATE
        of others is not granted by it (all or nothing here: no partial results)."""
        self.guard({"acor": ["Cother"], "acop": 4 | 2, "aca": ["lbl"]})
        self.rsc(self.other.update("cse-in/cown/box", {"m2m:cnt": {"lbl": ["a"]}}), 2004)
        self.rsc(
            self.other.update("cse-in/cown/box", {"m2m:cnt": {"mni": 3}}),
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
        )
        self.assertFalse(self.may_retrieve())  # a RETRIEVE returns every attribute
        self.acp([{"acor": ["Cother"], "acop": 2, "aca": []}], expected=4000)
        self.acp([{"acor": ["Cother"], "acop": 2, "aca": "lbl"}], expected=4000)

    def test_the_authentication_flag_needs_an_authenticated_connection(self) -> None:
        """TS-0004 ``accessControlAuthenticationFlag``: the rule applies to authenticated
        originators only; these clients connect without a credential."""
        self.guard({"acor": ["Cother"], "acop": 2, "acaf": True})
        self.assertFalse(self.may_retrieve())
        self.guard({"acor": ["Cother"], "acop": 2, "acaf": False})
        self.assertTrue(self.may_retrieve())
        self.acp([{"acor": ["Cother"], "acop": 2, "acaf": "yes"}], expected=4000)
        self.acp([{"acor": ["Cother"], "acop": 2, "acx": 1}], expected=4000)


class ConnectionContextTests(CSETestCase):
    """The same rules, judged against connections a socket pair cannot give: an IPv6 peer,
    an IPv4 peer on a dual-stack socket, an authenticated connection."""

    def setUp(self) -> None:
        super().setUp()
        self.register("Cown")
        self.create("cse-in/Cown", 3, "m2m:cnt", "Cown", rn="box")

    def guard(self, rule: dict[str, Any]) -> None:
        self.create(
            "cse-in/Cown",
            1,
            "m2m:acp",
            "Cown",
            rn="acp",
            pv={"acr": [{"acor": ["Cother"], "acop": 2, **rule}]},
            pvs={"acr": OWNER_ONLY},
        )
        self.ok(3, "cse-in/Cown/box", "Cown", pc={"m2m:cnt": {"acpi": ["cse-in/Cown/acp"]}})

    def retrieve_over(self, connection: FakeConnection) -> int:
        request = Request(Operation.RETRIEVE, "cse-in/Cown/box", "r", "4", "Cother")
        response = self.cse.handle_request(request, connection)
        assert isinstance(response, Response)
        return response.rsc

    def test_ipv6_peers(self) -> None:
        self.guard({"acco": [{"acip": {"ipv6": ["2001:db8::/32"], "ipv4": ["10.1.0.0/16"]}}]})
        for peer, rsc in (
            ("tcp6:2001:db8::5:4444", RSC.OK),
            ("tcp6:2001:db9::5:4444", RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
            ("tcp6:::ffff:10.1.2.3:4444", RSC.OK),  # IPv4 on a dual-stack socket
            ("tcp4:10.1.2.3:4444", RSC.OK),
            ("unix:/run/cse.sock", RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
            ("fake", RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
        ):
            self.assertEqual(self.retrieve_over(FakeConnection(peer=peer)), rsc, peer)

    def test_authenticated_connections(self) -> None:
        self.guard({"acaf": True})
        anonymous = FakeConnection("Cother", authorization=Authorization("Cother"))
        self.assertEqual(self.retrieve_over(anonymous), RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        credential = Authorization("Cother", owner="basic:other")
        self.assertEqual(
            self.retrieve_over(FakeConnection("Cother", authorization=credential)), 2000
        )
        verified = Authorization("Cother", verified=True)
        self.assertEqual(
            self.retrieve_over(FakeConnection("Cother", authorization=verified)), 2000
        )
        # outside a request (no connection known), such a rule grants nothing
        box = self.cse.store.child("Cown", "box")
        assert box is not None
        self.assertFalse(self.cse.access.allowed("Cother", box, 2))  # type: ignore[arg-type]


class ScheduleTests(CSETestCase):
    def test_fields(self) -> None:
        """``m2m:scheduleEntry``: numbers, ranges, steps and lists, day of week 0 or 7 for
        Sunday, every field must match (UTC)."""
        sunday_noon = 1_700_395_230.0  # 2023-11-19T12:00:30Z, a Sunday
        self.assertEqual(time.gmtime(sunday_noon).tm_wday, 6)
        for entry, matches in (
            ("* * * * * * *", True),
            ("30 0 12 19 11 0 2023", True),
            ("30 0 12 19 11 7 2023", True),
            ("*/10 * * * * * *", True),
            ("*/20 * * * * * *", False),
            ("0-29 * * * * * *", False),
            ("20-40/5 * 9-11,12 * * * *", True),
            ("* * * * * 1-5 *", False),
            ("* * * * * 5-7 *", True),
            ("* * * * * * 2024-2030", False),
            ("0 12 * * 0", True),
            ("0 12 * 11 6", False),
        ):
            self.assertEqual(schedule_matches(parse_schedule(entry), sunday_noon), matches, entry)

    def test_peer_addresses(self) -> None:
        self.assertEqual(str(parse_peer_address("tcp4:192.0.2.1:80")), "192.0.2.1")
        self.assertEqual(str(parse_peer_address("tcp6:::1:80")), "::1")
        self.assertEqual(str(parse_peer_address("tcp6:::ffff:192.0.2.1:80")), "192.0.2.1")
        self.assertIsNone(parse_peer_address("tcp4:nohost:80"))
        self.assertIsNone(parse_peer_address("process:12"))
