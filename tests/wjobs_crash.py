"""Jobs for tests/test_worker_crash.py, run by ``python -m conveyor worker wjobs_crash:app``.

A short lease so that jobs of a killed worker are recovered within a couple of seconds, and
``max_recoveries=2`` so a job that keeps killing its worker is given up on quickly. The
tests pass ``--url`` to the worker and bind the app in their own process with ``use_url``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from conveyor import Conveyor

app = Conveyor(lease=1.0, max_recoveries=2)


@app.job
async def marked_nap(marker: str, seconds: float) -> int:
    """Append this process's pid to ``marker``; the first run then sleeps ``seconds``.

    Returns how many runs the marker has seen.
    """
    path = Path(marker)
    first = not path.exists()
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        await asyncio.sleep(seconds)
    return len(path.read_text().split())


@app.job
async def quick(n: int) -> int:
    await asyncio.sleep(0.03)
    return n


@app.job
def nap(seconds: float) -> float:
    """A thread job."""
    time.sleep(seconds)
    return seconds


@app.job
def long_unless(marker: str, seconds: float) -> str:
    """A thread job that sleeps ``seconds`` unless ``marker`` exists."""
    if Path(marker).exists():
        return "quick"
    time.sleep(seconds)
    return "slept"


@app.job
async def suicide() -> None:
    """Kill the worker process that runs it, every time."""
    os.kill(os.getpid(), signal.SIGKILL)
