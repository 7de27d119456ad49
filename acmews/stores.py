"""Opening the store a URL names, whichever module keeps it: ``memory:`` and
``sqlite:PATH`` (:mod:`acmews.durable`), ``postgresql://...`` (:mod:`acmews.pgstore`, which
needs ``pip install 'acmews[postgresql]'``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from acmews import durable
from acmews.durable import Store

__all__ = ["open_store"]


def open_store(
    url: str,
    reactor: Any,
    *,
    cse_id: str | None = None,
    run: Callable[..., Deferred[Any]] | None = None,
    **queue_options: Any,
) -> Store:
    """Open the store ``url`` names: ``sqlite:PATH``, ``postgresql://[USER@]HOST[:PORT]/DBNAME``
    (``postgres://`` too) or ``memory:``; StoreError if it cannot be used (one line), ValueError
    for another URL. It reads the whole tree into memory before it returns: call it at
    start-up, not from a running reactor. ``queue_options`` are the queue's bounds; with
    ``cse_id``, a store holding another CSE's resources is refused (StoreError)."""
    scheme, _, rest = url.partition(":")
    if scheme in ("postgresql", "postgres") and rest.startswith("//"):
        from acmews.pgstore import open_postgresql_store  # psycopg: an optional extra

        return open_postgresql_store(url, reactor, cse_id=cse_id, run=run, **queue_options)
    return durable.open_store(url, reactor, cse_id=cse_id, run=run, **queue_options)
