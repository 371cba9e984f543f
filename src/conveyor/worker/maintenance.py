"""The background chores of a worker process, each a small loop of its own.

* heartbeat: every ``min(lease / 3, 1 s)`` extend the leases of the attempts held, publish
  the worker's size and counters, pick up cancellation requests, stop at once the attempts
  the store no longer counts as this worker's, and send long-buffered jobs back;
* autoscale: ten times a second, resize from the backlog;
* recovery: every second requeue jobs whose lease expired (their worker died), counting in
  the statistics those lost too often, which go to the dead set; promote due scheduled jobs.
  Recovery waits one lease after this worker last met trouble with the store: an outage
  cuts off every worker alike, and their heartbeats must land before anyone takes over;
  every minute purge finished jobs past their retention;
* progress: store the latest progress report of each running job a few times a second;
* stats: every five seconds add the per-minute job statistics to the store (the worker
  adds the last ones itself once its final outcomes are written);
* known jobs: every minute publish the names and parameters of the app's jobs again (the
  worker publishes them first when it starts), so producers without the app can check calls;
* metrics (with ``Worker(metrics=...)``): snapshot the queue depths every ``queue_refresh``;
* schedules (when the app has some): every second store the jobs of their due ticks (see
  :mod:`conveyor.worker.scheduler`).

The loops stop on an event, between two runs of their chore, not by cancellation alone: a
cancellation can be swallowed inside a store call (see :mod:`conveyor.worker.shutdown`), so
:meth:`Maintenance.stop` sets the event, waits a bounded time, and only then cancels the
loops still busy, never waiting without a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from conveyor import logs
from conveyor.backends.outage import outage_for, waits_out
from conveyor.worker import outcomes, shutdown

if TYPE_CHECKING:
    from conveyor.backends.base import Broker
    from conveyor.context import ProgressSink
    from conveyor.job import JobRecord
    from conveyor.worker.pool import Worker
    from conveyor.worker.scheduler import Scheduler

log = logging.getLogger("conveyor.worker")
#: recovered jobs whose names one recovery looks up for its log lines (more are logged by id)
NAMED_RECOVERIES = 50

AUTOSCALE_INTERVAL = 0.1
RECOVERY_INTERVAL = 1.0
PURGE_INTERVAL = 60.0
PROGRESS_INTERVAL = 0.25
STATS_INTERVAL = 5.0
#: seconds between two publications of the worker's jobs (see :mod:`conveyor.known`)
KNOWN_INTERVAL = 60.0
#: seconds between two rounds of the schedules (an ``every=1`` schedule fires each tick)
SCHEDULE_INTERVAL = 1.0
#: seconds :meth:`Maintenance.stop` takes by default, at most (give or take a cancellation)
STOP_TIMEOUT = 2.0
#: at a stop, a chore in progress gets at most this many seconds (and half the stop's time)
#: to finish before its loop is cancelled
CHORE_STOP_WAIT = 1.0


def heartbeat_interval(lease: float) -> float:
    """Seconds between the heartbeats of a worker whose leases last ``lease`` seconds."""
    return min(lease / 3, 1.0)


def frozen_patience(lease: float) -> float:
    """How long a process job's child lets its job run while its worker shows no sign of
    life (see :mod:`conveyor.worker.process_pool`): half the time the last lease the worker
    renewed before it froze runs on at least (a lease, less a heartbeat's interval: that
    renewal may be that old), so that the child ends its job before another worker could
    recover it, with the other half left for its watch to look (a quarter of this at most)
    and for a heartbeat that took long."""
    return 0.5 * (lease - heartbeat_interval(lease))


class Maintenance:
    """Starts and stops the chores of one :class:`Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.heartbeat_interval = heartbeat_interval(worker.app.lease)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_event = asyncio.Event()
        self._progress: dict[str, tuple[int, float, str | None]] = {}
        self._last_purge = 0.0
        self._scheduler: Scheduler | None = None
        #: ``time.monotonic()`` when the last heartbeat that the store answered was sent:
        #: the leases it renewed last at least a lease from then
        self.renewed_at = time.monotonic()
        #: the heartbeat :meth:`renew_if_lapsing` sent, while it is under way (its callers
        #: share it)
        self._renewing: asyncio.Task[bool] | None = None

    def start(self) -> None:
        """Start every loop on the running event loop."""
        self._stop_event = asyncio.Event()
        chores: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("heartbeat", self.heartbeat_interval, self.heartbeat_once),
            ("autoscale", AUTOSCALE_INTERVAL, self.autoscale_once),
            ("recovery", RECOVERY_INTERVAL, self.recover_once),
            ("progress", PROGRESS_INTERVAL, self.flush_progress),
            ("stats", STATS_INTERVAL, self.flush_stats),
            ("known", KNOWN_INTERVAL, self.publish_jobs),
        ]
        metrics = self.worker.metrics
        if metrics is not None:
            chores.append(("metrics", metrics.queue_refresh, self.refresh_metrics))
        if self.worker.app.schedules:
            chores.append(("schedules", SCHEDULE_INTERVAL, self._schedules_round))
        for name, interval, chore in chores:
            task = asyncio.create_task(self._every(name, interval, chore), name=f"conveyor-{name}")
            self._tasks.append(task)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loops and store the last progress reports, within about ``timeout``
        seconds whatever state the store is in.

        The loops end by themselves at the stop event. A chore still busy after
        :data:`CHORE_STOP_WAIT` (the store is slow or down) is cancelled, again and again
        while it goes on; a loop still running after that is abandoned with a log line. The
        last progress write gets what is left of ``timeout`` (at least
        :data:`~conveyor.worker.shutdown.STEP_MIN`).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stop_event.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, busy = await asyncio.wait(tasks, timeout=min(CHORE_STOP_WAIT, timeout / 2))
            if busy:
                names = ", ".join(sorted(task.get_name() for task in busy))
                log.warning("stopping: %s still busy; cancelling", names)
                left = max(shutdown.CANCEL_WAIT, (deadline - loop.time()) / 2)
                for task in await shutdown.finish(busy, left):
                    log.error("stopping: %s did not end when cancelled; abandoning it",
                              task.get_name())
        await shutdown.bounded(self.flush_progress(),
                               max(shutdown.STEP_MIN, deadline - loop.time()),
                               "storing the last progress reports")

    async def _every(self, name: str, interval: float,
                     chore: Callable[[], Awaitable[None]]) -> None:
        """Run ``chore`` every ``interval`` seconds until the stop event is set, or the task
        is cancelled (even by a cancellation the chore swallowed)."""
        task = asyncio.current_task()
        stop = self._stop_event
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if stop.is_set() or (task is not None and task.cancelling()):
                return
            try:
                await chore()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if waits_out(self.worker.broker, exc):  # logged once per outage
                    log.debug("%s failed: %s", name, exc)
                else:
                    log.exception("%s failed; trying again in %s", name,
                                  logs.duration(interval))
            if task is not None and task.cancelling():
                return  # cancelled, but the chore's store call swallowed it

    # -- the chores ---------------------------------------------------------------------------
    async def heartbeat_once(self) -> None:
        """Extend leases, publish this worker, and act on cancellation requests."""
        worker = self.worker
        worker.info.concurrency = worker.scaler.size
        worker.info.busy = len(worker.running)
        worker.release_stale()
        begun, worker.begun = worker.begun, []
        held = worker.held()
        holding = {job_id: worker.holding(job_id) for job_id in held}
        sent = time.monotonic()
        try:
            beat = await worker.broker.heartbeat(worker.info, held, worker.app.lease, begun)
        except BaseException as exc:
            worker.begun[:0] = begun  # told at the next heartbeat
            if not isinstance(exc, asyncio.CancelledError):  # leases may lapse: see recovery
                worker.broker.last_trouble = time.monotonic()
            raise
        self.renewed_at = max(self.renewed_at, sent)
        for job_id in beat.lost:
            # the verdict is on what was held when the heartbeat was sent: not on a claim of
            # the same job made since (this worker may claim a job it put back uncharged);
            # an attempt that has ended since, its outcome not stored yet, is the same one
            # (one whose outcome was sent is left to it: see Worker.lose)
            now, then = worker.holding(job_id), holding.get(job_id)
            if now is then or (isinstance(now, int) and now == getattr(then, "claim", then)):
                worker.lose(job_id)
        for job_id in beat.cancel:
            worker.cancel_job(job_id, "cancel")

    def lapsing(self) -> bool:
        """Whether the leases were last renewed half a lease ago or more (this worker was cut
        off from the store, stopped, or its event loop held), outside a known outage of the
        store (the heartbeat loop waits that out)."""
        return time.monotonic() - self.renewed_at >= self.worker.app.lease / 2 \
            and not outage_for(self.worker.broker).down

    async def renew_if_lapsing(self) -> bool:
        """Send a heartbeat now when the leases are :meth:`lapsing`: the attempts the store
        gave to others meanwhile are then lost here (see :meth:`Worker.lose`) before their
        outcomes are written or they start. Callers meanwhile share it (a caller cancelled
        leaves it to the others). True when one was sent and answered; trouble is left to
        the heartbeat loop, which logs it."""
        task = self._renewing
        if task is None or task.done():
            if not self.lapsing():
                return False
            task = self._renewing = asyncio.get_running_loop().create_task(self._renew())
        return await asyncio.shield(task)

    async def _renew(self) -> bool:
        try:
            await self.heartbeat_once()
        except Exception:
            return False
        return True

    async def autoscale_once(self) -> None:
        """Grow while all slots are busy and jobs wait; shrink after a quiet cooldown."""
        worker = self.worker
        scaler = worker.scaler
        busy = worker.busy  # slots taken, those waiting for their outcome to be stored too
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
        lease = self.worker.app.lease
        # others cut off by the same trouble renew their leases first
        if not broker.last_trouble or time.monotonic() - broker.last_trouble >= lease:
            await self._recover(broker)
        await broker.promote_scheduled()
        now = time.monotonic()
        if now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            await broker.purge_expired()

    async def _recover(self, broker: Broker) -> None:
        recovery = await broker.recover_expired(self.worker.app.max_recoveries)
        for queue, count in recovery.dead.items():  # flushed with the rest of the statistics
            self.worker.stats.died(queue, recovery.died_at, count)
        names: dict[str, str] = {}
        for job_id, _, _ in recovery.jobs[:NAMED_RECOVERIES]:  # rare: a read each is cheap
            record = await broker.get(job_id)
            if record is not None:
                names[job_id] = record.name
        outcomes.log_recovery(recovery.jobs, self.worker.app.max_recoveries, names)

    async def refresh_metrics(self) -> None:
        """Take a new snapshot of the queue depths for ``conveyor_queue_jobs``."""
        metrics = self.worker.metrics
        if metrics is not None:
            await metrics.refresh_queues(self.worker.broker, force=True)

    async def publish_jobs(self) -> None:
        """Publish the app's jobs (names, queues, parameters) with the store's time."""
        from conveyor.known import KnownJob

        worker = self.worker
        jobs = [KnownJob.of(job_fn) for job_fn in worker.app.registry.values()]
        await worker.broker.publish_jobs(worker.id, jobs)

    async def _schedules_round(self) -> None:
        await self.fire_schedules()

    async def fire_schedules(self, now: float | None = None) -> list[str]:
        """Store the jobs of the app's due schedule ticks (``now``: the store's clock by
        default); return the ids this call stored."""
        if self._scheduler is None:
            from conveyor.worker.scheduler import Scheduler

            worker = self.worker
            self._scheduler = Scheduler(worker.app, worker.broker, worker.metrics)
        return await self._scheduler.run_once(now)

    async def flush_stats(self) -> None:
        """Add the statistics counted since the last flush (kept if the store refuses)."""
        await self.worker.stats.flush(self.worker.broker)

    def progress_sink(self, record: JobRecord) -> ProgressSink:
        """Where the attempt of ``record`` (this claim of it) reports progress: the latest
        report is kept (from any thread), with the attempt's claim, only while that attempt
        is the one running: a thread job that timed out runs on, and must not report over
        the next attempt of its job."""
        running = self.worker.running

        def report(job_id: str, value: float, message: str | None) -> None:
            entry = running.get(job_id)
            if entry is not None and entry.ctx.record is record:
                self._progress[job_id] = (record.claim, value, message)

        return report

    async def flush_progress(self) -> None:
        """Store the latest reports gathered since the last flush."""
        if not self._progress:
            return
        reports, self._progress = self._progress, {}
        await self.worker.broker.set_progress(
            self.worker.id,
            [(job_id, claim, value, message)
             for job_id, (claim, value, message) in reports.items()],
        )
