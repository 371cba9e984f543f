"""``conveyor enqueue --priority``, ``conveyor priority`` and ``conveyor worker --queues
a:N,b:M`` / ``--strict``, as real subprocesses on a SQLite file."""

from __future__ import annotations

import pytest

from clijobs import CLI, publish, stop
from conveyor import Conveyor
from polling import wait_until


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    publish(cli.url)


def test_enqueue_with_a_priority_and_change_it(cli: CLI) -> None:
    job_id = cli.enqueue("add", [1, 2], "--priority", "4", "--delay", "3600")
    assert cli.json("status", job_id)["priority"] == 4
    assert cli.ok("priority", job_id, "-3").strip() == f"{job_id} priority -3 (scheduled)"
    assert cli.json("status", job_id)["priority"] == -3
    assert "priority  -3" in cli.ok("status", job_id)
    assert cli.json("priority", job_id, "10")["priority"] == 10


@pytest.mark.parametrize("bad", ["11", "-11", "1.5", "high"])
def test_a_wrong_priority_is_one_line_and_exit_2(cli: CLI, bad: str) -> None:
    err = cli.fail("enqueue", "add", "--args", "[1, 2]", "--priority", bad, code=2)
    assert "a priority is a whole number from -10 to 10" in err
    job_id = cli.enqueue("add", [1, 2], "--delay", "3600")
    err = cli.fail("priority", job_id, bad, code=2)
    assert "a priority is a whole number from -10 to 10" in err
    assert cli.json("status", job_id)["priority"] == 0


def test_priority_of_a_final_or_missing_job_exits_1(cli: CLI) -> None:
    job_id = cli.enqueue("add", [1, 2])
    cli.ok("cancel", job_id)
    err = cli.fail("priority", job_id, "2", code=1)
    assert f"job {job_id} is already cancelled; only a waiting job's priority can change" in err
    err = cli.fail("priority", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "2", code=1)
    assert "no job with id 01ARZ3NDEKTSV4RRFFQ69G5FAV" in err


def test_a_weighted_worker_takes_its_queues(cli: CLI, db_url: str) -> None:
    ids = [cli.enqueue("greet", [f"n{k}"]) for k in range(3)]
    ids += [cli.enqueue("add", [k, k]) for k in range(3)]
    proc = cli.start_worker("--queues", "mail:3,default:1")
    reader = Conveyor(url=db_url)
    try:
        wait_until(lambda: all(reader.handle(i).info().is_final for i in ids),
                   what="the weighted worker to run both queues")
    finally:
        reader.close()
        code, err = stop(proc)
    assert code == 0, err


@pytest.mark.parametrize(("argv", "message"), [
    (("--strict",), "--strict needs --queues"),
    (("--queues", "a:2,b", "--strict"), "give no weights"),
    (("--queues", "a,a"), "queue 'a' is given twice"),
    (("--queues", "a:0"), "the weight of queue 'a' must be at least 1"),
])
def test_wrong_queue_weights_are_one_line_and_exit_2(cli: CLI, argv: tuple[str, ...],
                                                     message: str) -> None:
    err = cli.fail("worker", "clijobs:app", *argv, code=2)
    assert message in err and "Traceback" not in err
