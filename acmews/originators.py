"""The originator map: which live connection reaches which originator."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from zope.interface import implementer

from acmews.interfaces import IConnection, IOriginatorMap, IOriginatorObserver
from acmews.logs import Logger

__all__ = ["OriginatorMap"]


@implementer(IOriginatorMap)
class OriginatorMap(Service):
    """Originator -> live connection, as a Twisted service.

    The newest connection for an originator wins (a device whose old TCP connection went
    half-open must be able to come back); the older one is closed with 1000 and a reason.
    :meth:`unbind` checks identity, so a late close of the old connection never removes the
    new route. Stopping the service closes every connection it knows.
    """

    log = Logger()
    name = "originators"

    def __init__(self) -> None:
        self._routes: dict[str, IConnection] = {}
        self._observers: list[IOriginatorObserver] = []
        #: every live connection, bound or not, so that stopService can close them all
        self._connections: set[IConnection] = set()

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, originator: object) -> bool:
        return originator in self._routes

    def originators(self) -> list[str]:
        """The originators that have a live connection now."""
        return list(self._routes)

    def bind(self, originator: str, connection: IConnection) -> None:
        old = self._routes.get(originator)
        self._connections.add(connection)
        if old is connection:
            return
        self._routes[originator] = connection
        if old is not None:
            self.log.info(
                "{originator} reconnected; closing its older connection", originator=originator
            )
            self._notify_disconnected(originator, old)
            old.close(1000, f"replaced by a newer connection for {originator}")
        self.log.info(
            "{originator} connected ({subprotocol}, {peer})",
            originator=originator,
            subprotocol=connection.subprotocol,
            peer=connection.peer,
        )
        for observer in list(self._observers):
            try:
                observer.originator_connected(originator, connection)
            except Exception:
                self.log.failure("originator observer failed on connect")

    def unbind(self, originator: str, connection: IConnection) -> bool:
        if self._routes.get(originator) is not connection:
            return False
        del self._routes[originator]
        self.log.info("{originator} disconnected", originator=originator)
        self._notify_disconnected(originator, connection)
        return True

    def lookup(self, originator: str) -> IConnection | None:
        return self._routes.get(originator)

    def add_observer(self, observer: IOriginatorObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: IOriginatorObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify_disconnected(self, originator: str, connection: IConnection) -> None:
        for observer in list(self._observers):
            try:
                observer.originator_disconnected(originator, connection)
            except Exception:
                self.log.failure("originator observer failed on disconnect")

    # -- every connection, bound or not ----------------------------------------------------

    def add_connection(self, connection: IConnection) -> None:
        """Track a connection that is not bound (yet), so that stopping closes it too."""
        self._connections.add(connection)

    def remove_connection(self, connection: IConnection) -> None:
        """Forget a connection that is gone, and its route if it still has one."""
        self._connections.discard(connection)
        originator = connection.originator
        if originator is not None:
            self.unbind(originator, connection)

    def stopService(self) -> Deferred[object]:
        """Close every connection (1001, going away); fire when all of them are gone."""
        super().stopService()
        connections = list(self._connections)
        if not connections:
            return succeed(None)
        waits: list[Deferred[None]] = []
        for connection in connections:
            waits.append(connection.when_closed())
            connection.close(1001, "the CSE is shutting down")
        return DeferredList(waits, consumeErrors=True)  # type: ignore[return-value]
