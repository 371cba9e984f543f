"""One failover run through Redis Sentinel, measured: used by tests/test_redis_sentinel.py
(one run) and benchmarks/sentinel_failover.py (many runs, a table).

A master, one replica and three sentinels (:class:`~redis_sentinel.SentinelGroup`); two
``conveyor worker sentineljobs:app`` processes; two producers in this process (one calling
the blocking ``enqueue``, one ``enqueue_async`` on an event loop of its own), each noting
every acknowledged job id in an fsynced ledger. Mid-run the master is killed with SIGKILL;
once the sentinels promote the replica, the old master is started again on its data as a
replica of the new one (what it held that the new master lacks is dropped in the sync). The
producers go on a while, stop, and the run waits for the workers to finish what is stored.

Settings (:data:`SETTINGS`): ``async`` (plain asynchronous replication),
``min-replicas-lag10`` and ``min-replicas-lag1`` (``min-replicas-to-write 1`` and
``min-replicas-max-lag`` 10 or 1 on every server) and ``wait`` (``?replicas=1&
replicas_timeout=1`` on the URL: each write waits for the replica).

With ``partition`` seconds, the replica's link to the master is cut that long before the
kill (:class:`~redis_sentinel.Relay`): the replica falls behind, as it would behind a
slow or broken network, while the sentinels still see both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conveyor import Conveyor, JobState
from conveyor.errors import DuplicateJob, StoreUnavailable
from conveyor.ids import new_id
from redis_sentinel import SentinelGroup

TESTS = Path(__file__).parent

#: setting -> (extra redis-server arguments, URL query)
SETTINGS: dict[str, tuple[list[str], str]] = {
    "async": ([], ""),
    "min-replicas-lag10": (["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"],
                           ""),
    "min-replicas-lag1": (["--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"], ""),
    "wait": ([], "replicas=1&replicas_timeout=1"),
}


@dataclass
class Figures:
    """What one run measured."""

    setting: str
    #: seconds the replica was cut off before the kill
    partition: float = 0.0
    #: enqueues acknowledged to a producer
    acked: int = 0
    #: acknowledged jobs the store no longer has after the failover
    lost: int = 0
    #: of those, jobs a worker had started before they were lost
    lost_ran: int = 0
    #: jobs that ran to completion (an ``end`` line) and are stored, but not succeeded
    results_lost: int = 0
    #: stored acknowledged jobs still not finished when the run gave up waiting
    unfinished: int = 0
    #: jobs started more than once, and the most starts of one job
    duplicates: int = 0
    most_runs: int = 0
    #: enqueues refused as unconfirmed by the replicas (then retried with the same id)
    unconfirmed: int = 0
    #: seconds from the kill to the first acknowledgement of every producer, and to the
    #: end of the first job a worker ran that was enqueued after it
    producers_resumed: float | None = None
    workers_resumed: float | None = None
    #: seconds from the kill until the sentinels named the new master
    failover: float = 0.0
    #: seconds from the kill until the old master was back, as an in-sync replica
    rejoined: float = 0.0
    errors: list[str] = field(default_factory=list)


class _Producer:
    """Enqueues ``record`` jobs until stopped, retrying each id until acknowledged, and
    notes each acknowledged id with the time in an fsynced ledger."""

    def __init__(self, app: Conveyor, ledger: Path, stop: threading.Event,
                 blocking: bool) -> None:
        self.app, self.ledger, self.stop, self.blocking = app, ledger, stop, blocking
        self.unconfirmed = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _note(self, fd: int, job_id: str, started: float) -> None:
        """Note an acknowledged id: when its last attempt started, and when it returned."""
        os.write(fd, f"ack {job_id} {started:.6f} {time.time():.6f}\n".encode())
        os.fsync(fd)

    def _failed(self, exc: Exception) -> None:
        from conveyor.backends.redis.replicas import ReplicasUnconfirmed

        if isinstance(exc, ReplicasUnconfirmed):
            self.unconfirmed += 1
        elif not isinstance(exc, StoreUnavailable):
            self.errors.append(repr(exc))

    def _main(self) -> None:
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if self.blocking:
                self._blocking(fd)
            else:
                asyncio.run(self._async(fd))
        finally:
            os.close(fd)

    def _blocking(self, fd: int) -> None:
        n = 0
        while not self.stop.is_set():
            job_id, n = new_id(), n + 1
            while not self.stop.is_set():
                started = time.time()
                try:
                    self.app.enqueue_call("record", [n], {}, job_id=job_id)
                except DuplicateJob:  # an earlier attempt stored it; only its reply was lost
                    pass
                except Exception as exc:
                    self._failed(exc)
                    time.sleep(0.05)
                    continue
                self._note(fd, job_id, started)
                break

    async def _async(self, fd: int) -> None:
        n = 0
        while not self.stop.is_set():
            job_id, n = new_id(), n + 1
            while not self.stop.is_set():
                started = time.time()
                try:
                    await self.app.enqueue_call_async("record", [n], {}, job_id=job_id)
                except DuplicateJob:
                    pass
                except Exception as exc:
                    self._failed(exc)
                    await asyncio.sleep(0.05)
                    continue
                self._note(fd, job_id, started)
                break
        await self.app.broker.close()


def _lines(path: Path) -> list[tuple[str, str, float, float]]:
    """A ledger's lines: kind, job id, and one or two times (the first repeated)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, job_id, *times = line.split()
        rows.append((kind, job_id, float(times[0]), float(times[-1])))
    return rows


def failover_run(setting: str, directory: Path, before: float = 1.5, after: float = 2.0,
                 drain: float = 30.0, partition: float = 0.0) -> Figures:
    """Run once with ``setting`` (a key of :data:`SETTINGS`); files go in ``directory``."""
    import sentineljobs

    extra, query = SETTINGS[setting]
    figures = Figures(setting, partition)
    group = SentinelGroup(replicas=1, server_extra=extra, relayed=partition > 0,
                          failover_timeout_ms=60000 if partition > 0 else 3000).start()
    ledger = directory / "jobs.ledger"
    acks = {blocking: directory / f"acks-{'blocking' if blocking else 'async'}.ledger"
            for blocking in (True, False)}
    namespace = f"f{new_id().lower()}"
    url = group.url(query)
    env = {**os.environ, "CONVEYOR_TEST_LEDGER": str(ledger),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("CONVEYOR_URL", None)
    workers: list[subprocess.Popen[bytes]] = []
    app: Conveyor = sentineljobs.app
    app.use_url(url)
    app.namespace = namespace
    stop = threading.Event()
    producers = [_Producer(app, acks[blocking], stop, blocking) for blocking in (True, False)]
    try:
        for n in range(2):
            log = (directory / f"worker-{n}.log").open("wb")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", "sentineljobs:app", "--url", url,
                 "--namespace", namespace, "--max-workers", "8"],
                cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT))
        for producer in producers:
            producer.thread.start()
        time.sleep(before)
        if partition > 0:
            group.relays[0].cut()
            time.sleep(partition)
        old = group.kill_master()
        killed_at, killed_mono = time.time(), time.monotonic()
        new = group.wait_failover(old.port)
        figures.failover = time.monotonic() - killed_mono
        group.restart(old, replica_of=new)
        group.wait_settled(1)
        figures.rejoined = time.monotonic() - killed_mono
        time.sleep(after)
        stop.set()
        for producer in producers:
            producer.thread.join(60)
        figures.errors += [e for p in producers for e in p.errors]
        figures.unconfirmed = sum(p.unconfirmed for p in producers)
        _wait_drained(app, drain)
        _measure(app, figures, [_lines(path) for path in acks.values()], _lines(ledger),
                 killed_at)
    finally:
        stop.set()
        for proc in workers:
            proc.kill()
            proc.wait()
        app.close()
        app._broker = None
        group.remove()
    return figures


def _wait_drained(app: Conveyor, timeout: float) -> None:
    """Wait until no job of the namespace is queued, scheduled or running."""
    deadline = time.monotonic() + timeout
    busy = (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING)
    while time.monotonic() < deadline:
        try:
            counts = app.run_sync(app.broker.counts())
        except StoreUnavailable:
            counts = {"?": {"queued": 1}}
        if not any(by.get(str(state), 0) for by in counts.values() for state in busy):
            return
        time.sleep(0.2)


def _measure(app: Conveyor, figures: Figures,
             acks: list[list[tuple[str, str, float, float]]],
             runs: list[tuple[str, str, float, float]], killed_at: float) -> None:
    """Fill ``figures`` from the producers' ledgers, the jobs' ledger and the store."""
    acked = {job_id for ledger in acks for _, job_id, _, _ in ledger}
    figures.acked = len(acked)

    async def read() -> dict[str, JobState | None]:
        ids, found = sorted(acked), []
        for start in range(0, len(ids), 50):  # fewer at once than the client's connections
            found += await asyncio.gather(*(app.broker.get(i) for i in ids[start:start + 50]))
        return {i: (r.state if r is not None else None) for i, r in zip(ids, found, strict=True)}

    states = app.run_sync(read())
    starts = Counter(job_id for kind, job_id, _, _ in runs if kind == "start")
    ended = {job_id for kind, job_id, _, _ in runs if kind == "end"}
    lost = {i for i, state in states.items() if state is None}
    figures.lost = len(lost)
    figures.lost_ran = len(lost & set(starts))
    figures.results_lost = sum(1 for i in ended & acked
                               if states.get(i) not in (None, JobState.SUCCEEDED))
    figures.unfinished = sum(1 for s in states.values()
                             if s is not None and s is not JobState.SUCCEEDED)
    figures.duplicates = sum(1 for count in starts.values() if count > 1)
    figures.most_runs = max(starts.values(), default=0)
    firsts = [min((done for _, _, _, done in ledger if done > killed_at), default=None)
              for ledger in acks]
    if all(first is not None for first in firsts):
        figures.producers_resumed = max(f for f in firsts if f is not None) - killed_at
    # a job finished whose enqueue started after the kill: stored on the new master
    enqueued_after = {job_id for ledger in acks for _, job_id, started, _ in ledger
                      if started > killed_at}
    done = [at for kind, job_id, at, _ in runs if kind == "end" and job_id in enqueued_after]
    figures.workers_resumed = (min(done) - killed_at) if done else None
