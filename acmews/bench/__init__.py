"""Load generator for oneM2M over WebSocket (TS-0020): ``python -m acmews.bench URL``.

It measures requests/s, latency percentiles and response codes, and - first of all - whether
every request got exactly one answer with its own ``rqi`` (a server that mixes up pipelined
responses is caught here). With ``--server-pid`` it reads the server's CPU time from /proc,
which gives *server CPU per request*, the figure that survives a noisy machine.

The client side is built to cost less than the server it measures: its own lean WebSocket
client (:mod:`acmews.bench.leanclient`), requests pre-serialised once (only the fixed-width
``rqi`` changes), responses parsed for ``rqi``/``rsc`` only, and ``--processes`` worker
processes, each with its own reactor, for servers faster than one client process.

The modules, from the wire up: :mod:`~acmews.bench.leanclient` (handshake and client protocol;
frames come from :mod:`acmews.wsframe`), :mod:`~acmews.bench.ledger` (accounting, results,
statistics), :mod:`~acmews.bench.connections` (pre-serialised requests, opening connections,
one request at a time), :mod:`~acmews.bench.load` (one load process),
:mod:`~acmews.bench.workers` (``--processes``), :mod:`~acmews.bench.scenarios`,
:mod:`~acmews.bench.report` and :mod:`~acmews.bench.cli`. Apart from the load generator,
``python -m acmews.bench.restart`` (:mod:`~acmews.bench.restart`) times a restart of
``twistd acmews`` on a SQLite store of many contentInstances.
"""

from acmews.bench.cli import main

__all__ = ["main"]
