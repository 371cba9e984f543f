"""A real ``conveyor serve`` process for tests/test_http_*.py, and ways to talk to it.

Each server gets its own directory: a SQLite file, a staging directory and a ``dir:``
container target. Requests go over a real socket, with httpx or raw bytes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from conftest import cli_env
from conveyor.job import FINAL_STATES
from polling import wait_until

TOKEN = "s3cret-token"
FINAL = {str(s) for s in FINAL_STATES}


def server_env() -> dict[str, str]:
    """The environment of a server: tests/ importable, nothing from the shell steering it."""
    env = cli_env()
    for name in ("CONVEYOR_TOKEN", "CONVEYOR_STAGING"):
        env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m conveyor serve httpjobs:app`` on a free port (see the module docstring)."""

    def __init__(self, root: Path, *options: str, token: str | None = TOKEN,
                 app: str | None = "httpjobs:app",
                 preexec: Callable[[], None] | None = None) -> None:
        self.root = root
        self.db = root / "conveyor.db"
        self.staging = root / "staging"
        self.containers = root / "containers"
        self.log = root / "serve.log"
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "conveyor", "serve", *([app] if app else []),
            "--port", str(self.port), "--url", f"sqlite:///{self.db}",
            "--staging", str(self.staging), "--containers", f"dir:{self.containers}",
            "--grace", "5", *(["--token", token] if token else []), *options,
        ]
        self.preexec = preexec
        self.expect_healthy = True
        self.proc: subprocess.Popen[bytes] | None = None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=20)

    def start(self, healthy: bool = True) -> Server:
        """Start serve and wait until ``/healthz`` says ok (any answer with ``healthy=False``:
        a server whose store is down listens, answering 503)."""
        self.expect_healthy = healthy
        self.containers.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         env=server_env(), cwd=self.root,
                                         preexec_fn=self.preexec)
        wait_until(self._ready, timeout=20, what=f"the server to answer:\n{self.output()}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
        try:
            status = httpx.get(f"{self.url}/healthz", timeout=1).status_code
            return status == 200 or not self.expect_healthy
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager would; the exit code."""
        self.client.close()
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve ignored SIGTERM:\n{self.output()}") from None
        return self.proc.returncode

    # -- what is left behind ------------------------------------------------------------------
    def job_ids(self) -> list[str]:
        """Every job's id, page after page."""
        found: list[str] = []
        params: dict[str, Any] = {"limit": 200}
        while True:
            response = self.client.get("/jobs", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found += [job["id"] for job in page["jobs"]]
            if page["next_cursor"] is None:
                return found
            params["cursor"] = page["next_cursor"]

    def staged(self) -> list[str]:
        """Every file under the staging directory (partial ones included)."""
        if not self.staging.exists():
            return []
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*")
                      if not p.is_dir())

    def wait_job(self, job_id: str, states: Sequence[str] = tuple(FINAL),
                 timeout: float = 20) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            info: dict[str, Any] = self.client.get(f"/jobs/{job_id}").json()
            return info if info["state"] in states else None

        return wait_until(reached, timeout=timeout, what=f"job {job_id} to reach {states}")

    # -- raw sockets --------------------------------------------------------------------------
    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=20)

    def raw(self, head: bytes, body: bytes = b"", *, auth: bool = True) -> Response:
        """Send a request made by hand (``head`` without the blank line) and read the answer."""
        if auth and self.token:
            head += f"\r\nAuthorization: Bearer {self.token}".encode()
        with self.connect() as sock:
            sock.sendall(head + b"\r\n\r\n" + body)
            return read_response(sock)


class Response:
    """An answer read from a raw socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def read_response(sock: socket.socket) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Response(status, headers, body[:length])


def post_uploads_head(container: str = "web", path: str = "/data/file.bin",
                      length: int | None = None, extra: Sequence[str] = ()) -> bytes:
    lines = ["POST /uploads HTTP/1.1", "Host: test", f"X-Container-Name: {container}",
             f"X-File-Path: {path}", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\r\n".join(lines).encode("latin-1")  # one byte per character, as sent

