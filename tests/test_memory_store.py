"""``memory://`` stores: private per app, shared by name within the process, gone at close."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import WorkerThread
from conveyor import Conveyor
from conveyor.backends import open_broker
from conveyor.backends.sqlite.memory import MemoryBroker, parse_name, store_directory
from conveyor.errors import ConfigurationError, JobNotFound
from conveyor.ids import new_id
from conveyor.job import JobState
from polling import wait_until


def _app(url: str) -> Conveyor:
    app = Conveyor(url=url, lease=2.0)

    @app.job
    async def double(x: int) -> int:
        return 2 * x

    return app


def _path(app: Conveyor) -> Path:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return broker.settings.path


def test_named_store_is_shared_between_apps() -> None:
    url = f"memory://shared-{new_id().lower()}"
    first, second = _app(url), _app(url)
    try:
        handle = first.enqueue("double", 4)
        seen = second.handle(handle.id).info()
        assert (seen.state, seen.args) == (JobState.QUEUED, [4])
        first.close()  # a named store outlives the apps that close
        assert second.handle(handle.id).info().id == handle.id
        assert _path(second).exists()
    finally:
        first.close()
        second.close()


def test_plain_memory_is_private_to_each_app() -> None:
    first, second = _app("memory://"), _app("memory://")
    try:
        handle = first.enqueue("double", 1)
        assert first.handle(handle.id).info().state is JobState.QUEUED
        with pytest.raises(JobNotFound):
            second.handle(handle.id).info()
        assert _path(first) != _path(second)
    finally:
        first.close()
        second.close()


def test_private_store_is_removed_when_closed() -> None:
    app = _app("memory://")
    app.enqueue("double", 1)
    path = _path(app)
    assert path.exists()
    app.close()
    assert not path.exists()
    assert not Path(f"{path}-wal").exists()
    # the app can be used again: on a new, empty private store
    try:
        assert app.broker.url == "memory://"
        assert app.run_sync(app.broker.counts()) == {}
    finally:
        app.close()


def test_store_lives_in_ram_without_fsync() -> None:
    app = _app("memory://")
    try:
        app.enqueue("double", 1)
        path = _path(app)
        assert path.parent == store_directory()
        if Path("/dev/shm").is_dir():
            assert str(path).startswith("/dev/shm/")
        broker = app.broker
        assert isinstance(broker, MemoryBroker)
        assert broker.settings.synchronous == "OFF"
        with sqlite3.connect(path) as conn:  # an ordinary WAL database underneath
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        app.close()


@pytest.mark.parametrize("url", ["memory://no/slash", "memory://bad name", "memory:relative"])
def test_bad_memory_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_broker(url, "conveyor", 60.0)


def test_names_parse() -> None:
    assert parse_name("memory://") is None
    assert parse_name("MEMORY://") is None
    assert parse_name("memory://a-b.c_1/") == "a-b.c_1"


@pytest.fixture
def memory_app() -> Iterator[Conveyor]:
    app = _app("memory://")
    yield app
    app.close()


def test_worker_runs_jobs_from_a_memory_store(
    memory_app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    start_worker(memory_app)
    handles = memory_app.enqueue_many("double", [(i,) for i in range(20)])
    assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(20)]
    assert memory_app.run_sync(memory_app.broker.counts())["default"]["succeeded"] == 20


def test_an_enqueue_racing_a_private_stores_close_lands_in_the_store_that_stays() -> None:
    """A close from one thread while another enqueues: the enqueue waits for the close to
    end (its files removed) and opens a new store, rather than write into files the close
    removes just after (acknowledged, then gone)."""
    app = _app("memory://")
    try:
        first = app.enqueue("double", 1)
        assert first.info().state is JobState.QUEUED  # a reader connection of this thread
        broker = app.broker
        assert isinstance(broker, MemoryBroker)
        (_, _, reader_lock), = broker._readers
        with reader_lock:  # the close stops at this reader, as under a statement running
            closing = threading.Thread(target=broker.close_blocking)
            closing.start()
            wait_until(lambda: not broker._opened, what="the close to begin")
            late: list[str] = []
            racing = threading.Thread(target=lambda: late.append(app.enqueue("double", 2).id))
            racing.start()
            time.sleep(0.2)  # the enqueue meanwhile reaches the store, or waits for it
        closing.join(timeout=10)
        racing.join(timeout=10)
        assert not closing.is_alive() and not racing.is_alive() and len(late) == 1
        assert app.handle(late[0]).info().state is JobState.QUEUED  # not in removed files
        assert _path(app).exists()
    finally:
        app.close()
    assert not _path(app).exists()
