"""The tour: register an AE on a connection opened without X-M2M-Origin, create a container
and a subscription, write a contentInstance from a second connection (the admin, in CBOR) and
receive the notification on the AE's connection.

With ``twistd -n acmews`` running: ``python examples/tour.py`` (or give the CSE's URL:
``python examples/tour.py ws://127.0.0.1:8180``).
"""

import sys

from twisted.internet import defer, task

from acmews.client import connect
from acmews.codes import ResourceType
from acmews.primitive import Response

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8180"


async def main(reactor):
    notifications = defer.DeferredQueue()

    def on_request(request):  # every request the CSE sends on this connection
        sgn = request.pc["m2m:sgn"]
        if "nev" in sgn:
            # hand it over once this handler has returned, so that the 2000 goes out first
            reactor.callLater(0, notifications.put, sgn)
        return Response(2000, request.rqi, request.rvi)  # also answers a verification (vrq)

    # no originator: the CSE accepts only an AE CREATE on this connection ...
    ae = await connect(URL, handler=on_request).addTimeout(5, reactor)
    r = await ae.create(
        "cse-in",
        ResourceType.AE,
        {"m2m:ae": {"rn": "lamp", "api": "Nlamp", "rr": True, "srv": ["4"]}},
    )
    if r.rsc == 4105:  # Conflict: a lamp left over from a tour that stopped early
        print("An AE named lamp is left over from an earlier run. Delete it with")
        print(f"  acmews request {URL} delete cse-in/lamp --from CAdmin")
        print("and run the tour again.")
        await ae.close()
        return
    # ... then binds it to the assigned AE-ID, which the client adopts as its 'fr'
    print("AE", r.rsc, ae.originator)
    r = await ae.create("cse-in/lamp", ResourceType.CNT, {"m2m:cnt": {"rn": "state", "mni": 3}})
    print("CNT", r.rsc)
    r = await ae.create(
        "cse-in/lamp/state",
        ResourceType.SUB,
        {"m2m:sub": {"rn": "watch", "nu": [ae.originator], "enc": {"net": [3]}}},
    )
    print("SUB", r.rsc)

    admin = await connect(URL, originator="CAdmin", serialization="cbor").addTimeout(5, reactor)
    r = await admin.create("cse-in/lamp/state", ResourceType.CIN, {"m2m:cin": {"con": "on"}})
    print("CIN", r.rsc, "over", admin.subprotocol)

    sgn = await notifications.get().addTimeout(10, reactor)
    print("notification", sgn["nev"]["net"], sgn["nev"]["rep"]["m2m:cin"]["con"], sgn["sur"])
    r = await ae.retrieve("cse-in/lamp/state/la")
    print("latest", r.rsc, r.pc["m2m:cin"]["con"])
    r = await ae.delete("cse-in/lamp")  # deregister (with the subtree), so the tour can run again
    print("deleted", r.rsc)
    await ae.close()
    await admin.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
