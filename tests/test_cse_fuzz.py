"""Property test: whatever a (validated) request carries, the embedded CSE answers it with a
oneM2M response and never with an unexpected exception (5000) or a raise.

Each example is a short sequence of requests against a fresh CSE holding a small fixture."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from acmews.primitive import Response
from acmews.testing import ADMIN
from tests.cse_helpers import CSETestCase

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.text(max_size=6)
    | st.floats(allow_nan=False)
    # what only oneM2M.cbor carries: byte strings, integers beyond 64 bits
    | st.binary(max_size=3)
    | st.sampled_from([2**64, -(2**70)])
)
values = st.recursive(
    scalars,
    # (integer keys: oneM2M.cbor carries them too)
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.text(max_size=5), c, max_size=3)
        | st.dictionaries(st.integers(0, 3), c, min_size=1, max_size=2)
    ),
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
FIXTURE = ["cse-in", "cse-in/Cfz", "cse-in/Cfz/box", "cse-in/Cfz/box/la"]
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
    "cse-in/Cfz/box/n",
    "cse-in/Cfz/s",
    "cse-in/Cfz/box/s",
    "cse-in/Cfz/acp",
    "cse-in/nothing",
    "/id-other/x",
    "//x/y",
    "cse-in//",
    "-/Cfz",
    "~/id-in/cse-in",
]

#: plausible values, so that CREATE and UPDATE also succeed (and evict, notify, expire)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "rn": st.sampled_from(["n", "box", "s", "acp"]),
    "lbl": st.just(["a"]),
    "acpi": st.sampled_from([[], ["nothing"], ["cse-in/Cfz/acp"]]),
    "et": st.just("20991231T000000"),
    "api": st.sampled_from(["Nx", "Rapp"]),
    "rr": st.booleans(),
    "poa": st.just(["http://p"]),
    "srv": st.just(["4"]),
    "mni": st.integers(0, 4),
    "mbs": st.integers(0, 8),
    "con": st.text(max_size=5) | values,
    "cnf": st.just("text/plain:0"),
    "nu": st.sampled_from([["http://n"], ["Cfz"], ["cse-in/Cfz"], ["Cother", "http://m"]]),
    "enc": st.sampled_from([{"net": [1, 2, 3, 4]}, {"net": [3]}, {"net": [4]}, {"net": [2]}]),
    "nct": st.integers(1, 3),
    "exc": st.integers(1, 3),
    "su": st.sampled_from(["http://su", "Cfz"]),
    "pv": st.just({"acr": [{"acor": ["Cother"], "acop": 63}]}),
    "pvs": st.just({"acr": [{"acor": ["Cfz"], "acop": 63}]}),
}
TYPES = {"m2m:ae": 2, "m2m:cnt": 3, "m2m:cin": 4, "m2m:sub": 23, "m2m:acp": 1, "m2m:cb": 5}
BODIES = {
    "m2m:ae": ["rn", "lbl", "acpi", "et", "api", "rr", "poa", "srv"],
    "m2m:cnt": ["rn", "lbl", "acpi", "et", "mni", "mbs"],
    "m2m:cin": ["rn", "lbl", "et", "con", "cnf"],
    "m2m:sub": ["rn", "lbl", "acpi", "et", "nu", "enc", "nct", "exc", "su"],
    "m2m:acp": ["rn", "lbl", "et", "pv", "pvs"],
    "m2m:cb": ["lbl", "acpi", "poa"],
}
MANDATORY = {
    "m2m:ae": {"api", "rr"},
    "m2m:cin": {"con"},
    "m2m:sub": {"nu"},
    "m2m:acp": {"pv", "pvs"},
}
plausible = st.one_of(
    *(
        st.fixed_dictionaries(
            {a: PLAUSIBLE[a] for a in names if a in MANDATORY.get(key, ())},
            optional={a: PLAUSIBLE[a] for a in names if a not in MANDATORY.get(key, ())},
        ).map(lambda body, key=key: {key: body})
        for key, names in BODIES.items()
    )
)
contents = plausible | st.dictionaries(
    st.sampled_from(KEYS),
    st.dictionaries(st.sampled_from(ATTRS), values, max_size=5) | values,
    min_size=1,
    max_size=2,
)
requests = st.fixed_dictionaries(
    {
        "op": st.integers(1, 5),
        "to": st.sampled_from(TARGETS) | st.sampled_from(FIXTURE),
        "fr": st.sampled_from([ADMIN, ADMIN, "Cfz", "Cfz", "Cother", "/id-mn", "C", "Snew"]),
        # None: the type of the pc's resource (so that a plausible body may be created)
        "ty": st.sampled_from([1, 2, 3, 4, 5, 9, 16, 23, 28, 99]) | st.none(),
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
    def fixture(self) -> None:
        """A fresh CSE with the AE Cfz, its container box (mni 3) and one instance in it."""
        self.new_cse()
        self.register("Cfz")
        self.create("cse-in/Cfz", 3, "m2m:cnt", "Cfz", rn="box", mni=3)
        self.create("cse-in/Cfz/box", 4, "m2m:cin", "Cfz", con="x")
        self.assertEqual(self.retrieve("cse-in/Cfz/box/la", "Cfz").pc["m2m:cin"]["con"], "x")

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(requests, min_size=1, max_size=3))
    def test_every_request_gets_a_response(self, ms: list[dict[str, Any]]) -> None:
        # setUp runs once per test method, not once per example: each example starts afresh
        self.fixture()
        for m in ms:
            self.answered(m)

    def answered(self, m: dict[str, Any]) -> None:
        op = m["op"]
        kw: dict[str, Any] = {k: m[k] for k in ("rcn", "fc", "drt") if k in m}
        if op == 1:
            ty = m["ty"]
            if ty is None:
                ty = TYPES.get(next(iter(m["pc"])), 99) if isinstance(m["pc"], dict) else 99
            kw["ty"] = ty
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
        self.assertEqual(self.clock.getDelayedCalls(), [], m)
        # nothing may be logged as an error (a failed notification send, say)
        self.assertEqual(self.flushLoggedErrors(), [], m)
