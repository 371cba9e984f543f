"""Private ``redis-server`` processes for tests: free port, temp dir, AOF with fsync always.

Tests start and stop their own servers so they can kill and restart them; ``REDIS_URL``, when
set, is used instead for tests that do not need to control the server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from polling import wait_until

#: ports a first start tries when the chosen ones turn out taken
PORT_TRIES = 5


class PortTaken(RuntimeError):
    """The port was taken by another process before the server could bind it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` on 127.0.0.1 (or ``host``), its data in a directory of its own.

    ``wrap`` is put before the command, e.g. ``["ip", "netns", "exec", NS]`` to run the
    server in a network namespace (it must exec the server: the process is the server's).
    """

    def __init__(self, directory: Path | None = None, port: int | None = None,
                 extra: Sequence[str] = (), host: str = "127.0.0.1",
                 wrap: Sequence[str] = (), choose_port: Callable[[], int] | None = None,
                 ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
        self.port = port or free_port()
        #: picks another port when the chosen one was taken before the server bound it (two
        #: test processes handed the same free port); None: a port the caller gave, kept.
        #: Only the first start moves: a restart keeps the port its clients know.
        self.choose_port = choose_port or (free_port if port is None else None)
        self.process: subprocess.Popen[bytes] | None = None
        #: more ``redis-server`` arguments (``--cluster-enabled yes``, ``--replicaof ...``)
        self.extra = list(extra)
        self.host = host
        self.wrap = list(wrap)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        for _ in range(PORT_TRIES - 1):
            try:
                return self._start_once()
            except PortTaken:
                if self.choose_port is None:
                    raise
                self.port = self.choose_port()
        return self._start_once()

    def _start_once(self) -> RedisServer:
        command = [
            *self.wrap, self.binary, "--port", str(self.port), "--bind", self.host, "--dir",
            str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "no",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"), *self.extra,
        ]
        self.launch(command, "redis-server", self.directory / "redis.log")
        self.choose_port = None  # started: a restart keeps this port
        return self

    def launch(self, command: Sequence[str], what: str, log: Path) -> RedisServer:
        """Start ``command`` and wait until the server on :attr:`port` answers PING (or asks
        for a password) and is this process: a port another server took meanwhile (two test
        processes handed the same free port) is an error, not a silent shared server."""
        logged = log.stat().st_size if log.exists() else 0  # a log is appended to
        self.process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                    if reply.startswith(b"-NOAUTH"):
                        return self
                    if reply.startswith(b"+PONG"):
                        self._check_own(sock, what)
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        if self.process.poll() is not None and log.exists() and \
                "Address already in use" in log.read_bytes()[logged:].decode(errors="replace"):
            raise PortTaken(f"{what}: port {self.port} was taken before it could bind it")
        raise RuntimeError(f"{what} did not start; see {log}")

    def _check_own(self, sock: socket.socket, what: str) -> None:
        """Raise when the server answering on the port is not the process started here."""
        assert self.process is not None
        sock.sendall(b"INFO server\r\n")
        info = b""
        while b"process_id:" not in info or not info.split(b"process_id:", 1)[1].count(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            info += chunk
        found = info.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0] if b"process_id:" in info \
            else b"?"
        if found != str(self.process.pid).encode():
            self.kill()
            raise PortTaken(f"{what}: port {self.port} is served by another process "
                            f"(pid {found.decode(errors='replace')}), not ours")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        """Stop the server and delete its directory, if this object made it."""
        self.stop()
        if self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> None:
        self.kill()
        self.start()


_shared: RedisServer | None = None


def shared_redis_url() -> str:
    """``REDIS_URL`` if given, else one private server for the whole test run."""
    global _shared
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if _shared is None:
        _shared = RedisServer().start()
        atexit.register(_shared.remove)
    return _shared.url


@contextmanager
def tls_server(directory: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A real ``redis-server`` listening on a TLS port only, its certificate (for
    127.0.0.1) made in ``directory`` with ``openssl``; yields it and the certificate's path
    once it answers over TLS (``rediss://127.0.0.1:PORT/0?ssl_ca_certs=CERT``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    import redis

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    tls = RedisServer(port=port, extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no"])
    command = [tls.binary, "--bind", "127.0.0.1", "--dir", str(tls.directory), "--save", "",
               "--logfile", str(tls.directory / "redis.log"), *tls.extra]
    tls.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with redis.Redis.from_url(
                    f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}") as plain:
                return bool(plain.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, timeout=20, what="the TLS server")
        yield tls, cert
    finally:
        tls.stop()
        tls.remove()


@contextmanager
def not_redis() -> Iterator[int]:
    """A port where another service answers (an HTTP server's 400 to anything): what a URL
    naming the wrong port reaches. Yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(1000)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
