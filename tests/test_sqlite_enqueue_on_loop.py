"""A lone awaited enqueue of one job on SQLite runs its one statement on the event loop's
own thread when nothing else on the loop is ready to run: the loop had nothing to do while
it waited for the write thread, and the two hand-offs cost the caller more than the write.
Concurrent awaited enqueues still go to the write thread and share its commits; a lock held
elsewhere or a slow commit never holds the loop; a loop that does not show its ready queue
(uvloop) always hands the write to the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite import writer as writer_module
from test_sqlite_enqueue_at_once import at_once, head, job, stored_row


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


def test_a_lock_held_elsewhere_does_not_hold_the_loop(
        producer: SQLiteBroker, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    record = job()

    async def main() -> tuple[int, list[str | None]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        stored = asyncio.create_task(producer.enqueue([record], {}))
        await asyncio.sleep(0.3)
        assert not stored.done()  # still waiting for the lock, on the write thread
        ticked = ticks
        holder.execute("ROLLBACK")
        result = await stored
        beat.cancel()
        return ticked, result

    try:
        ticked, result = asyncio.run(main())
    finally:
        holder.close()
    assert ticked >= 5  # the loop ran on while the write waited
    assert result == [None] and stored_row(tmp_path / "p.db", record.id) is not None


def test_after_a_slow_write_on_the_loop_writes_go_to_the_thread(
        producer: SQLiteBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 0.0)  # every write counts as slow
    seen = traced(producer)

    async def two() -> None:
        await producer.enqueue([job()], {})
        await producer.enqueue([job()], {})

    writer = producer._writer
    asyncio.run(two())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 1, "writer": 1}
    first_pause = writer._loop_writes_from - time.monotonic()
    assert 0 < first_pause <= writer_module.LOOP_WRITE_PAUSE
    seen.clear()
    with writer._conn_lock:  # the write thread answers before it lets the connection go
        writer._loop_writes_from = 0.0  # the pause over: the next is slow again, in a row
    asyncio.run(two())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 1, "writer": 1}
    second_pause = writer._loop_writes_from - time.monotonic()
    assert second_pause > 1.5 * writer_module.LOOP_WRITE_PAUSE  # doubled
    # a quick write ends the run of slow ones: the next slow one pauses as the first did
    monkeypatch.setattr(writer_module, "LOOP_WRITE_MAX", 3600.0)
    with writer._conn_lock:
        writer._loop_writes_from = 0.0
    asyncio.run(two())
    assert writer._slow_loop_writes == 0 and writer._loop_writes_from == 0.0


def test_a_loop_without_a_visible_ready_queue_hands_every_write_to_the_thread(
        producer: SQLiteBroker) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed here")
    seen = traced(producer)

    async def three() -> None:
        for _ in range(3):
            await producer.enqueue([job()], {})

    uvloop.run(three())
    assert inserts_by_thread(seen, producer._sql_insert) == {"loop": 0, "writer": 3}
