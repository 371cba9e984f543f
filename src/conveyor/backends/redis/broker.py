"""The Redis backend: many machines share one Redis; every multi-step change is a Lua script.

The hot path is batched: one script call claims up to the free slots, one settles a batch,
one stores a bulk enqueue. Idle workers block on a wake-up list (BLPOP) instead of polling.
Leases and delays use Redis's clock (TIME inside the scripts), so workers with skewed
clocks do not steal each other's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from conveyor.backends.base import Beat, Broker, Recovery
from conveyor.backends.outage import Outage, outage
from conveyor.backends.redis import codec, deploy, layout, replicas
from conveyor.backends.redis.client import READ_ONLY, WAITING, AsyncScriptLink
from conveyor.backends.redis.keys import Keys, lane_field
from conveyor.backends.redis.layout import LAYOUT
from conveyor.backends.redis.scripts import register_all
from conveyor.errors import (
    ConfigurationError,
    DuplicateJob,
    QueueFull,
    ReentrantWrite,
    StoreDamaged,
    StoreUnavailable,
    TooManyQueues,
    redact_url,
)
from conveyor.ids import new_id
from conveyor.job import ALL_STATES, JobRecord, JobState, Outcome, OutcomeKind, WorkerInfo
from conveyor.known import KnownJob, read_known
from conveyor.limits import JobLimits, LimitUsage
from conveyor.priority import QueueWeights, boost
from conveyor.queues import QueueSettings, stored_limit
from conveyor.schedules import Schedule, ScheduleState, read_state
from conveyor.serialization import dumps, loads, storable
from conveyor.stats import STATS_KEEP, MinuteStats
from conveyor.summary import PREVIEW_CHARS, JobSummary

try:
    import redis.asyncio  # noqa: F401  (the error below when redis-py is missing)
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        BusyLoadingError,
        ClusterDownError,
        ClusterError,
        InvalidResponse,
        MasterDownError,
        MovedError,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        "the Redis backend needs the redis package: pip install 'conveyor[redis]'"
    ) from exc

T = TypeVar("T")
L = TypeVar("L")
log = logging.getLogger("conveyor.redis")

#: connection errors worth retrying: Redis restarting, a dropped connection
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: the reason given for connection trouble
UNREACHABLE = "Redis is unreachable"
#: the reason given when the last try's connection was closed unanswered (see
#: :func:`_closed_unanswered`)
CLOSED_UNANSWERED = ("Redis is unreachable: the server closes connections unanswered "
                     "(a port that wants TLS needs a rediss:// URL)")
#: refused credentials: redis-py makes them connection errors, but waiting will not help
REFUSED = (AuthenticationError, AuthenticationWrongNumberOfArgsError)
#: a server that does not speak Redis's protocol (another service on that port)
NOT_REDIS = (InvalidResponse,)
#: errors of a URL that is wrong, not of a store in trouble: raised as ConfigurationError
MISCONFIGURED = (*REFUSED, *NOT_REDIS)
#: replies of a Redis that answers but cannot do the work now, by their first word
BUSY_REPLIES = {
    "MISCONF": "Redis cannot persist to disk",
    "OOM": "Redis is out of memory",
    "READONLY": READ_ONLY,
    "LOADING": "Redis is loading its data",
    "BUSY": "Redis is busy running a script",
    "MASTERDOWN": "Redis has lost its primary",
    "NOREPLICAS": "Redis has too few replicas in sync to write",
    "TRYAGAIN": "Redis asks to try again",
}
#: the same replies by the class redis-py raises for them (it takes their first word off
#: their text; in a transaction it raises the refusal of the first command queued, so out
#: of memory, which refuses every command queued in a transaction, reads too, comes as such)
BUSY_ERRORS: dict[type[Exception], str] = {
    OutOfMemoryError: BUSY_REPLIES["OOM"],
    BusyLoadingError: BUSY_REPLIES["LOADING"],
    MasterDownError: BUSY_REPLIES["MASTERDOWN"],
}
#: the reasons of a Redis that still answers reads (outside transactions) but refuses writes:
#: a read's answer does not end such an outage, a write must (see ``_probe_writes``)
WRITES_REFUSED = {READ_ONLY, BUSY_REPLIES["OOM"], BUSY_REPLIES["MISCONF"]}
#: WAIT's refusal on a replica (``?replicas=N``): it may come before the write's own
#: READONLY, or instead of it when the script wrote nothing
WAIT_ON_REPLICA = "WAIT cannot be used with replica instances"
#: the end of a blocking call (a WAIT, a BLPOP) under way when its server became a replica:
#: a plain URL's master demoted (the same trouble as READONLY), but for a cluster client a
#: failover the client follows by itself (not an outage)
UNBLOCKED_ON_REPLICA = "instance state changed (master -> replica?)"
#: Redis Cluster trouble that passes once a failover or a slot's move is over (redis-py
#: follows a few redirections itself), by class; MovedError is an AskError
CLUSTER_TROUBLE: dict[type[Exception], str] = {
    AskError: "the Redis Cluster is moving a slot",
    TryAgainError: "the Redis Cluster is moving a slot",
    ClusterDownError: "the Redis Cluster is down",
    SlotNotCoveredError: "the Redis Cluster does not serve a slot",
    ClusterError: "the Redis Cluster keeps redirecting",
}
CLUSTER_ERRORS = tuple(CLUSTER_TROUBLE)
#: what a retrying call catches (and judges with ``_reason``)
RETRIED: tuple[type[Exception], ...] = (*TRANSIENT, *CLUSTER_ERRORS, ResponseError)
#: stores (by URL, without credentials) whose settings this process checked already
_settings_checked: set[str] = set()
#: how long one operation keeps retrying through connection trouble before it gives up
RETRY_FOR = 30.0
#: ids handed to one script call at most
BATCH = 1000
#: jobs one listing script cuts at a time at most (it copies each whole job inside Redis,
#: and stops early past a budget of work: see lua/list_preview.lua)
SUMMARY_BATCH = 50
#: the order of a segment of one job, and the reply that stored a segment with nothing held
ONLY = [0]
ONLY_ORDER = [ONLY]
OK = ["ok"]
#: queues whose enqueue_one KEYS a broker keeps made
MAX_ONE_KEYS = 256
#: unique keys looked at by one pruning step (see ``RedisBroker._prune_keys``)
PRUNE_STEP = 500
#: steps through the unique keys at most per purge (a purge runs about once a minute)
PRUNE_STEPS = 200
#: seconds between two sweeps of the known queues made by refused enqueues, at least
SWEEP_EVERY = 10.0


Segment = tuple[Sequence[JobRecord], Mapping[str, int]]
#: what storing one segment came to: its error, or per job None (stored) or the id of the
#: job holding its unique key (deduplicated)
Stored = Exception | list[str | None]

#: publish known jobs: KEYS[1] the known hash; ARGV[1] the retention, then pairs of a name
#: and its JSON object without the opening brace. Each is stored with the server's time as
#: ``seen_at``; entries older than the retention are dropped (odd ones are left alone).


class _Coalescer:
    """Gathers the enqueue calls made while one script call is under way into the next.

    The calls are stored by a task of its own, so a caller that is cancelled while waiting
    does not strand the calls that joined its group. ``store(segments, since)`` retries
    through trouble until the store's timeout counted from ``since``: when the group's
    oldest call was made (one that waited behind a call in flight gets no more time).
    """

    def __init__(self, store: Callable[[list[Segment], float], Awaitable[list[Stored]]]):
        self._store = store
        self._waiting: list[tuple[Segment, asyncio.Future[Stored], float]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: a caller is storing its own call (see :meth:`submit`)
        self._direct = False

    async def submit(self, segment: Segment) -> Stored:
        """Store ``segment``: at once, in the caller's task, when no call is under way (a
        single awaited enqueue needs no task of its own); else with the next group. A
        caller cancelled while storing its own call leaves it stored or not, as any
        cancelled write; the calls that joined meanwhile are stored all the same."""
        if not self._direct and (self._flusher is None or self._flusher.done()):
            self._direct = True
            try:
                return (await self._store([segment], time.monotonic()))[0]
            except Exception as exc:
                return exc
            finally:
                self._direct = False
                if self._waiting:
                    self._flusher = asyncio.create_task(self._flush())
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._waiting.append((segment, future, time.monotonic()))
        if not self._direct and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush())
        with WAITING:  # it waits for a reply too: the call in flight stops spinning
            return await future

    async def _flush(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                results: list[Stored] = await self._store(
                    [segment for segment, _, _ in group], min(since for _, _, since in group))
            except Exception as exc:
                results = [exc] * len(group)
            for (_, waiter, _), result in zip(group, results, strict=True):
                if not waiter.done():
                    waiter.set_result(result)


class _Connection:
    """A client and its scripts, bound to one event loop (redis-py clients are)."""

    def __init__(self, url: str,
                 store: Callable[[list[Segment], float], Awaitable[list[Stored]]],
                 wait: replicas.Wait | None) -> None:
        # redis-py's default socket_timeout (5 s) is kept: it bounds a read from a server
        # that vanished without closing the connection. With it, redis-py sends commands
        # through asyncio.wait_for, which on Python 3.11 swallows a cancellation that lands
        # as the send completes (CPython issue 86296; about a third of cancellations of a
        # command in flight). Rather than patch redis-py's connection class, Conveyor never
        # relies on such a cancellation: a worker's loops stop on an event, and every wait
        # of a stopping worker is bounded (conveyor.worker.shutdown), so a swallowed
        # cancellation only lets the call in flight finish. Python 3.12's wait_for does
        # not swallow cancellations.
        self.client = deploy.async_client(url)
        self.scripts = replicas.waiting_scripts(self.client, register_all(self.client), wait)
        self.enqueues = _Coalescer(store)
        #: the enqueue scripts' own connection on a single Redis (None: through the client)
        self.link = (AsyncScriptLink(self.client) if wait is None and AsyncScriptLink.usable()
                     and deploy.kind(url) == deploy.SINGLE else None)
        self.closed = False
        #: closes the connection when its loop shuts down (see :meth:`close_with_loop`)
        self.closer: AsyncGenerator[None, None] | None = None

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.link is not None:
                self.link.close()
            await self.client.aclose()

    def close_with_loop(self, forget: Callable[[], None]) -> None:
        """Close this connection when its event loop shuts down, while the loop still runs:
        an async generator the loop tracks (``loop.shutdown_asyncgens()``, which
        ``asyncio.run`` and the loop runners call before closing the loop) closes it in its
        ``finally``, then calls ``forget``. Started here up to its ``yield``, in step."""

        async def closer() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                forget()
                await self.close()

        self.closer = closer()
        with contextlib.suppress(StopIteration):  # nothing before the yield awaits
            self.closer.asend(None).send(None)


class RedisBroker(Broker):
    """Jobs of one namespace in Redis, under the hash tag ``{namespace}``."""

    def __init__(self, url: str, namespace: str = "conveyor", retention: float = 7 * 86400,
                 tag: str | None = None):
        deploy.check_url(url)
        self.url = url
        #: the replicas each write waits for (``?replicas=N``), if any
        self.wait = replicas.split(url)[1]
        #: a replica at the URL when the store first opens is a wrong URL (see layout.py),
        #: except for a tool that reads (see only_existing)
        self.refuse_replica = True
        self._cluster = deploy.kind(url) == deploy.CLUSTER
        self.retention = retention
        self.namespace = namespace
        #: the keys, under the hash tag ``{namespace}`` (or ``{tag}``: one shard of a
        #: namespace sharded by queue, see :mod:`.sharded`)
        self.keys = Keys(namespace, tag)
        #: the namespace's layout was checked (and raised to this version's) by this broker
        self._layout_checked = False
        self._connections: dict[asyncio.AbstractEventLoop, _Connection] = {}
        #: this store's outages as this process sees them (one log line each)
        self.outage: Outage = outage(url)
        #: how long an operation keeps retrying through connection trouble
        self.retry_for = RETRY_FOR
        self._blocking: deploy.Scripts | None = None
        #: held while the blocking runner is made; re-entrant, with _making set meanwhile,
        #: so that a signal handler's call that interrupted the making on its thread is
        #: refused (ReentrantWrite) rather than left waiting for itself
        self._blocking_lock = threading.RLock()
        self._making = False
        #: where the next pruning step of the unique keys starts (an HSCAN cursor)
        self._prune_cursor = "0"
        #: where the next pruning step of the token buckets starts
        self._bucket_cursor = "0"
        #: where the next step through the known queues starts (an SSCAN cursor)
        self._queue_cursor = "0"
        #: time.monotonic() of the last sweep of the queues an enqueue made (see _may_sweep)
        self._swept_at = -SWEEP_EVERY
        #: the limits of the last claim and their text for claim.lua
        self._limits_cache: tuple[dict[str, JobLimits], str] | None = None

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._connections.get(loop)
        if conn is None:
            for old in [lp for lp in self._connections if lp.is_closed()]:
                del self._connections[old]
            conn = self._connections[loop] = _Connection(self.url, self._store_segments,
                                                                self.wait)

            def forget() -> None:
                if self._connections.get(loop) is conn:
                    del self._connections[loop]

            conn.close_with_loop(forget)
        return conn

    async def _retrying(self, operation: Callable[[_Connection], Awaitable[T]],
                        since: float | None = None) -> T:
        """Run ``operation``, reconnecting with backoff through connection trouble for up to
        :attr:`retry_for` seconds from ``since`` (default: now), the last try at that
        deadline (logged once per outage, see :attr:`outage`)."""
        deadline = (time.monotonic() if since is None else since) + self.retry_for
        pause, attempts = 0.05, 0
        while True:
            sent = time.monotonic()
            attempts += 1
            try:
                result = await operation(self._conn())
            except MISCONFIGURED as exc:
                raise self._misconfigured(exc) from exc
            except RETRIED as exc:
                wait = self._retry_pause(exc, attempts, sent, deadline, pause)
                if wait:
                    await asyncio.sleep(wait)
                    pause = min(pause * 2, 2.0)
            else:
                if self.outage.reads_work:  # (no coroutine more on the common path)
                    await self._probe_writes()
                else:
                    self.outage.recovered()
                return result

    async def _probe_writes(self) -> None:
        """The store answered during an outage that reads do not end (a read-only replica):
        end it only if a write (the ``writable`` probe) succeeds too, or fails for another
        reason than trouble of the store (an ACL that denies its HDEL denies enqueues too:
        such a user has no writes to wait for, and the answer ends it as any other)."""
        try:
            await self._conn().scripts["writable"](keys=[self.keys.probe], args=[])
        except RETRIED as exc:
            if self._probe_says_nothing(exc):
                return
        self.outage.recovered(wrote=True)

    def _probe_writes_blocking(self, scripts: deploy.Scripts) -> None:
        """:meth:`_probe_writes` on the blocking client."""
        try:
            scripts.call("writable", [self.keys.probe], [])
        except RETRIED as exc:
            if self._probe_says_nothing(exc):
                return
        self.outage.recovered(wrote=True)

    def _probe_says_nothing(self, error: BaseException) -> bool:
        """Whether the write probe's ``error`` leaves the outage as it is: writes refused
        still, or the store's trouble (not an error of the probe itself)."""
        return self._store_reason(error) is not None

    def _store_reason(self, error: BaseException) -> str | None:
        """What ``error`` says of the store, in a few words (see :func:`_reason`; an error
        that names its own trouble, such as :class:`~.client.DemotedMaster`, says it)."""
        return getattr(error, "store_reason", None) or _reason(error, self._cluster)

    def _retry_pause(self, error: BaseException, attempts: int, sent: float, deadline: float,
                     pause: float) -> float:
        """Seconds to wait before trying again a call that raised ``error`` (one of
        :data:`RETRIED`) on its try number ``attempts``, begun at ``sent``: 0 for a
        connection left from before an outage (the first try meets it: once more, at once,
        on a new one), else ``pause`` cut at random by up to half and to ``deadline``.
        Raise :class:`StoreUnavailable` once the deadline has passed, or ``error`` itself
        when it is no trouble that passes."""
        if attempts == 1 and _dropped(error):
            return 0.0
        left = deadline - time.monotonic()
        if not self._trouble(error, sent) or left <= 0:
            raise self._unavailable(error, sent) from error
        return min(pause * (0.5 + random.random() / 2), left)

    def _trouble(self, error: BaseException, sent: float | None = None) -> bool:
        """Note trouble that may pass (and return True) of a call begun at ``sent``; False
        for an error reply that is not such trouble, which is raised as it is."""
        self._check_moved(error)
        reason = self._store_reason(error)
        if reason is None:
            if isinstance(error, ResponseError) and str(error).startswith("DB index"):
                # the URL's database number is past the server's `databases`
                raise ConfigurationError(f"{redact_url(self.url)}: {error}") from error
            if _wrong_type(error):
                raise StoreDamaged(
                    f"{redact_url(self.url)}: a key of namespace {self.namespace!r} holds another "
                    f"type than Conveyor writes there (changed outside Conveyor): "
                    f"{error}") from error
            raise error
        self.last_trouble = time.monotonic()
        self.outage.trouble(reason, str(error), sent, reads_work=reason in WRITES_REFUSED)
        return True

    def _check_moved(self, error: BaseException) -> None:
        """A MOVED reply to a client that is not a cluster client: the URL names a node of
        a Redis Cluster, whose redirections only a cluster client follows."""
        if isinstance(error, MovedError) and deploy.kind(self.url) != deploy.CLUSTER:
            raise layout.cluster_node(self.url) from error

    def _misconfigured(self, error: BaseException) -> ConfigurationError:
        """What callers see when Redis refuses the URL's credentials, or the server at the
        URL does not answer as Redis does (one of :data:`MISCONFIGURED`)."""
        if isinstance(error, REFUSED):
            return ConfigurationError(f"Redis refused the credentials of "
                                      f"{redact_url(self.url)}: {error}")
        return ConfigurationError(f"{redact_url(self.url)} does not answer as a Redis server "
                                  f"does (another service on that port?): {error}")

    def _unavailable(self, error: BaseException, sent: float | None = None) -> StoreUnavailable:
        """What callers see once retrying through ``error`` (of a try begun at ``sent``) is
        given up."""
        reason = self._store_reason(error)
        if reason == UNREACHABLE and _closed_unanswered(error):
            reason = CLOSED_UNANSWERED
        return StoreUnavailable(self.url, reason or UNREACHABLE, sent)

    def only_existing(self, reads: bool = False) -> None:
        if reads:
            self.refuse_replica = False

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, MISCONFIGURED) or (
                isinstance(error, MovedError) and deploy.kind(self.url) != deploy.CLUSTER):
            return False
        return isinstance(error, (*TRANSIENT, StoreUnavailable)) or (
            isinstance(error, (ResponseError, *CLUSTER_ERRORS))
            and _reason(error, self._cluster) is not None)

    async def _cmd(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """One Redis command, retried through connection trouble."""
        wait = self.wait
        if wait is not None and command in replicas.WAITED_COMMANDS:
            return await self._retrying(
                lambda c: replicas.command(c.client, wait, command, *args, **kwargs))
        return await self._retrying(lambda c: getattr(c.client, command)(*args, **kwargs))

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One Lua script by name, retried through connection trouble."""
        return await self._retrying(lambda c: c.scripts[name](keys=keys, args=args))

    def open_here(self) -> bool:
        """Whether :meth:`open` would do nothing on the running event loop (no I/O), so
        that an awaited call on the hot path may skip it."""
        return self._layout_checked and asyncio.get_running_loop() in self._connections

    async def open(self) -> None:
        if self._layout_checked:
            if asyncio.get_running_loop() in self._connections:
                return  # open on this loop already: the hot path must not pay a round trip
            await self._cmd("ping")
            return
        queues: list[str] = []
        while True:
            found = await self._script("layout", *self._layout_call(queues))
            if not isinstance(found, list):
                break
            queues = found  # the layout step needs these queues' keys
        self._layout_found(found)

    def _layout_call(self, queues: Sequence[str]) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the layout script, given the namespace's queues (the
        script answers with their names when a step needs them and they differ)."""
        k = self.keys
        keys = [k.layout, k.jobs, k.queues]
        for queue in queues:
            keys += [k.waiting(queue), k.sched(queue)]
        return keys, [LAYOUT, layout.plain_client(self.url, self.refuse_replica), *queues]

    def _layout_found(self, found: Any) -> None:
        """Refuse a namespace of a newer layout; else remember that it is checked."""
        layout.check(int(found), self.namespace, self.url)
        self._layout_checked = True

    async def ping(self) -> None:
        """One round trip to Redis (retried as any command is): a health check. On a
        cluster it goes to the master of the namespace's slot (a script on its keys)."""
        if deploy.kind(self.url) == deploy.CLUSTER:
            await self._script("clock", [self.keys.jobs], [])
        else:
            await self._cmd("ping")

    async def check_settings(self) -> None:
        """Warn about Redis settings that lose jobs (eviction, no persistence), once per
        process and store. Workers and ``conveyor serve`` call it, not commands that only
        read or enqueue (their users cannot change the server's settings)."""
        key = redact_url(self.url)
        if key in _settings_checked:
            return
        try:
            nodes = await self._settings(("maxmemory-policy", "appendonly", "save"))
        except ResponseError:  # CONFIG is often disabled on managed Redis: nothing to check
            return
        if key in _settings_checked:  # another loop of this process checked meanwhile
            return
        _settings_checked.add(key)
        policies = [node.get("maxmemory-policy") for node in nodes]
        bad = [policy for policy in policies if policy and policy != "noeviction"]
        if bad:
            log.warning("Redis maxmemory-policy is %r: under memory pressure Redis may evict "
                        "jobs. Set it to noeviction.", bad[0])
        if any(node.get("appendonly") != "yes" and not node.get("save") for node in nodes):
            log.warning("Redis persistence is off (no AOF, no RDB): a Redis restart loses "
                        "every job. Use appendonly yes with appendfsync always (or everysec).")

    async def _settings(self, names: Sequence[str]) -> list[dict[str, str]]:
        """CONFIG GET of ``names``: one ``{name: value}`` per server, from every master of
        a cluster (any of them may serve the namespace, now or after a slot moves)."""
        if deploy.kind(self.url) != deploy.CLUSTER:
            return [{name: (await self._cmd("config_get", name)).get(name) for name in names}]
        found: dict[str, dict[str, str]] = {}
        for name in names:

            async def get(conn: _Connection, name: str = name) -> dict[str, Any]:
                return await conn.client.execute_command(  # type: ignore[no-any-return]
                    "CONFIG GET", name, target_nodes=conn.client.PRIMARIES)

            replies = await self._retrying(get)
            if not all(isinstance(reply, dict) for reply in replies.values()):
                replies = {"": replies}  # one master: its reply as it is
            for node, reply in replies.items():
                found.setdefault(node, {}).update(reply)
        return list(found.values())

    async def close(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._blocking_lock:
            if self._blocking is not None:
                self._blocking.close()
                self._blocking = None
        conns, self._connections = self._connections, {}
        for conn_loop, conn in conns.items():
            if conn_loop is loop:
                await conn.close()
            # another loop's connection is closed when that loop shuts down

    def _group_keys(self, queues: Sequence[str]) -> list[str]:
        keys: list[str] = []
        for queue in queues:
            keys.extend(self.keys.queue_group(queue))
        return keys

    async def _queues(self) -> list[str]:
        members: set[str] = await self._cmd("smembers", self.keys.queues)
        return sorted(members)

    async def _queue_of(self, ids: Sequence[str]) -> dict[str, list[str]]:
        """Group job ids by their queue (ids that do not exist are left out)."""
        if not ids:
            return {}
        raws = await self._cmd("hmget", self.keys.jobs, list(ids))
        groups: dict[str, list[str]] = defaultdict(list)
        for job_id, raw in zip(ids, raws, strict=True):
            if raw is not None:
                groups[codec.queue_of(raw)].append(job_id)
        return groups

    async def _records(self, ids: Sequence[str]) -> list[JobRecord | None]:
        """The jobs of ``ids`` (None where there is none): their fields read in one
        transaction, then the leases of the running ones."""
        if not ids:
            return []
        k = self.keys
        ids = list(ids)

        read = [*k.record_hashes, k.expiry, k.cancel]  # (the jobs hash first: see below)

        async def fields(conn: _Connection) -> list[Any]:
            async with conn.client.pipeline(transaction=True) as pipe:
                for key in k.record_hashes:
                    pipe.hmget(key, ids)
                pipe.zmscore(k.expiry, ids)
                pipe.smismember(k.cancel, ids)
                return _of_wrong_type_as_empty(await pipe.execute(raise_on_error=False),
                                               read, len(ids), catalogue=k.jobs)

        *hashes, expiry, cancel = await self._retrying(fields)
        rows = list(zip(*hashes, expiry, cancel, strict=True))
        running: dict[str, list[int]] = defaultdict(list)
        for n, row in enumerate(rows):
            if row[0] is not None and row[1] == JobState.RUNNING:
                running[codec.queue_of(row[0])].append(n)
        leases: dict[int, float | None] = {}
        if running:

            async def lease_scores(conn: _Connection) -> list[Any]:
                async with conn.client.pipeline(transaction=False) as pipe:
                    for queue, members in running.items():
                        pipe.zmscore(k.leases(queue), [ids[n] for n in members])
                    return list(await pipe.execute())

            for members, scores in zip(running.values(), await self._retrying(lease_scores),
                                       strict=True):
                leases.update(zip(members, scores, strict=True))
        return [
            None if row[0] is None
            else codec.job_from_fields(row[:-2], _number(row[-2]), bool(row[-1]),
                                       _number(leases.get(n)), ids[n])
            for n, row in enumerate(rows)
        ]

    # -- producers ----------------------------------------------------------------------------
    def _enqueue_call(
        self, segments: Sequence[Segment]
    ) -> tuple[str, Sequence[str], list[Any], list[list[int]]]:
        """The script, KEYS and ARGV of one enqueue call storing ``segments`` (each is the
        jobs and queue limits of one enqueue call, stored all or none on its own), and per
        segment the indexes of its jobs in the order the script numbers them."""
        k = self.keys
        if len(segments) == 1 and len(segments[0][0]) == 1:
            (job,), limits = segments[0]
            queue = job.queue
            argv: list[Any] = [queue, limits.get(queue, -1) if limits else -1,
                               self._value(job), _lane(job), self._most_queues()]
            if job.unique_key is not None:
                argv += [job.unique_key, _hold(job)]
            return "enqueue_one", self._one_keys(queue), argv, ONLY_ORDER
        numbers: dict[str, int] = {}
        argv = [self._most_queues(), len(segments)]
        orders: list[list[int]] = []
        for jobs, limits in segments:
            if len(jobs) == 1:  # the commonest segment: one call of one job
                job = jobs[0]
                number = numbers.setdefault(job.queue, len(numbers) + 1)
                argv += [1, number, job.queue, limits.get(job.queue, -1), 1]
                if job.unique_key is None:
                    argv.append(0)
                else:
                    argv += [1, 1, job.unique_key, _hold(job)]
                if job.group is None:
                    argv.append(0)
                else:
                    argv += [1, 1, _lane(job)]
                argv.append(self._value(job))
                orders.append(ONLY)
                continue
            by_queue: dict[str, list[int]] = defaultdict(list)
            for n, job in enumerate(jobs):
                by_queue[job.queue].append(n)
            argv.append(len(by_queue))
            for queue, members in by_queue.items():
                number = numbers.setdefault(queue, len(numbers) + 1)
                argv += [number, queue, limits.get(queue, -1), len(members)]
            order = [n for members in by_queue.values() for n in members]
            keyed = [(place, jobs[n]) for place, n in enumerate(order, 1)
                     if jobs[n].unique_key is not None]
            argv.append(len(keyed))
            for place, job in keyed:
                argv += [place, job.unique_key, _hold(job)]
            lanes = [(place, jobs[n]) for place, n in enumerate(order, 1)
                     if jobs[n].group is not None]
            argv.append(len(lanes))
            for place, job in lanes:
                argv += [place, _lane(job)]
            argv += [self._value(jobs[n]) for n in order]
            orders.append(order)
        keys = [k.jobs, k.field("state"), k.queues, k.unique, k.unique_until,
                *self._group_keys(list(numbers)), k.caps, k.field("priority"), k.field("lane")]
        return "enqueue", keys, argv, orders

    #: the KEYS of enqueue_one by queue (made once per queue, see :meth:`_one_keys`)
    _one_keys_made: dict[str, tuple[str, ...]] | None = None

    def _one_keys(self, queue: str) -> tuple[str, ...]:
        """The KEYS of enqueue_one for a job of ``queue`` (made once per queue: every
        single enqueue sends them)."""
        made = self._one_keys_made
        if made is None:
            made = self._one_keys_made = {}
        keys = made.get(queue)
        if keys is None:
            k = self.keys
            if len(made) >= MAX_ONE_KEYS:
                made.clear()
            keys = made[queue] = (
                k.jobs, k.field("state"), k.queues, *k.queue_group(queue), k.caps, k.unique,
                k.unique_until, k.field("priority"), k.field("lane"))
        return keys

    def _most_queues(self) -> int:
        """:attr:`max_queues` as the enqueue scripts take it (-1: no cap)."""
        return -1 if self.max_queues is None else self.max_queues

    def _value(self, job: JobRecord) -> str:
        """One job as the enqueue scripts take it: its run_at offset from now, for a job of
        another priority than 0 a space and its priority field, then its JSON."""
        offset = repr(job.run_at - job.created_at)
        if job.priority:
            offset += " " + codec.priority_field(job.priority, boost(job.priority, self.aging))
        return offset + codec.job_spec(job)

    @staticmethod
    def _segment_result(reply: Any, attempts: int, jobs: Sequence[JobRecord],
                        order: list[int]) -> Stored:
        """What one segment's reply says: its error, or per job None when it was stored
        and the holder's id when its unique key was held."""
        if reply == OK or reply == "ok":  # stored, nothing held: the common answer
            return [None] * len(jobs)
        holders: list[Any]
        if isinstance(reply, str):  # enqueue_one: 'ok', 'full ...', 'exists ID', 'same ID',
            # 'held ID'
            status, holders = reply, []
            if reply.startswith("held "):
                status, holders = "ok", [1, reply[5:]]
        else:
            status, holders = reply[0], reply[1:]
        result: list[str | None] = [None] * len(jobs)
        for place, holder in zip(holders[::2], holders[1::2], strict=True):
            n = order[int(place) - 1]
            # held by this very job on a later attempt: the earlier one stored it, and only
            # its reply was lost
            if not (attempts > 1 and holder == jobs[n].id):
                result[n] = str(holder)
        kind, _, detail = status.partition(" ")
        if kind == "full":
            queue, _, limit = detail.rpartition(" ")
            return QueueFull(queue, int(limit))
        if kind == "queues":
            most, _, queue = detail.partition(" ")
            return TooManyQueues(queue, int(most))
        if kind == "exists" or (kind == "same" and attempts == 1):
            return DuplicateJob(detail)
        # 'same' on a later attempt: the earlier attempt stored this very job, and only its
        # reply was lost
        return result

    async def _store_segments(self, segments: Sequence[Segment],
                              since: float | None = None) -> list[Stored]:
        script, keys, argv, orders = self._enqueue_call(segments)
        attempts = 0
        since = time.monotonic() if since is None else since
        until = since + self.retry_for  # as _retrying's: no try waits past it for long

        async def call(conn: _Connection) -> Any:
            nonlocal attempts
            attempts += 1
            link = conn.link
            if link is not None and not link.busy:
                return await link.call(script, keys, argv, until)
            return await conn.scripts[script](keys=keys, args=argv)

        replies = await self._retrying(call, since)
        if isinstance(replies, str):  # enqueue_one
            replies = [replies]
        return [self._segment_result(reply, attempts, jobs, order)
                for reply, (jobs, _), order in zip(replies, segments, orders, strict=True)]

    async def enqueue(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """Concurrent calls on one event loop are coalesced into one script call (as SQLite
        commits them in groups), each still stored all or none on its own."""
        if not jobs:
            return []
        if not self.open_here():
            await self.open()
        result = await self._conn().enqueues.submit((jobs, limits))
        if isinstance(result, TooManyQueues) and self._may_sweep() and \
                await self._prune_queues():
            result = await self._conn().enqueues.submit((jobs, limits))
        if isinstance(result, Exception):
            raise result
        return result

    def enqueue_blocking(
        self, jobs: Sequence[JobRecord], limits: Mapping[str, int]
    ) -> list[str | None]:
        """Enqueue on a plain (thread-safe, blocking) client: no event loop in the way."""
        if not jobs:
            return []
        if not self._layout_checked:
            queues: list[str] = []
            while True:
                found, _ = self._blocking_call("layout", *self._layout_call(queues))
                if not isinstance(found, list):
                    break
                queues = [q.decode() if isinstance(q, bytes) else str(q) for q in found]
            self._layout_found(found)
        script, keys, argv, orders = self._enqueue_call([(jobs, limits)])
        reply, attempts = self._blocking_call(script, keys, argv)
        result = self._segment_result(reply if isinstance(reply, str) else reply[0],
                                      attempts, jobs, orders[0])
        if isinstance(result, TooManyQueues) and self._may_sweep() and \
                self._prune_queues_blocking():
            reply, more = self._blocking_call(script, keys, argv)
            result = self._segment_result(reply if isinstance(reply, str) else reply[0],
                                          more, jobs, orders[0])
        if isinstance(result, Exception):
            raise result
        return result

    async def remember_idempotency(
        self, key: str, digest: str, job_id: str, ttl: float
    ) -> tuple[str, str] | None:
        stored = await self._cmd("set", self.keys.idempotency(key), dumps([digest, job_id]),
                                 nx=True, px=max(1, int(ttl * 1000)))
        if stored:
            return None
        raw = await self._cmd("get", self.keys.idempotency(key))
        if raw is None:  # expired in between: try again
            return await self.remember_idempotency(key, digest, job_id, ttl)
        try:
            found_digest, found_id = loads(raw)
        except (ValueError, TypeError):  # no record this version writes: another request's
            return "", ""
        return str(found_digest), str(found_id)

    async def forget_idempotency(self, key: str, job_id: str) -> None:
        await self._script("forget_idempotency", [self.keys.idempotency(key)], [job_id, ""])

    async def replace_idempotency(self, key: str, job_id: str, new_id: str) -> None:
        await self._script("forget_idempotency", [self.keys.idempotency(key)],
                           [job_id, new_id])

    async def _prune_keys(self) -> None:
        """Steps through the unique keys, dropping those no longer held: a whole pass, or
        :data:`PRUNE_STEPS` steps of :data:`PRUNE_STEP` keys (the next purge goes on from
        there; the cursor lives in this broker)."""
        k = self.keys
        for _ in range(PRUNE_STEPS):
            self._prune_cursor = str(await self._script(
                "prune_unique", [k.unique, k.unique_until, k.field("state")],
                [self._prune_cursor, PRUNE_STEP]))
            if self._prune_cursor == "0":
                return

    async def _prune_buckets(self) -> None:
        """Steps through the token buckets, dropping those full again (as
        :meth:`_prune_keys` steps through the unique keys)."""
        for _ in range(PRUNE_STEPS):
            self._bucket_cursor = str(await self._script(
                "prune_buckets", [self.keys.buckets], [self._bucket_cursor, PRUNE_STEP]))
            if self._bucket_cursor == "0":
                return

    async def _prune_queues(self) -> int:
        """Steps through the known queues, forgetting those without jobs or settings (as
        :meth:`_prune_keys` steps through the unique keys); how many it forgot."""
        forgotten = 0
        for _ in range(PRUNE_STEPS):
            cursor, count = await self._script(
                "prune_queues", [self.keys.jobs, self.keys.queues],
                [self._queue_cursor, PRUNE_STEP])
            self._queue_cursor, forgotten = str(cursor), forgotten + int(count)
            if self._queue_cursor == "0":
                break
        return forgotten

    def _prune_queues_blocking(self) -> int:
        """:meth:`_prune_queues` on the blocking client."""
        forgotten = 0
        for _ in range(PRUNE_STEPS):
            (cursor, count), _ = self._blocking_call(
                "prune_queues", [self.keys.jobs, self.keys.queues],
                [self._queue_cursor, PRUNE_STEP])
            cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            self._queue_cursor, forgotten = cursor, forgotten + int(count)
            if self._queue_cursor == "0":
                break
        return forgotten

    def _may_sweep(self) -> bool:
        """True when an enqueue refused for the cap on queues may sweep the known queues
        before it tries once more (names kept by a store from before queues were forgotten
        wait for no purge); at most once per :data:`SWEEP_EVERY` seconds."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY:
            return False
        self._swept_at = now
        return True

    def _blocking_call(self, script: str, keys: Sequence[str],
                       argv: Sequence[Any]) -> tuple[Any, int]:
        """Run ``script`` on the blocking client, retried through connection trouble as
        :meth:`_retrying` does; return its reply and how many attempts it took."""
        scripts = self._blocking_scripts()
        sent = time.monotonic()
        deadline = sent + self.retry_for
        pause, attempts = 0.05, 0
        while True:
            attempts += 1
            try:
                reply = scripts.call(script, keys, argv)
                break
            except MISCONFIGURED as exc:
                raise self._misconfigured(exc) from exc
            except RETRIED as exc:
                wait = self._retry_pause(exc, attempts, sent, deadline, pause)
                if wait:
                    time.sleep(wait)
                    pause = min(pause * 2, 2.0)
                    sent = time.monotonic()
        if self.outage.reads_work:
            self._probe_writes_blocking(scripts)
        else:
            self.outage.recovered()
        return reply, attempts

    def _blocking_scripts(self) -> deploy.Scripts:
        made = self._blocking
        if made is not None:  # made already: no lock to take
            return made
        with self._blocking_lock:
            if self._blocking is None:
                if self._making:
                    raise ReentrantWrite.during("its connections to Redis were being made")
                self._making = True
                try:
                    self._blocking = deploy.blocking_scripts(self.url)
                finally:
                    self._making = False
            return self._blocking

    # -- workers ------------------------------------------------------------------------------
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease: float,
        start: int | None = None, weights: QueueWeights | None = None,
        limits: Mapping[str, JobLimits] | None = None, number: int | None = None,
    ) -> list[JobRecord]:
        """See :meth:`Broker.claim`; ``number``: the claim number to give the jobs taken
        (a namespace sharded by queue takes it from its home), else the store's next."""
        if weights is not None:
            queues = weights.queues
        keys = [*self.keys.job_block, self.keys.claims, self.keys.paused,
                *self._group_keys(queues)]
        # one token for every retry of this claim: a retry after a lost reply gets the
        # same jobs back instead of leasing a second batch
        token = new_id() if number is None else f"{new_id()}:{number}"
        argv: list[Any] = [worker_id, lease, limit, token, "" if start is None else start,
                           self._limits_text(limits), *queues]
        if weights is not None:
            argv += ["strict" if weights.strict else "weighted",
                     *(weights.weights[q] for q in queues),
                     *(weights.credits.get(q, 0) for q in queues)]
        reply = await self._script("claim", keys, argv)
        if weights is not None:
            credits = codec.claimed_credits(reply)
            if credits is not None:
                weights.credits = dict(zip(queues, credits, strict=True))
        for name, reason in codec.claimed_throttles(reply):
            self.note_throttled(name, reason)
        return codec.claimed_jobs(reply, worker_id)

    def _limits_text(self, limits: Mapping[str, JobLimits] | None) -> str:
        """The limits as claim.lua takes them ('' for none), made again only when they
        differ from the last claim's (a worker hands the same ones to every claim)."""
        if not limits:
            return ""
        cached = self._limits_cache
        if cached is not None and cached[0] == limits:
            return cached[1]
        text = dumps({name: _limit_values(limit) for name, limit in limits.items()})
        self._limits_cache = (dict(limits), text)
        return text

    async def limit_usage(self, names: Sequence[str], max_groups: int = 20) -> list[LimitUsage]:
        if not names:
            return []
        queues = await self._queues()
        reply = await self._script("limit_usage",
                                   [*self.keys.job_block, *self._group_keys(queues)],
                                   list(names))
        usage = []
        for name, (running, ready, flat) in zip(names, reply, strict=True):
            usage.append(LimitUsage(name, None, int(running), int(ready)))
            rows = [LimitUsage(name, str(group), int(run), int(wait))
                    for group, run, wait in zip(flat[::3], flat[1::3], flat[2::3],
                                                strict=True)
                    if int(run) > 0 or int(wait) > 0]
            rows.sort(key=lambda u: (-u.running, -u.ready, u.group or ""))
            usage.extend(rows[:max_groups])
        return usage

    async def set_priority(self, job_id: str, priority: int) -> JobRecord | None:
        found = await self._by_id("set_priority", job_id,
                                  [priority, repr(boost(priority, self.aging))])
        return await self.get(job_id) if found else None

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        unknown = [o.job_id for o in outcomes if o.queue is None]
        queue_of = {i: q for q, ids in (await self._queue_of(unknown)).items() for i in ids}
        # per queue and worker: the successes (id, result), then the others
        wins: dict[tuple[str, str], list[Any]] = defaultdict(list)
        others: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for o in outcomes:
            queue = o.queue or queue_of.get(o.job_id)
            if queue is None:
                continue
            claim = "" if o.claim is None else o.claim
            if o.kind is OutcomeKind.SUCCEEDED:
                wins[queue, o.worker_id] += (o.job_id, claim, o.result_json or "null")
            else:
                delay = "" if o.run_at is None else max(0.0, o.run_at - o.finished_at)
                kind = "deferred" if o.deferred and o.kind is OutcomeKind.RETRY \
                    else o.kind.value
                others[queue, o.worker_id] += (o.job_id, claim, kind,
                                               storable(o.error) or "",
                                               storable(o.traceback) or "", delay)
        k = self.keys
        calls = [
            ([*k.job_block, *k.queue_group(queue)],
             [self.retention, worker, len(wins[queue, worker]) // 3, *wins[queue, worker],
              *others[queue, worker]])
            for queue, worker in {**wins, **others}
        ]

        async def call(conn: _Connection) -> None:
            if len(calls) == 1:
                await conn.scripts["settle"](keys=calls[0][0], args=calls[0][1])
                return
            async with conn.client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await conn.scripts["settle"](keys=keys, args=args, client=pipe)
                if self.wait is not None:  # one WAIT after them all
                    self.wait.queue(pipe)
                replies = await pipe.execute()
            if self.wait is not None:
                self.wait.check(replies[-1])

        await self._retrying(call)

    async def heartbeat(
        self, worker: WorkerInfo, held: Mapping[str, int], lease: float,
        started: Sequence[tuple[str, int]] = (),
    ) -> Beat:
        k = self.keys
        queues = sorted(set(worker.queues) | set(await self._queues())) if held else []
        keys = [*k.job_block, k.workers, k.winfo, *(k.leases(q) for q in queues)]
        args: list[Any] = [worker.id, codec.worker_to_json(worker), lease, len(started)]
        for job_id, claim in started:
            args += (job_id, claim)
        for job_id, claim in held.items():
            args += (job_id, claim)
        cancel, lost = await self._script("heartbeat", keys, args)
        return Beat(cancel=set(cancel), lost=set(lost))

    async def set_progress(
        self, worker_id: str, updates: Sequence[tuple[str, int, float, str | None]]
    ) -> None:
        args: list[Any] = [worker_id]
        for job_id, claim, value, message in updates:
            args += [job_id, claim, value, message or ""]
        await self._script("progress", self.keys.job_block, args)

    async def ready_count(self, queues: Sequence[str], limit: int) -> int:
        now = await self._server_time()

        async def call(conn: _Connection) -> int:
            async with conn.client.pipeline(transaction=False) as pipe:
                pipe.smembers(self.keys.paused)
                for queue in queues:  # queued, laned or not, and due
                    pipe.zcard(self.keys.state(queue, JobState.QUEUED))
                    pipe.zcount(self.keys.sched(queue), "-inf", now)
                paused, *ready = await pipe.execute()
            return sum(int(ready[2 * n]) + int(ready[2 * n + 1])
                       for n, queue in enumerate(queues) if queue not in paused)

        return min(limit, await self._retrying(call))

    async def wait_for_work(self, queues: Sequence[str], timeout: float,
                            lanes: bool = True) -> None:
        """Block on the queues' wake-up lists (BLPOP) until work arrives, the next delayed
        job falls due, or ``timeout`` passes. With ``lanes`` False, queued laned jobs are
        not ready work (only the unlaned ones in ``waiting`` are); wake-up tokens, which
        enqueues and the ends of laned attempts leave, still end the wait."""
        ready_keys = [self.keys.waiting, *([self.keys.lanes] if lanes else [])]

        async def next_due(conn: _Connection) -> tuple[float, set[str], list[Any]]:
            async with conn.client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.smembers(self.keys.paused)
                for queue in queues:
                    pipe.exists(*(key(queue) for key in ready_keys))
                    pipe.zrange(self.keys.sched(queue), 0, 0, withscores=True)
                server_time, paused, *heads = await pipe.execute()
            return server_time[0] + server_time[1] / 1e6, paused, heads

        now, paused, heads = await self._retrying(next_due)
        wait = timeout
        for n, queue in enumerate(queues):
            if queue in paused:  # a paused queue's due jobs wait for a resume
                continue
            ready, head = heads[2 * n], heads[2 * n + 1]
            if ready:
                wait = 0
            elif head:
                wait = min(wait, head[0][1] - now)
        if wait <= 0:
            return
        wake_keys = {self.keys.wake(q): q for q in queues}
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            popped = await self._cmd("blpop", list(wake_keys), timeout=max(0.01, left))
            if popped is None:
                return
            woken = wake_keys.get(popped[0])
            # a token left by an enqueue into a paused queue is no work: wait on (a resume
            # removes the queue from the set before it pushes its token)
            if woken not in paused or not await self._cmd("sismember", self.keys.paused,
                                                          woken):
                return

    async def unregister_worker(self, worker_id: str) -> None:
        async def call(conn: _Connection) -> None:
            async with conn.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.workers, worker_id)
                pipe.hdel(self.keys.winfo, worker_id)
                pipe.hdel(self.keys.claims, worker_id)
                await pipe.execute()

        await self._retrying(call)

    # -- maintenance --------------------------------------------------------------------------
    async def _server_time(self) -> float:
        seconds, micros = await self._script("clock", [self.keys.jobs], [])
        return float(seconds) + float(micros) / 1e6

    async def recover_expired(self, max_recoveries: int) -> Recovery:
        k = self.keys
        began = time.monotonic()
        queues = await self._queues()
        now = await self._server_time()

        def calm() -> bool:
            """No trouble since this pass began. The caller decided to recover on a full
            lease without trouble; a call that waited through an outage must not then
            take the leases that lapsed in it (those of workers cut off alike, whose
            heartbeats land first): the next pass decides again."""
            return self.last_trouble < began

        async def expired(conn: _Connection) -> list[list[str]]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.zrangebyscore(k.leases(queue), "-inf", now, start=0, num=BATCH)
                return list(await pipe.execute())

        recovery = Recovery()
        for queue, ids in zip(queues, await self._retrying(expired) if queues else [],
                              strict=True):
            if not ids:
                continue
            keys = [*k.job_block, *k.queue_group(queue), k.workers]

            async def recover(conn: _Connection, keys: list[str] = keys,
                              ids: list[str] = ids) -> Any:
                if not calm():  # checked at every try: a retry may come after an outage
                    return None
                return await conn.scripts["recover"](
                    keys=keys, args=[max_recoveries, self.retention, *ids])

            # the script checks each candidate again: of two workers that recover the same
            # job at once, only the one whose call moved it counts it
            reply = await self._retrying(recover)
            if reply is None:
                return recovery
            requeued, dead, at, *moved = reply
            recovery.jobs.extend((str(job_id), queue, str(fate))
                                 for job_id, fate in zip(moved[::2], moved[1::2], strict=True))
            recovery.requeued += int(requeued)
            if int(dead):
                recovery.dead[queue] = recovery.dead.get(queue, 0) + int(dead)
                recovery.died_at = float(at)
        if calm():
            await self._script("expire_workers", [k.workers, k.winfo, k.claims], [])
        return recovery

    async def promote_scheduled(self) -> int:
        queues = await self._queues()

        async def call(conn: _Connection) -> int:
            async with conn.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    await conn.scripts["promote"](
                        keys=[*self.keys.job_block, *self.keys.queue_group(queue)],
                        args=[BATCH], client=pipe,
                    )
                return int(sum(await pipe.execute()))

        return await self._retrying(call) if queues else 0

    async def purge_expired(self) -> int:
        k = self.keys
        total = 0
        while True:
            now = await self._server_time()
            ids = await self._cmd("zrangebyscore", k.expiry, "-inf", now, start=0, num=BATCH)
            deleted = 0
            grouped = await self._queue_of(ids)
            for queue, members in grouped.items():
                keys = [*k.job_block, *k.queue_group(queue)]
                deleted += int(await self._script("purge", keys, members))
            missing = set(ids) - {i for m in grouped.values() for i in m}
            if missing:
                await self._cmd("zrem", k.expiry, *missing)
            total += deleted
            if len(ids) < BATCH or not deleted:
                await self._prune_keys()
                await self._prune_buckets()
                await self._prune_queues()
                return total

    # -- inspection and admin -----------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        return (await self._records([job_id]))[0]

    async def _index_keys(self, state: JobState | None,
                          queue: str | None) -> list[tuple[str, bool]]:
        """The indexes to list from, each with whether it is a lease set (scored by lease
        expiry rather than listable by id)."""
        queues = [queue] if queue is not None else await self._queues()
        states = [state] if state is not None else list(ALL_STATES)
        return [(self.keys.state(q, s), s is JobState.RUNNING) for q in queues for s in states]

    async def list_jobs(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
    ) -> list[JobRecord]:
        return await self._listing(state, queue, limit, cursor, name, self._records,
                                   lambda record: record)

    async def list_summaries(
        self,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        name: str | None = None,
        preview: int = PREVIEW_CHARS,
    ) -> list[JobSummary]:
        async def load(ids: Sequence[str]) -> list[JobSummary | None]:
            found: list[JobSummary | None] = []
            for start in range(0, len(ids), SUMMARY_BATCH):
                found += await self._summaries(ids[start:start + SUMMARY_BATCH], preview)
            return found

        return await self._listing(state, queue, limit, cursor, name, load,
                                   lambda summary: summary.record)

    async def _summaries(self, ids: Sequence[str], preview: int) -> list[JobSummary | None]:
        """The summaries of ``ids`` (None where there is none), cut by the script."""
        # UTF-8 takes at most 4 bytes a character: enough bytes for preview + 1 whole ones
        keep = 4 * (preview + 1) + 3
        rows: list[Any] = []
        while len(rows) < len(ids):  # the script answers as many as its budget allows
            rows += await self._script("list_preview", self.keys.job_block,
                                       [keep, *ids[len(rows):]])
        return [None if row is None else codec.summary_from_preview(row, preview, job_id)
                for row, job_id in zip(rows, ids, strict=True)]

    async def _listing(
        self, state: JobState | None, queue: str | None, limit: int, cursor: str | None,
        name: str | None, load: Callable[[Sequence[str]], Awaitable[Sequence[L | None]]],
        record_of: Callable[[L], JobRecord],
    ) -> list[L]:
        """Jobs newest first, as ``load`` reads them from their ids."""
        index = await self._index_keys(state, queue)
        found: list[L] = []
        page = max(limit, 50)
        while len(found) < limit:
            upper = f"({cursor}" if cursor else "+"

            async def fetch(conn: _Connection, upper: str = upper,
                            cursor: str | None = cursor) -> list[str]:
                async with conn.client.pipeline(transaction=False) as pipe:
                    for key, is_lease_set in index:
                        if is_lease_set:  # running jobs: never many
                            pipe.zrange(key, 0, -1)
                        else:
                            pipe.zrevrangebylex(key, upper, "-", start=0, num=page)
                    pages = await pipe.execute()
                found = {i for p in pages for i in p}
                if cursor:
                    found = {i for i in found if i < cursor}
                return sorted(found, reverse=True)[:page]

            ids = await self._retrying(fetch)
            if not ids:
                break
            for item in await load(ids):
                if item is None:
                    continue
                record = record_of(item)
                # read after the index: a job that moved on in between is left out
                if (state is not None and record.state is not state) or \
                        (queue is not None and record.queue != queue):
                    continue
                if name is None or record.name == name:
                    found.append(item)
                    if len(found) == limit:
                        break
            cursor = ids[-1]
            if len(ids) < page:
                break
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        queues = await self._queues()

        async def call(conn: _Connection) -> list[int]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    for s in ALL_STATES:
                        pipe.zcard(self.keys.state(queue, s))
                return list(await pipe.execute())

        values = iter(await self._retrying(call))
        found = {q: {str(s): int(next(values)) for s in ALL_STATES} for q in queues}
        # as SQLite counts them: queues that hold jobs (one kept for its settings only is
        # listed with those, see conveyor.queues.with_settings)
        return {q: row for q, row in found.items() if any(row.values())}

    async def _by_id(self, script: str, job_id: str, extra: Sequence[Any]) -> Any:
        """Run a single-job script with the keys of the job's queue; ``None`` if no job."""
        spec = await self._cmd("hget", self.keys.jobs, job_id)
        if spec is None:
            return None
        keys = [*self.keys.job_block, *self.keys.queue_group(codec.queue_of(spec))]
        return await self._script(script, keys, [job_id, *extra])

    async def cancel(self, job_id: str) -> JobRecord | None:
        found = await self._by_id("cancel", job_id, [self.retention])
        return await self.get(job_id) if found else None

    async def retry(self, job_id: str) -> JobRecord | None:
        await self._by_id("retry", job_id, [])
        return await self.get(job_id)

    async def retry_dead(self, queue: str | None = None) -> int:
        k = self.keys
        total = 0
        for name in [queue] if queue is not None else await self._queues():
            keys = [*k.job_block, *k.queue_group(name)]
            while True:
                ids = await self._cmd("zrange", k.state(name, JobState.DEAD), 0, BATCH - 1)
                if not ids:
                    break
                retried = int(await self._script("retry", keys, ids))
                total += retried
                if retried == 0:  # ids the index holds but that are not dead any more
                    break
        return total

    async def delete(self, job_id: str) -> bool:
        return bool(await self._by_id("delete", job_id, []))

    async def workers(self) -> list[WorkerInfo]:
        now = await self._server_time()
        ids = await self._cmd("zrangebyscore", self.keys.workers, now, "+inf")
        if not ids:
            return []
        raws = await self._cmd("hmget", self.keys.winfo, ids)
        workers = [codec.worker_from_json(raw) for raw in raws if raw is not None]
        return sorted(workers, key=lambda w: w.started_at)

    # -- queue settings -----------------------------------------------------------------------
    async def set_paused(self, queue: str, paused: bool) -> None:
        if paused:
            await self._add_setting(queue, "")
            return
        k = self.keys

        async def call(conn: _Connection) -> None:
            async with conn.client.pipeline(transaction=True) as pipe:
                pipe.srem(k.paused, queue)
                # wake the queue's idle workers, as an enqueue does (one token at most)
                pipe.rpush(k.wake(queue), "1")
                pipe.ltrim(k.wake(queue), 0, 0)
                await pipe.execute()

        await self._retrying(call)
        await self._forget_queue(queue)

    async def set_max_queued(self, queue: str, limit: int | None) -> None:
        if limit is not None:
            await self._add_setting(queue, str(limit))
            return
        await self._cmd("hdel", self.keys.caps, queue)
        await self._forget_queue(queue)

    async def _add_setting(self, queue: str, cap: str) -> None:
        """Pause ``queue`` (``cap`` empty) or store its cap, in one script call that makes
        a queue not known yet known, or refuses it past :attr:`max_queues` (after a sweep
        of stale names, as :meth:`enqueue` does)."""
        k = self.keys
        keys, argv = [k.jobs, k.queues, k.paused, k.caps], [queue, self._most_queues(), cap]
        reply = await self._script("queue_setting", keys, argv)
        if reply != "ok" and self._may_sweep() and await self._prune_queues():
            reply = await self._script("queue_setting", keys, argv)
        if reply != "ok":  # 'queues <most> <queue>'
            raise TooManyQueues(queue, int(str(reply).split(" ", 2)[1]))

    async def _forget_queue(self, queue: str) -> None:
        """Forget ``queue`` if it holds no job and has no settings left."""
        await self._script("forget_queue", [self.keys.jobs, *self.keys.queue_group(queue)], [])

    async def queue_settings(self) -> dict[str, QueueSettings]:
        async def call(conn: _Connection) -> tuple[set[str], dict[str, str]]:
            async with conn.client.pipeline(transaction=True) as pipe:
                pipe.smembers(self.keys.paused)
                pipe.hgetall(self.keys.caps)
                paused, caps = await pipe.execute()
            return paused, caps

        paused, caps = await self._retrying(call)
        found = {name: QueueSettings(name, name in paused, stored_limit(caps.get(name)))
                 for name in sorted(set(paused) | set(caps))}
        return {name: s for name, s in found.items() if s.paused or s.max_queued is not None}

    # -- known jobs ---------------------------------------------------------------------------
    async def publish_jobs(self, worker_id: str, jobs: Sequence[KnownJob]) -> None:
        """One script call: every job stamped with the server's time, old ones dropped."""
        argv: list[Any] = [self.retention]
        for job in jobs:
            data = {key: value for key, value in job.to_dict().items() if key != "seen_at"}
            argv += [job.name, dumps({**data, "worker_id": worker_id})[1:]]
        await self._script("known", [self.keys.known], argv)

    async def known_jobs(self) -> list[KnownJob]:
        # raw bytes: a record that is not UTF-8 is skipped, not a decoding error of the read
        stored: dict[bytes, bytes] = await self._retrying(
            lambda c: c.client.execute_command(
                "HGETALL", self.keys.known, NEVER_DECODE=[]))
        found = [read_known(raw) for _, raw in sorted(stored.items())]
        return sorted((job for job in found if job is not None), key=lambda job: job.name)

    # -- statistics ---------------------------------------------------------------------------
    async def add_stats(self, rows: Sequence[MinuteStats]) -> None:
        """One script call; its marker makes a retry after a lost reply add nothing."""
        k = self.keys
        keys = [k.stats_call(new_id()), k.stats]
        #: minute -> the KEYS index (from 1, as in Lua) of its hash; in KEYS order
        slots: dict[int, int] = {}
        increments: list[Any] = []
        for row in rows:
            changes = codec.stats_increments(row)
            if not changes:
                continue
            index = slots.get(row.minute)
            if index is None:
                keys.append(k.stats_minute(row.minute))
                index = slots[row.minute] = len(keys)
            for field, increment in changes:
                increments += [index, field, increment]
        if increments:
            marker_lives = int(self.retry_for) + 60  # outlives every retry of this call
            await self._script("stats", keys, [int(STATS_KEEP), marker_lives, *slots,
                                               *increments])

    async def stats(self, since: float) -> list[MinuteStats]:
        minutes = [int(m) for m in await self._cmd("zrangebyscore", self.keys.stats, since,
                                                   "+inf")]

        async def call(conn: _Connection) -> list[dict[str, str]]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(self.keys.stats_minute(minute))
                return list(await pipe.execute())

        hashes = await self._retrying(call) if minutes else []
        return [row for minute, fields in zip(minutes, hashes, strict=True)
                for row in codec.stats_rows(minute, fields)]

    # -- schedules ----------------------------------------------------------------------------
    async def schedule_clock(self) -> float:
        return await self._server_time()

    async def _read_schedules(self, names: Sequence[str] | None = None) -> list[ScheduleState]:
        """The stored schedules (only ``names`` when given), by name, from one pipeline.
        Raw bytes: a value that is not UTF-8 reads as unreadable, not as a decoding error."""
        block = self.keys.schedule_block
        wanted = None if names is None else sorted(set(names))
        if wanted == []:
            return []

        async def call(conn: _Connection) -> list[Any]:
            async with conn.client.pipeline(transaction=False) as pipe:
                for key in block:
                    if wanted is None:
                        pipe.execute_command("HGETALL", key, NEVER_DECODE=[])
                    else:
                        pipe.execute_command("HMGET", key, *wanted, NEVER_DECODE=[])
                return list(await pipe.execute())

        replies = await self._retrying(call)
        if wanted is None:
            fields: list[bytes] = sorted(replies[0])
            rows = [{f: reply.get(f) for f in fields} for reply in replies]
        else:
            fields = [name.encode() for name in wanted]
            rows = [dict(zip(fields, reply, strict=True)) for reply in replies]
        defs, paused, last, nxt, job, seen = rows
        return [read_state(field.decode("utf-8", "replace"), defs[field],
                           paused[field] == b"1", last[field], nxt[field], job[field],
                           seen[field])
                for field in fields if defs[field] is not None]

    async def publish_schedules(self, schedules: Sequence[Schedule]) -> list[ScheduleState]:
        argv: list[Any] = []
        for schedule in schedules:
            argv += [schedule.name, dumps(schedule.definition())]
        if argv:
            await self._script("schedules_publish", self.keys.schedule_block, argv)
        return await self._read_schedules([s.name for s in schedules])

    async def schedules(self, names: Sequence[str] | None = None) -> list[ScheduleState]:
        return await self._read_schedules(names)

    async def advance_schedule(self, name: str, last: float, next_tick: float | None,
                               last_job: str | None = None) -> None:
        await self._script("schedule_advance", self.keys.schedule_block,
                           [name, repr(float(last)),
                            "" if next_tick is None else repr(float(next_tick)),
                            last_job or ""])

    async def rewind_schedule(self, name: str, expected: float, last: float,
                              next_tick: float | None) -> bool:
        return bool(await self._script(
            "schedule_rewind", self.keys.schedule_block,
            [name, repr(float(expected)), repr(float(last)),
             "" if next_tick is None else repr(float(next_tick))]))

    async def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState | None:
        if not await self._script("schedule_pause", self.keys.schedule_block,
                                  [name, "1" if paused else "0"]):
            return None
        found = await self._read_schedules([name])
        return found[0] if found else None

    async def delete_schedule(self, name: str) -> bool:
        block = self.keys.schedule_block

        async def call(conn: _Connection) -> list[Any]:
            async with conn.client.pipeline(transaction=True) as pipe:
                for key in block:
                    pipe.hdel(key, name)
                return list(await pipe.execute())

        return bool((await self._retrying(call))[0])

    # -- dashboard sessions -------------------------------------------------------------------
    async def revoke_session(self, nonce: str, until: float) -> None:
        left = until - time.time()
        if left > 0:  # one key per session, gone when the session would expire anyway
            await self._cmd("set", self.keys.revoked(nonce), "1", px=max(1, int(left * 1000)))

    async def session_revoked(self, nonce: str) -> bool:
        return bool(await self._cmd("exists", self.keys.revoked(nonce)))


def _hold(job: JobRecord) -> str:
    """Seconds job's unique key is held at most, as the enqueue scripts take it ('': until
    the job is final)."""
    return "" if job.unique_until is None else repr(job.unique_until - job.created_at)


def _lane(job: JobRecord) -> str:
    """A job's lane field as the enqueue scripts take it ('': not laned)."""
    return "" if job.group is None else lane_field(job.name, job.group)


def _limit_values(limit: JobLimits) -> list[float]:
    """One name's limits as claim.lua reads them (0: none)."""
    rate, group_rate = limit.rate, limit.group_rate
    return [limit.concurrency or 0, limit.group_concurrency or 0,
            0 if rate is None else rate.per_second, 1 if rate is None else rate.burst,
            0 if group_rate is None else group_rate.per_second,
            1 if group_rate is None else group_rate.burst]


def _wrong_type(error: BaseException) -> bool:
    """Whether ``error`` is Redis's refusal of a command on a key of another type."""
    return isinstance(error, ResponseError) and "WRONGTYPE" in str(error)


def _of_wrong_type_as_empty(results: Sequence[Any], keys: Sequence[str], width: int,
                            catalogue: str) -> list[Any]:
    """A pipeline's replies (``raise_on_error=False``), one per key of ``keys`` and each of
    ``width`` values: a key that holds another type than Conveyor writes there (a hand's
    ``SET`` where a hash belongs) reads as holding nothing, logged; any other error raises,
    as does one of ``catalogue`` (the key whose loss would hide every job: the caller's
    retry turns it into :class:`StoreDamaged`)."""
    read = []
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, Exception):
            if key == catalogue or not _wrong_type(result):
                raise result
            log.warning("key %s holds another type than Conveyor writes there (changed "
                        "outside Conveyor); its values read as missing", key)
            result = [None] * width
        read.append(result)
    return read


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _dropped(error: BaseException) -> bool:
    """Whether ``error`` is a connection the server closed or reset (not a timeout). A
    connection that sat idle in a pool through a short outage fails so on its first use:
    the call is tried again at once on a new connection, and only if that fails too is the
    store in trouble (else every such connection would log an outage of its own)."""
    return (isinstance(error, (RedisConnectionError, ConnectionResetError, BrokenPipeError))
            and not isinstance(error, (RedisTimeoutError, TimeoutError)))


def _reason(error: BaseException, cluster: bool = False) -> str | None:
    """What ``error`` says about Redis in a few words, if it is trouble that may pass: the
    connection failing, or a reply refusing the work for now (out of memory, cannot
    persist, ...); None for any other error. ``cluster``: the client is a Redis Cluster
    client (see :data:`UNBLOCKED_ON_REPLICA`)."""
    for kind, reason in BUSY_ERRORS.items():  # (before the cluster's: MASTERDOWN is one)
        if isinstance(error, kind):
            return reason
    for kind, reason in CLUSTER_TROUBLE.items():
        if isinstance(error, kind):
            return reason
    if isinstance(error, ResponseError):
        text = str(error)
        if isinstance(error, ReadOnlyError) or WAIT_ON_REPLICA in text or (
                not cluster and UNBLOCKED_ON_REPLICA in text):
            return READ_ONLY  # (redis-py takes the word READONLY off its text)
        return BUSY_REPLIES.get(text.split(" ", 1)[0].upper())
    if isinstance(error, (RedisTimeoutError, TimeoutError)):
        return "Redis timed out"
    if isinstance(error, TRANSIENT):
        return UNREACHABLE
    return None


def _closed_unanswered(error: BaseException) -> bool:
    """Whether ``error`` (connection trouble) is a connection the server took and then
    closed (or reset) before it answered: a Redis going down meanwhile, but when every try
    until the deadline ends so, a port that is no Redis's or wants TLS."""
    text = str(error)
    return "closed by server" in text or "reset by peer" in text

