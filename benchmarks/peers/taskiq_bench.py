"""taskiq on Redis streams (acked): ``taskiq worker --workers P --max-async-tasks C``.

taskiq runs async tasks on each worker process's event loop, at most ``--max-async-tasks``
at once ("Maximum simultaneous async tasks per worker process", default 100), in
``--workers`` child processes (default 2): P of them, C tasks each.
"""

from __future__ import annotations

import asyncio
import sys

import _common as bench
from taskiq_redis import RedisStreamBroker

DIST = "taskiq"
ENQUEUE = "await task.kiq(), one call at a time"

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
    for _ in range(n):
        await (noop.kiq() if sleep_ms is None else sleep.kiq(sleep_ms))
    await broker.shutdown()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    # coroutines for both workloads (taskiq's mode for async tasks); one process per core
    command = [sys.executable, "-m", "taskiq", "worker", "taskiq_bench:broker", "--workers",
               str(p), "--max-async-tasks", str(c), "--log-level", "WARNING"]
    return [command], f"{p} processes x max-async-tasks={c}, RedisStreamBroker"


if __name__ == "__main__":
    import taskiq_bench  # the copy the worker imports

    bench.main(taskiq_bench)
