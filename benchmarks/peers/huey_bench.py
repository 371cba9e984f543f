"""Huey on Redis: one ``huey_consumer -w C -k thread`` process (C worker threads)."""

from __future__ import annotations

import sys

import _common as bench
from huey import RedisHuey

DIST = "huey"
WORKER = "1 process, huey_consumer -w C -k thread"
ENQUEUE = "loop of task calls"

huey = RedisHuey("bench", url=bench.redis_url())
rec = bench.Recorder()


@huey.task()
def noop() -> None:
    rec.noop()


@huey.task()
def sleep(ms: float) -> None:
    rec.sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    for _ in range(n):
        if sleep_ms is None:
            noop()
        else:
            sleep(sleep_ms)


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "huey.bin.huey_consumer", "huey_bench.huey", "-w", str(c),
            "-k", "thread", "-q"]


if __name__ == "__main__":
    import huey_bench  # the copy the worker imports: task names match

    bench.main(huey_bench)
