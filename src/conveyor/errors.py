"""Exceptions raised by Conveyor and the ones a job raises to steer its own fate."""

from __future__ import annotations

from conveyor.urls import redact_url as redact_url  # one redaction of URLs for all


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""


class InvalidArguments(ConveyorError, TypeError):
    """The arguments do not fit the job's signature or are not JSON-serializable.

    Raised at enqueue time; nothing is stored.
    """


class UnknownJob(ConveyorError, LookupError):
    """No job is registered under the given name."""


class JobNotFound(ConveyorError, LookupError):
    """No job with the given id exists (it never did, or its retention ran out)."""


class QueueFull(ConveyorError):
    """The queue holds ``max_queued`` waiting jobs already; the enqueue stored nothing."""

    def __init__(self, queue: str, limit: int) -> None:
        waiting = f"{limit} job{'' if limit == 1 else 's'} waiting"
        super().__init__(f"queue {queue!r} is full ({waiting}); try again later")
        self.queue = queue
        self.limit = limit


class TooManyQueues(ConveyorError):
    """The namespace knows ``limit`` queues already (those holding jobs, and those with
    stored settings): a job for a new queue, or pausing or capping a new queue, was refused
    and nothing of the call was stored. Known queues still accept jobs and settings; a queue
    is forgotten once it holds no job and has no settings."""

    def __init__(self, queue: str, limit: int) -> None:
        super().__init__(f"cannot create queue {queue!r}: the namespace has {limit} queues "
                         f"already, its cap (max_queues)")
        self.queue = queue
        self.limit = limit


class DuplicateJob(ConveyorError):
    """A job with this id exists already (or, for a unique job asked to raise, one holding
    its unique key is under way); nothing was stored. ``job_id`` is the existing job's id."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(message or f"a job with id {job_id} exists already")
        self.job_id = job_id


class JobNotWaiting(ConveyorError):
    """The job is not waiting (queued or scheduled), so its priority cannot change."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} is {state}, not waiting: its priority cannot change")
        self.job_id = job_id
        self.state = state


class NewerStore(ConveyorError):
    """The store was written by a newer version of Conveyor (its layout is ahead of the one
    this version knows): upgrade Conveyor before using it. Nothing was changed."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{where} has storage layout {found}, newer than this Conveyor knows "
            f"(up to {known}): upgrade Conveyor to use it")
        self.found = found
        self.known = known


class ConfigurationError(ConveyorError, ValueError):
    """A setting (URL, namespace, option) is malformed or unsupported."""


class StoreUnavailable(ConveyorError):
    """The store cannot be used now: its disk is full, its database locked, its server
    unreachable. Trouble that may pass: try again later. The driver's error is the cause.

    ``url`` is the store's URL without credentials; ``reason`` says what is wrong in a few
    words (no URL, no exception names), for messages shown to clients; ``sent``, when
    known, the ``time.monotonic()`` at which the last try of the failed call began.
    """

    def __init__(self, url: str, reason: str, sent: float | None = None) -> None:
        self.url = redact_url(url)
        self.reason = reason
        self.sent = sent
        super().__init__(f"store unavailable ({self.url}): {reason}")


class StoreDamaged(ConveyorError):
    """The store holds something no version of Conveyor writes where the call looked (on
    Redis: a key of the namespace holding another type, a ``SET`` where a hash belongs),
    changed outside Conveyor; trying again will not help until the key is put back. A read
    of jobs reads a job field's key of another type as missing instead; every other call
    that meets such a key (a listing's catalogue of queues and their indexes, workers,
    statistics, and the writes of producers and workers to it) raises this."""


class ReentrantWrite(ConveyorError):
    """A call was asked for on a thread inside that thread's own use of what it needs: a
    signal handler that interrupted a write transaction on the same SQLite store, an open
    or a close of it, or the making of a Redis store's blocking connections. It cannot wait
    for the code it interrupted, which waits for it; nothing of the call was stored. (A
    handler that interrupted a write between its statements writes at once.)"""

    @classmethod
    def during(cls, what: str) -> ReentrantWrite:
        """The error for a call made on a thread while ``what`` (e.g. "its own write to
        this SQLite store was under way"), which the call interrupted."""
        return cls(f"a call was asked for on a thread while {what}, which it interrupted "
                   f"(a signal handler's call?); nothing was stored: make it after the "
                   f"handler returns (set a flag in it, or use loop.add_signal_handler)")


class PermanentError(Exception):
    """Raise from a job to send it to the dead set at once, without retrying."""


class Retry(Exception):
    """Raise from a job to ask for another attempt, optionally after ``delay`` seconds.

    The attempt still counts against the job's ``retries``.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or (f"retry requested in {delay}s" if delay else "retry requested"))
        self.delay = delay


class RateLimited(Exception):
    """Raise from a job when an upstream says "too many requests": the job goes back to wait
    ``retry_after`` seconds without charging the attempt (at most
    :data:`conveyor.limits.MAX_DEFERRALS` times in all; after that it counts as a failed
    attempt, retried after ``retry_after``)."""

    def __init__(self, retry_after: float = 1.0, reason: str = "") -> None:
        if isinstance(retry_after, bool) or not retry_after >= 0:
            raise ValueError("retry_after must be a number of seconds, 0 or more")
        super().__init__(reason or f"rate limited; retry in {retry_after}s")
        self.retry_after = float(retry_after)


class JobTimeout(ConveyorError, TimeoutError):
    """An attempt ran longer than the job's ``timeout``."""


class JobFailed(ConveyorError):
    """Raised by ``handle.result()`` when the job ended in the dead set."""

    def __init__(self, job_id: str, error: str | None) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.error = error


class JobCancelled(ConveyorError):
    """Raised by ``handle.result()`` when the job was cancelled."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id
