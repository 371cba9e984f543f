"""``conveyor pause``, ``resume``, ``cap`` and ``stats`` run as real subprocesses on a SQLite
file; a worker process stops taking a paused queue's jobs and takes them again on resume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clijobs import CLI, publish, stop
from conveyor import Conveyor, JobState
from polling import wait_until


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    """``conveyor enqueue`` without ``--app`` takes the clijobs names (see test_cli_admin)."""
    publish(cli.url)


def test_pause_and_resume_show_in_stats(cli: CLI) -> None:
    assert cli.ok("pause", "mail").strip() == "mail paused"
    stats = cli.json("stats")
    assert stats["queues"]["mail"]["paused"] is True  # listed though it has no jobs yet
    assert stats["queues"]["mail"]["queued"] == 0
    cli.enqueue("greet", ["x"], "--queue", "mail")  # a paused queue takes jobs
    assert cli.json("stats")["queues"]["mail"]["queued"] == 1
    table = cli.ok("stats", COLUMNS="200")
    assert "paused" in table and "max_queued" in table
    assert cli.json("resume", "mail") == {"queue": "mail", "paused": False, "max_queued": None}
    assert cli.json("stats")["queues"]["mail"]["paused"] is False


def test_cap_refuses_a_producer_without_an_app(cli: CLI) -> None:
    assert cli.ok("cap", "default", "2").strip() == "default capped at 2 waiting"
    cli.enqueue("add", [1, 2])
    cli.enqueue("add", [1, 2])
    err = cli.fail("enqueue", "add", "--args", "[1, 2]", code=3)
    assert "queue 'default' is full (2 jobs waiting)" in err
    assert cli.json("stats")["queues"]["default"]["max_queued"] == 2
    assert cli.json("cap", "default", "none") == {"queue": "default", "paused": False,
                                                  "max_queued": None}
    cli.enqueue("add", [1, 2])
    assert cli.json("stats")["queues"]["default"]["queued"] == 3


def test_the_smaller_cap_wins_with_an_app_of_its_own(cli: CLI) -> None:
    """clijobs:limited caps default at 2 itself; a store cap of 1 is smaller and holds."""
    cli.ok("cap", "default", "1")
    cli.ok("enqueue", "add", "--args", "[1, 2]", "--app", "clijobs:limited")
    err = cli.fail("enqueue", "add", "--args", "[1, 2]", "--app", "clijobs:limited", code=3)
    assert "(1 job waiting)" in err
    cli.ok("cap", "default", "5")  # the app's own 2 holds now
    cli.ok("enqueue", "add", "--args", "[1, 2]", "--app", "clijobs:limited")
    err = cli.fail("enqueue", "add", "--args", "[1, 2]", "--app", "clijobs:limited", code=3)
    assert "(2 jobs waiting)" in err


@pytest.mark.parametrize(("argv", "message"), [
    (("pause", ""), "a queue name is a non-empty string of at most 200 characters"),
    (("resume", "q" * 201), "a queue name is a non-empty string of at most 200 characters"),
    (("cap", "q", "0"), "max_queued must be a whole number from 1 to 1000000000000000"),
    (("cap", "q", "many"), "max_queued must be a whole number of at least 1 or 'none'"),
])
def test_bad_names_and_limits_are_one_line_errors(cli: CLI, argv: tuple[str, ...],
                                                  message: str) -> None:
    err = cli.fail(*argv, code=2)
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_worker_process_stops_on_pause_and_goes_on_after_resume(
        cli: CLI, jobs_app: Conveyor) -> None:
    proc = cli.start_worker("--queues", "default")
    try:
        first = cli.enqueue("add", [1, 1])
        wait_until(lambda: jobs_app.handle(first).info().state is JobState.SUCCEEDED,
                   what="the worker to run a job")
        cli.ok("pause", "default")
        held = [cli.enqueue("add", [i, 1]) for i in range(3)]
        time.sleep(1.5)  # a paused queue gives nothing: they stay queued
        assert [jobs_app.handle(i).info().state for i in held] == [JobState.QUEUED] * 3
        cli.ok("resume", "default")
        wait_until(lambda: all(jobs_app.handle(i).info().state is JobState.SUCCEEDED
                               for i in held), timeout=20, what="the held jobs to run")
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_stats_columns_of_settings_only_when_a_queue_has_some(cli: CLI) -> None:
    cli.enqueue("add", [1, 2])
    assert "paused" not in cli.ok("stats").splitlines()[0]
    cli.ok("cap", "mail", "3")
    header, *rows = cli.ok("stats").split("\n\n")[0].splitlines()
    assert header.split("\t")[-2:] == ["paused", "max_queued"]
    assert sorted(rows) == ["default\t1\t0\t0\t0\t0\t0\tno\t-", "mail\t0\t0\t0\t0\t0\t0\tno\t3"]


def test_queue_and_listing_commands_take_the_store_of_an_app(cli: CLI, tmp_path: Path) -> None:
    """``--app`` names the store on every store command: pause, resume, cap, schedules and
    jobs-known read the app's URL, and no ``conveyor.db`` appears in the working directory."""
    elsewhere = CLI(cli.url, tmp_path / "elsewhere")
    elsewhere.cwd.mkdir()
    (elsewhere.cwd / "pausedapp.py").write_text(
        "from conveyor import Conveyor\n"
        f"app = Conveyor(url={cli.url!r})\n")
    spec = ("--app", "pausedapp:app")
    assert elsewhere.ok("pause", "mail", *spec, url=None).strip() == "mail paused"
    assert cli.json("stats")["queues"]["mail"]["paused"] is True
    assert elsewhere.ok("cap", "mail", "4", *spec, url=None).strip() == "mail capped at 4 waiting"
    assert elsewhere.json("resume", "mail", *spec, url=None) == {
        "queue": "mail", "paused": False, "max_queued": 4}
    assert "add" in elsewhere.ok("jobs-known", *spec, url=None)  # published by the fixture
    elsewhere.ok("schedules", *spec, url=None)
    assert not list(elsewhere.cwd.glob("*.db*"))  # no store made where the commands ran
