"""A private event loop in a daemon thread, so blocking code can call async backends."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from conveyor.handoff import Answer

T = TypeVar("T")
#: held while a portal forgets its parent's loop in a forked child (see Portal._mine)
_RESET = threading.Lock()


class Portal:
    """Runs coroutines on a loop of its own and blocks the caller until they finish."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: re-entrant: a signal handler's call that interrupted the start of the loop on
        #: its thread starts one itself (the interrupted start then stops its own)
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def _mine(self) -> None:
        """In a forked child, forget the parent's loop: it has no thread here (and the lock
        may have been held at the fork); the child starts a loop of its own when it needs
        one. The reset is made once, under a lock no fork leaves held for long."""
        if self._pid != os.getpid():
            with _RESET:
                if self._pid != os.getpid():
                    self._loop = self._thread = None
                    self._lock, self._pid = threading.RLock(), os.getpid()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        self._mine()
        with self._lock:
            current = self._loop
            if current is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="conveyor-portal", daemon=True
                )
                thread.start()
                current = self._loop  # (read anew: a nested call may have started one)
                if current is None:
                    current = loop
                    self._loop, self._thread = loop, thread
                else:  # a nested call (a signal handler's) started one meanwhile: keep it
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join()
                    loop.close()
            return current

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and return its result (or raise its error),
        answered through an :class:`~conveyor.handoff.Answer`: the loop's thread never
        waits for a lock the caller holds."""
        loop = self._ensure()
        answer = Answer()

        def answered(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                answer.set(None, asyncio.CancelledError())
            else:
                error = task.exception()
                answer.set(None if error is not None else task.result(), error)

        def start() -> None:
            loop.create_task(coro).add_done_callback(answered)

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the portal was closed meanwhile
            coro.close()
            raise
        result: T = answer.result()
        return result

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
