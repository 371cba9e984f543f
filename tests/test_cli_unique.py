"""``conveyor enqueue --unique-key KEY [--unique-for SECONDS]`` as a real subprocess on a
SQLite file: a held key prints the holding job's id, says so on stderr and exits 0."""

from __future__ import annotations

import pytest

from clijobs import CLI, publish
from conveyor import Conveyor


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    publish(cli.url)


def test_a_held_key_prints_the_holder_and_says_so(cli: CLI, jobs_app: Conveyor) -> None:
    first = cli("enqueue", "add", "--args", "[1, 2]", "--unique-key", "sync:user:42")
    assert first.returncode == 0 and "deduplicated" not in first.stderr, first.stderr
    job_id = first.stdout.strip()
    again = cli("enqueue", "add", "--args", "[3, 4]", "--unique-key", "sync:user:42",
                "--unique-for", "60")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == job_id
    assert f"deduplicated: job {job_id} holds unique key sync:user:42" in again.stderr
    info = cli.json("enqueue", "add", "--args", "[5, 6]", "--unique-key", "sync:user:42")
    assert info["id"] == job_id and info["args"] == [1, 2]
    assert [r.id for r in jobs_app.run_sync(jobs_app.broker.list_jobs())] == [job_id]
    jobs_app.cancel(job_id)
    freed = cli("enqueue", "add", "--args", "[1, 2]", "--unique-key", "sync:user:42")
    assert freed.returncode == 0 and freed.stdout.strip() != job_id


def test_unique_for_needs_a_key_and_a_positive_time(cli: CLI) -> None:
    assert "unique_for needs a unique_key" in cli.fail("enqueue", "add", "--args", "[1]",
                                                       "--unique-for", "5", code=2)
    assert "unique_for must be a positive" in cli.fail(
        "enqueue", "add", "--args", "[1]", "--unique-key", "k", "--unique-for", "0", code=2)
