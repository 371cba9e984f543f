"""What a running job can see of itself: ``JobContext``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.job import JobRecord
from conveyor.serialization import storable

#: the longest progress message kept (a longer one is cut)
MAX_PROGRESS_MESSAGE = 1000

ProgressSink = Callable[[str, float, "str | None"], None]


class JobContext:
    """Handed to a job that declares a parameter annotated ``JobContext``.

    It names the job and attempt, takes progress reports and says whether the job was
    cancelled (a thread job should check :attr:`cancelled` in its loops: threads cannot be
    interrupted from outside).
    """

    def __init__(self, record: JobRecord, sink: ProgressSink | None = None) -> None:
        self.record = record
        self._sink = sink
        # A plain flag: set once from the event loop, read from any thread (atomic under the
        # GIL); a threading.Event per job would cost more than a no-op job itself.
        self._cancelled = False

    @property
    def id(self) -> str:
        """The job's id."""
        return self.record.id

    @property
    def name(self) -> str:
        """The registered name of the job."""
        return self.record.name

    @property
    def queue(self) -> str:
        """The queue the job came from."""
        return self.record.queue

    @property
    def attempt(self) -> int:
        """Which run this is, counting from 1."""
        return self.record.attempts

    @property
    def args(self) -> list[Any]:
        """The positional arguments of the job."""
        return self.record.args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the job."""
        return self.record.kwargs

    @property
    def cancelled(self) -> bool:
        """True once cancellation (or a timeout, or shutdown) was asked for this attempt."""
        return self._cancelled

    def progress(self, value: float, message: str | None = None) -> None:
        """Report progress, ``value`` from 0.0 to 1.0, with an optional short message (a
        ``str``, cut after :data:`MAX_PROGRESS_MESSAGE` characters).

        Safe to call from any thread and as often as you like: the worker stores the
        latest report a few times per second.
        """
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"progress must be between 0.0 and 1.0, got {value!r}")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"a progress message is a str, got {type(message).__name__}")
            # short, and text every store takes (a lone surrogate becomes an escape)
            message = storable(message[:MAX_PROGRESS_MESSAGE])
        self.record.progress = value
        self.record.progress_message = message
        if self._sink is not None:
            self._sink(self.record.id, float(value), message)

    def mark_cancelled(self) -> None:
        """Called by the worker when the attempt should stop."""
        self._cancelled = True
