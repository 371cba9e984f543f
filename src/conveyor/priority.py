"""Priorities and aging, and how a worker weighs its queues.

A job's priority is a whole number from :data:`MIN_PRIORITY` to :data:`MAX_PRIORITY`
(default 0); higher runs sooner. Within a queue, ready jobs run in order of their *rank*::

    rank = run_at - priority * aging

lowest first, then oldest ``run_at``, then id. That is the order of effective priority
``priority + waited / aging``: a job's effective priority rises by one per ``aging`` seconds
it has waited, so a flood of high-priority work delays a low-priority job by at most
``(high - low) * aging`` seconds beyond its turn. ``priority * aging`` (the job's *boost*,
in seconds) is fixed when the job is enqueued or its priority changed, with the ``aging`` of
the app doing it (:attr:`conveyor.Conveyor.aging`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from conveyor.errors import ConfigurationError, InvalidArguments

MIN_PRIORITY = -10
MAX_PRIORITY = 10
#: seconds of waiting that raise a job's effective priority by one
DEFAULT_AGING = 60.0


def check_priority(value: object, what: str = "priority") -> int:
    """``value`` if it is a whole number from -10 to 10, else :class:`InvalidArguments`."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or not MIN_PRIORITY <= value <= MAX_PRIORITY):
        raise InvalidArguments(
            f"{what} must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}, "
            f"not {value!r}")
    return value


def parse_priority(text: str) -> int:
    """A priority written as text (a command's argument, a query parameter)."""
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArguments(f"a priority is a whole number from {MIN_PRIORITY} to "
                               f"{MAX_PRIORITY}, not {text!r}")
    return value


def check_aging(value: object) -> float:
    """``value`` if it is a positive, finite number of seconds, else ConfigurationError."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise ConfigurationError(f"aging must be a positive number of seconds, not {value!r}")
    return float(value)


def boost(priority: int, aging: float) -> float:
    """How many seconds ahead of its ``run_at`` a job of ``priority`` ranks."""
    return priority * aging


@dataclass(slots=True)
class QueueWeights:
    """How a worker shares its claims among its queues.

    Weighted (``strict`` false): among the queues that have ready jobs, claims go in
    proportion to the weights, by smooth weighted round robin: every queue with ready jobs
    gets its weight's share of every ``sum(weights)`` claims, interleaved. ``credits`` is
    the round robin's state, kept by the worker from one claim to the next (the store
    decides the picks inside the claim and hands the new credits back).

    Strict: the queues in the order given, each drained before the next gets a claim.
    """

    #: queue -> weight (a whole number of at least 1), in the order given
    weights: dict[str, int]
    strict: bool = False
    credits: dict[str, int] = field(default_factory=dict)

    @property
    def queues(self) -> list[str]:
        return list(self.weights)

    def pick(self, ready: Mapping[str, int], limit: int) -> tuple[list[str], dict[str, int]]:
        """The queue of each of up to ``limit`` claims, given how many jobs each queue has
        ready (``ready``, counted up to ``limit``), and the credits after them.

        The stores decide inside their claim with this rule (Redis's claim.lua has it in
        Lua; the contract suite holds both to it)."""
        left = {q: ready.get(q, 0) for q in self.weights}
        credits = {q: self.credits.get(q, 0) for q in self.weights}
        picks: list[str] = []
        while len(picks) < limit:
            live = [q for q in self.weights if left[q] > 0]
            if not live:
                break
            if self.strict:
                chosen = live[0]
            else:
                total = 0
                chosen = live[0]
                for q in live:
                    credits[q] += self.weights[q]
                    total += self.weights[q]
                    if credits[q] > credits[chosen]:
                        chosen = q
                credits[chosen] -= total
            left[chosen] -= 1
            picks.append(chosen)
        return picks, credits


def parse_queues(text: str) -> tuple[list[str], dict[str, int] | None]:
    """``"critical:6,default:3,low:1"`` or ``"a,b"``: the queue names in order, and their
    weights when any is given (a queue without one then weighs 1). A name may hold ``:``
    (only a final ``:DIGITS`` is a weight). Raise ConfigurationError naming what is wrong."""
    names: list[str] = []
    weights: dict[str, int] = {}
    weighted = False
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.rpartition(":")
        if sep and weight.isdigit():
            weighted = True
        else:
            name, weight = part, "1"
        if not name:
            raise ConfigurationError(f"{part!r} names no queue")
        if name in weights:
            raise ConfigurationError(f"queue {name!r} is given twice")
        if int(weight) < 1:
            raise ConfigurationError(f"the weight of queue {name!r} must be at least 1")
        names.append(name)
        weights[name] = int(weight)
    if not names:
        raise ConfigurationError("name at least one queue")
    return names, (weights if weighted else None)


def weighing(names: list[str], weights: dict[str, int] | None,
             strict: bool) -> QueueWeights | None:
    """How a worker of ``names`` shares its claims: by ``weights``, in order (``strict``), or
    ``None`` (oldest rank first over all of them)."""
    if strict and weights is not None:
        raise ConfigurationError("strict takes the queues in the order given: give no weights")
    if strict:
        return QueueWeights(dict.fromkeys(names, 1), strict=True)
    return None if weights is None else QueueWeights(weights)
