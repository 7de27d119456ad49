"""README.md: every ```python block compiles (compiled, never run: they need a CSE)."""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from acmews.client import connect

from .helpers import NO_PING, start_cse

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


class ReadmeTests(TestCase):
    def setUp(self) -> None:
        with open(README, encoding="utf-8") as f:
            self.text = f.read()

    def test_every_python_block_compiles(self) -> None:
        blocks = python_blocks(self.text)
        self.assertGreaterEqual(len(blocks), 5)
        for line, code in blocks:
            try:
                compile(code, f"README.md:{line}", "exec")
            except SyntaxError as e:
                self.fail(f"README.md block at line {line}: {e}")

    def test_the_set_up_commands_stay(self) -> None:
        self.assertIn("\npython -m pip install . && twistd -n acmews\n", self.text)
        self.assertIn(
            "\npython -m pip install '.[test]' && python -m twisted.trial tests\n", self.text
        )

    def test_blocks_are_found_with_their_line(self) -> None:
        text = "a\n```python\nx = 1\n```\nb\n```\nnot python\n```\n"
        self.assertEqual(python_blocks(text), [(3, "x = 1\n")])


class TourAgainstARealCSETests(TestCase):
    """The tour, as printed but for its URL, run as a program against a CSE on a real socket
    (makeService on 127.0.0.1, port 0): twice, since it deletes what it creates."""

    timeout = 60

    def test_the_tour_runs(self) -> Any:
        return Deferred.fromCoroutine(self._tour())

    async def _tour(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        with open(README, encoding="utf-8") as f:
            tour = python_blocks(f.read())[0][1]
        self.assertIn('URL = "ws://127.0.0.1:8180"', tour)
        _, url = await start_cse(self)
        code = tour.replace("ws://127.0.0.1:8180", url)
        root = os.path.dirname(README)
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for _ in range(2):
            out, err, status = await getProcessOutputAndValue(
                sys.executable, ["-c", code], env=env, path=root, reactor=reactor
            )
            text = out.decode()
            self.assertEqual(status, 0, err.decode()[-2000:])
            for line in ("AE 2001", "CNT 2001", "SUB 2001", "CIN 2001 over oneM2M.cbor"):
                self.assertIn(line, text)
            self.assertIn("notification 3 on", text)
            self.assertIn("latest 2000 on", text)
            self.assertIn("deleted 2002", text)


class _Program(ProcessProtocol):
    """A README example run as a program: its output, and a wait for a line of it."""

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ExamplesAgainstARealCSETests(TestCase):
    """The gateway and listen examples, as printed but for their ports, as programs."""

    timeout = 60

    def spawn(self, code: str) -> _Program:
        from twisted.internet import reactor

        root = os.path.dirname(README)
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        program = _Program()
        reactor.spawnProcess(program, sys.executable, [sys.executable, "-c", code], env, root)
        return program

    def example(self, marker: str) -> str:
        with open(README, encoding="utf-8") as f:
            blocks = [code for _, code in python_blocks(f.read())]
        return next(code for code in blocks if marker in code)

    def test_the_listen_example(self) -> Any:
        return Deferred.fromCoroutine(self._listen())

    async def _listen(self) -> None:
        from twisted.internet import reactor

        _, url = await start_cse(self)
        port = _free_port()
        code = (
            self.example('await listen("tcp:9000')
            .replace("ws://127.0.0.1:8180", url)
            .replace("9000", str(port))
        )
        program = self.spawn(code)
        await program.wait_for("registered as", reactor)
        admin = await connect(url, originator="CAdmin", options=NO_PING)
        r = await admin.create("cse-in/meter/readings", 4, {"m2m:cin": {"con": "42"}})
        self.assertEqual(r.rsc, 2001)
        await program.wait_for("received NOTIFY", reactor)  # through its own server
        program.transport.signalProcess("TERM")
        self.assertEqual(await program.ended, 0, program.err.decode()[-2000:])
        self.assertEqual((await admin.retrieve("cse-in/meter")).rsc, 4004)  # deregistered
        await admin.close()

    def test_the_gateway_example(self) -> Any:
        return Deferred.fromCoroutine(self._gateway())

    async def _gateway(self) -> None:
        from twisted.internet import reactor

        port = _free_port()
        program = self.spawn(self.example("class Gateway").replace("8280", str(port)))
        await program.wait_for("serving", reactor)
        client = await connect(f"ws://127.0.0.1:{port}", originator="Cgw1", options=NO_PING)
        r = await client.retrieve("gw/temperature")
        self.assertEqual((r.rsc, r.pc), (2000, {"m2m:cin": {"con": "21.5"}}))
        r = await client.delete("gw/temperature")
        self.assertEqual(r.rsc, 4103)
        await client.close()
        program.transport.signalProcess("TERM")
        await program.ended
