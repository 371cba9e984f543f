"""Dramatiq on Redis: ``dramatiq --processes 1 --threads C`` (a parent and one worker process)."""

from __future__ import annotations

import sys

import _common as bench
import dramatiq
from dramatiq.brokers.redis import RedisBroker

DIST = "dramatiq"
WORKER = "1 worker process (--processes 1 --threads C)"
ENQUEUE = "loop of send()"

dramatiq.set_broker(RedisBroker(url=bench.redis_url()))
rec = bench.Recorder()


@dramatiq.actor
def noop() -> None:
    rec.noop()


@dramatiq.actor
def sleep(ms: float) -> None:
    rec.sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    for _ in range(n):
        if sleep_ms is None:
            noop.send()
        else:
            sleep.send(sleep_ms)


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "dramatiq", "dramatiq_bench", "--processes", "1",
            "--threads", str(c)]


if __name__ == "__main__":
    import dramatiq_bench  # the copy the worker imports

    bench.main(dramatiq_bench)
