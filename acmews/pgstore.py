"""A CSE shared by several acmews processes: the resource tree and the store-and-forward queue
in one PostgreSQL database (``--store postgresql://...``).

PostgreSQL is the source of truth; each process keeps a validated cache of the tree in memory
(the memory store), so that the CSE's reads stay synchronous, and brings it up to date before
it handles a request (:meth:`PostgreSQLResourceStore.ready`, the one asynchronous gate).

- **A commit-ordered change log.** Every write transaction first takes the row lock of the
  ``version`` row of ``meta`` (``UPDATE ... SET value = value + 1 RETURNING value``): writers
  commit one after another, cluster-wide, and each stamps the rows it writes with its version
  (``resources.ver``; a deletion leaves a tombstone ``(ri, ver)``). Whatever a process has not
  seen yet is the rows and tombstones above the last version it saw.
- **Reads** wait for a refresh that started after they arrived (one statement: the changes
  above the last version seen, and the version itself): a change another process acknowledged
  before the read arrived is seen (read-your-writes across processes). Reads that arrive while
  a refresh is in flight share the next one.
- **Writes** (every operation but RETRIEVE) run while this process holds the version lock in an
  open transaction and has refreshed its cache inside it: the CSE's handlers decide on the
  current state (a container's ``cni``/``cbs`` exact, a name unique under its parent) and their
  batches are written in that transaction. Every write request gated in the same round shares
  the transaction (group commit); the answers go out after COMMIT.
- **Batches made outside the gate** (timers: expiry, a subscription's ``exc`` countdown, an
  answer that waited for a verification) go in the next transaction, validated: the rows they
  update or delete must still have the version the cache had, and their names must be free.
  One that fails is refused and undone (the CSE answers 5000), and the rows it touched are read
  again.

One request is one transaction, as with the SQLite store: the answer only after COMMIT, a
subtree DELETE, a contentInstance with its eviction and counters, a subscription's countdown
all or nothing. A transaction that fails (PostgreSQL restarted, unreachable) is undone in
memory, its requests answered 5000 with the reason; the log says once when PostgreSQL stops
answering and once when it answers again, and every request tries again (no restart needed).

Resource IDs are unique across processes: each takes numbers from a PostgreSQL sequence a
block at a time (:data:`NUMBER_BLOCK`), so :meth:`new_number` stays synchronous.

The queue (:class:`PostgreSQLNotificationQueue`) is one table shared by every process: an
originator's entries are taken by whichever process it connects to, in order, each by one
process only (``SELECT ... FOR UPDATE SKIP LOCKED`` and a lease).

The database: ``meta`` (``schema``: :data:`SCHEMA_VERSION`; ``version``; ``horizon``),
``resources`` (``ri``, ``pi``, ``rn``, ``ty``, ``seq`` for creation order, ``ver``, ``data``:
the record in CBOR), ``tombstones``, ``queue``, and the sequences ``resource_seq`` and
``resource_numbers``. The password comes the libpq ways (``PGPASSWORD``, ``~/.pgpass``, the
URI) and is never logged.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from acmews.codes import Operation
from acmews.cse.resource import Resource
from acmews.cse.store import Batch, IResourceStore
from acmews.durable import ChangeRefused, SQLiteResourceStore, Store, StoreError, _one_line
from acmews.logs import Logger
from acmews.poa.queue import (
    INotificationQueue,
    MemoryNotificationQueue,
    QueuedNotification,
)
from acmews.primitive import Request

__all__ = [
    "NUMBER_BLOCK",
    "SCHEMA_VERSION",
    "PostgreSQL",
    "PostgreSQLNotificationQueue",
    "PostgreSQLResourceStore",
    "open_postgresql",
    "redact",
]

#: the layout this module writes; a database with a higher one is refused (2: the queue's
#: entries name the database session that took them)
SCHEMA_VERSION = 2

#: resource numbers a process takes from the sequence at a time
NUMBER_BLOCK = 1000

#: seconds to connect, and the longest a statement may take (a request fails fast instead)
CONNECT_TIMEOUT = 2
STATEMENT_TIMEOUT = 5.0

#: seconds a session may sit in an open transaction (between a write transaction's two
#: steps: normally milliseconds) before PostgreSQL ends it, releasing its locks
IDLE_IN_TRANSACTION = 30.0

#: seconds a process may hold a queue entry it took before another may take it again
QUEUE_LEASE = 60.0

#: seconds after which a process looks again at an originator's entry another session held
HELD_RETRY = 1.0

#: tombstones are kept for this many versions; a process further behind reads everything again
TOMBSTONE_VERSIONS = 1_000_000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL)",
    "CREATE SEQUENCE IF NOT EXISTS resource_seq",
    # (nextval is the last number of a block: the first block is 1 to NUMBER_BLOCK)
    f"CREATE SEQUENCE IF NOT EXISTS resource_numbers INCREMENT BY {NUMBER_BLOCK}"
    f" MINVALUE {NUMBER_BLOCK} START WITH {NUMBER_BLOCK}",
    "CREATE TABLE IF NOT EXISTS resources ("
    " ri text PRIMARY KEY,"
    " pi text REFERENCES resources (ri),"
    " rn text NOT NULL,"
    " ty integer NOT NULL,"
    " seq bigint NOT NULL DEFAULT nextval('resource_seq'),"
    " ver bigint NOT NULL,"
    " data bytea NOT NULL,"
    " UNIQUE (pi, rn))",
    "CREATE INDEX IF NOT EXISTS resources_ver ON resources (ver)",
    "CREATE TABLE IF NOT EXISTS tombstones (ri text PRIMARY KEY, ver bigint NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tombstones_ver ON tombstones (ver)",
    "CREATE TABLE IF NOT EXISTS queue ("
    " seq bigserial PRIMARY KEY,"
    " originator text NOT NULL,"
    " expires double precision NOT NULL,"
    " rqi text NOT NULL,"
    " data bytea NOT NULL,"
    " taken_until double precision)",
    "CREATE INDEX IF NOT EXISTS queue_originator ON queue (originator, seq)",
    # (2) the session that took an entry: its lease ends with it (a process killed)
    "ALTER TABLE queue ADD COLUMN IF NOT EXISTS taken_by integer",
    "ALTER TABLE queue ADD COLUMN IF NOT EXISTS taken_since timestamptz",
    "INSERT INTO meta (key, value) VALUES ('version', 0), ('horizon', 0) "
    "ON CONFLICT (key) DO NOTHING",
)

#: what a process has not seen yet, in one statement (one snapshot): rows, tombstones, and
#: the version and horizon they go up to
_CHANGES = (
    "SELECT 0, ri, seq, ver, data FROM resources WHERE ver > %(seen)s"
    " UNION ALL SELECT 1, ri, 0, ver, NULL FROM tombstones WHERE ver > %(seen)s"
    " UNION ALL SELECT 2, key, 0, value, NULL FROM meta WHERE key IN ('version', 'horizon')"
    " UNION ALL SELECT 3, ri, seq, ver, data FROM resources WHERE ri = ANY(%(again)s)"
)
_REREAD = "SELECT 3, ri, seq, ver, data FROM resources WHERE ri = ANY(%s)"
_LOCK = "UPDATE meta SET value = value + 1 WHERE key = 'version' RETURNING value"
_INSERT = "INSERT INTO resources (ri, pi, rn, ty, ver, data) VALUES (%s, %s, %s, %s, %s, %s)"
_UPDATE = "UPDATE resources SET data = %s, ver = %s WHERE ri = %s"
_DELETE = "DELETE FROM resources WHERE ri = %s"
_TOMBSTONE = (
    "INSERT INTO tombstones (ri, ver) VALUES (%s, %s)"
    " ON CONFLICT (ri) DO UPDATE SET ver = EXCLUDED.ver"
)
_VERSIONS = "SELECT ri, ver FROM resources WHERE ri = ANY(%s)"

log = Logger()


def redact(url: str) -> str:
    """``url`` without its password (for the log and messages)."""
    url = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def _failure(error: Exception) -> Failure:
    return Failure(error)  # type: ignore[no-untyped-call]


def _reason(failure: Failure) -> str:
    return _one_line(failure.value) if failure.value is not None else "unknown"


class Unavailable(ChangeRefused):
    """PostgreSQL did not answer: the request is answered 5000 with this reason."""


#: one write: (statement kind, ri, pi, rn, ty, data, version expected or None)
_Op = tuple[int, str, str | None, str, int, bytes | None, int | None]
_ADD, _CHANGE, _DROP = 1, 2, 3


@dataclass(slots=True)
class _Submission:
    ops: list[_Op]
    waiter: Deferred[None]
    undo: Callable[[], None]
    #: made outside the gate: validated against the versions it was made on
    outside: bool
    #: ri -> the version the cache had before (undone with the change)
    versions: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class PostgreSQL:
    """The connections to one database: one thread and connection for the write
    transactions, one for refreshes and the queue (each reconnects by itself)."""

    def __init__(
        self, url: str, reactor: Any, run: Callable[..., Deferred[Any]] | None = None
    ) -> None:
        """
        @param run: runs a database call, ``run(function, *args) -> Deferred``; by default on
            a thread of its lane (tests run it inline, on a clock of their own).
        """
        self.url = url
        self._run = run
        self.shown = redact(url)
        self._reactor = reactor
        self._local = threading.local()
        #: one more each time PostgreSQL stops answering
        self._generation = 0
        #: every connection opened (closed by :meth:`stop_threads`)
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._pools: dict[str, ThreadPool] = {}
        #: why PostgreSQL does not answer now (logged once per change), or None
        self.down: str | None = None
        self.closed = False

    def connect(self) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        # (the URI's own options, a search_path say, are kept: ours come after them)
        given = conninfo_to_dict(self.url)
        # (a process that stops between the two steps of a write transaction, frozen or
        # in a debugger, must not hold the version lock, and every node's writes, for long)
        options = (
            f"{given.get('options') or ''} -c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION * 1000)}"
        )
        # a server that vanished without closing the connection (a cable, a firewall) is
        # given up on within seconds, not TCP's minutes: the request fails fast
        unless_given = {
            "connect_timeout": CONNECT_TIMEOUT,
            "tcp_user_timeout": int(STATEMENT_TIMEOUT * 1000),
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        }
        extra: dict[str, Any] = {k: v for k, v in unless_given.items() if k not in given}
        return psycopg.connect(self.url, autocommit=True, options=options.strip(), **extra)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            generation = self._generation
            conn = self._local.conn = self.connect()
            self._local.generation = generation
            with self._lock:
                self._connections = [c for c in self._connections if not c.closed]
                self._connections.append(conn)
        return conn

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """In a database thread: ``function(conn, *args)``; a broken connection is dropped
        (the next call reconnects)."""
        import psycopg

        conn = self._connection()
        try:
            return self._local.generation, function(conn, *args)
        except psycopg.Error as e:
            if conn.closed or isinstance(e, psycopg.OperationalError):
                conn.close()
                self._local.conn = None
            elif not conn.autocommit or conn.info.transaction_status != 0:
                try:
                    conn.rollback()
                except psycopg.Error:
                    conn.close()
                    self._local.conn = None
            raise

    def run(self, lane: str, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """``function(conn, *args)`` on the thread of ``lane``; a Deferred of its result,
        failing with :class:`Unavailable` if PostgreSQL does not answer."""
        if self.closed:
            return fail(Unavailable("the store is closed"))
        if self._run is not None:
            return self._run(self.call, function, *args).addCallbacks(self._answered, self._failed)
        pool = self._pools.get(lane)
        if pool is None:
            pool = self._pools[lane] = ThreadPool(1, 1, f"acmews-pg-{lane}")
            pool.start()
            if len(self._pools) == 1:
                self._reactor.addSystemEventTrigger("during", "shutdown", self.stop_threads)
        d = deferToThreadPool(self._reactor, pool, self.call, function, *args)
        return d.addCallbacks(self._answered, self._failed)

    def _answered(self, answer: tuple[int, Any]) -> Any:
        """A call's result. PostgreSQL is back once a connection opened since it stopped
        answering works (one that was open before may still have finished a statement
        while the server went down: that is no change of state)."""
        generation, result = answer
        if self.down is not None and generation == self._generation:
            self.down = None
            log.info("PostgreSQL {url} answers again", url=self.shown)
        return result

    def _failed(self, failure: Failure) -> Failure:
        import psycopg

        error = failure.value
        if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            reason = _one_line(error)
            if self.down is None:
                self._generation += 1  # (connections opened from now on tell it is back)
                log.error(
                    "PostgreSQL {url} does not answer ({reason}): requests that need it are "
                    "answered 5000 until it does",
                    url=self.shown,
                    reason=reason,
                )
            self.down = reason
            return _failure(Unavailable(f"the store's database does not answer: {reason}"))
        return failure

    def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """Call ``heard(payload)`` on the reactor for every NOTIFY on ``channel``, on a
        thread and connection of their own, reconnecting while PostgreSQL is away, until
        :meth:`stop_threads`."""
        pool = self._pools["listen"] = ThreadPool(1, 1, "acmews-pg-listen")
        pool.start()
        if len(self._pools) == 1:
            self._reactor.addSystemEventTrigger("during", "shutdown", self.stop_threads)
        pool.callInThread(self._listening, channel, heard)

    def _listening(self, channel: str, heard: Callable[[str], None]) -> None:
        import psycopg

        while not self.closed and "listen" in self._pools:
            try:
                conn = self._connection()
                conn.execute(f'LISTEN "{channel}"')
                while not self.closed and "listen" in self._pools:
                    for notify in conn.notifies(timeout=0.5):
                        self._reactor.callFromThread(heard, notify.payload)
            except psycopg.Error:
                conn = getattr(self._local, "conn", None)
                if conn is not None:
                    conn.close()
                self._local.conn = None
                threading.Event().wait(1.0)  # (a thread of its own: PostgreSQL is away)

    def stop_threads(self) -> None:
        """Stop the threads, then close their connections."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.stop()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _select_changes(conn: Any, seen: int, again: list[str]) -> list[tuple[Any, ...]]:
    """What changed above ``seen`` (and the rows ``again``). A process so far behind that
    the tombstones it needs are purged (the horizon is above ``seen``) reads every row, and
    a marker row (4) says that what is not among them is gone."""
    rows = list(conn.execute(_CHANGES, {"seen": seen, "again": again}))
    horizon = max((row[3] for row in rows if row[0] == 2 and row[1] == "horizon"), default=0)
    if horizon > seen:
        rows = list(conn.execute(_CHANGES, {"seen": 0, "again": again}))
        rows.append((4, "", 0, 0, None))
    return rows


def _begin(
    conn: Any,
    seen: int,
    again: list[str],
    outside: list[list[_Op]],
    numbers: int,
) -> tuple[int, list[tuple[Any, ...]], list[str | None], list[int]]:
    """In the writer thread: open the transaction, take the version lock, read what is new,
    write the batches made outside the gate (each validated, under a savepoint)."""
    import psycopg

    conn.autocommit = False
    try:
        version = conn.execute(_LOCK).fetchone()[0]
        rows = _select_changes(conn, seen, again)
        refused: list[str | None] = []
        failed: list[str] = []
        for ops in outside:
            conn.execute("SAVEPOINT change")
            try:
                error = _validate(conn, ops, version)
                if error is None:
                    _write_ops(conn, ops, version)
            except psycopg.IntegrityError as e:
                error = _integrity(e)
            if error is None:
                conn.execute("RELEASE change")
            else:
                conn.execute("ROLLBACK TO change")
                failed.extend(op[1] for op in ops)
            refused.append(error)
        if failed:
            rows.extend(conn.execute(_REREAD, (failed,)))
        blocks = []
        if numbers:
            blocks = [
                row[0]
                for row in conn.execute(
                    "SELECT nextval('resource_numbers') FROM generate_series(1, %s)", (numbers,)
                )
            ]
    except BaseException:
        _abort(conn)
        raise
    return version, rows, refused, blocks


def _integrity(error: Exception) -> str:
    if "unique" in str(error).lower() and "rn" in str(error):
        return "another CSE node created a resource of that name meanwhile"
    if "foreign key" in str(error).lower():
        return "another CSE node deleted its parent meanwhile"
    return _one_line(error)


def _validate(conn: Any, ops: list[_Op], version: int) -> str | None:
    """Why ``ops`` (made outside the gate) may not be written: a row they change or drop
    has another version than the one they were made on (or is gone). A row this
    transaction wrote already (``version``, an earlier batch of this process: the lock is
    ours) is the one they were made on."""
    expected = {op[1]: op[6] for op in ops if op[0] != _ADD}
    if not expected:
        return None
    found = dict(conn.execute(_VERSIONS, (list(expected),)).fetchall())
    for ri, ver in expected.items():
        now = found.get(ri)
        if now != ver and (now != version or now is None):
            return f"another CSE node changed {ri} meanwhile"
    return None


def coalesce(ops: list[_Op]) -> list[_Op]:
    """``ops`` (in the order they were made) less what a later one makes moot: a row added
    and dropped in the same transaction is never written, a change folds into the row's
    addition or its last change, a change of a dropped row goes. Each row is left with one
    op, so that drops, then additions (in order), then changes may be written apart."""
    out: dict[str, _Op] = {}
    for op in ops:
        kind, ri = op[0], op[1]
        before = out.get(ri)
        if before is None:
            out[ri] = op
        elif kind == _CHANGE:
            if before[0] == _ADD:
                out[ri] = (*before[:5], op[5], None)
            elif before[0] == _CHANGE:
                out[ri] = (*before[:5], op[5], before[6])
        elif kind == _DROP:
            if before[0] == _ADD:
                del out[ri]  # (never written: nobody saw it)
            else:
                out[ri] = (*op[:6], before[6])
    return list(out.values())


def _write_ops(conn: Any, ops: list[_Op], version: int) -> None:
    ops = coalesce(ops)
    cursor = conn.cursor()
    drops = [(op[1],) for op in ops if op[0] == _DROP]
    if drops:
        cursor.executemany(_DELETE, drops)
        cursor.executemany(_TOMBSTONE, [(ri, version) for (ri,) in drops])
    adds = [
        (ri, pi or None, rn, ty, version, data)
        for kind, ri, pi, rn, ty, data, _ in ops
        if kind == _ADD
    ]
    if adds:
        cursor.executemany(_INSERT, adds)
    changes = [(op[5], version, op[1]) for op in ops if op[0] == _CHANGE]
    if changes:
        cursor.executemany(_UPDATE, changes)


def _commit(conn: Any, ops: list[_Op], version: int, purge: bool) -> None:
    """In the writer thread: write the gated batches and COMMIT."""
    try:
        if ops:
            _write_ops(conn, ops, version)
        if purge:
            horizon = version - TOMBSTONE_VERSIONS
            if horizon > 0:
                conn.execute("DELETE FROM tombstones WHERE ver <= %s", (horizon,))
                conn.execute("UPDATE meta SET value = %s WHERE key = 'horizon'", (horizon,))
        conn.commit()
    except BaseException:
        _abort(conn)
        raise
    conn.autocommit = True


def _abort(conn: Any) -> None:
    """Roll back and go back to autocommit, or close ``conn`` if it cannot (a connection
    broken in the middle of a statement): the caller raises its own error, not this one's,
    and the next call reconnects."""
    try:
        if not conn.closed:
            conn.rollback()
            conn.autocommit = True
    except Exception:
        conn.close()


@implementer(IResourceStore)
class PostgreSQLResourceStore(SQLiteResourceStore):
    """The memory store as a validated cache of the database (see the module's docstring);
    the undo of a refused change is the SQLite store's."""

    def __init__(self, database: PostgreSQL) -> None:
        # (SQLiteResourceStore.__init__ wants a Database: only its undo is used here)
        super(SQLiteResourceStore, self).__init__()
        self.pg = database
        self._applied = {}
        self._reordering = {}
        self._reactor = database._reactor
        #: the last version seen: every change up to it is in the cache
        self.seen = 0
        #: ri -> the version of the row the cache holds
        self._ver: dict[str, int] = {}
        #: told of every change another process made (a Batch, after the cache has it)
        self.observers: list[Callable[[Batch], None]] = []
        self._readers: list[Deferred[None]] = []
        self._refreshing = False
        self._writers: list[Deferred[None]] = []
        #: fired once the coming transaction is over (flushed)
        self._flushers: list[Deferred[None]] = []
        self._outside: list[_Submission] = []
        self._gated: list[_Submission] | None = None  # while the gate is open
        self._flushing: list[Deferred[None]] = []
        self._scheduled: Any = None
        self._version = 0  # the open transaction's
        self._writing = False
        self._again: set[str] = set()
        #: ri of resources changed outside the gate, not written yet
        self._dirty: dict[str, int] = {}
        self._numbers: Iterator[int] = iter(())
        self._left = 0
        #: blocks taken ahead (the last number of each)
        self._blocks: deque[int] = deque()
        self.commits = 0
        self.refreshes = 0

    # --- loading ------------------------------------------------------------------------------

    def load_from(self, conn: Any) -> int:
        """Read the whole tree (start-up, before the reactor runs)."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.seen = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
            count = 0
            for ri, ver, data in conn.execute("SELECT ri, ver, data FROM resources ORDER BY seq"):
                self._add(self._decode(ri, data))
                self._ver[ri] = ver
                count += 1
        self._take_block(conn.execute("SELECT nextval('resource_numbers')").fetchone()[0])
        return count

    def _decode(self, ri: str, data: bytes) -> Resource:
        try:
            return Resource.from_record(*cbor2.loads(data))
        except Exception as e:
            raise StoreError(
                f"the store {self.pg.shown} has an unreadable resource {ri!r}: {_one_line(e)}"
            ) from e

    # --- numbers ------------------------------------------------------------------------------

    def _take_block(self, last: int) -> None:
        """``last`` from the sequence: the numbers up to it, NUMBER_BLOCK of them, are ours."""
        self._numbers = iter(range(last - NUMBER_BLOCK + 1, last + 1))
        self._left = NUMBER_BLOCK

    def new_number(self) -> int:
        if self._left == 0:
            if not self._blocks:
                raise Unavailable("the store has no resource numbers left: try again")
            self._take_block(self._blocks.popleft())
        self._left -= 1
        return next(self._numbers)

    # --- the gate -----------------------------------------------------------------------------

    def ready(self, request: Request) -> Deferred[None] | None:
        """A Deferred that fires when ``request`` may be handled: for a RETRIEVE once a
        refresh that started after now is in the cache; for any other, inside a write
        transaction that holds the version lock (see the module's docstring)."""
        d: Deferred[None] = Deferred()
        if request.op == Operation.RETRIEVE and request.rt is None:
            self._readers.append(d)
            if not self._refreshing:
                self._refresh()
        else:
            self._writers.append(d)
            self._soon()
        return d

    def _soon(self) -> None:
        """Start the next write transaction in the next reactor turn (unless one is in
        flight): whatever arrives in this turn goes in it too."""
        if not self._writing and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._next)

    def _refresh(self) -> None:
        readers, self._readers = self._readers, []
        self._refreshing = True
        again = list(self._again)
        d = self.pg.run("read", _select_changes, self.seen, again)
        d.addCallbacks(
            self._refreshed,
            self._unrefreshed,
            callbackArgs=(readers, again),
            errbackArgs=(readers,),
        )

    def _refreshed(
        self, rows: list[tuple[Any, ...]], readers: list[Deferred[None]], again: list[str]
    ) -> None:
        self._refreshing = False
        self.refreshes += 1
        self._again.difference_update(again)
        try:
            self._absorb(rows, set(again))
        finally:
            for d in readers:
                d.callback(None)
            if self._readers:
                self._refresh()

    def _unrefreshed(self, failure: Failure, readers: list[Deferred[None]]) -> None:
        self._refreshing = False
        for d in readers:
            d.errback(failure)
        if self._readers:
            self._refresh()

    def _absorb(
        self,
        rows: list[tuple[Any, ...]],
        again: set[str] = frozenset(),  # type: ignore[assignment]
        below: int | None = None,
    ) -> None:
        """Bring the cache up to ``rows`` (what :data:`_CHANGES` read) and tell observers.
        ``below``: read inside this process's own write transaction, whose version (not
        committed yet) is the one the rows name: what is seen is what is below it."""
        ver = self._ver
        dirty = self._dirty
        batch = Batch(self)
        version = self.seen
        reread: dict[str, tuple[Any, ...]] = {}
        changed: list[tuple[Any, ...]] = []
        full = False
        for row in rows:
            what = row[0]
            if what == 0:
                changed.append(row)
            elif what == 1:
                ri, v = row[1], row[3]
                if ri in dirty:
                    self._again.add(ri)
                    continue
                resource = self._resources.get(ri)
                if resource is not None and v > ver.get(ri, 0):
                    self._forget(resource)
                    batch.removed.append(resource)
            elif what == 2:
                if row[1] == "version":
                    version = max(version, row[3])
            elif what == 3:
                reread[row[1]] = row
            else:
                full = True
        if full:  # (behind the horizon: every row was read, the others are gone)
            present = {row[1] for row in changed}
            for ri, resource in list(self._resources.items()):
                # (not this process's own, still being committed: above what it has seen)
                if ri not in present and ri not in dirty and ver.get(ri, 0) <= self.seen:
                    self._forget(resource)
                    batch.removed.append(resource)
        for ri in again:
            if ri in dirty:
                self._again.add(ri)  # (read again once this process's change is settled)
                continue
            current = reread.get(ri)
            if current is None:
                resource = self._resources.get(ri)
                if resource is not None:
                    self._forget(resource)
                    batch.removed.append(resource)
            else:
                ver[ri] = 0
                changed.append(current)
        changed.sort(key=lambda row: row[2])
        for _, ri, _seq, v, data in changed:
            if v <= ver.get(ri, 0):
                continue
            if ri in dirty:
                self._again.add(ri)
                continue
            fresh = self._decode(ri, bytes(data))
            resource = self._resources.get(ri)
            ver[ri] = v
            if resource is None:
                self._add(fresh)
                batch.added.append(fresh)
            else:
                resource.restore(fresh.attrs)
                resource.srn, resource.creator, resource.owner = (
                    fresh.srn,
                    fresh.creator,
                    fresh.owner,
                )
                if not resource.kind.immutable:
                    self._applied[ri] = fresh.attrs
                batch.updated.append(resource)
        if below is not None:
            version = min(version, below - 1)
        self.seen = max(self.seen, version)
        if batch:
            for observer in self.observers:
                try:
                    observer(batch)
                except Exception:
                    log.failure("an observer of the store failed")

    def _forget(self, resource: Resource) -> None:
        self._remove(resource)
        self._applied.pop(resource.ri, None)
        self._ver.pop(resource.ri, None)

    # --- writing ------------------------------------------------------------------------------

    def _write(self) -> None:
        """Open the next write transaction: the version lock, the refresh, the batches made
        outside the gate."""
        writers, self._writers = self._writers, []
        outside, self._outside = self._outside, []
        flushers, self._flushers = self._flushers, []
        self._writing = True
        self._flushing = flushers
        again = list(self._again)
        d = self.pg.run(
            "write",
            _begin,
            self.seen,
            again,
            [s.ops for s in outside],
            self._blocks_wanted(len(writers) + len(outside)),
        )
        d.addCallbacks(
            self._begun,
            self._not_begun,
            callbackArgs=(writers, outside, again),
            errbackArgs=(writers, outside),
        )

    def _blocks_wanted(self, requests: int) -> int:
        """How many blocks of numbers to take in this transaction: enough for two new
        resources per request in it, with half a block to spare."""
        left = self._left + NUMBER_BLOCK * len(self._blocks)
        need = 2 * requests + NUMBER_BLOCK // 2 - left
        return max(0, -(-need // NUMBER_BLOCK))

    def _begun(
        self,
        result: tuple[int, list[tuple[Any, ...]], list[str | None], list[int]],
        writers: list[Deferred[None]],
        outside: list[_Submission],
        again: list[str],
    ) -> None:
        version, rows, refused, blocks = result
        self._blocks.extend(blocks)
        self._again.difference_update(again)
        failed = [s for s, error in zip(outside, refused, strict=True) if error is not None]
        for submission, error in zip(outside, refused, strict=True):
            submission.error = error
        kept = [s for s in outside if s.error is None]
        for submission in reversed(failed):
            self._undo_submission(submission)
        if failed:
            self._put_in_order()
        self._clean(failed)
        reread = set(again)
        for submission in failed:
            reread.update(op[1] for op in submission.ops)
        self._version = version
        try:
            self._absorb(rows, reread, below=version)
        except Exception:
            log.failure("could not bring the cache up to date")
        gated = self._gated = []
        try:
            for d in writers:
                d.callback(None)  # the handlers run now, and apply() adds to ``gated``
        finally:
            self._gated = None
        for submission in reversed(failed):
            submission.waiter.errback(
                ChangeRefused(f"the store could not write the change: {submission.error}")
            )
        ops = [op for s in gated for op in s.ops]
        d = self.pg.run("write", _commit, ops, version, self.commits % 1000 == 999)
        d.addBoth(self._committed, [*kept, *gated], version)

    def _not_begun(
        self, failure: Failure, writers: list[Deferred[None]], outside: list[_Submission]
    ) -> None:
        self._writing = False
        if not isinstance(failure.value, ChangeRefused):
            log.failure("could not open a write transaction", failure)
            failure = _failure(ChangeRefused(f"the store failed: {_reason(failure)}"))
        self._fail(outside, failure)
        for d in writers:
            d.errback(failure)
        self._over()

    def _committed(self, result: object, submissions: list[_Submission], version: int) -> None:
        self._writing = False
        if isinstance(result, Failure):
            failure = result
            if not isinstance(failure.value, ChangeRefused):
                log.failure("could not commit to the store", failure)
                failure = _failure(
                    ChangeRefused(f"the store could not write the change: {_reason(failure)}")
                )
            self._fail(submissions, failure)
        else:
            self.commits += 1
            self.seen = max(self.seen, version)
            ver = self._ver
            for submission in submissions:
                for kind, ri, *_ in submission.ops:
                    if kind == _DROP:
                        ver.pop(ri, None)
                    else:
                        ver[ri] = version
            self._clean(submissions)
            for submission in submissions:
                submission.waiter.callback(None)
        self._over()

    def _over(self) -> None:
        """The transaction is over: what waited for it goes on, and the next one starts."""
        flushers, self._flushing = self._flushing, []
        for d in flushers:
            d.callback(None)
        self._next()

    def _next(self) -> None:
        self._scheduled = None
        if (self._writers or self._outside or self._flushers) and not self._writing:
            self._write()

    def _fail(self, submissions: list[_Submission], failure: Failure) -> None:
        """Undo ``submissions`` (newest first) and fail their Deferreds."""
        for submission in reversed(submissions):
            self._undo_submission(submission)
        self._put_in_order()
        self._clean(submissions)
        for submission in submissions:
            self._again.update(op[1] for op in submission.ops)
        for submission in submissions:
            submission.waiter.errback(failure)

    def _undo_submission(self, submission: _Submission) -> None:
        try:
            submission.undo()
        except Exception:
            log.failure("could not undo a change the store refused")
        self._ver.update(submission.versions)

    def _clean(self, submissions: list[_Submission]) -> None:
        dirty = self._dirty
        for submission in submissions:
            for op in submission.ops:
                left = dirty.get(op[1], 0) - 1
                if left > 0:
                    dirty[op[1]] = left
                else:
                    dirty.pop(op[1], None)

    def apply(self, batch: Batch) -> Deferred[None] | None:
        """Apply ``batch`` to the cache and write it: in the open transaction inside the
        gate, else in the next one (validated)."""
        if self.pg.closed:
            return self._refuse(batch, Unavailable("the store is closed"))
        ver = self._ver
        try:
            ops: list[_Op] = [
                (_DROP, r.ri, None, "", 0, None, ver.get(r.ri)) for r in batch.removed
            ]
            ops.extend((_ADD, r.ri, r.pi, r.rn, int(r.ty), _encode(r), None) for r in batch.added)
            ops.extend(
                (_CHANGE, r.ri, None, "", 0, _encode(r), ver.get(r.ri)) for r in batch.updated
            )
        except Exception as e:
            log.failure("cannot encode a change for the store {url}", url=self.pg.shown)
            return self._refuse(
                batch, ChangeRefused(f"the store cannot encode the change: {_one_line(e)}")
            )
        versions = {op[1]: ver[op[1]] for op in ops if op[1] in ver}
        waiter: Deferred[None] = Deferred()
        gated = self._gated
        submission = _Submission(ops, waiter, self._apply_undoably(batch), gated is None, versions)
        dirty = self._dirty  # (until written or undone: a refresh leaves these rows alone)
        for op in ops:
            dirty[op[1]] = dirty.get(op[1], 0) + 1
        if gated is not None:
            gated.append(submission)
            version = self._version
            for kind, ri, *_ in ops:
                if kind == _DROP:
                    ver.pop(ri, None)
                else:
                    ver[ri] = version
        else:
            self._outside.append(submission)
            self._soon()
        return waiter

    def _refuse(self, batch: Batch, error: ChangeRefused) -> Deferred[None]:
        applied = self._applied
        for resource in (*batch.updated, *batch.removed):
            attrs = applied.get(resource.ri)
            if attrs is not None and self._resources.get(resource.ri) is resource:
                resource.restore(attrs)
        return fail(error)

    def flushed(self) -> Deferred[None]:
        """Fires once what was submitted so far is written (or refused)."""
        if not self._outside and not self._writing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._writing and not self._outside:
            self._flushing.append(d)  # (the transaction in flight has all there is)
        else:
            self._flushers.append(d)
            if not self._writing:
                self._write()
        return d


def _encode(resource: Resource) -> bytes:
    return cbor2.dumps(list(resource.record()))


# --- the queue ------------------------------------------------------------------------------


def channel(schema: str) -> str:
    """The channel on which every process of the CSE whose tables are in ``schema`` hears
    which originator has a new entry (NOTIFY is per database: one per schema)."""
    return f"acmews_queue.{schema}"


def _enqueue(
    conn: Any, originator: str, expires: float, rqi: str, data: bytes, channel: str
) -> int:
    """Insert the entry and tell every process listening (NOTIFY, sent at the commit)."""
    row = conn.execute(
        "WITH new AS (INSERT INTO queue (originator, expires, rqi, data)"
        " VALUES (%s, %s, %s, %s) RETURNING seq)"
        " SELECT seq, pg_notify(%s, %s) FROM new",
        (originator, expires, rqi, data, channel, originator),
    ).fetchone()
    return int(row[0])


#: the head entry, unless another live session holds it: a lease lasts QUEUE_LEASE seconds
#: or as long as the database session that took it, whichever is shorter, so that the
#: entries a process killed with kill -9 was delivering (its connections closed by the
#: kernel at once) can be taken by the process its originator reconnects to at once, not a
#: minute later
_TAKE = (
    "SELECT seq, expires, rqi, data FROM queue q WHERE seq = %s"
    " AND (taken_until IS NULL OR taken_until < %s OR NOT EXISTS ("
    " SELECT 1 FROM pg_stat_activity a"
    " WHERE a.pid = q.taken_by AND a.backend_start = q.taken_since))"
    " FOR UPDATE SKIP LOCKED"
)
_TAKEN = (
    "UPDATE queue SET taken_until = %s, taken_by = pg_backend_pid(), taken_since ="
    " (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
    " WHERE seq = %s"
)


def _take(conn: Any, originator: str, now: float) -> tuple[Any, ...] | bool:
    """The oldest entry of ``originator``, leased to this process; False if there is none,
    True if another process holds it (it goes on delivering in order)."""
    with conn.transaction():
        head = conn.execute(
            "SELECT seq FROM queue WHERE originator = %s ORDER BY seq LIMIT 1", (originator,)
        ).fetchone()
        if head is None:
            return False
        row = conn.execute(_TAKE, (head[0], now)).fetchone()
        if row is None:
            return True
        conn.execute(_TAKEN, (now + QUEUE_LEASE, row[0]))
        return tuple(row)


def _release(conn: Any, seq: int, originator: str, channel: str) -> None:
    """``seq`` may be taken again; the processes listening are told (the one the
    originator reconnected to meanwhile found it held and stopped)."""
    with conn.transaction():  # (NOTIFY is sent at the commit: after the release)
        conn.execute("UPDATE queue SET taken_until = NULL, taken_by = NULL WHERE seq = %s", (seq,))
        conn.execute("SELECT pg_notify(%s, %s)", (channel, originator))


def _count(conn: Any, originator: str) -> int:
    return int(
        conn.execute("SELECT count(*) FROM queue WHERE originator = %s", (originator,)).fetchone()[
            0
        ]
    )


@implementer(INotificationQueue)
class PostgreSQLNotificationQueue(MemoryNotificationQueue):
    """The queue in the shared table. What this process enqueued is also counted in memory
    (``count``/``pending`` answer from it at once); ``take`` and ``acknowledge`` go to the
    table (they return Deferreds), so an originator's entries are delivered by whichever
    process it connects to, each by one process only."""

    #: the chain flushes without asking count() first: other processes' entries count too
    shared = True

    def __init__(self, database: PostgreSQL, clock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pg = database
        self._clock = clock
        #: the last write to the table in flight, and who waits for it
        self._last_write: tuple[Deferred[Any], list[Deferred[None]]] | None = None
        #: see :func:`channel` (set at opening)
        self.channel = channel("public")
        #: what :meth:`watch` was given: told when an entry may be taken here
        self._queued: Callable[[str], None] | None = None
        #: originators whose held head is looked at again soon
        self._retrying: dict[str, Any] = {}

    def watch(self, queued: Callable[[str], None]) -> None:
        """Call ``queued(originator)`` (on the reactor) whenever any process queues an
        entry for ``originator``: the chain flushes it if the originator is connected here.
        Listens on a connection and thread of its own until the store stops (not with an
        inline ``run``: tests)."""
        self._queued = queued
        if self.pg._run is None:
            self.pg.listen(self.channel, queued)

    def _held_elsewhere(self, originator: str) -> None:
        """The head of ``originator``'s entries is held by another session (another process
        delivering it, or one that was killed and whose session PostgreSQL has not ended
        yet): this process looks again in a second, in case it is not taken back."""
        queued = self._queued
        if queued is None or originator in self._retrying or self.pg.closed:
            return

        def again() -> None:
            del self._retrying[originator]
            queued(originator)

        self._retrying[originator] = self._clock.callLater(HELD_RETRY, again)

    def stop(self) -> None:
        """Look again at nothing any more (the store stops)."""
        retrying, self._retrying = self._retrying, {}
        for call in retrying.values():
            if call.active():
                call.cancel()

    def _appended(self, originator: str, entry: QueuedNotification) -> None:
        d = self.pg.run(
            "queue", _enqueue, originator, entry.expires, entry.rqi, entry.data, self.channel
        )

        def stored(seq: int) -> None:
            entry.seq = seq

        def lost(failure: Failure) -> Failure:
            queue = self._queues.get(originator)
            if queue is not None and entry in queue:
                queue.remove(entry)
                super(PostgreSQLNotificationQueue, self)._forget(originator, entry)
                self.dropped += 1
                if not queue:
                    self._drop_empty(originator)
            return failure

        d.addCallbacks(stored, lost)
        self._track(d)

    def _track(self, d: Deferred[Any]) -> None:
        waiters: list[Deferred[None]] = []
        last = self._last_write = (d, waiters)

        def done(result: object) -> None:
            if self._last_write is last:
                self._last_write = None
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            # (consumed: the waiters have it; the entry was forgotten, and counted dropped)

        d.addBoth(done)

    def durable(self) -> Deferred[None]:  # type: ignore[override]
        """Fires once every write so far (an enqueue, a purge) is in the table; fails if the
        last one, an enqueue, could not be (the chain asks right after its own). The writes go
        in order on one lane: once the last is done, so are the others. One Deferred per
        call, whatever the number of writes in flight (thousands when a fan-out's relays fail
        at once: waiting for each of them made every call cost as much as all of them, and
        the memory of a node grew by gigabytes)."""
        last = self._last_write
        if last is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        last[1].append(waiter)
        return waiter

    def take(self, originator: str) -> Deferred[QueuedNotification | None]:  # type: ignore[override]
        # (our own enqueues are in the table first: order)
        d: Deferred[Any] = self.durable().addCallback(
            lambda _: self.pg.run("queue", _take, originator, self._clock.seconds())
        )

        def entry(row: tuple[Any, ...] | bool) -> QueuedNotification | None:
            if row is False and originator in self._queues:
                # delivered by other processes: what this one counted is gone
                for gone in list(self._queues[originator]):
                    super(PostgreSQLNotificationQueue, self).acknowledge(originator, gone)
            if row is True:
                self._held_elsewhere(originator)
            if isinstance(row, bool):
                return None
            seq, expires, rqi, data = row
            return QueuedNotification(bytes(data), rqi, expires, seq)

        taken: Deferred[QueuedNotification | None] = d.addCallback(entry)
        return taken

    def acknowledge(self, originator: str, entry: QueuedNotification) -> Deferred[None]:  # type: ignore[override]
        queue = self._queues.get(originator)
        if queue is not None:
            mine = next((e for e in queue if e.seq == entry.seq), None)
            if mine is not None:
                super().acknowledge(originator, mine)
        d = self.pg.run(
            "queue",
            lambda conn, seq: conn.execute("DELETE FROM queue WHERE seq = %s", (seq,)),
            entry.seq,
        )
        return d.addCallback(lambda _: None)

    def release(self, originator: str, entry: QueuedNotification) -> Deferred[None]:
        """``entry`` was not delivered: another process (or this one) may take it again."""
        d = self.pg.run("queue", _release, entry.seq, originator, self.channel)
        return d.addCallback(lambda _: None)

    def waiting(self, originator: str) -> Deferred[int]:
        """How many entries wait for ``originator`` in the table (every process's)."""
        return self.pg.run("queue", _count, originator)

    def purge_expired(self, now: float) -> int:
        dropped = super().purge_expired(now)
        d = self.pg.run(
            "queue",
            lambda conn, t: conn.execute("DELETE FROM queue WHERE expires <= %s", (t,)),
            now,
        )
        d.addErrback(lambda _: None)  # (the next purge deletes them)
        self._track(d)  # durable() waits for it too: the writes go in order on one lane
        return dropped

    def load_from(self, conn: Any) -> int:
        """How many entries the table holds (start-up)."""
        return int(conn.execute("SELECT count(*) FROM queue").fetchone()[0])


# --- opening ----------------------------------------------------------------------------------


def _prepare(conn: Any, shown: str) -> None:
    """Create or upgrade the schema; StoreError (one line) for a newer one."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(21021)")  # one process creates it
        conn.execute(_SCHEMA[0])
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {shown} has schema version {version}, written by a newer acmews; "
                f"this one reads version {SCHEMA_VERSION} (upgrade acmews)"
            )
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA[1:]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (SCHEMA_VERSION,),
            )
            if version:
                log.info(
                    "store {url}: schema upgraded from version {old} to {new}",
                    url=shown,
                    old=version,
                    new=SCHEMA_VERSION,
                )


class _Service(Service):
    def __init__(
        self, store: PostgreSQLResourceStore, queue: PostgreSQLNotificationQueue | None = None
    ) -> None:
        self.store = store
        self.queue = queue

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.queue is not None:
            self.queue.stop()
        d = self.store.flushed()

        def close(_: object) -> None:
            self.store.pg.closed = True
            self.store.pg.stop_threads()

        return d.addBoth(close)


@dataclass
class Opened:
    resources: PostgreSQLResourceStore
    queue: PostgreSQLNotificationQueue
    service: Service
    count: int
    queued: int


def open_postgresql(
    url: str,
    reactor: Any,
    cse_id: str | None = None,
    run: Callable[..., Deferred[Any]] | None = None,
    **queue_options: Any,
) -> Opened:
    """Connect, create or check the schema, read the tree (start-up: blocks)."""
    import psycopg

    database = PostgreSQL(url, reactor, run)
    shown = database.shown
    try:
        conn = database.connect()
    except psycopg.Error as e:
        raise StoreError(f"cannot open the store {shown}: {_one_line(e)}") from e
    try:
        _prepare(conn, shown)
        resources = PostgreSQLResourceStore(database)
        count = resources.load_from(conn)
        if cse_id is not None and count and resources.get(cse_id.lstrip("/")) is None:
            raise StoreError(
                f"the store {shown} holds another CSE's resources, not those of {cse_id} "
                "(another --cse-id?)"
            )
        queue = PostgreSQLNotificationQueue(database, reactor, **queue_options)
        queued = queue.load_from(conn)
        queue.channel = channel(conn.execute("SELECT current_schema()").fetchone()[0])
    except psycopg.Error as e:
        raise StoreError(f"cannot open the store {shown}: {_one_line(e)}") from e
    finally:
        conn.close()  # (twistd may fork after this: no connection crosses it)
    return Opened(resources, queue, _Service(resources, queue), count, queued)


def open_postgresql_store(
    url: str,
    reactor: Any,
    *,
    cse_id: str | None = None,
    run: Callable[..., Deferred[Any]] | None = None,
    **queue_options: Any,
) -> Store:
    """The :class:`~acmews.durable.Store` of the database ``url`` names (see
    :func:`acmews.stores.open_store`); its password is in no description or log line."""
    opened = open_postgresql(url, reactor, cse_id, run, **queue_options)
    log.info(
        "store {url}: {count} resources and {queued} queued notifications",
        url=redact(url),
        count=opened.count,
        queued=opened.queued,
    )
    pg = opened.resources.pg
    return Store(
        opened.resources,
        opened.queue,
        opened.service,
        redact(url),
        down=lambda: pg.down,
    )
