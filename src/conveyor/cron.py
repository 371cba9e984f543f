"""When periodic jobs are due: cron expressions and fixed intervals, as pure arithmetic.

A schedule's timing is either a cron expression (five fields, or six with seconds first),
evaluated in an IANA time zone, or ``every`` N seconds. Its ticks are whole seconds since
the epoch. Daylight-saving time follows two rules:

* a local time that does not exist (the clock springs forward over it) is skipped that day;
* a local time that happens twice (the clock falls back) fires once, at its first
  occurrence, unless the expression matches every hour (its hour field is ``*`` or covers
  0-23): such expressions follow real time and fire in both copies of the repeated hour,
  which are different instants an hour apart.

``every=N`` ticks are the multiples of N seconds since the Unix epoch, so every process
computes the same ticks without talking to the others; the time zone plays no part.

``due_ticks`` turns "the last tick handled" and "now" into the ticks to fire, under the
missed-tick policy described there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from conveyor.errors import ConfigurationError

#: the longest ``every=`` a schedule takes: a year (a longer one would never be seen to fire,
#: and its next tick would not fit the stores' integers for long)
MAX_EVERY = 365 * 86400

#: schedule names: 1 to 64 letters, digits, ``_ . -``, starting with a letter or digit
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: a due tick at most this many seconds old is late, not missed: it fires
LATE = 10.0
#: default grace: the latest missed tick still fires when at most this many seconds old
GRACE = 3600.0
#: ``due_ticks`` counts skipped ticks up to this many (a long outage of a per-second
#: schedule would otherwise take long to count)
MAX_COUNTED = 100_000

_ALL_HOURS = set(range(24))
_FIELDS_HELP = "5 fields (minute hour day month weekday) or 6 (second first)"
# An expression that matches nothing for this many years from a match is taken to be done.
_GIVE_UP_YEARS = 100
_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Timing:
    """The when of a schedule: ``cron`` (in time zone ``tz``) or ``every`` seconds.

    Checked on construction; ``Timing.parse`` is the friendly way to make one.
    """

    cron: str | None
    every: int | None
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _expr: str = field(init=False, repr=False, compare=False)  # six fields, seconds first
    _hourly: bool = field(init=False, repr=False, compare=False)  # hour field matches all

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError("a schedule needs exactly one of cron= and every=")
        object.__setattr__(self, "_zone", _zone(self.tz))
        if self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
                raise ConfigurationError(
                    f"every must be a whole number of seconds >= 1, got {self.every!r}"
                )
            object.__setattr__(self, "_expr", "")
            object.__setattr__(self, "_hourly", False)
            return
        cron = " ".join(str(self.cron).split())
        object.__setattr__(self, "cron", cron)
        fields = cron.split(" ") if cron else []
        if len(fields) not in (5, 6):
            raise ConfigurationError(
                f"cron expression {cron!r} has {len(fields)} fields; expected {_FIELDS_HELP}"
            )
        expr = cron if len(fields) == 6 else "0 " + cron
        try:
            sim = CronSim(expr, _REFERENCE)
        except CronSimError as exc:
            reason = str(exc)
            raise ConfigurationError(
                f"cron expression {cron!r} is invalid: {reason[:1].lower()}{reason[1:]} field"
            ) from None
        object.__setattr__(self, "_expr", expr)
        object.__setattr__(self, "_hourly", sim.hours == _ALL_HOURS)
        if next(self._forward(int(_REFERENCE.timestamp())), None) is None:
            raise ConfigurationError(f"cron expression {cron!r} never matches a date")

    @classmethod
    def parse(cls, *, cron: str | None, every: float | None, tz: str = "UTC") -> Timing:
        """Check and build a timing; a bad one raises ``ConfigurationError`` (one line)."""
        seconds: int | None = None
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int | float):
                raise ConfigurationError(f"every must be a number of seconds, got {every!r}")
            if not math.isfinite(every) or every != int(every) or not 1 <= every <= MAX_EVERY:
                raise ConfigurationError(
                    f"every must be a whole number of seconds from 1 to {MAX_EVERY} (a year), "
                    f"got {every!r}"
                )
            seconds = int(every)
        if cron is not None and not isinstance(cron, str):
            raise ConfigurationError(f"cron must be a string, got {cron!r}")
        if not isinstance(tz, str):
            raise ConfigurationError(f"tz must be a time zone name, got {tz!r}")
        return cls(cron=cron, every=seconds, tz=tz)

    def describe(self) -> str:
        """One line for people: ``cron */5 * * * * (Europe/Berlin)`` or ``every 30s``."""
        if self.every is not None:
            return f"every {self.every}s"
        return f"cron {self.cron} ({self.tz})"

    def next_after(self, t: float) -> int:
        """The first tick strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t) // self.every + 1) * self.every
        tick = next(self._forward(math.floor(t)), None)
        if tick is None:
            raise ConfigurationError(f"cron expression {self.cron!r} has no more ticks")
        return tick

    def ticks_between(self, after: float, until: float, limit: int = 1000) -> list[int]:
        """The ticks in ``(after, until]``, ascending; at most ``limit``, the latest ones."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        low, high = math.floor(after), math.floor(until)
        if high <= low:
            return []
        if self.every is not None:
            step = self.every
            first, last = (low // step + 1) * step, high // step * step
            if last < first:
                return []
            return list(range(max(first, last - (limit - 1) * step), last + 1, step))
        latest: list[int] = []
        for tick in self._backward(high):
            if tick <= low:
                break
            latest.append(tick)
            if len(latest) == limit:
                break
        latest.reverse()
        return latest

    def count_between(self, after: float, until: float, limit: int = MAX_COUNTED) -> int:
        """How many ticks fall in ``(after, until]``, counting up to ``limit``."""
        low, high = math.floor(after), math.floor(until)
        if high <= low:
            return 0
        if self.every is not None:
            return min(limit, max(0, high // self.every - low // self.every))
        count = 0
        for tick in self._forward(low):
            if tick > high or count == limit:
                break
            count += 1
        return count

    def _forward(self, after: int) -> Iterator[int]:
        """Cron ticks strictly after ``after``, ascending."""
        start = datetime.fromtimestamp(after, self._zone)
        previous = after
        for local in CronSim(self._expr, start):
            if local.year > start.year + _GIVE_UP_YEARS:
                return
            tick = int(local.timestamp())
            if tick > previous and self._fires(local):
                previous = tick
                yield tick

    def _backward(self, until: int) -> Iterator[int]:
        """Cron ticks at or before ``until``, descending."""
        start = datetime.fromtimestamp(until + 1, self._zone)
        previous = until + 1
        for local in CronSim(self._expr, start, reverse=True):
            if local.year < start.year - _GIVE_UP_YEARS:
                return
            tick = int(local.timestamp())
            if tick < previous and self._fires(local):
                previous = tick
                yield tick

    def _fires(self, local: datetime) -> bool:
        """Whether a local time the expression matches fires, by the daylight-saving rules."""
        if local != local.astimezone(UTC).astimezone(self._zone):
            return False  # the clock skipped this local time
        if local.fold and not self._hourly:
            # the second occurrence of a repeated local time fires only for hourly expressions
            return local.replace(fold=0).utcoffset() == local.utcoffset()
        return True


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"unknown time zone {name!r} (use an IANA name)") from None


def due_ticks(
    timing: Timing,
    last: float | None,
    now: float,
    *,
    grace: float = GRACE,
    late: float = LATE,
    limit: int = 1000,
) -> tuple[list[int], int]:
    """The ticks to fire at ``now``, ascending, and how many missed ticks are skipped.

    ``last`` is the instant up to which ticks have been dealt with: ``now`` of the previous
    call (or the latest tick fired). ``None`` means the schedule is new: nothing fires, and
    the caller stores ``now`` as ``last``, so the first tick fired is the next one. After
    every call the caller stores ``now`` as the new ``last``.

    A due tick (in ``(last, now]``) at most ``late`` seconds old fires. Older due ticks
    were missed (the schedulers were down): only the latest of them fires, and only if it
    is at most ``grace`` seconds old; the others are skipped and counted (up to
    ``MAX_COUNTED``). At most ``limit`` ticks fire, the latest ones; the rest count as
    skipped.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if last is None or now <= last:
        return [], 0
    # ticks >= late_from are late, not missed (ticks are whole seconds)
    late_from = math.ceil(now - late)
    recent_after = max(last, late_from - 1)
    recent = timing.ticks_between(recent_after, now, limit)
    skipped = 0
    if len(recent) == limit:
        skipped = timing.count_between(recent_after, now) - limit
    missed = timing.count_between(last, late_from - 1) if late_from - 1 > last else 0
    fire: list[int] = []
    if missed:
        latest = timing.ticks_between(last, late_from - 1, limit=1)[0]
        if now - latest <= grace:
            fire.append(latest)
            missed -= 1
    fire += recent
    skipped += missed + max(0, len(fire) - limit)
    return fire[-limit:], min(MAX_COUNTED, skipped)


def tick_job_id(schedule_name: str, tick: int) -> str:
    """The id of the job a schedule enqueues for ``tick``: the same in every process."""
    if SCHEDULE_NAME.fullmatch(schedule_name) is None:
        raise ConfigurationError(
            f"schedule name {schedule_name!r} must be 1 to 64 letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return f"cron:{schedule_name}:{int(tick)}"
