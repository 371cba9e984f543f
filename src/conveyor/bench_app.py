"""The jobs ``conveyor bench`` runs: a no-op and a sleep, both coroutines."""

from __future__ import annotations

import asyncio

from conveyor.app import Conveyor

app = Conveyor()


@app.job
async def noop() -> None:
    """Do nothing: measures the queue itself."""


@app.job
async def sleep(ms: float) -> None:
    """Wait ``ms`` milliseconds without holding a CPU, like a job waiting on I/O."""
    await asyncio.sleep(ms / 1000)
