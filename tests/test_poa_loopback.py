"""The HTTP connector against a real web server on loopback: nothing decompressed, no redirect
followed, bodies bounded (a gzip bomb once held 3.3 GB and blocked the reactor for seconds)."""

from __future__ import annotations

import gzip
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request as WebRequest
from twisted.web.server import Site

from acmews.codes import Operation
from acmews.errors import TargetNotReachable
from acmews.poa import HttpConnector
from acmews.primitive import Request

#: 50 MB of zeros, about 50 KB compressed
BOMB = gzip.compress(b"\0" * 50_000_000, compresslevel=9)


class Hostile(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []

    def render(self, request: WebRequest) -> bytes:
        path = request.path.decode()
        encoding = request.getHeader("Accept-Encoding")
        self.seen.append((path, encoding.decode() if isinstance(encoding, bytes) else encoding))
        if path == "/bomb":
            request.setHeader("X-M2M-RSC", "2000")
            request.setHeader("Content-Encoding", "gzip")
            return BOMB
        if path == "/redirect":
            request.setResponseCode(303)
            request.setHeader("Location", "/internal")
            return b""
        if path == "/big":
            request.setHeader("X-M2M-RSC", "2000")
            return b'{"x":"' + b"y" * 2_000_000 + b'"}'
        request.setHeader("X-M2M-RSC", "2000")
        return b'{"internal": "token"}'


class LoopbackHttpTests(TestCase):
    def setUp(self) -> None:
        self.resource = Hostile()
        self.port: Any = reactor.listenTCP(0, Site(self.resource), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.connector = HttpConnector(reactor)

    def notify(self) -> Request:
        return Request(Operation.NOTIFY, "Cae1", "n1", fr="/id-in", pc={"m2m:sgn": {}})

    @inlineCallbacks
    def test_gzip_answer_is_not_inflated(self) -> Any:
        response = yield self.connector.send(f"{self.base}/bomb", self.notify(), 10)
        self.assertEqual(response.rsc, 2000)
        self.assertIsNone(response.pc)  # the compressed bytes stay what they are: not JSON
        self.assertEqual(self.resource.seen, [("/bomb", "identity")])

    @inlineCallbacks
    def test_redirect_is_not_followed(self) -> Any:
        with self.assertRaises(TargetNotReachable):
            yield self.connector.send(f"{self.base}/redirect", self.notify(), 10)
        self.assertEqual([path for path, _ in self.resource.seen], ["/redirect"])

    @inlineCallbacks
    def test_body_over_the_limit_is_refused(self) -> Any:
        with self.assertRaises(TargetNotReachable):
            yield self.connector.send(f"{self.base}/big", self.notify(), 10)

    @inlineCallbacks
    def test_oneM2M_answer_is_read(self) -> Any:
        response = yield self.connector.send(f"{self.base}/ok", self.notify(), 10)
        self.assertEqual((response.rsc, response.pc), (2000, {"internal": "token"}))


class LoopbackHttpsTests(TestCase):
    """https:// poa with our own CA, and a server that asks for a client certificate."""

    @inlineCallbacks
    def test_own_ca_and_client_certificate(self) -> Any:
        import os

        import trustme
        from twisted.internet.ssl import Certificate, PrivateCertificate

        from acmews.client import TLSClientSettings
        from acmews.poa import AgentClient

        ca = trustme.CA()
        d = self.mktemp()
        os.makedirs(d)
        ca.cert_pem.write_to_path(f"{d}/ca.pem")
        server = ca.issue_cert("localhost")
        pem = server.cert_chain_pems[0].bytes() + server.private_key_pem.bytes()
        tls = PrivateCertificate.loadPEM(pem).options(Certificate.loadPEM(ca.cert_pem.bytes()))
        resource = Hostile()
        port: Any = reactor.listenSSL(0, Site(resource), tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = ca.issue_cert("cse.example")
        client.private_key_pem.write_to_path(f"{d}/key.pem")
        client.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
        settings = TLSClientSettings(f"{d}/ca.pem", f"{d}/cert.pem", f"{d}/key.pem")
        url = f"https://localhost:{port.getHost().port}/ok"
        notify = Request(Operation.NOTIFY, "Cae1", "n1", fr="/id-in", pc={"m2m:sgn": {}})
        connector = HttpConnector(reactor, AgentClient(reactor, settings))
        response = yield connector.send(url, notify, 10)
        self.assertEqual(response.rsc, 2000)
        # the system's authorities know nothing of our CA
        with self.assertRaises(TargetNotReachable):
            yield HttpConnector(reactor).send(url, notify, 10)
        # our CA, but no client certificate: the server refuses the TLS handshake
        bare = TLSClientSettings(f"{d}/ca.pem")
        with self.assertRaises(TargetNotReachable):
            yield HttpConnector(reactor, AgentClient(reactor, bare)).send(url, notify, 10)
        self.assertEqual([path for path, _ in resource.seen], ["/ok"])
