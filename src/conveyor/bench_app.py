"""The jobs ``conveyor bench`` runs: a no-op and a sleep, both coroutines."""

from __future__ import annotations

import asyncio

from conveyor.app import Conveyor


async def noop() -> None:
    """Do nothing: measures the queue itself."""


async def sleep(ms: float) -> None:
    """Wait ``ms`` milliseconds without holding a CPU, like a job waiting on I/O."""
    await asyncio.sleep(ms / 1000)


def register(target: Conveyor) -> Conveyor:
    """Register the bench's jobs on ``target`` (its producer checks calls against them)."""
    target.job(noop)
    target.job(sleep)
    return target


app = register(Conveyor())
