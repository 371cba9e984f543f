"""A FAKE of the Incus daemon's file API, on a real unix socket, for the push tests.

It is a fake because no Incus daemon can run on these machines (no container runtime, no
privileges). It speaks real HTTP/1.1 over a real socket, the way ``incusd`` answers
``POST /1.0/instances/{name}/files?path=...``: ``{"type": "sync", "status_code": 200, ...}``
on success, ``{"type": "error", "error_code": 404, "error": "Instance not found"}`` for an
unknown instance, 404 ``not found`` for a file whose directory is missing, and directory
creation that answers 200 when the directory exists already. It records every request, keeps
pushed files in a dict, and answers with any status queued in :attr:`FakeIncus.fail_next`.

It runs on its own event loop in a thread, so blocking tests and worker threads can use it.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as the fake received it."""

    method: str
    target: str  # as sent: path and query, still encoded
    version: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def path(self) -> str:
        """The ``path`` query parameter, decoded."""
        return parse_qs(urlsplit(self.target).query)["path"][0]


@dataclass
class FakeIncus:
    """The fake daemon: ``instances`` exist, each with ``/``, ``/etc`` and ``/root``."""

    socket_path: Path
    instances: tuple[str, ...] = ("web",)
    requests: list[Request] = field(default_factory=list)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    dirs: dict[str, set[str]] = field(default_factory=dict)
    #: statuses to answer (with an error document) before behaving normally again
    fail_next: list[int] = field(default_factory=list)
    #: answer with ``Transfer-Encoding: chunked`` instead of a ``Content-Length``
    chunked: bool = False
    #: read requests but never answer them
    hang: bool = False
    #: never send ``100 Continue``
    ignore_expect: bool = False

    def __post_init__(self) -> None:
        for name in self.instances:
            self.dirs.setdefault(name, {"/", "/etc", "/root"})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def start(self) -> FakeIncus:
        """Listen on :attr:`socket_path` (in the background thread)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the socket and stop the thread."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def file_pushes(self) -> list[Request]:
        """The requests that pushed a file (not directories)."""
        return [r for r in self.requests if r.headers.get("x-incus-type") == "file"]

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            method, target, version = (await reader.readuntil(b"\r\n")).decode().split()
            headers: dict[str, str] = {}
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            instance = urlsplit(target).path.split("/")[3]
            if instance not in self.instances:
                # like incusd: the instance is looked up before the body is read
                self.requests.append(Request(method, target, version, headers, b""))
                await self._answer(writer, 404, "Instance not found")
                return
            length = int(headers.get("content-length", "0"))
            expects = headers.get("expect", "").lower() == "100-continue"
            if length and expects and not self.ignore_expect:  # as Go's net/http does
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(length)
            request = Request(method, target, version, headers, body)
            self.requests.append(request)
            if self.hang:
                await asyncio.sleep(3600)
            if self.fail_next:
                status = self.fail_next.pop(0)
                await self._answer(writer, status, f"fake failure {status}")
                return
            await self._answer(writer, *self._apply(instance, request))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _apply(self, instance: str, request: Request) -> tuple[int, str]:
        path = request.path
        dirs = self.dirs[instance]
        if posixpath.dirname(path) not in dirs:
            return 404, "not found"
        kind = request.headers.get("x-incus-type")
        if kind == "directory":
            dirs.add(path)
            return 200, ""
        if kind == "file" and path not in dirs:
            self.files[(instance, path)] = request.body
            return 200, ""
        return 400, f"Bad file type: {kind}"

    async def _answer(self, writer: asyncio.StreamWriter, status: int, error: str) -> None:
        document: dict[str, Any]
        if status == 200:
            document = {"type": "sync", "status": "Success", "status_code": 200,
                        "operation": "", "error_code": 0, "error": "", "metadata": {}}
        else:
            document = {"type": "error", "status": "", "status_code": 0, "operation": "",
                        "error_code": status, "error": error, "metadata": None}
        body = json.dumps(document).encode() + b"\n"
        head = f"HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n"
        if self.chunked:
            middle = len(body) // 2
            chunks = [body[:middle], body[middle:]]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            head += "Transfer-Encoding: chunked\r\n"
        else:
            payload = body
            head += f"Content-Length: {len(body)}\r\n"
        writer.write((head + "Connection: close\r\n\r\n").encode() + payload)
        await writer.drain()
