"""Per-call options travel as one value: ``job_id`` on every Python path, a typed
``DuplicateJob``, bulk ids, and a ``JobFunction`` that a type checker checks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, DuplicateJob, InvalidArguments, JobNotFound, JobState
from conveyor.options import EnqueueOptions


def test_job_id_on_single_and_async_enqueues(app: Conveyor) -> None:
    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    assert add.enqueue_with((1, 2), job_id="sum-1").id == "sum-1"
    with pytest.raises(DuplicateJob) as raised:
        add.enqueue_with((3, 4), job_id="sum-1")
    assert raised.value.job_id == "sum-1"
    assert app.handle("sum-1").info().args == [1, 2]
    options = EnqueueOptions(job_id="sum-2", delay=60)
    handle = asyncio.run(add.enqueue_with_async((5, 6), options=options))
    assert handle.id == "sum-2" and handle.info().state is JobState.SCHEDULED
    assert app.enqueue_call("add", [1, 1], {}, job_id="sum-3").id == "sum-3"
    with pytest.raises(InvalidArguments, match="keyword options, not both"):
        app.enqueue_call("add", [1, 1], {}, EnqueueOptions(), job_id="x")


def test_bulk_ids_are_all_or_none(app: Conveyor) -> None:
    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    handles = add.enqueue_many([(1, 1), (2, 2)], job_ids=["b-1", "b-2"])
    assert [h.id for h in handles] == ["b-1", "b-2"]
    with pytest.raises(DuplicateJob) as raised:
        add.enqueue_many([(3, 3), (4, 4)], job_ids=["b-3", "b-2"])
    assert raised.value.job_id == "b-2"
    with pytest.raises(DuplicateJob, match="twice"):
        add.enqueue_many([(3, 3), (4, 4)], job_ids=["b-4", "b-4"])
    with pytest.raises(InvalidArguments, match="2 ids for 3 items"):
        add.enqueue_many([(3, 3), (4, 4), (5, 5)], job_ids=["b-5", "b-6"])
    with pytest.raises(InvalidArguments, match="job_ids"):
        add.enqueue_many([(3, 3)], job_id="b-7")
    for job_id in ("b-3", "b-4", "b-5", "b-7"):
        with pytest.raises(JobNotFound):
            app.handle(job_id).info()


TYPED = '''
from conveyor import Conveyor, JobContext

app = Conveyor("memory://")


@app.job
def add(x: int, y: int) -> int:
    return x + y


@app.job(retries=1)
async def fetch(ctx: JobContext, url: str) -> bytes:
    return b""


reveal_type(add.enqueue(1, 2).result())
reveal_type(fetch.enqueue("https://example.com").result())
add.enqueue("one", 2)
fetch.enqueue(url=3)
add.enqueue_with((1, 2), delay=5, job_id="a")
'''


def test_a_type_checker_checks_enqueue_calls_and_results(tmp_path: Path) -> None:
    source = tmp_path / "typed_jobs.py"
    source.write_text(TYPED)
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True, text=True, timeout=300)
    lines = found.stdout.splitlines()
    assert any('Revealed type is "int"' in line for line in lines), found.stdout
    assert any('Revealed type is "bytes"' in line for line in lines), found.stdout
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 2, found.stdout
    assert ':19: error: Argument 1 to "enqueue" of "JobFunction" has incompatible type "str"' \
        in errors[0]
    assert ':20: error: Argument "url" to "enqueue" of "JobFunction" has incompatible type' \
        in errors[1]


def test_a_plain_call_builds_the_record_the_general_way_builds(app: Conveyor) -> None:
    """``build`` makes a plain call's record on a short path: every field but the id must be
    what the general path (any options object that is not the shared default) makes."""
    import dataclasses

    @app.job(queue="mail", priority=3)
    def send(to: str, n: int = 1) -> None:
        """Nothing to do."""

    plain = app.build("send", ["a@b"], {"n": 2}, now=1000.0)
    general = app.build("send", ["a@b"], {"n": 2}, EnqueueOptions(), now=1000.0)
    assert plain.id != general.id
    fields = [f.name for f in dataclasses.fields(plain) if f.name != "id"]
    assert [getattr(plain, f) for f in fields] == [getattr(general, f) for f in fields]
    assert (plain.queue, plain.priority, plain.state) == ("mail", 3, JobState.QUEUED)
