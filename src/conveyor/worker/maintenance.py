"""The background chores of a worker process, each a small loop of its own.

* heartbeat: every ``min(lease / 3, 1 s)`` extend the leases of running jobs, publish the
  worker's size and counters, and pick up cancellation requests;
* autoscale: ten times a second, resize from the backlog;
* recovery: every second requeue jobs whose lease expired (their worker died), counting in
  the statistics those lost too often, which go to the dead set; promote due scheduled jobs;
  every minute purge finished jobs past their retention;
* progress: store the latest progress report of each running job a few times a second;
* stats: every five seconds add the per-minute job statistics to the store (the worker
  adds the last ones itself once its final outcomes are written);
* metrics (with ``Worker(metrics=...)``): snapshot the queue depths every ``queue_refresh``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.worker.pool import Worker

log = logging.getLogger("conveyor.worker")

AUTOSCALE_INTERVAL = 0.1
RECOVERY_INTERVAL = 1.0
PURGE_INTERVAL = 60.0
PROGRESS_INTERVAL = 0.25
STATS_INTERVAL = 5.0


class Maintenance:
    """Starts and stops the chores of one :class:`Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.heartbeat_interval = min(worker.app.lease / 3, 1.0)
        self._tasks: list[asyncio.Task[None]] = []
        self._progress: dict[str, tuple[float, str | None]] = {}
        self._last_purge = 0.0

    def start(self) -> None:
        """Start every loop on the running event loop."""
        chores: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("heartbeat", self.heartbeat_interval, self.heartbeat_once),
            ("autoscale", AUTOSCALE_INTERVAL, self.autoscale_once),
            ("recovery", RECOVERY_INTERVAL, self.recover_once),
            ("progress", PROGRESS_INTERVAL, self.flush_progress),
            ("stats", STATS_INTERVAL, self.flush_stats),
        ]
        metrics = self.worker.metrics
        if metrics is not None:
            chores.append(("metrics", metrics.queue_refresh, self.refresh_metrics))
        for name, interval, chore in chores:
            task = asyncio.create_task(self._every(name, interval, chore), name=f"conveyor-{name}")
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel the loops and store the last progress reports."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.flush_progress()

    @staticmethod
    async def _every(name: str, interval: float, chore: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await chore()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again in %.1fs", name, interval)

    # -- the chores ---------------------------------------------------------------------------
    async def heartbeat_once(self) -> None:
        """Extend leases, publish this worker, and act on cancellation requests."""
        worker = self.worker
        worker.info.concurrency = worker.scaler.size
        worker.info.busy = len(worker.running)
        to_cancel = await worker.broker.heartbeat(
            worker.info, worker.held_ids(), worker.app.lease
        )
        for job_id in to_cancel:
            worker.cancel_job(job_id, "cancel")

    async def autoscale_once(self) -> None:
        """Grow while all slots are busy and jobs wait; shrink after a quiet cooldown."""
        worker = self.worker
        scaler = worker.scaler
        busy = len(worker.running)
        backlog = False
        if busy >= scaler.size and not worker.stopping:
            backlog = bool(worker.buffered) or await worker.broker.ready_count(worker.queues, 1) > 0
        before = scaler.size
        after = scaler.observe(busy, backlog, time.monotonic())
        if after != before:
            log.debug("concurrency %d -> %d", before, after)
            worker.info.concurrency = after
            if after > before:
                worker.wake()

    async def recover_once(self) -> None:
        """Requeue jobs of dead workers, promote due jobs, and now and then purge old ones."""
        broker = self.worker.broker
        recovery = await broker.recover_expired(self.worker.app.max_recoveries)
        for queue, count in recovery.dead.items():  # flushed with the rest of the statistics
            self.worker.stats.died(queue, recovery.died_at, count)
        if recovery.requeued or recovery.dead:
            log.warning("recovered jobs of lost workers: %d requeued, %d dead",
                        recovery.requeued, recovery.dead_total)
        await broker.promote_scheduled()
        now = time.monotonic()
        if now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            await broker.purge_expired()

    async def refresh_metrics(self) -> None:
        """Take a new snapshot of the queue depths for ``conveyor_queue_jobs``."""
        metrics = self.worker.metrics
        if metrics is not None:
            await metrics.refresh_queues(self.worker.broker, force=True)

    async def flush_stats(self) -> None:
        """Add the statistics counted since the last flush (kept if the store refuses)."""
        await self.worker.stats.flush(self.worker.broker)

    def report_progress(self, job_id: str, value: float, message: str | None) -> None:
        """Progress sink of job contexts: keep the latest report (any thread)."""
        self._progress[job_id] = (value, message)

    async def flush_progress(self) -> None:
        """Store the latest reports gathered since the last flush."""
        if not self._progress:
            return
        reports, self._progress = self._progress, {}
        await self.worker.broker.set_progress(
            self.worker.id,
            [(job_id, value, message) for job_id, (value, message) in reports.items()],
        )
