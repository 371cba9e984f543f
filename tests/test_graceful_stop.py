"""A graceful stop ends in time, on both stores, whatever state the store is in.

``conveyor worker`` processes get SIGTERM while idle (many times over), while Redis is down
(the test's own server killed) and while the SQLite database is locked by another
connection; and the chores' stop is tried after cancelling a heartbeat in flight, a
cancellation redis-py may swallow on Python 3.11 (CPython issue 86296). Real processes,
signals and servers; the worker runs ``stopjobs:app`` (lease 0.6 s: five heartbeats a
second).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, cli_env
from conveyor import Conveyor, JobState
from conveyor.ids import new_id
from conveyor.worker.maintenance import STOP_TIMEOUT
from conveyor.worker.pool import Worker
from conveyor.worker.shutdown import CANCEL_WAIT
from polling import wait_until
from redis_server import RedisServer

GRACE = 2.0
#: a stop must be over within the grace period plus this many seconds
MARGIN = 5.0
#: SIGTERMs to an idle worker, on each store
ROUNDS = 12


class Store:
    """The store of one test: the URL the worker gets, and an app on it to read and enqueue."""

    def __init__(self, url: str, worker_url: str | None = None) -> None:
        self.worker_url = worker_url or url
        self.namespace = f"t{new_id().lower()}"
        self.app = Conveyor(url=url, namespace=self.namespace)

    def worker_pids(self) -> set[int]:
        return {info.pid for info in self.app.run_sync(self.app.broker.workers())}

    def published_by(self, pid: int) -> bool:
        """Whether the worker process ``pid`` published its jobs (after it registered):
        only then may this app, which registers none, enqueue them by name."""
        return any(job.worker_id is not None and f"-{pid}-" in job.worker_id
                   for job in self.app.known_jobs())


class WorkerProcess:
    """One ``conveyor worker stopjobs:app`` process, its log in a file."""

    def __init__(self, store: Store, log: Path, *options: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "--log-level", "INFO", "worker",
                 "stopjobs:app", "--url", store.worker_url, "--namespace", store.namespace,
                 "--grace", str(GRACE), *options],
                cwd=TESTS, env=cli_env(), stdout=subprocess.DEVNULL, stderr=out,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, clean: bool = True) -> float:
        """SIGTERM; insist on exit 0 within ``GRACE + MARGIN`` (and, if ``clean``, no
        traceback in the log); return how long it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(GRACE + MARGIN)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no exit within {GRACE + MARGIN}s of SIGTERM:\n"
                                 f"{self.output()}") from None
        took = time.monotonic() - started
        assert code == 0, f"exit code {code}:\n{self.output()}"
        if clean:
            assert "Traceback" not in self.output(), self.output()
        return took


class Processes:
    """Starts worker processes; kills those left at the end of the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[WorkerProcess] = []

    def start(self, store: Store, *options: str) -> WorkerProcess:
        worker = WorkerProcess(store, self.logs / f"worker-{len(self.started)}.log", *options)
        self.started.append(worker)
        pid = worker.proc.pid
        wait_until(lambda: (pid in store.worker_pids() and store.published_by(pid))
                   or worker.proc.poll() is not None,
                   timeout=30, what=f"the worker to register and publish its jobs\n"
                   f"{worker.output()}")
        assert worker.proc.poll() is None, worker.output()
        return worker

    def cleanup(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.cleanup()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        chosen = Store(f"sqlite:///{tmp_path / 'conveyor.db'}")
    else:
        chosen = Store(request.getfixturevalue("server").url)
    yield chosen
    chosen.app.close()


# -- (a) SIGTERM to an idle worker, again and again -----------------------------------------------
def test_sigterm_to_an_idle_worker_always_exits_0_in_time(
    store: Store, processes: Processes
) -> None:
    rng = random.Random(86296)
    pids = []
    for _ in range(ROUNDS):
        worker = processes.start(store)
        pids.append(worker.proc.pid)
        time.sleep(rng.uniform(0.0, 0.25))  # anywhere in the heartbeat cycle (0.2 s)
        worker.stop()
    assert not store.worker_pids() & set(pids), "every worker signs off"


# -- (b) SIGTERM while the store is out -----------------------------------------------------------
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_sigterm_while_redis_is_down(server: RedisServer, processes: Processes,
                                     busy: bool) -> None:
    store = Store(server.url)
    try:
        worker = processes.start(store, "--max-workers", "1")
        if busy:
            handle = store.app.enqueue("nap", 60.0)
            wait_until(lambda: handle.info().state is JobState.RUNNING, timeout=20,
                       what=f"the job to run\n{worker.output()}")
        server.kill()
        time.sleep(1.0)  # the chores (and, busy, the job) now wait on a store that is gone
        worker.stop(clean=False)
    finally:
        store.app.close()
    if busy:  # the requeue could not be written: left to the job's lease
        assert "could not record" in worker.output(), worker.output()


def test_sigterm_while_sqlite_is_locked(tmp_path: Path, processes: Processes) -> None:
    path = tmp_path / "conveyor.db"
    store = Store(f"sqlite:///{path}", worker_url=f"sqlite:///{path}?busy_timeout=200")
    try:
        worker = processes.start(store, "--max-workers", "1")
        handle = store.app.enqueue("nap", 60.0)
        wait_until(lambda: handle.info().state is JobState.RUNNING, timeout=20,
                   what=f"the job to run\n{worker.output()}")
        locker = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # every write of the worker now fails
            time.sleep(1.0)
            worker.stop(clean=False)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert "could not record" in worker.output(), worker.output()
        info = handle.info()  # the requeue was never written: the lease brings it back
        assert info.state is JobState.RUNNING and info.attempts == 1
        assert "signing off from the store" in worker.output()  # could not sign off either
    finally:
        store.app.close()


def test_sigterm_to_a_worker_opening_a_locked_database(tmp_path: Path) -> None:
    """A worker whose first store call waits out a lock another process holds: SIGTERM ends
    its work at once; the call's thread, which SQLite cannot interrupt, is left to end by
    itself with one warning line, and no traceback (the loop's own shutdown of its
    executor used to log two)."""
    path = tmp_path / "conveyor.db"
    store = Store(f"sqlite:///{path}", worker_url=f"sqlite:///{path}?busy_timeout=3000")
    try:
        # the file exists, the worker's namespace does not: its opening must write (in a
        # store call of its executor), and waits for the lock
        other = Conveyor(url=f"sqlite:///{path}", namespace="other")
        other.run_sync(other.broker.open())
        other.close()
        locker = sqlite3.connect(path, isolation_level=None, timeout=10)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            worker = WorkerProcess(store, tmp_path / "worker.log", "--max-workers", "1")

            def holds_the_file() -> bool:
                fds = Path(f"/proc/{worker.proc.pid}/fd")
                with contextlib.suppress(OSError):
                    return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
                return False

            wait_until(holds_the_file, timeout=30, what=f"the worker to open the database\n"
                       f"{worker.output()}")
            time.sleep(0.5)  # its opening write now waits for the lock
            assert worker.proc.poll() is None, worker.output()
            worker.stop()  # exit 0, no traceback
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        log = worker.output()
        assert "InvalidStateError" not in log and "ERROR" not in log, log
        assert "a store call in progress has not ended" in log, log
    finally:
        store.app.close()


# -- (c) cancelling a heartbeat in flight ---------------------------------------------------------
def test_stop_returns_in_time_after_a_heartbeat_in_flight_was_cancelled(
    server: RedisServer,
) -> None:
    """On Python 3.11 redis-py's sends (``asyncio.wait_for``) swallow many of these
    cancellations; the chores' loop must end all the same, and ``stop()`` in time."""
    app = Conveyor(url=server.url, namespace=f"t{new_id().lower()}", lease=0.6)
    rng = random.Random(86296)
    bound = STOP_TIMEOUT + CANCEL_WAIT + 0.5

    async def scenario() -> tuple[list[float], int, int]:
        loop = asyncio.get_running_loop()
        worker = Worker(app)
        await app.broker.open()
        maintenance = worker.maintenance
        maintenance.heartbeat_interval = 0.0  # back to back: one is nearly always in flight
        durations: list[float] = []
        swallowed = hung = 0
        for _ in range(300):
            maintenance.start()
            tasks = list(maintenance._tasks)
            heartbeat = next(t for t in tasks if t.get_name() == "conveyor-heartbeat")
            for _ in range(rng.randint(1, 40)):
                await asyncio.sleep(0)
            heartbeat.cancel()
            for _ in range(rng.randint(0, 2)):
                await asyncio.sleep(0)
            started = loop.time()
            stopping = asyncio.create_task(maintenance.stop())
            await asyncio.wait({stopping}, timeout=bound + 5)
            durations.append(loop.time() - started)
            hung += not stopping.done() or not all(task.done() for task in tasks)
            while not stopping.done() or not all(task.done() for task in tasks):
                for task in tasks:  # a failure, not a hung test: cancel until they end
                    task.cancel()
                await asyncio.wait(tasks, timeout=0.01)
            swallowed += not heartbeat.cancelled()
        await app.broker.close()
        return durations, swallowed, hung

    try:
        durations, swallowed, hung = asyncio.run(scenario())
    finally:
        app.close()
    assert hung == 0, f"{hung} of 300 stops hung or left a chore loop running"
    assert max(durations) < bound, (
        f"slowest stop {max(durations):.2f}s ({swallowed} of 300 cancellations swallowed)")


# -- (d) a stop that comes while the worker registers ---------------------------------------------
def test_a_stop_during_registration_still_signs_the_worker_off(tmp_path: Path) -> None:
    """A stop asked after the worker's first heartbeat is stored but before its jobs are
    published (the registration under way) lets the registration end and signs the worker
    off: it is not left listed until its heartbeat expires. The stop is asked from inside the
    registration (the publishing step), so the moment is the same on every run."""
    app = Conveyor(url=f"sqlite:///{tmp_path / 'conveyor.db'}")

    @app.job()
    def noop() -> None:
        return None

    async def scenario() -> tuple[list[str], list[str]]:
        worker = Worker(app, grace=0.0)
        publish = worker.maintenance.publish_jobs
        listed: list[str] = []

        async def publish_after_a_stop() -> None:
            listed.extend(info.id for info in await app.broker.workers())
            worker.request_stop()
            await publish()

        worker.maintenance.publish_jobs = publish_after_a_stop  # type: ignore[method-assign]
        await asyncio.wait_for(worker.run(), timeout=30)
        return listed, [info.id for info in await app.broker.workers()]

    try:
        listed, left = app.run_sync(scenario())
    finally:
        app.close()
    assert len(listed) == 1  # the heartbeat had registered it when the stop came
    assert left == []
