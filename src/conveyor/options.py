"""The options of one enqueue, as one value that every entry point (Python, CLI, HTTP) builds
once and hands down: when the job runs, where, under which id, at which priority, and how
it is deduplicated.

To add an option: a field here and in :class:`EnqueueKwargs`, its check in
:meth:`EnqueueOptions.checked`, and its use where the record is built (``Conveyor.build``)
and stored (the backends).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, TypedDict

from conveyor.bounds import DEFAULT_MAX_DELAY, finite_seconds
from conveyor.errors import ConfigurationError, InvalidArguments
from conveyor.ids import is_acceptable_id
from conveyor.priority import check_priority
from conveyor.queues import check_queue_name
from conveyor.serialization import is_utf8

OnConflict = Literal["return", "raise"]
ON_CONFLICT = ("return", "raise")
#: the longest unique key (it is stored with the job and in an index)
MAX_UNIQUE_KEY = 512


class EnqueueKwargs(TypedDict, total=False):
    """The options as keyword arguments (``fn.enqueue_with(args, delay=5, job_id=...)``)."""

    delay: float | None
    at: datetime | None
    queue: str | None
    job_id: str | None
    unique_key: str | None
    unique_for: float | None
    on_conflict: OnConflict
    force: bool
    priority: int | None


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How one call is enqueued. Every field is optional."""

    #: seconds from now until the job may run (not with ``at``)
    delay: float | None = None
    #: when the job may run, a timezone-aware datetime (not with ``delay``)
    at: datetime | None = None
    #: the queue, instead of the job's own
    queue: str | None = None
    #: the job's id, instead of a new one: an id that exists raises DuplicateJob
    job_id: str | None = None
    #: while a job holding this key is not final, another enqueue with it stores nothing
    unique_key: str | None = None
    #: seconds the unique key is held at most (None: until the job is final)
    unique_for: float | None = None
    #: what an enqueue meeting a held unique key does: return the existing job's handle
    #: (``deduplicated``), or raise DuplicateJob
    on_conflict: OnConflict = "return"
    #: store a call of a job name no worker published (no check of its arguments)
    force: bool = False
    #: -10 .. 10, higher runs sooner, instead of the job's own (see :mod:`conveyor.priority`)
    priority: int | None = None

    def checked(self) -> EnqueueOptions:
        """These options, or :class:`InvalidArguments` naming the first that is wrong."""
        if self.delay is not None and self.at is not None:
            raise InvalidArguments("give delay or at, not both")
        if self.delay is not None and not finite_seconds(self.delay):
            raise InvalidArguments("delay must be a finite number of seconds, 0 or more")
        if self.delay is not None and self.delay < 0:
            raise InvalidArguments("delay must not be negative")
        if self.at is not None and (not isinstance(self.at, datetime)
                                    or self.at.tzinfo is None):
            raise InvalidArguments("at must be a timezone-aware datetime")
        if self.queue is not None:
            try:
                check_queue_name(self.queue)
            except ConfigurationError as exc:
                raise InvalidArguments(str(exc)) from None
        if self.job_id is not None and not is_acceptable_id(self.job_id):
            raise InvalidArguments(
                f"job_id {self.job_id!r} is not a valid id: use 1 to 128 letters, digits, "
                "'_', '.', ':' or '-', starting with a letter or digit")
        if self.unique_key is not None and not (
                isinstance(self.unique_key, str) and 0 < len(self.unique_key) <= MAX_UNIQUE_KEY
                and is_utf8(self.unique_key)):
            raise InvalidArguments(
                f"unique_key must be a non-empty string of at most {MAX_UNIQUE_KEY} characters "
                "of valid UTF-8 (no lone surrogate)")
        if self.unique_for is not None and not (finite_seconds(self.unique_for)
                                                and self.unique_for > 0):
            raise InvalidArguments("unique_for must be a positive, finite number of seconds")
        if self.priority is not None:
            check_priority(self.priority)
        if self.on_conflict not in ON_CONFLICT:
            raise InvalidArguments(f"on_conflict must be 'return' or 'raise', "
                                   f"not {self.on_conflict!r}")
        return self

    def run_at(self, created: float, max_delay: float = DEFAULT_MAX_DELAY) -> float:
        """When the job may first run, for a job created at ``created``; raise
        :class:`InvalidArguments` when that is more than ``max_delay`` seconds ahead (the
        app's horizon, ``Conveyor(max_delay=...)``)."""
        if self.delay is not None:
            if self.delay > max_delay:
                raise InvalidArguments(
                    f"delay must be at most {max_delay:.0f} seconds ({_span(max_delay)}), the "
                    f"horizon of this app (Conveyor(max_delay=...)); got {self.delay:g}")
            return created + self.delay
        if self.at is not None:
            when = self.at.timestamp()
            if when - created > max_delay:
                raise InvalidArguments(
                    f"at must be at most {max_delay:.0f} seconds ({_span(max_delay)}) ahead, "
                    f"the horizon of this app (Conveyor(max_delay=...)); got "
                    f"{self.at.isoformat()}")
            return max(created, when)
        return created

    def with_id(self, job_id: str | None) -> EnqueueOptions:
        """These options for one item of a bulk enqueue, named ``job_id``."""
        return self if job_id is None else replace(self, job_id=job_id)


def _span(seconds: float) -> str:
    """``365 days``, ``2.5 hours``: a horizon in words."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:g} {unit}{'' if value == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


#: the options of a plain enqueue
DEFAULT = EnqueueOptions()


def options_of(options: EnqueueOptions | None, given: EnqueueKwargs) -> EnqueueOptions:
    """One value from an :class:`EnqueueOptions` or keyword options (not both), checked."""
    if options is None:
        return EnqueueOptions(**given).checked() if given else DEFAULT
    if given:
        raise InvalidArguments("give an EnqueueOptions or keyword options, not both")
    return options.checked()
