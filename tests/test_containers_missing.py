"""Uploads to a container that does not exist: refused at once, not accepted to die later.

* ``conveyor serve --containers dir:PATH`` with no directory PATH exits 2 at start, in one line
  naming the path; with the default ``dir:./containers`` missing it starts, warns, and
  ``POST /uploads`` answers 404 until ``./containers/NAME`` exists.
* ``POST /uploads`` answers 404 JSON naming the directory it looked in when the container is
  missing: no file staged, no job stored (real ``conveyor serve`` processes, SQLite and Redis).
* A push job whose container is gone by the time it runs (or that was enqueued without the
  HTTP API) is dead after one attempt, its error naming the container and the directory.
* Incus: a 404 from ``GET /1.0/instances/NAME`` refuses the upload; a daemon that cannot be
  asked lets it through (the push decides). The daemon is :class:`fake_incus.FakeIncus`, a fake
  of Incus's API on a real unix socket, since no Incus daemon can run here.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import WorkerThread
from conveyor import Conveyor, JobState
from conveyor.builtin import PUSH_JOB, install
from conveyor.containers import ContainerNotFound, DirectoryTarget, IncusTarget
from conveyor.http import create_app
from conveyor.ids import new_id
from fake_incus import FakeIncus
from http_server import Server, free_port, server_env
from polling import wait_until
from redis_server import RedisServer


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each kind: a SQLite file, or a private redis-server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    redis: RedisServer = request.getfixturevalue("server")
    return redis.url


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "serve", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30, env=server_env())


# -- at start ---------------------------------------------------------------------------------
def test_a_missing_root_is_refused_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    result = serve("--containers", f"dir:{missing}", "--port", str(free_port()),
                   "--url", f"sqlite:///{tmp_path / 'db'}", cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"no directory {missing}" in lines[0] and f"--containers dir:{missing}" in lines[0]
    assert not missing.exists()  # refused, not created


def test_a_root_that_is_a_file_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    result = serve("--containers", "dir:afile", "--port", str(free_port()),
                   "--url", f"sqlite:///{tmp_path / 'db'}", cwd=tmp_path)
    assert result.returncode == 2, result
    assert f"{tmp_path / 'afile'} is not a directory" in result.stderr


class DefaultServe:
    """``conveyor serve`` without ``--containers``, run in ``root`` (so ``dir:./containers``)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / "serve.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "serve", "--port", str(self.port),
                 "--url", url, "--staging", str(root / "staging"), "--grace", "5"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, env=server_env())
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=20)
        wait_until(self._ready, timeout=20, what="serve to answer")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.output()}")
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def upload(client: httpx.Client, container: str, data: bytes = b"hello\n") -> httpx.Response:
    return client.post("/uploads", content=data, headers={
        "X-Container-Name": container, "X-File-Path": "/etc/app/config.yaml"})


def test_default_root_missing_warns_then_uploads_work_once_it_exists(
    tmp_path: Path, store_url: str
) -> None:
    server = DefaultServe(tmp_path, store_url)
    try:
        root = tmp_path / "containers"
        assert f"no directory {root}" in server.output()  # the warning at start
        refused = upload(server.client, "web")
        assert refused.status_code == 404, refused.text
        assert refused.json() == {
            "error": f"container 'web' does not exist: no directory {root / 'web'}"}
        (root / "web").mkdir(parents=True)
        accepted = upload(server.client, "web")
        assert accepted.status_code == 202, accepted.text

        def final() -> dict[str, str] | None:
            info: dict[str, str] = server.client.get(f"/jobs/{accepted.json()['id']}").json()
            return info if info["state"] in ("succeeded", "dead") else None

        assert wait_until(final, timeout=20, what="the push")["state"] == "succeeded"
        assert (root / "web/etc/app/config.yaml").read_bytes() == b"hello\n"
    finally:
        assert server.stop() == 0, server.output()


# -- at intake --------------------------------------------------------------------------------
def test_upload_to_a_missing_container_is_refused_at_intake(
    tmp_path: Path, store_url: str
) -> None:
    server = Server(tmp_path, "--url", store_url).start()
    try:
        response = upload(server.client, "nosuch", b"x" * 100_000)
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "container 'nosuch' does not exist: no directory "
                                            f"{server.containers / 'nosuch'}"}
        assert server.job_ids() == []
        assert server.staged() == []
        # a container that exists is still accepted, on the same connection
        (server.containers / "web").mkdir()
        ok = upload(server.client, "web")
        assert ok.status_code == 202, ok.text
        assert server.wait_job(ok.json()["id"])["state"] == "succeeded"
    finally:
        assert server.stop() == 0, server.output()


# -- in the push job --------------------------------------------------------------------------
def test_push_to_a_missing_container_is_dead_at_once_naming_the_directory(
    tmp_path: Path, store_url: str, start_worker: Callable[..., WorkerThread]
) -> None:
    root = tmp_path / "containers"
    root.mkdir()
    app = Conveyor(url=store_url, lease=2.0, staging_dir=str(tmp_path / "staging"))
    try:
        install(app, DirectoryTarget(root), push_backoff=0.05)
        job_id = new_id()

        async def body() -> AsyncIterator[bytes]:
            yield b"data"

        app.run_sync(app.staging.receive(body(), job_id, max_bytes=1 << 20))
        handle = app.enqueue_call(PUSH_JOB, ["gone", "/etc/x", None], {}, job_id=job_id)
        start_worker(app)
        info = wait_until(lambda: (r := handle.info()).is_final and r, 20, "the push to end")
        assert info.state is JobState.DEAD
        assert info.attempts == 1  # permanent: no retries
        assert info.error == (f"ContainerNotFound: container 'gone' does not exist: "
                              f"no directory {root / 'gone'}")
    finally:
        app.close()


# -- Incus ------------------------------------------------------------------------------------
@pytest.fixture
def incus(tmp_path: Path) -> Iterator[FakeIncus]:
    fake = FakeIncus(tmp_path / "incus.sock", instances=("web",)).start()
    yield fake
    fake.stop()


def test_incus_missing_instance_is_told_by_the_daemon(incus: FakeIncus, tmp_path: Path) -> None:
    target = IncusTarget(str(incus.socket_path))
    missing = asyncio.run(target.missing("db"))
    assert isinstance(missing, ContainerNotFound)
    assert str(missing) == (f"container 'db' does not exist: no instance of that name in "
                            f"Incus at {incus.socket_path}")
    assert incus.requests[-1].method == "GET"
    assert incus.requests[-1].target == "/1.0/instances/db"
    assert asyncio.run(target.missing("web")) is None
    # a daemon that cannot be asked cannot say no: the push job decides later
    down = IncusTarget(str(tmp_path / "no-such.sock"))
    assert asyncio.run(down.missing("db")) is None


def test_incus_intake_refuses_a_missing_instance(incus: FakeIncus, tmp_path: Path) -> None:
    app = Conveyor(url=f"sqlite:///{tmp_path / 'db'}", staging_dir=str(tmp_path / "staging"))
    api = create_app(app, target=IncusTarget(str(incus.socket_path)))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            headers = {"X-File-Path": "/etc/x"}
            refused = await c.post("/uploads", content=b"x",
                                   headers={**headers, "X-Container-Name": "db"})
            accepted = await c.post("/uploads", content=b"x",
                                    headers={**headers, "X-Container-Name": "web"})
        await app.broker.close()
        return refused, accepted

    try:
        refused, accepted = asyncio.run(scenario())
    finally:
        app.close()
    assert refused.status_code == 404, refused.text
    assert "container 'db' does not exist" in refused.json()["error"]
    assert str(incus.socket_path) in refused.json()["error"]
    assert accepted.status_code == 202, accepted.text
    staged = sorted(p.name for p in (tmp_path / "staging").iterdir() if p.is_file())
    assert staged == [accepted.json()["id"]]


def test_incus_push_to_a_missing_instance_names_the_daemon(incus: FakeIncus) -> None:
    target = IncusTarget(str(incus.socket_path))
    with pytest.raises(ContainerNotFound) as caught:
        asyncio.run(target.push("db", Path(__file__), "/etc/x"))
    assert str(caught.value) == (f"container 'db' does not exist: no instance of that name in "
                                 f"Incus at {incus.socket_path}")


def test_serve_warns_of_a_missing_incus_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-incus.sock"
    server = Server(tmp_path, "--containers", f"incus:{socket_path}").start()
    try:
        assert f"no Incus socket at {socket_path}" in server.output()
        # the daemon cannot be asked, so it cannot say no: the upload is taken, the push waits
        response = upload(server.client, "web")
        assert response.status_code == 202, response.text
    finally:
        assert server.stop() == 0, server.output()
