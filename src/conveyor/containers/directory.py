"""``dir:PATH``: containers are the directories ``PATH/NAME`` of this machine.

A file pushed to ``/etc/app.conf`` in container ``web`` lands at ``PATH/web/etc/app.conf``
and never outside ``PATH/web``: the destination is normalised (at most
:data:`~conveyor.uploads.MAX_PATH_DEPTH` components), then walked one component at a time,
each directory opened relative to the descriptor of the one before and made there if missing,
never through a symbolic link: a symbolic link on the way is refused (permanently), whether it
points inside the container or out, so a directory swapped for one mid-push cannot lead the
push elsewhere. The file is written through the descriptor of its directory: copied to a
temporary file there, fsynced and renamed over the destination, so a reader sees the old file
or the new one, never a part.

The temporary file is named after the job, ``.conveyor-<job id>.tmp``, and locked (``flock``)
while it is written. A push killed mid-copy (even by SIGKILL) leaves it behind; the job's
retry takes it over, truncated, and renames it into place. Each push also sweeps the directory
it writes to of the ``.conveyor-*.tmp`` files no push holds and none wrote to for
:data:`STALE_TEMPORARY_AGE` (an hour): those of jobs that will not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

from conveyor.containers.base import ContainerNotFound, PushFailed, UnsafeDestination
from conveyor.errors import ConfigurationError, PermanentError
from conveyor.ids import is_acceptable_id
from conveyor.uploads import UploadError, check_container_name, normalize_destination

CHUNK = 1 << 20
#: errors that another attempt would meet again
PERMANENT_OS_ERRORS = (IsADirectoryError, NotADirectoryError, PermissionError)
PERMANENT_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".conveyor-", ".tmp"
#: seconds since its last write after which an unlocked ``.conveyor-*.tmp`` file is swept: a
#: live copy writes every few milliseconds and holds its lock, so an hour is far on the safe side
STALE_TEMPORARY_AGE = 3600.0
#: a directory on the way is opened without following a symbolic link
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: tries to open a directory on the way that keeps being swapped or removed, before giving up
#: for this attempt (a transient failure: the job is retried)
ENTER_ATTEMPTS = 8


class DirectoryTarget:
    """Push files into the directories under ``root`` (one directory per container)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"<DirectoryTarget {self.root}>"

    def describe(self) -> str:
        """``dir:`` and the absolute root."""
        return f"dir:{self.root}"

    async def push(self, container: str, source: Path, destination: str, *,
                   job_id: str | None = None) -> None:
        """Copy ``source`` to ``root/container/destination`` (blocking I/O in a thread),
        through the temporary file of ``job_id`` (by default the name of ``source``: a staged
        upload is named after its job's id)."""
        await asyncio.to_thread(self.push_blocking, container, Path(source), destination,
                                job_id=job_id)

    def push_blocking(self, container: str, source: Path, destination: str, *,
                      job_id: str | None = None) -> None:
        """:meth:`push`, on the calling thread."""
        temporary = temporary_name(source.name if job_id is None else job_id)
        base = self.container_path(container)
        try:
            normal = normalize_destination(destination)
        except UploadError as exc:
            raise UnsafeDestination(str(exc)) from None
        parts = normal.lstrip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):  # normpath leaves none; be sure
            raise UnsafeDestination(f"{destination!r} is not a normal path")
        try:
            dir_fd = _open_parent(base, parts, normal)
            try:
                _replace(dir_fd, parts[-1], source, normal, temporary)
            finally:
                os.close(dir_fd)
        except PermanentError:
            raise
        except OSError as exc:
            if isinstance(exc, PERMANENT_OS_ERRORS) or exc.errno in PERMANENT_ERRNOS:
                raise PermanentError(f"cannot write {normal} in {container}: {exc}") from exc
            # a full disk, an I/O error: may well pass
            raise PushFailed(f"writing {normal} in {container} failed: {exc}") from exc

    def check_root(self) -> None:
        """:class:`~conveyor.errors.ConfigurationError` unless the root is a directory."""
        if not self.root.is_dir():
            if self.root.exists():
                raise ConfigurationError(f"{self.root} is not a directory: name a directory "
                                         "with one directory per container in it")
            raise ConfigurationError(f"no directory {self.root}: make it, with one directory "
                                     f"per container in it (mkdir -p {self.root}/NAME)")

    async def missing(self, container: str) -> ContainerNotFound | None:
        """:class:`ContainerNotFound` unless ``root/container`` is a directory (asked by
        ``POST /uploads`` before it accepts a file)."""
        try:
            self.container_path(container)
        except ContainerNotFound as exc:
            return exc
        return None

    def container_path(self, container: str) -> Path:
        """The real directory of ``container``; :class:`ContainerNotFound` if there is none."""
        try:
            name = check_container_name(container)
        except UploadError as exc:
            raise ContainerNotFound(container, str(exc)) from None
        path = self.root / name
        where = f"no directory {path}"
        try:
            base = path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            raise ContainerNotFound(container, where) from None
        if not base.is_dir():
            raise ContainerNotFound(container, f"{path} is not a directory")
        return base


def _open_parent(base: Path, parts: list[str], destination: str) -> int:
    """A descriptor of the directory of the destination's last part: each directory on the way
    opened (made if missing) relative to the one before, never through a symbolic link."""
    fd = os.open(base, DIRECTORY_FLAGS)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            child = _enter(fd, part, "/" + "/".join(parts[:depth]), destination)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _enter(parent: int, part: str, shown: str, destination: str) -> int:
    """The directory ``part`` of ``parent``, opened (made first if missing); ``shown`` is its
    path in the container, for errors. :class:`UnsafeDestination` if it is a symbolic link
    or not a directory; :class:`PushFailed` if it keeps changing under the push."""
    for _ in range(ENTER_ATTEMPTS):
        try:
            return os.open(part, DIRECTORY_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            # mkdirat makes the name in ``parent`` itself, never through a link; a name
            # that appeared meanwhile (a directory, a link) is looked at by the next open
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=parent)
        except OSError as exc:
            if not isinstance(exc, NotADirectoryError) and exc.errno != errno.ELOOP:
                raise
            try:
                found = os.stat(part, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # gone meanwhile: made by the next round
            if stat.S_ISLNK(found):
                raise UnsafeDestination(
                    f"{destination}: {shown} is a symbolic link, which a dir: push never "
                    "follows (it could lead outside the container)") from None
            if not stat.S_ISDIR(found):
                raise UnsafeDestination(
                    f"{destination}: {shown} exists and is not a directory") from None
            # a directory again: it was swapped while being opened; open it anew
    raise PushFailed(f"{destination}: {shown} kept changing while being opened")


def temporary_name(job_id: str) -> str:
    """The temporary file of the push of ``job_id``: ``.conveyor-<job_id>.tmp`` (a digest of
    ``job_id`` stands in for it when it is not a plain id)."""
    key = job_id
    if not is_acceptable_id(job_id):
        key = hashlib.sha256(job_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{TEMPORARY_PREFIX}{key}{TEMPORARY_SUFFIX}"


def sweep_temporaries(dir_fd: int, keep: str = "") -> int:
    """Remove the ``.conveyor-*.tmp`` files (but ``keep``) of the directory ``dir_fd`` that no
    push holds and none wrote to for :data:`STALE_TEMPORARY_AGE` seconds; returns how many."""
    cutoff = time.time() - STALE_TEMPORARY_AGE
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries if entry.name != keep
                 and entry.name.startswith(TEMPORARY_PREFIX)
                 and entry.name.endswith(TEMPORARY_SUFFIX)]
    removed = 0
    for name in names:
        with contextlib.suppress(OSError):  # gone meanwhile, or a symlink (not followed)
            removed += _remove_if_stale(dir_fd, name, cutoff)
    return removed


def _remove_if_stale(dir_fd: int, name: str, cutoff: float) -> bool:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        found = os.fstat(fd)
        if (not stat.S_ISREG(found.st_mode) or found.st_mtime >= cutoff
                or not _lock(fd) or not _is_named(dir_fd, name, fd)):
            return False
        os.unlink(name, dir_fd=dir_fd)  # while locked: no push can have claimed it
        return True
    finally:
        os.close(fd)


def _claim(dir_fd: int, temporary: str, destination: str) -> int:
    """The temporary file, opened, locked and empty: a new one, or the one a killed attempt of
    the same job left. :class:`PushFailed` while a live attempt of the job holds it."""
    # O_NONBLOCK: a FIFO planted under that name must not hang the open
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(3):
        fd = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
        try:
            if not _lock(fd):
                raise PushFailed(f"{destination}: another attempt of this job is writing it")
            if _is_named(dir_fd, temporary, fd):
                found = os.fstat(fd)
                if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
                    raise UnsafeDestination(f"{destination}: {temporary} is not a file of ours")
                os.ftruncate(fd, 0)  # what a killed attempt wrote is never appended to
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # renamed into place or swept before we locked it: open the name anew
    raise PushFailed(f"{destination}: {temporary} kept changing while being claimed")


def _lock(fd: int) -> bool:
    """Take the exclusive ``flock`` of ``fd`` without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_named(dir_fd: int, name: str, fd: int) -> bool:
    """True if ``name`` in ``dir_fd`` is still the file open as ``fd``."""
    try:
        named = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _replace(dir_fd: int, name: str, source: Path, destination: str, temporary: str) -> None:
    """Write ``source`` to ``name`` in the directory ``dir_fd`` atomically, through the
    temporary file ``temporary``; sweep stale temporary files there first."""
    try:
        src = source.open("rb")
    except FileNotFoundError:
        raise PermanentError(f"the file to push is missing: {source}") from None
    with src:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise UnsafeDestination(f"{destination} is a directory")
        except FileNotFoundError:
            pass
        with contextlib.suppress(OSError):  # housekeeping: never fails the push
            sweep_temporaries(dir_fd, keep=temporary)
        fd = _claim(dir_fd, temporary, destination)
        # Renamed or removed while still locked (closing the file releases the lock), so
        # another attempt of the job never truncates a file this one is moving.
        with os.fdopen(fd, "wb") as out:
            try:
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
