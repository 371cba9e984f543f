"""Dramatiq on Redis: ``dramatiq --processes P`` with its default 8 threads for no-op jobs,
``--processes P --threads C`` for sleep jobs.

Dramatiq's worker is processes x threads by design (its CLI defaults to one process per CPU
and 8 threads each); threads are how it overlaps jobs that wait, so the sleep workload raises
them to C.
"""

from __future__ import annotations

import sys

import _common as bench
import dramatiq
from dramatiq.brokers.redis import RedisBroker

DIST = "dramatiq"
ENQUEUE = "actor.send(), one call at a time"

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


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    command = [sys.executable, "-m", "dramatiq", "dramatiq_bench", "--processes", str(p)]
    if kind == "noop":  # its default threads per process (8)
        return [command], f"{p} processes x 8 threads (default)"
    return [[*command, "--threads", str(c)]], f"{p} processes x {c} threads"


if __name__ == "__main__":
    import dramatiq_bench  # the copy the worker imports

    bench.main(dramatiq_bench)
