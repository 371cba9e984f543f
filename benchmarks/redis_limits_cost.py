#!/usr/bin/env python3
"""What limits cost the Redis store in two crowded cases; prints the figures.

``.venv/bin/python benchmarks/redis_limits_cost.py [--groups 5000] [--jobs 100000] [--url URL]``

Without ``--url`` it starts a private ``redis-server`` (no persistence) and stops it after.
Figures are the time Redis spent in the script per call (``INFO commandstats``), so the
round trip and the client are left out.

* **held groups**: one laned name with ``--groups`` groups of one ready job each, every
  group's bucket empty (a group rate of 1/h, spent), and one ordinary job in the same
  queue. Figure: a claim of one job (the ordinary one it gets), mean of 200 claims.
* **usage**: ``--jobs`` unrelated queued jobs and as many scheduled ones, and a few laned
  jobs of one name. Figure: ``limit_usage`` of that name, mean of 50 reads, once with the
  scheduled jobs ahead and once with them all due but not yet moved to the queued ones.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from conveyor.backends.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from conveyor.limits import JobLimits, Rate

BATCH = 1000


def job(name: str = "plain", group: str | None = None, delay: float = 0.0) -> JobRecord:
    now = time.time()
    at = now - 1 if delay <= 0 else now + delay
    return JobRecord(id=new_id(), name=name, queue="default",
                     state=JobState.SCHEDULED if delay > 0 else JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=at, group=group)


async def enqueue(broker: RedisBroker, jobs: list[JobRecord]) -> None:
    for start in range(0, len(jobs), BATCH):
        await broker.enqueue(jobs[start:start + BATCH], {})


def script_usec(client: redis.Redis) -> int:
    """The time Redis spent in scripts (EVALSHA) so far, in microseconds."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {"usec": 0})["usec"])


async def script_ms(client: redis.Redis, call: Callable[[], Awaitable[Any]], times: int,
                    prepare: Callable[[], Awaitable[Any]] | None = None) -> float:
    """The mean time Redis spent in the scripts of one ``call`` (``prepare`` runs before
    each, outside the figure)."""
    spent = 0
    for n in range(times + 1):
        if prepare is not None:
            await prepare()
        before = script_usec(client)
        await call()
        if n:  # the first call loads the scripts
            spent += script_usec(client) - before
    return spent / times / 1000


async def held_groups(url: str, groups: int) -> float:
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url, namespace=f"held{new_id().lower()}")
    await broker.open()
    limits = {"laned": JobLimits("laned", group_by="tenant", group_rate=Rate(1, 3600.0))}
    names = [f"g{n:05d}" for n in range(groups)]
    await enqueue(broker, [job("laned", g) for g in names for _ in range(2)])
    while len(await broker.claim("w", ["default"], 1000, 3600.0, limits=limits)) == 1000:
        pass  # every group's bucket spent

    async def claim() -> None:
        got = await broker.claim("w", ["default"], 1, 3600.0, limits=limits)
        assert len(got) == 1 and got[0].group is None, got

    figure = await script_ms(client, claim, 200, lambda: broker.enqueue([job()], {}))
    await broker.close()
    client.close()
    return figure


async def usage(url: str, jobs: int, due: bool) -> float:
    client = redis.Redis.from_url(url)
    broker = RedisBroker(url, namespace=f"usage{new_id().lower()}")
    await broker.open()
    delay = 0.5 if due else 3600.0
    await enqueue(broker, [job() for _ in range(jobs)])
    await enqueue(broker, [job(delay=delay) for _ in range(jobs)])
    await enqueue(broker, [job("laned", f"g{n}") for n in range(5)]
                  + [job("laned", "g0", delay=delay)])
    await asyncio.sleep(delay + 0.1 if due else 0)
    figure = await script_ms(client, lambda: broker.limit_usage(["laned"]), 50)
    await broker.close()
    client.close()
    return figure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(url: str, groups: int, jobs: int) -> None:
    print(f"claim of 1 job, {groups} held groups: {await held_groups(url, groups):.3f} ms")
    for due in (False, True):
        when = "all due, not moved yet" if due else "ahead"
        print(f"limit_usage of 1 name, {jobs} queued + {jobs} scheduled ({when}) unrelated "
              f"jobs: {await usage(url, jobs, due):.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--groups", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--url", help="a Redis to use (default: a private redis-server)")
    options = parser.parse_args()
    if options.url:
        asyncio.run(measure(options.url, options.groups, options.jobs))
        return
    where = tempfile.mkdtemp(prefix="conveyor-bench-")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", where],
                              stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        asyncio.run(measure(url, options.groups, options.jobs))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
