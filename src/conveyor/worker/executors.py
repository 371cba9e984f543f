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
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from conveyor.context import JobContext
from conveyor.errors import JobTimeout

if TYPE_CHECKING:
    from conveyor.functions import JobFunction
    from conveyor.worker.process_pool import ProcessPool


class JobThreads(Executor):
    """Daemon threads for thread jobs, reused from job to job; a new one starts whenever
    none is idle, so the worker's slots, not this pool, bound how many jobs run.

    Not a ``ThreadPoolExecutor``: with a fixed size, a timed-out thread that runs on would
    keep holding the thread its freed slot needs; and its threads are joined at interpreter
    exit, so such a thread would keep a stopped worker process from exiting.
    """

    def __init__(self, name_prefix: str = "conveyor-job") -> None:
        self._name_prefix = name_prefix
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run new jobs after shutdown")
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
            number = self._threads
        self._tasks.put((future, functools.partial(fn, *args, **kwargs)))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name_prefix}_{number}",
                             daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            future, call = item
            result: Any = None
            error: BaseException | None = None
            started = future.set_running_or_notify_cancel()
            if started:
                try:
                    result = call()
                except BaseException as exc:
                    error = exc
            with self._lock:  # idle before the caller hears back and submits again
                self._idle += 1
            if error is not None:
                future.set_exception(error)
            elif started:
                future.set_result(result)
            del item, future, call, result, error

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let every thread end after its current job; never waits (``wait`` is ignored)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        if cancel_futures:
            pending: list[Future[Any]] = []
            while True:
                try:
                    item = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    pending.append(item[0])
            for future in pending:
                future.cancel()
        for _ in range(threads):
            self._tasks.put(None)


class Executors:
    """Runs attempts with the executor and timeout each job asks for."""

    def __init__(self, max_threads: int, max_processes: int,
                 on_child: Callable[[str], None] | None = None,
                 frozen_patience: float | None = None,
                 before_child: Callable[[], Awaitable[None]] | None = None) -> None:
        # ``max_threads`` is kept for callers; the worker's slots bound thread jobs.
        self._threads = JobThreads()
        #: the most child processes the process jobs run in
        self.max_processes = max(1, max_processes)
        self._processes: ProcessPool | None = None
        #: told a process job's id once it has a child to run in (see ProcessPool.on_child)
        self._on_child = on_child
        #: how long a process job runs on while its worker shows no sign of life (see
        #: ProcessPool.patience; None: for ever)
        self._frozen_patience = frozen_patience
        #: awaited before a process job is sent to its child (see ProcessPool.before_run)
        self._before_child = before_child

    def run(self, job_fn: JobFunction[..., Any], ctx: JobContext) -> Awaitable[Any]:
        """One attempt, to await; it raises :class:`JobTimeout` past the job's timeout.
        An async job without a timeout is its own coroutine: no frame in between."""
        executor = job_fn.options.executor
        if executor == "async":
            if job_fn.options.timeout is None:
                args, kwargs = job_fn.call_arguments(ctx)
                coroutine: Awaitable[Any] = job_fn.fn(*args, **kwargs)
                return coroutine
            return self._run_async(job_fn, ctx)
        if executor == "thread":
            return self._run_thread(job_fn, ctx)
        return self._run_process(job_fn, ctx)

    async def _run_async(self, job_fn: JobFunction[..., Any], ctx: JobContext) -> Any:
        args, kwargs = job_fn.call_arguments(ctx)
        timeout = job_fn.options.timeout
        if timeout is None:
            return await job_fn.fn(*args, **kwargs)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await job_fn.fn(*args, **kwargs)
        except TimeoutError:
            if not deadline.expired():  # the job's own TimeoutError: an ordinary failure
                raise
            ctx.mark_cancelled()
            raise JobTimeout(f"job {job_fn.name!r} timed out after {timeout}s") from None

    async def _run_thread(self, job_fn: JobFunction[..., Any], ctx: JobContext) -> Any:
        args, kwargs = job_fn.call_arguments(ctx)
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

    async def _run_process(self, job_fn: JobFunction[..., Any], ctx: JobContext) -> Any:
        if self._processes is None:
            from conveyor.worker.process_pool import ProcessPool

            self._processes = ProcessPool(self.max_processes, self._on_child,
                                          self._frozen_patience, self._before_child)
        staged = job_fn.staged_path(ctx.id)
        return await self._processes.run(
            job_fn.fn.__module__,
            job_fn.__qualname__,
            ctx.record,
            timeout=job_fn.options.timeout,
            on_progress=ctx.progress,
            staged=None if staged is None else str(staged),
        )

    async def close(self) -> None:
        """Stop the child processes; leave running threads to finish on their own."""
        # threads first: a stopping worker may give up waiting for the processes
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            processes, self._processes = self._processes, None
            await processes.close()
