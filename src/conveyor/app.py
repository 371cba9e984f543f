"""``Conveyor``: the job registry, the settings and enqueueing (blocking and async)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, Unpack, cast, overload

from conveyor.backends import Broker, open_broker
from conveyor.backends.base import DEFAULT_MAX_QUEUES
from conveyor.backends.outage import outage_for
from conveyor.bounds import DEFAULT_MAX_DELAY, check_max_delay, name_problem
from conveyor.context import JobContext
from conveyor.cron import GRACE, Timing
from conveyor.errors import ConfigurationError, DuplicateJob, InvalidArguments, UnknownJob
from conveyor.functions import JobDecorator, JobFunction, JobOptions, split_call
from conveyor.handle import JobHandle
from conveyor.ids import new_id
from conveyor.job import Backoff, BackoffPolicy, JobRecord, JobState
from conveyor.known import KnownJob
from conveyor.limits import JobLimits, usage_rows
from conveyor.options import DEFAULT, EnqueueKwargs, EnqueueOptions, OnConflict, options_of
from conveyor.portal import Portal
from conveyor.priority import DEFAULT_AGING, check_aging, check_priority
from conveyor.queues import QueueSettings, check_limit, check_queue_name, existing_queue_name
from conveyor.schedules import Overlap, Schedule, check_name
from conveyor.stats import MinuteStats, minute_of
from conveyor.unique import derived_key
from conveyor.uploads import StagingArea
from conveyor.urls import redact_url

if TYPE_CHECKING:
    from conveyor.metrics import Metrics

log = logging.getLogger("conveyor")
#: an enum member read from its class costs more than a name (the busiest enqueue uses it)
_QUEUED = JobState.QUEUED

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
DEFAULT_URL = "sqlite:///conveyor.db"
#: seconds the jobs workers published are cached by an app (a name not among them is looked
#: up again at once)
KNOWN_CACHE = 5.0
#: names listed at most in the message of an unknown job
KNOWN_SHOWN = 20
Middleware = Callable[[JobContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def _backoff(value: BackoffPolicy | float | None) -> BackoffPolicy:
    if value is None:
        return Backoff()
    if isinstance(value, int | float):
        return Backoff(base=float(value))
    if callable(value):
        return value
    raise ConfigurationError("backoff is a number of seconds, a Backoff or a callable(attempt)")


class Conveyor:
    """A job system: register jobs with :meth:`job`, enqueue them, run workers on them.

    ``url`` picks the backend: the ``CONVEYOR_URL`` environment variable when it is set (as
    for the CLI, so one setting moves producers and workers together), else ``url``, else
    ``sqlite:///conveyor.db`` (a ``memory://`` URL, a test's own store, is never
    overridden); ``namespace`` keeps several apps apart in
    one store; ``lease`` is how long a claimed job stays owned without a heartbeat;
    ``aging`` is how many seconds of waiting raise a job's effective priority by one;
    ``max_queued`` is this app's own caps (queue -> jobs waiting at most), checked beside
    the caps kept in the store (:meth:`set_max_queued`): the smaller wins; ``max_queues``
    caps the distinct queues of the namespace (an enqueue that would make one more raises
    :class:`~conveyor.errors.TooManyQueues`; ``None``: no cap); ``max_delay``
    is the horizon of ``delay`` and ``at``, in seconds (default one year, at most a hundred
    years): an enqueue further ahead raises :class:`~conveyor.errors.InvalidArguments`, and
    a ``Retry(delay)`` or ``RateLimited(retry_after)`` further ahead waits that long.
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str = "conveyor",
        lease: float = 30.0,
        *,
        retention: float = 7 * 86400,
        max_recoveries: int = 3,
        max_queued: Mapping[str, int] | None = None,
        staging_dir: str | None = None,
        store_timeout: float = 5.0,
        max_queues: int | None = DEFAULT_MAX_QUEUES,
        aging: float = DEFAULT_AGING,
        eager: bool = False,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        if lease <= 0:
            raise ConfigurationError("lease must be a positive number of seconds")
        if max_recoveries < 1:
            raise ConfigurationError("max_recoveries must be at least 1")
        if store_timeout <= 0:
            raise ConfigurationError("store_timeout must be a positive number of seconds")
        try:
            #: seconds ahead a job may be scheduled at most (``delay``, ``at``, retries)
            self.max_delay = check_max_delay(max_delay)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        #: seconds a call keeps retrying a store that cannot be used (Redis unreachable)
        #: before it raises :class:`~conveyor.errors.StoreUnavailable`; workers wait longer
        self.store_timeout = float(store_timeout)
        if max_queues is not None and (isinstance(max_queues, bool) or
                                       not isinstance(max_queues, int) or max_queues < 1):
            raise ConfigurationError("max_queues must be a whole number of at least 1 (or None)")
        #: distinct queues the namespace may know at most (see Broker.max_queues)
        self.max_queues = max_queues
        if url is not None and url.lower().startswith("memory:"):  # a test's own store
            self.url = url
        else:
            self.url = os.environ.get("CONVEYOR_URL") or url or DEFAULT_URL
        self.namespace = namespace
        self.lease = float(lease)
        self.retention = float(retention)
        self.max_recoveries = max_recoveries
        #: seconds of waiting that raise a job's effective priority by one (see
        #: :mod:`conveyor.priority`)
        self.aging = check_aging(aging)
        #: this app's own caps (queue -> jobs waiting at most), checked beside the store's
        #: (see :meth:`set_max_queued`): the smaller wins
        self.max_queued: dict[str, int] = {}
        for queue, limit in (max_queued or {}).items():
            if limit is None:
                raise ConfigurationError(f"max_queued of queue {queue!r} must be a whole "
                                         "number of at least 1")
            self.max_queued[check_queue_name(queue)] = cast(int, check_limit(limit))
        #: where uploaded files wait for their jobs (``CONVEYOR_STAGING``, else ./conveyor-staging)
        self.staging = StagingArea(
            staging_dir or os.environ.get("CONVEYOR_STAGING") or "conveyor-staging"
        )
        self.registry: dict[str, JobFunction[..., Any]] = {}
        #: the schedules this app's workers fire, by name (see :meth:`schedule`)
        self.schedules: dict[str, Schedule] = {}
        self.middlewares: list[Middleware] = []
        self._broker: Broker | None = None
        self._portal = Portal()
        #: the jobs workers published (by name) and when they were read (time.monotonic())
        self._known: dict[str, KnownJob] = {}
        self._known_at: float | None = None
        self._known_from: Broker | None = None
        #: counts enqueues when set (``create_app`` sets one; see :mod:`conveyor.metrics`)
        self.metrics: Metrics | None = None
        #: run each job when it is enqueued, in the caller (see :mod:`conveyor.eager`)
        self.eager = eager
        self._eager_runner: object = None

    def __repr__(self) -> str:
        return (f"<Conveyor {redact_url(self.url)} namespace={self.namespace} "
                f"jobs={len(self.registry)}>")

    # -- configuration --------------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """The backend for :attr:`url`, made on first use."""
        if self._broker is None:
            self._broker = open_broker(self.url, self.namespace, self.retention)
            self._broker.retry_for = self.store_timeout
            self._broker.max_queues = self.max_queues
            self._broker.aging = self.aging
        return self._broker

    def use_url(self, url: str) -> None:
        """Point the app at another store (the CLI's ``--url``); only before first use."""
        if self._broker is not None and url != self.url:
            raise ConfigurationError("the app is already connected; set the URL before use")
        self.url = url

    # -- queue control (kept in the store, see conveyor.queues) ---------------------------------
    async def set_max_queued_async(self, queue: str, limit: int | None) -> None:
        """Cap ``queue`` in the store: every producer's enqueue that would leave more than
        ``limit`` jobs waiting in it is refused with :class:`~conveyor.errors.QueueFull`
        (``None`` removes the cap). The app's own caps (``max_queued=``) hold beside it:
        the smaller wins. Capping a queue the store does not know yet (no job, no
        settings) past ``max_queues`` raises :class:`~conveyor.errors.TooManyQueues`."""
        limit = check_limit(limit)
        await self.broker.open()
        await self.broker.set_max_queued(await self._controllable(queue), limit)

    def set_max_queued(self, queue: str, limit: int | None) -> None:
        """Blocking :meth:`set_max_queued_async`."""
        self.run_sync(self.set_max_queued_async(queue, limit))

    async def pause_async(self, queue: str) -> None:
        """Pause ``queue``: workers claim nothing more from it (running jobs finish);
        enqueues are still accepted. Pausing a queue the store does not know yet (no job,
        no settings) past ``max_queues`` raises :class:`~conveyor.errors.TooManyQueues`."""
        await self.broker.open()
        await self.broker.set_paused(await self._controllable(queue), True)

    def pause(self, queue: str) -> None:
        """Blocking :meth:`pause_async`."""
        self.run_sync(self.pause_async(queue))

    async def resume_async(self, queue: str) -> None:
        """Resume a paused ``queue`` (its idle workers are woken)."""
        await self.broker.open()
        await self.broker.set_paused(await self._controllable(queue), False)

    def resume(self, queue: str) -> None:
        """Blocking :meth:`resume_async`."""
        self.run_sync(self.resume_async(queue))

    async def _controllable(self, queue: object) -> str:
        """``queue`` for pausing, resuming or capping (the store open): a name a job may
        take (:func:`~conveyor.queues.check_queue_name`), or one the store knows already
        (it holds jobs or has settings: a queue stored before names were checked further
        can still be controlled); else raise :class:`ConfigurationError`, so that no
        setting makes a queue no job can enter."""
        name = existing_queue_name(queue)
        try:
            return check_queue_name(name)
        except ConfigurationError:
            if name in await self.broker.queue_settings() or name in await self.broker.counts():
                return name
            raise

    async def queue_settings_async(self) -> dict[str, QueueSettings]:
        """The queues paused or capped in the store, by name."""
        await self.broker.open()
        return await self.broker.queue_settings()

    def queue_settings(self) -> dict[str, QueueSettings]:
        """Blocking :meth:`queue_settings_async`."""
        return self.run_sync(self.queue_settings_async())

    # -- registration ---------------------------------------------------------------------------
    @overload
    def job(
        self, fn: Callable[Concatenate[JobContext, P], Awaitable[R]], /
    ) -> JobFunction[P, R]: ...

    @overload
    def job(self, fn: Callable[Concatenate[JobContext, P], R], /) -> JobFunction[P, R]: ...

    @overload
    def job(
        self, fn: Callable[P, Awaitable[R]], /
    ) -> JobFunction[P, R]: ...

    @overload
    def job(self, fn: Callable[P, R], /) -> JobFunction[P, R]: ...

    @overload
    def job(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        timeout: float | None = None,
        backoff: BackoffPolicy | float | None = None,
        executor: str | None = None,
        permanent_errors: Sequence[type[BaseException]] = (),
        staged: bool = False,
        unique: bool = False,
        cron: str | None = None,
        cron_tz: str = "UTC",
        priority: int = 0,
        concurrency: int | None = None,
        group_by: str | None = None,
        group_concurrency: int | None = None,
        rate_limit: str | None = None,
        burst: int | None = None,
        group_rate_limit: str | None = None,
    ) -> JobDecorator: ...

    def job(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        timeout: float | None = None,
        backoff: BackoffPolicy | float | None = None,
        executor: str | None = None,
        permanent_errors: Sequence[type[BaseException]] = (),
        staged: bool = False,
        unique: bool = False,
        cron: str | None = None,
        cron_tz: str = "UTC",
        priority: int = 0,
        concurrency: int | None = None,
        group_by: str | None = None,
        group_concurrency: int | None = None,
        rate_limit: str | None = None,
        burst: int | None = None,
        group_rate_limit: str | None = None,
    ) -> JobFunction[..., Any] | JobDecorator:
        """Register a function (plain or ``async def``) as a job; usable bare or with options.

        ``executor`` is ``"async"`` (default for coroutine functions), ``"thread"`` (default
        for plain functions) or ``"process"``. ``permanent_errors`` lists exception types
        that send the job to the dead set at once, like :class:`PermanentError`. ``staged``
        says the job owns the staged upload named by its id (see :mod:`conveyor.uploads`).
        ``unique`` derives each call's unique key from the job's name and its arguments (see
        :class:`~conveyor.options.EnqueueOptions`); ``cron`` schedules a job without
        arguments under its own name, in time zone ``cron_tz`` (see :meth:`schedule`).
        ``priority`` (-10 .. 10, higher runs sooner) is each call's default priority.
        ``concurrency`` caps the attempts running at once across every worker;
        ``group_by`` names the argument whose value is a call's group, with
        ``group_concurrency`` its cap per group; ``rate_limit`` / ``group_rate_limit``
        (``"100/m"``, ``"10/s"``, ``"5/h"``) and ``burst`` limit how often attempts start
        (see :mod:`conveyor.limits`).
        """
        if retries < 0:
            raise ConfigurationError("retries must be 0 or more")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if cron is None and cron_tz != "UTC":
            raise ConfigurationError("cron_tz is the time zone of cron: give cron too")
        try:
            check_priority(priority)
        except InvalidArguments as exc:
            raise ConfigurationError(str(exc)) from None
        check_queue_name(queue)

        def register(func: Callable[..., Any]) -> JobFunction[..., Any]:
            import inspect

            job_name = name or func.__name__
            problem = name_problem(job_name, "job")
            if problem is not None:
                raise ConfigurationError(problem)
            if job_name in self.registry:
                raise ConfigurationError(f"a job named {job_name!r} is registered already")
            chosen = executor or ("async" if inspect.iscoroutinefunction(func) else "thread")
            limits = JobLimits.build(
                job_name, concurrency=concurrency, group_by=group_by,
                group_concurrency=group_concurrency, rate_limit=rate_limit, burst=burst,
                group_rate_limit=group_rate_limit,
                parameters=inspect.signature(func).parameters)
            options = JobOptions(
                queue=queue,
                retries=retries,
                timeout=timeout,
                backoff=_backoff(backoff),
                executor=chosen,
                permanent_errors=tuple(permanent_errors),
                staged=staged,
                unique=unique,
                priority=priority,
                limits=limits,
            )
            job_fn: JobFunction[..., Any] = JobFunction(self, func, job_name, options)
            if cron is not None:
                self.schedule(job_name, job_fn, cron=cron, tz=cron_tz)
            self.registry[job_name] = job_fn
            return job_fn

        return register(fn) if fn is not None else cast(JobDecorator, register)

    def limited_jobs(self) -> dict[str, JobLimits]:
        """The limits of the registered jobs that have any, by job name."""
        return {name: fn.options.limits for name, fn in self.registry.items()
                if fn.options.limits is not None}

    async def limit_usage_async(self) -> list[dict[str, Any]]:
        """The running attempts and ready jobs of every job with limits, registered here
        or published by a worker (see :func:`conveyor.limits.usage_rows`)."""
        await self.broker.open()
        limits = {job.name: job.limits for job in await self.known_jobs_async()
                  if job.limits is not None}
        limits.update(self.limited_jobs())
        if not limits:
            return []
        return usage_rows(limits, await self.broker.limit_usage(sorted(limits)))

    def schedule(
        self,
        name: str,
        job: JobFunction[..., Any] | str,
        *,
        cron: str | None = None,
        every: float | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        tz: str = "UTC",
        overlap: Overlap = "allow",
        grace: float = GRACE,
    ) -> Schedule:
        """Enqueue ``job(*args, **kwargs)`` at each tick of ``cron`` (in time zone ``tz``)
        or ``every`` N seconds, once per tick whatever the number of workers.

        ``overlap="skip"`` fires no tick while the job of the previous tick waits or runs;
        ``grace`` is how old the latest missed tick may be and still fire (see
        :func:`conveyor.cron.due_ticks`). Every worker of the app fires the schedule."""
        check_name(name)
        if queue is not None:
            check_queue_name(queue)
        if name in self.schedules:
            raise ConfigurationError(f"a schedule named {name!r} is registered already")
        timing = Timing.parse(cron=cron, every=every, tz=tz)
        call_kwargs = dict(kwargs or {})
        job_fn = job if isinstance(job, JobFunction) else self.registry.get(job)
        if isinstance(job, JobFunction) and job.app is not self:
            raise ConfigurationError(f"schedule {name!r}: job {job.name!r} is another app's")
        try:
            if job_fn is not None:
                job_fn.check(tuple(args), call_kwargs)
            else:
                JobFunction.check_json(str(job), tuple(args), call_kwargs)
        except InvalidArguments as exc:
            raise ConfigurationError(f"schedule {name!r}: {exc}") from None
        job_name = job.name if isinstance(job, JobFunction) else job
        sched = Schedule(name, job_name, timing, tuple(args), call_kwargs, queue, overlap,
                         grace)
        self.schedules[name] = sched
        return sched

    def middleware(self, fn: Middleware) -> Middleware:
        """Register ``async def mw(job, call_next)``; the first registered is the outermost.

        ``job`` is the :class:`JobContext` of the attempt; ``await call_next()`` runs the rest
        of the chain and returns the job's result.
        """
        self.middlewares.append(fn)
        return fn

    def get_job(self, name: str) -> JobFunction[..., Any]:
        """The registered job called ``name``; raise :class:`UnknownJob` otherwise."""
        try:
            return self.registry[name]
        except KeyError:
            raise UnknownJob(f"no job named {name!r} is registered") from None

    # -- building records -----------------------------------------------------------------------
    def build(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: EnqueueOptions = DEFAULT, *, now: float | None = None) -> JobRecord:
        """Check a call against its job and make the record to store (nothing stored yet);
        ``options`` are checked already (see :func:`~conveyor.options.options_of`).

        A name that is not registered here is accepted as is (the CLI enqueues by name
        for workers elsewhere); its arguments are then only checked to be JSON here, and
        against the jobs workers published when it is stored (see :meth:`known_jobs`).
        """
        job_fn = self.registry.get(name)
        if job_fn is not None:
            payload = job_fn.check(args, kwargs)
        else:
            problem = name_problem(name, "job")
            if problem is not None:
                raise InvalidArguments(problem)
            payload = JobFunction.check_json(name, args, kwargs)
        created = time.time() if now is None else now
        if options is DEFAULT and job_fn is not None:  # the commonest call: a plain one
            own = job_fn.options
            if not own.unique and own.limits is None:
                return JobRecord(new_id(created), name, own.queue, _QUEUED,
                                 list(args), dict(kwargs), created, created,
                                 priority=own.priority, payload=payload)
        run_at = options.run_at(created, self.max_delay)
        unique_key = options.unique_key
        if unique_key is None and job_fn is not None and job_fn.options.unique:
            unique_key = derived_key(name, args, kwargs, job_fn.signature)
        if options.unique_for is not None and unique_key is None:
            raise InvalidArguments("unique_for needs a unique_key (or a job registered "
                                   "with unique=True)")
        return JobRecord(
            id=options.job_id or new_id(created),
            name=name,
            queue=options.queue or (job_fn.options.queue if job_fn else "default"),
            state=JobState.SCHEDULED if run_at > created else JobState.QUEUED,
            args=list(args),
            kwargs=dict(kwargs),
            created_at=created,
            run_at=run_at,
            unique_key=unique_key,
            unique_until=None if options.unique_for is None else created + options.unique_for,
            priority=(options.priority if options.priority is not None
                      else job_fn.options.priority if job_fn else 0),
            group=(job_fn.options.limits.group_of(args, kwargs, job_fn.signature)
                   if job_fn is not None and job_fn.options.limits is not None else None),
            payload=payload,
        )

    def _build_many(self, name: str, items: Sequence[Sequence[Any] | Mapping[str, Any]],
                    options: EnqueueOptions,
                    job_ids: Sequence[str] | None) -> list[JobRecord]:
        if options.job_id is not None:
            raise InvalidArguments("job_id names one job: give job_ids=[...] for a bulk "
                                   "enqueue, one per item")
        if options.on_conflict == "raise":
            raise InvalidArguments("on_conflict='raise' is for single enqueues: a bulk "
                                   "enqueue returns deduplicated handles per item")
        if job_ids is not None:
            if len(job_ids) != len(items):
                raise InvalidArguments(f"job_ids has {len(job_ids)} ids for {len(items)} items")
            if len(set(job_ids)) != len(job_ids):
                raise DuplicateJob(_first_repeated(job_ids),
                                   "job_ids names one id twice; nothing was stored")
        now = time.time()
        records = []
        for n, item in enumerate(items):
            args, kwargs = split_call(item)
            each = options.with_id(job_ids[n]) if job_ids is not None else options
            records.append(self.build(name, args, kwargs, each.checked(), now=now))
        return records

    # -- enqueueing -----------------------------------------------------------------------------
    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this app from blocking code."""
        return self._portal.call(coro)

    def _store(self, records: list[JobRecord],
               on_conflict: OnConflict = "return") -> list[JobHandle[Any]]:
        broker = self.broker
        if self.eager:
            from conveyor.eager import store_and_run

            return self._stored(broker, records, store_and_run(self, records), on_conflict)
        try:
            held = broker.enqueue_blocking(records, self.max_queued)
        except NotImplementedError:
            return self.run_sync(self._store_async(records, on_conflict))
        return self._stored(broker, records, held, on_conflict)

    async def _store_async(self, records: list[JobRecord],
                           on_conflict: OnConflict = "return") -> list[JobHandle[Any]]:
        broker = self.broker
        if self.eager:
            from conveyor.eager import store_and_run_async

            held = await store_and_run_async(self, records)
        else:
            held = await broker.enqueue(records, self.max_queued)
        return self._stored(broker, records, held, on_conflict)

    def _stored(self, broker: Broker, records: list[JobRecord], held: list[str | None],
                on_conflict: OnConflict) -> list[JobHandle[Any]]:
        """The handles of an enqueue that ``broker`` answered ``held`` (per record: None
        when it was stored, else the id of the job holding its unique key); only stored
        records count as enqueued. The end of an outage under way is logged. (One call on
        the path of every enqueue, whose every Python call costs most when it follows an
        fsync: see the README's benchmarks.)"""
        outage = broker.outage
        if outage is None or outage.reason is not None:  # (reason: None while available)
            outage_for(broker).recovered(  # (an enqueue whose keys were all held wrote nothing)
                wrote=broker.writes_prove_writable and None in held)
        if self.metrics is not None:
            self.metrics.jobs_enqueued(records, held)
        if len(records) == 1 and held[0] is None:  # the commonest answer
            return [JobHandle(self, records[0].id)]
        return _conflicts([JobHandle(self, r.id) if holder is None
                           else JobHandle(self, holder, deduplicated=True)
                           for r, holder in zip(records, held, strict=True)], on_conflict)

    def enqueue(self, name: str, *args: Any, delay: float | None = None,
                at: datetime | None = None, **kwargs: Any) -> JobHandle[Any]:
        """Store a call of job ``name``; return once it is durable."""
        if delay is None and at is None:  # a plain call: no options to make and check
            return self.enqueue_call(name, args, kwargs)
        return self.enqueue_call(name, args, kwargs, delay=delay, at=at)

    def enqueue_call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                     options: EnqueueOptions | None = None,
                     **given: Unpack[EnqueueKwargs]) -> JobHandle[Any]:
        """:meth:`enqueue` with explicit argument containers and per-call options (an
        :class:`~conveyor.options.EnqueueOptions`, or its fields as keywords): ``delay`` or
        ``at``, ``queue``, ``job_id`` (an id that exists raises :class:`DuplicateJob`),
        ``unique_key``/``unique_for``/``on_conflict`` and ``force``.

        A name not registered here must have been published by a worker (see
        :meth:`known_jobs`), which also checks the arguments; ``force=True`` skips that."""
        opts = DEFAULT if options is None and not given else options_of(options, given)
        record = self.build(name, args, kwargs, opts)
        if name not in self.registry:
            self.run_sync(self._check_known([record], opts))
        return self._store([record], opts.on_conflict)[0]

    async def enqueue_async(self, name: str, *args: Any, delay: float | None = None,
                            at: datetime | None = None, **kwargs: Any) -> JobHandle[Any]:
        """Awaitable :meth:`enqueue`."""
        if delay is None and at is None:  # a plain call: no options to make and check
            return await self.enqueue_call_async(name, args, kwargs)
        return await self.enqueue_call_async(name, args, kwargs, delay=delay, at=at)

    async def enqueue_call_async(self, name: str, args: Sequence[Any],
                                 kwargs: Mapping[str, Any],
                                 options: EnqueueOptions | None = None,
                                 **given: Unpack[EnqueueKwargs]) -> JobHandle[Any]:
        """Awaitable :meth:`enqueue_call`."""
        opts = DEFAULT if options is None and not given else options_of(options, given)
        record = self.build(name, args, kwargs, opts)
        if name not in self.registry:
            await self._check_known([record], opts)
        return (await self._store_async([record], opts.on_conflict))[0]

    def enqueue_many(self, name: str, items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                     job_ids: Sequence[str] | None = None,
                     **given: Unpack[EnqueueKwargs]) -> list[JobHandle[Any]]:
        """Enqueue one job per item in one durable write: all are stored or none, but for
        items whose unique key is held, which store nothing and come back as deduplicated
        handles of the holders (of two items with one key, the second is deduplicated to
        the first).

        An item is a tuple or list of positional arguments, or a dict of keyword arguments.
        The options (as for :meth:`enqueue_call`; not ``on_conflict="raise"``) apply to
        every item; ``job_ids`` names the jobs, one id per item.
        """
        if not items:
            return []
        opts = options_of(None, given)
        records = self._build_many(name, items, opts, job_ids)
        if name not in self.registry:
            self.run_sync(self._check_known(records, opts))
        return self._store(records)

    async def enqueue_many_async(self, name: str,
                                 items: Sequence[Sequence[Any] | Mapping[str, Any]], *,
                                 job_ids: Sequence[str] | None = None,
                                 **given: Unpack[EnqueueKwargs]) -> list[JobHandle[Any]]:
        """Awaitable :meth:`enqueue_many`."""
        if not items:
            return []
        opts = options_of(None, given)
        records = self._build_many(name, items, opts, job_ids)
        if name not in self.registry:
            await self._check_known(records, opts)
        return await self._store_async(records)

    # -- known jobs -----------------------------------------------------------------------------
    async def known_jobs_async(self) -> list[KnownJob]:
        """The jobs workers published to this store within :attr:`retention`, by name
        (read now; the enqueue checks reuse it for :data:`KNOWN_CACHE` seconds)."""
        await self.broker.open()
        oldest = time.time() - self.retention
        found = [job for job in await self.broker.known_jobs() if job.seen_at >= oldest]
        self._known = {job.name: job for job in found}
        self._known_at, self._known_from = time.monotonic(), self.broker
        return found

    def known_jobs(self) -> list[KnownJob]:
        """Blocking :meth:`known_jobs_async`."""
        return self.run_sync(self.known_jobs_async())

    def known_names(self) -> list[str]:
        """The names among the known jobs as last read (by :meth:`known_jobs_async` or an
        enqueue's check), sorted."""
        return sorted(self._known)

    async def known_job_async(self, name: str) -> KnownJob:
        """Job ``name`` as a worker published it: from the cache while it is fresh, else
        (or when the cache lacks it) read again; :class:`UnknownJob` when no worker did."""
        fresh = (self._known_at is not None and self._known_from is self._broker
                 and time.monotonic() - self._known_at < KNOWN_CACHE)  # of this store
        job = self._known.get(name) if fresh else None
        if job is None:
            await self.known_jobs_async()
            job = self._known.get(name)
        if job is None:
            raise self.unknown_job(name)
        return job

    def unknown_job(self, name: str, remedy: str = "") -> UnknownJob:
        """The error for an enqueue of ``name``, which neither this app nor a worker knows;
        ``remedy`` replaces the advice for Python and the CLI (the HTTP API has its own)."""
        force = "force the enqueue (--force, force=True) to store it anyway"
        if not self._known:
            own = (f" (this app registers: {', '.join(sorted(self.registry))})"
                   if self.registry else "")
            return UnknownJob(
                f"no job named {name!r} is registered here{own}, and no worker has published "
                f"its jobs to this store yet: start a worker of the app that has the job, "
                + (remedy or "register the job in this app (or, on the command line, pass "
                           f"that app with --app) to check the call here, or {force}"))
        names = sorted({*self._known, *self.registry})
        shown = ", ".join(names[:KNOWN_SHOWN])
        if len(names) > KNOWN_SHOWN:
            shown += f", ... ({len(names)} in all)"
        return UnknownJob(f"no job named {name!r} is registered here or was published by a "
                          f"worker of this store in the last {_span(self.retention)} "
                          f"(known jobs: {shown}); {remedy or force}")

    async def _check_known(self, records: Sequence[JobRecord], options: EnqueueOptions) -> None:
        """Refuse calls of a name no worker published, or that do not fit its published
        parameters (unless ``options.force``: then only what is published is used, if
        anything); take the job's queue and priority when the call gives none, and its
        group when it has limits."""
        for record in records:
            try:
                job = await self.known_job_async(record.name)
            except UnknownJob:
                if options.force:
                    return
                raise
            if not options.force:
                job.check(record.args, record.kwargs)
            if options.queue is None:
                record.queue = job.queue
            if options.priority is None:
                record.priority = job.priority
            if job.limits is not None:  # the group, as the job's own app would find it
                record.group = job.limits.group_of(record.args, record.kwargs, job.signature,
                                                   defaults=False)

    # -- reading and admin ----------------------------------------------------------------------
    def handle(self, job_id: str) -> JobHandle[Any]:
        """A handle for a job id (it is not checked to exist)."""
        return JobHandle(self, job_id)

    async def cancel_async(self, job_id: str) -> JobRecord:
        """Cancel a waiting job at once, or ask the worker of a running job to stop it.

        A job cancelled at once loses its staged upload, if it has one here (the worker of a
        running job removes it when the job stops), and counts in the minute's statistics."""
        from conveyor.errors import JobNotFound

        await self.broker.open()
        before = await self.broker.get(job_id)
        record = await self.broker.cancel(job_id) if before is not None else None
        if before is None or record is None:
            raise JobNotFound(f"no job with id {job_id}")
        if record.is_final:
            self.staging.remove(job_id)
            if not before.is_final and record.state is JobState.CANCELLED:
                await self._count_cancel(record)
        return record

    async def _count_cancel(self, record: JobRecord) -> None:
        """Add a cancel no worker saw to the statistics (a failure here is only logged)."""
        try:
            await self.broker.add_stats([MinuteStats(minute_of(time.time()), record.queue,
                                                     cancelled=1)])
        except Exception as exc:
            log.warning("could not count the cancel of job %s: %s", record.id, exc)

    def cancel(self, job_id: str) -> JobRecord:
        """Blocking :meth:`cancel_async`."""
        return self.run_sync(self.cancel_async(job_id))

    async def set_priority_async(self, job_id: str, priority: int) -> JobRecord:
        """Give a waiting job another priority (-10 .. 10); its boost is taken from this
        app's :attr:`aging`. Raise :class:`~conveyor.errors.JobNotFound`, or
        :class:`~conveyor.errors.JobNotWaiting` when the job is running or final."""
        from conveyor.errors import JobNotFound, JobNotWaiting

        check_priority(priority)
        await self.broker.open()
        record = await self.broker.set_priority(job_id, priority)
        if record is None:
            raise JobNotFound(f"no job with id {job_id}")
        if record.state not in (JobState.QUEUED, JobState.SCHEDULED):
            raise JobNotWaiting(job_id, str(record.state))
        return record

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Blocking :meth:`set_priority_async`."""
        return self.run_sync(self.set_priority_async(job_id, priority))

    def testing(self, url: str | None = "memory://", *,
                eager: bool = True) -> AbstractContextManager[Conveyor]:
        """For tests: ``with app.testing():`` runs each job at enqueue (see
        :mod:`conveyor.eager`) on a fresh private ``memory://`` store, and puts the app's
        store and mode back afterwards. ``url`` names another store (None: keep the app's);
        ``eager=False`` only swaps the store."""
        from conveyor.eager import testing

        return testing(self, url, eager=eager)

    def close(self) -> None:
        """Release the backend and the helper thread. The app can be used again afterwards."""
        if self._eager_runner is not None:
            from conveyor.eager import close_runner

            close_runner(self)
        if self._broker is not None:
            self.run_sync(self._broker.close())
            self._broker = None
        self._portal.close()


def _conflicts(handles: list[JobHandle[Any]],
               on_conflict: OnConflict) -> list[JobHandle[Any]]:
    """``handles``, or with ``on_conflict="raise"`` :class:`DuplicateJob` naming the job
    that holds the key of a deduplicated one."""
    if on_conflict == "raise":
        for handle in handles:
            if handle.deduplicated:
                raise DuplicateJob(handle.id, f"job {handle.id} holds the same unique key "
                                   "and is not final; nothing was stored")
    return handles


def _first_repeated(ids: Sequence[str]) -> str:
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            return job_id
        seen.add(job_id)
    return ids[0]


def _span(seconds: float) -> str:
    """A duration in words: ``7 days``, ``2 hours``, ``90 seconds``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            value = seconds / size
            value = round(value, 1)
            return f"{value:g} {unit}{'' if value == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"
