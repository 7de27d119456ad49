"""A poa scheme of your own: ``local://NAME`` reaches a device bridged in-process, through an
``IPoaConnector`` added to a ``PoaChain``. Runs on its own: ``python examples/poa_connector.py``.
"""

from twisted.internet import defer, task
from zope.interface import implementer

from acmews.codes import Operation
from acmews.errors import TargetNotReachable
from acmews.interfaces import IPoaConnector
from acmews.originators import OriginatorMap
from acmews.poa import PoaChain
from acmews.primitive import Request, Response


@implementer(IPoaConnector)
class LocalConnector:
    """poa local://<name>: a device bridged in-process."""

    schemes = ("local",)

    def __init__(self, devices):
        self.devices = devices  # name -> callable(request) -> Response

    def send(self, url, request, timeout):
        device = self.devices.get(url.removeprefix("local://"))
        if device is None:  # fail with 5103 or 4008, and the chain tries the next poa
            return defer.fail(TargetNotReachable(f"{url}: no such device"))
        return defer.succeed(device(request))


async def main(reactor):
    originators = OriginatorMap()
    chain = PoaChain(originators, reactor, timeout=5.0)
    chain.add_connector(LocalConnector({"lamp": lambda r: Response(2000, r.rqi, r.rvi)}))
    notify = Request(
        Operation.NOTIFY,
        "Clamp",
        "n-1",
        "4",
        fr="/id-gw",
        pc={"m2m:sgn": {"sur": "/id-gw/sub1", "nev": {"net": 3, "rep": {}}}},
    )
    response = await chain.send("Clamp", notify, poa=["ws://default", "local://lamp"])
    print(response.rsc)  # 2000: no live connection, ws://default skipped, local:// answered
    stored = await chain.send("Coff", notify, poa=["ws://default"], store=True)
    print(stored.rsc, len(chain.queued("Coff")))  # 1000 1: delivered when Coff connects
    chain.stop()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
