#!/usr/bin/env python3
"""One caller's single-call enqueues on SQLite next to the physical limit; prints the figures.

``.venv/bin/python benchmarks/sqlite_single_call.py [--jobs 10000] [--rounds 3] [--dir D]``

Every path stores ``--jobs`` jobs one call at a time, each in a new database file of
``--dir`` (WAL, ``synchronous=FULL``: every acknowledged call is fsynced):

* **plain**: the floor. Plain ``sqlite3``, one ``BEGIN IMMEDIATE; INSERT; COMMIT`` per row,
  with the connection settings of Conveyor's store (:func:`conveyor.backends.sqlite.schema.
  connect`: WAL, the URL's ``synchronous`` and busy timeout) into Conveyor's own jobs table
  (made by Conveyor, so the same columns and indexes), a row as an enqueue of the same call
  stores it.
* **fn**: ``noop.enqueue(n)`` of a registered job (blocking).
* **app**: ``app.enqueue("noop", n)`` (blocking).
* **plain-thread**: plain's transaction awaited from an event loop, run on a thread so
  that the loop is not stalled by its fsync (``loop.run_in_executor`` on a pool of one
  thread): the floor of an awaited call.
* **async**: ``await noop.enqueue_async(n)``, awaited one at a time.

In each of ``--rounds`` rounds the paths take turns every ``--block`` calls, in one process
(so that the disk's and the machine's moods fall on each alike); per path: the median rate
in calls/s over the rounds and the median CPU time per call (``time.process_time``, every
thread of the process, the kernel's work for the fsyncs too) in microseconds. ``--paths`` picks
some; ``--json`` prints each round's figures too. ``--synchronous NORMAL`` (no fsync per
commit in WAL mode) leaves each path's CPU cost alone, without the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.backends.sqlite.schema import Settings, connect
from conveyor.ids import new_id

NS = "conveyor"
WARMUP = 200
PATHS = ("plain", "fn", "app", "plain-thread", "async")


async def noop(n: int) -> None:
    """The job every Conveyor path enqueues."""


class Runner:
    """One way of storing calls, one at a time, in its own database file."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, first: int, count: int) -> None:
        """Store calls ``first`` .. ``first + count - 1``."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the file."""


class Plain(Runner):
    """Plain sqlite3: one fsynced ``BEGIN IMMEDIATE; INSERT; COMMIT`` per row."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        broker = SQLiteBroker(url, namespace=NS)
        broker.open_blocking()  # Conveyor's layout, then let go of the file
        broker.close_blocking()
        self.conn = connect(Settings.from_url(url))
        self.insert = (f"INSERT INTO {NS}_jobs (id, name, queue, state, args, kwargs, "
                       f"created_at, run_at, unique_key) VALUES (?,?,?,?,?,?,?,?,?)")

    def run(self, first: int, count: int) -> None:
        conn, insert = self.conn, self.insert
        for n in range(first, first + count):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, (new_id(now), "noop", "default", "queued", f"[{n}]", "{}",
                                  now, now, None))
            conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class PlainInThread(Plain):
    """Plain sqlite3 awaited from an event loop: each call's transaction runs on one thread
    of its own (a ``ThreadPoolExecutor`` of one, as ``asyncio.to_thread`` would use), so
    that the loop is not stalled by the fsync: the floor of any awaited single call."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.pool = ThreadPoolExecutor(1)
        self.loop = asyncio.new_event_loop()

    def run(self, first: int, count: int) -> None:
        store, loop, pool = super().run, self.loop, self.pool

        async def go() -> None:
            for n in range(first, first + count):
                await loop.run_in_executor(pool, store, n, 1)

        loop.run_until_complete(go())

    def close(self) -> None:
        self.pool.shutdown()
        self.loop.close()
        super().close()


class Blocking(Runner):
    """``noop.enqueue(n)``, or ``app.enqueue("noop", n)`` with ``via_app``."""

    via_app = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.app = Conveyor(url, namespace=NS)
        self.job: Any = self.app.job(noop)

    def run(self, first: int, count: int) -> None:
        if self.via_app:
            enqueue = self.app.enqueue
            for n in range(first, first + count):
                enqueue("noop", n)
        else:
            call = self.job.enqueue
            for n in range(first, first + count):
                call(n)

    def close(self) -> None:
        self.app.close()


class ViaApp(Blocking):
    via_app = True


class Awaited(Blocking):
    """``await noop.enqueue_async(n)``, one at a time, on a loop kept for the whole run."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.loop = asyncio.new_event_loop()

    def run(self, first: int, count: int) -> None:
        call = self.job.enqueue_async

        async def go() -> None:
            for n in range(first, first + count):
                await call(n)

        self.loop.run_until_complete(go())

    def close(self) -> None:
        self.app.close()
        self.loop.close()


RUNNERS: dict[str, type[Runner]] = {"plain": Plain, "fn": Blocking, "app": ViaApp,
                                   "plain-thread": PlainInThread, "async": Awaited}


def one_round(paths: list[str], where: Path, jobs: int, block: int,
              synchronous: str) -> dict[str, tuple[float, float]]:
    """Every path stores ``jobs`` calls in a new file, the paths taking turns every ``block``
    calls (so that the disk's and the machine's moods fall on each alike); per path, the
    seconds and CPU seconds its calls took."""
    runners = {}
    for path in paths:
        for leftover in where.glob(f"{path}.db*"):
            leftover.unlink()
        runners[path] = RUNNERS[path](f"sqlite:///{where / path}.db?synchronous={synchronous}")
    spent = {path: [0.0, 0.0] for path in paths}
    try:
        for runner in runners.values():
            runner.run(0, WARMUP)
        for first in range(WARMUP, WARMUP + jobs, block):
            count = min(block, WARMUP + jobs - first)
            for path, runner in runners.items():
                wall, cpu = time.perf_counter(), time.process_time()
                runner.run(first, count)
                spent[path][0] += time.perf_counter() - wall
                spent[path][1] += time.process_time() - cpu
    finally:
        for runner in runners.values():
            runner.close()
    return {path: (wall, cpu) for path, (wall, cpu) in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--block", type=int, default=250,
                        help="calls of one path before the next path's turn")
    parser.add_argument("--dir", help="where the database files go (default: a temp dir)")
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL", "EXTRA"),
                        help="the store's durability (NORMAL: no fsync per commit in WAL, "
                             "which leaves the CPU cost of each path)")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    paths = [p for p in opts.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {sorted(unknown)}")
    own = opts.dir is None
    where = Path(tempfile.mkdtemp(prefix="conveyor-single-") if own else opts.dir)
    where.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
    try:
        for _ in range(opts.rounds):
            spent = one_round(paths, where, opts.jobs, opts.block, opts.synchronous)
            for path, (wall, cpu) in spent.items():
                figures[path].append((opts.jobs / wall, cpu / opts.jobs * 1e6))
    finally:
        if own:
            shutil.rmtree(where, ignore_errors=True)
    floor = statistics.median(r for r, _ in figures["plain"]) if "plain" in figures else None
    for path, runs in figures.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        versus = f"  {rate / floor:6.1%} of plain" if floor else ""
        if path == "async" and "plain-thread" in figures:
            versus += f", {rate / statistics.median(r for r, _ in figures['plain-thread']):.1%}" \
                " of plain-thread"
        each = " ".join(f"{r:,.0f}" for r, _ in runs)
        print(f"{path:12} {rate:9,.0f} calls/s  {cpu:7.1f} us CPU/call{versus}   rounds: {each}")
    if opts.json:
        print(json.dumps({p: [{"rate": r, "cpu_us": c} for r, c in runs]
                          for p, runs in figures.items()}))


if __name__ == "__main__":
    main()
