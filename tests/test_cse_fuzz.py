"""Property test: whatever a (validated) request carries, the embedded CSE answers it with a
oneM2M response and never with an unexpected exception (5000) or a raise."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from acmews.primitive import Response
from tests.cse_helpers import ADMIN, CSETestCase

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.text(max_size=6)
    | st.floats(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
ATTRS = [
    "rn",
    "api",
    "rr",
    "poa",
    "srv",
    "lbl",
    "acpi",
    "et",
    "mni",
    "mbs",
    "con",
    "cnf",
    "nu",
    "enc",
    "nct",
    "exc",
    "su",
    "pv",
    "pvs",
    "ri",
    "ty",
    "xyz",
    "aei",
    "csi",
]
KEYS = ["m2m:ae", "m2m:cnt", "m2m:cin", "m2m:sub", "m2m:acp", "m2m:cb", "m2m:sgn", "m2m:x"]
TARGETS = [
    "cse-in",
    "cse-in/Cfz",
    "cse-in/Cfz/box",
    "cse-in/Cfz/box/la",
    "cse-in/Cfz/box/ol",
    "/id-in/cse-in/Cfz",
    "//acmews.example.com/id-in/cse-in",
    "Cfz",
    "/id-in/Cfz",
    "cse-in/nothing",
    "/id-other/x",
    "//x/y",
    "cse-in//",
    "-/Cfz",
    "~/id-in/cse-in",
]

contents = st.dictionaries(
    st.sampled_from(KEYS),
    st.dictionaries(st.sampled_from(ATTRS), values, max_size=5) | values,
    min_size=1,
    max_size=2,
)
requests = st.fixed_dictionaries(
    {
        "op": st.integers(1, 5),
        "to": st.sampled_from(TARGETS),
        "fr": st.sampled_from([ADMIN, "Cfz", "Cother", "/id-mn", "C", "Snew"]),
        "ty": st.sampled_from([1, 2, 3, 4, 5, 9, 16, 23, 28, 99]),
        "pc": contents,
    },
    optional={
        "rcn": st.integers(-1, 10),
        "fc": st.dictionaries(
            st.sampled_from(["fu", "ty", "lbl", "lim", "lvl", "cra", "crb", "drt", "x"]),
            values | st.integers(0, 3),
            max_size=4,
        ),
        "drt": st.integers(0, 3),
    },
)


class CSEFuzzTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.register("Cfz")
        self.create("cse-in/Cfz", 3, "m2m:cnt", "Cfz", rn="box", mni=3)
        self.create("cse-in/Cfz/box", 4, "m2m:cin", "Cfz", con="x")

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests)
    def test_every_request_gets_a_response(self, m: dict[str, Any]) -> None:
        op = m["op"]
        kw: dict[str, Any] = {k: m[k] for k in ("rcn", "fc", "drt") if k in m}
        if op == 1:
            kw["ty"] = m["ty"]
        if op in (1, 3, 5):
            kw["pc"] = m["pc"]
        if op != 2:
            kw.pop("fc", None)
        try:
            result = self.handle(op, m["to"], m["fr"], **kw)
        except Exception as e:  # pragma: no cover - the property is that this never happens
            self.fail(f"handle_request raised {e!r} for {m!r}")
        if isinstance(result, Deferred):
            for sent in self.sender.take():
                sent.answer()
            result = self.successResultOf(result)
        self.assertIsInstance(result, Response)
        self.assertNotEqual(result.rsc, 5000, f"{m!r}: {result.debug}")
        if result.rsc >= 4000:
            self.assertTrue(result.debug, m)
        self.clock.advance(0)
        for sent in self.sender.take():
            sent.answer()
        self.flushLoggedErrors()

    def _no_delayed_calls(self) -> None:
        self.clock.advance(0)
        super()._no_delayed_calls()
