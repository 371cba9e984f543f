"""Turning the end of an attempt into an :class:`Outcome`: retry, dead set or success."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.bounds import encode_value
from conveyor.errors import PermanentError, RateLimited, Retry
from conveyor.job import JobRecord, Outcome, OutcomeKind
from conveyor.limits import MAX_DEFERRALS
from conveyor.logs import duration, iso_time, json_lines, one_line, plural
from conveyor.serialization import NotSerializable
from conveyor.stored import UNUSABLE

if TYPE_CHECKING:
    from conveyor.functions import JobFunction

log = logging.getLogger("conveyor.worker")

NOT_JSON = "result is not JSON-serializable"
INTERNAL = "internal error in the worker"
#: seconds a job whose name its worker does not know waits for another worker (see unknown)
UNKNOWN_WAIT = 30.0


def _outcome(record: JobRecord, worker_id: str, kind: OutcomeKind, **fields: Any) -> Outcome:
    """The outcome of ``record``'s current attempt (it names the attempt's claim, so a
    store can tell a late copy of it from the outcome of a later attempt)."""
    return Outcome(record.id, worker_id, kind, fields.pop("at", None) or time.time(),
                   queue=record.queue, claim=record.claim, **fields)


def succeeded(record: JobRecord, worker_id: str, result: Any) -> Outcome:
    """A finished attempt; a result that is not JSON (or nests too deep, or holds a lone
    surrogate: see :mod:`conveyor.bounds`) sends the job to the dead set."""
    if result is None:  # most jobs return nothing: no encoding, no checks
        return Outcome(record.id, worker_id, OutcomeKind.SUCCEEDED, time.time(), "null",
                       queue=record.queue, claim=record.claim)
    try:
        result_json = encode_value(result, "the result")
    except NotSerializable as exc:
        return _outcome(record, worker_id, OutcomeKind.DEAD,
                        error=f"{NOT_JSON}: {exc}")
    return _outcome(record, worker_id, OutcomeKind.SUCCEEDED, result_json=result_json)


def dead(record: JobRecord, worker_id: str, error: str, tb: str | None = None) -> Outcome:
    """Give up on the job now."""
    return _outcome(record, worker_id, OutcomeKind.DEAD, error=error, traceback=tb)


def unknown(record: JobRecord, worker_id: str) -> Outcome:
    """A job whose name this worker does not register (a producer deployed before this
    worker, which still serves the job's queue): handed back, uncharged, to wait
    :data:`UNKNOWN_WAIT` seconds for a worker that knows it, as a deferral (at most
    :data:`MAX_DEFERRALS` in all); after that, dead."""
    error = f"no job named {record.name!r} is registered in worker {worker_id}"
    if record.deferrals < MAX_DEFERRALS:
        now = time.time()
        return _outcome(record, worker_id, OutcomeKind.RETRY, at=now, error=error,
                        run_at=now + UNKNOWN_WAIT, deferred=True, unrun=True)
    return dead(record, worker_id, f"{error} (deferred {MAX_DEFERRALS} times)")


def cancelled(record: JobRecord, worker_id: str) -> Outcome:
    """The job was cancelled while it ran."""
    return _outcome(record, worker_id, OutcomeKind.CANCELLED, error="cancelled while running")


def requeued(record: JobRecord, worker_id: str) -> Outcome:
    """Shutdown interrupted the attempt: back to the queue, the attempt not charged."""
    return _outcome(record, worker_id, OutcomeKind.REQUEUE,
                    error="interrupted by worker shutdown; requeued")


def _gave_up(failures: int) -> str:
    return f" (gave up after {plural(failures, 'attempt')})"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed(
    record: JobRecord,
    worker_id: str,
    job_fn: JobFunction[..., Any],
    exc: BaseException,
    *,
    error: str | None = None,
    tb: str | None = None,
    permanent: bool | None = None,
    retry_delay: float | None = None,
    rate_limited: bool | None = None,
) -> Outcome:
    """A failed attempt: retry after a backoff while retries remain, else the dead set.

    A job that raised :class:`RateLimited` goes back to wait its ``retry_after`` without
    charging the attempt, at most :data:`MAX_DEFERRALS` times; after that it fails as
    any other error, retried after ``retry_after``. So does a process job whose child ended
    it when its worker froze (:attr:`~conveyor.job.Outcome.froze`; ``rate_limited`` given), at once.

    ``error``, ``tb``, ``permanent``, ``retry_delay`` and ``rate_limited`` override what is
    read off ``exc`` (the process executor reports them from the child).
    """
    error = error or _describe(exc)
    if tb is None:
        tb = "".join(traceback.format_exception(exc))
    if permanent is None:
        permanent = isinstance(exc, (PermanentError, *job_fn.options.permanent_errors))
    if retry_delay is None and isinstance(exc, Retry):
        retry_delay = exc.delay
    if rate_limited is None:
        rate_limited = isinstance(exc, RateLimited)
        if isinstance(exc, RateLimited):
            retry_delay = exc.retry_after
    horizon = job_fn.app.max_delay
    if rate_limited and not permanent and record.deferrals < MAX_DEFERRALS:
        now = time.time()
        return _outcome(record, worker_id, OutcomeKind.RETRY, at=now, error=error,
                        traceback=tb, run_at=now + _wait(retry_delay or 0.0, horizon),
                        deferred=True)
    if permanent:
        return dead(record, worker_id, error, tb)
    failures = record.attempts - record.recoveries
    if failures > job_fn.options.retries:
        return dead(record, worker_id, f"{error}{_gave_up(failures)}", tb)
    now = time.time()
    delay = retry_delay if retry_delay is not None else job_fn.options.backoff(failures)
    return _outcome(record, worker_id, OutcomeKind.RETRY, at=now, error=error, traceback=tb,
                    run_at=now + _wait(delay, horizon))


def _wait(delay: float, horizon: float) -> float:
    """A retry's delay within ``[0, horizon]`` (NaN: 0; past the app's ``max_delay``, or
    infinite: the horizon)."""
    try:
        seconds = float(delay)
    except (TypeError, ValueError, OverflowError):
        return horizon if isinstance(delay, int) and delay > 0 else 0.0
    return min(max(0.0, seconds), horizon) if seconds == seconds else 0.0


# -- log lines ----------------------------------------------------------------------------------
def _fields(record: JobRecord, worker_id: str, **more: Any) -> dict[str, Any]:
    """The structured fields of a job's log record (see :data:`conveyor.logs.FIELDS`); the
    attempt is counted as retries count it (recoveries aside), as the message says."""
    return {"job_id": record.id, "job_name": record.name, "queue": record.queue,
            "attempt": record.attempts - record.recoveries, "worker_id": worker_id, **more}


def _dead_reason(record: JobRecord, error: str,
                 job_fn: JobFunction[..., Any] | None) -> tuple[str, str]:
    """Why the attempt sent the job to the dead set, and its error without the tally."""
    if error.startswith(UNUSABLE):
        return "its stored arguments cannot be passed to it", error
    if job_fn is None:
        return "no job of that name is registered in this worker", error
    if error.startswith(NOT_JSON):
        return "its result is not JSON-serializable", error
    if error.startswith(INTERNAL):
        return "internal error in the worker", error
    suffix = _gave_up(record.attempts - record.recoveries)
    timed_out = error.startswith("JobTimeout")
    if error.endswith(suffix):
        return ("timed out, retries exhausted" if timed_out else "retries exhausted",
                error[: -len(suffix)])
    return ("timed out (a permanent error for this job)" if timed_out
            else "permanent error"), error


def log_end(record: JobRecord, outcome: Outcome, job_fn: JobFunction[..., Any] | None,
            started: bool = True) -> None:
    """Log the end of an attempt once the worker has its outcome for the store: a failed
    attempt (WARNING), a job gone dead (ERROR, its traceback in the JSON record's
    ``traceback`` field and, in text, on a DEBUG line of its own), a cancelled one (INFO), a
    success (DEBUG). Shutdown requeues are logged by the drain."""
    kind, worker_id = outcome.kind, outcome.worker_id
    if kind is OutcomeKind.REQUEUE or (kind is OutcomeKind.SUCCEEDED
                                       and not log.isEnabledFor(logging.DEBUG)):
        return  # the common case costs one check
    failures = record.attempts - record.recoveries
    allowed = job_fn.options.retries + 1 if job_fn is not None else None
    tally = f"attempt {failures} of {allowed}" if allowed else f"attempt {failures}"
    if kind is OutcomeKind.SUCCEEDED:
        log.debug("job %s (%s) succeeded (%s)", record.id, record.name, tally,
                  extra=_fields(record, worker_id))
    elif kind is OutcomeKind.RETRY:
        run_at = outcome.run_at or outcome.finished_at
        wait = run_at - outcome.finished_at
        when = f"retrying in {duration(wait)}" if wait >= 0.05 else "retrying now"
        if wait >= 60:
            when += f" (at {iso_time(run_at)})"
        fields = _fields(record, worker_id, max_attempts=allowed, error=outcome.error,
                         next_run_at=iso_time(run_at))
        if outcome.unrun:
            log.warning("job %s (%s) is not registered in this worker: handed back for a "
                        "worker that knows it, %s (not charged; deferred %d of %d times)",
                        record.id, record.name, when, record.deferrals + 1, MAX_DEFERRALS,
                        extra=fields)
        elif outcome.deferred:
            froze = outcome.froze
            log.log(logging.WARNING if froze else logging.INFO,
                    "job %s (%s) %s, %s (not charged; deferred %d of %d times): %s",
                    record.id, record.name, "was ended in its process as its worker froze"
                    if froze else "was rate limited upstream", when, record.deferrals + 1,
                    MAX_DEFERRALS, one_line(outcome.error or ""), extra=fields)
        elif (outcome.error or "").startswith(f"{Retry.__name__}:"):  # asked for
            log.info("job %s (%s) asked to run again, %s; %s", record.id, record.name, tally,
                     when, extra=fields)
        else:
            log.warning("job %s (%s) failed, %s: %s; %s", record.id, record.name, tally,
                        one_line(outcome.error or ""), when, extra=fields)
    elif kind is OutcomeKind.DEAD:
        reason, error = _dead_reason(record, outcome.error or "", job_fn)
        log.error("job %s (%s) is dead after %s: %s: %s", record.id, record.name, tally,
                  reason, one_line(error),
                  extra=_fields(record, worker_id, max_attempts=allowed, error=error,
                                reason=reason, traceback=outcome.traceback))
        if outcome.traceback and not json_lines():  # JSON: in the record above
            log.debug("traceback of job %s (%s), %s:\n%s", record.id, record.name, tally,
                      outcome.traceback.rstrip(), extra=_fields(record, worker_id))
    elif kind is OutcomeKind.CANCELLED:
        log.info("job %s (%s) cancelled %s (attempt %d)", record.id, record.name,
                 "while running" if started else "before it started", failures,
                 extra=_fields(record, worker_id))


#: per fate of a recovered job: log level, and what happened to it
_RECOVERED = {
    "charged": (logging.WARNING, "its worker was lost while it ran (lease lapsed): "
                "back in the queue, charged a recovery (at most {max})"),
    "uncharged": (logging.WARNING, "its lease lapsed before it started or while its worker "
                  "lived: back in the queue, uncharged"),
    "dead": (logging.ERROR, "its worker was lost while it ran (lease lapsed): dead, too many "
             "recoveries (its workers were lost {max})"),
    "cancelled": (logging.INFO, "its worker was lost (lease lapsed): cancelled, as asked"),
}


def log_recovery(jobs: Sequence[tuple[str, str, str]], max_recoveries: int,
                 names: Mapping[str, str]) -> None:
    """Log each job one lease recovery moved, ``(job id, queue, fate)``: taken back from a
    lost worker and requeued (charged or not), sent to the dead set, or cancelled; ``names``
    holds the names of those it could read."""
    for job_id, queue, fate in jobs:
        level, text = _RECOVERED.get(fate, (logging.WARNING, "recovered ({fate})"))
        message = text.format(max=plural(max_recoveries, "time"), fate=fate)
        name = names.get(job_id)
        log.log(level, "job %s%s in queue %s: %s", job_id, f" ({name})" if name else "",
                queue, message, extra={"job_id": job_id, "job_name": name, "queue": queue,
                                       "reason": f"recovered: {fate}"})
