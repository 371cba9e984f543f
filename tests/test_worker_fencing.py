"""One owner per attempt, seen from the worker: a lost attempt is stopped at once, a suspect
job runs alone, prefetch leaves work for siblings, and SQLite leases ignore wall clock steps.

Real SQLite files, workers on real threads or in real processes; a takeover is made the way
another worker's claim makes it (a write to the store), never by patching the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import TESTS, WorkerThread, cli_env
from conveyor import Conveyor, JobContext, JobState
from conveyor.ids import new_id
from conveyor.job import JobRecord
from polling import pid_running, wait_until
from redis_server import RedisServer


def db_path(app: Conveyor) -> str:
    return app.url.removeprefix("sqlite:///")


def take_over(app: Conveyor, job_id: str) -> None:
    """Give the job's running attempt to another worker, as its claim after a recovery
    would: a new owner and a new attempt number."""
    with sqlite3.connect(db_path(app)) as conn:
        conn.execute("UPDATE conveyor_jobs SET worker_id='elsewhere', attempts=attempts+1 "
                     "WHERE id=?", (job_id,))


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_an_attempt_taken_over_is_stopped_at_once(
    app: Conveyor, start_worker: Callable[..., WorkerThread], kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped = threading.Event()
    started = threading.Event()

    @app.job(name="long_async")
    async def long_async(ctx: JobContext) -> str:
        started.set()
        try:
            for _ in range(400):
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "ran on"

    @app.job(name="long_thread")
    def long_thread(ctx: JobContext) -> str:
        started.set()
        for _ in range(400):
            if ctx.cancelled:
                stopped.set()
                return "stopped"
            time.sleep(0.05)
        return "ran on"

    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        thread = start_worker(app, max_workers=2)
        handle = app.enqueue(f"long_{kind}")
        assert started.wait(10)
        take_over(app, handle.id)
        # the job would run on for 20 s: well before that, on a loaded machine too
        assert stopped.wait(15), "the worker ran on an attempt it no longer owned"
        wait_until(lambda: thread.worker.lost == 1 and not thread.worker.running,
                   timeout=30, what="the slot freed")
    assert any("no longer this worker's" in r.getMessage() for r in caplog.records)
    # nothing of the stopped attempt was written over the new owner's
    record = handle.info()
    assert (record.state, record.worker_id, record.attempts) == (JobState.RUNNING,
                                                                 "elsewhere", 2)


def test_a_suspect_job_runs_alone(
    app: Conveyor, start_worker: Callable[..., WorkerThread]
) -> None:
    spans: dict[str, tuple[float, float]] = {}

    @app.job
    async def nap(tag: str) -> None:
        began = time.monotonic()
        await asyncio.sleep(0.3)
        spans[tag] = (began, time.monotonic())

    broker = app.broker
    suspect = app.enqueue("nap", "suspect")
    # its first attempt was lost with its worker: claimed by a worker that never heartbeats
    app.run_sync(broker.claim("ghost", ["default"], 1, 0.05))
    time.sleep(0.15)
    app.run_sync(broker.recover_expired(3))
    assert suspect.info().recoveries == 1
    for n in range(6):
        app.enqueue("nap", f"innocent-{n}")
    start_worker(app, min_workers=4, max_workers=4)
    wait_until(lambda: len(spans) == 7, timeout=20, what="every job done")
    begin, end = spans.pop("suspect")
    for tag, (other_begin, other_end) in spans.items():
        assert other_end <= begin or other_begin >= end, f"{tag} ran beside the suspect"
    assert suspect.info().state is JobState.SUCCEEDED


def test_prefetch_leaves_work_for_an_idle_sibling(app: Conveyor) -> None:
    # the jobs run until released: the first worker's slots stay full however long the
    # sibling takes to start (no race with a fixed job length on a loaded machine)
    release = threading.Event()

    @app.job
    async def hold() -> str:
        while not release.is_set():
            await asyncio.sleep(0.02)
        return "done"

    handles = app.enqueue_many("hold", [()] * 20)
    first = WorkerThread(app, min_workers=10, max_workers=10).start()
    try:
        wait_until(lambda: len(first.worker.running) == 10, timeout=30, what="first busy")
        second = WorkerThread(app, min_workers=10, max_workers=10).start()
        try:
            wait_until(lambda: len(second.worker.running) == 10, timeout=30,
                       what=f"the sibling busy too (first holds {len(first.worker.buffered)} "
                       f"buffered)")
            release.set()
            assert [h.result(timeout=30) for h in handles] == ["done"] * 20
        finally:
            release.set()
            second.stop()
    finally:
        first.stop()
    owners = {h.info().worker_id for h in handles}
    assert owners == {first.worker.id, second.worker.id}


#: a worker whose wall clock runs this far ahead of the machine's
CLOCK_AHEAD = 30.0
AHEAD_WORKER = f"""
import sys, time
_real = time.time
time.time = lambda: _real() + {CLOCK_AHEAD}
from conveyor.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sqlite_leases_ignore_a_worker_clock_ahead(tmp_path: Path, db_url: str) -> None:
    """A worker whose wall clock is 30 s ahead must not take the leases of a healthy one."""
    ledger = tmp_path / "ledger"
    env = cli_env(CLIJOBS_URL=db_url, FENCING_LEDGER=str(ledger))
    app = Conveyor(url=db_url, lease=5.0)
    try:
        # the jobs' code is in the workers (fencingjobs): stored for them before they start
        handles = app.enqueue_many("record", [(n, 4.0) for n in range(20)], force=True)
        command = [sys.executable, "-m", "conveyor", "worker", "fencingjobs:app",
                   "--min-workers", "20", "--max-workers", "20", "--grace", "10"]
        logs = [(tmp_path / f"w{n}.log").open("wb") for n in range(2)]
        honest = subprocess.Popen(command, env=env, cwd=TESTS, stdout=logs[0],
                                  stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: ledger.exists() and len(ledger.read_text().split()) >= 20,
                       timeout=20, what="the honest worker running every job")
            ahead = subprocess.Popen([sys.executable, "-c", AHEAD_WORKER, *command[3:]],
                                     env=env, cwd=TESTS, stdout=logs[1],
                                     stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: all(h.info().is_final for h in handles), timeout=30,
                           what="every job done")
            finally:
                ahead.terminate()
                assert ahead.wait(20) == 0
        finally:
            honest.terminate()
            assert honest.wait(20) == 0
        starts = ledger.read_text().split()
        assert sorted(starts) == sorted(str(n) for n in range(20)), "a job ran twice"
        assert all(h.info().state is JobState.SUCCEEDED for h in handles)
    finally:
        app.close()


def _orphanjobs_worker(url: str, namespace: str, log: Path, *options: str,
                       **env: str) -> subprocess.Popen[bytes]:
    """``conveyor worker orphanjobs:app`` (a 1 s lease) logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", "--log-level", "INFO", "worker", "orphanjobs:app",
             "--url", url, "--namespace", namespace, *options],
            cwd=TESTS, env=cli_env(**env), stdout=subprocess.DEVNULL, stderr=out)


def _stop_workers(*workers: subprocess.Popen[bytes]) -> None:
    """Stop each worker with SIGTERM, as an operator would, and check it stopped cleanly."""
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def _kill_left(*workers: subprocess.Popen[bytes] | None) -> None:
    """Kill what a failed test left running (resumed first: it may be stopped)."""
    for worker in workers:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait()


def _stop_holding_no_lock(proc: subprocess.Popen[bytes], url: str) -> None:
    """SIGSTOP ``proc`` at a moment it holds no SQLite write lock (stopped inside a write,
    it would hold every other process's writes, the recovery's too, until it resumes)."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        if not url.startswith("sqlite"):
            return
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.2,
                               isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    raise AssertionError("the worker held the write lock at each of 50 stops")


def test_an_attempt_that_ended_while_its_worker_was_stopped_is_logged_lost(
        url: str, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) past its lease while its process job's child runs on and
    ends (at once: before the child's watch would end it): another worker recovers the job
    and runs it again; once resumed, the first worker logs the ended attempt as no longer
    its own and drops its outcome, which the store would ignore without a word (it used to
    be neither logged nor counted)."""
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, first_log, second_log = tmp_path / "ledger", tmp_path / "a.log", tmp_path / "b.log"
    handle = app.enqueue_call("finisher", [str(ledger)], {}, force=True)
    # a lease of 3 s: the child's watch would end its job 1 s after the stop
    first = _orphanjobs_worker(url, namespace, first_log, ORPHANJOBS_LEASE="3")
    second = None
    try:
        wait_until(lambda: ledger.exists() and ledger.read_text().count("\n") >= 1, 30,
                   "the first attempt to start")
        _stop_holding_no_lock(first, url)
        Path(f"{ledger}.go").touch()  # the child ends its attempt while its worker is stopped
        wait_until(lambda: ledger.read_text().count("\n") >= 2, 10, "the first attempt to end")
        second = _orphanjobs_worker(url, namespace, second_log, ORPHANJOBS_LEASE="3")
        info = wait_until(lambda: (r := handle.info()).is_final and r, 60,
                          "the job to be recovered and run again")
        first.send_signal(signal.SIGCONT)
        wait_until(lambda: "ended, but is no longer this worker's" in first_log.read_text(),
                   20, "the first worker to log its ended attempt as lost")
        assert (info.state, handle.result()) == (JobState.SUCCEEDED, 2), second_log.read_text()
        _stop_workers(first, second)
    finally:
        _kill_left(first, second)
        app.close()
    log = first_log.read_text()
    assert log.count("ended, but is no longer this worker's") == 1, log
    assert "its outcome is dropped" in log, log
    record = handle.info()  # the second attempt's outcome stands
    assert (record.state, record.attempts, handle.result()) == (JobState.SUCCEEDED, 2, 2)


def _ticks(ledger: Path) -> list[tuple[int, int, float]]:
    """The ledger's lines of ``orphanjobs.ticker``: (process, attempt, time) each."""
    return [(int(pid), int(attempt), float(at)) for pid, attempt, at in
            (line.split() for line in ledger.read_text().splitlines())]


def test_a_process_job_ends_when_its_worker_is_stopped_past_its_lease(
        url: str, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) while its process job's child runs: the child, which
    SIGSTOP does not stop, sees its worker silent and ends the job before another worker
    can recover it (the first attempt ticks for 30 s if let be), so the attempt recovered
    elsewhere never runs beside it; once resumed, the first worker writes nothing for it.
    The ledger is the job's own (one fsynced line per tick)."""
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, first_log, second_log = tmp_path / "ledger", tmp_path / "a.log", tmp_path / "b.log"
    handle = app.enqueue_call("ticker", [str(ledger)], {}, force=True)
    first = _orphanjobs_worker(url, namespace, first_log)
    second = None
    try:
        wait_until(lambda: ledger.exists() and len(_ticks(ledger)) >= 3, 30,
                   "the first attempt to tick")
        second = _orphanjobs_worker(url, namespace, second_log)  # ready to recover it
        wait_until(lambda: second_log.exists() and " on " in second_log.read_text(), 30,
                   "the second worker to start")
        _stop_holding_no_lock(first, url)
        stopped_at = time.time()
        child = _ticks(ledger)[0][0]
        wait_until(lambda: not pid_running(child), 10, "the first attempt's child to end")
        info = wait_until(lambda: (r := handle.info()).is_final and r, 60,
                          "the job to be recovered and run again")
        first.send_signal(signal.SIGCONT)
        wait_until(lambda: "is no longer this worker's" in first_log.read_text(), 20,
                   "the first worker to give up its attempt")
        _stop_workers(first, second)
    finally:
        _kill_left(first, second)
        app.close()
    ticks = _ticks(ledger)
    firsts = [at for _, attempt, at in ticks if attempt == 1]
    seconds = [at for _, attempt, at in ticks if attempt == 2]
    assert len(seconds) == 5 and {a for _, a, _ in ticks} == {1, 2}, ticks
    assert max(firsts) < min(seconds), "the first attempt ran beside the recovered one"
    assert max(firsts) < stopped_at + 1.0, "the first attempt ran on past its lease"
    log = first_log.read_text()
    assert f"process job {handle.id}: its worker (pid {first.pid}) has shown no sign of " \
           "life" in log, log
    assert (info.state, info.attempts, handle.result()) == (JobState.SUCCEEDED, 2, 2)


def test_a_process_job_ended_for_a_held_loop_is_requeued_uncharged(
        url: str, tmp_path: Path) -> None:
    """A worker's event loop held (an async job sleeping on it) past the child's patience
    but not past the lease: the child ends its job, the worker, once its loop runs again,
    logs it and puts the job back uncharged (not the job's failure: a deferral, of a
    bounded number), and it runs again."""
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, log_path = tmp_path / "ledger", tmp_path / "worker.log"
    handle = app.enqueue_call("reticker", [str(ledger)], {}, force=True)
    # a lease of 8 s: the child waits 3.5 s for a sign of life; the loop is held 5 s, well
    # within the lease (renewed every second)
    worker = _orphanjobs_worker(url, namespace, log_path, ORPHANJOBS_LEASE="8")
    try:
        wait_until(lambda: ledger.exists() and len(_ticks(ledger)) >= 3, 30,
                   "the first run to tick")
        app.enqueue_call("holder", [5.0], {}, force=True)
        info = wait_until(lambda: (r := handle.info()).is_final and r, 60, "the job to end")
        _stop_workers(worker)
    finally:
        _kill_left(worker)
        app.close()
    log = log_path.read_text()
    assert "has shown no sign of life" in log, log
    assert "was ended in its process as its worker froze" in log, log
    assert "(not charged; deferred 1 of" in log, log
    runs = sorted({pid for pid, _, _ in _ticks(ledger)})
    assert len(runs) == 2, _ticks(ledger)  # the ended run, then the one that finished
    assert (info.state, info.attempts, info.recoveries, info.deferrals) == \
        (JobState.SUCCEEDED, 1, 0, 1), info
    assert handle.result() == 1


def test_a_job_waiting_for_a_child_does_not_start_after_its_worker_was_stopped(
        url: str, tmp_path: Path) -> None:
    """A worker with a process job waiting in a slot for a child is stopped (SIGSTOP); its
    children end their jobs meanwhile (their answers wait in the pipes), and another worker
    recovers every job. Once resumed, the first worker must not send the waiting job to a
    freed child: a heartbeat first tells it the job is no longer its own. The waiting job's
    ledger shows one process only (the recovering worker's child)."""
    children = os.cpu_count() or 1
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    first_log, second_log = tmp_path / "a.log", tmp_path / "b.log"
    ledgers = [tmp_path / f"finisher-{n}" for n in range(children)]
    finishers = [app.enqueue_call("finisher", [str(ledger)], {}, force=True)
                 for ledger in ledgers]
    waiting_ledger = tmp_path / "waiting"
    waiting = app.enqueue_call("steady", [str(waiting_ledger), 4.0], {}, force=True)
    slots = ("--min-workers", str(children + 1), "--max-workers", str(children + 1))
    lease = {"ORPHANJOBS_LEASE": "3"}  # the child's watch: 1 s (the children end at once)
    first = _orphanjobs_worker(url, namespace, first_log, *slots, **lease)
    second = None
    try:
        wait_until(lambda: all(ledger.exists() for ledger in ledgers), 30,
                   "every child to run a finisher")
        wait_until(lambda: waiting.info().state is JobState.RUNNING, 30,
                   "the last job to take a slot")
        assert not waiting_ledger.exists()  # it waits for a child
        second = _orphanjobs_worker(url, namespace, second_log, **lease)
        wait_until(lambda: second_log.exists() and " on " in second_log.read_text(), 30,
                   "the second worker to start")
        _stop_holding_no_lock(first, url)
        for ledger in ledgers:  # the children end their attempts, their worker stopped
            Path(f"{ledger}.go").touch()
        wait_until(lambda: waiting_ledger.exists() and len(_ticks(waiting_ledger)) >= 3, 60,
                   "the recovering worker to run the waiting job")
        first.send_signal(signal.SIGCONT)
        wait_until(lambda: all(h.info().is_final for h in [*finishers, waiting]), 60,
                   "every job to end")
        time.sleep(1.0)  # a stale start would tick by now
        _stop_workers(first, second)
        info = waiting.info()
    finally:
        _kill_left(first, second)
        app.close()
    assert len({pid for pid, _, _ in _ticks(waiting_ledger)}) == 1, \
        (_ticks(waiting_ledger), first_log.read_text())
    assert info.state is JobState.SUCCEEDED


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_store_outage_does_not_end_a_process_job(store: str, tmp_path: Path) -> None:
    """The store out of reach for 2 s (SQLite: another connection holds the write lock;
    Redis: its server stopped) while a process job runs, its child's patience 0.33 s (a
    lease of 1 s): the worker's event loop runs on, so the child keeps its job, which ends
    once, in its first attempt."""
    server = RedisServer().start() if store == "redis" else None
    url = server.url if server is not None else f"sqlite:///{tmp_path / 'store.db'}"
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, log_path = tmp_path / "ledger", tmp_path / "worker.log"
    handle = app.enqueue_call("steady", [str(ledger), 4.0], {}, force=True)
    worker = _orphanjobs_worker(url, namespace, log_path)
    try:
        wait_until(lambda: ledger.exists() and len(_ticks(ledger)) >= 3, 30,
                   "the job to tick")
        if server is not None:
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            time.sleep(2.0)
            server.process.send_signal(signal.SIGCONT)
        else:
            holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            time.sleep(2.0)
            holder.execute("ROLLBACK")
            holder.close()
        info = wait_until(lambda: (r := handle.info()).is_final and r, 60, "the job to end")
        result = handle.result()
        _stop_workers(worker)
    finally:
        _kill_left(worker)
        app.close()
        if server is not None:
            server.remove()
    log = log_path.read_text()
    assert "no sign of life" not in log, log
    assert {pid for pid, _, _ in _ticks(ledger)} == {_ticks(ledger)[0][0]}, "it ran again"
    assert (info.state, info.attempts, result) == (JobState.SUCCEEDED, 1, 1), log


def test_process_jobs_waiting_for_a_child_are_not_charged_when_their_worker_dies(
        url: str, tmp_path: Path) -> None:
    """A worker with more slots than process children: the jobs that wait in a slot for a
    child never ran, so when the worker is SIGKILLed they come back uncharged (here
    ``max_recoveries=1``: a charge sends a job to the dead set), while those that ran in a
    child are charged as the rule says."""
    children = os.cpu_count() or 1
    count = children + 3
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, first_log, second_log = tmp_path / "ledger", tmp_path / "a.log", tmp_path / "b.log"
    handles = [app.enqueue_call("waiter", [str(ledger)], {}, force=True) for _ in range(count)]
    slots = ("--min-workers", str(count), "--max-workers", str(count))
    first = _orphanjobs_worker(url, namespace, first_log, *slots, ORPHANJOBS_MAX_RECOVERIES="1",
                               ORPHANJOBS_WAIT="60")
    second = None
    try:
        wait_until(lambda: ledger.exists() and ledger.read_text().count("\n") >= children,
                   60, "every child to run a job")
        wait_until(lambda: all(h.info().state is JobState.RUNNING for h in handles), 30,
                   "every job to take a slot")
        time.sleep(1.5)  # heartbeats in between: what the store was told of each job holds
        first.kill()
        first.wait()
        ran = {line.split()[0] for line in ledger.read_text().splitlines()}
        assert len(ran) == children  # one job per child, the others waiting for one
        first_attempts = ledger.read_text()
        second = _orphanjobs_worker(url, namespace, second_log, *slots,
                                    ORPHANJOBS_MAX_RECOVERIES="1")

        def ended() -> list[JobRecord] | None:
            records = [h.info() for h in handles]
            return records if all(r.is_final for r in records) else None

        infos = wait_until(ended, 90, "every job to end after the recovery")
        _stop_workers(second)
    finally:
        _kill_left(first, second)
        app.close()
    dead = [i for i in infos if i.state is JobState.DEAD]
    done = [i for i in infos if i.state is JobState.SUCCEEDED]
    # the jobs that ran in a child were charged (and, at max_recoveries=1, are dead); the
    # others never ran: back uncharged, then done
    assert {i.id for i in dead} == ran, ([(i.id, i.state, i.error) for i in infos],
                                         first_attempts)
    assert len(done) == count - children, [(i.state, i.error) for i in infos]
    assert all(i.recoveries == 0 for i in done), [(i.id, i.recoveries) for i in done]
