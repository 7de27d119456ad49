"""twistd acmews: plugin discovery, options and the service tree (no sockets)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from acmews.cse import CSE
from acmews.endpoints import poa_for_endpoint
from acmews.interfaces import IOriginatorMap, IRequestHandler, IRequestSender
from acmews.poa import PoaChain
from acmews.poa.limits import DEFAULT_DENY
from acmews.protocol import OneM2MServerFactory
from acmews.server import ListenError
from acmews.tap import Options, makeService


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--store", "memory:", *argv])  # a test's own sqlite: comes later
    return options


class PluginTests(TestCase):
    def test_plugin_is_found(self) -> None:
        import twisted.plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("acmews", makers)
        maker: Any = makers["acmews"]
        verifyObject(IServiceMaker, maker)
        self.assertIsInstance(maker.options(), Options)

    def test_plugin_module_does_not_import_the_reactor(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys, importlib.util\n"
            "path = 'twisted/plugins/acmews_plugin.py'\n"
            "spec = importlib.util.spec_from_file_location('p', path)\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "import acmews.tap, acmews.client, acmews.cse, acmews.poa, acmews.protocol\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
        )
        self.assertEqual(out.stdout.strip(), "False", out.stderr)


class OptionsTests(TestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o["listen"], ["tcp:8180:interface=127.0.0.1:backlog=1024"])
        self.assertEqual(
            (o["cse-id"], o["cse-name"], o["sp-id"], o["admin"]),
            ("/id-in", "cse-in", "//acmews.example.com", "CAdmin"),
        )
        self.assertEqual((o["request-timeout"], o["max-message-size"]), (10.0, 1048576))
        self.assertEqual((o["ping-interval"], o["ping-timeout"]), (20.0, 20.0))
        self.assertEqual((o["queue-size"], o["notification-expiry"]), (1000, 3600.0))

    def test_repeatable_and_typed(self) -> None:
        o = parse(
            "--insecure",  # tcp:9000 listens beyond loopback
            "--listen",
            "tcp:9000",
            "--listen",
            "tcp:9001:interface=127.0.0.2",
            "--poa",
            "ws://a:1",
            "--request-timeout",
            "2.5",
            "--queue-size",
            "7",
        )
        self.assertEqual(o["listen"], ["tcp:9000", "tcp:9001:interface=127.0.0.2"])
        self.assertEqual((o["poa"], o["request-timeout"], o["queue-size"]), (["ws://a:1"], 2.5, 7))

    def test_bad_values(self) -> None:
        for argv in (
            ["--cse-id", "id-in"],
            ["--sp-id", "x"],
            ["--cse-name", "a/b"],
            ["--queue-size", "0"],
            ["--request-timeout", "-1"],
            ["--max-message-size", "big"],
        ):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_bad_values_name_the_option_and_the_rule(self) -> None:
        for argv, start in (
            (["--request-timeout", "-1"], "--request-timeout must be a positive number"),
            (["--request-timeout", "0"], "--request-timeout must be a positive number"),
            (["--ping-timeout", "0"], "--ping-timeout must be a positive number"),
            (["--message-timeout", "0"], "--message-timeout must be a positive number"),
            (["--notification-expiry", "0"], "--notification-expiry must be a positive number"),
            (["--notification-expiry", "nan"], "--notification-expiry must be a positive number"),
            (["--ping-interval", "-1"], "--ping-interval must be zero (no keep-alive) or"),
            (["--max-message-size", "big"], "--max-message-size must be a positive whole"),
            (["--queue-size", "0"], "--queue-size must be a positive whole number"),
            (["--cse-id", "id-in"], "--cse-id must be one slash then"),
            (["--cse-id", "//id-in"], "--cse-id must be one slash then"),
            (["--cse-id", "/id in"], "--cse-id must be one slash then"),
            (["--admin", ""], "--admin must be an originator"),
            (["--admin", "C Admin"], "--admin must be an originator"),
            (["--admin", "a/b"], "--admin must be an originator"),
            (["--poa", "cse.example.com:8180"], "--poa must be a URL with a scheme and a host"),
            (["--poa", "ws://"], "--poa must be a URL with a scheme and a host"),
            (["--listen", "tcp:99999"], "--listen tcp:99999: the port must be a number"),
            (["--listen", "bogus:1"], "--listen bogus:1: Unknown endpoint type: 'bogus'"),
        ):
            e = self.assertRaises(usage.UsageError, parse, *argv)
            self.assertTrue(str(e).startswith(start), (argv, str(e)))
            self.assertNotIn("\n", str(e))
            self.assertNotIn("Parameter type enforcement", str(e))

    def test_zero_ping_interval_turns_keep_alive_off(self) -> None:
        self.assertEqual(parse("--ping-interval", "0")["ping-interval"], 0.0)

    def test_under_twistd_a_bad_value_is_one_line(self) -> None:
        class Parent:
            subCommand = "acmews"

        options = Options()
        options.parent = Parent()
        e = self.assertRaises(SystemExit, options.parseOptions, ["--request-timeout", "-1"])
        self.assertEqual(
            str(e.code),
            "twistd acmews: --request-timeout must be a positive number of seconds, not '-1'",
        )

    def test_version(self) -> None:
        import contextlib
        import io

        from acmews import __version__

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            e = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual((e.code, out.getvalue()), (0, f"acmews {__version__}\n"))

    def test_help_documents_every_option(self) -> None:
        text = str(Options())
        for name in (
            "listen",
            "cse-id",
            "cse-name",
            "sp-id",
            "admin",
            "poa",
            "request-timeout",
            "max-message-size",
            "ping-interval",
            "ping-timeout",
            "queue-size",
            "notification-expiry",
        ):
            self.assertIn(f"--{name}", text)

    def test_poa_for_endpoint(self) -> None:
        self.assertEqual(poa_for_endpoint("tcp:8180:interface=127.0.0.1"), "ws://127.0.0.1:8180")
        self.assertEqual(poa_for_endpoint("tcp:port=80"), "ws://127.0.0.1:80")
        self.assertEqual(
            poa_for_endpoint(r"ssl:8443:privateKey=k.pem:interface=\:\:1"), "wss://[::1]:8443"
        )
        self.assertIsNone(poa_for_endpoint("unix:/tmp/s"))
        self.assertIsNone(poa_for_endpoint("tcp:0"))


class MakeServiceTests(TestCase):
    def test_service_tree(self) -> None:
        reactor = MemoryReactorClock()
        o = parse(
            "--insecure",  # tcp:9101 listens beyond loopback
            "--listen",
            "tcp:9100:interface=127.0.0.1",
            "--listen",
            "tcp:9101",
            "--cse-id",
            "/id-x",
            "--ping-interval",
            "0",
        )
        service: Any = makeService(o, reactor)
        self.assertIsInstance(service, MultiService)
        verifyObject(IRequestHandler, service.cse)
        verifyObject(IRequestSender, service.chain)
        self.assertIsInstance(service.chain, PoaChain)
        self.assertIsInstance(service.cse, CSE)
        self.assertIsInstance(service.factory, OneM2MServerFactory)
        verifyObject(IOriginatorMap, service.factory.originators)
        self.assertEqual(service.cse.config.poa, ("ws://127.0.0.1:9100", "ws://127.0.0.1:9101"))
        o2 = parse("--notification-expiry", "90", "--request-timeout", "3")
        s2: Any = makeService(o2, MemoryReactorClock())
        self.assertEqual(s2.cse.config.notification_expiry, 90.0)
        self.assertEqual((s2.cse.config.verification_timeout, s2.chain.timeout), (3.0, 3.0))
        self.assertEqual(s2.factory.options.request_timeout, 3.0)
        o3 = parse(
            "--max-message-size",
            "2048",
            "--ping-interval",
            "5",
            "--ping-timeout",
            "4",
            "--write-buffer-size",
            "65536",
            "--max-message-frames",
            "16",
            "--message-timeout",
            "2.5",
        )
        s3: Any = makeService(o3, MemoryReactorClock())
        opts = s3.factory.options
        self.assertEqual(
            (
                opts.max_message_size,
                opts.ping_interval,
                opts.ping_timeout,
                opts.write_buffer_size,
                opts.max_message_frames,
                opts.message_timeout,
            ),
            (2048, 5.0, 4.0, 65536, 16, 2.5),
        )
        self.assertIs(service.chain.parent, service)  # stopped with the application
        service.startService()
        self.assertEqual(
            [(p[0], p[3]) for p in reactor.tcpServers], [(9100, "127.0.0.1"), (9101, "")]
        )
        self.assertIs(reactor.tcpServers[0][1], service.factory)
        d = service.stopService()
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_default_listener_backlog(self) -> None:
        reactor = MemoryReactorClock()
        service: Any = makeService(parse(), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ((port, _, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (8180, 1024, "127.0.0.1"))

    def test_target_policy_and_limits(self) -> None:
        default: Any = makeService(parse(), MemoryReactorClock())
        self.assertEqual([str(n) for n in default.chain.policy.deny], list(DEFAULT_DENY))
        self.assertEqual(default.chain.policy.allow, [])
        self.assertEqual((default.chain.limits.total, default.chain.limits.per_host), (256, 8))
        o = parse(
            "--allow-targets",
            "10.0.0.0/8,*.devices.example",
            "--allow-targets",
            "::1/128",
            "--deny-targets",
            "none",
            "--max-outbound",
            "5",
            "--max-outbound-per-host",
            "2",
        )
        service: Any = makeService(o, MemoryReactorClock())
        policy = service.chain.policy
        self.assertEqual(
            [str(r) for r in policy.allow], ["10.0.0.0/8", "*.devices.example", "::1/128"]
        )
        self.assertEqual(policy.deny, [])
        own: Any = makeService(parse("--deny-targets", "192.168.0.0/16"), MemoryReactorClock())
        self.assertEqual([str(n) for n in own.chain.policy.deny], ["192.168.0.0/16"])
        self.assertEqual((service.chain.limits.total, service.chain.limits.per_host), (5, 2))
        q: Any = makeService(
            parse(
                "--queue-size", "7", "--queue-bytes", "9000", "--queue-bytes-per-originator", "800"
            ),
            MemoryReactorClock(),
        ).chain.queue
        self.assertEqual((q.size, q.total_bytes, q.originator_bytes), (7, 9000, 800))
        for bad in ("10.0.0.0/33", "a:b", "x/y"):
            self.assertRaises(usage.UsageError, parse, "--deny-targets", bad)

    def test_forwarding_limits_and_debug_lines(self) -> None:
        from acmews import logs

        default: Any = makeService(parse(), MemoryReactorClock())
        config = default.cse.config
        self.assertEqual(
            (config.max_forwarded_per_link, config.max_forwarded_per_originator), (1000, 100)
        )
        self.assertFalse(logs._debug)
        self.addCleanup(logs.set_debug, False)
        o = parse(
            "--max-forwarded-per-link",
            "50",
            "--max-forwarded-per-originator",
            "5",
            "--log-debug",
        )
        config = makeService(o, MemoryReactorClock()).cse.config
        self.assertEqual(
            (config.max_forwarded_per_link, config.max_forwarded_per_originator), (50, 5)
        )
        self.assertTrue(logs._debug)
        for name in ("--max-forwarded-per-link", "--max-forwarded-per-originator"):
            e = self.assertRaises(usage.UsageError, parse, name, "0")
            self.assertTrue(str(e).startswith(f"{name} must be a positive whole number"))

    def test_allowed_csr_originators(self) -> None:
        default: Any = makeService(parse(), MemoryReactorClock())
        # none: a CSE must prove its CSE-ID (#27)
        self.assertEqual(default.cse.config.allowed_csr_originators, ())
        o = parse("--allowed-csr-originators", "/id-mn*,/id-gw", "--allowed-csr-originators", "/x")
        service: Any = makeService(o, MemoryReactorClock())
        self.assertEqual(service.cse.config.allowed_csr_originators, ("/id-mn*", "/id-gw", "/x"))

    def test_registrar_options(self) -> None:
        plain: Any = makeService(parse(), MemoryReactorClock())
        self.assertIsNone(plain.link)
        self.assertEqual((plain.cse.config.registrar_cse_id, plain.cse.config.cse_type), (None, 1))
        o = parse(
            "--cse-id",
            "/id-mn",
            "--registrar",
            "ws://in.example:8180",
            "--registrar-cse-id",
            "/id-up",
            "--registrar-cse-name",
            "cse-up",
            "--registrar-serialization",
            "cbor",
            "--keep-registration",
        )
        service: Any = makeService(o, MemoryReactorClock())
        self.assertEqual(
            (service.link.registrar_cse_id, service.link.registrar_cse_name), ("/id-up", "cse-up")
        )
        self.assertTrue(service.link.keep_registration)
        self.assertEqual(service.cse.config.registrar_cse_id, "/id-up")
        self.assertEqual(service.cse.config.cse_type, 2)
        for bad in (
            ("--registrar", "http://x"),
            ("--registrar", "ws://x", "--registrar-serialization", "xml"),
            ("--registrar", "ws://x", "--registrar-cse-id", "/id-in"),  # this CSE's own
        ):
            self.assertRaises(usage.UsageError, parse, *bad)

    def test_registrar_credentials(self) -> None:
        import os

        import trustme

        d = self.mktemp()
        os.makedirs(d)
        token = f"{d}/token"
        with open(token, "w") as f:
            f.write("tok-mn\n")
        base = ("--cse-id", "/id-mn", "--registrar", "ws://in.example:8180")

        def authorization(*args: str) -> str | None:
            service: Any = makeService(parse(*base, *args), MemoryReactorClock())
            self.assertEqual(service.link._factory.headers["X-M2M-Origin"], "/id-mn")
            return service.link._factory.headers.get("Authorization")  # type: ignore[no-any-return]

        self.patch(os, "environ", {})
        self.assertIsNone(authorization())
        self.assertEqual(authorization("--registrar-token-file", token), "Bearer tok-mn")
        self.assertEqual(authorization("--registrar-token", "t2"), "Bearer t2")
        pw = ("--registrar-user", "mn", "--registrar-password", "secret")
        self.assertEqual(authorization(*pw), "Basic bW46c2VjcmV0")
        self.assertRaises(usage.UsageError, parse, *base, "--registrar-user", "mn")
        self.patch(os, "environ", {"ACMEWS_REGISTRAR_PASSWORD": "secret"})
        self.assertEqual(authorization("--registrar-user", "mn"), "Basic bW46c2VjcmV0")
        self.patch(os, "environ", {"ACMEWS_REGISTRAR_TOKEN": "t3"})
        self.assertEqual(authorization(), "Bearer t3")
        self.patch(os, "environ", {})
        ca = trustme.CA()
        ca.cert_pem.write_to_path(f"{d}/ca.pem")
        cert = ca.issue_cert("mn.example")
        cert.private_key_pem.write_to_path(f"{d}/key.pem")
        cert.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
        tls = ("--ca-file", f"{d}/ca.pem", "--client-certificate", f"{d}/cert.pem")
        o = parse(*base, *tls, "--client-key", f"{d}/key.pem")
        self.assertIsNotNone(o.config.client_tls.client_certificate)
        self.assertIsNotNone(o.config.client_tls.trust_root)
        makeService(o, MemoryReactorClock())
        for bad in (
            (*base, "--registrar-user", "mn", "--registrar-token-file", token),
            (*base, "--registrar-token", "a", "--registrar-token-file", token),
            (*base, "--registrar-token-file", f"{d}/missing"),
            (*base, "--registrar-password", "x"),  # no user
            (*base, *tls),  # the certificate without its key
            (*base, "--client-key", f"{d}/key.pem"),
            (*base, "--ca-file", f"{d}/missing.pem"),
            ("--registrar-token-file", token),  # no registrar
        ):
            self.assertRaises(usage.UsageError, parse, *bad)

    def test_poa_credentials(self) -> None:
        import os

        d = self.mktemp()
        os.makedirs(d)
        path = f"{d}/poa"
        with open(path, "w") as f:
            f.write(
                "# poa credentials\nhttp://app.example:8080/ app:pw\nws://gw.example Bearer t\n"
            )
        o = parse("--poa-credentials", path)
        credentials = o.config.poa_credentials
        service: Any = makeService(o, MemoryReactorClock())
        self.assertIs(service.chain.connector_for("http")._credentials, credentials)
        self.assertEqual(credentials.authorization("ws://gw.example/x"), "Bearer t")
        self.assertEqual(credentials.authorization("http://app.example:8080/n"), "Basic YXBwOnB3")
        self.assertIsNone(credentials.authorization("http://app.example/n"))
        # a ws:// poa delivery opens its connection with the credential of its URL
        from twisted.internet.defer import Deferred

        import acmews.server

        calls: list[dict[str, Any]] = []
        self.patch(acmews.server, "connect", lambda url, **kw: (calls.append(kw), Deferred())[1])
        ws = service.chain.connector_for("ws")
        ws._connect("ws://gw.example/n", "/id-in", ("oneM2M.json",))
        ws._connect("ws://other.example/n", "/id-in", ("oneM2M.json",))
        self.assertEqual([c["headers"] for c in calls], [{"Authorization": "Bearer t"}, {}])
        with open(path, "w") as f:
            f.write("http://app.example nothing-after-the-url\n")
        self.assertRaises(usage.UsageError, parse, "--poa-credentials", path)

    def test_credential_files(self) -> None:
        import hashlib

        from acmews.auth import CredentialAuthorizer, DefaultAuthorizer

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"meters:{hashlib.sha256(b'pw').hexdigest()}:Cmeter*\n")
        tokens = self.mktemp()
        with open(tokens, "w") as f:
            f.write("t0k3n\n")
        service: Any = makeService(
            parse("--basic-auth-file", path, "--token-file", tokens), MemoryReactorClock()
        )
        self.assertIsInstance(service.factory.authorizer, CredentialAuthorizer)
        plain: Any = makeService(parse(), MemoryReactorClock())
        self.assertIsInstance(plain.factory.authorizer, DefaultAuthorizer)
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("no-hash-here\n")
        for argv in (("--basic-auth-file", bad), ("--token-file", self.mktemp())):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_beyond_loopback_without_credentials_needs_insecure(self) -> None:
        """#27: secure by default. Beyond loopback, no credentials: no start without
        --insecure (a usage error, and make_service refuses such a Config too); with it, a
        warning."""
        from twisted.logger import capturedLogs

        from acmews.config import Config
        from acmews.server import make_service

        users = self.mktemp()
        with open(users, "w") as f:
            f.write("u:" + "0" * 64 + "\n")
        for listen, exposed in (
            ("tcp:8180:interface=127.0.0.1", False),
            ("tcp:8180", True),
            ("tcp:8180:interface=0.0.0.0", True),
            ("tcp:8180:interface=\\:\\:1", False),
        ):
            if exposed:
                e = self.assertRaises(usage.UsageError, parse, "--listen", listen)
                self.assertIn("--insecure", str(e))
                config = Config(listen=(listen,), store="memory:")
                self.assertRaises(ValueError, make_service, config, MemoryReactorClock())
                parse("--listen", listen, "--basic-auth-file", users)  # credentials: fine
            with capturedLogs() as events:
                makeService(parse("--listen", listen, "--insecure"), MemoryReactorClock())
            said = any("without authentication" in e.get("log_format", "") for e in events)
            self.assertEqual(said, exposed, listen)

    def test_connection_limits(self) -> None:
        default: Any = makeService(parse(), MemoryReactorClock())
        limits = default.factory.admission.limits
        self.assertEqual(
            (limits.total, limits.per_address, limits.handshaking_per_address), (20000, 6000, 128)
        )
        o = parse(
            "--max-connections",
            "10",
            "--max-connections-per-address",
            "4",
            "--max-handshakes-per-address",
            "2",
        )
        limits = makeService(o, MemoryReactorClock()).factory.admission.limits
        self.assertEqual(
            (limits.total, limits.per_address, limits.handshaking_per_address), (10, 4, 2)
        )
        self.assertRaises(usage.UsageError, parse, "--max-connections", "0")

    def test_client_ca(self) -> None:
        import os

        import trustme
        from OpenSSL import SSL

        ca = trustme.CA()
        d = self.mktemp()
        os.makedirs(d)
        ca.cert_pem.write_to_path(f"{d}/ca.pem")
        cert = ca.issue_cert("localhost")
        cert.private_key_pem.write_to_path(f"{d}/key.pem")
        cert.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
        reactor = MemoryReactorClock()
        listen = f"ssl:8443:privateKey={d}/key.pem:certKey={d}/cert.pem:interface=127.0.0.1"
        service: Any = makeService(
            parse("--listen", listen, "--client-ca", f"{d}/ca.pem"), reactor
        )
        self.assertTrue(service.factory.authorizer._certificates)
        service.startService()
        self.addCleanup(service.stopService)
        ((port, _, tls, _, interface),) = reactor.sslServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        mode = tls.getContext().get_verify_mode()
        self.assertTrue(mode & SSL.VERIFY_PEER and mode & SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        self.assertRaises(usage.UsageError, parse, "--client-ca", f"{d}/missing.pem")

    def test_the_poa_names_the_port_listened_on(self) -> Deferred[None]:
        """A derived poa names the port actually listened on, a port 0 too (#25)."""

        async def run() -> None:
            from acmews.client import connect

            from .helpers import NO_PING, start_cse

            service, url = await start_cse(self)
            self.assertEqual(service.cse.config.poa, (url,))
            admin = await connect(url, originator="CAdmin", options=NO_PING)
            r = await admin.retrieve("cse-in")
            self.assertEqual(r.pc["m2m:cb"]["poa"], [url])
            await admin.close()
            explicit, _ = await start_cse(self, "--poa", "ws://cse.example.com:8180")
            self.assertEqual(explicit.cse.config.poa, ("ws://cse.example.com:8180",))

        return Deferred.fromCoroutine(run())

    def test_explicit_poa(self) -> None:
        o = parse("--poa", "ws://cse.example.com:8180")
        service: Any = makeService(o, MemoryReactorClock())
        self.assertEqual(service.cse.config.poa, ("ws://cse.example.com:8180",))

    def test_port_in_use_fails_loudly(self) -> None:
        from twisted.internet.error import CannotListenError

        class Busy(MemoryReactorClock):
            def listenTCP(
                self, port: int, factory: Any, backlog: int = 50, interface: str = ""
            ) -> Any:
                raise CannotListenError(interface, port, OSError("in use"))

        with capturedLogs() as events:
            service: Any = makeService(parse(), Busy())
            e = self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertIsInstance(e, ListenError)
        self.assertEqual(
            str(e),
            "cannot listen on tcp:8180:interface=127.0.0.1:backlog=1024: in use",
        )
        self.assertNoResult(service.listening)
        self.assertFalse([ev for ev in events if "listening on" in ev["log_format"]])

    def test_listening_is_said_once_listening(self) -> None:
        reactor = MemoryReactorClock()
        with capturedLogs() as events:
            service: Any = makeService(parse("--listen", "tcp:9100", "--insecure"), reactor)
            said = [ev for ev in events if "listening on" in ev["log_format"]]
            self.assertEqual(said, [])
            service.privilegedStartService()
            service.startService()
        self.addCleanup(service.stopService)
        (port,) = self.successResultOf(service.listening)
        self.assertEqual(port.getHost().port, 9100)
        (said,) = [ev for ev in events if "listening on" in ev["log_format"]]
        self.assertEqual(said["listen"], "tcp:0.0.0.0:9100")
        self.assertEqual(len(reactor.tcpServers), 1)

    def test_under_twistd_a_listen_error_is_one_line(self) -> None:
        class Busy(MemoryReactorClock):
            def listenTCP(
                self, port: int, factory: Any, backlog: int = 50, interface: str = ""
            ) -> Any:
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        class Parent:
            subCommand = "acmews"

        options = parse("--listen", "tcp:8180", "--insecure")
        options.parent = Parent()
        service = makeService(options, Busy())
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        # twistd's runner catches Exception (removes its pid file), then Python prints one line
        self.assertIsInstance(e, Exception)
        self.assertEqual(
            e.code, "twistd acmews: cannot listen on tcp:8180: Address already in use"
        )


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class TwistdProcessTests(TestCase):
    """A real ``twistd acmews`` that cannot start says why in one line, exit status 1."""

    timeout = 60

    async def _twistd(
        self, *argv: str, twistd: tuple[str, ...] = ("-n", "--pidfile=")
    ) -> tuple[int, str]:
        import sys

        from twisted.internet import reactor

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = _Output()
        code = "from twisted.scripts.twistd import run; run()"
        args = [sys.executable, "-c", code, *twistd, "acmews", *argv]
        reactor.spawnProcess(out, sys.executable, args, env=env, path=self.mktemp_dir())  # type: ignore[attr-defined]
        status = await out.ended
        return status, out.out.decode().strip()

    def mktemp_dir(self) -> str:
        os.mkdir(path := self.mktemp())
        return path

    def test_a_busy_port(self) -> Deferred[None]:
        async def run() -> None:
            from twisted.internet import reactor
            from twisted.internet.protocol import Factory

            port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            listen = f"tcp:{port.getHost().port}:interface=127.0.0.1"
            status, out = await self._twistd("--store", "memory:", "--listen", listen)
            self.assertEqual(status, 1)
            # twistd's log has started: the line reaches it as stderr, no traceback
            self.assertNotIn("Traceback", out)
            self.assertTrue(
                out.splitlines()[-1].endswith(
                    f"twistd acmews: cannot listen on {listen}: Address already in use"
                ),
                out,
            )

        return Deferred.fromCoroutine(run())

    def test_a_busy_port_in_the_background(self) -> Deferred[None]:
        """Daemonized (no -n), a port in use is still one line on the terminal (#23.4), not
        twistd's ``An error has occurred: b'acmews.tap.TwistdExit: ...'`` cut at 100 bytes."""

        async def run() -> None:
            from twisted.internet import reactor
            from twisted.internet.protocol import Factory

            port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            listen = f"tcp:{port.getHost().port}:interface=127.0.0.1"
            logs = self.mktemp_dir()
            status, out = await self._twistd(
                "--store",
                "memory:",
                "--listen",
                listen,
                twistd=(f"--pidfile={logs}/t.pid", f"--logfile={logs}/t.log"),
            )
            self.assertEqual(
                (status, out),
                (1, f"twistd acmews: cannot listen on {listen}: Address already in use"),
            )
            self.assertFalse(os.path.exists(f"{logs}/t.pid"))

        return Deferred.fromCoroutine(run())

    def test_a_store_it_cannot_open(self) -> Deferred[None]:
        async def run() -> None:
            status, out = await self._twistd("--store", "sqlite:/nonexistent/dir/x.db")
            self.assertEqual(status, 1)
            self.assertTrue(out.startswith("twistd acmews: "), out)  # before twistd logs
            self.assertNotIn("\n", out)
            self.assertIn("/nonexistent/dir/x.db", out)

        return Deferred.fromCoroutine(run())


class UsageTests(TestCase):
    """``twistd acmews --help`` (#23.4): no word split across lines, no runs of spaces."""

    def test_every_help_reads_whole(self) -> None:
        options = Options()
        for width in (80, 120):
            text = options.getUsage(width=width)
            flat = " ".join(text.split())
            for name, doc in options.docs.items():
                self.assertIn(" ".join((doc or "").split()), flat, name)
            self.assertIn("--max-connections", text.split())
            self.assertIn(" tcp:8180:interface=127.0.0.1:backlog=1024", text)
            indent = text.splitlines()[1].index("The admin")
            for line in text.splitlines():
                if line.startswith(" " * indent):  # a help's second line on
                    self.assertNotIn("  ", line[indent:], line)
                    self.assertNotEqual(line[indent], " ")
            self.assertIn("Defaults match ACME's.", text)


class StoreOptionTests(TestCase):
    def test_default_is_a_sqlite_file_in_the_working_directory(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["store"], "sqlite:acmews.db")
        self.assertEqual(parse("--store", "sqlite:/tmp/x.db")["store"], "sqlite:/tmp/x.db")
        for url in ("postgresql://acmews@db.example:5433/acmews", "postgres://db/acmews"):
            self.assertEqual(parse("--store", url)["store"], url)
        for bad in ("sqlite:", "acmews.db", "mysql://db/acmews", "postgres:db", "memory"):
            e = self.assertRaises(usage.UsageError, parse, "--store", bad)
            self.assertIn("--store", str(e))

    async def _wired(self) -> None:
        from twisted.internet import reactor

        from acmews.durable import SQLiteNotificationQueue, SQLiteResourceStore, StoreError

        os.mkdir(directory := self.mktemp())
        path = os.path.join(directory, "cse.db")
        o = parse("--store", f"sqlite:{path}", "--listen", "tcp:0:interface=127.0.0.1")
        service: Any = makeService(o, reactor)
        store, queue = service.cse.store, service.chain.queue
        self.assertIsInstance(store, SQLiteResourceStore)
        self.assertIsInstance(queue, SQLiteNotificationQueue)
        self.assertIs(store.database, queue.database)  # one file, one transaction stream
        await service.store.service.stopService()  # (never started: no listener to stop)
        with sqlite3.connect(path) as conn:
            self.assertEqual(list(conn.execute("SELECT ri FROM resources")), [("id-in",)])
        # the file holds /id-in's tree: another CSE-ID is refused, and the file closed again
        e = self.assertRaises(
            StoreError,
            makeService,
            parse("--store", f"sqlite:{path}", "--cse-id", "/id-x"),
            reactor,
        )
        self.assertIn(path, str(e))
        self.assertIn("/id-x", str(e))
        again: Any = makeService(parse("--store", f"sqlite:{path}"), reactor)
        self.assertIs(again.cse.base, again.cse.store.get("id-in"))
        await again.store.service.stopService()

    def test_sqlite_store_is_wired(self) -> Any:
        return Deferred.fromCoroutine(self._wired())


class ClusterOptionTests(TestCase):
    """--cluster and --node-name (#22)."""

    def test_cluster_needs_a_shared_store(self) -> None:
        for store in ("memory:", "sqlite:/tmp/x.db"):
            e = self.assertRaises(
                usage.UsageError, parse, "--store", store, "--cluster", "redis://127.0.0.1"
            )
            self.assertTrue(str(e).startswith("--cluster needs a store that every node shares"))
            self.assertNotIn("\n", str(e))

    def test_cluster_with_a_shared_store(self) -> None:
        o = parse(
            "--store",
            "postgresql://db/acmews",
            "--cluster",
            "redis://127.0.0.1:6380/2",
            "--node-name",
            "node-1",
        )
        self.assertEqual(o.config.cluster, "redis://127.0.0.1:6380/2")
        self.assertEqual(o.config.node_name, "node-1")
        self.assertEqual(
            parse("--store", "postgres://db", "--cluster", "redis://h").config.store,
            "postgres://db",
        )

    def test_the_cluster_lease(self) -> None:
        from acmews.server import build_chain, build_cluster

        shared = ("--store", "postgresql://db/acmews", "--cluster", "redis://127.0.0.1")
        self.assertEqual(parse(*shared).config.cluster_lease, 10.0)
        config = parse(*shared, "--cluster-lease", "2").config
        self.assertEqual(config.cluster_lease, 2.0)
        from twisted.internet.task import Clock

        from acmews.originators import OriginatorMap
        from acmews.poa.queue import MemoryNotificationQueue

        originators = OriginatorMap()
        chain = build_chain(config, originators, MemoryNotificationQueue(), Clock())
        node = build_cluster(config, originators, chain, Clock())
        assert node is not None
        self.assertEqual((node.lease, node.renew, node.leader_lease), (2.0, 0.6, 2.4))
        self.assertRaises(usage.UsageError, parse, *shared, "--cluster-lease", "0")

    def test_bad_cluster_options_are_one_line_without_the_password(self) -> None:
        for argv, start in (
            (["--cluster", "http://h"], "--cluster: unsupported scheme 'http'"),
            (["--cluster", "redis://:hunter2@h/x"], "--cluster: the database must be a number"),
            (["--cluster", "redis://h", "--node-name", "a b"], "--node-name must be"),
            (["--node-name", "a"], "--node-name needs --cluster"),
        ):
            e = self.assertRaises(usage.UsageError, parse, "--store", "postgresql://db", *argv)
            self.assertTrue(str(e).startswith(start), (argv, str(e)))
            self.assertNotIn("\n", str(e))
            self.assertNotIn("hunter2", str(e))

    def test_a_shared_store_alone_is_fine_and_cluster_needs_one(self) -> None:
        self.assertEqual(parse("--store", "postgres://db")["store"], "postgres://db")
        for store in ("memory:", "sqlite:x.db", "postgres:db"):
            self.assertRaises(usage.UsageError, parse, "--store", store, "--cluster", "redis://h")
