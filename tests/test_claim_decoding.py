"""The records a claim reply decodes to, field by field, for every shape of the reply.

``claimed_jobs`` builds records with positional arguments in JobRecord's field order: a
change of that order must fail here, not mislabel a field."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest

from conveyor.backends.redis import codec
from conveyor.backends.redis.keys import group_of_lane
from conveyor.job import JobRecord, JobState

STARTED, LEASE = 1764200001.25, 1764200031.25
SPEC = {"id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "name": "tasks.mail", "queue": "mail",
        "args": [1, "ü", {"k": [None, True]}], "kwargs": {"to": "a@b.c", "n": 2.5},
        "created_at": 1764200000.5, "run_at": 1764200000.75}
LANES = ["", "0:", "4:acme", "3:héllo"]  # none, the empty group, groups (bytes of a prefix)


def expected(run_at: str, attempts: str, recoveries: str, suspect: str, priority: str,
             deferrals: Any, lane: str, claim: Any) -> JobRecord:
    """The record as a keyword-built JobRecord, from the reply's values."""
    return JobRecord(
        id=SPEC["id"], name=SPEC["name"], queue=SPEC["queue"], state=JobState.RUNNING,
        args=SPEC["args"], kwargs=SPEC["kwargs"], created_at=SPEC["created_at"],
        run_at=float(run_at) if run_at else SPEC["run_at"],
        attempts=int(attempts), recoveries=int(recoveries), started_at=STARTED,
        worker_id="w1", lease_expires_at=LEASE, suspect=suspect == "1",
        priority=int(priority.split(" ")[0]) if priority else 0,
        deferrals=int(deferrals or 0), group=group_of_lane(lane) if lane else None,
        claim=int(claim))


COMBINATIONS = list(itertools.product(
    ["", "1764200100.5"],  # run_at: as enqueued, or moved
    ["1", "3"], ["0", "2"],  # attempts, recoveries
    ["0", "1"],  # suspect
    ["", "5 0", "-10 1.5"],  # priority field
    ["", "0", "4", 0, 7],  # deferrals (as text, or a number from the script)
    LANES,
    [1, 12],  # claim number (a number from the script)
))


def as_dict(record: JobRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


@pytest.mark.parametrize("lane", LANES)
def test_claimed_records_match_keyword_built_ones_field_by_field(lane: str) -> None:
    rows = [c for c in COMBINATIONS if c[-2] == lane]
    reply: list[Any] = [str(STARTED), str(LEASE), "", []]
    for row in rows:
        reply += [json.dumps(SPEC, separators=(",", ":")), *row]
    records = codec.claimed_jobs(reply, "w1")
    assert len(records) == len(rows)
    for row, record in zip(rows, records, strict=True):
        want = as_dict(expected(*row))
        got = as_dict(record)
        for name in want:  # one by one: compare=False fields too, and a clear message
            assert (name, got[name]) == (name, want[name]), row
            assert type(got[name]) is type(want[name]), (name, row)


def test_a_reply_without_jobs_is_empty() -> None:
    assert codec.claimed_jobs([str(STARTED), str(LEASE), "", []], "w1") == []
    assert codec.claimed_jobs([], "w1") == []


@pytest.mark.parametrize("text", ["{oops", "oops", ""])
def test_a_job_that_is_not_json_reads_as_an_odd_record_beside_the_plain_ones(text: str) -> None:
    """A claimed job whose JSON a hand left odd does not stop the claim's other jobs from
    being read (they would be held, never run): it reads with its text as its arguments,
    which a worker ends as dead (see conveyor.stored)."""
    fields = ["", "1", "0", "0", "", "0", "", 7]
    reply: list[Any] = [str(STARTED), str(LEASE), "", [], text, *fields,
                        json.dumps(SPEC, separators=(",", ":")), *fields]
    odd, read = codec.claimed_jobs(reply, "w1")
    assert (odd.args, odd.kwargs, odd.state, odd.claim, odd.worker_id) == \
        (text, None, JobState.RUNNING, 7, "w1")
    assert (read.id, read.args, read.claim) == (SPEC["id"], SPEC["args"], 7)
