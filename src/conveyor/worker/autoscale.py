"""How many jobs one worker process runs at once, sized between ``minimum`` and ``maximum``.

Grow while every slot is busy and ready jobs wait (doubling, at most once per
``grow_interval``); shrink by half only after utilisation stayed under ``low_water`` for
``cooldown`` seconds. The gap between the two rules is the hysteresis that keeps it from
flapping.
"""

from __future__ import annotations

from conveyor.errors import ConfigurationError


class Autoscaler:
    """Pure sizing logic: feed it observations, read :attr:`size`."""

    def __init__(
        self,
        minimum: int,
        maximum: int,
        *,
        grow_interval: float = 0.1,
        cooldown: float = 10.0,
        low_water: float = 0.5,
    ) -> None:
        if minimum < 1 or maximum < minimum:
            raise ConfigurationError(
                f"need 1 <= min-workers <= max-workers, got {minimum} and {maximum}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self.grow_interval = grow_interval
        self.cooldown = cooldown
        self.low_water = low_water
        self.size = minimum
        self._last_grow = float("-inf")
        self._low_since: float | None = None

    def observe(self, busy: int, backlog: bool, now: float) -> int:
        """Take one observation (``busy`` slots, whether ready jobs wait) and return the size."""
        if busy >= self.size and backlog:
            self._low_since = None
            if self.size < self.maximum and now - self._last_grow >= self.grow_interval:
                self.size = min(self.maximum, max(self.size + 1, self.size * 2))
                self._last_grow = now
            return self.size
        if self.size > self.minimum and busy < self.size * self.low_water:
            if self._low_since is None:
                self._low_since = now
            elif now - self._low_since >= self.cooldown:
                self.size = max(self.minimum, busy, self.size // 2)
                self._low_since = now
        else:
            self._low_since = None
        return self.size
