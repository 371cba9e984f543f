"""SAQ on Redis: one ``saq --workers 1`` process, ``concurrency=C`` coroutines."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import _common as bench
from saq import Queue

DIST = "saq"
WORKER = "1 process, concurrency=C"
ENQUEUE = "enqueue, 100 concurrent calls"

rec = bench.Recorder()


async def noop(ctx: dict[str, Any]) -> None:
    rec.noop()


async def sleep(ctx: dict[str, Any], ms: float) -> None:
    await rec.async_sleep(ms)


settings = {
    "queue": Queue.from_url(bench.redis_url()),
    "functions": [noop, sleep],
    "concurrency": bench.concurrency(),
}


async def _enqueue(n: int, sleep_ms: float | None) -> None:
    queue = Queue.from_url(bench.redis_url())
    await queue.connect()
    kwargs = {} if sleep_ms is None else {"ms": sleep_ms}
    name = "noop" if sleep_ms is None else "sleep"
    for done in range(0, n, 100):
        await asyncio.gather(*(queue.enqueue(name, **kwargs) for _ in range(min(100, n - done))))
    await queue.disconnect()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "saq", "saq_bench.settings", "--workers", "1", "--quiet"]


if __name__ == "__main__":
    import saq_bench  # the copy the worker imports

    bench.main(saq_bench)
