"""The SQLite writer waits for a write lock another connection holds by itself, trying
again after short pauses (SQLite's own busy handler sleeps 1, 2, 5 ... up to 100 ms between
tries), for as long as the store's busy timeout allows; its reads keep SQLite's wait."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.schema import is_locked, retry_locked
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState, WorkerInfo


def job() -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="noop", queue="default", state=JobState.QUEUED,
                     args=[1], kwargs={}, created_at=now, run_at=now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteBroker]:
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 's.db'}", namespace="t")
    broker.enqueue_blocking([job()], {})  # open, the queue known
    yield broker
    broker.close_blocking()


class Holder:
    """Another connection holding the write lock until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("CREATE TABLE IF NOT EXISTS elsewhere (v)")
        self.conn.execute("INSERT INTO elsewhere VALUES (1)")
        self.released_at = 0.0

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.released_at = time.monotonic()
        self.conn.close()


def stored(path: Path, job_id: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM t_jobs WHERE id=?", (job_id,)).fetchone() is not None
    finally:
        conn.close()


def test_the_writer_waits_for_the_lock_itself_and_reads_keep_sqlites_wait(
        store: SQLiteBroker) -> None:
    conn = store._writer._conn
    assert conn is not None
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (0,)
    with store._using() as reader:
        assert reader.execute("PRAGMA busy_timeout").fetchone() == (10_000,)


@pytest.mark.parametrize("awaited", [False, True], ids=["blocking", "awaited"])
def test_an_enqueue_waits_out_another_connection_holding_the_lock(
        store: SQLiteBroker, tmp_path: Path, awaited: bool) -> None:
    """The blocking call (first tried as one statement, which finds the lock taken) and the
    awaited one (a transaction of the writer thread) both wait and store their job."""
    conn = store._writer._conn
    assert conn is not None
    seen: list[str] = []
    holder = Holder(tmp_path / "s.db")
    conn.set_trace_callback(seen.append)  # every try of the lock, on the writer's thread
    timer = threading.Timer(0.3, holder.release)
    record = job()
    timer.start()
    try:
        if awaited:
            held = asyncio.run(store.enqueue([record], {}))
        else:
            held = store.enqueue_blocking([record], {})
        returned_at = time.monotonic()
    finally:
        timer.join()
    conn.set_trace_callback(None)
    assert held == [None]
    assert holder.released_at and returned_at >= holder.released_at
    assert stored(tmp_path / "s.db", record.id)
    # the writer's own pauses (at most 5 ms), not SQLite's: its handler tries 8 times in
    # the 300 ms the lock is held
    assert seen.count("BEGIN IMMEDIATE") >= 20


def test_retrying_tries_often_and_gives_up_after_its_patience(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    holder = Holder(path)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    tries: list[float] = []

    def attempt() -> None:
        tries.append(time.monotonic())
        waiter.execute("BEGIN IMMEDIATE")

    try:
        began = time.monotonic()
        with pytest.raises(sqlite3.OperationalError) as raised:
            retry_locked(attempt, 0.3, 0.0002, 0.005)
        assert is_locked(raised.value)
        # it waited out its patience, and tried again after pauses of at most 5 ms: SQLite's
        # own handler tries 8 times in 300 ms (after 1, 2, 5, 10, 15, 20, 25, 25 ms)
        assert tries[-1] - began >= 0.3 - 0.005
        assert len(tries) >= 20
    finally:
        holder.release()
    retry_locked(attempt, 0.3, 0.0002, 0.005)  # free now: at once
    assert waiter.in_transaction
    waiter.execute("ROLLBACK")
    waiter.close()


def test_an_error_other_than_a_lock_is_raised_at_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "e.db")
    tries = []

    def attempt() -> None:
        tries.append(1)
        conn.execute("SELECT * FROM nowhere")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_locked(attempt, 5.0, 0.0002, 0.005)
    assert tries == [1]
    conn.close()


def test_leases_that_lapse_while_the_lock_is_held_are_not_recovered(
        store: SQLiteBroker, tmp_path: Path) -> None:
    """Another connection holds the lock longer than a lease (a backup, a sqlite3 shell):
    every worker's heartbeats wait as long as the recovery pass does. The pass that waited
    takes no lease, the wait counts as trouble (so the worker's next passes hold off for a
    lease, see Maintenance.recover_once), and the live job keeps its attempt."""
    lease, info = 1.0, worker_info("w1")

    async def run() -> None:
        await store.heartbeat(info, {}, lease)
        [claimed] = await store.claim("w1", ["default"], 1, lease)
        await store.heartbeat(info, {claimed.id: claimed.claim}, lease)
        assert store.last_trouble == 0.0
        holder = Holder(tmp_path / "s.db")
        threading.Timer(2.0, holder.release).start()  # past the lease
        began = time.monotonic()
        recovery = asyncio.ensure_future(store.recover_expired(3))
        await asyncio.sleep(0.2)
        beat = asyncio.ensure_future(store.heartbeat(info, {claimed.id: claimed.claim},
                                                     lease))
        recovered, beaten = await recovery, await beat
        assert holder.released_at > 0
        assert recovered.jobs == [] and recovered.requeued == 0, recovered
        assert beaten.lost == set()
        assert store.last_trouble >= began + 1.5  # noted when the wait ended
        record = await store.get(claimed.id)
        assert record is not None and record.state == JobState.RUNNING
        assert (record.attempts, record.recoveries) == (1, 0)

    asyncio.run(run())


def test_a_short_wait_for_the_lock_is_no_trouble(store: SQLiteBroker, tmp_path: Path) -> None:
    holder = Holder(tmp_path / "s.db")
    threading.Timer(0.05, holder.release).start()
    store.enqueue_blocking([job()], {})
    assert holder.released_at > 0
    assert store.last_trouble == 0.0


@pytest.mark.parametrize("how", ["blocking", "awaited"])
def test_a_close_does_not_wait_out_a_lock_held_elsewhere(tmp_path: Path, how: str) -> None:
    """A write waiting for a lock another connection holds gives up when the store is
    closed (a stopping worker or server): the close is bounded, not the busy timeout."""
    path = tmp_path / "s.db"
    broker = SQLiteBroker(f"sqlite:///{path}?busy_timeout=60000", namespace="t")
    broker.enqueue_blocking([job()], {})
    holder = Holder(path)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            if how == "blocking":
                broker.enqueue_blocking([job()], {})
            else:
                asyncio.run(broker.enqueue([job()], {}))
        except Exception as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        time.sleep(0.5)  # the write waits for the lock
        assert writer.is_alive() and not errors
        began = time.monotonic()
        broker.close_blocking()
        closed_in = time.monotonic() - began
        writer.join(30)
        assert not writer.is_alive()
    finally:
        holder.release()
    assert closed_in < 10.0, closed_in  # the write would have waited up to 60 s
    assert len(errors) == 1 and "locked" in str(errors[0]), errors


def test_a_write_queued_behind_a_waiting_one_waits_no_longer_than_its_patience(
        tmp_path: Path) -> None:
    """Writes that come while the write thread waits for the lock wait in the next group;
    their patience counts from when they came, not from when that group begins (else a
    write could wait nearly twice the store's timeout)."""
    path = tmp_path / "s.db"
    broker = SQLiteBroker(f"sqlite:///{path}?busy_timeout=2000", namespace="t")
    broker.enqueue_blocking([job()], {})
    holder = Holder(path)

    async def timed(delay: float) -> float:
        await asyncio.sleep(delay)
        began = time.monotonic()
        with pytest.raises(Exception, match="locked"):
            await broker.enqueue([job()], {})
        return time.monotonic() - began

    async def both() -> list[float]:
        return list(await asyncio.gather(timed(0.0), timed(0.1)))

    try:
        first, second = asyncio.run(both())
    finally:
        holder.release()
        broker.close_blocking()
    assert 1.5 < first < 3.0, first
    # it came 0.1 s later: 1.9 s behind the first, then the 1 s floor (2.9 s), not its whole
    # patience on top (1.9 + 2 = 3.9 s); the bound leaves half a second to a loaded machine
    assert second < 3.4, second


def test_a_short_hold_is_no_trouble_and_the_pass_takes_what_had_lapsed(
        store: SQLiteBroker, tmp_path: Path) -> None:
    """A recovery pass that waits a moment for the lock (another process's transaction)
    still takes the leases that had lapsed when it was asked for (a dead worker's), and
    the short wait is no trouble that would hold the next passes off."""
    gone, live = (worker_info(name) for name in ("gone", "live"))
    # the dead worker was another process, with leases of 0.2 s; this one's last 30 s (a
    # wait of a second is trouble for it: see lock_trouble)
    elsewhere = SQLiteBroker(store.url, namespace="t")

    async def run() -> None:
        await store.heartbeat(live, {}, 30.0)
        await elsewhere.heartbeat(gone, {}, 0.2)
        [claimed] = await elsewhere.claim("gone", ["default"], 1, 0.2)
        await asyncio.sleep(0.5)  # its worker is gone: the lease lapses
        holder = Holder(tmp_path / "s.db")
        threading.Timer(0.4, holder.release).start()
        recovered = await store.recover_expired(3)
        assert holder.released_at > 0
        assert [job_id for job_id, _, _ in recovered.jobs] == [claimed.id], recovered
        assert store.last_trouble == 0.0

    try:
        asyncio.run(run())
    finally:
        elsewhere.close_blocking()


def worker_info(worker_id: str) -> WorkerInfo:
    return WorkerInfo(id=worker_id, host="h", pid=1, queues=["default"], concurrency=1,
                      min_concurrency=1, max_concurrency=1, started_at=time.time())


@pytest.mark.parametrize(("lease", "hold", "trouble"), [(1.0, 0.5, True), (30.0, 0.3, False)])
def test_a_hold_is_trouble_past_a_quarter_of_a_short_lease(
        store: SQLiteBroker, tmp_path: Path, lease: float, hold: float, trouble: bool) -> None:
    """A wait of 0.5 s for the lock is trouble for a worker whose leases last 1 s (they
    lapse once the lock is held 0.67 s: its heartbeats come every third of a lease); one
    of 0.3 s (a second and more to spare for a loaded machine) none for one whose leases
    last 30 s."""
    asyncio.run(store.heartbeat(worker_info("w"), {}, lease))
    holder = Holder(tmp_path / "s.db")
    threading.Timer(hold, holder.release).start()
    began = time.monotonic()
    store.enqueue_blocking([job()], {})
    assert holder.released_at > 0
    assert (store.last_trouble >= began + hold - 0.1) is trouble, store.last_trouble - began


def test_a_pass_asked_for_during_a_hold_takes_no_lease_that_lapsed_in_it(
        store: SQLiteBroker, tmp_path: Path) -> None:
    """Two worker processes, leases of 1 s; another connection holds the lock 0.95 s from
    just after the first worker's heartbeat, so its lease lapses in the hold. The second
    worker's heartbeat waits through the hold, and its recovery pass is asked for after the
    lapse, just before the lock is let go: the pass, which runs once the heartbeat has, must
    take nothing (the worker that holds the job is alive), and the job keeps its attempt."""
    lease = 1.0
    owner = SQLiteBroker(store.url, namespace="t")
    first, second = worker_info("first"), worker_info("second")

    async def run() -> None:
        await store.heartbeat(second, {}, lease)
        await owner.heartbeat(first, {}, lease)
        [claimed] = await owner.claim("first", ["default"], 1, lease)
        await owner.heartbeat(first, {claimed.id: claimed.claim}, lease)
        renewed = time.monotonic()
        holder = Holder(tmp_path / "s.db")
        await asyncio.sleep(0.05)
        beat = asyncio.ensure_future(store.heartbeat(second, {}, lease))  # waits
        await asyncio.sleep(renewed + lease + 0.1 - time.monotonic())  # the lease lapsed
        recovery = asyncio.ensure_future(store.recover_expired(3))
        await asyncio.sleep(0.05)
        holder.release()
        recovered, _ = await recovery, await beat
        assert recovered.jobs == [] and recovered.requeued == 0, recovered
        renewal = await owner.heartbeat(first, {claimed.id: claimed.claim}, lease)
        assert renewal.lost == set()
        record = await owner.get(claimed.id)
        assert record is not None and record.state == JobState.RUNNING
        assert (record.attempts, record.recoveries) == (1, 0)

    try:
        asyncio.run(run())
    finally:
        owner.close_blocking()


def test_a_write_queued_long_still_waits_out_a_short_hold(tmp_path: Path) -> None:
    """A write queued behind a group that used up its patience waiting still waits a
    moment of its own (at least a second, or its whole patience if shorter) rather than
    failing at the first "locked"."""
    path = tmp_path / "s.db"
    # a patience of 1 s; the hold ends 0.4 s after the first write gives up, 0.6 s before
    # the second one's own wait does (margins a loaded machine keeps)
    broker = SQLiteBroker(f"sqlite:///{path}?busy_timeout=1000", namespace="t")
    broker.enqueue_blocking([job()], {})
    holder = Holder(path)
    threading.Timer(1.4, holder.release).start()

    async def both() -> list[object]:
        first = asyncio.ensure_future(broker.enqueue([job()], {}))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(broker.enqueue([job()], {}))
        return list(await asyncio.gather(first, second, return_exceptions=True))

    try:
        first, second = asyncio.run(both())
    finally:
        broker.close_blocking()
    assert isinstance(first, Exception) and "locked" in str(first), first
    assert second == [None], second  # stored once the hold ended, 1.35 s after it came
