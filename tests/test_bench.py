"""The load generator's pieces: handshake, client protocol, accounting, options.

No sockets, no sleeps: the lean client is driven with ``StringTransport`` and ``task.Clock``;
only LoopbackRunTests runs each scenario, tiny, against a CSE on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import struct
import sys
from dataclasses import asdict
from typing import Any

import cbor2
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.bench.cli import parse_options
from acmews.bench.connections import SUBPROTOCOLS, Template
from acmews.bench.leanclient import (
    HandshakeError,
    LeanWebSocketClient,
    accept_key,
    build_handshake,
    parse_handshake,
)
from acmews.bench.ledger import Ledger, Result, percentile, ratio_summary
from acmews.bench.load import Budget, LoadConfig, LoadConnection, split_evenly
from acmews.bench.report import compare_summary, format_compare, format_report, report
from acmews.bench.scenarios import parse_proc
from acmews.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    encode_frame,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 5.7's example mask


def server_101(key: bytes = KEY, subprotocol: str | None = "oneM2M.json") -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key).decode()}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, None, fin=fin)


class HandshakeTests(SynchronousTestCase):
    def test_accept_key(self) -> None:
        self.assertEqual(accept_key(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_request(self) -> None:
        req = build_handshake("127.0.0.1", 8180, "/", KEY, "oneM2M.cbor", "CAdmin").decode()
        self.assertTrue(req.startswith("GET / HTTP/1.1\r\n"))
        self.assertTrue(req.endswith("\r\n\r\n"))
        for line in (
            "Host: 127.0.0.1:8180",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: oneM2M.cbor",
            "X-M2M-Origin: CAdmin",
            f"Sec-WebSocket-Key: {KEY.decode()}",
        ):
            self.assertIn(line + "\r\n", req)
        no_origin = build_handshake("h", 1, "", KEY, "oneM2M.json", None).decode()
        self.assertNotIn("X-M2M-Origin", no_origin)

    def test_101(self) -> None:
        data = server_101() + b"\x81\x01x"
        self.assertEqual(parse_handshake(data, KEY, "oneM2M.json"), ("oneM2M.json", len(data) - 3))

    def test_incomplete(self) -> None:
        self.assertIsNone(parse_handshake(server_101()[:-2], KEY, "oneM2M.json"))

    def test_not_101(self) -> None:
        data = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 20\r\n\r\nno subprotocol given"
        with self.assertRaises(HandshakeError) as cm:
            parse_handshake(data, KEY, "oneM2M.json")
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("400 Bad Request", cm.exception.reason)
        self.assertIn("no subprotocol given", cm.exception.reason)

    def test_wrong_or_missing_subprotocol(self) -> None:
        with self.assertRaises(HandshakeError) as cm:
            parse_handshake(server_101(subprotocol="oneM2M.cbor"), KEY, "oneM2M.json")
        self.assertIn("oneM2M.cbor", cm.exception.reason)
        with self.assertRaises(HandshakeError) as cm:
            parse_handshake(server_101(subprotocol=None), KEY, "oneM2M.json")
        self.assertIn("no subprotocol", cm.exception.reason)

    def test_wrong_accept(self) -> None:
        with self.assertRaises(HandshakeError) as cm:
            parse_handshake(server_101(key=b"other"), KEY, "oneM2M.json")
        self.assertIn("Accept", cm.exception.reason)

    def test_garbage(self) -> None:
        self.assertRaises(HandshakeError, parse_handshake, b"SSH-2.0\r\n\r\n", KEY, "x")


class ClientProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.client = LeanWebSocketClient(
            host="127.0.0.1",
            port=8180,
            path="/",
            subprotocol="oneM2M.json",
            originator="CAdmin",
            clock=self.clock,
            handshake_timeout=5,
            key=KEY,
            mask_key=MASK,
        )
        self.messages: list[bytes] = []
        self.client.on_message = self.messages.append
        self.client.makeConnection(self.transport)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def sent_frames(self) -> list[tuple[int, bytes]]:
        """Frames the client wrote since the handshake (FrameParser unmasks them)."""
        data = self.transport.value()
        self.transport.clear()
        return FrameParser().feed(data)

    def open(self) -> None:
        self.assertIn(b"X-M2M-Origin: CAdmin\r\n", self.transport.value())
        self.transport.clear()
        self.client.dataReceived(server_101())
        self.assertEqual(self.successResultOf(self.client.opened), "oneM2M.json")

    def test_open_then_messages_in_same_chunk(self) -> None:
        self.transport.clear()
        self.client.dataReceived(
            server_101() + server_frame(OP_TEXT, b"one") + server_frame(OP_TEXT, b"tw")
        )
        self.client.dataReceived(b"\x81\x01o")
        self.assertTrue(self.client.is_open)
        self.assertEqual(self.messages, [b"one", b"tw", b"o"])

    def test_send_is_masked_text(self) -> None:
        self.open()
        self.client.send(b"Hello")
        self.assertEqual(self.transport.value(), bytes.fromhex("818537fa213d7f9f4d5158"))
        self.transport.clear()
        self.client.send(b"z" * 70000)
        self.assertEqual(self.sent_frames(), [(OP_TEXT, b"z" * 70000)])

    def test_ping_pong(self) -> None:
        self.open()
        self.client.dataReceived(server_frame(OP_PING, b"are you there"))
        self.assertEqual(self.sent_frames(), [(OP_PONG, b"are you there")])
        self.client.dataReceived(server_frame(OP_PONG, b"unsolicited"))
        self.assertEqual(self.sent_frames(), [])
        self.assertEqual(self.messages, [])

    def test_server_close(self) -> None:
        self.open()
        self.client.dataReceived(server_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
        self.assertEqual(self.sent_frames(), [(OP_CLOSE, struct.pack("!H", 1000))])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.client.is_open)
        self.client.connectionLost()
        self.assertEqual(self.successResultOf(self.client.closed), "close 1000 bye")

    def test_client_close(self) -> None:
        self.open()
        self.client.close(1000, "done")
        self.assertEqual(self.sent_frames(), [(OP_CLOSE, struct.pack("!H", 1000) + b"done")])
        self.client.send(b"late")  # after close: dropped
        self.assertEqual(self.sent_frames(), [])
        self.client.dataReceived(server_frame(OP_CLOSE, struct.pack("!H", 1000)))
        self.assertEqual(self.sent_frames(), [])  # no second close frame
        self.client.connectionLost()
        self.successResultOf(self.client.closed)

    def test_protocol_error_closes_1002(self) -> None:
        self.open()
        self.client.dataReceived(b"\x83\x00")
        frames = self.sent_frames()
        self.assertEqual(frames[0][0], OP_CLOSE)
        self.assertEqual(frames[0][1][:2], struct.pack("!H", 1002))
        self.assertTrue(self.transport.disconnecting or self.client.transport is None)

    def test_refused_upgrade(self) -> None:
        self.client.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\nunsupported subprotocol")
        err = self.failureResultOf(self.client.opened, HandshakeError)
        self.assertIn("400", err.value.reason)
        self.assertIn("unsupported subprotocol", err.value.reason)
        self.assertFalse(self.client.is_open)

    def test_handshake_timeout(self) -> None:
        self.clock.advance(5)
        err = self.failureResultOf(self.client.opened, HandshakeError)
        self.assertIn("no handshake answer", err.value.reason)

    def test_connection_lost_before_open(self) -> None:
        self.client.connectionLost()
        self.failureResultOf(self.client.opened)
        self.successResultOf(self.client.closed)


class LedgerTests(SynchronousTestCase):
    def test_accounting(self) -> None:
        ledger = Ledger("p.")
        for i in range(5):
            self.assertEqual(ledger.send(float(i)), i)
        self.assertEqual(ledger.rqi(3), "p.0000000003")
        self.assertEqual(ledger.outstanding, 5)
        ledger.answer("p.0000000000", 2000, 0.5)
        ledger.answer("p.0000000001", 4004, 2.0)
        ledger.answer("p.0000000001", 2000, 2.5)  # twice
        ledger.answer("p.0000000099", 2000, 3.0)  # never sent
        ledger.answer("q.0000000002", 2000, 3.0)  # other connection's
        ledger.answer("p.12", 2000, 3.0)  # wrong shape
        ledger.answer(42, 2000, 3.0)  # not a string
        ledger.answer(None, 2000, 3.0)
        self.assertEqual(ledger.outstanding, 3)
        self.assertEqual(ledger.duplicates, 1)
        self.assertEqual(ledger.unknown, 5)
        self.assertEqual(list(ledger.latencies), [0.5, 1.0])
        self.assertEqual(ledger.rsc, {2000: 1, 4004: 1})
        # requests 2, 3, 4 were sent at t=2,3,4; with a timeout of 1.5 at t=4, 2 expires
        self.assertEqual(ledger.expire(4.0, 1.5), 1)
        self.assertEqual(ledger.outstanding, 2)
        ledger.answer("p.0000000002", 2000, 5.0)  # late
        self.assertEqual(ledger.late, 1)
        ledger.answer("p.0000000002", 2000, 5.0)  # late and twice
        self.assertEqual(ledger.duplicates, 2)
        ledger.answer("p.0000000003", 2000, 5.0)
        self.assertEqual(ledger.expire_all(), 1)  # 4 never answered
        self.assertEqual(ledger.unanswered, 1)
        r = Result.from_ledger(ledger)
        self.assertEqual(
            (r.sent, r.answered, r.unanswered, r.duplicates, r.unknown, r.late),
            (5, 4, 1, 2, 5, 1),
        )
        self.assertFalse(r.correct)

    def test_clean_run_is_correct(self) -> None:
        ledger = Ledger("x")
        for i in range(3):
            ledger.send(0.0)
            ledger.answer(ledger.rqi(i), 2000, 0.001)
        r = Result.from_ledger(ledger)
        self.assertTrue(r.correct)
        self.assertEqual(r.rsc, {"2000": 3})

    def test_merge(self) -> None:
        a = Result(
            sent=2,
            answered=2,
            rsc={"2000": 2},
            latencies=[0.1, 0.2],
            started=10,
            ended=12,
            client_cpu=0.5,
            connections=1,
        )
        b = Result(
            sent=3,
            answered=2,
            unanswered=1,
            rsc={"2000": 1, "4004": 1},
            latencies=[0.3],
            started=11,
            ended=13,
            client_cpu=0.25,
            connections=2,
        )
        m = a.merge(b)
        self.assertEqual((m.sent, m.answered, m.unanswered, m.connections), (5, 4, 1, 3))
        self.assertEqual(m.rsc, {"2000": 3, "4004": 1})
        self.assertEqual((m.started, m.ended, m.elapsed), (10, 13, 3))
        self.assertEqual(m.client_cpu, 0.75)
        self.assertEqual(sorted(m.latencies), [0.1, 0.2, 0.3])
        self.assertFalse(m.correct)
        self.assertEqual(Result.from_dict(asdict(m)), m)

    def test_report_says_so_loudly(self) -> None:
        opts = parse_options(["ws://127.0.0.1:8180"])
        bad = Result(
            sent=3,
            answered=2,
            unanswered=1,
            duplicates=1,
            unknown=1,
            started=1,
            ended=2,
            latencies=[0.1, 0.2],
        )
        text = format_report(report(opts, opts.url, bad, {}))
        self.assertIn("CORRECTNESS FAILURE", text)
        self.assertIn("1 never answered, 1 answered twice, 1 with an rqi never sent", text)
        good = Result(sent=2, answered=2, started=1, ended=2, latencies=[0.1, 0.2])
        d = report(opts, opts.url, good, {"cpu_s": 0.001})
        self.assertNotIn("FAILURE", format_report(d))
        self.assertAlmostEqual(d["server_cpu_us_per_request"], 500.0)
        self.assertEqual(d["requests_per_second"], 2.0)

    def test_fanout_cost_next_to_a_requests(self) -> None:
        """A notification's server CPU, the pipelined RETRIEVE's per request, their ratio."""
        opts = parse_options(["ws://127.0.0.1:1", "--scenario", "fanout"])
        good = Result(sent=1, answered=100, started=1, ended=2, latencies=[0.1])
        good.extra["rounds"] = 1
        server = {"cpu_s": 0.005, "reference_us_per_request": 20.0}
        d = report(opts, opts.url, good, server)
        self.assertAlmostEqual(d["server_cpu_us_per_request"], 50.0)
        self.assertAlmostEqual(d["notification_per_request_ratio"], 2.5)
        self.assertIn(
            "pipelined RETRIEVE on the same server: 20.0 us/request; a notification costs "
            "2.50 x a request",
            format_report(d),
        )
        self.assertNotIn("notification_per_request_ratio", report(opts, opts.url, good, {}))

    def test_server_cpu_with_the_kernels_part(self) -> None:
        """The server's system time is given as its share of the server's CPU (what the
        kernel's sends, receives and polls cost), when it is known."""
        opts = parse_options(["ws://127.0.0.1:1", "--scenario", "fanout"])
        good = Result(sent=1, answered=100, started=1, ended=2, latencies=[0.1])
        good.extra["rounds"] = 1
        text = format_report(report(opts, opts.url, good, {"cpu_s": 0.004, "system_s": 0.001}))
        self.assertIn("server CPU        40.0 us/notification (0.00 s, 25 % in the kernel)", text)
        text = format_report(report(opts, opts.url, good, {"cpu_s": 0.004}))
        self.assertIn("server CPU        40.0 us/notification (0.00 s)\n", text + "\n")


class StatisticsTests(SynchronousTestCase):
    def test_percentile(self) -> None:
        values = [float(i) for i in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50.0)
        self.assertEqual(percentile(values, 90), 90.0)
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile(values, 100), 100.0)
        self.assertEqual(percentile([7.0], 99), 7.0)
        self.assertEqual(percentile([1.0, 2.0], 50), 1.0)
        self.assertEqual(percentile([1.0, 2.0], 51), 2.0)
        self.assertEqual(percentile([], 50), 0.0)

    def test_ratio_summary(self) -> None:
        ratios, median = ratio_summary([200.0, 300.0, 100.0], [100.0, 100.0, 100.0])
        self.assertEqual(ratios, [2.0, 3.0, 1.0])
        self.assertEqual(median, 2.0)
        ratios, median = ratio_summary([1.0, 4.0], [0.0, 2.0])  # zero skipped
        self.assertEqual((ratios, median), ([2.0], 2.0))
        self.assertNotEqual(*ratio_summary([], [])[1:] * 2)  # NaN

    def test_compare_summary(self) -> None:
        pairs = [
            (
                {"requests_per_second": 200.0, "server_cpu_us_per_request": 50.0},
                {"requests_per_second": 100.0, "server_cpu_us_per_request": 100.0},
            ),
            (
                {"requests_per_second": 300.0, "server_cpu_us_per_request": 30.0},
                {"requests_per_second": 100.0, "server_cpu_us_per_request": 120.0},
            ),
        ]
        c = compare_summary(pairs)
        self.assertEqual(c["rate_ratios"], [2.0, 3.0])
        self.assertEqual(c["rate_ratio_median"], 2.5)
        self.assertEqual(c["cpu_ratios"], [0.5, 0.25])
        self.assertIn("median 2.50", format_compare(c))

    def test_split_evenly(self) -> None:
        self.assertEqual(split_evenly(10, 3), [4, 3, 3])
        self.assertEqual(split_evenly(2, 2), [1, 1])

    def test_parse_proc(self) -> None:
        stat = b"1234 (twistd (x) y) S " + b" ".join(b"%d" % i for i in range(4, 53))
        # fields 14 and 15 (utime, stime) are the numbers 14 and 15 here
        status = b"Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t1\n"
        s = parse_proc(stat, status, 100)
        self.assertAlmostEqual(s.cpu, 0.29)
        self.assertAlmostEqual(s.system, 0.15)
        self.assertEqual(s.rss_kib, 2048)


class UntilQuietTests(SynchronousTestCase):
    """The fan-out's reference waits for the server to settle after the clean-up: what
    closing a thousand connections costs it is not a RETRIEVE's cost."""

    def wait(self, cpu: list[float]) -> tuple[list[Any], int]:
        from acmews.bench import scenarios

        samples = iter(cpu)
        self.patch(
            scenarios, "sample_server", lambda pid: scenarios.ServerSample(next(samples), 1)
        )
        clock = Clock()
        outcome: list[Any] = []
        Deferred.fromCoroutine(scenarios.until_quiet(clock, 1)).addBoth(outcome.append)
        steps = 0
        while not outcome and steps < 100:
            clock.advance(scenarios.QUIET_STEP)
            steps += 1
        return outcome, steps

    def test_it_waits_until_a_step_costs_the_server_nothing_more(self) -> None:
        outcome, steps = self.wait([1.0, 1.2, 1.4, 1.405, 9.0])
        self.assertEqual((outcome, steps), ([True], 3))

    def test_a_server_that_stays_busy_is_measured_after_the_bound(self) -> None:
        from acmews.bench import scenarios

        outcome, steps = self.wait([i * 0.1 for i in range(1000)])
        self.assertEqual(
            (outcome, steps), ([False], round(scenarios.QUIET_WAIT / scenarios.QUIET_STEP))
        )

    def test_without_a_pid_nothing_is_waited_for(self) -> None:
        from acmews.bench import scenarios

        outcome: list[Any] = []
        Deferred.fromCoroutine(scenarios.until_quiet(Clock(), None)).addBoth(outcome.append)
        self.assertEqual(outcome, [True])


class OptionTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse_options(["ws://127.0.0.1:8180"])
        self.assertEqual(
            (o.originator, o.target, o.scenario, o.mode, o.window, o.serialization, o.rounds),
            ("CAdmin", "cse-in", "retrieve", "sequential", 64, "json", 3),
        )
        self.assertEqual(o.effective_window, 1)
        self.assertIsNone(o.server_pid)

    def test_all(self) -> None:
        o = parse_options(
            [
                "ws://127.0.0.1:8180/x",
                "--originator",
                "Cx{k}",
                "--target",
                "cse-in/a",
                "--scenario",
                "create-cin",
                "--mode",
                "pipelined",
                "--window",
                "8",
                "--connections",
                "4",
                "--processes",
                "2",
                "--requests",
                "100",
                "--duration",
                "2",
                "--serialization",
                "cbor",
                "--json",
                "out.json",
                "--server-pid",
                "42",
                "--compare",
                "ws://127.0.0.1:8181",
                "--compare-pid",
                "43",
                "--rounds",
                "5",
                "--timeout",
                "1",
            ]
        )
        self.assertEqual(o.effective_window, 8)
        self.assertEqual((o.connections, o.processes, o.requests, o.duration), (4, 2, 100, 2.0))
        self.assertEqual((o.json_file, o.server_pid, o.compare_pid), ("out.json", 42, 43))
        self.assertEqual(o.compare, "ws://127.0.0.1:8181")
        cfg = LoadConfig(
            url=o.url,
            serialization="json",
            originator=o.originator,
            request={},
            connections=2,
            window=1,
            requests=1,
            duration=1,
            timeout=1,
            tag="t",
            first_connection=2,
        )
        self.assertEqual(cfg.originator_for(1), "Cx3")

    def test_bad(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        for argv in (
            [],
            ["ws://h:1", "--scenario", "delete-all"],
            ["ws://h:1", "--mode", "burst"],
            ["ws://h:1", "--window", "0"],
            ["ws://h:1", "--serialization", "xml"],
            ["http://h:1"],
            ["ws://h:1", "--duration", "0"],
        ):
            with self.assertRaises(SystemExit) as cm:
                parse_options(argv)
            self.assertEqual(cm.exception.code, 2)
        self.assertIn("only ws://", stderr.getvalue())


def open_client(serialization: str = "json") -> tuple[LeanWebSocketClient, StringTransport]:
    client = LeanWebSocketClient(
        host="127.0.0.1",
        port=8180,
        path="/",
        subprotocol=SUBPROTOCOLS[serialization],
        originator="CAdmin",
        clock=Clock(),
        handshake_timeout=0,
        key=KEY,
        mask_key=MASK,
    )
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(server_101(subprotocol=SUBPROTOCOLS[serialization]))
    transport.clear()
    return client, transport


def requests_sent(transport: StringTransport, serialization: str = "json") -> list[Any]:
    data = transport.value()
    transport.clear()
    loads = orjson.loads if serialization == "json" else cbor2.loads
    return [loads(p) for _, p in FrameParser().feed(data)]


class TemplateTests(SynchronousTestCase):
    def test_json_and_cbor(self) -> None:
        req = {"op": 2, "to": "cse-in", "fr": "CAdmin", "rvi": "4"}
        for ser, loads in (("json", orjson.loads), ("cbor", cbor2.loads)):
            t = Template(req, ser, "b1.0.")
            self.assertEqual(loads(t.build(7)), {**req, "rqi": "b1.0.0000000007"})
            self.assertEqual(loads(t.build(1234567890))["rqi"], "b1.0.1234567890")


class LoadConnectionTests(SynchronousTestCase):
    def make(
        self, window: int, requests: int, ser: str = "json"
    ) -> tuple[LoadConnection, StringTransport]:
        client, transport = open_client(ser)
        ledger = Ledger("b.0.")
        lc = LoadConnection(
            client,
            Template({"op": 2, "to": "cse-in", "fr": "CAdmin", "rvi": "4"}, ser, "b.0."),
            ledger,
            window,
            Budget(requests),
            ser,
            timer=lambda: 1.0,
        )
        return lc, transport

    def answer(self, lc: LoadConnection, rqi: Any, ser: str = "json") -> None:
        msg = {"rsc": 2000, "rqi": rqi, "rvi": "4", "pc": {"m2m:cb": {}}}
        payload = orjson.dumps(msg) if ser == "json" else cbor2.dumps(msg)
        op = OP_TEXT if ser == "json" else OP_BINARY
        lc.client.dataReceived(server_frame(op, payload))

    def test_pipelined_window(self) -> None:
        lc, transport = self.make(window=4, requests=6)
        lc.fill()
        sent = requests_sent(transport)
        self.assertEqual([r["rqi"] for r in sent], [f"b.0.{i:010d}" for i in range(4)])
        self.assertEqual(sent[0]["op"], 2)
        self.answer(lc, sent[2]["rqi"])  # out of order is fine
        self.answer(lc, sent[0]["rqi"])
        more = requests_sent(transport)
        self.assertEqual([r["rqi"] for r in more], ["b.0.0000000004", "b.0.0000000005"])
        self.assertNoResult(lc.done)
        for r in [sent[1], sent[3], *more]:
            self.answer(lc, r["rqi"])
        self.assertEqual(requests_sent(transport), [])  # budget used up
        self.successResultOf(lc.done)
        result = Result.from_ledger(lc.ledger)
        self.assertTrue(result.correct)
        self.assertEqual(result.answered, 6)

    def test_mixed_up_answers_are_caught(self) -> None:
        """What ACME does with several requests in flight: one answered twice, one never."""
        lc, transport = self.make(window=2, requests=2, ser="cbor")
        lc.fill()
        sent = requests_sent(transport, "cbor")
        self.answer(lc, sent[0]["rqi"], "cbor")
        self.answer(lc, sent[0]["rqi"], "cbor")
        self.answer(lc, "someone-else's", "cbor")
        self.assertNoResult(lc.done)
        lc.ledger.expire(10.0, 5.0)  # what the run's ticker does after --timeout
        lc.check_done()
        self.successResultOf(lc.done)
        r = Result.from_ledger(lc.ledger)
        self.assertEqual((r.answered, r.unanswered, r.duplicates, r.unknown), (1, 1, 1, 1))
        self.assertFalse(r.correct)

    def test_server_request_is_answered_and_garbage_counted(self) -> None:
        lc, transport = self.make(window=1, requests=1)
        lc.client.dataReceived(
            server_frame(OP_TEXT, b'{"op":5,"to":"CAdmin","fr":"/id-in","rqi":"n1","rvi":"4"}')
        )
        self.assertEqual(requests_sent(transport), [{"rsc": 2000, "rqi": "n1", "rvi": "4"}])
        lc.client.dataReceived(server_frame(OP_TEXT, b"not json"))
        lc.client.dataReceived(server_frame(OP_TEXT, b'{"neither":1}'))
        self.assertEqual(lc.ledger.malformed, 2)

    def test_connection_lost_ends_the_connection(self) -> None:
        lc, _ = self.make(window=4, requests=10)
        lc.fill()
        lc.client.connectionLost()
        self.successResultOf(lc.done)
        self.assertEqual(lc.ledger.unanswered, 4)
        self.assertTrue(lc.budget.errors)

    def test_a_server_going_away_fails_what_is_outstanding_cleanly(self) -> None:
        """#24: a graceful stop closes with 1001 after answering what was in flight; what the
        client sent meanwhile fails at once with 5103 on its side, not never answered."""
        lc, transport = self.make(window=4, requests=10)
        lc.fill()
        sent = requests_sent(transport)
        self.answer(lc, sent[0]["rqi"])  # the server answers one, then goes away
        lc.client.dataReceived(server_frame(OP_CLOSE, struct.pack("!H", 1001) + b"bye"))
        lc.client.connectionLost()
        self.successResultOf(lc.done)
        result = Result.from_ledger(lc.ledger)
        self.assertEqual((result.answered, result.failed, result.unanswered), (1, 4, 0))
        self.assertEqual(result.rsc, {"2000": 1, "5103": 4})
        self.assertTrue(result.correct)
        self.assertIn("5103", lc.budget.errors[0])
        merged = result.merge(result)
        self.assertEqual(merged.failed, 8)


class OneLineErrorTests(SynchronousTestCase):
    def test_errors_are_one_short_line(self) -> None:
        from twisted.internet.defer import TimeoutError as DeferTimeoutError

        from acmews.bench.cli import _one_line
        from acmews.bench.connections import BenchError

        self.assertEqual(_one_line(BenchError("cannot connect")), "cannot connect")
        self.assertIn("no answer in time", _one_line(DeferTimeoutError(10, "Deferred")))
        long = _one_line(RuntimeError("x" * 1000 + "\nsecond line"))
        self.assertEqual((len(long), "\n" in long), (300, False))
        self.assertEqual(_one_line(ValueError()), "ValueError")


class RestartFillTests(SynchronousTestCase):
    """python -m acmews.bench.restart writes its store through the CSE."""

    def test_fill(self) -> None:
        import os

        from twisted.internet.task import Clock

        from acmews.bench.restart import fill
        from acmews.durable import open_store

        os.mkdir(directory := self.mktemp())
        path = os.path.join(directory, "acmews.db")
        self.assertEqual(fill(path, 30, containers=3, size=10), 1 + 3 + 30)
        store = open_store(f"sqlite:{path}", Clock())
        self.addCleanup(store.service.stopService)
        resources = store.resources
        c0 = resources.child("id-in", "c0")
        assert c0 is not None
        self.assertEqual(c0.attrs["cni"], 10)
        latest = resources.latest_child(c0.ri, 4)
        assert latest is not None
        self.assertEqual(latest.attrs["con"], "value 27 x")


class ProgressTests(SynchronousTestCase):
    """#23: a run says what it does and how far it got, on its own stream."""

    def test_a_log_gets_a_line_every_5_seconds(self) -> None:
        from acmews.bench.progress import Progress

        now = [100.0]
        stream = io.StringIO()
        progress = Progress(stream, "acmews bench", clock=lambda: now[0])
        progress.say("retrieve, sequential")
        for t in range(1, 21):
            now[0] = 100.0 + t
            progress.update(f"{t * 100}/2000 answered")
        self.assertEqual(
            stream.getvalue().splitlines(),
            [
                "acmews bench: retrieve, sequential",
                "acmews bench: 500/2000 answered, 5 s",
                "acmews bench: 1000/2000 answered, 10 s",
                "acmews bench: 1500/2000 answered, 15 s",
                "acmews bench: 2000/2000 answered, 20 s",
            ],
        )

    def test_a_terminal_gets_one_line_rewritten(self) -> None:
        from acmews.bench.progress import Progress

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        now = [0.0]
        stream = Terminal()
        progress = Progress(stream, "acmews bench", clock=lambda: now[0])
        progress.say("fanout")
        now[0] = 0.5
        progress.update("round 1/10")
        now[0] = 0.6  # too soon
        progress.update("round 2/10")
        now[0] = 1.0
        progress.update("round 3/10")
        progress.clear()
        self.assertEqual(
            stream.getvalue(),
            "acmews bench: fanout\n"
            "\racmews bench: round 1/10, 0 s\x1b[K"
            "\racmews bench: round 3/10, 1 s\x1b[K"
            "\r\x1b[K",
        )

    def test_silent_without_a_stream(self) -> None:
        from acmews.bench.progress import Progress

        progress = Progress(None)
        progress.say("x")
        progress.update("y")
        progress.clear()  # nothing to write to, nothing raised

    def test_it_goes_by_the_name_it_was_called(self) -> None:
        from acmews.bench.cli import build_parser, describe_run

        self.assertEqual(build_parser("acmews bench").prog, "acmews bench")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit):
            parse_options(["ws://h:1", "--window", "0"], "acmews bench")
        self.assertIn("acmews bench: error: --window must be at least 1", stderr.getvalue())
        opts = parse_options(["ws://h:1", "--requests", "100", "--duration", "20"])
        self.assertEqual(
            describe_run(opts, "ws://h:1"),
            "retrieve, sequential, 1 connection(s) to ws://h:1: up to 100 requests within 20 s",
        )


class SeveralURLsTests(TestCase):
    """#22: several URLs (the nodes of one CSE) and the cluster scenario."""

    def test_several_urls(self) -> None:
        opts = parse_options(["ws://a:1", "ws://b:2", "ws://c:3"])
        self.assertEqual((opts.url, opts.urls), ("ws://a:1", ["ws://a:1", "ws://b:2", "ws://c:3"]))
        self.assertEqual(opts.urls_for("ws://a:1"), ["ws://a:1", "ws://b:2", "ws://c:3"])
        self.assertEqual(opts.urls_for("ws://other:4"), ["ws://other:4"])  # --compare's

    def test_connections_go_to_each_url_in_turn_across_workers(self) -> None:
        from acmews.bench.load import LoadConfig

        cfg = LoadConfig("ws://a:1", "json", "C", {}, 3, 1, 1, 1.0, 1.0, "t", 2, ["u0", "u1"])
        self.assertEqual([cfg.url_for(i) for i in range(3)], ["u0", "u1", "u0"])
        self.assertEqual(
            LoadConfig("ws://a:1", "json", "C", {}, 1, 1, 1, 1.0, 1.0, "t").url_for(0), "ws://a:1"
        )

    def test_the_cluster_scenario_needs_two_nodes(self) -> None:
        with self.assertRaises(SystemExit):
            parse_options(["ws://a:1", "--scenario", "cluster"])
        self.assertEqual(
            parse_options(["ws://a:1", "ws://b:1", "--scenario", "cluster"]).scenario, "cluster"
        )

    def test_a_bad_one_among_several(self) -> None:
        with self.assertRaises(SystemExit):
            parse_options(["ws://a:1", "http://b:1"])


class LoopbackRunTests(TestCase):
    """Each scenario, tiny, against twistd acmews's service on 127.0.0.1 port 0: it runs,
    reports on ``out`` and says what it does on its progress stream (#23.5)."""

    timeout = 60

    def test_a_group_across_a_cse_link(self) -> Deferred[None]:
        """#26: the group scenario with its members on an MN-CSE registered to the CSE under
        load: each fan-out reaches them over the one CSE-to-CSE link."""

        async def go() -> None:
            from twisted.internet import reactor

            from acmews.bench.cli import run
            from acmews.bench.progress import Progress

            from .helpers import start_cse

            _, in_url = await start_cse(self, "--allowed-csr-originators", "/id-mn")
            mn, mn_url = await start_cse(
                self, "--cse-id", "/id-mn", "--cse-name", "cse-mn", "--registrar", in_url
            )
            await mn.link.when_registered()
            argv = [in_url, "--scenario", "group", "--members", "4", "--requests", "6"]
            argv += ["--member-url", mn_url, "--member-cse", "/id-mn/cse-mn"]
            out = io.StringIO()
            code = await run(reactor, parse_options(argv), out, Progress(io.StringIO(), "x"))
            self.assertEqual(code, 0, out.getvalue())
            self.assertIn("6 answered", out.getvalue())
            self.assertNotIn("warning", out.getvalue())  # the members were deleted again
            left = [r.rn for r in mn.cse.store.children(mn.cse.base.ri)]
            self.assertEqual([n for n in left if n.startswith("bench")], [])

        return Deferred.fromCoroutine(go())

    def test_each_scenario_runs_and_says_so(self) -> Deferred[None]:
        async def go() -> None:
            from twisted.internet import reactor

            from acmews.bench.cli import run
            from acmews.bench.progress import Progress

            from .helpers import start_cse

            _, url = await start_cse(self)
            for argv in (
                ["--requests", "20"],
                ["--scenario", "create-cin", "--mode", "pipelined", "--requests", "20"],
                ["--scenario", "group", "--members", "3", "--requests", "5"],
                ["--scenario", "fanout", "--connections", "2", "--requests", "2"],
                ["--scenario", "idle", "--connections", "2", "--duration", "0.1"],
            ):
                out, said = io.StringIO(), io.StringIO()
                code = await run(reactor, parse_options([url, *argv]), out, Progress(said, "x"))
                self.assertEqual(code, 0, out.getvalue())
                self.assertTrue(said.getvalue().startswith("x: "), said.getvalue())
                self.assertIn(url, said.getvalue())
                self.assertNotIn("CORRECTNESS FAILURE", out.getvalue())

        return Deferred.fromCoroutine(go())

    def test_fanout_measures_a_reference_request(self) -> Deferred[None]:
        """With the server's pid, the fan-out also runs pipelined RETRIEVEs on the same
        server and says what a notification costs next to a request."""

        async def go() -> None:
            from twisted.internet import reactor

            from acmews.bench import scenarios
            from acmews.bench.cli import run
            from acmews.bench.progress import Progress

            from .helpers import start_cse

            self.patch(scenarios, "REFERENCE_REQUESTS", 300)
            # the CPU the server used, in steps finer than /proc's ticks; a quarter of it
            # system time
            cpu = iter(range(1, 100))

            def sample(pid: int | None) -> scenarios.ServerSample | None:
                if not pid:
                    return None
                used = next(cpu) / 100
                return scenarios.ServerSample(used, 1000, used / 4)

            self.patch(scenarios, "sample_server", sample)
            _, url = await start_cse(self)
            argv = ["--scenario", "fanout", "--connections", "3", "--requests", "3"]
            argv += ["--server-pid", str(os.getpid())]
            out = io.StringIO()
            code = await run(reactor, parse_options([url, *argv]), out, Progress(io.StringIO()))
            self.assertEqual(code, 0, out.getvalue())
            self.assertIn("pipelined RETRIEVE on the same server:", out.getvalue())
            self.assertRegex(out.getvalue(), r"a notification costs \d+\.\d\d x a request")
            self.assertIn(" s, 25 % in the kernel)", out.getvalue())

        return Deferred.fromCoroutine(go())


class IdleTests(TestCase):
    """#22's 100,000 connections: the idle scenario spread over nodes and processes, each
    node's RSS, and a sample notified to show each connection is reachable."""

    def test_options(self) -> None:
        o = parse_options(
            [
                *("ws://a:1", "ws://b:2", "--scenario", "idle", "--sample", "5"),
                *("--node-pids", "11,12", "--processes", "3"),
            ]
        )
        self.assertEqual((o.sample, o.node_pids, o.processes), (5, [11, 12], 3))
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        for argv in (
            ["ws://a:1", "--sample", "5"],  # not idle
            ["ws://a:1", "--scenario", "idle", "--sample", "-1"],
            ["ws://a:1", "ws://b:2", "--scenario", "idle", "--node-pids", "11"],  # one per URL
            ["ws://a:1", "--scenario", "idle", "--node-pids", "x"],
        ):
            with self.assertRaises(SystemExit):
                parse_options(argv)

    def test_no_node_sees_more_handshakes_than_it_allows_from_one_address(self) -> None:
        from acmews.bench.idle import (
            HANDSHAKES_PER_NODE,
            MAX_OPEN_CONCURRENCY,
            open_concurrency,
            per_node_concurrency,
        )

        self.assertEqual(open_concurrency(1, 1), MAX_OPEN_CONCURRENCY)
        for nodes in (1, 3, 6):
            for processes in (1, 2, 6, 12):
                # even when every slot of every process waits on one slow node
                at_once = per_node_concurrency(processes) * processes
                self.assertLessEqual(at_once, HANDSHAKES_PER_NODE)
                self.assertGreaterEqual(open_concurrency(nodes, processes), 1)
        self.assertEqual(per_node_concurrency(200), 1)
        self.assertLess(HANDSHAKES_PER_NODE, 128)  # --max-handshakes-per-address's default

    def test_the_sample_is_split_by_process_and_the_counts_summed(self) -> None:
        from acmews.bench.idle import IdleConfig, IdleCounts, sample_for

        self.assertEqual(sample_for([1, 4, 5, 9], 4, 5), [4, 5])
        cfg = IdleConfig(["u0", "u1", "u2"], "json", "t", 4, 1.0, first_connection=4)
        self.assertEqual([cfg.url_for(k) for k in (4, 5, 6)], ["u1", "u2", "u0"])
        self.assertEqual(cfg.originator_for(5), "Cidletx5")
        total = IdleCounts.total(
            {
                "idle:0": {"asked": 3, "opened": 3, "notified": 1},
                "idle:3": {"asked": 2, "opened": 1, "failed": 1},
                "other": {"asked": 100},
            }
        )
        self.assertEqual((total.asked, total.opened, total.failed, total.notified), (5, 4, 1, 1))

    def test_too_many_connections_for_one_process_say_how_many_processes(self) -> Deferred[None]:
        """Each process holds at most its open-file limit: the run says so before it opens
        anything (a connection refused for want of files would be counted as the server's)."""
        from acmews.bench import idle
        from acmews.bench.cli import run
        from acmews.bench.connections import BenchError

        self.assertEqual(idle.processes_needed(100_000, 20_000), 6)
        self.assertEqual(idle.processes_needed(19_936, 20_000), 1)
        self.assertEqual(idle.processes_needed(19_937, 20_000), 2)
        self.patch(idle, "open_files_limit", lambda: 164)

        async def go() -> None:
            from twisted.internet import reactor

            argv = ["ws://127.0.0.1:9", "--scenario", "idle", "--connections", "250"]
            with self.assertRaises(BenchError) as cm:
                await run(reactor, parse_options(argv), io.StringIO())
            said = str(cm.exception)
            self.assertIn("250 connections in one process need more than its 164", said)
            self.assertIn("use --processes 3 or more", said)

        return Deferred.fromCoroutine(go())

    def test_report_per_node(self) -> None:
        from acmews.bench.report import format_report

        d = Result(connections=4, sent=2, answered=1, unanswered=1, latencies=[0.01]).summary()
        d.update(
            url="ws://a:1 + ws://b:2",
            scenario="idle",
            mode="sequential",
            window=1,
            serialization="json",
            processes=2,
            server={
                "nodes": [
                    {
                        "url": "ws://a:1",
                        "pid": 11,
                        "connections": 2048,
                        "rss_before_kib": 10240,
                        "rss_open_kib": 20480,
                        "rss_held_kib": 30720,
                        "cpu_s": 1.0,
                    }
                ]
            },
        )
        d["extra"] = {
            "open_connections": 3,
            "counts": {"asked": 4, "opened": 4, "open_at_end": 3, "sampled": 2, "notified": 1},
        }
        text = format_report(d)
        self.assertIn("3 of 4 still open after the hold", text)
        self.assertIn("node ws://a:1: 2048 connections, RSS 10 MiB before", text)
        self.assertIn("10.0 KiB/connection", text)
        self.assertIn("1/2 notified", text)
        self.assertIn("0 twice", text)
        self.assertIn("CORRECTNESS FAILURE", text)

    def test_each_sampled_connection_is_notified(self) -> Deferred[None]:
        """Against a CSE on port 0: 6 connections, 3 of them sampled, registered and
        subscribed; the contentInstance after the hold reaches all 3, and the run cleans up."""

        async def go() -> None:
            from twisted.internet import reactor

            from acmews.bench.cli import run
            from acmews.bench.progress import Progress

            from .helpers import start_cse

            _, url = await start_cse(self)
            argv = ["--scenario", "idle", "--connections", "6", "--sample", "3"]
            argv += ["--duration", "0.1", "--node-pids", str(os.getpid())]
            out = io.StringIO()
            code = await run(reactor, parse_options([url, *argv]), out, Progress(io.StringIO()))
            text = out.getvalue()
            self.assertEqual(code, 0, text)
            self.assertIn("6 of 6 still open after the hold (6 opened, 0 failed", text)
            self.assertIn("3/3 notified (3 subscribed, 0 twice)", text)
            self.assertIn(f"node {url}: 6 connections", text)
            self.assertNotIn("warning", text)

        return Deferred.fromCoroutine(go())
