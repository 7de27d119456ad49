"""Trust between peers (#27): who may claim a CSE-ID, who may act as a CSE, whose AE-ID is whose.

Over real sockets on 127.0.0.1 (``twistd acmews``'s service on port 0, real clients), as an
attacker would try it; and the guards a mutation run found untested, one test each.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.auth import CredentialAuthorizer, read_basic_file
from acmews.client import Client, connect
from acmews.codes import RSC, Operation, ResourceType
from acmews.cse import CSEConfig
from acmews.errors import TargetNotReachable
from acmews.handshake import Authorization, Handshake, HandshakeRefused
from acmews.primitive import Request, Response
from acmews.testing import (
    ADMIN,
    URL,
    FakeConnection,
    RecordingHandler,
    connected_pair,
    make_client_factory,
    make_server_factory,
)
from tests.cse_helpers import CSETestCase

from .helpers import NO_PING, start_cse

SHA = hashlib.sha256(b"pw").hexdigest()
USERS = [
    f"mn:{SHA}:/id-mn",  # a CSE's credential names its CSE-ID
    f"mn2:{SHA}:/id-mn",  # another credential that names it too
    f"carol:{SHA}:Ccarol*",
    f"user:{SHA}",  # no list
    f"user2:{SHA}",  # no list
]


def basic(user: str) -> dict[str, str]:
    from acmews.handshake import basic_authorization

    return {"Authorization": basic_authorization(user, "pw")}


def csr(csi: str) -> dict[str, Any]:
    return {"m2m:csr": {"csi": csi, "cb": f"{csi}/cse", "rr": True, "poa": ["ws://default"]}}


class _Loopback(TestCase):
    timeout = 30

    async def cse(self, *argv: str) -> str:
        _, url = await start_cse(self, *argv)
        return url

    async def users(self) -> str:
        os.mkdir(directory := self.mktemp())
        path = os.path.join(directory, "users")
        with open(path, "w") as f:
            f.write("\n".join(USERS))
        return path

    async def client(self, url: str, originator: str | None = None, **kw: Any) -> Client:
        client = await connect(url, originator=originator, options=NO_PING, **kw)
        self.addCleanup(lambda: client.close() if client.connected else None)
        return client

    async def refused(self, url: str, originator: str | None, **kw: Any) -> str:
        with self.assertRaises(TargetNotReachable) as caught:
            await self.client(url, originator, **kw)
        return caught.exception.reason


class CSEIdentityTests(_Loopback):
    """#27.1: a CSE-ID with a live link is not first-come."""

    def test_an_impostor_cannot_take_a_live_link_without_credentials(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse("--allowed-csr-originators", "/id-mn")
            served: list[Request] = []

            def answer(request: Request) -> Response:
                served.append(request)
                return Response(2000, request.rqi, request.rvi, {"m2m:cb": {"csi": "/id-mn"}})

            mn = await self.client(url, "/id-mn", handler=answer)
            r = await mn.create("cse-in", ResourceType.CSR, csr("/id-mn"))
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            reason = await self.refused(url, "/id-mn", handler=answer)
            self.assertIn("403", reason)
            # the link still carries what is forwarded to the MN
            admin = await self.client(url, ADMIN)
            for _ in range(5):
                self.assertEqual((await admin.retrieve("/id-mn/cse")).rsc, RSC.OK)
            self.assertEqual(len(served), 5)
            # gone, the CSE-ID may be claimed again (without credentials: first-come again)
            await mn.close()
            again = await self.client(url, "/id-mn", handler=answer)
            self.assertTrue(again.connected)

        return Deferred.fromCoroutine(run())

    def test_an_ae_id_is_still_newest_wins(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse()
            old = await self.client(url, "Cphone")
            new = await self.client(url, "Cphone")
            self.assertEqual((await new.retrieve("cse-in")).rsc, RSC.OK)
            await old.session.when_closed()
            self.assertFalse(old.connected)

        return Deferred.fromCoroutine(run())

    def test_with_credentials_only_a_credential_naming_it(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse("--basic-auth-file", await self.users())
            # a credential without a list may not claim any CSE-ID
            self.assertIn("403", await self.refused(url, "/id-mn", headers=basic("user")))
            self.assertIn("403", await self.refused(url, "/id-x", headers=basic("user")))
            mn = await self.client(url, "/id-mn", headers=basic("mn"))
            # another credential that names it may not take the live link over ...
            self.assertIn("403", await self.refused(url, "/id-mn", headers=basic("mn2")))
            self.assertTrue(mn.connected)
            # ... the same credential may come back (a half-open TCP connection)
            again = await self.client(url, "/id-mn", headers=basic("mn"))
            await mn.session.when_closed()
            self.assertTrue(again.connected)

        return Deferred.fromCoroutine(run())

    def test_the_registrar_link_is_not_taken_over(self) -> Deferred[None]:
        async def run() -> None:
            in_url = await self.cse("--allowed-csr-originators", "/id-mn")
            mn_service, mn_url = await start_cse(
                self, "--cse-id", "/id-mn", "--cse-name", "cse-mn", "--registrar", in_url
            )
            await mn_service.link.when_registered()
            # an inbound claim of the registrar's CSE-ID at the MN: refused
            self.assertIn("403", await self.refused(mn_url, "/id-in"))
            mn_admin = await self.client(mn_url, ADMIN)
            r = await mn_admin.retrieve("/id-in/cse-in")
            self.assertEqual((r.rsc, r.pc["m2m:cb"]["csi"]), (RSC.OK, "/id-in"))

        return Deferred.fromCoroutine(run())


class ActingAsACSETests(_Loopback):
    """#27.2: only CSEs act as CSEs."""

    def test_a_user_cannot_register_a_remote_cse(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse()  # no credentials, no --allowed-csr-originators
            fake = await self.client(url, "/id-fake")
            r = await fake.create("cse-in", ResourceType.CSR, csr("/id-fake"))
            self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)
            self.assertIn("--allowed-csr-originators", r.debug or "")

        return Deferred.fromCoroutine(run())

    def test_a_credential_naming_the_cse_id_may(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse("--basic-auth-file", await self.users())
            mn = await self.client(url, "/id-mn", headers=basic("mn"))
            r = await mn.create("cse-in", ResourceType.CSR, csr("/id-mn"))
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)

        return Deferred.fromCoroutine(run())

    def test_a_fake_cse_cannot_notify_an_ae(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse()
            got: list[Request] = []

            def inbox(request: Request) -> Response:
                got.append(request)
                return Response(2000, request.rqi, request.rvi)

            ae = await self.client(url, "Cvictim", handler=inbox)
            r = await ae.create("cse-in", 2, {"m2m:ae": {"rn": "v", "api": "Nv", "rr": True}})
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)
            fake = await self.client(url, "/id-fake")
            r = await fake.notify("cse-in/v", {"m2m:sgn": {"sur": "/id-fake/x"}})
            self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)
            self.assertEqual(got, [])

        return Deferred.fromCoroutine(run())


class AEOwnershipTests(_Loopback):
    """#27.3: an AE-ID belongs to the credential that registered it."""

    def test_registered_with_the_header_it_belongs_to_the_credential(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse("--basic-auth-file", await self.users())
            ae = await self.client(url, "Cuser1", headers=basic("user"))
            r = await ae.create("cse-in", 2, {"m2m:ae": {"rn": "u", "api": "Nu", "rr": False}})
            self.assertEqual((r.rsc, r.pc["m2m:ae"]["aei"]), (RSC.CREATED, "Cuser1"), r.debug)
            await ae.close()
            # another credential without a list could claim Cuser1 before; not any more
            self.assertIn("403", await self.refused(url, "Cuser1", headers=basic("user2")))
            back = await self.client(url, "Cuser1", headers=basic("user"))
            self.assertTrue(back.connected)

        return Deferred.fromCoroutine(run())

    def test_outside_its_list_or_reserved_for_another_is_refused(self) -> Deferred[None]:
        async def run() -> None:
            url = await self.cse("--basic-auth-file", await self.users())
            body = {"m2m:ae": {"api": "Nc", "rr": False}}
            carol = await self.client(url, None, headers=basic("carol"))
            r = await carol.create("cse-in", 2, body)  # the CSE would assign C<hex>
            self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)
            r = await carol.create("cse-in", 2, body, fr="Ccarol-meter")
            self.assertEqual((r.rsc, r.pc["m2m:ae"]["aei"]), (RSC.CREATED, "Ccarol-meter"))
            user = await self.client(url, None, headers=basic("user"))
            r = await user.create("cse-in", 2, body, fr="Ccarol-2")  # Ccarol* is carol's
            self.assertEqual(r.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, r.debug)
            r = await user.create("cse-in", 2, body)
            self.assertEqual(r.rsc, RSC.CREATED, r.debug)

        return Deferred.fromCoroutine(run())


class NotifyExemptionTests(CSETestCase):
    """The "peer CSE may NOTIFY local AEs" exemption needs a CSE that proved its CSE-ID."""

    config = CSEConfig(poa=(URL,), allowed_csr_originators=("/id-listed",))

    def setUp(self) -> None:
        super().setUp()
        self.aei = self.register("Cae", rn="ae")
        for cse_id in ("/id-mn", "/id-listed"):
            self.connection = FakeConnection(cse_id)  # verified: a credential named it
            self.ok(1, "cse-in", cse_id, ty=16, pc=csr(cse_id))

    def notify(self, connection: FakeConnection, fr: str) -> Response:
        self.connection = connection
        return self.call(Operation.NOTIFY, "cse-in/ae", fr, pc={"m2m:sgn": {"sur": "x"}})

    def test_verified_or_listed_cses_may(self) -> None:
        self.connection = FakeConnection("/id-mn")  # verified
        result = self.handle(Operation.NOTIFY, "cse-in/ae", "/id-mn", pc={"m2m:sgn": {}})
        (sent,) = self.sender.take()
        self.assertEqual(sent.target, self.aei)
        sent.answer()
        self.assertEqual(self.successResultOf(result).rsc, RSC.OK)  # type: ignore[arg-type]
        unverified = FakeConnection("/id-listed", authorization=Authorization("/id-listed"))
        self.connection = unverified
        result = self.handle(Operation.NOTIFY, "cse-in/ae", "/id-listed", pc={"m2m:sgn": {}})
        (sent,) = self.sender.take()
        sent.answer()
        self.assertEqual(self.successResultOf(result).rsc, RSC.OK)  # type: ignore[arg-type]

    def test_an_unverified_cse_has_only_its_acp_rights(self) -> None:
        unverified = FakeConnection("/id-mn", authorization=Authorization("/id-mn"))
        response = self.notify(unverified, "/id-mn")
        self.assertEqual(response.rsc, RSC.ORIGINATOR_HAS_NO_PRIVILEGE, response.debug)
        self.assertEqual(self.sender.take(), [])


class GuardTests(SynchronousTestCase):
    """Guards a mutation run found untested (#27.13)."""

    def test_a_credential_without_a_list_never_claims_the_admin(self) -> None:
        # no credential lists CAdmin: only the admin guard stands in the way
        authorizer = CredentialAuthorizer(read_basic_file([f"a:{SHA}", f"b:{SHA}:Cb*"]))
        handshake = Handshake({"authorization": basic("a")["Authorization"]}, None)
        self.assertEqual(authorizer.authorize(handshake).originator, None)  # type: ignore[union-attr]
        claim = Handshake({**handshake.headers, "x-m2m-origin": ADMIN}, None)
        with self.assertRaises(HandshakeRefused) as caught:
            authorizer.authorize(claim)
        self.assertEqual(caught.exception.status, 403)
        other = Handshake({**handshake.headers, "x-m2m-origin": "Cany"}, None)
        self.assertEqual(authorizer.authorize(other).originator, "Cany")  # type: ignore[union-attr]

    def test_a_message_over_the_limit_in_many_small_frames_closes_1009(self) -> None:
        clock = Clock()
        server = make_server_factory(RecordingHandler(), clock, max_message_size=4096)
        client = make_client_factory(clock, "Cae1")  # its own limit: the default 1 MiB
        pair = connected_pair(server, client)
        # 40 frames of 200 bytes: no frame is large, the message is
        pair.client.sendMessage(b'{"op":2,' + b" " * 7992 + b"}", fragmentSize=200)
        pair.flush()
        self.assertEqual(pair.client.remoteCloseCode, 1009)
        self.assertEqual(pair.server_factory.handler.requests, [])  # type: ignore[attr-defined]


class OwnerSubtreeTests(CSETestCase):
    """An AE has every right over the subtree it created; another AE none, but what an ACP
    the owner made grants (TS-0001 9.6.2: the creator's privileges; acpi)."""

    def test_owner_and_acp_rights(self) -> None:
        owner = self.register("Cowner", rn="owner")
        other = self.register("Cother", rn="other")
        self.create("cse-in/owner", 3, "m2m:cnt", owner, rn="box")
        self.ok(2, "cse-in/owner/box", owner)
        self.ok(3, "cse-in/owner/box", owner, pc={"m2m:cnt": {"lbl": ["a"]}})
        for op, kw in ((2, {}), (3, {"pc": {"m2m:cnt": {"lbl": ["b"]}}}), (4, {})):
            self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, op, "cse-in/owner/box", other, **kw)
        self.create(
            "cse-in/owner",
            1,
            "m2m:acp",
            owner,
            rn="acp",
            pv={"acr": [{"acor": [other], "acop": 2}]},
            pvs={"acr": [{"acor": [owner], "acop": 63}]},
        )
        self.ok(3, "cse-in/owner/box", owner, pc={"m2m:cnt": {"acpi": ["cse-in/owner/acp"]}})
        self.ok(2, "cse-in/owner/box", other)  # RETRIEVE granted ...
        update = {"pc": {"m2m:cnt": {"lbl": ["b"]}}}
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 3, "cse-in/owner/box", other, **update)
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, "cse-in/owner/box", other)  # ... no more
        self.ok(4, "cse-in/owner/box", owner)
