"""Pytest plugin for code that uses Conveyor (installed with the package, active by itself).

Name your app once, in ``pytest.ini``/``pyproject.toml`` (``conveyor_app = myproject.jobs:app``)
or with ``--conveyor-app myproject.jobs:app``, or override the ``conveyor_app`` fixture. Then:

* ``conveyor_app``: the app, on a fresh private ``memory://`` store for the test (its own
  store and mode are put back afterwards);
* ``conveyor_eager``: the same, in eager mode: each job runs when it is enqueued;
* ``conveyor_worker``: a real :class:`~conveyor.worker.pool.Worker` on ``conveyor_app`` in a
  background thread; ``conveyor_worker.drain(timeout=...)`` waits until its queues are
  empty; it is stopped after the test.

The plugin costs nothing to suites that use none of these fixtures: Conveyor itself is
imported only when one of them is used.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from conveyor.logs import plural

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.pool import Worker

#: states of a job that is not done yet
_PENDING = ("queued", "scheduled", "running")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--conveyor-app`` and the ``conveyor_app`` ini setting."""
    group = parser.getgroup("conveyor")
    group.addoption("--conveyor-app", dest="conveyor_app", default=None, metavar="MODULE:ATTR",
                    help="the Conveyor app the conveyor_app fixture uses")
    parser.addini("conveyor_app", "the Conveyor app the conveyor_app fixture uses "
                  "(module:attribute)", default="")


def _app_spec(config: pytest.Config) -> str:
    spec = config.getoption("conveyor_app") or config.getini("conveyor_app")
    if not spec:
        pytest.fail("the conveyor_app fixture needs your app: set conveyor_app = module:app "
                    "in the pytest configuration, pass --conveyor-app module:app, or "
                    "override the conveyor_app fixture", pytrace=False)
    return str(spec).strip()


@pytest.fixture
def conveyor_app(request: pytest.FixtureRequest) -> Iterator[Conveyor]:
    """The configured app on a fresh private ``memory://`` store for this test."""
    from conveyor.cli.loading import CLIError, load_app

    try:
        app = load_app(_app_spec(request.config))
    except CLIError as exc:
        pytest.fail(f"conveyor_app: {exc}", pytrace=False)
    with app.testing(eager=False):
        yield app


@pytest.fixture
def conveyor_eager(conveyor_app: Conveyor) -> Iterator[Conveyor]:
    """``conveyor_app`` in eager mode: each job runs to its end when it is enqueued."""
    with conveyor_app.testing(url=None):
        yield conveyor_app


class WorkerThread:
    """A real worker on its own event loop in a daemon thread."""

    def __init__(self, app: Conveyor, **options: Any) -> None:
        from conveyor.worker.pool import Worker

        self.app = app
        self.worker: Worker = Worker(app, **options)
        #: what the worker raised, if it stopped with an error
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="conveyor-test-worker",
                                        daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        async def body() -> None:
            task = asyncio.create_task(self.worker.run())
            await asyncio.sleep(0)
            self._started.set()
            await task

        try:
            asyncio.run(body())
        except BaseException as exc:  # raised again by drain() and stop()
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> WorkerThread:
        """Start the worker; return once its loop runs."""
        self._thread.start()
        self._started.wait(10)
        return self

    def pending(self) -> int:
        """Jobs of the worker's queues not done yet (queued, scheduled or running)."""
        counts = self.app.run_sync(self.worker.broker.counts())
        return sum(counts.get(queue, {}).get(state, 0)
                   for queue in self.worker.queues for state in _PENDING)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until no job of the worker's queues is queued, scheduled (a retry waiting
        for its backoff too) or running. Raise :class:`TimeoutError` after ``timeout``
        seconds, or what the worker died of."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            if self.error is not None:
                raise self.error
            left = self.pending()
            if left == 0:
                return
            if not self._thread.is_alive():
                raise RuntimeError(f"the worker stopped with {plural(left, 'job')} left")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{plural(left, 'job')} of queues "
                                   f"{', '.join(self.worker.queues)} "
                                   f"still pending after {timeout}s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (as on SIGTERM); raise what the worker raised, if anything."""
        self.worker.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the conveyor worker did not stop in time")
        if self.error is not None:
            raise self.error


@pytest.fixture
def conveyor_worker_options() -> dict[str, Any]:
    """Keyword arguments of the ``conveyor_worker``'s :class:`Worker` (override to change
    queues, ``max_workers``, ``grace``...)."""
    return {}


@pytest.fixture
def conveyor_worker(conveyor_app: Conveyor,
                    conveyor_worker_options: dict[str, Any]) -> Iterator[WorkerThread]:
    """A real worker running ``conveyor_app``'s jobs in a background thread."""
    options = {"max_workers": 4, "grace": 5.0, **conveyor_worker_options}
    thread = WorkerThread(conveyor_app, **options).start()
    try:
        yield thread
    finally:
        thread.stop()
