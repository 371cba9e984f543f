"""Limits in the SQLite store: what the contract suite cannot see from outside.

Laned jobs wait in their own index, so a claim of a queue without them pays one index seek,
and held-back laned jobs cost the claim of the others no scan; every statement of a laned
claim reads through an index, without a sort. The lanes are partial indexes on the job's
state and group, so every way in and out of the queued state keeps them right; the
round-robin cursors and the buckets are in the store, shared by every broker, and a bucket
that filled up again is purged.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.conftest import make_job
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.clock import lease_now
from conveyor.backends.sqlite.lanes import Limiter, usage
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind
from conveyor.limits import JobLimits, Rate
from conveyor.priority import QueueWeights
from store_helpers import plan, sqlite_brokers, statements

NS = "l"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'limits.db'}"


@pytest.fixture
def brokers(url: str) -> Iterator[Callable[[], SQLiteBroker]]:
    """``make()`` opens another broker on the test's store; all are closed at the end."""
    yield from sqlite_brokers(url, NS)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_no_scan(url: str, statement: str) -> None:
    """``statement`` reads the jobs through an index: no scan of the table, no sort."""
    steps = plan(url, statement)
    assert not any(step.startswith(f"SCAN {NS}_jobs") for step in steps), (statement, steps)
    assert not any("TEMP B-TREE" in step for step in steps), (statement, steps)


def laned(count: int, group: str = "", name: str = "capped", **options: Any) -> list[JobRecord]:
    options.setdefault("run_at", time.time() - 1)
    return [make_job(name=name, group=group, **options) for _ in range(count)]


CAPPED = {"capped": JobLimits("capped", concurrency=100, group_by="tenant",
                              group_concurrency=5, rate=Rate(1000, 1.0, 1000),
                              group_rate=Rate(1000, 1.0, 1000))}


def fill(broker: SQLiteBroker) -> None:
    """Unlaned and laned jobs in every waiting state, some laned ones running."""
    now = time.time()
    run(broker.enqueue([make_job(run_at=now - k / 100) for k in range(30)], {}))
    run(broker.enqueue([make_job(delay=60 + k) for k in range(10)], {}))
    for tenant in ("a", "b", "c", "d"):
        run(broker.enqueue(laned(20, tenant, run_at=now - 5), {}))
    run(broker.enqueue(laned(10, "a", run_at=now + 60), {}))
    run(broker.claim("w0", ["default"], 6, 30.0, limits=CAPPED))


def test_a_laned_claim_reads_every_table_through_an_index(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    fill(broker)
    now, until = time.time(), time.time() + 30

    def one(conn: sqlite3.Connection) -> None:
        broker._claim_one(conn, "w1", "default", 8, now, until,
                          Limiter(conn, NS, now, lease_now(), CAPPED))

    def weighted(conn: sqlite3.Connection) -> None:
        broker._claim_weighted(conn, "w1", ["default", "other"], 8, now, until,
                               QueueWeights({"default": 2, "other": 1}),
                               Limiter(conn, NS, now, lease_now(), CAPPED))

    for fn in (one, weighted):
        seen = statements(url, fn)
        lanes = [s for s in seen if "grp IS NOT NULL" in s]
        assert any("run_at - boost, run_at, id) >" in s for s in lanes), seen
        assert any("state='running'" in s for s in lanes), seen
        for statement in seen:
            if statement.startswith(("SELECT", "WITH", "UPDATE")):
                assert_no_scan(url, statement)
        reads = [s for s in seen if f"FROM {NS}_buckets" in s or f"FROM {NS}_turns" in s]
        assert reads, seen
        for statement in reads:
            assert not any(step.startswith("SCAN") for step in plan(url, statement)), statement


def test_a_queue_without_laned_jobs_pays_one_seek(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    now = time.time()
    run(broker.enqueue([make_job(run_at=now - k) for k in range(30)], {}))
    run(broker.enqueue(laned(50, "a", queue="other"), {}))
    seen = statements(url, lambda conn: broker._claim_one(
        conn, "w1", "default", 5, now, now + 30))
    lanes = [s for s in seen if "grp IS NOT NULL" in s]
    assert len(lanes) == 1 and lanes[0].startswith("WITH RECURSIVE"), seen
    assert not any("_buckets" in s or "_turns" in s for s in seen), seen


def test_held_laned_jobs_cost_the_other_jobs_no_scan(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    """A flood of laned jobs held by a full cap: a claim of the queue reads the held name's
    running count and one group, not its jobs."""
    broker = brokers()
    run(broker.enqueue(laned(2000, "a"), {}))
    limits = {"capped": JobLimits("capped", concurrency=1)}
    assert len(run(broker.claim("w0", ["default"], 5, 30.0, limits=limits))) == 1
    run(broker.enqueue([make_job() for _ in range(3)], {}))
    now = time.time()
    seen = statements(url, lambda conn: broker._claim_one(
        conn, "w1", "default", 5, now, now + 30,
        Limiter(conn, NS, now, lease_now(), limits)))
    for statement in seen:
        if statement.startswith(("SELECT", "WITH", "UPDATE")):
            assert_no_scan(url, statement)
    assert len(run(broker.claim("w1", ["default"], 5, 30.0, limits=limits))) == 3


def test_every_way_in_and_out_of_queued_keeps_the_lanes(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    limits = {"capped": JobLimits("capped", group_by="t", group_concurrency=1)}
    gone, kept, later = laned(1, "a"), laned(1, "a"), laned(1, "b", run_at=time.time() + 0.3)
    cancelled = laned(1, "c")
    run(broker.enqueue(gone + kept + later + cancelled, {}))
    assert run(broker.delete(gone[0].id))
    assert run(broker.cancel(cancelled[0].id)).state is JobState.CANCELLED
    (first,) = run(broker.claim("w1", ["default"], 5, 30.0, limits=limits))
    assert first.id == kept[0].id
    run(broker.settle([Outcome(first.id, "w1", OutcomeKind.DEAD, time.time(),
                               error="x", claim=1)]))
    assert run(broker.get(first.id)).state is JobState.DEAD
    time.sleep(0.35)  # the scheduled one falls due; the cancelled one comes back
    run(broker.retry(cancelled[0].id))
    got = run(broker.claim("w1", ["default"], 5, 30.0, limits=limits))
    assert sorted(j.group for j in got) == ["b", "c"]
    # a new priority moves a laned job within its group
    low, high = laned(1, "d", run_at=time.time() - 10), laned(1, "d")
    run(broker.enqueue(low + high, {}))
    run(broker.set_priority(high[0].id, 5))
    (first,) = run(broker.claim("w1", ["default"], 1, 30.0, limits=limits))
    assert first.id == high[0].id


def test_the_turns_are_shared_by_every_broker(brokers: Callable[[], SQLiteBroker]) -> None:
    first, second = brokers(), brokers()
    run(first.enqueue(laned(5, "a") + laned(5, "b") + laned(5, "c"), {}))
    order = [run(b.claim("w", ["default"], 1, 30.0))[0].group
             for b in (first, second, first, second, first, second)]
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_a_batch_claim_goes_round_robin_and_merges_by_rank(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    now = time.time()
    run(broker.enqueue(laned(10, "a", run_at=now - 30) + laned(10, "b", run_at=now - 30), {}))
    run(broker.enqueue([make_job(run_at=now - 20) for _ in range(2)], {}))
    got = run(broker.claim("w", ["default"], 8, 30.0))
    assert [j.group for j in got[:6]] == ["a", "b", "a", "b", "a", "b"]
    assert collections.Counter(j.group for j in got) == {"a": 4, "b": 4}
    newer = run(broker.claim("w", ["default"], 20, 30.0))
    assert [j.group for j in newer][:2] == ["a", "b"]
    assert None in {j.group for j in newer}


def test_a_bucket_spent_is_kept_and_a_full_one_purged(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    run(broker.enqueue(laned(3, "a"), {}))
    limits = {"capped": JobLimits("capped", group_by="t", rate=Rate(20, 1.0, 1),
                                  group_rate=Rate(20, 1.0, 2))}
    assert len(run(broker.claim("w", ["default"], 5, 30.0, limits=limits))) == 1
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    rows = dict(conn.execute(f"SELECT key, tokens FROM {NS}_buckets"))
    assert rows == {'["capped"]': 0.0, '["capped","a"]': 1.0}
    run(broker.purge_expired())
    assert conn.execute(f"SELECT count(*) FROM {NS}_buckets").fetchone() == (2,)
    time.sleep(0.15)  # both full again
    run(broker.purge_expired())
    assert conn.execute(f"SELECT count(*) FROM {NS}_buckets").fetchone() == (0,)
    conn.close()


def test_a_weighted_claim_gives_a_held_queue_s_share_away(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    run(broker.enqueue(laned(10, "a", queue="held"), {}))
    run(broker.enqueue([make_job(queue="free") for _ in range(10)], {}))
    limits = {"capped": JobLimits("capped", concurrency=2)}
    weights = QueueWeights({"held": 5, "free": 1})
    got = run(broker.claim("w", ["held", "free"], 8, 30.0, weights=weights, limits=limits))
    assert collections.Counter(j.queue for j in got) == {"held": 2, "free": 6}
    again = run(broker.claim("w", ["held", "free"], 8, 30.0, weights=weights, limits=limits))
    assert collections.Counter(j.queue for j in again) == {"free": 4}
    assert broker.take_throttled()[("capped", "concurrency")] >= 1


def test_the_throttled_claim_writes_nothing(url: str, brokers: Callable[[], SQLiteBroker]
                                            ) -> None:
    """A claim held back by an empty bucket moves no cursor and spends nothing."""
    broker = brokers()
    run(broker.enqueue(laned(3, "a") + laned(3, "b"), {}))
    limits = {"capped": JobLimits("capped", rate=Rate(1, 3600.0, 1))}
    assert len(run(broker.claim("w", ["default"], 5, 30.0, limits=limits))) == 1
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    before = conn.execute(f"SELECT * FROM {NS}_buckets").fetchall() + conn.execute(
        f"SELECT * FROM {NS}_turns").fetchall()
    assert run(broker.claim("w", ["default"], 5, 30.0, limits=limits)) == []
    after = conn.execute(f"SELECT * FROM {NS}_buckets").fetchall() + conn.execute(
        f"SELECT * FROM {NS}_turns").fetchall()
    conn.close()
    assert before == after


def test_a_wait_without_lanes_passes_over_held_laned_jobs(
        brokers: Callable[[], SQLiteBroker]) -> None:
    """A held laned job and nothing else: a wait with ``lanes=False`` lasts its timeout
    (a wait with lanes returns at once). Another connection ends it early when it enqueues
    an unlaned job or a laned one, or ends a running laned job; so does a laned job coming
    due."""
    broker, other = brokers(), brokers()
    run(broker.enqueue(laned(2, "a"), {}))
    limits = {"capped": JobLimits("capped", concurrency=1)}
    (running,) = run(broker.claim("w", ["default"], 5, 30.0, limits=limits))
    assert run(broker.claim("w", ["default"], 5, 30.0, limits=limits)) == []
    started = time.monotonic()
    run(broker.wait_for_work(["default"], 5.0))
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    run(broker.wait_for_work(["default"], 0.5, lanes=False))
    assert time.monotonic() - started >= 0.45

    def ended_early(change: Callable[[], Any]) -> bool:
        async def later() -> None:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(change)

        async def both() -> None:
            await asyncio.gather(broker.wait_for_work(["default"], 10.0, lanes=False),
                                 later())

        started = time.monotonic()
        run(both())
        return time.monotonic() - started < 5.0

    assert ended_early(lambda: run(other.enqueue([make_job()], {})))
    assert [j.group for j in run(broker.claim("w", ["default"], 5, 30.0, limits=limits))] == [
        None]
    assert ended_early(lambda: run(other.enqueue(laned(1, "b"), {})))
    assert ended_early(lambda: run(other.settle([Outcome(
        running.id, "w", OutcomeKind.SUCCEEDED, time.time(), result_json="null",
        claim=1)])))
    assert len(run(broker.claim("w", ["default"], 1, 30.0, limits=limits))) == 1
    run(other.enqueue(laned(1, "c", run_at=time.time() + 0.3), {}))
    started = time.monotonic()
    run(broker.wait_for_work(["default"], 10.0, lanes=False))
    assert time.monotonic() - started < 5.0


def test_a_claim_among_many_held_groups_stops_and_the_next_goes_on(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    """300 groups with empty buckets: a claim of one job visits 64 + 2 of them, and the
    next one starts after the last group visited, so a group further on is reached; an
    ordinary job is taken all the same."""
    broker = brokers()
    groups = [f"g{n:03d}" for n in range(300)]
    run(broker.enqueue([job for g in groups for job in laned(2, g)], {}))
    limits = {"capped": JobLimits("capped", group_by="t", group_rate=Rate(1, 3600.0))}
    first = run(broker.claim("w", ["default"], 300, 30.0, limits=limits))
    assert sorted(j.group or "" for j in first) == groups  # every bucket spent
    run(broker.enqueue(laned(1, "g200x"), {}))
    broker.take_throttled()
    taken = [[j.group for j in run(broker.claim("w", ["default"], 1, 30.0, limits=limits))]
             for _ in range(4)]
    assert taken == [[], [], [], ["g200x"]]
    assert broker.take_throttled()[("capped", "group_rate")] == 4
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    assert conn.execute(f"SELECT grp FROM {NS}_turns").fetchall() == [("g200x",)]
    conn.close()
    plain = make_job()
    run(broker.enqueue([plain], {}))
    assert [j.id for j in run(broker.claim("w", ["default"], 1, 30.0, limits=limits))] == [
        plain.id]
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    assert conn.execute(f"SELECT grp FROM {NS}_turns").fetchall() == [("g266",)]
    conn.close()


def test_limit_usage_reads_only_the_name_s_jobs_through_indexes(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    """Unrelated queued and scheduled jobs: every statement of limit_usage reads through an
    index (the queues with laned jobs, then the name's lanes in each; its scheduled laned
    jobs), without a scan or a sort."""
    broker = brokers()
    fill(broker)
    run(broker.enqueue(laned(2, "x", queue="other") + laned(3, "y", name="elsewhere"), {}))
    now = time.time()
    seen = statements(url, lambda conn: usage(conn, NS, ["capped", "elsewhere"], 20, now,
                                               lease_now()))
    assert any("state='scheduled'" in s for s in seen), seen
    for statement in seen:
        assert_no_scan(url, statement)
        steps = plan(url, statement)
        assert not any(f"{NS}_jobs_state" in step for step in steps), (statement, steps)
    found = run(broker.limit_usage(["capped", "elsewhere"]))
    totals = {u.name: u.ready for u in found if u.group is None}
    assert totals == {"capped": 80 - 6 + 2, "elsewhere": 3}


def test_an_admin_retry_starts_the_deferrals_afresh(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    one, other = make_job(), make_job()
    run(broker.enqueue([one, other], {}))
    for _ in range(2):  # each deferred once, then dead
        for job in run(broker.claim("w", ["default"], 2, 30.0)):
            kind, deferred = ((OutcomeKind.RETRY, True) if job.deferrals == 0
                              else (OutcomeKind.DEAD, False))
            run(broker.settle([Outcome(job.id, "w", kind, time.time(), run_at=time.time(),
                                       claim=job.claim, deferred=deferred)]))
    assert [run(broker.get(j.id)).deferrals for j in (one, other)] == [1, 1]
    assert run(broker.retry(one.id)).deferrals == 0
    assert run(broker.retry_dead("default")) == 1
    assert run(broker.get(other.id)).deferrals == 0
