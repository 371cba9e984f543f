"""Per-minute job statistics: the worker's recorder, a real worker on SQLite and Redis, a
store that is down when the recorder flushes, and what each backend does on its own.

The contract tests in ``tests/contract`` cover ``add_stats`` and ``stats`` on every backend.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import WorkerThread
from conveyor import Conveyor, JobCancelled, JobContext, JobNotFound, JobRecord, JobState
from conveyor.backends.redis import RedisBroker, codec
from conveyor.backends.redis.scripts import source
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.schema import Settings, connect, ddl
from conveyor.ids import new_id
from conveyor.stats import STATS_KEEP, MinuteStats, StatsRecorder, minute_of
from conveyor.worker import outcomes
from conveyor.worker.pool import Worker
from polling import wait_until
from redis_server import RedisServer, shared_redis_url


def record(queue: str = "default", attempts: int = 1, recoveries: int = 0,
           created_at: float | None = None, run_at: float | None = None) -> JobRecord:
    """A claimed job as the worker holds it."""
    now = time.time()
    created = now if created_at is None else created_at
    return JobRecord(id=new_id(), name="tasks.work", queue=queue, state=JobState.RUNNING,
                     args=[], kwargs={}, created_at=created,
                     run_at=created if run_at is None else run_at, attempts=attempts,
                     recoveries=recoveries, worker_id="w1")


def totals(rows: list[MinuteStats]) -> dict[str, MinuteStats]:
    """The rows summed over minutes, by queue (minute 0), with ``wait_total`` rounded."""
    summed: dict[str, MinuteStats] = {}
    for row in rows:
        total = summed.setdefault(row.queue, MinuteStats(0, row.queue))
        total.succeeded += row.succeeded
        total.failed += row.failed
        total.dead += row.dead
        total.cancelled += row.cancelled
        total.started += row.started
        total.wait_total += row.wait_total
    return summed


def counts(row: MinuteStats) -> tuple[int, int, int, int, int]:
    """``(succeeded, failed, dead, cancelled, started)``."""
    return row.succeeded, row.failed, row.dead, row.cancelled, row.started


# -- the recorder ---------------------------------------------------------------------------------
def test_recorder_counts_first_attempts_and_their_wait() -> None:
    recorder = StatsRecorder()
    now = time.time()
    recorder.started(record(created_at=now - 5, run_at=now - 3))  # waited 3 s since run_at
    recorder.started(record(created_at=now - 2))  # waited 2 s since the enqueue
    recorder.started(record(attempts=2, recoveries=1))  # its first attempt was lost: first
    recorder.started(record(attempts=2))  # a retry: not a first start
    recorder.started(record(attempts=4, recoveries=1))
    recorder.started(record(queue="other", run_at=now + 30))  # early: no negative wait
    rows = totals(recorder.pending())
    assert counts(rows["default"]) == (0, 0, 0, 0, 3)
    assert 5.0 <= rows["default"].wait_total < 5.0 + 1.0
    assert (rows["other"].started, rows["other"].wait_total) == (1, 0.0)


def test_recorder_counts_ends_by_kind_and_not_requeues(app: Conveyor) -> None:
    @app.job(retries=1)
    def work() -> None:
        return None

    job_fn = app.registry[work.name]
    recorder = StatsRecorder()
    first, last = record(), record(attempts=2)
    ends = [
        (first, outcomes.succeeded(first, "w1", 1)),
        (first, outcomes.failed(first, "w1", job_fn, ValueError("again"))),  # retry
        (last, outcomes.failed(last, "w1", job_fn, ValueError("no more"))),  # dead
        (first, outcomes.dead(first, "w1", "gone")),
        (first, outcomes.cancelled(first, "w1")),
        (first, outcomes.requeued(first, "w1")),  # shutdown: not an end
    ]
    for job, outcome in ends:
        recorder.ended(job, outcome)
    assert counts(totals(recorder.pending())["default"]) == (1, 1, 2, 1, 0)


def test_recorder_puts_late_reports_in_their_own_minute() -> None:
    recorder = StatsRecorder()
    job = record()
    now = outcomes.succeeded(job, "w1", None)
    earlier = outcomes.succeeded(job, "w1", None)
    earlier.finished_at -= 60
    recorder.ended(job, now)
    recorder.ended(job, earlier)  # reported after a later one: the slow path
    recorder.ended(job, now)
    rows = recorder.pending()
    assert [(r.minute, r.succeeded) for r in rows] == [
        (minute_of(earlier.finished_at), 1), (minute_of(now.finished_at), 2)
    ]


def test_recorder_counts_jobs_that_died_in_recovery_in_their_minute() -> None:
    recorder = StatsRecorder()
    job = record()
    now = time.time()
    recorder.ended(job, outcomes.succeeded(job, "w1", None))
    recorder.died("default", now)
    recorder.died("other", now - 60, 2)  # in an earlier minute
    recorder.ended(job, outcomes.succeeded(job, "w1", None))  # the fast path still counts
    rows = {(r.minute, r.queue): counts(r) for r in recorder.pending()}
    assert rows == {(minute_of(now), "default"): (2, 0, 1, 0, 0),
                    (minute_of(now - 60), "other"): (0, 0, 2, 0, 0)}


def test_recorder_flush_adds_to_the_store_and_starts_over(app: Conveyor) -> None:
    recorder = StatsRecorder()
    job = record()
    recorder.started(job)
    recorder.ended(job, outcomes.succeeded(job, "w1", None))
    broker = app.broker
    assert app.run_sync(recorder.flush(broker))
    assert recorder.pending() == []
    assert app.run_sync(recorder.flush(broker))  # nothing to add
    recorder.ended(job, outcomes.dead(job, "w1", "gone"))
    assert app.run_sync(recorder.flush(broker))
    assert counts(totals(app.run_sync(broker.stats(0)))["default"]) == (1, 0, 1, 0, 1)


def test_cancelled_before_start_is_counted(app: Conveyor) -> None:
    @app.job
    async def idle() -> None:
        return None

    worker = Worker(app)
    job = app.build("idle", (), {})
    worker.buffered.append(job)
    worker.cancel_job(job.id, "cancel")
    worker.buffered.append(job)
    worker.cancel_job(job.id, "shutdown")  # requeued: not an end, not counted
    assert {q: counts(r) for q, r in totals(worker.stats.pending()).items()} == {
        "default": (0, 0, 0, 1, 0)
    }


# -- a real worker --------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "redis"])
def store_app(request: pytest.FixtureRequest, db_url: str) -> Iterator[Conveyor]:
    """An app on a fresh SQLite file, or on the shared test Redis in a namespace of its own."""
    if request.param == "sqlite":
        application = Conveyor(url=db_url, lease=2.0)
    else:
        application = Conveyor(url=shared_redis_url(), namespace=f"t{new_id().lower()}",
                               lease=2.0)
    yield application
    application.close()


ODD_QUEUE = "odd-queue:ü{x}&<b>"


def test_worker_records_what_it_runs(
    store_app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    app = store_app
    running = threading.Event()

    @app.job
    async def ok(n: int) -> int:
        return n

    @app.job(retries=1, backoff=0)
    async def flaky(ctx: JobContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return ctx.attempt

    @app.job(retries=0)
    def doomed() -> None:
        raise ValueError("never works")

    @app.job
    async def stuck() -> None:
        running.set()
        await asyncio.sleep(60)

    @app.job(queue=ODD_QUEUE)
    def elsewhere() -> str:
        return "done"

    since = time.time()
    handles = [ok.enqueue(i) for i in range(3)]
    handles += [flaky.enqueue(), doomed.enqueue(), elsewhere.enqueue()]
    to_cancel = stuck.enqueue()
    thread = start_worker(app, max_workers=8)
    assert running.wait(10)
    to_cancel.cancel()
    with pytest.raises(JobCancelled):
        to_cancel.result(timeout=10)
    wait_until(lambda: all(h.info().is_final for h in handles), timeout=20, what="the jobs")
    assert [h.info().state for h in handles].count(JobState.DEAD) == 1
    thread.stop()  # graceful: the last statistics are added after the last settle

    rows = app.run_sync(app.broker.stats(minute_of(since)))
    by_queue = totals(rows)
    assert set(by_queue) == {"default", ODD_QUEUE}
    # ok x3 + flaky's second attempt succeed; flaky's first fails; doomed dies; stuck is
    # cancelled; six jobs started a first attempt (flaky's retry is not a first start)
    assert counts(by_queue["default"]) == (4, 1, 1, 1, 6)
    assert counts(by_queue[ODD_QUEUE]) == (1, 0, 0, 0, 1)
    assert 0.0 <= by_queue["default"].wait_total < 6 * 20.0
    assert all(r.minute % 60 == 0 and r.minute >= minute_of(since) for r in rows)


def test_a_job_requeued_at_shutdown_starts_once(
    store_app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    app = store_app
    running = threading.Event()

    @app.job
    async def slow(seconds: float) -> float:
        running.set()
        await asyncio.sleep(seconds)
        return seconds

    since = time.time()
    handle = slow.enqueue(3.0)
    first = start_worker(app, max_workers=1, grace=0.2)
    assert running.wait(10)
    first.stop()  # the job outlives the grace: it goes back to its queue, uncharged
    assert handle.info().state is JobState.QUEUED
    rows = app.run_sync(app.broker.stats(minute_of(since)))
    assert sum(r.started for r in rows) == 0 and abs(sum(r.wait_total for r in rows)) < 1e-6
    running.clear()
    second = start_worker(app, max_workers=1)
    assert handle.result(timeout=20) == 3.0
    second.stop()
    rows = app.run_sync(app.broker.stats(minute_of(since)))
    assert counts(totals(rows)["default"]) == (1, 0, 0, 0, 1)


def test_a_waiting_job_cancelled_counts(store_app: Conveyor) -> None:
    app = store_app

    @app.job
    def later() -> None:
        """Never runs here."""

    since = time.time()
    handle = later.enqueue_with(delay=3600)
    assert app.cancel(handle.id).state is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        app.cancel("06H0HQQS1DPDNNKJ7KG6WTC19R")
    app.cancel(handle.id)  # cancelled already: not counted again
    rows = app.run_sync(app.broker.stats(minute_of(since)))
    assert counts(totals(rows)["default"]) == (0, 0, 0, 1, 0)


def test_jobs_lost_too_often_count_as_dead_once(
    store_app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    app = store_app
    app.max_recoveries = 1  # the first lost worker sends its jobs to the dead set

    @app.job(queue="fragile")
    def fragile() -> None:
        """Never runs here: its worker is gone."""

    @app.job(queue=ODD_QUEUE)
    def elsewhere() -> None:
        """Never runs here either."""

    since = time.time()
    handles = [fragile.enqueue(), fragile.enqueue(), elsewhere.enqueue()]
    # a worker claims them and dies at once: it never extends their leases
    claimed = app.run_sync(app.broker.claim("crashed", ["fragile", ODD_QUEUE], 10, 0.3))
    assert len(claimed) == 3
    # two live workers on another queue, both recovering every second
    workers = [start_worker(app, queues=["default"]) for _ in range(2)]
    wait_until(lambda: all(h.info().state is JobState.DEAD for h in handles), timeout=20,
               what="the recovery")
    for worker in workers:
        worker.stop()  # graceful: the last statistics are added

    died: dict[tuple[int, str], int] = {}
    for handle in handles:
        info = handle.info()
        assert info.finished_at is not None
        key = (minute_of(info.finished_at), info.queue)
        died[key] = died.get(key, 0) + 1
    rows = app.run_sync(app.broker.stats(minute_of(since)))
    # counted once (not by both workers), in the minute each job died, as dead only
    assert {(r.minute, r.queue): counts(r) for r in rows} == {
        key: (0, 0, count, 0, 0) for key, count in died.items()
    }
    assert sorted(died.values()) == [1, 2]


# -- the store is down when the recorder flushes --------------------------------------------------
def test_a_failed_flush_keeps_the_counts_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    broker = RedisBroker(server.url, namespace="flush")
    broker.retry_for = 0.2
    recorder = StatsRecorder()
    job = record()

    async def scenario() -> list[MinuteStats]:
        await broker.open()
        recorder.started(job)
        recorder.ended(job, outcomes.succeeded(job, "w1", None))
        server.stop()
        with caplog.at_level(logging.WARNING, logger="conveyor.stats"):
            assert not await recorder.flush(broker)
            recorder.ended(job, outcomes.dead(job, "w1", "gone"))  # counted while down
            assert not await recorder.flush(broker)
        server.start()
        assert await recorder.flush(broker)
        assert recorder.pending() == []
        rows = await broker.stats(0)
        await broker.close()
        return rows

    try:
        rows = asyncio.run(scenario())
    finally:
        server.stop()
    warnings = [r for r in caplog.records if r.name == "conveyor.stats"]
    assert len(warnings) == 1 and "keeping them" in warnings[0].getMessage()
    assert {q: counts(r) for q, r in totals(rows).items()} == {"default": (1, 0, 1, 0, 1)}


# -- backend specifics ----------------------------------------------------------------------------
def test_sqlite_database_from_before_statistics_gains_the_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    conn = connect(Settings.from_url(url))
    for statement in ddl("conveyor"):
        if "_stats" not in statement:
            conn.execute(statement)
    conn.close()
    broker = SQLiteBroker(url)
    now = minute_of(time.time())

    async def scenario() -> list[MinuteStats]:
        await broker.open()
        await broker.add_stats([MinuteStats(now, "default", succeeded=2)])
        rows = await broker.stats(0)
        await broker.close()
        return rows

    assert asyncio.run(scenario()) == [MinuteStats(now, "default", succeeded=2)]


@pytest.fixture
def redis_broker() -> Iterator[tuple[RedisBroker, redis.Redis]]:
    """A broker on the shared test Redis in a namespace of its own, and a raw client."""
    broker = RedisBroker(shared_redis_url(), namespace=f"t{new_id().lower()}")
    client = redis.Redis.from_url(broker.url, decode_responses=True)
    yield broker, client
    client.close()


def test_redis_minutes_expire_after_keeping(
    redis_broker: tuple[RedisBroker, redis.Redis]
) -> None:
    broker, client = redis_broker
    now = minute_of(time.time())

    async def scenario() -> None:
        await broker.add_stats([MinuteStats(m, "default", succeeded=1) for m in (now - 600, now)])
        await broker.close()

    asyncio.run(scenario())
    for minute in (now - 600, now):
        ttl = client.ttl(broker.keys.stats_minute(minute))
        expected = minute + STATS_KEEP - time.time()
        assert expected - 5 <= ttl <= expected + 1, (minute, ttl)
    markers = client.keys(broker.keys.stats_call("*"))
    assert len(markers) == 1 and 0 < client.ttl(markers[0]) <= broker.retry_for + 60


def test_redis_stats_call_retried_after_a_lost_reply_adds_once(
    redis_broker: tuple[RedisBroker, redis.Redis]
) -> None:
    """The script is run twice with one marker, as ``_retrying`` does after a lost reply."""
    broker, client = redis_broker
    now = minute_of(time.time())
    row = MinuteStats(now, "default", succeeded=2, started=1, wait_total=0.5)
    keys = [broker.keys.stats_call(new_id()), broker.keys.stats, broker.keys.stats_minute(now)]
    args: list[str | int] = [int(STATS_KEEP), 60, now]
    for field, increment in codec.stats_increments(row):
        args += [3, field, increment]
    script = client.register_script(source("stats"))
    assert script(keys=keys, args=args) == 1
    assert script(keys=keys, args=args) == 0

    async def read() -> list[MinuteStats]:
        rows = await broker.stats(0)
        await broker.close()
        return rows

    assert asyncio.run(read()) == [row]
