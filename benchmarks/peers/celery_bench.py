"""Celery on Redis, no result backend.

No-op jobs: one ``celery worker --pool prefork -c P`` (P child processes): prefork is
Celery's default pool, which its concurrency guide calls "ideal for CPU-bound tasks and most
use cases". Sleep jobs: P ``celery worker --pool gevent -c C`` processes: the same guide
names eventlet and gevent as "designed for IO-bound tasks", using greenlets for high
concurrency, and one worker per core keeps P processes like every other system.
"""

from __future__ import annotations

import sys

import _common as bench
from celery import Celery

DIST = "celery"
ENQUEUE = "task.delay(), one call at a time"

app = Celery("celery_bench", broker=bench.redis_url())
rec = bench.Recorder()


@app.task
def noop() -> None:
    rec.noop()


@app.task
def sleep(ms: float) -> None:
    rec.sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    for _ in range(n):
        if sleep_ms is None:
            noop.delay()
        else:
            sleep.delay(sleep_ms)


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    base = [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--loglevel",
            "WARNING"]
    if kind == "noop":  # prefork: Celery's default, "ideal for CPU-bound tasks"
        return [[*base, "--pool", "prefork", "-c", str(p)]], f"1 worker, prefork pool of {p}"
    # gevent: "designed for IO-bound tasks" (Celery's concurrency guide), one worker per core
    return ([[*base, "--pool", "gevent", "-c", str(c), "-n", f"bench{i}@%h"] for i in range(p)],
            f"{p} workers x gevent pool of {c}")


if __name__ == "__main__":
    import celery_bench  # the copy the worker imports: task names match

    bench.main(celery_bench)
