"""Answer-after-the-push versus answer-once-durable: request latency of a synchronous upload
endpoint next to ``conveyor serve``, both doing a 200 ms "push" per upload.

    .venv/bin/python benchmarks/http_sync_vs_async.py [--requests 200] [--concurrency 8] \
        [--size 65536] [--push-ms 200]

(a) sync: a stdlib ``ThreadingHTTPServer`` whose handler reads the body, sleeps 200 ms (the
    push) and only then answers 200: the client waits for the whole push.
(b) conveyor: ``python -m conveyor serve`` with this module's app, ``POST /jobs/slow_push``
    with the body as the job's Upload; the server streams the body to disk (fsynced), stores
    the job (SQLite, fsync per commit), answers 202 and a worker in the same process does the
    200 ms push afterwards.

Both are driven by the same closed loop: CONCURRENCY threads, each with one keep-alive
http.client connection, sending REQUESTS bodies of SIZE random bytes in all. Latency is per
request, as the client sees it; "all pushed" is when the last push finished (for conveyor:
when its queue is empty). Uses only the standard library and the repo's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conveyor import Conveyor, Upload

PUSH_SECONDS = float(os.environ.get("BENCH_PUSH_SECONDS", "0.2"))

#: the app ``conveyor serve`` runs for side (b) (its store comes from ``--url``)
app = Conveyor(url="sqlite:///unused.db")


@app.job(queue="pushes")
async def slow_push(upload: Upload) -> int:
    """The push: 200 ms of waiting on someone else (a container daemon, a network)."""
    await asyncio.sleep(PUSH_SECONDS)
    return upload.size


# -- (a) the synchronous endpoint ---------------------------------------------------------------
class SyncHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between head and body
    pushed = 0
    last_push = 0.0
    lock = threading.Lock()

    def do_POST(self) -> None:
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)
        time.sleep(PUSH_SECONDS)  # the push, before answering
        with SyncHandler.lock:
            SyncHandler.pushed += 1
            SyncHandler.last_push = time.perf_counter()
        body = b'{"status": "pushed"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the load -----------------------------------------------------------------------------------
def drive(port: int, path: str, total: int, concurrency: int,
          size: int) -> tuple[list[float], float]:
    """Send ``total`` POSTs of ``size`` bytes over ``concurrency`` keep-alive connections;
    return every request's latency (seconds) and the start time."""
    body = os.urandom(size)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                started = time.perf_counter()
                conn.request("POST", path, body=body, headers={
                    "Content-Type": "application/octet-stream", "X-Host-Path": "/tmp/blob.bin"})
                response = conn.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                if response.status not in (200, 202):
                    errors.append(f"{response.status} {response.reason}")
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return latencies, start


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_sync(args: argparse.Namespace) -> tuple[list[float], float, float]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SyncHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        latencies, start = drive(server.server_address[1], "/upload", args.requests,
                                 args.concurrency, args.size)
        answered = time.perf_counter() - start
        return latencies, answered, SyncHandler.last_push - start
    finally:
        server.shutdown()
        server.server_close()


def run_conveyor(args: argparse.Namespace) -> tuple[list[float], float, float]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-http-"))
    port = free_port()
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
    env["BENCH_PUSH_SECONDS"] = str(PUSH_SECONDS)
    command = [sys.executable, "-m", "conveyor", "serve", "http_sync_vs_async:app",
               "--port", str(port), "--url", f"sqlite:///{root / 'conveyor.db'}",
               "--staging", str(root / "staging"), "--containers", f"dir:{root / 'containers'}",
               "--max-workers", str(args.max_workers), "--grace", "5"]
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def get(path: str) -> dict[str, object] | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            data = json.loads(response.read())
            conn.close()
            return data if response.status == 200 else None
        except OSError:
            if proc.poll() is not None:
                raise SystemExit((root / "serve.log").read_text()) from None
            return None

    def drained() -> bool:
        counts = get("/queues")
        pushes = counts["queues"].get("pushes", {}) if counts else {}  # type: ignore[union-attr]
        waiting = sum(pushes.get(state, 0) for state in ("queued", "scheduled", "running"))
        return pushes.get("succeeded", 0) >= args.requests and waiting == 0

    try:
        wait_until(lambda: get("/healthz") is not None, 20, "conveyor serve to start")
        latencies, start = drive(port, "/jobs/slow_push", args.requests, args.concurrency,
                                 args.size)
        answered = time.perf_counter() - start
        wait_until(drained, 60, "the pushes to finish")
        return latencies, answered, time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    global PUSH_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=64 * 1024, help="body bytes (64 KiB)")
    parser.add_argument("--push-ms", type=float, default=200.0)
    parser.add_argument("--max-workers", type=int, default=50,
                        help="conveyor's concurrent jobs (default 50)")
    args = parser.parse_args()
    PUSH_SECONDS = args.push_ms / 1000

    print(f"{args.requests} POSTs of {args.size // 1024} KiB, {args.concurrency} connections, "
          f"push {args.push_ms:.0f} ms each; conveyor: SQLite, {args.max_workers} job slots",
          flush=True)
    rows = [("sync: push, then 200", *run_sync(args)),
            ("conveyor serve: 202, push later", *run_conveyor(args))]
    print()
    print(f"| {'endpoint':<32} | {'p50 ms':>8} | {'p99 ms':>8} | {'max ms':>8} | "
          f"{'req/s':>7} | {'all answered s':>14} | {'all pushed s':>12} |")
    print(f"| {'-' * 32} | {'-' * 7}: | {'-' * 7}: | {'-' * 7}: | {'-' * 6}: | "
          f"{'-' * 13}: | {'-' * 11}: |")
    for name, latencies, answered, pushed in rows:
        print(f"| {name:<32} | {percentile(latencies, 0.5) * 1000:>8.1f} | "
              f"{percentile(latencies, 0.99) * 1000:>8.1f} | {max(latencies) * 1000:>8.1f} | "
              f"{len(latencies) / answered:>7.0f} | {answered:>14.2f} | {pushed:>12.2f} |")


if __name__ == "__main__":
    main()
