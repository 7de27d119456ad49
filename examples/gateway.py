"""A gateway with its own request handler instead of the CSE: it answers a RETRIEVE of
``gw/temperature`` (a moment later, through a Deferred), registers any AE with an AE-ID of
its own, refuses every other operation (4103) and answers 4004 for anything else.

``python examples/gateway.py`` serves on ws://127.0.0.1:8280 (``python examples/gateway.py
PORT`` on another port); try it with
``acmews request ws://127.0.0.1:8280 retrieve gw/temperature --from Cme``.
"""

import itertools
import sys

from twisted.internet import defer, endpoints, task
from zope.interface import implementer

from acmews.codes import RSC, Operation
from acmews.errors import NotFound, OriginatorHasNoPrivilege
from acmews.interfaces import IRequestHandler
from acmews.originators import OriginatorMap
from acmews.primitive import Response
from acmews.protocol import OneM2MServerFactory

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8280  # 8180 is the CSE's (twistd acmews)


@implementer(IRequestHandler)
class Gateway:
    def __init__(self, reactor):
        self.reactor = reactor
        self.ids = itertools.count(1)

    def handle_request(self, request, connection):
        # connection.originator: the X-M2M-Origin, or the AE-ID after an AE CREATE, or None
        if request.is_ae_create:
            aei = f"Cgw{next(self.ids)}"
            return Response(RSC.CREATED, request.rqi, request.rvi, {"m2m:ae": {"aei": aei}})
        if request.op == Operation.RETRIEVE and request.to == "gw/temperature":
            # answering later is fine: return a Deferred
            return task.deferLater(
                self.reactor,
                0.1,
                lambda: Response(RSC.OK, request.rqi, request.rvi, {"m2m:cin": {"con": "21.5"}}),
            )
        if request.op != Operation.RETRIEVE:
            raise OriginatorHasNoPrivilege(f"{connection.originator} may only read here")  # 4103
        raise NotFound(f"nothing at {request.to!r}")  # 4004


async def main(reactor):
    originators = OriginatorMap()
    factory = OneM2MServerFactory(Gateway(reactor), originators, reactor=reactor)
    where = f"tcp:{PORT}:interface=127.0.0.1"
    await endpoints.serverFromString(reactor, where).listen(factory)
    print(f"gateway serving on ws://127.0.0.1:{PORT}; Ctrl-C to stop")
    await defer.Deferred()  # serve until interrupted


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
