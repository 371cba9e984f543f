"""Turning the end of an attempt into an :class:`Outcome`: retry, dead set or success."""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any

from conveyor.errors import PermanentError, Retry
from conveyor.job import JobRecord, Outcome, OutcomeKind
from conveyor.serialization import NotSerializable, dumps

if TYPE_CHECKING:
    from conveyor.functions import JobFunction


def _outcome(record: JobRecord, worker_id: str, kind: OutcomeKind, **fields: Any) -> Outcome:
    """The outcome of ``record``'s current attempt (it names the attempt, so a store can
    tell a late copy of it from the outcome of a later attempt)."""
    return Outcome(record.id, worker_id, kind, fields.pop("at", None) or time.time(),
                   queue=record.queue, attempt=record.attempts, **fields)


def succeeded(record: JobRecord, worker_id: str, result: Any) -> Outcome:
    """A finished attempt; a result that is not JSON sends the job to the dead set."""
    try:
        result_json = dumps(result)
    except NotSerializable as exc:
        return _outcome(record, worker_id, OutcomeKind.DEAD,
                        error=f"result is not JSON-serializable: {exc}")
    return _outcome(record, worker_id, OutcomeKind.SUCCEEDED, result_json=result_json)


def dead(record: JobRecord, worker_id: str, error: str, tb: str | None = None) -> Outcome:
    """Give up on the job now."""
    return _outcome(record, worker_id, OutcomeKind.DEAD, error=error, traceback=tb)


def cancelled(record: JobRecord, worker_id: str) -> Outcome:
    """The job was cancelled while it ran."""
    return _outcome(record, worker_id, OutcomeKind.CANCELLED, error="cancelled while running")


def requeued(record: JobRecord, worker_id: str) -> Outcome:
    """Shutdown interrupted the attempt: back to the queue, the attempt not charged."""
    return _outcome(record, worker_id, OutcomeKind.REQUEUE,
                    error="interrupted by worker shutdown; requeued")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed(
    record: JobRecord,
    worker_id: str,
    job_fn: JobFunction,
    exc: BaseException,
    *,
    error: str | None = None,
    tb: str | None = None,
    permanent: bool | None = None,
    retry_delay: float | None = None,
) -> Outcome:
    """A failed attempt: retry after a backoff while retries remain, else the dead set.

    ``error``, ``tb``, ``permanent`` and ``retry_delay`` override what is read off ``exc``
    (the process executor reports them from the child).
    """
    error = error or _describe(exc)
    if tb is None:
        tb = "".join(traceback.format_exception(exc))
    if permanent is None:
        permanent = isinstance(exc, (PermanentError, *job_fn.options.permanent_errors))
    if retry_delay is None and isinstance(exc, Retry):
        retry_delay = exc.delay
    if permanent:
        return dead(record, worker_id, error, tb)
    failures = record.attempts - record.recoveries
    if failures > job_fn.options.retries:
        return dead(record, worker_id, f"{error} (gave up after {failures} attempts)", tb)
    now = time.time()
    delay = retry_delay if retry_delay is not None else job_fn.options.backoff(failures)
    return _outcome(record, worker_id, OutcomeKind.RETRY, at=now, error=error, traceback=tb,
                    run_at=now + max(0.0, delay))
