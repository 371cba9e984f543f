"""One answer handed from one thread to another, set without ever waiting.

A thread that answers a caller must not wait for a lock that caller may hold: a signal
handler may be running on the caller's thread, having interrupted its wait, and a
``concurrent.futures.Future`` makes the answering thread take the lock of that wait (the
SQLite write thread, or the app's own event loop thread, then hung, and every call behind
it). :class:`Answer` holds the answer in a ``queue.SimpleQueue``, whose ``put`` never waits.
"""

from __future__ import annotations

import queue
from typing import Any


class Answer:
    """A value or an error, set once by one thread and awaited by another."""

    __slots__ = ("_box", "answered")

    def __init__(self) -> None:
        self._box: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self.answered = False

    def set(self, value: Any, error: BaseException | None = None) -> None:
        """Answer ``value``, or raise ``error`` in the waiter (the first answer holds)."""
        if not self.answered:
            self.answered = True
            self._box.put((value, error))

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the answer: the value, or raise the error (``queue.Empty`` after
        ``timeout`` seconds, if given)."""
        value, error = self._box.get(timeout=timeout)
        if error is not None:
            raise error
        return value
