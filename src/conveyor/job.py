"""Job records, states, options and outcomes: pure data, no I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from conveyor.bounds import readable
from conveyor.serialization import dumps


class JobState(StrEnum):
    """The states of a job, named the same in Python, the CLI, HTTP and the dashboard."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


WAITING_STATES = (JobState.QUEUED, JobState.SCHEDULED)
FINAL_STATES = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)
ALL_STATES = tuple(JobState)


#: what :func:`iso` shows for a time past the last (or before the first) a datetime holds
LATEST = "9999-12-31T23:59:59Z"
EARLIEST = "0001-01-01T00:00:00Z"


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string (``None`` stays ``None``).

    Never raises: a time out of a datetime's range (a record written by an older version
    or straight into the store) shows as :data:`LATEST` or :data:`EARLIEST`, NaN or a
    value that is not a number as ``None``."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError, TypeError):
        if not isinstance(ts, int | float) or math.isnan(ts):
            return None
        return LATEST if ts > 0 else EARLIEST


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else ``None`` (strict JSON has no NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return value if math.isfinite(value) else None
        except OverflowError:
            return None
    return None


@dataclass(slots=True)
class JobRecord:
    """Everything stored about one job. Timestamps are seconds since the epoch."""

    id: str
    name: str
    queue: str
    state: JobState
    args: list[Any]
    kwargs: dict[str, Any]
    created_at: float
    run_at: float
    attempts: int = 0
    recoveries: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    expires_at: float | None = None
    #: -10 .. 10, higher runs sooner (see :mod:`conveyor.priority`)
    priority: int = 0
    #: the job's group when its name has limits (see :mod:`conveyor.limits`): ``""``
    #: without ``group_by``; ``None``: a job without limits (set at enqueue only)
    group: str | None = None
    #: times the job was put back uncharged after raising RateLimited
    deferrals: int = 0
    #: set by a claim: the job ran before in a worker that was lost (``recoveries``), or was
    #: held by one unstarted and may have started just before it died; it runs alone
    suspect: bool = field(default=False, compare=False)
    #: set by a claim: the number it took from the namespace's claim counter, which only
    #: grows (unlike ``attempts``, which an uncharged attempt gives back), so it tells this
    #: attempt from any other of the job, even of the same worker: the fencing token that
    #: the attempt's outcome, heartbeats, start mark and progress carry. 0 in records read
    #: otherwise.
    claim: int = field(default=0, compare=False)
    #: while this job is not final (and until ``unique_until``, if set) another enqueue with
    #: the same key stores nothing (see ``EnqueueOptions.unique_key``); set at enqueue only
    unique_key: str | None = field(default=None, compare=False)
    unique_until: float | None = field(default=None, compare=False)
    #: ``(args, kwargs)`` as JSON text, made once at enqueue time and reused by the backend
    payload: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        """True once the job has succeeded, died or been cancelled."""
        return self.state in FINAL_STATES

    def encoded(self) -> tuple[str, str]:
        """``(args, kwargs)`` as JSON text."""
        if self.payload is None:
            self.payload = (dumps(self.args), dumps(self.kwargs))
        return self.payload

    def to_dict(self) -> dict[str, Any]:
        """The job's info as JSON-ready data, the same shape the CLI and HTTP API print."""
        return {
            "id": self.id,
            "name": self.name,
            "queue": self.queue,
            "state": str(self.state),
            "priority": self.priority,
            "group": self.group,
            "attempts": self.attempts,
            "deferrals": self.deferrals,
            "recoveries": self.recoveries,
            "args": readable(self.args),
            "kwargs": readable(self.kwargs),
            "result": readable(self.result),
            "error": self.error,
            "traceback": self.traceback,
            "progress": finite(self.progress),
            "progress_message": self.progress_message,
            "worker_id": self.worker_id,
            "cancel_requested": self.cancel_requested,
            "created_at": iso(self.created_at),
            "run_at": iso(self.run_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "expires_at": iso(self.expires_at),
            "unique_key": self.unique_key,
        }


#: the type name of the error of a process job that its child ended when its worker froze
#: (see :class:`conveyor.worker.process_pool.WorkerFroze`): the error reads ``WorkerFroze: …``
FROZE = "WorkerFroze"


class OutcomeKind(StrEnum):
    """What a worker reports when an attempt ends."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"  # back to scheduled at ``run_at``
    DEAD = "dead"
    CANCELLED = "cancelled"
    REQUEUE = "requeue"  # shutdown: back to queued now, the attempt not charged


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, as the worker hands it to the backend."""

    job_id: str
    worker_id: str
    kind: OutcomeKind
    finished_at: float
    result_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    run_at: float | None = None
    #: the job's queue, when the worker knows it (saves a backend a look-up)
    queue: str | None = None
    #: the claim whose attempt this ends (the job's :attr:`JobRecord.claim`), when known:
    #: the store applies the outcome only while that claim is the job's latest, so a copy
    #: written again (after a lost reply) never ends a later attempt
    claim: int | None = None
    #: with RETRY: the attempt is not charged (``attempts`` back by one) and the job's
    #: ``deferrals`` grow by one (a job that raised RateLimited, one its worker does not
    #: register, or a process job its child ended when its worker froze: see :attr:`froze`)
    deferred: bool = False
    #: the job did not run: its worker does not register its name and handed it back (no
    #: attempt started or ended, in the counts of a worker and of the store)
    unrun: bool = False

    @property
    def froze(self) -> bool:
        """A deferral of a process job that its child ended when its worker froze (its
        error reads ``WorkerFroze: …``, see :data:`FROZE`)."""
        return self.deferred and (self.error or "").startswith(f"{FROZE}:")


@dataclass(slots=True, frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped at ``maximum``.

    ``jitter`` is the share of the delay that is random: 0.5 means the delay is drawn
    uniformly from the upper half of the exponential value.
    """

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.5

    def __call__(self, attempt: int) -> float:
        raw = min(self.maximum, self.base * self.factor ** max(0, attempt - 1))
        return raw * (1 - self.jitter * random.random())


BackoffPolicy = Callable[[int], float]


@dataclass(slots=True)
class WorkerInfo:
    """A live worker process as it reports itself on every heartbeat."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    min_concurrency: int
    max_concurrency: int
    busy: int = 0
    processed: int = 0
    failed: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data for the CLI and HTTP API."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "min_concurrency": self.min_concurrency,
            "max_concurrency": self.max_concurrency,
            "busy": self.busy,
            "processed": self.processed,
            "failed": self.failed,
            "started_at": iso(self.started_at),
            "heartbeat_at": iso(self.heartbeat_at),
        }
