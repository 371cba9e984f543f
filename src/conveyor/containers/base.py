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
    """No container of that name exists; retrying will not make one. ``where`` says where
    the target looked (``no directory /srv/containers/web``)."""

    def __init__(self, container: str, where: str = "") -> None:
        message = f"container {container!r} does not exist"
        super().__init__(f"{message}: {where}" if where else message)
        self.container = container
        self.where = where


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


async def missing_container(target: ContainerTarget, container: str) -> ContainerNotFound | None:
    """:class:`ContainerNotFound` if ``target`` can tell at once, cheaply, that ``container``
    does not exist; None if it exists or the target cannot tell (then the push finds out).

    A target tells through an optional ``async def missing(container)`` method returning the
    error or None; targets without one are never asked.
    """
    missing = getattr(target, "missing", None)
    if missing is None:
        return None
    found = await missing(container)
    return found if isinstance(found, ContainerNotFound) else None
