"""taskiq on Redis streams (acked): ``taskiq worker --workers 1 --max-async-tasks C``."""

from __future__ import annotations

import asyncio
import sys

import _common as bench
from taskiq_redis import RedisStreamBroker

DIST = "taskiq"
WORKER = "1 worker process, --max-async-tasks C, RedisStreamBroker"
ENQUEUE = "kiq(), 100 concurrent calls"

broker = RedisStreamBroker(bench.redis_url())
rec = bench.Recorder()


@broker.task(task_name="noop")
async def noop() -> None:
    rec.noop()


@broker.task(task_name="sleep")
async def sleep(ms: float) -> None:
    await rec.async_sleep(ms)


async def _enqueue(n: int, sleep_ms: float | None) -> None:
    await broker.startup()  # creates the stream's consumer group before the jobs arrive
    for done in range(0, n, 100):
        calls = (noop.kiq() if sleep_ms is None else sleep.kiq(sleep_ms)
                 for _ in range(min(100, n - done)))
        await asyncio.gather(*calls)
    await broker.shutdown()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "taskiq", "worker", "taskiq_bench:broker", "--workers", "1",
            "--max-async-tasks", str(c), "--log-level", "WARNING"]


if __name__ == "__main__":
    import taskiq_bench  # the copy the worker imports

    bench.main(taskiq_bench)
