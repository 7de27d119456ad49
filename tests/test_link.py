"""Two acmews CSEs paired over iosim: an MN-CSE keeps one WebSocket to its IN-CSE registrar."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from acmews.client import as_handler
from acmews.codes import RSC, Operation, ResourceType
from acmews.cse import CSE, CSEConfig
from acmews.interfaces import IHandshakeAuthorizer
from acmews.link import RegistrarLink
from acmews.originators import OriginatorMap
from acmews.poa import PoaChain
from acmews.primitive import Request, Response
from acmews.testing import FakeConnection, make_client_factory, make_server_factory, options
from acmews.testing import connected_pair as pair

IN, MN = "/id-in", "/id-mn"


@implementer(IStreamClientEndpoint)
class PairingEndpoint:
    """Connects a client factory to ``server_factory`` in memory, as often as asked."""

    def __init__(self, server_factory: Any) -> None:
        self.server_factory = server_factory
        self.pumps: list[IOPump] = []
        self.refuse = False
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        address = IPv4Address("TCP", "127.0.0.1", 8180)
        client = factory.buildProtocol(address)
        server = self.server_factory.buildProtocol(address)
        pump = connect(
            server,
            FakeTransport(server, isServer=True, hostAddress=address, peerAddress=address),
            client,
            FakeTransport(client, isServer=False, hostAddress=address, peerAddress=address),
            greet=False,  # the exchange happens in flush(), after connect() returns
        )
        self.pumps.append(pump)
        return succeed(client)


class Stack:
    def __init__(self, clock: Clock, config: CSEConfig) -> None:
        self.originators = OriginatorMap()
        self.chain = PoaChain(self.originators, clock, [], timeout=5.0)
        self.cse = CSE(config, self.chain, clock)


class LinkTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_795_000_000)
        self.inn = Stack(
            self.clock,
            CSEConfig(cse_id=IN, cse_name="cse-in", allowed_csr_originators=("/id-mn",)),
        )
        self.in_factory = make_server_factory(self.inn.cse, self.clock, self.inn.originators)
        self.endpoint = PairingEndpoint(self.in_factory)
        self.mn = Stack(
            self.clock,
            CSEConfig(
                cse_id=MN, cse_name="cse-mn", registrar_cse_id=IN, cse_type=2, poa=("ws://mn:1",)
            ),
        )
        self.link = self.make_link()

    def make_link(self, **kwargs: Any) -> RegistrarLink:
        """The MN-CSE's link to the IN-CSE, over ``self.endpoint``."""
        return RegistrarLink(
            self.mn.cse,
            self.mn.originators,
            "ws://127.0.0.1:8180",
            IN,
            "cse-in",
            reactor=self.clock,
            clock=self.clock,
            options=options(),
            endpoint=self.endpoint,
            **kwargs,
        )

    def tearDown(self) -> None:
        if self.link.running:
            d = self.link.stopService()
            self.flush()
            self.successResultOf(d)
        self.flush()
        self.inn.chain.stop()
        self.mn.chain.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def flush(self) -> None:
        for _ in range(20):
            for pump in self.endpoint.pumps:
                pump.flush()
            self.clock.advance(0)

    def start(self) -> None:
        self.link.startService()
        self.flush()
        self.assertTrue(self.link.registered, self.link.state)

    def stop(self) -> None:
        d = self.link.stopService()
        self.flush()
        self.successResultOf(d)

    def refuse_registrations(self) -> None:
        """The IN-CSE accepts no remoteCSE from the MN-CSE (4103)."""
        self.inn.cse = CSE(
            CSEConfig(cse_id=IN, cse_name="cse-in", allowed_csr_originators=("/id-other",)),
            self.inn.chain,
            self.clock,
        )
        self.in_factory.handler = self.inn.cse

    def on(self, stack: Stack, op: Operation, to: str, fr: str, **kw: Any) -> Response:
        result = stack.cse.handle_request(Request(op, to, "t1", fr=fr, **kw), FakeConnection())
        if isinstance(result, Deferred):
            self.flush()
            return self.successResultOf(result)
        return result

    def test_registration_both_remote_cses(self) -> None:
        self.start()
        at_in = self.on(self.inn, Operation.RETRIEVE, "cse-in/id-mn", "CAdmin").pc["m2m:csr"]
        self.assertEqual((at_in["csi"], at_in["cb"], at_in["cst"]), (MN, "/id-mn/cse-mn", 2))
        self.assertEqual(at_in["poa"], ["ws://mn:1"])
        at_mn = self.on(self.mn, Operation.RETRIEVE, "cse-mn/id-in", "CAdmin").pc["m2m:csr"]
        self.assertEqual((at_mn["csi"], at_mn["cb"], at_mn["cst"]), (IN, "/id-in/cse-in", 1))
        self.assertEqual(
            self.on(self.mn, Operation.RETRIEVE, "cse-mn", "CAdmin").pc["m2m:cb"]["cst"], 2
        )

    def test_forwarding_both_ways_over_the_one_connection(self) -> None:
        self.start()
        r = self.on(self.inn, Operation.RETRIEVE, "/id-mn/cse-mn", "CAdmin")
        self.assertEqual((r.rsc, r.rqi, r.pc["m2m:cb"]["csi"]), (RSC.OK, "t1", MN))
        r = self.on(self.mn, Operation.RETRIEVE, "/id-in/cse-in", "CAdmin")
        self.assertEqual((r.rsc, r.pc["m2m:cb"]["csi"]), (RSC.OK, IN))
        # a CSE neither knows: the MN sends it up, the IN has no route (and never back)
        r = self.on(self.mn, Operation.RETRIEVE, "/id-far/x", "CAdmin")
        self.assertEqual(r.rsc, RSC.TARGET_NOT_REACHABLE)
        self.assertEqual(len(self.endpoint.pumps), 1)

    def test_link_down_fails_fast_and_comes_back_with_backoff(self) -> None:
        self.start()
        self.endpoint.refuse = True
        self.endpoint.pumps[0].client.transport.loseConnection()  # type: ignore[attr-defined]
        self.flush()
        self.assertFalse(self.link.registered)
        r = self.on(self.mn, Operation.RETRIEVE, "/id-in/cse-in", "CAdmin")
        self.assertEqual(r.rsc, RSC.TARGET_NOT_REACHABLE)  # at once, no timeout
        # a notification for the registrar waits
        self.on(self.mn, Operation.NOTIFY, "/id-in/cse-in/Cae", "CAdmin", pc={"m2m:sgn": {}})
        self.assertEqual(len(self.mn.chain.queued(IN)), 1)
        attempts = self.endpoint.attempts
        self.clock.advance(10)
        self.assertGreater(self.endpoint.attempts, attempts)  # retried, refused
        self.assertIn("backing off", self.link.state)
        self.endpoint.refuse = False
        self.clock.advance(120)
        self.flush()
        self.assertTrue(self.link.registered, self.link.state)
        # registered again (4105, then an UPDATE), forwarding resumes, the queue is flushed
        r = self.on(self.mn, Operation.RETRIEVE, "/id-in/cse-in", "CAdmin")
        self.assertEqual(r.rsc, RSC.OK)
        self.assertEqual(self.mn.chain.queued(IN), [])

    def test_clean_stop_deregisters_unless_told_to_keep(self) -> None:
        self.start()
        d = self.link.stopService()
        self.flush()
        self.successResultOf(d)
        r = self.on(self.inn, Operation.RETRIEVE, "cse-in/id-mn", "CAdmin")
        self.assertEqual(r.rsc, RSC.NOT_FOUND)

    def test_keep_registration(self) -> None:
        self.link.keep_registration = True
        self.start()
        d = self.link.stopService()
        self.flush()
        self.successResultOf(d)
        r = self.on(self.inn, Operation.RETRIEVE, "cse-in/id-mn", "CAdmin")
        self.assertEqual(r.rsc, RSC.OK)

    def test_an_ae_at_the_mn_is_notified_of_a_change_at_the_in(self) -> None:
        self.start()
        inbox: list[Request] = []

        def receive(request: Request) -> Response:
            inbox.append(request)
            return Response(RSC.OK, request.rqi, request.rvi)

        # an AE at the MN with its own connection there
        mn_factory = make_server_factory(self.mn.cse, self.clock, self.mn.originators)
        ae = pair(
            mn_factory, make_client_factory(self.clock, "Cmnae", handler=as_handler(receive))
        )
        self.endpoint.pumps.append(ae.pump)
        r = self.on(
            self.mn,
            Operation.CREATE,
            "cse-mn",
            "Cmnae",
            ty=ResourceType.AE,
            pc={"m2m:ae": {"api": "Nx", "rr": True}},
        )
        self.assertEqual(r.rsc, RSC.CREATED)
        # a container at the IN, subscribed with the MN's AE as nu
        self.on(self.inn, Operation.CREATE, "cse-in", "CAdmin", ty=3, pc={"m2m:cnt": {"rn": "b"}})
        sub = {"m2m:sub": {"nu": ["/id-mn/Cmnae"], "enc": {"net": [3]}}}
        r = self.on(self.inn, Operation.CREATE, "cse-in/b", "CAdmin", ty=23, pc=sub)
        self.assertEqual(r.rsc, RSC.CREATED, r.debug)  # verified through the MN
        self.on(self.inn, Operation.CREATE, "cse-in/b", "CAdmin", ty=4, pc={"m2m:cin": {"con": 7}})
        self.flush()
        verification, notification = inbox
        self.assertTrue(verification.pc["m2m:sgn"]["vrq"])
        self.assertEqual(notification.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], 7)
        self.assertEqual(notification.fr, IN)
        ae.client_session.close()
        self.flush()

    def test_a_refused_registration_is_retried_with_growing_delays(self) -> None:
        self.refuse_registrations()
        times: list[float] = []
        connect = self.endpoint.connect
        self.endpoint.connect = lambda f: (times.append(self.clock.seconds()), connect(f))[1]
        self.link.startService()
        self.flush()
        self.assertFalse(self.link.registered)
        self.assertEqual(self.link.state, "registration failed")
        for _ in range(40):
            self.clock.advance(0.5)
            self.flush()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertGreaterEqual(len(gaps), 3)
        # (the ClientService adds its own jittered delay: the gaps grow, if not strictly)
        self.assertTrue(all(b >= a for a, b in itertools.pairwise(gaps)), gaps)
        self.assertGreater(gaps[-1], gaps[0])
        self.assertGreaterEqual(gaps[0], 1)

    def test_a_refusal_is_logged_with_the_registrars_rsc_and_reason(self) -> None:
        self.refuse_registrations()
        with capturedLogs() as events:
            self.link.startService()
            self.flush()
        (event,) = [e for e in events if e.get("log_format", "").startswith("registration at")]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["rsc"], RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        self.assertIn("the registrar answered 4103: ", event["error"])
        self.assertGreaterEqual(event["delay"], 1)
        # the refused connection is closed (the ClientService would leave it open)
        self.assertNotIn(MN, self.inn.originators)
        self.assertFalse(self.endpoint.pumps[0].client.session.connected)

    def test_the_link_shows_the_credentials_the_registrar_asks_for(self) -> None:
        import base64
        import hashlib

        from acmews.auth import CredentialAuthorizer, read_basic_file

        entry = f"mn:{hashlib.sha256(b'secret').hexdigest()}:/id-mn"
        self.in_factory.authorizer = CredentialAuthorizer(read_basic_file([entry]))
        self.link.startService()
        self.flush()
        self.assertFalse(self.link.registered)  # 401: no Authorization
        d = self.link.stopService()
        self.flush()
        self.successResultOf(d)
        self.link = self.make_link(
            headers={"Authorization": "Basic " + base64.b64encode(b"mn:secret").decode()}
        )
        self.start()
        at_in = self.on(self.inn, Operation.RETRIEVE, "cse-in/id-mn", "CAdmin").pc["m2m:csr"]
        self.assertEqual(at_in["csi"], MN)

    def test_stopping_while_the_websocket_opens_closes_it(self) -> None:
        pending: Deferred[str | None] = Deferred()

        @implementer(IHandshakeAuthorizer)
        class Undecided:
            def authorize(self, handshake: Any) -> Deferred[str | None]:
                return pending

        self.in_factory.authorizer = Undecided()
        self.link.startService()
        self.flush()
        self.assertEqual(self.link.state, "connecting")
        self.stop()
        self.assertEqual(self.link.state, "stopped")
        self.assertTrue(self.endpoint.pumps[0].clientIO.disconnected)
        pending.callback(MN)
        self.flush()
        self.assertNotIn(MN, self.inn.originators)

    def test_stopping_while_registering_leaves_no_retry_behind(self) -> None:
        # the registrar never answers: the registration is still in flight at the stop
        self.in_factory.handler = as_handler(lambda request: Deferred())
        self.link.startService()
        self.flush()
        self.assertEqual(self.link.state, "registering")
        d = self.link.stopService()
        self.flush()
        self.successResultOf(d)
        self.assertFalse(self.link.registered)
        attempts = self.endpoint.attempts
        self.clock.advance(120)
        self.assertEqual(self.endpoint.attempts, attempts)
        # (tearDown: no delayed call left, e.g. a retry scheduled by the failed registration)
