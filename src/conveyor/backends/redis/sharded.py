"""One namespace spread over the slots of a Redis Cluster, by queue (``?shard=queue``).

A plain namespace carries one hash tag, ``{ns}``: on a cluster it lives in one slot, so one
master serves all of it. Sharded, each queue is a store of its own under the tag
``{ns|QUEUE}`` (``%``, ``{`` and ``}`` of the name written ``%25``, ``%7B``, ``%7D``): its
jobs, indexes, wake-up list, leases, pause and cap, unique keys and limits, a complete
:class:`RedisBroker` of one queue whose every script call names keys of that tag only. The
*home* keys (tag ``{ns}``) hold what is namespace-wide: workers, known jobs, statistics,
schedules, dashboard sessions, idempotency records, and the set of the namespace's queues
(``{ns}:shards``, under :attr:`max_queues`). ``{ns}:layout`` holds ``sharded N``: a
broker opened without the option refuses the namespace, and this one refuses a namespace
that is not sharded.

What it costs (a plain namespace makes one call of each):

* A worker serving several queues makes a claim call per queue it visits (it stops once its
  free slots are filled; with weights a pipelined count of the queues' ready jobs comes
  first), a wake-up wait per queue (a BLPOP each, at once: BLPOP cannot span slots), and a
  heartbeat call per queue it serves, besides the home's.
* Across queues, claims go queue by queue: without weights from a queue that turns with
  each claim, so the rank order holds within a queue but not across queues; strict weights
  in their order; with weights by the weights' round robin over the counted ready jobs, as
  one claim would pick (a queue that gives fewer than counted leaves its slots to the
  others). Within a queue, ranks hold as before.
* An enqueue of jobs of several queues is stored queue by queue; when a queue refuses its
  jobs, those stored in the queues before are deleted again (one claimed in between runs).
* Unique keys, job limits (concurrency, rate) and the claims' round robin over groups hold
  per queue: two queues never deduplicate against each other, and a job name run in two
  queues has a cap (and a bucket) in each.
* An operation by job id (get, cancel, retry, delete, set_priority, and a settle or
  progress of a job this broker did not claim) first finds the job's queue: one pipelined
  HMGET of every queue's jobs hash. Listings, counts, recovery, promotion and purges visit
  every queue.
* Job ids are unique in the namespace as in a plain one, at two round trips more for an
  id the caller chose (``job_id``): before storing, it is looked for in every queue (the
  home's set, then the HMGET above); found in another queue it raises
  :class:`DuplicateJob`. An id made for its job
  (:func:`~conveyor.ids.new_id`) is not looked for. The look and the store are two steps:
  two enqueues racing with one chosen id into two queues may both be stored; an operation
  by that id then raises :class:`DuplicateJob` naming both queues rather than pick one.
* A queue is in the home's set (``{ns}:shards``) from its first write. A process
  registers a queue there before it writes to it, and trusts that registration for
  :data:`REGISTER_EVERY` seconds; each registration is noted with the home's clock
  (``{ns}:shards:by:QUEUE``, a sorted set) and holds the queue in the set for
  :data:`HOLD` seconds. A queue leaves the set when its store holds no job and no
  setting (after a delete, resume, uncap, purge) and no other process's registration
  holds it; a process that drops a queue from the set first waits for its own writes to
  it. A write that took longer than :data:`REGISTER_EVERY` registers its queue again
  after. So a queue with jobs stays in the set; an emptied queue other processes wrote to
  lately keeps its place under :attr:`max_queues` for up to :data:`HOLD` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from conveyor.backends.base import DEFAULT_MAX_QUEUES, Beat, Broker, Recovery
from conveyor.backends.redis import deploy, layout
from conveyor.backends.redis.broker import RedisBroker, _Coalescer, _Connection
from conveyor.backends.redis.keys import Keys
from conveyor.backends.redis.layout import LAYOUT
from conveyor.errors import (
    ConfigurationError,
    DuplicateJob,
    NewerStore,
    TooManyQueues,
    redact_url,
)
from conveyor.ids import id_time, is_valid_id, new_id
from conveyor.job import JobRecord, JobState, Outcome, WorkerInfo
from conveyor.known import KnownJob
from conveyor.limits import JobLimits, LimitUsage
from conveyor.priority import DEFAULT_AGING, QueueWeights
from conveyor.queues import QueueSettings
from conveyor.schedules import Schedule, ScheduleState
from conveyor.stats import MinuteStats
from conveyor.summary import PREVIEW_CHARS, JobSummary

#: seconds a process trusts that a queue it registered is in the set of queues (it
#: registers it again before its next write after that)
REGISTER_EVERY = 10.0
#: seconds a registration holds a queue in the set against other processes: a queue they
#: see empty stays while one holds it (twice :data:`REGISTER_EVERY`, so that a write that
#: trusted a registration lands before it lapses; a slower write registers again after)
HOLD = 2 * REGISTER_EVERY
#: jobs whose queue a broker remembers from its claims (the oldest are forgotten first)
MAX_WHERE = 100_000

log = logging.getLogger("conveyor.redis")
#: the registration of a queue this process did not register: (when, token)
_NEVER = (-math.inf, "")


def shard_tag(namespace: str, queue: str) -> str:
    """The hash tag of ``queue``'s shard (without braces)."""
    escaped = queue.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{namespace}|{escaped}"


class _Shard(RedisBroker):
    """One queue's store: a RedisBroker under the queue's tag that shares the home's
    connections (one client per event loop for every shard)."""

    def __init__(self, home: RedisBroker, queue: str) -> None:
        super().__init__(home.url, home.namespace, home.retention,
                         tag=shard_tag(home.namespace, queue))
        self.home = home
        self.queue = queue
        self.max_queues = None  # the home's set of queues holds the cap
        self._layout_checked = True  # the namespace's layout is the home's

    def _conn(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._connections.get(loop)
        if conn is None:
            base = self.home._conn()
            conn = object.__new__(_Connection)
            conn.client, conn.scripts, conn.link = base.client, base.scripts, base.link
            conn.enqueues = _Coalescer(self._store_segments)
            for old in [lp for lp in self._connections if lp.is_closed()]:
                del self._connections[old]
            self._connections[loop] = conn
        return conn

    def open_here(self) -> bool:
        """True: the sharded store opens the home before it uses a queue's store, whose
        connections are the home's (an open() here would only ping again)."""
        return True

    def _blocking_scripts(self) -> deploy.Scripts:
        return self.home._blocking_scripts()

    async def _queues(self) -> list[str]:
        return [self.queue]

    async def close(self) -> None:
        self._connections = {}  # the client is the home's


class ShardedRedisBroker(Broker):
    """A namespace sharded by queue: a home :class:`RedisBroker` and one per queue."""

    def __init__(self, url: str, namespace: str = "conveyor", retention: float = 7 * 86400):
        plain, mode = deploy.shard_option(url)
        if mode != "queue":
            raise ConfigurationError(f"{redact_url(url)}: a sharded broker needs ?shard=queue")
        #: the URL as given (with ?shard=queue), so that what reopens it shards too
        self.url = url
        self.namespace = namespace
        self.retention = retention
        self.home = RedisBroker(plain, namespace, retention)
        self.home.max_queues = None
        self.outage = self.home.outage
        self.max_queues: int | None = DEFAULT_MAX_QUEUES
        self._aging = DEFAULT_AGING
        self._shards: dict[str, _Shard] = {}
        #: queue -> (time.monotonic() before this process last registered it, the token of
        #: that registration)
        self._registered: dict[str, tuple[float, str]] = {}
        #: queue -> writes of this process under way to it (see :meth:`_writing`)
        self._writes: Counter[str] = Counter()
        self._lock = threading.Lock()
        #: job id -> queue, for the jobs this broker claimed (settles, heartbeats)
        self._where: dict[str, str] = {}
        #: queues whose shard this broker's heartbeats wrote the worker into
        self._beaten: set[str] = set()
        self._turn = 0
        self._swept_at = -REGISTER_EVERY
        self._checked = False
        self._throttled: Counter[tuple[str, str]] = Counter()

    # -- settings handed to every part --------------------------------------------------------
    @property
    def retry_for(self) -> float:
        return self.home.retry_for

    @retry_for.setter
    def retry_for(self, value: float) -> None:
        for part in [self.home, *self._shards.values()]:
            part.retry_for = value

    @property
    def aging(self) -> float:
        return self._aging

    @aging.setter
    def aging(self, value: float) -> None:
        self._aging = value
        for part in self._shards.values():
            part.aging = value

    @property
    def last_trouble(self) -> float:
        return max([self.home.last_trouble, *(s.last_trouble for s in self._shards.values())])

    @last_trouble.setter
    def last_trouble(self, value: float) -> None:
        self.home.last_trouble = value

    def only_existing(self, reads: bool = False) -> None:
        self.home.only_existing(reads)

    def is_transient(self, error: BaseException) -> bool:
        return self.home.is_transient(error)

    # -- parts --------------------------------------------------------------------------------
    def shard(self, queue: str, keep: bool = True) -> _Shard:
        """The store of ``queue`` (made on first use; it connects lazily). One made with
        ``keep`` False is not kept (a read of a queue that may not exist)."""
        part = self._shards.get(queue)
        if part is None:
            part = _Shard(self.home, queue)
            part.retry_for, part.aging = self.home.retry_for, self._aging
            if keep:
                self._shards[queue] = part
        return part

    @property
    def _set(self) -> str:
        """The home's set of the namespace's queues."""
        return f"{self.home.keys.prefix}:shards"

    async def _known(self) -> list[str]:
        """Every queue of the namespace: the home's set, and those this process registered
        lately. The shards kept for queues in neither (nor served) are dropped."""
        members: set[str] = set(await self.home._cmd("smembers", self._set))
        now = time.monotonic()
        with self._lock:
            for queue in [q for q, (at, _) in self._registered.items()
                          if now - at >= HOLD and not self._writes[q]]:
                del self._registered[queue]
            members |= set(self._registered)
        for queue in [q for q in self._shards if q not in members and q not in self._beaten]:
            del self._shards[queue]
        return sorted(members)

    def _registrations(self, queue: str) -> str:
        """The home's sorted set of the registrations of ``queue`` still holding."""
        return f"{self._set}:by:{queue}"

    async def _register(self, queues: Sequence[str]) -> None:
        """Make sure ``queues`` are in the set of queues, all or none: past
        :attr:`max_queues` raise :class:`TooManyQueues` (after a sweep of the queues that
        hold nothing, at most once per :data:`REGISTER_EVERY`)."""
        todo = self._unregistered(queues)
        if not todo:
            return
        sent, token = time.monotonic(), new_id()
        refused = await self._add(todo, token, self._most())
        if refused and self._may_sweep():
            await self._prune()
            sent = time.monotonic()
            refused = await self._add(todo, token, self._most())
        if refused:
            raise TooManyQueues(refused, self._most())
        self._registered.update(dict.fromkeys(todo, (sent, token)))

    def _register_blocking(self, queues: Sequence[str]) -> None:
        """:meth:`_register` without a loop; a refusal sweeps nothing."""
        todo = self._unregistered(queues)
        if not todo:
            return
        sent, token = time.monotonic(), new_id()
        refused, _ = self.home._blocking_call(
            "shard_register", [self._set, *map(self._registrations, todo)],
            [self._most(), token, int(HOLD * 1000), *todo])
        if refused:
            raise TooManyQueues(str(refused), self._most())
        self._registered.update(dict.fromkeys(todo, (sent, token)))

    def _unregistered(self, queues: Sequence[str]) -> list[str]:
        """Those of ``queues`` this process did not register lately."""
        now = time.monotonic()
        return [q for q in queues
                if now - self._registered.get(q, _NEVER)[0] >= REGISTER_EVERY]

    def _most(self) -> int:
        return -1 if self.max_queues is None else self.max_queues

    async def _add(self, queues: Sequence[str], token: str, most: int) -> str:
        """Add ``queues`` to the set, all or none, registered under ``token``; '' or the
        first queue refused."""
        return str(await self.home._script(
            "shard_register", [self._set, *map(self._registrations, queues)],
            [most, token, int(HOLD * 1000), *queues]))

    @contextlib.contextmanager
    def _writing(self, queues: Sequence[str]) -> Iterator[None]:
        """Count the writes under way to ``queues`` (a forget by this process waits for
        them: they may trust a registration it is about to drop)."""
        with self._lock:
            self._writes.update(queues)
        try:
            yield
        finally:
            with self._lock:
                self._writes.subtract(queues)
                self._writes = +self._writes

    async def _confirm(self, queues: Sequence[str]) -> None:
        """After a write: a write that took so long that the registration it trusted may
        have lapsed before it landed registers its queues again (past any cap: the jobs
        are stored)."""
        now = time.monotonic()
        late = [q for q in queues if now - self._registered.get(q, _NEVER)[0] >= REGISTER_EVERY]
        if late:
            sent, token = now, new_id()
            await self._add(late, token, -1)
            self._registered.update(dict.fromkeys(late, (sent, token)))

    def _may_sweep(self) -> bool:
        now = time.monotonic()
        if now - self._swept_at < REGISTER_EVERY:
            return False
        self._swept_at = now
        return True

    async def _prune(self) -> None:
        """Drop from the set the queues whose shard forgot its queue (no jobs, no settings)
        and that no other registration holds."""
        for queue in await self._known():
            await self._forget_if_empty(queue)

    async def _forget_if_empty(self, queue: str) -> None:
        """Drop ``queue`` from the set if its shard forgot it and no registration but this
        process's holds it (another process may be writing to it, trusting its own), then
        look again: a queue written to in between is added back."""
        part = self.shard(queue, keep=False)
        if await part._cmd("exists", part.keys.queues):
            return
        with self._lock:
            _, token = self._registered.pop(queue, _NEVER)
            if self._writes[queue]:
                return  # a write of this process may trust the registration
        gone = await self.home._script("shard_forget", [self._set, self._registrations(queue)],
                                       [queue, int(HOLD * 1000), token])
        if not gone:
            return
        if await part._cmd("exists", part.keys.queues):
            await self._add([queue], new_id(), -1)  # written to in between: back it goes
        else:
            self._shards.pop(queue, None)

    async def _locate(self, ids: Sequence[str], claimed: bool = True,
                      strict: bool = True) -> dict[str, str]:
        """job id -> its queue, for the ids that exist: from this broker's claims (unless
        ``claimed`` is False), else read from every queue's jobs hash in one pipeline. An id
        found in two queues raises :class:`DuplicateJob` (which one is meant is unknown),
        or without ``strict`` (a worker's calls, which must go on) is logged and the first
        queue taken."""
        found = {i: self._where[i] for i in ids if claimed and i in self._where}
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if not missing:
            return found
        queues = await self._known()
        if not queues:
            return found
        keys = [Keys(self.namespace, shard_tag(self.namespace, q)).jobs for q in queues]

        async def call(conn: _Connection) -> list[list[Any]]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, missing)
                return list(await pipe.execute())

        for queue, values in zip(queues, await self.home._retrying(call), strict=True):
            for job_id, value in zip(missing, values, strict=True):
                if value is None:
                    continue
                if job_id in found:
                    problem = DuplicateJob(job_id, f"job id {job_id} is in two queues "
                                                   f"({found[job_id]!r} and {queue!r}) of a "
                                                   "namespace sharded by queue: which is "
                                                   "meant is unknown")
                    if strict:
                        raise problem
                    log.warning("%s; taking %r", problem, found[job_id])
                    continue
                found[job_id] = queue
        return found

    async def _owner(self, job_id: str) -> _Shard | None:
        queue = (await self._locate([job_id])).get(job_id)
        return None if queue is None else self.shard(queue)

    def _remember(self, jobs: Sequence[JobRecord]) -> None:
        for job in jobs:
            self._where[job.id] = job.queue
        while len(self._where) > MAX_WHERE:
            del self._where[next(iter(self._where))]

    # -- life cycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self._checked:
            await self.home.open()  # a ping on a new loop, else nothing
            return
        k = self.home.keys
        raw = str(await self.home._script("shard_mark", [k.layout, k.jobs, k.queues],
                                          [LAYOUT, layout.plain_client(
                                              self.home.url, self.home.refuse_replica)]))
        if raw == "cluster":
            raise layout.cluster_node(self.home.url)
        if raw == "replica":
            raise layout.replica(self.home.url)
        where = f"Redis namespace {self.namespace!r} at {redact_url(self.home.url)}"
        kind, _, number = raw.partition(" ")
        if kind != "sharded" or not number.isdigit():
            raise ConfigurationError(f"{where} is not sharded: open it without ?shard=queue "
                                     "(a namespace is sharded from its first use on)")
        if int(number) > LAYOUT:
            raise NewerStore(where, int(number), LAYOUT)
        self.home._layout_checked = self._checked = True

    async def close(self) -> None:
        for part in self._shards.values():
            await part.close()
        await self.home.close()

    async def check_settings(self) -> None:
        await self.home.check_settings()

    # -- producers ----------------------------------------------------------------------------
    @staticmethod
    def _by_queue(jobs: Sequence[JobRecord]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for n, job in enumerate(jobs):
            groups[job.queue].append(n)
        return groups

    async def enqueue(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """One enqueue per queue. When a queue refuses its jobs, those stored in the queues
        before it are deleted again (one a worker claimed in between runs on). Ids a caller
        chose are looked for in every queue first."""
        await self.open()  # (first: a namespace this URL may not open is left untouched)
        groups = self._by_queue(jobs)
        queues = list(groups)
        await self._refuse_taken(jobs)
        result: list[str | None] = [None] * len(jobs)
        done: list[str] = []
        failed: Exception | None = None
        with self._writing(queues):
            await self._register(queues)
            for queue, members in groups.items():
                try:
                    stored = await self.shard(queue).enqueue([jobs[n] for n in members],
                                                             limits)
                except Exception as exc:
                    failed = exc
                    break
                for n, holder in zip(members, stored, strict=True):
                    result[n] = holder
                done.append(queue)
        if failed is not None:
            await self._take_back(jobs, groups, done, result)
            raise failed
        await self._confirm(queues)
        return result

    async def _refuse_taken(self, jobs: Sequence[JobRecord]) -> None:
        """Raise :class:`DuplicateJob` when an id a caller chose (not one made for its job,
        see :func:`_chosen`) is a job's of another queue, or named twice (a queue's own
        store refuses an id it holds)."""
        chosen = [job for job in jobs if _chosen(job)]
        if not chosen:
            return
        seen: dict[str, str] = {}
        for job in jobs:
            if seen.setdefault(job.id, job.queue) != job.queue:
                raise DuplicateJob(job.id, f"job id {job.id} is named twice; nothing was "
                                           "stored")
        where = await self._locate([job.id for job in chosen], claimed=False)
        for job in chosen:
            other = where.get(job.id, job.queue)
            if other != job.queue:
                raise DuplicateJob(job.id, f"a job with id {job.id} exists already (in "
                                           f"queue {other!r}); nothing was stored")

    async def _take_back(self, jobs: Sequence[JobRecord], groups: Mapping[str, list[int]],
                         queues: Sequence[str], result: Sequence[str | None]) -> None:
        """Delete the jobs of ``queues`` an enqueue stored (not those deduplicated); those
        that cannot be are logged (they stay, and run)."""
        for queue in queues:
            part = self.shard(queue)
            kept: list[str] = []
            trouble: Exception | None = None
            for n in groups[queue]:
                if result[n] is None:
                    try:
                        if not await part.delete(jobs[n].id):
                            kept.append(jobs[n].id)
                    except Exception as exc:
                        kept.append(jobs[n].id)
                        trouble = exc
            if kept:
                log.warning("an enqueue refused by a later queue could not take back %d "
                            "job(s) stored in queue %r: they stay and run: %s%s", len(kept),
                            queue, ", ".join(kept), f" ({trouble})" if trouble else "")
                continue
            try:
                await self._forget_if_empty(queue)
            except Exception as exc:  # the queue stays in the set: a later sweep drops it
                log.warning("queue %r, emptied again, stays registered: %s", queue, exc)

    def enqueue_blocking(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """Without a loop when the jobs are of one queue and their ids were made for them
        (else the caller goes through a loop: storing several queues may have to take jobs
        back, a chosen id is looked for in every queue)."""
        groups = self._by_queue(jobs)
        if not self._checked or len(groups) != 1 or any(_chosen(job) for job in jobs):
            raise NotImplementedError
        (queue,) = groups
        with self._writing([queue]):
            self._register_blocking([queue])
            return self.shard(queue).enqueue_blocking(jobs, limits)

    async def remember_idempotency(
        self, key: str, digest: str, job_id: str, ttl: float
    ) -> tuple[str, str] | None:
        return await self.home.remember_idempotency(key, digest, job_id, ttl)

    async def forget_idempotency(self, key: str, job_id: str) -> None:
        await self.home.forget_idempotency(key, job_id)

    async def replace_idempotency(self, key: str, job_id: str, new_id: str) -> None:
        await self.home.replace_idempotency(key, job_id, new_id)

    # -- workers ------------------------------------------------------------------------------
    async def _plan(self, queues: Sequence[str], limit: int,
                    weights: QueueWeights | None) -> tuple[list[tuple[str, int]],
                                                           dict[str, int] | None]:
        """The queues a claim visits, in order, each with the slots it first offers it; with
        weights, also the credits after the planned picks."""
        if weights is None:
            turn = self._turn % max(1, len(queues))
            self._turn += 1
            return [(q, limit) for q in [*queues[turn:], *queues[:turn]]], None
        if weights.strict:
            return [(q, limit) for q in weights.queues], None
        picks, credits = weights.pick(await self._ready_each(weights.queues, limit), limit)
        share = Counter(picks)
        planned = [(q, share[q]) for q in weights.queues if share[q]]
        return planned + [(q, limit) for q in weights.queues], credits  # then fill the rest

    async def _ready_each(self, queues: Sequence[str], limit: int) -> dict[str, int]:
        """Per queue, its ready jobs (up to ``limit``; none when paused): one pipeline."""
        now = await self.home._server_time()
        parts = [self.shard(q) for q in queues]

        async def call(conn: _Connection) -> list[Any]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for part in parts:
                    pipe.sismember(part.keys.paused, part.queue)
                    pipe.zcard(part.keys.state(part.queue, JobState.QUEUED))
                    pipe.zcount(part.keys.sched(part.queue), "-inf", now)
                return list(await pipe.execute())

        values = await self.home._retrying(call)
        return {part.queue: 0 if values[3 * n] else
                min(limit, int(values[3 * n + 1]) + int(values[3 * n + 2]))
                for n, part in enumerate(parts)}

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease: float,
        start: int | None = None, weights: QueueWeights | None = None,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[JobRecord]:
        """One claim call per queue visited, until ``limit`` jobs are claimed (with weights,
        a pipelined count of each queue's ready jobs first)."""
        if weights is not None:
            queues = weights.queues
        plan, credits = await self._plan(queues, limit, weights)
        got: list[JobRecord] = []
        emptied: set[str] = set()
        number: int | None = None
        for queue, offer in plan:
            want = min(offer, limit - len(got))
            if queue in emptied or want <= 0:
                continue
            part = self.shard(queue)
            if number is None:
                number = await self._claim_number()
            taken = await part.claim(
                worker_id, [queue], want, lease,
                None if start is None else max(0, start - len(got)), None, limits, number)
            self._throttled.update(part.take_throttled())
            if len(taken) < want:
                emptied.add(queue)
            got += taken
        if weights is not None and credits is not None:
            taken_by = Counter(job.queue for job in got)
            planned = Counter({q: n for q, n in plan[:len(plan) - len(queues)]})
            # the planned picks' credits, or (a queue gave fewer: a race, a limit) those of
            # the picks made, as if the store had picked them in one claim
            weights.credits = credits if taken_by == planned else \
                weights.pick(taken_by, len(got))[1]
        self._remember(got)
        return got

    async def _claim_number(self) -> int:
        """The next number of the namespace's claim counter (on its home): one per claim,
        given to the jobs it takes in every queue, so that a job deleted and enqueued again
        under its id in another queue (another shard) never gets a number it had."""
        home = self.home
        return int(await home._retrying(lambda c: c.client.incr(home.keys.claim_counter)))

    def take_throttled(self) -> Counter[tuple[str, str]]:
        taken, self._throttled = self._throttled, Counter()
        return taken

    async def limit_usage(self, names: Sequence[str], max_groups: int = 20) -> list[LimitUsage]:
        if not names:
            return []
        totals: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0])
        for queue in await self._known():
            for usage in await self.shard(queue).limit_usage(names, max_groups=10**6):
                row = totals[usage.name, usage.group]
                row[0] += usage.running
                row[1] += usage.ready
        result: list[LimitUsage] = []
        for name in names:
            run, ready = totals.get((name, None), [0, 0])
            result.append(LimitUsage(name, None, run, ready))
            rows = [LimitUsage(name, group, r, w) for (n, group), (r, w) in totals.items()
                    if n == name and group is not None and (r > 0 or w > 0)]
            rows.sort(key=lambda u: (-u.running, -u.ready, u.group or ""))
            result.extend(rows[:max_groups])
        return result

    async def set_priority(self, job_id: str, priority: int) -> JobRecord | None:
        part = await self._owner(job_id)
        return None if part is None else await part.set_priority(job_id, priority)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """One settle call per queue."""
        unknown = [o.job_id for o in outcomes if o.queue is None]
        located = await self._locate(unknown, strict=False) if unknown else {}
        groups: dict[str, list[Outcome]] = defaultdict(list)
        for o in outcomes:
            queue = o.queue or located.get(o.job_id)
            if queue is not None:
                groups[queue].append(o)
            else:
                log.warning("the outcome of job %s (claim %s) is dropped: the job is in "
                            "no queue of namespace %r", o.job_id, o.claim, self.namespace)
        for queue, some in groups.items():
            await self.shard(queue).settle(some)
        for o in outcomes:
            self._where.pop(o.job_id, None)

    async def heartbeat(
        self, worker: WorkerInfo, held: Mapping[str, int], lease: float,
        started: Sequence[tuple[str, int]] = (),
    ) -> Beat:
        """The home registers the worker; each queue it serves or holds jobs of registers it
        too (for that queue's lease recovery) and extends the leases of its jobs there."""
        await self.home.heartbeat(worker, {}, lease)
        where = await self._locate(list(held), strict=False)
        groups: dict[str, dict[str, int]] = defaultdict(dict)
        for job_id, claim in held.items():
            if job_id in where:
                groups[where[job_id]][job_id] = claim
        beat = Beat(lost={job_id for job_id in held if job_id not in where})
        for queue in worker.queues:  # registered where its next claims may take jobs
            groups.setdefault(queue, {})
        for queue, mine in groups.items():
            part = await self.shard(queue).heartbeat(worker, mine, lease,
                                                     [s for s in started if s[0] in mine])
            self._beaten.add(queue)
            beat.cancel |= part.cancel
            beat.lost |= part.lost
        return beat

    async def set_progress(
        self, worker_id: str, updates: Sequence[tuple[str, int, float, str | None]]
    ) -> None:
        where = await self._locate([u[0] for u in updates], strict=False)
        groups: dict[str, list[tuple[str, int, float, str | None]]] = defaultdict(list)
        for update in updates:
            if update[0] in where:
                groups[where[update[0]]].append(update)
        for queue, some in groups.items():
            await self.shard(queue).set_progress(worker_id, some)

    async def ready_count(self, queues: Sequence[str], limit: int) -> int:
        total = 0
        for queue in dict.fromkeys(queues):
            if total >= limit:
                break
            total += await self.shard(queue).ready_count([queue], limit - total)
        return min(total, limit)

    async def wait_for_work(self, queues: Sequence[str], timeout: float,
                            lanes: bool = True) -> None:
        """One wait per queue at once (BLPOP cannot span slots); the first to end ends it.
        The others are cancelled and left to end on their own."""
        names = list(dict.fromkeys(queues))
        if len(names) <= 1:
            if names:
                await self.shard(names[0]).wait_for_work(names, timeout, lanes)
            else:
                await asyncio.sleep(timeout)
            return
        tasks = [asyncio.ensure_future(self.shard(q).wait_for_work([q], timeout, lanes))
                 for q in names]
        for task in tasks:  # whatever ends a wait is retrieved, even if nobody awaits it
            task.add_done_callback(_quiet)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        # A wait cancelled as its BLPOP's reply arrives loses the wake-up it popped: that
        # costs latency only. Wake-ups are hints (a job is found by a claim, not by its
        # wake-up): this worker claims from every queue now, and another worker whose
        # wake-up went waits out its timeout before it claims.
        errors = [task.exception() for task in done if not task.cancelled()]
        for error in errors:
            if error is not None:
                raise error

    async def unregister_worker(self, worker_id: str) -> None:
        await self.home.unregister_worker(worker_id)
        for queue in sorted(self._beaten):
            await self.shard(queue).unregister_worker(worker_id)

    # -- maintenance --------------------------------------------------------------------------
    async def recover_expired(self, max_recoveries: int) -> Recovery:
        """Queue by queue; a pass that met trouble (any part's) stops: the leases that
        lapsed in an outage are the next pass's to judge, once heartbeats got through."""
        began = time.monotonic()
        total = await self.home.recover_expired(max_recoveries)  # lapsed workers
        for queue in await self._known():
            if self.last_trouble >= began:
                break
            found = await self.shard(queue).recover_expired(max_recoveries)
            total.requeued += found.requeued
            for name, count in found.dead.items():
                total.dead[name] = total.dead.get(name, 0) + count
            total.died_at = max(total.died_at, found.died_at)
            total.jobs.extend(found.jobs)
        return total

    async def promote_scheduled(self) -> int:
        return sum([await self.shard(q).promote_scheduled() for q in await self._known()])

    async def purge_expired(self) -> int:
        total = await self.home.purge_expired()
        for queue in await self._known():
            total += await self.shard(queue).purge_expired()
        await self._prune()
        return total

    # -- inspection and admin -----------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        part = await self._owner(job_id)
        return None if part is None else await part.get(job_id)

    async def _parts(self, queue: str | None) -> list[_Shard]:
        """The store of ``queue``, or of every queue."""
        return [self.shard(queue, keep=False)] if queue is not None else \
            [self.shard(q) for q in await self._known()]

    async def list_jobs(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
    ) -> list[JobRecord]:
        """A page from every queue, merged newest first (ids order jobs in every queue)."""
        found = [job for part in await self._parts(queue)
                 for job in await part.list_jobs(state, part.queue, limit, cursor, name)]
        return sorted(found, key=lambda job: job.id, reverse=True)[:limit]

    async def list_summaries(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
        preview: int = PREVIEW_CHARS,
    ) -> list[JobSummary]:
        found = [s for part in await self._parts(queue)
                 for s in await part.list_summaries(state, part.queue, limit, cursor, name,
                                                    preview)]
        return sorted(found, key=lambda s: s.record.id, reverse=True)[:limit]

    async def counts(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for part in await self._parts(None):
            found.update(await part.counts())
        return dict(sorted(found.items()))

    async def cancel(self, job_id: str) -> JobRecord | None:
        part = await self._owner(job_id)
        return None if part is None else await part.cancel(job_id)

    async def retry(self, job_id: str) -> JobRecord | None:
        part = await self._owner(job_id)
        return None if part is None else await part.retry(job_id)

    async def retry_dead(self, queue: str | None = None) -> int:
        return sum([await part.retry_dead(part.queue) for part in await self._parts(queue)])

    async def delete(self, job_id: str) -> bool:
        part = await self._owner(job_id)
        if part is None or not await part.delete(job_id):
            return False
        await self._forget_if_empty(part.queue)
        return True

    async def workers(self) -> list[WorkerInfo]:
        return await self.home.workers()

    # -- queue settings -----------------------------------------------------------------------
    async def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            with self._writing([queue]):
                await self._register([queue])
                await self.shard(queue).set_paused(queue, paused)
            await self._confirm([queue])
        else:
            await self.shard(queue).set_paused(queue, paused)
            await self._forget_if_empty(queue)

    async def set_max_queued(self, queue: str, limit: int | None) -> None:
        if limit is not None:
            with self._writing([queue]):
                await self._register([queue])
                await self.shard(queue).set_max_queued(queue, limit)
            await self._confirm([queue])
        else:
            await self.shard(queue).set_max_queued(queue, limit)
            await self._forget_if_empty(queue)

    async def queue_settings(self) -> dict[str, QueueSettings]:
        found: dict[str, QueueSettings] = {}
        for part in await self._parts(None):
            found.update(await part.queue_settings())
        return dict(sorted(found.items()))

    # -- what is namespace-wide: the home's -------------------------------------------------
    async def publish_jobs(self, worker_id: str, jobs: Sequence[KnownJob]) -> None:
        await self.home.publish_jobs(worker_id, jobs)

    async def known_jobs(self) -> list[KnownJob]:
        return await self.home.known_jobs()

    async def add_stats(self, rows: Sequence[MinuteStats]) -> None:
        await self.home.add_stats(rows)

    async def stats(self, since: float) -> list[MinuteStats]:
        return await self.home.stats(since)

    async def schedule_clock(self) -> float:
        return await self.home.schedule_clock()

    async def publish_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleState]:
        return await self.home.publish_schedules(schedules)

    async def schedules(self, names: Sequence[str] | None = None) -> list[ScheduleState]:
        return await self.home.schedules(names)

    async def advance_schedule(self, name: str, last: float, next_tick: float | None,
                               last_job: str | None = None) -> None:
        await self.home.advance_schedule(name, last, next_tick, last_job)

    async def rewind_schedule(self, name: str, expected: float, last: float,
                              next_tick: float | None) -> bool:
        return await self.home.rewind_schedule(name, expected, last, next_tick)

    async def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState | None:
        return await self.home.set_schedule_paused(name, paused)

    async def delete_schedule(self, name: str) -> bool:
        return await self.home.delete_schedule(name)

    async def revoke_session(self, nonce: str, until: float) -> None:
        await self.home.revoke_session(nonce, until)

    async def session_revoked(self, nonce: str) -> bool:
        return await self.home.session_revoked(nonce)

    async def ping(self) -> None:
        """One round trip to Redis: a health check."""
        await self.home.ping()


def _chosen(job: JobRecord) -> bool:
    """True unless the job's id is one :func:`~conveyor.ids.new_id` made at the job's
    creation (its time within a second after ``created_at``): a caller chose it."""
    if not is_valid_id(job.id):
        return True
    lag = round(id_time(job.id) * 1000) - int(job.created_at * 1000)
    return not 0 <= lag <= 1000


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve the end of a wait nobody awaits any more (so that nothing is logged)."""
    if not task.cancelled():
        task.exception()


__all__ = ["ShardedRedisBroker", "shard_tag"]
