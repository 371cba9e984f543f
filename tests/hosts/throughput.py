"""Throughput of 1, 2 and 3 worker hosts against one Redis.

A backlog of no-op jobs is enqueued in bulk into a paused queue of its own; a worker host
(``conveyor worker --processes P``) per round of N starts on it, and once every worker
process is registered the queue is resumed and the drain timed until the store counts every
job succeeded. Redis's own time per job comes from ``INFO commandstats`` (reset before the
drain): the microseconds Redis spent running the scripts (``evalsha``; the commands a script
calls are counted inside it, and again on their own lines, so they are not added), divided
by the jobs; and from ``INFO cpu``: the CPU time of Redis's main thread over the drain
(scripts, parsing, replies, the append-only file's writes; not the time it waits for fsync)
divided by the jobs, whose inverse is the ceiling one Redis puts on the drain. The tests
assert only that every job succeeded; ``benchmarks/hosts.py`` prints bigger runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hosts.harness import Site
from polling import wait_until

#: jobs per ``enqueue_many`` call
BULK = 1000
#: commands of the observer, not of the drain
NOT_DRAIN = ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config|get")
#: the top-level commands that run scripts
SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")


@dataclass
class Drain:
    """One drain: its size, how long it took, and Redis's own time."""

    hosts: int
    processes: int
    slots: int
    jobs: int
    seconds: float
    #: the queue's counts by state after the drain
    counts: dict[str, int]
    #: ``INFO commandstats`` of the drain: command -> (calls, usec)
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: CPU seconds of Redis's main thread (user + system) over the drain
    redis_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def script_usec_per_job(self) -> float:
        """Microseconds Redis spent in scripts, per job."""
        return sum(usec for name, (_, usec) in self.commands.items()
                   if name in SCRIPTS) / self.jobs

    @property
    def cpu_usec_per_job(self) -> float:
        """Microseconds of CPU of Redis's main thread, per job."""
        return self.redis_cpu * 1e6 / self.jobs

    def line(self) -> str:
        calls = sum(n for name, (n, _) in self.commands.items() if name in SCRIPTS)
        return (f"{self.hosts} host(s) x {self.processes} process(es) x {self.slots} slots: "
                f"{self.jobs} jobs in {self.seconds:.2f}s = {self.rate:,.0f} jobs/s; Redis "
                f"scripts {self.script_usec_per_job:.1f} us/job ({calls} calls, "
                f"{self.jobs / max(1, calls):.1f} jobs/call), Redis main thread CPU "
                f"{self.cpu_usec_per_job:.1f} us/job (ceiling "
                f"{1e6 / max(self.cpu_usec_per_job, 1e-9):,.0f} jobs/s)")


def redis_cpu(site: Site) -> float:
    """CPU seconds (user + system) of Redis's main thread so far."""
    cpu = site.redis_info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def commandstats(site: Site) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for name, stat in site.redis_info("commandstats").items():
        if name not in NOT_DRAIN and isinstance(stat, dict):
            found[name.removeprefix("cmdstat_")] = (int(stat["calls"]), int(stat["usec"]))
    return found


def drain(site: Site, hosts: int, jobs: int, *, processes: int = 1, slots: int = 10,
          timeout: float = 300.0) -> Drain:
    """Drain ``jobs`` no-op jobs with the first ``hosts`` hosts of ``site``."""
    import redis

    app = site.app
    assert app is not None
    queue = f"drain{hosts}x{processes}"
    app.pause(queue)
    for start in range(0, jobs, BULK):
        app.enqueue_many("noop", [()] * min(BULK, jobs - start), queue=queue)
    workers = [site.worker(h, slots=slots, queues=[queue], ledger=False, processes=processes)
               for h in site.hosts[:hosts]]

    def registered() -> bool:
        for proc in workers:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
        return len(site.registered()) >= hosts * processes

    wait_until(registered, 60, f"{hosts * processes} worker processes to register\n"
               f"{site.logs()}", 0.05)
    client = redis.Redis.from_url(site.url)
    try:
        client.config_resetstat()
    finally:
        client.close()
    cpu = redis_cpu(site)
    began = time.monotonic()
    app.resume(queue)

    def counts() -> dict[str, int]:
        found: dict[str, int] = app.run_sync(app.broker.counts()).get(queue, {})
        return found

    def drained() -> bool:
        return counts().get("succeeded", 0) >= jobs

    wait_until(drained, timeout, f"{jobs} jobs to succeed: {counts()}\n{site.logs()}", 0.05)
    seconds = time.monotonic() - began
    commands = commandstats(site)
    cpu = redis_cpu(site) - cpu
    for proc in workers:
        proc.stop(10.0)
    return Drain(hosts, processes, slots, jobs, seconds, counts(), commands, cpu)


def summary(drains: list[Drain]) -> str:
    return "\n".join(d.line() for d in drains)


def check(found: Drain) -> list[str]:
    """What is wrong with a drain: jobs not succeeded, or in any other state."""
    counts: dict[str, Any] = found.counts
    others = {state: n for state, n in counts.items() if state != "succeeded" and n}
    wrong = []
    if counts.get("succeeded") != found.jobs:
        wrong.append(f"{counts.get('succeeded')} of {found.jobs} succeeded")
    if others:
        wrong.append(f"jobs left in other states: {others}")
    return wrong
