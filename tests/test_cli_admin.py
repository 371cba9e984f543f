"""``conveyor retry``, ``cancel`` and ``stats`` run as real subprocesses on a SQLite file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clijobs import CLI, publish, stop
from conftest import WorkerThread
from conveyor import Conveyor, JobState
from polling import wait_until

STATES = {"queued", "scheduled", "running", "succeeded", "dead", "cancelled"}


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    """The test's store has workers of clijobs:app: they published its jobs, so ``conveyor
    enqueue`` takes their names without ``--app``."""
    publish(cli.url)


def state(app: Conveyor, job_id: str) -> str:
    return str(app.handle(job_id).info().state)


def run_all(app: Conveyor, start_worker: Callable[..., WorkerThread], ids: list[str],
            queues: list[str] | None = None) -> None:
    """Run the given jobs to a final state on an in-process worker, then stop it."""
    worker = start_worker(app, queues=queues, max_workers=4)
    wait_until(lambda: all(app.handle(i).info().is_final for i in ids), what="final jobs")
    worker.stop()


# -- retry --------------------------------------------------------------------------------------
def test_retry_puts_a_dead_job_back(cli: CLI, jobs_app: Conveyor,
                                    start_worker: Callable[..., WorkerThread]) -> None:
    job_id = cli.enqueue("fail", ["broken"])
    run_all(jobs_app, start_worker, [job_id])
    assert state(jobs_app, job_id) == "dead"
    assert cli.ok("retry", job_id).strip() == f"{job_id} queued"
    record = jobs_app.handle(job_id).info()
    assert record.state is JobState.QUEUED
    assert record.attempts == 0 and record.finished_at is None
    # and it runs again (and dies again)
    run_all(jobs_app, start_worker, [job_id])
    assert cli.json("status", job_id)["attempts"] == 1


def test_retry_a_cancelled_job(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [1, 2])
    cli.ok("cancel", job_id)
    assert cli.ok("retry", job_id).strip() == f"{job_id} queued"
    assert state(jobs_app, job_id) == "queued"


def test_retry_refuses_a_job_that_is_not_dead(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [1, 2])
    err = cli.fail("retry", job_id, code=1)
    assert f"job {job_id} is queued; only dead or cancelled jobs can be retried" in err
    assert state(jobs_app, job_id) == "queued"


def test_retry_unknown_id(cli: CLI) -> None:
    assert "no job with id nope" in cli.fail("retry", "nope", code=1)


def test_retry_all_dead(cli: CLI, jobs_app: Conveyor,
                        start_worker: Callable[..., WorkerThread]) -> None:
    dead = [cli.enqueue("fail", [str(i)]) for i in range(2)]
    other = cli.enqueue("fail", ["x"], "--queue", "other")
    good = cli.enqueue("add", [1, 1])
    run_all(jobs_app, start_worker, [*dead, other, good], queues=["default", "other"])
    assert [state(jobs_app, i) for i in [*dead, other, good]] == ["dead"] * 3 + ["succeeded"]

    assert cli.ok("retry", "--all-dead", "--queue", "other").strip() == "re-enqueued 1 dead job"
    assert state(jobs_app, other) == "queued"
    assert [state(jobs_app, i) for i in dead] == ["dead", "dead"]

    assert cli.ok("retry", "--all-dead").strip() == "re-enqueued 2 dead jobs"
    assert [state(jobs_app, i) for i in dead] == ["queued", "queued"]
    assert state(jobs_app, good) == "succeeded"
    assert cli.ok("retry", "--all-dead").strip() == "re-enqueued 0 dead jobs"


def test_retry_needs_an_id_or_all_dead(cli: CLI) -> None:
    assert "give a job ID or --all-dead" in cli.fail("retry", code=2)
    assert "not both" in cli.fail("retry", "06H0HQQS1DPDNNKJ7KG6WTC19R", "--all-dead", code=2)
    assert "--queue goes with --all-dead" in cli.fail(
        "retry", "06H0HQQS1DPDNNKJ7KG6WTC19R", "--queue", "q", code=2)


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_a_queued_job(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [1, 2])
    keep = cli.enqueue("add", [3, 4])
    assert cli.ok("cancel", job_id).strip() == f"{job_id} cancelled"
    record = jobs_app.handle(job_id).info()
    assert record.state is JobState.CANCELLED and record.finished_at is not None
    assert state(jobs_app, keep) == "queued"


def test_cancel_a_scheduled_job(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [1, 2], "--delay", "600")
    assert cli.ok("cancel", job_id).strip() == f"{job_id} cancelled"
    assert state(jobs_app, job_id) == "cancelled"


def test_cancel_a_final_job_exits_1(cli: CLI, jobs_app: Conveyor,
                                    start_worker: Callable[..., WorkerThread]) -> None:
    done = cli.enqueue("add", [1, 2])
    run_all(jobs_app, start_worker, [done])
    assert f"job {done} has already succeeded" in cli.fail("cancel", done, code=1)
    assert state(jobs_app, done) == "succeeded"

    cancelled = cli.enqueue("add", [1, 2])
    cli.ok("cancel", cancelled)
    assert f"job {cancelled} is already cancelled" in cli.fail("cancel", cancelled, code=1)


def test_cancel_unknown_id(cli: CLI) -> None:
    assert "no job with id nope" in cli.fail("cancel", "nope", code=1)


def test_cancel_a_running_job_asks_its_worker(cli: CLI, jobs_app: Conveyor,
                                              start_worker: Callable[..., WorkerThread]) -> None:
    job_id = cli.enqueue("slow", [60])
    start_worker(jobs_app)
    wait_until(lambda: state(jobs_app, job_id) == "running", what="the job to start")
    out = cli.ok("cancel", job_id).strip()
    assert out == f"{job_id} running (cancellation requested; its worker stops it)"
    wait_until(lambda: state(jobs_app, job_id) == "cancelled", what="the worker to stop it")


# -- stats --------------------------------------------------------------------------------------
def test_stats_counts_per_queue_and_state(cli: CLI) -> None:
    assert cli.json("stats") == {"queues": {}, "workers": [], "limits": []}
    cli.enqueue("add", [1, 2])
    cancelled = cli.enqueue("add", [1, 2])
    cli.ok("cancel", cancelled)
    cli.enqueue("add", [1, 2], "--delay", "600")
    cli.enqueue("greet", ["x"], "--queue", "mail")
    stats = cli.json("stats")
    assert set(stats["queues"]) == {"default", "mail"}
    for per_state in stats["queues"].values():
        assert set(per_state) == STATES | {"paused", "max_queued"}
    assert stats["queues"]["default"] == {"queued": 1, "scheduled": 1, "running": 0,
                                          "succeeded": 0, "dead": 0, "cancelled": 1,
                                          "paused": False, "max_queued": None}
    assert stats["queues"]["mail"]["queued"] == 1
    assert sum(stats["queues"]["mail"][s] for s in STATES) == 1
    assert stats["workers"] == []

    table = cli.ok("stats")
    assert "default" in table and "mail" in table and "cancelled" in table


def test_stats_shows_a_running_worker(cli: CLI, jobs_app: Conveyor) -> None:
    proc = cli.start_worker("--min-workers", "2", "--max-workers", "5", "--queues", "default,mail")

    def registered() -> list[dict[str, object]]:
        if proc.poll() is not None:  # it died: say why
            raise AssertionError(f"worker exited with {proc.returncode}: {stop(proc)[1]}")
        listed: list[dict[str, object]] = cli.json("stats")["workers"]
        return listed

    try:
        try:
            workers = wait_until(registered, what="the worker to register")
        except AssertionError as exc:
            code, err = stop(proc)
            raise AssertionError(f"{exc}; the worker exited with {code}: {err}") from None
        assert len(workers) == 1
        worker = workers[0]
        assert worker["pid"] == proc.pid
        assert worker["min_concurrency"] == 2 and worker["max_concurrency"] == 5
        assert 2 <= worker["concurrency"] <= 5
        assert sorted(worker["queues"]) == ["default", "mail"]
        assert worker["heartbeat_at"].endswith("Z")
        table = cli.ok("stats", COLUMNS="200")
        assert "2..5" in table and str(proc.pid) in table
    finally:
        code, err = stop(proc)
    assert code == 0, err
    # a worker that stopped cleanly leaves the list
    assert cli.json("stats")["workers"] == []
