"""A store that refuses a running process (Redis restarted with fewer databases than the
URL's number): the worker and ``serve`` log it once, wait, and go on when it is mended."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import TESTS, cli_env
from conveyor import Conveyor
from http_server import Server
from polling import wait_until
from redis_server import RedisServer

REFUSAL = "refuses this process: DB index is out of range"


def test_a_refusing_store_is_logged_once_and_waited_out(server: RedisServer,
                                                        tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{server.port}/5"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url", url],
            cwd=TESTS, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    serve = Server(tmp_path, "--url", url, app="rjobs:app", token=None)
    try:
        wait_until(lambda: "queues default" in log.read_text(), what="the worker to start")
        serve.start()
        # the AOF names database 5, which a server of 2 databases would not load: none
        server.extra = ["--databases", "2", "--appendonly", "no"]
        server.restart()
        wait_until(lambda: REFUSAL in log.read_text(), what="the worker to log the refusal")
        health = wait_until(lambda: (r := httpx.get(f"{serve.url}/healthz", timeout=10))
                            .status_code == 503 and r, what="/healthz to answer 503")
        assert health.json()["error"] == "store unavailable: DB index is out of range"
        time.sleep(3)  # claims, heartbeats and recoveries try again every second meanwhile
        for _ in range(3):
            assert httpx.get(f"{serve.url}/healthz", timeout=10).status_code == 503
        text, served = log.read_text(), serve.output()
        assert text.count("refuses this process") == 1, text
        assert served.count("refuses this process") == 1, served
        assert "Traceback" not in text and "Traceback" not in served

        server.extra = []
        server.restart()
        app = Conveyor(url=url)
        try:
            assert app.enqueue("pause", 7, 0.0).result(timeout=30) == 7
        finally:
            app.close()
        wait_until(lambda: httpx.get(f"{serve.url}/healthz", timeout=10).status_code == 200,
                   what="/healthz to answer 200 again")
        assert "is reachable again" in log.read_text()
    finally:
        worker.terminate()
        assert worker.wait(30) == 0, log.read_text()
        assert serve.stop() == 0


def test_serve_refused_at_start_says_so_in_one_line(tmp_path: Path) -> None:
    """At start there is nothing to wait for: the URL is more likely wrong than the store."""
    (tmp_path / "redis").mkdir()
    few = RedisServer(tmp_path / "redis", extra=["--databases", "2"]).start()
    try:
        url = f"redis://127.0.0.1:{few.port}/5"
        for command in (["worker", "rjobs:app"],
                        ["serve", "rjobs:app", "--port", "0", "--containers",
                         f"dir:{tmp_path}"]):
            done = subprocess.run([sys.executable, "-m", "conveyor", *command, "--url", url],
                                  cwd=TESTS, env=cli_env(), capture_output=True, text=True,
                                  timeout=60)
            output = done.stdout + done.stderr
            assert done.returncode == 1, output
            assert output.count("DB index is out of range") == 1, output
            assert "Traceback" not in output
    finally:
        few.stop()


def test_a_refusal_shown_to_clients_does_not_say_where_the_store_is() -> None:
    """The reason /healthz shows names no host, whatever the URL's options."""
    from conveyor.backends.outage import Outage
    from conveyor.errors import ConfigurationError

    url = "redis://10.1.2.3:6390/0"
    for message, reason in [
        (f"{url}: DB index is out of range", "DB index is out of range"),
        (f"Redis refused the credentials of {url}?shard=queue: WRONGPASS no",
         "Redis refused the credentials of the store: WRONGPASS no"),
        (f"{url}?replicas=1 does not answer as a Redis server does",
         "the store does not answer as a Redis server does"),
    ]:
        outage = Outage(url)
        outage.note(ConfigurationError(message))
        assert outage.reason == reason
