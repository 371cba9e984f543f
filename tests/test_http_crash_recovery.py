"""``conveyor serve`` killed with SIGKILL: nothing accepted is lost. An upload answered 202
by a server without a worker is on disk and in the store; a server started again with a
worker on the same store, staging and containers pushes it. A server killed in the middle of
a push leaves a running job whose lease expires; the next server recovers and finishes it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.job import JobRecord
from http_server import Server
from polling import wait_until


def kill(server: Server) -> None:
    """SIGKILL, as the OOM killer or a power cut would: no shutdown at all."""
    assert server.proc is not None
    server.client.close()
    server.proc.send_signal(signal.SIGKILL)
    assert server.proc.wait(10) == -signal.SIGKILL


def record_of(server: Server, job_id: str) -> JobRecord:
    """The job as stored, read with an app of our own (no server running)."""
    app = Conveyor(url=f"sqlite:///{server.db}")
    try:
        return app.handle(job_id).info()
    finally:
        app.close()


@pytest.mark.timeout(90)
def test_upload_accepted_without_worker_survives_sigkill(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    first = Server(tmp_path, "--no-worker").start()
    (first.containers / "web").mkdir()
    response = first.client.post("/uploads", content=data, headers={
        "X-Container-Name": "web", "X-File-Path": "/srv/in.bin"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    kill(first)

    assert first.staged() == [job_id]
    assert (first.staging / job_id).read_bytes() == data
    assert str(record_of(first, job_id).state) == "queued"
    assert not (first.containers / "web" / "srv" / "in.bin").exists()

    second = Server(tmp_path).start()
    try:
        info = second.wait_job(job_id)
        assert info["state"] == "succeeded", info
        assert (second.containers / "web" / "srv" / "in.bin").read_bytes() == data
        wait_until(lambda: second.staged() == [], timeout=10, what="the staged file to go")
    finally:
        assert second.stop() == 0, second.output()


@pytest.mark.timeout(90)
def test_server_killed_during_a_push_recovers(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(100_000)
    mark = tmp_path / "push-started"
    monkeypatch.setenv("SLOW_PUSH_CONTAINERS", f"dir:{tmp_path / 'containers'}")
    monkeypatch.setenv("SLOW_PUSH_MARK", str(mark))
    monkeypatch.setenv("SLOW_PUSH_SECONDS", "30")
    first = Server(tmp_path, app="httpjobs_slowpush:app").start()
    (first.containers / "web").mkdir()
    response = first.client.post("/uploads", content=data, headers={
        "X-Container-Name": "web", "X-File-Path": "/out.bin"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wait_until(mark.exists, timeout=15, what="the push to start")
    assert first.client.get(f"/jobs/{job_id}").json()["state"] == "running"
    kill(first)

    assert first.staged() == [job_id]
    stored = record_of(first, job_id)
    assert str(stored.state) == "running"  # until its lease runs out
    assert not (first.containers / "web" / "out.bin").exists()

    mark.unlink()
    monkeypatch.setenv("SLOW_PUSH_SECONDS", "0.2")
    second = Server(tmp_path, app="httpjobs_slowpush:app").start()
    try:
        # the start-up sweep keeps the file of a job that is not final
        assert second.staged() == [job_id]
        info = second.wait_job(job_id, timeout=30)
        assert info["state"] == "succeeded", info
        assert info["recoveries"] >= 1, info
        assert (second.containers / "web" / "out.bin").read_bytes() == data
        wait_until(lambda: second.staged() == [], timeout=10, what="the staged file to go")
    finally:
        assert second.stop() == 0, second.output()
