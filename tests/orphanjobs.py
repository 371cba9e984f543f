"""Process-executor jobs that keep a ledger (one fsynced line per tick naming its process,
its attempt and the time): ``ticker`` for tests/test_process_orphans.py, whose first attempt
ticks for 30 s (so that a copy left running would show) and any later one briefly;
``finisher``, ``waiter``, ``ticker``, ``reticker`` and ``steady`` for
tests/test_worker_fencing.py (the first attempt of ``finisher`` ends when told, ``waiter``
after ``ORPHANJOBS_WAIT`` seconds).
``holder`` holds the worker's event loop. ``ORPHANJOBS_MAX_RECOVERIES`` and
``ORPHANJOBS_LEASE`` set the app's ``max_recoveries`` and ``lease``."""

from __future__ import annotations

import os
import time
from typing import Any

from conveyor import Conveyor, JobContext

app = Conveyor(lease=float(os.environ.get("ORPHANJOBS_LEASE", "1.0")),
               max_recoveries=int(os.environ.get("ORPHANJOBS_MAX_RECOVERIES", "3")))


def _write(ledger: str, line: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@app.job(executor="process", retries=3, backoff=0.05)
def ticker(ledger: str, ctx: JobContext) -> int:
    """Tick every 20 ms: 1,500 times in the first attempt, 5 times in any later one."""
    for _ in range(1500 if ctx.attempt == 1 else 5):
        _write(ledger, f"{os.getpid()} {ctx.attempt} {time.time():.6f}\n")
        time.sleep(0.02)
    return ctx.attempt


@app.job(executor="process", retries=3, backoff=0.05)
def reticker(ledger: str, ctx: JobContext) -> int:
    """As ``ticker``, but by run rather than attempt (an uncharged run keeps its attempt):
    1,500 ticks when the ledger is empty, 5 otherwise."""
    first = not os.path.exists(ledger)
    for _ in range(1500 if first else 5):
        _write(ledger, f"{os.getpid()} {ctx.attempt} {time.time():.6f}\n")
        time.sleep(0.02)
    return ctx.attempt


@app.job(executor="process", retries=3, backoff=0.05)
def steady(ledger: str, seconds: float, ctx: JobContext) -> int:
    """Tick every 20 ms for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _write(ledger, f"{os.getpid()} {ctx.attempt} {time.time():.6f}\n")
        time.sleep(0.02)
    return ctx.attempt


@app.job(executor="process", retries=3, backoff=0.05)
def finisher(ledger: str, ctx: JobContext) -> int:
    """Tick once, then end: in the first attempt once the file ``LEDGER.go`` exists (10 s
    at most) and after another tick, at once in any later one."""
    _write(ledger, f"{os.getpid()} {ctx.attempt} {time.time():.6f}\n")
    if ctx.attempt == 1:
        go = time.monotonic() + 10.0
        while not os.path.exists(f"{ledger}.go") and time.monotonic() < go:
            time.sleep(0.005)
        _write(ledger, f"{os.getpid()} {ctx.attempt} {time.time():.6f}\n")
    return ctx.attempt


@app.job(executor="process", retries=3, backoff=0.05)
def waiter(ledger: str, ctx: JobContext) -> int:
    """Note its start (its job's id, its attempt), then end: after ``ORPHANJOBS_WAIT``
    seconds (0 if unset)."""
    _write(ledger, f"{ctx.id} {ctx.attempt}\n")
    time.sleep(float(os.environ.get("ORPHANJOBS_WAIT", "0")))
    return ctx.attempt


@app.job()
async def holder(seconds: float) -> None:
    """Hold the worker's event loop for ``seconds`` (what a job must never do)."""
    time.sleep(seconds)


def child_without_the_kernels_signal(*args: Any) -> None:
    """A process-pool child that does not ask Linux to kill it with its parent, as on
    other systems: only its thread watching the parent's sentinel ends it."""
    from conveyor.worker import process_pool

    process_pool._killed_with_parent = lambda: False
    process_pool._child_main(*args)
