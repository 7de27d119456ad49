"""README.md: every ```python block compiles (compiled, never run: they need a CSE)."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

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
