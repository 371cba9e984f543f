"""Conveyor: ``conveyor worker --processes P --min-workers C --max-workers C``.

The store is ``BENCH_STORE_URL`` (a SQLite file, or the private Redis when unset). The jobs
are coroutines, Conveyor's way to overlap jobs that wait, C at once in each of P processes.
The enqueue is the blocking ``fn.enqueue()``: each call returns once its job is durable (an
fsynced commit on SQLite, one script on Redis), one call at a time.
"""

from __future__ import annotations

import os
import sys

import _common as bench

from conveyor import Conveyor

DIST = "conveyor"
ENQUEUE = "fn.enqueue(), one blocking call at a time"
STORE = os.environ.get("BENCH_STORE_URL") or bench.redis_url()

app = Conveyor(STORE)
rec = bench.Recorder()


@app.job
async def noop() -> None:
    rec.noop()


@app.job
async def sleep(ms: float) -> None:
    await rec.async_sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    for _ in range(n):
        if sleep_ms is None:
            noop.enqueue()
        else:
            sleep.enqueue(sleep_ms)
    app.close()


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    # coroutines for both workloads; --processes: one process per core
    command = [sys.executable, "-m", "conveyor", "worker", "conveyor_bench:app", "--url", STORE,
               "--processes", str(p), "--min-workers", str(c), "--max-workers", str(c),
               "--log-level", "WARNING"]
    return [command], f"{p} process{'es' if p > 1 else ''} x {c} slots (coroutines)"


if __name__ == "__main__":
    import conveyor_bench  # the copy the worker imports

    bench.main(conveyor_bench)
