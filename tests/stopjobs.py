"""The app of tests/test_graceful_stop.py, run as ``conveyor worker stopjobs:app --url ...``.

A short lease makes the worker heartbeat five times a second, so a SIGTERM often lands
while a heartbeat is in flight.
"""

from __future__ import annotations

import asyncio

from conveyor import Conveyor

app = Conveyor(lease=0.6)


@app.job
async def nap(seconds: float) -> float:
    """Sleep ``seconds`` and return them."""
    await asyncio.sleep(seconds)
    return seconds
