"""Jobs with limits for tests/test_limits.py, run by ``conveyor worker limitjobs:app``.

Each job appends ``start|end TIME ID GROUP`` to the ledger file named by ``LIMITS_LEDGER``
(flushed and fsynced by the job itself), so a test can compute how many ran at once."""

from __future__ import annotations

import os
import time

from conveyor import Conveyor, JobContext, RateLimited

app = Conveyor(lease=5.0)


def _note(mark: str, job_id: str, group: str) -> None:
    path = os.environ["LIMITS_LEDGER"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{mark} {time.time():.6f} {job_id} {group}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _run(ctx: JobContext, group: str, seconds: float) -> None:
    _note("start", ctx.id, group)
    time.sleep(seconds)
    _note("end", ctx.id, group)


@app.job(concurrency=3, queue="capped")
def capped(ctx: JobContext, seconds: float) -> None:
    """At most three run at once across every worker."""
    _run(ctx, "", seconds)


@app.job(group_by="tenant", group_concurrency=2, queue="grouped")
def per_tenant(ctx: JobContext, tenant: str, seconds: float) -> None:
    """At most two of one tenant run at once."""
    _run(ctx, tenant, seconds)


@app.job(group_by="tenant", queue="fair")
def fair(ctx: JobContext, tenant: str, seconds: float) -> None:
    """No cap: the tenants take turns."""
    _run(ctx, tenant, seconds)


@app.job(rate_limit="20/s", queue="rated")
def rated(ctx: JobContext) -> None:
    """At most 20 start per second."""
    _note("start", ctx.id, "")


@app.job(retries=0, queue="upstream")
def upstream(ctx: JobContext, refusals: int) -> int:
    """Told "too many requests" ``refusals`` times, then done."""
    _note("start", ctx.id, "")
    if ctx.record.deferrals < refusals:
        raise RateLimited(retry_after=0.05)
    return ctx.record.attempts


@app.job(retries=0, queue="upstream", executor="process")
def always_limited(marker: str) -> None:
    """Told "too many requests" every time, in a child process."""
    _note("start", marker, "")
    raise RateLimited(retry_after=0)
