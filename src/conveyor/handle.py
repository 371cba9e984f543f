"""``JobHandle``: what enqueue returns, to read a job's state and result later."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Generic, TypeVar

from conveyor.errors import JobCancelled, JobFailed, JobNotFound
from conveyor.job import JobRecord, JobState

if TYPE_CHECKING:
    from conveyor.app import Conveyor


R = TypeVar("R")


class JobHandle(Generic[R]):
    """A job by id. ``info()`` reads its record, ``result()`` waits for its outcome (typed
    as the job function's return value when the handle came from one).

    ``deduplicated`` is True when the enqueue that returned it stored nothing, because a job
    holding the same unique key was under way: the handle is that job's.
    """

    __slots__ = ("app", "deduplicated", "id")

    def __init__(self, app: Conveyor, job_id: str, deduplicated: bool = False) -> None:
        self.app = app
        self.id = job_id
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def info_async(self) -> JobRecord:
        """The job's current record; raise :class:`JobNotFound` if there is none."""
        await self.app.broker.open()
        record = await self.app.broker.get(self.id)
        if record is None:
            raise JobNotFound(f"no job with id {self.id}")
        return record

    def info(self) -> JobRecord:
        """Blocking :meth:`info_async`."""
        return self.app.run_sync(self.info_async())

    async def result_async(self, timeout: float | None = None) -> R:
        """Wait until the job is final and return its result.

        Raise :class:`JobFailed` if it died, :class:`JobCancelled` if it was cancelled,
        :class:`TimeoutError` if ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            record = await self.info_async()
            if record.state is JobState.SUCCEEDED:
                result: R = record.result
                return result
            if record.state is JobState.DEAD:
                raise JobFailed(self.id, record.error)
            if record.state is JobState.CANCELLED:
                raise JobCancelled(self.id)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {record.state} after {timeout}s")
            wait = pause if deadline is None else min(pause, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, wait))
            pause = min(pause * 1.5, 0.25)

    def result(self, timeout: float | None = None) -> R:
        """Blocking :meth:`result_async`."""
        return self.app.run_sync(self.result_async(timeout))

    async def cancel_async(self) -> JobRecord:
        """Cancel the job (see :meth:`Conveyor.cancel`)."""
        return await self.app.cancel_async(self.id)

    def cancel(self) -> JobRecord:
        """Blocking :meth:`cancel_async`."""
        return self.app.run_sync(self.cancel_async())

    async def set_priority_async(self, priority: int) -> JobRecord:
        """Change the waiting job's priority (see :meth:`Conveyor.set_priority`)."""
        return await self.app.set_priority_async(self.id, priority)

    def set_priority(self, priority: int) -> JobRecord:
        """Blocking :meth:`set_priority_async`."""
        return self.app.run_sync(self.set_priority_async(priority))
