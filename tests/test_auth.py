"""Credentials on the opening handshake: Basic (ACME's SHA-256 hex and scrypt) and Bearer
tokens, each bound to the originators it may claim."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from acmews.auth import (
    CredentialAuthorizer,
    hash_password,
    read_basic_file,
    read_token_file,
)
from acmews.handshake import Handshake, HandshakeRefused
from acmews.interfaces import IHandshakeAuthorizer
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory, options
from acmews.testing import connected_pair as pair

SHA = hashlib.sha256(b"secret").hexdigest()
BASIC = [
    "# ACME's format, and ours with lists",
    f"acme:{SHA}",
    "",
    f"meters:{hash_password('m3ter', b'0123456789abcdef')}:Cmeter*,Cgw",
    f"mn:{SHA}:/id-mn",
    f"admin:{SHA}:CAdmin",
]
TOKENS = ["tok-any", "tok-meter:Cmeter1"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def shake(authorization: str | None = None, origin: str | None = None) -> Handshake:
    headers = {}
    if authorization is not None:
        headers["authorization"] = authorization
    if origin is not None:
        headers["x-m2m-origin"] = origin
    return Handshake(headers, None)


class FileTests(SynchronousTestCase):
    def test_files(self) -> None:
        users = {c.name: c for c in read_basic_file(BASIC)}
        self.assertEqual(set(users), {"acme", "meters", "mn", "admin"})
        self.assertIsNone(users["acme"].originators)
        self.assertEqual(users["meters"].originators, ("Cmeter*", "Cgw"))
        tokens = read_token_file(TOKENS)
        self.assertEqual([t.originators for t in tokens], [None, ("Cmeter1",)])
        for bad in (["justaname"], [":hash"], ["u:h:"]):
            self.assertRaises(ValueError, read_basic_file, bad)

    def test_the_hash_command(self) -> None:
        from acmews.auth import _main

        printed, errors = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", printed)
        self.patch(sys, "stderr", errors)
        # never from the command line (#23.6)
        self.assertEqual(_main(["hash", "pw"]), 2)
        self.assertIn("never from the command line", errors.getvalue())
        self.assertEqual(printed.getvalue(), "")
        self.assertEqual(_main(["hash"], io.StringIO("\n")), 1)  # an empty password
        self.assertEqual(printed.getvalue(), "")
        # from stdin: its first line, without its line end
        self.assertEqual(_main(["hash"], io.StringIO("pw\r\nnot this\n")), 0)
        out = printed.getvalue().strip()
        self.assertTrue(out.startswith("scrypt$16384$8$1$"))
        authorizer = CredentialAuthorizer(read_basic_file([f"u:{out}"]))
        self.assertEqual(authorizer.authorize(shake(basic("u", "pw"), "Cx")).originator, "Cx")
        self.assertNotEqual(hash_password("pw"), hash_password("pw"))  # salted


class AuthorizerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.authorizer = CredentialAuthorizer(read_basic_file(BASIC), read_token_file(TOKENS))

    def refused(self, handshake: Handshake) -> HandshakeRefused:
        with self.assertRaises(HandshakeRefused) as caught:
            self.authorizer.authorize(handshake)
        return caught.exception

    def test_provides(self) -> None:
        verifyObject(IHandshakeAuthorizer, self.authorizer)

    def test_no_or_wrong_credentials_are_401_saying_nothing_more(self) -> None:
        for authorization in (
            None,
            "",
            basic("acme", "wrong"),
            basic("nobody", "secret"),
            "Basic !!!",
            "Basic " + base64.b64encode(b"no-colon").decode(),
            "Bearer nope",
            "Digest x",
        ):
            e = self.refused(shake(authorization, "Cx"))
            self.assertEqual((e.status, e.reason), (401, "Unauthorized"))
            self.assertIn("Basic", e.headers["WWW-Authenticate"])

    def test_acme_format_and_scrypt(self) -> None:
        self.assertEqual(
            self.authorizer.authorize(shake(basic("acme", "secret"), "Cx")).originator, "Cx"
        )
        self.assertEqual(
            self.authorizer.authorize(shake(basic("meters", "m3ter"), "Cmeter7")).originator,
            "Cmeter7",
        )
        self.refused(shake(basic("meters", "secret"), "Cmeter7"))

    def test_credentials_bind_originators(self) -> None:
        self.assertEqual(self.refused(shake(basic("meters", "m3ter"), "Clamp")).status, 403)
        self.assertEqual(
            self.authorizer.authorize(shake(basic("mn", "secret"), "/id-mn")).originator, "/id-mn"
        )
        self.assertEqual(self.refused(shake(basic("mn", "secret"), "/id-other")).status, 403)
        # a credential without a list: anything but the admin and what others list
        for taken in ("CAdmin", "Cmeter3", "/id-mn", "Cgw"):
            self.assertEqual(self.refused(shake(basic("acme", "secret"), taken)).status, 403)
        # the admin only for a credential that lists it
        self.assertEqual(
            self.authorizer.authorize(shake(basic("admin", "secret"), "CAdmin")).originator,
            "CAdmin",
        )

    def test_without_the_header_it_may_register_an_ae(self) -> None:
        self.assertIsNone(self.authorizer.authorize(shake(basic("meters", "m3ter"))).originator)

    def test_bearer(self) -> None:
        self.assertEqual(self.authorizer.authorize(shake("Bearer tok-any", "Cx")).originator, "Cx")
        self.assertEqual(
            self.authorizer.authorize(shake("Bearer tok-meter", "Cmeter1")).originator, "Cmeter1"
        )
        self.assertEqual(self.refused(shake("Bearer tok-meter", "Cmeter2")).status, 403)

    def test_scrypt_runs_off_the_reactor_thread(self) -> None:
        calls: list[Any] = []

        def to_thread(f: Any, *args: Any) -> Deferred[Any]:
            calls.append(f)
            return succeed(f(*args))

        authorizer = CredentialAuthorizer(read_basic_file(BASIC), defer_to_thread=to_thread)
        d = authorizer.authorize(shake(basic("meters", "m3ter"), "Cmeter1"))
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).originator, "Cmeter1")
        self.assertEqual(len(calls), 1)
        # an unknown user costs a scrypt too when the file has scrypt entries
        d = authorizer.authorize(shake(basic("nobody", "x"), "Cx"))
        assert isinstance(d, Deferred)
        self.assertEqual(self.failureResultOf(d, HandshakeRefused).value.status, 401)
        self.assertEqual(len(calls), 2)

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["authorization", "x-m2m-origin", "x"]),
            st.text(max_size=40) | st.sampled_from([basic("acme", "secret"), "Bearer tok-any"]),
        )
    )
    def test_no_header_makes_it_raise_anything_else(self, headers: dict[str, str]) -> None:
        try:
            self.authorizer.authorize(Handshake(headers, None))
        except HandshakeRefused:
            pass


class OverTheBindingTests(TestCase):
    def test_401_and_403_and_a_bound_connection(self) -> None:
        clock = Clock()
        authorizer = CredentialAuthorizer(read_basic_file(BASIC))
        factory = make_server_factory(RecordingHandler(), clock, authorizer=authorizer)
        refused = make_client_factory(clock, "Cmeter1")
        p = pair(factory, refused)
        self.assertIn("401", p.client.http_status_line)
        self.failureResultOf(refused.ready)
        wrong = make_client_factory(clock, "Clamp")
        wrong.headers["Authorization"] = basic("meters", "m3ter")
        p = pair(factory, wrong)
        self.assertIn("403", p.client.http_status_line)
        self.failureResultOf(wrong.ready)
        good = make_client_factory(clock, "Cmeter1")
        good.headers["Authorization"] = basic("meters", "m3ter")
        p = pair(factory, good)
        self.assertEqual(p.server_session.originator, "Cmeter1")
        p.client_session.close()
        p.flush()


class RefusalLogTests(TestCase):
    def test_a_peer_looping_on_bad_credentials_does_not_fill_the_log(self) -> None:
        from twisted.logger import capturedLogs, formatEvent

        clock = Clock()
        authorizer = CredentialAuthorizer(read_basic_file(BASIC))
        factory = make_server_factory(RecordingHandler(), clock, authorizer=authorizer)

        def refused(times: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(times):
                    client = make_client_factory(clock, "Cmeter1")
                    client.headers["Authorization"] = basic("meters", "wrong")
                    self.assertIn("401", pair(factory, client).client.http_status_line)
                    self.failureResultOf(client.ready)
            return [m for m in map(formatEvent, events) if m.startswith("refused ")]

        lines = refused(30)
        self.assertEqual(len(lines), 20)
        self.assertNotIn("wrong", "".join(lines))
        # #23.6: the user and the originator it tried are named, never the secret
        self.assertIn("401 Unauthorized (user 'meters', originator 'Cmeter1')", lines[0])
        clock.advance(60)
        (line,) = refused(1)
        self.assertIn("(10 more refusals not logged)", line)


class ClientHeaderTests(TestCase):
    def test_extra_headers_go_with_the_origin(self) -> None:
        from acmews.protocol import OneM2MClientFactory

        f = OneM2MClientFactory(
            "ws://cse.example", originator="Cmeter1", headers={"Authorization": "Bearer t"}
        )
        self.assertEqual(f.headers, {"Authorization": "Bearer t", "X-M2M-Origin": "Cmeter1"})
        self.assertEqual(OneM2MClientFactory("ws://cse.example", originator=None).headers, {})
        clock = Clock()
        authorizer = CredentialAuthorizer(read_basic_file(BASIC))
        factory = make_server_factory(RecordingHandler(), clock, authorizer=authorizer)
        good = OneM2MClientFactory(
            "ws://127.0.0.1:8180",
            originator="Cmeter1",
            clock=clock,
            reactor=clock,
            options=options(),
            headers={"Authorization": basic("meters", "m3ter")},
        )
        p = pair(factory, good)
        self.assertEqual(p.server_session.originator, "Cmeter1")
        p.client_session.close()
        p.flush()


class RegistrationBindingTests(TestCase):
    def test_an_ae_id_belongs_to_the_credential_that_registered_it(self) -> None:
        from acmews.primitive import Request

        clock = Clock()
        # the binding is kept with the AE: here by the handler, as the CSE does
        owners: dict[str, str | None] = {}
        authorizer = CredentialAuthorizer(
            read_basic_file(BASIC), read_token_file(TOKENS), owner_of=owners.get
        )

        def answer(request: Request, connection: Any) -> Any:
            from acmews.primitive import Response

            owners["Cassigned"] = connection.authorization.owner
            return Response(2001, request.rqi, "4", {"m2m:ae": {"aei": "Cassigned"}})

        factory = make_server_factory(RecordingHandler(answer), clock, authorizer=authorizer)
        registering = make_client_factory(clock, None)
        registering.headers = {"Authorization": basic("meters", "m3ter")}
        p = pair(factory, registering)
        create = Request(
            1, "cse-in", "r1", "4", None, ty=2, pc={"m2m:ae": {"api": "N", "rr": True}}
        )  # type: ignore[arg-type]
        d = p.client_session.request(create)
        p.flush()
        self.assertEqual(self.successResultOf(d).rsc, 2001)
        self.assertEqual(p.server_session.originator, "Cassigned")
        # the registering credential may claim it (though its list says Cmeter*) ...
        self.assertEqual(
            authorizer.authorize(shake(basic("meters", "m3ter"), "Cassigned")).originator,
            "Cassigned",
        )
        # ... and no other, with a list or without
        for other in (basic("acme", "secret"), "Bearer tok-any"):
            with self.assertRaises(HandshakeRefused) as caught:
                authorizer.authorize(shake(other, "Cassigned"))
            self.assertEqual(caught.exception.status, 403)
        p.client_session.close()
        p.flush()


class ClientCertificateTests(TestCase):
    """A real TLS loopback: the server verifies client certificates against a test CA, and a
    certificate's CN and SAN URIs are the originators it may claim."""

    timeout = 30

    def test_certificate_names_originators(self) -> Any:
        return Deferred.fromCoroutine(self._certificates())

    async def _certificates(self) -> None:
        import os

        import trustme
        from twisted.internet import reactor
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import Certificate, PrivateCertificate

        from acmews.client import connect
        from acmews.errors import TargetNotReachable
        from acmews.protocol import OneM2MServerFactory

        from .helpers import NO_PING

        ca = trustme.CA()
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "ca"))
        ca.cert_pem.write_to_path(os.path.join(directory, "ca", "ca.pem"))
        server_cert = ca.issue_cert("localhost", "127.0.0.1")
        server_cert.private_key_pem.write_to_path(os.path.join(directory, "server.key"))
        server_cert.cert_chain_pems[0].write_to_path(os.path.join(directory, "server.pem"))
        client_cert = ca.issue_cert("meter.example", common_name="Cmeter1")
        client_cert.private_key_pem.write_to_path(os.path.join(directory, "client.key"))
        client_cert.cert_chain_pems[0].write_to_path(os.path.join(directory, "client.pem"))

        authorizer = CredentialAuthorizer(certificates=True)
        factory = OneM2MServerFactory(
            RecordingHandler(), reactor=reactor, options=NO_PING, authorizer=authorizer
        )
        d = directory
        # the server's certificate and key, and the client certificates it accepts: the CA's
        pem = server_cert.cert_chain_pems[0].bytes() + server_cert.private_key_pem.bytes()
        tls = PrivateCertificate.loadPEM(pem).options(Certificate.loadPEM(ca.cert_pem.bytes()))
        endpoint = SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1")
        port: Any = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        client_tls = (
            f"tls:localhost:{number}:trustRoots={d}/ca"
            f":certificate={d}/client.pem:privateKey={d}/client.key"
        )
        url = f"wss://localhost:{number}"
        meter = await connect(url, originator="Cmeter1", endpoint=client_tls, options=NO_PING)
        self.assertEqual(factory.originators.lookup("Cmeter1").originator, "Cmeter1")  # type: ignore[union-attr]
        r = await meter.retrieve("cse-in")
        self.assertEqual(r.rsc, 2000)
        await meter.close()
        # a name the certificate does not give: 403
        with self.assertRaises(TargetNotReachable) as caught:
            await connect(url, originator="Cother", endpoint=client_tls, options=NO_PING)
        self.assertIn("403", caught.exception.reason)
        # the same through connect's own TLS settings: the URL's host, our CA, our certificate
        from acmews.client import TLSClientSettings

        settings = TLSClientSettings(f"{d}/ca/ca.pem", f"{d}/client.pem", f"{d}/client.key")
        meter = await connect(url, originator="Cmeter1", tls=settings, options=NO_PING)
        self.assertEqual((await meter.retrieve("cse-in")).rsc, 2000)
        await meter.close()
        with self.assertRaises(TargetNotReachable):  # the system's CAs do not know ours
            await connect(url, originator="Cmeter1", options=NO_PING)
        # no client certificate: the TLS handshake itself fails
        with self.assertRaises(TargetNotReachable):
            await connect(
                url,
                originator="Cmeter1",
                endpoint=f"tls:localhost:{number}:trustRoots={d}/ca",
                options=NO_PING,
            )


class ClientAuthorizationTests(TestCase):
    def test_basic_and_bearer_values(self) -> None:
        from acmews.handshake import basic_authorization, bearer_authorization

        self.assertEqual(basic_authorization("mn", "secret"), "Basic bW46c2VjcmV0")
        self.assertEqual(basic_authorization("u", "p:with:colons"), basic("u", "p:with:colons"))
        self.assertEqual(bearer_authorization(" tok \n"), "Bearer tok")
        for user in ("", "a:b"):
            self.assertRaises(ValueError, basic_authorization, user, "p")
        for token in ("", "  ", "a b"):
            self.assertRaises(ValueError, bearer_authorization, token)


class StoredBindingTests(SynchronousTestCase):
    """With ``owner_of`` the binding of an AE-ID to its credential is the CSE's (stored with
    the AE): the authorizer keeps nothing of its own."""

    def test_owners(self) -> None:
        owners: dict[str, str] = {"Cmine": "basic:meters", "Ctok": "bearer:" + "0" * 32}
        authorizer = CredentialAuthorizer(
            read_basic_file(BASIC), read_token_file(TOKENS), owner_of=owners.get
        )
        self.assertEqual(
            authorizer.authorize(shake(basic("meters", "m3ter"))).owner, "basic:meters"
        )
        with self.assertRaises(HandshakeRefused):
            authorizer.authorize(shake(basic("nobody", "x")))
        # a token's owner names neither the token nor its line
        owner = authorizer.authorize(shake("Bearer tok-any")).owner
        assert owner is not None
        self.assertTrue(owner.startswith("bearer:"))
        self.assertNotIn("tok-any", owner)
        moved = CredentialAuthorizer(tokens=read_token_file(["# moved", "", "x", "tok-any"]))
        self.assertEqual(moved.authorize(shake("Bearer tok-any")).owner, owner)
        # the owner may claim it, though its list says Cmeter*; no other credential may
        self.assertEqual(
            authorizer.authorize(shake(basic("meters", "m3ter"), "Cmine")).originator, "Cmine"
        )
        for other in (basic("acme", "secret"), "Bearer tok-any", basic("admin", "secret")):
            with self.assertRaises(HandshakeRefused) as caught:
                authorizer.authorize(shake(other, "Cmine"))
            self.assertEqual(caught.exception.status, 403)
        # nothing is bound but what the CSE keeps
        self.assertEqual(
            authorizer.authorize(shake(basic("acme", "secret"), "Cnew")).originator, "Cnew"
        )
        # an AE that is gone frees its AE-ID
        del owners["Cmine"]
        self.assertEqual(
            authorizer.authorize(shake(basic("acme", "secret"), "Cmine")).originator, "Cmine"
        )


class RestartTests(TestCase):
    """twistd acmews with --basic-auth-file and a SQLite store: an AE registered through a
    credential still belongs to it after a restart, and to no other."""

    timeout = 30

    def test_binding_survives_a_restart(self) -> Any:
        return Deferred.fromCoroutine(self._restart())

    async def _restart(self) -> None:
        import os

        from acmews.client import connect
        from acmews.errors import TargetNotReachable

        from .helpers import NO_PING, start_cse

        directory = self.mktemp()
        os.mkdir(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as f:
            f.write("\n".join(BASIC))
        tokens = os.path.join(directory, "tokens")
        with open(tokens, "w") as f:
            f.write("\n".join(TOKENS))
        argv = (
            *("--basic-auth-file", users, "--token-file", tokens),
            *("--store", f"sqlite:{directory}/acmews.db"),
        )
        service, url = await start_cse(self, *argv)
        # a credential without a list: the AE-ID the CSE assigns is one it may hold
        alice = "Bearer tok-any"
        ae = await connect(url, headers={"Authorization": alice}, options=NO_PING)
        r = await ae.create("cse-in", 2, {"m2m:ae": {"api": "Nx", "rr": False, "rn": "a"}})
        self.assertEqual(r.rsc, 2001, r.debug)
        aei = r.pc["m2m:ae"]["aei"]
        self.assertNotIn("tok-any", repr(r.pc))  # the owner is never shown
        await ae.close()
        await service.stopService()

        service, url = await start_cse(self, *argv)
        with self.assertRaises(TargetNotReachable) as caught:
            await connect(
                url,
                originator=aei,
                headers={"Authorization": basic("acme", "secret")},
                options=NO_PING,
            )
        self.assertIn("403", caught.exception.reason)
        ae = await connect(url, originator=aei, headers={"Authorization": alice}, options=NO_PING)
        self.assertEqual((await ae.retrieve("cse-in/a")).rsc, 2000)
        # deleted, the AE-ID is free again
        self.assertEqual((await ae.delete("cse-in/a")).rsc, 2002)
        await ae.close()
        other = await connect(
            url,
            originator=aei,
            headers={"Authorization": basic("acme", "secret")},
            options=NO_PING,
        )
        await other.close()


class ClaimedTests(SynchronousTestCase):
    """What a refusal's log line says of the peer: who, never the secret (#23.6)."""

    def test_claimed(self) -> None:
        from acmews.handshake import claimed

        self.assertEqual(
            claimed({"authorization": basic("meters", "s3cret"), "x-m2m-origin": "Cmeter1"}),
            "user 'meters', originator 'Cmeter1'",
        )
        self.assertEqual(
            claimed({"authorization": "Bearer tok-s3cret"}), "a Bearer token, no originator"
        )
        self.assertEqual(claimed({}), "no credential, no originator")
        self.assertEqual(
            claimed({"authorization": "Basic !!!"}),
            "an unreadable Basic credential, no originator",
        )
        self.assertEqual(
            claimed({"authorization": "Digest x"}),
            "an Authorization of kind 'digest', no originator",
        )

    def test_the_hash_command_as_a_program(self) -> None:
        """A pipe gives the password without a prompt or a warning."""
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run(
            [sys.executable, "-m", "acmews.auth", "hash"],
            input=b"s3cret\n",
            capture_output=True,
            cwd=root,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        entry = done.stdout.decode().strip()
        authorizer = CredentialAuthorizer(read_basic_file([f"u:{entry}"]))
        self.assertEqual(authorizer.authorize(shake(basic("u", "s3cret"), "Cx")).originator, "Cx")
