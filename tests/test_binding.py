"""One argument binding for every executor: ``Upload`` and ``JobContext`` parameters reach the
job the same way on the event loop, in a thread and in a child process, on SQLite and Redis.

Through a real ``conveyor serve bindjobs:app`` (real uploads over HTTP, real worker, real
child processes), plus the binding itself on hand-made records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import JobContext, Upload
from conveyor.functions import CallBinding
from conveyor.job import JobRecord, JobState
from http_server import Server
from polling import wait_until
from redis_server import RedisServer


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``conveyor serve bindjobs:app`` on the store named by the parameter."""
    root = tmp_path_factory.mktemp(f"binding-{request.param}")
    redis: RedisServer | None = None
    options: list[str] = []
    if request.param == "redis":
        (root / "redis").mkdir()
        redis = RedisServer(root / "redis").start()
        options = ["--url", redis.url]  # the last --url wins over the server's SQLite one
    srv = Server(root, *options, app="bindjobs:app")
    try:
        srv.start()
        yield srv
        assert srv.stop() == 0, srv.output()
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        if redis is not None:
            redis.stop()


def run_upload(srv: Server, name: str, data: bytes, **params: str) -> tuple[str, dict[str, Any]]:
    response = srv.client.post(f"/jobs/{name}", params=params, content=data, headers={
        "X-Host-Path": "/home/me/report.csv", "Content-Type": "text/csv"})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    info = srv.wait_job(job_id)
    assert info["state"] == "succeeded", (info, srv.output())
    return job_id, info


def run_call(srv: Server, name: str, args: list[Any],
             kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    response = srv.client.post(f"/jobs/{name}", json={"args": args, "kwargs": kwargs or {}})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    info = srv.wait_job(job_id)
    assert info["state"] == "succeeded", (info, srv.output())
    return job_id, info


@pytest.mark.parametrize("name", ["upload_process", "upload_thread", "upload_async"])
def test_every_executor_gets_an_upload(served: Server, name: str) -> None:
    data = b"a,b\n1,2\n" + os.urandom(1000)
    job_id, info = run_upload(served, name, data, label="q1")
    result = info["result"]
    assert result["type"] == "Upload"
    assert result["path"] == str(served.staging / job_id)
    assert result["filename"] == "report.csv"
    assert result["size"] == len(data)
    assert result["content_type"] == "text/csv"
    assert result["data"] == data.decode("latin-1")
    assert result["label"] == "q1"
    assert served.proc is not None
    if name == "upload_process":
        assert result["pid"] != served.proc.pid  # really ran in a child process
    else:
        assert result["pid"] == served.proc.pid
    wait_until(lambda: job_id not in served.staged(), timeout=10, what="the staged file to go")


def test_process_job_gets_an_upload_and_its_context(served: Server) -> None:
    data = b"x" * 4096
    job_id, info = run_upload(served, "upload_process_ctx", data, label="both")
    result = info["result"]
    assert result["type"] == "Upload" and result["size"] == len(data)
    assert result["path"] == str(served.staging / job_id)
    assert result["data"] == data.decode()
    assert result["ctx_id"] == job_id and result["ctx_name"] == "upload_process_ctx"
    assert info["progress"] == 0.5


@pytest.mark.parametrize("name", ["ctx_async", "ctx_thread", "ctx_process"])
def test_every_executor_passes_the_context(served: Server, name: str) -> None:
    for args, kwargs in (([2, 3], {}), ([2], {"y": 3}), ([], {"x": 2, "y": 3})):
        job_id, info = run_call(served, name, args, kwargs)
        result = info["result"]
        assert result["type"] == "JobContext"
        assert (result["id"], result["name"], result["attempt"]) == (job_id, name, 1)
        assert (result["x"], result["y"]) == (2, 3)


@pytest.mark.parametrize("name", ["ctx_middle", "ctx_keyword"])
def test_context_between_or_after_the_arguments(served: Server, name: str) -> None:
    for args, kwargs in (([2, 3], {}), ([2], {"y": 3}), ([], {"x": 2, "y": 3})):
        if name == "ctx_keyword" and len(args) > 1:
            continue  # y is keyword-only there
        job_id, info = run_call(served, name, args, kwargs)
        assert info["result"]["type"] == "JobContext"
        assert info["result"]["id"] == job_id
        assert (info["result"]["x"], info["result"]["y"]) == (2, 3)


# -- the binding on hand-made records ------------------------------------------------------------
def record(*args: Any, **kwargs: Any) -> JobRecord:
    now = time.time()
    return JobRecord(id="01JBINDINGTEST0000000000AA", name="t", queue="default",
                     state=JobState.RUNNING, args=list(args), kwargs=kwargs, created_at=now,
                     run_at=now, attempts=1)


def positional(n: int, upload: Upload, ctx: JobContext, tail: str = "") -> None:
    """A job whose Upload may come positionally, with the context after it."""


def test_binding_rebuilds_a_positional_or_keyword_upload(tmp_path: Path) -> None:
    binding = CallBinding.of(positional)
    assert binding.context_parameter == "ctx"
    staged = tmp_path / "file"
    stored = Upload.describe(7, "a.txt", "text/plain")
    rec = record(1, stored, "t")
    ctx = JobContext(rec)
    args, kwargs = binding.arguments(rec, ctx, staged)
    assert args[0] == 1 and args[2] is ctx and args[3] == "t" and kwargs == {}
    upload = args[1]
    assert isinstance(upload, Upload)
    assert (upload.path, upload.size, upload.filename) == (staged, 7, "a.txt")
    assert rec.args[1] == stored  # the record itself is left as stored

    rec = record(1, upload=stored)
    args, kwargs = binding.arguments(rec, JobContext(rec), staged)
    assert args == [1] and isinstance(kwargs["upload"], Upload)
    assert kwargs["upload"].path == staged and isinstance(kwargs["ctx"], JobContext)
    assert rec.kwargs["upload"] == stored


def test_binding_without_a_staged_file_leaves_the_arguments() -> None:
    binding = CallBinding.of(positional)
    stored = Upload.describe(7, "a.txt", None)
    rec = record(1, stored)
    args, kwargs = binding.arguments(rec, None, None)
    assert args == [1, stored] and kwargs == {}
