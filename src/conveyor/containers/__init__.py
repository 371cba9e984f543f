"""Container targets: where the built-in push job copies uploaded files.

``open_target(spec)`` makes one from its spec: ``dir:PATH`` (containers are the directories
``PATH/NAME``; ``conveyor serve`` uses ``dir:./containers`` by default), ``incus`` (the local
Incus daemon at its usual socket) or ``incus:SOCKET``.

Neither creates containers: a ``dir:`` container is a directory someone made, and ``conveyor
serve`` refuses to start on a ``dir:PATH`` whose PATH is missing. A target may tell cheaply that
a container is missing (:func:`missing_container`), so ``POST /uploads`` answers 404 instead of
accepting a file whose push could only fail.
"""

from __future__ import annotations

from conveyor.containers.base import (
    ContainerNotFound,
    ContainerTarget,
    PushFailed,
    UnsafeDestination,
    missing_container,
)
from conveyor.containers.directory import DirectoryTarget
from conveyor.containers.incus import DEFAULT_SOCKET, IncusTarget
from conveyor.errors import ConfigurationError

DEFAULT_TARGET = "dir:./containers"

__all__ = [
    "DEFAULT_TARGET",
    "ContainerNotFound",
    "ContainerTarget",
    "DirectoryTarget",
    "IncusTarget",
    "PushFailed",
    "UnsafeDestination",
    "missing_container",
    "open_target",
]


def open_target(spec: str) -> ContainerTarget:
    """The target named by ``spec``: ``dir:PATH``, ``incus`` or ``incus:SOCKET``."""
    kind, colon, rest = spec.strip().partition(":")
    if kind == "dir" and colon:
        if not rest:
            raise ConfigurationError("dir: needs a directory, e.g. dir:./containers")
        return DirectoryTarget(rest)
    if kind == "incus":
        if colon and not rest:
            raise ConfigurationError(
                "incus: needs a socket path, e.g. incus:/var/lib/incus/unix.socket"
            )
        return IncusTarget(rest or DEFAULT_SOCKET)
    raise ConfigurationError(
        f"unknown container target {spec!r}: use dir:PATH (directories PATH/NAME), "
        f"incus (the local Incus daemon) or incus:SOCKET"
    )
