"""Timeouts on all three executors: async (cancelled), thread (abandoned), process (killed)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import wjobs_process
from conftest import WorkerThread
from conveyor import Conveyor, JobContext, JobRecord, JobState
from conveyor.worker.executors import JobThreads
from polling import pid_alive, wait_until


def wait_final(handle: Any, timeout: float = 15.0) -> JobRecord:
    return wait_until(lambda: (r := handle.info()).is_final and r, timeout, f"{handle} final")


# -- async ----------------------------------------------------------------------------------------
def test_async_job_past_its_timeout_is_cancelled_and_retried(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    cancelled: list[int] = []
    contexts: list[JobContext] = []

    @app.job(timeout=0.2, retries=1, backoff=0.05)
    async def slow(ctx: JobContext) -> None:
        contexts.append(ctx)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise

    handle = slow.enqueue()
    start_worker(app)
    info = wait_final(handle)
    assert info.state is JobState.DEAD
    assert info.attempts == 2
    assert info.error == "JobTimeout: job 'slow' timed out after 0.2s (gave up after 2 attempts)"
    assert cancelled == [1, 2]  # the coroutine itself was cancelled each time
    assert [c.cancelled for c in contexts] == [True, True]


def test_async_timeout_then_success(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(timeout=0.2, retries=2, backoff=0.01)
    async def slow_once(ctx: JobContext) -> int:
        if ctx.attempt == 1:
            await asyncio.sleep(30)
        await asyncio.sleep(0.01)
        return ctx.attempt

    handle = slow_once.enqueue()
    start_worker(app)
    assert handle.result(timeout=10) == 2
    assert handle.info().state is JobState.SUCCEEDED


def test_async_job_within_its_timeout_succeeds(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(timeout=10, retries=0)
    async def brief() -> str:
        await asyncio.sleep(0.05)
        return "in time"

    handle = brief.enqueue()
    start_worker(app)
    assert handle.result(timeout=10) == "in time"
    assert handle.info().attempts == 1


# -- thread ---------------------------------------------------------------------------------------
def test_thread_job_past_its_timeout_frees_its_slot(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    saw_cancel = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    @app.job(timeout=0.3, retries=0)
    def stubborn(ctx: JobContext) -> str:
        while not ctx.cancelled:
            time.sleep(0.01)
        saw_cancel.set()
        release.wait(15)  # runs on after the stop, as a thread can
        finished.set()
        return "too late"

    @app.job
    def other() -> str:
        return "other ran"

    stuck = stubborn.enqueue()
    start_worker(app, max_workers=1)
    wait_until(lambda: stuck.info().state is JobState.RUNNING, what="stubborn running")
    second = other.enqueue()
    try:
        # One slot only: the second job can run only because the timeout freed it,
        # while the first job's thread is still going.
        assert second.result(timeout=10) == "other ran"
        assert not finished.is_set()
        assert saw_cancel.is_set()  # ctx.cancelled turned true at the deadline
        info = stuck.info()
        assert info.state is JobState.DEAD
        assert info.attempts == 1
        assert info.error is not None and info.error.startswith("JobTimeout: ")
        assert "timed out after 0.3s" in info.error
    finally:
        release.set()
    assert finished.wait(10)
    time.sleep(0.1)
    info = stuck.info()
    assert info.state is JobState.DEAD and info.result is None  # the late result is ignored


def test_thread_timeout_is_retried(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(timeout=0.3, retries=1, backoff=0.01)
    def slow_first(ctx: JobContext) -> int:
        if ctx.attempt == 1:
            while not ctx.cancelled:
                time.sleep(0.01)
        return ctx.attempt

    handle = slow_first.enqueue()
    start_worker(app, max_workers=1)
    assert handle.result(timeout=10) == 2
    info = handle.info()
    assert (info.state, info.attempts) == (JobState.SUCCEEDED, 2)


# -- process --------------------------------------------------------------------------------------
@pytest.fixture
def papp(db_url: str) -> Iterator[Conveyor]:
    """The app of tests/wjobs_process.py, bound to this test's database."""
    application = wjobs_process.app
    application.use_url(db_url)
    yield application
    application.close()


@pytest.mark.parametrize(
    ("job", "attempts"),
    [("sleeper", 2), ("spinner", 1), ("c_spinner", 1)],
)
def test_process_job_past_its_timeout_is_killed(
    papp: Conveyor, start_worker: Callable[..., WorkerThread], tmp_path: Path, job: str,
    attempts: int,
) -> None:
    pid_file = tmp_path / "pids.txt"
    handle = papp.enqueue(job, str(pid_file))
    worker = start_worker(papp, max_workers=2)
    info = wait_final(handle, timeout=30)
    assert info.state is JobState.DEAD
    assert info.attempts == attempts  # retries + 1
    assert info.error is not None and info.error.startswith("JobTimeout: ")
    assert f"job {job!r} timed out after 0.5s; its process was killed" in info.error
    pids = [int(line) for line in pid_file.read_text().split()]
    assert len(pids) == attempts
    for pid in pids:
        assert pid != os.getpid()
        wait_until(lambda pid=pid: not pid_alive(pid), what=f"process {pid} gone")
    # The pool replaces the killed process: the next process job runs normally.
    after = papp.enqueue("whoami")
    new_pid = after.result(timeout=30)
    assert new_pid not in pids and new_pid != os.getpid()
    worker.stop()
    assert not pid_alive(new_pid)  # the pool's processes end with the worker


# -- the threads of thread jobs -------------------------------------------------------------------
def test_job_threads_are_reused_daemons_and_never_queue_behind_a_stuck_one() -> None:
    pool = JobThreads(name_prefix="wtest-pool")
    stuck = threading.Event()
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result(5)
                 for _ in range(5)}
        assert len(names) == 1  # one idle thread, reused
        daemon = pool.submit(lambda: threading.current_thread().daemon).result(5)
        assert daemon is True  # cannot keep a stopped worker process alive
        blocked = pool.submit(stuck.wait, 15)
        # With one job stuck, the next ones still run at once, side by side.
        barrier = threading.Barrier(3, timeout=5)
        together = [pool.submit(barrier.wait) for _ in range(3)]
        assert sorted(f.result(5) for f in together) == [0, 1, 2]
        assert not blocked.done()
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
    finally:
        stuck.set()
        pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        pool.submit(int)
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("wtest-pool")],
        what="pool threads to end after shutdown",
    )
