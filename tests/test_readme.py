"""README.md: every ```python block compiles (compiled, never run: they need a CSE)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from .helpers import start_cse

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
