"""Jobs and helpers for tests/test_cli_*.py.

``conveyor worker clijobs:app`` and ``conveyor enqueue --app clijobs:app`` import this module
in a subprocess (``cli_env()`` puts tests/ on its path). The apps take their URL from
``CLIJOBS_URL`` at import, so the tests can tell the APP's own URL from ``CONVEYOR_URL`` and
``--url``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor import Conveyor, PermanentError


def register(app: Conveyor) -> Conveyor:
    """Register the CLI test jobs on ``app`` (the module's apps, or a test's own app)."""

    @app.job
    async def add(a: int, b: int) -> int:
        return a + b

    @app.job(queue="mail")
    async def greet(name: str, *, greeting: str = "hello") -> str:
        return f"{greeting} {name}"

    @app.job(retries=0)
    async def fail(message: str) -> None:
        raise PermanentError(message)

    @app.job
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.job
    async def frozen_objects() -> int:
        """How many objects the worker's process moved out of the collector's reach."""
        return gc.get_freeze_count()

    return app


#: the app the CLI tests name as ``clijobs:app``
app = register(Conveyor(url=os.environ.get("CLIJOBS_URL")))
#: the same jobs with at most two waiting jobs in the default queue
limited = register(Conveyor(url=os.environ.get("CLIJOBS_URL"), max_queued={"default": 2}))
#: not an app: ``conveyor worker clijobs:not_an_app`` must refuse it
not_an_app = {"url": "sqlite:///nowhere.db"}


# -- helpers for the tests (not used by the subprocesses) ---------------------------------------
def publish(url: str, namespace: str = "conveyor") -> None:
    """Publish the clijobs jobs to the store at ``url``, as a worker of ``clijobs:app`` does
    when it starts: ``conveyor enqueue`` without ``--app`` then accepts their names."""
    from conveyor.known import KnownJob

    producer = register(Conveyor(url=url, namespace=namespace))
    try:
        jobs = [KnownJob.of(job_fn) for job_fn in producer.registry.values()]
        producer.run_sync(producer.broker.publish_jobs("clijobs-worker", jobs))
    finally:
        producer.close()


class CLI:
    """Runs ``python -m conveyor`` against one store, in a directory of the test's own."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url = url
        self.cwd = cwd

    def env(self, **extra: str) -> dict[str, str]:
        from conftest import cli_env

        return cli_env(**extra)

    def __call__(self, *argv: str, url: str | None = "", timeout: float = 60,
                 **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``conveyor ARGV --url URL`` (the test's store unless ``url`` is given; ``None``
        for no ``--url``); ``env`` adds environment variables."""
        chosen = self.url if url == "" else url
        command = [sys.executable, "-m", "conveyor", *argv]
        if chosen is not None:
            command += ["--url", chosen]
        return subprocess.run(command, capture_output=True, text=True, cwd=self.cwd,
                              env=self.env(**env), timeout=timeout, check=False)

    def ok(self, *argv: str, **kwargs: Any) -> str:
        """Run and insist on exit 0; return stdout."""
        done = self(*argv, **kwargs)
        assert done.returncode == 0, (argv, done.returncode, done.stdout, done.stderr)
        return done.stdout

    def json(self, *argv: str, **kwargs: Any) -> Any:
        """Run with ``--json`` and insist on exit 0; return the parsed stdout."""
        return json.loads(self.ok(*argv, "--json", **kwargs))

    def enqueue(self, name: str, args: Sequence[Any] = (), *extra: str, **kwargs: Any) -> str:
        """``conveyor enqueue NAME --args JSON [EXTRA]``; return the new id."""
        out = self.ok("enqueue", name, "--args", json.dumps(list(args)), *extra, **kwargs)
        return out.strip()

    def fail(self, *argv: str, code: int, **kwargs: Any) -> str:
        """Run and insist on exit ``code`` with no traceback; return stderr."""
        done = self(*argv, **kwargs)
        assert done.returncode == code, (argv, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done.stderr

    def start_worker(self, *options: str, app: str = "clijobs:app",
                     **env: str) -> subprocess.Popen[str]:
        """Start ``conveyor worker APP --url URL OPTIONS`` in the background."""
        command = [sys.executable, "-m", "conveyor", "--log-level", "WARNING", "worker", app,
                   "--url", self.url, "--grace", "5", *options]
        return subprocess.Popen(command, cwd=self.cwd, env=self.env(**env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """SIGTERM a worker process; return its exit code and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker did not stop on SIGTERM: {err}") from None
    return proc.returncode, err


