"""permessage-deflate (RFC 7692): negotiated when both sides want it, the size limit applied to
the inflated message while it inflates (a decompression bomb closes 1009 before the memory is
spent), and a real ``websockets`` client."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from acmews.codes import RSC, Operation
from acmews.primitive import Request
from acmews.testing import RecordingHandler, make_client_factory, make_server_factory
from acmews.testing import connected_pair as pair

#: a notification-like body: JSON that repeats itself, as oneM2M's does
BODY = {"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": "x" * 10, "cnf": "text/plain:0"}}}}}
#: fifty of them in one request
CONTENT = {f"k{n}": BODY for n in range(50)}


def written(protocol: Any) -> list[int]:
    """Count the bytes ``protocol`` writes to its transport from now on (one-item list)."""
    count = [0]
    write = protocol.transport.write

    def counting(data: bytes) -> None:
        count[0] += len(data)
        write(data)

    protocol.transport.write = counting
    return count


class NegotiationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def connect(self, server: bool, client: bool, **kw: Any) -> Any:
        factory = make_server_factory(RecordingHandler(), self.clock, compression=server, **kw)
        return pair(factory, make_client_factory(self.clock, compression=client))

    def round_trip(self, p: Any) -> tuple[int, Any]:
        """A request whose answer echoes a repetitive body: the bytes the server wrote."""
        count = written(p.server)
        d = p.client_session.request(
            Request(Operation.UPDATE, "cse-in", "u1", fr="Cae1", pc=CONTENT)
        )
        p.flush()
        response = self.successResultOf(d)
        self.assertEqual((response.rsc, response.pc), (RSC.OK, CONTENT))
        return count[0], response

    def test_both_want_it(self) -> None:
        p = self.connect(True, True)
        self.assertIsNotNone(p.server._perMessageCompress)
        self.assertIsNotNone(p.client._perMessageCompress)
        size, _ = self.round_trip(p)
        plain, _ = self.round_trip(self.connect(False, False))
        self.assertLess(size * 10, plain)  # not the server's own uncompressed fast path

    def test_either_side_off(self) -> None:
        for server, client in ((True, False), (False, True)):
            p = self.connect(server, client)
            self.assertIsNone(p.server._perMessageCompress)
            self.assertIsNone(p.client._perMessageCompress)
            self.round_trip(p)

    def test_a_decompression_bomb_closes_1009_before_inflating(self) -> None:
        """20 MB of spaces deflate to about 20 KiB, under the server's 32 KiB limit for a
        frame; inflated, the server stops at the limit."""
        limit = 32 * 1024
        p = self.connect(True, True, max_message_size=limit)
        inflater = p.server._perMessageCompress
        produced = [0]
        decompress = inflater.decompress_message_data

        def counting(data: bytes, max_output_len: int | None = None) -> bytes:
            out: bytes = decompress(data, max_output_len=max_output_len)
            produced[0] += len(out)
            return out

        inflater.decompress_message_data = counting
        bomb = b" " * 20_000_000
        p.client.sendMessage(bomb, False)
        p.flush()
        self.assertEqual(p.client.remoteCloseCode, 1009)
        self.assertLessEqual(produced[0], limit + 1)
        self.assertEqual(p.server_factory.handler.requests, [])


class WebsocketsClientTests(TestCase):
    """The ``websockets`` library offers permessage-deflate by default: it gets it when the CSE
    has --compression, and works without it too. Its client is synchronous: it runs in a
    thread of the reactor's pool."""

    timeout = 20

    async def exchange(self, *argv: str) -> tuple[list[str], dict[str, Any]]:
        from twisted.internet.threads import deferToThread
        from websockets.sync.client import connect

        from .helpers import start_cse

        _, url = await start_cse(self, *argv)

        def run() -> tuple[list[str], dict[str, Any]]:
            with connect(
                url,
                subprotocols=["oneM2M.json"],  # type: ignore[list-item]
                additional_headers={"X-M2M-Origin": "Cws"},
                proxy=None,
                ping_interval=None,
            ) as ws:
                extensions = [type(e).__name__ for e in ws.protocol.extensions]
                request = {"op": 2, "to": "cse-in", "fr": "Cws", "rqi": "w1", "rvi": "4"}
                ws.send(json.dumps(request))
                answer = json.loads(ws.recv(timeout=10))
            return extensions, answer

        result: tuple[list[str], dict[str, Any]] = await deferToThread(run)
        return result

    async def test_compressed(self) -> None:
        extensions, answer = await self.exchange("--compression")
        self.assertEqual(extensions, ["PerMessageDeflate"])
        self.assertEqual((answer["rsc"], answer["rqi"]), (2000, "w1"))
        self.assertEqual(answer["pc"]["m2m:cb"]["csi"], "/id-in")

    async def test_declined_without_compression(self) -> None:
        extensions, answer = await self.exchange()
        self.assertEqual((extensions, answer["rsc"]), ([], 2000))


class AcmewsClientTests(TestCase):
    timeout = 20

    async def test_connect_with_compression(self) -> None:
        from acmews.client import connect

        from .helpers import NO_PING, start_cse

        service, url = await start_cse(self, "--compression")
        client = await connect(url, originator="Cz", options=NO_PING, compression=True)
        response = await client.retrieve("cse-in")
        self.assertEqual(response.rsc, RSC.OK)
        (session,) = service.factory.sessions
        self.assertIsNotNone(session._send.__self__._perMessageCompress)
        await client.close()
