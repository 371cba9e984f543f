"""A lone awaited enqueue of one job on SQLite runs its one statement on the event loop's
own thread when nothing else on the loop is ready to run: the loop had nothing to do while
it waited for the write thread, and the two hand-offs cost the caller more than the write.
Concurrent awaited enqueues still go to the write thread and share its commits; a lock held
elsewhere or a slow commit never holds the loop; a loop that does not show its ready queue
(uvloop) always hands the write to the thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite import writer as writer_module
from conveyor.handoff import Answer
from polling import exit_after_signal, wait_until
from test_sqlite_enqueue_at_once import at_once, head, held_elsewhere, job, stored_row


@pytest.fixture
def producer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteBroker]:
    # a slow fsync on a busy machine must not pause writes on the loop (tested on its own)
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 3600.0)
    made = SQLiteBroker(f"sqlite:///{tmp_path / 'p.db'}", namespace="t")
    made.enqueue_blocking([job()], {})  # the queue is known and the caps read: kept
    yield made
    made.close_blocking()


def traced(broker: SQLiteBroker) -> list[tuple[int, str]]:
    """Record each statement the broker's write connection runs from now on, with the
    thread that ran it."""
    seen: list[tuple[int, str]] = []
    conn = broker._writer._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: seen.append((threading.get_ident(), sql)))
    return seen


class Ticker:
    """A task of the running loop counting the ticks of a timer of ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # begun
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.ticks += 1


def inserts_by_thread(seen: list[tuple[int, str]], insert: str) -> dict[str, int]:
    """How many job INSERTs ran on this (the loop's) thread and on others."""
    here = threading.get_ident()
    counts = {"loop": 0, "writer": 0}
    for thread, sql in seen:
        if sql.startswith(head(insert)):
            counts["loop" if thread == here else "writer"] += 1
    return counts


def test_a_lone_awaited_enqueue_runs_on_the_loops_thread(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    seen = traced(producer)
    records = [job() for _ in range(5)]

    async def one_at_a_time() -> list[list[str | None]]:
        return [await producer.enqueue([r], {}) for r in records]

    assert asyncio.run(one_at_a_time()) == [[None]] * 5
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 5, "writer": 0}
    assert at_once([sql for _, sql in seen]) == [head(producer._sql_insert)] * 5
    assert not any(sql.startswith(("BEGIN", "COMMIT")) for _, sql in seen)
    for r in records:
        assert stored_row(tmp_path / "p.db", r.id)[:6] == (
            r.id, "noop", "default", "queued", '[1,"two"]', '{"k":[3]}')


def test_concurrent_awaited_enqueues_share_the_write_threads_commits(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    seen = traced(producer)
    records = [job() for _ in range(40)]

    async def together() -> list[list[str | None]]:
        return await asyncio.gather(*(producer.enqueue([r], {}) for r in records))

    assert asyncio.run(together()) == [[None]] * 40
    counts = inserts_by_thread(seen, producer._sql_insert)
    # each call but the last found the others ready to run: only the last may run on the
    # loop, and only if the write thread had already taken and committed the rest
    assert counts["loop"] <= 1 and counts["loop"] + counts["writer"] == 40
    assert sum(sql == "COMMIT" for _, sql in seen) < 20  # commits shared, not one per job
    conn = sqlite3.connect(tmp_path / "p.db")
    try:
        ids = {i for (i,) in conn.execute("SELECT id FROM t_jobs")}
    finally:
        conn.close()
    assert {r.id for r in records} <= ids


def test_each_loop_is_looked_at_on_its_own(producer: SQLiteBroker) -> None:
    # the ready queue of the last loop that wrote is kept: a later loop, with others ready,
    # must be looked at anew rather than through the first loop's (empty) queue
    async def lone() -> None:
        await producer.enqueue([job()], {})

    async def together() -> None:
        await asyncio.gather(*(producer.enqueue([job()], {}) for _ in range(20)))

    asyncio.run(lone())
    seen = traced(producer)
    asyncio.run(together())
    counts = inserts_by_thread(seen, producer._sql_insert)
    assert counts["loop"] <= 1 and counts["loop"] + counts["writer"] == 20
    seen.clear()
    with producer._writer._conn_lock:  # the write thread answers before it lets go
        pass
    asyncio.run(lone())  # and the first kind of loop again: on its thread
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 1, "writer": 0}


def test_an_awaited_enqueue_opens_a_closed_store_itself_and_an_open_one_never(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the app leaves opening to the store's enqueue, which opens only when it must
    app = Conveyor(f"sqlite:///{tmp_path / 'o.db'}", namespace="t")

    async def noop(n: int) -> None:
        """A job."""

    job_fn = app.job(noop)
    try:
        app.close()  # closed: the awaited enqueue opens it again itself
        handle = asyncio.run(job_fn.enqueue_async(1))
        assert handle.info().args == [1]
        opens: list[None] = []
        plain_open = app.broker.open

        async def counted_open() -> None:
            opens.append(None)
            await plain_open()

        monkeypatch.setattr(app.broker, "open", counted_open)

        async def two() -> None:
            await job_fn.enqueue_async(2)
            await job_fn.enqueue_async(3)

        asyncio.run(two())  # open here: no call of open() at all
        assert opens == []
    finally:
        app.close()


def test_a_lock_held_elsewhere_does_not_hold_the_loop(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    record = job()

    async def main() -> tuple[int, list[str | None]]:
        async with Ticker(0.01) as ticker:
            stored = asyncio.create_task(producer.enqueue([record], {}))
            await asyncio.sleep(0.3)
            assert not stored.done()  # still waiting for the lock, on the write thread
            ticked = ticker.ticks
            holder.execute("ROLLBACK")
            return ticked, await stored

    try:
        ticked, result = asyncio.run(main())
    finally:
        holder.close()
    assert ticked >= 5  # the loop ran on while the write waited
    assert result == [None] and stored_row(tmp_path / "p.db", record.id) is not None


def enqueues(producer: SQLiteBroker, count: int) -> Callable[[], Awaitable[None]]:
    """A coroutine function that awaits ``count`` enqueues of one job, one after another."""
    async def run() -> None:
        for _ in range(count):
            await producer.enqueue([job()], {})

    return run


def run_watching_a_file(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main()`` on a new loop that watches a socket meanwhile (a server's loop: a
    turn may have I/O to serve at any time)."""
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    loop.add_reader(ours, ours.recv, 16)
    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_reader(ours)
        loop.close()
        ours.close()
        theirs.close()


def test_after_slow_writes_in_a_row_on_the_loop_writes_go_to_the_thread(
        producer: SQLiteBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loop that has more to serve (here a watched socket), one slow write alone
    (mostly a checkpoint of the small log) does not pause; two in a row do, for
    LOOP_WRITE_PAUSE, doubling with each further one; a quick write ends it."""
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 0.0)  # every write counts as slow
    seen = traced(producer)
    writer = producer._writer

    three = enqueues(producer, 3)

    run_watching_a_file(three)  # slow, slow (a pause begins), then on the thread
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 2, "writer": 1}
    first_pause = writer._loop_writes_from - time.monotonic()
    assert 0 < first_pause <= writer_module.LOOP_WRITE_PAUSE
    seen.clear()
    with writer._conn_lock:  # the write thread answers before it lets the connection go
        writer._loop_writes_from = 0.0  # the pause over: the next is slow again, in a row
    run_watching_a_file(three)
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 1, "writer": 2}
    second_pause = writer._loop_writes_from - time.monotonic()
    assert second_pause > 1.5 * writer_module.LOOP_WRITE_PAUSE  # doubled
    # a quick write ends the run of slow ones: the next slow one alone pauses nothing
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 3600.0)
    with writer._conn_lock:
        writer._loop_writes_from = 0.0
    asyncio.run(three())
    assert writer._slow_loop_writes == 0 and writer._loop_writes_from == 0.0
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 0.0)
    seen.clear()

    async def one() -> None:
        await producer.enqueue([job()], {})

    asyncio.run(one())
    assert writer._slow_loop_writes == 1 and writer._loop_writes_from == 0.0


def test_a_pause_after_slow_writes_leaves_a_lone_caller_on_an_idle_loop_writing_on_it(
        producer: SQLiteBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that could run nothing but its caller holds nobody during a slow write: the
    pause sends none of its writes to the thread (whose hand-offs would cost the caller),
    while a loop watching a socket has them sent there."""
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 0.0)  # every write counts as slow
    seen = traced(producer)
    writer = producer._writer

    three = enqueues(producer, 3)

    asyncio.run(three())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 3, "writer": 0}
    assert writer._loop_writes_from > time.monotonic()  # a pause is under way
    seen.clear()
    run_watching_a_file(three)
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 0, "writer": 3}


def test_a_loop_without_a_visible_ready_queue_hands_every_write_to_the_thread(
        producer: SQLiteBroker) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed here")
    seen = traced(producer)

    three = enqueues(producer, 3)

    uvloop.run(three())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 0, "writer": 3}


def test_a_producer_awaiting_enqueue_after_enqueue_lets_the_loop_turn(
        producer: SQLiteBroker) -> None:
    """Timers, I/O and other tasks run between enqueues written on the loop's thread: a
    caller making them one after another lets the loop turn every millisecond."""
    seen = traced(producer)

    async def main() -> tuple[int, int]:
        written = 0
        async with Ticker(0.001) as ticker:
            # (without the turn the timer's task never runs: the cap ends the test)
            while (written < 300 or ticker.ticks < 20) and written < 100_000:
                await producer.enqueue([job()], {})
                written += 1
            return written, ticker.ticks

    written, ticks = asyncio.run(main())
    assert ticks >= 20
    # A turn that finds the timer due hands the next write to the thread, and the write
    # after that runs on the loop again: on a disk whose commits take longer than the
    # timer's millisecond about half of the writes run on the loop, on a quicker disk most.
    counts = inserts_by_thread(seen, producer._sql_insert)
    assert counts["loop"] + counts["writer"] == written
    assert counts["loop"] >= written // 4


class Turns:
    """Counts the turns of ``loop`` (each polls its selector once)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        selector = loop._selector  # type: ignore[attr-defined]
        self.count = 0
        poll = selector.select

        def counted(timeout: float | None = None) -> object:
            self.count += 1
            return poll(timeout)

        selector.select = counted


def test_a_lone_caller_on_an_idle_loop_writes_on_without_turning_it(
        producer: SQLiteBroker) -> None:
    """With no timer due, no file watched and nothing else ready, a turn would run nothing
    but the caller: the loop is not turned, however long the caller goes on."""
    seen = traced(producer)
    loop = asyncio.new_event_loop()
    turns = Turns(loop)

    async def main() -> tuple[int, int]:
        began, written = time.monotonic(), 0
        before = turns.count
        while written < 100 or time.monotonic() - began < 0.03:  # 30 turns' worth
            await producer.enqueue([job()], {})
            written += 1
        return written, turns.count - before

    try:
        written, turned = loop.run_until_complete(main())
    finally:
        loop.close()
    assert turned == 0
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": written, "writer": 0}


def test_a_timer_is_let_fire_when_due_and_not_turned_for_before(
        producer: SQLiteBroker) -> None:
    loop = asyncio.new_event_loop()
    turns = Turns(loop)
    fired: list[tuple[float, int]] = []

    async def main() -> tuple[float, int, list[tuple[float, int]]]:
        before = turns.count
        due = loop.time() + 0.03
        loop.call_at(due, lambda: fired.append((loop.time(), turns.count - before)))
        written = 0
        while not fired and written < 100_000:  # (without a turn it never fires)
            await producer.enqueue([job()], {})
            written += 1
        return due, written, list(fired)  # (the loop's last turns would fire it too)

    try:
        due, written, fired_in_time = loop.run_until_complete(main())
    finally:
        loop.close()
    assert fired_in_time, f"the timer never fired in {written} writes"
    at, turned = fired_in_time[0]
    assert at >= due
    assert turned <= 1  # the turn that ran it: none while it was not due


def test_a_loop_watching_a_file_still_turns_every_millisecond(
        producer: SQLiteBroker) -> None:
    """A file the loop watches may be ready at any time, and only a turn asks: such a loop
    is turned as before, the watch added after the loop first wrote included."""
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    heard: list[bytes] = []

    async def main() -> int:
        await producer.enqueue([job()], {})  # the loop seen first without the watch
        loop.add_reader(ours, lambda: heard.append(ours.recv(16)))
        theirs.send(b"x")
        written = 0
        while not heard and written < 100_000:
            await producer.enqueue([job()], {})
            written += 1
        loop.remove_reader(ours)
        return written

    try:
        written = loop.run_until_complete(main())
    finally:
        loop.close()
        ours.close()
        theirs.close()
    assert heard == [b"x"], f"the watched socket was never read in {written} writes"


def test_a_signal_handler_of_the_loop_is_run_while_a_caller_writes_on(
        producer: SQLiteBroker) -> None:
    """``loop.add_signal_handler``'s handlers run only when a turn reads the loop's wake-up
    socket: a loop that has one keeps turning."""
    loop = asyncio.new_event_loop()
    caught: list[int] = []

    async def main() -> int:
        await producer.enqueue([job()], {})  # the loop seen first without the handler
        loop.add_signal_handler(signal.SIGUSR1, caught.append, 1)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            written = 0
            while not caught and written < 100_000:
                await producer.enqueue([job()], {})
                written += 1
            return written
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    try:
        written = loop.run_until_complete(main())
    finally:
        loop.close()
    assert caught == [1], f"the signal's handler never ran in {written} writes"


def test_a_cancel_or_a_stop_asked_by_a_python_signal_handler_is_acted_on(
        producer: SQLiteBroker) -> None:
    """A Python signal handler (or the task itself) that cancels the task or stops the loop
    only sets a flag, which a turn acts on: either keeps the loop turning."""
    loop = asyncio.new_event_loop()
    written = 0

    async def write_on() -> None:
        nonlocal written
        while written < 100_000:
            await producer.enqueue([job()], {})
            written += 1

    async def cancelled_by_signal() -> None:
        task = asyncio.current_task()
        assert task is not None
        signal.signal(signal.SIGUSR1, lambda *_: task.cancel())
        os.kill(os.getpid(), signal.SIGUSR1)
        await write_on()

    before = signal.getsignal(signal.SIGUSR1)
    try:
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(cancelled_by_signal())
        assert written < 100
        written = 0
        signal.signal(signal.SIGUSR1, lambda *_: loop.stop())
        task = loop.create_task(write_on())
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_forever()  # until the handler's stop
        assert not task.done() and written < 100
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        signal.signal(signal.SIGUSR1, before)
        loop.close()


def test_a_loop_whose_turn_does_more_than_asyncios_keeps_turning(
        producer: SQLiteBroker) -> None:
    """A loop of a GUI toolkit serves its own events in its turn, where nothing shows
    them: any loop whose turn is not asyncio's own turns as often as ever."""

    class OwnEvents(asyncio.SelectorEventLoop):
        def __init__(self) -> None:
            super().__init__()
            self.posted: list[int] = []
            self.served: list[int] = []

        def _run_once(self) -> None:
            self.served.extend(self.posted)
            self.posted.clear()
            super()._run_once()  # type: ignore[misc]

    loop = OwnEvents()

    async def main() -> tuple[int, list[int]]:
        await producer.enqueue([job()], {})
        loop.posted.append(1)
        written = 0
        while not loop.served and written < 100_000:
            await producer.enqueue([job()], {})
            written += 1
        return written, list(loop.served)  # (the loop's last turns would serve it too)

    try:
        written, served = loop.run_until_complete(main())
    finally:
        loop.close()
    assert served == [1], f"its own event never served in {written} writes"


def test_debug_mode_keeps_the_turns(producer: SQLiteBroker) -> None:
    """In debug mode asyncio times each step of a task: the caller's steps stay short."""
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    turns = Turns(loop)

    async def main() -> int:
        began, before = time.monotonic(), turns.count
        while time.monotonic() - began < 0.03:
            await producer.enqueue([job()], {})
        return turns.count - before

    try:
        turned = loop.run_until_complete(main())
    finally:
        loop.close()
    assert turned >= 3


def test_a_cancel_from_another_thread_reaches_a_caller_that_never_turns_the_loop(
        producer: SQLiteBroker) -> None:
    """A callback put on the loop by another thread is seen as ready before the next
    write, which then goes to the write thread: the caller awaits it, and the task's
    cancel runs."""
    after_cancel: list[int] = []

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        asked = threading.Event()
        threading.Timer(0.02, lambda: (loop.call_soon_threadsafe(task.cancel),
                                       asked.set())).start()
        written = 0
        while written < 100_000:
            await producer.enqueue([job()], {})
            written += 1
            if asked.is_set():
                after_cancel.append(written)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert len(after_cancel) <= 2  # the write under way when it came, and at most one more


def test_ctrl_c_stops_a_program_enqueueing_in_a_loop_that_never_turns(
        tmp_path: Path) -> None:
    """asyncio.run's Ctrl-C cancels the main task through the ready queue: a real process,
    a real SIGINT."""
    program = tmp_path / "producer.py"
    program.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from conveyor import Conveyor

        app = Conveyor("sqlite:///{tmp_path / 'c.db'}", namespace="t")

        @app.job
        async def noop(n: int) -> None: ...

        async def main() -> None:
            n = 0
            while True:
                await noop.enqueue_async(n)
                n += 1
                if n == 200:
                    print("going", flush=True)

        asyncio.run(main())
    """))
    proc = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    with proc:
        assert proc.stdout.readline() == "going\n"
        code = exit_after_signal(proc, signal.SIGINT, 10, proc.stderr.read)
        err = proc.stderr.read()
    assert "KeyboardInterrupt" in err
    assert code != 0


def test_a_big_write_ahead_log_sends_writes_to_the_thread_until_it_is_cut_back(
        producer: SQLiteBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long read lets the log grow past its usual size; the commit after it may copy it
    all into the database, which must not happen on a loop's thread. Once the log starts
    over it is cut back (journal_size_limit), and writes run on the loop again."""
    monkeypatch.setattr(writer_module, "LOOP_WAL_CHECK", 0.0)  # its size read every time
    path = tmp_path / "p.db"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t_jobs").fetchone()  # holds the log from here
    big = "x" * 200_000
    for _ in range(60):  # about 12 MB, none of it copied while the read lasts
        producer.enqueue_blocking([job(args=[big])], {})
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > writer_module.LOOP_WAL_MAX
    reader.execute("COMMIT")
    reader.close()
    seen = traced(producer)

    async def one() -> None:
        await producer.enqueue([job()], {})

    asyncio.run(one())  # the log is big: the thread writes (and copies the log)
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 0, "writer": 1}
    for _ in range(3):  # the log starts over, cut back to its limit
        producer.enqueue_blocking([job()], {})
    assert wal.stat().st_size <= writer_module.LOOP_WAL_MAX
    seen.clear()
    asyncio.run(one())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 1, "writer": 0}


def test_only_writes_that_ran_end_a_run_of_slow_ones(producer: SQLiteBroker) -> None:
    writer = producer._writer
    writer._slow_loop_writes = 3

    async def on_loop(value: bool | None) -> bool | None:
        return writer.run_on_loop(lambda conn: value)

    with held_elsewhere(writer._conn_lock):  # the write thread busy: nothing written here
        assert asyncio.run(on_loop(True)) is None
    assert writer._slow_loop_writes == 3
    assert asyncio.run(on_loop(None)) is None  # ran, stored nothing: no write either
    assert writer._slow_loop_writes == 3
    assert asyncio.run(on_loop(True)) is True
    assert writer._slow_loop_writes == 0


def test_a_write_queued_as_the_store_closes_is_refused_not_left_waiting(
        producer: SQLiteBroker) -> None:
    """A write that reaches the writer as another thread stops it is answered (the store's
    own calls then open it again and retry), not left for a start that may never come."""
    writer = producer._writer
    late = Answer()
    with held_elsewhere(writer._conn_lock):  # the write thread stops at the first it takes
        blocked = Answer()
        writer._queue.put(writer_module._Pending(lambda conn: 1, blocked, None, False))
        stopping = threading.Thread(target=writer.stop)
        stopping.start()
        wait_until(lambda: writer._thread is None, what="the stop to begin")
        # what came after the stop, before the thread ended: nobody will run it
        writer._queue.put(writer_module._Pending(lambda conn: 2, late, None, False))
        with pytest.raises(writer_module.WriterStopped):
            writer.run_blocking(lambda conn: 3)  # after the stop: refused at once
    stopping.join(timeout=10)
    assert not stopping.is_alive()
    assert blocked.result(timeout=1) == 1  # taken before the stop: run
    with pytest.raises(writer_module.WriterStopped):
        late.result(timeout=1)

    async def awaited() -> object:
        return await writer.run(lambda conn: 4)

    with pytest.raises(writer_module.WriterStopped):
        asyncio.run(awaited())
    producer.close_blocking()
    record = job()  # a closed store opens again on its next use
    assert asyncio.run(producer.enqueue([record], {})) == [None]


def test_enqueues_while_another_thread_keeps_closing_the_store_all_land(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    """A close from another thread between a call's check that the store is open and its
    write: the write is answered, the store opened again and the write made, every time."""
    stop = threading.Event()

    def closer() -> None:
        while not stop.is_set():
            producer.close_blocking()
            time.sleep(0.0005)

    stored: list[str] = []

    def blocking() -> None:
        for _ in range(200):
            record = job()
            assert producer.enqueue_blocking([record], {}) == [None]
            stored.append(record.id)

    async def awaited() -> None:
        for _ in range(200):
            records = [job() for _ in range(2)]  # two: the full write, on the write thread
            assert await producer.enqueue(records, {}) == [None, None]
            stored.extend(r.id for r in records)
            record = job()
            assert await producer.enqueue([record], {}) == [None]
            stored.append(record.id)

    closing = threading.Thread(target=closer)
    closing.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            done = [pool.submit(blocking), pool.submit(asyncio.run, awaited())]
            for future in done:
                future.result(timeout=60)  # raises what the producer raised; never hangs
    finally:
        stop.set()
        closing.join()
    assert len(stored) == 800
    conn = sqlite3.connect(tmp_path / "p.db")
    try:
        ids = {i for (i,) in conn.execute("SELECT id FROM t_jobs")}
    finally:
        conn.close()
    assert set(stored) <= ids


def test_the_log_watched_is_the_one_sqlite_writes_whatever_the_directory_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store named by a relative path, opened after the process changed directory: the
    size read is that of the log SQLite writes beside the file it opened."""
    (tmp_path / "here").mkdir()
    (tmp_path / "other" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    broker = SQLiteBroker("sqlite:///here/q.db", namespace="t")
    try:
        monkeypatch.chdir(tmp_path / "other")  # "here/q.db" now names another file
        broker.enqueue_blocking([job()], {})
        wal = broker._writer._wal
        assert wal == f"{tmp_path / 'other' / 'here' / 'q.db'}-wal" and Path(wal).exists()
    finally:
        broker.close_blocking()
