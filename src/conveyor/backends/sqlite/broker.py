"""The embedded backend: one SQLite file in WAL mode, shared by every process on a machine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from conveyor import stored
from conveyor.backends.base import Beat, Broker, Recovery
from conveyor.backends.sqlite import schedules as sqlite_schedules
from conveyor.backends.sqlite import sessions as sqlite_sessions
from conveyor.backends.sqlite.clock import boot_id, lease_now
from conveyor.backends.sqlite.lanes import Head, Lane, Limiter, Taken, cursors, laned_names, usage
from conveyor.backends.sqlite.migrations import is_current, queues_version, upgrade
from conveyor.backends.sqlite.schema import (
    JOB_COLUMNS,
    STATS_COLUMNS,
    WORKER_COLUMNS,
    Settings,
    as_text,
    check_boot,
    check_directory,
    check_namespace,
    connect,
    due_now,
    is_locked,
    job_from_row,
    worker_from_row,
)
from conveyor.backends.sqlite.trouble import (
    lock_trouble,
    needs_new_connection,
    unavailable_reason,
)
from conveyor.backends.sqlite.writer import Writer, WriterStopped
from conveyor.errors import (
    ConfigurationError,
    DuplicateJob,
    QueueFull,
    ReentrantWrite,
    StoreUnavailable,
    TooManyQueues,
)
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind, WorkerInfo
from conveyor.known import KnownJob, read_known
from conveyor.limits import JobLimits, LimitUsage
from conveyor.priority import QueueWeights, boost, check_priority
from conveyor.queues import QueueSettings, stored_limit
from conveyor.schedules import Schedule, ScheduleState
from conveyor.serialization import dumps, storable
from conveyor.stats import STATS_KEEP, SUMS, MinuteStats, read_sum
from conveyor.summary import JSON_FIELDS, PREVIEW_CHARS, TEXT_FIELDS, JobSummary, summary_of

T = TypeVar("T")

WAITING = "state IN ('queued', 'scheduled')"
#: a job's rank (see conveyor.priority), the very expression of the jobs_queued index
RANK = "run_at - boost"
#: a queued job is due: its run time is now or past, or is no number (text or bytes a hand
#: left there, which sort after every number: read as due, not left waiting for good)
DUE = "(run_at <= ? OR run_at >= '')"
#: the queues claims skip (see Broker.set_paused), as a condition on {ns}_jobs rows
NOT_PAUSED = "queue NOT IN (SELECT name FROM {ns}_queues WHERE paused=1)"
#: SQLite's default limit on bound parameters is 32766; stay far below it
CHUNK = 500
#: the columns a listing of summaries cuts (named as the fields they hold)
_LONG_COLUMNS = (*JSON_FIELDS, *TEXT_FIELDS)
#: how often an idle worker looks for new commits by other connections (cheap, no I/O)
POLL_INTERVAL = 0.002
#: ... and once it has found no work for :data:`QUIET_AFTER` seconds (each look costs CPU:
#: every 2 ms, an idle worker took about a tenth of a core)
POLL_QUIET, QUIET_AFTER = 0.025, 2.0
# values of the jobs' ``unstarted`` column: 0 started (or not running)
#: running, claimed ahead of a free slot or held as a suspect: a recovery does not charge it
UNSTARTED = 1
#: went back uncharged, held unstarted when its lease ran out; it may have started just
#: before its worker died, so the next claim makes it a suspect
MAYBE_STARTED = 2
#: claimed from MAYBE_STARTED or HELD_SUSPECT by a caller that starts it at once (counts as
#: started)
SUSPECT = 3
#: a suspect held unstarted (like UNSTARTED; and it stays a suspect if handed back)
HELD_SUSPECT = 4


def _minute(row: Sequence[Any]) -> MinuteStats:
    """A row of statistics (:data:`STATS_COLUMNS`), each sum read by :func:`read_sum` (a row
    a hand left odd reads too)."""
    minute, queue, *sums = row
    read = MinuteStats(stored.integer(minute), stored.text(queue))
    for name, value in zip(SUMS, sums, strict=True):
        setattr(read, name, read_sum(name, value))
    return read


def _chunks(items: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _marks(n: int) -> str:
    return ",".join("?" * n)


#: the rows that store some jobs, the INSERT they take, their queues, and whether any of
#: them has a unique key (see :meth:`SQLiteBroker._rows`)
_Plan = tuple[list[tuple[Any, ...]], str, set[str], bool]


def _at_version(insert: str, version: str) -> str:
    """``insert`` (``INSERT INTO t (columns) VALUES (?, ...)``) as an INSERT that stores its
    row only while the ``version`` query's value is the one given after the row's."""
    head, marks = insert.split(" VALUES (")
    return f"{head} SELECT {marks[:-1]} WHERE ({version}) = ?{marks.count('?') + 1}"


def _row(job: JobRecord) -> tuple[Any, ...]:
    """The values of ``job`` for the columns of :attr:`SQLiteBroker._sql_insert` (those of
    its priority and group added by :meth:`SQLiteBroker._with_rank`)."""
    args, kwargs = job.payload or job.encoded()
    return (job.id, job.name, job.queue, job.state._value_, args, kwargs, job.created_at,
            job.run_at, job.unique_key)


#: the stores open in this process: closed before it forks (see _close_before_fork)
_OPEN: weakref.WeakSet[SQLiteBroker] = weakref.WeakSet()
#: serializes the resets of forked children (see SQLiteBroker._forked)
_RESET = threading.Lock()


def _close_before_fork() -> None:
    """Close this process's open stores before it forks (os.fork runs this): SQLite's
    connections and its record of the file's locks must not cross a fork, or a child's
    commits can go to a write-ahead log its parent deletes. Each store opens again on its
    next use, in the parent as in the child."""
    for broker in list(_OPEN):
        if broker._pid == os.getpid():
            broker.close_blocking()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_before_fork)


class SQLiteBroker(Broker):
    """Jobs in ``{namespace}_jobs`` of one SQLite file; see :mod:`.writer` for the commits."""

    writes_prove_writable = True

    def __init__(self, url: str, namespace: str = "conveyor", retention: float = 7 * 86400):
        self.url = url
        self.retention = retention
        self.settings = Settings.from_url(url)
        check_directory(self.settings.path)
        self.ns = check_namespace(namespace)
        #: False: open only an existing file (see only_existing)
        self.create = True
        #: the shortest lease of the workers of this process (see :meth:`_lock_held`)
        self._lease: float | None = None
        self._writer = self._new_writer()
        self._local = threading.local()
        self._opened = False
        #: held while the store opens or closes; re-entrant, with _opening_or_closing set,
        #: so that a signal handler's call that interrupted it on its thread is refused
        #: (ReentrantWrite) rather than left waiting for itself
        self._open_lock = threading.RLock()
        self._opening_or_closing = False
        #: held while the writer is renewed for a new connection (see _renew_writer)
        self._renewing_lock = threading.Lock()
        #: every reader connection (one per thread that reads), with its thread and the lock
        #: held while it runs a statement (a close() waits for it: see :meth:`_using`)
        self._readers: list[tuple[threading.Thread, sqlite3.Connection, threading.Lock]] = []
        self._readers_lock = threading.Lock()
        #: grows on each close(): a thread whose reader is older opens a new one
        self._generation = 0
        #: the process whose connections these are (see :meth:`_forked`)
        self._pid = os.getpid()
        #: when a wait for work last ended with work (see :meth:`wait_for_work`)
        self._worked_at = time.monotonic()
        t = self.ns
        self._not_paused = NOT_PAUSED.format(ns=t)
        # A claim takes queued jobs only, in the order of the jobs_queued index (rank, then
        # run_at, then id), after promoting the due scheduled jobs of its queues. Every
        # queued job is due: ``run_at <= ?`` only guards that, at no cost (run_at is in the
        # index). Laned jobs (grp not NULL) wait in the jobs_lanes index instead (see
        # .lanes).
        take = (
            f"UPDATE {t}_jobs SET state='running', worker_id=?, claim=?, attempts=attempts+1, "
            f"started_at=?, lease_expires_at=?, progress=NULL, progress_message=NULL, "
            f"unstarted=CASE WHEN unstarted IN ({MAYBE_STARTED}, {HELD_SUSPECT}) "
            f"THEN {SUSPECT} ELSE 0 END WHERE id IN ({{ids}}) "
            f"RETURNING {JOB_COLUMNS}, claim, unstarted, boost"
        )
        #: the jobs of ``ids``: (worker, claim, now, lease until, *ids)
        self._sql_take = take
        #: the namespace's last claim number, and its update (see :meth:`_claim_number`)
        self._sql_last_claim = f"SELECT value FROM {t}_meta WHERE key='claim'"
        self._sql_spend_claim = (
            f"INSERT INTO {t}_meta (key, value) VALUES ('claim', ?) "
            f"ON CONFLICT (key) DO UPDATE SET value=excluded.value")
        #: one queue, one statement: (worker, claim, now, lease until, queue, now, limit)
        self._sql_claim_one = take.format(ids=(
            f"SELECT id FROM {t}_jobs WHERE state='queued' AND grp IS NULL AND queue=? "
            f"AND {DUE} AND {self._not_paused} ORDER BY {RANK}, run_at, id LIMIT ?"))
        #: a queue's ready jobs in claim order, with their sort key: (queue, now, limit)
        self._sql_ranked = (
            f"SELECT {RANK}, run_at, id FROM {t}_jobs WHERE state='queued' AND grp IS NULL "
            f"AND queue=? AND {DUE} ORDER BY {RANK}, run_at, id LIMIT ?")
        #: the due scheduled jobs of some queues become queued: (*queues, now)
        self._sql_promote = (f"UPDATE {t}_jobs SET state='queued' WHERE state='scheduled' "
                             f"AND queue IN ({{marks}}) AND run_at <= ?")
        #: scheduled jobs whose run time is no number (text or bytes a hand left there,
        #: which sort after every number): queued, as due (the claim that takes one gives it
        #: a number: see due_now); one index look a queue: (*queues)
        self._sql_promote_odd = (f"UPDATE {t}_jobs SET state='queued' WHERE "
                                 f"state='scheduled' AND queue IN ({{marks}}) AND run_at >= ''")
        states = ", ".join(f"'{state}'" for state in JobState)
        #: a row when the queue is known (it holds a job, or has settings): (queue, queue)
        self._sql_queue_known = (
            f"SELECT 1 FROM {t}_jobs WHERE state IN ({states}) AND queue=? UNION ALL "
            f"SELECT 1 FROM {t}_queues WHERE name=? LIMIT 1")
        #: the distinct queues of the jobs in one state, by index skips: (state, state, limit)
        self._sql_state_queues = (
            f"WITH RECURSIVE q(name) AS (SELECT min(queue) FROM {t}_jobs WHERE state=? "
            f"UNION ALL SELECT (SELECT min(queue) FROM {t}_jobs WHERE state=? AND "
            f"queue > q.name) FROM q WHERE q.name IS NOT NULL) "
            f"SELECT name FROM q WHERE name IS NOT NULL LIMIT ?")
        self._sql_insert = (
            f"INSERT INTO {t}_jobs (id, name, queue, state, args, kwargs, created_at, run_at, "
            f"unique_key) VALUES (?,?,?,?,?,?,?,?,?)"
        )
        self._sql_insert_ranked = (
            f"INSERT INTO {t}_jobs (id, name, queue, state, args, kwargs, created_at, run_at, "
            f"unique_key, priority, boost) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        )
        self._sql_insert_laned = (
            f"INSERT INTO {t}_jobs (id, name, queue, state, args, kwargs, created_at, run_at, "
            f"unique_key, priority, boost, grp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        )
        #: each INSERT of jobs as one that stores its row only while the namespace's
        #: ``queues`` counter is the one given after the row (see :meth:`_insert_at_once`)
        self._sql_at_once = {sql: _at_version(sql, queues_version(t)) for sql in (
            self._sql_insert, self._sql_insert_ranked, self._sql_insert_laned)}
        #: the stored caps of queued jobs; the table holds only the queues with settings: a
        #: few rows, read whole
        self._sql_caps = (f"SELECT name, max_queued FROM {t}_queues "
                          f"WHERE typeof(max_queued)='integer' AND max_queued >= 1")
        #: the jobs waiting in a queue: (queue,)
        self._sql_waiting = f"SELECT count(*) FROM {t}_jobs WHERE {WAITING} AND queue=?"

    # -- life cycle ---------------------------------------------------------------------------
    def _lock_busy_ms(self) -> int:
        """How long a connection waits for a lock: the URL's ``busy_timeout``, or
        :attr:`retry_for` when that is shorter (a producer's or a command's
        ``store_timeout``)."""
        return min(self.settings.busy_timeout_ms, max(1, int(self.retry_for * 1000)))

    def _lock_patience(self) -> float:
        """:meth:`_lock_busy_ms` in seconds (the writer's own wait for the write lock)."""
        return self._lock_busy_ms() / 1000

    def _connect(self) -> sqlite3.Connection:
        """A connection whose lock waits last :meth:`_lock_busy_ms`."""
        return connect(dataclasses.replace(self.settings, busy_timeout_ms=self._lock_busy_ms()),
                       self.create)

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            # a store already at this layout and boot needs no write (nor the write lock,
            # which another process may hold: a read-only command then reads at once)
            if not is_current(conn, self.ns, boot_id()):
                conn.execute("BEGIN IMMEDIATE")
                upgrade(conn, self.ns, str(self.settings.path.absolute()))
                check_boot(conn, self.ns, boot_id(), lease_now())
                conn.execute("COMMIT")
        except BaseException:  # a full disk, say: nothing left half-open; a later open retries
            conn.close()
            raise
        return conn

    def _forked(self) -> None:
        """In a child forked from the process that made this store: os.fork closed it
        before the fork (see :func:`_close_before_fork`), and the child opens its own
        connections on first use. A fork that runs no Python hook (uWSGI's preforking
        master, by default) leaves the parent's connections and SQLite's record of its
        locks in the child, which no later connection of the child can trust: refused."""
        with _RESET:
            if self._pid == os.getpid():
                return
            if self._opened or self._readers:
                raise ConfigurationError(
                    f"the SQLite store {self.settings.path} was open when this process was "
                    "forked without Python's fork hooks (as uWSGI forks its workers unless "
                    "lazy-apps is on): SQLite's connections do not survive a fork; load the "
                    "app in each worker (uWSGI: lazy-apps = true) or close it before forking")
            # fresh locks: another thread of the parent may have held one at the fork
            self._writer = self._new_writer()
            self._local = threading.local()
            self._open_lock = threading.RLock()
            self._opening_or_closing = False
            self._renewing_lock = threading.Lock()
            self._readers_lock = threading.Lock()
            self._generation += 1
            self._pid = os.getpid()

    def _new_writer(self) -> Writer:
        return Writer(self._open_writer, self._lock_patience, self._lock_held,
                      queues_version(self.ns))

    def _usable(self) -> bool:
        """Open, and in this process (a forked child opens its own: see :meth:`_forked`)."""
        return self._opened and self._pid == os.getpid()

    def open_blocking(self) -> None:
        """Open the database and start the writer thread (idempotent; after a failure, the
        next call tries again)."""
        if self._pid != os.getpid():
            self._forked()
        with self._open_lock:
            if not self._opened:
                with self._changing(), self._guarded():
                    self._writer.start()
                self._opened = True
                _OPEN.add(self)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Mark an open or a close of this store under way (the caller holds the open lock);
        raise :class:`ReentrantWrite` when one is already: a signal handler's call
        interrupted it on this thread."""
        if self._opening_or_closing:
            raise ReentrantWrite.during("this SQLite store was being opened or closed")
        self._opening_or_closing = True
        try:
            yield
        finally:
            self._opening_or_closing = False

    async def open(self) -> None:
        if not self._usable():
            await asyncio.to_thread(self.open_blocking)

    async def close(self) -> None:
        self.close_blocking()

    def close_blocking(self) -> None:
        """Stop the writer thread after it committed what it was given, and close every
        reader connection (a later use opens them again)."""
        if self._pid != os.getpid():  # a forked child closes nothing of its parent's
            return
        # the open lock is held to the end: a use meanwhile opens the store after the close
        with self._open_lock, self._changing():
            if self._opened:
                self._opened = False
                self._writer.stop()
            self._let_go_of_readers()
            self._closed()

    def _closed(self) -> None:
        """The end of a close, before any use can open the store again (see memory.py)."""

    def only_existing(self, reads: bool = False) -> None:
        if self.url.lower().startswith("sqlite:"):  # (a memory: store is made, not opened)
            self.create = False

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, StoreUnavailable) or \
            unavailable_reason(error, self.settings.path) is not None

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Raise trouble that may pass (a full disk, a lock, an I/O error) as
        :class:`StoreUnavailable`, and note it in :attr:`last_trouble`."""
        sent = time.monotonic()
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, sent)

    def _note_lease(self, lease: float) -> None:
        """Keep the shortest lease a worker of this process claims or renews with."""
        if self._lease is None or lease < self._lease:
            self._lease = lease

    def _lock_held(self, waited: float) -> None:
        """The writer waited ``waited`` seconds for the write lock (see :class:`Writer`):
        past :func:`lock_trouble` of the lease of this process's worker, trouble, so that
        this worker's recovery passes hold off until the others' heartbeats, held alike,
        have renewed their leases (see :meth:`recover_expired` for the pass that waited)."""
        if waited >= lock_trouble(self._lease):
            self.last_trouble = time.monotonic()

    def _fail(self, error: sqlite3.Error | OSError, sent: float) -> NoReturn:
        """Raise ``error``, as :class:`StoreUnavailable` when it may pass (noted in
        :attr:`last_trouble`); ``sent`` (``time.monotonic()``) is when the call began, so
        that one waiting out a lock that fails just after the store answered again is not
        taken for a new outage."""
        reason = unavailable_reason(error, self.settings.path)
        if reason is None:
            raise error
        self.last_trouble = time.monotonic()
        if needs_new_connection(error):
            self._renew_writer()
        raise StoreUnavailable(self.url, reason, sent) from error

    def _renew_writer(self) -> None:
        """Stop the writer, whose connection can never write again (see
        :func:`needs_new_connection`), and let go of the readers (a file moved away or
        replaced: they would read the old one), so that the next use opens new ones: a
        file made writable again by an operator is then written. Done on a thread of its
        own (the writer finishes what it was given first: a caller on an event loop does
        not wait), one at a time."""
        if not self._renewing_lock.acquire(False):  # one under way: it serves this one too
            return

        def renew() -> None:
            try:
                with self._open_lock, self._changing():
                    if self._opened and self._pid == os.getpid():
                        self._opened = False
                        self._writer.stop()
                    self._let_go_of_readers()
            finally:
                self._renewing_lock.release()

        threading.Thread(target=renew, name="conveyor-sqlite-renew", daemon=True).start()

    def _let_go_of_readers(self) -> None:
        """Close every reader connection (each thread opens a new one at its next read),
        waiting for a statement under way on it."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
            self._generation += 1
        for _, conn, lock in readers:
            with lock:  # never under a statement another thread runs on it
                conn.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened on first use and again after a close."""
        if self._pid != os.getpid():
            self._forked()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.generation != self._generation:
            conn = self._connect()
            lock = threading.Lock()
            with self._readers_lock:
                # the connections of threads that ended are nobody's any more: close them
                gone = [c for t, c, _ in self._readers if not t.is_alive()]
                self._readers = [r for r in self._readers if r[0].is_alive()]
                self._readers.append((threading.current_thread(), conn, lock))
                self._local.generation = self._generation
            for old in gone:
                old.close()
            self._local.conn = conn
            self._local.lock = lock
            self._local.data_version = -1
        return conn

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's read connection, held while the caller runs statements on it: a
        close() from another thread (an app closed under a worker thread) waits for them
        instead of closing the connection under them, which would crash the process."""
        while True:
            conn = self._reader()
            lock: threading.Lock = self._local.lock
            with lock:
                if self._local.generation == self._generation:  # not closed meanwhile
                    yield conn
                    return

    def _read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._using() as conn:
            return fn(conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._guarded():
            if not self._usable():
                await self.open()
            return await asyncio.to_thread(self._read_now, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], keeps: bool = False) -> T:
        """Run ``fn`` in the writer's next transaction (``keeps``: see :class:`Writer`)."""
        sent = time.monotonic()
        try:  # as _guarded() does, without a context manager on this busy path
            while True:
                if not self._usable():
                    await self.open()
                try:
                    result: T = await self._writer.run(fn, keeps)
                except WriterStopped:  # closed by another thread meanwhile: open again
                    continue
                return result
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, sent)

    # -- producers ----------------------------------------------------------------------------
    def _rows(self, jobs: Sequence[JobRecord]) -> _Plan:
        """The rows that store ``jobs``, the INSERT they take (the columns of priorities and
        groups only when some job has them), their queues, and whether any has a unique key."""
        rows: list[tuple[Any, ...]] = []
        queues: set[str] = set()
        keyed = laned = ranked = False
        for j in jobs:  # one pass
            rows.append(_row(j))
            queues.add(j.queue)
            keyed = keyed or j.unique_key is not None
            laned = laned or j.group is not None
            ranked = ranked or j.priority != 0
        if not (laned or ranked):  # the defaults: priority 0, boost 0
            return rows, self._sql_insert, queues, keyed
        return ([self._with_rank(row, j, laned) for row, j in zip(rows, jobs, strict=True)],
                self._sql_insert_laned if laned else self._sql_insert_ranked, queues, keyed)

    def _with_rank(self, row: tuple[Any, ...], job: JobRecord, laned: bool) -> tuple[Any, ...]:
        """``row`` of ``job`` with its priority and boost, and its group when ``laned``."""
        return (*row, job.priority, boost(job.priority, self.aging)) + \
            ((job.group,) if laned else ())

    def _insert_at_once(self, conn: sqlite3.Connection, job: JobRecord) -> bool | None:
        """Store ``job`` in one statement, which SQLite commits by itself, when the writer's
        cache shows that the checks of a full write would pass (its queue known and without
        a cap in the store) and the statement finds that nothing those checks read has
        changed since the cache was read (the namespace's ``queues`` counter unchanged: see
        :func:`~conveyor.backends.sqlite.migrations.queues_moved`; a write of another
        connection meanwhile fails the statement as locked); None when it does not store it
        (the caller then makes the full write, which also says why an id that exists is
        refused). The caller checked the rest: one job, no unique key, no cap of this
        producer's on its queue. Its row (:func:`_row`) is made once the connection is this
        caller's: a write that cannot run at once (a busy loop, a busy connection) makes
        none, and leaves the rows to :meth:`_rows`."""
        writer = self._writer
        known, caps, version = writer.cache.get("known"), writer.cache.get("caps"), writer.version
        queue = job.queue
        if known is None or queue not in known or caps is None or version is None:
            return None
        for capped, _ in caps:
            if capped == queue:
                return None
        row = _row(job)
        insert = self._sql_insert
        if job.priority != 0 or job.group is not None:  # (else the defaults: 0, boost 0)
            laned = job.group is not None
            row = self._with_rank(row, job, laned)
            insert = self._sql_insert_laned if laned else self._sql_insert_ranked
        try:
            stored = conn.execute(self._sql_at_once[insert], (*row, version)).rowcount
        except sqlite3.IntegrityError:
            return None
        except sqlite3.OperationalError as exc:
            if is_locked(exc):  # another process writes: the full write waits for the lock
                return None
            raise
        return True if stored == 1 else None

    def _enqueue_fn(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int],
        plan: _Plan | None = None,
    ) -> Callable[[sqlite3.Connection], list[str | None]]:
        all_rows, insert, all_queues, keyed = plan or self._rows(jobs)
        none_held: list[str | None] = [None] * len(jobs)
        caps_sql, count_sql = self._sql_caps, self._sql_waiting
        most = self.max_queues

        def fn(conn: sqlite3.Connection) -> list[str | None]:
            # the cache of the writer running this (a forked child's store makes its own)
            cache = self._writer.cache
            held, rows, queues, stored = none_held, all_rows, all_queues, jobs
            if keyed:  # the jobs whose key is held are not stored
                held = self._held_keys(conn, jobs)
                stored = [j for j, holder in zip(jobs, held, strict=True) if holder is None]
                rows = [row for row, holder in zip(all_rows, held, strict=True)
                        if holder is None]
                queues = {j.queue for j in stored}
            fresh = self._new_queues(conn, queues) if most is not None else []
            before = conn.total_changes
            try:  # first, so that an id that exists is reported before a full queue
                if len(rows) == 1:
                    conn.execute(insert, rows[0])
                else:
                    conn.executemany(insert, rows)
            except sqlite3.IntegrityError as exc:
                # the rows go in in order, up to the one whose id exists (or repeats one of
                # this call): the rows inserted before it tell which
                failed = conn.total_changes - before
                if "UNIQUE" not in str(exc) or failed >= len(rows):
                    raise
                raise DuplicateJob(rows[failed][0]) from exc
            # the store's caps (every producer's) and this producer's own: the smaller holds;
            # a full queue raises, and the writer rolls the inserts back
            stored_caps = cache.get("caps")
            if stored_caps is None:  # kept while no other write can have changed them
                stored_caps = cache["caps"] = conn.execute(caps_sql).fetchall()
            if stored_caps or limits:
                caps = {queue: limits[queue] for queue in queues if queue in limits}
                for queue, cap in stored_caps:
                    if queue in queues:
                        caps[queue] = min(cap, caps.get(queue, cap))
                for queue, limit in caps.items():
                    (waiting,) = conn.execute(count_sql, (queue,)).fetchone()
                    if waiting > limit:
                        raise QueueFull(queue, limit)
            if fresh and most is not None and self._queues_past(conn, most):
                raise TooManyQueues(fresh[0], most)
            if keyed:
                self._hold_keys(conn, stored)
            known = cache.get("known")
            if known is None:
                cache["known"] = set(queues)
            else:
                known.update(queues)
            return held

        return fn

    def _new_queues(self, conn: sqlite3.Connection, queues: Iterable[str]) -> list[str]:
        """Those of ``queues`` the namespace does not know (no job, no settings), sorted. The
        queues found known are kept in the writer's cache (see :class:`Writer`): only a
        write that is not an enqueue, or another connection's, can make one unknown again
        (within one transaction, a queue forgotten and made again counts as before)."""
        known: set[str] = self._writer.cache.setdefault("known", set())
        fresh = []
        for queue in sorted(queues):
            if queue in known:
                continue
            if conn.execute(self._sql_queue_known, (queue, queue)).fetchone() is None:
                fresh.append(queue)
            else:
                known.add(queue)
        return fresh

    def _queues_past(self, conn: sqlite3.Connection, most: int) -> bool:
        """True when the namespace knows more than ``most`` queues: those with jobs (found
        by skipping through the index of states, one step per queue) and those with
        settings; it stops counting past ``most``."""
        names = {name for (name,) in conn.execute(f"SELECT name FROM {self.ns}_queues")}
        for state in JobState:
            if len(names) > most:
                break
            names.update(name for (name,) in conn.execute(
                self._sql_state_queues, (str(state), str(state), most + 1)))
        return len(names) > most

    def _held_keys(self, conn: sqlite3.Connection, jobs: Sequence[JobRecord]) -> list[str | None]:
        """Per job, the id of the job holding its unique key (None: not held); a key met
        twice in ``jobs`` is held by the first job that has it."""
        t = self.ns
        sql = (f"SELECT u.job_id FROM {t}_unique u JOIN {t}_jobs j ON j.id = u.job_id "
               f"AND j.unique_key = u.key WHERE u.key=? AND (u.until IS NULL OR u.until > ?) "
               f"AND j.state NOT IN ('succeeded', 'dead', 'cancelled')")
        now = time.time()
        taken: dict[str, str] = {}
        held: list[str | None] = []
        for job in jobs:
            key = job.unique_key
            holder = None
            if key is not None:
                holder = taken.get(key)
                if holder is None:
                    row = conn.execute(sql, (key, now)).fetchone()
                    holder = row[0] if row is not None else None
                    taken[key] = holder if holder is not None else job.id
            held.append(holder)
        return held

    def _hold_keys(self, conn: sqlite3.Connection, stored: Sequence[JobRecord]) -> None:
        """Record the unique keys of the ``stored`` jobs (replacing rows that no longer
        hold), each until now plus its hold, by this machine's clock."""
        now = time.time()
        conn.executemany(
            f"INSERT OR REPLACE INTO {self.ns}_unique (key, job_id, until) VALUES (?,?,?)",
            [(j.unique_key, j.id,
              None if j.unique_until is None else now + (j.unique_until - j.created_at))
             for j in stored if j.unique_key is not None])

    def _stored_at_once(self, jobs: Sequence[JobRecord], limits: Mapping[str, int],
                        run: Callable[..., bool | None]) -> bool:
        """Whether ``run`` (the writer's :meth:`~Writer.run_at_once` or
        :meth:`~Writer.run_on_loop`) stored ``jobs`` in one statement: one job, no unique
        key, no cap of this producer's on its queue (see :meth:`_insert_at_once`)."""
        if len(jobs) != 1:
            return False
        job = jobs[0]
        if job.unique_key is not None or job.queue in limits:
            return False
        return bool(run(self._insert_at_once, job))

    async def enqueue(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        if not self._usable():  # (first: a forked child's store makes its own writer)
            await self.open()
        sent = time.monotonic()
        try:
            stored = self._stored_at_once(jobs, limits, self._writer.run_on_loop)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, sent)
        if stored:  # written on the loop's thread, which must still turn now and then:
            if self._writer.loop_turn_due():  # (a caller's next enqueue, at once,
                await asyncio.sleep(0)  # would otherwise hold timers and I/O for ever)
            return [None]
        result: list[str | None] = await self._write(self._enqueue_fn(jobs, limits), True)
        return result

    def enqueue_blocking(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        sent = time.monotonic()
        plan = None
        try:  # as _guarded() does, without a context manager on this busy path
            while True:
                if not self._usable():
                    self.open_blocking()
                if self._stored_at_once(jobs, limits, self._writer.run_at_once):
                    return [None]
                plan = plan or self._rows(jobs)
                try:
                    result: list[str | None] = self._writer.run_blocking(
                        self._enqueue_fn(jobs, limits, plan), True)
                except WriterStopped:  # closed by another thread meanwhile: open again
                    continue
                return result
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc, sent)

    async def remember_idempotency(
        self, key: str, digest: str, job_id: str, ttl: float
    ) -> tuple[str, str] | None:
        t = self.ns

        def fn(conn: sqlite3.Connection) -> tuple[str, str] | None:
            now = time.time()
            row = conn.execute(f"SELECT digest, job_id FROM {t}_idempotency "
                               f"WHERE key=? AND expires_at > ?", (key, now)).fetchone()
            if row is not None:
                return str(row[0]), str(row[1])
            conn.execute(f"INSERT OR REPLACE INTO {t}_idempotency (key, digest, job_id, "
                         f"expires_at) VALUES (?,?,?,?)", (key, digest, job_id, now + ttl))
            return None

        found: tuple[str, str] | None = await self._write(fn)
        return found

    async def forget_idempotency(self, key: str, job_id: str) -> None:
        sql = f"DELETE FROM {self.ns}_idempotency WHERE key=? AND job_id=?"
        await self._write(lambda conn: conn.execute(sql, (key, job_id)))

    async def replace_idempotency(self, key: str, job_id: str, new_id: str) -> None:
        sql = f"UPDATE {self.ns}_idempotency SET job_id=? WHERE key=? AND job_id=?"
        await self._write(lambda conn: conn.execute(sql, (new_id, key, job_id)))

    def _purge_keys(self, conn: sqlite3.Connection, now: float) -> None:
        """Drop unique keys no longer held and idempotency records past their time."""
        t = self.ns
        conn.execute(f"DELETE FROM {t}_unique WHERE (until IS NOT NULL AND until <= ?) OR "
                     f"NOT EXISTS (SELECT 1 FROM {t}_jobs j WHERE j.id = job_id AND "
                     f"j.unique_key = key AND "
                     f"j.state NOT IN ('succeeded', 'dead', 'cancelled'))", (now,))
        conn.execute(f"DELETE FROM {t}_idempotency WHERE expires_at <= ?", (now,))

    # -- workers ------------------------------------------------------------------------------
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease: float,
        start: int | None = None, weights: QueueWeights | None = None,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[JobRecord]:
        hold = f"UPDATE {self.ns}_jobs SET unstarted=? WHERE id=?"
        known = limits or {}
        self._note_lease(lease)

        def fn(conn: sqlite3.Connection) -> tuple[list[JobRecord], dict[str, int] | None,
                                                  set[tuple[str, str]]]:
            now, clock = time.time(), lease_now()
            until = clock + lease
            limiter = Limiter(conn, self.ns, now, clock, known)
            credits = None
            if weights is not None:
                jobs, credits = self._claim_weighted(conn, worker_id, queues, limit, now,
                                                     until, weights, limiter)
            elif len(queues) == 1:
                jobs = self._claim_one(conn, worker_id, queues[0], limit, now, until, limiter)
            else:
                jobs = self._claim_merged(conn, worker_id, queues, limit, now, until, limiter)
            if start is not None:  # the others, and every suspect, wait for a start mark
                conn.executemany(hold, [(HELD_SUSPECT if j.suspect else UNSTARTED, j.id)
                                        for n, j in enumerate(jobs) if n >= start or j.suspect])
            return jobs, credits, limiter.held

        jobs, credits, held = await self._write(fn)
        if jobs:
            self._worked_at = time.monotonic()  # idle waits look often for a while
        if weights is not None and credits is not None:  # committed: the picks hold
            weights.credits = credits
        for name, reason in sorted(held):
            self.note_throttled(name, reason)
        return jobs

    async def limit_usage(self, names: Sequence[str], max_groups: int = 20) -> list[LimitUsage]:
        return await self._read(lambda conn: usage(conn, self.ns, names, max_groups,
                                                   time.time(), lease_now()))

    def _promote(self, conn: sqlite3.Connection, queues: Sequence[str], now: float) -> int:
        """Make the due scheduled jobs of ``queues`` queued; return how many."""
        promoted = 0
        for chunk in _chunks(queues):
            sql = self._sql_promote.format(marks=_marks(len(chunk)))
            promoted += conn.execute(sql, (*chunk, now)).rowcount
        return promoted

    def _claimed(self, rows: Iterable[tuple[Any, ...]]) -> list[JobRecord]:
        """The jobs of claim ``rows`` (:data:`JOB_COLUMNS`, claim, unstarted, boost), in
        claim order: rank, then run_at, then id."""
        ranked = []
        for row in rows:
            job = job_from_row(row)
            job.claim = row[-3]
            job.suspect = row[-2] == SUSPECT or job.recoveries > 0
            ranked.append((job.run_at - row[-1], job.run_at, job.id, job))
        ranked.sort(key=lambda item: item[:3])
        return [item[3] for item in ranked]

    def _claim_number(self, conn: sqlite3.Connection) -> int:
        """The next number of the namespace's claim counter, which only grows: a claim gives
        it to the jobs it takes (their fencing token), so a claim of a job is told from all
        its others, even across a delete and an enqueue again of the same id. The claim
        that takes jobs spends it (:meth:`_spend_claim`, in the same transaction); one that
        takes none writes nothing."""
        row = conn.execute(self._sql_last_claim).fetchone()
        if row is None:  # no counter (its row was deleted by hand): above every job's claim
            row = conn.execute(f"SELECT coalesce(max(claim), 0) FROM {self.ns}_jobs").fetchone()
        return int(row[0]) + 1

    def _spend_claim(self, conn: sqlite3.Connection, number: int,
                     rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Record ``number`` as the last claim number once ``rows`` were taken with it."""
        if rows:
            conn.execute(self._sql_spend_claim, (number,))
        return rows

    def _take(self, conn: sqlite3.Connection, worker_id: str, ids: Sequence[str],
              now: float, until: float) -> list[JobRecord]:
        """Claim the jobs of ``ids`` (queued, as the caller found them), in claim order."""
        rows: list[tuple[Any, ...]] = []
        claim = self._claim_number(conn) if ids else 0
        for chunk in _chunks(ids):
            sql = self._sql_take.format(ids=_marks(len(chunk)))
            rows.extend(conn.execute(sql, (worker_id, claim, now, until, *chunk)))
        return self._claimed(self._spend_claim(conn, claim, rows))

    def _take_in_order(self, conn: sqlite3.Connection, worker_id: str, ids: Sequence[str],
                       now: float, until: float) -> list[JobRecord]:
        """Claim the jobs of ``ids``, in the order of ``ids``."""
        jobs = {job.id: job for job in self._take(conn, worker_id, ids, now, until)}
        return [jobs[job_id] for job_id in ids]

    def _limiter(self, conn: sqlite3.Connection, now: float,
                 limiter: Limiter | None) -> Limiter:
        return limiter if limiter is not None else Limiter(conn, self.ns, now, lease_now(), {})

    def _claim_one(self, conn: sqlite3.Connection, worker_id: str, queue: str, limit: int,
                   now: float, until: float, limiter: Limiter | None = None) -> list[JobRecord]:
        """One queue: its due scheduled jobs promoted, then one statement when the queue
        has no laned jobs ready (one index seek tells), else the merge of
        :meth:`_claim_merged`."""
        self._promote(conn, (queue,), now)
        if laned_names(conn, self.ns, queue):
            return self._claim_merged(conn, worker_id, (queue,), limit, now, until, limiter,
                                      promoted=True)
        claim = self._claim_number(conn)
        rows = conn.execute(self._sql_claim_one,
                            (worker_id, claim, now, until, queue, now, limit)).fetchall()
        if any(type(row[7]) is not float for row in rows):  # (see DUE)
            due_now(conn, self.ns, queue, now)
        return self._claimed(self._spend_claim(conn, claim, rows))

    def _ranked(self, conn: sqlite3.Connection, queues: Sequence[str], limit: int,
                now: float, promoted: bool = False) -> dict[str, list[Head]]:
        """Per queue that is not paused, up to ``limit`` of its unlaned ready jobs as
        ``(rank, run_at, id)`` in claim order, after promoting the due scheduled ones. One
        indexed look per queue: cheaper than one ORDER BY over all of them."""
        if not promoted:
            self._promote(conn, queues, now)
        paused = {name for (name,) in conn.execute(
            f"SELECT name FROM {self.ns}_queues WHERE paused=1")}
        found = {}
        for queue in dict.fromkeys(queues):
            if queue not in paused:
                rows = conn.execute(self._sql_ranked, (queue, now, limit)).fetchall()
                if any(type(row[1]) is not float for row in rows):
                    # run times a hand left as no number (see DUE): every such job of the
                    # queue due now, then the look again, with numbers only
                    due_now(conn, self.ns, queue, now)
                    rows = conn.execute(self._sql_ranked, (queue, now, limit)).fetchall()
                found[queue] = rows
        return found

    def _lanes(self, conn: sqlite3.Connection, queue: str, limiter: Limiter,
               want: int) -> list[Lane]:
        """The lanes of ``queue``'s laned names with ready jobs, each from its cursor, for
        a claim of up to ``want`` jobs."""
        names = laned_names(conn, self.ns, queue)
        if not names:
            return []
        turns = cursors(conn, self.ns, queue, names)
        return [Lane(limiter, queue, name, turns.get(name), want) for name in names]

    @staticmethod
    def _merge(plain: Sequence[Head], lanes: Sequence[Lane],
               limit: int) -> tuple[list[Head], list[Taken]]:
        """Up to ``limit`` jobs: repeatedly the best of the heads of the unlaned jobs
        (``plain``, in claim order) and of each lane; the laned ones also as taken."""
        chosen: list[Head] = []
        taken: list[Taken] = []
        heap = [(head, n) for n, lane in enumerate(lanes) if (head := lane.head()) is not None]
        heapq.heapify(heap)
        at = 0
        while len(chosen) < limit:
            while heap:  # a take of a name moves its other lanes' heads: look again
                head, n = heap[0]
                now_head = lanes[n].head()
                if now_head == head:
                    break
                if now_head is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (now_head, n))
            best = plain[at] if at < len(plain) else None
            if heap and (best is None or heap[0][0] < best):
                head, n = heap[0]
                taken.append(lanes[n].take())
                chosen.append(head)
                if len(chosen) >= limit:  # no look further: the lane's cursor stays here
                    break
                following = lanes[n].head()
                if following is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, (following, n))
            elif best is not None:
                chosen.append(best)
                at += 1
            else:
                break
        return chosen, taken

    def _claim_merged(self, conn: sqlite3.Connection, worker_id: str, queues: Sequence[str],
                      limit: int, now: float, until: float, limiter: Limiter | None = None,
                      promoted: bool = False) -> list[JobRecord]:
        """Several queues without weights: the lowest ranks over all of them, each laned
        name's jobs taking turns over its groups within that order."""
        found = self._ranked(conn, queues, limit, now, promoted)
        limiter = self._limiter(conn, now, limiter)
        lanes = [lane for queue in found for lane in self._lanes(conn, queue, limiter, limit)]
        best = heapq.nsmallest(limit, itertools.chain.from_iterable(found.values()))
        if not lanes:
            return self._take(conn, worker_id, [job_id for _, _, job_id in best], now, until)
        chosen, taken = self._merge(best, lanes, limit)
        limiter.save(taken, lanes)
        return self._take_in_order(conn, worker_id, [job_id for _, _, job_id in chosen],
                                   now, until)

    def _claim_weighted(
        self, conn: sqlite3.Connection, worker_id: str, queues: Sequence[str], limit: int,
        now: float, until: float, weights: QueueWeights, limiter: Limiter | None = None,
    ) -> tuple[list[JobRecord], dict[str, int]]:
        """Queues shared by ``weights.pick`` (the queues of ``weights`` that ``queues``
        names; others have nothing ready); the jobs in the picks' order, each queue's in
        claim order. A queue's ready count is what it could give now: its laned jobs as
        their limits allow (queues looked at in turn, each seeing what the ones before
        would take). Return the jobs and the credits after the picks (``weights`` is left
        as it is: the caller sets them once the claim is committed)."""
        wanted = [q for q in weights.queues if q in queues]
        found = self._ranked(conn, wanted, limit, now)
        limiter = self._limiter(conn, now, limiter)
        offers: dict[str, list[Head]] = {}
        laned: dict[str, dict[str, Taken]] = {}
        every_lane: list[Lane] = []
        for queue, rows in found.items():
            lanes = self._lanes(conn, queue, limiter, limit)
            every_lane.extend(lanes)
            if lanes:
                offers[queue], taken = self._merge(rows, lanes, limit)
                laned[queue] = {job.head[2]: job for job in taken}
            else:
                offers[queue] = rows
        picks, credits = weights.pick({q: len(rows) for q, rows in offers.items()}, limit)
        nexts = {q: iter(rows) for q, rows in offers.items()}
        ids: list[str] = []
        kept: list[Taken] = []
        for queue in picks:
            job_id = next(nexts[queue])[2]
            ids.append(job_id)
            if job_id in laned.get(queue, {}):
                kept.append(laned[queue][job_id])
        limiter.save(kept, every_lane)
        return self._take_in_order(conn, worker_id, ids, now, until), credits

    async def set_priority(self, job_id: str, priority: int) -> JobRecord | None:
        check_priority(priority)
        sql = f"UPDATE {self.ns}_jobs SET priority=?, boost=? WHERE id=? AND {WAITING}"
        gained = boost(priority, self.aging)

        def fn(conn: sqlite3.Connection) -> JobRecord | None:
            conn.execute(sql, (priority, gained, job_id))
            return self._get(conn, job_id)

        return await self._write(fn)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        t, keep = self.ns, self.retention
        # the claim check (when the outcome names one) ignores a late copy of an outcome
        guard = ("WHERE id=? AND worker_id=? AND state='running' "
                 "AND (? IS NULL OR claim=?)")
        final = (
            f"UPDATE {t}_jobs SET state=?, finished_at=?, expires_at=?, result=?, error=?, "
            f"traceback=?, lease_expires_at=NULL {guard}"
        )
        # A job whose cancellation was asked for does not go back to waiting: it ends here.
        cancel_instead = (
            f"UPDATE {t}_jobs SET state='cancelled', finished_at=?, expires_at=?, error=?, "
            f"traceback=?, lease_expires_at=NULL {guard} AND cancel_requested=1"
        )
        back = (
            f"UPDATE {t}_jobs SET state=?, run_at=coalesce(?, run_at), error=?, traceback=?, "
            f"attempts=attempts-?, deferrals=deferrals+?, worker_id=NULL, "
            f"lease_expires_at=NULL {guard}"
        )
        final_rows, cancel_rows, back_rows = [], [], []
        for o in outcomes:
            error, tb = storable(o.error), storable(o.traceback)
            if o.kind in (OutcomeKind.RETRY, OutcomeKind.REQUEUE):
                requeue = o.kind is OutcomeKind.REQUEUE
                state = "queued" if requeue else "scheduled"
                cancel_rows.append(
                    (o.finished_at, o.finished_at + keep, error, tb, o.job_id, o.worker_id,
                     o.claim, o.claim)
                )
                # a deferred retry is not charged: its attempt is given back
                deferred = int(o.deferred and not requeue)
                back_rows.append(
                    (state, o.run_at, error, tb, int(requeue) + deferred, deferred, o.job_id,
                     o.worker_id, o.claim, o.claim)
                )
            else:
                final_rows.append(
                    (str(o.kind), o.finished_at, o.finished_at + keep, o.result_json, error,
                     tb, o.job_id, o.worker_id, o.claim, o.claim)
                )

        def fn(conn: sqlite3.Connection) -> None:
            if final_rows:
                conn.executemany(final, final_rows)
            if back_rows:
                conn.executemany(cancel_instead, cancel_rows)
                conn.executemany(back, back_rows)

        await self._write(fn)

    async def heartbeat(
        self, worker: WorkerInfo, held: Mapping[str, int], lease: float,
        started: Sequence[tuple[str, int]] = (),
    ) -> Beat:
        t = self.ns
        ids = list(held)
        begun = [(job_id, worker.id, claim) for job_id, claim in started]
        self._note_lease(lease)

        def fn(conn: sqlite3.Connection) -> Beat:
            now, until = time.time(), lease_now() + lease
            conn.execute(
                f"INSERT OR REPLACE INTO {t}_workers ({WORKER_COLUMNS}, lease_expires_at) "
                f"VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (worker.id, worker.host, worker.pid, dumps(worker.queues), worker.concurrency,
                 worker.min_concurrency, worker.max_concurrency, worker.busy, worker.processed,
                 worker.failed, worker.started_at, now, until),
            )
            if begun:
                conn.executemany(
                    f"UPDATE {t}_jobs SET unstarted=0 WHERE id=? AND worker_id=? "
                    f"AND state='running' AND claim=?", begun
                )
            beat = Beat()
            owned: set[str] = set()
            for chunk in _chunks(ids):
                # the claim named for each id (one CASE over the chunk: the ids still
                # found through the primary key)
                cases = " ".join("WHEN ? THEN ?" for _ in chunk)
                rows = conn.execute(
                    f"UPDATE {t}_jobs SET lease_expires_at=? WHERE id IN ({_marks(len(chunk))}) "
                    f"AND worker_id=? AND state='running' AND claim = CASE id {cases} END "
                    f"RETURNING id, cancel_requested",
                    (until, *chunk, worker.id,
                     *(value for job_id in chunk for value in (job_id, held[job_id]))),
                )
                for job_id, wanted in rows:
                    owned.add(job_id)
                    if wanted:
                        beat.cancel.add(job_id)
            beat.lost = set(ids) - owned
            return beat

        return await self._write(fn)

    async def set_progress(
        self, worker_id: str, updates: Sequence[tuple[str, int, float, str | None]]
    ) -> None:
        sql = (
            f"UPDATE {self.ns}_jobs SET progress=?, progress_message=? "
            f"WHERE id=? AND state='running' AND worker_id=? AND claim=?"
        )
        rows = [(value, message, job_id, worker_id, claim)
                for job_id, claim, value, message in updates]
        await self._write(lambda conn: conn.executemany(sql, rows))

    def _ready_count(self, conn: sqlite3.Connection, queues: Sequence[str], limit: int,
                     lanes: bool = True) -> int:
        """Up to ``limit`` jobs of ``queues`` (not paused) ready now: queued (laned ones only
        with ``lanes``) or scheduled and due (laned or not)."""
        marks, t, now = _marks(len(queues)), self.ns, time.time()
        queued = "state='queued'" if lanes else "state='queued' AND grp IS NULL"
        # queued and due scheduled jobs apart, each from its own index
        (count,) = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {t}_jobs WHERE {queued} AND "
            f"queue IN ({marks}) AND {self._not_paused} AND {DUE} UNION ALL "
            f"SELECT 1 FROM {t}_jobs WHERE state='scheduled' AND queue IN ({marks}) "
            f"AND {self._not_paused} AND run_at <= ? LIMIT ?)",
            (*queues, now, *queues, now, limit),
        ).fetchone()
        return int(count)

    async def ready_count(self, queues: Sequence[str], limit: int) -> int:
        return await self._read(lambda conn: self._ready_count(conn, queues, limit))

    def _next_due(self, conn: sqlite3.Connection, queues: Sequence[str],
                  lanes: bool = True) -> float | None:
        """When the first waiting job of ``queues`` (not paused) is due: a queued job's
        ``run_at`` (it is due already; laned ones only with ``lanes``), else the earliest
        of the scheduled ones."""
        t = self.ns
        queued = "state='queued'" if lanes else "state='queued' AND grp IS NULL"
        sql = (f"SELECT min(at) FROM (SELECT * FROM (SELECT run_at AS at FROM {t}_jobs "
               f"WHERE {queued} AND queue=?1 LIMIT 1) UNION ALL SELECT min(run_at) "
               f"FROM {t}_jobs WHERE state='scheduled' AND queue=?1 AND run_at < '') "
               f"WHERE ?1 NOT IN (SELECT name FROM {t}_queues WHERE paused=1)")
        due: float | None = None
        for queue in queues:
            (at,) = conn.execute(sql, (queue,)).fetchone()
            if at is not None and type(at) is not float:
                at = stored.number(at, 0.0)  # an int, or no number: due (see DUE)
            if at is not None and (due is None or at < due):
                due = at
        return due

    def _lane_marks(self, conn: sqlite3.Connection) -> tuple[str, int]:
        """What tells a wait without lanes that a laned job may start now: the newest job
        id (ids grow with time: a job was enqueued) and the running laned jobs (fewer: one
        ended and freed its slot). Two index seeks."""
        t = self.ns
        (newest,) = conn.execute(f"SELECT max(id) FROM {t}_jobs").fetchone()
        (running,) = conn.execute(f"SELECT count(*) FROM {t}_jobs INDEXED BY {t}_jobs_running "
                                  f"WHERE state='running' AND grp IS NOT NULL").fetchone()
        return str(newest or ""), int(running)

    async def wait_for_work(self, queues: Sequence[str], timeout: float,
                            lanes: bool = True) -> None:
        """Poll ``PRAGMA data_version`` (in memory, no I/O) until another connection commits
        work that is ready, the next scheduled job falls due, or ``timeout`` passes: every
        :data:`POLL_INTERVAL` seconds, or :data:`POLL_QUIET` once no wait of this store has
        ended with work for :data:`QUIET_AFTER` seconds. Without ``lanes``, queued laned
        jobs are no work ready; a commit that enqueues a job or ends a running laned one
        ends the wait all the same."""
        self.open_blocking()
        deadline = time.time() + timeout
        with self._using() as conn:
            due = self._next_due(conn, queues, lanes)
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            marks = None if lanes else self._lane_marks(conn)
        if due is not None:
            deadline = min(deadline, due)
        while time.time() < deadline:
            quiet = time.monotonic() - self._worked_at >= QUIET_AFTER
            await asyncio.sleep(POLL_QUIET if quiet else POLL_INTERVAL)
            with self._using() as now:
                if now is not conn:  # the store was closed and opened again: look anew
                    return
                now_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if now_version == version:
                    continue
                if self._ready_count(conn, queues, 1, lanes):
                    self._worked_at = time.monotonic()
                    return
                if marks is not None:
                    newest, running = self._lane_marks(conn)
                    if newest > marks[0] or running < marks[1]:
                        self._worked_at = time.monotonic()
                        return
                    marks = (newest, running)
                version = now_version
                due = self._next_due(conn, queues, lanes)
            if due is not None:
                deadline = min(deadline, due)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._write(
            lambda conn: conn.execute(f"DELETE FROM {self.ns}_workers WHERE id=?", (worker_id,))
        )

    # -- maintenance --------------------------------------------------------------------------
    async def recover_expired(self, max_recoveries: int) -> Recovery:
        t, keep = self.ns, self.retention
        # only the leases that had lapsed when the pass was asked for: one that lapses while
        # the pass waits for the write lock (another connection holding it) is that of a
        # worker whose heartbeat waits alike and comes next; the next pass decides on it
        asked, began = lease_now(), time.monotonic()

        def fn(conn: sqlite3.Connection) -> Recovery:
            # a lock held long (noted when the wait for it ended, before this runs: see
            # _lock_held) may have held this process's heartbeats and lapsed leases of live
            # workers, whose own heartbeats wait alike: the next pass decides
            if self.last_trouble >= began:
                return Recovery()
            # one write transaction: a job two workers see expire is moved (and counted) once
            now, clock = time.time(), lease_now()
            rows = conn.execute(
                f"SELECT j.id, j.queue, j.recoveries, j.cancel_requested, j.unstarted, "
                f"w.id IS NOT NULL FROM {t}_jobs j LEFT JOIN {t}_workers w "
                f"ON w.id = j.worker_id AND w.lease_expires_at >= ? "
                f"WHERE j.state='running' AND j.lease_expires_at < ?",
                (clock, asked),
            ).fetchall()
            requeue, dead, cancelled = [], [], []
            dead_by_queue: dict[str, int] = {}
            fates: list[tuple[str, str, str]] = []
            for job_id, queue, recoveries, cancel, unstarted, owner_alive in rows:
                held = unstarted in (UNSTARTED, HELD_SUSPECT)
                if cancel:
                    cancelled.append((now, now + keep, job_id))
                    fates.append((job_id, queue, "cancelled"))
                elif held or owner_alive:
                    # not this job's doing: the attempt is void
                    fates.append((job_id, queue, "uncharged"))
                    # one held unstarted may have started just before its worker died: it
                    # runs alone next time
                    requeue.append((0, 1, MAYBE_STARTED if held else 0,
                                    "requeued unstarted (its worker was lost)" if held
                                    else "lease expired while its worker lived; requeued",
                                    job_id))
                elif stored.integer(recoveries) + 1 >= max_recoveries:  # (odd: by hand)
                    lost = stored.integer(recoveries) + 1
                    error = (f"worker lost {lost} time{'' if lost == 1 else 's'} (lease "
                             "expired); giving up")
                    dead.append((error, now, now + keep, job_id))
                    dead_by_queue[queue] = dead_by_queue.get(queue, 0) + 1
                    fates.append((job_id, queue, "dead"))
                else:
                    requeue.append((1, 0, 0, "worker lost (lease expired); requeued", job_id))
                    fates.append((job_id, queue, "charged"))
            conn.executemany(
                f"UPDATE {t}_jobs SET state='queued', recoveries=recoveries+?, "
                f"attempts=MAX(attempts-?, 0), worker_id=NULL, lease_expires_at=NULL, unstarted=?, "
                f"error=? WHERE id=?",
                requeue,
            )
            conn.executemany(
                f"UPDATE {t}_jobs SET state='dead', recoveries=recoveries+1, error=?, "
                f"finished_at=?, expires_at=?, lease_expires_at=NULL WHERE id=?",
                dead,
            )
            conn.executemany(
                f"UPDATE {t}_jobs SET state='cancelled', finished_at=?, expires_at=?, "
                f"lease_expires_at=NULL WHERE id=?",
                cancelled,
            )
            conn.execute(f"DELETE FROM {t}_workers WHERE lease_expires_at < ?", (asked,))
            return Recovery(len(requeue), dead_by_queue, now if dead else 0.0, fates)

        return await self._write(fn)

    async def promote_scheduled(self) -> int:
        return await self._write(lambda conn: self._promote_all(conn, time.time()))

    def _promote_all(self, conn: sqlite3.Connection, now: float) -> int:
        """Make every due scheduled job queued; return how many. The queues that have
        scheduled jobs are found one index look each, not by a scan of the jobs."""
        t = self.ns
        queues = [name for (name,) in conn.execute(
            f"WITH RECURSIVE q(name) AS (SELECT min(queue) FROM {t}_jobs "
            f"WHERE state='scheduled' UNION ALL SELECT (SELECT min(queue) FROM {t}_jobs "
            f"WHERE state='scheduled' AND queue > q.name) FROM q WHERE q.name IS NOT NULL) "
            f"SELECT name FROM q WHERE name IS NOT NULL")]
        for chunk in _chunks(queues):
            conn.execute(self._sql_promote_odd.format(marks=_marks(len(chunk))), chunk)
        return self._promote(conn, queues, now)

    async def purge_expired(self) -> int:
        """Delete finished jobs past their retention (counted) and statistics older than
        :data:`~conveyor.stats.STATS_KEEP` (not counted)."""
        jobs = (
            f"DELETE FROM {self.ns}_jobs WHERE state IN ('succeeded', 'dead', 'cancelled') "
            f"AND expires_at < ?"
        )
        stats = f"DELETE FROM {self.ns}_stats WHERE minute < ?"
        # a bucket that has filled up again is the same as none
        buckets = f"DELETE FROM {self.ns}_buckets WHERE full_at <= ?"

        def fn(conn: sqlite3.Connection) -> int:
            now = time.time()
            conn.execute(stats, (now - STATS_KEEP,))
            conn.execute(buckets, (now,))
            purged: int = conn.execute(jobs, (now,)).rowcount
            self._purge_keys(conn, now)
            return purged

        return await self._write(fn)

    # -- inspection and admin -----------------------------------------------------------------
    def _get(self, conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM {self.ns}_jobs WHERE id=?", (job_id,)
        ).fetchone()
        return job_from_row(row) if row else None

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._read(lambda conn: self._get(conn, job_id))

    async def list_jobs(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
    ) -> list[JobRecord]:
        return [job_from_row(r) for r in
                await self._list_rows(JOB_COLUMNS, state, queue, limit, cursor, name)]

    async def list_summaries(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
        preview: int = PREVIEW_CHARS,
    ) -> list[JobSummary]:
        # the long columns are cut in the SELECT: one character more than the preview tells
        # a cut value from a whole one
        columns = [c.strip() for c in JOB_COLUMNS.split(",")]
        keep = int(preview) + 1
        cut = ", ".join(f"substr({c}, 1, {keep})" if c in _LONG_COLUMNS else c
                        for c in columns)
        rows = await self._list_rows(cut, state, queue, limit, cursor, name)
        summaries = []
        for row in rows:
            texts = {c: as_text(row[columns.index(c)]) for c in _LONG_COLUMNS}
            whole = list(row)
            for c, placeholder in (("args", "[]"), ("kwargs", "{}"), ("result", None)):
                whole[columns.index(c)] = placeholder
            summaries.append(summary_of(job_from_row(tuple(whole)), texts, preview))
        return summaries

    async def _list_rows(self, columns: str, state: JobState | None, queue: str | None,
                         limit: int, cursor: str | None, name: str | None) -> list[Any]:
        """The rows of a listing, newest first: ``columns`` of the jobs that match."""
        where, params = [], []
        for column, value in (("state", state), ("queue", queue), ("name", name)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(str(value))
        if cursor:
            where.append("id < ?")
            params.append(cursor)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {columns} FROM {self.ns}_jobs {clause} ORDER BY id DESC LIMIT ?"
        return await self._read(lambda conn: conn.execute(sql, (*params, limit)).fetchall())

    async def counts(self) -> dict[str, dict[str, int]]:
        sql = f"SELECT queue, state, count(*) FROM {self.ns}_jobs GROUP BY queue, state"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        result: dict[str, dict[str, int]] = {}
        for queue, state, count in rows:  # (a name a hand left as bytes reads as text)
            by_state = result.setdefault(stored.text(queue), {str(s): 0 for s in JobState})
            key = stored.text(state)
            by_state[key] = by_state.get(key, 0) + stored.integer(count)
        return result

    async def cancel(self, job_id: str) -> JobRecord | None:
        t, keep = self.ns, self.retention

        def fn(conn: sqlite3.Connection) -> JobRecord | None:
            now = time.time()
            conn.execute(
                f"UPDATE {t}_jobs SET state='cancelled', finished_at=?, expires_at=? "
                f"WHERE id=? AND {WAITING}",
                (now, now + keep, job_id),
            )
            conn.execute(
                f"UPDATE {t}_jobs SET cancel_requested=1 WHERE id=? AND state='running'",
                (job_id,),
            )
            return self._get(conn, job_id)

        return await self._write(fn)

    def _retry_sql(self, where: str) -> str:
        return (
            f"UPDATE {self.ns}_jobs SET state='queued', attempts=0, recoveries=0, "
            f"deferrals=0, run_at=?, finished_at=NULL, expires_at=NULL, result=NULL, "
            f"cancel_requested=0, worker_id=NULL, progress=NULL, progress_message=NULL "
            f"WHERE {where}"
        )

    async def retry(self, job_id: str) -> JobRecord | None:
        sql = self._retry_sql("id=? AND state IN ('dead', 'cancelled')")

        def fn(conn: sqlite3.Connection) -> JobRecord | None:
            conn.execute(sql, (time.time(), job_id))
            return self._get(conn, job_id)

        return await self._write(fn)

    async def retry_dead(self, queue: str | None = None) -> int:
        where = "state='dead'" + (" AND queue=?" if queue is not None else "")
        sql = self._retry_sql(where)
        params: tuple[Any, ...] = (queue,) if queue is not None else ()
        return await self._write(lambda conn: conn.execute(sql, (time.time(), *params)).rowcount)

    async def delete(self, job_id: str) -> bool:
        sql = f"DELETE FROM {self.ns}_jobs WHERE id=? AND state != 'running'"
        return await self._write(lambda conn: conn.execute(sql, (job_id,)).rowcount > 0)

    async def workers(self) -> list[WorkerInfo]:
        sql = (
            f"SELECT {WORKER_COLUMNS} FROM {self.ns}_workers WHERE lease_expires_at >= ? "
            f"ORDER BY started_at"
        )
        rows = await self._read(lambda conn: conn.execute(sql, (lease_now(),)).fetchall())
        return [worker_from_row(r) for r in rows]

    # -- queue settings -----------------------------------------------------------------------
    async def set_paused(self, queue: str, paused: bool) -> None:
        # idle workers see the commit (PRAGMA data_version) and look again
        await self._write(lambda conn: self._set_queue(conn, queue, "paused", int(paused)))

    async def set_max_queued(self, queue: str, limit: int | None) -> None:
        await self._write(lambda conn: self._set_queue(conn, queue, "max_queued", limit))

    def _set_queue(self, conn: sqlite3.Connection, queue: str, column: str,
                   value: int | None) -> None:
        """Set one setting of ``queue``; a queue left with none loses its row. Pausing or
        capping a queue the namespace does not know yet makes it known: past
        :attr:`max_queues`, :class:`TooManyQueues` (and the writer rolls the row back)."""
        t, most = self.ns, self.max_queues
        fresh = (most is not None and value is not None and value != 0
                 and bool(self._new_queues(conn, [queue])))
        self._writer.cache.pop("caps", None)  # later writes of the group read them anew
        conn.execute(f"INSERT INTO {t}_queues (name, {column}) VALUES (?, ?) "
                     f"ON CONFLICT (name) DO UPDATE SET {column}=excluded.{column}",
                     (queue, value))
        if fresh and most is not None and self._queues_past(conn, most):
            raise TooManyQueues(queue, most)
        conn.execute(f"DELETE FROM {t}_queues WHERE name=? AND paused=0 AND max_queued IS NULL",
                     (queue,))

    async def queue_settings(self) -> dict[str, QueueSettings]:
        sql = (f"SELECT name, paused, max_queued FROM {self.ns}_queues "
               f"WHERE paused=1 OR max_queued IS NOT NULL ORDER BY name")
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        found = {stored.text(name): QueueSettings(stored.text(name), paused == 1,
                                                  stored_limit(max_queued))
                 for name, paused, max_queued in rows}
        return {name: s for name, s in found.items() if s.paused or s.max_queued is not None}

    # -- known jobs ---------------------------------------------------------------------------
    async def publish_jobs(self, worker_id: str, jobs: Sequence[KnownJob]) -> None:
        upsert = (f"INSERT OR REPLACE INTO {self.ns}_known (name, record, seen_at) "
                  f"VALUES (?,?,?)")
        prune = f"DELETE FROM {self.ns}_known WHERE seen_at < ?"
        records = [(job.name, dumps({**job.to_dict(), "worker_id": worker_id}))
                   for job in jobs]

        def fn(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(upsert, [(name, record, now) for name, record in records])
            conn.execute(prune, (now - self.retention,))

        await self._write(fn)

    async def known_jobs(self) -> list[KnownJob]:
        sql = f"SELECT record, seen_at FROM {self.ns}_known ORDER BY name"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        found = []
        for record, seen_at in rows:
            job = read_known(record, seen_at if isinstance(seen_at, float | int) else None)
            if job is not None:
                found.append(job)
        return found

    # -- statistics ---------------------------------------------------------------------------
    async def add_stats(self, rows: Sequence[MinuteStats]) -> None:
        sums = ", ".join(f"{c}={c}+excluded.{c}" for c in SUMS)
        sql = (
            f"INSERT INTO {self.ns}_stats ({STATS_COLUMNS}) VALUES ({_marks(2 + len(SUMS))}) "
            f"ON CONFLICT (minute, queue) DO UPDATE SET {sums}"
        )
        params = [(r.minute, r.queue, r.succeeded, r.failed, r.dead, r.cancelled, r.started,
                   r.wait_total) for r in rows if not r.empty]
        if params:
            await self._write(lambda conn: conn.executemany(sql, params))

    async def stats(self, since: float) -> list[MinuteStats]:
        sql = (
            f"SELECT {STATS_COLUMNS} FROM {self.ns}_stats WHERE minute >= ? "
            f"ORDER BY minute, queue"
        )
        rows = await self._read(lambda conn: conn.execute(sql, (since,)).fetchall())
        return [_minute(row) for row in rows]

    # -- schedules ----------------------------------------------------------------------------
    async def schedule_clock(self) -> float:
        return time.time()

    async def publish_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleState]:
        return await self._write(lambda conn: sqlite_schedules.publish(conn, self.ns, schedules))

    async def schedules(self, names: Sequence[str] | None = None) -> list[ScheduleState]:
        return await self._read(lambda conn: sqlite_schedules.read(conn, self.ns, names))

    async def advance_schedule(self, name: str, last: float, next_tick: float | None,
                               last_job: str | None = None) -> None:
        await self._write(lambda conn: sqlite_schedules.advance(
            conn, self.ns, name, last, next_tick, last_job))

    async def rewind_schedule(self, name: str, expected: float, last: float,
                              next_tick: float | None) -> bool:
        return await self._write(lambda conn: sqlite_schedules.rewind(
            conn, self.ns, name, expected, last, next_tick))

    async def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState | None:
        return await self._write(
            lambda conn: sqlite_schedules.set_paused(conn, self.ns, name, paused))

    async def delete_schedule(self, name: str) -> bool:
        sql = f"DELETE FROM {self.ns}_schedules WHERE name=?"
        return bool(await self._write(lambda conn: conn.execute(sql, (name,)).rowcount))

    # -- dashboard sessions -------------------------------------------------------------------
    async def revoke_session(self, nonce: str, until: float) -> None:
        await self._write(lambda conn: sqlite_sessions.revoke(conn, self.ns, nonce, until,
                                                              time.time()))

    async def session_revoked(self, nonce: str) -> bool:
        return await self._read(lambda conn: sqlite_sessions.is_revoked(conn, self.ns, nonce,
                                                                        time.time()))
