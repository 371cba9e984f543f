"""What a container target is, and the errors a push can end in.

A target copies a file into a named container. Its errors say what the job should do next:
:class:`ContainerNotFound` and :class:`UnsafeDestination` are permanent (the job goes to the
dead set at once), :class:`PushFailed` is transient (the job is retried with backoff).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from conveyor.errors import PermanentError


class ContainerNotFound(PermanentError):
    """No container of that name exists; retrying will not make one."""

    def __init__(self, container: str) -> None:
        super().__init__(f"container not found: {container}")
        self.container = container


class UnsafeDestination(PermanentError):
    """The destination would land outside the container, or cannot be a file there."""


class PushFailed(Exception):
    """A transient failure (daemon down, time-out, server error): worth another attempt."""


class ContainerTarget(Protocol):
    """Where pushed files go: directories on this machine, Incus instances, ..."""

    async def push(self, container: str, source: Path, destination: str) -> None:
        """Copy the file ``source`` to the absolute path ``destination`` in ``container``,
        replacing what is there."""
        ...

    def describe(self) -> str:
        """The target as its spec (``dir:/srv/containers``, ``incus:/path/to/socket``)."""
        ...
