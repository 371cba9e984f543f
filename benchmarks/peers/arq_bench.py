"""arq: one ``arq`` worker process, ``max_jobs=C`` coroutines on its event loop.

arq polls its queue every ``poll_delay`` seconds and starts at most ``max_jobs`` jobs per poll;
its default of 0.5 s would cap the drain at about 2 * C jobs/s, so it runs with 0.005 s here.
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
WORKER = f"1 process, max_jobs=C, poll_delay={POLL_DELAY:g} s (default 0.5)"
ENQUEUE = "enqueue_job, 100 concurrent calls"

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
    for done in range(0, n, 100):
        await asyncio.gather(*(pool.enqueue_job(name, *args) for _ in range(min(100, n - done))))
    await pool.aclose()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "arq", "arq_bench.WorkerSettings"]


if __name__ == "__main__":
    import arq_bench  # the copy the worker imports

    bench.main(arq_bench)
