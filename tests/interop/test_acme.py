"""acmews against the real ACME CSE (acmecse), over loopback WebSockets.

Skipped unless ``ACMEWS_ACME`` names the acmecse executable. Each test starts its own ACME
(fresh directory, free ports, in-memory database) and stops it at cleanup. Scenarios: an
acmews client at ACME's IN-CSE, notified over its own connection (1); an AE whose poa is its own
ws:// server, verified and notified there by ACME (2); ACME as MN-CSE
registered to an acmews IN-CSE (3); an acmews MN-CSE registered to ACME's IN-CSE, and registered
again after ACME restarts (4); python -m acmews.bench against ACME (5).

ACME deviations worked around here (observed with acmecse 2026.5.3):
- several requests in flight on one ACME connection get mixed up: every request here is
  awaited before the next is sent on that connection;
- a NOTIFY can arrive before the response to the request that caused it: the notification
  is awaited after the CREATE's response, from a Deferred the handler fired whenever;
- a second connection for the same originator closes the first, and then sometimes loses
  the second as well (notifications to it dropped, "No WS connection established"): each
  originator here has one connection at a time, closed by the test before it reconnects;
- on a oneM2M.cbor connection ACME sends its own requests (a NOTIFY, a forwarded request) as
  JSON in text frames, and reads whatever comes by the subprotocol (CBOR); the answer to a
  request it forwarded over a oneM2M.cbor link reaches its own client as CBOR in a binary
  frame even on a oneM2M.json connection. acmews reads a text frame on a CBOR connection as
  JSON, a binary frame on a JSON connection that cannot be JSON as CBOR, and answers in the
  connection's own serialization (acmews.session): the CBOR tests of scenarios 1 and 4 run
  whole, a notification and a forwarded request each way over oneM2M.cbor;
- opening a connection to a ws:// poa, ACME offers only oneM2M.json (a registree server that
  accepts only oneM2M.cbor refuses it, and the subscription fails with 5204): scenario 2 runs
  in JSON only;
- the WebSocket and HTTP ports open before the CSEBase exists: start_acme polls the CSEBase
  over HTTP until it answers 2000;
- as an MN-CSE, ACME opens a connection to its registrar per request, at times while one of
  its background jobs still holds another: acmews refuses the second (403: a CSE-ID with a
  live link is not taken over without the same credential), which ACME answers with 4004 "No
  target found". Scenario 3 asks again until the request goes through (seen once so far).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from acmews.client import Client, connect
from acmews.codes import RSC, Operation, ResourceType
from acmews.primitive import Request, Response

from ..helpers import start_cse
from .acme import IN_INI, MN_INI, SKIP, free_port, settle_autobahn_timers, start_acme


async def _with_timeout(d: Deferred[Any], seconds: float) -> Any:
    from twisted.internet import reactor

    d.addTimeout(seconds, reactor)
    return await d


async def _until_found(client: Client, path: str) -> Response:
    """RETRIEVE ``path`` every 0.5 s until it answers 2000 (at most 60 s); the last answer.
    One request at a time: ACME mixes up requests in flight on one connection."""
    from twisted.internet import reactor

    response = await client.retrieve(path)
    for _ in range(119):
        if response.rsc == RSC.OK:
            break
        await deferLater(reactor, 0.5, lambda: None)
        response = await client.retrieve(path)
    return response


class ClientToAcmeTests(TestCase):
    """Scenario 1: an acmews client registers an AE at ACME's IN-CSE, subscribes, and gets the
    notification of a contentInstance another connection creates over its own connection."""

    skip = SKIP
    timeout = 120

    def test_json(self) -> Any:
        return Deferred.fromCoroutine(self._notify_round_trip("json", "oneM2M.json"))

    def test_cbor(self) -> Any:
        # ACME sends the NOTIFY as JSON text on the oneM2M.cbor connection (module docstring)
        return Deferred.fromCoroutine(self._notify_round_trip("cbor", "oneM2M.cbor"))

    def test_compressed(self) -> Any:
        """permessage-deflate (RFC 7692) with ACME's server (websockets, which accepts it by
        default): negotiated, and requests and answers pass compressed (#24)."""

        async def run() -> None:
            settle_autobahn_timers(self)
            acme = await start_acme(self, IN_INI, "cse-in")
            admin: Client = await connect(acme.url, originator="CAdmin", compression=True)
            self.addCleanup(admin.close)
            protocol = admin.session._close.__self__  # type: ignore[union-attr]
            self.assertIsNotNone(protocol._perMessageCompress)
            response = await admin.retrieve("/id-in/cse-in")
            self.assertEqual(
                (response.rsc, response.pc["m2m:cb"]["csi"]), (RSC.OK, "/id-in"), response
            )

        return Deferred.fromCoroutine(run())

    async def _notify_round_trip(self, serialization: str, subprotocol: str) -> None:
        settle_autobahn_timers(self)
        acme = await start_acme(self, IN_INI, "cse-in")
        originator = "Cinterop1"
        notified: Deferred[Request] = Deferred()
        received: list[Request] = []

        def handle(request: Request) -> Response:
            received.append(request)
            if not notified.called:
                notified.callback(request)
            return Response(int(RSC.OK), request.rqi, request.rvi)

        ae: Client = await connect(
            acme.url, originator=originator, serialization=serialization, handler=handle
        )
        self.addCleanup(ae.close)
        self.assertEqual(ae.subprotocol, subprotocol)
        response = await ae.create(
            "/id-in/cse-in",
            ResourceType.AE,
            {
                "m2m:ae": {
                    "rn": "interop1",
                    "api": "Ninterop",
                    "rr": True,
                    "srv": ["3"],
                    "poa": ["ws://default"],
                }
            },
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        self.assertEqual(response.pc["m2m:ae"]["aei"], originator)
        self.assertEqual(response.pc["m2m:ae"]["poa"], ["ws://default"])

        response = await ae.create(
            "/id-in/cse-in/interop1", ResourceType.CNT, {"m2m:cnt": {"rn": "data"}}
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        response = await ae.create(
            "/id-in/cse-in/interop1/data",
            ResourceType.SUB,
            {"m2m:sub": {"rn": "sub", "nu": [originator], "enc": {"net": [3]}}},
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        self.assertEqual(response.pc["m2m:sub"]["nu"], [originator])
        # nu is the subscriber itself: no verification request (nothing notified yet)
        self.assertEqual(received, [])

        admin: Client = await connect(acme.url, originator="CAdmin", serialization=serialization)
        self.addCleanup(admin.close)
        self.assertEqual(admin.subprotocol, subprotocol)
        response = await admin.create(
            "/id-in/cse-in/interop1/data",
            ResourceType.CIN,
            {"m2m:cin": {"con": "hello from CAdmin"}},
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)

        request = await _with_timeout(notified, 20)
        self.assertEqual(request.op, Operation.NOTIFY)
        self.assertEqual(request.to, originator)
        sgn = request.pc["m2m:sgn"]
        self.assertEqual(sgn["nev"]["net"], 3)
        self.assertEqual(sgn["nev"]["rep"]["m2m:cin"]["con"], "hello from CAdmin")
        self.assertIn("sur", sgn)
        self.assertEqual(len(received), 1)


class AcmeMnToAcmewsTests(TestCase):
    """Scenario 3: ACME as MN-CSE registers to an acmews IN-CSE; acmews forwards a request
    for the MN-CSE to it."""

    skip = SKIP
    timeout = 120

    def test_registers_and_answers(self) -> Any:
        return Deferred.fromCoroutine(self._registers("json"))

    def test_cbor(self) -> Any:
        return Deferred.fromCoroutine(self._registers("cbor"))

    async def _registers(self, serialization: str) -> None:
        settle_autobahn_timers(self)
        # a port of its own (not tcp:0), so that the CSEBase's poa names it: ACME's MN copies
        # that poa into its remoteCSE of acmews and routes requests for /id-in by it
        port = free_port()
        _, url = await start_cse(
            self,
            *("--listen", f"tcp:{port}:interface=127.0.0.1"),
            *("--allowed-csr-originators", "/id-mn"),  # ACME's MN shows no credential
        )
        mn = await start_acme(
            self, MN_INI, "cse-mn", registrar_port=port, registrar_serialization=serialization
        )
        admin: Client = await connect(url, originator="CAdmin", serialization="json")
        self.addCleanup(admin.close)
        csr = await _until_found(admin, "/id-in/cse-in/id-mn")
        self.assertEqual(csr.rsc, RSC.OK, csr)
        self.assertEqual(csr.pc["m2m:csr"]["csi"], "/id-mn")

        response = await admin.retrieve("/id-mn/cse-mn")
        self.assertEqual(response.rsc, RSC.OK, response)
        self.assertEqual(response.pc["m2m:cb"]["csi"], "/id-mn")
        self.assertEqual(response.pc["m2m:cb"]["rn"], "cse-mn")
        at_mn: Client = await connect(mn.url, originator="CAdmin", serialization="json")
        self.addCleanup(at_mn.close)
        # ACME's MN makes its own remoteCSE of acmews after the registration: wait for it too
        local = await _until_found(at_mn, "cse-mn/id-in")
        self.assertEqual(local.rsc, RSC.OK, local)
        self.assertEqual(local.pc["m2m:csr"]["poa"], [f"ws://127.0.0.1:{port}"])
        # (asked until it goes through: ACME's connection per request, see the module doc)
        response = await _until_found(at_mn, "/id-in/cse-in")
        self.assertEqual(response.rsc, RSC.OK, response)
        self.assertEqual(response.pc["m2m:cb"]["csi"], "/id-in")
        self.assertEqual(response.pc["m2m:cb"]["cst"], 1)  # acmews's IN-CSE answered


class AcmewsMnToAcmeTests(TestCase):
    """Scenario 4: an acmews MN-CSE (--registrar) registers to ACME's IN-CSE over WebSocket;
    ACME forwards a request for the MN-CSE to it over that link (poa ws://default)."""

    skip = SKIP
    timeout = 120

    def test_registers_and_answers(self) -> Any:
        return Deferred.fromCoroutine(self._registers("json"))

    def test_cbor_link(self) -> Any:
        return Deferred.fromCoroutine(self._registers("cbor"))

    async def _registers(self, serialization: str) -> None:
        from twisted.internet import reactor

        settle_autobahn_timers(self)
        acme = await start_acme(self, IN_INI, "cse-in")
        service, _ = await start_cse(
            self,
            "--cse-id",
            "/id-mn",
            "--cse-name",
            "cse-mn",
            "--registrar",
            acme.url,
            "--registrar-serialization",
            serialization,
        )
        admin: Client = await connect(acme.url, originator="CAdmin", serialization="json")
        self.addCleanup(admin.close)
        csr = await _until_found(admin, "/id-in/cse-in/id-mn")
        self.assertEqual(csr.rsc, RSC.OK, csr)
        self.assertEqual(csr.pc["m2m:csr"]["csi"], "/id-mn")
        self.assertEqual(service.link.session.subprotocol, f"oneM2M.{serialization}")
        # on a oneM2M.cbor link ACME forwards the RETRIEVE as JSON text: answered in kind
        response = await admin.retrieve("/id-mn/cse-mn")
        self.assertEqual(response.rsc, RSC.OK, response)
        self.assertEqual(response.pc["m2m:cb"]["csi"], "/id-mn")
        self.assertEqual(response.pc["m2m:cb"]["rn"], "cse-mn")
        self.assertEqual(response.pc["m2m:cb"]["cst"], 2)  # acmews's MN-CSE answered
        # the same through ACME's HTTP binding (GET /~/id-mn/cse-mn), forwarded over the link
        from acmews.poa import HttpConnector

        over_http = await HttpConnector(reactor).send(
            f"http://127.0.0.1:{acme.http_port}",
            Request(Operation.RETRIEVE, "/id-mn/cse-mn", "http-1", fr="CAdmin"),
            10,
        )
        self.assertEqual(over_http.rsc, RSC.OK, over_http)
        self.assertEqual(over_http.pc["m2m:cb"]["cst"], 2)

        # ACME restarts (its database was in memory: the remoteCSE is gone): acmews's link
        # notices, reconnects with backoff and registers again
        await admin.close()
        await acme.stop(reactor)
        acme = await start_acme(self, IN_INI, "cse-in", again=acme)
        admin = await connect(acme.url, originator="CAdmin", serialization="json")
        self.addCleanup(admin.close)
        csr = await _until_found(admin, "/id-in/cse-in/id-mn")
        self.assertEqual(csr.rsc, RSC.OK, csr)
        response = await admin.retrieve("/id-mn/cse-mn")
        self.assertEqual(response.rsc, RSC.OK, response)
        self.assertEqual(response.pc["m2m:cb"]["cst"], 2)


class AcmeToRegistreeServerTests(TestCase):
    """Scenario 2: an AE whose poa is its own ws:// server (``acmews.client.listen``) gets
    ACME's subscription verification and its notification there, on connections ACME opens."""

    skip = SKIP
    timeout = 120

    def test_verification_and_notification(self) -> Any:
        return Deferred.fromCoroutine(self._registree_server())

    async def _registree_server(self) -> None:
        from acmews.client import listen

        settle_autobahn_timers(self)
        acme = await start_acme(self, IN_INI, "cse-in")
        received: list[tuple[str | None, Request]] = []
        notified: Deferred[None] = Deferred()

        def handle(request: Request) -> Response:
            received.append((request.fr, request))
            sgn = (request.pc or {}).get("m2m:sgn", {})
            if "nev" in sgn and not notified.called:
                notified.callback(None)
            return Response(int(RSC.OK), request.rqi, request.rvi)

        port: Any = await listen("tcp:0:interface=127.0.0.1", handle)
        self.addCleanup(port.stopListening)
        poa = f"ws://127.0.0.1:{port.getHost().port}"
        originator = "Cinterop2"
        ae: Client = await connect(acme.url, originator=originator, serialization="json")
        ae_pc = {"m2m:ae": {"rn": "interop2", "api": "Ninterop", "rr": True, "srv": ["3"]}}
        ae_pc["m2m:ae"]["poa"] = [poa]
        response = await ae.create("/id-in/cse-in", ResourceType.AE, ae_pc)
        self.assertEqual(response.rsc, RSC.CREATED, response)
        self.assertEqual(response.pc["m2m:ae"]["poa"], [poa])
        response = await ae.create(
            "/id-in/cse-in/interop2", ResourceType.CNT, {"m2m:cnt": {"rn": "data"}}
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        # the AE leaves: from now on ACME reaches it only through its poa, its own server
        await ae.close()

        admin: Client = await connect(acme.url, originator="CAdmin", serialization="json")
        self.addCleanup(admin.close)
        # the admin subscribes on the AE's behalf: ACME verifies the nu with the AE first
        response = await admin.create(
            "/id-in/cse-in/interop2/data",
            ResourceType.SUB,
            {"m2m:sub": {"rn": "sub", "nu": [originator], "enc": {"net": [3]}}},
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        verifications = [r for _, r in received if "vrq" in (r.pc or {}).get("m2m:sgn", {})]
        self.assertEqual(len(verifications), 1, received)
        self.assertEqual(verifications[0].op, Operation.NOTIFY)
        self.assertEqual(verifications[0].pc["m2m:sgn"]["cr"], "CAdmin")

        response = await admin.create(
            "/id-in/cse-in/interop2/data", ResourceType.CIN, {"m2m:cin": {"con": "to the poa"}}
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        await _with_timeout(notified, 20)
        (notification,) = [r for _, r in received if "nev" in r.pc["m2m:sgn"]]
        self.assertEqual(notification.op, Operation.NOTIFY)
        self.assertEqual(notification.pc["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "to the poa")
        # every request came from ACME's IN-CSE (X-M2M-Origin /id-in on its connections)
        self.assertTrue(all(fr is not None and fr.startswith("/id-in") for fr, _ in received))


class HeaderlessRegistrationTests(TestCase):
    """Scenario 1, without the header: an AE registers on a connection that sends no
    X-M2M-Origin, then reconnects with the AE-ID ACME assigned."""

    skip = SKIP
    timeout = 120

    def test_register_then_reconnect_with_the_header(self) -> Any:
        return Deferred.fromCoroutine(self._headerless())

    async def _headerless(self) -> None:
        settle_autobahn_timers(self)
        acme = await start_acme(self, IN_INI, "cse-in")
        anonymous: Client = await connect(acme.url, originator=None, serialization="json")
        self.addCleanup(anonymous.close)
        response = await anonymous.create(
            "/id-in/cse-in",
            ResourceType.AE,
            {"m2m:ae": {"rn": "interop3", "api": "Ninterop", "rr": False, "srv": ["3"]}},
        )
        self.assertEqual(response.rsc, RSC.CREATED, response)
        aei = response.pc["m2m:ae"]["aei"]
        self.assertTrue(aei.startswith("C"), aei)
        # ACME deviation: the header-less connection stays unusable after the registration
        # (4103 for anything else), so the AE reconnects with its AE-ID in the header
        await anonymous.close()
        ae: Client = await connect(acme.url, originator=aei, serialization="json")
        self.addCleanup(ae.close)
        response = await ae.retrieve("/id-in/cse-in/interop3")
        self.assertEqual(response.rsc, RSC.OK, response)
        self.assertEqual(response.pc["m2m:ae"]["aei"], aei)
        response = await ae.delete("/id-in/cse-in/interop3")
        self.assertEqual(response.rsc, RSC.DELETED, response)


class BenchAgainstAcmeTests(TestCase):
    """Scenario 5: ``python -m acmews.bench`` as the load generator against ACME: sequential
    RETRIEVE of the CSEBase, every request answered exactly once with its own rqi (a smoke
    check of correctness; no timing is asserted)."""

    skip = SKIP
    timeout = 120

    def test_sequential_retrieve(self) -> Any:
        return Deferred.fromCoroutine(self._bench("json"))

    def test_sequential_retrieve_cbor(self) -> Any:
        return Deferred.fromCoroutine(self._bench("cbor"))

    async def _bench(self, serialization: str) -> None:
        import json
        import os
        import sys

        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        settle_autobahn_timers(self)
        acme = await start_acme(self, IN_INI, "cse-in")
        result = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [
            "-m",
            "acmews.bench",
            acme.url,
            "--scenario",
            "retrieve",
            "--mode",
            "sequential",
            "--requests",
            "300",
            "--duration",
            "30",
            "--timeout",
            "10",
            "--serialization",
            serialization,
            "--json",
            result,
        ]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, argv, env=env, path=root, reactor=reactor
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace")[-2000:])
        with open(result, encoding="utf-8") as f:
            summary = json.load(f)
        self.assertTrue(summary["correct"], summary["errors"])
        self.assertEqual(summary["sent"], 300)
        self.assertEqual(summary["answered"], 300)
        self.assertEqual(summary["rsc"], {"2000": 300})
