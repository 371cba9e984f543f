"""One owner per attempt, seen from the worker: a lost attempt is stopped at once, a suspect
job runs alone, prefetch leaves work for siblings, and SQLite leases ignore wall clock steps.

Real SQLite files, workers on real threads or in real processes; a takeover is made the way
another worker's claim makes it (a write to the store), never by patching the worker.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import TESTS, WorkerThread, cli_env
from conveyor import Conveyor, JobContext, JobState
from polling import wait_until


def db_path(app: Conveyor) -> str:
    return app.url.removeprefix("sqlite:///")


def take_over(app: Conveyor, job_id: str) -> None:
    """Give the job's running attempt to another worker, as its claim after a recovery
    would: a new owner and a new attempt number."""
    with sqlite3.connect(db_path(app)) as conn:
        conn.execute("UPDATE conveyor_jobs SET worker_id='elsewhere', attempts=attempts+1 "
                     "WHERE id=?", (job_id,))


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_an_attempt_taken_over_is_stopped_at_once(
    app: Conveyor, start_worker: Callable[..., WorkerThread], kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped = threading.Event()
    started = threading.Event()

    @app.job(name="long_async")
    async def long_async(ctx: JobContext) -> str:
        started.set()
        try:
            for _ in range(400):
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "ran on"

    @app.job(name="long_thread")
    def long_thread(ctx: JobContext) -> str:
        started.set()
        for _ in range(400):
            if ctx.cancelled:
                stopped.set()
                return "stopped"
            time.sleep(0.05)
        return "ran on"

    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        thread = start_worker(app, max_workers=2)
        handle = app.enqueue(f"long_{kind}")
        assert started.wait(10)
        take_over(app, handle.id)
        # the job would run on for 20 s: well before that, on a loaded machine too
        assert stopped.wait(15), "the worker ran on an attempt it no longer owned"
        wait_until(lambda: thread.worker.lost == 1 and not thread.worker.running,
                   timeout=30, what="the slot freed")
    assert any("no longer this worker's" in r.getMessage() for r in caplog.records)
    # nothing of the stopped attempt was written over the new owner's
    record = handle.info()
    assert (record.state, record.worker_id, record.attempts) == (JobState.RUNNING,
                                                                 "elsewhere", 2)


def test_a_suspect_job_runs_alone(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    spans: dict[str, tuple[float, float]] = {}

    @app.job
    async def nap(tag: str) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.3)
        spans[tag] = (began, time.monotonic())

    broker = app.broker
    suspect = app.enqueue("nap", "suspect")
    # its first attempt was lost with its worker: claimed by a worker that never heartbeats
    app.run_sync(broker.claim("ghost", ["default"], 1, 0.05))
    time.sleep(0.15)
    app.run_sync(broker.recover_expired(3))
    assert suspect.info().recoveries == 1
    for n in range(6):
        app.enqueue("nap", f"innocent-{n}")
    start_worker(app, min_workers=4, max_workers=4)
    wait_until(lambda: len(spans) == 7, timeout=20, what="every job done")
    begin, end = spans.pop("suspect")
    for tag, (other_begin, other_end) in spans.items():
        assert other_end <= begin or other_begin >= end, f"{tag} ran beside the suspect"
    assert suspect.info().state is JobState.SUCCEEDED


def test_prefetch_leaves_work_for_an_idle_sibling(app: Conveyor) -> None:
    # the jobs run until released: the first worker's slots stay full however long the
    # sibling takes to start (no race with a fixed job length on a loaded machine)
    release = threading.Event()

    @app.job
    async def hold() -> str:
        while not release.is_set():
            await asyncio.sleep(0.02)
        return "done"

    handles = app.enqueue_many("hold", [()] * 20)
    first = WorkerThread(app, min_workers=10, max_workers=10).start()
    try:
        wait_until(lambda: len(first.worker.running) == 10, timeout=30, what="first busy")
        second = WorkerThread(app, min_workers=10, max_workers=10).start()
        try:
            wait_until(lambda: len(second.worker.running) == 10, timeout=30,
                       what=f"the sibling busy too (first holds {len(first.worker.buffered)} "
                       f"buffered)")
            release.set()
            assert [h.result(timeout=30) for h in handles] == ["done"] * 20
        finally:
            release.set()
            second.stop()
    finally:
        first.stop()
    owners = {h.info().worker_id for h in handles}
    assert owners == {first.worker.id, second.worker.id}


#: a worker whose wall clock runs this far ahead of the machine's
CLOCK_AHEAD = 30.0
AHEAD_WORKER = f"""
import sys, time
_real = time.time
time.time = lambda: _real() + {CLOCK_AHEAD}
from conveyor.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sqlite_leases_ignore_a_worker_clock_ahead(tmp_path: Path, db_url: str) -> None:
    """A worker whose wall clock is 30 s ahead must not take the leases of a healthy one."""
    ledger = tmp_path / "ledger"
    env = cli_env(CLIJOBS_URL=db_url, FENCING_LEDGER=str(ledger))
    app = Conveyor(url=db_url, lease=5.0)
    try:
        # the jobs' code is in the workers (fencingjobs): stored for them before they start
        handles = app.enqueue_many("record", [(n, 4.0) for n in range(20)], force=True)
        command = [sys.executable, "-m", "conveyor", "worker", "fencingjobs:app",
                   "--min-workers", "20", "--max-workers", "20", "--grace", "10"]
        logs = [(tmp_path / f"w{n}.log").open("wb") for n in range(2)]
        honest = subprocess.Popen(command, env=env, cwd=TESTS, stdout=logs[0],
                                  stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: ledger.exists() and len(ledger.read_text().split()) >= 20,
                       timeout=20, what="the honest worker running every job")
            ahead = subprocess.Popen([sys.executable, "-c", AHEAD_WORKER, *command[3:]],
                                     env=env, cwd=TESTS, stdout=logs[1],
                                     stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: all(h.info().is_final for h in handles), timeout=30,
                           what="every job done")
            finally:
                ahead.terminate()
                assert ahead.wait(20) == 0
        finally:
            honest.terminate()
            assert honest.wait(20) == 0
        starts = ledger.read_text().split()
        assert sorted(starts) == sorted(str(n) for n in range(20)), "a job ran twice"
        assert all(h.info().state is JobState.SUCCEEDED for h in handles)
    finally:
        app.close()
