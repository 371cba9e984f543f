"""The backend contract of unique keys and idempotency records.

``Broker.enqueue`` answers per job ``None`` (stored) or the id of the job holding its unique
key (deduplicated, not stored). Like the rest of the contract suite these tests use the
abstract Broker methods only, so they run against every backend in ``conftest.FACTORIES``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor.backends.base import Broker
from conveyor.errors import DuplicateJob, QueueFull
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind

from .conftest import Run, make_job

LEASE = 30.0
#: a lease or hold short enough to run out within a test
SHORT = 0.1
#: long enough for SHORT to have passed
PAST_SHORT = 0.25


def keyed(key: str, hold: float | None = None, **options: Any) -> JobRecord:
    """A job holding ``key`` until it is final, or for ``hold`` seconds at most."""
    job = make_job(**options)
    job.unique_key = key
    job.unique_until = None if hold is None else job.created_at + hold
    return job


def ids(run: Run[Any], broker: Broker, **filters: Any) -> set[str]:
    return {job.id for job in run(broker.list_jobs(**filters))}


def settle(run: Run[Any], broker: Broker, job: JobRecord, kind: OutcomeKind) -> None:
    run(broker.settle([Outcome(job.id, "w1", kind, time.time(), queue=job.queue,
                               claim=job.claim)]))


def test_a_held_key_stores_nothing_and_names_its_holder(run: Run[Any], broker: Broker) -> None:
    first, second = keyed("sync:user:42"), keyed("sync:user:42")
    assert run(broker.enqueue([first], {})) == [None]
    assert run(broker.enqueue([second], {})) == [first.id]
    assert run(broker.get(second.id)) is None
    assert ids(run, broker) == {first.id}


def test_other_keys_and_jobs_without_a_key_are_not_held(run: Run[Any], broker: Broker) -> None:
    assert run(broker.enqueue([keyed("a")], {})) == [None]
    assert run(broker.enqueue([keyed("b")], {})) == [None]
    assert run(broker.enqueue([make_job()], {})) == [None]
    assert run(broker.enqueue([make_job()], {})) == [None]
    assert len(ids(run, broker)) == 4


def test_a_scheduled_or_running_holder_keeps_its_key(run: Run[Any], broker: Broker) -> None:
    later = keyed("later", delay=60)
    now = keyed("now")
    assert run(broker.enqueue([later, now], {})) == [None, None]
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    assert claimed.id == now.id
    assert run(broker.enqueue([keyed("later"), keyed("now")], {})) == [later.id, now.id]


@pytest.mark.parametrize("kind", [OutcomeKind.SUCCEEDED, OutcomeKind.DEAD,
                                  OutcomeKind.CANCELLED])
def test_a_final_holder_frees_its_key(run: Run[Any], broker: Broker, kind: OutcomeKind) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    settle(run, broker, claimed, kind)
    again = keyed("k")
    assert run(broker.enqueue([again], {})) == [None]
    assert run(broker.enqueue([keyed("k")], {})) == [again.id]


def test_a_retried_attempt_keeps_the_key(run: Run[Any], broker: Broker) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    run(broker.settle([Outcome(first.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time() + 60, queue="default",
                               claim=claimed.claim)]))
    assert run(broker.enqueue([keyed("k")], {})) == [first.id]


def test_cancelling_frees_the_key(run: Run[Any], broker: Broker) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    cancelled = run(broker.cancel(first.id))
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert run(broker.enqueue([keyed("k")], {})) == [None]


def test_cancelling_a_running_holder_frees_the_key_when_it_ends(
    run: Run[Any], broker: Broker
) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    run(broker.cancel(first.id))  # asked: it still runs
    assert run(broker.enqueue([keyed("k")], {})) == [first.id]
    settle(run, broker, claimed, OutcomeKind.CANCELLED)
    assert run(broker.enqueue([keyed("k")], {})) == [None]


def test_deleting_the_holder_frees_the_key(run: Run[Any], broker: Broker) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    assert run(broker.delete(first.id))
    assert run(broker.enqueue([keyed("k")], {})) == [None]


def test_a_hold_runs_out_after_unique_for(run: Run[Any], broker: Broker) -> None:
    first = keyed("k", hold=SHORT)
    run(broker.enqueue([first], {}))
    assert run(broker.enqueue([keyed("k")], {})) == [first.id]
    time.sleep(PAST_SHORT)
    second = keyed("k")
    assert run(broker.enqueue([second], {})) == [None]  # the first still waits
    assert ids(run, broker, state=JobState.QUEUED) == {first.id, second.id}
    assert run(broker.enqueue([keyed("k")], {})) == [second.id]  # held until final


def test_lease_recovery_keeps_the_key(run: Run[Any], broker: Broker) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    run(broker.claim("w-gone", ["default"], 1, SHORT))
    time.sleep(PAST_SHORT)
    recovery = run(broker.recover_expired(max_recoveries=3))
    assert recovery.requeued == 1
    assert run(broker.get(first.id)).state is JobState.QUEUED  # type: ignore[union-attr]
    assert run(broker.enqueue([keyed("k")], {})) == [first.id]


def test_a_purge_keeps_held_keys_and_drops_free_ones(run: Run[Any], broker: Broker) -> None:
    held, freed = keyed("held"), keyed("freed")
    run(broker.enqueue([held, freed], {}))
    run(broker.cancel(freed.id))
    assert _key_records(run, broker) == 2
    run(broker.purge_expired())
    assert _key_records(run, broker) == 1  # the freed key's record is gone, the held one kept
    assert run(broker.enqueue([keyed("held"), keyed("freed")], {})) == [held.id, None]


def _key_records(run: Run[Any], broker: Broker) -> int:
    """How many unique-key records the store keeps, read behind the broker's back."""
    import sqlite3

    from conveyor.backends.sqlite import SQLiteBroker

    if isinstance(broker, SQLiteBroker):
        conn = sqlite3.connect(broker.settings.path)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {broker.ns}_unique").fetchone()[0])
        finally:
            conn.close()
    from conveyor.backends.redis import RedisBroker
    from conveyor.backends.redis.sharded import ShardedRedisBroker

    if isinstance(broker, ShardedRedisBroker):  # each queue keeps its own keys
        sharded = broker
        return sum(_key_records(run, sharded.shard(q)) for q in run(sharded._known()))
    assert isinstance(broker, RedisBroker)

    async def count() -> int:
        return int(await broker._cmd("hlen", broker.keys.unique))

    return run(count())


def test_bulk_reports_per_item(run: Run[Any], broker: Broker) -> None:
    holder = keyed("held")
    run(broker.enqueue([holder], {}))
    items = [make_job(), keyed("held"), keyed("new"), keyed("new"), make_job(queue="other")]
    result = run(broker.enqueue(items, {}))
    assert result == [None, holder.id, None, items[2].id, None]
    assert ids(run, broker) == {holder.id, items[0].id, items[2].id, items[4].id}


def test_bulk_of_held_keys_only_stores_nothing(run: Run[Any], broker: Broker) -> None:
    holder = keyed("held")
    run(broker.enqueue([holder], {}))
    assert run(broker.enqueue([keyed("held"), keyed("held")], {})) == [holder.id, holder.id]
    assert ids(run, broker) == {holder.id}


def test_a_duplicate_id_stores_none_of_the_others(run: Run[Any], broker: Broker) -> None:
    existing = make_job()
    run(broker.enqueue([existing], {}))
    clash = keyed("fresh")
    clash.id = existing.id
    items = [keyed("other"), clash]
    with pytest.raises(DuplicateJob) as info:
        run(broker.enqueue(items, {}))
    assert info.value.job_id == existing.id
    assert ids(run, broker) == {existing.id}
    # nothing took the keys: they store now
    assert run(broker.enqueue([keyed("other"), keyed("fresh")], {})) == [None, None]


def test_a_duplicate_id_still_raises_alone(run: Run[Any], broker: Broker) -> None:
    existing = keyed("k")
    run(broker.enqueue([existing], {}))
    again = make_job()
    again.id = existing.id
    with pytest.raises(DuplicateJob) as info:
        run(broker.enqueue([again], {}))
    assert info.value.job_id == existing.id
    other_key = keyed("other")
    other_key.id = existing.id
    with pytest.raises(DuplicateJob):
        run(broker.enqueue([other_key], {}))
    assert run(broker.enqueue([keyed("other")], {})) == [None]


def test_a_full_queue_stores_none_and_held_items_do_not_count(
    run: Run[Any], broker: Broker
) -> None:
    holder = keyed("held", queue="q")
    run(broker.enqueue([holder], {"q": 3}))
    # two new and one held: fills the queue exactly
    assert run(broker.enqueue([keyed("held", queue="q"), make_job(queue="q"),
                               keyed("x", queue="q")], {"q": 3})) == [holder.id, None, None]
    with pytest.raises(QueueFull):
        run(broker.enqueue([keyed("y", queue="q"), make_job(queue="q")], {"q": 3}))
    assert len(ids(run, broker, queue="q")) == 3
    # a held key answers even when the queue is full
    assert run(broker.enqueue([keyed("held", queue="q")], {"q": 3})) == [holder.id]
    assert run(broker.enqueue([keyed("y", queue="q")], {"q": 4})) == [None]


def test_concurrent_enqueues_of_one_key_store_one(run: Run[Any], broker: Broker) -> None:
    """Calls made at once (which a backend may store in one go) see each other's keys."""

    async def at_once() -> list[list[str | None]]:
        return await asyncio.gather(*(broker.enqueue([keyed("one")], {}) for _ in range(32)))

    results = run(at_once())
    stored = [r for (r,) in results if r is None]
    holders = {r for (r,) in results if r is not None}
    assert len(stored) == 1 and len(holders) == 1
    assert ids(run, broker) == holders


def test_concurrent_bulk_enqueues_share_keys(run: Run[Any], broker: Broker) -> None:
    async def at_once() -> list[list[str | None]]:
        return await asyncio.gather(*(broker.enqueue([keyed("a"), make_job(), keyed("b")], {})
                                      for _ in range(8)))

    results = run(at_once())
    assert sum(r[0] is None for r in results) == 1
    assert sum(r[2] is None for r in results) == 1
    assert all(r[1] is None for r in results)
    assert len(ids(run, broker)) == 2 + 8


def test_a_second_connection_sees_the_key(run: Run[Any], broker: Broker,
                                          make_broker: Any) -> None:
    first = keyed("k")
    run(broker.enqueue([first], {}))
    other = make_broker()
    assert run(other.enqueue([keyed("k")], {})) == [first.id]


def test_blocking_enqueue_reports_holders(run: Run[Any], broker: Broker) -> None:
    first = keyed("k")
    try:
        assert broker.enqueue_blocking([first], {}) == [None]
    except NotImplementedError:
        pytest.skip("this backend has no blocking enqueue")
    assert broker.enqueue_blocking([keyed("k"), keyed("z")], {}) == [first.id, None]


# -- idempotency records ----------------------------------------------------------------------


def test_an_idempotency_record_answers_until_it_expires(run: Run[Any], broker: Broker) -> None:
    assert run(broker.remember_idempotency("key-1", "d1", "job-1", SHORT * 3)) is None
    assert run(broker.remember_idempotency("key-1", "d2", "job-2", 60)) == ("d1", "job-1")
    assert run(broker.remember_idempotency("key-2", "d2", "job-2", 60)) is None
    time.sleep(SHORT * 3 + 0.1)
    assert run(broker.remember_idempotency("key-1", "d3", "job-3", 60)) is None
    assert run(broker.remember_idempotency("key-1", "d4", "job-4", 60)) == ("d3", "job-3")


def test_forgetting_an_idempotency_record_names_its_job(run: Run[Any], broker: Broker) -> None:
    run(broker.remember_idempotency("key", "d1", "job-1", 60))
    run(broker.forget_idempotency("key", "job-other"))
    assert run(broker.remember_idempotency("key", "d2", "job-2", 60)) == ("d1", "job-1")
    run(broker.forget_idempotency("key", "job-1"))
    assert run(broker.remember_idempotency("key", "d2", "job-2", 60)) is None


def test_idempotency_records_survive_a_purge(run: Run[Any], broker: Broker) -> None:
    run(broker.remember_idempotency("key", "d1", "job-1", 60))
    run(broker.purge_expired())
    assert run(broker.remember_idempotency("key", "d2", "job-2", 60)) == ("d1", "job-1")
