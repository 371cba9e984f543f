"""RQ: ``rq worker-pool -n P --worker-class rq.worker.SimpleWorker`` for both workloads.

RQ's docs: "Each worker will process a single job at a time. Within a worker, there is no
concurrent processing going on. If you want to perform jobs concurrently, simply start more
workers." So P workers, one job at a time each, whatever the workload: its sleep figure is
bounded by about P / 10 ms. The pool runs RQ's ``SimpleWorker``, which executes jobs in the
worker process like every other system here; RQ's default ``Worker`` forks a child per job,
about 25 ms a job on a 2-core machine: set ``WORKER_CLASS = "rq.worker.Worker"`` to measure
that instead (the recorder then has to write at every job: ``Recorder(direct=True)``).
"""

from __future__ import annotations

import sys

import _common as bench
from redis import Redis
from rq import Queue

DIST = "rq"
WORKER_CLASS = "rq.worker.SimpleWorker"
ENQUEUE = "queue.enqueue(), one call at a time"

rec = bench.Recorder()


def noop() -> None:
    rec.noop()


def sleep(ms: float) -> None:
    rec.sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    queue = Queue(connection=Redis.from_url(bench.redis_url()))
    for _ in range(n):
        if sleep_ms is None:
            queue.enqueue(noop)
        else:
            queue.enqueue(sleep, sleep_ms)


def workers(kind: str, p: int, c: int) -> tuple[list[list[str]], str]:
    # "If you want to perform jobs concurrently, simply start more workers": P of them
    command = [sys.executable, "-m", "rq.cli", "worker-pool", "--url", bench.redis_url(),
               "-n", str(p), "--worker-class", WORKER_CLASS, "--quiet"]
    return [command], f"pool of {p} SimpleWorker processes, 1 job at a time each"


if __name__ == "__main__":
    import rq_bench  # the copy the worker imports: the job's function path is rq_bench.noop

    bench.main(rq_bench)
