"""When a request may run: its ``rqet``, ``rset`` and ``oet`` (TS-0004 7.3.2.1, TS-0001 8.1.2).

Each is an absolute timestamp or a relative time (ms, or an ISO 8601 duration like ``PT2S``)
counted from the request's arrival. A request whose ``rqet`` (request expiration) or ``rset``
(result expiration) has passed gets 4008; one that could only expire before it runs (an
``oet`` not before its ``rqet`` or ``rset``, or an ``rset`` before its ``rqet``) gets 4000, as
the reference implementations answer; an ``oet`` (operation execution time) in the future
delays the operation until then (TS-0004 7.3.3.6 to 7.3.3.9).
"""

from __future__ import annotations

from acmews.errors import BadRequest, RequestTimeout
from acmews.primitive import Request
from acmews.timestamps import parse_expiry

__all__ = ["MAX_DELAYED", "MAX_EXECUTION_DELAY", "execution_delay"]

#: the furthest ``oet`` ahead this CSE waits for, in seconds (its policy: beyond, 4000)
MAX_EXECUTION_DELAY = 86400.0
#: requests that may wait for their ``oet`` at once (beyond, 5103 until some have run)
MAX_DELAYED = 1000


def execution_delay(request: Request, now: float) -> float:
    """Seconds until ``request``'s operation may run (0: at once); 4008 if it expired (its
    ``rqet`` or ``rset`` is not after ``now``), 4000 if its times are out of order."""
    rqet = parse_expiry(request.rqet, now)
    rset = parse_expiry(request.rset, now)
    oet = parse_expiry(request.oet, now)
    if rqet is not None and rqet <= now:
        raise RequestTimeout(f"the request expired: its rqet {request.rqet!r} has passed")
    if rset is not None and rset <= now:
        raise RequestTimeout(f"the result expired: its rset {request.rset!r} has passed")
    if rqet is not None and rset is not None and rset < rqet:
        raise BadRequest("the result expiration (rset) may not come before the request's (rqet)")
    if oet is None or oet <= now:
        return 0.0
    if (rqet is not None and oet >= rqet) or (rset is not None and oet >= rset):
        raise BadRequest(
            "the operation execution time (oet) must come before the request's and the "
            "result's expiration (rqet, rset)"
        )
    if oet - now > MAX_EXECUTION_DELAY:
        raise BadRequest(
            f"the operation execution time (oet) may be at most {MAX_EXECUTION_DELAY:g} s ahead"
        )
    return oet - now
