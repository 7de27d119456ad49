"""The configuration of the embedded CSE."""

from __future__ import annotations

from dataclasses import dataclass

from acmews.codes import DEFAULT_RELEASE
from acmews.options import DEFAULT_NOTIFICATION_EXPIRY, DEFAULT_REQUEST_TIMEOUT

__all__ = ["DEFAULT_MAX_FORWARDED_PER_LINK", "DEFAULT_MAX_FORWARDED_PER_ORIGINATOR", "CSEConfig"]

#: requests forwarded to one next hop (a CSE link, an AE relayed to) waiting for an answer,
#: in all and per originator; past them a request gets 5103 at once
DEFAULT_MAX_FORWARDED_PER_LINK = 1000
DEFAULT_MAX_FORWARDED_PER_ORIGINATOR = 100


@dataclass(frozen=True, slots=True)
class CSEConfig:
    """Identity and policy of the embedded CSE (ACME-compatible defaults)."""

    cse_id: str = "/id-in"
    cse_name: str = "cse-in"
    sp_id: str = "//acmews.example.com"
    admin: str = "CAdmin"
    release: str = DEFAULT_RELEASE
    poa: tuple[str, ...] = ()
    #: seconds a notification may wait in store-and-forward (sent as its ``rqet``)
    notification_expiry: float = DEFAULT_NOTIFICATION_EXPIRY
    #: seconds until a new resource's default ``et``
    resource_expiry: float = 5 * 365 * 86400.0
    #: the latest ``et`` a resource may get, in seconds from now: one asked for beyond it is
    #: cut down to it (the reference implementation's default too)
    max_resource_expiry: float = 5 * 365 * 86400.0
    #: seconds to wait for the answer to a subscription verification request
    verification_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: CSE-IDs (glob patterns) that may act as CSEs here (register a remoteCSE, relay
    #: notifications) without proving it; any other needs a verified connection (a credential
    #: or certificate naming it, or the registrar this CSE dialled)
    allowed_csr_originators: tuple[str, ...] = ()
    #: this CSE's registrar, the route for CSEs it knows no other way to (None: it has none)
    registrar_cse_id: str | None = None
    #: the CSEBase's cst: 1 IN-CSE, 2 MN-CSE (one with a registrar), 3 ASN-CSE
    cse_type: int = 1
    #: forwarded requests waiting for an answer from one next hop: past this, 5103 at once
    #: (a remote CSE that reads and never answers held 206,000 and 450 MB once)
    max_forwarded_per_link: int = DEFAULT_MAX_FORWARDED_PER_LINK
    #: the same, per originator and next hop (one originator cannot take the whole link)
    max_forwarded_per_originator: int = DEFAULT_MAX_FORWARDED_PER_ORIGINATOR
    #: seconds a <request> resource (a non-blocking request's result) is kept when the
    #: request sets no rset or rqet (ACME's default too)
    request_expiry: float = 60.0
    #: <request> resources kept per originator and in all: past either, the oldest goes
    max_requests_per_originator: int = 100
    max_requests: int = 10_000
