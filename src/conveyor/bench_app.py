"""The jobs ``conveyor bench`` runs: a no-op and a sleep, both coroutines, and no-ops with
limits (a cap of :data:`CAPPED` running at once; a cap of :data:`PER_TENANT` per tenant over
:data:`TENANTS` tenants)."""

from __future__ import annotations

import asyncio

from conveyor.app import Conveyor


async def noop() -> None:
    """Do nothing: measures the queue itself."""


async def sleep(ms: float) -> None:
    """Wait ``ms`` milliseconds without holding a CPU, like a job waiting on I/O."""
    await asyncio.sleep(ms / 1000)


#: ``--kind capped``: at most this many run at once across every worker
CAPPED = 8
#: ``--kind grouped``: jobs spread over this many tenants, at most PER_TENANT of one at once
TENANTS = 32
PER_TENANT = 2


async def capped_noop() -> None:
    """Do nothing, at most CAPPED at once: measures the claim's cap check."""


async def tenant_noop(tenant: str) -> None:
    """Do nothing, at most PER_TENANT of one tenant at once, tenants taking turns."""


def register(target: Conveyor) -> Conveyor:
    """Register the bench's jobs on ``target`` (its producer checks calls against them)."""
    target.job(noop)
    target.job(sleep)
    target.job(concurrency=CAPPED)(capped_noop)
    target.job(group_by="tenant", group_concurrency=PER_TENANT)(tenant_noop)
    return target


app = register(Conveyor())
