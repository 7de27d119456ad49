"""Logs a peer cannot turn against the disk: values cut to size, repeated events summed up."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.codes import Operation
from acmews.logs import (
    MAX_VALUE,
    Budget,
    Logger,
    Throttle,
    bounded,
    format_json,
    set_debug,
    short,
)
from acmews.logs import json as json_observer
from acmews.poa import MemoryNotificationQueue, PoaChain
from acmews.primitive import Request
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair

from .test_poa import FakeMap, notify


def _longest_value(event: dict[str, Any]) -> int:
    return max((len(str(v)) for k, v in event.items() if not k.startswith("log_")), default=0)


class LoggerTests(SynchronousTestCase):
    def test_values_are_cut(self) -> None:
        log = Logger(namespace="test")
        with capturedLogs() as events:
            log.info("{to} {items} {n}", to="x" * 1_048_576, items=list(range(100_000)), n=7)
        (event,) = events
        self.assertLess(_longest_value(event), MAX_VALUE + 100)
        self.assertIn("1048576 in all", event["to"])
        self.assertIn("100000 items", event["items"])
        self.assertEqual(event["n"], 7)

    def test_debug_is_off_by_default(self) -> None:
        """twistd writes every level it is given: acmews's own debug lines (a poa step, a
        queued notification, each of them a peer can multiply) only when asked for."""
        log = Logger(namespace="test")
        with capturedLogs() as events:
            log.debug("step {n}", n=1)
            log.info("kept")
        self.assertEqual([e["log_format"] for e in events], ["kept"])
        set_debug(True)
        self.addCleanup(set_debug, False)
        with capturedLogs() as events:
            log.debug("step {n}", n=2)
        self.assertEqual([e["n"] for e in events], [2])

    def test_short_values_untouched(self) -> None:
        for value in ("abc", b"abc", [1, 2], {"a": 1}, None, 5):
            self.assertEqual(short(value), value)

    def test_budget(self) -> None:
        budget = Budget(count=3, period=10.0)
        self.assertEqual([budget.allow(0.0) for _ in range(5)], [True] * 3 + [False] * 2)
        self.assertEqual(budget.take_suppressed(), 2)
        self.assertEqual(budget.take_suppressed(), 0)
        self.assertTrue(budget.allow(10.0))  # a new period

    def test_throttle_keys_are_bounded(self) -> None:
        """A peer naming ever new targets: past ``keys`` they share one budget; idle keys
        are forgotten; what was left out is summed up, in the next line or on the timer."""
        clock = Clock()
        throttle = Throttle(Logger(namespace="test"), clock, "failures", count=2, keys=3)
        lines: list[str] = []

        def emit(format: str, **kwargs: Any) -> None:
            lines.append(format.format(**kwargs))

        for i in range(100):
            throttle.emit(f"host{i}", emit, "line {i}", i=i)
        self.assertEqual(lines, ["line 0", "line 1", "line 2", "line 3", "line 4"])
        self.assertEqual(len(throttle._budgets), 4)  # three keys and the shared one
        with capturedLogs() as events:
            clock.advance(60)
        self.assertEqual([(e["key"], e["count"]) for e in events], [(Throttle.OTHERS, 95)])
        self.assertEqual(throttle._budgets, {})  # all idle: forgotten
        no_timer = Throttle(Logger(namespace="test"), clock, "failures", count=1, timer=False)
        lines.clear()
        for _ in range(3):
            no_timer.emit("h", emit, "line")
        clock.advance(60)
        no_timer.emit("h", emit, "line")
        self.assertEqual(lines, ["line", "line (2 more failures for it were not logged)"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bounded_observer_rotates_and_keeps_few_files(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        observer = bounded(os.path.join(directory, "acmews.log"), rotate_length=1000, max_files=2)
        for i in range(200):
            observer(
                {
                    "log_format": "line {i} {pad}",
                    "i": i,
                    "pad": "p" * 50,
                    "log_level": LogLevel.info,
                    "log_namespace": "t",
                    "log_time": 0.0,
                }
            )
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["acmews.log", "acmews.log.1", "acmews.log.2"])
        self.assertLessEqual(sum(os.path.getsize(os.path.join(directory, n)) for n in names), 4000)


class JsonObserverTests(SynchronousTestCase):
    """``twistd --logger=acmews.logs.json``: one JSON object per line, the same bounds."""

    def observe(self, **kw: Any) -> tuple[Any, str]:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "acmews.log")
        return json_observer(path, **kw), path

    def lines(self, path: str) -> list[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_one_object_per_line_with_its_keys(self) -> None:
        observer, path = self.observe()
        log = Logger(namespace="acmews.test", observer=observer)
        log.info("refused {peer}: {status}", peer="tcp:1.2.3.4:5", status=403, to="x" * 100_000)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("handler failed for {rqi}", rqi="r1")
        first, second = self.lines(path)
        self.assertEqual(
            (first["level"], first["namespace"], first["message"]),
            ("info", "acmews.test", "refused tcp:1.2.3.4:5: 403"),
        )
        self.assertEqual((first["peer"], first["status"]), ("tcp:1.2.3.4:5", 403))
        self.assertLess(len(first["to"]), MAX_VALUE + 100)
        self.assertTrue(first["time"].endswith("+00:00"))
        self.assertEqual((second["level"], second["rqi"]), ("critical", "r1"))
        self.assertIn("ZeroDivisionError", second["failure"])

    def test_foreign_events_are_cut_too(self) -> None:
        """Events of Twisted's or Autobahn's loggers carry values of any size and kind."""
        line = json.loads(
            format_json(
                {
                    "log_format": "{big}",
                    "big": "b" * 1_000_000,
                    "obj": object(),
                    "log_level": LogLevel.warn,
                    "log_time": 0.0,
                    **{f"k{n}": n for n in range(100)},
                }
            )
        )
        self.assertLessEqual(len(line["message"]), 2000)
        self.assertLess(len(line["big"]), MAX_VALUE + 100)
        self.assertIn("object", line["obj"])
        self.assertLessEqual(len(line), 4 + 40)
        self.assertEqual(line["time"], "1970-01-01T00:00:00.000+00:00")

    def test_rotates_and_keeps_few_files(self) -> None:
        observer, path = self.observe(rotate_length=1000, max_files=2)
        for i in range(200):
            observer({"log_format": "line {i}", "i": i, "log_level": LogLevel.info})
        names = sorted(os.listdir(os.path.dirname(path)))
        self.assertEqual(names, ["acmews.log", "acmews.log.1", "acmews.log.2"])
        self.assertEqual(self.lines(path)[-1]["i"], 199)

    def test_twistd_finds_it(self) -> None:
        """twistd --logger takes the fully qualified name of a factory of observers."""
        from twisted.python.reflect import namedAny
        from zope.interface.verify import verifyObject

        self.patch(os, "environ", {"ACMEWS_LOGFILE": os.path.join(self.mktemp() + "x.log")})
        os.makedirs(os.path.dirname(os.environ["ACMEWS_LOGFILE"]), exist_ok=True)
        observer = namedAny("acmews.logs.json")()
        verifyObject(ILogObserver, observer)


class PeerEventTests(TestCase):
    def test_bad_messages_are_summed_up_per_connection(self) -> None:
        clock = Clock()
        factory = make_server_factory(RecordingHandler(), clock)
        p = pair(factory, make_client_factory(clock, "Cae1"))
        with capturedLogs() as events:
            for _ in range(100):
                p.client.sendMessage(b"not json " + b"x" * 5000)
            p.flush()
            p.client.transport.loseConnection()
            p.flush()
        server = [e for e in events if e.get("peer") == p.server_session.peer]
        bad = [e for e in server if "bad message" in e.get("log_format", "")]
        self.assertEqual(len(bad), 20)
        summary = [e for e in server if "were not logged" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in summary], [80])
        self.assertTrue(all(_longest_value(e) < MAX_VALUE + 100 for e in events))


class QueueLogTests(SynchronousTestCase):
    def test_queueing_and_dropping_log_once(self) -> None:
        clock = Clock()
        chain = PoaChain(FakeMap(), clock, queue=MemoryNotificationQueue(size=10))
        self.addCleanup(chain.stop)
        with capturedLogs() as events:
            for i in range(50):
                request = Request(Operation.NOTIFY, "Cae1", f"n{i}", "4", fr="/id-in", pc={})
                self.successResultOf(chain.send("Cae1", request, store=True))
        info = [e for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(info), 2, [e["log_format"] for e in info])  # queued; full
        clock.advance(3599)
        with capturedLogs() as events:
            clock.advance(61)  # they all expire: one line
        self.assertEqual([e.get("count") for e in events], [10])


class DeliveryFailureLogTests(SynchronousTestCase):
    """Delivery failures to one target are logged within a budget and summed up (760 bytes
    of log per contentInstance once, 5.9 times the input)."""

    def setUp(self) -> None:
        from twisted.internet.defer import fail

        from acmews.errors import TargetNotReachable

        from .test_poa import FakeConnector

        self.clock = Clock()
        self.http = FakeConnector("http")
        self.http.send = lambda url, request, timeout: fail(  # type: ignore[method-assign]
            TargetNotReachable(f"{url}: no answer")
        )
        self.chain = PoaChain(FakeMap(), self.clock, [self.http])
        self.addCleanup(self.chain.stop)

    def test_a_thousand_failures_to_one_poa(self) -> None:
        with capturedLogs() as events:
            for i in range(1000):
                d = self.chain.send(f"http://h:1/n{i}", notify(f"n{i}"))
                d.addErrback(lambda _: None)
            self.clock.advance(10)
        self.assertEqual([e for e in events if e["log_level"] < LogLevel.info], [])
        lines = [e for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(lines), 5, [e["log_format"] for e in lines])
        self.assertIn("http://h:1/n0", formatEvent(lines[0]))
        with capturedLogs() as events:
            self.clock.advance(60)
        (summary,) = events
        self.assertEqual((summary["count"], summary["key"]), (995, "h"))
        self.assertIn("995 more delivery failures for h were not logged", formatEvent(summary))

    def test_notifications_of_a_thousand_contentInstances_to_a_dead_poa(self) -> None:
        from acmews.cse import CSE, CSEConfig
        from acmews.testing import FakeConnection

        cse = CSE(CSEConfig(), self.chain, self.clock)

        def call(op: int, to: str, fr: str | None, **kw: Any) -> Any:
            request = Request(Operation(op), to, f"r{self.clock.seconds()}", "4", fr, **kw)
            result = cse.handle_request(request, FakeConnection(fr))
            if hasattr(result, "addCallback"):
                result = self.successResultOf(result)
            self.assertLess(result.rsc, 4000, result.debug)
            return result

        ae = {"m2m:ae": {"api": "Nx", "rr": True, "srv": ["4"], "poa": ["http://h:1/n"]}}
        aei = call(1, "cse-in", "Cdead", ty=2, pc=ae).pc["m2m:ae"]["aei"]
        call(1, f"cse-in/{aei}", aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        call(
            1,
            f"cse-in/{aei}/c",
            aei,
            ty=23,
            pc={"m2m:sub": {"nu": [aei], "rn": "s", "enc": {"net": [3]}}},
        )
        with capturedLogs() as events:
            for i in range(1000):
                call(1, f"cse-in/{aei}/c", aei, ty=4, pc={"m2m:cin": {"con": f"value {i}"}})
                self.clock.advance(0)
            self.clock.advance(10)  # every delivery fails, padded to the timeout
            self.clock.advance(60)
        text = "".join(formatEvent(e) or "" for e in events if e["log_level"] >= LogLevel.info)
        self.assertLess(len(text), 5000, text)
        self.assertIn("more delivery failures for Cdead were not logged", text)

    def test_a_subscriber_refusing_every_notification(self) -> None:
        from acmews.codes import RSC
        from acmews.testing import memory_cse

        memory = memory_cse()
        ae = {"m2m:ae": {"api": "Nx", "rr": False, "srv": ["4"]}}
        aei = self.successResultOf(memory.request(Operation.CREATE, "cse-in", None, ty=2, pc=ae))
        aei = aei.pc["m2m:ae"]["aei"]
        container = f"cse-in/{aei}"
        memory.request(Operation.CREATE, container, aei, ty=3, pc={"m2m:cnt": {"rn": "c"}})
        sub = {"m2m:sub": {"nu": ["http://h:1/n"], "enc": {"net": [3]}}}
        d = memory.request(Operation.CREATE, f"{container}/c", aei, ty=23, pc=sub)
        (verification,) = memory.sender.take()
        verification.answer(RSC.OK)
        self.assertEqual(self.successResultOf(d).rsc, RSC.CREATED)
        with capturedLogs() as events:
            for i in range(100):
                cin = {"m2m:cin": {"con": str(i)}}
                memory.request(Operation.CREATE, f"{container}/c", aei, ty=4, pc=cin)
                memory.clock.advance(0)
                for sent in memory.sender.take():
                    sent.answer(RSC.NOT_FOUND)
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.info]), 5)
