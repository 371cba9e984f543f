"""A listing's script on Redis does work linear in the jobs it cuts and stops at a budget:
50 jobs of 1 MB whose argument holds the key ``"kwargs"`` at 62 levels, listed from a private
``redis-server``, each script call timed by the server's slow log."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis.broker import SUMMARY_BATCH
from conveyor.job import JobRecord, JobState
from conveyor.serialization import dumps
from conveyor.summary import JobSummary
from redis_server import RedisServer

JOBS = 50
PREVIEW = 40
#: the slowest script call allowed, in microseconds: each call took 10 s when every job
#: cost Redis 200 ms; a bound far above what the calls take now
SLOWEST = 1_000_000


def _argument() -> Any:
    value: Any = "x" * 1_000_000
    for _ in range(62):
        value = {"b": 0, "kwargs": value}
    return value


def _jobs() -> list[JobRecord]:
    argument = _argument()
    return [JobRecord(f"job{i:03d}", "tasks.big", "default", JobState.QUEUED, [argument],
                      {"n": i, "kwargs": {"kwargs": 1}}, 1.0 + i, 1.0 + i)
            for i in range(JOBS)]


async def _list(url: str, jobs: list[JobRecord]) -> list[JobSummary]:
    broker = RedisBroker(url, namespace="cost")
    await broker.open()
    try:
        for job in jobs:
            assert await broker.enqueue([job], {}) == [None]
        client = redis.Redis.from_url(url)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 10_000)
        client.slowlog_reset()
        client.config_resetstat()
        return await broker.list_summaries(limit=JOBS, preview=PREVIEW)
    finally:
        await broker.close()


def test_listing_big_nested_jobs_is_cut_into_short_script_calls(server: RedisServer) -> None:
    jobs = _jobs()
    summaries = asyncio.run(_list(server.url, jobs))

    client = redis.Redis.from_url(server.url)
    calls = [entry["duration"] for entry in client.slowlog_get(10_000)
             if entry["command"].startswith(b"EVALSHA ") and b":f:lane " in entry["command"]]
    stats = client.info("commandstats")["cmdstat_evalsha"]
    print(f"\nlist_preview on {JOBS} nested jobs of 1 MB: {len(calls)} calls, slowest "
          f"{max(calls) / 1000:.1f} ms, all {sum(calls) / 1000:.1f} ms; commandstats "
          f"evalsha {stats}")
    assert len(calls) > JOBS // SUMMARY_BATCH  # the budget cut the batch into several calls
    assert max(calls) < SLOWEST

    # newest first, and every preview the start of the whole JSON text
    assert [s.record.id for s in summaries] == [job.id for job in reversed(jobs)]
    args = dumps(jobs[0].args)
    for summary, job in zip(summaries, reversed(jobs), strict=True):
        assert summary.previews["args"] == args[:PREVIEW]
        assert summary.truncated == ("args",)
        assert summary.record.kwargs == job.kwargs
