"""Jobs for the Sentinel failover runs (tests/sentinel_run.py), run by ``python -m conveyor
worker sentineljobs:app``.

``record`` appends ``start ID TIME`` and ``end ID TIME`` lines to the file named by
``$CONVEYOR_TEST_LEDGER`` (each fsynced), so a run can tell which jobs ran, how often, and
which ran to completion. A short lease brings back the jobs whose claim or outcome a
failover lost within a couple of seconds.
"""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Conveyor, JobContext

app = Conveyor(lease=2.0, max_recoveries=5)


def note(path: str, line: str) -> None:
    """Append one line to ``path`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


@app.job
async def record(ctx: JobContext, n: int) -> int:
    """Note the start, nap a little, note the end; return ``n``."""
    ledger = os.environ["CONVEYOR_TEST_LEDGER"]
    note(ledger, f"start {ctx.id} {time.time():.6f}")
    await asyncio.sleep(0.01)
    note(ledger, f"end {ctx.id} {time.time():.6f}")
    return n
