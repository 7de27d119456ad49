"""Notification latency on one node and relayed to another (#22), until ``acmews bench``
has a cluster scenario: two nodes of one CSE in this process (memory stores) sharing the
Redis given, one device connected to node b over loopback, N sequential NOTIFYs sent by
node b (its own connection) and by node a (relayed through Redis), twice each.

    python examples/cluster/relay_latency.py redis://127.0.0.1:6379 2000
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from acmews.client import connect
from acmews.codes import RSC, Operation
from acmews.config import Config
from acmews.options import ConnectionOptions
from acmews.primitive import Request, Response
from acmews.server import CSEService, make_service

NO_PING = ConnectionOptions(ping_interval=0)


async def node(reactor: Any, redis: str, name: str, prefix: str) -> CSEService:
    config = Config(
        listen=("tcp:0:interface=127.0.0.1",),
        store="memory:",
        connection=NO_PING,
        cluster=redis,
        node_name=name,
        cluster_prefix=prefix,
    )
    service = make_service(config, reactor)
    service.privilegedStartService()
    service.startService()
    await service.listening
    assert service.cluster is not None
    await service.cluster.when_available()
    return service


async def main(reactor: Any, redis: str, count: int) -> None:
    prefix = f"relay-latency:{uuid.uuid4().hex}:"
    a, b = await node(reactor, redis, "a", prefix), await node(reactor, redis, "b", prefix)
    assert a.cluster is not None and b.listeners[0].port is not None
    device = await connect(
        f"ws://127.0.0.1:{b.listeners[0].port.getHost().port}",
        originator="Cdevice",
        handler=lambda request: Response(RSC.OK, request.rqi, request.rvi),
        reactor=reactor,
        options=NO_PING,
    )
    for _ in range(1000):
        if await a.cluster.holder("Cdevice") == "b":
            break
    for label, sender in (("same node", b), ("cross node", a)) * 2:
        times = []
        for i in range(count):
            request = Request(
                Operation.NOTIFY, "Cdevice", f"n{i}", fr="/id-in", pc={"m2m:sgn": {"sur": "s"}}
            )
            started = time.perf_counter()
            response = await sender.chain.send("Cdevice", request, store=True)
            times.append(time.perf_counter() - started)
            assert response.rsc == RSC.OK, response
        times.sort()
        print(
            f"{label}: n={count} p50={1000 * times[count // 2]:.3f} ms "
            f"p99={1000 * times[int(count * 0.99)]:.3f} ms "
            f"mean={1000 * statistics.mean(times):.3f} ms"
        )
    await device.close()
    await a.stopService()
    await b.stopService()


if __name__ == "__main__":
    url, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, url, n)))
