"""arq: P ``arq`` worker processes, ``max_jobs=C`` coroutines each.

An arq worker is one process running its jobs as coroutines on one event loop, at most
``max_jobs`` at once; it has no option to start several processes, so P of them are started
side by side on the one queue (its design: workers share a Redis queue). arq polls its queue
every ``poll_delay`` seconds and starts at most ``max_jobs`` jobs per poll; its default of
0.5 s would cap a drain at about 2 * C jobs/s per process, so it runs with 0.005 s here.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import _common as bench
from arq import create_pool
from arq.connections import RedisSettings

DIST = "arq"
POLL_DELAY = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.005"))
ENQUEUE = "await pool.enqueue_job(), one call at a time"

rec = bench.Recorder()


async def noop(ctx: dict[str, Any]) -> None:
    rec.noop()


async def sleep(ctx: dict[str, Any], ms: float) -> None:
    await rec.async_sleep(ms)


class WorkerSettings:
    functions = [noop, sleep]
    redis_settings = RedisSettings.from_dsn(bench.redis_url())
    max_jobs = bench.concurrency()
    poll_delay = POLL_DELAY


async def _enqueue(n: int, sleep_ms: float | None) -> None:
    pool = await create_pool(WorkerSettings.redis_settings)
    args = () if sleep_ms is None else (sleep_ms,)
    name = "noop" if sleep_ms is None else "sleep"
    for _ in range(n):
        await pool.enqueue_job(name, *args)
    await pool.aclose()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    # coroutines for both workloads (asyncio is arq's only mode); one process per core
    command = [sys.executable, "-m", "arq", "arq_bench.WorkerSettings"]
    return ([command] * p,
            f"{p} processes x max_jobs={c} coroutines, poll_delay={POLL_DELAY:g} s (default 0.5)")


if __name__ == "__main__":
    import arq_bench  # the copy the worker imports

    bench.main(arq_bench)
