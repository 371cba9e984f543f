"""What ``conveyor worker`` logs about jobs: failed attempts, dead jobs, recoveries and
cancellations, in text and JSON, on SQLite and Redis (real worker subprocesses)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clijobs import stop
from conftest import cli_env
from conveyor import Conveyor
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from polling import wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, db_url: str) -> tuple[str, str]:
    """(URL, namespace) of the test's store: its own SQLite file, or a namespace of its own on
    the shared redis-server."""
    if request.param == "sqlite":
        return db_url, "conveyor"
    from redis_server import shared_redis_url

    return shared_redis_url(), f"logs{new_id().lower()}"


@pytest.fixture
def client(store: tuple[str, str]) -> Iterator[Conveyor]:
    """Enqueues the logjobs jobs and reads the store, in-process."""
    from logjobs import register

    url, namespace = store
    app = register(Conveyor(url=url, namespace=namespace, lease=1.0))
    yield app
    app.close()


def start(store: tuple[str, str], cwd: Path, *options: str, before: tuple[str, ...] = (),
          app: str = "logjobs:app") -> subprocess.Popen[str]:
    """``conveyor [BEFORE] worker APP --url URL --namespace NS OPTIONS``."""
    url, namespace = store
    command = [sys.executable, "-m", "conveyor", *before, "worker", app, "--url", url,
               "--namespace", namespace, "--grace", "5", *options]
    return subprocess.Popen(command, cwd=cwd, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def enqueue(app: Conveyor, name: str, *args: Any) -> str:
    return app.enqueue(name, *args).id


def record(app: Conveyor, job_id: str) -> JobRecord:
    return app.handle(job_id).info()


def wait_final(app: Conveyor, ids: list[str], proc: subprocess.Popen[str]) -> None:
    def done() -> bool:
        assert proc.poll() is None, "the worker exited"
        return all(record(app, i).is_final for i in ids)

    wait_until(done, timeout=60, what="all jobs final")


def lines_of(text: str, job_id: str) -> list[str]:
    return [line for line in text.splitlines() if job_id in line]


def test_failures_retries_and_dead_jobs_in_text(store: tuple[str, str], client: Conveyor,
                                                tmp_path: Path) -> None:
    kaput = enqueue(client, "kaput", "it broke")
    refuse = enqueue(client, "refuse", "no way")
    sluggish = enqueue(client, "sluggish")
    fine = enqueue(client, "fine", 21)
    proc = start(store, tmp_path, "--log-level", "INFO")
    wait_final(client, [kaput, refuse, sluggish, fine], proc)
    code, err = stop(proc)
    assert code == 0, err

    lines = lines_of(err, kaput)
    failed = [line for line in lines if " WARNING " in line]
    assert len(failed) == 2, err
    for n, line in enumerate(failed, 1):
        assert line.endswith(f"job {kaput} (kaput) failed, attempt {n} of 3: "
                             "ValueError: it broke; retrying in 0.2s"), line
    dead = [line for line in lines if " ERROR " in line]
    assert len(dead) == 1, err
    assert dead[0].endswith(f"job {kaput} (kaput) is dead after attempt 3 of 3: retries "
                            "exhausted: ValueError: it broke"), dead[0]
    assert len(lines) == 3, err  # nothing else about it, no traceback at INFO

    (line,) = lines_of(err, refuse)
    assert " ERROR " in line
    assert line.endswith(f"job {refuse} (refuse) is dead after attempt 1 of 4: permanent "
                         "error: PermanentError: no way"), line
    (line,) = lines_of(err, sluggish)
    assert " ERROR " in line
    assert line.endswith(f"job {sluggish} (sluggish) is dead after attempt 1 of 1: timed out, "
                         "retries exhausted: JobTimeout: job 'sluggish' timed out after 0.2s")
    assert lines_of(err, fine) == []  # successes are not logged at INFO
    assert "Traceback" not in err


def test_a_retry_asked_for_and_a_multi_line_error(store: tuple[str, str], client: Conveyor,
                                                  tmp_path: Path) -> None:
    again = enqueue(client, "again_once", str(tmp_path / "asked"))
    forged = enqueue(client, "refuse", "first line\n2026-01-01 ERROR forged: line")
    proc = start(store, tmp_path)
    wait_final(client, [again, forged], proc)
    code, err = stop(proc)
    assert code == 0, err
    (line,) = lines_of(err, again)
    assert " INFO " in line and "asked to run again, attempt 1 of 4" in line, line
    assert "failed" not in line
    (line,) = lines_of(err, forged)  # the error's line break did not make a second line
    assert line.endswith("PermanentError: first line 2026-01-01 ERROR forged: line"), line
    assert not [n for n in err.splitlines() if n.startswith("2026-01-01 ERROR forged")]


def test_traceback_on_a_debug_line_in_text(store: tuple[str, str], client: Conveyor,
                                           tmp_path: Path) -> None:
    refuse = enqueue(client, "refuse", "no way")
    fine = enqueue(client, "fine", 1)
    proc = start(store, tmp_path, "--log-level", "DEBUG")
    wait_final(client, [refuse, fine], proc)
    code, err = stop(proc)
    assert code == 0, err
    lines = err.splitlines()
    (main,) = [n for n, line in enumerate(lines) if " ERROR " in line and refuse in line]
    assert " DEBUG " in lines[main + 1]
    assert f"traceback of job {refuse} (refuse)" in lines[main + 1]
    tail = "\n".join(lines[main + 2:])
    assert tail.startswith("Traceback (most recent call last):"), tail
    assert "PermanentError: no way" in tail
    (success,) = [line for line in lines if fine in line]
    assert " DEBUG " in success and f"job {fine} (fine) succeeded (attempt 1 of 4)" in success


def test_json_records(store: tuple[str, str], client: Conveyor, tmp_path: Path) -> None:
    kaput = enqueue(client, "kaput", "it broke")
    fine = enqueue(client, "fine", 2)
    # the level before the command, the format after it
    proc = start(store, tmp_path, "--log-format", "json", before=("--log-level", "DEBUG"))
    wait_final(client, [kaput, fine], proc)
    code, err = stop(proc)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # every line is one object
    for entry in records:
        assert ISO.match(entry["time"]), entry
        assert {"level", "logger", "message"} <= entry.keys()
    start_line = [r for r in records if r["message"].startswith("worker ")]
    assert start_line and start_line[0]["level"] == "INFO"
    mine = [r for r in records if r.get("job_id") == kaput]
    failed = [r for r in mine if r["level"] == "WARNING"]
    assert [r["attempt"] for r in failed] == [1, 2]
    for entry in failed:
        assert entry["logger"] == "conveyor.worker"
        assert entry["job_name"] == "kaput"
        assert entry["queue"] == "default"
        assert entry["error"] == "ValueError: it broke"
        assert entry["max_attempts"] == 3
        assert re.match(r"^\d{4}-\d\d-\d\dT.*Z$", entry["next_run_at"])
        assert entry["worker_id"]
        assert "retrying in 0.2s" in entry["message"]
        assert "traceback" not in entry
    (dead,) = [r for r in mine if r["level"] == "ERROR"]
    assert dead["reason"] == "retries exhausted"
    assert dead["error"] == "ValueError: it broke"
    assert dead["attempt"] == 3
    assert dead["traceback"].startswith("Traceback (most recent call last):")
    assert "ValueError: it broke" in dead["traceback"]
    assert "\n" not in dead["message"]
    assert not [r for r in mine if r["message"].startswith("traceback of")]  # in the record
    (success,) = [r for r in records if r.get("job_id") == fine]
    assert success["level"] == "DEBUG" and "succeeded" in success["message"]


def kill_mid_job(store: tuple[str, str], client: Conveyor, tmp_path: Path,
                 app: str) -> str:
    """Enqueue ``hang_once``, start a worker of ``app`` and kill it (SIGKILL) once the job
    runs; return the job's id."""
    marker = tmp_path / "started"
    job_id = enqueue(client, "hang_once", str(marker))
    first = start(store, tmp_path, app=app)
    try:
        wait_until(marker.exists, timeout=30, what="the job to start")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    return job_id


def test_recovery_of_a_killed_workers_job(store: tuple[str, str], client: Conveyor,
                                          tmp_path: Path) -> None:
    job_id = kill_mid_job(store, client, tmp_path, "logjobs:app")
    second = start(store, tmp_path, "--log-format", "json")
    try:
        wait_until(lambda: record(client, job_id).state is JobState.SUCCEEDED, timeout=60,
                   what="the job to run again")
    finally:
        code, err = stop(second)
    assert code == 0, err
    assert record(client, job_id).recoveries == 1
    records = [json.loads(line) for line in err.splitlines()]
    (line,) = [r for r in records if r.get("reason", "").startswith("recovered")]
    assert line["level"] == "WARNING"
    assert line["logger"] == "conveyor.worker"
    assert line["job_id"] == job_id and line["queue"] == "default"
    assert line["job_name"] == "hang_once"
    assert line["message"] == (f"job {job_id} (hang_once) in queue default: its worker was "
                               "lost while it ran (lease lapsed): back in the queue, charged a "
                               "recovery (at most 3 times)")
    assert line["reason"] == "recovered: charged"


def test_too_many_recoveries(store: tuple[str, str], client: Conveyor, tmp_path: Path) -> None:
    job_id = kill_mid_job(store, client, tmp_path, "logjobs:fragile")
    second = start(store, tmp_path, app="logjobs:fragile")
    try:
        wait_until(lambda: record(client, job_id).state is JobState.DEAD, timeout=60,
                   what="the job to die")
    finally:
        code, err = stop(second)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "too many recoveries" in line]
    assert " ERROR conveyor.worker: " in line
    assert line.endswith(f"job {job_id} (hang_once) in queue default: its worker was lost "
                         "while it ran (lease lapsed): dead, too many recoveries (its workers "
                         "were lost 1 time)"), line


def test_cancel_of_a_running_job(store: tuple[str, str], client: Conveyor,
                                 tmp_path: Path) -> None:
    marker = tmp_path / "started"
    job_id = enqueue(client, "sleeper", str(marker), 60.0)
    proc = start(store, tmp_path)
    try:
        wait_until(marker.exists, timeout=30, what="the job to start")
        client.handle(job_id).cancel()
        wait_final(client, [job_id], proc)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert record(client, job_id).state is JobState.CANCELLED
    (line,) = lines_of(err, job_id)
    assert " INFO conveyor.worker: " in line
    assert line.endswith(f"job {job_id} (sleeper) cancelled while running (attempt 1)"), line


def test_grace_period_over_in_the_singular(store: tuple[str, str], client: Conveyor,
                                           tmp_path: Path) -> None:
    marker = tmp_path / "started"
    job_id = enqueue(client, "sleeper", str(marker), 60.0)
    proc = start(store, tmp_path, "--grace", "0.5")
    try:
        wait_until(marker.exists, timeout=30, what="the job to start")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "WARNING conveyor.worker: grace period over: requeueing 1 job\n" in err, err
    assert "SIGTERM: finishing running jobs (up to 0.5s; again to exit at once)\n" in err, err
    assert re.search(r"INFO conveyor.worker: waiting up to 0\.\ds for 1 running job\n", err), err
    assert record(client, job_id).state is JobState.QUEUED
    assert lines_of(err, job_id) == []  # a requeue at shutdown is not a failure


def test_waits_and_counts_read_right() -> None:
    from conveyor.logs import duration, one_line, plural

    assert [duration(s) for s in (0.5, 4.0, 42.4, 185, 7800)] == [
        "0.5s", "4.0s", "42s", "3m 05s", "2h 10m"]
    assert [plural(n, "job") for n in (0, 1, 2)] == ["0 jobs", "1 job", "2 jobs"]
    assert plural(1, "worker process", "worker processes") == "1 worker process"
    assert plural(3, "worker process", "worker processes") == "3 worker processes"
    # a job's error cannot break a log line up, nor forge another one
    assert one_line("boom\n2026-01-01 ERROR forged\tline") == "boom 2026-01-01 ERROR forged line"
    assert one_line("plain") == "plain"
