"""The ``acmews`` command against ``twistd acmews``'s service on 127.0.0.1, port 0 (#23):
status names, ``-v``, ``watch --count/--timeout``, ``shell``, TLS hints, and the exit status
of a process stopped by Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from acmews.cli import run
from acmews.client import Client, connect
from acmews.codes import ResourceType

from .helpers import NO_PING, start_cse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lines(io.StringIO):
    """An output that fires ``arrived`` once ``marker`` has been written."""

    def __init__(self, marker: str = "") -> None:
        super().__init__()
        self.marker = marker
        self.arrived: Deferred[None] = Deferred()

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.marker in self.getvalue() and not self.arrived.called:
            from twisted.internet import reactor

            reactor.callLater(0, self.arrived.callback, None)
        return n


class Loopback(TestCase):
    timeout = 30

    async def admin(self, url: str) -> Client:
        admin = await connect(url, originator="CAdmin", options=NO_PING)
        self.addCleanup(admin.close)
        return admin

    async def command(self, *argv: str, **kw: Any) -> tuple[int, str, str]:
        from twisted.internet import reactor

        out, err = io.StringIO(), io.StringIO()
        code = await run(reactor, list(argv), out, err, **kw)
        return code, out.getvalue(), err.getvalue()


class RequestTests(Loopback):
    def test_a_failure_is_named(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            code, out, err = await self.command(
                "request", url, "retrieve", "cse-in/nothing", "--from", "CAdmin"
            )
            self.assertEqual(code, 1)
            self.assertEqual(json.loads(out)["rsc"], 4004)
            self.assertTrue(err.startswith("acmews request: 4004 Not Found: "), err)

        return Deferred.fromCoroutine(go())

    def test_verbose_shows_the_frames(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            for cbor in ((), ("--cbor",)):
                code, out, err = await self.command(
                    "request", url, "retrieve", "cse-in", "--from", "CAdmin", "-v", *cbor
                )
                self.assertEqual(code, 0, err)
                lines = err.splitlines()
                self.assertTrue(lines[0].startswith(f"* connecting to {url} as CAdmin"), err)
                sent = next(line for line in lines if line.startswith("> "))
                received = next(line for line in lines if line.startswith("< "))
                self.assertEqual(json.loads(sent[2:].split(" (CBOR")[0])["op"], 2)
                self.assertEqual(json.loads(received[2:].split(" (CBOR")[0])["rsc"], 2000)
                self.assertEqual("(CBOR" in received, bool(cbor))
                self.assertEqual(json.loads(out)["rsc"], 2000)  # stdout as without -v

        return Deferred.fromCoroutine(go())

    def test_verbose_hides_the_secret(self) -> Deferred[None]:
        async def go() -> None:
            tokens = self.mktemp()
            with open(tokens, "w") as f:
                f.write("tok-secret:CAdmin\n")
            _, url = await start_cse(self, "--token-file", tokens)
            self.patch(os, "environ", {"ACMEWS_TOKEN": "tok-secret"})
            code, _, err = await self.command(
                "request", url, "retrieve", "cse-in", "--from", "CAdmin", "-v"
            )
            self.assertEqual(code, 0, err)
            self.assertIn("* with a Bearer token (not shown)", err)
            self.assertNotIn("tok-secret", err)

        return Deferred.fromCoroutine(go())


class TLSHintTests(Loopback):
    """A wss:// CSE with a certificate of its own CA: the three ways to get TLS wrong."""

    def test_hints(self) -> Deferred[None]:
        async def go() -> None:
            import trustme

            ca = trustme.CA()
            d = self.mktemp()
            os.makedirs(d)
            ca.cert_pem.write_to_path(f"{d}/ca.pem")
            cert = ca.issue_cert("localhost", "127.0.0.1")
            cert.private_key_pem.write_to_path(f"{d}/key.pem")
            cert.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
            from twisted.internet import reactor

            from acmews.tap import Options, makeService

            listen = f"ssl:0:privateKey={d}/key.pem:certKey={d}/cert.pem:interface=127.0.0.1"
            options = Options()
            options.parseOptions(
                [
                    *("--listen", "tcp:0:interface=127.0.0.1", "--listen", listen),
                    *("--store", "memory:", "--ping-interval", "0"),
                ]
            )
            service: Any = makeService(options, reactor)
            service.startService()
            self.addCleanup(service.stopService)
            plain_port, tls_port = [p.getHost().port for p in await service.listening]
            plain_url = f"ws://127.0.0.1:{plain_port}"
            argv = ("retrieve", "cse-in", "--from", "CAdmin", "--timeout", "2")
            # not trusted
            code, _, err = await self.command("request", f"wss://localhost:{tls_port}", *argv)
            self.assertEqual(code, 2)
            self.assertIn("use --ca-file", err)
            # trusted
            code, _, err = await self.command(
                "request", f"wss://localhost:{tls_port}", *argv, "--ca-file", f"{d}/ca.pem"
            )
            self.assertEqual(code, 0, err)
            # ws:// to the TLS port
            code, _, err = await self.command("request", f"ws://127.0.0.1:{tls_port}", *argv)
            self.assertEqual(code, 2)
            self.assertIn("use wss://", err)
            # wss:// to a plain port
            plain = plain_url.replace("ws://127.0.0.1", "wss://localhost")
            code, _, err = await self.command("request", plain, *argv, "--ca-file", f"{d}/ca.pem")
            self.assertEqual(code, 2)
            self.assertIn("is it a plain ws:// port?", err)

        return Deferred.fromCoroutine(go())


class WatchTests(Loopback):
    def test_count_ends_it_with_0(self) -> Deferred[None]:
        """``watch --count 1 --timeout 10`` exits 0 after one notification, having deleted
        its subscription."""

        async def go() -> None:
            from twisted.internet import reactor

            _, url = await start_cse(self)
            admin = await self.admin(url)
            out, err = io.StringIO(), Lines("watching")
            argv = ["watch", url, "--register", "w", "--subscribe", "cse-in/w"]
            watching = Deferred.fromCoroutine(
                run(reactor, [*argv, "--count", "1", "--timeout", "10"], out, err)
            )
            await err.arrived
            r = await admin.create("cse-in/w", ResourceType.CNT, {"m2m:cnt": {"rn": "box"}})
            self.assertEqual(r.rsc, 2001)
            self.assertEqual(await watching, 0, err.getvalue())
            (line,) = out.getvalue().splitlines()
            sgn = json.loads(line)["pc"]["m2m:sgn"]
            self.assertEqual(sgn["nev"]["rep"]["m2m:cnt"]["rn"], "box")
            self.assertEqual((await admin.retrieve("cse-in/w")).rsc, 4004)  # cleaned up

        return Deferred.fromCoroutine(go())

    def test_timeout_ends_it_with_1(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            admin = await self.admin(url)
            code, out, err = await self.command(
                "watch", url, "--register", "w", "--subscribe", "cse-in/w", "--count", "2",
                "--timeout", "0.2",
            )  # fmt: skip
            self.assertEqual(code, 1)
            self.assertEqual(out, "")
            self.assertIn("acmews watch: 0 of 2 notifications within 0.2 seconds", err)
            self.assertEqual((await admin.retrieve("cse-in/w")).rsc, 4004)  # cleaned up

        return Deferred.fromCoroutine(go())

    def test_a_refused_registration_is_named(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            ae = await connect(url, options=NO_PING)  # an AE named w registers first
            self.addCleanup(ae.close)
            r = await ae.create(
                "cse-in", ResourceType.AE, {"m2m:ae": {"rn": "w", "api": "Nw", "rr": True}}
            )
            self.assertEqual(r.rsc, 2001)
            code, _, err = await self.command("watch", url, "--register", "w")
            self.assertEqual(code, 2)
            self.assertIn("acmews watch: registering AE w: 4105 Conflict", err)

        return Deferred.fromCoroutine(go())


class ShellTests(Loopback):
    def test_a_scripted_session(self) -> Deferred[None]:
        """Requests in order on one connection, a notification as it arrives, ``wait``."""

        async def go() -> None:
            _, url = await start_cse(self)
            lines: DeferredQueue[str | None] = DeferredQueue()
            for line in (
                "# a comment, then a blank line",
                "",
                """create cse-in --ty cnt --pc '{"m2m:cnt": {"rn": "box"}}'""",
                "create cse-in/box --ty sub --pc "
                """'{"m2m:sub": {"rn": "s", "nu": ["CAdmin"], "enc": {"net": [3]}}}'""",
                """create cse-in/box --ty cin --pc '{"m2m:cin": {"con": "hi"}}'""",
                "wait 1 10",
                "retrieve cse-in/box/la",
                "retrieve cse-in/nothing",
                "delete cse-in/box",
                "help",
                None,
            ):
                lines.put(line)
            code, out, err = await self.command("shell", url, "--from", "CAdmin", lines=lines)
            self.assertEqual(code, 1, err)  # the 4004
            printed = out.splitlines()
            statuses = [line.split(" {")[0] for line in printed if not line.startswith("notif")]
            self.assertEqual(
                statuses[:6],
                ["2001 Created", "2001 Created", "2001 Created", "2000 OK", "4004 Not Found",
                 "2002 Deleted"],
            )  # fmt: skip
            (notification,) = [line for line in printed if line.startswith("notification ")]
            sgn = json.loads(notification.removeprefix("notification "))["pc"]["m2m:sgn"]
            self.assertEqual(sgn["nev"]["rep"]["m2m:cin"]["con"], "hi")
            self.assertIn("wait [N] [SECONDS]", out)  # help
            self.assertEqual(err, "")

        return Deferred.fromCoroutine(go())

    def test_mistakes_are_one_line_and_the_session_goes_on(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            admin = await self.admin(url)
            lines: DeferredQueue[str | None] = DeferredQueue()
            for line in (
                "fetch cse-in",
                "create cse-in",
                "update cse-in --pc @-",
                "retrieve 'cse-in",
                "wait 1 0.1",
                "retrieve cse-in",
                "quit",
                "retrieve never-read",
            ):
                lines.put(line)
            code, out, err = await self.command("shell", url, "--register", "sh", lines=lines)
            self.assertEqual(code, 1)
            self.assertEqual(len(err.splitlines()), 6, err)  # registered, then 5 mistakes
            self.assertIn("invalid choice: 'fetch'", err)
            self.assertIn("create needs --ty", err)
            self.assertIn("--pc @- is not for the shell", err)
            self.assertIn("no 1 notifications within 0.1 seconds", err)
            self.assertIn("registered AE sh as C", err)
            self.assertEqual([line[:7] for line in out.splitlines()], ["2000 OK"])
            self.assertEqual((await admin.retrieve("cse-in/sh")).rsc, 4004)  # cleaned up

        return Deferred.fromCoroutine(go())

    def test_registers_an_ae_from_an_unbound_connection(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            lines: DeferredQueue[str | None] = DeferredQueue()
            ae = '{"m2m:ae": {"rn": "me", "api": "Nme", "rr": true, "srv": ["4"]}}'
            for line in (f"create cse-in --ty ae --pc '{ae}'", "delete cse-in/me", None):
                lines.put(line)
            code, out, err = await self.command("shell", url, lines=lines)
            self.assertEqual(code, 0, err)
            self.assertEqual([line[:12] for line in out.splitlines()], [
                "2001 Created", "2002 Deleted"
            ])  # fmt: skip

        return Deferred.fromCoroutine(go())


class _Process(ProcessProtocol):
    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.out = self.err = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data
        if self.marker in self.err and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        self.ended.callback(code if code is not None else -reason.value.signal)


class ProcessTests(Loopback):
    """The command as a program: its exit status when interrupted, its stdin."""

    def spawn(self, marker: str, *argv: str) -> _Process:
        from twisted.internet import reactor

        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("ACMEWS_PASSWORD", None)
        process = _Process(marker.encode())
        args = [sys.executable, "-m", "acmews", *argv]
        reactor.spawnProcess(process, sys.executable, args, env, ROOT)
        return process

    def test_ctrl_c_cleans_up_and_exits_130(self) -> Deferred[None]:
        async def go() -> None:
            from twisted.internet import reactor

            _, url = await start_cse(self)
            admin = await self.admin(url)
            for signum in (signal.SIGINT, signal.SIGTERM):
                process = self.spawn(
                    "watching", "watch", url, "--register", "w", "--subscribe", "cse-in/w"
                )
                await process.ready.addTimeout(20, reactor)
                self.assertEqual((await admin.retrieve("cse-in/w")).rsc, 2000)
                process.transport.signalProcess(signum)  # type: ignore[attr-defined]
                code = await process.ended.addTimeout(20, reactor)
                self.assertEqual(code, 128 + signum, process.err.decode())
                self.assertEqual((await admin.retrieve("cse-in/w")).rsc, 4004)

        return Deferred.fromCoroutine(go())

    def test_the_shell_reads_stdin(self) -> Deferred[None]:
        async def go() -> None:
            from twisted.internet import reactor

            _, url = await start_cse(self)
            process = self.spawn("", "shell", url, "--from", "CAdmin")
            process.transport.write(b"retrieve cse-in\nretrieve cse-in/x\n")  # type: ignore[attr-defined]
            process.transport.closeStdin()  # type: ignore[attr-defined]
            code = await process.ended.addTimeout(20, reactor)
            self.assertEqual(code, 1, process.err.decode())
            lines = process.out.decode().splitlines()
            self.assertEqual(
                [line.split(" {")[0] for line in lines], ["2000 OK", "4004 Not Found"]
            )
            self.assertEqual(process.err, b"")  # no prompt when stdin is not a terminal

        return Deferred.fromCoroutine(go())
