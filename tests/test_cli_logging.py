"""``--log-level`` and ``--log-format`` before or after the command, for ``conveyor worker``
(one process and supervised ones) and ``conveyor serve``; ``conveyor --version``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from clijobs import stop
from conftest import cli_env
from conveyor import Conveyor
from polling import wait_until


@pytest.fixture
def client(db_url: str) -> Iterator[Conveyor]:
    from logjobs import register

    app = register(Conveyor(url=db_url, lease=1.0))
    yield app
    app.close()


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *argv], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60, check=False)


def start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "conveyor", *argv], cwd=cwd, env=cli_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def worker_log(client: Conveyor, db_url: str, cwd: Path, before: list[str],
               after: list[str], workers: int = 1) -> str:
    """Run ``conveyor BEFORE worker logjobs:app --url URL AFTER`` until it has run one ``fine``
    job (and ``workers`` workers have registered); return its stderr."""
    job = client.enqueue("fine", 4)
    proc = start(*before, "worker", "logjobs:app", "--url", db_url, "--grace", "5", *after,
                 cwd=cwd)
    try:
        wait_until(lambda: job.info().is_final, timeout=60, what="the job to run")
        wait_until(lambda: len(client.run_sync(client.broker.workers())) >= workers,
                   timeout=60, what="the workers to register")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    return err


def test_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"conveyor {conveyor.__version__}\n"


@pytest.mark.parametrize(
    ("before", "after", "debug", "info"),
    [
        ([], [], False, True),  # INFO by default
        ([], ["--log-level", "debug"], True, True),
        (["--log-level", "DEBUG"], [], True, True),
        (["--log-level", "WARNING"], [], False, False),  # not undone by the command's default
        (["--log-level", "DEBUG"], ["--log-level", "WARNING"], False, False),  # the last wins
    ],
)
def test_log_level_before_or_after_the_command(
    client: Conveyor, db_url: str, tmp_path: Path, before: list[str], after: list[str],
    debug: bool, info: bool,
) -> None:
    err = worker_log(client, db_url, tmp_path, before, after)
    assert (" DEBUG conveyor.worker: " in err) is debug, err
    assert (" INFO conveyor.worker: worker " in err) is info, err


def test_json_format_after_the_command(client: Conveyor, db_url: str, tmp_path: Path) -> None:
    err = worker_log(client, db_url, tmp_path, [], ["--log-format", "json"])
    records = [json.loads(line) for line in err.splitlines()]
    assert [r["level"] for r in records if r["message"].startswith("worker ")] == ["INFO"] * 2


@pytest.mark.parametrize("where", ["before", "after"])
def test_bad_log_options_exit_2(tmp_path: Path, where: str) -> None:
    for option, value, message in [
        ("--log-level", "LOUD", "argument --log-level: invalid log level 'LOUD' (choose from "
         "DEBUG, INFO, WARNING, ERROR, CRITICAL)"),
        ("--log-format", "xml", "argument --log-format: invalid choice: 'xml'"),
    ]:
        argv = ([option, value, "worker", "logjobs:app"] if where == "before"
                else ["worker", "logjobs:app", option, value])
        done = run(*argv, cwd=tmp_path)
        assert done.returncode == 2
        last = done.stderr.splitlines()[-1]
        assert last.startswith("conveyor worker: error: " if where == "after"
                               else "conveyor: error: ")
        assert message in last
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "conveyor.db").exists()


@pytest.mark.parametrize("command", [[], ["worker"], ["serve"], ["top"], ["bench"],
                                     ["status"], ["enqueue"]])
def test_help_shows_the_log_options(tmp_path: Path, command: list[str]) -> None:
    done = run(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--log-level LEVEL" in done.stdout
    assert "--log-format {text,json}" in done.stdout
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in " ".join(done.stdout.split())
    assert ("--version" in done.stdout) is (command == [])


def test_supervised_processes_log_alike(client: Conveyor, db_url: str,
                                        tmp_path: Path) -> None:
    err = worker_log(client, db_url, tmp_path, ["--log-format", "json"],
                     ["--processes", "2", "--log-level", "DEBUG"], workers=2)
    records = [json.loads(line) for line in err.splitlines()]  # the children's lines too
    started = [r for r in records if r["logger"] == "conveyor.supervisor"
               and r["message"].startswith("started worker process")]
    assert len(started) == 2
    workers = {r["message"].split()[1] for r in records
               if r["logger"] == "conveyor.worker" and r["message"].startswith("worker ")
               and " on " in r["message"]}
    assert len(workers) == 2
    assert any(r["level"] == "DEBUG" and r["logger"] == "conveyor.worker" for r in records)
    stopping = [r for r in records if "stopping 2 worker processes" in r["message"]]
    assert len(stopping) == 1


def test_serve_logs_uvicorn_in_json(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    proc = start("serve", "--url", db_url, "--port", "0", "--no-worker", "--access-log",
                 "--log-format", "json", cwd=tmp_path)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "serving http://" in line:
                break
        url = json.loads(lines[-1])["message"].split()[1]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def healthz() -> int:
            try:
                with opener.open(url + "healthz", timeout=10) as reply:
                    return int(reply.status)
            except OSError:  # not listening yet
                return 0

        assert wait_until(healthz, timeout=30, what="the server to answer") == 200
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    records = [json.loads(line) for line in [*lines, *rest.splitlines()]]
    loggers = {r["logger"] for r in records}
    assert {"conveyor.serve", "uvicorn.error", "uvicorn.access"} <= loggers
    (access,) = [r for r in records if r["logger"] == "uvicorn.access"]
    assert "GET /healthz" in access["message"] and access["level"] == "INFO"
    # without a worker there are no running jobs to give time to
    (stopping,) = [r["message"] for r in records if "shutting down" in r["message"]]
    assert stopping == "SIGTERM: shutting down (again to exit at once)", stopping
