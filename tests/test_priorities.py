"""Priorities, aging and weighted queues through the app and a real worker, on SQLite and
Redis: the options and their checks, changing a waiting job's priority, a one-slot worker
starting jobs by priority, a low-priority job starting within its aging bound under a
constant high-priority flood, and a weighted worker's shares."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidArguments,
    JobNotFound,
    JobNotWaiting,
    JobState,
    QueueWeights,
)
from conveyor.ids import new_id
from conveyor.priority import parse_queues, weighing
from conveyor.testing import WorkerThread
from polling import wait_until


@pytest.fixture
def make_app(url: str) -> Iterator[type[Conveyor]]:
    """``make_app(aging=...)``: apps on the test's store and namespace, closed at the end."""
    namespace = f"t{new_id().lower()}"
    made: list[Conveyor] = []

    def make(**options: float) -> Conveyor:
        made.append(Conveyor(url=url, namespace=namespace, lease=5.0, **options))
        return made[-1]

    yield make  # type: ignore[misc]
    for app in reversed(made):
        app.close()


def test_the_job_s_priority_is_the_default_and_an_enqueue_s_wins(make_app: type) -> None:
    app = make_app()

    @app.job(priority=3)
    def urgent() -> None: ...

    @app.job
    def plain() -> None: ...

    assert urgent.enqueue().info().priority == 3
    assert urgent.enqueue_with((), priority=-2).info().priority == -2
    assert plain.enqueue().info().priority == 0
    assert app.enqueue_call("plain", [], {}, priority=10).info().priority == 10


@pytest.mark.parametrize("bad", [11, -11, 1.5, True, "3"])
def test_a_wrong_priority_is_refused(make_app: type, bad: object) -> None:
    app = make_app()

    @app.job
    def plain() -> None: ...

    with pytest.raises(InvalidArguments, match="priority must be a whole number from -10"):
        plain.enqueue_with((), priority=bad)
    with pytest.raises(ConfigurationError, match="priority"):
        app.job(name="other", priority=bad)(lambda: None)  # type: ignore[arg-type]
    assert app.run_sync(app.broker.list_jobs(limit=5)) == []  # nothing was stored


def test_aging_must_be_positive() -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="aging"):
            Conveyor(url="memory://", aging=bad)


def test_change_the_priority_of_a_waiting_job(make_app: type) -> None:
    app = make_app()

    @app.job
    def plain() -> None: ...

    handle = plain.enqueue_with((), delay=3600)
    assert handle.set_priority(7).priority == 7
    assert handle.info().priority == 7 and handle.info().state is JobState.SCHEDULED
    assert app.set_priority(handle.id, -10).priority == -10
    with pytest.raises(JobNotFound):
        app.set_priority("no-such-job", 1)
    with pytest.raises(InvalidArguments):
        app.set_priority(handle.id, 12)
    app.cancel(handle.id)
    with pytest.raises(JobNotWaiting, match="is cancelled, not waiting"):
        app.set_priority(handle.id, 1)
    assert handle.info().priority == -10


def test_a_one_slot_worker_starts_jobs_by_priority(make_app: type) -> None:
    app = make_app()
    started: list[int] = []

    @app.job(queue="ordered")
    def note(priority: int) -> None:
        started.append(priority)

    for priority in (0, 5, -5, 10, 3, -10, 7):
        note.enqueue_with((priority,), priority=priority)
    worker = WorkerThread(app, queues=["ordered"], min_workers=1, max_workers=1,
                          prefetch=0).start()
    try:
        worker.drain(20)
    finally:
        worker.stop()
    assert started == [10, 7, 5, 3, 0, -5, -10]


def test_a_low_priority_job_starts_within_its_aging_bound_under_a_flood(
        make_app: type) -> None:
    """With aging 0.25 s a priority -10 job ranks with priority-10 work enqueued
    20 * 0.25 = 5 s after it: it starts once the work enqueued before then is done. A
    producer keeps about 40 priority-10 jobs waiting all along."""
    aging, standing = 0.25, 40
    app = make_app(aging=aging)
    starts: dict[str, float] = {}
    ran = collections.Counter[str]()

    @app.job(queue="flood")
    def work(kind: str) -> None:
        starts.setdefault(kind, time.time())
        ran[kind] += 1
        time.sleep(0.005)

    stop = threading.Event()
    enqueued = collections.Counter[str]()
    after_low = []

    def flood() -> None:
        while not stop.is_set():
            missing = standing - (enqueued["high"] - ran["high"])
            if missing > 0:
                work.enqueue_many([("high",)] * missing, priority=10)
                enqueued["high"] += missing
                if "low" in enqueued:
                    after_low.append(missing)
            time.sleep(0.01)

    producer = threading.Thread(target=flood, daemon=True)
    producer.start()
    worker = WorkerThread(app, queues=["flood"], min_workers=1, max_workers=1).start()
    try:
        wait_until(lambda: ran["high"] > 50, what="the flood to run")
        low = work.enqueue_with(("low",), priority=-10)
        enqueued["low"] += 1
        low_at = time.time()
        wait_until(lambda: "low" in starts, timeout=60, what="the low-priority job to start")
        waited = starts["low"] - low_at
    finally:
        stop.set()
        producer.join(10)
        worker.stop()
    assert low.info().priority == -10
    assert sum(after_low) > standing, "priority-10 work kept coming while the low job waited"
    assert waited >= 20 * aging * 0.5, f"started after {waited:.2f}s: priority had no effect"
    assert waited <= 20 * aging + 5, f"started after {waited:.2f}s, beyond its aging bound"


def test_a_weighted_worker_shares_its_claims(make_app: type) -> None:
    app = make_app()
    order: list[str] = []
    lock = threading.Lock()

    def record(queue: str) -> None:
        with lock:
            order.append(queue)

    for queue in ("critical", "default", "low"):
        app.job(name=f"in_{queue}", queue=queue)(lambda q=queue: record(q))
        app.enqueue_many(f"in_{queue}", [()] * 300)
    weights = QueueWeights({"critical": 6, "default": 3, "low": 1})
    worker = WorkerThread(app, weights=weights, min_workers=4, max_workers=4).start()
    try:
        wait_until(lambda: len(order) >= 400, what="400 jobs")
    finally:
        worker.stop()
    # while every queue has work, the shares follow the weights (within 10 %)
    first = collections.Counter(order[:400])
    for queue, share in (("critical", 0.6), ("default", 0.3), ("low", 0.1)):
        assert abs(first[queue] / 400 - share) <= 0.1 * share + 0.02, first


def test_queue_specs_parse() -> None:
    assert parse_queues("critical:6,default:3,low") == (
        ["critical", "default", "low"], {"critical": 6, "default": 3, "low": 1})
    assert parse_queues("a, b") == (["a", "b"], None)
    assert parse_queues("host:port:2") == (["host:port"], {"host:port": 2})
    for bad, message in (("a,a", "given twice"), ("a:0", "at least 1"), (",", "at least one"),
                         (":3", "names no queue")):
        with pytest.raises(ConfigurationError, match=message):
            parse_queues(bad)
    strict = weighing(["a", "b"], None, strict=True)
    assert strict is not None and strict.strict and strict.queues == ["a", "b"]
    assert weighing(["a"], None, strict=False) is None
    with pytest.raises(ConfigurationError, match="no weights"):
        weighing(["a"], {"a": 2}, strict=True)


def test_pick_gives_every_ready_queue_its_share() -> None:
    weights = QueueWeights({"a": 6, "b": 3, "c": 1})
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(1000):
        picks, weights.credits = weights.pick({"a": 10, "b": 10, "c": 10}, 10)
        assert set(picks) == {"a", "b", "c"}  # each within sum(weights) claims
        counts.update(picks)
    assert counts == {"a": 6000, "b": 3000, "c": 1000}
    picks, _ = weights.pick({"a": 0, "b": 2, "c": 10}, 8)
    assert collections.Counter(picks) == {"b": 2, "c": 6}
