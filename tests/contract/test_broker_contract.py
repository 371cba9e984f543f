"""The backend contract: what every :class:`~conveyor.backends.base.Broker` must do.

These tests use the abstract Broker methods only, never a backend's storage, so the very same
tests run against every backend listed in ``conftest.FACTORIES``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor.backends.base import Beat, Broker, Recovery
from conveyor.errors import ConveyorError, DuplicateJob, QueueFull
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind
from conveyor.stats import STATS_KEEP, MinuteStats, minute_of

from .conftest import RETENTION, MakeBroker, Run, make_job, make_jobs, make_worker

LEASE = 30.0
#: a lease short enough to expire within a test
SHORT = 0.05
#: long enough for a SHORT lease (or retention) to have passed
PAST_SHORT = 0.12
#: tolerance when comparing a stored time with one taken around the call
SLACK = 2.0


# -- helpers --------------------------------------------------------------------------------


def get(run: Run[Any], broker: Broker, job_id: str) -> JobRecord:
    job = run(broker.get(job_id))
    assert job is not None, f"job {job_id} is missing"
    return job


def claim_one(
    run: Run[Any], broker: Broker, worker_id: str = "w1", queue: str = "default",
    lease: float = LEASE,
) -> JobRecord:
    jobs = run(broker.claim(worker_id, [queue], 1, lease))
    assert len(jobs) == 1, f"expected one job to claim, got {len(jobs)}"
    return jobs[0]


def enqueue_and_claim(
    run: Run[Any], broker: Broker, worker_id: str = "w1", lease: float = LEASE, **options: Any
) -> JobRecord:
    job = make_job(**options)
    run(broker.enqueue([job], {}))
    claimed = claim_one(run, broker, worker_id, job.queue, lease)
    assert claimed.id == job.id
    return claimed


def outcome(job: JobRecord, kind: OutcomeKind, **fields: Any) -> Outcome:
    assert job.worker_id is not None
    return Outcome(job.id, job.worker_id, kind, time.time(), **fields)


def ids(jobs: list[JobRecord]) -> list[str]:
    return [j.id for j in jobs]


def settled(run: Run[Any], broker: Broker, kind: OutcomeKind, **options: Any) -> JobRecord:
    """A job that ran once and ended with an outcome of ``kind``."""
    job = enqueue_and_claim(run, broker, **options)
    fields: dict[str, Any] = {}
    if kind is OutcomeKind.DEAD:
        fields = {"error": "ValueError: boom", "traceback": "Traceback ...\nValueError: boom"}
    if kind is OutcomeKind.SUCCEEDED:
        fields = {"result_json": json.dumps({"ok": True})}
    run(broker.settle([outcome(job, kind, **fields)]))
    return get(run, broker, job.id)


def expire_and_recover(
    run: Run[Any], broker: Broker, job_id: str, max_recoveries: int
) -> Recovery:
    """Claim ``job_id`` with a short lease, let the lease lapse, then recover."""
    claimed = run(broker.claim("lost-worker", [get(run, broker, job_id).queue], 1, SHORT))
    assert ids(claimed) == [job_id]
    time.sleep(PAST_SHORT)
    result: Recovery = run(broker.recover_expired(max_recoveries))
    return result


# -- life cycle -----------------------------------------------------------------------------


def test_open_twice_is_safe(run: Run[Any], broker: Broker) -> None:
    assert broker.retention == RETENTION
    assert broker.url
    run(broker.open())
    job = make_job()
    run(broker.enqueue([job], {}))
    assert get(run, broker, job.id).id == job.id


def test_jobs_survive_close_and_reopen(
    run: Run[Any], broker: Broker, make_broker: MakeBroker
) -> None:
    job = make_job(args=[1, 2])
    run(broker.enqueue([job], {}))
    run(broker.close())
    other = make_broker()
    stored = get(run, other, job.id)
    assert (stored.state, stored.args) == (JobState.QUEUED, [1, 2])


# -- enqueue and get ------------------------------------------------------------------------


def test_enqueue_get_round_trip(run: Run[Any], broker: Broker) -> None:
    args = [1, -2.5, "héllo ✓", None, True, [1, [2, {"deep": []}]], {"k": "v"}]
    kwargs = {"user": {"id": 7, "tags": ["a", "b"]}, "flag": False, "empty": {}, "n": None}
    job = make_job(name="mail.send", queue="emails", args=args, kwargs=kwargs)
    run(broker.enqueue([job], {}))

    stored = get(run, broker, job.id)
    assert stored.id == job.id
    assert stored.name == "mail.send"
    assert stored.queue == "emails"
    assert stored.state is JobState.QUEUED
    assert stored.args == args
    assert stored.kwargs == kwargs
    assert stored.created_at == pytest.approx(job.created_at, abs=0.5)
    assert stored.run_at == pytest.approx(job.run_at, abs=0.5)
    assert (stored.attempts, stored.recoveries) == (0, 0)
    assert stored.started_at is None
    assert stored.finished_at is None
    assert stored.expires_at is None
    assert stored.result is None
    assert stored.error is None and stored.traceback is None
    assert stored.progress is None and stored.progress_message is None
    assert stored.worker_id is None and stored.lease_expires_at is None
    assert stored.cancel_requested is False


def test_enqueue_scheduled_job_keeps_state_and_run_at(run: Run[Any], broker: Broker) -> None:
    job = make_job(delay=60)
    assert job.state is JobState.SCHEDULED
    run(broker.enqueue([job], {}))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.SCHEDULED
    assert stored.run_at == pytest.approx(job.run_at, abs=0.5)
    assert stored.run_at > time.time() + 50


def test_get_unknown_returns_none(run: Run[Any], broker: Broker) -> None:
    assert run(broker.get(new_id())) is None


def test_bulk_enqueue_stores_every_job(run: Run[Any], broker: Broker) -> None:
    jobs = [make_job(args=[i]) for i in range(1200)]
    run(broker.enqueue(jobs, {}))
    stored = run(broker.list_jobs(limit=2000))
    assert {j.id for j in stored} == {j.id for j in jobs}
    assert get(run, broker, jobs[777].id).args == [777]


def test_bulk_enqueue_is_all_or_nothing_on_queue_full(run: Run[Any], broker: Broker) -> None:
    # the first jobs of the batch fit their queue; a later one overflows another queue
    batch = [*make_jobs(5, queue="roomy"), *make_jobs(2, queue="tight")]
    with pytest.raises(QueueFull):
        run(broker.enqueue(batch, {"roomy": 100, "tight": 1}))
    for job in batch:
        assert run(broker.get(job.id)) is None
    assert run(broker.list_jobs()) == []


def test_bulk_enqueue_is_all_or_nothing_on_duplicate_id(run: Run[Any], broker: Broker) -> None:
    existing = make_job(args=["original"])
    run(broker.enqueue([existing], {}))
    clash = make_job(args=["impostor"])
    clash.id = existing.id
    fresh = make_jobs(3)
    with pytest.raises(DuplicateJob) as raised:
        run(broker.enqueue([*fresh, clash], {}))
    assert raised.value.job_id == existing.id
    for job in fresh:
        assert run(broker.get(job.id)) is None
    assert get(run, broker, existing.id).args == ["original"]


def test_single_enqueue_of_an_existing_id_changes_nothing(
    run: Run[Any], broker: Broker
) -> None:
    existing = make_job(args=["original"])
    run(broker.enqueue([existing], {}))
    clash = make_job(args=["impostor"], delay=60)
    clash.id = existing.id
    with pytest.raises(DuplicateJob) as raised:
        run(broker.enqueue([clash], {}))
    assert raised.value.job_id == existing.id
    assert isinstance(raised.value, ConveyorError)
    stored = get(run, broker, existing.id)
    assert (stored.args, stored.state) == (["original"], JobState.QUEUED)
    assert run(broker.counts())["default"]["scheduled"] == 0


def test_enqueue_nothing_is_a_no_op(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue([], {"default": 0}))
    assert run(broker.list_jobs()) == []


def test_usable_from_several_threads_and_loops(run: Run[Any], broker: Broker) -> None:
    """The base class promises one instance may serve several event loops and threads."""
    batches = [make_jobs(25, queue=f"q{i}") for i in range(4)]

    async def produce_and_claim(index: int) -> list[str]:
        await broker.enqueue(batches[index], {})
        got = await broker.claim(f"thread-{index}", [f"q{index}"], 100, LEASE)
        assert await broker.get(got[0].id) is not None
        return ids(got)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: asyncio.run(produce_and_claim(i)), range(4)))
    for index, claimed in enumerate(results):
        assert sorted(claimed) == sorted(ids(batches[index]))
    # and still from the test's own loop
    assert len(run(broker.list_jobs(state=JobState.RUNNING, limit=1000))) == 100


def test_enqueue_blocking_if_supported(run: Run[Any], broker: Broker) -> None:
    job = make_job(args=["sync"])
    try:
        broker.enqueue_blocking([job], {})
    except NotImplementedError:
        pytest.skip("this backend has no blocking enqueue")
    assert get(run, broker, job.id).args == ["sync"]
    with pytest.raises(QueueFull):
        broker.enqueue_blocking(make_jobs(2), {"default": 2})


# -- queue limits ---------------------------------------------------------------------------


def test_queue_full_stores_nothing(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue(make_jobs(2, queue="q"), {"q": 3}))
    overflow = make_jobs(2, queue="q")
    with pytest.raises(QueueFull) as info:
        run(broker.enqueue(overflow, {"q": 3}))
    assert info.value.queue == "q"
    assert info.value.limit == 3
    for job in overflow:
        assert run(broker.get(job.id)) is None
    assert len(run(broker.list_jobs(queue="q"))) == 2


def test_queue_limit_can_be_filled_exactly(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue(make_jobs(2, queue="q"), {"q": 3}))
    run(broker.enqueue([make_job(queue="q")], {"q": 3}))
    assert len(run(broker.list_jobs(queue="q"))) == 3
    with pytest.raises(QueueFull):
        run(broker.enqueue([make_job(queue="q")], {"q": 3}))


def test_concurrent_enqueues_fill_a_capped_queue_exactly(run: Run[Any], broker: Broker) -> None:
    """Calls made at once (which a backend may store in one go) each count the others."""

    async def at_once() -> list[BaseException | list[str | None]]:
        calls = [broker.enqueue(make_jobs(2, queue="q"), {"q": 4}) for _ in range(2)]
        calls += [broker.enqueue([make_job(queue="q")], {"q": 4}) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(at_once())
    assert all(r in ([None], [None, None]) or isinstance(r, QueueFull)
               for r in results), results
    assert len(run(broker.list_jobs(queue="q"))) == 4  # full, not more, not less


def test_queue_full_leaves_other_queues_alone(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue(make_jobs(3, queue="q"), {"q": 3}))
    with pytest.raises(QueueFull):
        run(broker.enqueue([make_job(queue="q")], {"q": 3}))
    # a limit on "q" says nothing about "other", however full "q" is
    others = make_jobs(10, queue="other")
    run(broker.enqueue(others, {"q": 3}))
    assert len(run(broker.list_jobs(queue="other"))) == 10
    # and "other"'s own limit counts only its own jobs
    run(broker.enqueue([make_job(queue="small")], {"small": 1, "q": 3}))
    assert len(run(broker.list_jobs(queue="small"))) == 1


def test_queue_limit_counts_scheduled_but_not_running_or_finished(
    run: Run[Any], broker: Broker
) -> None:
    run(broker.enqueue([make_job(queue="q", delay=60)], {"q": 2}))
    run(broker.enqueue([make_job(queue="q")], {"q": 2}))
    with pytest.raises(QueueFull):  # a scheduled job waits too
        run(broker.enqueue([make_job(queue="q")], {"q": 2}))
    running = claim_one(run, broker, queue="q")
    run(broker.enqueue([make_job(queue="q")], {"q": 2}))  # the running one no longer waits
    run(broker.settle([outcome(running, OutcomeKind.SUCCEEDED)]))
    with pytest.raises(QueueFull):
        run(broker.enqueue([make_job(queue="q")], {"q": 2}))
    assert len(run(broker.list_jobs(queue="q"))) == 3


# -- claim ----------------------------------------------------------------------------------


def test_claim_returns_at_most_limit(run: Run[Any], broker: Broker) -> None:
    jobs = make_jobs(5)
    run(broker.enqueue(jobs, {}))
    first = run(broker.claim("w1", ["default"], 3, LEASE))
    assert len(first) == 3
    assert all(j.state is JobState.RUNNING for j in first)
    rest = run(broker.claim("w1", ["default"], 10, LEASE))
    assert len(rest) == 2
    assert set(ids(first)) | set(ids(rest)) == {j.id for j in jobs}
    assert run(broker.claim("w1", ["default"], 10, LEASE)) == []


def test_claim_takes_oldest_run_at_first(run: Run[Any], broker: Broker) -> None:
    now = time.time()
    middle = make_job(run_at=now - 20)
    newest = make_job(run_at=now - 10)
    oldest = make_job(run_at=now - 30)
    # enqueued (and given ids) in an order that differs from run_at
    run(broker.enqueue([middle, newest, oldest], {}))
    assert ids(run(broker.claim("w1", ["default"], 1, LEASE))) == [oldest.id]
    assert ids(run(broker.claim("w1", ["default"], 1, LEASE))) == [middle.id]
    assert ids(run(broker.claim("w1", ["default"], 1, LEASE))) == [newest.id]


def test_claim_batch_is_the_oldest_sorted(run: Run[Any], broker: Broker) -> None:
    now = time.time()
    jobs = [make_job(run_at=now - offset) for offset in (5, 50, 20, 40, 1, 30)]
    run(broker.enqueue(jobs, {}))
    claimed = run(broker.claim("w1", ["default"], 3, LEASE))
    by_age = sorted(jobs, key=lambda j: j.run_at)
    assert ids(claimed) == ids(by_age[:3])


def test_claim_orders_by_run_at_across_queues(run: Run[Any], broker: Broker) -> None:
    now = time.time()
    a_new = make_job(queue="a", run_at=now - 10)
    b_old = make_job(queue="b", run_at=now - 40)
    a_old = make_job(queue="a", run_at=now - 30)
    b_new = make_job(queue="b", run_at=now - 20)
    run(broker.enqueue([a_new, b_old, a_old, b_new], {}))
    claimed = run(broker.claim("w1", ["a", "b"], 3, LEASE))
    assert ids(claimed) == [b_old.id, a_old.id, b_new.id]


def test_claim_only_from_given_queues(run: Run[Any], broker: Broker) -> None:
    a, b, c = make_job(queue="a"), make_job(queue="b"), make_job(queue="c")
    run(broker.enqueue([a, b, c], {}))
    assert run(broker.claim("w1", ["x"], 10, LEASE)) == []
    assert ids(run(broker.claim("w1", ["b"], 10, LEASE))) == [b.id]
    claimed = run(broker.claim("w1", ["a", "c", "b"], 10, LEASE))
    assert set(ids(claimed)) == {a.id, c.id}
    assert all(j.queue in ("a", "c") for j in claimed)


def test_claim_never_takes_scheduled_job_before_run_at(run: Run[Any], broker: Broker) -> None:
    later = make_job(delay=0.5)
    far = make_job(delay=3600)
    run(broker.enqueue([later, far], {}))
    assert run(broker.claim("w1", ["default"], 10, LEASE)) == []
    time.sleep(0.55)
    # ready once run_at passed, with no promote_scheduled needed
    assert ids(run(broker.claim("w1", ["default"], 10, LEASE))) == [later.id]
    assert get(run, broker, far.id).state is JobState.SCHEDULED


def test_claim_marks_job_running_and_owned(run: Run[Any], broker: Broker) -> None:
    job = make_job(args=["x"], kwargs={"y": 1})
    run(broker.enqueue([job], {}))
    before = time.time()
    (claimed,) = run(broker.claim("worker-7", ["default"], 1, 30.0))
    after = time.time()
    for record in (claimed, get(run, broker, job.id)):
        assert record.id == job.id
        assert record.state is JobState.RUNNING
        assert record.attempts == 1
        assert record.worker_id == "worker-7"
        assert record.started_at is not None
        assert before - SLACK <= record.started_at <= after + SLACK
        assert record.lease_expires_at is not None
        assert before + 30 - SLACK <= record.lease_expires_at <= after + 30 + SLACK
        assert record.args == ["x"] and record.kwargs == {"y": 1}


def test_claim_increments_attempts_each_time(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    assert job.attempts == 1
    run(broker.settle([outcome(job, OutcomeKind.RETRY, run_at=time.time() - 1, error="e")]))
    again = claim_one(run, broker, worker_id="w2")
    assert again.id == job.id
    assert again.attempts == 2
    assert again.worker_id == "w2"


def test_two_claims_never_return_the_same_job(run: Run[Any], broker: Broker) -> None:
    jobs = make_jobs(10)
    run(broker.enqueue(jobs, {}))
    first = run(broker.claim("w1", ["default"], 6, LEASE))
    second = run(broker.claim("w2", ["default"], 6, LEASE))
    assert len(first) == 6 and len(second) == 4
    assert not set(ids(first)) & set(ids(second))
    assert {get(run, broker, j).worker_id for j in ids(first)} == {"w1"}
    assert {get(run, broker, j).worker_id for j in ids(second)} == {"w2"}


async def _drain(broker: Broker, worker_id: str, batch: int) -> list[str]:
    """Claim until nothing is left, pausing between claims like a worker running its jobs
    (so that a claimer on another connection gets its turn at the storage)."""
    seen: list[str] = []
    while True:
        jobs = await broker.claim(worker_id, ["default"], batch, LEASE)
        if not jobs:
            return seen
        seen.extend(ids(jobs))
        await asyncio.sleep(0.005)


def _assert_disjoint_cover(first: list[str], second: list[str], jobs: list[JobRecord]) -> None:
    assert len(first) == len(set(first)) and len(second) == len(set(second))
    assert not set(first) & set(second), "a job was claimed twice"
    assert set(first) | set(second) == {j.id for j in jobs}
    assert first and second, "one claimer got nothing: the claims did not interleave"


def test_concurrent_claimers_see_disjoint_sets(run: Run[Any], broker: Broker) -> None:
    jobs = make_jobs(200)
    run(broker.enqueue(jobs, {}))

    async def both() -> list[list[str]]:
        return await asyncio.gather(_drain(broker, "w1", 7), _drain(broker, "w2", 5))

    first, second = run(both())
    _assert_disjoint_cover(first, second, jobs)


def test_concurrent_claimers_on_two_connections_see_disjoint_sets(
    run: Run[Any], broker: Broker, make_broker: MakeBroker
) -> None:
    other = make_broker()
    jobs = make_jobs(200)
    run(broker.enqueue(jobs, {}))

    async def both() -> list[list[str]]:
        return await asyncio.gather(_drain(broker, "w1", 7), _drain(other, "w2", 5))

    first, second = run(both())
    _assert_disjoint_cover(first, second, jobs)
    assert {get(run, broker, j).worker_id for j in second} == {"w2"}


# -- settle ---------------------------------------------------------------------------------


def test_settle_succeeded(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    finished = time.time()
    result = {"total": 3, "items": ["a", "ü"], "nested": {"x": None}}
    done = Outcome(job.id, "w1", OutcomeKind.SUCCEEDED, finished, result_json=json.dumps(result))
    run(broker.settle([done]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.SUCCEEDED
    assert stored.is_final
    assert stored.result == result
    assert stored.finished_at == pytest.approx(finished, abs=1.0)  # by the store's clock
    assert stored.expires_at == pytest.approx(finished + RETENTION, abs=1)
    assert stored.attempts == 1
    assert stored.error is None


def test_settle_succeeded_with_scalar_and_null_results(run: Run[Any], broker: Broker) -> None:
    jobs = [enqueue_and_claim(run, broker) for _ in range(3)]
    results = [json.dumps(42), json.dumps("text"), None]
    pairs = zip(jobs, results, strict=True)
    run(broker.settle([outcome(j, OutcomeKind.SUCCEEDED, result_json=r) for j, r in pairs]))
    assert [get(run, broker, j.id).result for j in jobs] == [42, "text", None]
    assert {get(run, broker, j.id).state for j in jobs} == {JobState.SUCCEEDED}


def test_settle_retry_schedules_the_job(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    run_at = time.time() + 0.5
    run(broker.settle([outcome(
        job, OutcomeKind.RETRY, run_at=run_at, error="TimeoutError: slow",
        traceback="Traceback ...\nTimeoutError: slow",
    )]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.SCHEDULED
    assert not stored.is_final
    assert stored.run_at == pytest.approx(run_at, abs=0.5)
    assert stored.error == "TimeoutError: slow"
    assert stored.traceback == "Traceback ...\nTimeoutError: slow"
    assert stored.attempts == 1
    assert stored.finished_at is None and stored.expires_at is None
    assert stored.lease_expires_at is None
    assert run(broker.claim("w2", ["default"], 1, LEASE)) == []
    time.sleep(0.55)
    again = claim_one(run, broker, worker_id="w2")
    assert (again.id, again.attempts, again.state) == (job.id, 2, JobState.RUNNING)


def test_settle_dead_keeps_error(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    finished = time.time()
    run(broker.settle([Outcome(
        job.id, "w1", OutcomeKind.DEAD, finished, error="ValueError: bad input",
        traceback="Traceback ...\nValueError: bad input",
    )]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.DEAD
    assert stored.error == "ValueError: bad input"
    assert stored.traceback == "Traceback ...\nValueError: bad input"
    assert stored.finished_at == pytest.approx(finished, abs=1.0)  # by the store's clock
    assert stored.expires_at == pytest.approx(finished + RETENTION, abs=1)
    assert run(broker.claim("w1", ["default"], 1, LEASE)) == []


def test_settle_cancelled(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    finished = time.time()
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.CANCELLED, finished)]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.CANCELLED
    assert stored.finished_at == pytest.approx(finished, abs=1.0)  # by the store's clock
    assert stored.expires_at == pytest.approx(finished + RETENTION, abs=1)
    assert run(broker.claim("w1", ["default"], 1, LEASE)) == []


def test_settle_requeue_gives_the_attempt_back(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    assert job.attempts == 1
    run(broker.settle([outcome(job, OutcomeKind.REQUEUE)]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.QUEUED
    assert stored.attempts == 0
    assert stored.lease_expires_at is None
    assert stored.finished_at is None
    # immediately claimable, by anyone
    again = claim_one(run, broker, worker_id="w2")
    assert (again.id, again.attempts, again.worker_id) == (job.id, 1, "w2")


@pytest.mark.parametrize("kind", [OutcomeKind.REQUEUE, OutcomeKind.RETRY])
def test_settle_back_to_waiting_honours_a_cancel_request(
    run: Run[Any], broker: Broker, kind: OutcomeKind
) -> None:
    """A job whose cancel was requested while it ran must not run again.

    The worker may end the attempt with requeue (it is shutting down) or retry (the job
    failed) before its next heartbeat tells it about the request; the job then waits again,
    and ``cancel`` says a waiting job is cancelled at once.
    """
    job = enqueue_and_claim(run, broker)
    run(broker.cancel(job.id))
    run(broker.settle([outcome(job, kind, run_at=time.time() - 1, error="interrupted")]))
    stored = get(run, broker, job.id)
    assert run(broker.claim("w2", ["default"], 1, LEASE)) == [], "a cancelled job ran again"
    assert stored.state is JobState.CANCELLED
    assert stored.finished_at is not None and stored.expires_at is not None


def test_settle_many_outcomes_at_once(run: Run[Any], broker: Broker) -> None:
    jobs = [enqueue_and_claim(run, broker) for _ in range(5)]
    kinds = [OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.DEAD,
             OutcomeKind.CANCELLED, OutcomeKind.REQUEUE]
    run(broker.settle([
        outcome(j, k, run_at=time.time() + 60 if k is OutcomeKind.RETRY else None)
        for j, k in zip(jobs, kinds, strict=True)
    ]))
    states = [get(run, broker, j.id).state for j in jobs]
    assert states == [JobState.SUCCEEDED, JobState.SCHEDULED, JobState.DEAD,
                      JobState.CANCELLED, JobState.QUEUED]


@pytest.mark.parametrize("kind", [OutcomeKind.RETRY, OutcomeKind.SUCCEEDED, OutcomeKind.DEAD])
def test_a_late_copy_of_an_outcome_does_not_touch_the_next_attempt(
    run: Run[Any], broker: Broker, kind: OutcomeKind
) -> None:
    """A settle sent again after its reply was lost may arrive once the same worker holds
    the job's next attempt: it names the attempt it ends, and is ignored."""
    run(broker.enqueue([make_job()], {}))
    first = claim_one(run, broker)
    assert first.attempts == 1
    retry = outcome(first, OutcomeKind.RETRY, run_at=time.time() - 1, claim=first.claim,
                    error="first try")
    run(broker.settle([retry]))
    second = claim_one(run, broker)
    assert (second.id, second.attempts) == (first.id, 2)
    late = outcome(first, kind, claim=first.claim, result_json='"late"', error="late copy")
    run(broker.settle([retry, late]))
    now = run(broker.get(first.id))
    assert now is not None and (now.state, now.attempts) == (JobState.RUNNING, 2)
    run(broker.settle([outcome(second, OutcomeKind.SUCCEEDED, claim=second.claim,
                               result_json='"second"')]))
    done = run(broker.get(first.id))
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == "second"


def test_error_text_that_utf8_cannot_encode_is_stored_escaped(
    run: Run[Any], broker: Broker
) -> None:
    job = enqueue_and_claim(run, broker)
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")  # an undecodable file name
    run(broker.settle([outcome(job, OutcomeKind.DEAD, error=f"FileNotFoundError: {name}",
                               traceback=f"Traceback: {name}")]))
    stored = run(broker.get(job.id))
    assert stored is not None and stored.state is JobState.DEAD
    assert stored.error == "FileNotFoundError: report-\\udcff.csv"
    assert stored.traceback == "Traceback: report-\\udcff.csv"


def test_settle_from_a_worker_that_does_not_own_the_job_is_ignored(
    run: Run[Any], broker: Broker
) -> None:
    job = enqueue_and_claim(run, broker, worker_id="owner")
    run(broker.settle([
        Outcome(job.id, "intruder", OutcomeKind.SUCCEEDED, time.time(), result_json="1")
    ]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.RUNNING
    assert stored.worker_id == "owner"
    assert stored.result is None


def test_settle_after_lease_taken_over_is_ignored(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker, worker_id="slow", lease=SHORT)
    time.sleep(PAST_SHORT)
    recovery = run(broker.recover_expired(5))
    assert recovery == Recovery(requeued=1)
    assert recovery.jobs == [(job.id, "default", "charged")]
    # the slow worker reports after its lease was taken away: nothing happens
    run(broker.settle([outcome(job, OutcomeKind.DEAD, error="late")]))
    stored = get(run, broker, job.id)
    assert stored.state is JobState.QUEUED
    assert stored.error != "late"
    # ... also once another worker holds the job
    taker = claim_one(run, broker, worker_id="fast")
    run(broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result_json='"late"')]))
    assert get(run, broker, job.id).state is JobState.RUNNING
    assert get(run, broker, job.id).worker_id == "fast"
    # while the new owner settles normally
    run(broker.settle([outcome(taker, OutcomeKind.SUCCEEDED, result_json='"fast"')]))
    stored = get(run, broker, job.id)
    assert (stored.state, stored.result) == (JobState.SUCCEEDED, "fast")


def test_settle_twice_does_not_change_a_final_job(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    run(broker.settle([outcome(job, OutcomeKind.SUCCEEDED, result_json='"first"')]))
    run(broker.settle([outcome(job, OutcomeKind.DEAD, error="second")]))
    stored = get(run, broker, job.id)
    assert (stored.state, stored.result, stored.error) == (JobState.SUCCEEDED, "first", None)


# -- heartbeat and workers ------------------------------------------------------------------


def test_heartbeat_extends_leases(run: Run[Any], broker: Broker) -> None:
    worker = make_worker("w1")
    job = enqueue_and_claim(run, broker, worker_id="w1", lease=1.0)
    assert job.lease_expires_at is not None
    before = time.time()
    beat = run(broker.heartbeat(worker, {job.id: job.claim}, 60.0))
    assert beat == Beat()
    stored = get(run, broker, job.id)
    assert stored.lease_expires_at is not None
    assert stored.lease_expires_at > job.lease_expires_at + 50
    assert stored.lease_expires_at >= before + 60 - SLACK
    assert stored.state is JobState.RUNNING and stored.worker_id == "w1"


def test_heartbeat_keeps_a_short_lease_alive(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker, worker_id="w1", lease=SHORT)
    run(broker.heartbeat(make_worker("w1"), {job.id: job.claim}, 60.0))
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(5)) == Recovery()
    assert get(run, broker, job.id).state is JobState.RUNNING


def test_heartbeat_does_not_extend_another_workers_lease(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker, worker_id="owner", lease=SHORT)
    run(broker.cancel(job.id))
    assert run(broker.heartbeat(make_worker("other"), {job.id: job.claim}, 60.0)).lost == {
        job.id}
    assert get(run, broker, job.id).lease_expires_at == pytest.approx(
        job.lease_expires_at, abs=1e-3
    )


def test_heartbeat_reports_cancel_requests(run: Run[Any], broker: Broker) -> None:
    worker = make_worker("w1")
    keep = enqueue_and_claim(run, broker, worker_id="w1")
    stop = enqueue_and_claim(run, broker, worker_id="w1")
    held = {keep.id: keep.claim, stop.id: stop.claim}
    assert run(broker.heartbeat(worker, held, LEASE)) == Beat()
    run(broker.cancel(stop.id))
    assert run(broker.heartbeat(worker, held, LEASE)) == Beat(cancel={stop.id})
    # asked again until the worker settles it
    assert run(broker.heartbeat(worker, held, LEASE)) == Beat(cancel={stop.id})
    run(broker.settle([outcome(stop, OutcomeKind.CANCELLED)]))
    # settled: no longer this worker's attempt
    assert run(broker.heartbeat(worker, held, LEASE)) == Beat(lost={stop.id})


def test_heartbeat_reports_an_attempt_recovered_meanwhile(run: Run[Any], broker: Broker) -> None:
    """Fencing: a worker cut off past its lease learns that its attempt was taken over, and
    its heartbeat neither extends the new attempt's lease nor keeps the old one alive."""
    old = enqueue_and_claim(run, broker, worker_id="cut-off", lease=SHORT)
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    new = claim_one(run, broker, "w2", lease=SHORT)
    assert new.id == old.id and new.attempts == old.attempts + 1
    beat = run(broker.heartbeat(make_worker("cut-off"), {old.id: old.claim}, 60.0))
    assert beat == Beat(lost={old.id})
    assert get(run, broker, old.id).lease_expires_at == pytest.approx(
        new.lease_expires_at, abs=1e-3
    )


def test_heartbeat_reports_an_older_attempt_of_the_same_worker(
    run: Run[Any], broker: Broker
) -> None:
    first = enqueue_and_claim(run, broker, worker_id="w1", lease=SHORT)
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    again = claim_one(run, broker, "w1")
    assert again.attempts == first.attempts + 1
    assert run(broker.heartbeat(make_worker("w1"), {first.id: first.claim}, LEASE)) == Beat(
        lost={first.id}
    )
    assert run(broker.heartbeat(make_worker("w1"), {again.id: again.claim}, LEASE)) == Beat()


def test_set_progress_ignores_a_stale_attempt(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker, worker_id="w1")
    run(broker.set_progress("w1", [(job.id, job.claim - 1, 0.5, "an older attempt")]))
    assert get(run, broker, job.id).progress is None
    run(broker.set_progress("w1", [(job.id, job.claim, 0.5, "this attempt")]))
    assert get(run, broker, job.id).progress_message == "this attempt"


def test_recovery_charges_only_started_jobs(run: Run[Any], broker: Broker) -> None:
    """Jobs claimed ahead of a free slot and never started go back uncharged."""
    run(broker.enqueue(make_jobs(3), {}))
    started, *held = run(broker.claim("lost", ["default"], 3, SHORT, start=1))
    time.sleep(PAST_SHORT)
    recovery = run(broker.recover_expired(1))
    assert recovery.dead == {"default": 1}
    assert sorted(recovery.jobs) == sorted([(started.id, "default", "dead"),
                                            *((job.id, "default", "uncharged") for job in held)])
    assert get(run, broker, started.id).state is JobState.DEAD
    for job in held:
        stored = get(run, broker, job.id)
        assert (stored.state, stored.recoveries, stored.attempts) == (JobState.QUEUED, 0, 0)


def _put_back_uncharged(run: Run[Any], broker: Broker, first: JobRecord, how: str) -> None:
    """End ``first``'s attempt so that its job goes back to waiting with its attempt given
    back: a deferral (RateLimited), a hand-back (shutdown), or a recovery of the job held
    unstarted by a worker that was lost."""
    if how == "deferred":
        run(broker.settle([outcome(first, OutcomeKind.RETRY, run_at=time.time() - 1,
                                   claim=first.claim, deferred=True)]))
    elif how == "handed back":
        run(broker.settle([outcome(first, OutcomeKind.REQUEUE, claim=first.claim)]))
    else:
        time.sleep(PAST_SHORT)
        run(broker.recover_expired(5))


@pytest.mark.parametrize("how", ["deferred", "handed back", "recovered unstarted"])
def test_the_same_worker_claiming_a_job_again_gets_a_new_claim(
    run: Run[Any], broker: Broker, how: str
) -> None:
    """An attempt given back uncharged keeps the attempt number, and the same worker may
    claim the job again: writes of the earlier claim (an outcome, a heartbeat or progress
    sent again after a lost reply) name that claim and touch nothing of the new one."""
    run(broker.enqueue([make_job()], {}))
    lease = SHORT if how == "recovered unstarted" else LEASE
    (first,) = run(broker.claim("w1", ["default"], 1, lease, start=0))
    _put_back_uncharged(run, broker, first, how)
    stored = get(run, broker, first.id)
    assert (stored.state, stored.attempts) in {(JobState.QUEUED, 0), (JobState.SCHEDULED, 0)}
    second = claim_one(run, broker)
    assert (second.id, second.attempts, second.worker_id) == (first.id, 1, "w1")
    assert second.claim > first.claim
    late = outcome(first, OutcomeKind.SUCCEEDED, claim=first.claim, result_json='"late"')
    run(broker.settle([late, outcome(first, OutcomeKind.DEAD, claim=first.claim,
                                     error="late copy")]))
    beat = run(broker.heartbeat(make_worker("w1"), {first.id: first.claim}, LEASE))
    assert beat.lost == {first.id}
    run(broker.set_progress("w1", [(first.id, first.claim, 0.9, "a late copy")]))
    now = get(run, broker, first.id)
    assert (now.state, now.attempts, now.result, now.progress) == (
        JobState.RUNNING, 1, None, None)
    assert run(broker.heartbeat(make_worker("w1"), {second.id: second.claim}, LEASE)) == Beat()
    run(broker.settle([outcome(second, OutcomeKind.SUCCEEDED, claim=second.claim,
                               result_json='"second"')]))
    done = get(run, broker, first.id)
    assert (done.state, done.result) == (JobState.SUCCEEDED, "second")


def test_a_claim_number_never_goes_back(run: Run[Any], broker: Broker) -> None:
    """Unlike attempts: a dead job enqueued again (``retry``) starts its attempts over, but
    its next claim is still a new one."""
    run(broker.enqueue([make_job()], {}))
    first = claim_one(run, broker)
    run(broker.settle([outcome(first, OutcomeKind.DEAD, claim=first.claim, error="x")]))
    assert run(broker.retry(first.id)) is not None
    second = claim_one(run, broker)
    assert second.attempts == 1 and second.claim > first.claim


def test_a_job_deleted_and_enqueued_again_gets_a_new_claim(run: Run[Any], broker: Broker) -> None:
    """The same id enqueued again starts its attempts over, not its claims: writes of the
    deleted job's attempt (sent again after a lost reply) touch nothing of the new one's."""
    job = make_job()
    run(broker.enqueue([job], {}))
    first = claim_one(run, broker)
    ended = outcome(first, OutcomeKind.DEAD, claim=first.claim, error="old")
    run(broker.settle([ended]))
    assert run(broker.delete(job.id))
    run(broker.enqueue([dataclasses.replace(make_job(), id=job.id)], {}))
    second = claim_one(run, broker)
    assert (second.id, second.attempts) == (job.id, 1) and second.claim > first.claim
    run(broker.settle([ended]))
    run(broker.set_progress("w1", [(job.id, first.claim, 0.5, "old")]))
    assert run(broker.heartbeat(make_worker("w1"), {job.id: first.claim}, LEASE)).lost == {
        job.id}
    now = get(run, broker, job.id)
    assert (now.state, now.error, now.progress) == (JobState.RUNNING, None, None)


def test_a_job_enqueued_again_into_another_queue_gets_a_new_claim(
    run: Run[Any], broker: Broker
) -> None:
    """The same id in another queue (with ``?shard=queue``, another store): its claim is
    still new, so a late start mark, heartbeat, progress or outcome (even one that names no
    queue) of the first attempt touches nothing of the new one, held unstarted."""
    job = make_job(queue="first")
    run(broker.enqueue([job], {}))
    first = claim_one(run, broker, queue="first")
    run(broker.settle([outcome(first, OutcomeKind.SUCCEEDED, claim=first.claim,
                               result_json="1", queue="first")]))
    assert run(broker.delete(job.id))
    run(broker.enqueue([dataclasses.replace(make_job(queue="second"), id=job.id)], {}))
    (second,) = run(broker.claim("w1", ["second"], 1, SHORT, start=0))
    assert second.claim > first.claim
    run(broker.set_progress("w1", [(job.id, first.claim, 0.5, "old")]))
    beat = run(broker.heartbeat(make_worker("w1"), {job.id: first.claim}, LEASE,
                                [(job.id, first.claim)]))
    assert beat.lost == {job.id}
    run(broker.settle([outcome(first, OutcomeKind.DEAD, claim=first.claim, error="old")]))
    now = get(run, broker, job.id)
    assert (now.state, now.error, now.progress) == (JobState.RUNNING, None, None)
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    back = get(run, broker, job.id)
    assert (back.state, back.recoveries, back.attempts) == (JobState.QUEUED, 0, 0)


def test_a_stale_heartbeat_neither_renews_nor_marks_a_later_claim(
    run: Run[Any], broker: Broker
) -> None:
    """A heartbeat naming an earlier claim of a job the same worker holds again (held
    unstarted, with a short lease) neither extends that lease nor marks it started: when
    the worker is lost, the job comes back uncharged."""
    run(broker.enqueue([make_job()], {}))
    (first,) = run(broker.claim("w1", ["default"], 1, LEASE, start=0))
    run(broker.settle([outcome(first, OutcomeKind.REQUEUE, claim=first.claim)]))
    (second,) = run(broker.claim("w1", ["default"], 1, SHORT, start=0))
    assert second.claim > first.claim
    beat = run(broker.heartbeat(make_worker("w1"), {first.id: first.claim}, LEASE,
                                [(first.id, first.claim)]))
    assert beat.lost == {first.id}
    time.sleep(PAST_SHORT)
    recovery = run(broker.recover_expired(5))
    assert recovery.jobs == [(first.id, "default", "uncharged")]
    stored = get(run, broker, first.id)
    assert (stored.state, stored.recoveries, stored.attempts) == (JobState.QUEUED, 0, 0)


def test_a_heartbeat_marks_held_jobs_started(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue(make_jobs(2), {}))
    first, second = run(broker.claim("lost", ["default"], 2, SHORT, start=0))
    held = {first.id: first.claim, second.id: second.claim}
    run(broker.heartbeat(make_worker("lost"), held, SHORT, [(first.id, first.claim)]))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    assert get(run, broker, first.id).recoveries == 1
    assert get(run, broker, second.id).recoveries == 0


def test_a_job_held_unstarted_by_a_lost_worker_comes_back_suspect(
    run: Run[Any], broker: Broker
) -> None:
    """It may have started just before its worker died: uncharged, but it runs alone next,
    held unstarted until a heartbeat marks it started, so its next death is charged."""
    job = make_job()
    run(broker.enqueue([job], {}))
    run(broker.claim("lost", ["default"], 1, SHORT, start=0))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    assert get(run, broker, job.id).recoveries == 0
    (again,) = run(broker.claim("w2", ["default"], 1, SHORT, start=1))
    assert again.suspect, "the next claim must make it a suspect"
    time.sleep(PAST_SHORT)  # held unstarted although a slot was free: still uncharged
    run(broker.recover_expired(5))
    assert get(run, broker, job.id).recoveries == 0
    (third,) = run(broker.claim("w3", ["default"], 1, SHORT, start=1))
    assert third.suspect
    run(broker.heartbeat(make_worker("w3"), {third.id: third.claim}, SHORT,
                         [(third.id, third.claim)]))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    assert get(run, broker, job.id).recoveries == 1


def test_a_plain_job_is_no_suspect(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    assert not job.suspect


def test_a_stale_start_mark_leaves_another_workers_held_job_alone(
    run: Run[Any], broker: Broker
) -> None:
    """A worker cut off reports a start of a job another worker now holds unstarted: that
    worker's job stays unstarted (uncharged if it is lost with its worker)."""
    job = make_job()
    run(broker.enqueue([job], {}))
    (old,) = run(broker.claim("cut-off", ["default"], 1, SHORT, start=0))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    run(broker.claim("holder", ["default"], 1, SHORT, start=0))
    run(broker.heartbeat(make_worker("cut-off"), {}, LEASE, [(old.id, old.claim)]))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(5))
    assert get(run, broker, job.id).recoveries == 0


def test_recovery_does_not_charge_a_job_whose_worker_is_alive(
    run: Run[Any], broker: Broker
) -> None:
    job = enqueue_and_claim(run, broker, worker_id="alive", lease=SHORT)
    run(broker.heartbeat(make_worker("alive"), {}, LEASE))  # registered, the job not renewed
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(1)) == Recovery(requeued=1)
    stored = get(run, broker, job.id)
    assert (stored.state, stored.recoveries, stored.attempts) == (JobState.QUEUED, 0, 0)


def test_heartbeat_with_many_jobs(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue(make_jobs(1200), {}))
    claimed = run(broker.claim("w1", ["default"], 1200, SHORT))
    assert len(claimed) == 1200
    run(broker.cancel(claimed[-1].id))
    run(broker.cancel(claimed[3].id))
    beat = run(broker.heartbeat(make_worker("w1"), {j.id: j.claim for j in claimed}, 60.0))
    assert beat.lost == set()
    assert beat.cancel == {claimed[-1].id, claimed[3].id}
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(5)) == Recovery()


def test_heartbeat_registers_the_worker(run: Run[Any], broker: Broker) -> None:
    assert run(broker.workers()) == []
    worker = make_worker("w1", queues=["default", "emails"])
    before = time.time()
    run(broker.heartbeat(worker, {}, LEASE))
    (seen,) = run(broker.workers())
    assert seen.id == "w1"
    assert seen.host == "test-host" and seen.pid == 4242
    assert seen.queues == ["default", "emails"]
    assert (seen.concurrency, seen.min_concurrency, seen.max_concurrency) == (4, 1, 8)
    assert (seen.busy, seen.processed, seen.failed) == (2, 10, 1)
    assert seen.started_at == pytest.approx(worker.started_at, abs=1e-3)
    assert before - SLACK <= seen.heartbeat_at <= time.time() + SLACK


def test_heartbeat_updates_the_worker(run: Run[Any], broker: Broker) -> None:
    worker = make_worker("w1")
    run(broker.heartbeat(worker, {}, LEASE))
    worker.busy, worker.processed, worker.concurrency = 5, 99, 6
    run(broker.heartbeat(worker, {}, LEASE))
    run(broker.heartbeat(make_worker("w2"), {}, LEASE))
    seen = {w.id: w for w in run(broker.workers())}
    assert set(seen) == {"w1", "w2"}
    assert (seen["w1"].busy, seen["w1"].processed, seen["w1"].concurrency) == (5, 99, 6)


def test_unregister_worker(run: Run[Any], broker: Broker) -> None:
    run(broker.heartbeat(make_worker("w1"), {}, LEASE))
    run(broker.heartbeat(make_worker("w2"), {}, LEASE))
    run(broker.unregister_worker("w1"))
    assert [w.id for w in run(broker.workers())] == ["w2"]
    run(broker.unregister_worker("never-seen"))  # harmless
    assert [w.id for w in run(broker.workers())] == ["w2"]


def test_workers_lists_only_current_heartbeats(run: Run[Any], broker: Broker) -> None:
    run(broker.heartbeat(make_worker("gone"), {}, SHORT))
    run(broker.heartbeat(make_worker("alive"), {}, LEASE))
    time.sleep(PAST_SHORT)
    assert [w.id for w in run(broker.workers())] == ["alive"]


# -- recover_expired ------------------------------------------------------------------------


def test_recover_expired_requeues_lost_jobs(run: Run[Any], broker: Broker) -> None:
    lost = enqueue_and_claim(run, broker, worker_id="lost", lease=SHORT)
    healthy = enqueue_and_claim(run, broker, worker_id="alive", lease=LEASE)
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(3)) == Recovery(requeued=1)
    stored = get(run, broker, lost.id)
    assert stored.state is JobState.QUEUED
    assert stored.recoveries == 1
    assert stored.worker_id is None
    assert stored.lease_expires_at is None
    assert get(run, broker, healthy.id).state is JobState.RUNNING
    assert get(run, broker, healthy.id).recoveries == 0
    again = claim_one(run, broker, worker_id="w2")
    assert (again.id, again.worker_id, again.recoveries) == (lost.id, "w2", 1)
    # nothing more to do
    assert run(broker.recover_expired(3)) == Recovery()


def test_recover_expired_gives_up_after_max_recoveries(run: Run[Any], broker: Broker) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    assert expire_and_recover(run, broker, job.id, max_recoveries=2) == Recovery(requeued=1)
    assert get(run, broker, job.id).state is JobState.QUEUED
    recovery = expire_and_recover(run, broker, job.id, max_recoveries=2)
    assert (recovery.requeued, recovery.dead, recovery.dead_total) == (0, {"default": 1}, 1)
    stored = get(run, broker, job.id)
    assert stored.state is JobState.DEAD
    assert stored.recoveries == 2
    assert stored.error
    assert stored.finished_at is not None
    # reported in the minute the job died, by the backend's clock
    assert recovery.died_at == pytest.approx(stored.finished_at, abs=1e-3)
    assert stored.expires_at == pytest.approx(stored.finished_at + RETENTION, abs=1)
    assert run(broker.claim("w1", ["default"], 1, LEASE)) == []
    assert ids(run(broker.list_jobs(state=JobState.DEAD))) == [job.id]


def test_recover_expired_with_one_allowed_loss_kills_at_once(
    run: Run[Any], broker: Broker
) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    recovery = expire_and_recover(run, broker, job.id, max_recoveries=1)
    assert (recovery.requeued, recovery.dead) == (0, {"default": 1})
    assert get(run, broker, job.id).state is JobState.DEAD


def test_recover_expired_reports_dead_jobs_by_queue(run: Run[Any], broker: Broker) -> None:
    # max_recoveries 2: jobs lost for the first time are requeued, jobs lost before die
    veterans = [make_job(queue="emails"), make_job(queue="emails"), make_job(queue="reports")]
    run(broker.enqueue(veterans, {}))
    assert len(run(broker.claim("lost", ["emails", "reports"], 10, SHORT))) == 3
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(2)) == Recovery(requeued=3)
    fresh = [make_job(queue="emails"), make_job(queue="reports")]
    run(broker.enqueue(fresh, {}))
    lost = run(broker.claim("lost", ["emails", "reports"], 10, SHORT))
    assert sorted(ids(lost)) == sorted(ids([*veterans, *fresh]))
    healthy = enqueue_and_claim(run, broker, worker_id="alive", queue="emails")
    cancelled = enqueue_and_claim(run, broker, worker_id="lost", queue="reports", lease=SHORT)
    run(broker.cancel(cancelled.id))
    before = time.time()
    time.sleep(PAST_SHORT)
    recovery = run(broker.recover_expired(2))
    assert recovery.requeued == 2  # the fresh ones
    assert recovery.dead == {"emails": 2, "reports": 1}  # a cancel is not a death
    assert recovery.dead_total == 3
    assert before - SLACK <= recovery.died_at <= time.time() + SLACK
    for job in veterans:
        stored = get(run, broker, job.id)
        assert (stored.state, stored.recoveries) == (JobState.DEAD, 2)
        assert stored.finished_at == pytest.approx(recovery.died_at, abs=1.0)
    assert get(run, broker, cancelled.id).state is JobState.CANCELLED
    assert get(run, broker, healthy.id).state is JobState.RUNNING
    # what was moved is not reported again
    assert run(broker.recover_expired(2)) == Recovery()


def test_recover_expired_at_once_from_two_workers_counts_each_job_once(
    run: Run[Any], broker: Broker, make_broker: MakeBroker
) -> None:
    other = make_broker()  # another worker process on the same store
    jobs = [make_job(queue=q) for q in ("emails", "emails", "reports")]
    run(broker.enqueue(jobs, {}))
    run(broker.claim("lost", ["emails", "reports"], 10, SHORT))
    time.sleep(PAST_SHORT)

    async def both() -> list[Recovery]:
        return list(await asyncio.gather(broker.recover_expired(1), other.recover_expired(1),
                                         broker.recover_expired(1)))

    recoveries = run(both())
    totals: dict[str, int] = {}
    for recovery in recoveries:
        assert recovery.requeued == 0
        for queue, count in recovery.dead.items():
            totals[queue] = totals.get(queue, 0) + count
    assert totals == {"emails": 2, "reports": 1}
    assert all(get(run, broker, j.id).state is JobState.DEAD for j in jobs)


def test_recover_expired_cancels_jobs_whose_cancel_was_requested(
    run: Run[Any], broker: Broker
) -> None:
    job = enqueue_and_claim(run, broker, worker_id="lost", lease=SHORT)
    assert get(run, broker, job.id).state is JobState.RUNNING
    cancelled = run(broker.cancel(job.id))
    assert cancelled is not None and cancelled.cancel_requested
    time.sleep(PAST_SHORT)
    assert run(broker.recover_expired(3)) == Recovery()
    stored = get(run, broker, job.id)
    assert stored.state is JobState.CANCELLED
    assert stored.finished_at is not None
    assert stored.expires_at is not None
    assert run(broker.claim("w1", ["default"], 1, LEASE)) == []


def test_recover_expired_forgets_lapsed_workers(run: Run[Any], broker: Broker) -> None:
    run(broker.heartbeat(make_worker("gone"), {}, SHORT))
    run(broker.heartbeat(make_worker("alive"), {}, LEASE))
    time.sleep(PAST_SHORT)
    run(broker.recover_expired(3))
    assert [w.id for w in run(broker.workers())] == ["alive"]
    # a worker that comes back registers again
    run(broker.heartbeat(make_worker("gone"), {}, LEASE))
    assert {w.id for w in run(broker.workers())} == {"gone", "alive"}


# -- promote_scheduled and purge_expired ----------------------------------------------------


def test_promote_scheduled(run: Run[Any], broker: Broker) -> None:
    due = make_job(delay=0.5)
    far = make_job(delay=3600)
    queued = make_job()
    run(broker.enqueue([due, far, queued], {}))
    assert run(broker.promote_scheduled()) == 0
    time.sleep(0.55)
    assert run(broker.promote_scheduled()) == 1
    assert get(run, broker, due.id).state is JobState.QUEUED
    assert get(run, broker, far.id).state is JobState.SCHEDULED
    assert get(run, broker, queued.id).state is JobState.QUEUED
    assert run(broker.promote_scheduled()) == 0


def test_promote_scheduled_picks_up_due_retries(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    run(broker.settle([outcome(job, OutcomeKind.RETRY, run_at=time.time() - 1, error="e")]))
    assert get(run, broker, job.id).state is JobState.SCHEDULED
    assert run(broker.promote_scheduled()) == 1
    stored = get(run, broker, job.id)
    assert (stored.state, stored.error) == (JobState.QUEUED, "e")


def test_purge_expired_deletes_old_final_jobs(run: Run[Any], make_broker: MakeBroker) -> None:
    short = make_broker(retention=SHORT)
    finished = [
        settled(run, short, OutcomeKind.SUCCEEDED),
        settled(run, short, OutcomeKind.DEAD),
        settled(run, short, OutcomeKind.CANCELLED),
    ]
    waiting = make_job()
    run(short.enqueue([waiting, make_job()], {}))
    cancelled_waiting = run(short.cancel(waiting.id))
    assert cancelled_waiting is not None and cancelled_waiting.state is JobState.CANCELLED
    queued = make_job()
    scheduled = make_job(delay=3600)
    run(short.enqueue([queued, scheduled], {}))
    running = enqueue_and_claim(run, short, queue="busy")
    retrying = enqueue_and_claim(run, short, queue="retry")
    run(short.settle([outcome(retrying, OutcomeKind.RETRY, run_at=time.time() + 3600)]))
    time.sleep(PAST_SHORT)

    assert run(short.purge_expired()) == 4
    for job in [*finished, waiting]:
        assert run(short.get(job.id)) is None
    for job in (queued, scheduled, running, retrying):
        assert run(short.get(job.id)) is not None
    assert run(short.purge_expired()) == 0


def test_purge_expired_keeps_jobs_within_retention(run: Run[Any], broker: Broker) -> None:
    job = settled(run, broker, OutcomeKind.SUCCEEDED)
    assert job.state is JobState.SUCCEEDED
    assert run(broker.purge_expired()) == 0
    assert get(run, broker, job.id).result == {"ok": True}


# -- list_jobs and counts -------------------------------------------------------------------


def test_list_jobs_newest_first(run: Run[Any], broker: Broker) -> None:
    jobs = make_jobs(5)
    for job in jobs:  # one by one, in creation order
        run(broker.enqueue([job], {}))
    assert ids(run(broker.list_jobs())) == ids(jobs)[::-1]


def test_list_jobs_filters(run: Run[Any], broker: Broker) -> None:
    a1 = make_job(name="a", queue="q1")
    a2 = make_job(name="a", queue="q2")
    b1 = make_job(name="b", queue="q1")
    b2 = make_job(name="b", queue="q2", delay=3600)
    run(broker.enqueue([a1, a2, b1, b2], {}))
    claimed = claim_one(run, broker, queue="q1")
    assert claimed.id == a1.id

    assert ids(run(broker.list_jobs(state=JobState.RUNNING))) == [a1.id]
    assert ids(run(broker.list_jobs(state=JobState.QUEUED))) == [b1.id, a2.id]
    assert ids(run(broker.list_jobs(state=JobState.SCHEDULED))) == [b2.id]
    assert run(broker.list_jobs(state=JobState.DEAD)) == []
    assert ids(run(broker.list_jobs(queue="q1"))) == [b1.id, a1.id]
    assert ids(run(broker.list_jobs(queue="q2"))) == [b2.id, a2.id]
    assert run(broker.list_jobs(queue="nope")) == []
    assert ids(run(broker.list_jobs(name="a"))) == [a2.id, a1.id]
    assert ids(run(broker.list_jobs(name="b", queue="q1"))) == [b1.id]
    assert ids(run(broker.list_jobs(state=JobState.QUEUED, queue="q2", name="a"))) == [a2.id]
    assert run(broker.list_jobs(state=JobState.QUEUED, queue="q2", name="b")) == []
    # the records are complete
    (listed,) = run(broker.list_jobs(state=JobState.RUNNING))
    assert (listed.worker_id, listed.attempts, listed.name) == ("w1", 1, "a")


def test_list_jobs_limit_and_cursor(run: Run[Any], broker: Broker) -> None:
    jobs = make_jobs(25)
    run(broker.enqueue(jobs, {}))
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = ids(run(broker.list_jobs(limit=10, cursor=cursor)))
        if not page:
            break
        pages.append(page)
        cursor = page[-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [job_id for page in pages for job_id in page]
    assert len(set(flat)) == 25, "pages overlap"
    assert flat == ids(jobs)[::-1]


def test_list_jobs_cursor_with_filters(run: Run[Any], broker: Broker) -> None:
    jobs = [make_job(queue="even" if i % 2 == 0 else "odd") for i in range(20)]
    run(broker.enqueue(jobs, {}))
    evens = [j.id for j in jobs if j.queue == "even"][::-1]
    first = ids(run(broker.list_jobs(queue="even", limit=4)))
    second = ids(run(broker.list_jobs(queue="even", limit=4, cursor=first[-1])))
    rest = ids(run(broker.list_jobs(queue="even", limit=100, cursor=second[-1])))
    assert first + second + rest == evens


def test_counts_has_every_state_for_every_queue(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue([*make_jobs(3, queue="a"), make_job(queue="a", delay=3600)], {}))
    run(broker.enqueue(make_jobs(2, queue="b"), {}))
    running = claim_one(run, broker, queue="a")
    done = claim_one(run, broker, queue="b")
    run(broker.settle([outcome(done, OutcomeKind.SUCCEEDED)]))
    assert running.queue == "a"

    counts = run(broker.counts())
    every = {str(s) for s in JobState}
    assert set(counts) == {"a", "b"}
    for queue in ("a", "b"):
        assert set(counts[queue]) == every
        assert all(isinstance(n, int) for n in counts[queue].values())
    assert counts["a"] == {"queued": 2, "scheduled": 1, "running": 1,
                           "succeeded": 0, "dead": 0, "cancelled": 0}
    assert counts["b"] == {"queued": 1, "scheduled": 0, "running": 0,
                           "succeeded": 1, "dead": 0, "cancelled": 0}


# -- cancel, retry, retry_dead, delete ------------------------------------------------------


def test_cancel_waiting_jobs_at_once(run: Run[Any], broker: Broker) -> None:
    queued = make_job()
    scheduled = make_job(delay=3600)
    run(broker.enqueue([queued, scheduled], {}))
    for job in (queued, scheduled):
        before = time.time()
        result = run(broker.cancel(job.id))
        assert result is not None
        assert result.id == job.id
        assert result.state is JobState.CANCELLED
        assert result.finished_at is not None and result.finished_at >= before - SLACK
        assert result.expires_at == pytest.approx(result.finished_at + RETENTION, abs=1)
        assert get(run, broker, job.id).state is JobState.CANCELLED
    assert run(broker.claim("w1", ["default"], 10, LEASE)) == []


def test_cancel_running_job_only_asks(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker, worker_id="w1")
    result = run(broker.cancel(job.id))
    assert result is not None
    assert result.state is JobState.RUNNING
    assert result.cancel_requested is True
    assert result.worker_id == "w1"
    stored = get(run, broker, job.id)
    assert stored.state is JobState.RUNNING and stored.cancel_requested is True
    # the worker still owns it and ends it
    run(broker.settle([outcome(job, OutcomeKind.CANCELLED)]))
    assert get(run, broker, job.id).state is JobState.CANCELLED


@pytest.mark.parametrize(
    "kind", [OutcomeKind.SUCCEEDED, OutcomeKind.DEAD, OutcomeKind.CANCELLED]
)
def test_cancel_final_job_leaves_it_alone(
    run: Run[Any], broker: Broker, kind: OutcomeKind
) -> None:
    job = settled(run, broker, kind)
    result = run(broker.cancel(job.id))
    assert result is not None
    assert result.state is job.state
    assert result.finished_at == pytest.approx(job.finished_at, abs=1e-3)
    assert result.result == job.result
    assert result.error == job.error
    assert get(run, broker, job.id).state is job.state


def test_cancel_unknown_job_returns_none(run: Run[Any], broker: Broker) -> None:
    assert run(broker.cancel(new_id())) is None


@pytest.mark.parametrize("kind", [OutcomeKind.DEAD, OutcomeKind.CANCELLED])
def test_retry_puts_a_finished_job_back(
    run: Run[Any], broker: Broker, kind: OutcomeKind
) -> None:
    job = settled(run, broker, kind)
    assert job.attempts == 1
    result = run(broker.retry(job.id))
    assert result is not None
    assert result.state is JobState.QUEUED
    assert (result.attempts, result.recoveries) == (0, 0)
    assert result.finished_at is None and result.expires_at is None
    assert result.cancel_requested is False
    assert result.worker_id is None
    assert result.run_at <= time.time() + SLACK
    again = claim_one(run, broker, worker_id="w9")
    assert (again.id, again.attempts) == (job.id, 1)


def test_retry_of_a_recovered_dead_job_resets_recoveries(run: Run[Any], broker: Broker) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    assert expire_and_recover(run, broker, job.id, max_recoveries=1).dead == {"default": 1}
    result = run(broker.retry(job.id))
    assert result is not None
    assert (result.state, result.attempts, result.recoveries) == (JobState.QUEUED, 0, 0)


def test_retry_of_a_cancelled_waiting_job(run: Run[Any], broker: Broker) -> None:
    job = make_job(delay=3600)
    run(broker.enqueue([job], {}))
    run(broker.cancel(job.id))
    result = run(broker.retry(job.id))
    assert result is not None and result.state is JobState.QUEUED
    assert claim_one(run, broker).id == job.id


def test_retry_leaves_other_states_alone(run: Run[Any], broker: Broker) -> None:
    succeeded = settled(run, broker, OutcomeKind.SUCCEEDED)
    running = enqueue_and_claim(run, broker, queue="busy")
    queued = make_job(queue="idle")
    run(broker.enqueue([queued], {}))
    for job, state in ((succeeded, JobState.SUCCEEDED), (running, JobState.RUNNING),
                       (queued, JobState.QUEUED)):
        result = run(broker.retry(job.id))
        assert result is not None and result.state is state
        assert result.attempts == job.attempts
    assert get(run, broker, running.id).worker_id == "w1"
    assert get(run, broker, succeeded.id).result == {"ok": True}
    assert run(broker.retry(new_id())) is None


def test_retry_dead_all_queues(run: Run[Any], broker: Broker) -> None:
    dead = [settled(run, broker, OutcomeKind.DEAD, queue=q) for q in ("a", "a", "b")]
    cancelled = settled(run, broker, OutcomeKind.CANCELLED, queue="a")
    succeeded = settled(run, broker, OutcomeKind.SUCCEEDED, queue="b")
    assert run(broker.retry_dead()) == 3
    for job in dead:
        stored = get(run, broker, job.id)
        assert (stored.state, stored.attempts) == (JobState.QUEUED, 0)
    assert get(run, broker, cancelled.id).state is JobState.CANCELLED
    assert get(run, broker, succeeded.id).state is JobState.SUCCEEDED
    assert run(broker.retry_dead()) == 0


def test_retry_dead_one_queue(run: Run[Any], broker: Broker) -> None:
    in_a = [settled(run, broker, OutcomeKind.DEAD, queue="a") for _ in range(2)]
    in_b = settled(run, broker, OutcomeKind.DEAD, queue="b")
    assert run(broker.retry_dead("a")) == 2
    assert {get(run, broker, j.id).state for j in in_a} == {JobState.QUEUED}
    assert get(run, broker, in_b.id).state is JobState.DEAD
    assert run(broker.retry_dead("nope")) == 0
    assert run(broker.retry_dead("b")) == 1
    assert get(run, broker, in_b.id).state is JobState.QUEUED


def test_delete_removes_jobs_that_are_not_running(run: Run[Any], broker: Broker) -> None:
    queued = make_job()
    scheduled = make_job(delay=3600)
    run(broker.enqueue([queued, scheduled], {}))
    finished = settled(run, broker, OutcomeKind.DEAD, queue="other")
    for job in (queued, scheduled, finished):
        assert run(broker.delete(job.id)) is True
        assert run(broker.get(job.id)) is None
        assert run(broker.delete(job.id)) is False
    assert run(broker.claim("w1", ["default"], 10, LEASE)) == []


def test_delete_refuses_running_jobs(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    assert run(broker.delete(job.id)) is False
    stored = get(run, broker, job.id)
    assert stored.state is JobState.RUNNING and stored.worker_id == "w1"


def test_delete_unknown_job(run: Run[Any], broker: Broker) -> None:
    assert run(broker.delete(new_id())) is False


# -- ready_count, wait_for_work, set_progress -----------------------------------------------


def test_ready_count(run: Run[Any], broker: Broker) -> None:
    assert run(broker.ready_count(["default"], 100)) == 0
    run(broker.enqueue(make_jobs(4), {}))
    run(broker.enqueue([make_job(delay=0.5), make_job(delay=3600)], {}))
    run(broker.enqueue(make_jobs(3, queue="other"), {}))
    assert run(broker.ready_count(["default"], 100)) == 4
    assert run(broker.ready_count(["default"], 2)) == 2
    assert run(broker.ready_count(["other"], 100)) == 3
    assert run(broker.ready_count(["default", "other"], 100)) == 7
    assert run(broker.ready_count(["nope"], 100)) == 0
    time.sleep(0.55)  # the first scheduled job falls due, with no promotion
    assert run(broker.ready_count(["default"], 100)) == 5
    claim_one(run, broker)
    assert run(broker.ready_count(["default"], 100)) == 4


def test_wait_for_work_wakes_when_another_connection_enqueues(
    run: Run[Any], broker: Broker, make_broker: MakeBroker
) -> None:
    producer = make_broker()
    job = make_job()
    timeout = 5.0

    async def scenario() -> float:
        async def enqueue_later() -> None:
            await asyncio.sleep(0.2)
            await producer.enqueue([job], {})

        start = time.monotonic()
        await asyncio.gather(broker.wait_for_work(["default"], timeout), enqueue_later())
        return time.monotonic() - start

    elapsed = run(scenario())
    assert elapsed < 2.5, f"wait_for_work took {elapsed:.2f}s although a job arrived"
    assert ids(run(broker.claim("w1", ["default"], 1, LEASE))) == [job.id]


def test_wait_for_work_wakes_when_the_same_broker_enqueues(
    run: Run[Any], broker: Broker
) -> None:
    job = make_job()

    async def scenario() -> float:
        async def enqueue_later() -> None:
            await asyncio.sleep(0.2)
            await broker.enqueue([job], {})

        start = time.monotonic()
        await asyncio.gather(broker.wait_for_work(["default"], 5.0), enqueue_later())
        return time.monotonic() - start

    elapsed = run(scenario())
    assert elapsed < 2.5, f"wait_for_work took {elapsed:.2f}s although a job arrived"


def test_wait_for_work_wakes_when_a_scheduled_job_falls_due(
    run: Run[Any], broker: Broker
) -> None:
    run(broker.enqueue([make_job(delay=0.3)], {}))
    start = time.monotonic()
    run(broker.wait_for_work(["default"], 5.0))
    elapsed = time.monotonic() - start
    assert elapsed < 2.5, f"wait_for_work took {elapsed:.2f}s although a job fell due"
    assert run(broker.ready_count(["default"], 10)) == 1


def test_wait_for_work_returns_at_once_when_work_is_ready(
    run: Run[Any], broker: Broker
) -> None:
    run(broker.enqueue([make_job()], {}))
    start = time.monotonic()
    run(broker.wait_for_work(["default"], 5.0))
    assert time.monotonic() - start < 2.5


def test_wait_for_work_returns_after_the_timeout(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue([make_job(queue="elsewhere"), make_job(delay=3600)], {}))
    timeout = 0.3
    start = time.monotonic()
    run(asyncio.wait_for(broker.wait_for_work(["default"], timeout), timeout + 5))
    elapsed = time.monotonic() - start
    assert elapsed < timeout + 1.0


def test_set_progress(run: Run[Any], broker: Broker) -> None:
    job = enqueue_and_claim(run, broker)
    other = enqueue_and_claim(run, broker)
    run(broker.set_progress("w1", [(job.id, job.claim, 0.25, "a quarter"),
                                   (other.id, other.claim, 0.5, None)]))
    stored = get(run, broker, job.id)
    assert (stored.progress, stored.progress_message) == (0.25, "a quarter")
    assert get(run, broker, other.id).progress == 0.5
    assert get(run, broker, other.id).progress_message is None
    run(broker.set_progress("w1", [(job.id, job.claim, 0.75, "three quarters")]))
    stored = get(run, broker, job.id)
    assert (stored.progress, stored.progress_message) == (0.75, "three quarters")
    assert stored.state is JobState.RUNNING


def test_set_progress_ignores_jobs_that_are_not_running(run: Run[Any], broker: Broker) -> None:
    queued = make_job()
    run(broker.enqueue([queued], {}))
    run(broker.set_progress("w1", [(queued.id, 0, 0.5, "nope"), (new_id(), 1, 0.5, "unknown")]))
    stored = get(run, broker, queued.id)
    assert (stored.progress, stored.progress_message) == (None, None)
    assert run(broker.list_jobs()) == [stored]


def test_set_progress_ignores_another_workers_job(run: Run[Any], broker: Broker) -> None:
    """A worker whose lease was taken over must not write over the new attempt's progress."""
    job = enqueue_and_claim(run, broker, worker_id="w2")
    run(broker.set_progress("w1", [(job.id, job.claim, 0.9, "from a worker that lost the job")]))
    stored = get(run, broker, job.id)
    assert (stored.progress, stored.progress_message) == (None, None)
    run(broker.set_progress("w2", [(job.id, job.claim, 0.1, "its own")]))
    assert get(run, broker, job.id).progress_message == "its own"


# -- statistics -----------------------------------------------------------------------------


def stats_by_key(rows: list[MinuteStats]) -> dict[tuple[int, str], MinuteStats]:
    keyed = {(r.minute, r.queue): r for r in rows}
    assert len(keyed) == len(rows), f"more than one row per minute and queue: {rows}"
    return keyed


def test_stats_start_empty(run: Run[Any], broker: Broker) -> None:
    assert run(broker.stats(0)) == []
    run(broker.add_stats([]))
    run(broker.add_stats([MinuteStats(minute_of(time.time()), "default")]))  # nothing counted
    assert run(broker.stats(0)) == []


def test_add_stats_sums_rows_and_calls(run: Run[Any], make_broker: MakeBroker) -> None:
    broker, other = make_broker(), make_broker()  # two workers adding to the same minute
    now = minute_of(time.time())
    run(broker.add_stats([
        MinuteStats(now, "default", succeeded=3, failed=1, started=2, wait_total=0.5),
        MinuteStats(now, "default", succeeded=1, dead=2, cancelled=1, started=1,
                    wait_total=0.25),
    ]))
    run(other.add_stats([MinuteStats(now, "default", succeeded=10, wait_total=1.125)]))
    assert run(broker.stats(0)) == [
        MinuteStats(now, "default", succeeded=14, failed=1, dead=2, cancelled=1, started=3,
                    wait_total=1.875)
    ]


def test_stats_keep_queues_and_minutes_apart_oldest_first(
    run: Run[Any], broker: Broker
) -> None:
    now = minute_of(time.time())
    added = [
        MinuteStats(now, "b", succeeded=1),
        MinuteStats(now - 120, "a", failed=2),
        MinuteStats(now, "a", dead=3),
        MinuteStats(now - 60, "b", cancelled=4),
        MinuteStats(now - 120, "b", started=5, wait_total=2.5),
    ]
    run(broker.add_stats(added[:2]))
    run(broker.add_stats(added[2:]))
    rows = run(broker.stats(0))
    minutes = [r.minute for r in rows]
    assert minutes == sorted(minutes)
    assert stats_by_key(rows) == {(r.minute, r.queue): r for r in added}


def test_stats_since_takes_minutes_starting_at_or_after_it(
    run: Run[Any], broker: Broker
) -> None:
    now = minute_of(time.time())
    run(broker.add_stats([MinuteStats(m, "default", succeeded=1)
                          for m in (now - 180, now - 120, now - 60, now)]))
    assert [r.minute for r in run(broker.stats(now - 120))] == [now - 120, now - 60, now]
    assert [r.minute for r in run(broker.stats(now - 119.5))] == [now - 60, now]
    assert [r.minute for r in run(broker.stats(now))] == [now]
    assert run(broker.stats(now + 1)) == []


@pytest.mark.parametrize("queue", [
    "with spaces", "a:b:c", "{braces}", "ünïcödé 🚀", "tab\there", "succeeded", "x\x01started",
    "a" * 300,
])
def test_stats_queue_names_with_odd_characters(
    run: Run[Any], broker: Broker, queue: str
) -> None:
    now = minute_of(time.time())
    rows = [MinuteStats(now, queue, succeeded=2, dead=1, started=3, wait_total=0.75),
            MinuteStats(now, queue + ":", failed=1)]  # a neighbour that shares a prefix
    run(broker.add_stats(rows))
    run(broker.add_stats(rows[:1]))
    assert stats_by_key(run(broker.stats(now))) == {
        (now, queue): MinuteStats(now, queue, succeeded=4, dead=2, started=6, wait_total=1.5),
        (now, queue + ":"): rows[1],
    }


def test_stats_older_than_keeping_are_dropped(run: Run[Any], broker: Broker) -> None:
    """SQLite deletes them on purge_expired; Redis lets their keys expire."""
    now = minute_of(time.time())
    old = minute_of(time.time() - STATS_KEEP) - 120
    recent = minute_of(time.time() - STATS_KEEP) + 300
    job = settled(run, broker, OutcomeKind.SUCCEEDED)  # within retention: stays
    run(broker.add_stats([MinuteStats(m, "default", succeeded=1) for m in (old, recent, now)]))
    assert run(broker.purge_expired()) == 0  # statistics rows are not counted as jobs
    assert [r.minute for r in run(broker.stats(0))] == [recent, now]
    assert get(run, broker, job.id).state is JobState.SUCCEEDED
