"""Shared fixtures: a real SQLite file per test, apps, and workers on real threads."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.testing import WorkerThread
from redis_server import RedisServer

TESTS = Path(__file__).parent
ROOT = TESTS.parent
# Modules of test jobs (tests/procjobs.py, ...) must be importable by child processes too.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _no_ambient_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their store explicitly; a CONVEYOR_URL from the shell must not leak in."""
    monkeypatch.delenv("CONVEYOR_URL", raising=False)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    """A store of each kind: the test's own SQLite file, or the shared test Redis (give
    each app a namespace of its own there)."""
    if request.param == "redis":
        from redis_server import shared_redis_url

        return shared_redis_url()
    return db_url


@pytest.fixture
def app(db_url: str) -> Iterator[Conveyor]:
    """An app on the test's own database with a short lease."""
    application = Conveyor(url=db_url, lease=2.0)
    yield application
    try:  # workers started on it stop first, whatever the order of the test's fixtures
        for thread in list(_RUNNING):
            if thread.app is application and thread._thread.is_alive():
                thread.stop()
    finally:
        application.close()


#: the worker threads ``start_worker`` started and not yet stopped (see the ``app`` fixture)
_RUNNING: list[WorkerThread] = []


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerThread]]:
    """``start_worker(app, max_workers=4, ...)`` runs a worker until the test ends."""
    started: list[WorkerThread] = []

    def start(app: Conveyor, **options: Any) -> WorkerThread:
        thread = WorkerThread(app, **options).start()
        started.append(thread)
        _RUNNING.append(thread)
        return thread

    yield start
    for thread in started:
        if thread._thread.is_alive():
            thread.stop()
        if thread in _RUNNING:
            _RUNNING.remove(thread)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private ``redis-server`` (AOF, ``appendfsync always``) that the test may kill and
    restart; stopped at the end."""
    directory = tmp_path / "redis"
    directory.mkdir()
    srv = RedisServer(directory).start()
    yield srv
    srv.stop()


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``conveyor`` subprocesses: tests/ importable, no ambient URL."""
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.update(extra)
    return env


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Any:
    """Runs ``python -m conveyor`` against the test's database (see tests/clijobs.py)."""
    from clijobs import CLI

    return CLI(db_url, tmp_path)


@pytest.fixture
def jobs_app(app: Conveyor) -> Conveyor:
    """The test's app on the same store, with the clijobs jobs, to run and read jobs."""
    from clijobs import register

    return register(app)
