"""The CSE's store: Batch semantics, one apply per request, and a durable store's Deferred."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from acmews.codes import RSC
from acmews.cse import (
    CSE,
    KINDS,
    Batch,
    CSEConfig,
    IResourceReader,
    IResourceStore,
    MemoryResourceStore,
    Resource,
)
from acmews.primitive import Response
from acmews.testing import ADMIN
from tests.cse_helpers import CSETestCase


class SpyStore(MemoryResourceStore):
    """Records every batch it applies (as lists of resource IDs)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[str], list[str], list[str]]] = []

    def apply(self, batch: Batch) -> None:
        self.batches.append(
            (
                [r.ri for r in batch.added],
                [r.ri for r in batch.updated],
                [r.ri for r in batch.removed],
            )
        )
        super().apply(batch)

    def take(self) -> list[tuple[list[str], list[str], list[str]]]:
        batches, self.batches = self.batches, []
        return batches


class DurableStore(MemoryResourceStore):
    """Applies at once (reads see the changes) but is durable only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[None]] = []

    def apply(self, batch: Batch) -> Deferred[None]:  # type: ignore[override]
        super().apply(batch)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def durable(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


def resource(ri: str, pi: str = "id-in", ty: int = 3, **attrs: Any) -> Resource:
    return Resource(KINDS[ty], {"ri": ri, "rn": ri, "pi": pi, "ty": ty, **attrs}, ri, None)


def _added(store: MemoryResourceStore, *resources: Resource) -> Batch:
    batch = Batch(store)
    for r in resources:
        batch.add(r)
    return batch


class BatchTests(CSETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryResourceStore()
        self.a = resource("a")
        self.b = resource("b")
        self.c = resource("c")
        first = Batch(self.store)
        for r in (self.a, self.b):
            first.add(r)
        self.store.apply(first)
        self.batch = Batch(self.store)

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IResourceReader, self.batch))
        self.assertTrue(verifyObject(IResourceStore, self.store))
        self.assertTrue(IResourceStore.extends(IResourceReader))

    def lists(self) -> tuple[list[Resource], list[Resource], list[Resource]]:
        return self.batch.added, self.batch.updated, self.batch.removed

    def test_update_after_add_stays_one_add_with_the_last_attrs(self) -> None:
        self.batch.add(self.c)
        self.c.replace({"lbl": ["1"]})
        self.batch.update(self.c)
        self.c.replace({"lbl": ["2"]})
        self.batch.update(self.c)
        self.assertEqual(self.lists(), ([self.c], [], []))
        self.store.apply(self.batch)
        stored = self.store.get("c")
        assert stored is not None
        self.assertEqual(stored.attrs["lbl"], ["2"])

    def test_updates_are_deduplicated_by_identity_in_first_change_order(self) -> None:
        for r in (self.b, self.a, self.b, self.a):
            self.batch.update(r)
        self.assertEqual(self.lists(), ([], [self.b, self.a], []))
        self.assertEqual(len(self.batch), 2)

    def test_remove_drops_an_update_and_cancels_an_add(self) -> None:
        self.batch.update(self.a)
        self.batch.remove(self.a)
        self.batch.add(self.c)
        self.batch.remove(self.c)
        self.batch.remove(self.a)  # twice: once
        self.batch.update(self.a)  # after the removal: ignored
        self.assertEqual(self.lists(), ([], [], [self.a]))
        self.assertTrue(self.batch.gone(self.a))
        self.assertTrue(self.batch.gone(self.c))
        self.assertFalse(self.batch.gone(self.b))
        self.store.apply(self.batch)
        self.assertEqual((self.store.get("a"), self.store.get("c")), (None, None))
        self.assertEqual(len(self.store), 1)  # b
        self.assertIs(self.store.get("b"), self.b)

    def test_the_types_of_what_it_changes(self) -> None:
        """Kept as the batch changes (a notifier asks at every event of a batch that may
        remove thousands), an addition cancelled included."""
        self.assertEqual(set(self.batch.types()), set())
        self.batch.update(self.a)
        self.assertEqual(set(self.batch.types()), {3})
        sub = resource("s", ty=23)
        self.batch.add(sub)
        self.batch.remove(sub)
        ae = resource("Cae", ty=2)
        self.store.apply(_added(self.store, ae))
        self.batch.remove(ae)
        self.assertEqual(set(self.batch.types()), {2, 3, 23})

    def test_empty_and_double_add(self) -> None:
        self.assertFalse(self.batch)
        self.batch.add(self.c)
        self.assertTrue(self.batch)
        self.assertRaises(ValueError, self.batch.add, self.c)
        self.batch.remove(self.c)
        self.assertFalse(self.batch)

    def test_reads_see_the_store_as_the_batch_leaves_it(self) -> None:
        batch = self.batch
        x = resource("x", pi="a", ty=4)
        y = resource("y", pi="a", ty=4)
        z = resource("z", pi="a", ty=4)
        first = Batch(self.store)
        first.add(x)
        first.add(y)
        self.store.apply(first)
        self.assertEqual(batch.children("a"), [x, y])
        batch.add(z)
        batch.remove(x)
        self.assertEqual(batch.children("a"), [y, z])
        self.assertEqual((batch.get("x"), batch.get("z"), batch.get("y")), (None, z, y))
        self.assertEqual((batch.child("a", "x"), batch.child("a", "z")), (None, z))
        self.assertIs(batch.oldest_child("a", 4), y)
        self.assertIs(batch.latest_child("a", 4), z)
        batch.remove(y)
        self.assertIs(batch.oldest_child("a", 4), z)
        batch.remove(z)
        self.assertEqual(
            (batch.oldest_child("a", 4), batch.latest_child("a", 4), batch.children("a")),
            (None, None, []),
        )
        # the store itself is untouched until the batch is applied
        self.assertEqual(self.store.children("a"), [x, y])
        self.store.apply(batch)
        self.assertEqual(self.store.children("a"), [])
        self.assertEqual(batch.latest_child("b", 4), None)

    def test_children_of_a_type(self) -> None:
        batch = self.batch
        x = resource("x", pi="a", ty=4)
        s = resource("s", pi="a", ty=23)
        y = resource("y", pi="a", ty=4)
        t = resource("t", pi="a", ty=23)
        for r in (x, s, y):
            batch.add(r)
        self.store.apply(batch)
        store = self.store
        self.assertEqual(store.children("a"), [x, s, y])
        self.assertEqual((store.children("a", 4), store.children("a", 23)), ([x, y], [s]))
        self.assertEqual(store.children("a", 3), [])
        self.assertEqual((store.oldest_child("a", 4), store.latest_child("a", 4)), (x, y))
        self.assertEqual((store.oldest_child("a", 23), store.latest_child("a", 3)), (s, None))
        batch = Batch(store)
        batch.add(t)
        batch.remove(s)
        self.assertEqual(batch.children("a", 23), [t])
        self.assertEqual(batch.children("a", 4), [x, y])
        self.assertEqual(batch.children("a"), [x, y, t])
        store.apply(batch)
        self.assertEqual((store.children("a"), store.children("a", 23)), ([x, y, t], [t]))
        batch = Batch(store)
        batch.remove(x)
        batch.remove(y)
        batch.remove(t)
        batch.remove(self.a)
        store.apply(batch)
        self.assertEqual((store.children("a"), store.children("a", 4)), ([], []))
        self.assertEqual((store.get("a"), store.oldest_child("a", 4)), (None, None))


class OneApplyPerRequestTests(CSETestCase):
    def new_cse(self) -> None:
        super().new_cse()
        self.store = SpyStore()
        self.cse = CSE(CSEConfig(), self.sender, self.clock, self.store)

    def setUp(self) -> None:
        super().setUp()
        self.assertEqual(self.store.take(), [(["id-in"], [], [])])  # the CSEBase
        self.aei = self.register("Cmyae")
        self.cnt = self.create("cse-in/Cmyae", 3, "m2m:cnt", self.aei, rn="c", mni=2)["ri"]
        self.store.take()

    def cin(self, con: str = "x", to: str = "cse-in/Cmyae/c") -> str:
        ri: str = self.create(to, 4, "m2m:cin", self.aei, con=con)["ri"]
        return ri

    def test_cin_create_with_eviction_is_one_apply(self) -> None:
        first, second = self.cin("1"), self.cin("2")
        self.assertEqual(
            self.store.take(), [([first], [self.cnt], []), ([second], [self.cnt], [])]
        )
        third = self.cin("3")
        self.assertEqual(self.store.take(), [([third], [self.cnt], [first])])

    def test_update_whose_mni_evicts_is_one_apply(self) -> None:
        self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"mni": 5}})
        ris = [self.cin(str(i)) for i in range(5)]
        self.store.take()
        response = self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"mni": 1}})
        self.assertEqual(response.pc["m2m:cnt"]["cni"], 1)
        # the evicted instances, oldest first; the container once, with its last counters
        self.assertEqual(self.store.take(), [([], [self.cnt], ris[:4])])
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/ol").pc["m2m:cin"]["con"], "4")

    def test_subtree_delete_is_one_apply(self) -> None:
        d = self.create("cse-in/Cmyae/c", 3, "m2m:cnt", self.aei, rn="d")["ri"]
        e = self.create("cse-in/Cmyae/c/d", 3, "m2m:cnt", self.aei, rn="e")["ri"]
        deep = self.cin(to="cse-in/Cmyae/c/d/e")
        sub = self.subscribe("cse-in/Cmyae/c/d", self.aei, nu=["http://n"], su="http://su")
        self.store.take()
        self.ok(4, "cse-in/Cmyae", self.aei)
        [(added, updated, removed)] = self.store.take()
        self.assertEqual((added, updated), ([], []))
        self.assertEqual(sorted(removed), sorted([self.aei, self.cnt, d, e, deep, sub["ri"]]))
        # children before their parents
        chain = [removed.index(ri) for ri in (deep, e, d, self.cnt, self.aei)]
        self.assertEqual(chain, sorted(chain))
        self.assertLess(removed.index(sub["ri"]), removed.index(d))
        self.assertEqual(len(self.store), 1)
        self.assertEqual([s.target for s in self.flush()], ["http://su"])

    def test_deleting_an_instance_updates_its_container_in_the_same_apply(self) -> None:
        ri = self.cin()
        self.store.take()
        self.ok(4, "cse-in/Cmyae/c/la", self.aei)
        self.assertEqual(self.store.take(), [([], [self.cnt], [ri])])

    def test_exc_countdown_and_expiry_belong_to_the_causing_request(self) -> None:
        sub = self.subscribe(
            "cse-in/Cmyae/c", self.aei, nu=["http://n"], enc={"net": [3]}, exc=2, rn="s"
        )
        self.assertEqual(self.store.take(), [([sub["ri"]], [], [])])  # after verification
        first = self.cin()
        self.assertEqual(self.store.take(), [([first], [sub["ri"], self.cnt], [])])
        second = self.cin()
        self.assertEqual(self.store.take(), [([second], [self.cnt], [sub["ri"]])])
        self.assertEqual(len(self.flush()), 2)

    def test_a_request_failing_half_way_applies_what_it_changed(self) -> None:
        """A bug (not a refusal: those come first): the resources in memory have changed, so
        the store gets the same changes, once; the answer is 5000."""
        first, second = self.cin("1"), self.cin("2")
        self.store.take()

        def boom(*args: object) -> None:
            raise RuntimeError("bug")

        self.patch(type(KINDS[4]), "detached", boom)  # in the eviction of the oldest
        cin = {"m2m:cin": {"con": "3"}}
        self.fails(RSC.INTERNAL_SERVER_ERROR, 1, "cse-in/Cmyae/c", self.aei, ty=4, pc=cin)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [(added, updated, removed)] = self.store.take()
        self.assertEqual((len(added), updated, removed), (1, [self.cnt], [first]))
        self.assertIsNotNone(self.store.get(added[0]))
        self.assertIsNone(self.store.get(first))
        self.assertIsNotNone(self.store.get(second))

    def test_refused_and_reading_requests_apply_nothing(self) -> None:
        self.ok(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"mbs": 3}})
        self.cin("abc")
        self.store.take()
        c = "cse-in/Cmyae/c"
        ae = {"m2m:ae": {"api": "Nx", "rr": True, "rn": "x"}}
        self.fails(RSC.NOT_ACCEPTABLE, 1, c, self.aei, ty=4, pc={"m2m:cin": {"con": "abcd"}})
        self.fails(RSC.BAD_REQUEST, 1, c, self.aei, ty=4, pc={"m2m:cin": {"con": "a", "cs": 1}})
        self.fails(RSC.CONFLICT, 1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        self.fails(RSC.BAD_REQUEST, 3, c, self.aei, pc={"m2m:cnt": {"mni": -1}})
        self.fails(RSC.OPERATION_NOT_ALLOWED, 3, c + "/la", self.aei, pc={"m2m:cin": {}})
        self.fails(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, 4, c, "Cother")
        self.fails(RSC.ORIGINATOR_HAS_ALREADY_REGISTERED, 1, "cse-in", self.aei, ty=2, pc=ae)
        self.fails(RSC.OPERATION_NOT_ALLOWED, 4, "cse-in")
        self.retrieve(c, rcn=4)
        self.retrieve("cse-in/Cmyae", fc={"fu": 1})
        self.assertEqual(self.store.take(), [])


class DurableStoreTests(CSETestCase):
    def new_cse(self) -> None:
        super().new_cse()
        self.store = DurableStore()
        self.cse = CSE(CSEConfig(), self.sender, self.clock, self.store)
        self.store.durable()

    def setUp(self) -> None:
        super().setUp()
        ae = {"m2m:ae": {"api": "Nx", "rr": True}}
        self.aei = self.durably(1, "cse-in", "Cmyae", ty=2, pc=ae).pc["m2m:ae"]["aei"]
        self.durably(1, "cse-in/Cmyae", self.aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})

    def later(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Deferred[Response]:
        d = self.handle(op, to, fr, **kw)
        assert isinstance(d, Deferred)
        return d

    def durably(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        """The response, which comes only once the store has made the change durable."""
        d = self.later(op, to, fr, **kw)
        self.assertNoResult(d)
        self.store.durable()
        response = self.successResultOf(d)
        self.assertTrue(response.ok, response.debug)
        return response

    def test_response_and_notifications_wait_until_durable(self) -> None:
        sub = {"m2m:sub": {"nu": ["http://n"], "enc": {"net": [3]}}}
        d = self.later(1, "cse-in/Cmyae/c", self.aei, ty=23, pc=sub)
        self.sender.take()[0].answer(RSC.OK)  # verified: created, but not durable yet
        self.assertNoResult(d)
        self.store.durable()
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        d = self.later(1, "cse-in/Cmyae/c", self.aei, ty=4, pc={"m2m:cin": {"con": "v"}})
        self.assertNoResult(d)
        # the change is visible at once; its response and notification wait
        self.assertEqual(self.retrieve("cse-in/Cmyae/c/la", self.aei).rsc, RSC.OK)
        self.assertEqual(self.flush(), [])
        self.store.durable()
        response = self.successResultOf(d)
        self.assertEqual((response.rsc, response.pc["m2m:cin"]["con"]), (RSC.CREATED, "v"))
        [sent] = self.flush()
        self.assertEqual(sent.target, "http://n")
        self.durably(3, "cse-in/Cmyae/c", self.aei, pc={"m2m:cnt": {"lbl": ["x"]}})
        self.durably(4, "cse-in/Cmyae/c", self.aei)
        self.assertEqual(self.flush(), [])

    def test_failure_to_make_durable_is_5000_without_notifications(self) -> None:
        sub = {"m2m:sub": {"nu": [self.aei], "enc": {"net": [3]}}}
        self.durably(1, "cse-in/Cmyae/c", self.aei, ty=23, pc=sub)
        d = self.later(1, "cse-in/Cmyae/c", self.aei, ty=4, pc={"m2m:cin": {"con": "v"}})
        [pending] = self.store.pending
        self.store.pending = []
        pending.errback(OSError("disk full"))
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.INTERNAL_SERVER_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.flush(), [])


class NewKindTests(CSETestCase):
    """A new resource type is one registered kind: nothing else changes."""

    def test_one_registered_kind_is_enough(self) -> None:
        from acmews.codes import ResourceType
        from acmews.cse.resource import ResourceKind, make_kind, register_kind, v_str

        kind = make_kind(
            ResourceKind,
            ResourceType.FCNT,
            "fcnt",
            "flexContainer",
            {"cnd": v_str},
            frozenset({"cnd"}),
            {"lbl", "cnd"},
            set(),
            parents={ResourceType.AE},
        )
        # the real flexContainer kind (acmews.cse.flexcontainer) stands aside meanwhile
        real = KINDS.pop(int(ResourceType.FCNT))
        self.addCleanup(KINDS.__setitem__, int(ResourceType.FCNT), real)
        register_kind(kind)
        self.addCleanup(KINDS.pop, int(ResourceType.FCNT))
        aei = self.register("Cflex")
        body = self.create(f"cse-in/{aei}", 28, "m2m:fcnt", "Cflex", rn="f", cnd="org.x")
        self.assertEqual((body["cnd"], body["ty"]), ("org.x", 28))
        self.assertEqual(self.retrieve(f"cse-in/{aei}/f", "Cflex").pc["m2m:fcnt"]["cnd"], "org.x")
        self.ok(3, f"cse-in/{aei}/f", "Cflex", pc={"m2m:fcnt": {"cnd": "org.y"}})
        # only where it was declared: not under the CSEBase
        self.fails(
            RSC.INVALID_CHILD_RESOURCE_TYPE, 1, "cse-in", ty=28, pc={"m2m:fcnt": {"cnd": "x"}}
        )
        self.ok(4, f"cse-in/{aei}/f", "Cflex")
