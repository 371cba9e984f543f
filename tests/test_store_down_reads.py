"""Reads of ``conveyor serve`` while its store is down answer 503 with ``Retry-After`` within
a bounded time, as writes do (not 500 after the store's client gives up); and the cap on
distinct queues answers 409 naming the cap, on both stores.

Real ``conveyor serve`` processes over sockets; a private ``redis-server`` that the tests
kill (SIGKILL: connections refused) or freeze (SIGSTOP: a host that does not answer).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor import Conveyor
from http_server import Server, free_port
from polling import wait_until
from redis_server import RedisServer

#: a generous bound on one answer while the store is down (the app's store_timeout is 5 s)
BOUND = 15.0
READS = ("/jobs", "/jobs/{id}", "/queues", "/ui/api/counts", "/jobs?state=queued")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def serve(tmp_path: Path, url: str, app: str = "httpjobs:app") -> Server:
    return Server(tmp_path, "--url", url, "--no-worker", app=app).start()


def timed_reads(server: Server, job_id: str) -> list[tuple[str, httpx.Response, float]]:
    """Each read of READS: its path, answer and seconds taken (printed)."""
    found = []
    for path in READS:
        path = path.format(id=job_id)
        started = time.monotonic()
        response = server.client.get(path, timeout=60)
        took = time.monotonic() - started
        print(f"GET {path}: {response.status_code} in {took:.2f}s")
        found.append((path, response, took))
    return found


def check_unavailable(found: list[tuple[str, httpx.Response, float]]) -> None:
    for path, response, took in found:
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert int(response.headers["retry-after"]) > 0, path
        assert response.json()["error"].startswith("store unavailable: "), response.text
        assert "127.0.0.1" not in response.text  # the reason names no host
        assert took < BOUND, (path, took)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_reads_answer_503_with_retry_after_while_redis_is_down(
        tmp_path: Path, redis: RedisServer, how: str) -> None:
    server = serve(tmp_path, redis.url)
    try:
        accepted = server.client.post("/jobs/add", json={"args": [1, 2]})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert server.client.get(f"/jobs/{job_id}").status_code == 200
        assert redis.process is not None
        if how == "killed":
            redis.kill()
        else:
            os.kill(redis.process.pid, signal.SIGSTOP)
        check_unavailable(timed_reads(server, job_id))
        if how == "frozen":  # back again: reads answer at once, without a restart
            os.kill(redis.process.pid, signal.SIGCONT)
            wait_until(lambda: server.client.get(f"/jobs/{job_id}").status_code == 200,
                       timeout=30, what="reads to answer 200 once Redis answers again")
            assert server.client.get("/queues").status_code == 200
    finally:
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def test_a_new_queue_past_the_cap_answers_409_naming_the_cap(tmp_path: Path, url: str) -> None:
    server = serve(tmp_path, url, app="queuecapjobs:app")
    try:
        for queue in ("a", "b", "c"):
            response = server.client.post("/jobs/add", json={"args": [1], "queue": queue})
            assert response.status_code == 202, response.text
        refused = server.client.post("/jobs/add", json={"args": [1], "queue": "d"})
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]
        assert "'d'" in message and "3 queues" in message and "max_queues" in message, message
        accepted = server.client.post("/jobs/add", json={"args": [2], "queue": "a"})
        assert accepted.status_code == 202, accepted.text  # known queues still accept
        assert set(server.client.get("/queues").json()["queues"]) == {"a", "b", "c"}
    finally:
        assert server.stop() == 0, server.output()


class Uvicorn:
    """``create_app(app)`` under uvicorn on a free port, in a thread of this process."""

    def __init__(self, app: Conveyor) -> None:
        import uvicorn

        from conveyor.http import create_app

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(app), host="127.0.0.1", port=self.port, log_level="warning",
            lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10, what="uvicorn to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)


def test_reads_are_bounded_by_the_apps_store_timeout_not_the_brokers_retries(
        redis: RedisServer) -> None:
    """A worker in the same process makes the broker retry for 30 s (WORKER_RETRY_FOR);
    reads of the API still answer 503 after about the app's store_timeout."""
    from conveyor.worker.supervisor import WORKER_RETRY_FOR

    app = Conveyor(url=redis.url, store_timeout=2.0)
    app.job(_add, name="add")
    app.broker.retry_for = WORKER_RETRY_FOR
    with Uvicorn(app) as server:
        accepted = server.client.post("/jobs/add", json={"args": [1, 2]})
        assert accepted.status_code == 202, accepted.text
        assert server.client.get("/queues").status_code == 200
        redis.kill()
        found = []
        for path in ("/jobs", f"/jobs/{accepted.json()['id']}", "/queues"):
            started = time.monotonic()
            response = server.client.get(path)
            took = time.monotonic() - started
            print(f"GET {path}: {response.status_code} in {took:.2f}s")
            found.append((path, response, took))
        check_unavailable(found)
    app.close()


async def _add(a: int, b: int = 0) -> int:
    return a + b


def test_reads_answer_503_while_sqlite_is_locked(tmp_path: Path) -> None:
    """The SQLite analogue: a database another process holds locked, with a busy timeout
    longer than the bound; reads answer 503 all the same, and 200 once it is free."""
    db = tmp_path / "locked.db"
    url = f"sqlite:///{db}?busy_timeout=60000"
    maker = Conveyor(url=url)
    job = maker.job(_add, name="add")
    job_id = job.enqueue(1, 2).id
    maker.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    server = Server(tmp_path, "--url", url, "--no-worker").start(healthy=False)
    try:
        check_unavailable(timed_reads(server, job_id))
        holder.execute("ROLLBACK")
        holder.close()
        wait_until(lambda: server.client.get(f"/jobs/{job_id}").status_code == 200,
                   timeout=30, what="reads to answer 200 once the lock is gone")
    finally:
        holder.close()
        assert server.stop() == 0, server.output()
