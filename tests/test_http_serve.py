"""``conveyor serve`` as a process: refusing to listen openly without a token, graceful
shutdown of the server and its worker, serving without a worker; and ``create_app`` mounted
inside another Starlette application."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from conveyor import Conveyor
from conveyor.containers import open_target
from conveyor.http import create_app
from http_server import Server, server_env
from polling import wait_until


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "serve", *args],
                          capture_output=True, text=True, timeout=30, env=env or server_env())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_non_loopback_needs_a_token(host: str, tmp_path: Path) -> None:
    result = serve("--host", host, "--port", "1", "--url", f"sqlite:///{tmp_path / 'db'}")
    assert result.returncode == 2, result
    assert "without a token" in result.stderr and "--insecure" in result.stderr
    assert not (tmp_path / "db").exists()


def test_token_or_insecure_lift_the_refusal(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: past the check, binding fails.
    url = f"sqlite:///{tmp_path / 'db'}"
    for extra, env in ((["--insecure"], None), ([], {**server_env(), "CONVEYOR_TOKEN": "t"})):
        result = serve("--host", "192.0.2.1", "--port", "8000", "--url", url, *extra, env=env)
        assert result.returncode == 1, result
        assert "cannot listen on 192.0.2.1:8000" in result.stderr


def test_sigterm_lets_running_jobs_finish(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    began = tmp_path / "began"
    job_id = server.client.post("/jobs/nap", json={"args": [1.0],
                                                   "kwargs": {"marker": str(began)}}).json()["id"]
    # begun, not only claimed: a job claimed as the stop comes goes back to its queue
    wait_until(began.exists, timeout=20, what="the job to begin")
    assert server.stop() == 0, server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=1)
    app = Conveyor(url=f"sqlite:///{server.db}")
    try:
        info = app.handle(job_id).info()
        assert info.state == "succeeded" and info.result == 1.0
    finally:
        app.close()


def test_serve_keeps_its_startup_heap_out_of_the_collectors_way(tmp_path: Path) -> None:
    """What loading made (modules, the app) is frozen: a full collection no longer walks it
    while requests wait (the p99 of POST /jobs/NAME fell by half)."""
    server = Server(tmp_path).start()
    try:
        job_id = server.client.post("/jobs/frozen_objects").json()["id"]
        done = server.wait_job(job_id)
        assert done["state"] == "succeeded" and done["result"] > 10_000, done
    finally:
        assert server.stop() == 0, server.output()


def test_no_worker_and_sigint(tmp_path: Path) -> None:
    server = Server(tmp_path, "--no-worker", token=None, app=None).start()
    response = server.client.post("/jobs/analyze", content=b"abc")
    assert response.status_code == 202
    assert server.client.get(response.headers["location"]).json()["state"] == "queued"
    assert server.staged() == [response.json()["id"]]
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0, server.output()
    server.client.close()


def test_mounted_in_another_app(tmp_path: Path) -> None:
    app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}", staging_dir=str(tmp_path / "staging"))
    (tmp_path / "containers" / "web").mkdir(parents=True)
    api = create_app(app, token="tok", max_upload_bytes=1000,
                     target=open_target(f"dir:{tmp_path / 'containers'}"))
    outer = Starlette(routes=[Mount("/conveyor", app=api)])
    made: list[str] = []

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/conveyor/healthz")).status_code == 200
            assert (await client.get("/conveyor/jobs")).status_code == 401
            auth = {"Authorization": "Bearer tok"}
            response = await client.post("/conveyor/uploads", content=b"x", headers={
                **auth, "X-Container-Name": "web", "X-File-Path": "/a"})
            assert response.status_code == 202, response.text
            made.append(response.json()["id"])
            location = response.headers["location"]
            assert location == f"/conveyor/jobs/{made[0]}"
            info = (await client.get(location, headers=auth)).json()
            assert info["name"] == "conveyor.push" and info["state"] == "queued"
            too_big = await client.post("/conveyor/uploads", content=b"x" * 1001, headers={
                **auth, "X-Container-Name": "web", "X-File-Path": "/a"})
            assert too_big.status_code == 413
            docs = (await client.get("/conveyor/docs", headers=auth)).text
            assert 'src="/conveyor/docs/static/swagger-ui-bundle.js"' in docs
            assert '"/conveyor/openapi.json"' in docs
            spec = (await client.get("/conveyor/openapi.json", headers=auth)).json()
            assert spec["servers"] == [{"url": "/conveyor"}]
        await app.broker.close()

    asyncio.run(scenario())
    staged = {p.name for p in (tmp_path / "staging").iterdir() if p.is_file()}
    assert staged == set(made)
