"""Which dashboard sessions were logged out: kept in the store, cached in this process.

A logout is recorded in the store (:meth:`Broker.revoke_session`), so it holds across
restarts and in every server process on the same store. Checking a session asks the store at
most once per :data:`FRESH_FOR` seconds per session: a positive answer (still logged in) is
kept that long, so another process's logout is seen within it; a logout in this process and
a "logged out" answer from the store are seen at once and kept (the store stays the truth
when they are forgotten).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable

from conveyor.backends.base import Broker

#: seconds a "not logged out" answer of the store is trusted
FRESH_FOR = 2.0
#: sessions remembered per kind of answer
MAX_CACHED = 10_000


class Revocations:
    """Logged-out sessions of one dashboard; ``broker`` returns the opened store."""

    def __init__(self, broker: Callable[[], Awaitable[Broker]], fresh_for: float = FRESH_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._broker = broker
        self.fresh_for = fresh_for
        self.clock = clock
        #: session nonce -> when the store said it was not logged out
        self._live: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: sessions known to be logged out
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def revoked(self, nonce: str) -> bool:
        """True when session ``nonce`` was logged out (here, or anywhere on the store)."""
        if nonce in self._gone:
            return True
        checked = self._live.get(nonce)
        if checked is not None and self.clock() - checked < self.fresh_for:
            return False
        broker = await self._broker()
        if await broker.session_revoked(nonce):
            self._forget_live(nonce)
            return True
        self._live[nonce] = self.clock()
        self._live.move_to_end(nonce)
        while len(self._live) > MAX_CACHED:
            self._live.popitem(last=False)
        return False

    async def revoke(self, nonce: str, until: float) -> None:
        """Log session ``nonce`` out: at once in this process, and in the store (for the
        other processes and after a restart) until ``until``."""
        self._forget_live(nonce)
        broker = await self._broker()
        await broker.revoke_session(nonce, until)

    def _forget_live(self, nonce: str) -> None:
        self._live.pop(nonce, None)
        self._gone[nonce] = None
        self._gone.move_to_end(nonce)
        while len(self._gone) > MAX_CACHED:
            self._gone.popitem(last=False)
