"""A lone blocking enqueue of one job on SQLite is one statement, which SQLite commits by
itself, when the writer's cache shows the checks would pass and no other connection has
committed since the cache was read; otherwise the full write (a transaction with every
check) stores it. Both store the same row; the statement never stores a job the full write
would refuse."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.migrations import queues_version
from conveyor.errors import DuplicateJob, QueueFull, StoreUnavailable, TooManyQueues
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind


@contextlib.contextmanager
def held_elsewhere(lock: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    """Hold ``lock`` on another thread meanwhile (the writer's connection lock lets the
    thread that holds it take it again: a write of another thread under way is shown so)."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    taken.wait()
    try:
        yield
    finally:
        done.set()
        holder.join()


def job(queue: str = "default", **fields: object) -> JobRecord:
    now = time.time()
    record = JobRecord(id=new_id(), name="noop", queue=queue, state=JobState.QUEUED,
                       args=[1, "two"], kwargs={"k": [3]}, created_at=now, run_at=now)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[SQLiteBroker]:
    made = SQLiteBroker(f"sqlite:///{tmp_path / 'p.db'}", namespace="t")
    made.max_queues = 10
    made.enqueue_blocking([job()], {})  # the queue is known and the caps read: kept
    yield made
    made.close_blocking()


def statements(broker: SQLiteBroker) -> list[str]:
    """Record the statements the broker's write connection runs from now on."""
    seen: list[str] = []
    conn = broker._writer._conn
    assert conn is not None
    conn.set_trace_callback(seen.append)
    return seen


def at_once(seen: list[str]) -> list[str]:
    """The INSERT heads (table and columns) of the statements that store a job at once."""
    return [s.split(" SELECT ")[0] for s in seen
            if s.startswith("INSERT") and f" WHERE ({queues_version('t')}) = " in s]


def head(insert: str) -> str:
    return insert.split(" VALUES ")[0]


def stored_row(path: Path, job_id: str) -> tuple[object, ...]:
    conn = sqlite3.connect(path)
    try:
        row: tuple[object, ...] = conn.execute(
            "SELECT id, name, queue, state, args, kwargs, created_at, run_at, unique_key, "
            "priority, boost, grp FROM t_jobs WHERE id=?", (job_id,)).fetchone()
    finally:
        conn.close()
    return row


def other_commit(path: Path) -> None:
    """Another connection commits a write that changes nothing an enqueue checks."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS elsewhere (v)")
        conn.execute("INSERT INTO elsewhere VALUES (1)")
    finally:
        conn.close()


def test_a_lone_enqueue_is_one_statement(producer: SQLiteBroker, tmp_path: Path) -> None:
    seen = statements(producer)
    record = job()
    assert producer.enqueue_blocking([record], {}) == [None]
    assert not any(s.startswith(("BEGIN", "COMMIT")) for s in seen)
    assert at_once(seen) == [head(producer._sql_insert)]
    assert seen == [s for s in seen if s.startswith("INSERT")]  # nothing else runs
    assert stored_row(tmp_path / "p.db", record.id) == (
        record.id, "noop", "default", "queued", '[1,"two"]', '{"k":[3]}', record.created_at,
        record.run_at, None, 0, 0.0, None)
    got = asyncio.run(producer.get(record.id))
    assert got is not None and (got.args, got.kwargs) == ([1, "two"], {"k": [3]})


@pytest.mark.parametrize("fields, insert", [
    ({"priority": 5}, "_sql_insert_ranked"),
    ({"priority": -3, "group": "tenant-7"}, "_sql_insert_laned"),
])
def test_ranked_and_laned_jobs_keep_their_columns(
        producer: SQLiteBroker, tmp_path: Path, fields: dict[str, object], insert: str) -> None:
    seen = statements(producer)
    record = job(**fields)
    producer.enqueue_blocking([record], {})
    assert at_once(seen) == [head(getattr(producer, insert))]
    row = stored_row(tmp_path / "p.db", record.id)
    assert row[9:] == (record.priority, record.priority * producer.aging, record.group)


def test_another_connections_commit_of_other_facts_leaves_the_write_at_once(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    """A worker's claims and outcomes (and any write that touches no queue's settings and
    deletes no job) change nothing an enqueue checks: the next enqueue is still one
    statement, and so is the one after the full write that follows a new queue."""
    other_commit(tmp_path / "p.db")
    worker = SQLiteBroker(f"sqlite:///{tmp_path / 'p.db'}", namespace="t")

    async def take_and_finish() -> None:
        (taken,) = await worker.claim("w1", ["default"], 1, 30.0)
        await worker.settle([Outcome(taken.id, "w1", OutcomeKind.SUCCEEDED, time.time(),
                                     "null", claim=taken.claim)])
        finished = await worker.get(taken.id)
        assert finished is not None and finished.state is JobState.SUCCEEDED

    try:
        asyncio.run(take_and_finish())
    finally:
        worker.close_blocking()
    seen = statements(producer)
    record = job()
    assert producer.enqueue_blocking([record], {}) == [None]
    assert at_once(seen) == [head(producer._sql_insert)]
    assert not any(s.startswith("BEGIN") for s in seen)
    assert stored_row(tmp_path / "p.db", record.id)[:4] == (record.id, "noop", "default",
                                                            "queued")


@pytest.mark.parametrize("change", [
    "INSERT INTO t_queues (name, paused) VALUES ('default', 1)",  # a queue's settings
    "DELETE FROM t_jobs WHERE id = (SELECT min(id) FROM t_jobs)",  # a job deleted
    "UPDATE t_jobs SET queue = 'other' WHERE id = (SELECT min(id) FROM t_jobs)",  # moved
], ids=["settings", "deleted", "moved"])
def test_another_connections_change_to_the_queues_sends_the_write_the_long_way(
        producer: SQLiteBroker, tmp_path: Path, change: str) -> None:
    conn = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    try:
        conn.execute(change)
    finally:
        conn.close()
    seen = statements(producer)
    record = job()
    producer.enqueue_blocking([record], {})
    # the statement stored nothing (the queues counter moved); the full write did
    assert at_once(seen[:1]) == [head(producer._sql_insert)]
    assert "BEGIN IMMEDIATE" in seen and seen[-1] == "COMMIT"
    assert stored_row(tmp_path / "p.db", record.id) is not None
    seen.clear()
    producer.enqueue_blocking([job()], {})  # the cache was read again: at once again
    assert not any(s.startswith("BEGIN") for s in seen)


def test_a_cap_on_the_queue_takes_the_full_write(producer: SQLiteBroker) -> None:
    asyncio.run(producer.set_max_queued("default", 3))
    seen = statements(producer)
    producer.enqueue_blocking([job()], {})
    producer.enqueue_blocking([job()], {})  # 3 waiting, cap 3
    assert seen.count("BEGIN IMMEDIATE") == 2
    with pytest.raises(QueueFull):
        producer.enqueue_blocking([job()], {})


def test_a_producers_own_cap_takes_the_full_write(producer: SQLiteBroker) -> None:
    seen = statements(producer)
    with pytest.raises(QueueFull):
        producer.enqueue_blocking([job()], {"default": 1})  # one waits already
    assert "BEGIN IMMEDIATE" in seen and "ROLLBACK" in seen


def test_a_new_queue_takes_the_full_write(producer: SQLiteBroker) -> None:
    seen = statements(producer)
    producer.enqueue_blocking([job("fresh")], {})
    assert "BEGIN IMMEDIATE" in seen
    seen.clear()
    producer.enqueue_blocking([job("fresh")], {})  # known from now on
    assert not any(s.startswith("BEGIN") for s in seen)


def test_an_id_that_exists_is_refused_and_nothing_is_left_open(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    first = job()
    producer.enqueue_blocking([first], {})
    again = job()
    again.id = first.id
    with pytest.raises(DuplicateJob) as refused:
        producer.enqueue_blocking([again], {})
    assert refused.value.job_id == first.id
    conn = producer._writer._conn
    assert conn is not None and not conn.in_transaction
    assert stored_row(tmp_path / "p.db", first.id)[4] == '[1,"two"]'
    later = job()
    producer.enqueue_blocking([later], {})
    assert stored_row(tmp_path / "p.db", later.id) is not None


def test_a_locked_store_is_unavailable_and_the_next_enqueue_goes_through(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    producer.close_blocking()
    producer.retry_for = 0.2  # the lock wait of its connections
    producer.enqueue_blocking([job()], {})
    holder = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable):
            producer.enqueue_blocking([job()], {})
        conn = producer._writer._conn
        assert conn is not None and not conn.in_transaction
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    record = job()
    assert producer.enqueue_blocking([record], {}) == [None]
    assert stored_row(tmp_path / "p.db", record.id) is not None


def test_the_writer_runs_nothing_at_once_while_its_connection_is_busy(
        producer: SQLiteBroker) -> None:
    writer = producer._writer
    calls: list[object] = []

    def attempt(conn: sqlite3.Connection, value: int) -> int:
        calls.append(value)
        return value

    with held_elsewhere(writer._conn_lock):  # another thread's write under way
        assert writer.run_at_once(attempt, 1) is None
    assert calls == []
    assert writer.run_at_once(attempt, 2) == 2 and calls == [2]


def test_a_reopened_store_reads_what_it_keeps_anew(tmp_path: Path) -> None:
    """A reopened store reads what it keeps anew: what the old connection kept (a queue
    known) must not pass for true on the new one, where another connection forgot that
    queue."""
    path = tmp_path / "r.db"
    producer = SQLiteBroker(f"sqlite:///{path}", namespace="t")
    producer.max_queues = 1
    first = job("a")
    producer.enqueue_blocking([first], {})
    producer.enqueue_blocking([job("a")], {})  # "a" known, kept at this connection's version
    producer.close_blocking()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("DELETE FROM t_jobs")  # "a" is no queue any more
    other.close()
    taker = SQLiteBroker(f"sqlite:///{path}", namespace="t")
    taker.enqueue_blocking([job("b")], {})  # the one queue allowed
    taker.close_blocking()
    try:
        with pytest.raises(TooManyQueues):
            producer.enqueue_blocking([job("a")], {})
    finally:
        producer.close_blocking()


def test_nothing_runs_at_once_inside_an_open_transaction(producer: SQLiteBroker) -> None:
    writer = producer._writer
    conn = writer._conn
    assert conn is not None
    conn.execute("BEGIN IMMEDIATE")
    try:
        assert writer.run_at_once(lambda c: True) is None
    finally:
        conn.execute("ROLLBACK")
    assert writer.run_at_once(lambda c: True) is True
