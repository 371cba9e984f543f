"""``conveyor bench --open-loop``: offer jobs at fixed rates and watch the backlog.

A closed loop (enqueue everything, then drain) shows peak throughput; an open loop shows what
a service sees: jobs arrive at a steady rate whether or not the workers keep up. For each
rate the producer offers jobs for ``--duration`` seconds (in small bulk calls every 5 ms,
each job stamped with its enqueue time by the store), the backlog is sampled, and the
enqueue-to-start latency of a sample of the jobs is read back afterwards.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.table import Table

from conveyor.cli.output import errors

if TYPE_CHECKING:
    from conveyor.cli.bench import Bench

TICK = 0.005
SAMPLE = 2000


@dataclass
class Step:
    """What one offered rate did."""

    offered_per_s: float
    achieved_per_s: float = 0.0
    max_backlog: int = 0
    end_backlog: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    flat: bool = False
    backlog_samples: list[int] = field(default_factory=list)


async def _backlog(bench: Bench) -> int:
    counts = await bench.app.broker.counts()
    return sum(per.get("queued", 0) + per.get("scheduled", 0) for per in counts.values())


async def _offer(bench: Bench, rate: float, duration: float) -> tuple[float, list[str]]:
    """Offer ``rate`` jobs/s for ``duration`` s; return the achieved rate and sampled ids."""
    keep = min(1.0, SAMPLE / (rate * duration))
    sampled: list[str] = []
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        due = int(rate * elapsed) - sent
        if due > 0:
            handles = await bench.app.enqueue_many_async(bench.job, bench.items(due))
            sampled.extend(h.id for h in handles if random.random() < keep)
            sent += due
        await asyncio.sleep(max(0.0, TICK - (time.perf_counter() - start - elapsed)))
    return sent / (time.perf_counter() - start), sampled


async def run_step(bench: Bench, rate: float, duration: float) -> Step:
    """One rate: offer, sample the backlog meanwhile, then read the latencies."""
    step = Step(rate)
    offering = asyncio.create_task(_offer(bench, rate, duration))
    while not offering.done():
        step.backlog_samples.append(await _backlog(bench))
        await asyncio.wait({offering}, timeout=0.5)
    step.achieved_per_s, sampled = offering.result()
    step.end_backlog = await _backlog(bench)
    step.max_backlog = max([step.end_backlog, *step.backlog_samples])
    # flat: the workers kept up to within a fifth of a second of arrivals, at the rate asked
    step.flat = (step.end_backlog <= max(100, 0.2 * rate)
                 and step.achieved_per_s >= 0.95 * rate)
    deadline = time.monotonic() + 120
    while await _backlog(bench) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    latencies = []
    for job_id in sampled:
        record = await bench.app.broker.get(job_id)
        if record is not None and record.started_at is not None:
            latencies.append((record.started_at - record.created_at) * 1000)
    if latencies:
        latencies.sort()
        step.p50_ms = statistics.median(latencies)
        step.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return step


async def open_loop(bench: Bench, rates: list[float], duration: float) -> dict[str, Any]:
    """Every rate in turn with one worker running; the summary the README reports."""
    steps = []
    bench.start_worker()
    await asyncio.sleep(1.0)
    for rate in rates:
        errors.print(f"offering {rate:,.0f} jobs/s for {duration:.0f}s ...")
        step = await run_step(bench, rate, duration)
        steps.append(step)
        errors.print(f"  achieved {step.achieved_per_s:,.0f}/s, backlog at end "
                     f"{step.end_backlog}, p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms")
    sustained = [s for s in steps if s.flat]
    best = max(sustained, key=lambda s: s.offered_per_s) if sustained else None
    at_1000 = next((s for s in steps if s.offered_per_s == 1000), None)
    return {
        "steps": [{k: v for k, v in s.__dict__.items() if k != "backlog_samples"}
                  for s in steps],
        "highest_flat_rate_per_s": best.offered_per_s if best else 0.0,
        "p50_ms_at_highest": best.p50_ms if best else None,
        "p99_ms_at_highest": best.p99_ms if best else None,
        "p50_ms_at_1000": at_1000.p50_ms if at_1000 else None,
        "p99_ms_at_1000": at_1000.p99_ms if at_1000 else None,
    }


def open_loop_table(summary: dict[str, Any], title: str) -> Table:
    """The steps, one row each, and the summary as the caption."""
    table = Table(title=title)
    for column in ("offered/s", "achieved/s", "max backlog", "backlog at end", "p50 ms",
                   "p99 ms", "flat"):
        table.add_column(column, justify="right")
    for s in summary["steps"]:
        table.add_row(f"{s['offered_per_s']:,.0f}", f"{s['achieved_per_s']:,.0f}",
                      str(s["max_backlog"]), str(s["end_backlog"]), f"{s['p50_ms']:.1f}",
                      f"{s['p99_ms']:.1f}", "yes" if s["flat"] else "no")
    best = summary["highest_flat_rate_per_s"]
    table.caption = (f"highest rate with a flat backlog: {best:,.0f} jobs/s"
                     + (f" (p50 {summary['p50_ms_at_highest']:.1f} ms, "
                        f"p99 {summary['p99_ms_at_highest']:.1f} ms)" if best else ""))
    return table
