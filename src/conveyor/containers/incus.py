"""``incus[:SOCKET]``: push files into Incus instances through the daemon's unix socket.

This is the call ``incus file push -p`` makes: missing parent directories are created with
``POST /1.0/instances/NAME/files?path=DIR`` (``X-Incus-type: directory``; Incus answers 200
for a directory that exists), then the file goes up as the body of
``POST /1.0/instances/NAME/files?path=FILE`` (``X-Incus-type: file``,
``X-Incus-write: overwrite``), streamed from disk with a ``Content-Length``. The body waits
for the daemon's ``100 Continue`` (``Expect: 100-continue``, for at most a second): Incus
answers 404 for a missing instance before reading the body, so nothing is sent in vain.

No temporary file is made in the instance: the file API has no rename to move one into
place, so the file goes straight to its destination and nothing is left to sweep. A push
killed mid-copy may leave that destination partial; the job's retry overwrites it whole.

The HTTP/1.1 client is a small one on asyncio streams (one connection per request,
``Connection: close``). Incus answers ``{"type": "sync", "status_code": 200, ...}`` or
``{"type": "error", "error_code": 404, "error": "Instance not found"}``. A missing instance
is :class:`ContainerNotFound`; a missing or refusing socket, a time-out or a 5xx is
:class:`PushFailed` (retried); any other 4xx is a :class:`PermanentError`.

Before an upload is accepted, :meth:`IncusTarget.missing` asks ``GET /1.0/instances/NAME``
(within ``check_timeout``): only a 404 refuses it; a daemon that cannot be asked lets it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, quote_plus

from conveyor.containers.base import ContainerNotFound, PushFailed, UnsafeDestination
from conveyor.errors import PermanentError
from conveyor.uploads import UploadError, check_container_name, normalize_destination

DEFAULT_SOCKET = "/var/lib/incus/unix.socket"
CHUNK = 1 << 20
MAX_REPLY = 1 << 20  # Incus's answers to a push are small JSON documents


@dataclass(frozen=True)
class Reply:
    """What Incus answered: the HTTP status and the JSON document, if the body was one."""

    status: int
    document: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        """A 2xx that is not an error document."""
        return 200 <= self.status < 300 and self.kind != "error"

    @property
    def kind(self) -> str | None:
        """The document's ``type`` (``sync``, ``async``, ``error``)."""
        return None if self.document is None else str(self.document.get("type"))

    @property
    def code(self) -> int:
        """The error code of an error document, else the HTTP status."""
        if self.document is not None and self.kind == "error":
            with contextlib.suppress(TypeError, ValueError):
                return int(self.document.get("error_code") or self.status)
        return self.status

    @property
    def message(self) -> str:
        """The error text Incus gave, or the HTTP status."""
        if self.document is not None and self.document.get("error"):
            return str(self.document["error"])
        return f"HTTP {self.status}"


class IncusTarget:
    """Push files into the instances of the Incus daemon listening on ``socket_path``."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        continue_timeout: float = 1.0,
        check_timeout: float = 2.0,
        uid: int = 0,
        gid: int = 0,
        mode: int = 0o644,
    ) -> None:
        self.socket_path = socket_path
        #: seconds any one read or write may wait before the push counts as failed
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: how long to wait for ``100 Continue`` before sending the body regardless
        self.continue_timeout = continue_timeout
        #: how long :meth:`missing` may take before it gives up and lets the push decide
        self.check_timeout = check_timeout
        self.uid = uid
        self.gid = gid
        self.mode = mode

    def __repr__(self) -> str:
        return f"<IncusTarget {self.socket_path}>"

    def describe(self) -> str:
        """``incus:`` and the socket path."""
        return f"incus:{self.socket_path}"

    def _not_found(self, container: str) -> ContainerNotFound:
        return ContainerNotFound(container, f"no instance of that name in Incus at "
                                            f"{self.socket_path}")

    async def missing(self, container: str) -> ContainerNotFound | None:
        """:class:`ContainerNotFound` if Incus answers 404 to ``GET /1.0/instances/NAME``
        (asked by ``POST /uploads`` before it accepts a file); None if the instance exists or
        the daemon cannot be asked now (down, slow: the push job retries and finds out)."""
        try:
            name = check_container_name(container)
        except UploadError as exc:
            return ContainerNotFound(container, str(exc))
        head = (f"GET /1.0/instances/{quote(name, safe='')} HTTP/1.1\r\nHost: unix.socket\r\n"
                f"User-Agent: conveyor\r\nConnection: close\r\n\r\n").encode("latin-1")
        try:
            reply = await asyncio.wait_for(self._exchange(head, None, 0), self.check_timeout)
        except (PushFailed, TimeoutError, OSError):
            return None
        return self._not_found(container) if reply.code == 404 else None

    async def push(self, container: str, source: Path, destination: str) -> None:
        """Create the parents of ``destination`` in instance ``container``, then upload
        ``source`` there, replacing the file that is there."""
        try:
            name = check_container_name(container)
        except UploadError as exc:
            raise ContainerNotFound(container, str(exc)) from None
        try:
            normal = normalize_destination(destination)
        except UploadError as exc:
            raise UnsafeDestination(str(exc)) from None
        parents = _parents(normal)
        for index, directory in enumerate(parents):
            reply = await self.request(name, directory, "directory")
            if not reply.ok:
                # "/x" can only be missing with its instance; the root always exists
                raise _failure(reply, container, directory, instance_missing=index == 0,
                               not_found=self._not_found)
        with _open_source(Path(source)) as body:
            reply = await self.request(name, normal, "file", body)
        if not reply.ok:
            raise _failure(reply, container, normal, instance_missing=not parents,
                           not_found=self._not_found)

    async def request(
        self, container: str, path: str, kind: str, body: IO[bytes] | None = None
    ) -> Reply:
        """One ``POST /1.0/instances/{container}/files?path={path}`` of type ``kind``
        (``file`` or ``directory``), with ``body`` streamed as the content."""
        size = 0 if body is None else _size_of(body)
        mode = self.mode if kind == "file" else 0o755
        headers = [
            ("Host", "unix.socket"),
            ("User-Agent", "conveyor"),
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(size)),
            ("X-Incus-type", kind),
            ("X-Incus-uid", str(self.uid)),
            ("X-Incus-gid", str(self.gid)),
            ("X-Incus-mode", f"{mode:04o}"),
        ]
        if kind == "file":
            headers.append(("X-Incus-write", "overwrite"))
        if size:
            headers.append(("Expect", "100-continue"))
        headers.append(("Connection", "close"))
        target = (
            f"/1.0/instances/{quote(container, safe='')}/files?path={quote_plus(path, safe='')}"
        )
        head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        return await self._exchange((head + "\r\n").encode("latin-1"), body, size)

    async def _exchange(self, head: bytes, body: IO[bytes] | None, size: int) -> Reply:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket_path), self.connect_timeout
            )
        except FileNotFoundError:
            raise PushFailed(f"no Incus socket at {self.socket_path}: is incus running?") from None
        except TimeoutError:
            raise PushFailed(f"connecting to Incus at {self.socket_path} timed out") from None
        except OSError as exc:
            raise PushFailed(f"cannot connect to Incus at {self.socket_path}: {exc}") from None
        continued = asyncio.Event()
        send = asyncio.create_task(self._send(writer, head, body, size, continued))
        receive = asyncio.create_task(_read_reply(reader, self.timeout, continued))
        try:
            await asyncio.wait((send, receive), return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():  # the usual case: the request went out, now the answer
                error = send.exception()
                if isinstance(error, TimeoutError):
                    raise PushFailed(f"Incus at {self.socket_path} stopped reading") from None
                if error is not None and not isinstance(error, ConnectionError):
                    raise error
                # after a broken send the daemon may still have answered (and closed)
            return await receive
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError) as exc:
            raise PushFailed(f"talking to Incus at {self.socket_path} failed: {exc!r}") from None
        finally:
            for task in (send, receive):
                task.cancel()
            await asyncio.gather(send, receive, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, head: bytes, body: IO[bytes] | None,
                    size: int, continued: asyncio.Event) -> None:
        writer.write(head)
        await asyncio.wait_for(writer.drain(), self.timeout)
        if size:
            # Incus looks the instance up before it reads the body: a 404 then comes at
            # once, and the body need not (and, once the daemon closed, could not) be sent.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(continued.wait(), self.continue_timeout)
        sent = 0
        while body is not None and sent < size:
            chunk = await asyncio.to_thread(body.read, min(CHUNK, size - sent))
            if not chunk:
                raise PushFailed("the file got shorter while it was being pushed")
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), self.timeout)
            sent += len(chunk)


def _parents(destination: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = destination.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _open_source(source: Path) -> IO[bytes]:
    try:
        return source.open("rb")
    except FileNotFoundError:
        raise PermanentError(f"the file to push is missing: {source}") from None


def _size_of(body: IO[bytes]) -> int:
    return os.fstat(body.fileno()).st_size


def _failure(reply: Reply, container: str, path: str, *, instance_missing: bool,
             not_found: Callable[[str], ContainerNotFound]) -> Exception:
    """The exception for an Incus error: permanent, transient or a missing instance."""
    code, message = reply.code, reply.message
    if code == 404 and (instance_missing or "instance" in message.lower()):
        return not_found(container)
    if code >= 500 or code < 400:
        return PushFailed(f"Incus could not write {path} in {container}: {message} ({code})")
    return PermanentError(f"Incus refused to write {path} in {container}: {message} ({code})")


async def _read_reply(
    reader: asyncio.StreamReader, timeout: float, continued: asyncio.Event | None = None
) -> Reply:
    """Read one HTTP/1.1 response (``Content-Length``, chunked, or up to the close); set
    ``continued`` on an interim ``100 Continue``."""
    while True:
        status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        version, _, rest = status_line.decode("latin-1").partition(" ")
        if not version.startswith("HTTP/"):
            raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:
            break
        if status == 100 and continued is not None:  # interim: the real answer follows
            continued.set()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        content = await _read_chunked(reader, timeout)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        content = await asyncio.wait_for(reader.readexactly(min(length, MAX_REPLY)), timeout)
    else:
        content = await asyncio.wait_for(reader.read(MAX_REPLY), timeout)
    document: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(content)
        document = parsed if isinstance(parsed, dict) else None
    return Reply(status, document)


async def _read_chunked(reader: asyncio.StreamReader, timeout: float) -> bytes:
    content = bytearray()
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        length = int(line.split(b";")[0].strip(), 16)
        if length == 0:
            while await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout) != b"\r\n":
                pass  # trailers
            return bytes(content)
        if len(content) + length > MAX_REPLY:
            raise ValueError("the answer is too large")
        content += await asyncio.wait_for(reader.readexactly(length + 2), timeout)
        del content[-2:]
