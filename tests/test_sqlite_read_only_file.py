"""A SQLite file that cannot be written (its permissions, an immutable flag) takes an operator:
it is logged once as an ERROR, not a WARNING; writes fail with ``StoreUnavailable`` ("the
database is read-only") while reads are served; once the file can be written again, the
same process writes without a restart (SQLite keeps a connection opened on such a file
read-only for ever: the store opens a new one).

Real files made unwritable for real: as root (whom permissions do not stop) with the
file system's immutable flag (``chattr +i``), else with ``chmod 0444``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobHandle, StoreUnavailable
from conveyor.functions import JobFunction
from http_server import Server
from polling import wait_until

READ_ONLY = "the database is read-only"


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` cannot be written by this user (nor by root) inside the block."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"root ignores permissions, and chattr +i fails here: {made.stderr}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_enqueue_fails_as_unavailable_and_writes_again_once_the_file_can_be_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'ro.db'}", store_timeout=0.5)

    @app.job()
    def add(a: int, b: int) -> int:
        return a + b

    first = add.enqueue(1, 2)
    app.close()  # (the next use opens the file anew: as read-only, inside the block)
    caplog.set_level(logging.INFO, logger="conveyor.store")
    try:
        with unwritable(tmp_path / "ro.db"):
            for _ in range(3):
                with pytest.raises(StoreUnavailable) as refused:
                    add.enqueue(1, 2)
                assert refused.value.reason == READ_ONLY
            assert first.info().state == "queued"  # reads are served
        # the same app writes once the file can be written (a new connection)
        handle = wait_until(lambda: _enqueued(add), timeout=10,
                            what="an enqueue to succeed once the file can be written")
        assert handle.info().state == "queued"
    finally:
        app.close()
    store_lines = [(r.levelname, r.getMessage()) for r in caplog.records
                   if r.name == "conveyor.store"]
    assert [level for level, _ in store_lines] == ["ERROR", "INFO"], store_lines
    assert READ_ONLY in store_lines[0][1] and "reachable again" in store_lines[1][1]


def _enqueued(add: JobFunction[..., int]) -> JobHandle[int] | None:
    try:
        return add.enqueue(1, 2)
    except StoreUnavailable:
        return None


def test_serve_reads_answers_503_to_writes_and_recovers_once_the_file_can_be_written(
        tmp_path: Path) -> None:
    first = Server(tmp_path).start()
    try:
        done = first.client.post("/jobs/add", json={"args": [2, 3]})
        assert done.status_code == 202, done.text
        first.wait_job(done.json()["id"])
    finally:
        assert first.stop() == 0, first.output()
    first.log.rename(tmp_path / "first.log")
    server = Server(tmp_path)
    with unwritable(server.db):
        server.start(healthy=False)
        try:
            refused = server.client.post("/jobs/add", json={"args": [4, 5]})
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"error": f"store unavailable: {READ_ONLY}"}
            health = server.client.get("/healthz")
            assert health.status_code == 503, health.text
            assert health.json()["error"] == f"store unavailable: {READ_ONLY}"
            listed = server.client.get("/jobs")  # the file reads: reads are served
            assert listed.status_code == 200, listed.text
            assert [j["id"] for j in listed.json()["jobs"]] == [done.json()["id"]]
            shown = server.client.get(f"/jobs/{done.json()['id']}")
            assert shown.status_code == 200 and shown.json()["result"] == 5, shown.text
        except BaseException:
            server.stop()
            raise
    try:
        wait_until(lambda: server.client.get("/healthz").status_code == 200, timeout=20,
                   what=f"/healthz to answer 200 once the file can be written:\n"
                        f"{server.output()}")
        accepted = server.client.post("/jobs/add", json={"args": [4, 5]})
        assert accepted.status_code == 202, accepted.text
        job = server.wait_job(accepted.json()["id"])
        assert job["state"] == "succeeded" and job["result"] == 9, job
    finally:
        assert server.stop() == 0, server.output()
    log = server.output()
    assert log.count(f"ERROR conveyor.store: the store sqlite:///{server.db} refuses this "
                     f"process: {READ_ONLY}") == 1, log
    assert "cannot reach the store" not in log, log
    assert log.count("reachable again") == 1, log
