"""Every accepted resource round-trips through both stores (issue #25, "Done when").

Hypothesis makes valid CREATE bodies for each resource type (AE, container,
contentInstance, subscription, ACP, remoteCSE, and a <request> through rt 1); the same
requests go to a CSE on the memory store and to one on a SQLite store (a fresh file per
example), which is then restarted on its file. Every resource, RETRIEVEd with rcn 1, is the
same in both. Resource IDs have a random part, so each is compared by its address: an ID in a
representation is replaced by the resource's structured address.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation
from acmews.cse import CSE, CSEConfig
from acmews.cse.resource import Resource
from acmews.durable import Store
from acmews.primitive import Request, Response
from acmews.stores import open_store
from acmews.testing import ADMIN, START, FakeConnection, FakeSender
from tests.pg_helpers import SKIP, fresh_database

CONFIG = CSEConfig(poa=("ws://127.0.0.1:8180",), allowed_csr_originators=("/id-mn",))

_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_label = st.builds(lambda a, b: f"{a} {b}" if b else a, _word, st.one_of(st.none(), _word))
_labels = st.lists(_label, max_size=3)
_stamp = st.integers(2000, 2030).map(lambda y: f"{y}0102T030405")
_con = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70),
    st.dictionaries(_word, st.one_of(st.integers(), st.booleans(), _word), max_size=3),
)
_csz = st.lists(st.sampled_from(["application/json", "application/cbor"]), min_size=1, max_size=2)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict holding any of ``fields``."""
    return st.fixed_dictionaries({}, optional=fields)


_ae = _optional(lbl=_labels, apn=_word, poa=st.lists(_word, max_size=2), csz=_csz)
_cnt = _optional(
    lbl=_labels,
    mni=st.integers(1, 5),
    mbs=st.integers(100, 1000),
    cstn=st.sampled_from(["Cae", "/id-mn"]),
    cr=st.none(),
)
_cin = st.lists(
    _optional(
        lbl=_labels,
        cnf=st.sampled_from(["text/plain", "application/json:0", "image/png:1"]),
        dgt=_stamp,
        dcnt=st.integers(0, 9),
        cr=st.none(),
    ).flatmap(lambda d: _con.map(lambda con: {**d, "con": con})),
    max_size=4,
)
_sub = _optional(
    lbl=_labels,
    enc=st.sampled_from([{"net": [1, 3]}, {"net": [4]}, {"net": [1], "chty": [4]}]),
    nct=st.just(1),  # nct 2 goes with net 1 alone
    exc=st.integers(1, 9),
    ln=st.booleans(),
    cr=st.none(),
)
_acop = st.integers(1, 63)
_acp = st.builds(
    lambda pv, pvs, lbl: {
        "pv": {"acr": [{"acor": ["Cae"], "acop": pv}]},
        "pvs": {"acr": [{"acor": ["Cae"], "acop": pvs}]},
        "lbl": lbl,
    },
    _acop,
    _acop,
    _labels,
)
_csr = _optional(lbl=_labels, poa=st.lists(_word, max_size=2), srv=st.just(["3", "4"]))


class _Side:
    """One CSE and how to drive it to quiet (the SQLite one commits its group)."""

    def __init__(self, test: SynchronousTestCase, path: str | None) -> None:
        """``path``: a SQLite file, a postgresql:// URL, or None (the memory store)."""
        self.test = test
        self.path = path
        self.clock = Clock()
        self.clock.advance(START)
        self.disk = Clock()
        self.sender = FakeSender()
        self.store: Store | None = None
        self.cse = self._start()

    def _start(self) -> CSE:
        resources = None
        if self.path is not None:
            url = self.path if "://" in self.path else f"sqlite:{self.path}"
            self.store = open_store(url, self.disk, run=maybeDeferred)
            resources = self.store.resources
        cse = CSE(CONFIG, self.sender, self.clock, resources)
        self.settle()
        return cse

    def settle(self) -> None:
        for _ in range(5):
            for sent in self.sender.take():  # subscription verification: accepted
                sent.answer(RSC.OK)
            self.clock.advance(0)
            self.disk.advance(0)

    def restart(self) -> None:
        assert self.store is not None
        self.store.service.stopService()
        self.settle()
        self.sender = FakeSender()
        self.cse = self._start()

    def stop(self) -> None:
        if self.store is not None:
            self.store.service.stopService()
            self.settle()

    def call(self, op: Operation, to: str, fr: str | None, **kw: Any) -> Response:
        result = self.cse.handle_request(Request(op, to, "rq", "4", fr, **kw), FakeConnection())
        self.settle()
        if isinstance(result, Deferred):
            response: Response = self.test.successResultOf(result)
            return response
        return result

    def tree(self) -> dict[str, Any]:
        """Every resource, RETRIEVEd (rcn 1) by the admin, by address, IDs as addresses."""
        store = self.cse.store
        base = self.cse.base
        # an ID-named resource (rn defaulted to its random ri) gets its type and rank
        names = {base.ri: base.srn}
        every: list[Resource] = [base]
        stack = [base]
        while stack:
            parent = stack.pop()
            for rank, r in enumerate(store.children(parent.ri)):
                rn = f"{r.kind.short}#{rank}" if r.rn == r.ri else r.rn
                names[r.ri] = f"{names[parent.ri]}/{rn}"
                every.append(r)
                stack.append(r)
        out: dict[str, Any] = {}
        for r in every:
            response = self.call(Operation.RETRIEVE, r.ri, ADMIN, rcn=1)
            self.test.assertEqual(response.rsc, RSC.OK, response.debug)
            out[names[r.ri]] = _named(response.pc, names)
        return out


def _named(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _named(v, names) for k, v in value.items()}
    return value


def _create(
    side: _Side, to: str, fr: str, ty: int, key: str, body: dict[str, Any], **kw: Any
) -> Response:
    return side.call(Operation.CREATE, to, fr, ty=ty, pc={key: body}, **kw)


class _RoundTrip(SynchronousTestCase):
    def durable_store(self, directory: str) -> str:
        return os.path.join(directory, "acmews.db")

    def round_trip(
        self,
        ae: dict[str, Any],
        cnt: dict[str, Any],
        cins: list[dict[str, Any]],
        sub: dict[str, Any],
        acp: dict[str, Any],
        csr: dict[str, Any],
    ) -> None:
        directory = tempfile.mkdtemp()
        durable: _Side | None = None
        try:
            memory = _Side(self, None)
            durable = _Side(self, self.durable_store(directory))
            steps: list[Callable[[_Side], Response]] = [
                lambda s: _create(
                    s, "cse-in", "Cae", 2, "m2m:ae", {"rn": "ae", "api": "Nx", "rr": True, **ae}
                ),
                lambda s: _create(s, "cse-in/ae", "Cae", 3, "m2m:cnt", {"rn": "c", **cnt}),
                *(
                    (lambda s, c=c: _create(s, "cse-in/ae/c", "Cae", 4, "m2m:cin", c))
                    for c in cins
                ),
                lambda s: _create(
                    s, "cse-in/ae/c", "Cae", 23, "m2m:sub", {"rn": "s", "nu": ["Cae"], **sub}
                ),
                lambda s: _create(s, "cse-in/ae", "Cae", 1, "m2m:acp", {"rn": "p", **acp}),
                lambda s: _create(
                    s,
                    "cse-in",
                    "/id-mn",
                    16,
                    "m2m:csr",
                    {"csi": "/id-mn", "cb": "/id-mn/cse-mn", "rr": True, **csr},
                ),
                # a <request> resource (ty 17) for a non-blocking CREATE (rt 1)
                lambda s: _create(
                    s, "cse-in/ae", "Cae", 3, "m2m:cnt", {"rn": "nb"}, rt={"rtv": 1}
                ),
                # flexContainers (ty 28): generic, and of a specialization with its history
                lambda s: _create(
                    s, "cse-in/ae", "Cae", 28, "m2m:fcnt", {"rn": "g", "cnd": "x.y", **ae}
                ),
                lambda s: _create(
                    s, "cse-in/ae/g", "Cae", 28, "cod:bat", {"rn": "b", "lvl": 50, "mni": 2}
                ),
            ]
            for step in steps:
                a, b = step(memory), step(durable)
                self.assertEqual(a.rsc, b.rsc, (a.debug, b.debug))
                self.assertIn(a.rsc, (RSC.CREATED, RSC.ACCEPTED_NON_BLOCKING_SYNC), a.debug)
            before = memory.tree()
            self.assertEqual(durable.tree(), before)
            durable.restart()
            self.assertEqual(durable.tree(), before)
        finally:
            if durable is not None:
                durable.stop()  # (its connections too, should the example fail)
            shutil.rmtree(directory, ignore_errors=True)


class RoundTripTests(_RoundTrip):
    @settings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(ae=_ae, cnt=_cnt, cins=_cin, sub=_sub, acp=_acp, csr=_csr)
    def test_every_resource_round_trips(
        self,
        ae: dict[str, Any],
        cnt: dict[str, Any],
        cins: list[dict[str, Any]],
        sub: dict[str, Any],
        acp: dict[str, Any],
        csr: dict[str, Any],
    ) -> None:
        """Each accepted CREATE gives the same resources on the memory and the SQLite store,
        also after the SQLite one restarts."""
        self.round_trip(ae, cnt, cins, sub, acp, csr)


class PostgreSQLRoundTripTests(_RoundTrip):
    """The same, the durable side on the postgresql: store (inline, a schema per example)."""

    skip = SKIP

    @settings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(ae=_ae, cnt=_cnt, cins=_cin, sub=_sub, acp=_acp, csr=_csr)
    def test_every_resource_round_trips(
        self,
        ae: dict[str, Any],
        cnt: dict[str, Any],
        cins: list[dict[str, Any]],
        sub: dict[str, Any],
        acp: dict[str, Any],
        csr: dict[str, Any],
    ) -> None:
        """Each accepted CREATE gives the same resources on the memory and the postgresql:
        store, also after the PostgreSQL one restarts."""
        self.round_trip(ae, cnt, cins, sub, acp, csr)

    def durable_store(self, directory: str) -> str:
        return fresh_database(self)
