"""Redis's set of known queues (``{ns}:queues``): it holds the queues with jobs or settings
only. Names a store kept from before queues were forgotten (every name ever used) are swept
by the maintenance purge, a bounded step at a time; a forgotten queue leaves no key behind.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.errors import TooManyQueues
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from redis_server import RedisServer

pytest.importorskip("redis")

from conveyor.backends.redis import RedisBroker


def job(queue: str) -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="tasks.work", queue=queue, state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


def test_stale_queue_names_are_swept_and_forgotten_queues_leave_no_keys(
        server: RedisServer) -> None:
    async def main() -> None:
        broker = RedisBroker(server.url, namespace="reg")
        await broker.open()
        client = broker._conn().client
        k = broker.keys
        try:
            kept = job("busy")
            gone = job("gone")
            await broker.enqueue([kept, gone], {})
            await broker.set_paused("held", True)
            stale = [f"old-{n}" for n in range(20_000)]
            for start in range(0, len(stale), 5000):
                await client.sadd(k.queues, *stale[start:start + 5000])
            await client.rpush(k.wake("old-1"), "1")
            assert await client.scard(k.queues) == 20_003

            started = time.monotonic()
            await broker.purge_expired()
            print(f"one purge swept {len(stale)} stale names in "
                  f"{time.monotonic() - started:.2f}s")
            assert await client.smembers(k.queues) == {"busy", "gone", "held"}
            assert not await client.exists(k.wake("old-1"))

            assert await broker.delete(gone.id)
            assert await client.smembers(k.queues) == {"busy", "held"}
            assert not await client.exists(*broker.keys.queue_group("gone"))
            await broker.set_paused("held", False)
            assert await client.smembers(k.queues) == {"busy"}
            assert set(await broker.counts()) == {"busy"}
        finally:
            await broker.close()

    asyncio.run(main())


def test_an_enqueue_refused_for_stale_names_sweeps_them_once_in_a_while(
        server: RedisServer) -> None:
    async def main() -> None:
        broker = RedisBroker(server.url, namespace="sweep")
        broker.max_queues = 10
        await broker.open()
        client = broker._conn().client
        try:
            await client.sadd(broker.keys.queues, *(f"old-{n}" for n in range(50)))
            fresh = job("fresh")
            await broker.enqueue([fresh], {})  # refused, swept, stored
            assert await client.smembers(broker.keys.queues) == {"fresh"}
            await client.sadd(broker.keys.queues, *(f"old-{n}" for n in range(50)))
            with pytest.raises(TooManyQueues):  # no second sweep this soon
                await broker.enqueue([job("other")], {})
            blocking = RedisBroker(server.url, namespace="sweep")
            blocking.max_queues = 10
            blocking.enqueue_blocking([job("third")], {})  # its own sweep
            assert await client.smembers(broker.keys.queues) == {"fresh", "third"}
            blocking._blocking_scripts().close()
        finally:
            await broker.close()

    asyncio.run(main())


def test_pausing_or_capping_a_new_queue_counts_against_the_cap_and_sweeps_stale_names(
        server: RedisServer) -> None:
    async def main() -> None:
        broker = RedisBroker(server.url, namespace=f"set{new_id().lower()}")
        broker.max_queues = 10
        await broker.open()
        client = broker._conn().client
        k = broker.keys
        try:
            await client.sadd(k.queues, *(f"old-{n}" for n in range(50)))
            await broker.set_paused("fresh", True)  # refused, swept, stored
            assert await client.smembers(k.queues) == {"fresh"}
            for n in range(9):
                await broker.set_max_queued(f"c{n}", 3)
            for n in range(20):  # no second sweep this soon: refused, nothing stored
                with pytest.raises(TooManyQueues):
                    await broker.set_paused(f"p{n}", True)
                with pytest.raises(TooManyQueues):
                    await broker.set_max_queued(f"p{n}", 3)
            assert await client.scard(k.queues) == 10
            assert await client.smembers(k.paused) == {"fresh"}
            assert await client.hlen(k.caps) == 9
            with pytest.raises(TooManyQueues):  # no enqueue makes a new queue either
                await broker.enqueue([job("uploads")], {})
            await broker.set_paused("fresh", False)
            await broker.enqueue([job("uploads")], {})  # the place freed by resuming
            assert await client.scard(k.queues) == 10
        finally:
            await broker.close()

    asyncio.run(main())
