"""Non-blocking requests and the <request> resource, through the binding.

TS-0020 6.5 has a WebSocket connection carry the transfer modes of TS-0001 8.2: blocking, and
non-blocking synchronous and asynchronous. TS-0001 8.1.2 (Response Type), 8.2.2 and 8.2.3,
9.6.12 (<request>) and TS-0004's response status codes (1001 ACCEPTED for
nonBlockingRequestSynch, 1002 for nonBlockingRequestAsynch) and m2m:requestStatus (1 COMPLETED,
2 FAILED, 3 PENDING) are the text these tests are written from.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from acmews.client import Client
from acmews.codes import RSC, RequestStatus, ResourceType
from acmews.cse import CSEConfig
from acmews.errors import RequestTimeout
from acmews.primitive import Response
from acmews.testing import URL
from acmews.timestamps import parse_timestamp
from tests.cse_helpers import CSETestCase

from .test_cse_remote import MN, csr
from .test_e2e import Notifications, StackTestCase

SYNCH = {"rtv": 1}
ASYNCH = {"rtv": 2}


class NonBlockingTestCase(StackTestCase):
    config = CSEConfig(poa=("ws://127.0.0.1:8180",), allowed_csr_originators=("/*",))

    def wire(self) -> None:
        """Move the bytes only: what the CSE schedules (callLater(0)) does not run."""
        for p in self.pairs:
            p.flush()

    def accepted(self, d: Deferred[Response], rsc: RSC = RSC.ACCEPTED_NON_BLOCKING_SYNC) -> str:
        """The answer to a non-blocking request (kept in :attr:`answer`), got before the
        operation runs: its <request>'s address."""
        self.wire()
        response = self.answer = self.successResultOf(d)
        self.assertEqual(response.rsc, rsc, response.debug)
        address: str = response.pc["m2m:uri"]
        return address

    def request_resource(self, client: Client, address: str) -> dict[str, Any]:
        """The <request> at ``address``, once what was scheduled has run."""
        self.flush()
        response = self.call(client.retrieve(address))
        self.assertEqual(response.rsc, RSC.OK, response.debug)
        self.assertEqual(list(response.pc), ["m2m:req"])
        body: dict[str, Any] = response.pc["m2m:req"]
        return body


class SynchronousTests(NonBlockingTestCase):
    def test_accepted_at_once_then_the_result_in_the_request_resource(self) -> None:
        """TS-0001 8.2.2: the Receiver answers with an acknowledgement and the reference of a
        <request> resource; the Originator retrieves the result from it (TS-0004 1001, rs)."""
        ae = self.register("Cnb")
        d = ae.create("cse-in/cnb", ResourceType.CNT, {"m2m:cnt": {"rn": "box"}}, rt=SYNCH)
        address = self.accepted(d)
        self.assertTrue(address.startswith("/id-in/req"), address)
        # not carried out yet
        nothing_yet = ae.retrieve("cse-in/cnb/box")
        self.wire()
        self.assertEqual(self.successResultOf(nothing_yet).rsc, RSC.NOT_FOUND)
        req = self.request_resource(ae, address)
        self.assertEqual(req["ty"], ResourceType.REQ)
        self.assertEqual(req["pi"], self.cse.base.ri)
        self.assertEqual(req["ri"], address.rsplit("/", 1)[1])
        self.assertEqual((req["op"], req["tg"], req["org"]), (1, "cse-in/cnb", "Cnb"))
        self.assertEqual(req["rid"], self.answer.rqi)
        self.assertEqual(req["mi"]["rt"], SYNCH)
        self.assertEqual(req["mi"]["ty"], ResourceType.CNT)
        self.assertEqual(req["pc"], {"m2m:cnt": {"rn": "box"}})
        self.assertEqual(req["rs"], RequestStatus.COMPLETED)
        ors = req["ors"]
        self.assertEqual((ors["rsc"], ors["rqi"]), (RSC.CREATED, req["rid"]))
        self.assertEqual(ors["pc"]["m2m:cnt"]["rn"], "box")
        self.assertEqual(self.call(ae.retrieve("cse-in/cnb/box")).rsc, RSC.OK)

    def test_pending_until_carried_out(self) -> None:
        """TS-0004 m2m:requestStatus: 3 (PENDING) while the operation has not been done."""
        ae = self.register("Cnb")
        admin = self.client("CAdmin")
        address = self.accepted(ae.retrieve("cse-in/cnb", rt=SYNCH))
        pending = admin.retrieve(address)
        self.wire()
        req = self.successResultOf(pending).pc["m2m:req"]
        self.assertEqual(req["rs"], RequestStatus.PENDING)
        self.assertNotIn("ors", req)
        self.flush()
        req = self.request_resource(admin, address)
        self.assertEqual(req["rs"], RequestStatus.COMPLETED)
        self.assertEqual(req["ors"]["pc"]["m2m:ae"]["aei"], "Cnb")

    def test_a_failed_operation_is_recorded(self) -> None:
        """TS-0004 m2m:requestStatus 2 (FAILED), the error response in operationResult."""
        ae = self.register("Cnb")
        address = self.accepted(ae.delete("cse-in/cnb/nothing", rt=SYNCH))
        req = self.request_resource(ae, address)
        self.assertEqual(req["rs"], RequestStatus.FAILED)
        self.assertEqual(req["ors"]["rsc"], RSC.NOT_FOUND)
        self.assertIn("nothing", req["ors"]["pc"]["m2m:dbg"])

    def test_expiration_from_rset_rqet_or_the_default(self) -> None:
        """TS-0001 9.6.12: a <request> has an expirationTime: from the request's result
        expiration (rset), else its request expiration (rqet), else 60 s (as ACME)."""
        ae = self.register("Cnb")
        now = self.clock.seconds()
        ets = []
        for params in ({"rset": 120_000}, {"rqet": "30000"}, {}):
            address = self.accepted(ae.retrieve("cse-in/cnb", rt=SYNCH, **params))
            ets.append(parse_timestamp(self.request_resource(ae, address)["et"]) - now)
        self.assertEqual([round(et) for et in ets], [120, 30, 60])

    def test_flex_blocking_is_answered_blocking_and_no_response_not_at_all(self) -> None:
        """TS-0001 8.1.2: with flexBlocking the Receiver chooses (here: blocking, as ACME);
        with noResponse the operation is done and nothing is answered."""
        ae = self.register("Cnb")
        d = ae.create("cse-in/cnb", ResourceType.CNT, {"m2m:cnt": {"rn": "a"}}, rt={"rtv": 4})
        self.assertEqual(self.call(d).rsc, RSC.CREATED)
        d = ae.create(
            "cse-in/cnb", ResourceType.CNT, {"m2m:cnt": {"rn": "b"}}, timeout=1, rt={"rtv": 5}
        )
        self.flush()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual(self.call(ae.retrieve("cse-in/cnb/b")).rsc, RSC.OK)
        self.assertEqual(self.cse.store.children(self.cse.base.ri, ResourceType.REQ), [])

    def test_registration_is_answered_blocking(self) -> None:
        """The binding binds a connection by the answer to its AE CREATE: a registration is
        carried out at once whatever its rt (TS-0001 8.1.2 lets the Receiver decide only for
        flexBlocking; a registration answered 1001 would leave the connection unbound)."""
        c = self.client(None)
        r = self.call(
            c.create("cse-in", ResourceType.AE, {"m2m:ae": {"api": "Nt", "rr": True}}, rt=SYNCH)
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertIs(
            self.originators.lookup(r.pc["m2m:ae"]["aei"]), self.pairs[-1].server_session
        )


class AsynchronousTests(NonBlockingTestCase):
    def test_the_result_is_notified_over_the_originators_connection(self) -> None:
        """TS-0001 8.2.3: acknowledged (TS-0004 1002), then the result is notified to the
        Originator; without notification targets in rt, to the originator itself."""
        inbox = Notifications()
        ae = self.register("Cnb", inbox)
        d = ae.create("cse-in/cnb", ResourceType.CNT, {"m2m:cnt": {"rn": "box"}}, rt=ASYNCH)
        address = self.accepted(d, RSC.ACCEPTED_NON_BLOCKING_ASYNC)
        self.assertEqual(inbox.requests, [])  # the 1002 comes first
        self.flush()
        (notify,) = inbox.requests
        self.assertEqual((notify.op, notify.to, notify.fr), (5, "Cnb", "/id-in"))
        rsp = notify.pc["m2m:rsp"]
        self.assertEqual((rsp["rsc"], rsp["rqi"]), (RSC.CREATED, self.answer.rqi))
        self.assertEqual(rsp["pc"]["m2m:cnt"]["rn"], "box")
        req = self.request_resource(ae, address)
        self.assertEqual((req["rs"], req["ors"]), (RequestStatus.COMPLETED, rsp))
        self.assertEqual(req["mi"]["rt"], ASYNCH)

    def test_the_result_goes_to_the_targets_rt_names(self) -> None:
        """TS-0001 8.2.3: the notification targets given with the request get the result."""
        inbox, other = Notifications(), Notifications()
        ae = self.register("Cnb", inbox)
        self.register("Cother", other)
        d = ae.retrieve("cse-in/cnb", rt={"rtv": 2, "nu": ["Cother"]})
        self.accepted(d, RSC.ACCEPTED_NON_BLOCKING_ASYNC)
        self.flush()
        self.assertEqual(inbox.requests, [])
        (notify,) = other.requests
        self.assertEqual(notify.to, "Cother")
        self.assertEqual(notify.pc["m2m:rsp"]["pc"]["m2m:ae"]["aei"], "Cnb")

    def test_targets_only_with_rtv_2(self) -> None:
        """TS-0004 responseTypeInfo: notificationURI goes with nonBlockingRequestAsynch."""
        ae = self.register("Cnb")
        for rt in ({"rtv": 1, "nu": ["Cnb"]}, {"rtv": 3, "nu": ["Cnb"]}, {"rtv": 2, "nu": []}):
            r = self.call(ae.retrieve("cse-in/cnb", rt=rt))
            self.assertEqual(r.rsc, RSC.BAD_REQUEST, rt)
            self.assertIn("nu", r.debug or "")
        self.assertEqual(self.cse.store.children(self.cse.base.ri, ResourceType.REQ), [])


class RequestResourceTests(NonBlockingTestCase):
    def test_only_its_originator_and_the_admin(self) -> None:
        """TS-0001 9.6.12: a <request> is there for the Originator of the request; an acpi
        of the CSEBase that opens everything to anyone does not open it."""
        admin = self.client("CAdmin")
        everyone = {"acr": [{"acor": ["*"], "acop": 63}]}
        acp = {"pv": everyone, "pvs": {"acr": [{"acor": ["CAdmin"], "acop": 63}]}}  # pvs not empty
        r = self.call(admin.create("cse-in", ResourceType.ACP, {"m2m:acp": {"rn": "all", **acp}}))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        r = self.call(admin.update("cse-in", {"m2m:cb": {"acpi": [r.pc["m2m:acp"]["ri"]]}}))
        self.assertEqual(r.rsc, RSC.UPDATED, r.debug)
        ae, other = self.register("Cnb"), self.register("Cother")
        address = self.accepted(ae.retrieve("cse-in/cnb", rt=SYNCH))
        self.flush()
        self.request_resource(ae, address)
        self.request_resource(admin, address)
        for op in (other.retrieve(address), other.delete(address)):
            self.assertEqual(self.call(op).rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        # discovery and child listings follow the same rules
        ri = address.rsplit("/", 1)[1]
        fc = {"fu": 1, "ty": [ResourceType.REQ]}
        self.assertEqual(self.call(ae.retrieve("cse-in", fc=fc)).pc["m2m:uril"], [f"cse-in/{ri}"])
        self.assertEqual(self.call(other.retrieve("cse-in", fc=fc)).pc["m2m:uril"], [])
        self.assertEqual(
            self.call(admin.retrieve("cse-in", fc=fc)).pc["m2m:uril"], [f"cse-in/{ri}"]
        )
        listed = self.call(other.retrieve("cse-in", rcn=6)).pc["m2m:rrl"]["rrf"]
        self.assertNotIn(ResourceType.REQ, [ref["typ"] for ref in listed])

    def test_created_by_the_cse_only_never_updated_deleted_by_its_originator(self) -> None:
        """TS-0004 <request>: CREATE and UPDATE by an Originator are not allowed (4005);
        DELETE is."""
        ae = self.register("Cnb")
        address = self.accepted(ae.retrieve("cse-in/cnb", rt=SYNCH))
        self.flush()
        r = self.call(ae.create("cse-in", ResourceType.REQ, {"m2m:req": {"op": 2}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED, r.debug)
        r = self.call(ae.update(address, {"m2m:req": {"rs": 1}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED, r.debug)
        self.assertEqual(self.call(ae.delete(address)).rsc, RSC.DELETED)
        self.assertEqual(self.call(ae.retrieve(address)).rsc, RSC.NOT_FOUND)

    def test_deleted_while_pending_the_result_is_dropped(self) -> None:
        ae = self.register("Cnb")
        address = self.accepted(
            ae.create("cse-in/cnb", ResourceType.CNT, {"m2m:cnt": {"rn": "box"}}, rt=SYNCH)
        )
        deleted = ae.delete(address)
        self.wire()
        self.assertEqual(self.successResultOf(deleted).rsc, RSC.DELETED)
        self.flush()  # the operation is still made
        self.assertEqual(self.call(ae.retrieve("cse-in/cnb/box")).rsc, RSC.OK)
        self.assertEqual(self.cse.store.children(self.cse.base.ri, ResourceType.REQ), [])


class BoundsTests(NonBlockingTestCase):
    config = CSEConfig(
        poa=("ws://127.0.0.1:8180",),
        max_requests_per_originator=3,
        max_requests=5,
        request_expiry=10.0,
    )

    def requests_of(self, originator: str) -> list[str]:
        return [
            r.ri
            for r in self.cse.store.children(self.cse.base.ri, ResourceType.REQ)
            if r.attrs["org"] == originator
        ]

    def make(self, client: Client) -> str:
        address = self.accepted(client.retrieve("cse-in", rt=SYNCH))
        self.flush()
        return address.rsplit("/", 1)[1]

    def test_the_oldest_go_per_originator_and_in_all(self) -> None:
        a, b = self.register("Ca"), self.register("Cb")
        mine = [self.make(a) for _ in range(5)]
        self.assertEqual(self.requests_of("Ca"), mine[2:])
        theirs = [self.make(b) for _ in range(2)]
        self.assertEqual(self.requests_of("Ca"), mine[2:])
        self.assertEqual(self.requests_of("Cb"), theirs)
        # five in all: Cb's next one takes the place of the oldest of anyone's (Ca's)
        theirs.append(self.make(b))
        self.assertEqual(self.requests_of("Ca"), mine[3:])
        self.assertEqual(self.requests_of("Cb"), theirs)

    def test_expired_ones_go_first(self) -> None:
        """An expired <request> (et passed) is deleted when the next one is made."""
        a, b = self.register("Ca"), self.register("Cb")
        old = [self.make(a), self.make(a)]
        self.clock.advance(11)
        new = self.make(b)
        remaining = [r.ri for r in self.cse.store.children(self.cse.base.ri, ResourceType.REQ)]
        self.assertEqual(remaining, [new])
        self.assertNotIn(old[0], remaining)
        # one deleted by its originator meanwhile leaves its place (not the oldest's)
        kept = [self.make(a)]
        gone = self.make(a)
        self.assertEqual(self.call(a.delete(f"cse-in/{gone}")).rsc, RSC.DELETED)
        kept += [self.make(a) for _ in range(2)]
        self.assertEqual(self.requests_of("Ca"), kept)


class ForwardedTests(NonBlockingTestCase):
    """CSE-to-CSE: the <request> is where the Originator asked; the next hop gets a blocking
    request (TS-0001 8.2.2 and 8.2.3 leave the choice to each Receiver CSE)."""

    def registered_mn(self) -> tuple[Client, Notifications]:
        inbox = Notifications()
        mn = self.client(MN, handler=inbox)
        r = self.call(mn.create("cse-in", ResourceType.CSR, csr(poa=["ws://default"])))
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        return mn, inbox

    def test_a_request_for_another_cse(self) -> None:
        _, inbox = self.registered_mn()
        admin = self.client("CAdmin")
        address = self.accepted(admin.retrieve("/id-mn/cse-mn/x", rt=SYNCH))
        self.assertEqual(inbox.requests, [])
        self.flush()
        (forwarded,) = inbox.requests
        self.assertEqual((forwarded.to, forwarded.rt), ("/id-mn/cse-mn/x", None))
        req = self.request_resource(admin, address)
        self.assertEqual((req["rs"], req["ors"]["rsc"]), (RequestStatus.COMPLETED, RSC.OK))
        self.assertEqual(req["ors"]["rqi"], req["rid"])

    def test_a_remote_originator_polls_and_is_notified_through_its_cse(self) -> None:
        mn, inbox = self.registered_mn()
        remote = "/id-mn/Cremote"
        address = self.accepted(
            mn.retrieve("cse-in", fr=remote, rt=ASYNCH), rsc=RSC.ACCEPTED_NON_BLOCKING_ASYNC
        )
        self.flush()
        (notify,) = inbox.requests  # to the remote AE, through its CSE's connection
        self.assertEqual((notify.op, notify.to), (5, remote))
        self.assertEqual(notify.pc["m2m:rsp"]["pc"]["m2m:cb"]["csi"], "/id-in")
        r = self.call(mn.retrieve(address, fr=remote))
        self.assertEqual(r.pc["m2m:req"]["org"], remote)
        self.assertEqual(self.call(mn.retrieve(address, fr="/id-mn/Cother")).rsc, 4103)

    def test_any_request_is_forwarded_without_its_rt(self) -> None:
        _, inbox = self.registered_mn()
        admin = self.client("CAdmin")
        self.call(admin.retrieve("/id-mn/cse-mn", rt={"rtv": 3}))
        self.call(admin.retrieve("/id-mn/cse-mn", rt={"rtv": 4}))
        self.assertEqual([q.rt for q in inbox.requests], [None, None])


class RestartTests(CSETestCase):
    """On a store that outlives the CSE (see tests.test_durable for the SQLite store)."""

    config = CSEConfig(poa=(URL,), max_requests_per_originator=2)

    def restart(self) -> None:
        """A new CSE on the same store (what the first one scheduled does not run)."""
        from acmews.cse import CSE

        for call in self.clock.getDelayedCalls():
            call.cancel()
        self.cse = CSE(self.config, self.sender, self.clock, self.cse.store)

    def test_a_pending_request_is_failed_after_a_restart(self) -> None:
        aei = self.register("Cnb")
        response = self.call(1, f"cse-in/{aei}", aei, ty=3, pc={"m2m:cnt": {}}, rt=SYNCH)
        self.assertEqual(response.rsc, RSC.ACCEPTED_NON_BLOCKING_SYNC)
        ri = response.pc["m2m:uri"].rsplit("/", 1)[1]
        self.restart()  # before the operation ran
        req = self.retrieve(ri, aei).pc["m2m:req"]
        self.assertEqual(req["rs"], RequestStatus.FAILED)
        self.assertEqual(req["ors"]["rsc"], RSC.INTERNAL_SERVER_ERROR)
        self.assertIn("stopped", req["ors"]["pc"]["m2m:dbg"])
        self.assertEqual(self.retrieve(f"cse-in/{aei}", aei).pc["m2m:ae"].get("cni"), None)

    def test_the_bounds_count_the_requests_kept_before(self) -> None:
        aei = self.register("Cnb")
        first, second = (self.call(2, "cse-in", aei, rt=SYNCH).pc["m2m:uri"] for _ in "12")
        self.clock.advance(0)
        self.restart()
        self.assertEqual(self.call(2, "cse-in", aei, rt=SYNCH).rsc, 1001)
        self.clock.advance(0)
        self.assertEqual(self.retrieve(first, aei).rsc, RSC.NOT_FOUND)
        self.assertEqual(self.retrieve(second, aei).rsc, RSC.OK)
