"""``conveyor bench``: enqueue and drain jobs against a real store and print the figures.

Phases: single-call enqueue (one caller, then many concurrent callers sharing commits),
bulk enqueue, drain by a worker process started like ``conveyor worker``, and
enqueue-to-start latency with the worker running and jobs offered at a steady rate.
The drain also reports what a job cost: CPU of the worker processes and, on a single Redis
server, Redis's CPU and script time, per job (figures that hold on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.bench_app import TENANTS
from conveyor.cli.loading import CLIError
from conveyor.cli.output import console, errors
from conveyor.ids import new_id
from conveyor.job import JobState

#: the commands that run scripts: their time includes the commands the scripts call
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def process_tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its living children
    (a supervisor and its worker processes); None where ``/proc`` cannot tell."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    todo = [pid]
    try:
        while todo:
            current = todo.pop()
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo.extend(int(child) for child in children.read().split())
    except (OSError, ValueError, IndexError):
        return None
    return total


class RedisUsage:
    """Snapshots of a single Redis server's CPU and script time (None when unreadable:
    not a single server, or INFO refused)."""

    def __init__(self, url: str) -> None:
        from conveyor.backends.redis import deploy

        self.client: Any = deploy.async_client(url) if deploy.kind(url) == deploy.SINGLE \
            else None

    async def snapshot(self) -> tuple[float, float] | None:
        """(CPU seconds of the server, seconds its scripts ran) so far."""
        if self.client is None:
            return None
        try:
            cpu = await self.client.info("cpu")
            stats = await self.client.info("commandstats")
        except Exception:  # a managed Redis may refuse INFO: the figures are left out
            return None
        scripts = sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0))
                      for name in SCRIPT_COMMANDS) / 1e6
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), scripts

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


@dataclass
class BenchResult:
    """The figures of one run."""

    url: str
    kind: str
    jobs: int
    max_workers: int
    processes: int
    single_enqueue_per_s: float = 0.0
    concurrent_enqueue_per_s: float = 0.0
    concurrent_callers: int = 0
    bulk_enqueue_per_s: float = 0.0
    drain_per_s: float = 0.0
    #: what a drained job cost (0: not measured): CPU of the worker processes, CPU of the
    #: Redis server, and the time Redis ran scripts (see :class:`RedisUsage`; a wall time,
    #: which on a busy machine counts the time Redis waited for a CPU mid-script too)
    drain_worker_cpu_us_per_job: float = 0.0
    drain_redis_cpu_us_per_job: float = 0.0
    drain_redis_script_us_per_job: float = 0.0
    latency_rate_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def add_bench_parser(sub: Any) -> None:
    """Register ``conveyor bench`` and its options."""
    p = sub.add_parser("bench", help="measure enqueue, drain and latency on a store")
    p.add_argument("--url", help="store to measure (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs to bulk-enqueue and drain")
    p.add_argument("--kind", default="noop",
                   help="noop, sleep:MS, capped (no-ops, at most 8 running at once) or "
                   "grouped (no-ops over 32 tenants, at most 2 of one running at once)")
    p.add_argument("--max-workers", type=int, default=100, help="concurrency per process")
    p.add_argument("--min-workers", type=int, help="default: --max-workers")
    p.add_argument("--processes", type=int, default=1, help="worker processes")
    p.add_argument("--single", type=int, default=3000, help="jobs for the single-call phases")
    p.add_argument("--callers", type=int, default=32, help="concurrent single-call producers")
    p.add_argument("--rate", type=float, default=1000.0, help="jobs/s for the latency phase")
    p.add_argument("--latency-jobs", type=int, default=2000, help="jobs in the latency phase")
    p.add_argument("--open-loop", action="store_true",
                   help="instead: offer jobs at fixed rates and report the backlog and latency")
    p.add_argument("--rates", default="1000,2500,5000,10000,15000,20000",
                   help="with --open-loop: comma-separated jobs/s to offer in turn")
    p.add_argument("--duration", type=float, default=10.0,
                   help="with --open-loop: seconds per rate")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def _parse_kind(kind: str) -> tuple[str, list[Any]]:
    if kind == "noop":
        return "noop", []
    if kind == "capped":
        return "capped_noop", []
    if kind == "grouped":
        return "tenant_noop", ["t0"]
    if kind.startswith("sleep:"):
        try:
            return "sleep", [float(kind.split(":", 1)[1])]
        except ValueError:
            pass
    raise CLIError("--kind is noop, sleep:MS (e.g. sleep:10), capped or grouped")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), console=errors, transient=True)


class Bench:
    """One benchmark run against ``url`` in a namespace of its own."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.namespace = f"bench_{new_id()[-8:].lower()}"
        from conveyor.bench_app import register

        self.app = register(Conveyor(namespace=self.namespace))
        self.app.use_url(url)  # --url beats CONVEYOR_URL, which Conveyor() reads
        self.job, self.job_args = _parse_kind(args.kind)
        self.result = BenchResult(url, args.kind, args.jobs, args.max_workers, args.processes)
        self.worker: subprocess.Popen[bytes] | None = None

    def items(self, count: int) -> list[list[Any]]:
        """The arguments of ``count`` jobs (``grouped``: the tenants take turns)."""
        if self.job == "tenant_noop":
            return [[f"t{i % TENANTS}"] for i in range(count)]
        return [self.job_args] * count

    async def single(self) -> None:
        n = self.args.single
        with _progress() as bar:
            task = bar.add_task("single-call, 1 caller", total=n, rate="")

            def one_caller() -> float:
                """The plain blocking ``enqueue`` a web view would call, one after another."""
                start = time.perf_counter()
                for i in range(n):
                    self.app.enqueue_call(self.job, self.job_args, {})
                    if i % 100 == 0:
                        rate = i / (time.perf_counter() - start)
                        bar.update(task, completed=i, rate=f"{rate:,.0f}/s")
                return float(n / (time.perf_counter() - start))

            self.result.single_enqueue_per_s = await asyncio.to_thread(one_caller)
        callers = max(1, self.args.callers)
        per_caller = max(1, n // callers)

        async def producer() -> None:
            for _ in range(per_caller):
                await self.app.enqueue_call_async(self.job, self.job_args, {})

        with console.status(f"single-call, {callers} concurrent callers"):
            start = time.perf_counter()
            await asyncio.gather(*(producer() for _ in range(callers)))
            self.result.concurrent_enqueue_per_s = callers * per_caller / (
                time.perf_counter() - start)
        self.result.concurrent_callers = callers

    async def bulk(self) -> None:
        n, batch = self.args.jobs, 1000
        items = self.items(batch)
        with _progress() as bar:
            task = bar.add_task("bulk enqueue", total=n, rate="")
            start = time.perf_counter()
            done = 0
            while done < n:
                size = min(batch, n - done)
                await self.app.enqueue_many_async(self.job, items[:size])
                done += size
                bar.update(task, completed=done,
                           rate=f"{done / (time.perf_counter() - start):,.0f}/s")
            self.result.bulk_enqueue_per_s = n / (time.perf_counter() - start)

    def start_worker(self) -> None:
        minimum = self.args.min_workers or self.args.max_workers
        command = [sys.executable, "-m", "conveyor", "--log-level", "WARNING", "worker",
                   "conveyor.bench_app:app", "--url", self.url, "--namespace", self.namespace,
                   "--min-workers", str(minimum), "--max-workers", str(self.args.max_workers),
                   "--processes", str(self.args.processes), "--grace", "10"]
        self.worker = subprocess.Popen(command)

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()

    async def _finished(self) -> int:
        counts = await self.app.broker.counts()
        final = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)
        return sum(per.get(str(s), 0) for per in counts.values() for s in final)

    async def drain(self) -> None:
        counts = await self.app.broker.counts()
        total = sum(sum(per.values()) for per in counts.values())
        usage = RedisUsage(self.url) if self.url.startswith("redis") else None
        started = time.perf_counter()
        self.start_worker()
        assert self.worker is not None
        try:
            with _progress() as bar:
                task = bar.add_task("drain", total=total, rate="")
                first = None
                done = 0
                while done < total:
                    await asyncio.sleep(0.02)
                    done = await self._finished()
                    now = time.perf_counter()
                    if first is None and done:
                        first, first_done = now, done
                        costs = (process_tree_cpu(self.worker.pid),
                                 await usage.snapshot() if usage else None)
                    if first is not None and now > first:
                        rate = (done - first_done) / (now - first)
                        bar.update(task, completed=done, rate=f"{rate:,.0f}/s")
                    if self.worker.poll() is not None:
                        raise CLIError(f"the worker exited with {self.worker.returncode}",
                                       code=1)
                assert first is not None
                if done > first_done:
                    self.result.drain_per_s = (done - first_done) / (time.perf_counter() - first)
                    await self._costs(done - first_done, costs, usage)
                else:  # all done by the first look: only the time since the worker's start
                    self.result.drain_per_s = done / (time.perf_counter() - started)
                    self.result.notes.append("the drain ended within one poll, so its rate "
                                             "includes the worker's start-up; use more --jobs")
        finally:
            if usage is not None:
                await usage.close()

    async def _costs(self, jobs: int, before: tuple[float | None, tuple[float, float] | None],
                     usage: RedisUsage | None) -> None:
        """Fill in what each of the ``jobs`` drained since ``before`` cost."""
        assert self.worker is not None
        cpu, redis_before = before
        cpu_now = process_tree_cpu(self.worker.pid)
        if cpu is not None and cpu_now is not None:
            self.result.drain_worker_cpu_us_per_job = (cpu_now - cpu) / jobs * 1e6
        redis_now = await usage.snapshot() if usage else None
        if redis_before and redis_now:
            self.result.drain_redis_cpu_us_per_job = (redis_now[0] - redis_before[0]) / jobs * 1e6
            self.result.drain_redis_script_us_per_job = (
                (redis_now[1] - redis_before[1]) / jobs * 1e6)

    async def latency(self) -> None:
        n, rate = self.args.latency_jobs, self.args.rate
        handles = []
        with _progress() as bar:
            task = bar.add_task(f"latency at {rate:,.0f}/s", total=n, rate="")
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                handles.append(await self.app.enqueue_call_async(self.job, self.job_args, {}))
                if i % 100 == 0:
                    bar.update(task, completed=i, rate="")
            achieved = n / (time.perf_counter() - start)
        latencies = []
        for handle in handles:
            await handle.result_async(timeout=60)
            record = await handle.info_async()
            if record.started_at is not None:
                latencies.append((record.started_at - record.created_at) * 1000)
        latencies.sort()
        self.result.latency_rate_per_s = achieved
        self.result.latency_p50_ms = statistics.median(latencies)
        self.result.latency_p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]

    async def run(self) -> BenchResult:
        await self.app.broker.open()
        try:
            await self.single()
            await self.bulk()
            await self.drain()
            await self.latency()
        finally:
            self.stop_worker()
            await self.app.broker.close()
        return self.result


def _table(result: BenchResult) -> Table:
    table = Table(title=f"conveyor bench: {result.kind}, {result.jobs:,} jobs, "
                  f"{result.processes} process(es) x {result.max_workers} max workers",
                  caption=result.url)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("single-call enqueue, 1 caller", f"{result.single_enqueue_per_s:,.0f} jobs/s")
    table.add_row(f"single-call enqueue, {result.concurrent_callers} callers",
                  f"{result.concurrent_enqueue_per_s:,.0f} jobs/s")
    table.add_row("bulk enqueue", f"{result.bulk_enqueue_per_s:,.0f} jobs/s")
    table.add_row("drain", f"{result.drain_per_s:,.0f} jobs/s")
    if result.drain_worker_cpu_us_per_job:
        table.add_row("drain: worker CPU per job", f"{result.drain_worker_cpu_us_per_job:.1f} µs")
    if result.drain_redis_cpu_us_per_job:
        table.add_row("drain: Redis CPU per job", f"{result.drain_redis_cpu_us_per_job:.1f} µs")
        table.add_row("drain: Redis script time per job",
                      f"{result.drain_redis_script_us_per_job:.1f} µs")
    table.add_row(f"enqueue-to-start p50 at {result.latency_rate_per_s:,.0f}/s",
                  f"{result.latency_p50_ms:.1f} ms")
    table.add_row(f"enqueue-to-start p99 at {result.latency_rate_per_s:,.0f}/s",
                  f"{result.latency_p99_ms:.1f} ms")
    return table


def run_bench(args: argparse.Namespace) -> int:
    """Entry point of ``conveyor bench``."""
    if args.jobs < 1 or args.single < 1 or args.latency_jobs < 1 or args.rate <= 0:
        raise CLIError("--jobs, --single, --latency-jobs and --rate must be positive")
    _parse_kind(args.kind)
    tmp = None
    url = args.url or os.environ.get("CONVEYOR_URL")
    if url is None:
        tmp = tempfile.mkdtemp(prefix="conveyor-bench-")
        url = f"sqlite:///{tmp}/bench.db"
    try:
        if args.open_loop:
            return _run_open_loop(args, url)
        result = asyncio.run(Bench(args, url).run())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        console.print(_table(result))
        for note in result.notes:
            console.print(f"note: {note}")
    return 0


def _run_open_loop(args: argparse.Namespace, url: str) -> int:
    from conveyor.cli.openloop import open_loop, open_loop_table

    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        raise CLIError("--rates is a comma-separated list of jobs/s, e.g. 1000,5000") from None
    if not rates or min(rates) <= 0 or args.duration <= 0:
        raise CLIError("--rates and --duration must be positive")
    bench = Bench(args, url)

    async def main() -> dict[str, Any]:
        await bench.app.broker.open()
        try:
            return await open_loop(bench, rates, args.duration)
        finally:
            bench.stop_worker()
            await bench.app.broker.close()

    summary = asyncio.run(main())
    if args.json:
        print(json.dumps({"url": url, "kind": args.kind, **summary}, indent=2))
    else:
        console.print(open_loop_table(summary, f"conveyor bench --open-loop: {args.kind}, "
                                      f"{args.processes} process(es) x {args.max_workers}"))
    return 0
