"""The shortest path through the system: enqueue, run on a worker thread, read the result."""

from __future__ import annotations

from collections.abc import Callable

from conftest import WorkerThread
from conveyor import Conveyor, JobState


def test_enqueue_run_result(app: Conveyor, start_worker: Callable[..., WorkerThread]) -> None:
    @app.job
    async def add(a: int, b: int) -> int:
        return a + b

    @app.job
    def multiply(a: int, b: int) -> int:
        return a * b

    handles = [add.enqueue(2, 3), multiply.enqueue(4, 5)]
    start_worker(app, max_workers=4)
    assert [h.result(timeout=10) for h in handles] == [5, 20]
    info = handles[0].info()
    assert info.state is JobState.SUCCEEDED
    assert info.attempts == 1
    assert info.started_at is not None and info.finished_at is not None
