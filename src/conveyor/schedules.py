"""Schedules: a job enqueued at the ticks of a :class:`~conveyor.cron.Timing`, as data.

A :class:`Schedule` is what an app registers (``app.schedule(...)`` or
``@app.job(cron=...)``); its definition goes to the store as JSON, next to the state the
workers keep there (:class:`ScheduleState`): the last instant dealt with, the next tick, the
id of the last job fired, whether it is paused, and when a worker last registered it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from conveyor.cron import GRACE, SCHEDULE_NAME, Timing
from conveyor.errors import ConfigurationError
from conveyor.job import iso

Overlap = Literal["allow", "skip"]
OVERLAPS = ("allow", "skip")
#: a schedule no worker registered for this many seconds is shown as orphaned
ORPHAN_AFTER = 300.0
#: the latest instant a stored time may be (the end of year 9999); later reads as unreadable
MAX_TIME = 253_402_300_799.0


def check_name(name: str) -> str:
    """``name`` if it is a valid schedule name, else :class:`ConfigurationError`."""
    if not isinstance(name, str) or SCHEDULE_NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"schedule name {name!r} must be 1 to 64 letters, digits, '_', '.', '-',"
            " starting with a letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """Job ``job`` called with ``args``/``kwargs`` (in ``queue``, or the job's own) at each
    tick of ``timing``; ``overlap="skip"`` fires no tick while the previous tick's job waits
    or runs; ``grace`` is how old the latest missed tick may be and still fire."""

    name: str
    job: str
    timing: Timing
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    overlap: Overlap = "allow"
    grace: float = GRACE

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.job, str) or not self.job:
            raise ConfigurationError(f"schedule {self.name!r}: job must be a job or its name")
        if self.overlap not in OVERLAPS:
            raise ConfigurationError(
                f"schedule {self.name!r}: overlap must be 'allow' or 'skip', got "
                f"{self.overlap!r}")
        if isinstance(self.grace, bool) or not isinstance(self.grace, int | float) or \
                not math.isfinite(self.grace) or self.grace < 0:
            raise ConfigurationError(
                f"schedule {self.name!r}: grace must be a number of seconds >= 0")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ConfigurationError(f"schedule {self.name!r}: queue must be a name")

    def definition(self) -> dict[str, Any]:
        """The JSON-ready definition kept in the store."""
        return {"job": self.job, "cron": self.timing.cron, "every": self.timing.every,
                "tz": self.timing.tz, "args": list(self.args), "kwargs": dict(self.kwargs),
                "queue": self.queue, "overlap": self.overlap, "grace": self.grace}


#: seconds a stored next tick may be past and still be shown: a live worker fires a due
#: tick within a round of its scheduler (a second)
DUE_SLACK = 5.0


@dataclass(slots=True)
class ScheduleState:
    """A schedule as the store keeps it: its definition (as published, see
    :meth:`Schedule.definition`) and its state. Times are seconds since the epoch."""

    name: str
    definition: dict[str, Any]
    paused: bool = False
    #: the instant up to which ticks were dealt with (None: no worker ran it yet)
    last_tick: float | None = None
    #: the next tick after ``last_tick``
    next_tick: float | None = None
    #: the id of the job of the latest tick fired
    last_job: str | None = None
    #: when a worker last registered the schedule, by the store's clock
    seen_at: float = 0.0
    #: the stored fields that could not be read (their values read as None, ``{}`` or 0)
    unreadable: tuple[str, ...] = ()

    def orphaned(self, now: float, after: float = ORPHAN_AFTER) -> bool:
        """No live worker has registered the schedule for ``after`` seconds."""
        return now - self.seen_at > after

    @property
    def timing_text(self) -> str:
        """``cron */5 * * * * (UTC)`` or ``every 30s`` (or ``?`` for an odd definition)."""
        d = self.definition
        if isinstance(d.get("every"), int):
            return f"every {d['every']}s"
        if isinstance(d.get("cron"), str):
            return f"cron {d['cron']} ({d.get('tz', 'UTC')})"
        return "?"

    @property
    def job(self) -> str:
        """The name of the job it enqueues."""
        return str(self.definition.get("job", "?"))

    def next_run(self, now: float) -> float | None:
        """When it fires next as far as one can tell at ``now``: None for a paused one (it
        fires nothing until resumed) and an orphaned one (it never fires); the stored next
        tick, or, when that has passed (no worker has run it since), the first tick of its
        timing after ``now`` (a worker that comes back fires at most the latest missed
        tick, within grace, at once)."""
        if self.paused or self.orphaned(now):
            return None
        stored = self.next_tick
        if stored is not None and stored > now - DUE_SLACK:  # (due, firing this round)
            return stored
        d = self.definition
        try:
            timing = Timing.parse(cron=d.get("cron"), every=d.get("every"),
                                  tz=d.get("tz", "UTC"))
            return float(timing.next_after(now))
        except (ConfigurationError, TypeError, ValueError, OverflowError):
            return stored  # (an odd definition: what is stored, never an error)

    def to_dict(self, now: float, last_state: str | None = None) -> dict[str, Any]:
        """JSON-ready data for people and programs (times as ISO 8601 text); the fields
        that could not be read are listed in ``unreadable``."""
        return {
            "name": self.name, "job": self.job, "timing": self.timing_text,
            "cron": self.definition.get("cron"), "every": self.definition.get("every"),
            "tz": self.definition.get("tz", "UTC"), "args": self.definition.get("args", []),
            "kwargs": self.definition.get("kwargs", {}),
            "queue": self.definition.get("queue"),
            "overlap": self.definition.get("overlap", "allow"),
            "paused": self.paused, "next_run": iso(self.next_run(now)),
            "last_run": iso(tick_of(self.last_job)), "last_job": self.last_job,
            "last_tick": iso(self.last_tick),
            "last_job_state": last_state, "seen_at": iso(self.seen_at),
            "orphaned": self.orphaned(now), "unreadable": list(self.unreadable),
        }


def read_definition(raw: Any) -> dict[str, Any]:
    """A stored definition from its JSON text (an odd one reads as ``{}``, never raises)."""
    from conveyor.serialization import dumps, loads

    try:
        data = loads(raw) if isinstance(raw, str | bytes) else raw
        if not isinstance(data, Mapping):
            return {}
        dumps(data)  # strict JSON only (no NaN): it is written out again as it is
    except (ValueError, TypeError, RecursionError):
        return {}
    return dict(data)


def definition_problem(definition: Mapping[str, Any]) -> str | None:
    """Why a stored definition cannot be run as it is, or None when it can."""
    d = definition
    if not isinstance(d.get("job"), str) or not d["job"]:
        return "it names no job"
    if not isinstance(d.get("args", []), list) or not isinstance(d.get("kwargs", {}), dict):
        return "its arguments are not a list and an object"
    if not (d.get("queue") is None or isinstance(d.get("queue"), str)):
        return "its queue is not a name"
    return None


def read_time(raw: Any) -> float | None:
    """A stored time (a number, or its text as str or bytes), or None if it is not one
    between the epoch and :data:`MAX_TIME`; never raises."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        return None
    return value if 0.0 <= value <= MAX_TIME else None


def _text(raw: Any) -> str | None:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return raw if isinstance(raw, str) else None


def read_state(name: str, definition: Any, paused: bool, last_tick: Any, next_tick: Any,
               last_job: Any, seen_at: Any) -> ScheduleState:
    """A :class:`ScheduleState` from stored values as a backend reads them (text, bytes,
    numbers or None); a value that cannot be read is named in ``unreadable``, never
    raised."""
    odd: list[str] = []
    found = read_definition(_text(definition))
    if definition is not None and (not found or definition_problem(found) is not None):
        odd.append("definition")
    times: dict[str, float | None] = {}
    for field_name, raw in (("last_tick", last_tick), ("next_tick", next_tick),
                            ("seen_at", seen_at)):
        times[field_name] = read_time(raw)
        if raw is not None and times[field_name] is None:
            odd.append(field_name)
    job = _text(last_job)
    if last_job is not None and job is None:
        odd.append("last_job")
    return ScheduleState(name, found, paused, times["last_tick"], times["next_tick"], job,
                         times["seen_at"] or 0.0, tuple(odd))




def tick_of(job_id: str | None) -> int | None:
    """The tick in a tick job id (``cron:NAME:TICK``), or None."""
    if not isinstance(job_id, str) or not job_id.startswith("cron:"):
        return None
    tail = job_id.rsplit(":", 1)[-1]
    if not (tail.isascii() and tail.isdigit() and len(tail) <= len(str(int(MAX_TIME)))):
        return None
    return int(tail) if int(tail) <= MAX_TIME else None
