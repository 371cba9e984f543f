"""Celery on Redis: one ``celery worker --pool threads -c C`` process; no result backend."""

from __future__ import annotations

import sys

import _common as bench
from celery import Celery

DIST = "celery"
WORKER = "1 process, --pool threads -c C"
ENQUEUE = "loop of delay()"

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


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--pool", "threads",
            "-c", str(c), "--loglevel", "WARNING"]


if __name__ == "__main__":
    import celery_bench  # the copy the worker imports: task names match

    bench.main(celery_bench)
