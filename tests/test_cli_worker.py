"""``conveyor worker``, where the store URL comes from, the store's own errors, and ``--help``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clijobs import CLI, stop
from conftest import cli_env
from conveyor import Conveyor
from conveyor.job import JobRecord
from polling import wait_until


@pytest.fixture
def reader(db_url: str) -> Iterator[Conveyor]:
    """Reads the test's store in-process."""
    app = Conveyor(url=db_url)
    yield app
    app.close()


def job(url: str, job_id: str) -> dict | None:
    """The job's info in the store at ``url``, or None."""
    app = Conveyor(url=url)
    try:
        record = app.run_sync(app.broker.get(job_id))
        return None if record is None else record.to_dict()
    finally:
        app.close()


def finals(app: Conveyor, ids: list[str]) -> list[JobRecord]:
    return [app.handle(i).info() for i in ids]


def all_final(app: Conveyor, ids: list[str]) -> list[JobRecord] | None:
    records = finals(app, ids)
    return records if all(r.is_final for r in records) else None


# -- the APP spec and options -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "APP must look like module:attribute (as with uvicorn), got 'nocolon'"),
        ("clijobs:", "APP must look like module:attribute"),
        (":app", "APP must look like module:attribute"),
        ("missing_module:app", "cannot import 'missing_module': No module named 'missing_module'"),
        ("clijobs:not_there", "'clijobs' has no attribute 'not_there'"),
        ("clijobs:app.nope", "'clijobs' has no attribute 'app.nope'"),
        ("clijobs:not_an_app", "clijobs:not_an_app is a dict, not a Conveyor app"),
        ("clijobs:register", "clijobs:register is a function, not a Conveyor app"),
    ],
)
def test_worker_bad_app_spec_exits_2(cli: CLI, spec: str, message: str) -> None:
    err = cli.fail("worker", spec, code=2)
    assert message in err
    assert not (cli.cwd / "conveyor.db").exists()


def test_worker_min_above_max_exits_2(cli: CLI) -> None:
    err = cli.fail("worker", "clijobs:app", "--min-workers", "5", "--max-workers", "2", code=2)
    assert "--min-workers must not exceed --max-workers" in err


@pytest.mark.parametrize("option", ["--min-workers", "--max-workers", "--processes"])
def test_worker_counts_must_be_positive(cli: CLI, option: str) -> None:
    err = cli.fail("worker", "clijobs:app", option, "0", code=2)
    assert f"argument {option}: must be at least 1" in err


def test_worker_runs_jobs_and_exits_0_on_sigterm(cli: CLI, reader: Conveyor,
                                                 tmp_path: Path) -> None:
    ids = [cli.enqueue("add", [i, 10], "--app", "clijobs:app") for i in range(3)]
    ids.append(cli.enqueue("greet", ["ann"], "--app", "clijobs:app"))  # queue "mail"
    decoy = tmp_path / "decoy.db"
    proc = cli.start_worker(CLIJOBS_URL=f"sqlite:///{decoy}")  # --url wins over the app's URL
    try:
        records = wait_until(lambda: all_final(reader, ids), what="the worker to run the jobs")
        assert [str(r.state) for r in records] == ["succeeded"] * 4
        assert [r.result for r in records] == [10, 11, 12, "hello ann"]
        assert proc.poll() is None, "the worker keeps running"
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert not decoy.exists()


def test_worker_keeps_its_startup_heap_out_of_the_collectors_way(
        cli: CLI, reader: Conveyor) -> None:
    job_id = cli.enqueue("frozen_objects", [], "--app", "clijobs:app")
    proc = cli.start_worker()
    try:
        (record,) = wait_until(lambda: all_final(reader, [job_id]), what="the job to run")
        assert str(record.state) == "succeeded" and record.result > 10_000
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_worker_only_takes_its_queues(cli: CLI, reader: Conveyor) -> None:
    add = cli.enqueue("add", [1, 2], "--app", "clijobs:app")
    greet = cli.enqueue("greet", ["bo"], "--app", "clijobs:app")
    proc = cli.start_worker("--queues", " mail, ")
    try:
        wait_until(lambda: all_final(reader, [greet]), what="greet")
        assert str(finals(reader, [greet])[0].state) == "succeeded"
        assert str(finals(reader, [add])[0].state) == "queued"
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_worker_processes_supervised(cli: CLI) -> None:
    store = Conveyor(url=cli.url)  # made before stats reads it (stats never makes a store)
    store.run_sync(store.broker.open())
    store.close()
    proc = cli.start_worker("--processes", "2", "--max-workers", "3")
    try:
        workers = wait_until(lambda: len(w := cli.json("stats")["workers"]) == 2 and w,
                             what="two worker processes")
        assert all(w["pid"] != proc.pid and w["max_concurrency"] == 3 for w in workers)
        job_id = cli.enqueue("add", [2, 2])
        done = cli("status", job_id, "--wait", "--timeout", "20", "--json")
        assert done.returncode == 0, done.stderr
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert cli.json("stats")["workers"] == []


def test_worker_on_a_store_that_is_not_a_database(cli: CLI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("this is not SQLite " * 100)
    err = cli.fail("worker", "clijobs:app", url=f"sqlite:///{junk}", code=1)
    assert "cannot use the store" in err and "not a database" in err


# -- store errors in the admin commands ---------------------------------------------------------
def test_bad_store_urls(cli: CLI, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("this is not SQLite " * 100)
    assert "not a database" in cli.fail("stats", url=f"sqlite:///{junk}", code=1)
    assert "store unavailable" in cli.fail("jobs", url=f"sqlite:///{tmp_path}", code=1)
    err = cli.fail("stats", url="ftp://somewhere/x", code=1)
    assert "unsupported URL scheme 'ftp'" in err


# -- where the URL comes from -------------------------------------------------------------------
def test_url_option_beats_env_beats_app(cli: CLI, tmp_path: Path) -> None:
    option, env, own = (f"sqlite:///{tmp_path / name}.db" for name in ("option", "env", "own"))
    enqueue = ("enqueue", "add", "--args", "[1, 2]", "--app", "clijobs:app")

    first = cli.ok(*enqueue, url=option, CONVEYOR_URL=env, CLIJOBS_URL=own).strip()
    assert job(option, first) is not None
    assert not (tmp_path / "env.db").exists() and not (tmp_path / "own.db").exists()

    second = cli.ok(*enqueue, url=None, CONVEYOR_URL=env, CLIJOBS_URL=own).strip()
    assert job(env, second) is not None
    assert not (tmp_path / "own.db").exists()

    third = cli.ok(*enqueue, url=None, CLIJOBS_URL=own).strip()
    assert job(own, third) is not None
    assert job(env, third) is None and job(option, third) is None


def test_url_without_app(cli: CLI, tmp_path: Path) -> None:
    env = f"sqlite:///{tmp_path / 'env.db'}"
    # no worker has published its jobs to these stores yet: --force
    from_env = cli.ok("enqueue", "add", "--force", url=None, CONVEYOR_URL=env).strip()
    assert job(env, from_env) is not None
    # the option beats the environment
    from_option = cli.ok("enqueue", "add", "--force", CONVEYOR_URL=env).strip()
    assert job(cli.url, from_option) is not None and job(env, from_option) is None
    # neither: conveyor.db in the current directory
    default = cli.ok("enqueue", "add", "--force", url=None).strip()
    assert job(f"sqlite:///{tmp_path / 'conveyor.db'}", default) is not None


def test_worker_takes_conveyor_url_over_the_apps(cli: CLI, tmp_path: Path) -> None:
    job_id = cli.enqueue("add", [5, 6], "--app", "clijobs:app")
    own = tmp_path / "own.db"
    command = [sys.executable, "-m", "conveyor", "--log-level", "WARNING", "worker",
               "clijobs:app", "--grace", "5"]
    proc = subprocess.Popen(command, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=cli_env(CONVEYOR_URL=cli.url, CLIJOBS_URL=f"sqlite:///{own}"))
    try:
        wait_until(lambda: cli.json("status", job_id)["result"] == 11, what="the job to run")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert not own.exists()


def test_namespace_keeps_stores_apart(cli: CLI) -> None:
    mine = cli.enqueue("add", [1, 2], "--app", "clijobs:app", "--namespace", "team_a")
    assert [j["id"] for j in cli.json("jobs", "--namespace", "team_a")] == [mine]
    assert cli.json("jobs") == []
    assert "no job with id" in cli.fail("status", mine, code=1)


# -- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [[], ["worker"], ["enqueue"], ["status"], ["jobs"], ["retry"], ["cancel"], ["stats"],
     ["bench"]],
)
def test_help_exits_0(cli: CLI, command: list[str]) -> None:
    out = cli.ok(*command, "--help", url=None)
    assert out.startswith(f"usage: conveyor {' '.join(command)}".rstrip())
    if not command:
        for name in ("worker", "enqueue", "status", "jobs", "retry", "cancel", "stats", "bench"):
            assert name in out


def test_no_command_is_a_usage_error(cli: CLI) -> None:
    err = cli.fail(url=None, code=2)
    assert "usage: conveyor" in err and "required: COMMAND" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["enqueue", "add", "--priority", "11"],
     "conveyor enqueue: error: argument --priority: a priority is a whole number from -10 "
     "to 10, not '11' (see conveyor enqueue --help)"),
    (["priority", "06H0HQQS1DPDNNKJ7KG6WTC19R", "-11"],
     "conveyor priority: error: argument -10..10: a priority is a whole number from -10 to "
     "10, not '-11' (see conveyor priority --help)"),
    (["worker", "clijobs:app", "--max-workers", "0"],
     "conveyor worker: error: argument --max-workers: must be at least 1 "
     "(see conveyor worker --help)"),
    (["jobs", "--bogus"],
     "conveyor: error: unrecognized arguments: --bogus (see conveyor --help)"),
])
def test_a_bad_argument_is_one_line(cli: CLI, argv: list[str], message: str) -> None:
    err = cli.fail(*argv, code=2)
    assert err.splitlines() == [message], err


def test_a_reader_that_stops_reading_ends_a_command_quietly(cli: CLI, db_url: str) -> None:
    """``conveyor jobs --json | head -c 100``: the reader goes, the command ends with exit 1
    and nothing on stderr (it printed a traceback)."""
    app = Conveyor(url=db_url)
    for n in range(200):
        app.enqueue_call("add", [n, "x" * 500], {}, force=True)
    app.close()
    command = [sys.executable, "-m", "conveyor", "jobs", "--limit", "200", "--json",
               "--url", db_url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(), cwd=cli.cwd)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1 and err == "", err
