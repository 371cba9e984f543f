"""Jobs for the Redis tests, run by ``python -m conveyor worker rjobs:app --url redis://...``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from conveyor import Conveyor

app = Conveyor(lease=1.0, max_recoveries=3)


@app.job
async def pause(n: int, seconds: float) -> int:
    """Sleep a little and return ``n``."""
    await asyncio.sleep(seconds)
    return n


@app.job
async def marked_nap(marker: str, seconds: float) -> int:
    """Append this process's pid to ``marker``; only the first run sleeps ``seconds``."""
    path = Path(marker)
    first = not path.exists()
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        await asyncio.sleep(seconds)
    return len(path.read_text().split())
