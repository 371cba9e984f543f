"""Progress reports of quick jobs are not lost: the last one is stored with the outcome."""

from __future__ import annotations

import asyncio
import threading
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
