"""What every peer runner shares: the job recorder and the enqueue / drain / kill driver.

A runner ``<system>_bench.py`` runs with its system's own virtualenv python. It defines the
two jobs (no-op and sleep) with the system's API, calling a :class:`Recorder` at the start and
end of each, and passes itself to :func:`main`, which

1. empties the private Redis database, enqueues N jobs ONE CALL AT A TIME from this one
   producer and times it;
2. starts the system's worker command line(s) for the workload: P processes in the system's
   documented mode for it, with concurrency C per process where the mode has one;
3. waits until the jobs report N finishes and computes the drain rate as
   N / (first job start .. last job end), from the jobs' own timestamps;
4. kills the workers' process groups and prints one JSON object.

Only the standard library and redis-py (a dependency of every system here) are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import redis

HERE = Path(__file__).resolve().parent
COUNT, SPAN = "conveyor-bench:count", "conveyor-bench:span"


def redis_url() -> str:
    """The private Redis the harness started, from ``BENCH_REDIS_URL``."""
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        sys.exit("set BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 (a Redis you may flush)")
    return url


def concurrency() -> int:
    """C per worker process, from ``BENCH_CONCURRENCY`` (set by :func:`main`)."""
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


class Recorder:
    """Counts finished jobs and keeps the earliest start and latest end of this process.

    A job costs a lock and a few float compares; a daemon thread publishes the figures to
    Redis every 10 ms (``INCRBY`` plus ``ZADD LT/GT``), so the measure barely touches the
    jobs. ``direct`` writes at every job instead, for workers that run each job in a child
    process that exits straight after it (RQ's fork-per-job).
    """

    def __init__(self, direct: bool = False) -> None:
        self.direct = direct
        self.lock = threading.Lock()
        self.pid = 0
        self.client: redis.Redis | None = None
        self.count, self.first, self.last = 0, float("inf"), 0.0

    def start(self) -> float:
        return time.time()

    def noop(self) -> None:
        """The body of every peer's no-op job."""
        self.end(self.start())

    def sleep(self, ms: float) -> None:
        """The body of every thread-based peer's sleep job."""
        started = self.start()
        time.sleep(ms / 1000)
        self.end(started)

    async def async_sleep(self, ms: float) -> None:
        """The body of every asyncio peer's sleep job."""
        started = self.start()
        await asyncio.sleep(ms / 1000)
        self.end(started)

    def end(self, started: float) -> None:
        ended = time.time()
        with self.lock:
            if self.pid != os.getpid():  # first job of this process (after a fork, too)
                self.pid, self.client = os.getpid(), redis.Redis.from_url(redis_url())
                self.count, self.first, self.last = 0, float("inf"), 0.0
                if not self.direct:
                    threading.Thread(target=self._loop, daemon=True).start()
            self.count += 1
            self.first, self.last = min(self.first, started), max(self.last, ended)
        if self.direct:
            self._publish()

    def _publish(self) -> None:
        with self.lock:
            count, first, last, self.count = self.count, self.first, self.last, 0
        if count and self.client is not None:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(SPAN, {"first": first}, lt=True)
            pipe.zadd(SPAN, {"last": last}, gt=True)
            pipe.incrby(COUNT, count)
            pipe.execute()

    def _loop(self) -> None:
        while True:
            time.sleep(0.01)
            self._publish()


class Peer(Protocol):
    """What a runner module provides to :func:`main`."""

    DIST: str  # distribution name, for its version
    ENQUEUE: str  # the single call that enqueues one job, for the notes

    def enqueue(self, n: int, sleep_ms: float | None) -> None:
        """Enqueue ``n`` jobs, one call per job (no bulk API, no concurrent calls)."""

    def workers(self, kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
        """The worker command lines for ``kind`` on P processes, and the mode in words."""


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, then SIGKILL it if the leader is still there."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, sig)
        try:
            worker.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children the leader left behind
        os.killpg(worker.pid, signal.SIGKILL)


def shown(command: list[str]) -> str:
    """A command line as the notes show it: the virtualenv's python as ``python``."""
    return shlex.join(["python" if x == sys.executable else x for x in command])


def _drain(commands: list[list[str]], n: int, c: int, timeout: float,
           client: redis.Redis) -> dict[str, object]:
    path = os.pathsep.join(x for x in (str(HERE), os.environ.get("PYTHONPATH")) if x)
    env = {**os.environ, "BENCH_CONCURRENCY": str(c), "PYTHONPATH": path}
    with tempfile.TemporaryFile() as log:
        workers = [subprocess.Popen(command, cwd=HERE, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
                   for command in commands]
        deadline = time.monotonic() + timeout
        try:
            done = 0
            while done < n:
                time.sleep(0.02)
                done = int(client.get(COUNT) or 0)
                exited = [w for w in workers if w.poll() is not None]
                if exited or time.monotonic() > deadline:
                    why = (f"worker exited with {exited[0].returncode}" if exited
                           else f"timed out after {timeout:.0f}s")
                    log.seek(0)
                    tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                    return {"error": f"{why}, {done}/{n} jobs done", "log": tail}
        finally:
            for worker in workers:
                _stop(worker)
    first, last = client.zscore(SPAN, "first"), client.zscore(SPAN, "last")
    assert first is not None and last is not None
    return {"drain_per_s": done / (last - first), "done": done}


def main(peer: Peer) -> None:
    """Command line of a runner: ``--jobs N --kind noop|sleep:MS --processes P
    --concurrency C``."""
    parser = argparse.ArgumentParser(description=f"{peer.DIST}: enqueue, then drain")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--kind", default="noop", help="noop or sleep:MS")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=10, help="per process, where used")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the drain")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the workers on the way out
    sleep_ms = None if args.kind == "noop" else float(args.kind.removeprefix("sleep:"))
    commands, mode = peer.workers(args.kind, args.processes, args.concurrency)
    client = redis.Redis.from_url(redis_url())
    client.flushdb()
    started = time.perf_counter()
    peer.enqueue(args.jobs, sleep_ms)
    enqueue_per_s = args.jobs / (time.perf_counter() - started)
    result: dict[str, object] = {
        "system": peer.DIST, "version": version(peer.DIST), "kind": args.kind,
        "jobs": args.jobs, "processes": args.processes, "concurrency": args.concurrency,
        "enqueue_per_s": enqueue_per_s, "enqueue": peer.ENQUEUE, "mode": mode,
        "commands": [shown(command) for command in commands],
    }
    result.update(_drain(commands, args.jobs, args.concurrency, args.timeout, client))
    client.flushdb()
    print(json.dumps(result))
