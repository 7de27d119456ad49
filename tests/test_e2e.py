"""The whole stack end to end: CSE + poa chain + binding, over iosim (no sockets) and, in a few
tests, over real loopback sockets (twistd's makeService, a registree's own WebSocket server)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from acmews.client import Client, as_handler, connect, listen
from acmews.codes import RSC, ResourceType
from acmews.cse import CSE, CSEConfig
from acmews.interfaces import IConnection
from acmews.originators import OriginatorMap
from acmews.poa import PoaChain
from acmews.primitive import Request, Response
from acmews.testing import Pair, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair

from .helpers import NO_PING, start_cse


class Notifications:
    """A client-side handler: records requests, answers 2000 (or what ``answer`` says)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.rsc = 2000

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(self.rsc, request.rqi, request.rvi)

    def events(self) -> list[dict[str, Any]]:
        return [r.pc["m2m:sgn"] for r in self.requests if "nev" in r.pc["m2m:sgn"]]


class StackTestCase(TestCase):
    config = CSEConfig(poa=("ws://127.0.0.1:8180",))

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_795_000_000)  # timestamps in 2026
        self.originators = OriginatorMap()
        self.chain = PoaChain(self.originators, self.clock, [], timeout=5.0)
        self.cse = CSE(self.config, self.chain, self.clock)
        self.factory = make_server_factory(self.cse, self.clock, self.originators)
        self.pairs: list[Pair] = []

    def tearDown(self) -> None:
        for p in self.pairs:
            if p.client.session is not None and p.client.session.connected:
                p.client.session.close()
                p.flush()
        self.chain.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def flush(self) -> None:
        """Move bytes and run the CSE's deferred notification sends until all is quiet."""
        for _ in range(10):
            for p in self.pairs:
                p.flush()
            self.clock.advance(0)
        for p in self.pairs:
            p.flush()

    def client(
        self, originator: str | None, handler: Any = None, serialization: str = "oneM2M.json"
    ) -> Client:
        p = pair(
            self.factory,
            make_client_factory(
                self.clock, originator, subprotocols=[serialization], handler=as_handler(handler)
            ),
        )
        self.pairs.append(p)
        return Client(p.client_session, originator)

    def call(self, d: Deferred[Response]) -> Response:
        self.flush()
        return self.successResultOf(d)

    def register(
        self, name: str, handler: Any = None, header: bool = True, **attrs: Any
    ) -> Client:
        c = self.client(name if header else None, handler)
        ae = {"rn": name.lower(), "api": "Nt", "rr": True, "srv": ["4"], **attrs}
        r = self.call(
            c.create("cse-in", ResourceType.AE, {"m2m:ae": ae}, fr=name if header else None)
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        return c


class RegistrationTests(StackTestCase):
    def test_with_and_without_header(self) -> None:
        self.register("Cwith")
        self.assertIs(self.originators.lookup("Cwith"), self.pairs[-1].server_session)
        b = self.register("Cnohdr", header=False)
        aei = b.originator
        assert aei is not None and aei.startswith("C")
        self.assertIs(self.originators.lookup(aei), self.pairs[-1].server_session)
        r = self.call(b.retrieve(f"cse-in/{'cnohdr'}"))
        self.assertEqual(r.rsc, RSC.OK)
        self.assertEqual(r.pc["m2m:ae"]["aei"], aei)

    def test_unbound_connection_refused_except_registration(self) -> None:
        c = self.client(None)
        r = self.call(c.retrieve("cse-in", fr="CAdmin"))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assertIn("AE CREATE", r.debug or "")

    def test_taken_ae_id_and_fr_mismatch(self) -> None:
        self.register("Ctaken")
        other = self.client("Cother")
        r = self.call(
            other.create(
                "cse-in", ResourceType.AE, {"m2m:ae": {"api": "Nx", "rr": True}}, fr="Ctaken"
            )
        )
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)  # fr is not the header's
        c = self.client("Ctaken")  # replaces the first connection (newest wins)
        r = self.call(c.create("cse-in", ResourceType.AE, {"m2m:ae": {"api": "Nx", "rr": True}}))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_ALREADY_REGISTERED)


class DataTests(StackTestCase):
    def test_container_mni_eviction_la_ol_over_cbor(self) -> None:
        ae = self.register("Csensor")
        cbor = self.client("Csensor", serialization="oneM2M.cbor")  # replaces the json one
        self.assertEqual(
            self.call(
                cbor.create("cse-in/csensor", ResourceType.CNT, {"m2m:cnt": {"rn": "t", "mni": 2}})
            ).rsc,
            2001,
        )
        for v in ("a", "b", "ü"):
            r = self.call(
                cbor.create("cse-in/csensor/t", ResourceType.CIN, {"m2m:cin": {"con": v}})
            )
            self.assertEqual(r.rsc, RSC.CREATED)
        cnt = self.call(cbor.retrieve("cse-in/csensor/t")).pc["m2m:cnt"]
        self.assertEqual((cnt["cni"], cnt["cbs"]), (2, 3))
        self.assertEqual(self.call(cbor.retrieve("cse-in/csensor/t/la")).pc["m2m:cin"]["con"], "ü")
        self.assertEqual(self.call(cbor.retrieve("cse-in/csensor/t/ol")).pc["m2m:cin"]["con"], "b")
        r = self.call(cbor.update("cse-in/csensor/t/la", {"m2m:cin": {"con": "x"}}))
        self.assertEqual(r.rsc, RSC.OPERATION_NOT_ALLOWED)
        self.assertFalse(ae.connected)

    def test_errors_over_the_wire(self) -> None:
        admin = self.client("CAdmin")
        self.register("Cowner")
        stranger = self.register("Cstranger")
        cases = [
            (admin.retrieve("cse-in/nothing"), RSC.NOT_FOUND),
            (
                admin.create("cse-in/cowner", ResourceType.CNT, {"m2m:cnt": {"rn": "dup"}}),
                RSC.CREATED,
            ),
            (
                admin.create("cse-in/cowner", ResourceType.CNT, {"m2m:cnt": {"rn": "dup"}}),
                RSC.CONFLICT,
            ),
            (stranger.retrieve("cse-in/cowner/dup"), RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
            (admin.retrieve("cse-in", rcn=7), RSC.BAD_REQUEST),
            (admin.create("cse-in/cowner", ResourceType.CNT, {"m2m:ae": {}}), RSC.BAD_REQUEST),
            (admin.retrieve("//other.sp/id-x/cse-x"), RSC.TARGET_NOT_REACHABLE),
        ]
        for d, rsc in cases:
            r = self.call(d)
            self.assertEqual(r.rsc, rsc, r.debug)
            if rsc >= 4000:
                self.assertTrue(r.debug)

    def test_acp_grant_and_denial(self) -> None:
        owner = self.register("Cown")
        reader = self.register("Creader")
        self.call(
            owner.create(
                "cse-in/cown",
                ResourceType.ACP,
                {
                    "m2m:acp": {
                        "rn": "acp",
                        "pv": {"acr": [{"acor": ["Creader"], "acop": 2}]},
                        "pvs": {"acr": [{"acor": ["Cown"], "acop": 63}]},
                    }
                },
            )
        )
        r = self.call(
            owner.create(
                "cse-in/cown",
                ResourceType.CNT,
                {"m2m:cnt": {"rn": "shared", "acpi": ["cse-in/cown/acp"]}},
            )
        )
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        self.assertEqual(self.call(reader.retrieve("cse-in/cown/shared")).rsc, RSC.OK)
        r = self.call(
            reader.create("cse-in/cown/shared", ResourceType.CIN, {"m2m:cin": {"con": 1}})
        )
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)

    def test_discovery(self) -> None:
        admin = self.client("CAdmin")
        self.register("Cdisc")
        for i in range(3):
            self.call(
                admin.create(
                    "cse-in/cdisc",
                    ResourceType.CNT,
                    {"m2m:cnt": {"rn": f"c{i}", "lbl": ["k"] if i else []}},
                )
            )
        r = self.call(admin.retrieve("cse-in", fc={"fu": 1, "ty": [3], "lbl": ["k"]}))
        self.assertEqual(sorted(r.pc["m2m:uril"]), ["cse-in/cdisc/c1", "cse-in/cdisc/c2"])


class SubscriptionTests(StackTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.owner = self.register("Cowner")
        self.watcher_inbox = Notifications()
        self.watcher = self.register("Cwatch", handler=self.watcher_inbox)
        self.call(self.owner.create("cse-in/cowner", ResourceType.CNT, {"m2m:cnt": {"rn": "c"}}))

    def subscribe(self, **sub: Any) -> Response:
        body = {"rn": "s", "nu": ["Cwatch"], "enc": {"net": [3]}, **sub}
        return self.call(self.owner.create("cse-in/cowner/c", ResourceType.SUB, {"m2m:sub": body}))

    def test_verification_then_each_event(self) -> None:
        r = self.subscribe(enc={"net": [1, 2, 3, 4]}, su="Cwatch")
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)
        vrq = self.watcher_inbox.requests[0]
        self.assertEqual(
            (vrq.fr, vrq.pc["m2m:sgn"]["vrq"], vrq.pc["m2m:sgn"]["cr"]), ("/id-in", True, "Cowner")
        )
        self.call(
            self.owner.create(
                "cse-in/cowner/c", ResourceType.CIN, {"m2m:cin": {"rn": "i", "con": "v"}}
            )
        )  # net 3
        self.call(self.owner.delete("cse-in/cowner/c/i"))  # net 4
        self.call(self.owner.update("cse-in/cowner/c", {"m2m:cnt": {"lbl": ["x"]}}))  # net 1
        self.call(self.owner.delete("cse-in/cowner/c"))  # net 2, sud
        events = self.watcher_inbox.events()
        self.assertEqual([e["nev"]["net"] for e in events], [3, 4, 1, 2])
        self.assertEqual(events[0]["nev"]["rep"]["m2m:cin"]["con"], "v")
        self.assertEqual(events[2]["nev"]["rep"]["m2m:cnt"]["lbl"], ["x"])
        self.assertTrue(all(e["sur"].startswith("/id-in/") for e in events))
        sud = [r.pc["m2m:sgn"] for r in self.watcher_inbox.requests if r.pc["m2m:sgn"].get("sud")]
        self.assertEqual(len(sud), 1)

    def test_failed_verification_is_5204(self) -> None:
        self.watcher_inbox.rsc = 4103
        r = self.subscribe()
        self.assertEqual(r.rsc, RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED)
        self.assertEqual(self.call(self.owner.retrieve("cse-in/cowner/c/s")).rsc, RSC.NOT_FOUND)

    def test_exc(self) -> None:
        self.assertEqual(self.subscribe(exc=2).rsc, RSC.CREATED)
        for i in range(3):
            self.call(
                self.owner.create("cse-in/cowner/c", ResourceType.CIN, {"m2m:cin": {"con": i}})
            )
        self.assertEqual(len(self.watcher_inbox.events()), 2)
        self.assertEqual(self.call(self.owner.retrieve("cse-in/cowner/c/s")).rsc, RSC.NOT_FOUND)

    def test_notification_before_response_and_store_and_forward(self) -> None:
        self.assertEqual(self.subscribe().rsc, RSC.CREATED)
        self.watcher.session.close()
        self.flush()
        for i in range(3):
            self.call(
                self.owner.create("cse-in/cowner/c", ResourceType.CIN, {"m2m:cin": {"con": i}})
            )
        self.assertEqual(len(self.chain.queued("Cwatch")), 3)
        inbox = Notifications()
        self.client("Cwatch", inbox)
        self.flush()
        self.assertEqual([e["nev"]["rep"]["m2m:cin"]["con"] for e in inbox.events()], [0, 1, 2])
        self.assertEqual(self.chain.queued("Cwatch"), [])

    def test_silent_connection_times_out_then_stores(self) -> None:
        """A connected AE that never answers: the session's own timeout (the chain's, 5 s)
        ends the live step, and the notification goes to store-and-forward."""
        self.assertEqual(self.subscribe().rsc, RSC.CREATED)
        silent: list[Deferred[Response]] = []
        watcher = self.pairs[1].client_session
        watcher.handler = as_handler(lambda rq: silent.append(Deferred()) or silent[-1])
        self.call(self.owner.create("cse-in/cowner/c", ResourceType.CIN, {"m2m:cin": {"con": 1}}))
        self.assertEqual(len(silent), 1)
        self.assertEqual(self.chain.queued("Cwatch"), [])
        self.clock.advance(5)
        self.flush()
        self.assertEqual(len(self.chain.queued("Cwatch")), 1)
        for d in silent:
            d.callback(Response(2000, "late", "4"))
        self.flush()

    def test_notify_to_an_ae_is_forwarded(self) -> None:
        r = self.call(self.owner.notify("cse-in/cwatch", {"m2m:sgn": {"x": 1}}))
        self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)  # not Cowner's to notify
        admin = self.client("CAdmin")
        r = self.call(admin.notify("cse-in/cwatch", {"m2m:sgn": {"x": 1}}))
        self.assertEqual(r.rsc, RSC.OK)
        self.assertEqual(self.watcher_inbox.requests[-1].pc, {"m2m:sgn": {"x": 1}})
        # passed on SP-relative: an AE's own server only takes originators under /id-in
        self.assertEqual(self.watcher_inbox.requests[-1].fr, "/id-in/CAdmin")


class LoopbackServiceTests(TestCase):
    """makeService on a real port (127.0.0.1, port 0) and real clients."""

    timeout = 20

    def start(self, *argv: str) -> Deferred[tuple[Any, str]]:
        return Deferred.fromCoroutine(start_cse(self, *argv))

    @inlineCallbacks
    def test_register_subscribe_notify(self) -> Any:
        _, url = yield self.start()
        got: Deferred[Request] = Deferred()

        def on_request(request: Request) -> Response:
            if "nev" in request.pc.get("m2m:sgn", {}) and not got.called:
                reactor.callLater(0, got.callback, request)
            return Response(2000, request.rqi, request.rvi)

        ae = yield connect(url, handler=on_request, options=NO_PING)
        r = yield ae.create(
            "cse-in", ResourceType.AE, {"m2m:ae": {"rn": "lamp", "api": "Nl", "rr": True}}
        )
        self.assertEqual(r.rsc, 2001)
        yield ae.create("cse-in/lamp", ResourceType.CNT, {"m2m:cnt": {"rn": "st"}})
        r = yield ae.create(
            "cse-in/lamp/st",
            ResourceType.SUB,
            {"m2m:sub": {"rn": "w", "nu": [ae.originator], "enc": {"net": [3]}}},
        )
        self.assertEqual(r.rsc, 2001)
        admin = yield connect(url, originator="CAdmin", serialization="cbor", options=NO_PING)
        r = yield admin.create("cse-in/lamp/st", ResourceType.CIN, {"m2m:cin": {"con": "on"}})
        self.assertEqual(r.rsc, 2001)
        notification = yield got
        self.assertEqual(notification.fr, "/id-in")
        self.assertEqual(notification.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "on")
        yield ae.close()
        yield admin.close()

    @inlineCallbacks
    def test_notification_to_an_ae_own_websocket_server(self) -> Any:
        """The 'connections in either direction' extension: the AE is not connected; its poa
        is its own WebSocket server; the CSE connects to it (X-M2M-Origin: its CSE-ID), sends
        the notification, gets the answer and closes that connection again."""
        service, url = yield self.start("--cse-id", "/id-loop")
        received: list[tuple[Request, str | None]] = []
        arrived: Deferred[None] = Deferred()
        ae_side = OriginatorMap()
        closed: Deferred[None] = Deferred()

        from zope.interface import implementer

        from acmews.interfaces import IOriginatorObserver, IRequestHandler

        @implementer(IOriginatorObserver)
        class WatchClose:
            def originator_connected(self, originator: str, connection: IConnection) -> None:
                pass

            def originator_disconnected(self, originator: str, connection: IConnection) -> None:
                if originator == "/id-loop" and not closed.called:
                    closed.callback(None)

        ae_side.add_observer(WatchClose())

        @implementer(IRequestHandler)
        class AEServer:
            def handle_request(self, request: Request, connection: IConnection) -> Response:
                received.append((request, connection.originator))
                if "nev" in request.pc["m2m:sgn"]:
                    reactor.callLater(0, arrived.callback, None)
                return Response(2000, request.rqi, request.rvi)

        port = yield listen(
            "tcp:0:interface=127.0.0.1",
            AEServer(),
            reactor=reactor,
            originators=ae_side,
            options=NO_PING,
        )
        self.addCleanup(port.stopListening)
        poa = f"ws://127.0.0.1:{port.getHost().port}"
        ae = yield connect(url, originator="Cremote", options=NO_PING)
        r = yield ae.create(
            "cse-in",
            ResourceType.AE,
            {"m2m:ae": {"rn": "remote", "api": "Nr", "rr": True, "poa": [poa]}},
        )
        self.assertEqual(r.rsc, 2001)
        yield ae.create("cse-in/remote", ResourceType.CNT, {"m2m:cnt": {"rn": "c"}})
        r = yield ae.create(
            "cse-in/remote/c",
            ResourceType.SUB,
            {"m2m:sub": {"rn": "s", "nu": ["Cremote"], "enc": {"net": [3]}}},
        )
        self.assertEqual(r.rsc, 2001)
        yield ae.close()  # from now on the AE is reachable only through its poa
        admin = yield connect(url, originator="CAdmin", options=NO_PING)
        r = yield admin.create("cse-in/remote/c", ResourceType.CIN, {"m2m:cin": {"con": 42}})
        self.assertEqual(r.rsc, 2001)
        yield arrived
        request, origin = received[-1]
        self.assertEqual(origin, "/id-loop")  # X-M2M-Origin on the CSE's handshake
        self.assertEqual(request.fr, "/id-loop")
        self.assertEqual(request.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], 42)
        self.assertEqual(service.chain.queued("Cremote"), [])
        # the CSE closes its connection after the answer
        yield closed
        self.assertIsNone(ae_side.lookup("/id-loop"))
        yield admin.close()


class LoopbackCSEToCSETests(LoopbackServiceTests):
    """Two makeService CSEs on real sockets: the MN registers to the IN over one WebSocket."""

    @inlineCallbacks
    def test_mn_registers_and_requests_are_forwarded(self) -> Any:
        _, in_url = yield self.start("--allowed-csr-originators", "/id-mn")
        mn, mn_url = yield self.start(
            "--cse-id", "/id-mn", "--cse-name", "cse-mn", "--registrar", in_url
        )
        yield mn.link.when_registered()
        admin = yield connect(in_url, originator="CAdmin", options=NO_PING)
        r = yield admin.retrieve("/id-mn/cse-mn")
        self.assertEqual(
            (r.rsc, r.pc["m2m:cb"]["csi"], r.pc["m2m:cb"]["cst"]), (2000, "/id-mn", 2)
        )
        r = yield admin.retrieve("cse-in/id-mn")
        self.assertEqual(r.pc["m2m:csr"]["poa"], ["ws://default"])  # port 0: no poa to derive
        mn_admin = yield connect(mn_url, originator="CAdmin", options=NO_PING)
        r = yield mn_admin.retrieve("/id-in/cse-in")
        self.assertEqual((r.rsc, r.pc["m2m:cb"]["csi"]), (2000, "/id-in"))
        yield mn_admin.close()
        yield mn.stopService()  # deregisters
        r = yield admin.retrieve("cse-in/id-mn")
        self.assertEqual(r.rsc, 4004)
        yield admin.close()
