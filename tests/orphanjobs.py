"""A process-executor job for tests/test_process_orphans.py that keeps a ledger: one fsynced
line per tick naming its process, its attempt and the time. Its first attempt ticks for
30 s (so that a copy left running would show), any later one briefly."""

from __future__ import annotations

import os
import time
from typing import Any

from conveyor import Conveyor, JobContext

app = Conveyor(lease=1.0)


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


def child_without_the_kernels_signal(*args: Any) -> None:
    """A process-pool child that does not ask Linux to kill it with its parent, as on
    other systems: only its thread watching the parent's sentinel ends it."""
    from conveyor.worker import process_pool

    process_pool._killed_with_parent = lambda: False
    process_pool._child_main(*args)
