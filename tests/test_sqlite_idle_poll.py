"""An idle worker on SQLite looks for new commits every 2 ms while work has come lately,
and every 25 ms once none has for a while (each look costs CPU: every 2 ms, an idle worker
took about a tenth of a core); work that comes ends the wait either way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.broker import QUIET_AFTER
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState


def job() -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="noop", queue="default", state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteBroker]:
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 's.db'}", namespace="t")
    broker.open_blocking()
    yield broker
    broker.close_blocking()


def looks(store: SQLiteBroker, seconds: float) -> int:
    """How many times an idle wait of ``seconds`` read ``data_version``."""
    statements: list[str] = []
    store._reader().set_trace_callback(statements.append)  # this thread's reader
    try:
        asyncio.run(store.wait_for_work(["default"], seconds))
    finally:
        store._reader().set_trace_callback(None)
    return sum("data_version" in s for s in statements)


def test_an_idle_wait_looks_less_often_once_no_work_came_for_a_while(
        store: SQLiteBroker) -> None:
    store._worked_at = time.monotonic()  # work came just now
    busy = looks(store, 0.5)
    store._worked_at = time.monotonic() - QUIET_AFTER - 1  # none for a while
    quiet = looks(store, 0.5)
    assert quiet <= 0.5 / 0.025 + 3, quiet  # every 25 ms
    assert busy >= 3 * quiet, (busy, quiet)  # every 2 ms (sleeps on a busy machine last longer)


def test_work_ends_a_quiet_wait_and_makes_the_next_looks_frequent(store: SQLiteBroker) -> None:
    store._worked_at = time.monotonic() - QUIET_AFTER - 1
    other = SQLiteBroker(store.url, namespace="t")
    timer = threading.Timer(0.3, lambda: other.enqueue_blocking([job()], {}))
    began = time.monotonic()
    timer.start()
    try:
        asyncio.run(store.wait_for_work(["default"], 30))
    finally:
        timer.join()
        other.close_blocking()
    assert time.monotonic() - began < 10  # ended by the job, not by the 30 s timeout
    assert time.monotonic() - store._worked_at < QUIET_AFTER
