"""A base TestCase for the embedded CSE tests (no sockets), on acmews.testing's memory_cse."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation
from acmews.cse import CSEConfig
from acmews.primitive import Request, Response
from acmews.testing import ADMIN, Sent, memory_cse


class CSETestCase(SynchronousTestCase):
    #: the CSE's configuration (None: memory_cse's default)
    config: CSEConfig | None = None

    def setUp(self) -> None:
        self.new_cse()
        self.addCleanup(self._no_delayed_calls)
        self.addCleanup(self._nothing_sent_on_the_connection)

    def new_cse(self) -> None:
        """A new clock, sender and CSE (an empty resource tree)."""
        memory = memory_cse(self.config)
        self.clock = memory.clock
        self.sender = memory.sender
        self.cse = memory.cse
        self.connection = memory.connection
        self._n = 0

    def _no_delayed_calls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def _nothing_sent_on_the_connection(self) -> None:
        """The CSE sends through its IRequestSender, never on the requester's connection."""
        self.assertEqual(self.connection.sent, [])

    def handle(
        self, op: int, to: str, fr: str | None = ADMIN, **kw: Any
    ) -> Deferred[Response] | Response:
        self._n += 1
        rqi = kw.pop("rqi", f"rq{self._n}")
        rvi = kw.pop("rvi", "4")
        return self.cse.handle_request(
            Request(Operation(op), to, rqi, rvi, fr, **kw), self.connection
        )

    def call(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        result = self.handle(op, to, fr, **kw)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def ok(self, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        response = self.call(op, to, fr, **kw)
        self.assertTrue(response.ok, f"{response.rsc} {response.debug}")
        return response

    def fails(self, rsc: RSC, op: int, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        response = self.call(op, to, fr, **kw)
        self.assertEqual(response.rsc, rsc, response.debug)
        self.assertIsInstance(response.debug, str)
        self.assertTrue(response.debug)
        return response

    # --- shortcuts ----------------------------------------------------------------------------

    def retrieve(self, to: str, fr: str | None = ADMIN, **kw: Any) -> Response:
        return self.call(2, to, fr, **kw)

    def register(self, fr: str | None = None, poa: list[str] | None = None, **attrs: Any) -> str:
        body: dict[str, Any] = {"api": "Nmyapp", "rr": True, "srv": ["4"]}
        if poa is not None:
            body["poa"] = poa
        body.update(attrs)
        response = self.ok(1, "cse-in", fr, ty=2, pc={"m2m:ae": body})
        self.assertEqual(response.rsc, RSC.CREATED)
        aei: str = response.pc["m2m:ae"]["aei"]
        return aei

    def create(self, to: str, ty: int, key: str, fr: str = ADMIN, **attrs: Any) -> dict[str, Any]:
        response = self.call(1, to, fr, ty=ty, pc={key: attrs})
        self.assertEqual(response.rsc, RSC.CREATED, response.debug)
        body: dict[str, Any] = response.pc[key]
        return body

    def subscribe(
        self, to: str, fr: str = ADMIN, verify: bool = True, **attrs: Any
    ) -> dict[str, Any]:
        """Create a subscription, answering every verification request with 2000."""
        d = self.handle(1, to, fr, ty=23, pc={"m2m:sub": attrs})
        if verify:
            for sent in self.sender.take():
                self.assertFalse(sent.store)
                sent.answer(RSC.OK)
        assert isinstance(d, Deferred)
        response = self.successResultOf(d)
        self.assertEqual(response.rsc, RSC.CREATED, response.debug)
        body: dict[str, Any] = response.pc["m2m:sub"]
        return body

    def flush(self) -> list[Sent]:
        """Run the scheduled notifications (every batch of them); return what they sent."""
        self.clock.advance(0)
        now = self.clock.seconds()
        while any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
            self.clock.advance(0)
        return self.sender.take()
