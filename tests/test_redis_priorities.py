"""How the Redis store keeps priorities: what it writes, how due scheduled jobs join the
ready ones, and the upgrade of a layout-2 namespace to layout 3 and on (the contract suite
holds the behaviour common to both stores)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conveyor.backends.redis import RedisBroker, codec
from conveyor.backends.redis import layout as redis_layout
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from conveyor.priority import QueueWeights
from redis_server import shared_redis_url
from store_helpers import on_redis


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(shared_redis_url(), decode_responses=True)
    yield found
    found.close()


def _namespace() -> str:
    return f"p{new_id().lower()}"


def _job(queue: str = "default", priority: int = 0, delay: float = 0.0,
         back: float = 0.0) -> JobRecord:
    now = time.time()
    run_at = now + delay - back
    return JobRecord(id=new_id(), name="n", queue=queue,
                     state=JobState.SCHEDULED if delay > 0 else JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=run_at, priority=priority)


def test_a_default_job_writes_no_priority_and_a_scheduled_one_is_not_ready(
        client: redis.Redis) -> None:
    ns = _namespace()
    plain, urgent, later = _job(), _job(priority=3), _job(delay=3600, priority=-2)

    async def scenario(broker: RedisBroker) -> None:
        await broker.enqueue([plain], {})  # the one-job script
        await broker.enqueue([urgent, later], {})  # the bulk script

    on_redis(scenario, ns)
    p = f"{{{ns}}}"
    assert client.hgetall(f"{p}:f:priority") == {
        urgent.id: codec.priority_field(3, 180.0), later.id: codec.priority_field(-2, -120.0)}
    waiting = dict(client.zrange(f"{p}:q:default:waiting", 0, -1, withscores=True))
    assert set(waiting) == {plain.id, urgent.id}
    stored_at = json.loads(client.hget(f"{p}:jobs", urgent.id) or "{}")["run_at"]
    assert waiting[urgent.id] == pytest.approx(stored_at - 180.0, abs=1e-5)
    assert client.zrange(f"{p}:q:default:sched", 0, -1) == [later.id]


def test_set_priority_back_to_0_drops_the_field(client: redis.Redis) -> None:
    ns = _namespace()
    job = _job(priority=4)

    async def scenario(broker: RedisBroker) -> JobRecord | None:
        await broker.enqueue([job], {})
        return await broker.set_priority(job.id, 0)

    changed = on_redis(scenario, ns)
    assert changed is not None and changed.priority == 0
    assert client.hlen(f"{{{ns}}}:f:priority") == 0


def test_a_backlog_of_due_scheduled_jobs_is_claimed_whole() -> None:
    """More due scheduled jobs than one claim moves to the ready ones: each claim takes
    its share, and the counts see every due one as ready."""
    ns = _namespace()
    jobs = [_job(delay=0.2) for _ in range(700)]

    async def scenario(broker: RedisBroker) -> tuple[int, int, int]:
        await broker.enqueue(jobs, {})
        await asyncio.sleep(0.3)
        ready = await broker.ready_count(["default"], 10_000)
        taken = 0
        claims = 0
        while batch := await broker.claim("w1", ["default"], 100, 30.0):
            taken += len(batch)
            claims += 1
        return ready, taken, claims

    ready, taken, claims = on_redis(scenario, ns)
    assert (ready, taken, claims) == (700, 700, 7)


def test_an_idle_worker_wakes_when_a_delayed_job_falls_due() -> None:
    ns = _namespace()

    async def scenario(broker: RedisBroker) -> float:
        await broker.enqueue([_job(delay=0.3)], {})
        began = time.monotonic()
        await broker.wait_for_work(["default"], 5.0)
        return time.monotonic() - began

    assert on_redis(scenario, ns) < 4.0  # woken by the job falling due, not the timeout


def test_a_weighted_claim_sent_again_leaves_the_credits_alone() -> None:
    ns = _namespace()
    jobs = [_job(queue=q) for q in ("a", "b") for _ in range(5)]

    async def scenario(broker: RedisBroker) -> tuple[list[Any], list[Any]]:
        await broker.enqueue(jobs, {})
        k = broker.keys
        keys = [*k.job_block, k.claims, k.paused, *k.queue_group("a"), *k.queue_group("b")]
        args = ["w1", 30, 2, "tok", "", "", "a", "b", "weighted", 2, 1, 0, 0]
        return (await broker._script("claim", keys, args),
                await broker._script("claim", keys, args))

    first, again = on_redis(scenario, ns)
    model = QueueWeights({"a": 2, "b": 1})
    picks, credits = model.pick({"a": 2, "b": 2}, 2)
    assert codec.claimed_credits(first) == [credits["a"], credits["b"]]
    assert collections.Counter(j.queue for j in codec.claimed_jobs(first, "w1")) == \
        collections.Counter(picks)
    assert codec.claimed_credits(again) is None
    assert [j.id for j in codec.claimed_jobs(again, "w1")] == \
        [j.id for j in codec.claimed_jobs(first, "w1")]


def _layout_2(client: redis.Redis, ns: str) -> dict[str, float]:
    """A namespace as layout 2 wrote it: queued and scheduled jobs both in waiting (scored
    by run_at), the scheduled ones in sched too; one scheduled job is due already."""
    p = f"{{{ns}}}"
    now = time.time()
    runs = {"q-old": now - 30, "q-new": now - 10, "s-due": now - 20, "s-later": now + 3600}
    for job_id, run_at in runs.items():
        state = "queued" if job_id.startswith("q") else "scheduled"
        spec = {"id": job_id, "name": "work", "queue": "default", "args": [], "kwargs": {},
                "created_at": now - 40, "run_at": run_at}
        client.hset(f"{p}:jobs", job_id, json.dumps(spec))
        client.hset(f"{p}:f:state", job_id, state)
        client.zadd(f"{p}:q:default:s:{state}", {job_id: 0})
        client.zadd(f"{p}:q:default:waiting", {job_id: run_at})
        if state == "scheduled":
            client.zadd(f"{p}:q:default:sched", {job_id: run_at})
    client.sadd(f"{p}:queues", "default", "empty")
    client.set(f"{p}:layout", 2)
    return runs


def test_a_layout_2_namespace_is_upgraded_to_the_current_layout(client: redis.Redis) -> None:
    ns = _namespace()
    _layout_2(client, ns)
    p = f"{{{ns}}}"

    async def scenario(broker: RedisBroker) -> tuple[list[JobRecord], list[JobRecord]]:
        before = [r for r in await broker.list_jobs(limit=10) if r is not None]
        return before, await broker.claim("w1", ["default"], 10, 30.0)

    before, claimed = on_redis(scenario, ns)
    assert client.get(f"{p}:layout") == str(redis_layout.LAYOUT) == "5"
    assert {r.id: (r.state, r.priority) for r in before} == {
        "q-old": (JobState.QUEUED, 0), "q-new": (JobState.QUEUED, 0),
        "s-due": (JobState.SCHEDULED, 0), "s-later": (JobState.SCHEDULED, 0)}
    # the due scheduled job ranks by its run_at among the queued ones
    assert [j.id for j in claimed] == ["q-old", "s-due", "q-new"]
    assert client.zrange(f"{p}:q:default:waiting", 0, -1) == []
    assert client.zrange(f"{p}:q:default:sched", 0, -1) == ["s-later"]


def test_the_blocking_enqueue_upgrades_a_namespace_too(client: redis.Redis) -> None:
    """The layout script names the queues whose keys its step needs when they are not
    those given (the first call gives none): the broker calls it again with their keys."""
    ns = _namespace()
    _layout_2(client, ns)
    p = f"{{{ns}}}"
    broker = RedisBroker(shared_redis_url(), namespace=ns)
    assert broker.enqueue_blocking([_job()], {}) == [None]  # the blocking path upgrades
    assert client.get(f"{p}:layout") == str(redis_layout.LAYOUT)
    assert "s-due" not in client.zrange(f"{p}:q:default:waiting", 0, -1)
    asyncio.run(broker.close())
