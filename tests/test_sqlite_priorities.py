"""Priorities in the SQLite store: what the contract suite cannot see from outside.

Claims read queued jobs in rank order straight from an index (no sort, no scan of the
table), promote only due scheduled jobs, and keep "queued means due"; a job's boost is
stored with it, taken from the aging of the broker that set its priority.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.conftest import make_job
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.broker import RANK
from conveyor.job import JobState, Outcome, OutcomeKind
from conveyor.priority import QueueWeights
from store_helpers import plan, sqlite_brokers, statements

NS = "p"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'prio.db'}"


@pytest.fixture
def brokers(url: str) -> Iterator[Callable[[], SQLiteBroker]]:
    """``make()`` opens another broker on the test's store; all are closed at the end."""
    yield from sqlite_brokers(url, NS)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_indexed(url: str, statement: str, index: str) -> None:
    """``statement`` reads the jobs through ``index`` only: no scan, no sort."""
    steps = plan(url, statement)
    assert any(f"INDEX {NS}_jobs_{index}" in step for step in steps), (statement, steps)
    assert not any(step.startswith(f"SCAN {NS}_jobs") for step in steps), (statement, steps)
    assert not any("TEMP B-TREE" in step for step in steps), (statement, steps)


def fill(broker: SQLiteBroker) -> None:
    """Jobs in every waiting state, so that the planner sees a realistic table."""
    now = time.time()
    run(broker.enqueue([make_job(queue=q, run_at=now - k, priority=k % 5)
                        for q in ("a", "b") for k in range(20)], {}))
    run(broker.enqueue([make_job(queue=q, delay=60 + k) for q in ("a", "b")
                        for k in range(20)], {}))


def test_claims_read_queued_jobs_in_rank_order_from_their_index(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    fill(broker)
    now, until = time.time(), time.time() + 30

    def one(conn: sqlite3.Connection) -> None:
        broker._claim_one(conn, "w1", "a", 5, now, until)

    def merged(conn: sqlite3.Connection) -> None:
        broker._claim_merged(conn, "w1", ["a", "b"], 5, now, until)

    def weighted(conn: sqlite3.Connection) -> None:
        broker._claim_weighted(conn, "w1", ["a", "b"], 5, now, until,
                               QueueWeights({"a": 2, "b": 1}))

    for fn in (one, merged, weighted):
        seen = statements(url, fn)
        promote = [s for s in seen if "SET state='queued'" in s]
        ranked = [s for s in seen if f"ORDER BY {RANK}" in s]
        assert promote and ranked, seen
        for statement in promote:
            assert_indexed(url, statement, "scheduled")
        for statement in ranked:
            assert_indexed(url, statement, "queued")


def test_idle_looks_and_promotion_use_the_waiting_indexes(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    fill(broker)
    looks = statements(url, lambda conn: broker._ready_count(conn, ["a", "b"], 10))
    looks += statements(url, lambda conn: broker._next_due(conn, ["a", "b"]))
    for statement in looks:
        steps = plan(url, statement)
        assert not any(step.startswith(f"SCAN {NS}_jobs") for step in steps), steps
    promote = statements(url, lambda conn: broker._promote_all(conn, time.time()))
    # the queues with scheduled jobs, their jobs whose run time is no number, the due ones
    assert len(promote) == 3
    for statement in promote:
        steps = plan(url, statement)
        assert not any(step.startswith(f"SCAN {NS}_jobs") for step in steps), steps
    assert_indexed(url, promote[1], "scheduled")
    assert_indexed(url, promote[-1], "scheduled")


def test_a_claim_promotes_the_due_scheduled_jobs_of_its_queues_only(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    soon_a, soon_b = make_job(queue="a", delay=0.05), make_job(queue="b", delay=0.05)
    later = make_job(queue="a", delay=60)
    run(broker.enqueue([soon_a, soon_b, later], {}))
    time.sleep(0.1)
    assert [j.id for j in run(broker.claim("w1", ["a"], 5, 30.0))] == [soon_a.id]
    states = {j.id: j.state for j in run(broker.list_jobs())}
    assert states[soon_b.id] is JobState.SCHEDULED and states[later.id] is JobState.SCHEDULED
    assert run(broker.ready_count(["b"], 10)) == 1  # due, though not promoted yet
    assert run(broker.promote_scheduled()) == 1
    assert states[later.id] is JobState.SCHEDULED
    stored = run(broker.get(soon_b.id))
    assert stored is not None and stored.state is JobState.QUEUED


def _queued_not_due(url: str) -> int:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        (count,) = conn.execute(f"SELECT count(*) FROM {NS}_jobs WHERE state='queued' "
                                f"AND run_at > ?", (time.time(),)).fetchone()
        return int(count)
    finally:
        conn.close()


def test_every_way_back_to_queued_keeps_queued_jobs_due(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    now = time.time()
    jobs = [make_job(run_at=now - k, priority=k) for k in range(4)]
    delayed = make_job(delay=60, priority=2)
    run(broker.enqueue([*jobs, delayed], {}))
    claimed = run(broker.claim("w1", ["default"], 4, 0.05))
    first, second, third, fourth = claimed
    later = time.time() + 60
    run(broker.settle([
        Outcome(first.id, "w1", OutcomeKind.RETRY, time.time(), run_at=later,
                claim=first.claim),
        Outcome(second.id, "w1", OutcomeKind.REQUEUE, time.time(), claim=second.claim),
        Outcome(third.id, "w1", OutcomeKind.DEAD, time.time(), claim=third.claim),
    ]))
    time.sleep(0.1)
    assert run(broker.recover_expired(5)).requeued == 1  # the fourth's lease ran out
    assert run(broker.retry(third.id)) is not None
    assert run(broker.set_priority(delayed.id, -3)) is not None
    assert run(broker.promote_scheduled()) == 0
    states = {j.id: j.state for j in run(broker.list_jobs())}
    assert states[first.id] is JobState.SCHEDULED and states[delayed.id] is JobState.SCHEDULED
    assert {states[j.id] for j in (second, third, fourth)} == {JobState.QUEUED}
    assert _queued_not_due(url) == 0


def _boosts(url: str) -> dict[str, tuple[int, float]]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return {job_id: (priority, boost) for job_id, priority, boost in conn.execute(
            f"SELECT id, priority, boost FROM {NS}_jobs")}
    finally:
        conn.close()


def test_the_boost_is_stored_with_the_job_whatever_broker_moves_it_later(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    producer, other = brokers(), brokers()
    producer.aging, other.aging = 10.0, 100.0
    urgent, plain = make_job(priority=3), make_job()
    run(producer.enqueue([urgent, plain], {}))
    assert _boosts(url) == {urgent.id: (3, 30.0), plain.id: (0, 0.0)}
    (claimed,) = run(other.claim("w1", ["default"], 1, 30.0))
    assert claimed.id == urgent.id and claimed.priority == 3
    run(other.settle([Outcome(urgent.id, "w1", OutcomeKind.RETRY, time.time(),
                              run_at=time.time(), claim=claimed.claim)]))
    assert _boosts(url)[urgent.id] == (3, 30.0)  # the retry keeps the job's own boost
    run(other.set_priority(plain.id, 2))  # a change takes the changing broker's aging
    assert _boosts(url)[plain.id] == (2, 200.0)


def test_a_default_enqueue_writes_no_priority_columns(
        url: str, brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    plain = broker._enqueue_fn([make_job(), make_job()], {})
    ranked = broker._enqueue_fn([make_job(), make_job(priority=1)], {})
    inserts = [s for s in statements(url, plain) if s.startswith("INSERT")]
    assert inserts and not any("boost" in s or "priority" in s for s in inserts)
    inserts = [s for s in statements(url, ranked) if s.startswith("INSERT")]
    assert inserts and all("boost" in s for s in inserts)


def test_weights_keep_their_credits_when_the_claim_fails(
        brokers: Callable[[], SQLiteBroker]) -> None:
    broker = brokers()
    run(broker.enqueue([make_job(queue=q, run_at=time.time() - 1)
                        for q in ("a", "b") for _ in range(3)], {}))
    weights = QueueWeights({"a": 2, "b": 1})
    run(broker.claim("w1", ["a", "b"], 2, 30.0, weights=weights))
    after_first = dict(weights.credits)
    assert after_first == QueueWeights({"a": 2, "b": 1}).pick({"a": 3, "b": 3}, 2)[1]
    with pytest.raises(TypeError):  # fails inside the write: nothing claimed, nothing kept
        run(broker.claim("w1", ["a", "b"], 2, "soon", weights=weights))  # type: ignore[arg-type]
    assert weights.credits == after_first
    assert len(run(broker.claim("w1", ["a", "b"], 10, 30.0))) == 4


def test_many_queues_in_one_claim(brokers: Callable[[], SQLiteBroker]) -> None:
    """More queues than one statement binds at once (they go in chunks)."""
    broker = brokers()
    broker.max_queues = None  # past the namespace's default cap of distinct queues
    queues = [f"q{n}" for n in range(1200)]
    now = time.time()
    run(broker.enqueue([make_job(queue=q, run_at=now - n / 10) for n, q in enumerate(queues)],
                       {}))
    later = make_job(queue=queues[-1], delay=0.05, priority=10)
    run(broker.enqueue([later], {}))
    time.sleep(0.1)
    taken = run(broker.claim("w1", queues, 3, 30.0))
    assert taken[0].id == later.id  # promoted, and ranked 600 s ahead
    assert [j.queue for j in taken][1:] == [queues[-1], queues[-2]]


def test_a_worker_with_weights_shares_its_runs(url: str) -> None:
    """A worker on the SQLite store, one job at a time: the runs follow the weights while
    both queues have work, and priorities within each queue."""
    from conveyor import Conveyor
    from conveyor.testing import WorkerThread

    app = Conveyor(url=url, lease=5.0)
    runs: list[tuple[str, int]] = []

    @app.job
    def step(queue: str, n: int) -> None:
        runs.append((queue, n))

    for queue in ("a", "b"):
        for n in range(40):
            step.enqueue_with((queue, n), queue=queue, priority=n % 2)
    weights = QueueWeights({"a": 3, "b": 1})
    worker = WorkerThread(app, weights=weights, min_workers=1, max_workers=1,
                          prefetch=0).start()
    try:
        worker.drain(30)
    finally:
        worker.stop()
        app.close()
    assert len(runs) == 80
    first = [queue for queue, _ in runs[:40]]
    assert first.count("a") == 30 and first.count("b") == 10
    for queue in ("a", "b"):  # the odd numbers (priority 1) first, each in order
        order = [n for q, n in runs if q == queue]
        assert order == [*range(1, 40, 2), *range(0, 40, 2)]
