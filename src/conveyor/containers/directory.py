"""``dir:PATH``: containers are the directories ``PATH/NAME`` of this machine.

A file pushed to ``/etc/app.conf`` in container ``web`` lands at ``PATH/web/etc/app.conf``
and never outside ``PATH/web``: the destination is normalised, every existing parent is
resolved (symlinks followed) and checked to stay inside, missing parents are created, and
the file is written through a descriptor of the directory that was checked. It is copied
to a temporary file next to the destination, fsynced and renamed over it, so a reader sees
the old file or the new one, never a part.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from conveyor.containers.base import ContainerNotFound, PushFailed, UnsafeDestination
from conveyor.errors import PermanentError
from conveyor.uploads import UploadError, check_container_name, normalize_destination

CHUNK = 1 << 20
#: errors that another attempt would meet again
PERMANENT_OS_ERRORS = (IsADirectoryError, NotADirectoryError, PermissionError)
PERMANENT_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


class DirectoryTarget:
    """Push files into the directories under ``root`` (one directory per container)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"<DirectoryTarget {self.root}>"

    def describe(self) -> str:
        """``dir:`` and the absolute root."""
        return f"dir:{self.root}"

    async def push(self, container: str, source: Path, destination: str) -> None:
        """Copy ``source`` to ``root/container/destination`` (blocking I/O in a thread)."""
        await asyncio.to_thread(self.push_blocking, container, Path(source), destination)

    def push_blocking(self, container: str, source: Path, destination: str) -> None:
        """:meth:`push`, on the calling thread."""
        base = self.container_path(container)
        try:
            normal = normalize_destination(destination)
        except UploadError as exc:
            raise UnsafeDestination(str(exc)) from None
        parts = normal.lstrip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):  # normpath leaves none; be sure
            raise UnsafeDestination(f"{destination!r} is not a normal path")
        try:
            directory = base
            for part in parts[:-1]:
                directory = _enter(base, directory, part, normal)
            _replace(base, directory, parts[-1], source, normal)
        except PermanentError:
            raise
        except OSError as exc:
            if isinstance(exc, PERMANENT_OS_ERRORS) or exc.errno in PERMANENT_ERRNOS:
                raise PermanentError(f"cannot write {normal} in {container}: {exc}") from exc
            # a full disk, an I/O error: may well pass
            raise PushFailed(f"writing {normal} in {container} failed: {exc}") from exc

    def container_path(self, container: str) -> Path:
        """The real directory of ``container``; :class:`ContainerNotFound` if there is none."""
        try:
            name = check_container_name(container)
            base = (self.root / name).resolve(strict=True)
        except (UploadError, OSError, RuntimeError):  # RuntimeError: a symlink loop
            raise ContainerNotFound(container) from None
        if not base.is_dir():
            raise ContainerNotFound(container)
        return base


def _enter(base: Path, directory: Path, part: str, destination: str) -> Path:
    """The real directory ``directory/part``, made if missing, checked to be inside ``base``."""
    candidate = directory / part
    try:
        candidate.mkdir(mode=0o755)
        return candidate
    except FileExistsError:
        pass
    real = candidate.resolve()
    if not real.is_relative_to(base):
        raise UnsafeDestination(
            f"{destination}: {candidate.relative_to(base)} leads outside the container"
        )
    if not real.is_dir():
        raise UnsafeDestination(
            f"{destination}: {candidate.relative_to(base)} exists and is not a directory"
        )
    return real


def _replace(base: Path, directory: Path, name: str, source: Path, destination: str) -> None:
    """Write ``source`` to ``directory/name`` atomically, through a checked descriptor."""
    try:
        src = source.open("rb")
    except FileNotFoundError:
        raise PermanentError(f"the file to push is missing: {source}") from None
    with src:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # The directory opened may not be the one checked (it could have been swapped
            # for a symlink since); what the descriptor points at is what counts.
            if not _real_path(dir_fd, directory).is_relative_to(base):
                raise UnsafeDestination(f"{destination}: its directory left the container")
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise UnsafeDestination(f"{destination} is a directory")
            except FileNotFoundError:
                pass
            temporary = f".conveyor-{secrets.token_hex(8)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                # A symlink at the destination is replaced, not followed.
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _real_path(fd: int, fallback: Path) -> Path:
    """Where an open directory really is (``/proc`` on Linux, else resolving its path)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return fallback.resolve()
