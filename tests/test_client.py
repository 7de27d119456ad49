"""acmews.client: the request API (in memory) and one loopback integration test."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from acmews.client import Client, connect, listen, subprotocols_for
from acmews.codes import RSC, Operation, ResourceType
from acmews.errors import TargetNotReachable
from acmews.interfaces import IConnection
from acmews.originators import OriginatorMap
from acmews.primitive import Request, Response
from acmews.protocol import OneM2MServerFactory
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair

from .helpers import NO_PING


class ClientApiTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler(self.answer)
        self.server_factory = make_server_factory(self.handler, self.clock)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def answer(self, request: Request, connection: IConnection) -> Response:
        if request.is_ae_create:
            return Response(2001, request.rqi, "4", {"m2m:ae": {"aei": "Cgiven"}})
        return Response(2000, request.rqi, "4", {"echo": request.to_dict()})

    def client(self, originator: str | None, handler: Any = None) -> tuple[Client, Any]:
        p = pair(self.server_factory, make_client_factory(self.clock, originator, handler=handler))
        return Client(p.client_session, originator), p

    def test_operations_build_requests(self) -> None:
        c, p = self.client("Cae1")
        ds = [
            c.create("cse-in/Cae1", ResourceType.CNT, {"m2m:cnt": {"mni": 3}}, rn="x"),
            c.retrieve("cse-in/Cae1", rcn=4, fc={"fu": 1}),
            c.update("cse-in/Cae1/x", {"m2m:cnt": {"lbl": ["a"]}}),
            c.delete("cse-in/Cae1/x"),
            c.notify("Cother", {"m2m:sgn": {}}, custom=1),
        ]
        p.flush()
        got = [r for r, _ in self.handler.requests]
        self.assertEqual([r.op for r in got], [1, 2, 3, 4, 5])
        self.assertEqual(got[0].ty, 3)
        self.assertEqual(got[0].pc, {"m2m:cnt": {"mni": 3}})
        self.assertEqual(got[0].extra, {"rn": "x"})
        self.assertEqual((got[1].rcn, got[1].fc), (4, {"fu": 1}))
        self.assertEqual(got[4].extra, {"custom": 1})
        self.assertTrue(all(r.fr == "Cae1" and r.rvi == "4" for r in got))
        self.assertEqual(len({r.rqi for r in got}), 5)
        for d in ds:
            self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_ae_registration_without_header_adopts_ae_id(self) -> None:
        c, p = self.client(None)
        d = c.create("cse-in", ResourceType.AE, {"m2m:ae": {"api": "Nx", "rr": True}})
        p.flush()
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        self.assertEqual(c.originator, "Cgiven")
        self.assertIsNone(self.handler.requests[0][0].fr)
        d = c.retrieve("cse-in")
        p.flush()
        self.assertEqual(self.successResultOf(d).rsc, 2000)
        self.assertEqual(self.handler.requests[1][0].fr, "Cgiven")

    def test_plain_callable_and_coroutine_handlers(self) -> None:
        seen: list[str] = []

        def on_request(request: Request) -> Response:
            seen.append(request.rqi)
            return Response(2000, request.rqi, "4")

        async def on_request_async(request: Request) -> Response:
            seen.append("async " + request.rqi)
            return Response(2004, request.rqi, "4")

        for fn, rsc in ((on_request, 2000), (on_request_async, 2004)):
            _c, p = self.client("Cae1", handler=None)
            from acmews.client import as_handler

            p.client_session.handler = as_handler(fn)
            d = p.server_session.request(
                Request(Operation.NOTIFY, "Cae1", f"n{rsc}", "4", "/id-in", pc={"m2m:sgn": {}})
            )
            p.flush()
            self.assertEqual(self.successResultOf(d).rsc, rsc)
        self.assertEqual(seen, ["n2000", "async n2004"])

    def test_close(self) -> None:
        c, p = self.client("Cae1")
        d = c.close()
        p.flush()
        self.successResultOf(d)
        self.assertFalse(c.connected)
        self.failureResultOf(c.retrieve("cse-in"), TargetNotReachable)

    def test_subprotocols_for(self) -> None:
        self.assertEqual(subprotocols_for("cbor"), ["oneM2M.cbor"])
        self.assertEqual(subprotocols_for(["json", "oneM2M.cbor"]), ["oneM2M.json", "oneM2M.cbor"])

    def test_bad_url(self) -> None:
        self.assertRaises(ValueError, connect, "http://x", reactor=self.clock)


class LoopbackTests(TestCase):
    """Real sockets on 127.0.0.1, port 0: a CSE-like server, a client; and a client's listen."""

    @inlineCallbacks
    def test_client_and_server_over_loopback(self) -> Any:
        originators = OriginatorMap()
        handler = RecordingHandler()
        factory = OneM2MServerFactory(handler, originators, reactor=reactor, options=NO_PING)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}"
        notified: Deferred[Request] = Deferred()

        def on_notify(request: Request) -> Response:
            notified.callback(request)
            return Response(2000, request.rqi, "4")

        for serialization in ("json", "cbor"):
            c = yield connect(
                url,
                originator="Cloop",
                serialization=serialization,
                handler=on_notify,
                options=NO_PING,
            )
            self.assertEqual(c.subprotocol, f"oneM2M.{serialization}")
            r = yield c.retrieve("cse-in", pc={"q": "ü"})
            self.assertEqual((r.rsc, r.pc), (2000, {"q": "ü"}))
            server_side = originators.lookup("Cloop")
            assert server_side is not None
            yield c.close()
            yield server_side.when_closed()  # type: ignore[attr-defined]
        # the server can reach a connected originator
        c = yield connect(url, originator="Cloop", handler=on_notify, options=NO_PING)
        session = originators.lookup("Cloop")
        assert session is not None
        r = yield session.request(
            Request(Operation.NOTIFY, "Cloop", "n1", "4", "/id-in", pc={"m2m:sgn": {}})
        )
        self.assertEqual(r.rsc, 2000)
        self.assertEqual((yield notified).rqi, "n1")
        yield c.close()
        yield session.when_closed()  # type: ignore[attr-defined]
        self.assertEqual(len(originators), 0)

    @inlineCallbacks
    def test_registree_listens_and_registrar_connects(self) -> Any:
        got: list[Request] = []

        def on_request(request: Request) -> Response:
            got.append(request)
            return Response(2000, request.rqi, "4")

        originators = OriginatorMap()
        port = yield listen(
            "tcp:0:interface=127.0.0.1",
            on_request,
            reactor=reactor,
            originators=originators,
            options=NO_PING,
        )
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}"
        c = yield connect(url, originator="/id-in", options=NO_PING)
        r = yield c.notify("Cae1", {"m2m:sgn": {"sur": "x"}}, fr="/id-in")
        self.assertEqual(r.rsc, 2000)
        self.assertEqual(got[0].fr, "/id-in")
        self.assertIsNotNone(originators.lookup("/id-in"))
        # the same originator rules: a foreign fr is refused
        r = yield c.notify("Cae1", {"m2m:sgn": {}}, fr="/id-other")
        self.assertEqual(r.rsc, 4103)
        server_side = originators.lookup("/id-in")
        assert server_side is not None
        yield c.close()
        yield server_side.when_closed()  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_connect_refused(self) -> Any:
        port = reactor.listenTCP(0, OneM2MServerFactory(None), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        try:
            yield connect(f"ws://127.0.0.1:{number}", originator="Cx", options=NO_PING)
        except TargetNotReachable as e:
            self.assertIn("cannot connect", e.reason)
        else:
            self.fail("connected to a closed port")
