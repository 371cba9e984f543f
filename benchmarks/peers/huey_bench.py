"""Huey on Redis.

No-op jobs: one ``huey_consumer -k process -w P`` (P worker processes). Sleep jobs: P
``huey_consumer -k greenlet -w C`` consumers. Huey's docs: "If your work-loads are mostly
IO-bound, you can run the consumer with threads or greenlets instead. Because greenlets are so
lightweight, you can run quite a few of them efficiently"; a consumer is one process, so there
is one per core to keep P processes like every other system. The greenlet consumers import
``huey_green``, which applies gevent's monkey-patch before the jobs, as Huey's docs show.
"""

from __future__ import annotations

import sys

import _common as bench
from huey import RedisHuey

DIST = "huey"
ENQUEUE = "task call, one at a time"

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


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    base = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_bench.huey", "-q"]
    if kind == "noop":  # process workers: one per core, for CPU-light jobs
        return [[*base, "-k", "process", "-w", str(p)]], f"1 consumer x {p} worker processes"
    # greenlets: Huey's recommendation for IO-bound work, one consumer per core, pointed at a
    # module that applies gevent's monkey-patch first (huey_green.py)
    green = [x if x != "huey_bench.huey" else "huey_green.huey" for x in base]
    return ([[*green, "-k", "greenlet", "-w", str(c)] for _ in range(p)],
            f"{p} consumers x {c} greenlets")


if __name__ == "__main__":
    import huey_bench  # the copy the worker imports: task names match

    bench.main(huey_bench)
