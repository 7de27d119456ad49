"""A meter: registers the AE ``Cmeter1`` (resource name ``meter1``), writes three readings
into its container ``readings``, reads the latest back and deregisters.

Against a CSE without credentials: ``python examples/meter.py``. Against one started with
``--basic-auth-file examples/users.txt``, as the user ``meters`` (who may claim ``Cmeter*``):
``ACMEWS_PASSWORD=m3ter python examples/meter.py ws://127.0.0.1:8180 meters``.
"""

import os
import sys

from twisted.internet import defer, task

from acmews.client import connect
from acmews.codes import ResourceType
from acmews.handshake import basic_authorization

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8180"
USER = sys.argv[2] if len(sys.argv) > 2 else None


async def main(reactor):
    headers = None
    if USER is not None:  # the password from the environment, never the command line
        headers = {"Authorization": basic_authorization(USER, os.environ["ACMEWS_PASSWORD"])}
    meter = await connect(URL, originator="Cmeter1", headers=headers).addTimeout(5, reactor)
    r = await meter.create(
        "cse-in", ResourceType.AE, {"m2m:ae": {"rn": "meter1", "api": "Nmeter", "rr": False}}
    )
    print("registered", r.rsc, meter.originator)
    if r.rsc != 2001:
        print(r.debug)  # 4105: a meter1 is left over (acmews request ... delete cse-in/meter1)
        await meter.close()
        raise SystemExit(1)
    await meter.create("cse-in/meter1", ResourceType.CNT, {"m2m:cnt": {"rn": "readings"}})
    for value in ("41.5", "41.7", "42.0"):
        r = await meter.create(
            "cse-in/meter1/readings", ResourceType.CIN, {"m2m:cin": {"con": value}}
        )
        print("reading", value, r.rsc)
    r = await meter.retrieve("cse-in/meter1/readings/la")
    print("latest", r.pc["m2m:cin"]["con"])
    r = await meter.delete("cse-in/meter1")
    print("deregistered", r.rsc)
    await meter.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
