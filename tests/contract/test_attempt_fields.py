"""What one attempt leaves on a job is gone when the next attempt is claimed or ends: its
error and traceback once a later attempt succeeds, its progress once the job is claimed
again, its mark of a job claimed ahead of a free slot once it is claimed to start; and one
job's end leaves the fields of the others alone."""

from __future__ import annotations

import time
from typing import Any

from conveyor.backends.base import Broker
from conveyor.job import JobRecord, Outcome, OutcomeKind

from .conftest import Run, make_job

LEASE = 30.0


def claim(run: Run[Any], broker: Broker, start: int | None = None) -> JobRecord:
    jobs = run(broker.claim("w1", ["default"], 1, LEASE, start=start))
    assert len(jobs) == 1
    return jobs[0]


def retry_now(run: Run[Any], broker: Broker, job: JobRecord, error: str) -> None:
    now = time.time()
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.RETRY, now, error=error,
                               traceback=f"Traceback: {error}", run_at=now,
                               queue=job.queue, claim=job.claim)]))


def succeed(run: Run[Any], broker: Broker, job: JobRecord) -> None:
    run(broker.settle([Outcome(job.id, "w1", OutcomeKind.SUCCEEDED, time.time(), "null",
                               queue=job.queue, claim=job.claim)]))


def stored(run: Run[Any], broker: Broker, job_id: str) -> JobRecord:
    job = run(broker.get(job_id))
    assert job is not None
    return job


def test_success_clears_the_error_of_an_earlier_attempt(run: Run[Any], broker: Broker) -> None:
    run(broker.enqueue([make_job()], {}))
    first = claim(run, broker)
    retry_now(run, broker, first, "ValueError: boom")
    assert stored(run, broker, first.id).error == "ValueError: boom"
    second = claim(run, broker)
    assert second.id == first.id and second.attempts == 2
    succeed(run, broker, second)
    done = stored(run, broker, first.id)
    assert done.error is None and done.traceback is None and done.result is None


def test_success_keeps_the_errors_of_other_jobs(run: Run[Any], broker: Broker) -> None:
    failing, passing = make_job(), make_job()
    run(broker.enqueue([failing, passing], {}))
    first = claim(run, broker)
    assert first.id == failing.id
    retry_now(run, broker, first, "KeyError: k")
    ok = claim(run, broker)
    assert ok.id == passing.id
    succeed(run, broker, ok)
    assert stored(run, broker, passing.id).error is None
    kept = stored(run, broker, failing.id)
    assert kept.error == "KeyError: k" and kept.traceback == "Traceback: KeyError: k"


def test_a_new_claim_clears_the_progress_of_the_last_attempt(
    run: Run[Any], broker: Broker
) -> None:
    run(broker.enqueue([make_job()], {}))
    first = claim(run, broker)
    run(broker.set_progress("w1", [(first.id, first.claim, 0.5, "half")]))
    assert stored(run, broker, first.id).progress == 0.5
    retry_now(run, broker, first, "RuntimeError")
    again = claim(run, broker)
    assert again.attempts == 2
    job = stored(run, broker, first.id)
    assert job.progress is None and job.progress_message is None


def test_a_job_claimed_ahead_then_handed_back_is_no_suspect(
    run: Run[Any], broker: Broker
) -> None:
    run(broker.enqueue([make_job()], {}))
    ahead = claim(run, broker, start=0)  # claimed ahead of a free slot: not started
    assert not ahead.suspect
    run(broker.settle([Outcome(ahead.id, "w1", OutcomeKind.REQUEUE, time.time(),
                               queue=ahead.queue, claim=ahead.claim)]))
    again = claim(run, broker)
    assert again.id == ahead.id and not again.suspect and again.recoveries == 0
    succeed(run, broker, again)
    assert stored(run, broker, again.id).state.value == "succeeded"
