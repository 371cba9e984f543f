"""Progress reports of quick jobs are not lost: the last one is stored with the outcome."""

from __future__ import annotations

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
