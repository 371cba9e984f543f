"""Contract: a listing of summaries cuts the long fields in the store, the same way on every
backend, and a cut value never passes for a whole one."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from conveyor.backends.base import Broker
from conveyor.job import JobRecord, JobState, Outcome, OutcomeKind
from conveyor.serialization import dumps
from conveyor.summary import summarize

from .conftest import Run, make_job

PREVIEW = 20


def _nested(value: Any, depth: int) -> Any:
    """``value`` wrapped ``depth`` times in ``{"b": 0, "kwargs": ...}``."""
    for _ in range(depth):
        value = {"b": 0, "kwargs": value}
    return value

#: arguments whose text holds the keys the stores look for, nested, in strings, and
#: characters of 1 to 4 bytes in UTF-8
ODD_CALLS: list[tuple[list[Any], dict[str, Any]]] = [
    ([1, 2], {}),
    (["x" * 1000], {"a": "é" * 500}),
    ([{"a": 1, "kwargs": {"b": 2}}], {"c": [1], "kwargs": {}}),
    ([{"a": 1, "kwargs": 3}, ',"kwargs":{', '","unique_key":"'], {"d": {"x": 1, "kwargs": []}}),
    (["日本" * 300, "\U0001f600" * 30], {}),
    ([], {"k": "\U0001f600" * PREVIEW}),
    ([',"created_at":1', {"z": ',"created_at":2,"run_at":3}'}], {"e": ',"args":[]'}),
    ([{"a": 1, "created_at": 2, "unique_key": "u"}],
     {"a": 1, "created_at": 2, "run_at": 3, "unique_key": "v", "args": [1]}),
    (["\\", '\\"]', '"}{[', {"k": ['\\\\"', ',"kwargs":{}']}], {"kwargs": {"kwargs": "]"}}),
    # the key the stores look for at every level of a big argument
    ([_nested("x" * 1_000_000, 62)], {"kwargs": _nested(1, 3)}),
]


def _stored(run: Run[Any], broker: Broker, jobs: list[JobRecord]) -> None:
    assert run(broker.enqueue(jobs, {})) == [None] * len(jobs)


@pytest.mark.parametrize("call", ODD_CALLS, ids=range(len(ODD_CALLS)))
@pytest.mark.parametrize("unique", [None, 'k,"unique_key":"\\"'])
def test_summary_is_the_whole_job_cut(broker: Broker, run: Run[Any],
                                      call: tuple[list[Any], dict[str, Any]],
                                      unique: str | None) -> None:
    """Every field of a summary is the whole job's, the long ones cut as ``summarize`` cuts
    them from the whole record."""
    job = dataclasses.replace(make_job(args=call[0], kwargs=call[1]), unique_key=unique)
    _stored(run, broker, [job])
    whole = run(broker.get(job.id))
    assert whole is not None
    [summary] = run(broker.list_summaries(preview=PREVIEW))
    expected = summarize(whole, PREVIEW)
    assert summary.record == expected.record
    assert summary.record.unique_key == unique
    assert summary.previews == expected.previews
    assert summary.truncated == expected.truncated
    for name, value in (("args", call[0]), ("kwargs", call[1])):
        text = dumps(value)
        if len(text) > PREVIEW:
            assert summary.previews[name] == text[:PREVIEW]
            assert name in summary.truncated
        else:
            assert getattr(summary.record, name) == value
            assert name not in summary.truncated


def test_results_errors_and_progress_are_cut(broker: Broker, run: Run[Any]) -> None:
    """A long result, error, traceback and progress message are cut; short ones are whole."""
    long_job, short_job = make_job(), make_job()
    _stored(run, broker, [long_job, short_job])
    claimed = run(broker.claim("w1", ["default"], 2, 30.0))
    assert len(claimed) == 2
    attempt = {job.id: job.claim for job in claimed}
    run(broker.set_progress("w1", [(long_job.id, attempt[long_job.id], 0.5, "ü" * 500)]))
    now = time.time()
    run(broker.settle([
        Outcome(long_job.id, "w1", OutcomeKind.DEAD, now, error="E" * 300,
                traceback="T" * 5000),
        Outcome(short_job.id, "w1", OutcomeKind.SUCCEEDED, now, result_json=dumps({"ok": 1})),
    ]))
    by_id = {s.record.id: s for s in run(broker.list_summaries(preview=PREVIEW))}
    cut, whole = by_id[long_job.id], by_id[short_job.id]
    assert cut.record.state is JobState.DEAD
    assert cut.record.error == "E" * PREVIEW
    assert cut.record.traceback == "T" * PREVIEW
    assert cut.record.progress == 0.5
    assert cut.record.progress_message == "ü" * PREVIEW
    assert set(cut.truncated) == {"error", "traceback", "progress_message"}
    assert whole.record.result == {"ok": 1}
    assert whole.truncated == () and whole.previews == {}
    # the whole job is still there
    full = run(broker.get(long_job.id))
    assert full is not None and full.traceback == "T" * 5000


def test_long_result_is_a_preview(broker: Broker, run: Run[Any]) -> None:
    job = make_job()
    _stored(run, broker, [job])
    run(broker.claim("w1", ["default"], 1, 30.0))
    result = {"rows": list(range(1000))}
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.SUCCEEDED, time.time(),
                               result_json=dumps(result))]))
    [summary] = run(broker.list_summaries(preview=PREVIEW))
    assert summary.record.result is None
    assert summary.previews == {"result": dumps(result)[:PREVIEW]}
    assert summary.truncated == ("result",)


def test_summaries_page_like_jobs(broker: Broker, run: Run[Any]) -> None:
    """The same jobs, in the same order, with the same filters and cursor as list_jobs."""
    jobs = [make_job(queue="a" if i % 2 else "b", name=f"n{i % 3}", args=["x" * 100])
            for i in range(30)]
    _stored(run, broker, jobs)
    for filters in ({}, {"queue": "a"}, {"name": "n1"}, {"state": JobState.QUEUED}):
        first = run(broker.list_jobs(limit=7, **filters))
        assert [s.record.id for s in run(broker.list_summaries(limit=7, **filters))] == \
            [r.id for r in first]
        rest = run(broker.list_jobs(limit=100, cursor=first[-1].id, **filters))
        summaries = run(broker.list_summaries(limit=100, cursor=first[-1].id, **filters))
        assert [s.record.id for s in summaries] == [r.id for r in rest]
