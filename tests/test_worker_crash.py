"""Crashes and shutdowns of real worker processes (``python -m conveyor worker``).

Workers run the jobs of tests/wjobs_crash.py (lease 1 s, max_recoveries 2) on the test's
SQLite file; the test process enqueues and inspects through the same app bound to that file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wjobs_crash
from conftest import TESTS, cli_env
from conveyor import Conveyor, JobRecord, JobState
from polling import pid_alive, wait_until


class Workers:
    """Starts ``conveyor worker`` processes and kills whatever is left at the end."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.extra_pids: list[int] = []

    def start(self, *options: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", "wjobs_crash:app",
                 "--url", self.url, *options],
                cwd=TESTS, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
            )
        self.started.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        for started, path in self.started:
            if started is proc:
                return path.read_text(errors="replace")
        return ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
        """SIGTERM and wait; return the exit code."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit:\n{self.log(proc)}") from None

    def cleanup(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in self.extra_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def capp(db_url: str) -> Iterator[Conveyor]:
    """The app of tests/wjobs_crash.py, bound to this test's database."""
    application = wjobs_crash.app
    application.use_url(db_url)
    yield application
    application.close()


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(db_url, tmp_path)
    yield started
    started.cleanup()


def info(app: Conveyor, job_id: str) -> JobRecord:
    return app.handle(job_id).info()


def counts(app: Conveyor) -> dict[str, int]:
    by_queue = app.run_sync(app.broker.counts())
    return by_queue.get("default", {str(s): 0 for s in JobState})


def live_workers(app: Conveyor) -> list[Any]:
    return app.run_sync(app.broker.workers())


# -- (a) a killed worker's jobs are recovered ------------------------------------------------------
def test_running_job_survives_kill_9_of_its_worker(
    capp: Conveyor, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "marker.txt"
    handle = capp.enqueue("marked_nap", str(marker), 30.0)
    first = workers.start("--max-workers", "2")
    # the pid is written, not only the file made: a kill between the two would leave
    # an empty marker, and the next run would count itself the first
    wait_until(lambda: marker.exists() and marker.read_text().endswith("\n"),
               what=f"the job to start\n{workers.log(first)}")
    running = handle.info()
    assert running.state is JobState.RUNNING
    assert running.worker_id is not None and f"-{first.pid}-" in running.worker_id

    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert handle.info().state is JobState.RUNNING  # nobody knows yet

    second = workers.start("--max-workers", "2")
    assert handle.result(timeout=30) == 2
    done = handle.info()
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 2
    assert done.recoveries == 1
    assert done.worker_id is not None and f"-{second.pid}-" in done.worker_id
    assert [int(p) for p in marker.read_text().split()] == [first.pid, second.pid]
    assert workers.stop(second) == 0


def test_bulk_jobs_survive_kill_9_mid_run(
    capp: Conveyor, workers: Workers
) -> None:
    handles = capp.enqueue_many("quick", [(n,) for n in range(200)])
    first = workers.start("--max-workers", "2")
    wait_until(lambda: counts(capp)["succeeded"] >= 20, what=f"progress\n{workers.log(first)}")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    at_kill = counts(capp)
    assert at_kill["succeeded"] < 200  # the kill landed mid-run
    assert at_kill["running"] + at_kill["queued"] > 0
    interrupted = [r.id for r in capp.run_sync(capp.broker.list_jobs(state=JobState.RUNNING))]

    second = workers.start("--max-workers", "2")
    wait_until(lambda: counts(capp)["succeeded"] == 200, timeout=60,
               what=f"all 200 done\n{workers.log(second)}")
    final = counts(capp)
    assert sum(final.values()) == 200  # nothing lost, nothing duplicated
    assert [h.result(timeout=1) for h in handles] == list(range(200))
    # a job that had started is charged a recovery; one only claimed ahead goes back free
    charged = 0
    for job_id in interrupted:
        record = info(capp, job_id)
        assert (record.attempts, record.recoveries) in ((2, 1), (1, 0))
        charged += record.recoveries
    assert charged <= 2, "only the jobs running in the 2 slots had started"
    assert workers.stop(second) == 0


# -- (b) a job that keeps killing its worker ------------------------------------------------------
def test_job_that_kills_its_worker_goes_dead_after_max_recoveries(
    capp: Conveyor, workers: Workers
) -> None:
    assert capp.max_recoveries == 2
    handle = capp.enqueue("suicide")
    procs: list[subprocess.Popen[bytes]] = []

    def dead_yet() -> bool:
        if not procs or procs[-1].poll() is not None:
            procs.append(workers.start("--max-workers", "2"))
        return handle.info().state is JobState.DEAD

    wait_until(dead_yet, timeout=60, what="the job to be given up on")
    record = handle.info()
    assert record.recoveries == 2
    assert record.attempts == 2
    assert record.error == "worker lost 2 times (lease expired); giving up"
    killed = [p for p in procs if p.poll() is not None]
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2
    last = procs[-1]
    assert last.poll() is None  # the worker that gave up on it never ran it
    assert workers.stop(last) == 0


# -- (c) graceful shutdown ------------------------------------------------------------------------
def test_sigterm_finishes_short_jobs_and_requeues_long_ones(
    capp: Conveyor, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "be-quick"
    short = capp.enqueue("nap", 1.0)
    long = capp.enqueue("long_unless", str(marker), 60.0)
    proc = workers.start("--min-workers", "2", "--max-workers", "2", "--grace", "2")
    wait_until(lambda: short.info().state is JobState.RUNNING
               and long.info().state is JobState.RUNNING,
               what=f"both jobs running\n{workers.log(proc)}")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(20)  # grace 2 s; the long job's thread must not hold the exit
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker did not exit:\n{workers.log(proc)}") from None
    assert code == 0, workers.log(proc)
    assert short.result(timeout=1) == 1.0
    requeued = long.info()
    assert requeued.state is JobState.QUEUED
    assert requeued.attempts == 0  # not charged
    assert requeued.recoveries == 0
    assert requeued.worker_id is None
    assert "shutdown" in (requeued.error or "")
    assert live_workers(capp) == []  # it signed off

    marker.touch()
    again = workers.start("--max-workers", "2")
    assert long.result(timeout=30) == "quick"
    assert long.info().attempts == 1
    assert workers.stop(again) == 0


# -- (d) a second signal exits at once ------------------------------------------------------------
def test_second_signal_exits_at_once(
    capp: Conveyor, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "be-quick"
    long = capp.enqueue("long_unless", str(marker), 60.0)
    proc = workers.start("--max-workers", "2", "--grace", "60")
    wait_until(lambda: long.info().state is JobState.RUNNING, what=workers.log(proc))
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "finishing running jobs" in workers.log(proc), what="first signal seen")
    assert proc.poll() is None  # still waiting for the long job (grace 60 s)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker did not exit:\n{workers.log(proc)}") from None
    assert code != 0
    assert "second signal" in workers.log(proc)
    # Left running: the lease recovers it on the next worker.
    assert long.info().state is JobState.RUNNING
    marker.touch()
    again = workers.start("--max-workers", "2")
    assert long.result(timeout=30) == "quick"
    record = long.info()
    assert (record.attempts, record.recoveries) == (2, 1)
    assert workers.stop(again) == 0


# -- (e) several processes under a supervisor -----------------------------------------------------
def test_supervisor_runs_processes_and_stops_them(capp: Conveyor, workers: Workers) -> None:
    supervisor = workers.start("--processes", "2", "--max-workers", "2", "--grace", "5")
    rows = wait_until(lambda: len(found := live_workers(capp)) == 2 and found,
                      what=f"two worker processes\n{workers.log(supervisor)}")
    pids = {row.pid for row in rows}
    workers.extra_pids.extend(pids)
    assert len(pids) == 2 and supervisor.pid not in pids

    handles = capp.enqueue_many("nap", [(0.2,)] * 20)
    assert [h.result(timeout=30) for h in handles] == [0.2] * 20
    ran_on = {h.info().worker_id for h in handles}
    assert ran_on == {row.id for row in rows}  # both processes took jobs

    assert workers.stop(supervisor) == 0, workers.log(supervisor)
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"child {pid} gone")
    assert live_workers(capp) == []


# -- (f) an enqueue that returned is durable ------------------------------------------------------
PRODUCER = textwrap.dedent(
    """
    import os, signal, sys
    from wjobs_crash import app  # a producer with the jobs' code

    app.use_url(sys.argv[1])
    handle = app.enqueue("quick", 7)
    bulk = app.enqueue_many("quick", [(n,) for n in range(100)])
    print(handle.id, *[h.id for h in bulk], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_enqueue_survives_kill_9_of_the_producer(
    capp: Conveyor, workers: Workers, db_url: str
) -> None:
    done = subprocess.run([sys.executable, "-c", PRODUCER, db_url], capture_output=True,
                          env=cli_env(), cwd=TESTS, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    job_id, *bulk_ids = done.stdout.decode().split()
    assert len(bulk_ids) == 100
    record = info(capp, job_id)
    assert (record.name, record.args, record.state) == ("quick", [7], JobState.QUEUED)
    stored = capp.run_sync(capp.broker.list_jobs(limit=1000))
    assert {r.id for r in stored} == {job_id, *bulk_ids}
    proc = workers.start("--max-workers", "4")
    assert capp.handle(job_id).result(timeout=30) == 7
    assert workers.stop(proc) == 0
