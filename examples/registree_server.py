"""An AE with a WebSocket server of its own (``acmews.client.listen``): it serves on
ws://127.0.0.1:9000, registers an AE named ``meter`` with that address as its ``poa``,
creates a container ``readings`` with a subscription to it, closes its connection to the CSE
and prints every request the CSE then brings to it over a connection the CSE opens. Ctrl-C
deletes the AE (and its subtree) again.

With ``twistd -n acmews`` running: ``python examples/registree_server.py`` (or
``python examples/registree_server.py CSE_URL PORT``), then from another terminal
``acmews request ws://127.0.0.1:8180 create cse-in/meter/readings --ty cin
--pc '{"m2m:cin": {"con": "42"}}' --from CAdmin``.
"""

import sys

from twisted.internet import defer, task

from acmews.client import connect, listen
from acmews.codes import ResourceType
from acmews.primitive import Response

CSE = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8180"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
MINE = f"ws://127.0.0.1:{PORT}"


def on_request(request):  # requests the CSE sends over the connection it opened to us
    print("received", request.op.name, request.to, request.pc, flush=True)
    return Response(2000, request.rqi, request.rvi)


async def main(reactor):
    await listen(f"tcp:{PORT}:interface=127.0.0.1", on_request, reactor=reactor)
    print(f"serving on {MINE}; Ctrl-C to stop")
    ae = await connect(CSE, reactor=reactor).addTimeout(5, reactor)
    r = await ae.create(
        "cse-in",
        ResourceType.AE,
        {"m2m:ae": {"rn": "meter", "api": "Nmeter", "rr": True, "poa": [MINE]}},
    )
    if r.rsc != 2001:
        print("registration failed:", r.rsc, r.debug)  # 4105: delete the old cse-in/meter
        await ae.close()
        return
    aei = ae.originator
    await ae.create("cse-in/meter", ResourceType.CNT, {"m2m:cnt": {"rn": "readings"}})
    await ae.create(
        "cse-in/meter/readings",
        ResourceType.SUB,
        {"m2m:sub": {"rn": "mine", "nu": [aei], "enc": {"net": [3]}}},
    )
    await ae.close()  # from now on requests for the AE arrive through our own server
    print("registered as", aei, flush=True)

    async def deregister():
        again = await connect(CSE, originator=aei, reactor=reactor).addTimeout(5, reactor)
        await again.delete("cse-in/meter")
        await again.close()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(deregister()))
    await defer.Deferred()  # serve until interrupted


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
