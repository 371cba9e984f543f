"""What the dashboard's pages show, as JSON-ready data read from the backend.

The pages draw these on the client with ``textContent`` only, so nothing a job carries (its
name, arguments, result or error) is ever parsed as HTML.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Broker
from conveyor.job import ALL_STATES
from conveyor.queues import QueueSettings
from conveyor.stats import MinuteStats, minute_of
from conveyor.summary import JobSummary

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: minutes drawn by the overview's charts
HISTORY_MINUTES = 60
#: the recent minutes the overview's headline latency is averaged over
LATENCY_WINDOW = 5
SERIES = ("succeeded", "failed", "dead", "cancelled", "started")


def history(rows: Iterable[MinuteStats], now: float, queue: str | None = None,
            minutes: int = HISTORY_MINUTES) -> dict[str, Any]:
    """Per-minute series of the last ``minutes`` minutes (the current one last), summed over
    every queue or for ``queue`` alone: counts, the failure rate in percent (failed and dead
    attempts over all that ended) and the mean enqueue-to-start wait in milliseconds."""
    last = minute_of(now)
    first = last - 60 * (minutes - 1)
    index = {first + 60 * i: i for i in range(minutes)}
    series: dict[str, list[float]] = {name: [0] * minutes for name in SERIES}
    wait = [0.0] * minutes
    for row in rows:
        i = index.get(row.minute)
        if i is None or (queue is not None and row.queue != queue):
            continue
        for name in SERIES:
            series[name][i] += getattr(row, name)
        wait[i] += row.wait_total
    rate: list[float | None] = []
    wait_ms: list[float | None] = []
    for i in range(minutes):
        bad = series["failed"][i] + series["dead"][i]
        ended = bad + series["succeeded"][i]
        rate.append(round(100.0 * bad / ended, 2) if ended else None)
        started = series["started"][i]
        wait_ms.append(round(1000.0 * wait[i] / started, 2) if started else None)
    recent = slice(minutes - LATENCY_WINDOW, minutes)
    started_recent = sum(series["started"][recent])
    return {
        "minutes": list(index),
        **series,
        "failure_rate": rate,
        "wait_ms": wait_ms,
        "recent_wait_ms": (round(1000.0 * sum(wait[recent]) / started_recent, 2)
                           if started_recent else None),
    }


async def counts(broker: Broker) -> dict[str, Any]:
    """Jobs per queue and state, and per state over every queue."""
    per_queue = await broker.counts()
    settings = await broker.queue_settings()
    totals = {str(s): sum(per.get(str(s), 0) for per in per_queue.values()) for s in ALL_STATES}
    empty = {str(s): 0 for s in ALL_STATES}
    return {
        "states": [str(s) for s in ALL_STATES],
        "queues": [{"name": name, "counts": per_queue.get(name, empty),
                    **(settings.get(name) or QueueSettings(name)).to_dict()}
                   for name in sorted(set(per_queue) | set(settings))],
        "totals": totals,
    }


async def overview(broker: Broker, queue: str | None = None) -> dict[str, Any]:
    """The overview page: counts per queue and state, the last hour's history, workers."""
    now = time.time()
    rows = await broker.stats(minute_of(now) - 60 * (HISTORY_MINUTES - 1))
    workers = await broker.workers()
    return {
        "now": now,
        **await counts(broker),
        "queue": queue,
        "history": history(rows, now, queue),
        "workers": {"count": len(workers), "busy": sum(w.busy for w in workers),
                    "concurrency": sum(w.concurrency for w in workers)},
    }


async def workers(broker: Broker) -> dict[str, Any]:
    """The workers page: every worker whose heartbeat is current."""
    now = time.time()
    found = sorted(await broker.workers(), key=lambda w: (w.host, w.pid, w.id))
    return {"now": now, "workers": [
        {**w.to_dict(), "heartbeat_age": round(max(0.0, now - w.heartbeat_at), 1)}
        for w in found]}


async def known_jobs(app: Conveyor) -> dict[str, Any]:
    """The "Jobs known" listing: the jobs workers published within the app's retention,
    with their parameters and how long ago a worker last published each."""
    now = time.time()
    return {"now": now, "jobs": [
        {**job.to_display(), "seen_age": round(max(0.0, now - job.seen_at), 1)}
        for job in await app.known_jobs_async()]}


def job_summary(summary: JobSummary) -> dict[str, Any]:
    """One row of a job list (the store cut the error to a preview already)."""
    data = summary.record.to_dict()
    keep = ("id", "name", "queue", "state", "attempts", "created_at", "started_at",
            "finished_at", "progress", "error")
    return {key: data.get(key) for key in keep}
