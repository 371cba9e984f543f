"""The fault scenarios, each a function that runs real processes, injects its faults, waits
for the dust to settle and returns a :class:`Report`. The tests (small sizes) assert on the
reports; ``benchmarks/faults.py`` runs the same functions at larger sizes and prints them.

Vocabulary of the reports:

* **acknowledged**: a job whose enqueue returned (or whose upload was answered 202);
* **lost**: an acknowledged job that did not end succeeded;
* **duplicates**: attempts started (per the ledger) beyond one per job;
* **thrown away**: a job an attempt finished ('end ok' in the ledger) that does not end
  succeeded with the result of such an attempt;
* **recovery**: for a killed process, seconds from the kill to the next start of each job it
  was running; for a store outage, seconds from the store's return to the first start of a
  job acknowledged after the outage began;
* **stop**: seconds from SIGTERM to the exit of the process, and its exit code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.job import FINAL_STATES, JobState
from faults import ledger as L
from faults.faultjobs import make_app
from faults.harness import (
    Fleet,
    Proc,
    Stop,
    Store,
    child_env,
    free_port,
    open_store,
    pid_alive,
    wait_for,
)

# -- the stated bounds --------------------------------------------------------------------------
#: the lease of every scenario (``Conveyor(lease=)``): short, so lost work comes back fast
LEASE = 2.0
#: ``--grace`` of every worker and server: running jobs get this long on SIGTERM
GRACE = 1.0
#: a graceful stop (SIGTERM to exit) takes at most GRACE + STOP_SLACK seconds, whatever the
#: store's state ("grace + a few seconds"): after the grace, the jobs still running are
#: cancelled and requeued, or, with the store down or locked, their outcomes are given up on
#: after a few seconds of trying (their leases bring them back); then signing off and the
#: interpreter's exit. A supervisor gives its children as long, then kills them.
STOP_SLACK = 5.0
#: a job interrupted by the death of its worker process starts again within LEASE +
#: RECOVERY_SLACK seconds of the death: the lease runs out at most LEASE after the last
#: heartbeat, a live worker's recovery pass comes within 1 s, a claim within a few
#: milliseconds, plus the remaining run of a short job (at most 0.3 s here) when every slot
#: is busy or a suspect job must run alone
RECOVERY_SLACK = 3.0
#: the same for ``conveyor serve``, which also has to be started again (about 1-2 s here,
#: more while the whole suite loads the 2 cores: a recovery took lease + 5.15 s there)
SERVE_RECOVERY_SLACK = 8.0
#: after a store outage, a job enqueued meanwhile starts within LEASE + RESUME_SLACK seconds
#: of the store's return (reconnection backoff is at most 2 s)
RESUME_SLACK = 3.0
#: every job of a scenario is final this long after the last fault, at most
SETTLE_TIMEOUT = 120.0


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# -- reports ------------------------------------------------------------------------------------
@dataclass
class Report:
    """What a scenario did and found (see the module docstring for the vocabulary)."""

    scenario: str
    store: str
    #: the scenario's function: kill_loop, redis_kill, long_outage, poison, sigterm_outage,
    #: serve_kill (:func:`faults.checks.broken` checks what is particular to each)
    key: str = ""
    #: acknowledged jobs
    jobs: int = 0
    #: faults injected (processes killed, store outages, stops during an outage)
    faults: int = 0
    lost: list[str] = field(default_factory=list)
    dead_innocents: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_bound: int = 0
    #: duplicates whose earlier attempt had ended ok: its outcome was never recorded (its
    #: process died before writing it, or the store refused it), so the job ran again
    rerun_after_ok: int = 0
    thrown_away: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    #: jobs a kill interrupted that never started again
    unrecovered: list[str] = field(default_factory=list)
    recovery_bound: float = 0.0
    stops: list[Stop] = field(default_factory=list)
    stop_bound: float = GRACE + STOP_SLACK
    #: files or processes left behind
    strays: list[str] = field(default_factory=list)
    #: scenario-specific findings, by name
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the tails of the processes' logs, for failure messages
    logs: str = ""
    #: a few of the lost jobs with their stored state
    lost_detail: str = ""

    def slow_stops(self) -> list[Stop]:
        """Stops that took longer than the bound, did not end, or ended with a non-zero code."""
        return [s for s in self.stops if s.code != 0 or s.seconds > self.stop_bound]

    def recovery(self, q: float) -> float:
        return L.percentile(self.recoveries, q)

    def summary(self) -> str:
        rec = ("n/a" if not self.recoveries else
               f"p50 {self.recovery(0.5):.2f}s p99 {self.recovery(0.99):.2f}s "
               f"max {max(self.recoveries):.2f}s (bound {self.recovery_bound:.1f}s)")
        stops = max((s.seconds for s in self.stops), default=0.0)
        lines = [
            f"{self.scenario} on {self.store}: {self.jobs} jobs, {self.faults} faults, "
            f"{self.seconds:.1f}s",
            f"lost {len(self.lost)} {self.lost[:5]} {self.lost_detail}",
            f"dead innocents {len(self.dead_innocents)} {self.dead_innocents[:5]}",
            f"duplicates {self.duplicates} (bound {self.duplicate_bound}; "
            f"{self.rerun_after_ok} of them re-ran an attempt that had ended ok)",
            f"thrown away {len(self.thrown_away)} {self.thrown_away[:5]}; superseded "
            f"{len(self.superseded)}",
            f"recovery {rec}; never restarted {self.unrecovered[:5]}",
            f"stops: longest {stops:.2f}s (bound {self.stop_bound:.1f}s); "
            + "; ".join(str(s) for s in self.slow_stops()[:5]),
            f"strays {self.strays[:10]}",
            *(f"{k}: {v}" for k, v in self.extra.items()),
            *self.notes,
        ]
        return "\n".join(lines)

    def explain(self) -> str:
        """The summary and the logs' tails, for an assertion message."""
        return f"\n{self.summary()}\n{self.logs}"


# -- a scenario's surroundings ------------------------------------------------------------------
#: what a scenario's directory may hold: the store, the ledger, the logs, the marker file,
#: the staging area and the containers (both checked file by file by ``serve_kill``)
EXPECTED_FILES = ("conveyor.db", "conveyor.db-wal", "conveyor.db-shm", "redis", "ledger.txt",
                  "*.log", "release", "staging", "containers")


class Run:
    """A store, a ledger, the processes and the test's own app on the same store."""

    def __init__(self, store: Store, workdir: Path, lease: float, max_recoveries: int) -> None:
        self.store = store
        self.workdir = workdir
        self.ledger_path = workdir / "ledger.txt"
        self.ledger = L.Ledger(self.ledger_path)
        self.lease = lease
        self.max_recoveries = max_recoveries
        self.fleet = Fleet(workdir, child_env(
            CONVEYOR_URL=store.url, FAULTS_LEDGER=str(self.ledger_path),
            FAULTS_LEASE=str(lease), FAULTS_MAX_RECOVERIES=str(max_recoveries)))
        self.app: Conveyor = make_app(store.url, lease, max_recoveries)
        self.started = time.monotonic()

    def registered_pids(self) -> set[int]:
        return {w.pid for w in self.app.run_sync(self.app.broker.workers())}

    def ready_children(self, supervisor: Proc) -> list[int]:
        """The supervisor's live children that registered with the store."""
        registered = self.registered_pids()
        return [p for p in supervisor.children() if p in registered]

    def wait_ready(self, supervisor: Proc, processes: int, timeout: float = 30.0) -> list[int]:
        def ready() -> list[int] | None:
            if not supervisor.alive():
                raise AssertionError(f"supervisor exited:\n{supervisor.tail()}")
            found = self.ready_children(supervisor)
            return found if len(found) >= processes else None

        found: list[int] = wait_for(ready, timeout, f"{processes} registered worker processes\n"
                                    f"{supervisor.tail()}", interval=0.05)
        return found

    def wait_registered(self, proc: Proc, timeout: float = 30.0) -> None:
        def registered() -> bool:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
            return proc.pid in self.registered_pids()

        wait_for(registered, timeout, f"{proc.name} to register\n{proc.tail()}", interval=0.05)

    def wait_final(self, ids: Sequence[str], timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every job of ``ids`` is final (whatever the outcome)."""
        pending = set(ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            found = L.records(self.app, pending)
            pending = {i for i, r in found.items() if r is None or r.state not in FINAL_STATES}
            if pending:
                time.sleep(0.2)

    def wait_started(self, ids: Sequence[str], timeout: float, what: str) -> None:
        wait_for(lambda: all(self.ledger.read().attempts(i) for i in ids), timeout,
                 f"{what} to start\n{self.fleet.logs()}", interval=0.05)

    def report(self, key: str, scenario: str, acknowledged: Sequence[str], *,
               innocents: Sequence[str] | None = None, faults: int = 0,
               duplicate_bound: int = 0, kills: Sequence[L.Kill] = (),
               recovery_bound: float = 0.0) -> Report:
        """The common part of every report, from the ledger and the stored records."""
        self.ledger.read()
        innocent = list(acknowledged if innocents is None else innocents)
        found = L.records(self.app, acknowledged)
        lost = L.not_succeeded({i: found[i] for i in innocent})
        recoveries, never = L.recovery_times(self.ledger, kills)
        report = Report(
            scenario=scenario, store=self.store.kind, key=key, jobs=len(acknowledged),
            faults=faults,
            lost=lost, lost_detail=L.describe(found, lost),
            dead_innocents=sorted(i for i in innocent
                                  if (r := found[i]) is not None and r.state is JobState.DEAD),
            duplicates=L.duplicates(self.ledger, innocent), duplicate_bound=duplicate_bound,
            rerun_after_ok=sum(a.status == "ok" for i in innocent
                               for a in self.ledger.attempts(i)[:-1]),
            thrown_away=L.thrown_away(self.ledger, found),
            superseded=L.superseded(self.ledger, found),
            recoveries=recoveries, unrecovered=sorted(set(never)),
            recovery_bound=recovery_bound,
            seconds=time.monotonic() - self.started,
        )
        return report

    def finish(self, report: Report) -> Report:
        """Leftover processes and unexpected files are strays; attach the logs."""
        time.sleep(0.1)
        for path in sorted(self.workdir.iterdir()):
            if not any(path.match(pattern) for pattern in EXPECTED_FILES):
                report.strays.append(f"file {path.name}")
        for proc in self.fleet.procs:
            proc.children()
            left = [p for p in proc.seen_children if pid_alive(p)]
            if proc.alive() or left:
                report.strays.append(f"process {proc.name} pid {proc.pid} children {left}")
        report.logs = self.fleet.logs()
        return report

    def close(self) -> None:
        self.fleet.cleanup()
        with contextlib.suppress(Exception):
            self.store.close()
        with contextlib.suppress(Exception):
            self.app.close()


@contextlib.contextmanager
def session(kind: str, workdir: Path, lease: float = LEASE,
            max_recoveries: int = 3) -> Iterator[Run]:
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(open_store(kind, workdir), workdir, lease, max_recoveries)
    try:
        yield run
    finally:
        run.close()


class Producer(threading.Thread):
    """Enqueues jobs at ``rate`` per second from a thread, one blocking enqueue at a time,
    ``total`` of them or until :attr:`halt` is set; ``acked`` holds ``(id, when the enqueue
    returned)``."""

    def __init__(self, app: Conveyor, call: Callable[[int], tuple[str, list[Any]]],
                 total: int | None, rate: float) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.call = call
        self.total = total
        self.rate = rate
        self.acked: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        n = 0
        while not self.halt.is_set() and (self.total is None or n < self.total):
            name, args = self.call(n)
            n += 1
            try:
                handle = self.app.enqueue(name, *args)
            except Exception as exc:  # not acknowledged: not counted
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.acked.append((handle.id, time.time()))
            pause = began + n / self.rate - time.monotonic()
            if pause > 0:
                self.halt.wait(pause)

    def finish(self, at_least: int) -> None:
        """Let it enqueue ``at_least`` jobs in all, then stop it and wait for it."""
        while len(self.acked) + len(self.errors) < at_least and self.is_alive():
            time.sleep(0.05)
        self.halt.set()
        self.join()

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.acked]


# -- 1. SIGKILL loop against a supervised worker ------------------------------------------------
def kill_loop(kind: str, workdir: Path, *, jobs: int = 60, kills: int = 4, processes: int = 2,
              slots: int = 2, job_seconds: float = 0.3, seed: int = 1) -> Report:
    """``conveyor worker --processes N``: SIGKILL one of its worker processes, again and again
    (one kill every lease + 1 s or so, and not before the jobs the last kill interrupted
    started again, so that each kill's recovery is measured apart), while
    a producer keeps enqueuing short jobs (at least ``jobs``, and on until the last kill).
    The killer only kills a process that runs something, only while every other process is
    up (so a sibling takes the jobs over), and never a process running a job that was
    interrupted ``max_recoveries - 1`` times already (that job would rightly be given up on:
    see :func:`poison`)."""
    rng = random.Random(seed)
    with session(kind, workdir) as run:
        supervisor = run.fleet.worker("supervisor", processes=processes, slots=slots,
                                      grace=GRACE)
        run.wait_ready(supervisor, processes)
        rate = 0.8 * processes * slots / job_seconds
        producer = Producer(run.app, lambda n: ("work", [job_seconds]), None, rate)
        producer.start()
        gap = LEASE + 1.0
        done: list[L.Kill] = []
        hits: Counter[str] = Counter()
        born: dict[int, float] = {}
        next_kill = time.monotonic() + rng.uniform(0.5, 1.0) * gap
        give_up = time.monotonic() + kills * gap * 3 + 60
        while len(done) < kills and time.monotonic() < give_up:
            if time.monotonic() < next_kill or not _recovered(run, done, LEASE + RECOVERY_SLACK):
                time.sleep(0.01)
                continue
            victim = _victim(run, supervisor, processes, hits, born)
            if victim is None:
                time.sleep(0.02)
                continue
            at = time.time()
            os.kill(victim, signal.SIGKILL)
            wait_for(functools.partial(gone, victim), 10, f"pid {victim} to die")
            hit = L.interrupted(run.ledger.read(), victim, at)
            done.append(L.Kill(victim, at, hit))
            hits.update(a.job_id for a in hit)
            next_kill = time.monotonic() + gap * rng.uniform(1.0, 1.3)
        producer.finish(jobs)
        run.wait_final(producer.ids)
        stop = supervisor.stop(GRACE + STOP_SLACK)
        report = run.report("kill_loop", "SIGKILL loop", producer.ids, faults=len(done),
                            duplicate_bound=len(done) * slots, kills=done,
                            recovery_bound=LEASE + RECOVERY_SLACK)
        report.stops.append(stop)
        report.extra["processes x slots"] = f"{processes} x {slots}"
        report.extra["kills asked"] = kills
        report.extra["interrupted attempts"] = sum(len(k.interrupted) for k in done)
        if len(done) < kills:
            report.notes.append(f"only {len(done)} of {kills} kills found a process to kill")
        if producer.errors:
            report.notes.append(f"{len(producer.errors)} enqueues failed: {producer.errors[:3]}")
        return run.finish(report)


def _recovered(run: Run, kills: Sequence[L.Kill], bound: float) -> bool:
    """True once every job the last kill interrupted started again (or ``bound`` passed):
    the next kill then does not hold up the recovery being measured."""
    if not kills:
        return True
    last = kills[-1]
    if time.time() > last.at + bound:
        return True
    run.ledger.read()
    return all(any(a.started > last.at for a in run.ledger.attempts(hit.job_id))
               for hit in last.interrupted)


def gone(pid: int) -> bool:
    return not pid_alive(pid)


def _victim(run: Run, supervisor: Proc, processes: int, hits: Counter[str],
            born: dict[int, float]) -> int | None:
    """A worker process to kill now, or None (see :func:`kill_loop`): of those that run
    something, the one up the longest (the kills spread over the supervisor's slots, whose
    restart backoff grows with deaths in quick succession)."""
    ready = run.ready_children(supervisor)
    now = time.monotonic()
    for pid in ready:
        born.setdefault(pid, now)
    if len(ready) < processes:
        return None
    run.ledger.read()
    limit = run.max_recoveries - 1
    fit = []
    for pid in ready:
        running = run.ledger.open_in(pid)
        if running and all(hits[a.job_id] < limit for a in running):
            fit.append(pid)
    return min(fit, key=born.__getitem__) if fit else None


def _all_final(run: Run, ids: Sequence[str]) -> bool:
    found = L.records(run.app, ids)
    return all(r is not None and r.state in FINAL_STATES for r in found.values())


# -- 2. kill -9 of Redis ------------------------------------------------------------------------
def redis_kill(workdir: Path, *, jobs: int = 60, kills: int = 3, down: float = 0.5,
               processes: int = 2, slots: int = 2, job_seconds: float = 0.2) -> Report:
    """Redis (AOF, ``appendfsync always``) killed with SIGKILL and started again ``down``
    seconds later, ``kills`` times (every lease + 1 s), while a supervised worker runs jobs
    and a producer enqueues (at least ``jobs``). The worker processes must ride it out (none
    restarted) and nothing acknowledged may be lost."""
    with session("redis", workdir) as run:
        supervisor = run.fleet.worker("supervisor", processes=processes, slots=slots,
                                      grace=GRACE)
        before = set(run.wait_ready(supervisor, processes))
        rate = 0.8 * processes * slots / job_seconds
        producer = Producer(run.app, lambda n: ("work", [job_seconds]), None, rate)
        producer.start()
        outages: list[tuple[float, float]] = []
        for _ in range(kills):
            time.sleep(LEASE + 1.0)
            t_down = time.time()
            run.store.down()
            time.sleep(down)
            run.store.up()
            outages.append((t_down, time.time()))
        time.sleep(1.0)
        producer.finish(jobs)
        run.wait_final(producer.ids)
        after = set(supervisor.children())
        stop = supervisor.stop(GRACE + STOP_SLACK)
        report = run.report("redis_kill", "kill -9 Redis", producer.ids, faults=len(outages),
                            duplicate_bound=len(outages) * processes * slots,
                            recovery_bound=LEASE + RESUME_SLACK)
        report.recoveries = _resumes(run.ledger, producer.acked, outages)
        report.stops.append(stop)
        report.extra["worker processes replaced"] = sorted(before - after)
        report.extra["outage"] = f"{down:.1f}s each"
        if producer.errors:
            report.notes.append(f"{len(producer.errors)} enqueues failed: {producer.errors[:3]}")
        return run.finish(report)


def _resumes(ledger: L.Ledger, acked: Sequence[tuple[str, float]],
             outages: Sequence[tuple[float, float]]) -> list[float]:
    """Per outage: seconds from the store's return to the first start of a job acknowledged
    after the outage began."""
    times = []
    for t_down, t_up in outages:
        starts = [a.started for job_id, when in acked if when > t_down
                  for a in ledger.attempts(job_id)[:1]]
        if starts:
            times.append(max(0.0, min(starts) - t_up))
    return times


# -- 3. a Redis outage longer than the lease ----------------------------------------------------
def long_outage(workdir: Path, *, jobs: int = 4, job_seconds: float = 30.0,
                down: float = 3.0) -> Report:
    """One worker process that never dies runs ``jobs`` long jobs (half async, half thread);
    Redis goes down for ``down`` seconds, longer than the lease, and comes back. The worker
    keeps running its attempts; its heartbeat renews them once Redis is back, and nobody
    recovers them: every job succeeds once, with its first attempt's result."""
    with session("redis", workdir) as run:
        worker = run.fleet.worker("worker", processes=1, slots=jobs + 1, grace=GRACE)
        run.wait_registered(worker)
        ids = [run.app.enqueue("work" if n % 2 == 0 else "work_thread", job_seconds).id
               for n in range(jobs)]
        run.wait_started(ids, 30, "the long jobs")
        time.sleep(1.0)  # a few heartbeats in steady state
        t_down = time.time()
        run.store.down()
        time.sleep(down)
        run.store.up()
        t_up = time.time()
        probe = run.app.enqueue("work", 0.01)  # a slot is free: how soon does work flow?
        probe_acked = time.time()
        alive_throughout = True
        deadline = time.monotonic() + job_seconds + 60
        while time.monotonic() < deadline and not _all_final(run, [*ids, probe.id]):
            alive_throughout = alive_throughout and worker.alive()
            time.sleep(0.2)
        alive_throughout = alive_throughout and worker.alive()
        stop = worker.stop(GRACE + STOP_SLACK)
        acked = [*ids, probe.id]
        report = run.report("long_outage", "Redis down > lease", acked, faults=1,
                            duplicate_bound=0, recovery_bound=LEASE + RESUME_SLACK)
        report.recoveries = _resumes(run.ledger, [(probe.id, probe_acked)], [(t_down, t_up)])
        report.stops.append(stop)
        found = L.records(run.app, ids)
        report.extra["worker alive throughout"] = alive_throughout
        report.extra["ledger attempts per job"] = {i: len(run.ledger.attempts(i)) for i in ids}
        report.extra["stored attempts/recoveries"] = {
            i: (r.attempts, r.recoveries) if r else None for i, r in found.items()}
        report.extra["results kept"] = {
            i: L.result_attempt(r) for i, r in found.items()}
        report.extra["worker pid"] = worker.pid
        report.extra["lost log lines"] = sum(
            "no longer this worker" in line for line in worker.log().splitlines())
        report.extra["outage"] = (f"Redis down {down:.1f}s, lease {LEASE:.1f}s, "
                                  f"jobs {job_seconds:.0f}s")
        return run.finish(report)


# -- 4. a poison job among innocent ones --------------------------------------------------------
def poison(workdir: Path, *, variant: str = "async", innocents: int = 30, processes: int = 2,
           slots: int = 4, innocent_seconds: float = 1.0, max_recoveries: int = 3) -> Report:
    """A job that kills its worker process (``os._exit(1)``) every time, enqueued in the
    middle of ``innocents`` innocent jobs, on a supervised worker. Only the poison's first
    death may take innocent jobs with it; after that it runs alone, and after
    ``max_recoveries`` deaths it is dead. Every innocent job succeeds."""
    name = "poison" if variant == "async" else "poison_thread"
    with session("sqlite", workdir, max_recoveries=max_recoveries) as run:
        supervisor = run.fleet.worker("supervisor", processes=processes, slots=slots,
                                      grace=GRACE)
        run.wait_ready(supervisor, processes)
        half = innocents // 2
        first = run.app.enqueue_many("work", [(innocent_seconds,)] * half)
        bad = run.app.enqueue(name)
        second = run.app.enqueue_many("work", [(innocent_seconds,)] * (innocents - half))
        innocent = [h.id for h in (*first, *second)]
        run.wait_final([*innocent, bad.id])
        stop = supervisor.stop(GRACE + STOP_SLACK)
        led = run.ledger.read()
        deaths = led.attempts(bad.id)
        kills = [L.Kill(a.pid, a.started, L.interrupted(led, a.pid, a.started)) for a in deaths]
        report = run.report("poison", f"poison job ({variant})", [*innocent, bad.id],
                            innocents=innocent, faults=len(deaths),
                            duplicate_bound=len(deaths) * slots, kills=kills,
                            # a suspect waits for the jobs running in its process to end
                            recovery_bound=LEASE + RECOVERY_SLACK + innocent_seconds)
        report.extra["slots"] = slots
        report.extra["max_recoveries"] = max_recoveries
        report.stops.append(stop)
        # its last death ends it: the poison itself is not expected to start again
        report.unrecovered = [j for j in report.unrecovered if j != bad.id]
        record = L.records(run.app, [bad.id])[bad.id]
        report.extra["poison"] = (
            "missing" if record is None else
            f"{record.state} attempts={record.attempts} recoveries={record.recoveries} "
            f"error={record.error!r}")
        report.extra["poison state"] = None if record is None else str(record.state)
        report.extra["poison recoveries"] = None if record is None else record.recoveries
        report.extra["poison runs (ledger)"] = len(deaths)
        # after its first death the poison is a suspect: nothing else may run beside it
        beside = []
        for n, a in enumerate(deaths[1:], start=2):
            others = [o for o in led.all() if o.pid == a.pid and o.job_id != bad.id
                      and o.open_at(a.started)]
            beside += [f"run {n} (attempt {a.attempt}) in pid {a.pid} beside {o.job_id}"
                       for o in others]
        report.extra["innocents beside the suspect"] = beside
        report.extra["innocents interrupted"] = sorted(
            {o.job_id for k in kills for o in k.interrupted if o.job_id != bad.id})
        return run.finish(report)


# -- 5. SIGTERM during a store outage -----------------------------------------------------------
#: how far into an outage each worker of a batch gets its SIGTERM: at once, before its first
#: failed heartbeat, around it, and after the store was unreachable for a while
STOP_DELAYS = (0.0, 0.4, 0.8, 1.5)


def sigterm_outage(kind: str, workdir: Path, *, rounds: int = 20, slots: int = 3,
                   keep_going: bool = False, outage: bool = True) -> Report:
    """``rounds`` workers, each told to stop (SIGTERM) during a store outage. A round's worker
    runs two long jobs (an async one, and a thread job that ignores cancellation) and short
    ones from a queue of the round's own; it gets SIGTERM a varying delay into the outage
    (:data:`STOP_DELAYS`) and must exit 0 within the grace plus :data:`STOP_SLACK`. The
    rounds run in batches of ``len(STOP_DELAYS)`` workers sharing one outage, their signals
    staggered by those delays. Each round has its own queue, so a job left running by a
    stop that could not write is charged once (when its lease is recovered) and waits for the
    final drain: a worker on every queue, once the store is back, must finish every job
    (none lost or dead). Ends after the first batch with a stop out of bounds unless
    ``keep_going``; ``outage=False`` keeps the store up (a control)."""
    bound = GRACE + STOP_SLACK
    with session(kind, workdir) as run:
        marker = workdir / "release"
        acked: list[str] = []
        queues: list[str] = []
        stops: list[Stop] = []
        for first in range(0, rounds, len(STOP_DELAYS)):
            batch: list[tuple[float, Proc]] = []
            holds: list[str] = []
            quick: list[str] = []
            for k in range(first, min(rounds, first + len(STOP_DELAYS))):
                queue = f"r{k}"
                queues.append(queue)
                mine = [run.app.enqueue_call(name, [str(marker), 600.0], {}, queue=queue).id
                        for name in ("hold", "hold_thread")]
                shorts = [run.app.enqueue_call("work", [0.05], {}, queue=queue).id
                          for _ in range(2)]
                acked += [*mine, *shorts]
                holds += mine
                quick += shorts
                worker = run.fleet.worker(f"round{k}", processes=1, slots=slots, grace=GRACE,
                                          queues=[queue])
                batch.append((STOP_DELAYS[k - first], worker))
            run.wait_started(holds, 60, f"the long jobs of rounds {first}..")
            run.wait_final(quick, 30)  # the short ones done and stored: only the long ones
            #                            are running when the outage begins
            if outage:
                run.store.down()
            try:
                began = time.monotonic()
                sent = []
                for delay, worker in batch:
                    time.sleep(max(0.0, began + delay - time.monotonic()))
                    sent.append(worker.terminate())
                state = "down" if outage else "up"
                stops += [worker.wait_stopped(at, bound, state)
                          for (_, worker), at in zip(batch, sent, strict=True)]
            finally:
                if outage:
                    run.store.up()
            if not keep_going and any(s.code != 0 or s.seconds > bound for s in stops):
                break
        marker.touch()
        drain = run.fleet.worker("drain", processes=1, slots=4, grace=GRACE, queues=queues)
        run.wait_final(acked)
        rounds_done = len(stops)
        stops.append(drain.stop(bound))
        report = run.report("sigterm_outage", "SIGTERM in outage", acked, faults=rounds_done,
                            duplicate_bound=rounds_done * slots)
        report.stops = stops
        report.extra["rounds"] = f"{rounds_done} of {rounds}"
        report.extra["rounds asked"] = rounds
        report.extra["stop seconds"] = [round(s.seconds, 2) for s in stops[:-1]]
        return run.finish(report)


# -- 6. SIGKILL of conveyor serve during uploads ------------------------------------------------
@dataclass
class Upload:
    job_id: str
    destination: str
    digest: str


class Server:
    """``conveyor serve faults.faultjobs:app`` on a fixed port, started again after a kill."""

    def __init__(self, run: Run, slots: int) -> None:
        self.run = run
        self.port = free_port()
        self.staging = run.workdir / "staging"
        self.containers = run.workdir / "containers"
        (self.containers / "web").mkdir(parents=True, exist_ok=True)
        self.argv = ["serve", "faults.faultjobs:app", "--port", str(self.port), "--staging",
                     str(self.staging), "--containers", f"dir:{self.containers}",
                     "--grace", str(GRACE), "--min-workers", str(slots),
                     "--max-workers", str(slots)]
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> Proc:
        import httpx

        self.starts += 1
        proc = self.proc = self.run.fleet.start(f"serve{self.starts}", *self.argv)

        def healthy() -> bool:
            if not proc.alive():
                raise AssertionError(f"serve exited:\n{proc.tail()}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz",
                                 timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 30, f"serve to answer\n{proc.tail()}", interval=0.05)
        return proc

    def temporaries(self) -> list[str]:
        """Temporary files of pushes under the containers."""
        return sorted(str(p.relative_to(self.containers)) for p in self.containers.rglob("*")
                      if p.is_file() and p.name.endswith(".tmp"))

    def staged(self) -> list[str]:
        if not self.staging.exists():
            return []
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*")
                      if p.is_file())


class Uploader(threading.Thread):
    """POSTs uploads in a loop; an upload answered 202 is acknowledged, one that met a dead
    server is not (and is not sent again: a fresh one follows)."""

    def __init__(self, port: int, number: int, size: int, until: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.number = number
        self.size = size
        self.until = until
        self.acked: list[Upload] = []
        self.refused: Counter[str] = Counter()

    def run(self) -> None:
        import httpx

        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as client:
            while not self.until():
                n += 1
                body = os.urandom(self.size)
                destination = f"/up/{self.number}-{n}.bin"
                try:
                    response = client.post("/uploads", content=body, headers={
                        "X-Container-Name": "web", "X-File-Path": destination})
                except httpx.TransportError as exc:
                    self.refused[type(exc).__name__] += 1
                    time.sleep(0.05)
                    continue
                if response.status_code == 202:
                    self.acked.append(Upload(response.json()["id"], destination,
                                             hashlib.sha256(body).hexdigest()))
                else:
                    self.refused[str(response.status_code)] += 1
                    time.sleep(0.05)


def serve_kill(workdir: Path, *, uploads: int = 40, kills: int = 3, clients: int = 2,
               size: int = 1 << 20, slots: int = 2) -> Report:
    """``conveyor serve`` (API and workers in one process, on SQLite) killed with SIGKILL
    while clients upload files and its worker pushes them, then started again at once;
    each kill lands while a push runs. Every upload answered 202 ends pushed with the bytes
    sent; nothing is left in the staging area and no temporary file in the containers."""
    with session("sqlite", workdir) as run:
        server = Server(run, slots)
        server.start()
        finished = threading.Event()
        uploaders = [Uploader(server.port, n, size, finished.is_set) for n in range(clients)]
        for uploader in uploaders:
            uploader.start()

        def acked_total() -> int:
            return sum(len(u.acked) for u in uploaders)

        done: list[L.Kill] = []
        mid_copy = 0
        gap = 1.0
        while len(done) < kills:
            time.sleep(gap)
            proc = server.proc
            assert proc is not None
            # kill while a push runs (an attempt open in the ledger), if one comes soon
            with contextlib.suppress(AssertionError):
                wait_for(functools.partial(pushing, run.ledger, proc.pid), 5,
                         "a push to run", interval=0.005)
            at = proc.kill()
            hit = L.interrupted(run.ledger.read(), proc.pid, at)
            done.append(L.Kill(proc.pid, at, hit))
            mid_copy += bool(server.temporaries())
            server.start()
        wait_for(lambda: acked_total() >= uploads, 120, f"{uploads} uploads answered 202",
                 interval=0.05)
        finished.set()
        for uploader in uploaders:
            uploader.join(60)
        acked = [u for c in uploaders for u in c.acked]
        ids = [u.job_id for u in acked]
        run.wait_final(ids)
        assert server.proc is not None
        stop = server.proc.stop(GRACE + STOP_SLACK)
        report = run.report("serve_kill", "SIGKILL serve in uploads", ids, faults=len(done),
                            duplicate_bound=len(done) * slots, kills=done,
                            recovery_bound=LEASE + SERVE_RECOVERY_SLACK)
        report.stops.append(stop)
        wrong = [u.job_id for u in acked if _digest(server.containers / "web",
                                                    u.destination) != u.digest]
        report.extra["pushed files missing or different"] = wrong
        report.extra["kills during a copy (a temporary file present)"] = mid_copy
        report.extra["uploads refused while down"] = dict(sum(
            (c.refused for c in uploaders), Counter()))
        report.strays += [f"staging/{p}" for p in server.staged()]
        report.strays += [f"containers/{p}" for p in server.temporaries()]
        return run.finish(report)


def pushing(ledger: L.Ledger, pid: int) -> list[L.Attempt]:
    """The attempts (pushes) running in ``pid`` now."""
    return ledger.read().open_in(pid)


def _digest(root: Path, destination: str) -> str | None:
    path = root / destination.lstrip("/")
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# -- sizes --------------------------------------------------------------------------------------
@dataclass
class Sizes:
    """How big each scenario runs; the tests read them from ``FAULTS_*`` variables (small by
    default), the benchmark from its options."""

    kill_jobs: int = 60
    kills: int = 3
    redis_jobs: int = 60
    redis_kills: int = 3
    outage_jobs: int = 4
    outage_job_seconds: float = 12.0
    outage_down: float = 3.0
    innocents: int = 30
    rounds: int = 4
    uploads: int = 40
    serve_kills: int = 3

    @classmethod
    def from_env(cls) -> Sizes:
        d = cls()
        return cls(
            kill_jobs=env_int("FAULTS_KILL_JOBS", d.kill_jobs),
            kills=env_int("FAULTS_KILLS", d.kills),
            redis_jobs=env_int("FAULTS_REDIS_JOBS", d.redis_jobs),
            redis_kills=env_int("FAULTS_REDIS_KILLS", d.redis_kills),
            outage_jobs=env_int("FAULTS_OUTAGE_JOBS", d.outage_jobs),
            outage_job_seconds=env_float("FAULTS_OUTAGE_JOB_SECONDS", d.outage_job_seconds),
            outage_down=env_float("FAULTS_OUTAGE_DOWN", d.outage_down),
            innocents=env_int("FAULTS_INNOCENTS", d.innocents),
            rounds=env_int("FAULTS_ROUNDS", d.rounds),
            uploads=env_int("FAULTS_UPLOADS", d.uploads),
            serve_kills=env_int("FAULTS_SERVE_KILLS", d.serve_kills),
        )

