"""``conveyor serve`` with its store down: it listens at once, ``GET /healthz`` answers 503
with the reason until the store answers, the routes that need the store answer 503 JSON
meanwhile, and it serves normally once the store is back, without a restart. A SIGTERM
stops it at once, store or no store.

The store is a real Redis on a port where nothing listens at first, started later, or a
real SQLite file that another connection holds locked.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor import Conveyor
from http_server import TOKEN, Server, server_env
from polling import exit_after_sigterm, wait_until
from redis_server import RedisServer, free_port

pytest.importorskip("redis")


class DownServer(Server):
    """A ``Server`` on a Redis URL, started without waiting for a healthy store."""

    def __init__(self, root: Path, redis_url: str, *options: str,
                 token: str | None = None) -> None:
        super().__init__(root, "--url", redis_url, *options, token=token)

    def launch(self) -> DownServer:
        self.containers.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         env=server_env(), cwd=self.root)
        wait_until(self._answers, timeout=20, what=f"the server to listen:\n{self.output()}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
        try:
            httpx.get(f"{self.url}/healthz", timeout=5)
        except httpx.TransportError:
            return False
        return True

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, within: float) -> int:
        assert self.proc is not None
        return exit_after_sigterm(self.proc, within, self.output)


@pytest.fixture
def redis_later(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server for a free port, not started yet."""
    directory = tmp_path / "redis"
    directory.mkdir()
    srv = RedisServer(directory, port=free_port())
    yield srv
    srv.stop()


def check_down(response: httpx.Response, health: bool = False) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["error"] == "store unavailable: Redis is unreachable"
    if health:
        assert body["status"] == "unavailable"


@pytest.mark.parametrize("worker", [True, False], ids=["with-worker", "no-worker"])
def test_serve_listens_while_redis_is_down_and_serves_once_it_is_up(
        tmp_path: Path, redis_later: RedisServer, worker: bool) -> None:
    server = DownServer(tmp_path, redis_later.url, *([] if worker else ["--no-worker"]))
    server.launch()
    try:
        check_down(server.client.get("/healthz"), health=True)
        check_down(server.client.get("/queues"))
        check_down(server.client.get("/jobs"))
        check_down(server.client.post("/jobs/add", json={"args": [1, 2]}))
        check_down(server.client.get("/schedules"))
        check_down(server.client.post("/schedules/tick/pause"))
        assert server.client.get("/openapi.json").status_code == 200  # needs no store
        # OPTIONS reads nothing of the store: answered as when it is up (no such method)
        assert server.client.options("/jobs").status_code == 405
        assert server.proc is not None and server.proc.poll() is None

        redis_later.start()
        wait_until(lambda: server.client.get("/healthz").status_code == 200, timeout=30,
                   what="/healthz to answer 200 once Redis is up")
        assert server.client.get("/healthz").json() == {"status": "ok"}
        assert server.client.get("/queues").status_code == 200
        accepted = server.client.post("/jobs/add", json={"args": [1, 2]})
        assert accepted.status_code == 202, accepted.text
        if worker:  # the pool waited for the store, and now runs the job
            job = server.wait_job(accepted.json()["id"])
            assert job["state"] == "succeeded" and job["result"] == 3, job

        redis_later.kill()  # down again: 503 again, without a restart
        wait_until(lambda: server.client.get("/healthz").status_code == 503, timeout=30,
                   what="/healthz to answer 503 once Redis is gone")
        assert server.terminate(within=10.0) == 0, server.output()
    finally:
        server.kill_if_running()
    log = server.output()
    assert "retrying in" not in log, log
    assert "Traceback" not in log, log
    # one warning per outage (two outages here), one line each when Redis came back
    assert log.count("cannot reach the store") == 2, log
    assert log.count("reachable again") == 1, log


def test_serve_stops_at_once_on_sigterm_while_redis_is_down(
        tmp_path: Path, redis_later: RedisServer) -> None:
    server = DownServer(tmp_path, redis_later.url).launch()
    try:
        check_down(server.client.get("/healthz"), health=True)
        assert server.terminate(within=5.0) == 0, server.output()
    finally:
        server.kill_if_running()
    assert "Traceback" not in server.output(), server.output()


def test_serve_on_a_locked_sqlite_database_answers_503_until_it_is_free(
        tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    url = f"sqlite:///{db}?busy_timeout=500"
    maker = Conveyor(url=url)
    maker.run_sync(maker.broker.open())
    maker.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    server = DownServer(tmp_path, url)
    try:
        server.launch()

        def unavailable() -> bool:
            response = server.client.get("/healthz")
            return response.status_code == 503 and response.json() == {
                "status": "unavailable", "error": "store unavailable: the database is locked"}

        # the worker meets the lock as it registers; the health check then writes to see
        wait_until(unavailable, timeout=30, what="/healthz to answer 503 (locked)")
        holder.execute("ROLLBACK")
        wait_until(lambda: server.client.get("/healthz").status_code == 200, timeout=30,
                   what="/healthz to answer 200 once the lock is gone")
        accepted = server.client.post("/jobs/add", json={"args": [2, 3]})
        assert accepted.status_code == 202, accepted.text
        job = server.wait_job(accepted.json()["id"])
        assert job["state"] == "succeeded" and job["result"] == 5, job
        assert server.terminate(within=10.0) == 0, server.output()
    finally:
        holder.close()
        server.kill_if_running()
    log = server.output()
    assert log.count("cannot reach the store") == 1, log
    assert log.count("reachable again") == 1, log


def test_the_documentation_a_session_opens_answers_503_while_redis_is_down(
        tmp_path: Path, redis_later: RedisServer) -> None:
    """A dashboard session opens /docs; whether it was logged out is kept in the store, so
    with the store down the answer is a 503 naming it (not a 500, not the page)."""
    redis_later.start()
    server = DownServer(tmp_path, redis_later.url, "--no-worker", token=TOKEN).launch()
    try:
        with httpx.Client(base_url=server.url, timeout=20) as browser:
            assert browser.post("/ui/login", data={"token": TOKEN}).status_code == 303
            assert browser.get("/docs").status_code == 200
            redis_later.kill()
            # the store's "not logged out" is trusted for a moment (FRESH_FOR), then asked
            wait_until(lambda: browser.get("/docs").status_code != 200, timeout=30,
                       what="/docs to ask the store again")
            check_down(browser.get("/docs"))
            check_down(browser.get("/openapi.json"))
            assert browser.get("/jobs").status_code == 401  # the API still wants its token
            redis_later.start()
            wait_until(lambda: browser.get("/docs").status_code == 200, timeout=30,
                       what="/docs to open again once Redis is up")
        assert server.terminate(within=10.0) == 0, server.output()
    finally:
        server.kill_if_running()
    assert "Traceback" not in server.output()
