"""A 100 MiB upload through a real ``conveyor serve``: the body is streamed to disk, so the
server's resident memory barely moves, and the file reaches the container intact."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_server import Server

MiB = 1024 * 1024
SIZE = 100 * MiB
CHUNK = MiB
MAX_GROWTH = 64 * MiB


def rss(pid: int) -> int:
    """VmRSS of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRSS:
    """Samples a process's RSS on a thread until stopped; keeps the largest value."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
                self.samples += 1
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(120)
def test_100_mib_upload_is_streamed(tmp_path: Path) -> None:
    server = Server(tmp_path, "--max-workers", "2").start()
    try:
        (server.containers / "web").mkdir()
        assert server.proc is not None
        pid = server.proc.pid
        # warm the route (imports, first connection) so the baseline is the steady state
        warm = server.client.post("/uploads", content=b"warm", headers={
            "X-Container-Name": "web", "X-File-Path": "/warm"})
        assert warm.status_code == 202, warm.text
        assert server.wait_job(warm.json()["id"])["state"] == "succeeded"
        before = rss(pid)

        digest = hashlib.sha256()
        rng = random.Random(1234)

        def body() -> Iterator[bytes]:
            for _ in range(SIZE // CHUNK):
                chunk = rng.randbytes(CHUNK)
                digest.update(chunk)
                yield chunk

        with PeakRSS(pid) as peak:
            response = server.client.post("/uploads", content=body(), timeout=60, headers={
                "X-Container-Name": "web", "X-File-Path": "/big/blob.bin",
                "Content-Length": str(SIZE)})
            assert response.status_code == 202, response.text
            info = server.wait_job(response.json()["id"], timeout=60)
        assert info["state"] == "succeeded", info
        assert info["result"]["size"] == SIZE
        assert peak.samples > 10
        growth = peak.peak - before
        print(f"server RSS {before / MiB:.1f} MiB, peak {peak.peak / MiB:.1f} MiB")
        assert growth < MAX_GROWTH, f"RSS grew by {growth / MiB:.1f} MiB (from {before / MiB:.1f})"

        pushed = server.containers / "web" / "big" / "blob.bin"
        assert pushed.stat().st_size == SIZE
        on_disk = hashlib.sha256()
        with pushed.open("rb") as handle:
            while block := handle.read(CHUNK):
                on_disk.update(block)
        assert on_disk.hexdigest() == digest.hexdigest()
    finally:
        assert server.stop() == 0, server.output()
