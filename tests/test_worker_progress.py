"""Progress reports of quick jobs are not lost: the last one is stored with the outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from conftest import WorkerThread
from conveyor import Conveyor, JobContext, JobState


def test_last_progress_of_a_quick_job_is_kept(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job
    async def quick(ctx: JobContext) -> str:
        ctx.progress(0.5, "half")
        ctx.progress(1.0, "all done")
        return "ok"

    handle = quick.enqueue()
    start_worker(app, max_workers=2)
    assert handle.result(timeout=10) == "ok"
    info = handle.info()
    assert info.state is JobState.SUCCEEDED
    assert (info.progress, info.progress_message) == (1.0, "all done")


def test_a_job_finishing_during_shutdown_is_recorded(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    """A graceful stop must write the outcome of a job that ends in the grace period, even
    when the settler is busy at that moment (a last progress report makes that likely)."""

    began = threading.Event()

    @app.job
    async def steady(ctx: JobContext) -> str:
        began.set()
        await asyncio.sleep(0.3)
        ctx.progress(1.0, "done")
        return "done"

    for _ in range(3):
        began.clear()
        handle = steady.enqueue()
        worker = start_worker(app, max_workers=2, grace=10.0)
        # the job's own mark: a claimed job is "running" in the store before it starts, and
        # a stop in that gap rightly puts it back unstarted
        assert began.wait(10), "the job did not start"
        worker.stop()
        assert handle.info().state is JobState.SUCCEEDED


def test_a_stop_during_a_claim_is_not_lost(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    """With its one slot busy, the worker claims ahead while the stop arrives: the stop must
    still end the grace period on time, and the job go back to its queue uncharged."""

    started = threading.Event()

    @app.job
    async def long(ctx: JobContext) -> str:
        started.set()  # the worker's claim of the next batch is under way right now
        await asyncio.sleep(5)
        return "finished"

    for _ in range(3):
        started.clear()
        handle = long.enqueue()
        worker = start_worker(app, max_workers=1, grace=0.2)
        assert started.wait(10)
        worker.stop()
        info = handle.info()
        assert info.state is JobState.QUEUED and info.attempts == 0  # not left to finish
        assert app.cancel(handle.id).state is JobState.CANCELLED


def test_progress_of_an_attempt_that_timed_out_is_not_stored_on_the_next(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    """A thread job's attempt that timed out runs on (its thread cannot be stopped): what
    it reports while the next attempt runs must not be stored as the next attempt's."""
    second_reported, zombie_done, release = (threading.Event() for _ in range(3))

    @app.job(executor="thread", timeout=3.0, retries=1, backoff=0.01)
    def slow(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            second_reported.wait(20)  # timed out meanwhile; the next attempt runs
            for _ in range(5):
                ctx.progress(0.1, "from the attempt that timed out")
            zombie_done.set()
            return "too late"
        ctx.progress(0.9, "from the attempt running")
        second_reported.set()
        release.wait(20)
        return "second"

    handle = slow.enqueue()
    start_worker(app, max_workers=2)
    try:
        assert zombie_done.wait(20), "the timed-out attempt did not report"
        time.sleep(0.75)  # flushes of progress (every 0.25 s), well within the timeout
        info = handle.info()
        assert (info.state, info.attempts) == (JobState.RUNNING, 2)
        assert (info.progress, info.progress_message) == (0.9, "from the attempt running")
    finally:
        release.set()
    assert handle.result(timeout=20) == "second"
