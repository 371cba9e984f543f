"""One thread per process owns the SQLite write connection and commits in groups.

Every write (enqueue, claim, settle, heartbeat, admin) is a small function of the connection.
The thread takes all the functions waiting, runs each inside its own savepoint within one
``BEGIN IMMEDIATE`` transaction, commits once, and only then answers the callers. So many
concurrent enqueues share one fsync (group commit), and a failing function (a full queue,
say) rolls back alone without touching its neighbours.

A blocking caller that finds the connection idle commits on its own thread instead (taking
whatever else waits along): a lone producer then pays no thread hand-offs, only its fsync.
With nothing else waiting it runs its transaction straight through, without a group or a
future to answer it; a write that one statement can make runs as that statement alone
(:meth:`Writer.run_at_once`), which SQLite commits by itself. An awaited write of one
statement does the same on its event loop's thread when no other callback of that loop is
ready to run, the write-ahead log is small and such writes have been quick
(:meth:`Writer.run_on_loop`): the two hand-offs would cost its caller more than the write.

Facts the writes read under the write lock (the queues' caps, the queues known) may be kept
in :attr:`Writer.cache` from one transaction to the next, for the writes that say they
``keep`` it: only a write that moves the store's count of changes to those facts (the
``version`` query given to the writer: a counter that triggers move, see
:func:`conveyor.backends.sqlite.migrations.queues_moved`) or a write of this connection
that does not keep them can change them, and either empties the cache; the commits of
other connections that change none of them (a worker's claims and outcomes) leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import selectors
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sized
from typing import Any, TypeVar

from conveyor.backends.sqlite.schema import WAL_SIZE_LIMIT, is_locked, retry_locked
from conveyor.errors import ReentrantWrite
from conveyor.handoff import Answer

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

#: how many waiting writes one transaction takes at most
MAX_GROUP = 512
#: the first and the longest pause between two tries of the write lock (see :class:`Writer`)
LOCK_PAUSE, LOCK_PAUSE_MAX = 0.0002, 0.005
#: seconds a write still waits for the lock once the writer is being stopped (see stop())
STOP_PATIENCE = 1.0
#: a write's wait for the lock, however long it was queued, is at least this (or its whole
#: patience, if shorter): see _begin
LOCK_FLOOR = 1.0
#: seconds a write run on an event loop's thread (its fsync included) may take; after two
#: longer ones in a row (a slow disk; one alone is mostly the periodic checkpoint of a
#: small log), awaited writes go to the write thread for :data:`LOOP_WRITE_PAUSE`
#: seconds, doubling with each further slow one in a row up to
#: :data:`LOOP_WRITE_PAUSE_MAX` (a disk whose every write is slow holds a loop rarely),
#: unless the loop has nothing else to run then (a lone caller on an idle loop)
LOOP_WRITE_MAX, LOOP_WRITE_PAUSE, LOOP_WRITE_PAUSE_MAX = 0.002, 0.1, 10.0
#: bytes of write-ahead log past which no write runs on an event loop's thread: a commit may
#: run the checkpoint that copies the log into the database, which takes as long as the log
#: is big (it grows past its usual 4 MB while a long read holds it, and is cut back to this
#: once it starts over)
LOOP_WAL_MAX = WAL_SIZE_LIMIT
#: seconds a loop runs writes on its thread, one after another, before it must turn, unless
#: a turn would run nothing else (see :meth:`Writer.loop_turn_due`)
LOOP_TURN_EVERY = 0.001
#: seconds between two readings of the log's size (at the pace of one quick write after
#: another, a few hundred writes: far less than the 1,000 pages between two checkpoints)
LOOP_WAL_CHECK = 0.05


#: what a turn of an event loop would look at beside its ready queue and its timers: the
#: files it watches, the one that is its own wake-up socket (-1: none), its signal handlers
_Watched = tuple[Mapping[Any, selectors.SelectorKey], int, Sized]
#: asyncio's own turn of a loop
_ASYNCIO_TURN = getattr(asyncio.BaseEventLoop, "_run_once", None)


def _watched(loop: asyncio.AbstractEventLoop) -> _Watched | None:
    """The files ``loop`` watches, its own wake-up socket and its signal handlers, for
    :func:`_nothing_else_can_run`; None for a loop that does not show them all (only
    asyncio's selector loops on Unix do) or whose turn is not asyncio's own (a loop of a
    GUI toolkit serves its own events there): such a loop turns as often as ever."""
    selector = getattr(loop, "_selector", None)
    handlers = getattr(loop, "_signal_handlers", None)
    if not isinstance(selector, selectors.BaseSelector) or not isinstance(handlers, Sized) \
            or _ASYNCIO_TURN is None or getattr(type(loop), "_run_once", None) is not _ASYNCIO_TURN:
        return None
    wake = getattr(loop, "_ssock", None)
    return selector.get_map(), -1 if wake is None else wake.fileno(), handlers


def _nothing_else_can_run(loop: Any, ready: Sized, watched: _Watched) -> bool:
    """Whether a turn of ``loop`` (of ready queue ``ready``, watching ``watched``) would run
    nothing but the task asking: no callback ready, no timer due, no file watched but the
    loop's own wake-up socket, no signal handler of the loop (``loop.add_signal_handler``:
    a signal reaches it through that socket, read only by a turn), no cancel of the task
    and no stop of the loop asked for (both flags, which only a turn acts on: a Python
    signal handler may set them), and no debug mode (which times each step of a task). A
    callback from another thread or from a signal handler (``asyncio.run``'s Ctrl-C adds
    one) is put on the ready queue, which :meth:`Writer.run_on_loop` finds before the
    caller's next write."""
    files, wake, handlers = watched
    scheduled = getattr(loop, "_scheduled", None)  # (not kept: asyncio may replace it)
    if ready or handlers or not isinstance(scheduled, list) or loop.get_debug() \
            or getattr(loop, "_stopping", True):
        return False
    task = asyncio.current_task(loop)
    if task is None or task.cancelling():
        return False
    count = len(files)
    if count > 1 or (count == 1 and wake not in files):
        return False
    return not scheduled or scheduled[0].when() > loop.time()


class WriterStopped(Exception):
    """The writer stopped (its store was closed by another thread) before it took this
    write: nothing of it ran, and the caller may open the store again and retry it."""


class _Stop:
    """Sentinel that ends the writer thread."""


_STOP = _Stop()


class _Pending:
    __slots__ = ("fn", "future", "keeps", "loop", "since")

    def __init__(
        self,
        fn: WriteFn,
        future: asyncio.Future[Any] | Answer,
        loop: asyncio.AbstractEventLoop | None,
        keeps: bool,
    ) -> None:
        self.fn = fn
        self.future = future
        #: when it was submitted: its wait for the lock counts from here (see _begin)
        self.since = time.monotonic()
        self.loop = loop
        self.keeps = keeps


def _resolve(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in items:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _roll_back(conn: sqlite3.Connection) -> None:
    """Roll back the transaction open on ``conn``, if any (SQLite may have rolled back)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class Writer:
    """The write thread of one database file in this process.

    When another process holds the write lock, the writer waits for it itself (its
    connection's busy timeout is 0), for up to ``patience()`` seconds: SQLite's own busy
    handler sleeps 1, 2, 5 ... up to 100 ms between tries, long after another process's
    transaction, which holds the lock for well under a millisecond, has let it go; the writer
    tries again after :data:`LOCK_PAUSE` doubling up to :data:`LOCK_PAUSE_MAX`. A wait
    that ends with the lock is reported to ``held(seconds)`` before the write runs: leases
    may have lapsed meanwhile, their holders' heartbeats held alike, and a recovery must
    not take them for those of dead workers."""

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 patience: Callable[[], float],
                 held: Callable[[float], None], version: str) -> None:
        self._connect = connect
        #: the query of one value that moves whenever a fact the cache keeps may have
        #: changed
        self._version_sql = version
        #: the write-ahead log's path, as SQLite names it from the connection's file (None:
        #: unknown, and no write runs on a loop's thread)
        self._wal: str | None = None
        self._patience = patience
        self._held = held
        #: when :meth:`stop` began (None: not stopping): writes waiting for the lock then
        #: give up after :data:`STOP_PATIENCE` seconds
        self._stopping_at: float | None = None
        self._queue: queue.SimpleQueue[_Pending | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: held while a write is queued for the thread, and by stop() once the thread is
        #: gone, to answer what came too late (re-entrant: a signal handler's write may
        #: interrupt its thread's own queuing)
        self._submit = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        #: held by whoever uses the connection: the writer thread or a blocking caller.
        #: Re-entrant: a signal handler that interrupted its thread's own use of the
        #: connection between statements writes at once rather than wait for itself (one
        #: that interrupted a transaction is refused: see _taken)
        self._conn_lock = threading.RLock()
        #: how many holds of the connection lock that may open a transaction are under way
        #: (run_blocking's, the thread's; more than one: a signal handler's write nested in
        #: its own thread's)
        self._conn_depth = 0
        #: what writes may share: facts read under the write lock. A group (one transaction)
        #: of writes that all keep it finds it as the last one left it, unless the value of
        #: the ``version`` query moved since; any other group finds it empty, and leaves it
        #: empty, as does a transaction that did not commit. A write that changes a kept
        #: fact drops it (later writes of its transaction read it anew).
        self.cache: dict[str, Any] = {}
        #: the value of the ``version`` query the cache holds at: no write has changed what
        #: it keeps since it was read (None: not read on this connection)
        self.version: object = None
        #: ``time.monotonic()`` before which :meth:`run_on_loop` leaves writes to the thread,
        #: and how many of its writes in a row were slow
        self._loop_writes_from = 0.0
        self._slow_loop_writes = 0
        #: when a loop that wrote on its thread was last asked whether it should turn, and
        #: when the last write on a loop's thread ended (one of each for every thread's
        #: loops: a write of one thread may put off another's turn by a millisecond)
        self._loop_turned_at = 0.0
        self._loop_wrote_at = 0.0
        #: the last event loop that wrote here, its ready queue and what it watches, as one
        #: tuple (loops of other threads may write too; see _ready_queue)
        self._seen: tuple[object, Sized | None, _Watched | None] = (None, None, None)
        #: when the log's size was last read, and whether it was past LOOP_WAL_MAX then
        self._wal_checked_at = -LOOP_WAL_CHECK
        self._wal_was_big = True

    def start(self) -> None:
        """Open the connection and start the thread (idempotent). Raise what opening the
        connection raised, leaving the writer stopped: a later call tries again."""
        with self._lock:
            if self._thread is None:
                conn = self._connect()
                try:
                    conn.execute("PRAGMA busy_timeout=0")  # _begin waits for the lock
                    main = conn.execute("PRAGMA database_list").fetchone()
                except BaseException:
                    conn.close()
                    raise
                thread = threading.Thread(
                    target=self._run, args=(conn,), name="conveyor-sqlite-writer", daemon=True
                )
                self._conn = conn
                self._wal = f"{main[2]}-wal" if main and main[2] else None
                self._wal_checked_at = -LOOP_WAL_CHECK
                self.cache.clear()
                self.version = None
                thread.start()
                self._thread = thread

    def stop(self) -> None:
        """Finish what was submitted, then end the thread and close the connection. A write
        that finds the lock held by another connection meanwhile waits for it
        :data:`STOP_PATIENCE` seconds from the stop at most, then fails ("locked"): a stop
        is bounded whatever the store's state."""
        with self._lock:  # held until the thread is gone: a start() waits for the stop
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stopping_at = time.monotonic()
                self._queue.put(_STOP)
                thread.join()
                self._stopping_at = None
            self._seen = (None, None, None)  # (a closed loop is not kept alive)
            with self._submit:  # queued after the stop: nobody will run them
                late: list[_Pending] = []
                with contextlib.suppress(queue.Empty):  # (a blocking caller may take one)
                    while True:
                        item = self._queue.get_nowait()
                        if isinstance(item, _Pending):
                            late.append(item)
            self._answer([(p, None, WriterStopped("the store was closed")) for p in late])

    def _stop_waited(self) -> bool:
        """Whether a stop began :data:`STOP_PATIENCE` seconds ago or more."""
        began = self._stopping_at
        return began is not None and time.monotonic() - began >= STOP_PATIENCE

    async def run(self, fn: WriteFn, keeps: bool = False) -> Any:
        """Run ``fn`` in the next group and await its committed result; ``keeps``: ``fn``
        changes nothing :attr:`cache` holds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._put(_Pending(fn, future, loop, keeps))
        return await future

    def run_blocking(self, fn: WriteFn, keeps: bool = False) -> Any:
        """Run ``fn`` in the next group and block until it is committed (see :meth:`run`)."""
        if self._conn_lock.acquire(blocking=False):
            self._conn_depth += 1
            try:
                conn = self._conn
                if conn is not None and self._thread is not None:
                    self._taken(conn)
                    if self._queue.empty():  # alone: nobody to share the commit with
                        return self._run_alone(conn, fn, keeps)
                    reply = Answer()
                    group, stop = self._take([_Pending(fn, reply, None, keeps)])
                    self._commit_group(conn, group)
                    if stop:
                        self._queue.put(_STOP)
                    return reply.result()
            finally:
                self._conn_depth -= 1
                self._conn_lock.release()
        reply = Answer()
        self._put(_Pending(fn, reply, None, keeps))
        return reply.result()

    def _taken(self, conn: sqlite3.Connection) -> None:
        """Make ``conn``, whose lock this thread has just taken, ready for a transaction. A
        transaction open on it is this thread's own write, which a signal handler asking
        for this one interrupted (the lock held twice): raise :class:`ReentrantWrite`, as
        waiting for it would be for ever. Held once, it is what an interrupted rollback
        left (every use ends its transaction before it lets go): rolled back."""
        if conn.in_transaction:
            if self._conn_depth > 1:
                raise ReentrantWrite.during(
                    "its own write to this SQLite store was under way")
            self.cache.clear()
            _roll_back(conn)

    def _put(self, pending: _Pending) -> None:
        """Queue ``pending`` for the thread; raise :class:`WriterStopped` when the writer is
        stopped (its store closed by another thread meanwhile), rather than leave it
        waiting for a start that may never come."""
        with self._submit:
            if self._thread is None:
                raise WriterStopped("the store was closed")
            self._queue.put(pending)

    def run_at_once(self, attempt: Callable[..., T | None], *args: Any) -> T | None:
        """``attempt(conn, *args)`` on this thread when the connection is free and no write
        waits (a lone producer): outside any transaction, so that one statement commits by
        itself; :attr:`cache` and :attr:`version` hold still meanwhile. None when the
        connection is busy, or when ``attempt`` gives up (None): the caller then writes
        with :meth:`run_blocking`."""
        if not self._conn_lock.acquire(False):  # (positional: cheaper than blocking=False)
            return None
        try:  # (its one statement leaves no transaction open: no hold to count, see _taken)
            conn = self._conn
            if conn is None or self._thread is None or conn.in_transaction \
                    or not self._queue.empty():
                return None  # (a transaction left open would hold the statement uncommitted)
            try:
                return attempt(conn, *args)
            except BaseException:
                _roll_back(conn)  # a statement fails alone; nothing is left open
                raise
        finally:
            self._conn_lock.release()

    def run_on_loop(self, attempt: Callable[..., T | None], *args: Any) -> T | None:
        """:meth:`run_at_once` on the running event loop's thread, when nothing else on the
        loop is ready to run (a lone awaited caller, whose loop would only wait for the
        thread's answer), the log is small (:data:`LOOP_WAL_MAX`) and no pause is under way
        after slow writes in a row (:data:`LOOP_WRITE_MAX`), unless the loop could run
        nothing else (:meth:`_loop_idle`): the loop is held for quick commits, and for a
        slow one rarely or when it holds nobody. None when it does not run (the caller then
        awaits :meth:`run`)."""
        loop, ready, _ = self._seen  # first: a loop with others ready (uvloop) pays no more
        if loop is not asyncio.get_running_loop():
            ready = self._ready_queue()
        if ready is None or ready:
            return None
        began = time.monotonic()
        if began - self._wal_checked_at >= LOOP_WAL_CHECK:
            self._read_wal_size(began)
        if self._wal_was_big or (began < self._loop_writes_from
                                 and not self._loop_idle(ready)):
            return None
        result = None
        try:
            result = self.run_at_once(attempt, *args)
            return result
        finally:
            self._loop_wrote_at = ended = time.monotonic()
            if ended - began > LOOP_WRITE_MAX:
                self._slow_loop_writes += 1
                if self._slow_loop_writes > 1:
                    pause = LOOP_WRITE_PAUSE * 2.0 ** min(self._slow_loop_writes - 2, 16)
                    self._loop_writes_from = ended + min(pause, LOOP_WRITE_PAUSE_MAX)
            elif result:  # a quick write (not a call that wrote nothing) ends a slow run
                self._slow_loop_writes = 0

    def _loop_idle(self, ready: Sized) -> bool:
        """Whether the running loop (of ready queue ``ready``) could run nothing but its
        caller's task (see :func:`_nothing_else_can_run`): a slow write held there holds
        nobody, so a pause after slow writes does not send its writes to the thread (whose
        two hand-offs cost a lone caller on a slow disk more than a tenth of its rate)."""
        seen, _, watched = self._seen  # (another thread's loop may have written since)
        return seen is asyncio.get_running_loop() and watched is not None \
            and _nothing_else_can_run(seen, ready, watched)

    def _ready_queue(self) -> Sized | None:
        """The queue of callbacks ready to run of the running event loop (None for a loop
        that does not show it; asyncio's own loops do): :meth:`run_on_loop` writes only
        when it is empty, nothing but the running task being ready. Kept for the last loop
        seen (looking it up cost a lone caller more than the check), with the files it
        watches (see :func:`_watched`)."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        ready = ready if isinstance(ready, Sized) else None
        self._seen = (loop, ready, _watched(loop))
        return ready

    def loop_turn_due(self) -> bool:
        """Whether the caller of a write that ran on its loop's thread (just now: the time
        its write ended is taken for now) should let the loop turn before going on: at
        least every :data:`LOOP_TURN_EVERY` seconds, so that timers, I/O and other tasks
        are not held by a caller writing one job after another (a turn after every write
        cost such a caller a tenth of its rate), unless the turn could run nothing else
        (see :func:`_nothing_else_can_run`: a turn every millisecond cost a lone caller
        writing on an idle loop about a twentieth of its rate)."""
        now = self._loop_wrote_at
        if now - self._loop_turned_at < LOOP_TURN_EVERY:
            return False
        self._loop_turned_at = now
        loop, ready, watched = self._seen  # (another thread's loop may have written since)
        if ready is None or watched is None or loop is not asyncio.get_running_loop():
            return True
        return not _nothing_else_can_run(loop, ready, watched)

    def _read_wal_size(self, now: float) -> None:
        """Note whether the write-ahead log is past :data:`LOOP_WAL_MAX` (or its path
        unknown) in :attr:`_wal_was_big`; :meth:`run_on_loop` reads it at most every
        :data:`LOOP_WAL_CHECK` seconds (reading it before every write cost a lone caller a
        quarter of its rate)."""
        self._wal_checked_at = now
        try:
            self._wal_was_big = self._wal is None or os.stat(self._wal).st_size > LOOP_WAL_MAX
        except FileNotFoundError:
            self._wal_was_big = False
        except OSError:
            self._wal_was_big = True

    def _take(self, group: list[_Pending]) -> tuple[list[_Pending], bool]:
        """Add what waits in the queue to ``group``; also say whether a stop came."""
        waiting = self._queue
        while len(group) < MAX_GROUP and not waiting.empty():
            try:  # the thread's own get() may take the item first
                item = waiting.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                return group, True
            group.append(item)
        return group, False

    # -- the thread ---------------------------------------------------------------------------
    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if isinstance(first, _Stop):
                    return
                with self._conn_lock:
                    self._conn_depth += 1
                    try:
                        self._taken(conn)
                        group, stop = self._take([first])
                        self._commit_group(conn, group)
                    finally:
                        self._conn_depth -= 1
                if stop:
                    return
        finally:
            with self._conn_lock:
                if self._conn is conn:
                    self._conn = None
                conn.close()

    def _begin(self, conn: sqlite3.Connection, keeps: bool,
               group: list[_Pending] | None = None) -> None:
        """Begin a transaction; empty the cache unless ``keeps`` and it still holds. The
        wait for the lock ends ``patience()`` seconds after the oldest write of ``group``
        was submitted (the lock held since it came is held for all: a write that waited
        behind a group waiting for the lock does not wait its own patience on top, and the
        group gives up together), but lasts :data:`LOCK_FLOOR` seconds at least (a write
        queued long behind this process's own writes still waits out a short hold of the
        lock by another)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                raise
            began = time.monotonic()
            patience = self._patience()
            if group:
                queued = began - min(p.since for p in group)
                patience = max(patience - queued, min(patience, LOCK_FLOOR))
            retry_locked(functools.partial(conn.execute, "BEGIN IMMEDIATE"), patience,
                         LOCK_PAUSE, LOCK_PAUSE_MAX, self._stop_waited)
            self._held(time.monotonic() - began)
        if not keeps:
            self.cache.clear()
            return
        row = conn.execute(self._version_sql).fetchone()
        version = None if row is None else row[0]
        if version is None or version != self.version:  # what it keeps may differ
            self.cache.clear()
            self.version = version

    def _run_alone(self, conn: sqlite3.Connection, fn: WriteFn, keeps: bool) -> Any:
        """Run and commit ``fn`` in a transaction of its own (the caller holds the
        connection): its result, or what it or SQLite raised, after a rollback."""
        try:
            self._begin(conn, keeps)
            value = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            self.cache.clear()
            _roll_back(conn)
            raise
        if not keeps:
            self.cache.clear()
        return value

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Pending]) -> None:
        """Run and commit ``group``; every caller gets an answer, whatever fails."""
        try:
            results = self._run_group(conn, group)
        except BaseException as exc:  # e.g. a rollback after SQLite already rolled back
            self.cache.clear()
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            results = [(p, None, exc) for p in group]
        self._answer(results)

    def _run_group(
        self, conn: sqlite3.Connection, group: list[_Pending]
    ) -> list[tuple[_Pending, Any, BaseException | None]]:
        results: list[tuple[_Pending, Any, BaseException | None]] = []
        keeps = all(p.keeps for p in group)
        try:
            self._begin(conn, keeps, group)
        except sqlite3.Error as exc:
            self.cache.clear()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(p, None, exc) for p in group]
        # A lone write needs no savepoint: if it fails, the whole transaction rolls back.
        isolate = len(group) > 1
        for pending in group:
            if isolate:
                conn.execute("SAVEPOINT op")
            try:
                value = pending.fn(conn)
            except Exception as exc:
                if not isolate or not conn.in_transaction:
                    # alone, or SQLite ended the transaction itself (a full disk, an I/O
                    # error): the whole group is undone, and every caller learns why
                    self.cache.clear()
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return [(p, None, exc) for p in group]
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append((pending, None, exc))
            else:
                if isolate:
                    conn.execute("RELEASE op")
                results.append((pending, value, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.cache.clear()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(p, None, exc) for p in group]
        if not keeps:
            self.cache.clear()
        return results

    @staticmethod
    def _answer(results: list[tuple[_Pending, Any, BaseException | None]]) -> None:
        if len(results) == 1:  # one caller, the commonest answer
            pending, value, error = results[0]
            future, loop = pending.future, pending.loop
            if loop is not None and isinstance(future, asyncio.Future):
                with contextlib.suppress(RuntimeError):  # its loop has closed
                    loop.call_soon_threadsafe(_resolve, [(future, value, error)])
                return
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = defaultdict(list)
        for pending, value, error in results:
            if pending.loop is None:
                reply = pending.future
                assert isinstance(reply, Answer)
                reply.set(value, error)
            else:
                by_loop[pending.loop].append((pending.future, value, error))
        for loop, items in by_loop.items():
            # RuntimeError: the caller's loop has closed, so nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)
