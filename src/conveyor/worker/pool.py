"""One worker process: claim a batch, run each job in its own task, settle in batches.

The claim loop fetches up to the free slots in one call. Finished attempts are collected
and written back in groups by a settler task, so a busy worker makes a few writes per batch
rather than one per job. Heartbeats, lease recovery and progress live in
:mod:`conveyor.worker.maintenance`; sizing lives in :mod:`conveyor.worker.autoscale`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import logs
from conveyor.backends.outage import opened, outage_for, waits_out
from conveyor.context import JobContext
from conveyor.errors import ConfigurationError, redact_url
from conveyor.ids import new_id
from conveyor.job import JobRecord, Outcome, OutcomeKind, WorkerInfo
from conveyor.limits import JobLimits, throttle_poll
from conveyor.priority import QueueWeights
from conveyor.stats import StartMark, StatsRecorder
from conveyor.stored import unusable_arguments
from conveyor.worker import outcomes, shutdown
from conveyor.worker.autoscale import Autoscaler
from conveyor.worker.executors import Executors
from conveyor.worker.maintenance import Maintenance, frozen_patience

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.functions import JobFunction
    from conveyor.metrics import Metrics

log = logging.getLogger("conveyor.worker")

FINAL_KINDS = (OutcomeKind.SUCCEEDED, OutcomeKind.DEAD, OutcomeKind.CANCELLED)
#: times one outcome the store refuses (not for a passing reason) is tried before its job is
#: left to its lease
SETTLE_TRIES = 3
#: claimed jobs are buffered ahead of free slots only as many as the slots are expected to
#: take within this many seconds, judged from the recent rate of attempts ending
PREFETCH_HORIZON = 0.5
#: a job buffered longer than this goes back to its queue (uncharged), so that idle
#: workers elsewhere can take it
BUFFER_MAX_AGE = 2.0
#: seconds a stopping worker gives the store, in all, once its jobs have ended (or been
#: cancelled at the end of the grace period): for the chores' last calls, the last outcomes,
#: progress reports and statistics, and signing off. A store that is down or locked cannot
#: hold a stop longer: what is not written by then is logged, and the leases bring those
#: jobs back. A stop so lasts at most ``grace`` + this + about a second (+
#: :data:`CANCELLED_WAIT` when jobs outlive the grace period), whatever state the store is in.
SHUTDOWN_STORE_WAIT = 3.0
#: the same, when the store is down as the stop comes (a stop acts within about a second)
STORE_DOWN_WAIT = 0.5
#: seconds the jobs cancelled at the end of the grace period get to end (an async job ends
#: at its next await; a thread or process job is let go at once)
CANCELLED_WAIT = 1.0
#: a claim in flight when a stop comes gets until the grace period ends, and at least this
#: many seconds, before it is cancelled (its jobs then come back with their leases)
CLAIM_STOP_WAIT = 0.5


class _Running:
    """A job in flight: its function (None if not registered here), its task, its context,
    why it is being stopped, if it is, and its start as the statistics counted it."""

    __slots__ = ("ctx", "job_fn", "start", "stop_reason", "task")

    def __init__(self, ctx: JobContext, job_fn: JobFunction[..., Any] | None) -> None:
        self.ctx = ctx
        self.job_fn = job_fn
        self.task: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None
        self.start: StartMark | None = None


class Worker:
    """Runs the jobs of ``app`` from ``queues`` with a concurrency between min and max."""

    def __init__(
        self,
        app: Conveyor,
        queues: Sequence[str] | None = None,
        *,
        min_workers: int = 1,
        max_workers: int = 10,
        grace: float = 30.0,
        cooldown: float = 10.0,
        max_processes: int | None = None,
        prefetch: int | None = None,
        metrics: Metrics | None = None,
        weights: QueueWeights | None = None,
    ) -> None:
        self.app = app
        self.broker = app.broker
        #: how claims are shared among the queues (None: oldest rank first over all of them)
        self.weights = weights
        if weights is not None:
            if queues is not None and list(queues) != weights.queues:
                raise ConfigurationError("weights name other queues than queues")
            queues = weights.queues
        self.queues = list(queues) if queues else sorted(
            {fn.options.queue for fn in app.registry.values()} or {"default"}
        )
        #: the limits of the app's jobs that have any, handed to every claim (None: none)
        self.limits: dict[str, JobLimits] | None = app.limited_jobs() or None
        #: how long an idle worker waits before it claims again when a claim held jobs back
        #: for a limit (a slot frees, a token comes: no one wakes it for those)
        self.throttle_poll = throttle_poll(self.limits)
        self.scaler = Autoscaler(min_workers, max_workers, cooldown=cooldown)
        self.grace = grace
        self.id = f"{socket.gethostname()}-{os.getpid()}-{new_id()[-6:].lower()}"
        self.executors = Executors(max_workers, max_processes or os.cpu_count() or 1,
                                   self._child_found, frozen_patience(app.lease),
                                   self._renewed)
        #: the app has process jobs: a claim marks started only those a child can take
        self._process_jobs = any(map(_in_a_child, app.registry.values()))
        #: process jobs claimed unstarted, started in a slot but waiting for a child (job id
        #: -> claim): marked started once one takes them (see _child_found)
        self._awaiting_child: dict[str, int] = {}
        #: the heartbeat the buffered jobs wait for before they start (see _fill_slots)
        self._refilling: asyncio.Task[None] | None = None
        self.info = WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.scaler.size,
            min_concurrency=min_workers,
            max_concurrency=max_workers,
            started_at=time.time(),
        )
        self.running: dict[str, _Running] = {}
        #: claimed jobs waiting for a slot: claiming the next batch while this one runs keeps
        #: the store's round trip off the critical path. None: as many as the slots will
        #: take within :data:`PREFETCH_HORIZON` (at most the current size).
        self.prefetch = prefetch
        self.buffered: collections.deque[JobRecord] = collections.deque()
        #: when each buffered job was claimed (``time.monotonic()``)
        self._buffered_at: dict[str, float] = {}
        #: claimed unstarted (the store was told so), and those of them started since the
        #: last heartbeat (it is told at the next one)
        self._unstarted: set[str] = set()
        self.begun: list[tuple[str, int]] = []  # (job id, claim)
        #: a suspect job (one whose worker was lost before) runs alone: its id while it runs
        self._alone: str | None = None
        #: attempts ended, and the rate per second they end at (for the prefetch bound)
        self._ends = 0
        self._rate = 0.0
        self._rate_at = time.monotonic()
        #: attempts stopped because the store gave their job to another owner
        self.lost = 0
        #: attempts that ended but whose outcome the store does not have yet: each keeps its
        #: slot until then, so a process that dies re-runs at most its slots' worth of jobs
        self._settling: dict[str, int] = {}
        #: running jobs that own a staged upload, removed once their end is recorded
        self._staged: set[str] = set()
        self._closing = False
        self.maintenance = Maintenance(self)
        self._outcomes: list[Outcome] = []
        #: the batch of outcomes being written now
        self._writing: list[Outcome] = []
        #: the jobs whose outcomes were sent to the store and are not known to be stored
        #: yet (on their way, or their reply lost, their wait unconfirmed): the store may
        #: have them, so a heartbeat that finds such a job gone does not make it lost
        self.sent: set[str] = set()
        #: ids (``id()``) of outcomes of the batch being written not to write again: their
        #: job was claimed anew by this worker, so the store has them already (or has moved
        #: the job on without them); cleared when the batch's write ends
        self._superseded: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None
        #: ``loop.time()`` when this worker saw the stop request: the grace period starts
        self._stopped_at: float | None = None
        self._middleware_chain = self._build_chain()
        #: counts starts and outcomes, if given (None: no cost at all)
        self.metrics = metrics
        if metrics is not None and self.limits:
            metrics.watch_limits(self.limits)
        #: per-minute statistics for the dashboard, always on; flushed by the maintenance
        self.stats = StatsRecorder()

    # -- control ------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping is not None and self._stopping.is_set()

    def request_stop(self) -> None:
        """Stop claiming and shut down gracefully; safe to call from any thread."""
        loop = self._loop
        if loop is None or self._stopping is None:
            return
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stopping.set()
            self.wake()
        else:
            loop.call_soon_threadsafe(self._stopping.set)
            loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        """Make the claim loop look again (a slot freed, the size grew, a stop came)."""
        if self._wake is not None:
            self._wake.set()

    def held(self) -> dict[str, int]:
        """The attempts this worker holds leases on, running, buffered, and ended with their
        outcome not stored yet: job id -> claim (the fencing token every write of the
        attempt carries)."""
        held = dict(self._settling)  # ended: their leases hold until the outcome is stored
        held.update((job_id, entry.ctx.record.claim)
                    for job_id, entry in self.running.items())
        held.update((record.id, record.claim) for record in self.buffered)
        return held

    def holding(self, job_id: str) -> object | None:
        """What this worker holds of the job now: its running or buffered record (one
        object per claim), the claim number of an ended attempt whose outcome is not
        stored yet, or None. A heartbeat's verdict on a job applies only while this is the
        same as when the heartbeat was sent: the job may have been put back (RateLimited,
        a hand-back) and claimed again by this worker meanwhile."""
        entry = self.running.get(job_id)
        if entry is not None:
            return entry.ctx.record
        record = self._buffered(job_id)
        if record is not None:
            return record
        return self._settling.get(job_id)

    def lose(self, job_id: str) -> None:
        """The store no longer counts this worker as the job's owner (its lease was
        recovered while this worker was cut off, or the job was deleted): stop the attempt at
        once without recording anything, since another attempt may be running elsewhere."""
        record = self._buffered(job_id)
        if record is not None:
            self._unbuffer(record)
            log.warning("job %s (attempt %d) is no longer this worker's; dropped unstarted",
                        job_id, record.attempts)
            self.lost += 1
            return
        entry = self.running.get(job_id)
        if entry is None and job_id in self._settling and job_id not in self.sent:
            # ended, its outcome not sent yet (one sent may be stored: a heartbeat that
            # crossed the settle at the store, or met it after a reply was lost, would call
            # a stored outcome lost)
            log.warning("job %s (claim %d) ended, but is no longer this worker's (its lease "
                        "was recovered meanwhile: it runs elsewhere); its outcome is dropped",
                        job_id, self._settling[job_id])
            self.lost += 1
            self._supersede(job_id)
            self._fill_slots()
            self.wake()
            return
        if entry is None or entry.task is None or entry.stop_reason is not None:
            return
        log.warning("job %s (attempt %d) is no longer this worker's (its lease was recovered "
                    "meanwhile); stopping it", job_id, entry.ctx.record.attempts)
        self.lost += 1
        entry.stop_reason = "lost"
        entry.ctx.mark_cancelled()
        entry.task.cancel()

    def _buffered(self, job_id: str) -> JobRecord | None:
        """The buffered (claimed, not started) job with this id, if any."""
        for record in self.buffered:
            if record.id == job_id:
                return record
        return None

    def _unbuffer(self, record: JobRecord) -> None:
        self.buffered.remove(record)
        self._buffered_at.pop(record.id, None)
        self._unstarted.discard(record.id)

    def _hand_back(self, records: Sequence[JobRecord]) -> list[Outcome]:
        """Take ``records`` out of the buffer; return the outcomes that put them back in
        their queue, uncharged."""
        for record in records:
            self._unbuffer(record)
        return [outcomes.requeued(record, self.id) for record in records]

    def release_stale(self) -> None:
        """Send jobs buffered longer than :data:`BUFFER_MAX_AGE` back to their queue."""
        if not self.buffered:
            return
        too_old = time.monotonic() - BUFFER_MAX_AGE
        # a suspect waits for the others to end before it runs alone: it stays
        stale = [r for r in self.buffered
                 if self._buffered_at.get(r.id, 0) < too_old and not r.suspect]
        for outcome in self._hand_back(stale):
            self._record(outcome)

    def cancel_job(self, job_id: str, reason: str) -> None:
        """Stop a running job: ``"cancel"`` ends it as cancelled, ``"shutdown"`` requeues it."""
        record = self._buffered(job_id)
        if record is not None:  # not started yet: settle it without running it
            self._unbuffer(record)
            done = outcomes.requeued if reason == "shutdown" else outcomes.cancelled
            outcome = done(record, self.id)
            if self.metrics is not None:
                self.metrics.job_ended(record, outcome, None)
            self.stats.ended(record, outcome)
            outcomes.log_end(record, outcome, self.app.registry.get(record.name), started=False)
            self._record(outcome)
            return
        entry = self.running.get(job_id)
        if entry is None or entry.task is None or entry.stop_reason is not None:
            return
        entry.stop_reason = reason
        entry.ctx.mark_cancelled()
        entry.task.cancel()

    # -- the main loop ------------------------------------------------------------------------
    async def run(self) -> None:
        """Work until :meth:`request_stop`, then finish or requeue what runs, and return."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._stopped_at = None
        if not await self._connect():
            return
        if self.metrics is not None:
            self.metrics.watch_worker(self.id, lambda: self.scaler.size,
                                      lambda: len(self.running))
        settler = asyncio.create_task(self._settle_loop(), name="conveyor-settler")
        self.maintenance.start()
        log.info("worker %s on %s (namespace %s), queues %s (concurrency %d..%d)", self.id,
                 redact_url(self.app.url), self.app.namespace, ",".join(self.queues),
                 self.scaler.minimum, self.scaler.maximum)
        claimer = asyncio.create_task(self._claim_loop(), name="conveyor-claimer")
        try:
            if await self._until_stop(claimer, max(self.grace, CLAIM_STOP_WAIT)):
                claimer.result()  # what the claim loop raised, if it did
            else:
                log.warning("a claim was still waiting for the store; its jobs, if any, will "
                            "come back with their leases")
        finally:
            await self._shut_down(settler)

    async def _shut_down(self, settler: asyncio.Task[None]) -> None:
        """Drain, stop the chores, write what is left and sign off; every wait on the store
        is bounded (see :data:`SHUTDOWN_STORE_WAIT`)."""
        assert self._settled is not None
        loop = asyncio.get_running_loop()
        stopped_at = self._stopped_at if self._stopped_at is not None else loop.time()
        await self._drain(stopped_at + self.grace)
        # a store known to be down gets a token wait: the leases bring back what is unwritten
        down = outage_for(self.broker).down
        end = loop.time() + (STORE_DOWN_WAIT if down else SHUTDOWN_STORE_WAIT)

        def left() -> float:
            return max(shutdown.STEP_MIN, end - loop.time())

        await self.maintenance.stop(left() / 2)
        self._closing = True  # the settler writes what is left, then returns
        self._settled.set()
        _, stuck = await asyncio.wait({settler}, timeout=left())
        if stuck:  # the store refuses them: their leases will bring the jobs back
            log.error("could not record the last outcomes before exiting; their leases will "
                      "bring those jobs back")
            if await shutdown.finish(stuck):
                log.error("the settler did not end when cancelled; abandoning it")
        elif await shutdown.bounded(self.stats.flush(self.broker), left(),
                                    "storing the last job statistics") is False:
            log.error("could not store the last job statistics before exiting")
        await shutdown.bounded(self.broker.unregister_worker(self.id), left(),
                               "signing off from the store")
        await shutdown.bounded(self.executors.close(), left(), "closing the executors")
        if self.metrics is not None:
            self.metrics.forget_worker(self.id)
        log.info("worker %s stopped", self.id)

    async def _until_stop(self, task: asyncio.Task[Any], linger: float = 0.0) -> bool:
        """Wait for ``task`` to end; once a stop is requested, give it ``linger`` more
        seconds, then cancel it (a bounded wait). True if it ended by itself."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if self.stopping and self._stopped_at is None:
                self._stopped_at = loop.time()
            if outage_for(self.broker).down:  # the task waits for a store that is down
                linger = min(linger, CLAIM_STOP_WAIT)
            if not task.done():
                await asyncio.wait({task}, timeout=linger)
        except BaseException:  # run() itself was cancelled
            await shutdown.finish({task})
            raise
        finally:
            stop.cancel()
        if task.done():
            return True
        if await shutdown.finish({task}):
            log.error("%s did not end when cancelled; abandoning it", task.get_name())
        return False

    async def _connect(self) -> bool:
        """Reach the store and register, retrying with backoff (a store that is down at
        start must not make workers crash-loop). False if a stop came first (a stop does
        not wait long for a store that does not answer). A registration under way when the
        stop comes gets :data:`CLAIM_STOP_WAIT` to end: a worker that registered signs off,
        rather than being left listed until its heartbeat expires."""
        pause = 0.5
        while not self.stopping:
            attempt = asyncio.create_task(self._register(), name="conveyor-connect")
            if not await self._until_stop(attempt, CLAIM_STOP_WAIT):
                return False
            try:
                attempt.result()
            except Exception as exc:
                # logged once per outage, not at each try (see conveyor.backends.outage)
                if not waits_out(self.broker, exc):
                    raise
                await self._sleep(pause)
                pause = min(pause * 2, 5.0)
            else:
                outage_for(self.broker).recovered(wrote=self.broker.writes_prove_writable)
                return True
        return False

    async def _register(self) -> None:
        """Open the store and publish this worker (its first heartbeat) and its jobs."""
        await opened(self.broker)
        await self.broker.check_settings()  # once per process: settings that lose jobs
        await self.maintenance.heartbeat_once()
        await self.maintenance.publish_jobs()

    async def _claim_loop(self) -> None:
        assert self._stopping is not None and self._wake is not None
        lease = self.app.lease
        while not self._stopping.is_set():
            # cleared before the state is read, never after: a wake-up (a stop, a freed slot)
            # that comes while this pass claims is kept for the wait below
            self._wake.clear()
            await self._isolate()
            self._fill_slots()
            size = self.scaler.size
            ahead = self._ahead(size)
            busy = self.busy
            want = size - busy + ahead - len(self.buffered)
            if (want <= 0 or busy + len(self.buffered) >= size + ahead
                    or self._isolating()):
                await self._wake.wait()
                continue
            free = max(0, size - busy - len(self.buffered))
            if self._process_jobs:  # a process job waiting for a child has not started
                free = min(free, max(0, self._children_free() - len(self.buffered)))
            try:
                jobs = await self.broker.claim(self.id, self.queues, want, lease, start=free,
                                               weights=self.weights, limits=self.limits)
            except Exception as exc:
                if not waits_out(self.broker, exc):  # else logged once per outage
                    log.exception("claim failed; retrying in 1s")
                await self._sleep(1.0)
                continue
            # (a claim that took nothing wrote nothing)
            outage_for(self.broker).recovered(
                wrote=self.broker.writes_prove_writable and bool(jobs))
            throttled = self.broker.take_throttled() if self.limits else None
            if throttled and self.metrics is not None:
                self.metrics.jobs_throttled(throttled)
            self._take(jobs, free)
            self._fill_slots()
            if jobs:
                await asyncio.sleep(0)
            elif self.buffered or self.busy >= size:
                await self._wake.wait()
            elif throttled and self.busy:  # its own jobs end soon, and wake it
                await self._wake_or(self.throttle_poll)
            elif throttled:  # idle: held jobs are no work; new ones or a freed slot are
                await self._idle(self.throttle_poll, lanes=False)
            else:
                await self._idle()

    def _ahead(self, size: int) -> int:
        """How many jobs to buffer beyond the free slots: the fixed ``prefetch``, or what
        the slots take within :data:`PREFETCH_HORIZON` at the recent rate of ends."""
        if self.prefetch is not None:
            return self.prefetch
        now = time.monotonic()
        if now - self._rate_at >= 0.1:
            self._rate = 0.5 * self._rate + 0.5 * self._ends / (now - self._rate_at)
            self._ends, self._rate_at = 0, now
        return min(size, int(self._rate * PREFETCH_HORIZON))

    def _take(self, jobs: list[JobRecord], free: int) -> None:
        """Buffer claimed jobs; a job this worker already holds (an older attempt the store
        has moved on from) replaces the old attempt, which is stopped."""
        now = time.monotonic()
        pending = ({o.job_id for o in (*self._outcomes, *self._writing)}
                   if jobs and (self._outcomes or self._writing) else ())
        for n, record in enumerate(jobs):
            if record.id in pending:
                self._supersede(record.id)
            if record.id in self.running:
                self.lose(record.id)
            if record.id in self._buffered_at:  # rare: most claims are new to this worker
                for old in [r for r in self.buffered if r.id == record.id]:
                    self._unbuffer(old)
            self.buffered.append(record)
            self._buffered_at[record.id] = now
            if n >= free or record.suspect:  # as the claim marked them
                self._unstarted.add(record.id)

    def _supersede(self, job_id: str) -> None:
        """This worker claimed ``job_id`` anew while an outcome of an earlier attempt of it
        waits to be written (again, after a reply lost to store trouble): the store has that
        outcome already, or has moved the job on without it, so it is never written again.
        The store would refuse it (it names an earlier claim); dropping it here keeps this
        worker's own books right: the slot it holds, the job's staged upload (which a final
        outcome would remove from under the new attempt), the counts of processed jobs."""
        # the batch being written is marked (its objects live until the write ends, when the
        # marks go); the queued ones are simply dropped
        self._superseded.update(id(o) for o in self._writing if o.job_id == job_id)
        self._outcomes = [o for o in self._outcomes if o.job_id != job_id]
        self._settling.pop(job_id, None)
        self.sent.discard(job_id)

    async def _isolate(self) -> None:
        """Before a suspect starts alone, hand the other buffered jobs back to the store
        and mark the suspect started there (waiting until the store has both): if it kills
        the process, it is charged and no other job is."""
        if not (self.buffered and self.buffered[0].suspect and not self.running
                and not self._settling):
            return
        suspect = self.buffered[0]
        others = list(self.buffered)[1:]
        if others:
            released = self._hand_back(others)
            try:
                await self.broker.settle(released)
            except Exception:
                log.warning("could not hand %s back before a suspect job; the settler "
                            "retries", logs.plural(len(released), "job"))
                for outcome in released:
                    self._record(outcome)
        if suspect.id in self._unstarted:
            self.begun.append((suspect.id, suspect.claim))
            try:
                await self.maintenance.heartbeat_once()
            except Exception:
                log.warning("could not mark suspect job %s started; trying again", suspect.id)
                await self._sleep(0.5)
                return
            self._unstarted.discard(suspect.id)

    @property
    def busy(self) -> int:
        """Slots taken: attempts running, and those ended whose outcome is not stored yet."""
        return len(self.running) + len(self._settling)

    def _isolating(self) -> bool:
        """True while a suspect job runs alone or waits for the others to end."""
        return self._alone is not None or bool(
            self.buffered and self.buffered[0].suspect and (self.running or self._settling))

    def _fill_slots(self, renewed: bool = False) -> None:
        """Start buffered jobs while slots are free. A suspect job (its worker was lost
        while it ran) starts only once nothing else runs or waits for its outcome to be
        stored, and nothing starts beside it: if
        it kills its process again, no other job pays for it. When the leases may have
        lapsed (see :meth:`Maintenance.lapsing`: this worker was stopped, or its loop held),
        nothing starts before a heartbeat has told which of the buffered jobs the store
        gave to others meanwhile (``renewed``: it has been sent)."""
        if self.buffered and not renewed and self.maintenance.lapsing():
            self._renew_then_fill()
            return
        while self.buffered and self.busy < self.scaler.size and not self.stopping:
            if self._alone is not None:
                return
            if self.buffered[0].suspect:
                # the others ended and their outcomes stored: if the suspect kills the
                # process, no finished job runs again
                if (self.running or self._settling or len(self.buffered) > 1
                        or self.buffered[0].id in self._unstarted):  # see _isolate
                    return
                self._alone = self.buffered[0].id
            record = self.buffered.popleft()
            self._buffered_at.pop(record.id, None)
            if record.id in self._unstarted:
                self._unstarted.discard(record.id)
                if _in_a_child(self.app.registry.get(record.name)):
                    self._awaiting_child[record.id] = record.claim
                else:
                    self.begun.append((record.id, record.claim))
            self._start(record)

    async def _renewed(self) -> None:
        """Before a process job that waited for a child is sent to one: a heartbeat first
        when the leases may have lapsed meanwhile (as :meth:`_fill_slots` does), so that a
        job the store gave to another worker is lost here (its attempt cancelled) before it
        runs a second time."""
        await self.maintenance.renew_if_lapsing()

    def _renew_then_fill(self) -> None:
        """:meth:`_fill_slots` once a heartbeat has renewed the leases (whatever it met: a
        heartbeat that failed leaves the decision to the store's fencing, as before)."""
        if self._refilling is not None:
            return

        async def renew_then_fill() -> None:
            try:
                await self.maintenance.renew_if_lapsing()
            finally:
                self._refilling = None
                self._fill_slots(renewed=True)

        assert self._loop is not None
        self._refilling = self._loop.create_task(renew_then_fill())

    def _children_free(self) -> int:
        """How many more process jobs would find a child at once: the pool's size less
        the process jobs running (in a child, or in their slot waiting for one)."""
        taken = sum(1 for entry in self.running.values() if _in_a_child(entry.job_fn))
        return self.executors.max_processes - taken

    def _child_found(self, job_id: str) -> None:
        """A process job that waited for a child has one: it starts now, and the next
        heartbeat tells the store (if it was claimed unstarted). A worker lost before then
        charges it nothing: it never ran (it comes back a suspect, uncharged)."""
        claim = self._awaiting_child.pop(job_id, None)
        if claim is not None:
            self.begun.append((job_id, claim))

    async def _idle(self, timeout: float = 1.0, lanes: bool = True) -> None:
        """Wait for new work, a stop request or a wake-up, whichever comes first (see
        :meth:`Broker.wait_for_work` for ``lanes``)."""
        assert self._wake is not None
        waiter = asyncio.create_task(self.broker.wait_for_work(self.queues, timeout, lanes))
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait((waiter, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, woken):
                task.cancel()
            await asyncio.gather(waiter, woken, return_exceptions=True)

    async def _wake_or(self, seconds: float) -> None:
        """Wait for a wake-up (a freed slot, a stop) or ``seconds``, whichever comes first."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):  # not wait_for: it may swallow a cancellation
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # -- running jobs -------------------------------------------------------------------------
    def _start(self, record: JobRecord) -> None:
        job_fn = self.app.registry.get(record.name)
        if job_fn is not None and job_fn.uses_staging:
            self._staged.add(record.id)
        entry = _Running(JobContext(record, self.maintenance.progress_sink(record)), job_fn)
        self.running[record.id] = entry
        if self.metrics is not None and job_fn is not None:  # (one it does not know: handed
            self.metrics.job_started(record)  # back unrun, see outcomes.unknown)
        entry.start = self.stats.started(record)
        assert self._loop is not None
        entry.task = self._loop.create_task(self._execute(record, entry))

    async def _execute(self, record: JobRecord, entry: _Running) -> None:
        metrics = self.metrics
        began = time.perf_counter() if metrics is not None else 0.0
        try:
            outcome = await self._attempt(record, entry)
        except Exception as exc:  # a fault in Conveyor itself: still settle the job
            log.exception("internal error while running job %s", record.id)
            outcome = outcomes.dead(record, self.id, f"internal error in the worker: {exc!r}")
        except BaseException:  # cancelled from outside: back to the queue, not charged
            outcome = outcomes.requeued(record, self.id)
            self.stats.ended(record, outcome, entry.start)
            self._record(outcome)
            raise
        finally:
            self._ends += 1
            if self._awaiting_child.get(record.id) == record.claim:  # (not a later claim's)
                del self._awaiting_child[record.id]  # ended without a child: never ran
            # its slot stays taken until the store has its outcome: then the settler frees
            # it and starts the next job; only a lost attempt, or the end of a suspect that
            # ran alone, may let a buffered job start now
            freed = entry.stop_reason == "lost"
            if not freed:
                self._settling[record.id] = record.claim
            if self.running.get(record.id) is entry:
                del self.running[record.id]
            if self._alone == record.id:
                self._alone = None
                freed = True
            if freed:
                self._fill_slots()
            if self._wake is not None:
                self._wake.set()
        if metrics is not None:
            metrics.job_ended(record, outcome, time.perf_counter() - began)
        self.stats.ended(record, outcome, entry.start)
        if entry.stop_reason != "lost":  # the store gave the job to another attempt
            outcomes.log_end(record, outcome, entry.job_fn)
            self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        """Queue an outcome for the settler."""
        self._outcomes.append(outcome)
        if self._settled is not None:
            self._settled.set()

    async def run_attempt(self, record: JobRecord, job_fn: JobFunction[..., Any]) -> Outcome:
        """Run one claimed attempt here and now, as the claim loop would (middleware,
        executor, timeout, outcome rules), and return its outcome unsettled: for eager mode.
        The job counts as running (heartbeat, cancellation) while it runs."""
        entry = _Running(JobContext(record, self.maintenance.progress_sink(record)), job_fn)
        self.running[record.id] = entry
        try:
            return await self._attempt(record, entry)
        finally:
            self.running.pop(record.id, None)

    async def _attempt(self, record: JobRecord, entry: _Running) -> Outcome:
        if type(record.args) is not list or type(record.kwargs) is not dict:  # (odd: by hand)
            return outcomes.dead(record, self.id, unusable_arguments(record.args, record.kwargs))
        job_fn = entry.job_fn
        if job_fn is None:
            return outcomes.unknown(record, self.id)
        try:
            result = await self._middleware_chain(entry.ctx, job_fn)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if entry.stop_reason is None or task is None:
                raise
            task.uncancel()
            if entry.stop_reason in ("shutdown", "lost"):
                return outcomes.requeued(record, self.id)
            return outcomes.cancelled(record, self.id)
        except Exception as exc:
            return self._failure(record, job_fn, exc)
        return outcomes.succeeded(record, self.id, result)

    def _failure(self, record: JobRecord, job_fn: Any, exc: Exception) -> Outcome:
        from conveyor.worker.process_pool import RemoteError, WorkerFroze

        if isinstance(exc, RemoteError):  # (a worker that froze: put back uncharged)
            froze = isinstance(exc, WorkerFroze)
            return outcomes.failed(
                record, self.id, job_fn, exc,
                error=f"{exc.type_name}: {exc.message}" if exc.message else exc.type_name,
                tb=exc.traceback, permanent=exc.permanent,
                retry_delay=0.0 if froze else exc.retry_delay if exc.retry else None,
                rate_limited=froze or exc.rate_limited,
            )
        return outcomes.failed(record, self.id, job_fn, exc)

    def _build_chain(self) -> Callable[[JobContext, Any], Awaitable[Any]]:
        """Compose the middlewares once: the first registered is the outermost layer."""
        middlewares = list(self.app.middlewares)
        executors = self.executors
        if not middlewares:

            def direct(ctx: JobContext, job_fn: Any) -> Awaitable[Any]:
                return executors.run(job_fn, ctx)

            return direct

        async def chain(ctx: JobContext, job_fn: Any) -> Any:
            async def innermost() -> Any:
                return await executors.run(job_fn, ctx)

            call: Callable[[], Awaitable[Any]] = innermost
            for middleware in reversed(middlewares):
                call = _bind(middleware, ctx, call)
            return await call()

        return chain

    # -- settling -----------------------------------------------------------------------------
    async def _settle_loop(self) -> None:
        """Write outcomes as they come; never cancelled (a batch it holds would be lost), it
        returns once the worker is closing and nothing is left to write."""
        assert self._settled is not None
        while True:
            await self._settled.wait()
            self._settled.clear()
            await self._flush()
            if self._closing and not self._outcomes:
                return

    async def _flush(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            self._writing = batch
            try:
                written = await self._write(batch)
            finally:
                self._writing = []
                if self._superseded:
                    self._superseded.difference_update(id(o) for o in batch)
            if self._settling:
                self._free_settled(batch)
            for outcome in written:
                if outcome.job_id in self._staged:
                    self._staged.discard(outcome.job_id)
                    if outcome.kind in FINAL_KINDS:
                        await self._remove_staged(outcome.job_id)
                if outcome.kind is OutcomeKind.SUCCEEDED:
                    self.info.processed += 1
                elif outcome.kind in (OutcomeKind.DEAD, OutcomeKind.RETRY) \
                        and not outcome.unrun:
                    self.info.failed += 1

    def _free_settled(self, batch: list[Outcome]) -> None:
        """Free the slots of the outcomes of ``batch`` the store now has, or that were given
        up (their leases bring the jobs back); those put back to try again keep theirs."""
        waiting = {o.job_id for o in self._outcomes}
        freed = {o.job_id for o in batch} - waiting
        if self.sent:
            self.sent.difference_update(freed)
        if not freed.isdisjoint(self._settling):
            for job_id in freed:
                self._settling.pop(job_id, None)
            self._fill_slots()
            self.wake()

    async def _write(self, batch: list[Outcome]) -> list[Outcome]:
        """Settle ``batch``; return the outcomes written.

        Through trouble that passes (the store restarting), the batch goes back to be tried
        again after a pause. A batch the store refuses otherwise is written one outcome at a
        time, so one bad outcome cannot hold back the others; an outcome refused alone
        :data:`SETTLE_TRIES` times is given up, and its job's lease brings it back as if this
        worker had died (at least once, bounded by ``max_recoveries``)."""
        # leases that may have lapsed (this worker was cut off, stopped or its loop held):
        # a heartbeat first, so that an outcome of an attempt recovered meanwhile is dropped
        # and logged as lost (the store would ignore it without a word)
        if await self.maintenance.renew_if_lapsing() and self._superseded:
            batch = [o for o in batch if id(o) not in self._superseded]
        try:
            # the last progress reports first, so a finished job shows where it ended
            await self.maintenance.flush_progress()
            await self._settle(batch)
        except Exception as exc:
            if self._passing(exc, batch):
                await asyncio.sleep(0.5)
                return []
            log.exception("could not record %s; writing them one at a time",
                          logs.plural(len(batch), "outcome"))
            return [done for outcome in batch for done in await self._write_alone(outcome)]
        return batch

    async def _settle(self, batch: list[Outcome]) -> None:
        """Send ``batch`` to the store, its jobs in :attr:`sent` from now until the store
        is known to have their outcomes (see :meth:`_free_settled`)."""
        self.sent.update(o.job_id for o in batch)
        await self.broker.settle(batch)

    def _passing(self, exc: Exception, batch: list[Outcome]) -> bool:
        """True (and ``batch`` back in line) when ``exc`` is trouble that may pass, or the
        store refusing this worker (which an operator may mend: the outcomes wait)."""
        # the store's trouble is logged once per outage (conveyor.backends.outage), not at
        # each retry
        if not waits_out(self.broker, exc):
            return False
        self._outcomes[:0] = ([o for o in batch if id(o) not in self._superseded]
                              if self._superseded else batch)
        return True

    async def _write_alone(self, outcome: Outcome) -> list[Outcome]:
        """Settle one outcome, trying it :data:`SETTLE_TRIES` times before giving it up."""
        for tries in range(1, SETTLE_TRIES + 1):
            if id(outcome) in self._superseded:
                return []
            try:
                await self._settle([outcome])
            except Exception as exc:
                if self._passing(exc, [outcome]):
                    await asyncio.sleep(0.5)
                    return []
                if tries == SETTLE_TRIES:
                    log.exception("gave up recording the outcome of job %s; its lease will "
                                  "bring it back", outcome.job_id)
                    return []
                log.exception("could not record the outcome of job %s (try %d of %d)",
                              outcome.job_id, tries, SETTLE_TRIES)
                await asyncio.sleep(0.5 * tries)
            else:
                return [outcome]
        return []

    async def _remove_staged(self, job_id: str) -> None:
        """Remove a finished job's staged file, unless the job has moved on without this
        worker (its lease ran out and another worker owns it now)."""
        record = await self.broker.get(job_id)
        if record is None or (record.is_final and record.worker_id == self.id):
            self.app.staging.remove(job_id)

    async def _drain(self, grace_end: float) -> None:
        """Give running jobs until ``grace_end`` (``loop.time()``), then requeue the rest
        without charging them, waiting :data:`CANCELLED_WAIT` at most for them to end."""
        for outcome in self._hand_back(list(self.buffered)):  # never started: straight back
            self._record(outcome)
        tasks = [e.task for e in self.running.values() if e.task is not None]
        if tasks:
            left = max(0.0, grace_end - asyncio.get_running_loop().time())
            log.info("waiting up to %s for %s", logs.duration(left),
                     logs.plural(len(tasks), "running job"))
            _, pending = await asyncio.wait(tasks, timeout=left)
            if pending:
                log.warning("grace period over: requeueing %s",
                            logs.plural(len(pending), "job"))
                for job_id in list(self.running):
                    self.cancel_job(job_id, "shutdown")
                await asyncio.wait(pending, timeout=CANCELLED_WAIT)


def _bind(
    middleware: Callable[[JobContext, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ctx: JobContext,
    call_next: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[Any]]:
    async def layer() -> Any:
        return await middleware(ctx, call_next)

    return layer


def _in_a_child(job_fn: JobFunction[..., Any] | None) -> bool:
    """Whether the job runs in a process child (where it may wait for one to be free)."""
    return job_fn is not None and job_fn.options.executor == "process"
