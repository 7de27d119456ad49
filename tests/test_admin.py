"""The admin listener: what /metrics counts, that its labels stay bounded, and a real scrape."""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from acmews.admin import MetricsResource, link_state, metrics_registry
from acmews.admission import ConnectionLimits
from acmews.codes import RSC, Operation
from acmews.durable import open_store
from acmews.errors import TargetNotReachable
from acmews.metrics import LATENCY_BOUNDS, BindingMetrics
from acmews.poa import MemoryNotificationQueue, PoaChain, TargetPolicy
from acmews.primitive import Request, Response
from acmews.tap import Options, makeService
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair

from .test_poa import AE, FakeConnection, FakeConnector, FakeMap, notify


def parse(*argv: str) -> Options:
    """``twistd acmews``'s options, with a memory store."""
    options = Options()
    options.parseOptions(["--store", "memory:", *argv])
    return options


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text scrape, parsed by prometheus_client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape[(name, frozenset(labels.items()))]


class BindingMetricsTests(SynchronousTestCase):
    """What the binding counts, on connections in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.waiting: list[Deferred[Response]] = []

        def answer(request: Request, connection: Any) -> Response | Deferred[Response]:
            if request.to == "slow":
                d: Deferred[Response] = Deferred()
                self.waiting.append(d)
                return d
            rsc = RSC.NOT_FOUND if request.to == "missing" else RSC.OK
            return Response(rsc, request.rqi, request.rvi)

        self.metrics = BindingMetrics()
        self.factory = make_server_factory(RecordingHandler(answer), self.clock)
        self.factory.metrics = self.metrics
        self.client_metrics = BindingMetrics()

    def connect(self, **kw: Any) -> Any:
        client = make_client_factory(self.clock, **kw)
        client.metrics = self.client_metrics
        client.ready.addErrback(lambda _: None)  # (a refused one fails it)
        return pair(self.factory, client)

    def test_requests_by_operation_and_response_class(self) -> None:
        p = self.connect()
        session = p.client_session
        for n, to in enumerate(["cse-in", "cse-in", "cse-in", "missing"]):
            session.request(Request(Operation.RETRIEVE, to, f"r{n}", fr="Cae1"))
        session.request(Request(Operation.DELETE, "cse-in", "d1", fr="Cae1"))
        p.flush()
        self.assertEqual(
            self.metrics.request_counts(),
            [("retrieve", "2xxx", 3), ("retrieve", "4xxx", 1), ("delete", "2xxx", 1)],
        )
        self.assertEqual(self.metrics.latency[Operation.RETRIEVE].count, 4)

    def test_latency_from_arrival_to_answer(self) -> None:
        p = self.connect()
        p.client_session.request(Request(Operation.RETRIEVE, "slow", "u1", fr="Cae1"))
        p.flush()
        self.clock.advance(0.3)
        (d,) = self.waiting
        d.callback(Response(RSC.OK, "u1"))
        p.flush()
        histogram = self.metrics.latency[Operation.RETRIEVE]
        self.assertEqual(histogram.counts[LATENCY_BOUNDS.index(0.5)], 1)
        self.assertAlmostEqual(histogram.sum, 0.3)
        self.assertEqual(self.metrics.request_counts(), [("retrieve", "2xxx", 1)])

    def test_an_invalid_message_counts_as_invalid(self) -> None:
        p = self.connect()
        p.client.sendMessage(b"{not json", False)
        p.flush()
        self.assertEqual(self.metrics.request_counts(), [("invalid", "4xxx", 1)])

    def test_connections_by_direction_and_subprotocol(self) -> None:
        p = self.connect()
        q = self.connect(subprotocols=("oneM2M.cbor",))
        self.assertEqual(
            self.metrics.connections, {("in", "oneM2M.json"): 1, ("in", "oneM2M.cbor"): 1}
        )
        self.assertEqual(
            self.client_metrics.connections, {("out", "oneM2M.json"): 1, ("out", "oneM2M.cbor"): 1}
        )
        p.client_session.close()
        p.flush()
        q.server_session.close()
        q.flush()
        self.assertEqual(set(self.metrics.connections.values()), {0})
        self.assertEqual(set(self.client_metrics.connections.values()), {0})

    def test_refused_handshakes_by_reason(self) -> None:
        self.connect(subprotocols=("oneM2M.xml",))
        self.assertEqual(self.metrics.refused["no_subprotocol"], 1)
        self.factory.admission.limits = ConnectionLimits(1, 1, 1)
        self.connect()
        self.connect()
        self.assertEqual(self.metrics.refused["connection_limit"], 1)
        self.assertEqual(sum(self.metrics.refused.values()), 2)

    def test_nothing_is_counted_without_metrics(self) -> None:
        self.factory.metrics = None
        p = self.connect()
        self.assertIsNone(p.server_session.metrics)
        p.client_session.request(Request(Operation.RETRIEVE, "cse-in", "r1", fr="Cae1"))
        p.flush()
        self.assertEqual(self.metrics.request_counts(), [])


class ChainCountsTests(SynchronousTestCase):
    """Notifications by fate and poa steps by scheme and result."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.map = FakeMap()
        self.ws = FakeConnector("ws")
        self.http = FakeConnector("http")
        self.queue = MemoryNotificationQueue(2)
        self.chain = PoaChain(
            self.map,
            self.clock,
            [self.ws, self.http],
            queue=self.queue,
            policy=TargetPolicy(deny=["10.0.0.0/8"]),
            pad_failures=False,
        )
        self.addCleanup(self.chain.stop)
        self.counts = self.chain.counts

    def test_delivered_live_and_from_the_queue(self) -> None:
        for n in range(2):
            self.chain.send(AE, notify(f"q{n}"), store=True)
        self.assertEqual((self.counts.queued, self.counts.delivered), (2, 0))
        connection = FakeConnection()
        self.map.bind(AE, connection)
        connection.answer()
        connection.answer()
        self.chain.send(AE, notify("live"), store=True)
        connection.answer()
        self.assertEqual((self.counts.queued, self.counts.delivered), (2, 3))

    def test_expired_and_dropped(self) -> None:
        self.chain.send(AE, notify("old", rqet="1000"), store=True)  # 1 s
        self.clock.advance(2)
        for n in range(3):  # the queue holds 2: the expired one goes, then the oldest
            self.chain.send(AE, notify(f"n{n}"), store=True)
        self.assertEqual((self.queue.expired, self.queue.dropped), (1, 1))

    def test_expired_when_the_flush_reaches_it(self) -> None:
        self.chain.send(AE, notify("gone", rqet="1000"), store=True)
        self.clock.advance(2)
        self.map.bind(AE, FakeConnection())
        self.assertEqual((self.counts.expired, self.counts.delivered), (1, 0))

    def test_poa_steps_by_scheme_and_result(self) -> None:
        self.ws.results.append(Response(RSC.OK, "n1"))
        self.successResultOf(self.chain.send(AE, notify("n1"), ["ws://127.0.0.1:1"]))
        self.http.results.append(TargetNotReachable("refused"))
        self.failureResultOf(self.chain.send(AE, notify("n2"), ["http://127.0.0.2:2"]))
        self.failureResultOf(self.chain.send("http://10.1.2.3/", notify("n3")))
        self.assertEqual(
            self.counts.steps,
            {("ws", "answered"): 1, ("http", "failed"): 1, ("http", "denied"): 1},
        )
        self.assertEqual(self.counts.delivered, 1)


class StoreFiguresTests(SynchronousTestCase):
    def test_commit_latency_and_batch_size(self) -> None:
        disk = Clock()
        os.mkdir(directory := self.mktemp())

        def slow(function: Any, *args: Any) -> Deferred[Any]:
            return deferLater(disk, 0.003, function, *args)

        store = open_store(f"sqlite:{os.path.join(directory, 'a.db')}", disk, run=slow)
        self.addCleanup(store.service.stopService)
        assert store.database is not None
        for n in range(3):
            store.queue.enqueue("Ca", notify(f"n{n}"), 1000.0, 0.0)
        disk.advance(0)  # one transaction for the three
        disk.advance(0.003)
        self.assertEqual(store.database.commit_changes.counts[:2], [0, 0])
        self.assertEqual(store.database.commit_changes.counts[2], 1)  # 2 < 3 <= 5
        self.assertEqual(store.database.commit_seconds.counts[3], 1)  # 0.0025 < 0.003 <= 0.005


class ScrapeTests(SynchronousTestCase):
    """The registry of a whole service, rendered as a scrape is, without sockets."""

    def service(self, *argv: str) -> Any:
        reactor = MemoryReactorClock()
        return makeService(parse("--admin-listen", "tcp:9180:interface=127.0.0.1", *argv), reactor)

    def test_a_registry_per_service(self) -> None:
        """Two services in one process: no collision (the global registry is not used)."""
        first, second = self.service(), self.service()
        first.metrics.answered(Operation.RETRIEVE, 2000, 0.001)
        one = samples(
            MetricsResource(metrics_registry(first)).render_GET(DummyRequest([])).decode()
        )
        two = samples(
            MetricsResource(metrics_registry(second)).render_GET(DummyRequest([])).decode()
        )
        key = (
            "acmews_requests_total",
            frozenset({("operation", "retrieve"), ("response_class", "2xxx")}),
        )
        self.assertEqual((one[key], key in two), (1.0, False))

    def test_what_a_scrape_holds(self) -> None:
        service = self.service()
        service.metrics.opened("in", "oneM2M.json")
        service.metrics.answered(Operation.CREATE, 2001, 0.004)
        service.chain.counts.delivered = 5
        request = DummyRequest([])
        text = MetricsResource(metrics_registry(service)).render_GET(request).decode()
        self.assertTrue(
            request.responseHeaders.getRawHeaders("content-type")[0].startswith("text/plain")
        )
        scrape = samples(text)
        self.assertEqual(
            sample(scrape, "acmews_connections", direction="in", subprotocol="oneM2M.json"), 1
        )
        self.assertEqual(sample(scrape, "acmews_notifications_total", outcome="delivered"), 5)
        self.assertEqual(
            sample(
                scrape, "acmews_request_duration_seconds_bucket", operation="create", le="0.005"
            ),
            1,
        )
        self.assertEqual(sample(scrape, "acmews_queue_notifications"), 0)
        for name in (
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ):
            self.assertIn((name, frozenset()), scrape)
        self.assertEqual(sample(scrape, "acmews_handshakes_refused_total", reason="forbidden"), 0)

    def test_the_registrar_link_state(self) -> None:
        service = self.service("--registrar", "ws://127.0.0.1:1/", "--cse-id", "/id-mn")
        service.link.state = "backing off: next try in 2.0 s"
        scrape = samples(
            MetricsResource(metrics_registry(service)).render_GET(DummyRequest([])).decode()
        )
        self.assertEqual(sample(scrape, "acmews_registrar_link_state", state="backing off"), 1)
        self.assertEqual(sample(scrape, "acmews_registrar_link_state", state="registered"), 0)
        self.assertEqual(sample(scrape, "acmews_registrar_link_up"), 0)
        self.assertEqual(link_state("something new"), "stopped")

    def test_openmetrics_on_request(self) -> None:
        service = self.service()
        request = DummyRequest([])
        request.requestHeaders.addRawHeader("accept", "application/openmetrics-text")
        body = MetricsResource(metrics_registry(service)).render_GET(request)
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_off_by_default(self) -> None:
        """Without --admin-listen nothing is counted per request (no metrics on the factory)
        and nothing more listens."""
        reactor = MemoryReactorClock()
        service: Any = makeService(parse(), reactor)
        self.assertIsNone(service.factory.metrics)
        self.assertIsNone(service.admin)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.tcpServers), 1)

    def test_the_admin_listener_listens(self) -> None:
        reactor = MemoryReactorClock()
        service: Any = makeService(
            parse("--admin-listen", "tcp:9180:interface=127.0.0.1"), reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([p[0] for p in reactor.tcpServers], [8180, 9180])
        self.assertIs(service.factory.metrics, service.metrics)
        self.assertIsNotNone(service.metrics)

    def test_a_bad_admin_endpoint_is_a_usage_error(self) -> None:
        from twisted.python.usage import UsageError

        error = self.assertRaises(UsageError, parse, "--admin-listen", "tcp:notaport")
        self.assertIn("--admin-listen", str(error))


class LoopbackScrapeTests(TestCase):
    """A real CSE on 127.0.0.1 and a real scrape: the counters match what the client did, and
    no originator or path becomes a label."""

    timeout = 20

    async def get(self, service: Any, path: str) -> tuple[int, Any]:
        """``GET /path`` on the admin listener: the status code and the body (JSON, or the
        text of /metrics)."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        port = service.admin.port.getHost().port
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/{path}".encode())
        body: bytes = await readBody(response)
        return response.code, body.decode() if path == "metrics" else json.loads(body)

    async def scrape(self, service: Any) -> str:
        code, text = await self.get(service, "metrics")
        self.assertEqual(code, 200)
        return str(text)

    async def test_counters_match_the_client(self) -> Any:
        from acmews.client import connect

        from .helpers import NO_PING, start_cse

        service, url = await start_cse(self, "--admin-listen", "tcp:0:interface=127.0.0.1")
        await service.admin.bound
        client = await connect(url, originator="Csecret-originator", options=NO_PING)
        answers = [await client.retrieve("cse-in") for _ in range(7)]
        answers.append(await client.retrieve("cse-in/no-such-path-xyz"))
        self.assertEqual([a.rsc for a in answers].count(RSC.OK), 7)
        text = await self.scrape(service)
        scrape = samples(text)
        ok = sample(scrape, "acmews_requests_total", operation="retrieve", response_class="2xxx")
        missing = sample(
            scrape, "acmews_requests_total", operation="retrieve", response_class="4xxx"
        )
        self.assertEqual((ok, missing), (7, 1))
        self.assertEqual(
            sample(scrape, "acmews_request_duration_seconds_count", operation="retrieve"), 8
        )
        self.assertEqual(
            sample(scrape, "acmews_connections", direction="in", subprotocol="oneM2M.json"), 1
        )
        self.assertNotIn("secret-originator", text)
        self.assertNotIn("no-such-path", text)
        code, ready = await self.get(service, "ready")
        self.assertEqual((code, ready["status"]), (200, "ready"))
        code, health = await self.get(service, "health")
        self.assertEqual((code, health["status"]), (200, "ok"))
        await client.close()


class ReadinessTests(SynchronousTestCase):
    """/health and /ready, rendered without sockets."""

    def get(self, service: Any, path: bytes) -> tuple[int, dict[str, Any]]:
        resource = service.admin.factory.resource.children[path]
        request = DummyRequest([])
        body = resource.render_GET(request)
        self.assertEqual(
            request.responseHeaders.getRawHeaders("content-type"), ["application/json"]
        )
        return request.responseCode or 200, json.loads(body)

    def service(self, *argv: str) -> Any:
        reactor = MemoryReactorClock()
        return makeService(parse("--admin-listen", "tcp:9180:interface=127.0.0.1", *argv), reactor)

    def test_ready_once_listening_and_not_while_stopping(self) -> None:
        service = self.service()
        code, body = self.get(service, b"ready")
        self.assertEqual(
            (code, body["checks"]["listening"]), (503, {"ok": False, "reason": "not started"})
        )
        service.startService()
        code, body = self.get(service, b"ready")
        self.assertEqual((code, body["status"]), (200, "ready"))
        self.assertEqual(set(body["checks"]), {"listening", "store"})
        self.successResultOf(service.stopService())
        code, body = self.get(service, b"ready")
        self.assertEqual((code, body["checks"]["listening"]["reason"]), (503, "stopping"))
        code, body = self.get(service, b"health")
        self.assertEqual((code, body["status"], body["cse_id"]), (200, "ok", "/id-in"))

    def test_not_ready_while_the_store_is_read_only(self) -> None:
        os.mkdir(directory := self.mktemp())
        service = self.service("--store", f"sqlite:{os.path.join(directory, 'a.db')}")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(self.get(service, b"ready")[0], 200)
        service.store.database.refused = "database or disk is full"
        code, body = self.get(service, b"ready")
        self.assertEqual((code, body["checks"]["store"]["ok"]), (503, False))
        self.assertIn("database or disk is full", body["checks"]["store"]["reason"])

    def test_not_ready_until_registered(self) -> None:
        service = self.service("--registrar", "ws://127.0.0.1:1/", "--cse-id", "/id-mn")
        service.startService()
        self.addCleanup(service.stopService)
        code, body = self.get(service, b"ready")
        self.assertEqual(
            (code, body["checks"]["registrar"]), (503, {"ok": False, "state": "connecting"})
        )
        service.link.registered = True
        self.assertEqual(self.get(service, b"ready")[0], 200)
