"""The backend contract of refused enqueues: which error, naming which job, storing nothing,
whatever the order of the problems; and stored queue settings no command wrote (a cap that
is not a whole number) neither break reads nor block enqueues."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from conveyor.backends.base import Broker
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.errors import DuplicateJob, QueueFull

from .conftest import Run, make_job, make_jobs


def test_an_id_met_in_the_middle_of_a_bulk_is_the_one_named(run: Run[Any],
                                                             broker: Broker) -> None:
    existing = make_job()
    run(broker.enqueue([existing], {}))
    before, after = make_jobs(2), make_jobs(2)
    clash = make_job(args=["impostor"])
    clash.id = existing.id
    with pytest.raises(DuplicateJob) as raised:
        run(broker.enqueue([*before, clash, *after], {}))
    assert raised.value.job_id == existing.id
    assert [run(broker.get(j.id)) for j in [*before, *after]] == [None] * 4


def test_an_id_given_twice_in_one_call_stores_nothing(run: Run[Any], broker: Broker) -> None:
    first, other = make_jobs(2)
    twin = make_job(args=["twin"])
    twin.id = first.id
    with pytest.raises(DuplicateJob) as raised:
        run(broker.enqueue([first, other, twin], {}))
    assert raised.value.job_id == first.id
    assert run(broker.get(first.id)) is None and run(broker.get(other.id)) is None


@pytest.mark.parametrize("bulk", [False, True])
def test_an_existing_id_into_a_full_queue_is_a_duplicate(run: Run[Any], broker: Broker,
                                                         bulk: bool) -> None:
    existing = make_job(queue="capped")
    run(broker.enqueue([existing], {}))
    run(broker.set_max_queued("capped", 1))
    clash = make_job(queue="capped", args=["impostor"])
    clash.id = existing.id
    with pytest.raises(DuplicateJob):
        run(broker.enqueue([*make_jobs(1, queue="capped"), clash] if bulk else [clash], {}))
    with pytest.raises(QueueFull):  # a new id into it is refused as full
        run(broker.enqueue([make_job(queue="capped")], {}))


def _store_cap(broker: Broker, run: Run[Any], queue: str, raw: str) -> None:
    """Write a cap no command would write, behind the broker's back."""
    if isinstance(broker, SQLiteBroker):
        run(broker.set_paused(queue, True))  # makes the queue's row
        conn = sqlite3.connect(broker.settings.path)
        conn.execute("UPDATE t_queues SET max_queued=?, paused=0 WHERE name=?", (raw, queue))
        conn.commit()
        conn.close()
    else:
        from conveyor.backends.redis import RedisBroker
        from conveyor.backends.redis.sharded import ShardedRedisBroker

        if isinstance(broker, ShardedRedisBroker):  # the queue's own store holds its cap
            broker = broker.shard(queue)
        assert isinstance(broker, RedisBroker)

        async def write() -> None:
            await broker._cmd("hset", broker.keys.caps, queue, raw)

        run(write())


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "1.5", ""])
def test_a_malformed_stored_cap_is_no_cap(run: Run[Any], broker: Broker, raw: str) -> None:
    _store_cap(broker, run, "odd", raw)
    assert run(broker.queue_settings()) == {}
    run(broker.enqueue(make_jobs(3, queue="odd"), {}))  # bulk
    run(broker.enqueue([make_job(queue="odd")], {}))  # single
    assert run(broker.counts())["odd"]["queued"] == 4
    with pytest.raises(QueueFull):  # the producer's own cap still holds
        run(broker.enqueue([make_job(queue="odd")], {"odd": 4}))


def test_a_cap_set_between_two_enqueues_of_one_commit_holds_for_the_second(
        run: Run[Any], broker: Broker) -> None:
    """SQLite commits concurrent writes together: an enqueue after a cap change in the same
    commit must see the new cap."""
    import asyncio

    async def together() -> list[Any]:
        return list(await asyncio.gather(
            broker.enqueue([make_job(queue="q")], {}),
            broker.set_max_queued("q", 1),
            broker.enqueue(make_jobs(2, queue="q"), {}),
            return_exceptions=True))

    first, _, last = run(together())
    assert first == [None]
    assert isinstance(last, QueueFull)
    assert run(broker.counts())["q"]["queued"] == 1
