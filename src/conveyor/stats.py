"""Per-minute job statistics: what the dashboard draws as throughput, failure rate and
enqueue-to-start latency over the last hour.

Workers count their attempts in a :class:`StatsRecorder` and add them to the backend every few
seconds (:meth:`~conveyor.backends.base.Broker.add_stats`); the backend sums what every worker
added, per minute and queue, and keeps it for :data:`STATS_KEEP` seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.job import JobRecord, Outcome, OutcomeKind
from conveyor.stored import integer, number

if TYPE_CHECKING:
    from conveyor.backends.base import Broker

log = logging.getLogger("conveyor.stats")

#: seconds a minute's statistics are kept by the backend
STATS_KEEP = 24 * 3600.0


def minute_of(ts: float) -> int:
    """The start of the minute ``ts`` falls in, in whole seconds since the epoch."""
    return int(ts // 60) * 60


@dataclass(slots=True)
class MinuteStats:
    """What happened in one queue during one minute (counts are attempts, not jobs)."""

    #: the start of the minute, seconds since the epoch (a multiple of 60)
    minute: int
    queue: str
    succeeded: int = 0
    #: attempts that failed and will be tried again (a timeout is a failure)
    failed: int = 0
    #: attempts that failed for good, and jobs lost with their worker ``max_recoveries``
    #: times: the job went to the dead set
    dead: int = 0
    cancelled: int = 0
    #: first attempts that started; ``wait_total`` is the sum of their enqueue-to-start waits
    started: int = 0
    wait_total: float = 0.0

    @property
    def empty(self) -> bool:
        """True when nothing was counted (backends need not store such a row)."""
        return not (self.succeeded or self.failed or self.dead or self.cancelled
                    or self.started or self.wait_total)


#: the summed fields of :class:`MinuteStats`, in declaration order
SUMS = ("succeeded", "failed", "dead", "cancelled", "started", "wait_total")


def read_sum(name: str, value: object) -> int | float:
    """A stored sum of :data:`SUMS` as its type: the wait total a float, the others whole
    numbers (a value a hand left odd reads as the nearest, or 0: see
    :mod:`conveyor.stored`)."""
    return number(value) if name == "wait_total" else integer(value)


# -- recording on a worker --------------------------------------------------------------------
# Positions in a recorder's per-(minute, queue) counters: a plain list is the cheapest thing
# to bump on the hot path; MinuteStats are built only when the counts are flushed.
_SUCCEEDED, _FAILED, _DEAD, _CANCELLED, _STARTED, _WAIT = range(6)
#: the counter an attempt's end bumps (a shutdown requeue is no end)
_SLOT_OF = {OutcomeKind.SUCCEEDED: _SUCCEEDED, OutcomeKind.RETRY: _FAILED,
            OutcomeKind.DEAD: _DEAD, OutcomeKind.CANCELLED: _CANCELLED}
#: what :meth:`StatsRecorder.started` hands back for a first attempt: when it started and
#: its wait, so a requeue can take the start back
StartMark = tuple[float, float]


class StatsRecorder:
    """Counts one worker's attempts per minute and queue until they are added to the store.

    :meth:`started` and :meth:`ended` run on the worker's hot path (thousands of times a
    second, on its event loop): within the current minute each is a dict look-up and an
    increment or two. :meth:`died` counts the jobs the worker's lease recovery sent to the
    dead set (no attempt of theirs ended anywhere). :meth:`flush` runs every few seconds
    from the maintenance loop and once more when the worker stops; what it cannot store is
    kept for the next flush.
    """

    def __init__(self) -> None:
        #: (minute, queue) -> counters, indexed by _SUCCEEDED ... _WAIT
        self._counts: dict[tuple[int, str], list[float]] = {}
        #: the fast path: the counters of the newest minute seen, by queue
        self._current: dict[str, list[float]] = {}
        self._start = 0
        self._end = 0
        self._failing = False

    def _slot(self, minute: int, queue: str) -> list[float]:
        """The counters of ``queue`` in ``minute``, made on first use."""
        key = (minute, queue)
        counters = self._counts.get(key)
        if counters is None:
            counters = self._counts[key] = [0, 0, 0, 0, 0, 0.0]
        return counters

    def _counters(self, at: float, queue: str) -> list[float]:
        """The counters of ``queue`` in the minute of ``at``: those of the newest minute
        seen come from the fast path; a new minute becomes the fast path's."""
        if self._start <= at < self._end:
            counters = self._current.get(queue)
            if counters is not None:
                return counters
        minute = minute_of(at)
        counters = self._slot(minute, queue)
        if minute >= self._start:  # a late report of an earlier minute takes the slow path
            if minute > self._start:
                self._start, self._end, self._current = minute, minute + 60, {}
            self._current[queue] = counters
        return counters

    def started(self, record: JobRecord) -> StartMark | None:
        """An attempt of ``record`` starts now; only a job's first attempt is counted, with
        its wait from when it could first run (as :meth:`Metrics.job_started` measures).
        Return the mark to hand to :meth:`ended` (None for a later attempt)."""
        if record.attempts - record.recoveries > 1:
            return None
        now = time.time()
        counters = self._counters(now, record.queue)
        counters[_STARTED] += 1
        # max(0, now - max(created_at, run_at)), without the calls: this runs for every job
        ready = record.run_at if record.run_at > record.created_at else record.created_at
        wait = now - ready if now > ready else 0.0
        counters[_WAIT] += wait
        return now, wait

    def ended(self, record: JobRecord, outcome: Outcome, start: StartMark | None = None) -> None:
        """An attempt of ``record`` ended with ``outcome``. A shutdown requeue is no end, nor
        a job handed back unrun (``unrun``); with the ``start`` mark of the attempt either
        takes back the start it counted (the job starts afresh elsewhere)."""
        slot = None if outcome.unrun else _SLOT_OF.get(outcome.kind)
        if slot is not None:
            self._counters(outcome.finished_at, record.queue)[slot] += 1
        elif start is not None:  # counted where it started (in a later flush if need be)
            origin = self._slot(minute_of(start[0]), record.queue)
            origin[_STARTED] -= 1
            origin[_WAIT] -= start[1]

    def died(self, queue: str, at: float, count: int = 1) -> None:
        """``count`` jobs of ``queue`` went to the dead set at ``at`` with no attempt ending:
        their workers were lost once too often, and this worker's lease recovery gave up on
        them. Rare and off the hot path: the fast path's minute is left alone, so a backend
        clock a little ahead of this one does not move it."""
        self._slot(minute_of(at), queue)[_DEAD] += count

    def pending(self) -> list[MinuteStats]:
        """What was counted and not yet stored, oldest minute first."""
        return [
            MinuteStats(minute, queue, succeeded=int(c[_SUCCEEDED]), failed=int(c[_FAILED]),
                        dead=int(c[_DEAD]), cancelled=int(c[_CANCELLED]),
                        started=int(c[_STARTED]), wait_total=c[_WAIT])
            for (minute, queue), c in sorted(self._counts.items())
        ]

    async def flush(self, broker: Broker) -> bool:
        """Add what was counted to ``broker``'s statistics. Return False if the store
        refused: the counts are kept for the next flush (a warning is logged once until a
        flush succeeds again)."""
        if not self._counts:
            return True
        rows = self.pending()
        taken, self._counts, self._current = self._counts, {}, {}
        try:
            await broker.add_stats(rows)
        except BaseException as exc:
            # Cancelled or refused: keep the counts. (A write cancelled after the store took
            # it may then be added twice: statistics are at least once, like jobs.)
            self._merge(taken)
            if not isinstance(exc, Exception):
                raise
            if not self._failing:
                log.warning("could not store job statistics (%s); keeping them to try again",
                            exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def _merge(self, counts: dict[tuple[int, str], list[float]]) -> None:
        """Put counts that were not stored back, adding to those counted since."""
        for key, counters in counts.items():
            mine = self._counts.get(key)
            if mine is None:
                self._counts[key] = counters
            else:
                for slot, value in enumerate(counters):
                    mine[slot] += value
