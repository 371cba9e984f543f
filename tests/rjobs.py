"""Jobs for the Redis tests, run by ``python -m conveyor worker rjobs:app --url redis://...``."""

from __future__ import annotations

import asyncio

import wjobs_crash
from conveyor import Conveyor

app = Conveyor(lease=1.0, max_recoveries=3)


@app.job
async def pause(n: int, seconds: float) -> int:
    """Sleep a little and return ``n``."""
    await asyncio.sleep(seconds)
    return n


# the same job as in tests/wjobs_crash.py, registered on this app
marked_nap = app.job(wjobs_crash.marked_nap.fn)
