"""What a storage backend must do: the hot path (``Broker``) and the admin side (``Inspector``).

Every method is a coroutine. Backends see JSON text and plain records; the rules of retries,
timeouts and middleware live above them, in the app and the worker. One contract test suite
(``tests/contract``) runs against every backend.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conveyor.job import JobRecord, JobState, Outcome, WorkerInfo
from conveyor.known import KnownJob
from conveyor.limits import JobLimits, LimitUsage
from conveyor.priority import DEFAULT_AGING, QueueWeights
from conveyor.queues import QueueSettings
from conveyor.stats import MinuteStats
from conveyor.summary import PREVIEW_CHARS, JobSummary, summarize

if TYPE_CHECKING:
    from conveyor.backends.outage import Outage
    from conveyor.schedules import Schedule, ScheduleState

#: the default cap on the distinct queues of a namespace (see :attr:`Broker.max_queues`)
DEFAULT_MAX_QUEUES = 1000

#: what a lease recovery did to a job: requeued and charged a recovery (its worker died while
#: it ran); requeued uncharged (held unstarted, or its worker still lived); sent to the dead
#: set (lost too many times); ended cancelled (its cancellation had been asked for)
FATES = ("charged", "uncharged", "dead", "cancelled")


@dataclass(slots=True)
class Recovery:
    """What one :meth:`Broker.recover_expired` call did. Only the jobs this call moved are
    counted: when two workers recover the same job at once, one of them counts it."""

    #: jobs put back in their queue
    requeued: int = 0
    #: jobs that went to the dead set, by queue (queues without any are left out)
    dead: dict[str, int] = field(default_factory=dict)
    #: when those jobs died, by the backend's clock (their ``finished_at``, to within the
    #: milliseconds one call takes); 0.0 when none did
    died_at: float = 0.0
    #: each job this call moved: (job id, queue, fate), the fate one of :data:`FATES`
    jobs: list[tuple[str, str, str]] = field(default_factory=list, compare=False)

    @property
    def dead_total(self) -> int:
        """How many jobs went to the dead set, over all queues."""
        return sum(self.dead.values())


@dataclass(slots=True)
class Beat:
    """What one :meth:`Broker.heartbeat` found about the attempts the worker holds."""

    #: held attempts whose cancellation was requested
    cancel: set[str] = field(default_factory=set)
    #: held attempts the worker no longer owns (recovered meanwhile, settled, deleted): they
    #: run elsewhere or not at all, so the worker must stop them at once
    lost: set[str] = field(default_factory=set)


class Broker(abc.ABC):
    """Storage for jobs. One instance may be used from several event loops and threads."""

    url: str
    #: seconds a finished job (succeeded, dead, cancelled) is kept
    retention: float

    # -- life cycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create what is missing (tables, scripts). Safe to call twice."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    #: seconds an operation keeps retrying through connection trouble (backends that retry)
    retry_for: float = 30.0
    #: distinct queues the namespace may know at most (those holding jobs, and those with
    #: stored settings); an enqueue that would make one more raises
    #: :class:`~conveyor.errors.TooManyQueues`. ``None``: no cap
    max_queues: int | None = DEFAULT_MAX_QUEUES
    #: seconds of waiting that raise a job's effective priority by one (the app's
    #: ``aging``): a job's boost is ``priority * aging``, fixed at enqueue or when its
    #: priority is changed
    aging: float = DEFAULT_AGING
    #: ``time.monotonic()`` when an operation last met trouble that may pass (the store
    #: unreachable, locked or full); 0.0 if never. Lease recovery waits one lease after it,
    #: so that workers cut off by the same outage renew their leases first.
    last_trouble: float = 0.0
    #: a claim that took jobs or an enqueue that stored one proves that the store takes
    #: writes (as on SQLite): it ends an outage during which reads work; a broker that
    #: checks writes itself then (Redis: see its write probe) leaves it False
    writes_prove_writable: bool = False
    #: this store's :class:`~conveyor.backends.outage.Outage` in this process (set on first
    #: use by :func:`~conveyor.backends.outage.outage_for`)
    outage: Outage | None = None

    async def check_settings(self) -> None:
        """Warn (once per process) about store settings that can lose jobs; workers and
        ``conveyor serve`` call it. Nothing to check by default."""
        return

    def only_existing(self, reads: bool = False) -> None:
        """Serve a tool that reads (or changes what exists) from now on, before the store
        opens: create no store; ``reads``: the tool only reads, so a read-only copy of one
        (a Redis replica) is taken as it is. Nothing to change by default."""
        return

    def is_transient(self, error: BaseException) -> bool:
        """True when ``error`` may pass by itself (a store restarting, a dropped connection),
        so waiting and trying again makes sense; False for errors of configuration."""
        return False

    # -- producers --------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """Store ``jobs`` durably; return, per job, ``None`` when it was stored, or the id
        of the job holding its unique key when it was not (deduplicated).

        A job with a ``unique_key`` is deduplicated while a stored job holding that key is
        not final and its hold has not run out. A job stored with a key holds it until it is
        final, or for ``unique_until - created_at`` seconds by the backend's clock when
        ``unique_until`` is set, whichever is shorter. Of two jobs of one call with the same
        key, the first is stored and the second deduplicated to it. Finishing, cancelling
        or deleting the holder frees a key; a lease recovery keeps it.

        The jobs not deduplicated are stored all or none: an id that exists raises
        :class:`~conveyor.errors.DuplicateJob`; ``limits`` maps a queue name to its
        ``max_queued``, and when storing them would leave more waiting jobs in such a queue, or
        more than the queue's cap in the store (see :meth:`set_max_queued`; the smaller
        holds), :class:`~conveyor.errors.QueueFull` is raised. Either way nothing is stored.

        It opens the store first when it is not open (see :meth:`open`): callers on the hot
        path of every enqueue need not.
        """

    def enqueue_blocking(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """The blocking twin of :meth:`enqueue`, for backends that can do it without a loop.

        Raise ``NotImplementedError`` to have the caller go through an event loop instead.
        """
        raise NotImplementedError

    @abc.abstractmethod
    async def remember_idempotency(
        self, key: str, digest: str, job_id: str, ttl: float
    ) -> tuple[str, str] | None:
        """Record, atomically, that idempotency key ``key`` answers job ``job_id`` for a
        request whose identity is ``digest``, for ``ttl`` seconds; return ``None``. When a
        record of ``key`` is current, change nothing and return its ``(digest, job_id)``."""

    @abc.abstractmethod
    async def forget_idempotency(self, key: str, job_id: str) -> None:
        """Drop the record of idempotency key ``key`` if it names ``job_id`` (its request
        stored no job)."""

    @abc.abstractmethod
    async def replace_idempotency(self, key: str, job_id: str, new_id: str) -> None:
        """Make the record of idempotency key ``key`` name ``new_id`` instead, if it still
        names ``job_id`` (its request was answered by another job), in one step."""

    # -- workers: the hot path --------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease: float,
        start: int | None = None, weights: QueueWeights | None = None,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[JobRecord]:
        """Move up to ``limit`` ready jobs of ``queues`` to running, owned by ``worker_id``.

        Ready means queued, or scheduled with ``run_at`` passed. Within a queue, lowest rank
        first (``run_at - priority * aging``, see :mod:`conveyor.priority`), then oldest
        ``run_at``, then id. Across queues: without ``weights`` the same order over all of
        them; with ``weights`` the queues are shared by :meth:`QueueWeights.pick` (decided in
        the claim, and ``weights.credits`` updated after it). A paused queue (see
        :meth:`set_paused`) gives nothing.

        ``limits`` (job name -> its limits, see :mod:`conveyor.limits`) hold back laned jobs
        (``group`` not None) whose name or group is at its cap (live leases) or whose
        bucket has no token; a claim spends a token per job it takes, and takes a grouped
        name's jobs round robin over its groups (in the order of their names, from the
        group after the one it served last). Each (name, reason) it held jobs back for is
        noted (:meth:`note_throttled`).
        Each claimed job's ``attempts`` grows by one, its ``claim`` (the attempt's fencing
        token) is the next number of the namespace's claim counter, which only grows, and
        its lease runs ``lease`` seconds. The
        first ``start`` jobs (all when ``None``) start at once; the others are held unstarted
        until a heartbeat names them started, and a recovery of an unstarted job charges it
        nothing.
        """

    def note_throttled(self, name: str, reason: str) -> None:
        """Count a claim that held ready jobs of ``name`` back for ``reason``."""
        counter = self.__dict__.setdefault("_throttled", collections.Counter())
        counter[(name, reason)] += 1

    def take_throttled(self) -> collections.Counter[tuple[str, str]]:
        """The throttles noted since the last call, and forget them."""
        taken: collections.Counter[tuple[str, str]] = self.__dict__.pop(
            "_throttled", collections.Counter())
        return taken

    @abc.abstractmethod
    async def limit_usage(self, names: Sequence[str], max_groups: int = 20) -> list[LimitUsage]:
        """For each job name of ``names`` (names with limits): its running attempts (live
        leases) and ready jobs, in all (``group`` None) and for up to ``max_groups`` of its
        groups (those with the most running, then the most ready)."""

    @abc.abstractmethod
    async def set_priority(self, job_id: str, priority: int) -> JobRecord | None:
        """Give a waiting (queued or scheduled) job ``priority``, its boost taken from
        :attr:`aging`, and return it; a job in another state is returned unchanged, and
        ``None`` means there is no such job."""

    @abc.abstractmethod
    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Record the ends of attempts. An outcome for a job the worker no longer owns
        (its lease was taken over), or of an earlier claim than the job's latest (when it
        names its claim), is ignored. Final states expire after ``retention``."""

    @abc.abstractmethod
    async def heartbeat(
        self, worker: WorkerInfo, held: Mapping[str, int], lease: float,
        started: Sequence[tuple[str, int]] = (),
    ) -> Beat:
        """Record ``worker`` as alive and extend the leases of the attempts it holds.

        ``held`` maps a job id to the claim (:attr:`JobRecord.claim`) of the attempt the
        worker runs (or holds unstarted); only a lease whose job is still running under this
        worker and claim is extended, the others come back in :attr:`Beat.lost`.
        ``started`` names ``(job id, claim)`` of held jobs that started since the last
        heartbeat (a mark of an earlier claim leaves a later one unstarted).
        """

    @abc.abstractmethod
    async def set_progress(
        self, worker_id: str, updates: Sequence[tuple[str, int, float, str | None]]
    ) -> None:
        """Store ``(job_id, claim, progress, message)`` for attempts running under
        ``worker_id`` (a stale attempt must not write over the new one's)."""

    @abc.abstractmethod
    async def ready_count(self, queues: Sequence[str], limit: int) -> int:
        """How many jobs of ``queues`` are ready to run now, counting at most ``limit``
        (a paused queue has none)."""

    @abc.abstractmethod
    async def wait_for_work(self, queues: Sequence[str], timeout: float,
                            lanes: bool = True) -> None:
        """Return when work may have arrived for ``queues``, or after ``timeout`` seconds.

        With ``lanes=False`` queued laned jobs (``group`` not None) are no work ready now,
        neither ready at once nor as a past due time: a worker whose claim a limit held
        back waits so, without spinning on the held jobs. Unlaned ready jobs, scheduled
        jobs coming due (laned or not) and new enqueues still end the wait."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    # -- maintenance ------------------------------------------------------------------------
    @abc.abstractmethod
    async def recover_expired(self, max_recoveries: int) -> Recovery:
        """Requeue running jobs whose lease expired; a job lost ``max_recoveries`` times goes
        to the dead set instead, and one whose cancellation was requested ends cancelled.
        Also forget workers whose heartbeat lapsed.

        Only a job that had started and whose worker's registration lapsed too is charged a
        recovery: one held unstarted, or held by a worker still alive, goes back uncharged.

        Return what this call moved: how many jobs it requeued, and how many went to the dead
        set per queue and when (workers add those to the statistics: no attempt of theirs
        ended, so no worker counted them otherwise).
        """

    @abc.abstractmethod
    async def promote_scheduled(self) -> int:
        """Mark scheduled jobs whose time has come as queued. Return how many."""

    @abc.abstractmethod
    async def purge_expired(self) -> int:
        """Delete finished jobs past their retention. Return how many."""

    # -- inspection and admin ---------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job with this id, or ``None``."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first; ``cursor`` is the last id of the previous page."""

    async def list_summaries(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
        preview: int = PREVIEW_CHARS,
    ) -> list[JobSummary]:
        """The jobs :meth:`list_jobs` lists, with their long fields (arguments, result,
        error, traceback, progress message) cut after ``preview`` characters. A store cuts
        them as it reads, so a page never holds a whole big job; this default reads whole
        records and cuts them."""
        records = await self.list_jobs(state, queue, limit, cursor, name)
        return [summarize(r, preview) for r in records]

    @abc.abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}`` with every state present for every known queue."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a waiting job at once, or ask the worker of a running one to stop it.

        Final jobs are left as they are. Return the job after the change, or ``None``.
        """

    @abc.abstractmethod
    async def retry(self, job_id: str) -> JobRecord | None:
        """Put a dead or cancelled job back in its queue, with fresh retries."""

    @abc.abstractmethod
    async def retry_dead(self, queue: str | None = None) -> int:
        """Put every dead job (of ``queue``) back; return how many."""

    @abc.abstractmethod
    async def delete(self, job_id: str) -> bool:
        """Delete a job that is not running; return whether it existed and was deleted."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """The workers whose heartbeat is current."""

    # -- queue settings -----------------------------------------------------------------------
    @abc.abstractmethod
    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume ``queue``. Claims skip a paused queue (and :meth:`ready_count`
        and :meth:`wait_for_work` do not count its jobs); enqueues and the jobs running
        already go on. Resuming wakes the queue's idle workers. Pausing a queue the
        namespace does not know yet makes it known: past :attr:`max_queues` it raises
        :class:`~conveyor.errors.TooManyQueues` and stores nothing; resuming never does."""

    @abc.abstractmethod
    async def set_max_queued(self, queue: str, limit: int | None) -> None:
        """Store the cap of ``queue`` (``None`` removes it): :meth:`enqueue` refuses jobs
        that would leave more than ``limit`` waiting in it, whatever ``limits`` it is given
        (the smaller of the two caps holds). Capping a queue not known yet counts against
        :attr:`max_queues` as pausing does (see :meth:`set_paused`)."""

    @abc.abstractmethod
    async def queue_settings(self) -> dict[str, QueueSettings]:
        """The queues that are paused or capped, by name (a queue resumed and uncapped is
        left out). :meth:`counts` lists only queues that have had jobs: listings merge the
        two (see :func:`conveyor.queues.with_settings`)."""

    # -- known jobs ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish_jobs(self, worker_id: str, jobs: Sequence[KnownJob]) -> None:
        """Record ``jobs`` as run by ``worker_id``, each stamped with the store's clock as
        its ``seen_at`` (replacing what was stored under the same name), in one write.
        Entries not published again within :attr:`retention` are dropped."""

    @abc.abstractmethod
    async def known_jobs(self) -> list[KnownJob]:
        """Every stored known job, by name. A stored record that cannot be read is left
        out, never raised."""

    # -- statistics ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_stats(self, rows: Sequence[MinuteStats]) -> None:
        """Add ``rows`` to the stored per-minute statistics (summing with what is there)."""

    @abc.abstractmethod
    async def stats(self, since: float) -> list[MinuteStats]:
        """Stored statistics of the minutes starting at or after ``since``, one row per
        minute and queue (summed over workers), oldest first."""

    # -- schedules ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def schedule_clock(self) -> float:
        """Now, by the clock schedules tick on: the store's where it has one (Redis), else
        this machine's wall clock."""

    @abc.abstractmethod
    async def publish_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleState]:
        """Record the definitions of ``schedules`` (replacing those stored under the same
        names, keeping their state), stamped with the store's clock as ``seen_at``, in one
        write; return the stored state of those schedules, by name."""

    @abc.abstractmethod
    async def schedules(self, names: Sequence[str] | None = None) -> list[ScheduleState]:
        """Every stored schedule (or only those called ``names``), by name. A stored value
        that cannot be read is named in :attr:`ScheduleState.unreadable`, never raised."""

    @abc.abstractmethod
    async def advance_schedule(self, name: str, last: float, next_tick: float | None,
                               last_job: str | None = None) -> None:
        """Move schedule ``name``'s ``last_tick`` to ``last`` (with ``next_tick``) if that is
        later than the stored one, and its ``last_job`` to ``last_job`` if that job's tick
        is later than the stored one's; atomically. A schedule not stored is left alone."""

    @abc.abstractmethod
    async def rewind_schedule(self, name: str, expected: float, last: float,
                              next_tick: float | None) -> bool:
        """Set schedule ``name``'s ``last_tick`` back to ``last`` (with ``next_tick``) if it
        still is ``expected``, atomically; return whether it did (for a clock that stepped
        back)."""

    @abc.abstractmethod
    async def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState | None:
        """Pause or resume schedule ``name`` and move its ``last_tick`` up to the store's
        now (a later one stays; an unreadable one is replaced), atomically; return it after
        the change, or ``None``."""

    @abc.abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Forget schedule ``name`` and its state; return whether it was stored."""

    # -- dashboard sessions -------------------------------------------------------------------
    @abc.abstractmethod
    async def revoke_session(self, nonce: str, until: float) -> None:
        """Record that the session ``nonce`` was logged out; the record may be dropped
        after ``until`` (a time since the epoch: when the session expires anyway)."""

    @abc.abstractmethod
    async def session_revoked(self, nonce: str) -> bool:
        """True when the session ``nonce`` was logged out (see :meth:`revoke_session`)."""
