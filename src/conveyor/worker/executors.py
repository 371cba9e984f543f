"""Where a job's code runs: on the event loop, in a thread, or in a child process.

Timeouts differ by executor, and the difference matters:

* ``async``: the coroutine is cancelled at the deadline.
* ``process``: the child process is killed at the deadline (works even inside C code).
* ``thread``: CPython cannot stop a thread. At the deadline the attempt is failed, the
  slot is freed and :attr:`JobContext.cancelled` turns true; the thread itself runs on
  until the function returns and its result is thrown away.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from conveyor.context import JobContext
from conveyor.errors import JobTimeout

if TYPE_CHECKING:
    from conveyor.functions import JobFunction
    from conveyor.worker.process_pool import ProcessPool


def _call_args(job_fn: JobFunction, ctx: JobContext) -> tuple[list[Any], dict[str, Any]]:
    kwargs = ctx.record.kwargs
    if job_fn.context_parameter is not None:
        kwargs = {**kwargs, job_fn.context_parameter: ctx}
    return ctx.record.args, kwargs


class Executors:
    """Runs attempts with the executor and timeout each job asks for."""

    def __init__(self, max_threads: int, max_processes: int) -> None:
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, max_threads), thread_name_prefix="conveyor-job"
        )
        self._max_processes = max(1, max_processes)
        self._processes: ProcessPool | None = None

    async def run(self, job_fn: JobFunction, ctx: JobContext) -> Any:
        """Run one attempt; raise :class:`JobTimeout` past the job's timeout."""
        executor = job_fn.options.executor
        if executor == "async":
            return await self._run_async(job_fn, ctx)
        if executor == "thread":
            return await self._run_thread(job_fn, ctx)
        return await self._run_process(job_fn, ctx)

    async def _run_async(self, job_fn: JobFunction, ctx: JobContext) -> Any:
        args, kwargs = _call_args(job_fn, ctx)
        timeout = job_fn.options.timeout
        if timeout is None:
            return await job_fn.fn(*args, **kwargs)
        try:
            async with asyncio.timeout(timeout):
                return await job_fn.fn(*args, **kwargs)
        except TimeoutError:
            ctx.mark_cancelled()
            raise JobTimeout(f"job {job_fn.name!r} timed out after {timeout}s") from None

    async def _run_thread(self, job_fn: JobFunction, ctx: JobContext) -> Any:
        args, kwargs = _call_args(job_fn, ctx)
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, job_fn.fn, *args, **kwargs)
        future = loop.run_in_executor(self._threads, call)
        timeout = job_fn.options.timeout
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            ctx.mark_cancelled()
            raise JobTimeout(
                f"job {job_fn.name!r} timed out after {timeout}s "
                "(its thread cannot be stopped and runs on; its result will be ignored)"
            ) from None
        except asyncio.CancelledError:
            ctx.mark_cancelled()
            raise

    async def _run_process(self, job_fn: JobFunction, ctx: JobContext) -> Any:
        if self._processes is None:
            from conveyor.worker.process_pool import ProcessPool

            self._processes = ProcessPool(self._max_processes)
        return await self._processes.run(
            job_fn.fn.__module__,
            job_fn.__qualname__,
            ctx.record,
            timeout=job_fn.options.timeout,
            on_progress=ctx.progress,
        )

    async def close(self) -> None:
        """Stop the child processes; leave running threads to finish on their own."""
        if self._processes is not None:
            await self._processes.close()
            self._processes = None
        self._threads.shutdown(wait=False, cancel_futures=True)
