"""Jobs of the fault-injection suite: ``conveyor worker faults.faultjobs:app`` and
``conveyor serve faults.faultjobs:app`` import this module in their own processes.

The module's ``app`` is configured from the environment, as a deployed app would be:

* ``CONVEYOR_URL``: the store;
* ``FAULTS_LEASE``: the lease in seconds (default 2, so a lost worker's jobs come back fast);
* ``FAULTS_MAX_RECOVERIES``: the lost-worker limit (default 3, the app's default);
* ``FAULTS_LEDGER``: the ledger file. A middleware writes every attempt of every job to it
  (the built-in ``conveyor.push`` of ``conveyor serve`` included): see :mod:`faults.ledger`.

The jobs return ``{"attempt": ..., "pid": ...}`` so a test can tell which attempt's result
the store kept. Tests make their own app on the same store with :func:`make_app`, to enqueue
and inspect.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conveyor import Conveyor, JobContext
from faults import ledger

DEFAULT_LEASE = 2.0


def make_app(url: str | None = None, lease: float | None = None,
             max_recoveries: int | None = None, ledger_path: str | None = None) -> Conveyor:
    """An app with the fault jobs; unset arguments come from the environment (see above)."""
    app = Conveyor(
        url=url or os.environ.get("CONVEYOR_URL"),
        namespace="faults",
        lease=lease if lease is not None else float(
            os.environ.get("FAULTS_LEASE", DEFAULT_LEASE)),
        max_recoveries=max_recoveries if max_recoveries is not None else int(
            os.environ.get("FAULTS_MAX_RECOVERIES", "3")),
    )
    path = ledger_path or os.environ.get("FAULTS_LEDGER")

    @app.middleware
    async def keep_ledger(job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        if path is None:
            return await call_next()
        # fsynced in a thread, as a well-behaved async job does its I/O: the event loop (and
        # with it the worker's heartbeats and settles) is not held up by the ledger
        write = asyncio.to_thread
        await write(ledger.write_start, path, job.id, job.attempt)  # before the job's code
        try:
            result = await call_next()
        except asyncio.CancelledError:
            await write(ledger.write_end, path, job.id, job.attempt, "cancelled")
            raise
        except BaseException:
            await write(ledger.write_end, path, job.id, job.attempt, "error")
            raise
        await write(ledger.write_end, path, job.id, job.attempt, "ok")
        return result

    def stamp(ctx: JobContext) -> dict[str, int]:
        return {"attempt": ctx.attempt, "pid": os.getpid()}

    @app.job
    async def work(seconds: float, ctx: JobContext) -> dict[str, int]:
        """An innocent async job: sleeps ``seconds``."""
        await asyncio.sleep(seconds)
        return stamp(ctx)

    @app.job
    def work_thread(seconds: float, ctx: JobContext) -> dict[str, int]:
        """An innocent thread job: sleeps ``seconds`` in short steps, stops if cancelled."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not ctx.cancelled:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return stamp(ctx)

    @app.job
    async def hold(marker: str, seconds: float, ctx: JobContext) -> dict[str, int]:
        """Runs until the file ``marker`` exists (at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not Path(marker).exists():
            await asyncio.sleep(0.05)
        return stamp(ctx)

    @app.job
    def hold_thread(marker: str, seconds: float, ctx: JobContext) -> dict[str, int]:
        """A stubborn thread job: runs until ``marker`` exists (at most ``seconds``) and never
        looks at ``ctx.cancelled``; a worker must stop without waiting for it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not Path(marker).exists():
            time.sleep(0.05)
        return stamp(ctx)

    @app.job
    async def poison(ctx: JobContext) -> None:
        """Kills the process that runs it, every time (an async job)."""
        os._exit(1)

    @app.job
    def poison_thread(ctx: JobContext) -> None:
        """Kills the process that runs it, every time (a thread job)."""
        os._exit(1)

    return app


#: the app the worker and server processes run
app = make_app()
