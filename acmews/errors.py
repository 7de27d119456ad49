"""The exception hierarchy: every error that becomes a oneM2M response maps to its rsc here.

Code anywhere in acmews raises one of these; the single place that turns an exception into a
response primitive is :func:`acmews.primitive.error_response`, which reads ``rsc`` and
``reason`` off the exception.
"""

from __future__ import annotations

from acmews.codes import RSC


class OneM2MError(Exception):
    """An error with a oneM2M response status code and a human-readable reason."""

    rsc: RSC = RSC.INTERNAL_SERVER_ERROR

    def __init__(self, reason: str, *, rqi: str | None = None, rsc: RSC | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rqi = rqi
        if rsc is not None:
            self.rsc = rsc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int(self.rsc)}, {self.reason!r})"


class BadRequest(OneM2MError):
    """rsc 4000: the primitive is malformed."""

    rsc = RSC.BAD_REQUEST


class ReleaseVersionNotSupported(OneM2MError):
    """rsc 4001: ``rvi`` missing or not one we speak."""

    rsc = RSC.RELEASE_VERSION_NOT_SUPPORTED


class NotFound(OneM2MError):
    """rsc 4004: the target does not exist."""

    rsc = RSC.NOT_FOUND


class OperationNotAllowed(OneM2MError):
    """rsc 4005."""

    rsc = RSC.OPERATION_NOT_ALLOWED


class RequestTimeout(OneM2MError):
    """rsc 4008: no response in time."""

    rsc = RSC.REQUEST_TIMEOUT


class ContentsUnacceptable(OneM2MError):
    """rsc 4102."""

    rsc = RSC.CONTENTS_UNACCEPTABLE


class OriginatorHasNoPrivilege(OneM2MError):
    """rsc 4103."""

    rsc = RSC.ORIGINATOR_HAS_NO_PRIVILEGE


class Conflict(OneM2MError):
    """rsc 4105."""

    rsc = RSC.CONFLICT


class InvalidChildResourceType(OneM2MError):
    """rsc 4108: the parent does not accept a child of that resource type."""

    rsc = RSC.INVALID_CHILD_RESOURCE_TYPE


class OriginatorHasAlreadyRegistered(OneM2MError):
    """rsc 4117: an AE asked for an AE-ID that is already registered."""

    rsc = RSC.ORIGINATOR_HAS_ALREADY_REGISTERED


class InternalServerError(OneM2MError):
    """rsc 5000."""

    rsc = RSC.INTERNAL_SERVER_ERROR


class NotImplementedOp(OneM2MError):
    """rsc 5001."""

    rsc = RSC.NOT_IMPLEMENTED


class TargetNotReachable(OneM2MError):
    """rsc 5103: nothing delivered the request (connection lost, no route)."""

    rsc = RSC.TARGET_NOT_REACHABLE


class NoClusterRoute(TargetNotReachable):
    """No other node of the cluster holds a live connection for the target (or the cluster's
    directory cannot be asked): the poa chain goes on with the next step."""


class NotAcceptable(OneM2MError):
    """rsc 5207: e.g. a contentInstance larger than its container's ``mbs``."""

    rsc = RSC.NOT_ACCEPTABLE


class SubscriptionVerificationInitiationFailed(OneM2MError):
    """rsc 5204."""

    rsc = RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED


class RemoteError(OneM2MError):
    """Another oneM2M entity answered with an error, e.g. a registrar refusing this CSE's
    registration: ``rsc`` is its rsc (5000 when acmews does not know it), ``debug`` its
    ``m2m:dbg``."""

    def __init__(self, reason: str, rsc: int, debug: str | None = None) -> None:
        try:
            code: RSC | None = RSC(rsc)
        except ValueError:
            code = None
        super().__init__(reason, rsc=code)
        self.debug = debug


class PrimitiveError(BadRequest):
    """A message that is not a valid primitive; carries the rsc to answer (4000 or 4001).

    ``is_response`` is set when the message had an ``rsc``: a broken response is logged and
    dropped, never answered (two peers would otherwise answer each other's errors forever).
    """

    is_response: bool = False
