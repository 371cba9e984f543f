"""Retries, backoff, permanent errors and the dead set, on a real worker thread and SQLite file.

Also pure unit tests of :class:`conveyor.job.Backoff` and :func:`conveyor.worker.outcomes.failed`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import _RUNNING, WorkerThread
from conveyor import (
    Backoff,
    Conveyor,
    JobContext,
    JobFailed,
    JobRecord,
    JobState,
    PermanentError,
    Retry,
)
from conveyor.ids import new_id
from conveyor.job import OutcomeKind
from conveyor.worker import outcomes
from polling import wait_until


def wait_final(handle: Any, timeout: float = 10.0) -> JobRecord:
    return wait_until(lambda: (r := handle.info()).is_final and r, timeout, f"{handle} final")


# -- on a worker ----------------------------------------------------------------------------------
def test_exponential_backoff_between_attempts(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    seen: list[tuple[int, float, float]] = []  # (attempt, its run_at, when it started/failed)
    policy = Backoff(base=0.08, factor=2.0, jitter=0.5)

    @app.job(retries=3, backoff=policy)
    async def flaky(ctx: JobContext) -> None:
        seen.append((ctx.attempt, ctx.record.run_at, time.time()))
        raise RuntimeError(f"failure {ctx.attempt}")

    handle = flaky.enqueue()
    start_worker(app, max_workers=2)
    with pytest.raises(JobFailed) as caught:
        handle.result(timeout=15)
    info = handle.info()
    assert info.state is JobState.DEAD
    assert info.attempts == 4  # retries + 1
    assert [a for a, _, _ in seen] == [1, 2, 3, 4]
    assert "RuntimeError: failure 4" in (info.error or "")
    assert "gave up after 4 attempts" in (info.error or "")
    assert caught.value.error == info.error
    # Each retry waits at least the jittered lower bound of base * factor**(n-1), so the
    # scheduled run_at moves away from the failure further each time.
    run_ats = [run_at for _, run_at, _ in seen]
    assert run_ats == sorted(run_ats) and len(set(run_ats)) == 4
    for failures in (1, 2, 3):
        _, next_run_at, _ = seen[failures]
        _, _, failed_at = seen[failures - 1]
        lowest = policy.base * policy.factor ** (failures - 1) * (1 - policy.jitter)
        assert next_run_at - failed_at >= lowest - 0.005, (failures, next_run_at - failed_at)
        assert seen[failures][2] >= next_run_at  # did not start before its run_at


def test_number_backoff_is_the_base_of_an_exponential(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(retries=2, backoff=0.05)
    def fails() -> None:
        raise OSError("disk on fire")

    assert fails.options.backoff == Backoff(base=0.05)
    handle = fails.enqueue()
    start_worker(app)
    info = wait_final(handle)
    assert info.state is JobState.DEAD
    assert info.attempts == 3
    assert info.error is not None and info.error.startswith("OSError: disk on fire")


def test_retry_with_delay_is_honoured_over_backoff(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    times: list[float] = []

    # A backoff of a minute: only Retry(delay=...) can bring the second attempt in time.
    @app.job(retries=3, backoff=60)
    async def later(ctx: JobContext) -> str:
        times.append(time.time())
        if ctx.attempt == 1:
            raise Retry(delay=0.3)
        return f"attempt {ctx.attempt}"

    handle = later.enqueue()
    start_worker(app)
    assert handle.result(timeout=10) == "attempt 2"
    info = handle.info()
    assert info.attempts == 2
    assert info.state is JobState.SUCCEEDED
    assert times[1] - times[0] >= 0.3 - 0.005  # not earlier than asked


def test_retry_counts_against_retries(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(retries=1)
    async def again() -> None:
        raise Retry(delay=0.01, reason="not yet")

    handle = again.enqueue()
    start_worker(app)
    info = wait_final(handle)
    assert info.state is JobState.DEAD
    assert info.attempts == 2
    assert "Retry: not yet" in (info.error or "")


def test_permanent_error_goes_dead_at_once_with_traceback(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(retries=5, backoff=0.01)
    def hopeless(x: int) -> None:
        raise PermanentError(f"bad input {x}")

    handle = hopeless.enqueue(7)
    start_worker(app)
    with pytest.raises(JobFailed, match="bad input 7"):
        handle.result(timeout=10)
    info = handle.info()
    assert info.state is JobState.DEAD
    assert info.attempts == 1
    assert info.error == "PermanentError: bad input 7"
    assert info.traceback is not None
    assert "Traceback" in info.traceback
    assert "in hopeless" in info.traceback
    assert 'raise PermanentError(f"bad input {x}")' in info.traceback
    assert info.finished_at is not None


def test_listed_permanent_errors(app: Conveyor, start_worker: Callable[..., WorkerThread]) -> None:
    class Invalid(ValueError):
        pass

    @app.job(retries=3, backoff=0.01, permanent_errors=(ValueError,))
    async def strict(kind: str) -> None:
        if kind == "value":
            raise ValueError("listed")
        if kind == "subclass":
            raise Invalid("a subclass of a listed type")
        raise KeyError("not listed")

    value, sub, other = strict.enqueue("value"), strict.enqueue("subclass"), strict.enqueue("key")
    start_worker(app, max_workers=3)
    value_info, sub_info, other_info = wait_final(value), wait_final(sub), wait_final(other)
    assert (value_info.state, value_info.attempts) == (JobState.DEAD, 1)
    assert value_info.error == "ValueError: listed"
    assert (sub_info.state, sub_info.attempts) == (JobState.DEAD, 1)
    assert sub_info.error is not None and sub_info.error.startswith("Invalid:")
    assert (other_info.state, other_info.attempts) == (JobState.DEAD, 4)  # retried
    assert "KeyError" in (other_info.error or "")


def test_no_retries_means_one_attempt(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job(retries=0)
    async def once() -> None:
        raise RuntimeError("only once")

    handle = once.enqueue()
    start_worker(app)
    info = wait_final(handle)
    assert (info.state, info.attempts) == (JobState.DEAD, 1)
    assert "gave up after 1 attempt)" in (info.error or "")


def test_dead_job_retried_by_admin_runs_again(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    fixed = {"yet": False}

    @app.job(retries=1, backoff=0.01)
    async def needs_fix(n: int) -> int:
        if not fixed["yet"]:
            raise RuntimeError("broken")
        return n * 2

    handle = needs_fix.enqueue(21)
    start_worker(app)
    assert wait_final(handle).state is JobState.DEAD
    assert handle.info().attempts == 2

    fixed["yet"] = True
    record = app.run_sync(app.broker.retry(handle.id))
    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.attempts == 0
    assert handle.result(timeout=10) == 42
    info = handle.info()
    assert (info.state, info.attempts, info.error) == (JobState.SUCCEEDED, 1, None)


def test_retry_of_a_job_that_is_not_dead_changes_nothing(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    @app.job
    async def fine() -> str:
        return "ok"

    handle = fine.enqueue()
    start_worker(app)
    assert handle.result(timeout=10) == "ok"
    record = app.run_sync(app.broker.retry(handle.id))
    assert record is not None and record.state is JobState.SUCCEEDED
    assert record.result == "ok"


def test_result_that_is_not_json_sends_the_job_dead(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    runs: list[int] = []

    @app.job(retries=3, backoff=0.01)
    def returns_set() -> object:
        runs.append(1)
        return {1, 2}

    @app.job(retries=3, backoff=0.01)
    async def returns_nan() -> float:
        return float("nan")

    a, b = returns_set.enqueue(), returns_nan.enqueue()
    start_worker(app)
    for handle in (a, b):
        info = wait_final(handle)
        assert info.state is JobState.DEAD
        assert info.attempts == 1  # not retried: the same code gives the same result
        assert "not JSON-serializable" in (info.error or "")
        assert info.result is None
    assert len(runs) == 1


@pytest.fixture
def two_deploys(url: str) -> Iterator[tuple[Conveyor, Conveyor]]:
    """Two apps on one store and namespace: an old deploy that registers only ``known``,
    and a new one that also registers ``added``."""
    namespace = f"t{new_id().lower()}"
    old, new = (Conveyor(url=url, namespace=namespace, lease=2.0) for _ in range(2))

    async def known() -> str:
        return "known"

    async def added(n: int) -> int:
        return n + 1

    old.job(known)
    new.job(known)
    new.job(added)
    yield old, new
    for thread in list(_RUNNING):
        if thread.app in (old, new) and thread._thread.is_alive():
            thread.stop()
    old.close()
    new.close()


def test_a_job_its_worker_does_not_know_is_handed_back_for_one_that_does(
    two_deploys: tuple[Conveyor, Conveyor], start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = two_deploys
    monkeypatch.setattr(outcomes, "UNKNOWN_WAIT", 0.2)
    handle = new.enqueue("added", 41)
    worker = start_worker(old)
    info = wait_until(lambda: (r := handle.info()).deferrals >= 1 and r, 10,
                      "the old deploy's worker to hand the job back")
    assert info.state in (JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING)
    assert info.error is not None
    assert "no job named 'added' is registered" in info.error
    assert worker.worker.id in info.error
    assert "is not registered in this worker: handed back" in caplog.text
    rows = [*old.run_sync(old.broker.stats(0)), *worker.worker.stats.pending()]
    assert sum(r.started + r.failed + r.dead for r in rows) == 0  # it never ran
    assert worker.worker.info.failed == 0
    start_worker(new)
    assert handle.result(timeout=15) == 42
    done = handle.info()
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 1  # the hand-backs were not charged


def test_a_job_no_worker_knows_goes_dead_after_its_deferrals(
    two_deploys: tuple[Conveyor, Conveyor], start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = two_deploys
    monkeypatch.setattr(outcomes, "UNKNOWN_WAIT", 0.05)
    monkeypatch.setattr(outcomes, "MAX_DEFERRALS", 3)
    handle = new.enqueue("added", 1)
    ok = old.enqueue("known")
    worker = start_worker(old)
    assert ok.result(timeout=10) == "known"
    info = wait_final(handle, 15)
    assert info.state is JobState.DEAD
    assert info.deferrals == 3
    assert info.error is not None
    assert "no job named 'added' is registered" in info.error
    assert worker.worker.id in info.error and "(deferred 3 times)" in info.error
    with pytest.raises(JobFailed, match="added"):
        handle.result(timeout=1)


# -- Backoff ------------------------------------------------------------------------------------
def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = Backoff(base=0.5, factor=3.0, maximum=10.0, jitter=0.0)
    assert [policy(n) for n in (1, 2, 3)] == [0.5, 1.5, 4.5]
    assert policy(4) == 10.0  # 13.5 capped
    assert policy(50) == 10.0
    assert policy(0) == 0.5  # attempt numbers below 1 act as the first


def test_backoff_jitter_stays_in_the_upper_share() -> None:
    rng_state = random.getstate()
    try:
        random.seed(1234)
        policy = Backoff(base=1.0, factor=2.0, maximum=300.0, jitter=0.5)
        for attempt in (1, 2, 5):
            raw = 2.0 ** (attempt - 1)
            values = [policy(attempt) for _ in range(300)]
            assert all(raw * 0.5 <= v <= raw for v in values)
            assert max(values) - min(values) > raw * 0.3  # it is random, not fixed
        full = Backoff(base=4.0, jitter=1.0)
        values = [full(1) for _ in range(300)]
        assert all(0.0 <= v <= 4.0 for v in values)
        assert min(values) < 1.0
    finally:
        random.setstate(rng_state)


def test_backoff_default_and_frozen() -> None:
    policy = Backoff()
    assert (policy.base, policy.factor, policy.maximum, policy.jitter) == (1.0, 2.0, 300.0, 0.5)
    assert 150.0 <= policy(100) <= 300.0
    with pytest.raises(AttributeError):
        policy.base = 2.0  # type: ignore[misc]


# -- outcomes.failed ------------------------------------------------------------------------------
@pytest.fixture
def plain_app() -> Conveyor:
    return Conveyor(url="sqlite:///never-opened.db")


def record(attempts: int = 1, recoveries: int = 0) -> JobRecord:
    return JobRecord(id="J1", name="job", queue="q", state=JobState.RUNNING, args=[], kwargs={},
                     created_at=0.0, run_at=0.0, attempts=attempts, recoveries=recoveries)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_failed_schedules_a_retry_after_the_backoff(plain_app: Conveyor) -> None:
    calls: list[int] = []

    def policy(failures: int) -> float:
        calls.append(failures)
        return 10.0 * failures

    job = plain_app.job(name="job", retries=3, backoff=policy, executor="thread")(lambda: None)
    for attempts in (1, 2, 3):
        out = outcomes.failed(record(attempts), "w1", job, raised(RuntimeError("x")))
        assert out.kind is OutcomeKind.RETRY
        assert out.run_at == pytest.approx(out.finished_at + 10.0 * attempts)
        assert out.error == "RuntimeError: x"
        assert out.traceback is not None and "RuntimeError: x" in out.traceback
        assert (out.job_id, out.worker_id, out.queue) == ("J1", "w1", "q")
    assert calls == [1, 2, 3]

    out = outcomes.failed(record(4), "w1", job, raised(RuntimeError("x")))
    assert out.kind is OutcomeKind.DEAD
    assert out.error == "RuntimeError: x (gave up after 4 attempts)"
    assert out.run_at is None


def test_failed_does_not_charge_recoveries(plain_app: Conveyor) -> None:
    job = plain_app.job(name="job", retries=1, backoff=0.0, executor="thread")(lambda: None)
    # Three attempts, two of them lost with their worker: one failure so far.
    out = outcomes.failed(record(attempts=3, recoveries=2), "w", job, raised(OSError()))
    assert out.kind is OutcomeKind.RETRY
    assert out.error == "OSError"
    out = outcomes.failed(record(attempts=4, recoveries=2), "w", job, raised(OSError()))
    assert out.kind is OutcomeKind.DEAD


def test_failed_permanent_and_listed_errors(plain_app: Conveyor) -> None:
    job = plain_app.job(name="job", retries=9, executor="thread",
                        permanent_errors=(LookupError,))(lambda: None)
    for exc in (PermanentError("stop"), KeyError("k"), IndexError("i")):
        out = outcomes.failed(record(1), "w", job, raised(exc))
        assert out.kind is OutcomeKind.DEAD, exc
        assert "(gave up" not in (out.error or "")
        assert out.traceback is not None and type(exc).__name__ in out.traceback
    assert outcomes.failed(record(1), "w", job, raised(ValueError())).kind is OutcomeKind.RETRY


def test_failed_with_retry_delay(plain_app: Conveyor) -> None:
    job = plain_app.job(name="job", retries=2, backoff=lambda n: 1000.0,
                        executor="thread")(lambda: None)
    out = outcomes.failed(record(1), "w", job, raised(Retry(delay=5)))
    assert out.kind is OutcomeKind.RETRY
    assert out.run_at == pytest.approx(out.finished_at + 5)
    assert out.error == "Retry: retry requested in 5s"
    out = outcomes.failed(record(1), "w", job, raised(Retry(delay=0)))
    assert out.run_at == out.finished_at  # zero means now, not "use the backoff"
    out = outcomes.failed(record(1), "w", job, raised(Retry()))
    assert out.run_at == pytest.approx(out.finished_at + 1000.0)  # the backoff
    out = outcomes.failed(record(3), "w", job, raised(Retry(delay=1)))
    assert out.kind is OutcomeKind.DEAD  # a Retry still counts against retries


def test_failed_overrides_from_a_child_process(plain_app: Conveyor) -> None:
    job = plain_app.job(name="job", retries=2, backoff=lambda n: 1000.0,
                        executor="thread")(lambda: None)
    exc = raised(RuntimeError("wrapper"))
    out = outcomes.failed(record(1), "w", job, exc, error="ValueError: remote", tb="remote tb",
                          retry_delay=2.0)
    assert (out.kind, out.error, out.traceback) == (OutcomeKind.RETRY, "ValueError: remote",
                                                    "remote tb")
    assert out.run_at == pytest.approx(out.finished_at + 2.0)
    out = outcomes.failed(record(1), "w", job, exc, permanent=True)
    assert out.kind is OutcomeKind.DEAD
    out = outcomes.failed(record(1), "w", job, raised(PermanentError()), permanent=False,
                          retry_delay=-3.0)
    assert out.kind is OutcomeKind.RETRY
    assert out.run_at == out.finished_at  # a negative delay is clamped to now
