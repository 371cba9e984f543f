"""How the Redis store keeps limits: the keys of lanes, running attempts, cursors and
buckets it writes, that every path leaves them right (nothing left behind), names and
groups with ':' in them, round robin over more groups than a claim reads at once, and
precise throttle notes (the contract suite holds the behaviour common to both stores)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from conveyor.backends.redis import RedisBroker, codec
from conveyor.backends.redis.keys import group_of_lane, lane_field, part
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind, WorkerInfo
from conveyor.limits import JobLimits, Rate
from redis_server import shared_redis_url
from store_helpers import on_redis

NAME = "capped"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(shared_redis_url(), decode_responses=True)
    yield found
    found.close()


def _namespace() -> str:
    return f"l{new_id().lower()}"


def _job(group: str | None = "", name: str = NAME, delay: float = 0.0, back: float = 1.0,
         queue: str = "default", priority: int = 0) -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name=name, queue=queue,
                     state=JobState.SCHEDULED if delay > 0 else JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now + delay - back,
                     group=group, priority=priority)


def _limits(**options: Any) -> dict[str, JobLimits]:
    grouped = "group_concurrency" in options or "group_rate" in options
    return {NAME: JobLimits(NAME, group_by="tenant" if grouped else None, **options)}


def _lane_keys(client: redis.Redis, ns: str) -> list[str]:
    """Every key of lanes, scheduled laned jobs and running attempts of the namespace."""
    p = f"{{{ns}}}"
    found: list[str] = []
    for pattern in (f"{p}:lane:*", f"{p}:delayed:*", f"{p}:run:*", f"{p}:q:*:lanes"):
        found += client.keys(pattern)
    return sorted(found)


def test_a_lane_field_names_its_job_and_group() -> None:
    for name, group in (("n", ""), ("a:b", "x:1"), ("é", "ü:ß"), ("n", "12:3")):
        field = lane_field(name, group)
        assert field.startswith(part(name)) and group_of_lane(field) == group
    assert group_of_lane(None) is None


def test_what_a_laned_job_writes_and_its_end_leaves_nothing(client: redis.Redis) -> None:
    ns = _namespace()
    p = f"{{{ns}}}"
    job = _job("acme")
    lane = f"{p}:lane:{part('default')}{part(NAME)}"

    async def scenario(broker: RedisBroker) -> list[JobRecord]:
        await broker.enqueue([job], {})
        assert client.hget(f"{p}:f:lane", job.id) == lane_field(NAME, "acme")
        assert client.zrange(f"{p}:q:default:waiting", 0, -1) == []
        assert client.smembers(f"{p}:q:default:lanes") == {NAME}
        assert client.zrange(lane, 0, -1) == ["acme"]
        assert client.zrange(lane + part("acme"), 0, -1) == [job.id]
        claimed = await broker.claim("w1", ["default"], 5, 30.0, limits=_limits())
        running = f"{p}:run:{part(NAME)}"
        assert client.zrange(running, 0, -1) == [job.id]
        assert client.zrange(running + part("acme"), 0, -1) == [job.id]
        assert client.hget(f"{p}:cursors", part("default") + part(NAME)) == "acme"
        await broker.settle([Outcome(job.id, "w1", OutcomeKind.SUCCEEDED, time.time(),
                                     result_json="null", claim=1)])
        return claimed

    claimed = on_redis(scenario, ns)
    assert [(j.id, j.group) for j in claimed] == [(job.id, "acme")]
    assert _lane_keys(client, ns) == []


def test_every_path_keeps_the_lanes_right(client: redis.Redis) -> None:
    """Cancelled, deleted, retried when dead, recovered, put back at shutdown: a laned job is
    in its lane exactly while it is queued, and nothing of it is left once it is gone."""
    ns = _namespace()
    jobs = [_job(g) for g in ("a", "a", "b", "c")]
    p = f"{{{ns}}}"
    lanes = f"{p}:lane:{part('default')}{part(NAME)}"

    def in_lanes() -> set[str]:
        return {i for g in client.zrange(lanes, 0, -1)
                for i in client.zrange(lanes + part(g), 0, -1)}

    async def scenario(broker: RedisBroker) -> None:
        await broker.enqueue(jobs, {})
        await broker.cancel(jobs[0].id)
        assert await broker.delete(jobs[2].id)
        assert in_lanes() == {jobs[1].id, jobs[3].id}
        assert await broker.retry(jobs[0].id) is not None  # cancelled: back to its lane
        assert in_lanes() == {jobs[0].id, jobs[1].id, jobs[3].id}
        got = await broker.claim("gone", ["default"], 2, 0.2, limits=_limits())
        assert in_lanes() == {jobs[0].id, jobs[1].id, jobs[3].id} - {j.id for j in got}
        await asyncio.sleep(0.4)
        await broker.recover_expired(5)
        assert in_lanes() == {jobs[0].id, jobs[1].id, jobs[3].id}
        got = await broker.claim("w1", ["default"], 10, 30.0, limits=_limits())
        assert in_lanes() == set()
        await broker.settle([Outcome(j.id, "w1", OutcomeKind.REQUEUE, time.time(),
                                     claim=j.claim) for j in got])
        assert in_lanes() == {j.id for j in got}
        for record in await broker.claim("w1", ["default"], 10, 30.0):
            await broker.settle([Outcome(record.id, "w1", OutcomeKind.DEAD, time.time(),
                                         error="x", claim=record.claim)])
        assert _lane_keys(client, ns) == []
        assert await broker.retry_dead() == 3
        assert in_lanes() == {jobs[0].id, jobs[1].id, jobs[3].id}
        for record in await broker.claim("w1", ["default"], 10, 30.0):
            await broker.cancel(record.id)  # running: asked, still running
            await broker.settle([Outcome(record.id, "w1", OutcomeKind.RETRY, time.time(),
                                         run_at=time.time(), claim=record.claim)])
        assert _lane_keys(client, ns) == []  # ended cancelled: nothing left

    on_redis(scenario, ns)


def test_a_priority_change_reorders_a_group(client: redis.Redis) -> None:
    ns = _namespace()
    older, newer = _job("a", back=10), _job("a", back=1)

    async def scenario(broker: RedisBroker) -> list[str]:
        await broker.enqueue([older, newer], {})
        await broker.set_priority(newer.id, 10)
        return [j.id for j in await broker.claim("w1", ["default"], 1, 30.0)]

    assert on_redis(scenario, ns) == [newer.id]


def test_colons_in_names_and_groups_keep_their_lanes_apart(client: redis.Redis) -> None:
    ns = _namespace()
    jobs = [_job("a:1", name="x"), _job("a", name="x:1"), _job("1:a", name="x"),
            _job("", name="x:1:")]

    async def scenario(broker: RedisBroker) -> list[JobRecord]:
        await broker.enqueue(jobs, {})
        limits = {n: JobLimits(n, concurrency=1) for n in ("x", "x:1", "x:1:")}
        return await broker.claim("w1", ["default"], 10, 30.0, limits=limits)

    got = on_redis(scenario, ns)
    assert sorted((j.name, j.group) for j in got) == [("x", "1:a"), ("x:1", "a"),
                                                      ("x:1:", "")]
    assert on_redis(lambda b: b.get(jobs[0].id), ns).group == "a:1"  # type: ignore[union-attr]


def test_round_robin_over_more_groups_than_a_claim_reads_at_once(
        client: redis.Redis) -> None:
    """150 groups of two jobs each: claims of 10 take each group's first job before any
    group's second, whatever page of groups a claim starts in."""
    ns = _namespace()
    groups = [f"g{n:03d}" for n in range(150)]
    jobs = [_job(g) for g in groups for _ in range(2)]

    async def scenario(broker: RedisBroker) -> list[str]:
        await broker.enqueue(jobs, {})
        order: list[str] = []
        limits = _limits(group_concurrency=5)
        for _ in range(30):
            order += [j.group or "" for j in
                      await broker.claim("w1", ["default"], 10, 30.0, limits=limits)]
        return order

    order = on_redis(scenario, ns)
    assert sorted(order[:150]) == groups and sorted(order[150:]) == groups
    assert order[:150] == groups  # in the order of their names


def test_throttles_are_noted_only_when_a_limit_held_a_job_back(client: redis.Redis) -> None:
    ns = _namespace()

    async def scenario(broker: RedisBroker) -> list[collections.Counter[tuple[str, str]]]:
        await broker.enqueue([_job() for _ in range(10)], {})
        noted = []
        for limit, cap in ((2, 5), (5, 5), (1, 5)):
            broker.take_throttled()
            await broker.claim("w1", ["default"], limit, 30.0,
                               limits=_limits(concurrency=cap))
            noted.append(broker.take_throttled())
        return noted

    first, second, third = on_redis(scenario, ns)
    assert not first  # the claim wanted 2 and the cap let it take them
    assert second == {(NAME, "concurrency"): 1}  # took 3, the cap held the rest
    assert third == {(NAME, "concurrency"): 1}  # the cap was full from the start


def test_full_buckets_are_dropped(client: redis.Redis) -> None:
    ns = _namespace()
    p = f"{{{ns}}}"

    async def scenario(broker: RedisBroker) -> None:
        await broker.enqueue([_job("a"), _job("a"), _job("b")], {})
        limits = _limits(group_rate=Rate(10, 1.0, 1))
        assert len(await broker.claim("w1", ["default"], 10, 30.0, limits=limits)) == 2
        assert set(client.hkeys(f"{p}:buckets")) == {part(NAME) + part(g) for g in "ab"}
        await asyncio.sleep(0.2)  # both full again
        assert len(await broker.claim("w1", ["default"], 10, 30.0, limits=limits)) == 1
        # b had no job: its full bucket waits for a purge, a's was spent again
        assert len(client.hkeys(f"{p}:buckets")) == 2
        await broker.purge_expired()
        assert client.hkeys(f"{p}:buckets") == [part(NAME) + part("a")]

    on_redis(scenario, ns)


def test_a_heartbeat_extends_the_slot_and_a_deferral_frees_it(client: redis.Redis) -> None:
    ns = _namespace()
    p = f"{{{ns}}}"
    job = _job("a")

    async def scenario(broker: RedisBroker) -> JobRecord | None:
        await broker.enqueue([job], {})
        (held,) = await broker.claim("w1", ["default"], 1, 5.0, limits=_limits())
        before = client.zscore(f"{p}:run:{part(NAME)}{part('a')}", job.id)
        worker = WorkerInfo("w1", "h", 1, ["default"], 1, 1, 1, 0, 0, 0, time.time(),
                            time.time())
        await broker.heartbeat(worker, {job.id: held.claim}, 60.0)
        after = client.zscore(f"{p}:run:{part(NAME)}{part('a')}", job.id)
        assert before is not None and after is not None and after > before + 50
        await broker.settle([Outcome(job.id, "w1", OutcomeKind.RETRY, time.time(),
                                     run_at=time.time(), claim=1, deferred=True)])
        # scheduled: not in its lane until due, among its name's scheduled laned jobs
        assert _lane_keys(client, ns) == [f"{p}:delayed:{part(NAME)}"]
        assert client.zrange(f"{p}:delayed:{part(NAME)}", 0, -1) == [job.id]
        await asyncio.sleep(0.01)
        (again,) = await broker.claim("w1", ["default"], 1, 5.0, limits=_limits())
        assert (again.attempts, again.deferrals, again.group) == (1, 1, "a")
        return await broker.get(job.id)

    record = on_redis(scenario, ns)
    assert record is not None and record.deferrals == 1


def test_a_claim_sent_again_gives_the_group_and_deferrals(client: redis.Redis) -> None:
    ns = _namespace()
    job = _job("acme")

    async def scenario(broker: RedisBroker) -> tuple[list[Any], list[Any]]:
        await broker.enqueue([job], {})
        k = broker.keys
        keys = [*k.job_block, k.claims, k.paused, *k.queue_group("default")]
        args = ["w1", 30, 5, "tok", "", "", "default"]
        return (await broker._script("claim", keys, args),
                await broker._script("claim", keys, args))

    first, again = on_redis(scenario, ns)
    assert [(j.id, j.group) for j in codec.claimed_jobs(first, "w1")] == [(job.id, "acme")]
    assert [(j.id, j.group, j.deferrals) for j in codec.claimed_jobs(again, "w1")] == [
        (job.id, "acme", 0)]


def test_usage_counts_due_scheduled_laned_jobs(client: redis.Redis) -> None:
    ns = _namespace()

    async def scenario(broker: RedisBroker) -> list[Any]:
        await broker.enqueue([_job("a", delay=0.1, back=0), _job("b")], {})
        await asyncio.sleep(0.2)  # due, not moved by any claim yet
        return await broker.limit_usage([NAME])

    usage = on_redis(scenario, ns)
    assert [(u.group, u.running, u.ready) for u in usage] == [
        (None, 0, 2), ("a", 0, 1), ("b", 0, 1)]


def test_a_queue_without_lanes_writes_no_key_of_limits(client: redis.Redis) -> None:
    ns = _namespace()
    p = f"{{{ns}}}"

    async def scenario(broker: RedisBroker) -> int:
        await broker.enqueue([_job(None) for _ in range(3)], {})
        return len(await broker.claim("w1", ["default"], 10, 30.0,
                                      limits=_limits(concurrency=1, rate=Rate(1, 60.0))))

    assert on_redis(scenario, ns) == 3
    assert _lane_keys(client, ns) == []
    assert not client.exists(f"{p}:buckets", f"{p}:cursors", f"{p}:f:lane")


def test_a_claim_among_many_held_groups_stops_and_the_next_goes_on(
        client: redis.Redis) -> None:
    """400 groups with empty buckets: a claim visits a bounded number of them, and the
    next one starts after the last group visited, so a group further on is reached."""
    ns = _namespace()
    groups = [f"g{n:03d}" for n in range(400)]

    async def scenario(broker: RedisBroker) -> list[list[str]]:
        await broker.enqueue([_job(g) for g in groups for _ in range(2)], {})
        limits = _limits(group_rate=Rate(1, 3600.0))
        first = await broker.claim("w1", ["default"], 400, 30.0, limits=limits)
        assert sorted(j.group or "" for j in first) == groups  # every bucket spent
        late = _job("g300x")  # after the cursor (g399) wraps, beyond a claim's visits
        await broker.enqueue([late], {})
        broker.take_throttled()
        taken = []
        while len(taken) < 10 and not any(taken):
            got = await broker.claim("w1", ["default"], 1, 30.0, limits=limits)
            taken.append([j.group or "" for j in got])
        assert broker.take_throttled()[(NAME, "group_rate")] == len(taken)
        return taken

    taken = on_redis(scenario, ns)
    # each claim goes on where the last one stopped: the late group comes within a few
    assert len(taken) > 1 and taken[-1] == ["g300x"] and not any(taken[:-1])


def test_waiting_without_lanes_sees_held_laned_jobs_as_no_work(client: redis.Redis) -> None:
    """A laned job held by its cap and nothing else: a wait without lanes lasts its timeout
    (a wait with lanes returns at once); an unlaned enqueue, a laned enqueue (one job or
    more) and the end of a laned attempt each end it early, through their wake-up token."""
    ns = _namespace()
    wake = f"{{{ns}}}:q:default:wake"
    limits = _limits(concurrency=1)

    async def waited(broker: RedisBroker, lanes: bool, timeout: float,
                     meanwhile: Callable[[], Awaitable[Any]] | None = None) -> float:
        assert client.llen(wake) == 0  # no token left over: only what happens wakes it

        async def later() -> None:
            if meanwhile is not None:
                await asyncio.sleep(0.2)
                await meanwhile()

        start = time.monotonic()
        await asyncio.gather(broker.wait_for_work(["default"], timeout, lanes=lanes), later())
        return time.monotonic() - start

    async def scenario(broker: RedisBroker) -> None:
        producer = RedisBroker(shared_redis_url(), namespace=ns)
        await producer.open()
        try:
            await broker.enqueue([_job("a"), _job("b")], {})
            (running,) = await broker.claim("w1", ["default"], 5, 30.0, limits=limits)
            assert broker.take_throttled() == {(NAME, "concurrency"): 1}
            client.delete(wake)  # the enqueue's token, which an idle worker would take
            assert await waited(broker, False, 0.5) >= 0.45
            assert await waited(broker, True, 5.0) < 2.5
            plain = _job(None)
            assert await waited(broker, False, 5.0,
                                lambda: producer.enqueue([plain], {})) < 2.5
            assert [j.id for j in await broker.claim("w1", ["default"], 5, 30.0,
                                                     limits=limits)] == [plain.id]
            assert await waited(broker, False, 0.5) >= 0.45
            assert await waited(broker, False, 5.0,
                                lambda: producer.enqueue([_job("c")], {})) < 2.5
            assert await waited(broker, False, 5.0,
                                lambda: producer.enqueue([_job("d"), _job("e")], {})) < 2.5
            done = Outcome(running.id, "w1", OutcomeKind.SUCCEEDED, time.time(),
                           result_json="null", claim=1)
            assert await waited(broker, False, 5.0, lambda: producer.settle([done])) < 2.5
        finally:
            await producer.close()

    on_redis(scenario, ns)


def test_an_admin_retry_resets_the_deferrals(client: redis.Redis) -> None:
    """Jobs put back twice after RateLimited, then dead: retry and retry_dead give each a
    fresh start, deferrals included (the field is dropped, not left at 2)."""
    ns = _namespace()
    p = f"{{{ns}}}"
    jobs = [_job("a"), _job("b")]

    async def scenario(broker: RedisBroker) -> list[tuple[int, int]]:
        await broker.enqueue(jobs, {})
        for _ in range(2):
            await asyncio.sleep(0.01)
            got = await broker.claim("w1", ["default"], 5, 30.0, limits=_limits())
            await broker.settle([Outcome(j.id, "w1", OutcomeKind.RETRY, time.time(),
                                         run_at=time.time(), claim=j.claim,
                                         deferred=True) for j in got])
        await asyncio.sleep(0.01)
        got = await broker.claim("w1", ["default"], 5, 30.0, limits=_limits())
        assert sorted(j.deferrals for j in got) == [2, 2]
        await broker.settle([Outcome(j.id, "w1", OutcomeKind.DEAD, time.time(), error="x",
                                     claim=j.claim) for j in got])
        assert await broker.retry(jobs[0].id) is not None
        assert await broker.retry_dead() == 1
        assert not client.exists(f"{p}:f:deferrals")
        found = [await broker.get(j.id) for j in jobs]
        return [(r.attempts, r.deferrals) for r in found if r is not None]

    assert on_redis(scenario, ns) == [(0, 0), (0, 0)]


def test_scheduled_laned_jobs_are_indexed_by_name_on_every_path(client: redis.Redis) -> None:
    """A laned job is among its name's scheduled laned jobs exactly while it is scheduled:
    enqueued (alone or with others), put back to retry, then cancelled, deleted, promoted
    or claimed once due."""
    ns = _namespace()
    delayed = f"{{{ns}}}:delayed:{part(NAME)}"
    later = [_job("a", delay=60, back=0), _job("b", delay=60, back=0)]
    alone = _job("c", delay=60, back=0)
    soon = [_job("d", delay=0.2, back=0), _job("e", delay=0.2, back=0)]
    plain = _job(None, delay=60, back=0)

    def indexed() -> set[str]:
        return set(client.zrange(delayed, 0, -1))

    async def scenario(broker: RedisBroker) -> None:
        await broker.enqueue([*later, plain], {})
        await broker.enqueue([alone], {})
        await broker.enqueue(soon, {})
        assert indexed() == {j.id for j in [*later, alone, *soon]}
        await broker.cancel(later[0].id)
        assert await broker.delete(later[1].id)
        assert indexed() == {alone.id, *(j.id for j in soon)}
        await asyncio.sleep(0.3)
        assert await broker.promote_scheduled() == 2
        assert indexed() == {alone.id}
        (got,) = await broker.claim("w1", ["default"], 1, 30.0, limits=_limits())
        await broker.settle([Outcome(got.id, "w1", OutcomeKind.RETRY, time.time(),
                                     run_at=time.time() + 0.2, claim=1)])
        assert indexed() == {alone.id, got.id}
        await asyncio.sleep(0.3)
        taken = await broker.claim("w1", ["default"], 5, 30.0, limits=_limits())
        assert {j.id for j in taken} == {j.id for j in soon} and indexed() == {alone.id}
        await broker.cancel(alone.id)
        assert indexed() == set()

    on_redis(scenario, ns)
    assert not client.exists(delayed)


def test_usage_reads_no_other_scheduled_jobs(client: redis.Redis) -> None:
    """Due scheduled laned jobs are counted from their name's own index: 10 001 due
    scheduled jobs of another name ahead of them in the queue change nothing."""
    ns = _namespace()
    others = [_job(None, name="other", delay=0.05, back=0) for _ in range(10_001)]

    async def scenario(broker: RedisBroker) -> list[Any]:
        for start in range(0, len(others), 1000):
            await broker.enqueue(others[start:start + 1000], {})
        await broker.enqueue([_job("a", delay=0.1, back=0), _job("b", delay=0.1, back=0)], {})
        await asyncio.sleep(0.6)  # all due, and no claim or promotion moved them
        return await broker.limit_usage([NAME])

    usage = on_redis(scenario, ns)
    assert [(u.group, u.running, u.ready) for u in usage] == [
        (None, 0, 2), ("a", 0, 1), ("b", 0, 1)]
