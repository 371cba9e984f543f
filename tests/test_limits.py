"""Limits with real worker processes on SQLite and Redis: a concurrency cap and a group cap
held across two processes of 20 slots each (the jobs' own ledger gives the overlap), a
tenant's 10 jobs starting while another's 10,000 wait, a rate limit of 20/s over 30 s,
RateLimited deferrals, and what ``conveyor stats`` shows.

The workers run tests/limitjobs.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, cli_env
from conveyor import ConfigurationError, Conveyor, JobState
from conveyor.ids import new_id
from polling import wait_until


class Workers:
    """``conveyor worker limitjobs:app`` processes on one store and namespace."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.namespace = f"t{new_id().lower()}"
        self.ledger_path = tmp / f"ledger-{self.namespace}.txt"
        self.procs: list[subprocess.Popen[bytes]] = []
        import limitjobs

        self.app = limitjobs.app
        self.producer = Conveyor(url=url, namespace=self.namespace)
        for job_fn in self.app.registry.values():  # the same jobs, on the test's store
            self.producer.job(name=job_fn.name, queue=job_fn.options.queue,
                              **_limit_options(job_fn))(job_fn.fn)

    def start(self, *queues: str, processes: int = 2, slots: int = 20) -> None:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "conveyor", "--log-level", "WARNING", "worker",
             "limitjobs:app", "--url", self.url, "--namespace", self.namespace,
             "--queues", ",".join(queues), "--processes", str(processes),
             "--min-workers", str(slots), "--max-workers", str(slots), "--grace", "5"],
            cwd=TESTS, env=cli_env(LIMITS_LEDGER=str(self.ledger_path)), stdout=log,
            stderr=subprocess.STDOUT))

    def ledger(self) -> list[tuple[str, float, str, str]]:
        if not self.ledger_path.exists():
            return []
        rows = []
        for line in self.ledger_path.read_text().splitlines():
            mark, at, job_id, *group = line.split(" ")
            rows.append((mark, float(at), job_id, group[0] if group else ""))
        return rows

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.tmp.glob("worker-*.log"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.producer.close()


def _limit_options(job_fn: object) -> dict[str, object]:
    limits = job_fn.options.limits  # type: ignore[attr-defined]
    options: dict[str, object] = {}
    if limits is None:
        return options
    for key in ("concurrency", "group_by", "group_concurrency"):
        if getattr(limits, key) is not None:
            options[key] = getattr(limits, key)
    if limits.rate is not None:
        options["rate_limit"] = str(limits.rate)
    return options


@pytest.fixture
def workers(url: str, tmp_path: Path) -> Iterator[Workers]:
    fleet = Workers(url, tmp_path)
    yield fleet
    fleet.stop()


def most_at_once(ledger: list[tuple[str, float, str, str]], group: str | None = None) -> int:
    """The most jobs (of ``group``, or all) running at one instant, from starts and ends."""
    events = sorted((at, 1 if mark == "start" else -1) for mark, at, _, g in ledger
                    if group is None or g == group)
    running = peak = 0
    for _, step in events:  # an end and a start at one instant: the end first (-1 < 1)
        running += step
        peak = max(peak, running)
    return peak


def test_a_concurrency_cap_holds_across_processes(workers: Workers) -> None:
    handles = workers.producer.enqueue_many("capped", [(0.05,)] * 60)
    workers.start("capped")
    wait_until(lambda: all(h.info().is_final for h in handles), timeout=120,
               what=f"60 capped jobs to finish:\n{workers.logs()}")
    ledger = workers.ledger()
    assert sum(1 for row in ledger if row[0] == "start") == 60
    assert most_at_once(ledger) == 3


def test_a_group_cap_holds_per_group(workers: Workers) -> None:
    items = [{"tenant": t, "seconds": 0.05} for t in ("a", "b") for _ in range(20)]
    handles = workers.producer.enqueue_many("per_tenant", items)
    assert {h.info().group for h in handles} == {"a", "b"}
    workers.start("grouped")
    wait_until(lambda: all(h.info().is_final for h in handles), timeout=120,
               what=f"40 grouped jobs to finish:\n{workers.logs()}")
    ledger = workers.ledger()
    assert most_at_once(ledger, "a") == 2 and most_at_once(ledger, "b") == 2
    assert most_at_once(ledger) == 4  # another group is not held up by a full one


def test_a_tenant_s_jobs_start_while_another_s_backlog_waits(workers: Workers) -> None:
    workers.producer.enqueue_many("fair", [{"tenant": "A", "seconds": 0.01}] * 10_000)
    later = workers.producer.enqueue_many("fair", [{"tenant": "B", "seconds": 0.01}] * 10)
    workers.start("fair", processes=1, slots=2)
    wait_until(lambda: all(h.info().is_final for h in later), timeout=120,
               what=f"tenant B's 10 jobs:\n{workers.logs()}")
    started_a = sum(1 for mark, _, _, g in workers.ledger() if mark == "start" and g == "A")
    assert started_a < 100, f"{started_a} of A's jobs started before B's 10 were done"
    counts = workers.producer.run_sync(workers.producer.broker.counts())
    assert counts["fair"].get("queued", 0) > 9_000


def _starts_in_30_seconds(fleet: Workers, found: dict[str, int]) -> None:
    try:
        fleet.producer.enqueue_many("rated", [()] * 1500)
        fleet.start("rated", processes=2, slots=10)
        wait_until(lambda: fleet.ledger(), timeout=60, what="a first start")
        first = min(at for _, at, _, _ in fleet.ledger())
        time.sleep(max(0.0, first + 31 - time.time()))
        found[fleet.url] = sum(1 for _, at, _, _ in fleet.ledger() if first <= at < first + 30)
    finally:
        fleet.stop()


def test_a_rate_limit_of_20_per_second_over_30_seconds(tmp_path: Path) -> None:
    """600 ± 5 % starts in 30 s from two processes of ten slots, on SQLite and on Redis at
    once (the two runs share the 30 s)."""
    from redis_server import shared_redis_url

    urls = [f"sqlite:///{tmp_path / 'rated.db'}", shared_redis_url()]
    found: dict[str, int] = {}
    runs = [threading.Thread(target=_starts_in_30_seconds,
                             args=(Workers(url, tmp_path / str(n)), found))
            for n, url in enumerate(urls)]
    for n, run in enumerate(runs):
        (tmp_path / str(n)).mkdir()
        run.start()
    for run in runs:
        run.join(120)
    assert set(found) == set(urls), found
    for url, count in found.items():
        assert 570 <= count <= 630, (url, count)


def test_rate_limited_jobs_go_back_uncharged(url: str, tmp_path: Path) -> None:
    fleet = Workers(url, tmp_path)
    try:
        handle = fleet.producer.enqueue("upstream", 3)  # retries=0: a charge would kill it
        fleet.start("upstream", processes=1, slots=1)
        record = wait_until(lambda: (r := handle.info()).is_final and r, timeout=60,
                            what="the rate-limited job to finish")
    finally:
        fleet.stop()
    assert record.state is JobState.SUCCEEDED, record
    assert (record.attempts, record.deferrals, handle.result(timeout=1)) == (1, 3, 1)


def test_rate_limited_deferrals_are_bounded_in_a_child_process(url: str,
                                                               tmp_path: Path) -> None:
    """Put back uncharged 20 times, then the 21st RateLimited is a failed attempt: with no
    retries left the job is dead after 21 runs."""
    fleet = Workers(url, tmp_path)
    try:
        handle = fleet.producer.enqueue("always_limited", "m")
        fleet.start("upstream", processes=1, slots=1)
        record = wait_until(lambda: (r := handle.info()).is_final and r, timeout=120,
                            what="the always rate-limited job to die")
        runs = sum(1 for mark, _, job, _ in fleet.ledger() if mark == "start" and job == "m")
    finally:
        fleet.stop()
    assert record.state is JobState.DEAD, record
    assert (record.deferrals, record.attempts, runs) == (20, 1, 21)
    assert "RateLimited" in (record.error or "")


def test_wrong_limits_are_refused() -> None:
    app = Conveyor(url="memory://")
    for options, message in (
            ({"group_by": "nope"}, "group_by names no parameter"),
            ({"group_concurrency": 2}, "need group_by"),
            ({"concurrency": 0}, "concurrency must be a whole number"),
            ({"rate_limit": "fast"}, "rate_limit must look like"),
            ({"rate_limit": "0/s"}, "at least some starts"),
            ({"burst": 3}, "give rate_limit"),
            ({"rate_limit": "5/s", "burst": 0}, "burst must be")):
        with pytest.raises(ConfigurationError, match=message):
            app.job(name=f"j{len(app.registry)}", **options)(lambda tenant: None)
    app.close()


def test_stats_show_the_limits(url: str, tmp_path: Path) -> None:
    fleet = Workers(url, tmp_path)
    try:
        # jobs that outlast the reading, however slowly `conveyor stats` starts on a busy
        # machine (with 2 s ones the second pair had taken over: ready 0, throttled 0)
        fleet.producer.enqueue_many("per_tenant", [{"tenant": "a", "seconds": 30.0}] * 4)
        fleet.start("grouped", processes=1, slots=4)
        wait_until(lambda: sum(1 for r in fleet.ledger() if r[0] == "start") >= 2,
                   what="two jobs of tenant a to run")
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "stats", "--json", "--url", url,
             "--namespace", fleet.namespace],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        import json

        rows = {(r["name"], r["group"]): r for r in json.loads(done.stdout)["limits"]}
        assert rows[("per_tenant", "a")]["running"] == 2
        assert rows[("per_tenant", "a")]["cap"] == 2
        assert rows[("per_tenant", "a")]["throttled"] == 2
        assert rows[("per_tenant", None)]["ready"] == 2
        assert [r[0] for r in fleet.ledger()] == ["start", "start"]  # the first pair, still
    finally:
        fleet.stop()


def test_producers_without_the_code_follow_what_workers_publish(url: str) -> None:
    """The group (its default too), the default priority and the rate as workers publish
    them; a forced enqueue takes them as well."""
    from conveyor.known import KnownJob

    namespace = f"t{new_id().lower()}"
    worker_app = Conveyor(url=url, namespace=namespace)
    producer = Conveyor(url=url, namespace=namespace)
    try:
        @worker_app.job(group_by="tenant", group_rate_limit="20/m", priority=7)
        def send(text: str, tenant: str = "acme") -> None: ...

        worker_app.run_sync(worker_app.broker.publish_jobs(
            "w-1", [KnownJob.of(send)]))
        plain = producer.enqueue_call("send", ["hi"], {}).info()
        other = producer.enqueue_call("send", ["hi"], {"tenant": "zeta"}, priority=1).info()
        forced = producer.enqueue_call("send", ["hi"], {}, force=True).info()
        assert (plain.group, plain.priority) == ("acme", 7)
        assert (other.group, other.priority) == ("zeta", 1)
        assert (forced.group, forced.priority) == ("acme", 7)
        own = send.enqueue("hi").info()
        assert (own.group, own.priority) == ("acme", 7)
        rows = producer.run_sync(producer.limit_usage_async())
        assert {r["rate"] for r in rows if r["group"] is not None} == {"20/m"}
    finally:
        producer.close()
        worker_app.close()


def test_a_capped_job_without_groups_shows_one_row(url: str) -> None:
    """Its jobs are kept in one lane of their own: no group row repeats its total."""
    app = Conveyor(url=url, namespace=f"t{new_id().lower()}")
    try:
        @app.job(concurrency=3)
        def capped_alone(n: int) -> None: ...

        for n in range(5):
            capped_alone.enqueue(n)
        rows = app.run_sync(app.limit_usage_async())
        assert rows == [{"name": "capped_alone", "group": None, "running": 0, "cap": 3,
                         "ready": 5, "throttled": 0, "rate": None}]
    finally:
        app.close()
