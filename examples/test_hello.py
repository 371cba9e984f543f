"""Testing the jobs of examples/hello.py with Conveyor's pytest plugin.

The plugin comes with Conveyor; tell it where the app is, in the pytest configuration::

    [tool.pytest.ini_options]
    conveyor_app = "examples.hello:app"

or on the command line: ``pytest examples/test_hello.py --conveyor-app examples.hello:app``.
Each test gets the app on a fresh in-memory store; nothing touches conveyor.db.
"""

from __future__ import annotations

import pytest

from conveyor import Conveyor, JobFailed, JobState
from conveyor.testing import WorkerThread
from examples.hello import add, app, count_words, crunch, flaky_fetch


def test_add(conveyor_eager: Conveyor) -> None:
    """``conveyor_eager``: each job runs to its end when it is enqueued."""
    handle = add.enqueue(2, 3)
    assert handle.info().state is JobState.SUCCEEDED
    assert handle.result() == 5


def test_count_words_reports_progress(conveyor_eager: Conveyor) -> None:
    handle = count_words.enqueue(text="to be or not to be")
    assert handle.result() == {"to": 2, "be": 2, "or": 1, "not": 1}
    assert handle.info().progress == 1.0


def test_a_bad_address_is_not_retried(conveyor_eager: Conveyor) -> None:
    handle = flaky_fetch.enqueue("ftp://example.com")
    with pytest.raises(JobFailed, match="not a web address"):
        handle.result()
    assert handle.info().attempts == 1


def test_process_jobs_run_in_this_process_when_eager(conveyor_eager: Conveyor) -> None:
    assert crunch.enqueue(4).result() == 0 + 1 + 4 + 9


def test_with_a_real_worker(conveyor_app: Conveyor, conveyor_worker: WorkerThread) -> None:
    """``conveyor_worker``: a worker in a background thread; ``drain`` waits for it."""
    handles = add.enqueue_many([(i, i) for i in range(10)])
    conveyor_worker.drain(timeout=30)
    assert [h.info().state for h in handles] == [JobState.SUCCEEDED] * 10
    assert [h.result() for h in handles] == [2 * i for i in range(10)]


def test_without_the_plugin() -> None:
    """``app.testing()`` gives the same eager mode on a fresh store, anywhere."""
    with app.testing():
        assert add.enqueue(1, 1).result() == 2
