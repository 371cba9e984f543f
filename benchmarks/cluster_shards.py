#!/usr/bin/env python3
"""One busy namespace on a Redis Cluster, plain and sharded by queue; prints the figures.

``.venv/bin/python benchmarks/cluster_shards.py [--url URL] [--queues 4] [--jobs 20000]
[--processes 2] [--max-workers 20]``

Without ``--url`` it starts a private cluster of three masters (``tests/redis_cluster.py``)
and stops it after; ``--url`` takes a ``redis+cluster://`` URL (or a ``redis://`` one: one
server, where both runs land on the same node). For each mode, plain (every key under
``{ns}``) and sharded (``?shard=queue``, a hash tag per queue), in a fresh namespace:
``--jobs`` no-op jobs are enqueued over ``--queues`` queues, the masters' command
statistics are reset, then ``conveyor worker --processes N`` serving every queue drains
them. Figures: jobs/s from the first job done to the last (counts polled every 0.2 s), and
each master's share of the commands it ran meanwhile (``INFO commandstats``, the
benchmark's own INFO/CONFIG left out).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
#: commands of the measurement itself, left out of the shares
OWN = {"info", "config|resetstat", "config", "cluster|nodes", "cluster|slots", "cluster|shards",
       "cluster", "command", "command|docs"}


def masters(url: str) -> list[redis.Redis]:
    """A client per master of the cluster (or the one server) ``url`` names."""
    rest = url.split("://", 1)[1].split("?")[0].split("/")[0].rsplit("@", 1)[-1]
    host, port = rest.split(",")[0].rsplit(":", 1)
    if "+cluster" not in url.split("://", 1)[0]:
        return [redis.Redis(host=host, port=int(port))]
    from redis.cluster import RedisCluster

    cluster = RedisCluster(host=host, port=int(port))
    found = [redis.Redis(host=node.host, port=node.port) for node in cluster.get_primaries()]
    cluster.close()
    return found


def commands(node: redis.Redis) -> int:
    stats: dict[str, Any] = node.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items()
               if k.removeprefix("cmdstat_") not in OWN)


def run(url: str, queues: list[str], jobs: int, processes: int, workers: int,
        sharded: bool) -> tuple[float, list[tuple[str, int]]]:
    """Drain ``jobs`` no-ops over ``queues``; jobs/s and (master, commands) pairs."""
    from conveyor.app import Conveyor
    from conveyor.bench_app import register
    from conveyor.ids import new_id

    store = url + ("&" if "?" in url else "?") + "shard=queue" if sharded else url
    app = register(Conveyor(url=store, namespace=f"bench{new_id().lower()}"))
    per = jobs // len(queues)
    for queue in queues:
        for start in range(0, per, 1000):
            app.enqueue_many("noop", [[]] * min(1000, per - start), queue=queue)
    total = per * len(queues)
    nodes = masters(url)
    for node in nodes:
        node.config_resetstat()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "conveyor.bench_app:app", "--url", store,
         "--namespace", app.namespace, "--queues", ",".join(queues),
         "--processes", str(processes), "--max-workers", str(workers),
         "--min-workers", str(workers), "--log-level", "error"],
        env=env, start_new_session=True)
    first: tuple[float, int] | None = None
    try:
        while True:
            time.sleep(0.2)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            counts = app.run_sync(app.broker.counts())
            done = sum(row.get("succeeded", 0) for row in counts.values())
            now = time.monotonic()
            if first is None and done:
                first = (now, done)
            if done >= total:
                break
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    if first is None or first[1] >= total or now - first[0] < 1.0:
        raise SystemExit(f"{total} jobs drained too fast to time: give more --jobs")
    rate = (total - first[1]) / (now - first[0])
    shares = [(f"{n.connection_pool.connection_kwargs['host']}:"
               f"{n.connection_pool.connection_kwargs['port']}", commands(n)) for n in nodes]
    for node in nodes:
        node.close()
    app.close()
    return rate, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", help="redis+cluster://HOST:PORT (default: a private cluster)")
    parser.add_argument("--queues", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=20)
    args = parser.parse_args()
    cluster = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from redis_cluster import RedisCluster
        from redis_server import free_port

        cluster = RedisCluster(masters=3)
        for node in cluster.nodes:  # a node's bus port is its port + 10000
            while node.port > 55535:
                node.port = free_port()
        cluster.start()
        url = cluster.url
    queues = [f"q{n}" for n in range(args.queues)]
    try:
        from conveyor.urls import redact_url

        print(f"{args.jobs} no-op jobs over {len(queues)} queues, conveyor worker "
              f"--processes {args.processes} --max-workers {args.max_workers}, "
              f"{redact_url(url)}")
        for sharded in (False, True):
            rate, shares = run(url, queues, args.jobs, args.processes, args.max_workers,
                               sharded)
            total = sum(calls for _, calls in shares) or 1
            spread = ", ".join(f"{name} {100 * calls / total:.0f}%" for name, calls in shares)
            print(f"{'sharded' if sharded else 'plain  '}: {rate:8.0f} jobs/s; "
                  f"{total} commands, by master: {spread}")
    finally:
        if cluster is not None:
            cluster.remove()


if __name__ == "__main__":
    main()
