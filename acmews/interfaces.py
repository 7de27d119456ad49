"""The extension points of the binding and its originator/poa machinery, as zope interfaces.

Providers carry ``@implementer``; tests check them with ``verifyObject``. Nothing here imports
the reactor (or anything that does), nor the embedded CSE: its resource store interface is
:class:`acmews.cse.store.IResourceStore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from twisted.internet.defer import Deferred

    from acmews.handshake import Authorization, Handshake
    from acmews.primitive import Notification, Primitive, Request, Response


class ICodec(Interface):
    """A serialization of primitives, named after its WebSocket subprotocol."""

    name: str = Attribute("The subprotocol name, e.g. 'oneM2M.json'.")
    is_binary: bool = Attribute("True if messages go in binary frames, False for text frames.")

    def decode(data: bytes) -> Primitive:
        """Bytes to a validated primitive; raises PrimitiveError and nothing else."""

    def encode(primitive: Primitive | Notification) -> bytes:
        """A primitive to bytes (a :class:`~acmews.primitive.Notification` as the request it
        stands for)."""

    def loads(data: bytes) -> Any:
        """Bytes to a plain value; raises PrimitiveError and nothing else."""

    def dumps(obj: Any) -> bytes:
        """A plain value to bytes."""


class IConnection(Interface):
    """One live oneM2M connection (a WebSocket, whichever side opened it)."""

    originator: str | None = Attribute(
        "The originator the connection is bound to (X-M2M-Origin or the AE-ID assigned by "
        "an AE CREATE on it), or None while unbound."
    )
    subprotocol: str = Attribute("The negotiated subprotocol, e.g. 'oneM2M.json'.")
    peer: str = Attribute("A printable description of the remote end, for logs.")
    authorization: Authorization = Attribute(
        "What the opening handshake proved of the peer (acmews.handshake.Authorization): its "
        "credential (an AE registered on the connection belongs to it), whether its "
        "originator is verified, which AE-IDs it may hold."
    )

    def request(request: Request, timeout: float | None = None) -> Deferred[Response]:
        """Send a request and return a Deferred that fires with the peer's response.

        It fails with RequestTimeout (4008) when no response arrives in time and with
        TargetNotReachable (5103) when the connection is lost first. Cancelling it forgets
        the request.
        """

    def request_then(
        request: Request, then: Callable[[Any], object], timeout: float | None = None
    ) -> None:
        """Send a request as :meth:`request` does, but call ``then`` once with the response
        or a Failure instead of returning a Deferred (the fan-out of notifications sends
        many, and needs no Deferred for each). ``then`` may be called before this returns
        (a request that cannot be sent)."""

    def close(code: int = 1000, reason: str = "") -> None:
        """Close the connection; every pending request fails with 5103."""

    def when_closed() -> Deferred[None]:
        """A Deferred that fires (with None) once the connection is gone."""


class IRequestHandler(Interface):
    """What answers incoming requests: the embedded CSE, or a gateway's own code."""

    def handle_request(request: Request, connection: IConnection) -> Deferred[Response] | Response:
        """Answer ``request`` that arrived on ``connection``.

        ``connection.originator`` is the originator the connection is bound to (None for an
        unbound connection, which only ever passes on an AE CREATE). Raising, or failing the
        Deferred, with a OneM2MError answers with its rsc; anything else answers 5000.
        """


class IOriginatorObserver(Interface):
    """Told when an originator gains or loses its live connection."""

    def originator_connected(originator: str, connection: IConnection) -> None:
        """``connection`` is now the route to ``originator``."""

    def originator_disconnected(originator: str, connection: IConnection) -> None:
        """``connection`` is no longer the route to ``originator``."""


class IOriginatorMap(Interface):
    """Originator -> live connection, newest connection wins."""

    def bind(originator: str, connection: IConnection) -> None:
        """Route ``originator`` to ``connection``; an older connection for it is closed."""

    def unbind(originator: str, connection: IConnection) -> bool:
        """Remove the route only if it still points at ``connection``; True if removed."""

    def lookup(originator: str) -> IConnection | None:
        """The live connection for ``originator``, or None."""

    def add_observer(observer: IOriginatorObserver) -> None:
        """Tell ``observer`` about every connect and disconnect from now on."""

    def remove_observer(observer: IOriginatorObserver) -> None:
        """Stop telling ``observer``."""

    def add_connection(connection: IConnection) -> None:
        """Track a live connection that is not bound (yet), so that stopping closes it too."""

    def remove_connection(connection: IConnection) -> None:
        """Forget a connection that is gone, and its route if it still has one."""


class IHandshakeAuthorizer(Interface):
    """Decides, at the opening handshake, which originator a connection speaks for."""

    def authorize(
        handshake: Handshake,
    ) -> Deferred[Authorization] | Authorization | str | None:
        """The decision: an :class:`~acmews.handshake.Authorization` (the originator to bind
        the connection to, or None to leave it unbound so that it may only register an AE,
        and the credential that owns what it registers), or just the originator.

        Refuse by raising (or failing the Deferred with)
        :class:`~acmews.handshake.HandshakeRefused`, which carries the HTTP status and reason;
        any other exception refuses with 500. Nothing is bound before the decision.
        """


class IPoaConnector(Interface):
    """How a poa URL scheme is reached (ws, wss, http, ..., or a gateway's own)."""

    schemes: Sequence[str] = Attribute("The URL schemes handled, e.g. ('ws', 'wss').")

    def send(url: str, request: Request, timeout: float) -> Deferred[Response]:
        """Deliver ``request`` to ``url`` and fire with the response.

        Fail with TargetNotReachable (5103) or RequestTimeout (4008) when it cannot be
        delivered or answered, so that the poa chain goes on with the next entry.
        """


class IRequestSender(Interface):
    """Sends a request the CSE originates (notification, verification, forwarding)."""

    def send(
        target: str,
        request: Request,
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> Deferred[Response]:
        """Deliver ``request`` to ``target``: an originator ID (AE-ID, CSE-ID) or a URL.

        ``poa`` lists the target's points of access in order. With ``store`` a request that
        cannot be delivered now is kept for later delivery and the Deferred fires with an
        ACCEPTED (1000) response; otherwise it fails with TargetNotReachable (5103).
        """

    def send_then(
        target: str,
        request: Request,
        then: Callable[[Any], object],
        poa: Sequence[str] = (),
        store: bool = False,
    ) -> None:
        """Deliver ``request`` as :meth:`send` does, but call ``then`` once with the
        response or a Failure instead of returning a Deferred (a sender may deliver to a
        live connection with no Deferred at all). ``then`` may be called before this
        returns.

        A sender whose ``takes_notifications`` attribute is true also takes a
        :class:`~acmews.primitive.Notification` (the parts of a fan-out's plain
        notification) as ``request``; any other sender gets the
        :class:`~acmews.primitive.Request` it stands for."""


class IClusterRelay(Interface):
    """The live connections of the other nodes of a cluster serving one CSE: step 1 of the poa
    chain ("a live connection anywhere in the cluster") after this node's own."""

    def relay(
        target: str, request: Request, timeout: float, stored: bool = False
    ) -> Deferred[Response]:
        """Send ``request`` on ``target``'s live connection on another node, with the
        sender's ``timeout``; fire with its response. ``stored``: a notification that may be
        queued instead (the holding node refuses it, as NoClusterRoute, while it delivers
        ``target``'s queue: it goes behind).

        Fail with :class:`~acmews.errors.NoClusterRoute` when no other node holds one (or
        the directory cannot be asked), with RequestTimeout (4008) when no answer comes in
        time, with TargetNotReachable (5103) when that connection failed.
        """

    def holder(target: str) -> Deferred[str | None]:
        """The name of the other node that holds ``target``'s live connection, or None."""

    def queued(target: str) -> None:
        """Notifications were queued for ``target``: the node holding it should flush them."""
