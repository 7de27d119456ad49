"""Peers that bend the binding: a message in the other serialization than the connection's.

TS-0020 has a oneM2M.cbor connection carry CBOR in binary frames and a oneM2M.json one JSON
in text frames. ACME (the reference CSE) sends its own requests (a NOTIFY, a forwarded
request) as JSON text frames on a oneM2M.cbor connection, and hands its client an answer that
came over a oneM2M.cbor link as a CBOR binary frame on a oneM2M.json connection; it reads
everything by the negotiated subprotocol. acmews reads a text frame on a CBOR connection as
JSON and a binary frame that cannot be JSON (its first byte is not ASCII) on a JSON connection
as CBOR, and answers in the connection's own serialization, which such a peer reads.
"""

from __future__ import annotations

import cbor2
import orjson
from twisted.internet.defer import Deferred

from acmews.codes import RSC
from acmews.interfaces import IConnection
from acmews.primitive import Request, Response
from acmews.testing import RecordingHandler, make_client_factory
from acmews.testing import connected_pair as pair

from .test_protocol import BindingTestCase, Raw, retrieve

CBOR_ONLY = ["oneM2M.cbor"]


def as_json(primitive: Request | Response) -> bytes:
    return orjson.dumps(primitive.to_dict())


def as_cbor(primitive: Request | Response) -> bytes:
    return cbor2.dumps(primitive.to_dict())


class TextFramesOnCborTests(BindingTestCase):
    """The accepting side (the CSE) on a oneM2M.cbor connection."""

    def test_a_json_request_in_a_text_frame_is_answered_in_cbor(self) -> None:
        p = self.connect("Cae1", subprotocols=CBOR_ONLY)
        self.assertEqual(p.server_session.subprotocol, "oneM2M.cbor")
        raw = self.raw(p)
        self.send_raw(p, as_json(retrieve("t1")))
        [(request, _)] = self.handler.requests
        self.assertEqual((request.rqi, request.to, request.fr), ("t1", "cse-in", "Cae1"))
        self.assertEqual(raw.text, [False])  # a binary frame
        answer = cbor2.loads(raw.messages[0])
        self.assertEqual((answer["rsc"], answer["rqi"]), (RSC.OK, "t1"))
        # CBOR in a binary frame on the same connection, as ever
        self.send_raw(p, as_cbor(retrieve("b1")), binary=True)
        self.assertEqual(raw.text, [False, False])
        self.assertEqual(cbor2.loads(raw.messages[1])["rqi"], "b1")

    def test_an_answer_given_later_is_in_cbor_too(self) -> None:
        waiting: list[Deferred[Response]] = []

        def later(request: Request, connection: IConnection) -> Deferred[Response]:
            waiting.append(Deferred())
            return waiting[-1]

        self.handler.answer = later
        p = self.connect("Cae1", subprotocols=CBOR_ONLY)
        raw = self.raw(p)
        self.send_raw(p, as_json(retrieve("text")))
        self.assertEqual(raw.messages, [])
        waiting[0].callback(Response(RSC.OK, "text", "4"))
        p.flush()
        self.assertEqual(raw.text, [False])
        self.assertEqual(cbor2.loads(raw.messages[0])["rqi"], "text")

    def test_a_refused_request_and_bad_json_are_answered_in_cbor(self) -> None:
        p = self.connect("Cae1", subprotocols=CBOR_ONLY)
        raw = self.raw(p)
        self.send_raw(p, as_json(retrieve("other", fr="Cother")))  # not this connection's AE
        self.send_raw(p, b"{not json")
        self.assertEqual(raw.text, [False, False])
        refused, bad = (cbor2.loads(m) for m in raw.messages)
        self.assertEqual(
            (refused["rsc"], refused["rqi"]), (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, "other")
        )
        self.assertEqual(bad["rsc"], RSC.BAD_REQUEST)
        self.assertIn("invalid JSON", bad["pc"]["m2m:dbg"])
        self.assertEqual(self.handler.requests, [])
        self.assertTrue(p.server_session.connected)

    def test_a_json_response_in_a_text_frame_answers_a_request(self) -> None:
        """The CSE's own request (a notification) answered by the peer in JSON text."""
        p = self.connect("Cae1", subprotocols=CBOR_ONLY)
        raw = self.raw(p)
        d = p.server_session.request(
            Request(5, "Cae1", "n1", "4", "/id-in", pc={"m2m:sgn": {"sur": "x"}})  # type: ignore[arg-type]
        )
        p.flush()
        self.assertEqual(cbor2.loads(raw.messages[0])["rqi"], "n1")
        self.send_raw(p, as_json(Response(RSC.OK, "n1", "4")))
        self.assertEqual(self.successResultOf(d).rsc, RSC.OK)

    def test_the_connecting_side_reads_a_json_notify(self) -> None:
        """An AE (or an MN-CSE's link) on a oneM2M.cbor connection: its CSE sends a NOTIFY
        (or a forwarded request) as JSON text; it is handled and answered in CBOR."""
        notified = RecordingHandler()
        p = pair(
            self.server_factory,
            make_client_factory(self.clock, "Cae1", CBOR_ONLY, handler=notified),
        )
        server = Raw()
        p.server.session = server  # type: ignore[assignment]
        notify = Request(5, "Cae1", "acme-1", "4", "/id-in", pc={"m2m:sgn": {"sur": "s"}})  # type: ignore[arg-type]
        p.server.sendMessage(as_json(notify), False)
        p.flush()
        [(request, _)] = notified.requests
        self.assertEqual((request.op, request.rqi, request.pc), (5, "acme-1", notify.pc))
        self.assertEqual(server.text, [False])
        answer = cbor2.loads(server.messages[0])
        self.assertEqual((answer["rsc"], answer["rqi"]), (RSC.OK, "acme-1"))


class CborFramesOnJsonTests(BindingTestCase):
    """A oneM2M.json connection given CBOR in a binary frame."""

    def test_a_cbor_response_answers_a_request(self) -> None:
        """A client's request answered in CBOR (ACME's answer forwarded from a CBOR link)."""
        p = self.connect("Cae1")
        self.assertEqual(p.client_session.subprotocol, "oneM2M.json")
        server = Raw()
        p.server.session = server  # type: ignore[assignment]
        d = p.client_session.request(retrieve("r1", to="/id-mn/cse-mn"))
        p.flush()
        self.assertEqual(orjson.loads(server.messages[0])["rqi"], "r1")
        p.server.sendMessage(as_cbor(Response(RSC.OK, "r1", "4", {"m2m:cb": {"cst": 2}})), True)
        p.flush()
        self.assertEqual(self.successResultOf(d).pc, {"m2m:cb": {"cst": 2}})
        self.assertEqual(server.messages[1:], [])  # nothing to complain about

    def test_a_cbor_request_is_answered_in_json(self) -> None:
        p = self.connect("Cae1")
        raw = self.raw(p)
        self.send_raw(p, as_cbor(retrieve("c1")), binary=True)
        self.send_raw(p, b"\xff\xfe garbage", binary=True)
        self.assertEqual(raw.text, [True, True])
        answer, bad = (orjson.loads(m) for m in raw.messages)
        self.assertEqual((answer["rsc"], answer["rqi"]), (RSC.OK, "c1"))
        self.assertEqual(bad["rsc"], RSC.BAD_REQUEST)
        self.assertIn("invalid CBOR", bad["pc"]["m2m:dbg"])
        # JSON in a binary frame is still JSON
        self.send_raw(p, as_json(retrieve("j1")), binary=True)
        self.assertEqual(orjson.loads(raw.messages[2])["rqi"], "j1")
