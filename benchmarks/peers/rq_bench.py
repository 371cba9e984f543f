"""RQ: one ``rq worker`` process; RQ runs one job at a time per process (C is unused).

It runs RQ's ``SimpleWorker``, which executes jobs in the worker process like every other
system here. RQ's default ``Worker`` forks a child per job, which costs about 25 ms a job on a
2-core machine (about 40 no-op jobs/s): set ``WORKER_CLASS = "rq.worker.Worker"`` to measure
that instead (the recorder then has to write at every job: ``Recorder(direct=True)``).
"""

from __future__ import annotations

import sys

import _common as bench
from redis import Redis
from rq import Queue

DIST = "rq"
WORKER_CLASS = "rq.worker.SimpleWorker"
WORKER = "1 process, SimpleWorker: 1 job at a time, no fork (C unused)"
ENQUEUE = "enqueue_many, 1000 per pipeline"

rec = bench.Recorder()


def noop() -> None:
    rec.noop()


def sleep(ms: float) -> None:
    rec.sleep(ms)


def enqueue(n: int, sleep_ms: float | None) -> None:
    queue = Queue(connection=Redis.from_url(bench.redis_url()))
    func, args = (noop, ()) if sleep_ms is None else (sleep, (sleep_ms,))
    for done in range(0, n, 1000):
        queue.enqueue_many([Queue.prepare_data(func, args) for _ in range(min(1000, n - done))])


def worker_command(c: int) -> list[str]:
    return [sys.executable, "-m", "rq.cli", "worker", "--url", bench.redis_url(),
            "--worker-class", WORKER_CLASS, "--quiet"]


if __name__ == "__main__":
    import rq_bench  # the copy the worker imports: the job's function path is rq_bench.noop

    bench.main(rq_bench)
