"""A store that cannot be used now (a full disk, a locked database, an unreachable Redis)
reaches callers as ``StoreUnavailable``, the HTTP API as a 503 and a worker as a reason to
wait; ``close()`` leaves no connection open.

The full disk is real: a 1 MiB tmpfs filled with a file (mounting needs root; the tests that
need it are skipped otherwise). The locked database is another connection holding
``BEGIN EXCLUSIVE``; the unreachable Redis is a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clijobs import register
from conftest import cli_env
from conveyor import Conveyor, ConveyorError, JobState, StoreUnavailable
from conveyor.backends.outage import Outage, outage_for
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.errors import ConfigurationError
from http_server import Server
from polling import wait_until

PASSWORD = "hunter2-not-for-logs"


class Disk:
    """A small tmpfs that a test fills up and frees again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = path / "conveyor.db"
        self.url = f"sqlite:///{self.db}"
        self._filler = path / "filler"

    def fill(self) -> None:
        """Take every free block (down to the last byte)."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, and mounting needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield Disk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def check_unavailable(error: StoreUnavailable, url: str, reason: str) -> None:
    assert isinstance(error, ConveyorError)
    assert error.reason == reason
    assert str(error) == f"store unavailable ({url}): {reason}"
    assert error.__cause__ is not None


def check_503(response: Any, reason: str) -> None:
    """503 with Retry-After and a JSON message in words, naming no Python exception."""
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body == {"error": f"store unavailable: {reason}"}
    assert not re.search(r"[A-Z]\w*(Error|Exception)|sqlite3|Traceback", body["error"])


# -- a full disk ------------------------------------------------------------------------------
def test_enqueue_on_a_full_disk_raises_store_unavailable_and_works_once_freed(
        disk: Disk) -> None:
    app = register(Conveyor(url=disk.url))  # a producer with the job's code
    accepted = [app.enqueue("add", n, 1).id for n in range(3)]
    app.close()  # no connection left: the next open meets the full disk
    disk.fill()
    broker = app.broker
    for _ in range(2):  # a failed open leaves nothing half-open: the next call tries again
        with pytest.raises(StoreUnavailable) as blocking:
            app.enqueue("add", 1, 2)
        check_unavailable(blocking.value, disk.url, "the disk is full")
        assert isinstance(blocking.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable):
            app.run_sync(app.enqueue_async("add", 1, 2))
    assert broker.is_transient(blocking.value)
    assert 0 < broker.last_trouble <= time.monotonic()

    disk.free()
    late = app.enqueue("add", 2, 2).id
    # With the database open, a write the disk has no room for fails the same way.
    disk.fill()
    with pytest.raises(StoreUnavailable) as open_full:
        app.enqueue("add", "x" * 200_000, 0)
    check_unavailable(open_full.value, disk.url, "the disk is full")
    assert isinstance(open_full.value.__cause__, sqlite3.OperationalError)

    async def together() -> list[Any]:
        calls = [app.enqueue_async("add", "y" * 50_000, n) for n in range(5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(e, StoreUnavailable) for e in app.run_sync(together()))
    disk.free()
    jobs = app.run_sync(app.broker.list_jobs())
    assert sorted(j.id for j in jobs) == sorted([*accepted, late])
    app.close()


def test_http_enqueue_on_a_full_disk_answers_503(disk: Disk, tmp_path: Path) -> None:
    app = register(Conveyor(url=disk.url))
    accepted = app.enqueue("add", 1, 1).id
    app.close()
    disk.fill()
    root = tmp_path / "serve"
    root.mkdir()
    # serve starts on the full disk (its start-up sweep waits for a later one)
    server = Server(root, "--url", disk.url, "--no-worker").start(healthy=False)
    try:
        check_503(server.client.post("/jobs/add", json={"args": [1, 2]}), "the disk is full")
        disk.free()
        response = server.client.post("/jobs/add", json={"args": [2, 3]})
        assert response.status_code == 202, response.text
        stored = response.json()["id"]
        disk.fill()  # now with the database open: the write itself finds no room
        big = server.client.post("/jobs/boom", json={"args": ["x" * 200_000]})
        check_503(big, "the disk is full")
        disk.free()
        for job_id in (accepted, stored):
            assert server.client.get(f"/jobs/{job_id}").json()["state"] == "queued"
        assert len(server.job_ids()) == 2
    finally:
        disk.free()
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def test_worker_started_on_a_full_disk_waits_then_works(disk: Disk, tmp_path: Path) -> None:
    app = register(Conveyor(url=disk.url))
    accepted = [app.enqueue("add", n, 1).id for n in range(5)]
    app.close()
    disk.fill()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "--log-level", "WARNING", "worker",
             "clijobs:app", "--url", disk.url, "--grace", "5"],
            cwd=tmp_path, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    reader: Conveyor | None = None
    try:
        wait_until(lambda: "the disk is full" in log.read_text(), timeout=30,
                   what="the worker to report the full disk")
        time.sleep(1.5)  # a few more tries: it keeps waiting, it does not exit
        assert proc.poll() is None, log.read_text()
        assert "cannot reach the store" in log.read_text()
        disk.free()
        reader = Conveyor(url=disk.url)

        def all_done() -> bool:
            assert reader is not None
            records = [reader.run_sync(reader.broker.get(i)) for i in accepted]
            return all(r is not None and r.state is JobState.SUCCEEDED for r in records)

        wait_until(all_done, timeout=60, what=f"the accepted jobs to run:\n{log.read_text()}")
        results = [reader.run_sync(reader.broker.get(i)) for i in accepted]
        assert [r.result for r in results if r is not None] == [n + 1 for n in range(5)]
    finally:
        disk.free()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        if reader is not None:
            reader.close()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# -- a locked database ------------------------------------------------------------------------
def test_a_locked_database_reaches_the_caller_as_store_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    url = f"sqlite:///{db}?busy_timeout=100"
    app = register(Conveyor(url=url))
    accepted = app.enqueue("add", 1, 1).id
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as blocking:
            app.enqueue("add", 1, 2)
        assert time.monotonic() - began < 5
        check_unavailable(blocking.value, url, "the database is locked")
        assert isinstance(blocking.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable, match="locked"):
            app.run_sync(app.enqueue_async("add", 1, 2))
        assert app.broker.is_transient(blocking.value)
        # the CLI: one line on stderr, exit 1
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "enqueue", "add", "--args", "[1, 2]",
             "--app", "clijobs:app", "--url", url], capture_output=True, text=True,
            cwd=tmp_path, env=cli_env(),
            timeout=60, check=False)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.strip() == f"error: store unavailable ({url}): the database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    app.enqueue("add", 2, 2)
    assert app.run_sync(app.broker.get(accepted)) is not None
    app.close()


def test_a_lock_wait_that_fails_after_the_store_answered_again_is_no_new_outage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A call that waited out a lock and failed carries when it began: noted after another
    call found the store usable again, it is the old outage's, not a new one (one warning
    and one recovery line per outage); the warning names the driver's error once."""
    caplog.set_level(logging.INFO, logger="conveyor.store")
    db = tmp_path / "locked.db"
    app = register(Conveyor(url=f"sqlite:///{db}?busy_timeout=300"))
    app.enqueue("add", 1, 1)
    outage = outage_for(app.broker)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable) as failed:
            app.enqueue("add", 1, 2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert failed.value.sent is not None and failed.value.sent <= time.monotonic()
    outage.note(failed.value)  # the outage begins: one warning
    app.enqueue("add", 2, 2)
    outage.recovered()  # a call went through: one recovery line
    outage.note(failed.value)  # the same failed call, noted late
    lines = [r.getMessage() for r in caplog.records if r.name == "conveyor.store"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"cannot reach the store {outage.name}: "), lines
    assert lines[1].startswith(f"store {outage.name} is reachable again "), lines
    assert lines[0].endswith("the database is locked (database is locked)"), lines[0]
    app.close()


def test_configuration_errors_stay_non_transient(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBroker("sqlite:///x.db?busy_timeout=soon")
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'c.db'}")
    assert not broker.is_transient(ConfigurationError("could not switch to WAL"))
    assert not broker.is_transient(sqlite3.OperationalError("no such table: x"))
    assert not broker.is_transient(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert broker.is_transient(sqlite3.OperationalError("database is locked"))


# -- an unreachable Redis ---------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_redis_reaches_the_caller_as_store_unavailable(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    url = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    shown = url.replace(f":{PASSWORD}@", "***@")
    app = Conveyor(url=url)
    app.broker.retry_for = 0.3
    try:
        with pytest.raises(StoreUnavailable) as blocking:
            app.enqueue("add", 1, 2)
        check_unavailable(blocking.value, shown, "Redis is unreachable")
        assert isinstance(blocking.value.__cause__, redis.ConnectionError)
        assert PASSWORD not in str(blocking.value)
        assert app.broker.is_transient(blocking.value)
        assert app.broker.last_trouble > 0
        with pytest.raises(StoreUnavailable) as reading:
            app.run_sync(app.broker.get("06H0HQQS1DPDNNKJ7KG6WTC19R"))
        check_unavailable(reading.value, shown, "Redis is unreachable")
        with pytest.raises(StoreUnavailable):
            app.run_sync(app.enqueue_async("add", 1, 2))
    finally:
        app.close()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "enqueue", "add", "--args", "[1, 2]", "--url", url],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == \
        f"error: store unavailable ({shown}): Redis is unreachable"
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_url_at_no_redis_or_past_its_databases_is_a_configuration_error(
        server: Any, tmp_path: Path) -> None:
    """Another service on the port (an HTTP server) and a database number past the server's
    ``databases``: a ConfigurationError at once naming the store, from the blocking and the
    async enqueue alike, never redis-py's own exception; a worker exits with one line."""
    pytest.importorskip("redis")
    from redis_server import not_redis

    with not_redis() as port:
        cases = [(f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
                  "does not answer as a Redis server does"),
                 (server.url.rsplit("/", 1)[0] + "/99", "DB index is out of range")]
        for url, expected in cases:
            app = Conveyor(url=url, store_timeout=5.0)
            register(app)
            try:
                for blocking in (True, False):
                    with pytest.raises(ConfigurationError, match=expected) as refused:
                        if blocking:
                            app.enqueue("add", 1, 2)
                        else:
                            app.run_sync(app.enqueue_async("add", 1, 2))
                    assert app.broker.last_trouble == 0  # never taken for trouble to retry
                    assert PASSWORD not in str(refused.value)
                    assert not app.broker.is_transient(refused.value.__cause__)
            finally:
                app.close()
            done = subprocess.run(
                [sys.executable, "-m", "conveyor", "worker", "clijobs:app", "--url", url],
                capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60,
                check=False)
            assert done.returncode == 1, (done.stdout, done.stderr)
            assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_redis_url_to_a_tls_port_says_so_when_it_gives_up(tmp_path: Path) -> None:
    """A ``redis://`` URL naming a port that wants TLS (a real ``redis-server`` with a TLS
    port only): the server takes each connection and closes it unanswered, which is trouble
    that may pass (a Redis going down closes connections too), so calls retry through it;
    when they give up, the message says what the closes may mean, from the blocking and the
    async enqueue and the CLI alike."""
    pytest.importorskip("redis")
    from redis_server import tls_server

    hint = "the server closes connections unanswered (a port that wants TLS needs a " \
           "rediss:// URL)"
    with tls_server(tmp_path) as (tls, _):
        url = f"redis://:{PASSWORD}@127.0.0.1:{tls.port}/0"
        shown = f"redis://***@127.0.0.1:{tls.port}/0"
        app = register(Conveyor(url=url, store_timeout=0.5))
        try:
            for blocking in (True, False):
                with pytest.raises(StoreUnavailable) as gave_up:
                    if blocking:
                        app.enqueue("add", 1, 2)
                    else:
                        app.run_sync(app.enqueue_async("add", 1, 2))
                assert str(gave_up.value) == \
                    f"store unavailable ({shown}): Redis is unreachable: {hint}"
                assert app.broker.last_trouble > 0  # retried, as trouble that may pass
        finally:
            app.close()
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "enqueue", "add", "--args", "[1, 2]", "--url",
             url],
            capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60,
            check=False)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == \
            f"error: store unavailable ({shown}): Redis is unreachable: {hint}"
        assert PASSWORD not in done.stderr + done.stdout


# -- close() ----------------------------------------------------------------------------------
def db_descriptors(db: Path) -> list[str]:
    """This process's open files that are the database, its WAL or its shared memory."""
    names = {str(db), f"{db}-wal", f"{db}-shm"}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target in names:
            found.append(target)
    return found


def test_close_leaves_no_descriptor_of_the_database(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to count open files")
    db = tmp_path / "c.db"
    assert db_descriptors(db) == []
    app = register(Conveyor(url=f"sqlite:///{db}"))
    job_id = app.enqueue("add", 1, 2).id
    # readers on several threads: the app's own loop, and loops of threads that then end
    assert app.run_sync(app.broker.get(job_id)) is not None

    def read() -> None:
        asyncio.run(app.broker.counts())

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(db_descriptors(db)) >= 4
    app.close()
    assert db_descriptors(db) == []
    # a later use opens again, and a second close closes again
    record = app.run_sync(app.broker.get(job_id))
    assert record is not None and record.state is JobState.QUEUED
    app.close()
    assert db_descriptors(db) == []

    broker = SQLiteBroker(f"sqlite:///{db}")

    async def use() -> None:
        await broker.open()
        await broker.counts()
        await asyncio.gather(*(broker.get(job_id) for _ in range(8)))

    asyncio.run(use())
    assert db_descriptors(db)
    asyncio.run(broker.close())
    assert db_descriptors(db) == []


def test_refused_redis_credentials_are_a_configuration_error(tmp_path: Path) -> None:
    """Waiting does not fix a wrong password: the caller hears at once, and never the
    password (redis-py reports it as a connection error, which would be retried)."""
    import redis as redis_client

    from redis_server import RedisServer

    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    try:
        redis_client.Redis(port=server.port).config_set("requirepass", "right-one")
        app = Conveyor(url=f"redis://:not-this-one@127.0.0.1:{server.port}/0")
        try:
            began = time.monotonic()
            with pytest.raises(ConfigurationError, match="refused the credentials") as raised:
                app.enqueue("anything")
            assert time.monotonic() - began < app.broker.retry_for / 2
            assert "not-this-one" not in str(raised.value)
            assert not app.broker.is_transient(raised.value.__cause__ or raised.value)
        finally:
            app.close()
    finally:
        server.stop()


def test_closing_the_store_under_a_polling_worker_thread_is_safe(
        tmp_path: Path, start_worker: Any) -> None:
    """Closes from one thread while a worker thread polls its reader connection: each waits
    for the statement running on it (closing a connection under a statement can crash the
    process), and the worker opens the store again and goes on."""
    app = register(Conveyor(url=f"sqlite:///{tmp_path / 'poll.db'}", lease=2.0))
    try:
        app.enqueue("add", 0, 0)  # the store exists
        start_worker(app, max_workers=1)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:  # the idle worker polls every 2 ms meanwhile
            app.broker.close_blocking()  # type: ignore[attr-defined]
            time.sleep(0.0005)
        assert app.enqueue("add", 2, 3).result(timeout=10) == 5
    finally:
        app.close()


def test_an_answer_to_a_call_sent_before_an_outage_does_not_end_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """A read in flight when a write meets a locked SQLite database still succeeds (its
    readers are not stopped): its answer does not end the outage the write began; the
    answer of a call sent after the outage began does."""
    caplog.set_level(logging.INFO, logger="conveyor.store")
    outage = Outage("sqlite:///x.db")
    read_sent = time.monotonic()
    outage.trouble("the database is locked")
    outage.recovered(read_sent)  # the read in flight answers
    assert outage.down and outage.reason == "the database is locked"
    outage.recovered(time.monotonic())  # a call sent since answers
    assert not outage.down
    lines = [r.getMessage() for r in caplog.records if r.name == "conveyor.store"]
    assert [line.split(" ")[0] for line in lines] == ["cannot", "store"], lines
    assert "is reachable again" in lines[1]
