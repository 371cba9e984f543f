"""The backend contract of limits (see conveyor.limits): caps on running attempts per job
name and per group counted from live leases, round robin over a name's groups, token
buckets in the store, all decided inside the claim; RateLimited deferrals; usage counts.

A laned job is one whose ``group`` is not None (set at enqueue for a name with limits)."""

from __future__ import annotations

import collections
import time
from typing import Any

from conveyor.backends.base import Broker
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind
from conveyor.limits import JobLimits, LimitUsage, Rate
from conveyor.priority import QueueWeights

from .conftest import MakeBroker, Run, make_job, make_worker

LEASE = 30.0


def capped(concurrency: int | None = None, group_concurrency: int | None = None,
           rate: Rate | None = None, group_rate: Rate | None = None,
           name: str = "capped") -> dict[str, JobLimits]:
    grouped = group_concurrency is not None or group_rate is not None
    return {name: JobLimits(name, concurrency, "tenant" if grouped else None,
                            group_concurrency, rate, group_rate)}


def laned(count: int, group: str = "", name: str = "capped", **options: Any) -> list[JobRecord]:
    options.setdefault("run_at", time.time() - 1)
    return [make_job(name=name, group=group, **options) for _ in range(count)]


def take(broker: Broker, run: Run[Any], limits: dict[str, JobLimits] | None, limit: int = 10,
         worker: str = "w1", lease: float = LEASE, queues: list[str] | None = None,
         weights: QueueWeights | None = None) -> list[JobRecord]:
    return run(broker.claim(worker, queues or ["default"], limit, lease, limits=limits,
                            weights=weights))


def finish(broker: Broker, run: Run[Any], job: JobRecord, worker: str = "w1") -> None:
    run(broker.settle([Outcome(job.id, worker, OutcomeKind.SUCCEEDED, time.time(),
                               result_json="null", claim=job.claim)]))


def test_the_group_is_stored_and_read(broker: Broker, run: Run[Any]) -> None:
    plain, whole, grouped = make_job(), make_job(group=""), make_job(group="acme")
    run(broker.enqueue([plain, whole, grouped], {}))
    assert [run(broker.get(j.id)).group for j in (plain, whole, grouped)] == [None, "", "acme"]
    listed = {j.id: j.group for j in run(broker.list_jobs(limit=10))}
    assert listed == {plain.id: None, whole.id: "", grouped.id: "acme"}


def test_a_concurrency_cap_holds_across_claims(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(10), {}))
    limits = capped(concurrency=3)
    broker.take_throttled()
    first = take(broker, run, limits)
    assert len(first) == 3
    assert take(broker, run, limits, worker="w2") == []
    assert broker.take_throttled()[("capped", "concurrency")] >= 1
    finish(broker, run, first[0])
    assert len(take(broker, run, limits, worker="w2")) == 1
    assert take(broker, run, limits) == []


def test_a_full_cap_holds_back_only_its_own_jobs(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    run(broker.enqueue(laned(5, run_at=now - 10), {}))  # older than the plain ones
    plain = [make_job(run_at=now - 5) for _ in range(5)]
    run(broker.enqueue(plain, {}))
    got = take(broker, run, capped(concurrency=2), limit=10)
    names = collections.Counter(j.name for j in got)
    assert names == {"capped": 2, "tasks.work": 5}


def test_the_cap_counts_live_leases_only(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(6), {}))
    limits = capped(concurrency=2)
    assert len(take(broker, run, limits, worker="dead", lease=0.3)) == 2
    assert take(broker, run, limits) == []
    time.sleep(0.5)  # the dead worker's leases ran out; nothing recovered them yet
    assert len(take(broker, run, limits)) == 2


def test_a_heartbeat_keeps_the_slot(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(4), {}))
    limits = capped(concurrency=1)
    (held,) = take(broker, run, limits, worker="busy", lease=0.5)
    worker = make_worker("busy")
    beat = run(broker.heartbeat(worker, {held.id: held.claim}, 30.0))
    assert not beat.lost
    time.sleep(0.7)
    assert take(broker, run, limits) == []


def test_a_group_cap_holds_each_group(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(5, "a") + laned(5, "b"), {}))
    got = take(broker, run, capped(group_concurrency=2))
    assert collections.Counter(j.group for j in got) == {"a": 2, "b": 2}


def test_name_and_group_caps_both_hold(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(5, "a") + laned(5, "b") + laned(5, "c"), {}))
    limits = capped(concurrency=4, group_concurrency=2)
    got = take(broker, run, limits)
    assert len(got) == 4 and max(collections.Counter(j.group for j in got).values()) <= 2


def test_groups_take_turns(broker: Broker, run: Run[Any]) -> None:
    """A's 50 older jobs do not hold back B's three: one-job claims alternate."""
    now = time.time()
    run(broker.enqueue(laned(50, "A", run_at=now - 100), {}))
    run(broker.enqueue(laned(3, "B", run_at=now - 1), {}))
    limits = capped(group_concurrency=100)
    order = [take(broker, run, limits, limit=1)[0].group for _ in range(6)]
    assert sorted(order) == ["A", "A", "A", "B", "B", "B"]
    assert order[0] != order[1] and order[2] != order[3]


def test_a_batch_claim_shares_between_groups(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    run(broker.enqueue(laned(50, "A", run_at=now - 100), {}))
    run(broker.enqueue(laned(2, "B", run_at=now - 1), {}))
    got = take(broker, run, capped(group_concurrency=100), limit=4)
    assert collections.Counter(j.group for j in got) == {"A": 2, "B": 2}


def test_groups_take_turns_without_caps(broker: Broker, run: Run[Any]) -> None:
    """A laned name whose claimer knows no limits still takes turns (and is not held)."""
    now = time.time()
    run(broker.enqueue(laned(20, "A", run_at=now - 100), {}))
    run(broker.enqueue(laned(1, "B", run_at=now - 1), {}))
    got = take(broker, run, None, limit=2)
    assert collections.Counter(j.group for j in got) == {"A": 1, "B": 1}


def test_priorities_hold_within_a_group(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    low = laned(1, "a", run_at=now - 10)
    high = laned(1, "a", run_at=now - 1, priority=5)
    run(broker.enqueue(low + high, {}))
    limits = capped(group_concurrency=1)
    assert [j.id for j in take(broker, run, limits)] == [high[0].id]


def test_a_rate_limit_spends_tokens(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(10), {}))
    limits = capped(rate=Rate(5, 1.0, burst=1))
    broker.take_throttled()
    assert len(take(broker, run, limits)) == 1
    assert take(broker, run, limits) == []
    assert broker.take_throttled()[("capped", "rate")] >= 1
    time.sleep(0.25)  # one token per 0.2 s
    assert len(take(broker, run, limits)) == 1


def test_a_burst_gives_that_many_at_once(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(10), {}))
    assert len(take(broker, run, capped(rate=Rate(1, 60.0, burst=3)))) == 3
    assert take(broker, run, capped(rate=Rate(1, 60.0, burst=3))) == []


def test_a_group_rate_limit_is_per_group(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(5, "a") + laned(5, "b"), {}))
    limits = capped(group_rate=Rate(1, 60.0, burst=1))
    broker.take_throttled()
    assert collections.Counter(j.group for j in take(broker, run, limits)) == {"a": 1, "b": 1}
    assert take(broker, run, limits) == []
    assert broker.take_throttled()[("capped", "group_rate")] >= 1


def test_buckets_are_shared_by_every_broker(make_broker: MakeBroker, run: Run[Any]) -> None:
    first, second = make_broker(), make_broker()
    run(first.enqueue(laned(5), {}))
    limits = capped(rate=Rate(1, 60.0, burst=1))
    assert len(take(first, run, limits)) == 1
    assert take(second, run, limits, worker="w2") == []


def test_a_paused_queue_gives_no_laned_job(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(3, "a"), {}))
    run(broker.set_paused("default", True))
    assert take(broker, run, capped(group_concurrency=5)) == []
    run(broker.set_paused("default", False))
    assert len(take(broker, run, capped(group_concurrency=5))) == 3


def test_a_delayed_laned_job_comes_due(broker: Broker, run: Run[Any]) -> None:
    job = make_job(name="capped", group="a", delay=0.2)
    run(broker.enqueue([job], {}))
    assert take(broker, run, capped(concurrency=5)) == []
    time.sleep(0.3)
    assert [j.id for j in take(broker, run, capped(concurrency=5))] == [job.id]


def test_a_laned_job_comes_back_to_its_lane(broker: Broker, run: Run[Any]) -> None:
    """Retried, recovered, cancelled and retried again: the cap still holds it."""
    run(broker.enqueue(laned(2, "a"), {}))
    limits = capped(group_concurrency=1)
    (first,) = take(broker, run, limits, worker="gone", lease=0.2)
    time.sleep(0.4)
    run(broker.recover_expired(3))
    stored = run(broker.get(first.id))
    assert stored.state is JobState.QUEUED and stored.group == "a"
    (again,) = take(broker, run, limits)
    run(broker.settle([Outcome(again.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time(), claim=again.claim)]))
    time.sleep(0.01)
    assert len(take(broker, run, limits)) == 1
    assert take(broker, run, limits) == []  # the cap of group a is full


def test_a_deferred_retry_charges_nothing(broker: Broker, run: Run[Any]) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    assert claimed.attempts == 1
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time() + 60, claim=1, deferred=True,
                               error="RateLimited: slow down")]))
    stored = run(broker.get(job.id))
    assert (stored.state, stored.attempts, stored.deferrals) == (JobState.SCHEDULED, 0, 1)
    assert stored.run_at > time.time() + 50
    assert stored.error == "RateLimited: slow down"


def test_a_deferred_retry_of_a_stale_attempt_is_ignored(broker: Broker, run: Run[Any]) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    run(broker.claim("w1", ["default"], 1, LEASE))
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time(), claim=7, deferred=True)]))
    stored = run(broker.get(job.id))
    assert (stored.state, stored.attempts, stored.deferrals) == (JobState.RUNNING, 1, 0)


def test_limit_usage_counts_running_and_ready(broker: Broker, run: Run[Any]) -> None:
    run(broker.enqueue(laned(3, "a") + laned(4, "b") + laned(2, "c", name="other"), {}))
    run(broker.enqueue([make_job(delay=3600, name="capped", group="a")], {}))
    take(broker, run, capped(group_concurrency=1))
    usage = run(broker.limit_usage(["capped"]))
    by_group = {u.group: u for u in usage}
    assert by_group[None] == LimitUsage("capped", None, 2, 5)
    assert by_group["a"] == LimitUsage("capped", "a", 1, 2)
    assert by_group["b"] == LimitUsage("capped", "b", 1, 3)
    assert {u.name for u in usage} == {"capped"}
    assert run(broker.limit_usage(["capped"], max_groups=1))[0].group is None
    assert len(run(broker.limit_usage(["capped"], max_groups=1))) == 2


def test_weights_and_limits_together(broker: Broker, run: Run[Any]) -> None:
    now = time.time()
    run(broker.enqueue([make_job(name="capped", group="", queue="a", run_at=now - 1)
                        for _ in range(5)], {}))
    run(broker.enqueue([make_job(queue="b", run_at=now - 1) for _ in range(5)], {}))
    weights = QueueWeights({"a": 1, "b": 1})
    got = take(broker, run, capped(concurrency=1), limit=6, queues=["a", "b"],
               weights=weights)
    assert collections.Counter(j.queue for j in got) == {"a": 1, "b": 5}


def test_an_admin_retry_resets_deferrals(broker: Broker, run: Run[Any]) -> None:
    job = make_job()
    run(broker.enqueue([job], {}))
    (claimed,) = run(broker.claim("w1", ["default"], 1, LEASE))
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.RETRY, time.time(),
                               run_at=time.time(), claim=claimed.claim, deferred=True)]))
    time.sleep(0.01)
    (again,) = run(broker.claim("w1", ["default"], 1, LEASE))
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.DEAD, time.time(),
                               error="gave up", claim=again.claim)]))
    assert run(broker.get(job.id)).deferrals == 1
    retried = run(broker.retry(job.id))
    assert retried is not None and retried.deferrals == 0
    assert run(broker.get(job.id)).deferrals == 0
