"""What SQLite enqueues keep from one transaction to the next (the queues known, the stored
caps) holds no longer than it is true: another connection's commit, or a write of the same
broker that is not an enqueue, makes the next enqueue read it anew."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.schema import Settings, connect
from conveyor.backends.sqlite.writer import Writer
from conveyor.errors import QueueFull, TooManyQueues
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState


def job(queue: str = "default") -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="noop", queue=queue, state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


def broker(path: Path, max_queues: int | None = None) -> SQLiteBroker:
    made = SQLiteBroker(f"sqlite:///{path}", namespace="t")
    made.max_queues = max_queues
    return made


def test_a_cap_set_by_another_process_holds_at_once(tmp_path: Path) -> None:
    producer, admin = broker(tmp_path / "c.db"), broker(tmp_path / "c.db")
    try:
        for _ in range(3):
            producer.enqueue_blocking([job()], {})  # the caps (none) are read and kept
        asyncio.run(admin.set_max_queued("default", 3))
        with pytest.raises(QueueFull):
            producer.enqueue_blocking([job()], {})
        with pytest.raises(QueueFull):
            asyncio.run(producer.enqueue([job()], {}))
    finally:
        producer.close_blocking()
        admin.close_blocking()


def test_a_cap_set_by_hand_holds_at_once(tmp_path: Path) -> None:
    """A plain SQLite connection (an operator's shell) counts as another process."""
    producer = broker(tmp_path / "h.db")
    try:
        asyncio.run(producer.set_max_queued("default", 100))
        producer.enqueue_blocking([job()], {})
        producer.enqueue_blocking([job()], {})
        conn = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
        conn.execute("UPDATE t_queues SET max_queued=2 WHERE name='default'")
        conn.close()
        with pytest.raises(QueueFull):
            producer.enqueue_blocking([job()], {})
    finally:
        producer.close_blocking()


def test_a_queue_emptied_by_another_process_counts_as_new(tmp_path: Path) -> None:
    producer, other = broker(tmp_path / "q.db", 2), broker(tmp_path / "q.db", 2)
    try:
        first = job("q1")
        producer.enqueue_blocking([first], {})  # q1 is known, and kept so
        assert asyncio.run(other.delete(first.id))  # q1 is no queue any more
        other.enqueue_blocking([job("q2")], {})
        other.enqueue_blocking([job("q3")], {})
        with pytest.raises(TooManyQueues):
            producer.enqueue_blocking([job("q1")], {})
    finally:
        producer.close_blocking()
        other.close_blocking()


def test_a_queue_emptied_by_the_same_broker_counts_as_new(tmp_path: Path) -> None:
    producer = broker(tmp_path / "s.db", 1)
    try:
        first = job("q1")
        producer.enqueue_blocking([first], {})
        assert asyncio.run(producer.delete(first.id))  # a write that is not an enqueue
        producer.enqueue_blocking([job("q2")], {})
        with pytest.raises(TooManyQueues):
            producer.enqueue_blocking([job("q1")], {})
        with pytest.raises(TooManyQueues):
            asyncio.run(producer.enqueue([job("q1")], {}))
    finally:
        producer.close_blocking()


def test_what_a_rolled_back_enqueue_saw_is_not_kept(tmp_path: Path) -> None:
    """An enqueue refused after its insert made its queue known for a moment: the next one
    of that queue still counts it as new."""
    producer = broker(tmp_path / "r.db", 1)
    try:
        producer.enqueue_blocking([job("q1")], {})
        with pytest.raises(QueueFull):
            producer.enqueue_blocking([job("q2")], {"q2": 0})
        with pytest.raises(TooManyQueues):
            producer.enqueue_blocking([job("q2")], {})
    finally:
        producer.close_blocking()


def test_concurrent_blocking_callers_all_commit(tmp_path: Path) -> None:
    """Callers on many threads: each gets its own answer once its write is committed,
    whether it ran alone on its thread, led a group or waited for the writer thread."""
    path = tmp_path / "w.db"

    def open_conn() -> sqlite3.Connection:
        conn = connect(Settings(path))
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
        return conn

    writer = Writer(open_conn, lambda: Settings(path).busy_timeout_ms / 1000, lambda: None,
                    "PRAGMA data_version")
    writer.start()
    answers: dict[int, object] = {}

    def caller(n: int) -> None:
        for i in range(50):
            value = n * 1000 + i
            answers[value] = writer.run_blocking(
                lambda conn, v=value: conn.execute("INSERT INTO t VALUES (?)", (v,)).rowcount
                and v, keeps=n % 2 == 0)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(answers[v] == v for v in answers) and len(answers) == 400
    finally:
        writer.stop()
    conn = sqlite3.connect(path)
    stored = {v for (v,) in conn.execute("SELECT v FROM t")}
    conn.close()
    assert stored == set(answers)
