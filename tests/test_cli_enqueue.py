"""``conveyor enqueue``, ``status`` and ``jobs`` run as real subprocesses on a SQLite file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from clijobs import CLI, publish, register
from conftest import WorkerThread
from conveyor import Conveyor
from polling import wait_until

ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
INFO_KEYS = {"id", "name", "queue", "state", "attempts", "result", "error", "progress",
             "created_at", "run_at", "started_at", "finished_at"}


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    """The test's store has workers of clijobs:app: they published its jobs, so ``conveyor
    enqueue`` takes their names without ``--app``."""
    publish(cli.url)


@pytest.fixture
def stored(jobs_app: Conveyor) -> Callable[[], list[str]]:
    """The ids in the store, newest first (read in-process: quicker than a subprocess)."""

    def ids() -> list[str]:
        return [r.id for r in jobs_app.run_sync(jobs_app.broker.list_jobs())]

    return ids


# -- enqueue ------------------------------------------------------------------------------------
def test_enqueue_prints_the_id_and_stores_the_call(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [2, 3])
    assert ID.match(job_id)
    record = jobs_app.handle(job_id).info()
    assert (record.name, record.queue, str(record.state)) == ("add", "default", "queued")
    assert record.args == [2, 3] and record.kwargs == {}


def test_enqueue_kwargs_queue_and_json(cli: CLI) -> None:
    info = cli.json("enqueue", "greet", "--args", '["ann"]', "--kwargs", '{"greeting": "hi"}',
                    "--queue", "urgent")
    assert ID.match(info["id"])
    assert info["name"] == "greet" and info["queue"] == "urgent" and info["state"] == "queued"
    assert info["args"] == ["ann"] and info["kwargs"] == {"greeting": "hi"}
    assert info["attempts"] == 0


def test_enqueue_with_app_uses_the_jobs_own_queue(cli: CLI) -> None:
    info = cli.json("enqueue", "greet", "--args", '["bob"]', "--app", "clijobs:app")
    assert info["queue"] == "mail"
    # without the app, the queue its workers published
    assert cli.json("enqueue", "greet", "--args", '["bob"]')["queue"] == "mail"


def test_enqueue_delay_schedules(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [1, 1], "--delay", "3600")
    record = jobs_app.handle(job_id).info()
    assert str(record.state) == "scheduled"
    assert record.run_at - record.created_at == pytest.approx(3600, abs=1)


def test_enqueue_with_a_chosen_id_and_a_duplicate(cli: CLI, jobs_app: Conveyor) -> None:
    assert cli.enqueue("add", [1, 1], "--id", "nightly-2026-11-26") == "nightly-2026-11-26"
    err = cli.fail("enqueue", "add", "--args", "[2, 2]", "--id", "nightly-2026-11-26", code=1)
    assert err.strip() == "error: a job with id nightly-2026-11-26 exists already"
    assert jobs_app.handle("nightly-2026-11-26").info().args == [1, 1]
    err = cli.fail("enqueue", "add", "--args", "[2, 2]", "--id", "bad id", code=2)
    assert "not a valid id" in err


def test_enqueue_negative_delay_is_refused(cli: CLI, stored: Callable[[], list[str]]) -> None:
    err = cli.fail("enqueue", "add", "--args", "[1, 2]", "--delay", "-1", code=2)
    assert "delay must not be negative" in err
    assert stored() == []


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ("[1]", "{}", "missing a required argument: 'b'"),
        ("[1, 2, 3]", "{}", "too many positional arguments"),
        ("[1, 2]", '{"c": 3}', "no parameter named 'c'"),
        ("[]", '{"a": 1}', "missing a required argument: 'b'"),
    ],
)
def test_enqueue_with_app_checks_the_signature(cli: CLI, stored: Callable[[], list[str]],
                                               args: str, kwargs: str, message: str) -> None:
    err = cli.fail("enqueue", "add", "--args", args, "--kwargs", kwargs, "--app", "clijobs:app",
                   code=2)
    assert "job 'add'" in err and message in err
    assert stored() == []


def test_enqueue_with_app_accepts_a_fitting_call(cli: CLI, jobs_app: Conveyor) -> None:
    job_id = cli.enqueue("add", [], "--kwargs", '{"a": 1, "b": 2}', "--app", "clijobs:app")
    assert jobs_app.handle(job_id).info().kwargs == {"a": 1, "b": 2}


def test_enqueue_with_app_refuses_an_unknown_name(cli: CLI,
                                                 stored: Callable[[], list[str]]) -> None:
    err = cli.fail("enqueue", "addd", "--args", "[1, 2]", "--app", "clijobs:app", code=2)
    assert "no job named 'addd'" in err and "add" in err
    assert stored() == []


def test_enqueue_without_app_refuses_a_name_no_worker_published(
        cli: CLI, stored: Callable[[], list[str]]) -> None:
    err = cli.fail("enqueue", "elsewhere.job", "--args", '[1, "x", null]', code=2)
    assert "no job named 'elsewhere.job'" in err and "add, fail, frozen_objects, greet, slow" in err
    assert "--force" in err
    assert stored() == []
    # --force stores it anyway: only JSON is checked
    job_id = cli.enqueue("elsewhere.job", [1, "x", None], "--force")
    assert stored() == [job_id]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--args", "[1,", "--args is not valid JSON"),
        ("--kwargs", "{a: 1}", "--kwargs is not valid JSON"),
        ("--args", '{"a": 1}', "--args must be an array, got dict"),
        ("--args", "3", "--args must be an array, got int"),
        ("--kwargs", "[1]", "--kwargs must be an object, got list"),
        ("--kwargs", "null", "--kwargs must be an object, got NoneType"),
    ],
)
def test_enqueue_bad_json_exits_2(cli: CLI, stored: Callable[[], list[str]], option: str,
                                  value: str, message: str) -> None:
    err = cli.fail("enqueue", "add", option, value, code=2)
    assert message in err
    assert err.count("\n") == 1, "one line, not wrapped"
    assert stored() == []


def test_enqueue_refuses_nan(cli: CLI, stored: Callable[[], list[str]]) -> None:
    # Python's json accepts NaN; the store only takes strict JSON
    err = cli.fail("enqueue", "add", "--args", "[NaN, 1]", code=2)
    assert "JSON" in err
    assert stored() == []


def test_enqueue_queue_full_exits_3(cli: CLI, stored: Callable[[], list[str]]) -> None:
    first = cli.enqueue("add", [1, 2], "--app", "clijobs:limited")
    second = cli.enqueue("add", [3, 4], "--app", "clijobs:limited")
    err = cli.fail("enqueue", "add", "--args", "[5, 6]", "--app", "clijobs:limited", code=3)
    assert "queue 'default' is full (2 jobs waiting)" in err
    assert sorted(stored()) == sorted([first, second])
    # other queues have no limit
    cli.enqueue("greet", ["x"], "--app", "clijobs:limited")


# -- status -------------------------------------------------------------------------------------
def test_status_json_has_the_job_info(cli: CLI) -> None:
    job_id = cli.enqueue("add", [2, 3], "--queue", "q1")
    info = cli.json("status", job_id)
    assert info.keys() >= INFO_KEYS
    assert info["id"] == job_id and info["name"] == "add" and info["queue"] == "q1"
    assert info["state"] == "queued" and info["attempts"] == 0
    assert info["result"] is None and info["error"] is None and info["progress"] is None
    assert info["created_at"].endswith("Z") and info["started_at"] is None


def test_status_text_shows_the_fields(cli: CLI) -> None:
    job_id = cli.enqueue("greet", ["[/x] ann"])
    out = cli.ok("status", job_id)
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["id"] == job_id
    assert lines["name"] == "greet" and lines["state"] == "queued"
    assert lines["args"] == '["[/x] ann"]', "user data is printed as is, not as markup"


def test_status_unknown_id_exits_1(cli: CLI) -> None:
    err = cli.fail("status", "06H0000000000000000000000X", code=1)
    assert "no job with id 06H0000000000000000000000X" in err


def test_status_error_messages_are_not_markup(cli: CLI) -> None:
    err = cli.fail("status", "[/x]", code=1)
    assert "no job with id [/x]" in err
    assert "no job with id [bold]x" in cli.fail("status", "[bold]x", code=1)


def test_status_wait_success_exits_0(cli: CLI, jobs_app: Conveyor,
                                     start_worker: Callable[..., WorkerThread]) -> None:
    job_id = cli.enqueue("add", [20, 22])
    start_worker(jobs_app, max_workers=2)
    done = cli("status", job_id, "--wait", "--timeout", "30", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["state"] == "succeeded" and info["result"] == 42 and info["attempts"] == 1
    assert info["finished_at"] is not None


def test_status_wait_dead_exits_1(cli: CLI, jobs_app: Conveyor,
                                  start_worker: Callable[..., WorkerThread]) -> None:
    job_id = cli.enqueue("fail", ["disk on fire"])
    start_worker(jobs_app, max_workers=2)
    done = cli("status", job_id, "--wait", "--timeout", "30", "--json")
    assert done.returncode == 1, done.stderr
    info = json.loads(done.stdout)
    assert info["state"] == "dead" and "disk on fire" in info["error"]
    # the text form shows the error too, from its first line on (a pipe gets no progress
    # bar, nor the empty line a finished bar leaves)
    text = cli("status", job_id, "--wait").stdout
    assert "disk on fire" in text
    assert text.startswith(" ") and text.split("\n")[0].split() == ["id", job_id], text


def test_status_wait_cancelled_exits_1(cli: CLI) -> None:
    job_id = cli.enqueue("add", [1, 2])
    cli.ok("cancel", job_id)
    done = cli("status", job_id, "--wait", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["state"] == "cancelled"


def test_status_without_wait_exits_0_for_a_dead_job(cli: CLI, jobs_app: Conveyor,
                                                    start_worker: Callable[..., WorkerThread]
                                                    ) -> None:
    job_id = cli.enqueue("fail", ["nope"])
    start_worker(jobs_app)
    wait_until(lambda: jobs_app.handle(job_id).info().is_final, what="the job to die")
    assert cli.json("status", job_id)["state"] == "dead"


def test_status_wait_timeout_on_a_job_nobody_runs(cli: CLI) -> None:
    job_id = cli.enqueue("add", [1, 2])
    err = cli.fail("status", job_id, "--wait", "--timeout", "0.5", code=4)
    assert f"job {job_id} is still queued after 0.5s" in err


def test_status_wait_unknown_id_exits_1(cli: CLI) -> None:
    assert "no job with id" in cli.fail("status", "nope", "--wait", "--timeout", "1", code=1)


# -- jobs ---------------------------------------------------------------------------------------
class Seeded:
    """A store shared by the read-only ``jobs`` tests, seeded in-process (quicker)."""

    def __init__(self, tmp: Path) -> None:
        self.cli = CLI(f"sqlite:///{tmp / 'seeded.db'}", tmp)
        app = register(Conveyor(url=self.cli.url))
        try:
            self.add = [app.enqueue("add", i, i).id for i in range(4)]
            self.greet = [app.get_job("greet").enqueue("a").id]
            self.scheduled = [app.enqueue("add", 9, 9, delay=600).id]
            self.add += self.scheduled
            self.greet.append(app.get_job("greet").enqueue("b").id)
        finally:
            app.close()
        self.all = self.add + self.greet


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """5 add jobs (one of them scheduled) and 2 greet jobs in the mail queue."""
    return Seeded(tmp_path_factory.mktemp("seeded"))


def test_jobs_lists_newest_first(seeded: Seeded) -> None:
    listed = seeded.cli.json("jobs")
    ids = [j["id"] for j in listed]
    assert len(ids) == 7 and set(ids) == set(seeded.all)
    assert ids == sorted(ids, reverse=True)
    assert listed[0].keys() >= INFO_KEYS
    assert {j["queue"] for j in listed if j["name"] == "greet"} == {"mail"}


def test_jobs_filters(seeded: Seeded) -> None:
    def ids(*options: str) -> set[str]:
        return {j["id"] for j in seeded.cli.json("jobs", *options)}

    assert ids("--queue", "mail") == set(seeded.greet)
    assert ids("--name", "add") == set(seeded.add)
    assert ids("--state", "scheduled") == set(seeded.scheduled)
    assert ids("--state", "queued", "--name", "add") == set(seeded.add) - set(seeded.scheduled)
    assert ids("--queue", "mail", "--name", "add") == set()
    assert ids("--state", "dead") == set()


def test_jobs_pages_with_limit_and_cursor(seeded: Seeded) -> None:
    everything = sorted(seeded.all, reverse=True)
    pages: list[list[str]] = []
    cursor: list[str] = []
    while True:
        page = [j["id"] for j in seeded.cli.json("jobs", "--limit", "3", *cursor)]
        if not page:
            break
        pages.append(page)
        cursor = ["--cursor", page[-1]]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == everything
    # the cursor combines with filters
    first = [j["id"] for j in seeded.cli.json("jobs", "--name", "add", "--limit", "2")]
    rest = [j["id"] for j in seeded.cli.json("jobs", "--name", "add", "--cursor", first[-1])]
    assert first + rest == [i for i in everything if i in seeded.add]


def test_jobs_table_shows_whole_ids(seeded: Seeded) -> None:
    out = seeded.cli.ok("jobs", COLUMNS="80")  # what a pipe gets
    for job_id in seeded.all:
        assert job_id in out
    assert "scheduled" in out and "mail" in out


def test_jobs_table_prints_user_data_as_is(cli: CLI) -> None:
    job_id = cli.enqueue("[/x]", [], "--force")
    out = cli.ok("jobs")
    assert job_id in out and "[/x]" in out


def test_jobs_empty_store(cli: CLI) -> None:
    assert cli.json("jobs") == []
    assert "id" in cli.ok("jobs")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--state", "finished"], "invalid choice: 'finished'"),
        (["--limit", "0"], "must be at least 1"),
        (["--limit", "x"], "argument --limit: not a whole number: 'x'"),
        (["--url", ""], "argument --url: an empty store URL"),  # not the default, unseen
        (["--url", " "], "argument --url: an empty store URL"),
    ],
)
def test_jobs_bad_options_exit_2(cli: CLI, options: list[str], message: str) -> None:
    assert message in cli.fail("jobs", *options, code=2)
