"""Admin commands against Redis: a store that is down gets a prompt, one-line answer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env
from redis_server import RedisServer, free_port


def test_admin_command_gives_up_quickly_when_redis_is_down() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "stats", "--url", f"redis://127.0.0.1:{free_port()}/0"],
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "store unavailable" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30, "admin commands must not wait out the worker's retry"


def test_enqueue_and_status_over_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        url = server.url
        enq = subprocess.run(
            [sys.executable, "-m", "conveyor", "enqueue", "anything", "--args", "[1]",
             "--url", url, "--force"],
            env=cli_env(), capture_output=True, text=True, timeout=60,
        )
        assert enq.returncode == 0, enq.stderr
        job_id = enq.stdout.strip()
        status = subprocess.run(
            [sys.executable, "-m", "conveyor", "status", job_id, "--json", "--url", url],
            env=cli_env(), capture_output=True, text=True, timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert '"state": "queued"' in status.stdout
    finally:
        server.stop()
