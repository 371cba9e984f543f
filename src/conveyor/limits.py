"""Limits on running jobs, per job name and per group, held in the store for every worker.

``@app.job(concurrency=N)`` lets at most N attempts of a job run at once across every
worker sharing the store; ``group_by="tenant_id", group_concurrency=M`` at most M of one
group (the value of that argument). Both count live leases: a dead worker's slots come back
when its leases run out. ``rate_limit="100/m"`` (and ``group_rate_limit``) is a token
bucket kept in the store, on the store's clock, spent when an attempt starts; ``burst`` is
its size (default: one second's worth of starts, at least 1, so that a claim that comes
a little late loses no token). Within a job with ``group_by``, claims go
round robin over the groups with ready jobs (in the order of their names, from where the
last claim left off), so a group with a long backlog delays another by at most a round.

A job of a name with limits is *laned* when it is enqueued: it carries its group (``""``
without ``group_by``), and the store keeps it apart from the queue's other jobs, so that a
full group or an empty bucket holds only its own jobs back. Every decision is made inside
the claim; the claiming worker hands the limits of its app's jobs to it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.errors import ConfigurationError

#: the longest group value kept (a longer value is cut and given a digest: see group_of)
MAX_GROUP = 200
#: per-unit seconds of a rate
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*$")
#: a job is put back uncharged (it raised RateLimited, or its worker does not register it)
#: at most this many times in all (an admin retry starts them again); after that a
#: RateLimited counts as a failed attempt, and a job no worker that took it knew is dead
MAX_DEFERRALS = 20


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``per`` seconds, from a bucket of ``burst`` tokens (see
:func:`parse_rate` for the default)."""

    count: float
    per: float
    burst: int = 1

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        for unit, seconds in UNITS.items():
            if self.per == seconds:
                return f"{self.count:g}/{unit}"
        if self.per == 1.0:
            return f"{self.count:g}/s"
        return f"{self.count:g}/{self.per:g}s"


def parse_rate(text: str, burst: int | None = None, what: str = "rate_limit") -> Rate:
    """``"100/m"``, ``"10/s"``, ``"5/h"`` or ``"3/10s"`` as a :class:`Rate`."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigurationError(f"{what} must look like 100/m, 10/s, 5/h or 3/10s, "
                                 f"not {text!r}")
    count, multiple, unit = float(match[1]), match[2], match[3]
    per = UNITS[unit] * (int(multiple) if multiple else 1)
    if count <= 0 or per <= 0:
        raise ConfigurationError(f"{what} must allow at least some starts, not {text!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                              or burst < 1):
        raise ConfigurationError("burst must be a whole number of at least 1")
    return Rate(count, per, burst or max(1, math.ceil(count / per)))


def _positive(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number of at least 1")
    return value


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The limits of one job name (every field optional)."""

    name: str
    concurrency: int | None = None
    group_by: str | None = None
    group_concurrency: int | None = None
    rate: Rate | None = None
    group_rate: Rate | None = None
    #: the group of a call that leaves ``group_by`` to its default (None: no default)
    group_default: str | None = None

    @classmethod
    def build(cls, name: str, *, concurrency: int | None = None, group_by: str | None = None,
              group_concurrency: int | None = None, rate_limit: str | None = None,
              burst: int | None = None, group_rate_limit: str | None = None,
              parameters: Mapping[str, inspect.Parameter] | None = None) -> JobLimits | None:
        """The checked limits of a job, or None when it has none. ``parameters`` are the
        job's parameters (``group_by`` must name one)."""
        parameters = parameters or {}
        _positive(concurrency, "concurrency")
        _positive(group_concurrency, "group_concurrency")
        if group_by is not None and group_by not in parameters:
            raise ConfigurationError(f"group_by names no parameter of job {name!r}: "
                                     f"{group_by!r}")
        if group_by is None and (group_concurrency is not None
                                 or group_rate_limit is not None):
            raise ConfigurationError("group_concurrency and group_rate_limit need group_by")
        if burst is not None and rate_limit is None and group_rate_limit is None:
            raise ConfigurationError("burst is the size of a rate limit's bucket: give "
                                     "rate_limit or group_rate_limit")
        rate = None if rate_limit is None else parse_rate(rate_limit, burst)
        group_rate = (None if group_rate_limit is None
                      else parse_rate(group_rate_limit, burst, "group_rate_limit"))
        default = None
        if group_by is not None and parameters[group_by].default is not inspect.Parameter.empty:
            default = group_text(parameters[group_by].default)
        limits = cls(name, concurrency, group_by, group_concurrency, rate, group_rate, default)
        return limits if limits.any else None

    @property
    def any(self) -> bool:
        """True when the job has a limit or a group (its jobs are laned)."""
        return any(v is not None for v in (self.concurrency, self.group_by, self.rate))

    def group_of(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                 signature: inspect.Signature | None = None, defaults: bool = True) -> str:
        """The group of a call: the ``group_by`` argument bound to ``signature`` (with its
        default unless ``defaults`` is false; without a signature, a keyword argument), as
        text: strings as they are, other values as compact JSON; ``""`` when the call does
        not give it and no default is known, or without ``group_by``."""
        if self.group_by is None:
            return ""
        missing = object()
        value: Any = kwargs.get(self.group_by, missing)
        if signature is not None:
            try:
                bound = signature.bind(*args, **kwargs)
                if defaults:
                    bound.apply_defaults()
                value = bound.arguments.get(self.group_by, missing)
            except TypeError:
                pass
        if value is missing:
            return self.group_default or ""
        return group_text(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (for the store's scripts and the stats)."""
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "group_by": self.group_by,
            "group_concurrency": self.group_concurrency,
            "rate": None if self.rate is None else _rate_dict(self.rate),
            "group_rate": None if self.group_rate is None else _rate_dict(self.group_rate),
            "group_default": self.group_default,
        }


def _rate_dict(rate: Rate) -> list[float | int]:
    return [rate.count, rate.per, rate.burst]


def group_text(value: Any) -> str:
    """A group value as text: strings as they are, other values as compact JSON; longer
    than :data:`MAX_GROUP`: cut, with a digest of the whole."""
    text = value if isinstance(value, str) else json.dumps(
        value, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > MAX_GROUP:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[:MAX_GROUP - 17]}~{digest}"
    return text


#: why a claim held ready jobs back (the ``reason`` label of conveyor_jobs_throttled_total;
#: ``upstream`` is a job that raised RateLimited, ``unregistered`` one its worker does not
#: register, handed back unrun)
REASONS = ("concurrency", "group_concurrency", "rate", "group_rate", "upstream",
           "unregistered")


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """Running and ready jobs of a job name with limits, in all (``group`` None) or of one
    group: ``running`` counts live leases, ``ready`` the jobs that could start now but for
    the limits."""

    name: str
    group: str | None
    running: int
    ready: int


def limits_from_dict(data: Any) -> JobLimits | None:
    """Limits read back from the store (as :meth:`JobLimits.to_dict` wrote them); ``None``
    for anything that is not such limits (a read path never fails on an odd record)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        return None

    def rate(value: Any) -> Rate | None:
        if (isinstance(value, list) and len(value) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                and value[0] > 0 and value[1] > 0 and value[2] >= 1):
            return Rate(float(value[0]), float(value[1]), int(value[2]))
        return None

    def count(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) \
            and value >= 1 else None

    group_by, default = data.get("group_by"), data.get("group_default")
    limits = JobLimits(data["name"], count(data.get("concurrency")),
                       group_by if isinstance(group_by, str) else None,
                       count(data.get("group_concurrency")), rate(data.get("rate")),
                       rate(data.get("group_rate")),
                       default if isinstance(default, str) else None)
    return limits if limits.any else None


def tokens_after(tokens: float, since: float, now: float, rate: Rate) -> float:
    """A bucket's tokens at ``now``, from ``tokens`` at ``since`` (a bucket never seen is
    full: call with ``tokens=rate.burst``)."""
    if now <= since:
        return min(tokens, float(rate.burst))
    return min(float(rate.burst), tokens + (now - since) * rate.per_second)



#: how long a worker whose claim was held back by a concurrency cap waits before it claims
#: again, at most (a slot freed on another machine wakes no one here)
CAP_POLL = 0.05


def throttle_poll(limits: Mapping[str, JobLimits] | None) -> float:
    """How long a worker waits between claims held back by ``limits``: the time between two
    tokens of the fastest rate, within 5 ms .. :data:`CAP_POLL`."""
    poll = CAP_POLL
    for limit in (limits or {}).values():
        for rate in (limit.rate, limit.group_rate):
            if rate is not None:
                poll = min(poll, 1.0 / rate.per_second)
    return max(0.005, poll)


def usage_rows(limits: Mapping[str, JobLimits],
               usage: Sequence[LimitUsage]) -> list[dict[str, Any]]:
    """What ``conveyor stats``, ``GET /queues`` and the dashboard show of the limits: per job
    name with limits (``group`` null) and per busy group, the running attempts against the
    cap, the ready jobs, and how many of those the full cap holds back (``throttled``)."""
    rows = []
    for use in usage:
        limit = limits.get(use.name)
        if limit is None or (use.group is not None and limit.group_by is None):
            continue  # (a job without groups keeps its jobs in one, the total's)
        total = use.group is None
        cap = limit.concurrency if total else limit.group_concurrency
        rate = limit.rate if total else limit.group_rate
        full = cap is not None and use.running >= cap
        rows.append({"name": use.name, "group": use.group, "running": use.running,
                     "cap": cap, "ready": use.ready, "throttled": use.ready if full else 0,
                     "rate": None if rate is None else str(rate)})
    return rows
