"""acmews.testing: the public doubles do what their docs say (no sockets)."""

from __future__ import annotations

import textwrap
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import acmews.testing
from acmews.codes import RSC, Operation
from acmews.cse import CSEConfig, MemoryResourceStore
from acmews.errors import RequestTimeout, TargetNotReachable
from acmews.interfaces import (
    IConnection,
    IOriginatorMap,
    IOriginatorObserver,
    IRequestHandler,
    IRequestSender,
)
from acmews.primitive import Request, Response
from acmews.testing import (
    ADMIN,
    START,
    FakeConnection,
    FakeOriginatorMap,
    FakeSender,
    RecordingHandler,
    connected_pair,
    make_client_factory,
    make_server_factory,
    memory_cse,
)


def example() -> str:
    """The example of the module docstring (the indented block after its ``::``)."""
    doc = acmews.testing.__doc__
    assert doc is not None
    return textwrap.dedent(doc.split("::\n", 1)[1])


class ExampleTests(SynchronousTestCase):
    def test_the_docstring_example_passes(self) -> None:
        namespace: dict[str, Any] = {"__name__": "acmews_testing_example"}
        exec(compile(example(), "acmews.testing example", "exec"), namespace)
        result = TestResult()
        for name in ("test_a_request_reaches_the_handler", "test_an_ae_registers_with_the_cse"):
            namespace["GatewayTests"](name).run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (2, [], []))


class InterfaceTests(SynchronousTestCase):
    def test_the_doubles_provide_their_interfaces(self) -> None:
        for double, interface in (
            (RecordingHandler(), IRequestHandler),
            (FakeConnection(), IConnection),
            (FakeSender(), IRequestSender),
            (FakeOriginatorMap(), IOriginatorMap),
        ):
            self.assertTrue(verifyObject(interface, double))


class ConnectedPairTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server_handler = RecordingHandler()
        self.client_handler = RecordingHandler(lambda r, c: Response(RSC.OK, r.rqi, pc="seen"))
        self.pair = connected_pair(
            make_server_factory(self.server_handler, self.clock),
            make_client_factory(self.clock, "Cgw", handler=self.client_handler),
        )

    def test_handshake_done(self) -> None:
        self.assertEqual(self.pair.server_session.originator, "Cgw")
        self.assertEqual(self.pair.client_session.subprotocol, "oneM2M.json")

    def test_client_request_server_response(self) -> None:
        d = self.pair.client_session.request(
            Request(Operation.CREATE, "cse-in", "c1", fr="Cgw", ty=4, pc={"m2m:cin": {}})
        )
        self.assertNoResult(d)
        self.pair.flush()
        response = self.successResultOf(d)
        self.assertEqual((response.rsc, response.rqi), (RSC.OK, "c1"))
        self.assertEqual(response.pc, {"m2m:cin": {}})  # the default answer echoes pc
        [(request, connection)] = self.server_handler.requests
        self.assertEqual((request.op, request.to), (Operation.CREATE, "cse-in"))
        self.assertIs(connection, self.pair.server_session)

    def test_server_request_client_answer(self) -> None:
        notify = Request(Operation.NOTIFY, "Cgw", "n1", fr="/id-in", pc={"m2m:sgn": {}})
        d = self.pair.server_session.request(notify)
        self.pair.flush()
        self.assertEqual(self.successResultOf(d).pc, "seen")
        self.assertEqual([r.rqi for r, _ in self.client_handler.requests], ["n1"])

    def test_each_pair_has_a_client_address_of_its_own(self) -> None:
        other = connected_pair(
            make_server_factory(self.server_handler, self.clock), make_client_factory(self.clock)
        )
        self.assertNotEqual(self.pair.server.transport.getPeer(), other.server.transport.getPeer())


class MemoryCSETests(SynchronousTestCase):
    def test_create_then_retrieve(self) -> None:
        memory = memory_cse()
        created = self.successResultOf(
            memory.request(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": "box"}})
        )
        self.assertEqual(created.rsc, RSC.CREATED)
        self.assertEqual(created.rqi, "rq1")
        retrieved = self.successResultOf(memory.request(Operation.RETRIEVE, "cse-in/box"))
        self.assertEqual((retrieved.rsc, retrieved.rqi), (RSC.OK, "rq2"))
        self.assertEqual(retrieved.pc["m2m:cnt"]["ri"], created.pc["m2m:cnt"]["ri"])
        self.assertEqual(retrieved.pc["m2m:cnt"]["ct"], "20231114T221320,250000")

    def test_errors_are_responses(self) -> None:
        memory = memory_cse()
        response = self.successResultOf(memory.request(Operation.RETRIEVE, "cse-in/nothing"))
        self.assertEqual(response.rsc, RSC.NOT_FOUND)

    def test_clock_config_and_store(self) -> None:
        store = MemoryResourceStore()
        memory = memory_cse(CSEConfig(cse_name="cse-mn", cse_id="/id-mn"), store, now=10.0)
        self.assertEqual(memory.clock.seconds(), 10.0)
        self.assertIs(memory.cse.store, store)
        self.assertIsNotNone(store.get("id-mn"))
        self.assertEqual(memory_cse().clock.seconds(), START)
        self.assertEqual(memory_cse().cse.config, CSEConfig(poa=("ws://127.0.0.1:8180",)))

    def test_what_the_cse_sends_is_recorded_and_answered_by_the_test(self) -> None:
        memory = memory_cse()
        memory.request(Operation.CREATE, "cse-in", ty=3, pc={"m2m:cnt": {"rn": "box"}})
        d = memory.request(
            Operation.CREATE, "cse-in/box", ty=23, pc={"m2m:sub": {"nu": ["Cnotified"]}}
        )
        self.assertNoResult(d)  # the CSE waits for the verification's answer
        [sent] = memory.sender.take()
        self.assertEqual((sent.target, sent.request.op, sent.store), ("Cnotified", 5, False))
        self.assertEqual(memory.sender.sent, [])
        sent.answer(RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        self.assertEqual(memory.connection.sent, [])


class FakeSenderTests(SynchronousTestCase):
    def test_records_and_fails(self) -> None:
        sender = FakeSender()
        request = Request(Operation.NOTIFY, "Cae1", "n1", fr=ADMIN)
        d = sender.send("Cae1", request, ["ws://h:1"], store=True)
        [sent] = sender.sent
        self.assertEqual((sent.target, sent.poa, sent.store), ("Cae1", ("ws://h:1",), True))
        sent.fail(TargetNotReachable("gone"))
        self.failureResultOf(d, TargetNotReachable)


class FakeConnectionTests(SynchronousTestCase):
    def test_records_and_answers(self) -> None:
        connection = FakeConnection("Cae1")
        first = connection.request(Request(Operation.NOTIFY, "Cae1", "n1"))
        second = connection.request(Request(Operation.NOTIFY, "Cae1", "n2"), timeout=5)
        self.assertEqual(connection.rqis(), ["n1", "n2"])
        connection.answer(0, RSC.ACCEPTED)
        self.assertEqual(self.successResultOf(first).rsc, RSC.ACCEPTED)
        second.cancel()
        self.assertEqual([r.rqi for r in connection.cancelled], ["n2"])
        self.failureResultOf(second)

    def test_times_out_on_its_clock(self) -> None:
        clock = Clock()
        connection = FakeConnection(clock=clock)
        d = connection.request(Request(Operation.NOTIFY, "Cae1", "n1"), timeout=5)
        answered = connection.request(Request(Operation.NOTIFY, "Cae1", "n2"), timeout=5)
        connection.answer()
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the answered one's timer is gone
        clock.advance(5)
        self.failureResultOf(d, RequestTimeout)
        self.successResultOf(answered)
        self.assertEqual([r.rqi for r in connection.timed_out], ["n1"])

    def test_close_fires_when_closed(self) -> None:
        connection = FakeConnection()
        before = connection.when_closed()
        self.assertNoResult(before)
        connection.close(1001, "bye")
        self.assertEqual(connection.closed, [(1001, "bye")])
        self.successResultOf(before)
        self.successResultOf(connection.when_closed())


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def originator_connected(self, originator: str, connection: IConnection) -> None:
        self.events.append(("connected", originator))

    def originator_disconnected(self, originator: str, connection: IConnection) -> None:
        self.events.append(("disconnected", originator))


class FakeOriginatorMapTests(SynchronousTestCase):
    def test_routes_and_observers(self) -> None:
        routes = FakeOriginatorMap()
        observer = Observer()
        self.assertTrue(verifyObject(IOriginatorObserver, observer, tentative=True))
        routes.add_observer(observer)
        old, new = FakeConnection("Cae1"), FakeConnection("Cae1")
        routes.bind("Cae1", old)
        routes.bind("Cae1", new)
        self.assertIs(routes.lookup("Cae1"), new)
        self.assertEqual(old.closed, [])  # unlike OriginatorMap, it closes nothing
        self.assertFalse(routes.unbind("Cae1", old))
        routes.remove_connection(new)
        self.assertIsNone(routes.lookup("Cae1"))
        routes.remove_observer(observer)
        self.assertEqual(routes.observers, [])
        self.assertEqual(
            observer.events,
            [("connected", "Cae1"), ("connected", "Cae1"), ("disconnected", "Cae1")],
        )
