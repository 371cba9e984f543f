"""Eager mode: each job runs when it is enqueued, in the caller's process, for tests.

Turn it on with ``Conveyor(..., eager=True)`` or for a block with :meth:`Conveyor.testing`.
An enqueue then stores the job as usual, claims it and runs its attempts one after the other
through the worker's own code (:meth:`conveyor.worker.pool.Worker.run_attempt`: the
middleware chain, the executor's argument handling, the timeout, the retry and permanent
error rules), records each outcome in the store, and returns once the job is final. So
``handle.info()``, ``handle.result()`` and the CLI read it as if a worker had run it.

What differs from a worker:

* retries run at once: the backoff is computed and not slept (a retried job's ``run_at``
  is when its next attempt ran);
* ``delay`` and ``at`` are not waited for: a scheduled job runs at once too;
* ``process`` jobs run on a thread of this process (debuggers and coverage see them);
* there is no heartbeat: cancelling a running eager job has no effect, and a job that runs
  longer than the app's lease could be taken over by a worker serving the same store;
* a job whose name is not registered in this app is checked like any enqueue by name (it
  must have been published by a worker of the store, or be forced) and left for a worker;
* an exception of the job does not propagate from ``enqueue``: it is recorded like a
  worker records it (``handle.result()`` raises :class:`~conveyor.errors.JobFailed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.job import FINAL_STATES, JobRecord, JobState, Outcome, OutcomeKind
from conveyor.portal import Portal

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from conveyor.app import Conveyor
    from conveyor.functions import JobFunction
    from conveyor.worker.pool import Worker

T = TypeVar("T")


class _Runner:
    """The worker whose code runs an app's eager jobs (never started: only its attempt
    path is used), rebuilt when the app's store or middlewares change."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.middlewares: tuple[Any, ...] = ()
        #: thread twins of ``process`` jobs, by name
        self.threaded: dict[str, JobFunction[..., Any]] = {}
        self.lock = threading.Lock()
        #: the loop of blocking enqueues (not the app's: a job on it may call the blocking
        #: API, ``handle.result()`` say, which runs on the app's loop)
        self.portal = Portal()

    async def for_app(self, app: Conveyor) -> Worker:
        from conveyor.worker.pool import Worker

        old = None
        with self.lock:
            worker = self.worker
            if worker is None or worker.broker is not app.broker:
                old, worker = worker, Worker(app, min_workers=1, max_workers=1)
                self.worker = worker
                self.middlewares = tuple(app.middlewares)
            elif self.middlewares != tuple(app.middlewares):
                self.middlewares = tuple(app.middlewares)
                worker._middleware_chain = worker._build_chain()
        if old is not None:
            await old.executors.close()
        return worker

    async def _close_worker(self) -> None:
        with self.lock:
            worker, self.worker = self.worker, None
        if worker is not None:
            await worker.executors.close()

    def close(self) -> None:
        """Let the worker's idle job threads end, and stop the loop's thread."""
        self.portal.call(self._close_worker())
        self.portal.close()

    def in_process(self, job_fn: JobFunction[..., Any]) -> JobFunction[..., Any]:
        """``job_fn``, with a ``process`` executor swapped for a thread."""
        if job_fn.options.executor != "process":
            return job_fn
        from conveyor.functions import JobFunction

        with self.lock:
            twin = self.threaded.get(job_fn.name)
            if twin is None or twin.fn is not job_fn.fn:
                options = dataclasses.replace(job_fn.options, executor="thread")
                twin = JobFunction(job_fn.app, job_fn.fn, job_fn.name, options)
                self.threaded[job_fn.name] = twin
            return twin


_runners_lock = threading.Lock()


def _runner(app: Conveyor) -> _Runner:
    with _runners_lock:
        runner = app._eager_runner
        if not isinstance(runner, _Runner):
            runner = app._eager_runner = _Runner()
        return runner


def close_runner(app: Conveyor) -> None:
    """Stop the threads eager mode started for ``app`` (``app.close()`` calls this)."""
    runner = app._eager_runner
    if isinstance(runner, _Runner):
        runner.close()
    app._eager_runner = None


def _due_now(records: Sequence[JobRecord]) -> list[JobRecord]:
    """The records with any delay dropped: eager mode runs scheduled jobs at once too."""
    return [
        dataclasses.replace(r, state=JobState.QUEUED, run_at=r.created_at)
        if r.state is JobState.SCHEDULED else r
        for r in records
    ]


async def store_and_run_async(app: Conveyor,
                              records: Sequence[JobRecord]) -> list[str | None]:
    """Store ``records`` (one write), then run each job to its end; return the store's
    answer (see ``Broker.enqueue``: per record None, or the id of the job holding its key)."""
    due = _due_now(records)
    await app.broker.open()
    held = await app.broker.enqueue(due, app.max_queued)
    for record, holder in zip(due, held, strict=True):
        job_fn = app.registry.get(record.name)
        # a deduplicated job runs (or ran) as the job holding its key
        if holder is None and job_fn is not None:
            await run_job(app, job_fn, record)
    return held


def store_and_run(app: Conveyor, records: Sequence[JobRecord]) -> list[str | None]:
    """Blocking :func:`store_and_run_async`."""
    return _run_blocking(app, store_and_run_async(app, records))


def _run_blocking(app: Conveyor, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from blocking code, on the eager loop's thread. From a thread
    whose event loop is running (a coroutine calling the blocking ``enqueue``, an async
    eager job among them), it runs on a fresh loop in a helper thread instead: that thread
    may be the eager loop's own, and waiting on a blocked loop would never end."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _runner(app).portal.call(coro)
    box: list[Any] = []

    def main() -> None:
        try:
            box.append((True, asyncio.run(coro)))
        except BaseException as exc:
            box.append((False, exc))

    helper = threading.Thread(target=main, name="conveyor-eager", daemon=True)
    helper.start()
    helper.join()
    ok, value = box[0]
    if not ok:
        raise value
    result: T = value
    return result


async def _claim(worker: Worker, record: JobRecord) -> JobRecord | None:
    """Claim this very job. Jobs claimed with it (waiting in its queue from before) go back,
    uncharged. None if the job is not there to claim (another worker took it)."""
    from conveyor.worker import outcomes

    broker, queue, lease = worker.broker, [record.queue], worker.app.lease
    for limit in (1, None):
        if limit is None:  # older jobs wait in the queue: claim as far as this one
            limit = await broker.ready_count(queue, 100_000) + 1
        jobs = await broker.claim(worker.id, queue, limit, lease)
        others = [j for j in jobs if j.id != record.id]
        if others:
            await broker.settle([outcomes.requeued(j, worker.id) for j in others])
        for job in jobs:
            if job.id == record.id:
                return job
        if not others:
            return None
    return None


async def run_job(app: Conveyor, job_fn: JobFunction[..., Any], record: JobRecord) -> None:
    """Run the stored job ``record`` attempt after attempt until it is final."""
    from conveyor.worker import outcomes

    runner = _runner(app)
    worker = await runner.for_app(app)
    job_fn = runner.in_process(job_fn)
    while True:
        claimed = await _claim(worker, record)
        if claimed is None:
            return
        try:
            outcome = await worker.run_attempt(claimed, job_fn)
        except BaseException:  # cancelled from outside: back to the queue, uncharged
            await worker.broker.settle([outcomes.requeued(claimed, worker.id)])
            raise
        outcome = _without_backoff(outcome)
        await worker.maintenance.flush_progress()
        await worker.broker.settle([outcome])
        if outcome.kind is not OutcomeKind.RETRY:
            break
    if job_fn.uses_staging:
        final = await worker.broker.get(record.id)
        if final is None or final.state in FINAL_STATES:
            app.staging.remove(record.id)


def _without_backoff(outcome: Outcome) -> Outcome:
    """A retry due now rather than after its backoff."""
    if outcome.kind is OutcomeKind.RETRY:
        return dataclasses.replace(outcome, run_at=outcome.finished_at)
    return outcome


@contextlib.contextmanager
def testing(app: Conveyor, url: str | None = "memory://", *,
            eager: bool = True) -> Iterator[Conveyor]:
    """See :meth:`Conveyor.testing`."""
    saved_eager = app.eager
    saved_store = None
    if url is not None:
        saved_store = (app.url, app._broker)
        app._broker = None
        app.url = url
    app.eager = eager
    try:
        yield app
    finally:
        app.eager = saved_eager
        close_runner(app)
        if saved_store is not None:
            broker, app._broker = app._broker, None
            if broker is not None:
                app.run_sync(broker.close())
            app.url, app._broker = saved_store
