#!/usr/bin/env python3
"""What limits cost the SQLite store in two crowded cases; prints the figures.

``.venv/bin/python benchmarks/sqlite_limits_cost.py [--groups 5000] [--jobs 100000]``

* **held groups**: one laned name with ``--groups`` groups of one ready job each, every
  group's bucket empty (a group rate of 1/h, spent), and ordinary jobs in the same queue.
  Figure: the time inside the write transaction of a claim of one job (the ordinary one it
  gets), median of 30 claims, each rolled back so that all see the same store.
* **usage**: ``--jobs`` unrelated queued jobs and as many scheduled ones, and a few laned
  jobs of one name. Figure: ``limit_usage`` of that name, median of 20 reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.clock import lease_now
from conveyor.backends.sqlite.lanes import Limiter
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from conveyor.limits import JobLimits, Rate

NS = "bench"
BATCH = 5000


def job(name: str = "plain", group: str | None = None, run_at: float | None = None) -> JobRecord:
    now = time.time()
    at = now - 1 if run_at is None else run_at
    return JobRecord(id=new_id(), name=name, queue="default",
                     state=JobState.SCHEDULED if at > now else JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=at, group=group)


def enqueue(broker: SQLiteBroker, jobs: list[JobRecord]) -> None:
    for start in range(0, len(jobs), BATCH):
        asyncio.run(broker.enqueue(jobs[start:start + BATCH], {}))


def median_ms(fn: Callable[[], object], times: int) -> float:
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) * 1000


def held_groups(where: Path, groups: int) -> float:
    url = f"sqlite:///{where / 'held.db'}"
    broker = SQLiteBroker(url, namespace=NS)
    limits = {"laned": JobLimits("laned", group_by="tenant", group_rate=Rate(1, 3600.0))}
    names = [f"g{n:05d}" for n in range(groups)]
    enqueue(broker, [job("laned", g) for g in names])
    while asyncio.run(broker.claim("w", ["default"], 1000, 3600.0, limits=limits)):
        pass  # every group's bucket spent
    enqueue(broker, [job("laned", g) for g in names] + [job() for _ in range(100)])
    broker.close_blocking()
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    def claim() -> None:
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        got = broker._claim_one(conn, "w", "default", 1, now, lease_now() + 30,
                                Limiter(conn, NS, now, lease_now(), limits))
        conn.execute("ROLLBACK")
        assert len(got) == 1 and got[0].group is None, got

    figure = median_ms(claim, 30)
    conn.close()
    return figure


def usage(where: Path, jobs: int) -> float:
    url = f"sqlite:///{where / 'usage.db'}"
    broker = SQLiteBroker(url, namespace=NS)
    later = time.time() + 3600
    enqueue(broker, [job() for _ in range(jobs)] + [job(run_at=later) for _ in range(jobs)])
    enqueue(broker, [job("laned", f"g{n}") for n in range(5)]
            + [job("laned", "g0", run_at=later)])
    figure = median_ms(lambda: asyncio.run(broker.limit_usage(["laned"])), 20)
    broker.close_blocking()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=100_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as where:
        print(f"claim of 1 job, {options.groups} held groups: "
              f"{held_groups(Path(where), options.groups):.2f} ms")
        print(f"limit_usage of 1 name, {options.jobs} queued + {options.jobs} scheduled "
              f"unrelated jobs: {usage(Path(where), options.jobs):.2f} ms")


if __name__ == "__main__":
    main()
