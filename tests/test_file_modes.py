"""Private files: a new SQLite database and its -wal and -shm files are the owner's only
(0600), made by ``conveyor enqueue``, ``conveyor worker`` or ``conveyor serve``, whatever the
umask; staged uploads are 0600 in directories that are 0700."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from conftest import cli_env
from conveyor import Conveyor
from http_server import Server
from polling import wait_until

DB_FILES = ("conveyor.db", "conveyor.db-wal", "conveyor.db-shm")


def modes(directory: Path, names: tuple[str, ...] = DB_FILES) -> dict[str, str]:
    return {name: oct(stat.S_IMODE((directory / name).stat().st_mode)) for name in names}


def private(names: tuple[str, ...] = DB_FILES) -> dict[str, str]:
    return dict.fromkeys(names, "0o600")


def test_enqueue_creates_a_private_database(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "enqueue", "add", "--args", "[1, 2]", "--app",
         "clijobs:app", "--url", f"sqlite:///{tmp_path / 'conveyor.db'}"],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=60, umask=0)
    assert done.returncode == 0, done.stderr
    # the last connection to close removes the -wal and -shm (the worker's test sees them)
    left = tuple(name for name in DB_FILES if (tmp_path / name).exists())
    assert "conveyor.db" in left and modes(tmp_path, left) == private(left)


def test_a_worker_creates_a_private_database(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "clijobs:app", "--url",
             f"sqlite:///{tmp_path / 'conveyor.db'}"], stdout=out, stderr=subprocess.STDOUT,
            env=cli_env(), cwd=tmp_path, umask=0)
    try:
        wait_until(lambda: "queues" in log.read_text(), timeout=20,
                   what="the worker's start line")
        assert modes(tmp_path) == private()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


def test_serve_creates_a_private_database_and_private_staging(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--no-worker", preexec=lambda: os.umask(0)).start()
    (srv.containers / "web").mkdir()
    try:
        answer = srv.client.post("/uploads", content=b"secret bytes", headers={
            "X-Container-Name": "web", "X-File-Path": "/data/in.bin"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert modes(tmp_path) == private()
        assert srv.staged() == [job_id]  # no worker: it waits in the staging area
        assert modes(srv.staging, (job_id,)) == private((job_id,))
        assert modes(srv.staging, (".", "incoming")) == {".": "0o700", "incoming": "0o700"}
    finally:
        assert srv.stop() == 0, srv.output()


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    """Only a new file is made private: a database the operator set up is left as it is."""
    db = tmp_path / "conveyor.db"
    db.touch(mode=0o640)
    db.chmod(0o640)
    app = Conveyor(url=f"sqlite:///{db}")
    try:
        app.run_sync(app.broker.open())
    finally:
        app.close()
    assert modes(tmp_path, ("conveyor.db",)) == {"conveyor.db": "0o640"}
