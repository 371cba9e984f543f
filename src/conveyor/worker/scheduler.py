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
the next round by any worker that still registers it. Each worker reads only the schedules
its app registers, and fires them by its own definitions: while two versions of an app run
side by side, each fires its own (a warning is logged once per definition it differs from);
the stored next tick follows the stored definition.

A schedule whose stored ``last`` is more than :data:`AHEAD` seconds ahead of the clock (set
from a clock that ran ahead, or the clock stepped back) is set back to now, with a warning:
the ticks fired already are refused again by their ids. A schedule whose ``last`` cannot be
read is skipped (pausing or resuming it sets ``last`` to now again).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from conveyor.cron import due_ticks, tick_job_id
from conveyor.errors import ConfigurationError, DuplicateJob, QueueFull, TooManyQueues
from conveyor.options import EnqueueOptions
from conveyor.serialization import dumps, loads

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Broker
    from conveyor.cron import Timing
    from conveyor.job import JobRecord
    from conveyor.metrics import Metrics
    from conveyor.schedules import Schedule, ScheduleState

log = logging.getLogger("conveyor.worker")

#: seconds between two rounds of the schedules
INTERVAL = 1.0
#: seconds between two publications of the schedules' definitions
PUBLISH_INTERVAL = 60.0
#: job states during which an ``overlap="skip"`` schedule fires nothing
BUSY_STATES = ("queued", "scheduled", "running")
#: seconds the stored ``last`` may be ahead of the clock before it is set back to now
AHEAD = 60.0


class Scheduler:
    """Fires the schedules of one app into one store."""

    def __init__(self, app: Conveyor, broker: Broker, metrics: Metrics | None = None) -> None:
        self.app = app
        self.broker = broker
        self.metrics = metrics
        self._published_at: float | None = None
        #: per schedule, the stored definition (as JSON text) last warned about
        self._warned: dict[str, str] = {}
        #: the schedules whose unreadable ``last`` was warned about
        self._unreadable: set[str] = set()

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
            states = await self.broker.schedules([s.name for s in schedules])
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

    def _check(self, schedule: Schedule, state: ScheduleState) -> bool | None:
        """None if the worker cannot fire ``schedule`` from ``state`` (its last tick cannot
        be read), else whether the stored definition is the worker's own; warn (once per
        change) of one another worker stored."""
        if "last_tick" in state.unreadable:
            if schedule.name not in self._unreadable:
                log.warning("schedule %s: its stored last tick cannot be read; skipped "
                            "(pause and resume it to set it to now)", schedule.name)
                self._unreadable.add(schedule.name)
            return None
        self._unreadable.discard(schedule.name)
        stored = dumps(state.definition)
        if loads(stored) == loads(dumps(schedule.definition())):
            return True
        if self._warned.get(schedule.name) != stored:
            log.warning("schedule %s: the stored definition (%s) differs from this worker's "
                        "(%s): another version of the app runs; each fires its own",
                        schedule.name, state.timing_text, schedule.timing.describe())
            self._warned[schedule.name] = stored
        return False

    async def _fire(self, schedule: Schedule, state: ScheduleState, now: float) -> list[str]:
        own = self._check(schedule, state)
        if own is None:
            return []
        timing = schedule.timing
        last = state.last_tick
        if last is not None and last > now + AHEAD:
            log.warning("schedule %s: its last tick is %.0f s ahead of the clock (a clock "
                        "ran ahead or stepped back): set back to now", schedule.name,
                        last - now)
            await self.broker.rewind_schedule(schedule.name, last, now, _next(timing, now))
            return []
        ticks, skipped = due_ticks(timing, last, now, grace=schedule.grace)
        if last is not None and not ticks and not skipped and \
                (not own or state.next_tick == _next(timing, last)):
            # nothing due: ``last`` may stay where it is (but a next tick that does not
            # follow from the worker's own stored definition, just changed, is rewritten;
            # while another version's is stored, each fires its own and leaves it be)
            return []
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
                held = (await self.broker.enqueue([record], self.app.max_queued))[0]
            except DuplicateJob:
                pass  # another worker stored it first
            except (QueueFull, TooManyQueues) as exc:
                if await self.broker.get(job_id) is None:
                    log.warning("schedule %s: tick %d skipped: %s", schedule.name, tick, exc)
                    skipped += 1
                    continue
                # another worker stored it first (the cap is checked before the id)
            else:
                self._count(record, held)
                if held is not None:  # a unique job: the job holding its key stands for it
                    log.info("schedule %s: tick %d deduplicated to job %s", schedule.name,
                             tick, held)
                    skipped += 1
                    last_job = held
                    continue
                stored.append(job_id)
                log.debug("schedule %s: enqueued %s", schedule.name, job_id)
            last_job = job_id
        await self.broker.advance_schedule(schedule.name, now, _next(timing, now), last_job)
        if self.metrics is not None:
            self.metrics.schedule_counted(schedule.name, len(stored), skipped)
        return stored

    def _count(self, record: JobRecord, held: str | None) -> None:
        """Count a tick job's enqueue (stored, or deduplicated when ``held`` names the job
        holding its unique key): on the app's metrics (as the app counts its enqueues), else
        on the worker's."""
        metrics = self.app.metrics or self.metrics
        if metrics is not None:
            metrics.jobs_enqueued([record], [held])

    async def _busy(self, job_id: str | None) -> bool:
        if job_id is None:
            return False
        record = await self.broker.get(job_id)
        return record is not None and str(record.state) in BUSY_STATES


def _next(timing: Timing, after: float) -> int | None:
    """The next tick of ``timing`` after ``after``, or None if it has no more."""
    try:
        return timing.next_after(after)
    except ConfigurationError:
        return None
