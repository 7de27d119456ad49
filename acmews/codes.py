"""oneM2M enumerations: operations, response status codes, resource types, access control
operations (TS-0004)."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Operation(IntEnum):
    CREATE = 1
    RETRIEVE = 2
    UPDATE = 3
    DELETE = 4
    NOTIFY = 5


class RSC(IntEnum):
    """Response status codes used by acmews."""

    ACCEPTED = 1000
    ACCEPTED_NON_BLOCKING_SYNC = 1001
    ACCEPTED_NON_BLOCKING_ASYNC = 1002
    OK = 2000
    CREATED = 2001
    DELETED = 2002
    UPDATED = 2004
    BAD_REQUEST = 4000
    RELEASE_VERSION_NOT_SUPPORTED = 4001
    NOT_FOUND = 4004
    OPERATION_NOT_ALLOWED = 4005
    REQUEST_TIMEOUT = 4008
    UNSUPPORTED_MEDIA_TYPE = 4015
    SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE = 4101
    CONTENTS_UNACCEPTABLE = 4102
    ORIGINATOR_HAS_NO_PRIVILEGE = 4103
    CONFLICT = 4105
    ORIGINATOR_NOT_AUTHENTICATED = 4106
    INVALID_CHILD_RESOURCE_TYPE = 4108
    ORIGINATOR_HAS_ALREADY_REGISTERED = 4117
    BLOCKING_SUBSCRIPTION_ALREADY_EXISTS = 4124
    OPERATION_DENIED_BY_REMOTE_ENTITY = 4127
    INTERNAL_SERVER_ERROR = 5000
    NOT_IMPLEMENTED = 5001
    TARGET_NOT_REACHABLE = 5103
    RECEIVER_HAS_NO_PRIVILEGE = 5105
    ALREADY_EXISTS = 5106
    REMOTE_ENTITY_NOT_REACHABLE = 5107
    TARGET_NOT_SUBSCRIBABLE = 5203
    SUBSCRIPTION_VERIFICATION_INITIATION_FAILED = 5204
    NOT_ACCEPTABLE = 5207
    MAX_NUMBER_OF_MEMBER_EXCEEDED = 6010
    MEMBER_TYPE_INCONSISTENT = 6011


def rsc_text(rsc: int) -> str:
    """A response status code with its name, as a person reads it: ``4004 Not Found``
    (``4999`` alone when acmews does not know the code)."""
    try:
        name = RSC(rsc).name
    except ValueError:
        return str(rsc)
    words = " ".join(w if w == "OK" else w.capitalize() for w in name.split("_"))
    return f"{int(rsc)} {words}"


class ResourceType(IntEnum):
    ACP = 1
    AE = 2
    CNT = 3
    CIN = 4
    CSEBASE = 5
    GRP = 9
    MGMTOBJ = 13
    NOD = 14
    PCH = 15
    CSR = 16
    REQ = 17
    SUB = 23
    FCNT = 28
    TS = 29
    TSI = 30
    FCI = 58


class ResultContent(IntEnum):
    NOTHING = 0
    ATTRIBUTES = 1
    HIERARCHICAL_ADDRESS = 2
    HIERARCHICAL_ADDRESS_AND_ATTRIBUTES = 3
    ATTRIBUTES_AND_CHILD_RESOURCES = 4
    ATTRIBUTES_AND_CHILD_RESOURCE_REFERENCES = 5
    CHILD_RESOURCE_REFERENCES = 6
    ORIGINAL_RESOURCE = 7
    CHILD_RESOURCES = 8
    MODIFIED_ATTRIBUTES = 9


class ResponseType(IntEnum):
    NON_BLOCKING_SYNC = 1
    NON_BLOCKING_ASYNC = 2
    BLOCKING = 3
    FLEX_BLOCKING = 4
    NO_RESPONSE = 5


class RequestStatus(IntEnum):
    """``rs`` of a <request> resource: where the request it stands for is."""

    COMPLETED = 1
    FAILED = 2
    PENDING = 3
    FORWARDED = 4
    PARTIALLY_COMPLETED = 5


class ACOP(IntFlag):
    """Access control operations (``acop`` of an access control rule), a bit each."""

    CREATE = 1
    RETRIEVE = 2
    UPDATE = 4
    DELETE = 8
    NOTIFY = 16
    DISCOVERY = 32


class NotificationEventType(IntEnum):
    UPDATE = 1
    DELETE = 2
    CREATE_CHILD = 3
    DELETE_CHILD = 4
    #: a RETRIEVE of a container that holds no contentInstance
    RETRIEVE_EMPTY_CONTAINER = 5
    #: a trigger received for an AE (device triggering; not implemented by this CSE)
    TRIGGER_FOR_AE = 6
    #: an UPDATE blocked until the one notification target has answered
    BLOCKING_UPDATE = 7
    #: missing data points of a timeSeries
    MISSING_DATA = 8


class NotificationContentType(IntEnum):
    ALL_ATTRIBUTES = 1
    MODIFIED_ATTRIBUTES = 2
    RESOURCE_ID = 3
    TRIGGER_PAYLOAD = 4
    TIME_SERIES_NOTIFICATION = 5


class EventCategory(IntEnum):
    """``ec`` (m2m:stdEventCats)."""

    IMMEDIATE = 2
    BEST_EFFORT = 3
    LATEST = 4


#: Release version indicators acmews accepts; it answers with DEFAULT_RELEASE.
SUPPORTED_RELEASES = frozenset({"2a", "3", "4", "5"})
DEFAULT_RELEASE = "4"
