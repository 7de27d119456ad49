"""The README, the docs and the examples, as printed (#23): every ```python block compiles and
runs, every program in examples/ runs against a CSE on 127.0.0.1 port 0, the shell blocks
marked ``<!-- test: ... -->`` run in bash against such a CSE (or where they say), and every
``twistd ... acmews`` command line of the docs is one twistd acmews accepts.

A shell block runs with the URLs and ports it names replaced by those of the CSE the test
started, in a directory of its own, with ``acmews`` and ``python`` on its PATH meaning this
checkout's command and this interpreter.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from acmews.client import connect
from acmews.tap import Options

from .helpers import NO_PING, start_cse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
EXAMPLES = os.path.join(ROOT, "examples")
URL = "ws://127.0.0.1:8180"

_BLOCK = re.compile(
    r"^(?:<!-- test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>[^\s`]*)[^\n]*\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    path: str
    line: int
    lang: str
    code: str
    #: what its ``<!-- test: ... -->`` says, or ""
    marker: str

    def __str__(self) -> str:
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def markdown_files() -> list[str]:
    """The README, CONTRIBUTING and every page of the docs."""
    pages = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    pages = [p for p in pages if "_build" not in p]
    return [README, os.path.join(ROOT, "CONTRIBUTING.md"), *pages]


def blocks_of(path: str, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file, with its language and test marker."""
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return [
        Block(
            path,
            text.count("\n", 0, m.start("lang")) + 2,
            m.group("lang"),
            m.group("code"),
            m.group("marker") or "",
        )
        for m in _BLOCK.finditer(text)
    ]


def all_blocks(lang: str) -> list[Block]:
    return [b for path in markdown_files() for b in blocks_of(path) if b.lang == lang]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    return [(b.line, b.code) for b in blocks_of("", text) if b.lang == "python"]


def twistd_lines() -> list[tuple[Block, str]]:
    """Every ``twistd ... acmews ...`` command line of a shell block."""
    return [
        (block, line)
        for block in all_blocks("sh")
        for line in block.code.splitlines()
        if re.match(r"^(\w+=\S+ )*twistd ", line)
    ]


def acmews_argv(line: str) -> tuple[dict[str, str], list[str]]:
    """A twistd command line as (its environment assignments, what follows ``acmews``)."""
    words = shlex.split(line.split(" & ")[0].rstrip(" &"))
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words[words.index("acmews") + 1 :]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Program(ProcessProtocol):
    """A program run by a test: its output, and a wait for a line of it."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for marker, d in list(self._waiting):
            if marker in self.out:
                self._waiting.remove((marker, d))
                d.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)

    def wait_for(self, marker: str, reactor: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if marker.encode() in self.out:
            d.callback(None)
        else:
            self._waiting.append((marker.encode(), d))
        return d.addTimeout(20, reactor)


class Runs(TestCase):
    """Programs and shell blocks, run as a person would run them."""

    timeout = 120

    def shims(self) -> str:
        """A directory of ``acmews`` (this checkout's command) and ``python`` (this
        interpreter), first on the PATH of what the tests run."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for name, run in (("python", ""), ("acmews", " -m acmews")):
            # scripts, not symlinks: a venv's python finds its packages by its own path
            command = os.path.join(directory, name)
            with open(command, "w") as f:
                f.write(f'#!/bin/sh\nexec "{sys.executable}"{run} "$@"\n')
            os.chmod(command, 0o755)
        return directory

    def environment(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACMEWS_")}
        env["PATH"] = self.shims() + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return {**env, **more}

    def directory(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def spawn(self, argv: list[str], cwd: str = ROOT, **env: str) -> _Program:
        from twisted.internet import reactor

        program = _Program()
        reactor.spawnProcess(program, argv[0], argv, self.environment(**env), cwd)
        return program

    async def run_program(
        self, argv: list[str], cwd: str = ROOT, status: int = 0, **env: str
    ) -> str:
        """Run a program to its end; its stdout, once its exit status was ``status``."""
        from twisted.internet import reactor

        program = self.spawn(argv, cwd, **env)
        code = await program.ended.addTimeout(60, reactor)
        self.assertEqual(code, status, (program.out + program.err).decode()[-3000:])
        return program.out.decode()

    async def bash(
        self, block: Block, replace: dict[str, str] | None = None, cwd: str | None = None
    ) -> str:
        """A shell block through bash -e, with ``replace`` done on its text."""
        code = block.code
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        cwd = cwd or self.directory()
        return await self.run_program(["/bin/bash", "-e", "-c", code], cwd)

    def marked(self, path: str, marker: str) -> list[Block]:
        found = [b for b in blocks_of(os.path.join(ROOT, path)) if b.marker == marker]
        self.assertTrue(found, f"no block marked {marker!r} in {path}")
        return found


class ReadmeTests(TestCase):
    def setUp(self) -> None:
        with open(README, encoding="utf-8") as f:
            self.text = f.read()

    def test_the_set_up_commands_stay(self) -> None:
        self.assertIn("\npython -m pip install . && twistd -n acmews\n", self.text)
        self.assertIn(
            "\npython -m pip install '.[test]' && python -m twisted.trial tests\n", self.text
        )
        self.assertIn("virtual environment", self.text)

    def test_a_short_front_page(self) -> None:
        self.assertLessEqual(self.text.count("\n"), 200)

    def test_every_link_leads_somewhere(self) -> None:
        for path in markdown_files():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
                if "://" in target:
                    continue
                where = os.path.join(os.path.dirname(path), target)
                self.assertTrue(os.path.exists(where), f"{path}: {target}")

    def test_blocks_are_found_with_their_line(self) -> None:
        text = "a\n```python\nx = 1\n```\nb\n<!-- test: run -->\n```sh\nls\n```\n"
        self.assertEqual(python_blocks(text), [(3, "x = 1\n")])
        (_, sh) = blocks_of("", text)
        self.assertEqual((sh.line, sh.lang, sh.code, sh.marker), (8, "sh", "ls\n", "run"))


class PythonBlockTests(Runs):
    def test_every_python_block_compiles(self) -> None:
        blocks = all_blocks("python")
        self.assertGreaterEqual(len(blocks), 2)
        for block in blocks:
            try:
                compile(block.code, str(block), "exec")
            except SyntaxError as e:
                self.fail(f"{block}: {e}")

    def test_every_python_block_is_run(self) -> None:
        """A block is run by one of the tests below, found by what it contains: a new block
        needs a test of its own."""
        for block in all_blocks("python"):
            self.assertTrue(
                any(
                    marker in block.code
                    for marker in ("ResourceType.AE, aed)", "MetersOnly", "register_spec")
                ),
                f"{block} is run by no test",
            )

    def test_a_flexcontainer_specialization(self) -> None:
        """docs/reference/cse.md's registration of a ModuleClass makes it known."""
        from acmews.cse.flexcontainer import SPECIALIZATIONS, unregister_specialization

        (block,) = [b for b in all_blocks("python") if "register_spec" in b.code]
        exec(compile(block.code, str(block), "exec"), {})
        self.addCleanup(unregister_specialization, "acme:dooLk")
        self.assertEqual(SPECIALIZATIONS["acme:dooLk"].name, "doorLock")

    def test_the_quick_start(self) -> Deferred[None]:
        async def go() -> None:
            (block,) = [b for b in all_blocks("python") if "aed)" in b.code]
            _, url = await start_cse(self)
            for _ in range(2):  # it deletes what it made
                out = await self.run_program([sys.executable, "-c", block.code.replace(URL, url)])
                self.assertRegex(out, r"^registered 2001 C\w+\nlatest 21.5\n$")

        return Deferred.fromCoroutine(go())

    def test_an_authorizer(self) -> Deferred[None]:
        async def go() -> None:
            (block,) = [b for b in all_blocks("python") if "MetersOnly" in b.code]
            await self.run_program([sys.executable, "-c", block.code])

        return Deferred.fromCoroutine(go())


class ExampleTests(Runs):
    """Each program in examples/, run as printed (the CSE's URL and ports as arguments)."""

    TESTED = {
        "gateway.py",
        "meter.py",
        "poa_connector.py",
        "registree_server.py",
        "test_registration.py",
        "tour.py",
        "wss_client.py",
    }

    def example(self, name: str) -> str:
        return os.path.join(EXAMPLES, name)

    def test_every_example_is_tested(self) -> None:
        found = {os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.py"))}
        self.assertEqual(found, self.TESTED)

    def test_the_tour(self) -> Deferred[None]:
        async def go() -> None:
            _, url = await start_cse(self)
            for _ in range(2):  # it deletes what it creates
                out = await self.run_program([sys.executable, self.example("tour.py"), url])
                for line in ("AE 2001 C", "CNT 2001", "SUB 2001", "CIN 2001 over oneM2M.cbor"):
                    self.assertIn(line, out)
                self.assertIn("notification 3 on /id-in/sub", out)
                self.assertIn("latest 2000 on", out)
                self.assertIn("deleted 2002", out)

        return Deferred.fromCoroutine(go())

    def test_the_gateway(self) -> Deferred[None]:
        async def go() -> None:
            from twisted.internet import reactor

            port = _free_port()
            program = self.spawn([sys.executable, self.example("gateway.py"), str(port)])
            await program.wait_for("serving", reactor)
            client = await connect(f"ws://127.0.0.1:{port}", originator="Cgw1", options=NO_PING)
            r = await client.retrieve("gw/temperature")
            self.assertEqual((r.rsc, r.pc), (2000, {"m2m:cin": {"con": "21.5"}}))
            self.assertEqual((await client.delete("gw/temperature")).rsc, 4103)
            self.assertEqual((await client.retrieve("gw/other")).rsc, 4004)
            await client.close()
            program.transport.signalProcess("TERM")  # type: ignore[attr-defined]
            await program.ended

        return Deferred.fromCoroutine(go())

    def test_the_registree_server(self) -> Deferred[None]:
        async def go() -> None:
            from twisted.internet import reactor

            _, url = await start_cse(self)
            port = _free_port()
            argv = [sys.executable, self.example("registree_server.py"), url, str(port)]
            program = self.spawn(argv)
            await program.wait_for("registered as", reactor)
            admin = await connect(url, originator="CAdmin", options=NO_PING)
            r = await admin.create("cse-in/meter/readings", 4, {"m2m:cin": {"con": "42"}})
            self.assertEqual(r.rsc, 2001)
            await program.wait_for("received NOTIFY", reactor)  # through its own server
            program.transport.signalProcess("TERM")  # type: ignore[attr-defined]
            self.assertEqual(await program.ended, 0, program.err.decode()[-2000:])
            self.assertEqual((await admin.retrieve("cse-in/meter")).rsc, 4004)  # deregistered
            await admin.close()

        return Deferred.fromCoroutine(go())

    def test_the_meter_with_and_without_credentials(self) -> Deferred[None]:
        async def go() -> None:
            meter = [sys.executable, self.example("meter.py")]
            _, url = await start_cse(self)
            out = await self.run_program([*meter, url])
            self.assertIn("registered 2001 Cmeter1\n", out)
            self.assertIn("latest 42.0\nderegistered 2002\n", out)
            # the sample users file: meters (password m3ter) may claim Cmeter*
            users = os.path.join(EXAMPLES, "users.txt")
            _, url = await start_cse(self, "--basic-auth-file", users)
            out = await self.run_program([*meter, url, "meters"], ACMEWS_PASSWORD="m3ter")
            self.assertIn("deregistered 2002", out)
            await self.run_program([*meter, url, "meters"], status=1, ACMEWS_PASSWORD="wrong")
            await self.run_program([*meter, url, "admin"], status=1, ACMEWS_PASSWORD="adm1n")

        return Deferred.fromCoroutine(go())

    def test_the_poa_connector(self) -> Deferred[None]:
        async def go() -> None:
            out = await self.run_program([sys.executable, self.example("poa_connector.py")])
            self.assertEqual(out, "2000\n1000 1\n")

        return Deferred.fromCoroutine(go())

    def test_the_test_example(self) -> Deferred[None]:
        async def go() -> None:
            argv = [sys.executable, "-m", "twisted.trial", self.example("test_registration.py")]
            out = await self.run_program(argv, cwd=self.directory())
            self.assertIn("PASSED (successes=1)", out)

        return Deferred.fromCoroutine(go())

    def test_the_wss_howto(self) -> Deferred[None]:
        """The how-to as printed: its openssl commands, its CSE on the ssl: endpoint (on a
        free port), the acmews command with --ca-file and the client program."""

        async def go() -> None:
            from twisted.internet import reactor

            from acmews.tap import makeService

            page = "docs/howto/wss.md"
            (make,) = self.marked(page, "run in a new directory")
            directory = self.directory()
            await self.bash(make, cwd=directory)
            tls = os.path.join(directory, "acmews-tls")
            (line,) = [line for b, line in twistd_lines() if "ssl:8443" in line]
            _, argv = acmews_argv(line.replace("ssl:8443", "ssl:0").replace("=key", f"={tls}/key"))
            argv = [a.replace("=cert", f"={tls}/cert") for a in argv]
            options = Options()
            options.parseOptions([*argv, "--store", "memory:", "--ping-interval", "0"])
            service: Any = makeService(options, reactor)
            service.startService()
            self.addCleanup(service.stopService)
            (port,) = [p.getHost().port for p in await service.listening]
            (use,) = self.marked(page, "run against the CSE of this guide")
            out = await self.bash(use, {"8443": str(port)}, cwd=tls)
            self.assertIn('"rsc":2000', out)
            client = [sys.executable, self.example("wss_client.py"), str(port)]
            out = await self.run_program(client, cwd=tls)
            self.assertEqual(out, f"2000 ['wss://127.0.0.1:{port}']\n")
            # the second CSE's line, which trusts the certificate
            (line,) = [line for b, line in twistd_lines() if "--ca-file cert.pem" in line]
            _, argv = acmews_argv(line.replace("cert.pem", f"{tls}/cert.pem"))
            Options().parseOptions(argv)

        return Deferred.fromCoroutine(go())


class ShellBlockTests(Runs):
    """The marked shell blocks, and every twistd command line."""

    def test_every_marked_block_is_run(self) -> None:
        known = {
            "run against a CSE",
            "run in a new directory",
            "run against the CSE of this guide",
            "run against the two CSEs of this guide",
            "run beside a store",
        }
        for block in all_blocks("sh"):
            if block.marker:
                self.assertIn(block.marker, known, str(block))

    def test_blocks_against_a_cse(self) -> Deferred[None]:
        async def go() -> None:
            blocks = [b for b in all_blocks("sh") if b.marker == "run against a CSE"]
            self.assertGreaterEqual(len(blocks), 5)
            for block in blocks:
                _, url = await start_cse(self)
                await self.bash(block, {URL: url})

        return Deferred.fromCoroutine(go())

    def test_blocks_in_a_new_directory(self) -> Deferred[None]:
        async def go() -> None:
            for block in all_blocks("sh"):
                if block.marker == "run in a new directory":
                    await self.bash(block)

        return Deferred.fromCoroutine(go())

    def test_the_authentication_howto(self) -> Deferred[None]:
        """Its CSE, as its twistd line starts it (on a free port, in memory), and its
        commands, which must all succeed."""

        async def go() -> None:
            page = "docs/howto/authentication.md"
            (line,) = [line for b, line in twistd_lines() if "--basic-auth-file" in line]
            _, argv = acmews_argv(line.replace("examples/", f"{EXAMPLES}/"))
            argv = [a for a in argv if not a.startswith(("tcp:8182", "sqlite:"))]
            argv = [a for a in argv if a not in ("--listen", "--store")]
            _, url = await start_cse(self, *argv)
            port = url.rsplit(":", 1)[1]
            for block in self.marked(page, "run against the CSE of this guide"):
                await self.bash(block, {"8182": port}, cwd=ROOT)

        return Deferred.fromCoroutine(go())

    def test_the_cse_to_cse_howto(self) -> Deferred[None]:
        """Its two CSEs as its twistd lines start them (free ports, in memory), the MN
        registered at the IN, then its commands through the IN."""

        async def go() -> None:
            page = os.path.join(ROOT, "docs/howto/cse-to-cse.md")
            lines = [line for b, line in twistd_lines() if b.path == page]
            self.assertEqual(len(lines), 2)
            _, in_argv = acmews_argv(lines[0])
            _, in_url = await start_cse(self, *_own(in_argv))
            in_port = in_url.rsplit(":", 1)[1]
            _, mn_argv = acmews_argv(lines[1].replace("8190", in_port))
            mn_service, _ = await start_cse(self, *_own(mn_argv))
            await mn_service.link.when_registered()
            for block in self.marked(
                "docs/howto/cse-to-cse.md", "run against the two CSEs of this guide"
            ):
                out = await self.bash(block, {"8190": in_port})
                self.assertIn('"csi":"/id-mn"', out)

        return Deferred.fromCoroutine(go())

    def test_the_data_howto(self) -> Deferred[None]:
        """Backup, restore and a fresh start beside a store a CSE wrote and closed."""

        async def go() -> None:
            from twisted.internet import reactor

            from acmews.tap import makeService

            directory = self.directory()
            store = os.path.join(directory, "acmews.db")
            options = Options()
            options.parseOptions(
                ["--store", f"sqlite:{store}", "--listen", "tcp:0:interface=127.0.0.1"]
            )
            service: Any = makeService(options, reactor)
            service.startService()
            (port,) = [p.getHost().port for p in await service.listening]
            admin = await connect(f"ws://127.0.0.1:{port}", originator="CAdmin", options=NO_PING)
            self.assertEqual(
                (await admin.create("cse-in", 3, {"m2m:cnt": {"rn": "kept"}})).rsc, 2001
            )
            await admin.close()
            backup, restore, fresh = self.marked("docs/howto/data.md", "run beside a store")
            await self.bash(backup, cwd=directory)  # while it runs
            await service.stopService()
            await self.bash(restore, cwd=directory)
            import sqlite3
            from contextlib import closing

            with closing(sqlite3.connect(store)) as db:
                self.assertGreater(
                    db.execute("select count(*) from sqlite_master").fetchone()[0], 0
                )
            await self.bash(fresh, cwd=directory)
            self.assertEqual(sorted(os.listdir(directory)), ["acmews-backup.db"])

        return Deferred.fromCoroutine(go())

    def test_every_twistd_line_is_accepted(self) -> None:
        """Each twistd command line of the docs parses, values and files included (ssl:
        endpoints are started by the wss how-to's test)."""
        lines = twistd_lines()
        self.assertGreaterEqual(len(lines), 8)
        for block, line in lines:
            env, argv = acmews_argv(line.replace("examples/", f"{EXAMPLES}/"))
            if any(a.startswith("ssl:") or a == "cert.pem" for a in argv):
                continue  # the wss how-to's files: its own test parses or starts these
            self.patch(os, "environ", {**os.environ, **env})
            try:
                Options().parseOptions(argv)
            except Exception as e:
                self.fail(f"{block}: {line}: {e}")


def _own(argv: list[str]) -> list[str]:
    """A twistd line's options, but on a free port and in memory (start_cse's own)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in ("--listen", "--store"):
            skip = True
            continue
        out.append(word)
    return out


class ReferenceTests(TestCase):
    """The reference names every option of both commands (#23.2)."""

    def read(self, page: str) -> str:
        with open(os.path.join(ROOT, "docs", "reference", page), encoding="utf-8") as f:
            return f.read()

    def test_every_twistd_acmews_option(self) -> None:
        text = self.read("twistd.md")
        for opt in Options().longOpt:
            name = opt.rstrip("=")
            if name not in ("help", "version"):
                self.assertIn(f"`--{name}", text, name)

    def test_every_acmews_option(self) -> None:
        import argparse

        from acmews.cli import build_parser

        text = self.read("command-line.md")
        parser = build_parser()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for name, sub in commands.choices.items():
            self.assertIn(f"`acmews {name}", text)
            for action in sub._actions:
                for option in action.option_strings:
                    if option not in ("-h", "--help"):
                        self.assertIn(f"`{option}", text, f"acmews {name} {option}")
