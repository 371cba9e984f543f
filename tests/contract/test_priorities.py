"""The backend contract of priorities, aging and weighted queues (see conveyor.priority).

Within a queue a claim takes the lowest rank first (``run_at - priority * aging``), then the
oldest ``run_at``, then the id; a worker's weights share claims among its queues by smooth
weighted round robin, decided inside the claim.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from conveyor.backends.base import Broker
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind
from conveyor.priority import QueueWeights

from .conftest import MakeBroker, Run, make_job


def one_by_one(broker: Broker, run: Run[Any], queues: list[str], count: int,
               weights: QueueWeights | None = None) -> list[JobRecord]:
    """``count`` claims of one job each, in the order they came."""
    taken = []
    for _ in range(count):
        jobs = run(broker.claim("w1", queues, 1, 30.0, weights=weights))
        assert len(jobs) <= 1
        taken.extend(jobs)
    return taken


def test_priority_is_stored_and_read(broker: Broker, run: Run[Any]) -> None:
    plain, urgent, low = make_job(), make_job(priority=10), make_job(priority=-10)
    run(broker.enqueue([plain, urgent, low], {}))
    for job in (plain, urgent, low):
        stored = run(broker.get(job.id))
        assert stored is not None and stored.priority == job.priority
    listed = {j.id: j.priority for j in run(broker.list_jobs(limit=10))}
    assert listed == {plain.id: 0, urgent.id: 10, low.id: -10}


def test_higher_priority_is_claimed_first(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    jobs = [make_job(run_at=now - 3, priority=0), make_job(run_at=now - 2, priority=5),
            make_job(run_at=now - 1, priority=-3), make_job(run_at=now, priority=10)]
    run(broker.enqueue(jobs, {}))
    order = [j.id for j in one_by_one(broker, run, ["default"], 4)]
    assert order == [jobs[3].id, jobs[1].id, jobs[0].id, jobs[2].id]


def test_a_batch_claim_follows_the_same_order(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    jobs = [make_job(run_at=now - 1, priority=p) for p in (0, 2, 1, 3)]
    run(broker.enqueue(jobs, {}))
    (first, second) = run(broker.claim("w1", ["default"], 2, 30.0))
    assert {first.id, second.id} == {jobs[3].id, jobs[1].id}


def test_equal_priorities_go_oldest_run_at_first(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    jobs = [make_job(run_at=now - k, priority=4) for k in (1, 3, 2)]
    run(broker.enqueue(jobs, {}))
    order = [j.id for j in one_by_one(broker, run, ["default"], 3)]
    assert order == [jobs[1].id, jobs[2].id, jobs[0].id]


def test_waiting_raises_effective_priority_by_one_per_aging(broker: Broker,
                                                           run: Run[Any]) -> None:
    """With aging 60 s, a priority-0 job that waited 300 s ranks as priority 5: ahead of a
    fresh priority-3 job and behind a fresh priority-6 one."""
    now = time.time()
    old, three, six = (make_job(run_at=now - 300), make_job(run_at=now, priority=3),
                       make_job(run_at=now, priority=6))
    run(broker.enqueue([three, old, six], {}))
    order = [j.id for j in one_by_one(broker, run, ["default"], 3)]
    assert order == [six.id, old.id, three.id]


def test_aging_is_the_broker_s(broker: Broker, run: Run[Any]) -> None:
    broker.aging = 1.0
    now = time.time()
    old, three = make_job(run_at=now - 5), make_job(run_at=now, priority=3)
    run(broker.enqueue([three, old], {}))
    order = [j.id for j in one_by_one(broker, run, ["default"], 2)]
    assert order == [old.id, three.id]


def test_a_delayed_job_keeps_its_priority_once_due(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    early = make_job(run_at=now - 1)
    later = make_job(delay=0.3, priority=5)
    run(broker.enqueue([early, later], {}))
    assert [j.id for j in run(broker.claim("w1", ["default"], 5, 30.0))] == [early.id]
    time.sleep(0.4)
    plain = make_job(run_at=time.time() - 5)
    run(broker.enqueue([plain], {}))
    assert [j.id for j in one_by_one(broker, run, ["default"], 2)] == [later.id, plain.id]


def test_a_retry_keeps_its_priority(broker: Broker, run: Run[Any]) -> None:
    urgent = make_job(priority=7)
    run(broker.enqueue([urgent], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, 30.0))
    plain = make_job(run_at=time.time() - 10)
    run(broker.enqueue([plain], {}))
    run(broker.settle([Outcome(urgent.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time(), claim=claimed.claim)]))
    time.sleep(0.01)
    assert [j.id for j in one_by_one(broker, run, ["default"], 2)] == [urgent.id, plain.id]
    again = run(broker.get(urgent.id))
    assert again is not None and again.priority == 7


def test_a_requeued_job_keeps_its_priority(broker: Broker, run: Run[Any]) -> None:
    urgent = make_job(priority=7)
    run(broker.enqueue([urgent], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, 30.0))
    plain = make_job(run_at=time.time() - 10)
    run(broker.enqueue([plain], {}))
    run(broker.settle([Outcome(urgent.id, "w1", OutcomeKind.REQUEUE, time.time(),
                               claim=claimed.claim)]))
    assert [j.id for j in one_by_one(broker, run, ["default"], 2)] == [urgent.id, plain.id]


def test_set_priority_reorders_a_waiting_job(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    first, second = make_job(run_at=now - 2), make_job(run_at=now - 1)
    run(broker.enqueue([first, second], {}))
    changed = run(broker.set_priority(second.id, 2))
    assert changed is not None and changed.priority == 2 and changed.state is JobState.QUEUED
    stored = run(broker.get(second.id))
    assert stored is not None and stored.priority == 2
    assert [j.id for j in one_by_one(broker, run, ["default"], 2)] == [second.id, first.id]


def test_set_priority_of_a_scheduled_job_holds_once_due(broker: Broker,
                                                       run: Run[Any]) -> None:
    later = make_job(delay=0.2)
    run(broker.enqueue([later], {}))
    changed = run(broker.set_priority(later.id, -4))
    assert changed is not None and changed.priority == -4
    assert changed.state is JobState.SCHEDULED
    time.sleep(0.3)
    plain = make_job(run_at=time.time() - 100)  # older, but -4 * 60 s is further back
    run(broker.enqueue([plain], {}))
    assert [j.id for j in one_by_one(broker, run, ["default"], 2)] == [plain.id, later.id]


def test_set_priority_leaves_a_running_job_and_misses_none(broker: Broker,
                                                          run: Run[Any]) -> None:
    job = make_job(priority=1)
    run(broker.enqueue([job], {}))
    run(broker.claim("w1", ["default"], 1, 30.0))
    unchanged = run(broker.set_priority(job.id, 9))
    assert unchanged is not None and unchanged.state is JobState.RUNNING
    assert unchanged.priority == 1
    stored = run(broker.get(job.id))
    assert stored is not None and stored.priority == 1
    assert run(broker.set_priority("no-such-job", 3)) is None


def test_priorities_order_across_queues_without_weights(broker: Broker,
                                                        run: Run[Any]) -> None:
    now = time.time()
    a, b = make_job(queue="a", run_at=now - 5), make_job(queue="b", run_at=now, priority=1)
    run(broker.enqueue([a, b], {}))
    assert [j.id for j in one_by_one(broker, run, ["a", "b"], 2)] == [b.id, a.id]


def _fill(broker: Broker, run: Run[Any], counts: dict[str, int]) -> None:
    for queue, count in counts.items():
        now = time.time()
        run(broker.enqueue([make_job(queue=queue, run_at=now - 1) for _ in range(count)], {}))


def test_weights_share_single_claims_exactly(broker: Broker, run: Run[Any]) -> None:
    _fill(broker, run, {"critical": 70, "default": 70, "low": 70})
    weights = QueueWeights({"critical": 6, "default": 3, "low": 1})
    taken = one_by_one(broker, run, ["critical", "default", "low"], 100, weights)
    counts = collections.Counter(j.queue for j in taken)
    assert counts == {"critical": 60, "default": 30, "low": 10}
    # interleaved: every queue gets a claim within each sum(weights) claims
    for start in range(0, 100, 10):
        assert {j.queue for j in taken[start:start + 10]} == {"critical", "default", "low"}


def test_weights_share_batch_claims(broker: Broker, run: Run[Any]) -> None:
    _fill(broker, run, {"a": 200, "b": 200})
    weights = QueueWeights({"a": 3, "b": 1})
    taken: list[JobRecord] = []
    for _ in range(20):
        taken.extend(run(broker.claim("w1", ["a", "b"], 8, 30.0, weights=weights)))
    counts = collections.Counter(j.queue for j in taken)
    assert counts == {"a": 120, "b": 40}


def test_weights_skip_a_queue_without_ready_jobs(broker: Broker, run: Run[Any]) -> None:
    _fill(broker, run, {"b": 10, "c": 10})
    run(broker.set_paused("c", True))
    weights = QueueWeights({"a": 5, "b": 1, "c": 5})
    taken = run(broker.claim("w1", ["a", "b", "c"], 6, 30.0, weights=weights))
    assert [j.queue for j in taken] == ["b"] * 6


def test_weights_follow_the_pick_rule(broker: Broker, run: Run[Any]) -> None:
    """The store's picks are those of QueueWeights.pick, credits included, when a queue
    runs dry midway."""
    _fill(broker, run, {"a": 4, "b": 30})
    weights = QueueWeights({"a": 2, "b": 3})
    model = QueueWeights({"a": 2, "b": 3})
    left = {"a": 4, "b": 30}
    for _ in range(5):
        picks, model.credits = model.pick(left, 5)
        for q in picks:
            left[q] -= 1
        taken = run(broker.claim("w1", ["a", "b"], 5, 30.0, weights=weights))
        assert collections.Counter(j.queue for j in taken) == collections.Counter(picks)
        assert weights.credits == model.credits


def test_strict_drains_queues_in_order(broker: Broker, run: Run[Any]) -> None:
    _fill(broker, run, {"first": 3, "second": 10})
    weights = QueueWeights({"first": 1, "second": 1}, strict=True)
    taken = run(broker.claim("w1", ["first", "second"], 5, 30.0, weights=weights))
    assert [j.queue for j in taken] == ["first"] * 3 + ["second"] * 2


def test_weights_keep_priorities_within_a_queue(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    low, high = make_job(queue="a", run_at=now - 5), make_job(queue="a", run_at=now,
                                                               priority=3)
    other = make_job(queue="b", run_at=now - 50)
    run(broker.enqueue([low, high, other], {}))
    weights = QueueWeights({"a": 1, "b": 1})
    taken = one_by_one(broker, run, ["a", "b"], 3, weights)
    assert [j.id for j in taken if j.queue == "a"] == [high.id, low.id]


def test_another_broker_sees_a_changed_priority(make_broker: MakeBroker,
                                                run: Run[Any]) -> None:
    first, second = make_broker(), make_broker()
    now = time.time()
    a, b = make_job(run_at=now - 2), make_job(run_at=now - 1)
    run(first.enqueue([a, b], {}))
    run(first.set_priority(b.id, 5))
    assert [j.id for j in one_by_one(second, run, ["default"], 2)] == [b.id, a.id]


def test_weights_hold_over_10000_claims(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    for queue, count in (("critical", 7000), ("default", 4000), ("low", 2000)):
        jobs = [make_job(queue=queue, run_at=now - 1) for _ in range(count)]
        for start in range(0, count, 1000):
            run(broker.enqueue(jobs[start:start + 1000], {}))
    weights = QueueWeights({"critical": 6, "default": 3, "low": 1})
    counts: collections.Counter[str] = collections.Counter()
    while sum(counts.values()) < 10_000:
        taken = run(broker.claim("w1", ["critical", "default", "low"], 10, 30.0,
                                 weights=weights))
        assert taken
        counts.update(j.queue for j in taken)
    for queue, share in (("critical", 0.6), ("default", 0.3), ("low", 0.1)):
        assert abs(counts[queue] / 10_000 - share) <= 0.1 * share, counts
