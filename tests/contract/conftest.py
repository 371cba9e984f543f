"""Fixtures of the backend contract suite: the same tests run against every backend.

The tests talk to the abstract :class:`~conveyor.backends.base.Broker` only. To add a backend,
write a factory like :func:`_sqlite_factory` and add it to :data:`FACTORIES`; every test then
runs once more, with ``[name]`` in its id.

The Broker API is async and pytest-asyncio is not used: each test gets its own event loop and
a ``run(coro)`` helper that drives a coroutine to completion on it. The broker is opened and
closed on that same loop, so backends whose clients are bound to a loop work too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conveyor.backends.base import Broker
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState, WorkerInfo

T = TypeVar("T")

#: retention of the default ``broker``: long enough that nothing expires during a test
RETENTION = 3600.0

Run = Callable[[Awaitable[T]], T]
#: ``make(retention=...)`` builds a broker (not yet opened) on the test's storage
Factory = Callable[..., Broker]
#: ``make_broker(retention=...)`` builds and opens another broker on the same storage
MakeBroker = Callable[..., Broker]


def _sqlite_factory(tmp_path: Path) -> Factory:
    # tmp_path is absolute, so this reads sqlite:////abs/path/contract.db
    url = f"sqlite:///{tmp_path.resolve() / 'contract.db'}"

    def make(retention: float = RETENTION) -> Broker:
        return SQLiteBroker(url, namespace="t", retention=retention)

    return make


def _redis_factory(tmp_path: Path) -> Factory:
    from conveyor.backends.redis import RedisBroker
    from redis_server import shared_redis_url

    url = shared_redis_url()
    namespace = f"t{new_id().lower()}"  # a namespace per test: no test sees another's keys

    def make(retention: float = RETENTION) -> Broker:
        return RedisBroker(url, namespace=namespace, retention=retention)

    return make


#: turns of the masters of the shared cluster, so the tests' namespaces land on each
_cluster_turns = itertools.count()


def _cluster_factory(tmp_path: Path) -> Factory:
    from conveyor.backends.redis import RedisBroker
    from redis_cluster import shared_cluster

    cluster = shared_cluster()
    masters = cluster.masters()
    namespace = cluster.namespace_on(masters[next(_cluster_turns) % len(masters)])

    def make(retention: float = RETENTION) -> Broker:
        return RedisBroker(cluster.url, namespace=namespace, retention=retention)

    return make


def _sharded_factory(tmp_path: Path) -> Factory:
    from redis_server import shared_redis_url

    url = shared_redis_url() + "?shard=queue"  # a namespace sharded by queue, one server
    return _sharded(url)


def _sharded_cluster_factory(tmp_path: Path) -> Factory:
    from redis_cluster import shared_cluster

    # a namespace sharded by queue over the masters of a cluster
    return _sharded(shared_cluster().url + "?shard=queue")


def _sharded(url: str) -> Factory:
    from conveyor.backends.redis.sharded import ShardedRedisBroker

    namespace = f"t{new_id().lower()}"

    def make(retention: float = RETENTION) -> Broker:
        return ShardedRedisBroker(url, namespace=namespace, retention=retention)

    return make


def _sentinel_factory(tmp_path: Path) -> Factory:
    from conveyor.backends.redis import RedisBroker
    from redis_sentinel import shared_sentinel_url

    url = shared_sentinel_url()
    namespace = f"t{new_id().lower()}"

    def make(retention: float = RETENTION) -> Broker:
        return RedisBroker(url, namespace=namespace, retention=retention)

    return make


#: tests whose semantics change on a namespace sharded by queue (see
#: conveyor.backends.redis.sharded), skipped for the "sharded" backend, with the reason
NOT_SHARDED = {
    "test_claim_orders_by_run_at_across_queues":
        "sharded, a claim goes queue by queue: rank order holds within a queue only",
    "test_priorities_order_across_queues_without_weights":
        "sharded, a claim goes queue by queue: rank order holds within a queue only",
    "test_a_cap_set_between_two_enqueues_of_one_commit_holds_for_the_second":
        "sharded, an enqueue into a new queue registers it first: concurrent calls on one "
        "loop reach the queue's store in another order",
}

#: tests whose concurrent calls need one connection's order, skipped for the stores whose
#: client spreads calls over a pool (an awaited call is still ordered before the next)
ONE_CONNECTION = {
    "test_a_cap_set_between_two_enqueues_of_one_commit_holds_for_the_second":
        "concurrent calls on one loop go over several connections (cluster nodes, a pool "
        "behind Sentinel): their order at the server is not the order they were made",
}


#: backend name -> function of the test's ``tmp_path`` returning a broker factory.
#: Every broker a factory makes for one test must share that test's storage (and namespace).
FACTORIES: dict[str, Callable[[Path], Factory]] = {
    "sqlite": _sqlite_factory,
    "redis": _redis_factory,
    "cluster": _cluster_factory,
    "sharded": _sharded_factory,
    "sharded-cluster": _sharded_cluster_factory,
    "sentinel": _sentinel_factory,
}


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """``run(coro)`` runs a coroutine on the test's own event loop and returns its result."""
    loop = asyncio.new_event_loop()

    def run_(awaitable: Awaitable[T]) -> T:
        async def main() -> T:
            return await awaitable

        return loop.run_until_complete(main())

    try:
        yield run_
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def make_broker(backend: str, tmp_path: Path, run: Run[Any],
                request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """Build and open brokers of the backend under test that share one storage.

    A second broker stands for a second connection (or process); one with a tiny
    ``retention`` serves the purge tests. All are closed after the test.
    """
    if backend.startswith("sharded") and request.node.originalname in NOT_SHARDED:
        pytest.skip(NOT_SHARDED[request.node.originalname])
    if backend in ("cluster", "sentinel") and request.node.originalname in ONE_CONNECTION:
        pytest.skip(ONE_CONNECTION[request.node.originalname])
    factory = FACTORIES[backend](tmp_path)
    opened: list[Broker] = []

    def make(retention: float = RETENTION) -> Broker:
        broker = factory(retention=retention)
        run(broker.open())
        opened.append(broker)
        return broker

    yield make
    for broker in reversed(opened):
        run(broker.close())


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """An opened broker of the backend under test, with ``retention=3600``."""
    return make_broker()


# -- helpers --------------------------------------------------------------------------------


def make_job(
    name: str = "tasks.work",
    queue: str = "default",
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    run_at: float | None = None,
    delay: float | None = None,
    created_at: float | None = None,
    priority: int = 0,
    group: str | None = None,
) -> JobRecord:
    """A fresh job record as the app would build it: queued, or scheduled when it runs later.

    ``delay`` is a shortcut for ``run_at = now + delay``.
    """
    now = time.time()
    if created_at is None:
        created_at = now
    if run_at is None:
        run_at = now + delay if delay is not None else created_at
    state = JobState.SCHEDULED if run_at > now else JobState.QUEUED
    return JobRecord(
        id=new_id(created_at),
        name=name,
        queue=queue,
        state=state,
        args=[] if args is None else args,
        kwargs={} if kwargs is None else kwargs,
        created_at=created_at,
        run_at=run_at,
        priority=priority,
        group=group,
    )


def raw_redis(url: str) -> Any:
    """A blocking redis-py client (replies as bytes) for the Redis ``url`` of a broker, to
    write behind its back; a cluster-aware one for ``redis+cluster://``, the master's for
    ``redis+sentinel://`` (its replies as text)."""
    import redis

    scheme = url.split("://", 1)[0]
    if scheme.endswith("+cluster"):
        return redis.RedisCluster.from_url(url.replace("+cluster", "", 1))
    if scheme.endswith("+sentinel"):
        from conveyor.backends.redis.sentinel import blocking_client

        return blocking_client(url)
    return redis.Redis.from_url(url)


def make_jobs(count: int, **options: Any) -> list[JobRecord]:
    """``count`` jobs made with :func:`make_job`, oldest id first."""
    return [make_job(**options) for _ in range(count)]


def make_worker(worker_id: str | None = None, queues: list[str] | None = None) -> WorkerInfo:
    """A worker as it reports itself on a heartbeat."""
    return WorkerInfo(
        id=worker_id or f"w-{new_id()}",
        host="test-host",
        pid=4242,
        queues=["default"] if queues is None else queues,
        concurrency=4,
        min_concurrency=1,
        max_concurrency=8,
        busy=2,
        processed=10,
        failed=1,
        started_at=time.time() - 5,
    )
