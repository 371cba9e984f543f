"""The backend contract of the queues a namespace knows: a cap on how many, and queues
forgotten once they hold no job.

A queue is known while it holds a job (in any state) or has stored settings (paused, a
cap). An enqueue, a pause or a cap that would make one queue more than
``Broker.max_queues`` raises :class:`TooManyQueues` and stores nothing of its call (resuming
and uncapping never do); a queue is forgotten once its last job is deleted or purged and it
has no settings, which frees its place under the cap.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor.backends.base import DEFAULT_MAX_QUEUES, Broker
from conveyor.errors import TooManyQueues
from conveyor.job import JobRecord, JobState

from .conftest import MakeBroker, Run, make_job

SHORT = 0.05


def known(run: Run[Any], broker: Broker) -> set[str]:
    """The queues the store lists: those with jobs, and those with settings."""
    return set(run(broker.counts())) | set(run(broker.queue_settings()))


def enqueue(run: Run[Any], broker: Broker, *queues: str) -> list[JobRecord]:
    """One call storing one job in each of ``queues``."""
    jobs = [make_job(queue=queue) for queue in queues]
    run(broker.enqueue(jobs, {}))
    return jobs


def refused(run: Run[Any], broker: Broker, queues: list[str], blocking: bool = False
            ) -> TooManyQueues:
    """The refusal of one call storing a job in each of ``queues``; none of them stored."""
    jobs = [make_job(queue=queue) for queue in queues]
    with pytest.raises(TooManyQueues) as caught:
        if blocking:
            broker.enqueue_blocking(jobs, {})
        else:
            run(broker.enqueue(jobs, {}))
    for job in jobs:
        assert run(broker.get(job.id)) is None
    return caught.value


def test_the_default_cap(broker: Broker) -> None:
    assert broker.max_queues == DEFAULT_MAX_QUEUES == 1000


def test_a_new_queue_past_the_cap_is_refused_and_known_queues_still_accept(
        run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 3
    enqueue(run, broker, "a")
    enqueue(run, broker, "b", "c")
    error = refused(run, broker, ["d"])
    assert (error.queue, error.limit) == ("d", 3)
    assert "'d'" in str(error) and "3 queues" in str(error) and "max_queues" in str(error)
    # a call mixing a known queue and a new one stores nothing of either
    assert refused(run, broker, ["a", "e"]).queue == "e"
    assert refused(run, broker, ["f"], blocking=True).queue == "f"
    # known queues still accept, one job or many
    enqueue(run, broker, "a")
    enqueue(run, broker, "a", "b", "c", "c")
    broker.enqueue_blocking([make_job(queue="b")], {})
    assert known(run, broker) == {"a", "b", "c"}
    assert run(broker.counts())["c"]["queued"] == 3


def test_one_call_may_not_make_more_queues_than_the_cap_leaves(
        run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 4
    enqueue(run, broker, "a")
    assert refused(run, broker, ["b", "c", "d", "e"]).queue == "b"
    assert known(run, broker) == {"a"}
    enqueue(run, broker, "b", "c", "d", "a")
    assert known(run, broker) == {"a", "b", "c", "d"}


def test_no_cap(run: Run[Any], broker: Broker) -> None:
    broker.max_queues = None
    names = [f"q{n}" for n in range(30)]
    enqueue(run, broker, *names)
    assert known(run, broker) == set(names)


def test_a_queue_with_settings_counts_as_known(run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 2
    run(broker.set_paused("held", True))
    enqueue(run, broker, "a")
    assert refused(run, broker, ["b"]).limit == 2
    enqueue(run, broker, "held")  # known by its settings: accepted
    assert run(broker.counts())["held"][JobState.QUEUED] == 1
    with pytest.raises(TooManyQueues):  # a cap on a new queue counts as a new queue
        run(broker.set_max_queued("capped", 5))
    assert known(run, broker) == {"a", "held"}


def test_a_queue_is_forgotten_when_its_last_job_is_deleted(
        run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 2
    gone = enqueue(run, broker, "gone", "gone")
    enqueue(run, broker, "stays")
    assert refused(run, broker, ["new"]).queue == "new"
    assert run(broker.delete(gone[0].id))
    assert known(run, broker) == {"gone", "stays"}
    assert refused(run, broker, ["new"]).queue == "new"
    assert run(broker.delete(gone[1].id))
    assert known(run, broker) == {"stays"}
    enqueue(run, broker, "new")  # the forgotten queue's place is free
    assert known(run, broker) == {"new", "stays"}


def test_a_queue_is_forgotten_when_its_last_jobs_are_purged(
        run: Run[Any], make_broker: MakeBroker) -> None:
    short = make_broker(retention=SHORT)
    short.max_queues = 2
    done = enqueue(run, short, "done", "done")
    waiting = enqueue(run, short, "waiting")
    for job in done:
        cancelled = run(short.cancel(job.id))
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
    time.sleep(SHORT * 3)
    assert run(short.purge_expired()) == 2
    assert known(run, short) == {"waiting"}
    enqueue(run, short, "later")
    assert known(run, short) == {"waiting", "later"}
    assert run(short.get(waiting[0].id)) is not None


def test_a_queue_with_settings_is_kept_until_they_go(run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 2
    run(broker.set_paused("held", True))
    run(broker.set_max_queued("capped", 3))
    jobs = enqueue(run, broker, "held", "capped")
    for job in jobs:
        assert run(broker.delete(job.id))
    assert known(run, broker) == {"held", "capped"}
    assert refused(run, broker, ["other"]).queue == "other"
    run(broker.set_paused("held", False))
    assert known(run, broker) == {"capped"}
    enqueue(run, broker, "other")
    run(broker.set_max_queued("capped", None))
    assert known(run, broker) == {"other"}
    enqueue(run, broker, "third")
    assert known(run, broker) == {"other", "third"}


def test_removing_settings_keeps_a_queue_that_holds_jobs(
        run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 1
    run(broker.set_paused("held", True))
    enqueue(run, broker, "held")
    run(broker.set_paused("held", False))
    assert known(run, broker) == {"held"}
    assert refused(run, broker, ["other"]).queue == "other"


def test_many_queues_come_and_go(run: Run[Any], broker: Broker) -> None:
    """Queues made and emptied again and again never add up."""
    broker.max_queues = 5
    for round_ in range(4):
        jobs = enqueue(run, broker, *(f"r{round_}-{n}" for n in range(5)))
        assert len(known(run, broker)) == 5
        for job in jobs:
            assert run(broker.delete(job.id))
        assert known(run, broker) == set()


def test_pausing_or_capping_new_queues_past_the_cap_is_refused(
        run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 4
    run(broker.set_paused("p1", True))
    run(broker.set_max_queued("c1", 3))
    enqueue(run, broker, "a")
    run(broker.set_paused("p2", True))  # the fourth queue: at the cap, not past it
    for n in range(10):
        with pytest.raises(TooManyQueues) as caught:
            run(broker.set_paused(f"new-p{n}", True))
        assert (caught.value.queue, caught.value.limit) == (f"new-p{n}", 4)
        with pytest.raises(TooManyQueues) as caught:
            run(broker.set_max_queued(f"new-c{n}", 5))
        assert (caught.value.queue, caught.value.limit) == (f"new-c{n}", 4)
    assert known(run, broker) == {"p1", "c1", "a", "p2"}
    assert set(run(broker.queue_settings())) == {"p1", "c1", "p2"}
    # nothing of the refusals was stored: no new queue can come in either
    assert refused(run, broker, ["new-p0"]).queue == "new-p0"


def test_known_queues_can_always_be_paused_and_capped(run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 2
    enqueue(run, broker, "a")
    run(broker.set_max_queued("b", 2))
    with pytest.raises(TooManyQueues):
        run(broker.set_paused("c", True))
    run(broker.set_paused("a", True))  # known by its job
    run(broker.set_max_queued("a", 7))
    run(broker.set_paused("b", True))  # known by its settings
    run(broker.set_max_queued("b", 9))
    settings = run(broker.queue_settings())
    assert (settings["a"].paused, settings["a"].max_queued) == (True, 7)
    assert (settings["b"].paused, settings["b"].max_queued) == (True, 9)
    assert known(run, broker) == {"a", "b"}


def test_resuming_and_uncapping_never_fail(run: Run[Any], broker: Broker) -> None:
    broker.max_queues = 1
    first = enqueue(run, broker, "a")
    run(broker.set_paused("unknown", False))
    run(broker.set_max_queued("unknown", None))
    run(broker.set_paused("a", False))
    run(broker.set_max_queued("a", None))
    assert known(run, broker) == {"a"}
    assert run(broker.queue_settings()) == {}
    # a paused queue without jobs keeps its place until it is resumed
    run(broker.set_paused("a", True))
    assert run(broker.delete(first[0].id))
    with pytest.raises(TooManyQueues):
        run(broker.set_paused("b", True))
    run(broker.set_paused("a", False))
    run(broker.set_paused("b", True))
    assert known(run, broker) == {"b"}
