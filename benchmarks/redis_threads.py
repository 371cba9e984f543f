#!/usr/bin/env python3
"""Several threads of one process making blocking enqueues at once, with and without the
spinning wait of single calls.

``.venv/bin/python benchmarks/redis_threads.py [--threads 1,4,16] [--calls 3000] [--rounds 2]``
starts a private ``redis-server`` without persistence; for each thread count it runs
``--calls`` blocking ``fn.enqueue()`` per thread, in turns with spinning off
(``SPIN_FOR = 0``) and on (the default), and prints calls/s, p50 and p99 of a call and the
process's CPU per call. A spinning thread holds the GIL between its reads, so a call spins
only while it is the only one of its process waiting (``conveyor.backends.redis.client.
Waiting``): with several threads the two settings should measure alike.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from redis_single_call import private_redis

from conveyor import Conveyor
from conveyor.backends.redis import client


def run(enqueue: object, threads: int, calls: int) -> tuple[float, float, float, float]:
    """calls/s, p50 and p99 in µs, CPU µs per call."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        mine = []
        for n in range(calls):
            started = time.perf_counter()
            enqueue(n)  # type: ignore[operator]
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    cpu, wall = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    n = len(latencies)
    return n / wall, latencies[n // 2] * 1e6, latencies[int(n * 0.99)] * 1e6, cpu / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", default="1,4,16")
    p.add_argument("--calls", type=int, default=3000, help="calls per thread")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    spin = client.SPIN_FOR
    with private_redis("conveyor-threads-") as port:
        app = Conveyor(f"redis://127.0.0.1:{port}/0", namespace="bench")

        @app.job
        def noop(x: int) -> None:
            """A job that does nothing."""

        noop.enqueue(0)
        print(f"{'threads':>7} {'spin':>5} {'calls/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
              f"{'CPU µs/call':>12}")
        for threads in (int(t) for t in args.threads.split(",")):
            for _ in range(args.rounds):
                for on in (False, True):
                    client.SPIN_FOR = spin if on else 0.0
                    rate, p50, p99, cpu = run(noop.enqueue, threads, args.calls)
                    print(f"{threads:>7} {'on' if on else 'off':>5} {rate:>9,.0f} "
                          f"{p50:>8,.0f} {p99:>8,.0f} {cpu:>12.0f}", flush=True)
        app.close()
        client.SPIN_FOR = spin
    return 0


if __name__ == "__main__":
    sys.exit(main())
