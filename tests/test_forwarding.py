"""Forwarding to a remote CSE is bounded (#27.5), over real sockets on 127.0.0.1: a registered
remote CSE that reads and never answers, and one that never reads. Once 206,000 forwarded
requests waited (+450 MB) for the first, +400 MB for the second."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from acmews.client import Client, connect
from acmews.codes import RSC, ResourceType
from acmews.primitive import Request, Response

from .helpers import NO_PING, start_cse

MN = "/id-mn"
PER_LINK = 40
PER_ORIGINATOR = 10
#: five originators of twenty requests each: 100, of which the link takes PER_LINK
ORIGINATORS = [f"Cae{i}" for i in range(5)]
BURST = 20


def _protocol(session: Any) -> Any:
    """The protocol behind a session (its send function is the protocol's bound method)."""
    return session._send.__self__


def _buffered(transport: Any) -> int:
    """Bytes a TCP transport holds for its peer (Twisted's write buffer)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class SaturatedLinkTests(TestCase):
    timeout = 30

    async def start(self) -> tuple[Any, str, Client]:
        service, url = await start_cse(
            self,
            *("--allowed-csr-originators", MN),
            *("--max-forwarded-per-link", str(PER_LINK)),
            *("--max-forwarded-per-originator", str(PER_ORIGINATOR)),
        )
        # the remote CSE: registered, and answers nothing forwarded to it
        mn = await self.client(url, MN, handler=lambda request: Deferred())
        body = {"csi": MN, "cb": f"{MN}/cse-mn", "rr": True, "poa": ["ws://default"]}
        created = await mn.create("cse-in", ResourceType.CSR, {"m2m:csr": body})
        self.assertEqual(created.rsc, RSC.CREATED, created.debug)
        return service, url, mn

    async def client(self, url: str, originator: str, **kw: Any) -> Client:
        client = await connect(url, originator=originator, options=NO_PING, **kw)
        self.addCleanup(lambda: client.close() if client.connected else None)
        return client

    async def burst(self, url: str, pc: Any = None) -> list[Deferred[Response]]:
        """Every originator sends BURST requests for the remote CSE; returns once the CSE
        has taken or refused all of them (each originator's next, local, request is answered
        after its burst)."""
        clients = [await self.client(url, originator) for originator in ORIGINATORS]
        sent: list[Deferred[Response]] = []
        for client in clients:
            for i in range(BURST):
                to = f"{MN}/cse-mn/x{i}"
                if pc is None:
                    sent.append(client.retrieve(to))
                else:
                    sent.append(client.update(to, pc))
        for client in clients:
            self.assertEqual((await client.retrieve("cse-in")).rsc, RSC.OK)
        return sent

    def refused(self, sent: list[Deferred[Response]]) -> list[Response]:
        answered: list[Response] = []
        for d in sent:
            d.addCallback(lambda r: (answered.append(r), r)[1])
        for response in answered:
            self.assertEqual(response.rsc, RSC.TARGET_NOT_REACHABLE)
            self.assertIn("saturated", response.debug or "")
        return answered

    async def test_a_remote_cse_that_reads_and_never_answers(self) -> None:
        service, url, mn = await self.start()
        sent = await self.burst(url)
        self.assertEqual(len(self.refused(sent)), len(sent) - PER_LINK)
        link = service.originators.lookup(MN)
        self.assertEqual(link.pending_count, PER_LINK)
        self.assertEqual(service.cse.forwarding, {MN: PER_LINK})
        # the link goes: every forwarded request is answered (5103), nothing is left counted
        await mn.close()
        responses = await gatherResults(sent)
        self.assertEqual({r.rsc for r in responses}, {RSC.TARGET_NOT_REACHABLE})
        self.assertEqual((service.cse.forwarding, service.cse.forwarding_by), ({}, {}))

    async def test_a_remote_cse_that_never_reads(self) -> None:
        service, url, mn = await self.start()
        _protocol(mn.session).transport.pauseProducing()  # it reads nothing from now on
        content = {"m2m:cnt": {"lbl": ["x" * 200_000]}}
        sent = await self.burst(url, content)
        self.assertEqual(len(self.refused(sent)), len(sent) - PER_LINK)
        link = service.originators.lookup(MN)
        self.assertEqual(link.pending_count, PER_LINK)
        size = len(link.codec.encode(Request(2, "x", "r", fr="f", pc=content)))
        # what waits in this process for the remote CSE: at most the forwarded requests
        self.assertLessEqual(_buffered(_protocol(link).transport), PER_LINK * (size + 200))
        _protocol(mn.session).transport.abortConnection()
        responses = await gatherResults(sent)
        self.assertEqual({r.rsc for r in responses}, {RSC.TARGET_NOT_REACHABLE})
        self.assertEqual((service.cse.forwarding, service.cse.forwarding_by), ({}, {}))
