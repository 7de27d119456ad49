"""A durable CSE: the resource tree and the store-and-forward queue in one SQLite file.

Memory is the working set and the database is the log of record. Reads are answered from
memory as with the memory store; every change is also written to the database, and the CSE
answers a request only once its changes are durable. The writes of many requests go in one
transaction (group commit) that runs, with its fsync, on a thread of its own: the reactor
never waits on the disk. A transaction leaves out what it makes moot (a row inserted and
deleted in it, all but the last update of a row); if a statement fails, it is written again
with each request's changes in a savepoint of its own, so that a request that cannot be
written leaves nothing of it and does not take the others with it.

:func:`open_store` opens a store named by a URL: ``sqlite:PATH`` or ``memory:``.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
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
from acmews.logs import Logger
from acmews.poa.queue import INotificationQueue, MemoryNotificationQueue, QueuedNotification

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "SQLiteNotificationQueue",
    "SQLiteResourceStore",
    "Store",
    "StoreError",
    "open_store",
]

#: the layout this module writes; a file with a higher one is refused
SCHEMA_VERSION = 1

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

log = Logger()


class StoreError(Exception):
    """The database cannot be used: its message is one line that names the file."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(slots=True)
class _Submission:
    ops: list[Op]
    waiter: Deferred[None] | None


class Database:
    """One SQLite file and the thread that writes it (group commit).

    :meth:`submit` queues the statements of one change (a request's batch, a queue entry);
    whatever was submitted while a transaction was being written goes in the next one, so
    under load many requests share one commit and its fsync. Transactions are written in the
    order of submission and their Deferreds fire in that order, on the reactor thread.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        run: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        """
        @param reactor: schedules the transactions (``callLater``) and gets their results.
        @param run: runs a transaction, ``run(function, *args) -> Deferred``; by default on a
            thread of the database's own (tests run it inline, on a clock of their own).
        """
        self.path = path
        #: the file itself: PATH with its symlinks resolved
        self._real = os.path.realpath(path)
        self._reactor = reactor
        self._run = run
        #: the connection that checks and reads the file at start (closed by :meth:`loaded`)
        self._conn: sqlite3.Connection | None = None
        #: the connection that writes, opened by the first transaction
        self._writer: sqlite3.Connection | None = None
        self._lock_fds: list[int] = []
        self._pool: ThreadPool | None = None
        self._pending: list[_Submission] = []
        self._writing: Deferred[Any] | None = None
        self._scheduled: Any = None
        self._closed = False
        #: the last number handed out; written with every transaction that follows it
        self.last_number = 0
        self._written_number = 0
        #: transactions written (for tests and the bench's curiosity)
        self.commits = 0

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
        """In the writer thread: the connection every transaction uses."""
        try:
            writer = sqlite3.connect(
                self._real, timeout=2.0, isolation_level=None, check_same_thread=False
            )
            writer.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {_one_line(e)}") from e
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

    def submit(self, ops: list[Op], *, wait: bool = True) -> Deferred[None] | None:
        """Write ``ops`` in a coming transaction, as one unit (all or nothing).

        With ``wait``, a Deferred that fires once they are durable (or fails if they could
        not be written); without it, None (see :meth:`flushed`)."""
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        waiter: Deferred[None] | None = Deferred() if wait else None
        self._pending.append(_Submission(ops, waiter))
        if self._writing is None and self._scheduled is None:
            # everything submitted in this reactor turn goes in the same transaction
            self._scheduled = self._reactor.callLater(0, self._write)
        return waiter

    def flushed(self) -> Deferred[None]:
        """A Deferred that fires once everything submitted so far is durable."""
        if not self._pending and self._writing is None:
            return succeed(None)
        done = self.submit([])
        assert done is not None
        return done

    def _write(self) -> None:
        self._scheduled = None
        if self._writing is not None or not self._pending:
            return
        if self._run is None:
            pool = self._pool = ThreadPool(1, 1, "acmews-store")
            pool.start()
            self._run = partial(deferToThreadPool, self._reactor, pool)
            # a program that stops the reactor without stopping the store must not hang on
            # the writer thread at exit (services have stopped by then: nothing is pending)
            self._reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)
        submissions, self._pending = self._pending, []
        number = self.last_number if self.last_number > self._written_number else None
        writing = self._run(self._commit, [s.ops for s in submissions], number)
        self._writing = writing
        writing.addBoth(self._written, submissions, number)

    def _commit(self, groups: list[list[Op]], number: int | None) -> list[Exception | None]:
        """In the writer thread: one transaction for all ``groups`` (the submissions).

        First as one coalesced run of statements (a row inserted and deleted in the same
        transaction, as a container's evicted instances under load, is never written); if a
        statement fails, again with a savepoint per submission, so that only the failing
        one is left out."""
        ops = coalesce(groups)

        def all_at_once(conn: sqlite3.Connection) -> list[Exception | None]:
            for statement, parameters in ops:
                conn.execute(statement, parameters)
            return [None] * len(groups)

        def one_by_one(conn: sqlite3.Connection) -> list[Exception | None]:
            errors: list[Exception | None] = []
            for group in groups:
                conn.execute("SAVEPOINT change")
                try:
                    for statement, parameters in group:
                        conn.execute(statement, parameters)
                except sqlite3.Error as e:
                    conn.execute("ROLLBACK TO change")
                    errors.append(e)
                else:
                    errors.append(None)
                conn.execute("RELEASE change")
            return errors

        try:
            return self._transaction(all_at_once, number)
        except sqlite3.Error:
            return self._transaction(one_by_one, number)

    def _transaction(
        self, write: Callable[[sqlite3.Connection], list[Exception | None]], number: int | None
    ) -> list[Exception | None]:
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
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _written(
        self,
        result: list[Exception | None] | Failure,
        submissions: list[_Submission],
        number: int | None,
    ) -> None:
        self._writing = None
        if isinstance(result, Failure):
            log.failure(
                "could not write {count} changes to the store {path}",
                result,
                count=len(submissions),
                path=self.path,
            )
            errors: Sequence[Exception | Failure | None] = [result] * len(submissions)
        else:
            self.commits += 1
            if number is not None:
                self._written_number = max(self._written_number, number)
            errors = result
        if self._pending:
            self._write()  # the next transaction is on its way while these answer
        for submission, error in zip(submissions, errors, strict=True):
            waiter = submission.waiter
            if error is not None:
                if not isinstance(error, Failure):
                    log.error(
                        "could not write a change to the store {path}: {error}",
                        path=self.path,
                        error=_one_line(error),
                    )
                    error = Failure(StoreError(f"could not write the change: {error}"))  # type: ignore[no-untyped-call]
                if waiter is not None:
                    waiter.errback(error)
            elif waiter is not None:
                waiter.callback(None)

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what was submitted, then close the file and stop the writer thread."""
        if self._closed:
            return succeed(None)
        done = self.flushed()

        def close(_: object) -> None:
            self._closed = True
            self._stop_pool()
            self._close_now()

        return done.addBoth(close)


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


@implementer(IResourceStore)
class SQLiteResourceStore(MemoryResourceStore):
    """The memory store, with every batch also written to a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database

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
        super().apply(batch)
        try:
            ops: list[Op] = [(_DELETE, (r.ri,)) for r in batch.removed]
            ops.extend((_INSERT, (r.ri, _encode_resource(r))) for r in batch.added)
            ops.extend((_UPDATE, (_encode_resource(r), r.ri)) for r in batch.updated)
        except Exception as e:  # attrs hold what a codec decoded: a bug, not a peer's doing
            log.failure("cannot encode a change for the store {path}", path=self.database.path)
            return fail(StoreError(f"cannot encode the change: {_one_line(e)}"))
        return self.database.submit(ops)


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

    def _appended(self, originator: str, entry: QueuedNotification) -> None:
        self.database.submit(
            [(_ENQUEUE, (entry.seq, originator, entry.expires, entry.rqi, entry.data))],
            wait=False,
        )

    def _forget(self, originator: str, entry: QueuedNotification) -> None:
        super()._forget(originator, entry)
        self.database.submit([(_DEQUEUE, (entry.seq,))], wait=False)

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
        raise ValueError(f"a store is sqlite:PATH or memory:, not {url!r}")
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
    return Store(resources, queue, _DatabaseService(database), f"sqlite:{path}")
