"""SAQ on Redis: ``saq --workers P``, ``concurrency=C`` coroutines per process.

SAQ runs jobs as coroutines on an event loop, ``concurrency`` at once (its default 10), and
its CLI starts ``--workers`` processes ("Number of worker processes"): P of them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import _common as bench
from saq import Queue

DIST = "saq"
ENQUEUE = "await queue.enqueue(), one call at a time"

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
    for _ in range(n):
        await queue.enqueue(name, **kwargs)
    await queue.disconnect()


def enqueue(n: int, sleep_ms: float | None) -> None:
    asyncio.run(_enqueue(n, sleep_ms))


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    # coroutines for both workloads (asyncio is SAQ's mode); --workers: one process per core
    command = [sys.executable, "-m", "saq", "saq_bench.settings", "--workers", str(p), "--quiet"]
    return [command], f"{p} processes x concurrency={c} coroutines"


if __name__ == "__main__":
    import saq_bench  # the copy the worker imports

    bench.main(saq_bench)
