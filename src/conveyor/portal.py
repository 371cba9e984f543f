"""A private event loop in a daemon thread, so blocking code can call async backends."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
#: held while a portal forgets its parent's loop in a forked child (see Portal._mine)
_RESET = threading.Lock()


class Portal:
    """Runs coroutines on a loop of its own and blocks the caller until they finish."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _mine(self) -> None:
        """In a forked child, forget the parent's loop: it has no thread here (and the lock
        may have been held at the fork); the child starts a loop of its own when it needs
        one. The reset is made once, under a lock no fork leaves held for long."""
        if self._pid != os.getpid():
            with _RESET:
                if self._pid != os.getpid():
                    self._loop = self._thread = None
                    self._lock, self._pid = threading.Lock(), os.getpid()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        self._mine()
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="conveyor-portal", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and return its result."""
        loop = self._ensure()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        """Stop the loop and its thread."""
        self._mine()
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
