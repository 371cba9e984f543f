"""Uploads through a real ``conveyor serve``: the file reaches the container, the staged copy
goes away, and a failed or abandoned upload leaves neither a file nor a job."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from http_server import Server, post_uploads_head, server_env
from polling import wait_until

LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("http-uploads"), "--max-upload-bytes", str(LIMIT),
                 "--min-workers", "1", "--max-workers", "1")
    srv.start()
    (srv.containers / "web").mkdir()
    yield srv
    assert srv.stop() == 0, srv.output()


def test_upload_reaches_the_container(server: Server) -> None:
    data = os.urandom(300_000)
    response = server.client.post("/uploads", content=data, headers={
        "X-Container-Name": "web", "X-File-Path": "/srv/../data/./in.bin",
        "X-Host-Path": "/home/me/in.bin"})
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["id"]
    assert response.headers["location"] == f"/jobs/{job_id}" == body["status_url"]
    assert body["message"]
    info = server.wait_job(job_id)
    assert info["state"] == "succeeded", info
    assert info["name"] == "conveyor.push"
    assert info["args"] == ["web", "/data/in.bin", "/home/me/in.bin"]
    assert (server.containers / "web" / "data" / "in.bin").read_bytes() == data
    wait_until(lambda: server.staged() == [], timeout=10, what="the staged file to go")


def test_upload_chunked_unicode_and_empty(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(20):
            yield bytes([i]) * 10_000

    response = server.client.post("/uploads", content=chunks(), headers={
        "X-Container-Name": "web", "X-File-Path": "/chunked.bin"})
    assert response.status_code == 202, response.text
    empty = server.raw(post_uploads_head(path="/empty", length=0))
    assert empty.status_code == 202
    accented = "/données/été.txt".encode().decode("latin-1")  # UTF-8 bytes on the wire
    unicode = server.raw(post_uploads_head(path=accented, length=5), b"hello")
    assert unicode.status_code == 202
    for job_id in (response.json()["id"], empty.json()["id"], unicode.json()["id"]):
        assert server.wait_job(job_id)["state"] == "succeeded"
    web = server.containers / "web"
    assert (web / "chunked.bin").read_bytes() == b"".join(chunks())
    assert (web / "empty").read_bytes() == b""
    assert (web / "données" / "été.txt").read_bytes() == b"hello"
    wait_until(lambda: server.staged() == [], timeout=10, what="the staged files to go")


def test_job_with_an_upload_parameter(server: Server) -> None:
    data = b"a,b\n1,2\n"
    response = server.client.post(
        "/jobs/count", params={"label": "007", "times": "3"}, content=data,
        headers={"X-Host-Path": "C:\\reports\\q1.csv", "Content-Type": "text/csv"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    info = server.wait_job(job_id)
    assert info["state"] == "succeeded", info
    assert info["kwargs"] == {"label": "007", "times": 3, "upload": {
        "size": len(data), "filename": "q1.csv", "content_type": "text/csv"}}
    assert info["result"] == {"size": len(data), "head": "a,b\n1,2\n", "label": "007",
                              "times": 3, "filename": "q1.csv", "content_type": "text/csv",
                              "declared_size": len(data)}
    wait_until(lambda: server.staged() == [], timeout=10, what="the staged file to go")


def test_builtin_analyze(server: Server) -> None:
    data = b"one\ntwo\nthree\n"
    response = server.client.post("/jobs/analyze", content=data)
    assert response.status_code == 202, response.text
    info = server.wait_job(response.json()["id"])
    assert info["state"] == "succeeded", info
    assert info["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["result"]["lines"] == 3


def test_disconnect_mid_upload_leaves_nothing(server: Server) -> None:
    before = server.job_ids()
    head = post_uploads_head(path="/never.bin", length=10 * 1024 * 1024,
                             extra=[f"Authorization: Bearer {server.token}"])
    with server.connect() as sock:
        sock.sendall(head + b"\r\n\r\n" + b"z" * (1024 * 1024))
        wait_until(lambda: server.staged(), timeout=10, what="the upload to start")
        assert server.staged()[0].startswith("incoming/")
    wait_until(lambda: server.staged() == [], timeout=10, what="the partial file to go")
    time.sleep(0.2)
    assert server.job_ids() == before
    assert not (server.containers / "web" / "never.bin").exists()


def test_full_queue_refuses_and_removes_the_staged_file(server: Server) -> None:
    hold = server.client.post("/jobs/hold", json={"delay": 3600})
    assert hold.status_code == 202
    before = server.job_ids()
    response = server.client.post("/jobs/capped_count", content=b"data")
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "full" in response.json()["error"]
    assert server.staged() == []
    assert server.job_ids() == before
    assert server.client.delete(f"/jobs/{hold.json()['id']}").status_code == 200


def test_cancelling_a_waiting_upload_job_removes_its_file(server: Server) -> None:
    # The worker's one slot is taken by a nap, so the upload job stays queued.
    naps = [server.client.post("/jobs/nap", json={"args": [30]}).json()["id"]]
    server.wait_job(naps[0], states=["running"])
    response = server.client.post("/jobs/count", content=b"to be cancelled")
    job_id = response.json()["id"]
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "queued"
    assert server.staged() == [job_id]
    cancelled = server.client.delete(f"/jobs/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert server.staged() == []
    retry = server.client.post(f"/jobs/{job_id}/retry")
    assert retry.status_code == 409 and "gone" in retry.json()["error"]
    for nap in naps:
        assert server.client.delete(f"/jobs/{nap}").status_code == 200
    for nap in naps:
        assert server.wait_job(nap)["state"] == "cancelled"


def test_cancelling_from_the_cli_removes_the_file_too(server: Server) -> None:
    nap = server.client.post("/jobs/nap", json={"args": [30]}).json()["id"]
    server.wait_job(nap, states=["running"])
    job_id = server.client.post("/jobs/count", content=b"cancelled elsewhere").json()["id"]
    assert server.staged() == [job_id]
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "cancel", job_id, "--url", f"sqlite:///{server.db}"],
        env={**server_env(), "CONVEYOR_STAGING": str(server.staging)},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{job_id} cancelled"
    assert server.staged() == []
    assert server.client.delete(f"/jobs/{nap}").status_code == 200
    assert server.wait_job(nap)["state"] == "cancelled"


def _small_files() -> None:
    """In the server process: files stop growing at 2 MiB (EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))


def test_disk_error_removes_the_partial_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = Server(tmp_path_factory.mktemp("http-disk"), "--max-upload-bytes", str(LIMIT),
                    "--no-worker", preexec=_small_files)
    server.start()
    (server.containers / "web").mkdir(exist_ok=True)
    try:
        response = server.client.post("/uploads", content=b"d" * (3 * 1024 * 1024), headers={
            "X-Container-Name": "web", "X-File-Path": "/big.bin"})
        assert response.status_code == 500, response.text
        assert "cannot store the upload" in response.json()["error"]
        assert server.staged() == []
        assert server.job_ids() == []
        small = server.client.post("/uploads", content=b"fits", headers={
            "X-Container-Name": "web", "X-File-Path": "/small.bin"})
        assert small.status_code == 202
        assert server.staged() == [small.json()["id"]]
    finally:
        assert server.stop() == 0, server.output()


def test_query_values_of_text_parameters_stay_text(server: Server) -> None:
    """``label: str`` gets "123" as written; ``times: int`` gets the number."""
    response = server.client.post("/jobs/count", params={"label": "123", "times": "2"},
                                  content=b"x")
    assert response.status_code == 202, response.text
    info = server.wait_job(response.json()["id"])
    assert info["state"] == "succeeded", info
    assert info["kwargs"]["label"] == "123" and info["kwargs"]["times"] == 2
    assert info["result"]["label"] == "123"
