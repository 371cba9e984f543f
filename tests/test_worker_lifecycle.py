"""A job's life on a worker: delays, cancellation, progress, middleware, backpressure,
argument checks, bulk enqueues and autoscaling; plus unit tests of the Autoscaler."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import WorkerThread
from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidArguments,
    JobCancelled,
    JobContext,
    JobNotFound,
    JobRecord,
    JobState,
    PermanentError,
    QueueFull,
)
from conveyor.worker.autoscale import Autoscaler
from polling import wait_until


def stored(app: Conveyor) -> list[JobRecord]:
    return app.run_sync(app.broker.list_jobs(limit=1000))


# -- delayed jobs ---------------------------------------------------------------------------------
def test_delay_does_not_start_early(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    started: list[float] = []

    @app.job
    async def stamp() -> str:
        started.append(time.time())
        return "on time"

    start_worker(app)
    before = time.time()
    handle = stamp.enqueue_with(delay=0.5)
    info = handle.info()
    assert info.state is JobState.SCHEDULED
    assert info.run_at == pytest.approx(info.created_at + 0.5)
    assert handle.result(timeout=10) == "on time"
    assert started[0] >= before + 0.5 - 0.005
    info = handle.info()
    assert info.started_at is not None and info.started_at >= info.run_at


def test_at_does_not_start_early(app: Conveyor, start_worker: Callable[..., WorkerThread]) -> None:
    started: list[float] = []

    @app.job
    def stamp(label: str) -> str:
        started.append(time.time())
        return label

    start_worker(app)
    when = datetime.now(UTC) + timedelta(seconds=2.0)  # ahead still when read back
    handle = stamp.enqueue_with(["at"], at=when)
    assert handle.info().state is JobState.SCHEDULED
    assert handle.info().run_at == pytest.approx(when.timestamp())
    assert handle.result(timeout=10) == "at"
    assert started[0] >= when.timestamp() - 0.005

    past = stamp.enqueue_with(["past"], at=datetime.now(UTC) - timedelta(hours=1))
    info = past.info()  # ready at once: the running worker may have taken it already
    assert info.state is not JobState.SCHEDULED and info.run_at == info.created_at
    assert past.result(timeout=10) == "past"


def test_bad_schedules_are_refused(app: Conveyor) -> None:
    @app.job
    async def nothing() -> None:
        return None

    with pytest.raises(InvalidArguments, match="timezone-aware"):
        nothing.enqueue_with(at=datetime.now() + timedelta(seconds=5))
    with pytest.raises(InvalidArguments, match="negative"):
        nothing.enqueue_with(delay=-1)
    with pytest.raises(InvalidArguments, match="not both"):
        nothing.enqueue_with(delay=1, at=datetime.now(UTC))
    for bad in ('a"b', "c\\d", "with space", "", "-lead", "x" * 129, "é"):
        with pytest.raises(InvalidArguments, match="not a valid id"):
            app.enqueue_call("nothing", [], {}, job_id=bad)
    assert stored(app) == []
    chosen = app.enqueue_call("nothing", [], {}, job_id="order-42:resize.v2_b")
    assert chosen.id == "order-42:resize.v2_b" and chosen.info().name == "nothing"


# -- cancellation ---------------------------------------------------------------------------------
def test_cancelled_queued_job_never_starts(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: list[str] = []

    @app.job
    async def record_run(label: str) -> str:
        ran.append(label)
        return label

    queued = record_run.enqueue("queued")
    scheduled = record_run.enqueue_with(["scheduled"], delay=0.3)
    for handle in (queued, scheduled):
        record = handle.cancel()
        assert record.state is JobState.CANCELLED
        assert record.finished_at is not None
    start_worker(app)
    after = record_run.enqueue("after")
    assert after.result(timeout=10) == "after"
    time.sleep(0.5)  # past the scheduled one's run_at
    assert record_run.enqueue("last").result(timeout=10) == "last"
    assert ran == ["after", "last"]
    for handle in (queued, scheduled):
        info = handle.info()
        assert (info.state, info.attempts) == (JobState.CANCELLED, 0)
        with pytest.raises(JobCancelled):
            handle.result(timeout=1)
    # Cancelling a finished job changes nothing; an unknown id is an error.
    assert after.cancel().state is JobState.SUCCEEDED
    with pytest.raises(JobNotFound):
        app.cancel("0" * 26)


def test_cancel_running_async_job(app: Conveyor, start_worker: Callable[..., WorkerThread]) -> None:
    running = threading.Event()
    interrupted = threading.Event()

    @app.job(retries=3)
    async def long_task() -> None:
        running.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    handle = long_task.enqueue()
    start_worker(app)
    assert running.wait(10)
    record = handle.cancel()
    assert record.state is JobState.RUNNING and record.cancel_requested
    with pytest.raises(JobCancelled):
        handle.result(timeout=10)  # the heartbeat (every lease/3) passes the request on
    assert interrupted.is_set()
    info = handle.info()
    assert info.state is JobState.CANCELLED
    assert info.attempts == 1  # not retried
    assert info.error == "cancelled while running"


def test_cancel_running_thread_job_sets_ctx_cancelled(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    running = threading.Event()
    noticed = threading.Event()

    @app.job
    def polling(ctx: JobContext) -> str:
        running.set()
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            noticed.set()
        return "stopped"

    handle = polling.enqueue()
    start_worker(app)
    assert running.wait(10)
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.result(timeout=10)
    assert noticed.wait(20)  # the job looks for 30 s
    assert handle.info().result is None


# -- progress -------------------------------------------------------------------------------------
def test_progress_is_visible_while_running(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    release = threading.Event()

    @app.job
    def report(ctx: JobContext) -> str:
        ctx.progress(0.25)
        ctx.progress(0.5, "half way")
        release.wait(15)
        return "done"

    handle = report.enqueue()
    start_worker(app)
    try:
        info = wait_until(lambda: (r := handle.info()).progress == 0.5 and r, what="progress")
        assert info.state is JobState.RUNNING
        assert info.progress_message == "half way"
        assert info.to_dict()["progress"] == 0.5
    finally:
        release.set()
    assert handle.result(timeout=10) == "done"


def test_progress_must_be_a_fraction() -> None:
    record = JobRecord(id="J", name="n", queue="q", state=JobState.RUNNING, args=[], kwargs={},
                       created_at=0.0, run_at=0.0, attempts=1)
    reports: list[tuple[str, float, str | None]] = []
    ctx = JobContext(record, lambda *report: reports.append(report))
    ctx.progress(1.0, "all")
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError):
            ctx.progress(bad)
    assert reports == [("J", 1.0, "all")]
    assert (ctx.attempt, ctx.cancelled) == (1, False)
    ctx.mark_cancelled()
    assert ctx.cancelled


# -- middleware -----------------------------------------------------------------------------------
def test_middleware_runs_as_an_onion(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    order: list[tuple[str, Any]] = []

    @app.middleware
    async def outer(ctx: JobContext, call_next: Callable[[], Any]) -> Any:
        order.append(("outer before", ctx.name))
        result = await call_next()
        order.append(("outer after", result))
        return result

    @app.middleware
    async def inner(ctx: JobContext, call_next: Callable[[], Any]) -> Any:
        order.append(("inner before", ctx.attempt))
        result = await call_next()
        order.append(("inner after", result))
        return result + 1

    @app.job
    def times_ten(x: int) -> int:
        order.append(("job", x))
        return x * 10

    handle = times_ten.enqueue(4)
    start_worker(app)
    assert handle.result(timeout=10) == 41
    assert order == [
        ("outer before", "times_ten"),
        ("inner before", 1),
        ("job", 4),
        ("inner after", 40),
        ("outer after", 41),
    ]


def test_middleware_can_fail_a_job_before_it_runs(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: list[str] = []

    @app.middleware
    async def gate(ctx: JobContext, call_next: Callable[[], Any]) -> Any:
        if ctx.name == "forbidden":
            raise PermanentError("not allowed here")
        return await call_next()

    @app.job
    async def forbidden() -> None:
        ran.append("forbidden")

    @app.job
    async def allowed() -> str:
        ran.append("allowed")
        return "ok"

    bad, good = forbidden.enqueue(), allowed.enqueue()
    start_worker(app)
    assert good.result(timeout=10) == "ok"
    info = wait_until(lambda: (r := bad.info()).is_final and r)
    assert (info.state, info.error) == (JobState.DEAD, "PermanentError: not allowed here")
    assert ran == ["allowed"]


# -- backpressure and argument checks -------------------------------------------------------------
@pytest.fixture
def limited_app(db_url: str) -> Iterator[Conveyor]:
    application = Conveyor(url=db_url, lease=2.0, max_queued={"default": 3})
    yield application
    application.close()


def test_max_queued_refuses_the_fourth(limited_app: Conveyor) -> None:
    @limited_app.job
    async def work(n: int) -> int:
        return n

    @limited_app.job(queue="other")
    async def elsewhere(n: int) -> int:
        return n

    handles = [work.enqueue(n) for n in range(3)]
    with pytest.raises(QueueFull) as caught:
        work.enqueue(3)
    assert (caught.value.queue, caught.value.limit) == ("default", 3)
    with pytest.raises(QueueFull):
        work.enqueue_with([4], delay=10)  # scheduled jobs wait too
    with pytest.raises(QueueFull):
        work.enqueue_many([(5,)])
    assert sorted(r.args[0] for r in stored(limited_app)) == [0, 1, 2]

    for n in range(5):  # other queues have no limit
        elsewhere.enqueue(n)
    handles[0].cancel()  # a cancelled job no longer waits: room for one more
    work.enqueue(6)
    with pytest.raises(QueueFull):
        work.enqueue(7)
    waiting = [r for r in stored(limited_app) if r.queue == "default" and not r.is_final]
    assert sorted(r.args[0] for r in waiting) == [1, 2, 6]


def test_max_queued_bulk_is_all_or_nothing(limited_app: Conveyor) -> None:
    @limited_app.job
    async def work(n: int) -> int:
        return n

    work.enqueue(0)
    with pytest.raises(QueueFull):
        work.enqueue_many([(1,), (2,), (3,)])  # would make four
    assert len(stored(limited_app)) == 1
    assert len(work.enqueue_many([(1,), (2,)])) == 2
    assert len(stored(limited_app)) == 3


def test_bad_arguments_are_refused_and_nothing_is_stored(app: Conveyor) -> None:
    class Thing:
        pass

    @app.job
    async def add(a: int, b: int = 0) -> int:
        return a + b

    @app.job
    def with_ctx(x: int, ctx: JobContext) -> int:
        return x

    bad_calls: list[Callable[[], Any]] = [
        lambda: add.enqueue(),  # missing argument
        lambda: add.enqueue(1, 2, 3),  # too many
        lambda: add.enqueue(1, c=3),  # unknown keyword
        lambda: add.enqueue({1, 2}),
        lambda: add.enqueue(Thing()),
        lambda: add.enqueue(float("nan")),
        lambda: add.enqueue(1, b=float("inf")),
        lambda: add.enqueue([1, {"deep": object()}]),
        lambda: with_ctx.enqueue(1, None),  # the context is not an argument
        lambda: with_ctx.enqueue(1, ctx=None),
        lambda: app.enqueue_call("not_registered", [{1}], {}),
        lambda: app.enqueue_call("not_registered", [], {1: "x"}),
    ]
    for number, call in enumerate(bad_calls):
        with pytest.raises(InvalidArguments):
            call()
        assert stored(app) == [], number
    assert isinstance(InvalidArguments("x"), TypeError)
    # The same checks pass good calls (and remembered shapes do not skip the JSON check).
    assert add.enqueue(1).info().args == [1]
    with pytest.raises(InvalidArguments):
        add.enqueue(float("nan"))
    assert with_ctx.enqueue(5).info().args == [5]
    assert len(stored(app)) == 2


def test_enqueue_many_is_all_or_nothing(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job
    async def add(a: int, b: int = 0) -> int:
        return a + b

    for items in (
        [(1,), (2,), (1, 2, 3)],
        [(1,), {"a": 1, "c": 2}],
        [(1,), {"a": {1}}],
        [(1,), [float("nan")]],
        [(1,), 5],
    ):
        with pytest.raises(InvalidArguments):
            add.enqueue_many(items)  # type: ignore[arg-type]
        assert stored(app) == []
    assert add.enqueue_many([]) == []

    handles = add.enqueue_many([(1,), {"a": 2, "b": 3}, [4, 5]])
    assert len({h.id for h in handles}) == 3
    start_worker(app, max_workers=3)
    assert [h.result(timeout=10) for h in handles] == [1, 5, 9]


# -- autoscaling on a worker ----------------------------------------------------------------------
def test_worker_scales_up_with_a_backlog_and_back_down(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    lock = threading.Lock()
    now_running = [0]
    most_running = [0]

    @app.job
    async def nap(n: int) -> int:
        with lock:
            now_running[0] += 1
            most_running[0] = max(most_running[0], now_running[0])
        try:
            await asyncio.sleep(0.3)
        finally:
            with lock:
                now_running[0] -= 1
        return n

    handles = nap.enqueue_many([(n,) for n in range(40)])
    thread = start_worker(app, min_workers=1, max_workers=8, cooldown=0.5)
    worker = thread.worker
    assert worker.scaler.size == 1
    sizes: set[int] = set()
    published: set[int] = set()

    def all_done() -> bool:
        sizes.add(worker.scaler.size)
        published.update(w.concurrency for w in app.run_sync(app.broker.workers()))
        return all(h.info().is_final for h in handles)

    wait_until(all_done, timeout=30, what="backlog done")
    assert [h.result(timeout=1) for h in handles] == list(range(40))
    assert max(sizes) > 1
    assert max(sizes) <= 8
    assert 1 < most_running[0] <= 8
    assert max(published) > 1  # the worker row shows it too
    # No backlog: after the cooldown the size halves step by step back to the minimum.
    wait_until(lambda: worker.scaler.size == 1, timeout=15, what="scale down")
    wait_until(
        lambda: [w.concurrency for w in app.run_sync(app.broker.workers())] == [1],
        timeout=10, what="worker row back to 1",
    )


# -- Autoscaler unit tests ------------------------------------------------------------------------
def test_autoscaler_grows_when_full_with_backlog() -> None:
    scaler = Autoscaler(1, 6, grow_interval=0.1, cooldown=5)
    assert scaler.size == 1
    assert scaler.observe(1, True, 0.0) == 2
    assert scaler.observe(2, True, 0.05) == 2  # at most once per grow_interval
    assert scaler.observe(2, True, 0.15) == 4
    assert scaler.observe(4, True, 0.3) == 6  # doubling capped at the maximum
    assert scaler.observe(6, True, 0.45) == 6
    assert scaler.observe(6, True, 100.0) == 6


def test_autoscaler_does_not_grow_without_backlog_or_free_slots() -> None:
    scaler = Autoscaler(2, 8, grow_interval=0.0, cooldown=5)
    assert scaler.observe(2, False, 0.0) == 2  # full but nothing waits
    assert scaler.observe(1, True, 1.0) == 2  # jobs wait but a slot is free
    assert scaler.observe(2, True, 2.0) == 4


def test_autoscaler_shrinks_only_after_cooldown() -> None:
    scaler = Autoscaler(1, 8, grow_interval=0.0, cooldown=2.0)
    for t in range(3):
        scaler.observe(scaler.size, True, float(t))
    assert scaler.size == 8
    assert scaler.observe(0, False, 10.0) == 8  # quiet starts now
    assert scaler.observe(0, False, 11.9) == 8
    assert scaler.observe(0, False, 12.0) == 4  # halved after the cooldown
    assert scaler.observe(0, False, 13.0) == 4  # and the cooldown starts again
    assert scaler.observe(0, False, 14.0) == 2
    assert scaler.observe(0, False, 16.0) == 1
    assert scaler.observe(0, False, 100.0) == 1  # never below the minimum


def test_autoscaler_limits() -> None:
    scaler = Autoscaler(3, 5, grow_interval=0.0, cooldown=1.0)
    assert scaler.observe(3, True, 0.0) == 5  # 6 capped at 5
    scaler.observe(0, False, 1.0)
    assert scaler.observe(0, False, 2.0) == 3  # 5 // 2 = 2, but never below 3
    eager = Autoscaler(1, 8, grow_interval=0.0, cooldown=1.0, low_water=0.9)
    for t in range(3):
        eager.observe(eager.size, True, float(t))
    assert eager.size == 8
    eager.observe(7, False, 10.0)
    assert eager.observe(7, False, 11.0) == 7  # never below the jobs still running
    with pytest.raises(ConfigurationError):
        Autoscaler(0, 4)
    with pytest.raises(ConfigurationError):
        Autoscaler(5, 4)


def test_autoscaler_hysteresis() -> None:
    scaler = Autoscaler(1, 8, grow_interval=0.0, cooldown=1.0, low_water=0.5)
    for t in range(3):
        scaler.observe(scaler.size, True, float(t))
    assert scaler.size == 8
    # Between the two rules: not full (no growth) yet busy at or above half (no shrink).
    for t in range(10, 30):
        assert scaler.observe(4, False, float(t)) == 8
        assert scaler.observe(4, True, t + 0.5) == 8
    # A busy moment resets the quiet period.
    assert scaler.observe(1, False, 40.0) == 8
    assert scaler.observe(1, False, 40.9) == 8
    assert scaler.observe(6, False, 41.0) == 8  # at/above low water: quiet period over
    assert scaler.observe(1, False, 41.5) == 8  # quiet again from here
    assert scaler.observe(1, False, 42.0) == 8
    assert scaler.observe(1, False, 42.5) == 4
