#!/usr/bin/env python3
"""One producer's single-call enqueues on Redis next to the limit of one round trip.

``.venv/bin/python benchmarks/redis_single_call.py [--jobs 20000] [--rounds 3]`` starts a
private ``redis-server`` without persistence and, in alternating rounds, times:

- Conveyor's three single-call paths, one call at a time: ``fn.enqueue()``,
  ``app.enqueue(name)`` and ``await app.enqueue_async(name)``;
- a bare redis-py ``LPUSH`` loop (what a peer such as Huey sends per call), blocking and
  awaited on redis-py's asyncio client (an asyncio peer's floor);
- ``redis-benchmark -c 1`` sending the very ``EVALSHA`` a Conveyor enqueue sends (captured
  with ``MONITOR``), each call with a new job id: the physical limit of one round trip of
  the same script from one client.

It prints the medians, each path's share of the ``redis-benchmark`` rate (of the medians,
and ``paired``: the median over the rounds of each round's share, which a machine whose
speed drifts between rounds disturbs less), the client's CPU per call and Redis's own time
per call (``INFO commandstats``). On a noisy machine, more and shorter rounds (``--jobs
5000 --rounds 11``) give steadier shares.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
import redis.asyncio

from conveyor import Conveyor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.02)
    server.kill()
    raise SystemExit("redis-server did not start")


@contextmanager
def private_redis(prefix: str) -> Iterator[int]:
    """A private ``redis-server`` without persistence for the block; its port."""
    directory = tempfile.mkdtemp(prefix=prefix)
    server, port = start_redis(directory)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def capture_evalsha(port: int, enqueue: Callable[[], object]) -> list[str]:
    """The words of the EVALSHA one ``enqueue()`` sends, read with MONITOR."""
    monitor = socket.create_connection(("127.0.0.1", port))
    monitor.sendall(b"MONITOR\r\n")
    assert monitor.recv(100).startswith(b"+OK")
    seen: list[bytes] = []

    def read() -> None:
        data = b""
        while b'"EVALSHA"' not in data and b'"evalsha"' not in data:
            chunk = monitor.recv(65536)
            if not chunk:
                break
            data += chunk
        seen.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    enqueue()
    reader.join(10)
    monitor.close()
    line = next(x for x in seen[0].decode().split("\r\n") if '"EVALSHA"' in x.upper())
    return shlex.split(line[line.index('"'):])


def redis_benchmark(port: int, words: list[str], n: int) -> float:
    """One client's rate of ``words`` (an EVALSHA whose job id gets a random part)."""
    args = [re.sub(r'("id":")([^"]{6})[^"]*"', r'\g<1>\g<2>__rand_int__"', w) for w in words]
    done = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-n", str(n),
                           "-r", "100000000000", "-q", *args],
                          capture_output=True, text=True, check=True)
    found = re.findall(r"([\d.]+) requests per second", done.stdout)
    return float(found[-1])


def script_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000, help="calls per path per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not shutil.which("redis-benchmark"):
        raise SystemExit("redis-benchmark is not installed (apt-get install redis-tools)")
    n = args.jobs
    with private_redis("conveyor-single-") as port:
        client = redis.Redis(port=port)
        app = Conveyor(f"redis://127.0.0.1:{port}/0", namespace="bench")

        @app.job
        def noop(x: int) -> None:
            """A job that does nothing."""

        def by_function() -> None:
            enqueue = noop.enqueue
            for i in range(n):
                enqueue(i)

        def by_name() -> None:
            enqueue = app.enqueue
            for i in range(n):
                enqueue("noop", i)

        def awaited() -> None:
            async def calls() -> None:
                enqueue = app.enqueue_async
                for i in range(n):
                    await enqueue("noop", i)
            asyncio.run(calls())

        def lpush() -> None:
            push = client.lpush
            for _ in range(n):
                push("peer.queue", "x" * 100)

        def lpush_awaited() -> None:
            async def calls() -> None:
                async_client = redis.asyncio.Redis(port=port)
                push = async_client.lpush
                for _ in range(n):
                    await push("peer.queue", "x" * 100)
                await async_client.aclose()
            asyncio.run(calls())

        noop.enqueue(0)  # scripts loaded, connections open
        words = capture_evalsha(port, lambda: noop.enqueue(1))
        paths: dict[str, Callable[[], None]] = {
            "fn.enqueue()": by_function, "app.enqueue(name)": by_name,
            "await app.enqueue_async(name)": awaited, "redis-py LPUSH (a peer's call)": lpush,
            "await redis.asyncio LPUSH": lpush_awaited}
        rates: dict[str, list[float]] = {k: [] for k in [*paths, "redis-benchmark EVALSHA"]}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        usec: dict[str, list[float]] = {k: [] for k in rates if "LPUSH" not in k}
        for round_ in range(args.rounds):
            for name, run in paths.items():
                client.config_resetstat()
                c0, t0 = time.process_time(), time.perf_counter()
                run()
                t1, c1 = time.perf_counter(), time.process_time()
                rates[name].append(n / (t1 - t0))
                cpu[name].append(1e6 * (c1 - c0) / n)
                if name in usec:
                    usec[name].append(script_usec(client))
            client.config_resetstat()
            rates["redis-benchmark EVALSHA"].append(redis_benchmark(port, words, n))
            usec["redis-benchmark EVALSHA"].append(script_usec(client))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), file=sys.stderr, flush=True)
        limits = rates["redis-benchmark EVALSHA"]
        limit = statistics.median(limits)
        print(f"{n:,} single calls per path per round, {args.rounds} alternating rounds, "
              f"medians; one producer; private redis-server without persistence")
        print(f"{'path':<32} {'calls/s':>9} {'of limit':>9} {'paired':>7} {'client CPU':>11} "
              f"{'Redis time':>11}")
        for name, values in rates.items():
            rate = statistics.median(values)
            paired = statistics.median(v / lim for v, lim in zip(values, limits, strict=True))
            own = f"{statistics.median(cpu[name]):.1f} µs" if name in cpu else ""
            script = f"{statistics.median(usec[name]):.1f} µs" if name in usec else ""
            print(f"{name:<32} {rate:>9,.0f} {rate / limit:>8.0%} {paired:>6.0%} {own:>11} "
                  f"{script:>11}")
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
