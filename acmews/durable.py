"""A durable CSE: the resource tree and the store-and-forward queue in one SQLite file.

Memory is the working set and the database is the log of record. Reads are answered from
memory as with the memory store; every change is also written to the database, and the CSE
answers a request only once its changes are durable. The writes of many requests go in one
transaction (group commit) that runs, with its fsync, on a thread of its own: the reactor
never waits on the disk. A transaction leaves out what it makes moot (a row inserted and
deleted in it, all but the last update of a row).

A change the disk refused is not visible and never comes back. Memory is what is written plus
what is on its way; a change that cannot be written is undone in memory, and so is every
change submitted after it and not written yet (each was made on top of it), newest first, so
that every resource gets back the version it had and its place among its siblings (a
container its ``cni``/``cbs``, an evicted instance its place as the oldest). All of them fail
with :class:`ChangeRefused`, which the CSE answers 5000; the file and memory agree again.

- A change whose own statement fails (its row contradicts the file, which only a bug does):
  the transaction is written again with a savepoint per change, the changes before it are
  kept, and the store goes on.
- A transaction that fails as a whole (disk full, I/O error, ...): the store turns read-only
  and logs one line. Every change is then refused at once, before it touches memory, with 5000
  and an ``m2m:dbg`` saying why; reads are served as before. Every :data:`PROBE_INTERVAL`
  seconds (on the reactor's clock) it tries a small write; once one succeeds it logs one line
  and takes changes again.

The queue's entries are undone the same way when their enqueue is refused. An entry that left
the queue (delivered, expired, dropped) is not put back: its deletion is written with the next
transaction that succeeds (should the process stop first, it may be delivered once more after
a restart: the queue is at-least-once anyway).

:func:`open_store` opens a store named by a URL: ``sqlite:PATH``, ``memory:``, or
``postgresql://...`` (a database several processes share: :mod:`acmews.pgstore`).

The file (SQLite 3, WAL journal, ``synchronous=FULL``):

- ``resources``: one row per resource, in creation order (``seq``), its record
  (``ty``, ``attrs``, ``srn``, ``creator``, ``owner``) in CBOR;
- ``queue``: the queued notifications, per originator in ``seq`` order, with their expiry;
- ``meta``: the last number handed out for resource IDs (so none is used twice);
- ``PRAGMA user_version``: the schema version.

Only one process may use a file at a time: advisory locks (``flock``) on ``REAL.lock``, REAL
being PATH with its symlinks resolved, and on the database file itself, so that another name
for the same file (a symlink, a hard link) is the same store. ``sqlite3 PATH ".backup COPY"``
may read it meanwhile. (SQLite names its write-ahead log after the name it opened, so give
a file one name: a hard link is refused only while the other name is in use.)
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

import cbor2
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from acmews.cse.resource import Resource
from acmews.cse.store import Batch, IResourceStore, MemoryResourceStore
from acmews.errors import InternalServerError
from acmews.logs import Logger
from acmews.metrics import BATCH_BOUNDS, COMMIT_BOUNDS, Histogram
from acmews.poa.queue import INotificationQueue, MemoryNotificationQueue, QueuedNotification
from acmews.primitive import Request

__all__ = [
    "PROBE_INTERVAL",
    "SCHEMA_VERSION",
    "ChangeRefused",
    "Database",
    "SQLiteNotificationQueue",
    "SQLiteResourceStore",
    "Store",
    "StoreError",
    "open_store",
]

#: the layout this module writes; a file with a higher one is refused
SCHEMA_VERSION = 1

#: seconds between two tries to write while the store is read-only
PROBE_INTERVAL = 5.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS resources ("
    " seq INTEGER PRIMARY KEY, ri TEXT NOT NULL UNIQUE, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS queue ("
    " seq INTEGER PRIMARY KEY, originator TEXT NOT NULL, expires REAL NOT NULL,"
    " rqi TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_INSERT = "INSERT INTO resources (ri, data) VALUES (?, ?)"
_UPDATE = "UPDATE resources SET data = ? WHERE ri = ?"
_DELETE = "DELETE FROM resources WHERE ri = ?"
_ENQUEUE = "INSERT INTO queue (seq, originator, expires, rqi, data) VALUES (?, ?, ?, ?, ?)"
_DEQUEUE = "DELETE FROM queue WHERE seq = ?"
_NUMBER = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_number', ?)"

#: one statement and its parameters
Op = tuple[str, tuple[Any, ...]]

#: what a read-only store writes to learn whether the disk takes writes again: a row that
#: needs room (64 KiB, new pages), deleted again in the same transaction
_PROBE: list[Op] = [
    ("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', zeroblob(?))", (65536,)),
    ("DELETE FROM meta WHERE key = 'probe'", ()),
]

#: the errors of one change's own statements (its row contradicts the file); any other error
#: fails the transaction as a whole and turns the store read-only
_OWN_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError)

log = Logger()


class StoreError(Exception):
    """The database cannot be used: its message is one line that names the file."""


class ChangeRefused(StoreError, InternalServerError):
    """A change the store did not make: its request is answered 5000 with this reason.

    5000 (INTERNAL_SERVER_ERROR) because the fault is the CSE's and passes: TS-0004 has no
    code for a store that cannot write, and 5207 (NOT_ACCEPTABLE) would blame the request.
    The reason goes to the client: it never names the file."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(slots=True)
class _Submission:
    ops: list[Op]
    waiter: Deferred[None] | None
    #: puts memory back as it was before the change (it could not be written)
    undo: Callable[[], None] | None = None
    #: not undone but written with the next transaction that succeeds (a queue entry's end)
    retry: bool = False


class Database:
    """One SQLite file and the thread that writes it (group commit).

    :meth:`submit` queues the statements of one change (a request's batch, a queue entry);
    whatever was submitted while a transaction was being written goes in the next one, so
    under load many requests share one commit and its fsync. Transactions are written in the
    order of submission and their Deferreds fire in that order, on the reactor thread.

    A change that cannot be written is undone (its ``undo``), with those submitted after it,
    before any Deferred fires; see the module's docstring for when the store turns read-only
    (:attr:`refused`) and how it comes back.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        run: Callable[..., Deferred[Any]] | None = None,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        """
        @param reactor: schedules the transactions and the probes (``callLater``) and gets
            their results.
        @param run: runs a transaction, ``run(function, *args) -> Deferred``; by default on a
            thread of the database's own (tests run it inline, on a clock of their own).
        @param probe_interval: seconds between two tries to write while read-only.
        """
        self.path = path
        #: the file itself: PATH with its symlinks resolved
        self._real = os.path.realpath(path)
        self._reactor = reactor
        self._run = run
        self._probe_interval = probe_interval
        #: the connection that checks and reads the file at start (closed by :meth:`loaded`)
        self._conn: sqlite3.Connection | None = None
        #: the connection that writes, opened by the first transaction
        self._writer: sqlite3.Connection | None = None
        self._lock_fds: list[int] = []
        self._pool: ThreadPool | None = None
        self._pending: list[_Submission] = []
        self._writing: Deferred[Any] | None = None
        self._scheduled: Any = None
        self._probe_call: Any = None
        self._closed = False
        #: why the store is read-only (what the disk said), or None while it takes changes
        self.refused: str | None = None
        #: called once a failure's changes are undone, before anyone is answered
        self.after_undo: list[Callable[[], None]] = []
        #: the last number handed out; written with every transaction that follows it
        self.last_number = 0
        self._written_number = 0
        #: transactions written (for tests and the bench's curiosity)
        self.commits = 0
        #: seconds each transaction took (submitted to written, on the reactor's clock) and
        #: how many changes it wrote: the group commit at work (read by the metrics)
        self.commit_seconds = Histogram(COMMIT_BOUNDS)
        self.commit_changes = Histogram(BATCH_BOUNDS)
        self._write_started = 0.0

    # --- opening -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file and check it; StoreError names what is wrong.

        Runs before the reactor does (at start-up), so it may wait for the disk."""
        path = self.path
        directory = os.path.dirname(self._real)
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open the store {path}: no directory {directory}")
        self._lock()
        try:
            conn = sqlite3.connect(
                self._real, timeout=2.0, isolation_level=None, check_same_thread=False
            )
            self._conn = conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {path} has schema version {version}, written by a newer "
                    f"acmews; this one reads version {SCHEMA_VERSION} (upgrade acmews, or "
                    "start on a new file)"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store {path} cannot use a WAL journal (mode {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the store {path} is corrupt: {_one_line(Exception(check))}")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_number'").fetchone()
            self.last_number = self._written_number = int(row[0]) if row else 0
        except StoreError:
            self._close_now()
            raise
        except sqlite3.Error as e:
            self._close_now()
            raise StoreError(f"cannot open the store {path}: {_one_line(e)}") from e

    def loaded(self) -> None:
        """Start-up has read what it needs: close the reading connection.

        Nothing of SQLite's is kept open from here to the first write: twistd forks to run in
        the background after the service is made, and neither a SQLite connection nor a
        thread may cross a fork. The writer's connection and thread come with the first
        transaction, in the process that runs the CSE (the lock files' descriptors do cross
        it, and keep the locks)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open_writer(self) -> sqlite3.Connection:
        """In the writer thread: the connection every transaction uses (what it raises
        fails the transaction, and its message goes to clients: it must not name the file)."""
        writer = sqlite3.connect(
            self._real, timeout=2.0, isolation_level=None, check_same_thread=False
        )
        writer.execute("PRAGMA synchronous=FULL")
        self._writer = writer
        return writer

    def _lock(self) -> None:
        """One process per file: advisory locks on ``REAL.lock`` and on the database file
        itself (its inode: a hard link is another name for it), released by the kernel
        however the process ends (kill -9 included).

        ``flock`` locks are apart from the POSIX locks SQLite takes on the same file. The
        ``.lock`` file is locked first, so that a second store on the same name never opens
        the database file (closing a descriptor of it would drop this process's POSIX locks
        on it, SQLite's included)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: SQLite's own locking only
            return
        fds = self._lock_fds
        try:
            for name, flags, mode in (
                (self._real + ".lock", os.O_RDWR | os.O_CREAT, 0o600),
                (self._real, os.O_RDONLY | os.O_CREAT, 0o644),  # SQLite's mode for a new file
            ):
                try:
                    fd = os.open(name, flags, mode)
                except OSError as e:
                    raise StoreError(f"cannot open the store {self.path}: {_one_line(e)}") from e
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise StoreError(
                            f"cannot lock the store {self.path}: {_one_line(e)}"
                        ) from e
                    raise StoreError(
                        f"the store {self.path} is locked: another acmews uses it"
                    ) from None
        except StoreError:
            self._unlock()
            raise

    def _unlock(self) -> None:
        fds = self._lock_fds
        while fds:
            os.close(fds.pop())

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def _close_now(self) -> None:
        self.loaded()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._unlock()  # after SQLite's connections: see _lock

    def rows(self, query: str) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query`` (start-up only, before anything is submitted)."""
        assert self._conn is not None and not self._pending and self._writing is None
        try:
            yield from self._conn.execute(query)
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the store {self.path}: {_one_line(e)}") from e

    # --- writing -------------------------------------------------------------------------------

    def refusal(self) -> ChangeRefused | None:
        """What a change gets now instead of being made, or None if the store takes it: ask
        before the change touches memory."""
        if self._closed:
            return ChangeRefused("the store is closed")
        if self.refused is None:
            return None
        return ChangeRefused(
            f"the store is read-only: the disk refused a write ({self.refused}); changes are "
            "refused until it takes writes again"
        )

    def submit(
        self,
        ops: list[Op],
        *,
        wait: bool = True,
        undo: Callable[[], None] | None = None,
        retry: bool = False,
    ) -> Deferred[None] | None:
        """Write ``ops`` in a coming transaction, as one unit (all or nothing).

        With ``wait``, a Deferred that fires once they are durable (or fails if they could
        not be written); without it, None (see :meth:`flushed`). ``undo`` puts memory back if
        they cannot be written; ``retry`` ops are kept instead (and taken while read-only)
        until a transaction succeeds. Read-only, anything else raises :class:`ChangeRefused`.
        """
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        if self.refused is not None and not retry:
            refused = self.refusal()
            assert refused is not None
            raise refused
        waiter: Deferred[None] | None = Deferred() if wait else None
        self._pending.append(_Submission(ops, waiter, undo, retry))
        if self.refused is None and self._writing is None and self._scheduled is None:
            # everything submitted in this reactor turn goes in the same transaction
            self._scheduled = self._reactor.callLater(0, self._write)
        return waiter

    def flushed(self) -> Deferred[None]:
        """A Deferred that fires once everything submitted so far is durable (fails if the
        store is read-only and something waits)."""
        if not self._pending and self._writing is None:
            return succeed(None)
        refused = self.refusal()
        if refused is not None:
            return fail(refused)
        done = self.submit([])
        assert done is not None
        return done

    def _write(self, probe: bool = False) -> None:
        self._scheduled = None
        if self._writing is not None or not (self._pending or probe):
            return
        if self._run is None:
            pool = self._pool = ThreadPool(1, 1, "acmews-store")
            pool.start()
            self._run = partial(deferToThreadPool, self._reactor, pool)
            # a program that stops the reactor without stopping the store must not hang on
            # the writer thread at exit (services have stopped by then: nothing is pending)
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        submissions, self._pending = self._pending, []
        self._write_started = self._reactor.seconds()
        number = self.last_number if probe or self.last_number > self._written_number else None
        writing = self._run(self._commit, [s.ops for s in submissions], number, probe)
        self._writing = writing
        writing.addBoth(self._written, submissions, number)

    def _commit(
        self, groups: list[list[Op]], number: int | None, probe: bool = False
    ) -> tuple[int, Exception | None]:
        """In the writer thread: one transaction for all ``groups`` (the submissions); how
        many of them were written, and the error of the next one (None if all were).

        First as one coalesced run of statements (a row inserted and deleted in the same
        transaction, as a container's evicted instances under load, is never written); if a
        change's own statement fails, again with a savepoint per submission up to the one
        that fails. Any other error fails the transaction (raised)."""
        first = _PROBE if probe else []
        ops = coalesce(groups)

        def all_at_once(conn: sqlite3.Connection) -> tuple[int, Exception | None]:
            for statement, parameters in [*first, *ops]:
                conn.execute(statement, parameters)
            return len(groups), None

        def up_to_the_failing_one(conn: sqlite3.Connection) -> tuple[int, Exception | None]:
            for statement, parameters in first:
                conn.execute(statement, parameters)
            for n, group in enumerate(groups):
                conn.execute("SAVEPOINT change")
                try:
                    for statement, parameters in group:
                        conn.execute(statement, parameters)
                except _OWN_ERRORS as e:
                    conn.execute("ROLLBACK TO change")
                    conn.execute("RELEASE change")
                    return n, e
                conn.execute("RELEASE change")
            return len(groups), None

        try:
            return self._transaction(all_at_once, number)
        except _OWN_ERRORS:
            return self._transaction(up_to_the_failing_one, number)

    def _transaction(
        self,
        write: Callable[[sqlite3.Connection], tuple[int, Exception | None]],
        number: int | None,
    ) -> tuple[int, Exception | None]:
        """In the writer thread: ``write`` and the counter in one transaction, rolled back
        if anything raises."""
        conn = self._writer or self._open_writer()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = write(conn)
            if number is not None:
                conn.execute(_NUMBER, (number,))
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:  # (SQLite rolls back by itself after some errors)
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                # a connection that cannot even roll back is not used again
                self._writer = None
                conn.close()
            raise
        return result

    def _written(
        self,
        result: tuple[int, Exception | None] | Failure,
        submissions: list[_Submission],
        number: int | None,
    ) -> None:
        self._writing = None
        error: str | None
        if isinstance(result, Failure):
            assert result.value is not None
            written, error = 0, _one_line(result.value)
            if not isinstance(result.value, sqlite3.Error):  # not the disk: a bug, with its trace
                log.failure("could not write to the store {path}", result, path=self.path)
        else:
            self.commits += 1
            if submissions:  # (not a probe's)
                self.commit_seconds.observe(self._reactor.seconds() - self._write_started)
                self.commit_changes.observe(len(submissions))
            if number is not None:
                self._written_number = max(self._written_number, number)
            if self.refused is not None:
                self.refused = None
                log.info("the store {path} takes changes again", path=self.path)
            written, own = result
            error = None if own is None else _one_line(own)
        failed = submissions[written:]
        if error is not None:
            # those submitted since were made on top of what failed: they go with it
            failed.extend(self._pending)
            self._pending = [s for s in failed if s.retry]
            failed = [s for s in failed if not s.retry]
            self._undo(failed)
            if isinstance(result, Failure):
                self._read_only(error)
            else:
                log.error(
                    "could not write a change to the store {path}: {error}; it and the "
                    "{count} changes after it are undone",
                    path=self.path,
                    error=error,
                    count=len(failed) - 1,
                )
        if self._pending and self.refused is None:
            self._write()  # the next transaction is on its way while these answer
        for submission in submissions[:written]:
            if submission.waiter is not None:
                submission.waiter.callback(None)
        for submission in failed:
            if submission.waiter is not None:
                submission.waiter.errback(
                    ChangeRefused(f"the store could not write the change: {error}")
                )

    def _undo(self, failed: list[_Submission]) -> None:
        """Undo what ``failed`` changed in memory, newest first."""
        for submission in reversed(failed):
            if submission.undo is not None:
                try:
                    submission.undo()
                except Exception:
                    log.failure("could not undo a change the store {path} refused", path=self.path)
        for hook in self.after_undo:
            hook()

    def _read_only(self, error: str) -> None:
        """A transaction failed as a whole: refuse changes until a write succeeds again."""
        if self.refused is None:
            log.error(
                "the store {path} is read-only: the disk refused a write ({error}); changes are "
                "answered 5000 until a write succeeds again (tried every {interval:g} s)",
                path=self.path,
                error=error,
                interval=self._probe_interval,
            )
        self.refused = error
        if not self._closed:
            self._probe_call = self._reactor.callLater(self._probe_interval, self._probe)

    def _probe(self) -> None:
        self._probe_call = None
        self._write(probe=True)

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what was submitted, then close the file and stop the writer thread.

        Read-only, what waits (the deletion of queue entries) is not written."""
        if self._closed:
            return succeed(None)
        if self.refused is None:
            done = self.flushed()
        else:  # only the probe in flight, if any
            done = succeed(None) if self._writing is None else self._writing_done()
            if self._pending:
                log.warn(
                    "the store {path} is read-only: {count} queue entries that left the queue "
                    "are still in the file (they may be delivered again after a restart)",
                    path=self.path,
                    count=len(self._pending),
                )

        def close(_: object) -> None:
            self._closed = True
            if self._probe_call is not None and self._probe_call.active():
                self._probe_call.cancel()
            self._probe_call = None
            self._stop_pool()
            self._close_now()

        return done.addBoth(close)

    def _writing_done(self) -> Deferred[None]:
        """A Deferred that fires once the transaction in flight has been handled."""
        assert self._writing is not None
        done: Deferred[None] = Deferred()
        self._writing.addBoth(lambda result: done.callback(None))
        return done


def coalesce(groups: list[list[Op]]) -> list[Op]:
    """The statements of ``groups`` in order, less those a later one makes moot: a
    resource's updates fold into its insert or its last update, an insert and a delete of the
    same row in the same transaction both go, and so do an entry's enqueue and dequeue."""
    out: list[Op | None] = []
    inserted: dict[str, int] = {}  # ri -> index of its INSERT in out
    updated: dict[str, int] = {}  # ri -> index of its last UPDATE in out
    enqueued: dict[int, int] = {}  # seq -> index of its ENQUEUE in out
    for ops in groups:
        for op in ops:
            statement, parameters = op
            if statement is _UPDATE:
                data, ri = parameters
                at = inserted.get(ri)
                if at is not None:
                    out[at] = (_INSERT, (ri, data))
                    continue
                at = updated.get(ri)
                if at is not None:
                    out[at] = None
                updated[ri] = len(out)
            elif statement is _INSERT:
                inserted[parameters[0]] = len(out)
            elif statement is _DELETE:
                ri = parameters[0]
                at = inserted.pop(ri, None)
                if at is not None:
                    out[at] = None
                    continue
                at = updated.pop(ri, None)
                if at is not None:
                    out[at] = None
            elif statement is _ENQUEUE:
                enqueued[parameters[0]] = len(out)
            elif statement is _DEQUEUE:
                at = enqueued.pop(parameters[0], None)
                if at is not None:
                    out[at] = None
                    continue
            out.append(op)
    return [op for op in out if op is not None]


def _encode_resource(resource: Resource) -> bytes:
    return cbor2.dumps(list(resource.record()))


#: what undoes a removal: the resource, the sibling that came after it (None: the last), and
#: its ``attrs`` as written (None: of a kind that is never updated)
_Removal = tuple[Resource, str | None, dict[str, Any] | None]


class _Siblings:
    """The children of one parent while an undo puts removed ones back where they were: a
    linked list of their resource IDs, so that each costs the same however many there are."""

    __slots__ = ("after", "before")

    def __init__(self, keys: Iterable[str]) -> None:
        order: list[str | None] = [None, *keys, None]  # None: before the first, after the last
        self.after = dict(pairwise(order))
        self.before = {after: before for before, after in pairwise(order)}

    def remove(self, key: str) -> None:
        if key in self.after:
            before, after = self.before.pop(key), self.after.pop(key)
            self.after[before] = after
            self.before[after] = before

    def insert(self, key: str, successor: str | None) -> None:
        if successor not in self.before:
            successor = None  # (not there: the last)
        before = self.before[successor]
        self.after[before] = key
        self.before[key] = before
        self.after[key] = successor
        self.before[successor] = key

    def __iter__(self) -> Iterator[str]:
        key = self.after[None]
        while key is not None:
            yield key
            key = self.after[key]


@implementer(IResourceStore)
class SQLiteResourceStore(MemoryResourceStore):
    """The memory store, with every batch also written to a :class:`Database` (and undone
    in memory if it cannot be written)."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database
        #: ri -> ``attrs`` as last applied, of every resource a change may update: the CSE
        #: replaces them before :meth:`apply`, so this is the version an undo puts back
        self._applied: dict[str, dict[str, Any]] = {}
        #: parent ri -> its children, while an undo puts removed ones back in their places
        self._reordering: dict[str, _Siblings] = {}
        database.after_undo.append(self._put_in_order)

    def load(self) -> int:
        """Read every stored resource into memory (start-up); how many there were."""
        count = 0
        for ri, data in self.database.rows("SELECT ri, data FROM resources ORDER BY seq"):
            try:
                resource = Resource.from_record(*cbor2.loads(data))
            except Exception as e:
                raise StoreError(
                    f"the store {self.database.path} has an unreadable resource {ri!r}: "
                    f"{_one_line(e)}"
                ) from e
            self._add(resource)
            count += 1
        return count

    def new_number(self) -> int:
        """The database's counter (written with the next transaction)."""
        database = self.database
        database.last_number += 1
        return database.last_number

    def apply(self, batch: Batch) -> Deferred[None] | None:
        """Apply ``batch`` and submit it; or, if the store refuses changes now, put back what
        the CSE replaced and fail with :class:`ChangeRefused` (memory is as it was)."""
        database = self.database
        refused = database.refusal()
        if refused is None:
            try:
                ops: list[Op] = [(_DELETE, (r.ri,)) for r in batch.removed]
                ops.extend((_INSERT, (r.ri, _encode_resource(r))) for r in batch.added)
                ops.extend((_UPDATE, (_encode_resource(r), r.ri)) for r in batch.updated)
            except Exception as e:  # attrs hold what a codec decoded: a bug, not a peer's doing
                log.failure("cannot encode a change for the store {path}", path=database.path)
                refused = ChangeRefused(f"the store cannot encode the change: {_one_line(e)}")
        if refused is not None:
            applied = self._applied
            for resource in (*batch.updated, *batch.removed):
                attrs = applied.get(resource.ri)
                if attrs is not None and self._resources.get(resource.ri) is resource:
                    resource.restore(attrs)
            return fail(refused)
        return database.submit(ops, undo=self._apply_undoably(batch))

    def _apply_undoably(self, batch: Batch) -> Callable[[], None]:
        """Apply ``batch`` as :meth:`MemoryResourceStore.apply` does; what undoes it."""
        applied = self._applied
        removals: list[_Removal] = []
        for resource in batch.removed:
            ri = resource.ri
            if self._resources.get(ri) is resource:
                removals.append((resource, self._next_sibling(resource), applied.pop(ri, None)))
                self._remove(resource)
        added = tuple(batch.added)
        for resource in added:
            self._add(resource)
        updates: list[tuple[Resource, dict[str, Any]]] = []
        for resource in batch.updated:
            before = applied.get(resource.ri)
            if before is not None:
                updates.append((resource, before))
                applied[resource.ri] = resource.attrs
        return partial(self._undo, removals, added, updates)

    def _undo(
        self,
        removals: list[_Removal],
        added: tuple[Resource, ...],
        updates: list[tuple[Resource, dict[str, Any]]],
    ) -> None:
        """Put back what one batch changed (its ``attrs``, places and all): the batches after
        it are undone already."""
        applied = self._applied
        for resource, before in updates:
            resource.restore(before)
            applied[resource.ri] = before
        for resource in reversed(added):
            siblings = self._reordering.get(resource.pi)
            if siblings is not None:
                siblings.remove(resource.ri)
            self._remove(resource)
            applied.pop(resource.ri, None)
        for resource, successor, attrs in reversed(removals):
            if attrs is not None:  # (replaced by the batch before it was removed, maybe)
                resource.restore(attrs)
            pi = resource.pi
            siblings = self._reordering.get(pi)
            if siblings is None:
                siblings = self._reordering[pi] = _Siblings(self._children.get(pi, ()))
            siblings.insert(resource.ri, successor)
            self._add(resource)

    def _put_in_order(self) -> None:
        """After an undo: the children it put back take their places again (in creation
        order, which ``oldest_child``/``latest_child`` read)."""
        for pi, siblings in self._reordering.items():
            children = self._children.get(pi)
            if not children:
                continue
            ordered = {ri: children[ri] for ri in siblings if ri in children}
            for ri, child in children.items():  # (none, unless the list lost one)
                ordered.setdefault(ri, child)
            typed: dict[int, dict[str, Resource]] = {}
            for ri, child in ordered.items():
                typed.setdefault(child.ty, {})[ri] = child
            self._children[pi] = ordered
            self._typed[pi] = typed
        self._reordering.clear()

    def _next_sibling(self, resource: Resource) -> str | None:
        """The resource ID of the child of ``resource``'s parent created after it (None if
        it is the last): where an undo puts it back. At once for the oldest and the latest
        (an eviction, a DELETE of ``la``)."""
        siblings = self._children.get(resource.pi)
        ri = resource.ri
        if not siblings or next(reversed(siblings)) == ri:
            return None
        keys = iter(siblings)
        if next(keys) == ri:
            return next(keys)
        order = list(siblings)
        return order[order.index(ri) + 1]

    def _add(self, resource: Resource) -> None:
        super()._add(resource)
        if not resource.kind.immutable:
            self._applied[resource.ri] = resource.attrs


@implementer(INotificationQueue)
class SQLiteNotificationQueue(MemoryNotificationQueue):
    """The memory queue, with every entry that joins or leaves it written to a
    :class:`Database` (in the same transactions as the resources around it)."""

    def __init__(self, database: Database, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.database = database

    def load(self) -> int:
        """Read every stored entry into memory (start-up); how many there were."""
        count = 0
        for seq, originator, expires, rqi, data in self.database.rows(
            "SELECT seq, originator, expires, rqi, data FROM queue ORDER BY seq"
        ):
            self.restore(originator, QueuedNotification(bytes(data), rqi, expires, seq))
            count += 1
        return count

    def enqueue(self, originator: str, request: Request, expires: float, now: float) -> int:
        """As the memory queue does; :class:`ChangeRefused` while the store refuses changes
        (the entry could not be kept)."""
        refused = self.database.refusal()
        if refused is not None:
            raise refused
        return super().enqueue(originator, request, expires, now)

    def _appended(self, originator: str, entry: QueuedNotification) -> None:
        self.database.submit(
            [(_ENQUEUE, (entry.seq, originator, entry.expires, entry.rqi, entry.data))],
            wait=False,
            undo=partial(self._unappend, originator, entry),
        )

    def _unappend(self, originator: str, entry: QueuedNotification) -> None:
        """``entry`` could not be written: it leaves the queue (if it is still there)."""
        queue = self._queues.get(originator)
        if queue is None or entry not in queue:
            return
        queue.remove(entry)
        super()._forget(originator, entry)
        self.dropped += 1
        if not queue:
            self._drop_empty(originator)

    def _forget(self, originator: str, entry: QueuedNotification) -> None:
        super()._forget(originator, entry)
        self.database.submit([(_DEQUEUE, (entry.seq,))], wait=False, retry=True)

    def durable(self) -> Deferred[None]:  # type: ignore[override]
        return self.database.flushed()


@dataclass
class Store:
    """What :func:`open_store` opens: the CSE's store, the chain's queue, and the service
    that closes them (its ``stopService`` writes what is pending first)."""

    resources: IResourceStore
    queue: INotificationQueue
    service: Service
    description: str
    #: the SQLite file's (None for ``memory:``): its read-only state and commit figures
    database: Database | None = None
    #: why the store takes no changes now (None: it does), for the readiness check; a
    #: shared database's (PostgreSQL does not answer)
    down: Callable[[], str | None] | None = None


class _DatabaseService(Service):
    def __init__(self, database: Database) -> None:
        self.database = database

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.database.close()


def open_store(
    url: str,
    reactor: Any,
    *,
    cse_id: str | None = None,
    run: Callable[..., Deferred[Any]] | None = None,
    **queue_options: Any,
) -> Store:
    """Open the store ``url`` names: ``sqlite:PATH`` or ``memory:``; StoreError if it cannot
    be used (one line naming the file), ValueError for another URL.

    It reads the whole file into memory before it returns: call it at start-up, before the
    reactor runs (as ``twistd acmews`` does), not from a running reactor. ``queue_options`` are
    the queue's bounds (see :class:`~acmews.poa.queue.MemoryNotificationQueue`); ``run`` is
    :class:`Database`'s. With ``cse_id``, a file holding another CSE's resources is refused
    (StoreError)."""
    if url == "memory:":
        return Store(
            MemoryResourceStore(),
            MemoryNotificationQueue(**queue_options),
            Service(),
            "memory (lost when the process exits)",
        )
    scheme, sep, path = url.partition(":")
    if scheme != "sqlite" or not sep or not path:
        raise ValueError(
            f"a store is sqlite:PATH, postgresql://HOST/DBNAME or memory:, not {url!r}"
            + (" (postgresql: acmews.stores.open_store)" if scheme.startswith("postgres") else "")
        )
    database = Database(path, reactor, run)
    database.open()
    try:
        resources = SQLiteResourceStore(database)
        queue = SQLiteNotificationQueue(database, **queue_options)
        count = resources.load()
        if cse_id is not None and count and resources.get(cse_id.lstrip("/")) is None:
            raise StoreError(
                f"the store {path} holds another CSE's resources, not those of {cse_id} "
                "(another --cse-id?)"
            )
        queued = queue.load()
        database.loaded()
    except BaseException:
        database._close_now()
        raise
    log.info(
        "store {path}: {count} resources and {queued} queued notifications",
        path=path,
        count=count,
        queued=queued,
    )
    return Store(resources, queue, _DatabaseService(database), f"sqlite:{path}", database)
