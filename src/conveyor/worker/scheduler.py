"""Firing schedules from every worker at once, with no leader.

About once a second each worker's maintenance reads the stored state of the app's schedules,
computes their due ticks (:func:`conveyor.cron.due_ticks`, on the store's clock) and stores
one job per tick under the tick's own id (``cron:NAME:TICK``). The store refuses an id that
exists (:class:`~conveyor.errors.DuplicateJob`), so however many workers compute the same
tick, one job is stored; then the schedule's ``last`` moves forward (never back). A worker
that dies between the two leaves ``last`` behind, and the next worker stores the same ids
again, which the store refuses: nothing is lost, nothing doubled.

Workers publish the definitions of their schedules (with the store's time as ``seen_at``)
when they start and every minute; a schedule deleted from the store is published again at
the next round by any worker that still registers it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from conveyor.cron import due_ticks, tick_job_id
from conveyor.errors import ConfigurationError, DuplicateJob, QueueFull
from conveyor.options import EnqueueOptions

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Broker
    from conveyor.metrics import Metrics
    from conveyor.schedules import Schedule, ScheduleState

log = logging.getLogger("conveyor.worker")

#: seconds between two rounds of the schedules
INTERVAL = 1.0
#: seconds between two publications of the schedules' definitions
PUBLISH_INTERVAL = 60.0
#: job states during which an ``overlap="skip"`` schedule fires nothing
BUSY_STATES = ("queued", "scheduled", "running")


class Scheduler:
    """Fires the schedules of one app into one store."""

    def __init__(self, app: Conveyor, broker: Broker, metrics: Metrics | None = None) -> None:
        self.app = app
        self.broker = broker
        self.metrics = metrics
        self._published_at: float | None = None

    async def run_once(self, now: float | None = None) -> list[str]:
        """Store the jobs of the due ticks (``now`` by default from
        :meth:`~conveyor.backends.base.Broker.schedule_clock`); return the ids of those this
        call stored (not those another worker stored first)."""
        schedules = list(self.app.schedules.values())
        if not schedules:
            return []
        mono = time.monotonic()
        if self._published_at is None or mono - self._published_at >= PUBLISH_INTERVAL:
            states = await self.broker.publish_schedules(schedules)
            self._published_at = mono
        else:
            states = await self.broker.schedules()
        by_name = {state.name: state for state in states}
        clock = await self.broker.schedule_clock() if now is None else now
        stored: list[str] = []
        for schedule in schedules:
            state = by_name.get(schedule.name)
            if state is None:  # deleted from the store: published again next round
                self._published_at = None
                continue
            stored += await self._fire(schedule, state, clock)
        return stored

    async def _fire(self, schedule: Schedule, state: ScheduleState, now: float) -> list[str]:
        timing = schedule.timing
        ticks, skipped = due_ticks(timing, state.last_tick, now, grace=schedule.grace)
        if state.last_tick is not None and not ticks and not skipped:
            return []  # nothing due: ``last`` may stay where it is
        if state.paused:
            ticks, skipped = [], skipped + len(ticks)
        stored: list[str] = []
        last_job: str | None = None
        for tick in ticks:
            if schedule.overlap == "skip" and await self._busy(last_job or state.last_job):
                skipped += 1
                continue
            job_id = tick_job_id(schedule.name, tick)
            options = EnqueueOptions(queue=schedule.queue, job_id=job_id).checked()
            record = self.app.build(schedule.job, schedule.args, schedule.kwargs, options)
            try:
                await self.broker.enqueue([record], self.app.max_queued)
            except DuplicateJob:
                pass  # another worker stored it first
            except QueueFull as exc:
                log.warning("schedule %s: tick %d skipped: %s", schedule.name, tick, exc)
                skipped += 1
                continue
            else:
                stored.append(job_id)
                log.debug("schedule %s: enqueued %s", schedule.name, job_id)
            last_job = job_id
        try:
            next_tick: int | None = timing.next_after(now)
        except ConfigurationError:
            next_tick = None  # the expression has no more ticks
        await self.broker.advance_schedule(schedule.name, now, next_tick, last_job)
        if self.metrics is not None:
            self.metrics.schedule_counted(schedule.name, len(stored), skipped)
        return stored

    async def _busy(self, job_id: str | None) -> bool:
        if job_id is None:
            return False
        record = await self.broker.get(job_id)
        return record is not None and str(record.state) in BUSY_STATES
