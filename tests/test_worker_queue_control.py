"""A real worker and paused queues, on SQLite and Redis: it stops claiming from a queue
paused by another producer within about a second (running jobs finish), and claims again
once the queue is resumed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor import ConfigurationError, Conveyor, JobState
from conveyor.ids import new_id
from conveyor.job import JobRecord
from conveyor.testing import WorkerThread
from polling import wait_until


@pytest.fixture
def apps(url: str) -> Iterator[tuple[Conveyor, Conveyor]]:
    """The worker's app and another producer's, on one store and namespace."""
    namespace = f"t{new_id().lower()}"
    worker_app = Conveyor(url=url, namespace=namespace, lease=5.0)
    admin = Conveyor(url=url, namespace=namespace)
    yield worker_app, admin
    admin.close()
    worker_app.close()


def test_pause_stops_claims_and_resume_starts_them(apps: tuple[Conveyor, Conveyor]) -> None:
    worker_app, admin = apps
    release = threading.Event()

    @worker_app.job(queue="work")
    def step(n: int) -> int:
        return n

    @worker_app.job(queue="work")
    def long_one() -> str:
        release.wait(20)
        return "done"

    worker = WorkerThread(worker_app, queues=["work"], min_workers=2, max_workers=2).start()
    try:
        first = worker_app.enqueue("step", 0)
        wait_until(lambda: first.info().state is JobState.SUCCEEDED, what="a first job")
        running = worker_app.enqueue("long_one")
        wait_until(lambda: running.info().state is JobState.RUNNING, what="the long job")

        admin.pause("work")
        held = [admin.enqueue("step", n) for n in range(1, 4)]  # enqueues are accepted
        time.sleep(1.5)
        assert [h.info().state for h in held] == [JobState.QUEUED] * 3
        release.set()  # the job running when the queue was paused still finishes
        wait_until(lambda: running.info().state is JobState.SUCCEEDED, what="the long job")
        time.sleep(0.5)
        assert [h.info().state for h in held] == [JobState.QUEUED] * 3
        assert admin.queue_settings()["work"].paused

        admin.resume("work")
        wait_until(lambda: all(h.info().state is JobState.SUCCEEDED for h in held),
                   timeout=20, what="the held jobs to run after the resume")
        assert "work" not in admin.queue_settings()
    finally:
        release.set()
        worker.stop()


def test_a_queue_no_job_may_enter_is_not_made_by_its_settings(
        apps: tuple[Conveyor, Conveyor]) -> None:
    """Pausing, resuming or capping a queue whose name every enqueue refuses is refused
    too (it made a queue listed for ever that no job could enter), unless the store knows
    the queue already: one stored before names were checked further can be controlled."""
    _, admin = apps
    for act in (lambda: admin.pause("a b"), lambda: admin.resume("x,y"),
                lambda: admin.set_max_queued("a/b", 3)):
        with pytest.raises(ConfigurationError, match="without whitespace"):
            act()
    assert admin.queue_settings() == {}
    now = time.time()
    old = JobRecord(new_id(), "legacy", "old queue", JobState.QUEUED, [], {}, now, now)
    admin.run_sync(admin.broker.enqueue([old], {}))  # (the store takes what it is given)
    admin.pause("old queue")
    admin.set_max_queued("old queue", 5)
    settings = admin.queue_settings()["old queue"]
    assert (settings.paused, settings.max_queued) == (True, 5)
    admin.resume("old queue")
    assert admin.queue_settings()["old queue"].paused is False
