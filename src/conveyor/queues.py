"""Queue settings kept in the store: paused, and ``max_queued`` (the store's cap).

A paused queue keeps accepting jobs; workers claim nothing from it until it is resumed (the
claim itself skips paused queues, so every worker stops at once). The store's cap holds for
every producer, beside an app's own caps (``Conveyor(max_queued=...)``): the smaller wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.bounds import MAX_NAME, QUEUE_SEPARATORS, name_problem
from conveyor.errors import ConfigurationError

#: the longest queue name accepted by the commands and the HTTP API
MAX_QUEUE_NAME = MAX_NAME
#: the largest cap a queue takes (a store keeps it as a 64-bit integer)
MAX_QUEUED_LIMIT = 10**15


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """The stored settings of one queue (a queue without any is not paused nor capped)."""

    name: str
    paused: bool = False
    #: jobs that may wait in the queue at most; ``None``: no cap in the store
    max_queued: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"paused": ..., "max_queued": ...}`` (the name is the key it is listed under)."""
        return {"paused": self.paused, "max_queued": self.max_queued}


def check_queue_name(name: object) -> str:
    """``name`` if a job may be put in a queue of that name: 1 to :data:`MAX_QUEUE_NAME`
    characters, no whitespace, control characters, ``,`` or ``/`` (see
    :func:`conveyor.bounds.name_problem`); else raise :class:`ConfigurationError`."""
    problem = name_problem(name, "queue", QUEUE_SEPARATORS)
    if problem is not None or not isinstance(name, str):
        raise ConfigurationError(problem)
    return name


def existing_queue_name(name: object) -> str:
    """``name`` for pausing, resuming or capping a queue: a non-empty string of at most
    :data:`MAX_QUEUE_NAME` characters (a queue stored before names were checked further
    can still be controlled); else raise :class:`ConfigurationError`."""
    if not isinstance(name, str) or not name or len(name) > MAX_QUEUE_NAME:
        raise ConfigurationError(f"a queue name is a non-empty string of at most "
                                 f"{MAX_QUEUE_NAME} characters")
    return name


def check_limit(limit: object) -> int | None:
    """``limit`` if it is ``None`` (no cap) or a whole number from 1 to
    :data:`MAX_QUEUED_LIMIT`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or \
            not 1 <= limit <= MAX_QUEUED_LIMIT:
        raise ConfigurationError(f"max_queued must be a whole number from 1 to "
                                 f"{MAX_QUEUED_LIMIT} (or none)")
    return limit


def stored_limit(value: object) -> int | None:
    """A cap as a store holds it (an int, or its text on Redis): the number when it is a
    whole number of at least 1, else ``None`` (no cap; a value no command writes is
    ignored, never raised)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str | bytes):
        try:
            value = int(value)
        except ValueError:
            return None
    return value if isinstance(value, int) and value >= 1 else None


def parse_limit(text: str) -> int | None:
    """A cap as typed: a whole number of at least 1, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigurationError(f"max_queued must be a whole number of at least 1 or 'none', "
                                 f"got {text!r}") from None
    return check_limit(value)


def with_settings(counts: Mapping[str, Mapping[str, int]],
                  settings: Mapping[str, QueueSettings],
                  states: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each queue's job counts with its ``paused`` and ``max_queued``: the queues that have
    jobs, and those that only have settings (with zero counts)."""
    merged: dict[str, dict[str, Any]] = {}
    for name in sorted(set(counts) | set(settings)):
        row: dict[str, Any] = {state: 0 for state in states}
        row.update(counts.get(name, {}))
        row.update((settings.get(name) or QueueSettings(name)).to_dict())
        merged[name] = row
    return merged
