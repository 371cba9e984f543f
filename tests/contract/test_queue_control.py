"""The backend contract of queue control: paused queues and caps kept in the store.

Like the rest of the contract suite these tests use the abstract Broker methods only, so they
run against every backend in ``conftest.FACTORIES``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor.backends.base import Broker
from conveyor.errors import QueueFull
from conveyor.job import Outcome, OutcomeKind
from conveyor.queues import QueueSettings

from .conftest import MakeBroker, Run, make_job, make_jobs


def claim(broker: Broker, run: Run[Any], queues: list[str], limit: int = 10) -> list[str]:
    return sorted(job.id for job in run(broker.claim("w1", queues, limit, 30.0)))


def test_no_settings_at_first(broker: Broker, run: Run[Any]) -> None:
    assert run(broker.queue_settings()) == {}


def test_a_paused_queue_accepts_jobs_but_gives_none(broker: Broker, run: Run[Any]) -> None:
    run(broker.set_paused("held", True))
    jobs = make_jobs(3, queue="held")
    run(broker.enqueue(jobs, {}))
    other = make_job(queue="open")
    run(broker.enqueue([other], {}))
    assert claim(broker, run, ["held"]) == []
    assert run(broker.ready_count(["held"], 10)) == 0
    # the other queues of the same claim still give their jobs
    assert claim(broker, run, ["held", "open"]) == [other.id]
    assert run(broker.counts())["held"]["queued"] == 3
    assert run(broker.queue_settings()) == {"held": QueueSettings("held", paused=True)}


def test_resume_gives_the_jobs_again(broker: Broker, run: Run[Any]) -> None:
    run(broker.set_paused("held", True))
    jobs = make_jobs(2, queue="held")
    run(broker.enqueue(jobs, {}))
    assert claim(broker, run, ["held"]) == []
    run(broker.set_paused("held", False))
    assert run(broker.ready_count(["held"], 10)) == 2
    assert claim(broker, run, ["held"]) == sorted(j.id for j in jobs)
    assert run(broker.queue_settings()) == {}


def test_resume_wakes_an_idle_waiter(broker: Broker, run: Run[Any]) -> None:
    """A worker waiting for work on a paused queue with ready jobs is not woken by them
    (it would spin), and is woken by the resume."""
    run(broker.set_paused("held", True))
    run(broker.enqueue([make_job(queue="held")], {}))

    async def scenario() -> tuple[bool, bool]:
        waiter = asyncio.create_task(broker.wait_for_work(["held"], 30.0))
        await asyncio.sleep(0.5)
        waited = not waiter.done()
        await broker.set_paused("held", False)
        try:
            async with asyncio.timeout(10):
                await waiter
        except TimeoutError:
            return waited, False
        return waited, True

    waited, woken = run(scenario())
    assert waited, "wait_for_work returned at once for a paused queue's ready job"
    assert woken, "the resume did not wake the waiter"


def test_a_paused_queue_s_running_job_still_settles(broker: Broker, run: Run[Any]) -> None:
    job = make_job(queue="held")
    run(broker.enqueue([job], {}))
    (claimed,) = run(broker.claim("w1", ["held"], 1, 30.0))
    run(broker.set_paused("held", True))
    now = time.time()
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.SUCCEEDED, now, result_json="1",
                               claim=claimed.claim, queue="held")]))
    stored = run(broker.get(job.id))
    assert stored is not None and str(stored.state) == "succeeded"


def test_a_job_retried_in_a_paused_queue_waits(broker: Broker, run: Run[Any]) -> None:
    job = make_job(queue="held")
    run(broker.enqueue([job], {}))
    (claimed,) = run(broker.claim("w1", ["held"], 1, 30.0))
    run(broker.set_paused("held", True))
    now = time.time()
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.REQUEUE, now,
                               claim=claimed.claim, queue="held")]))
    assert claim(broker, run, ["held"]) == []
    run(broker.set_paused("held", False))
    assert claim(broker, run, ["held"]) == [job.id]


def test_the_store_cap_refuses_a_producer_without_limits(broker: Broker,
                                                        run: Run[Any]) -> None:
    run(broker.set_max_queued("capped", 2))
    run(broker.enqueue(make_jobs(2, queue="capped"), {}))
    with pytest.raises(QueueFull) as raised:
        run(broker.enqueue([make_job(queue="capped")], {}))
    assert raised.value.limit == 2 and raised.value.queue == "capped"
    with pytest.raises(QueueFull):  # a bulk enqueue too, storing nothing
        run(broker.enqueue([make_job(queue="other"), make_job(queue="capped")], {}))
    assert run(broker.counts())["capped"]["queued"] == 2
    assert "other" not in run(broker.counts())
    assert run(broker.queue_settings()) == {"capped": QueueSettings("capped", max_queued=2)}


def test_the_smaller_cap_wins(broker: Broker, run: Run[Any]) -> None:
    run(broker.set_max_queued("capped", 3))
    run(broker.enqueue([make_job(queue="capped")], {"capped": 1}))
    with pytest.raises(QueueFull) as raised:  # the producer's own cap, smaller
        run(broker.enqueue([make_job(queue="capped")], {"capped": 1}))
    assert raised.value.limit == 1
    run(broker.enqueue(make_jobs(2, queue="capped"), {"capped": 10}))
    with pytest.raises(QueueFull) as raised:  # the store's, smaller
        run(broker.enqueue([make_job(queue="capped")], {"capped": 10}))
    assert raised.value.limit == 3


def test_a_full_queue_takes_jobs_again_once_some_are_claimed(broker: Broker,
                                                            run: Run[Any]) -> None:
    run(broker.set_max_queued("capped", 1))
    run(broker.enqueue([make_job(queue="capped")], {}))
    with pytest.raises(QueueFull):
        run(broker.enqueue([make_job(queue="capped")], {}))
    assert len(claim(broker, run, ["capped"])) == 1
    run(broker.enqueue([make_job(queue="capped")], {}))


def test_none_removes_the_cap(broker: Broker, run: Run[Any]) -> None:
    run(broker.set_max_queued("capped", 1))
    run(broker.enqueue([make_job(queue="capped")], {}))
    run(broker.set_max_queued("capped", None))
    run(broker.enqueue(make_jobs(5, queue="capped"), {}))
    run(broker.enqueue([make_job(queue="capped")], {}))
    assert run(broker.counts())["capped"]["queued"] == 7
    assert run(broker.queue_settings()) == {}


def test_pause_and_cap_are_separate(broker: Broker, run: Run[Any]) -> None:
    run(broker.set_paused("q", True))
    run(broker.set_max_queued("q", 5))
    assert run(broker.queue_settings()) == {"q": QueueSettings("q", True, 5)}
    run(broker.set_paused("q", False))
    assert run(broker.queue_settings()) == {"q": QueueSettings("q", False, 5)}
    run(broker.set_paused("q", True))
    run(broker.set_max_queued("q", None))
    assert run(broker.queue_settings()) == {"q": QueueSettings("q", True, None)}
    run(broker.set_paused("q", True))  # twice: no change
    run(broker.set_paused("other", False))  # resuming a queue never paused: nothing
    assert run(broker.queue_settings()) == {"q": QueueSettings("q", True, None)}


def test_settings_survive_a_new_broker(make_broker: MakeBroker, run: Run[Any]) -> None:
    first = make_broker()
    run(first.set_paused("held", True))
    run(first.set_max_queued("capped", 1))
    run(first.enqueue([make_job(queue="held"), make_job(queue="capped")], {}))
    run(first.close())
    second = make_broker()
    assert run(second.queue_settings()) == {
        "capped": QueueSettings("capped", max_queued=1),
        "held": QueueSettings("held", paused=True)}
    assert claim(second, run, ["held"]) == []
    with pytest.raises(QueueFull):
        run(second.enqueue([make_job(queue="capped")], {}))


def test_another_broker_sees_a_pause_at_once(make_broker: MakeBroker, run: Run[Any]) -> None:
    """Pausing through one connection stops the claims of every other."""
    admin, worker = make_broker(), make_broker()
    run(worker.enqueue(make_jobs(2, queue="held"), {}))
    run(admin.set_paused("held", True))
    assert claim(worker, run, ["held"]) == []
    run(admin.set_paused("held", False))
    assert len(claim(worker, run, ["held"])) == 2


def test_a_paused_queue_without_jobs_is_not_in_counts(broker: Broker, run: Run[Any]) -> None:
    """counts() lists queues that have had jobs; listings merge in queue_settings()."""
    run(broker.set_paused("empty", True))
    assert "empty" not in run(broker.counts())
    assert "empty" in run(broker.queue_settings())
