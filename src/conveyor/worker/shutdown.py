"""Bounded waits for a stopping worker: a store that is down or locked, or a task that
swallows its cancellation, must not hold a stop for ever.

A cancellation can be lost: on Python 3.11, ``asyncio.wait_for`` returns the result instead
of raising when the awaited call finishes in the same loop iteration as the cancellation
arrives (CPython issue 86296), and redis-py sends every command through it when a socket
timeout is set (its default). So nothing here
awaits a task it cancelled without a deadline: :func:`finish` cancels again and again until
its time is up, then abandons what still runs, and :func:`bounded` never waits past its
timeout (``asyncio.wait`` returns at the deadline whatever the task does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound="asyncio.Future[Any]")
log = logging.getLogger("conveyor.worker")

#: seconds a task cancelled at shutdown gets to end before it is abandoned
CANCEL_WAIT = 0.25
#: a task that goes on after a cancellation is cancelled again this often (seconds)
RECANCEL_EVERY = 0.05
#: a step of a stop whose share of the time is used up still gets this many seconds (a
#: store that answers at all answers well within it)
STEP_MIN = 0.1


async def finish(tasks: Collection[F], timeout: float = CANCEL_WAIT) -> set[F]:
    """Cancel ``tasks`` and wait up to ``timeout`` seconds for them to end, cancelling again
    those that go on; return those still running, which the caller abandons."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY, left))
    return pending


async def bounded(awaitable: Awaitable[T], timeout: float, what: str) -> T | None:
    """Await ``awaitable`` for at most ``timeout`` seconds (plus :data:`CANCEL_WAIT` to
    cancel it); return its result, or None, with a log line, if it failed or ran out of
    time."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task}, timeout=max(0.0, timeout))
    except BaseException:  # the caller was cancelled: leave nothing running behind
        await finish({task})
        raise
    if not task.done() and await finish({task}):
        log.error("%s did not finish within %.1fs, nor end when cancelled; abandoning it",
                  what, timeout)
        return None
    if task.cancelled():
        log.warning("%s did not finish within %.1fs; gave up on it", what, timeout)
        return None
    error = task.exception()
    if error is not None:
        log.error("%s failed: %s: %s", what, type(error).__name__, error)
        log.debug("%s failed", what, exc_info=error)
        return None
    return task.result()
