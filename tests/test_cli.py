"""The ``acmews`` command: argument parsing and output (no sockets), and one loopback run of
``acmews request`` against makeService on a real port."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, TestCase

from acmews import __version__
from acmews.cli import UsageError, format_primitive, main, parse_args, run
from acmews.codes import Operation
from acmews.primitive import Request, Response

URL = "ws://127.0.0.1:8180"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ParseTests(TestCase):
    def test_request(self) -> None:
        args = parse_args(
            [
                "request",
                URL,
                "retrieve",
                "cse-in/lamp",
                "--from",
                "CAdmin",
                "--rcn",
                "6",
                "--fc",
                "ty=4",
                "--fc",
                "lbl=a",
                "--fc",
                "lbl=b",
                "--cbor",
                "--timeout",
                "2.5",
            ]
        )
        self.assertEqual(
            (args.url, args.op, args.target, args.originator, args.rcn, args.cbor, args.timeout),
            (URL, "retrieve", "cse-in/lamp", "CAdmin", 6, True, 2.5),
        )
        self.assertEqual(args.filters, {"ty": 4, "lbl": ["a", "b"]})
        self.assertIsNone(args.content)

    def test_create_content_and_type_names(self) -> None:
        args = parse_args(
            ["request", URL, "create", "cse-in", "--ty", "ae", "--pc", '{"m2m:ae": {"rn": "x"}}']
        )
        self.assertEqual(
            (args.ty, args.content, args.originator), (2, {"m2m:ae": {"rn": "x"}}, None)
        )
        self.assertEqual(args.timeout, 10.0)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"m2m:cnt": {}}')
        args = parse_args(
            ["request", URL, "create", "cse-in", "--ty", "3", "--pc", "@" + path, "--from", "C"]
        )
        self.assertEqual((args.ty, args.content), (3, {"m2m:cnt": {}}))

    def test_watch(self) -> None:
        args = parse_args(["watch", URL, "--register", "w", "--subscribe", "cse-in/a"])
        self.assertEqual(
            (args.register, args.originator, args.subscribe), ("w", None, ["cse-in/a"])
        )
        self.assertEqual(args.cse, "cse-in")

    def test_bad_command_lines_are_one_line(self) -> None:
        for argv, part in (
            ([], "required: COMMAND"),
            (["request", "http://x", "retrieve", "a", "--from", "C"], "ws://HOST:PORT"),
            (["request", URL, "fetch", "a", "--from", "C"], "invalid choice: 'fetch'"),
            (["request", URL, "retrieve", "a"], "--from ORIGINATOR is needed"),
            (["request", URL, "create", "a", "--from", "C", "--pc", "{}"], "create needs --ty"),
            (["request", URL, "create", "a", "--ty", "9x", "--pc", "{}"], "--ty: must be"),
            (["request", URL, "create", "a", "--ty", "3", "--pc", "{}"], "--from ORIGINATOR"),
            (["request", URL, "update", "a", "--from", "C"], "update needs --pc"),
            (["request", URL, "retrieve", "a", "--from", "C", "--pc", "{}"], "--pc is for"),
            (["request", URL, "retrieve", "a", "--from", "C", "--ty", "3"], "--ty is for"),
            (["request", URL, "update", "a", "--from", "C", "--pc", "{x"], "--pc {x: not JSON"),
            (["request", URL, "update", "a", "--from", "C", "--pc", "@/nonexistent"], "--pc @"),
            (["request", URL, "retrieve", "a", "--from", "C", "--timeout", "0"], "--timeout"),
            (["request", URL, "retrieve", "a", "--from", "C", "--fc", "x"], "NAME=VALUE"),
            (["watch", URL], "one of the arguments --from --register is required"),
            (["watch", URL, "--register", "a/b"], "--register: must be a resource name"),
            (["watch", URL, "--register", "a", "--from", "C"], "not allowed with"),
        ):
            e = self.assertRaises(UsageError, parse_args, argv)
            self.assertIn(part, str(e), argv)
            self.assertNotIn("\n", str(e))

    def test_credentials(self) -> None:
        import os

        argv = ["request", URL, "retrieve", "cse-in", "--from", "CAdmin"]
        self.patch(os, "environ", {"ACMEWS_PASSWORD": "pw"})
        args = parse_args([*argv, "--user", "admin"])
        self.assertEqual(args.headers, {"Authorization": "Basic YWRtaW46cHc="})
        self.assertIsNone(args.tls)
        self.patch(os, "environ", {"ACMEWS_TOKEN": "t1"})
        self.assertEqual(parse_args(argv).headers, {"Authorization": "Bearer t1"})
        self.patch(os, "environ", {})
        self.assertEqual(parse_args(argv).headers, {})
        for bad in (
            [*argv, "--user", "admin"],  # no ACMEWS_PASSWORD
            [*argv, "--ca-file", "ca.pem"],  # not wss://
            [*argv, "--client-key", "k.pem"],
            ["request", "wss://h:1", "retrieve", "x", "--from", "C", "--ca-file", "/none.pem"],
        ):
            self.assertRaises(UsageError, parse_args, bad)

    def test_run_reports_a_usage_error_in_one_line(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        d = Deferred.fromCoroutine(
            run(MemoryReactorClock(), ["request", URL, "retrieve", "a"], out, err)
        )
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(
            err.getvalue(),
            "acmews: --from ORIGINATOR is needed (only an AE create goes without)\n",
        )
        self.assertEqual(out.getvalue(), "")


class MainTests(TestCase):
    def test_main_returns_the_exit_status_through_react(self) -> None:
        import contextlib

        err = io.StringIO()
        reactor = MemoryReactorClock()
        with contextlib.redirect_stderr(err):
            code = main(["request", URL, "retrieve", "a"], reactor=reactor)
        self.assertEqual(code, 2)
        self.assertTrue(reactor.hasRun)
        self.assertEqual(err.getvalue().count("\n"), 1)

    def test_version(self) -> None:
        import contextlib

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--version"], reactor=MemoryReactorClock())
        self.assertEqual((code, out.getvalue()), (0, f"acmews {__version__}\n"))


class FormatTests(TestCase):
    def test_piped_is_one_line_terminal_is_indented(self) -> None:
        response = Response(2000, "r1", "4", pc={"m2m:cnt": {"rn": "é"}})
        line = format_primitive(response, pretty=False)
        self.assertEqual(line, '{"rsc":2000,"rqi":"r1","rvi":"4","pc":{"m2m:cnt":{"rn":"é"}}}')
        pretty = format_primitive(response, pretty=True)
        self.assertEqual(json.loads(pretty), json.loads(line))
        self.assertIn('\n  "rsc": 2000,', pretty)

    def test_request_and_bytes(self) -> None:
        request = Request(Operation.NOTIFY, "Cae", "r2", fr="/id-in", pc={"b": b"\x01"})
        self.assertEqual(
            json.loads(format_primitive(request, pretty=False)),
            {
                "op": 5,
                "to": "Cae",
                "fr": "/id-in",
                "rqi": "r2",
                "rvi": "4",
                "pc": {"b": "b'\\x01'"},
            },
        )


class LoopbackTests(TestCase):
    """``acmews request`` against ``twistd acmews``'s service on 127.0.0.1, port 0."""

    timeout = 20

    @inlineCallbacks
    def start(self, *more: str) -> Any:
        from twisted.internet import reactor

        from acmews.tap import Options, makeService

        options = Options()
        options.parseOptions(
            [
                *("--listen", "tcp:0:interface=127.0.0.1", "--ping-interval", "0"),
                *("--store", "memory:", *more),
            ]
        )
        service: Any = makeService(options, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        (port,) = yield service.listening
        return reactor, f"ws://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_retrieve_the_cse_base(self) -> Any:
        reactor, url = yield self.start()
        out, err = io.StringIO(), io.StringIO()
        argv = ["request", url, "retrieve", "cse-in", "--from", "CAdmin"]
        code = yield Deferred.fromCoroutine(run(reactor, argv, out, err))
        self.assertEqual((code, err.getvalue()), (0, ""))
        (line,) = out.getvalue().splitlines()
        printed = json.loads(line)
        self.assertEqual(printed["rsc"], 2000)
        self.assertEqual(printed["pc"]["m2m:cb"]["rn"], "cse-in")

    @inlineCallbacks
    def test_credentials_from_the_environment(self) -> Any:
        import os

        tokens = self.mktemp()
        with open(tokens, "w") as f:
            f.write("tok-admin:CAdmin\n")
        reactor, url = yield self.start("--token-file", tokens)
        argv = ["request", url, "retrieve", "cse-in", "--from", "CAdmin"]
        self.patch(os, "environ", {})
        out, err = io.StringIO(), io.StringIO()
        code = yield Deferred.fromCoroutine(run(reactor, argv, out, err))
        self.assertEqual(code, 2)
        self.assertIn("401", err.getvalue())
        self.patch(os, "environ", {"ACMEWS_TOKEN": "tok-admin"})
        out, err = io.StringIO(), io.StringIO()
        code = yield Deferred.fromCoroutine(run(reactor, argv, out, err))
        self.assertEqual((code, err.getvalue()), (0, ""))
        self.assertEqual(json.loads(out.getvalue())["rsc"], 2000)

    @inlineCallbacks
    def test_a_malformed_handshake_answer_is_one_line(self) -> Any:
        """#27.12: whatever a server answers to the opening handshake (not HTTP, bytes that
        are not UTF-8, a bad accept key), the command prints one line and no traceback."""
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol
        from twisted.logger import capturedLogs

        answers = [
            b"\x00\xff\xfe not an answer\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n",
        ]

        class Liar(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(answers[0])

        port = reactor.listenTCP(0, Factory.forProtocol(Liar), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}"
        while answers:
            out, err = io.StringIO(), io.StringIO()
            argv = ["request", url, "retrieve", "cse-in", "--from", "CAdmin", "--timeout", "5"]
            with capturedLogs() as events:
                code = yield Deferred.fromCoroutine(run(reactor, argv, out, err))
            self.assertEqual(code, 2, err.getvalue())
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
            self.assertEqual([e for e in events if e.get("log_failure")], [])
            answers.pop(0)

    @inlineCallbacks
    def test_error_rsc_exits_1_and_terminal_output_is_indented(self) -> Any:
        reactor, url = yield self.start()
        out, err = Terminal(), io.StringIO()
        argv = ["request", url, "retrieve", "cse-in/nothing", "--from", "CAdmin"]
        code = yield Deferred.fromCoroutine(run(reactor, argv, out, err))
        self.assertEqual(code, 1)
        self.assertEqual(json.loads(out.getvalue())["rsc"], 4004)
        self.assertIn('\n  "rsc": 4004', out.getvalue())

    @inlineCallbacks
    def test_watch_registers_subscribes_prints_and_cleans_up(self) -> Any:
        from acmews.client import connect
        from acmews.codes import ResourceType

        reactor, url = yield self.start()
        admin = yield connect(url, originator="CAdmin", reactor=reactor)
        self.addCleanup(admin.close)
        r = yield admin.create("cse-in", ResourceType.CNT, {"m2m:cnt": {"rn": "box"}})
        self.assertEqual(r.rsc, 2001)
        lines: Deferred[None] = Deferred()

        class Out(io.StringIO):
            def flush(self) -> None:
                if self.getvalue() and not lines.called:
                    reactor.callLater(0, lines.callback, None)

        ready: Deferred[None] = Deferred()

        class Err(io.StringIO):
            def write(self, text: str) -> int:
                if text.startswith("watching") and not ready.called:
                    reactor.callLater(0, ready.callback, None)
                return super().write(text)

        out, err, stop = Out(), Err(), Deferred[None]()
        argv = ["watch", url, "--register", "watcher", "--subscribe", "cse-in/box"]
        # the watcher's own AE may not subscribe to the admin's box: let it through an ACP
        r = yield admin.create(
            "cse-in",
            ResourceType.ACP,
            {
                "m2m:acp": {
                    "rn": "open",
                    "pv": {"acr": [{"acor": ["*"], "acop": 63}]},
                    "pvs": {"acr": [{"acor": ["CAdmin"], "acop": 63}]},
                }
            },
        )
        self.assertEqual(r.rsc, 2001, r.pc)
        r = yield admin.update("cse-in/box", {"m2m:cnt": {"acpi": [r.pc["m2m:acp"]["ri"]]}})
        self.assertEqual(r.rsc, 2004, r.pc)
        watching = Deferred.fromCoroutine(run(reactor, argv, out, err, stop))
        yield DeferredList([ready, watching], fireOnOneCallback=True)  # no hang if it fails
        self.assertNoResult(watching)
        r = yield admin.create("cse-in/box", ResourceType.CIN, {"m2m:cin": {"con": "on"}})
        self.assertEqual(r.rsc, 2001)
        yield lines
        (line,) = out.getvalue().splitlines()
        notification = json.loads(line)
        self.assertEqual(notification["op"], 5)
        self.assertEqual(notification["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"], "on")
        stop.callback(None)
        code = yield watching
        self.assertEqual(code, 0, err.getvalue())
        r = yield admin.retrieve("cse-in/box", rcn=6)
        self.assertEqual([c["typ"] for c in r.pc["m2m:rrl"]["rrf"]], [4])  # the sub is gone
        r = yield admin.retrieve("cse-in/watcher")
        self.assertEqual(r.rsc, 4004)  # so is the AE


class HelpTests(TestCase):
    """#23: a usage line for bare ``acmews``; every --help has the sections of a man page."""

    def test_bare_acmews_prints_a_usage_line(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = self.successResultOf(Deferred.fromCoroutine(run(None, [], out, err)))
        self.assertEqual(code, 2)
        self.assertTrue(err.getvalue().startswith("usage: acmews COMMAND ..."), err.getvalue())
        self.assertIn("request, watch, shell, cluster, bench, completion", err.getvalue())

    def test_help_has_exit_status_environment_and_examples(self) -> None:
        import contextlib

        for argv in (["--help"], *([c, "--help"] for c in ("request", "watch", "shell"))):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(argv, reactor=MemoryReactorClock())
            self.assertEqual(code, 0)
            text = out.getvalue()
            for section in ("EXIT STATUS", "ENVIRONMENT", "EXAMPLES"):
                self.assertIn(f"\n{section}\n", text, argv)
            self.assertIn("ACMEWS_PASSWORD", text)
            self.assertIn("130", text)

    def test_status_codes_have_their_names(self) -> None:
        from acmews.codes import rsc_text

        self.assertEqual(rsc_text(4004), "4004 Not Found")
        self.assertEqual(rsc_text(2000), "2000 OK")
        self.assertEqual(rsc_text(4103), "4103 Originator Has No Privilege")
        self.assertEqual(rsc_text(4999), "4999")

    def test_a_password_without_a_user_is_a_usage_error(self) -> None:
        import os

        self.patch(os, "environ", {"ACMEWS_PASSWORD": "pw", "ACMEWS_TOKEN": "t"})
        e = self.assertRaises(
            UsageError, parse_args, ["request", URL, "retrieve", "cse-in", "--from", "C"]
        )
        self.assertIn("ACMEWS_PASSWORD is set but --user is not", str(e))
        self.assertNotIn("pw", str(e))

    def test_watch_count_and_timeout(self) -> None:
        args = parse_args(["watch", URL, "--from", "C", "--count", "1", "--timeout", "10"])
        self.assertEqual((args.count, args.timeout), (1, 10.0))
        self.assertIsNone(parse_args(["watch", URL, "--from", "C"]).timeout)
        for bad in ("0", "-1", "x"):
            self.assertRaises(
                UsageError, parse_args, ["watch", URL, "--from", "C", "--count", bad]
            )

    def test_tls_hints(self) -> None:
        from acmews.cli import tls_hint

        trust = tls_hint("wss://h:1", 'closed uncleanly ("SSL error: certificate verify failed")')
        self.assertIn("use --ca-file", trust)
        self.assertIn("plain ws://", tls_hint("wss://h:1", "no answer within 3 seconds"))
        dropped = "peer dropped the TCP connection without previous WebSocket closing handshake"
        self.assertIn("use wss://", tls_hint("ws://h:1", dropped))
        self.assertEqual(tls_hint("ws://h:1", "Connection refused"), "")
        refused = 'closed uncleanly ("WebSocket connection upgrade failed [401]: Unauthorized")'
        self.assertEqual(tls_hint("ws://h:1", refused), "")

    def test_completion(self) -> None:
        import contextlib

        try:
            import shtab  # noqa: F401
        except ImportError:
            raise SkipTest("shtab is not installed (pip install '.[test]')") from None
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["completion", "bash"], reactor=MemoryReactorClock())
        self.assertEqual(code, 0)
        self.assertIn("acmews", out.getvalue())
        self.assertIn("--subscribe", out.getvalue())
