"""Schedules fired by several real worker processes at once, with no leader: exactly one job
per tick while a worker is SIGKILLed and started again, then goes on alone (the others
stop), on SQLite and on Redis (the workers of ``conveyor serve`` among them).

The workers run tests/cronjobs.py: an ``every=1`` schedule whose job appends its tick and
attempt to a ledger file.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, cli_env
from conveyor import Conveyor, JobState
from polling import wait_until
from redis_server import RedisServer, free_port

#: seconds the schedule runs before and after the kill (about 20 s in all, with the start,
#: the gap and the end)
PHASE = 7.0
#: seconds within which some worker's round stores a tick's job (rounds are a second apart)
ROUND_SLACK = 2.0


class Fleet:
    """``conveyor worker`` and ``conveyor serve`` processes on one store, killed at the end."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.ledger_path = tmp / "ledger.txt"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, serve: bool = False,
              options: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        command = (["serve", "cronjobs:app", "--port", str(free_port())] if serve
                   else ["worker", "cronjobs:app", *options])
        log = self.log_of(len(self.procs)).open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *command, "--url", self.url],
            cwd=TESTS, env=cli_env(CRON_LEDGER=str(self.ledger_path)), stdout=log,
            stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log_of(self, index: int) -> Path:
        return self.tmp / f"proc-{index}.log"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    def ledger(self) -> list[tuple[int, int, int]]:
        """(tick, attempt, pid of the worker) of each run of a tick's job."""
        if not self.ledger_path.exists():
            return []
        lines = self.ledger_path.read_text().splitlines()
        return [(int(tick), int(attempt), int(pid)) for tick, attempt, pid in
                (line.split() for line in lines)]

    def ledger_ticks(self) -> list[tuple[int, int]]:
        return [(tick, attempt) for tick, attempt, _ in self.ledger()]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def run_fleet(url: str, tmp: Path, serve: bool) -> None:
    fleet = Fleet(url, tmp)
    app = Conveyor(url=url)
    try:
        doomed = fleet.start()
        fleet.start()
        fleet.start(serve=serve)
        wait_until(lambda: len(fleet.ledger_ticks()) >= 2, 30, "the first ticks")
        up = time.time()  # every worker is up (one of them fired)
        time.sleep(PHASE)
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.time()
        doomed.wait(10)
        time.sleep(1.0)
        back = fleet.start(options=("--log-level", "debug"))  # the killed worker comes back
        time.sleep(PHASE)
        for other in fleet.procs[1:3]:  # the others stop: the restarted one goes on alone
            other.send_signal(signal.SIGTERM)
            other.wait(20)

        def alone() -> bool:
            fired = "schedule pulse: enqueued" in fleet.log_of(3).read_text(errors="replace")
            return fired and back.pid in {pid for _, _, pid in fleet.ledger()}

        wait_until(alone, 10, "the restarted worker to fire a tick and run its job")
        end = time.time()
        paused = app.run_sync(app.broker.set_schedule_paused("pulse", True))
        assert paused is not None
        time.sleep(1.5)  # a round already under way stores its ticks

        def jobs() -> list[str]:
            return [r.id for r in app.run_sync(app.broker.list_jobs(limit=1000))]

        def all_done() -> bool:
            return all(r.state is JobState.SUCCEEDED
                       for r in app.run_sync(app.broker.list_jobs(limit=1000)))

        wait_until(all_done, 30, "every tick's job to succeed")
        ids = jobs()
        assert back.poll() is None, "the restarted worker died"
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop_all()
        app.close()
    assert all(job_id.startswith("cron:pulse:") for job_id in ids)
    ticks = sorted(int(job_id.rsplit(":", 1)[-1]) for job_id in ids)
    # every tick from the first after the workers were up to the last before the pause
    # (by the clock, not by what was stored) is there, with none missing in between
    expected = range(math.ceil(up) + 1, math.floor(end - ROUND_SLACK) + 1)
    assert len(expected) >= 2 * PHASE - 2 * ROUND_SLACK
    assert set(expected) <= set(ticks), sorted(set(expected) - set(ticks))
    assert ticks == list(range(ticks[0], ticks[-1] + 1)), "a tick is missing"
    ran = fleet.ledger()
    first_attempts = Counter(tick for tick, attempt, _ in ran if attempt == 1)
    assert sorted({tick for tick, _, _ in ran}) == ticks, "the ledger and the store disagree"
    # a job the killed worker had claimed as started may have been killed before its first
    # attempt wrote its line: charged, it ran as a later attempt only (a tick or two before
    # the kill); every other tick's job ran first as attempt 1
    unwritten = sorted(set(ticks) - set(first_attempts))
    assert all(killed_at - 3 <= tick <= killed_at + 1 for tick in unwritten), \
        (unwritten, killed_at)
    assert set(first_attempts.values()) == {1}, "a tick's job ran twice as a new job"
    # a job the killed worker was running ran again as the same job, a later attempt
    assert all(attempt > 1 for tick, attempt, _ in ran if first_attempts[tick] and attempt != 1)


def test_three_workers_on_sqlite_fire_each_tick_once(db_url: str, tmp_path: Path) -> None:
    run_fleet(db_url, tmp_path, serve=False)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_workers_and_serve_on_redis_fire_each_tick_once(redis_url: str, tmp_path: Path) -> None:
    run_fleet(redis_url, tmp_path, serve=True)
