"""A store that is down: producers and commands give up after a bounded time with one
``StoreUnavailable``, an outage is logged once (a WARNING when it starts, an INFO when the
store is back), workers wait for the store and still stop at once on a signal, and the
Redis persistence warning comes from workers only, once per process.

Redis is real: a port nobody listens on, or a private server killed and started again.
SQLite is a real file locked by another connection holding ``BEGIN EXCLUSIVE``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import cli_env
from conveyor import Conveyor, StoreUnavailable
from polling import exit_after_sigterm, wait_until
from redis_server import RedisServer, free_port

PASSWORD = "pw-never-in-logs"
#: the bound the tests allow beyond a timeout: generous, this is no speed test
MARGIN = 10.0
STORE_LOG = "conveyor.store"

redis = pytest.importorskip("redis")


def store_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == STORE_LOG and r.levelno == level]


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records logged per retry (there must be none)."""
    return [r for r in caplog.records if "retrying in" in r.getMessage()]


def one_outage(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The INFO that ended the one outage logged: one WARNING, one INFO, nothing per retry."""
    warnings = store_records(caplog, logging.WARNING)
    infos = [r for r in store_records(caplog, logging.INFO) if "reachable again" in r.message]
    assert len(warnings) == 1, caplog.text
    assert len(infos) == 1, caplog.text
    assert not retry_records(caplog)
    return infos[0]


def closed_redis_url() -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"


def app_with_add(url: str, store_timeout: float = 5.0) -> Conveyor:
    app = Conveyor(url=url, store_timeout=store_timeout)

    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    return app


# -- producers --------------------------------------------------------------------------------
@pytest.fixture
def locked_db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A SQLite store (made and closed) and another connection holding it locked."""
    url = f"sqlite:///{tmp_path / 'locked.db'}?busy_timeout=1000"
    maker = Conveyor(url=url)
    maker.run_sync(maker.broker.open())
    maker.close()
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield url, holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def test_enqueue_to_an_unreachable_redis_raises_once_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    url = closed_redis_url()
    shown = url.replace(f":{PASSWORD}@", "***@")
    app = app_with_add(url, store_timeout=1.0)
    assert app.broker.retry_for == 1.0
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as blocking:
            app.enqueue("add", 1, 2)
        assert time.monotonic() - began < 1.0 + MARGIN
        assert str(blocking.value) == f"store unavailable ({shown}): Redis is unreachable"
        assert isinstance(blocking.value.__cause__, redis.ConnectionError)
        with pytest.raises(StoreUnavailable):
            app.run_sync(app.enqueue_async("add", 1, 2))
        with pytest.raises(StoreUnavailable):
            app.run_sync(app.broker.list_jobs())
    finally:
        app.close()
    warnings = store_records(caplog, logging.WARNING)
    assert len(warnings) == 1, caplog.text  # one outage: one line, however many retries
    assert shown in warnings[0].getMessage()
    assert "Redis is unreachable" in warnings[0].getMessage()
    assert not retry_records(caplog)
    assert PASSWORD not in caplog.text


def test_producers_retry_for_the_whole_store_timeout_and_no_longer(
        server: RedisServer) -> None:
    """A call tries until its store_timeout is up (the last try at the deadline, not one
    pause before it); an awaited call that joins one in flight (they go out as one script
    call) gives up on its own time, not after the call in flight's wait and then its own."""
    app = app_with_add(server.url, store_timeout=1.0)

    async def run() -> list[float]:
        await app.enqueue_async("add", 1, 1)  # this loop's connection is open too
        server.kill()

        async def timed(delay: float) -> float:
            await asyncio.sleep(delay)
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await app.enqueue_async("add", 2, 2)
            return time.monotonic() - began

        return list(await asyncio.gather(timed(0.0), timed(0.1)))

    try:
        app.enqueue("add", 1, 1)
        first, second = app.run_sync(run())
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            app.enqueue("add", 3, 3)
        blocking = time.monotonic() - began
    finally:
        app.close()
    for took in (first, second, blocking):
        assert 0.9 <= took < 1.0 + MARGIN, (first, second, blocking)
    assert second < 1.7, second  # joined 0.1 s later: not about 0.9 + 1.0


def test_an_awaited_enqueue_to_a_frozen_redis_gives_up_on_its_own_timeout(
        server: RedisServer) -> None:
    """A server that stops answering (SIGSTOP: its connections stay open) would hold a try
    for the socket timeout (5 s); an awaited enqueue's try ends at the caller's deadline."""
    app = app_with_add(server.url, store_timeout=1.0)
    assert server.process is not None
    pid = server.process.pid

    async def frozen() -> float:
        await app.enqueue_async("add", 1, 1)  # connected
        os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await app.enqueue_async("add", 2, 2)
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic() - began

    try:
        took = app.run_sync(frozen())
        app.enqueue("add", 3, 3)  # answering again
    finally:
        app.close()
    assert 0.9 <= took < 3.0, took  # not the 5 s socket timeout


def test_a_redis_restart_is_one_warning_then_one_info(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    app = app_with_add(server.url, store_timeout=30.0)
    try:
        app.enqueue("add", 1, 1)
        server.kill()
        restart = threading.Timer(1.5, server.start)
        restart.start()
        try:
            handle = app.enqueue("add", 2, 2)  # waits through the outage
        finally:
            restart.join()
        assert app.run_sync(app.broker.get(handle.id)) is not None
        app.enqueue("add", 3, 3)
    finally:
        app.close()
    assert "unavailable for" in one_outage(caplog).getMessage()


@pytest.mark.parametrize("through", ["blocking", "awaited"])
def test_a_connection_idle_through_a_restart_logs_no_second_outage(
        server: RedisServer, caplog: pytest.LogCaptureFixture, through: str) -> None:
    """A process's blocking and event-loop connections both sit idle while one of them
    waits through a restart: the other's first call after it meets a connection the old
    server closed, and is tried again at once on a new one, without a second outage."""
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    app = app_with_add(server.url, store_timeout=30.0)

    def blocking() -> None:
        app.enqueue("add", 1, 1)

    def awaited() -> None:
        app.run_sync(app.enqueue_async("add", 1, 1))
        app.run_sync(app.broker.list_jobs())

    waits, later = (blocking, awaited) if through == "blocking" else (awaited, blocking)
    try:
        waits()
        later()  # both kinds of connection are open, and idle from here
        server.kill()
        restart = threading.Timer(1.5, server.start)
        restart.start()
        try:
            waits()  # meets the outage and waits it out
        finally:
            restart.join()
        assert len(store_records(caplog, logging.WARNING)) == 1, caplog.text
        later()  # its idle connection was closed by the old server
        later()
    finally:
        app.close()
    one_outage(caplog)


def test_a_locked_sqlite_database_raises_once_logged(
        locked_db: tuple[str, sqlite3.Connection], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    url, holder = locked_db
    app = app_with_add(url)
    try:
        for _ in range(2):
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                app.enqueue("add", 1, 2)
            assert time.monotonic() - began < 1.0 + MARGIN  # the URL's busy_timeout
            assert raised.value.reason == "the database is locked"
            assert str(raised.value) == f"store unavailable ({url}): the database is locked"
        with pytest.raises(StoreUnavailable):
            app.run_sync(app.enqueue_async("add", 1, 2))
        assert len(store_records(caplog, logging.WARNING)) == 1, caplog.text
        holder.execute("ROLLBACK")
        handle = app.enqueue("add", 2, 3)
        assert app.run_sync(app.broker.get(handle.id)) is not None
    finally:
        app.close()
    infos = [r for r in store_records(caplog, logging.INFO) if "reachable again" in r.message]
    assert len(infos) == 1, caplog.text
    assert len(store_records(caplog, logging.WARNING)) == 1


def test_store_timeout_must_be_positive() -> None:
    from conveyor.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="store_timeout"):
        Conveyor(url="sqlite:///unused.db", store_timeout=0)


# -- commands ---------------------------------------------------------------------------------
COMMANDS = [
    ["stats"],
    ["jobs"],
    ["status", "06H0HQQS1DPDNNKJ7KG6WTC19R"],
    ["enqueue", "add", "--args", "[1, 2]", "--force"],
    ["cancel", "06H0HQQS1DPDNNKJ7KG6WTC19R"],
]


def test_commands_print_one_error_line_when_redis_is_unreachable(tmp_path: Path) -> None:
    url = closed_redis_url()
    shown = url.replace(f":{PASSWORD}@", "***@")
    began = time.monotonic()
    running = [
        subprocess.Popen([sys.executable, "-m", "conveyor", *command, "--url", url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=cli_env())
        for command in COMMANDS
    ]
    for command, proc in zip(COMMANDS, running, strict=True):
        out, err = proc.communicate(timeout=60)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 1, (command, out, err)
        assert lines == [f"error: store unavailable ({shown}): Redis is unreachable"], \
            (command, err)
        assert PASSWORD not in out + err
    assert time.monotonic() - began < 5.0 + MARGIN  # the commands' bound, run side by side


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux: ``/proc/PID/fd``)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(path.resolve()):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_a_command_stops_on_ctrl_c_while_waiting(tmp_path: Path) -> None:
    """``conveyor status --wait`` on a job that never ends: SIGINT ends it (exit 130)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    done = subprocess.run([sys.executable, "-m", "conveyor", "enqueue", "add", "--args",
                           "[1, 2]", "--force", "--url", url], capture_output=True, text=True,
                          cwd=tmp_path, env=cli_env(), timeout=60, check=True)
    job_id = done.stdout.strip()
    # SIGINT at its default in the child, as in a terminal, even if this run inherited it
    # ignored (a background job of a shell without job control): Python then leaves it so
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "status", job_id, "--wait",
                             "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # not a fixed sleep: under load the imports alone may take longer, and a SIGINT then
    # ends the process as any Python program ends, with a traceback
    wait_until(lambda: proc.poll() is not None or has_open(proc.pid, tmp_path / "c.db"),
               timeout=60, what="the command to open the store")
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)  # into its wait (any moment from here on must do)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err


# -- workers ----------------------------------------------------------------------------------
class WorkerProcess:
    """``conveyor worker rjobs:app`` with its log in a file, to read while it runs."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.log = tmp_path / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url", url],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=cli_env())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, f"the worker exited:\n{self.text()}"
            return needle in self.text()

        wait_until(seen, timeout=timeout, what=f"{needle!r} in the worker's log")

    def terminate(self, within: float) -> int:
        """SIGTERM; the exit code, which must come within ``within`` seconds."""
        return exit_after_sigterm(self.proc, within, self.text)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_a_worker_waits_for_an_unreachable_redis_and_stops_on_sigterm(tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, closed_redis_url())
    try:
        worker.wait_for("cannot reach the store")
        time.sleep(2.0)  # several retries later
        assert worker.proc.poll() is None, "a worker waits for the store"
        assert worker.terminate(within=5.0) == 0, worker.text()
    finally:
        worker.kill()
    text = worker.text()
    assert text.count("cannot reach the store") == 1, text
    assert "retrying in" not in text and "trying again" not in text, text
    assert "Traceback" not in text, text
    assert PASSWORD not in text


def test_a_worker_cut_off_by_an_outage_stops_on_sigterm(
        server: RedisServer, tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, server.url)
    try:
        worker.wait_for("queues")  # registered: it runs
        server.kill()
        worker.wait_for("cannot reach the store")
        time.sleep(1.0)
        assert worker.terminate(within=5.0) == 0, worker.text()
    finally:
        worker.kill()
    assert worker.text().count("cannot reach the store") == 1, worker.text()


def test_persistence_warning_once_per_worker_and_never_for_commands(
        server: RedisServer, tmp_path: Path) -> None:
    def no_persistence() -> None:
        client = redis.Redis.from_url(server.url)
        client.config_set("appendonly", "no")
        client.config_set("save", "")
        client.close()

    no_persistence()
    worker = WorkerProcess(tmp_path, server.url)
    try:
        worker.wait_for("persistence is off")
        for command in (["stats"], ["jobs"], ["enqueue", "add", "--args", "[1, 2]",
                                              "--force"]):
            done = subprocess.run([sys.executable, "-m", "conveyor", *command, "--url",
                                   server.url], capture_output=True, text=True, cwd=tmp_path,
                                  env=cli_env(), timeout=60, check=False)
            assert done.returncode == 0, (command, done.stderr)
            assert "persistence" not in done.stderr + done.stdout, command
        # an outage and a reconnection later, the worker does not say it again
        server.kill()
        worker.wait_for("cannot reach the store")
        server.start()
        no_persistence()
        worker.wait_for("reachable again")
        time.sleep(1.0)
        assert worker.terminate(within=10.0) == 0, worker.text()
    finally:
        worker.kill()
    assert worker.text().count("persistence is off") == 1, worker.text()


def test_a_worker_waits_for_a_locked_sqlite_database_and_stops_on_sigterm(
        locked_db: tuple[str, sqlite3.Connection], tmp_path: Path) -> None:
    url, holder = locked_db
    worker = WorkerProcess(tmp_path, url)
    try:
        worker.wait_for("the database is locked")
        time.sleep(1.5)
        assert worker.proc.poll() is None
        holder.execute("ROLLBACK")
        worker.wait_for("reachable again")
        worker.wait_for("queues")
        assert worker.terminate(within=10.0) == 0, worker.text()
    finally:
        worker.kill()
    assert worker.text().count("cannot reach the store") == 1, worker.text()


def test_a_worker_on_a_port_that_later_answers_goes_to_work(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    worker = WorkerProcess(tmp_path, server.url)
    try:
        worker.wait_for("cannot reach the store")
        server.start()
        worker.wait_for("reachable again")
        app = Conveyor(url=server.url)
        try:
            handle = app.enqueue_call("pause", [5, 0.0], {}, force=True)
            assert handle.result(timeout=30) == 5
        finally:
            app.close()
        assert worker.terminate(within=10.0) == 0, worker.text()
    finally:
        worker.kill()
        server.stop()
    assert worker.text().count("cannot reach the store") == 1, worker.text()


def test_store_timeout_bounds_the_wait_for_a_locked_sqlite_database(tmp_path: Path) -> None:
    """The URL asks for 60 s of lock waits; a producer's store_timeout of 1 s wins."""
    url = f"sqlite:///{tmp_path / 'slow.db'}?busy_timeout=60000"
    maker = Conveyor(url=url)
    maker.run_sync(maker.broker.open())
    maker.close()
    holder = sqlite3.connect(tmp_path / "slow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    app = app_with_add(url, store_timeout=1.0)
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="the database is locked"):
            app.enqueue("add", 1, 2)
        assert time.monotonic() - began < 1.0 + MARGIN  # not the URL's 60 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        app.close()
