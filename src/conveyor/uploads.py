"""Uploaded files: streamed to a staging area, fsynced and renamed before any job sees them.

A staged file is named after the job that owns it, so ownership needs no index: a staged file
whose job is gone or final can be removed (see :meth:`StagingArea.sweep`). Bodies are never
held in memory: chunks go to a ``.part`` file as they arrive, and a body past the size limit
is refused without reading much further.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.ids import is_valid_id

CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_PATH = 4096
#: most components a destination may have (``/a/b/c`` has 3): a push makes the missing
#: directories on the way, so an unbounded path could make thousands of nested ones
MAX_PATH_DEPTH = 32
#: longest component of a destination, in UTF-8 bytes (the usual file-system limit)
MAX_NAME_BYTES = 255


class UploadError(ConveyorError, ValueError):
    """An upload that cannot be accepted; ``status`` is the HTTP status that says why."""

    status = 400


class UploadTooLarge(UploadError):
    """The body is larger than the limit."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than the limit of {limit} bytes")
        self.limit = limit


def check_container_name(name: str | None) -> str:
    """The container name, or :class:`UploadError` unless it is 1-63 letters, digits, ``_.-``
    starting with a letter or digit."""
    if not name or not CONTAINER_NAME.fullmatch(name):
        raise UploadError(
            "X-Container-Name must be 1-63 characters of letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def normalize_destination(path: str | None) -> str:
    """An absolute file path inside a container, normalised (``/a/./b//c`` -> ``/a/b/c``).

    Relative paths, NUL bytes, over-long paths, paths of more than :data:`MAX_PATH_DEPTH`
    components or with a component over :data:`MAX_NAME_BYTES` bytes and paths that name the
    root are refused; ``..`` cannot climb above the root once the path is absolute and
    normalised.
    """
    if not path:
        raise UploadError("X-File-Path is required: the absolute destination path")
    if "\x00" in path or len(path) > MAX_PATH:
        raise UploadError("X-File-Path must not contain NUL bytes or exceed 4096 characters")
    if not path.startswith("/"):
        raise UploadError("X-File-Path must be an absolute path (start with /)")
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/" or path.endswith("/"):
        raise UploadError("X-File-Path must name a file, not a directory")
    parts = normal[1:].split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise UploadError(f"X-File-Path has {len(parts)} components, more than the limit of "
                          f"{MAX_PATH_DEPTH}")
    for part in parts:
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise UploadError(f"X-File-Path has a component of {size} bytes, more than the "
                              f"limit of {MAX_NAME_BYTES}: {part[:40]!r}...")
    return normal


@dataclass(frozen=True)
class StagedFile:
    """A body on disk, durable, named after the job that owns it."""

    job_id: str
    path: Path
    size: int


class StagingArea:
    """The directory uploads wait in until their job is final."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"

    def ensure(self) -> None:
        """Create the directories (idempotent); new ones are the owner's only (0700)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.incoming.mkdir(mode=0o700, exist_ok=True)

    def path_of(self, job_id: str) -> Path:
        """Where the file of ``job_id`` is staged (whether or not it exists)."""
        if not is_valid_id(job_id):
            raise UploadError(f"not a job id: {job_id!r}")
        return self.root / job_id

    async def receive(
        self, chunks: AsyncIterator[bytes], job_id: str, max_bytes: int
    ) -> StagedFile:
        """Write ``chunks`` to the file of ``job_id``: a ``.part`` file first, fsynced, then
        renamed into place. On any error, a size past ``max_bytes`` or cancellation (the
        client went away), nothing is left behind."""
        self.ensure()
        final = self.path_of(job_id)
        partial = self.incoming / f"{job_id}.part"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(max_bytes)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            os.rename(partial, final)
            await asyncio.to_thread(_fsync_directory, self.root)
        except BaseException:
            partial.unlink(missing_ok=True)
            final.unlink(missing_ok=True)  # renamed already, but not durable: no job gets it
            raise
        return StagedFile(job_id, final, size)

    def remove(self, job_id: str) -> bool:
        """Delete the staged file of ``job_id``; True if there was one."""
        try:
            self.path_of(job_id).unlink()
        except (FileNotFoundError, UploadError):
            return False
        return True

    def staged_ids(self, before: float | None = None) -> list[str]:
        """The job ids that have a staged file (last written before ``before``, if given)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if is_valid_id(p.name) and p.is_file()
                      and (before is None or _mtime(p) < before))

    def sweep(self, owned: Callable[[str], bool], *, partials: bool = True) -> int:
        """Remove the staged files whose job does not own them any more (``owned(job_id)``
        is False: the job is gone or final) and, with ``partials``, every partial upload.
        Returns how many."""
        removed = 0
        if partials and self.incoming.is_dir():
            for partial in self.incoming.iterdir():
                partial.unlink(missing_ok=True)
                removed += 1
        for job_id in self.staged_ids():
            if not owned(job_id) and self.remove(job_id):
                removed += 1
        return removed


def _mtime(path: Path) -> float:
    """When ``path`` was last written; +inf if it is gone (so it is never taken as old)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Upload:
    """Annotate a job parameter with ``Upload`` to have it receive a file.

    Over HTTP, ``POST /jobs/{name}`` then takes the raw file as the body (other arguments as
    query parameters); the file is staged under the job's id and the job gets an ``Upload``
    with its ``path``, ``size`` and the client's ``filename``. The staged file is removed
    once the job is final (succeeded, dead or cancelled).
    """

    def __init__(self, path: Path, size: int, filename: str | None = None,
                 content_type: str | None = None) -> None:
        self.path = path
        self.size = size
        self.filename = filename
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"<Upload {self.filename or self.path.name} {self.size} bytes>"

    def open(self) -> Any:
        """The file, opened for reading in binary mode."""
        return self.path.open("rb")

    @staticmethod
    def describe(size: int, filename: str | None, content_type: str | None) -> dict[str, Any]:
        """The JSON a job stores for its upload (the bytes stay in the staging area)."""
        return {"size": size, "filename": filename, "content_type": content_type}

    @classmethod
    def from_json(cls, value: dict[str, Any], path: Path) -> Upload:
        """The argument a job receives, from what was stored and where the file is staged."""
        return cls(path, int(value.get("size", 0)), value.get("filename"),
                   value.get("content_type"))
