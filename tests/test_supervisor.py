"""The ``--processes N`` supervisor, on real processes and real signals: each slot restarts on
its own backoff, the backoff resets once a child ran a while, and a stop is acted on at once
and exits 0 whatever happened to earlier children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from clijobs import CLI
from conveyor.worker.supervisor import STABLE_AFTER, restart_delay
from polling import pid_alive, wait_until

START = re.compile(r"started worker process (\d+) \(pid (\d+)\)")
DEATH = re.compile(r"worker process (\d+) \(pid (\d+)\) (.+) after [\d.]+s; (.+)$")


class Supervised:
    """``conveyor worker clijobs:app --processes 2``, its log read line by line as it comes."""

    def __init__(self, cli: CLI) -> None:
        command = [sys.executable, "-m", "conveyor", "--log-level", "INFO", "worker",
                   "clijobs:app", "--url", cli.url, "--grace", "5", "--processes", "2"]
        self.proc = subprocess.Popen(command, cwd=cli.cwd, env=cli.env(), text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def starts(self, slot: int) -> list[int]:
        """The pids started in ``slot`` so far, in order."""
        found = (START.search(line) for line in list(self.lines))
        return [int(m[2]) for m in found if m and int(m[1]) == slot]

    def started(self, slot: int, count: int, timeout: float = 30) -> int:
        """Wait for the ``count``-th start in ``slot``; return its pid."""
        pids = wait_until(lambda: len(p := self.starts(slot)) >= count and p, timeout,
                          f"start {count} of slot {slot}")
        return int(pids[count - 1])

    def death(self, pid: int) -> tuple[str, str]:
        """Wait for the warning about ``pid``'s death: (how it ended, when it restarts)."""
        def find() -> tuple[str, str] | None:
            for line in list(self.lines):
                m = DEATH.search(line)
                if m and int(m[2]) == pid and " WARNING " in line:
                    return m[3], m[4]
            return None
        found: tuple[str, str] = wait_until(find, 10, f"the death of pid {pid} in the log")
        return found

    def kill_young(self, slot: int, times: int) -> int:
        """SIGKILL ``slot``'s current child and the next ones as soon as they start, ``times``
        in all; return the last pid."""
        first = max(1, len(self.starts(slot)))
        pid = 0
        for count in range(first, first + times):
            pid = self.started(slot, count)
            os.kill(pid, signal.SIGKILL)
            self.death(pid)
        return pid

    def log(self) -> str:
        return "\n".join(self.lines)


def workers(cli: CLI) -> list[int]:
    """The pids of the workers registered in the store (none before it is made)."""
    done = cli("stats", "--json")
    if done.returncode == 1 and "no SQLite database" in done.stderr:
        return []
    assert done.returncode == 0, done.stderr
    return [w["pid"] for w in json.loads(done.stdout)["workers"]]


@pytest.fixture
def supervised(cli: CLI) -> Iterator[Supervised]:
    sup = Supervised(cli)
    yield sup
    if sup.proc.poll() is None:
        sup.proc.send_signal(signal.SIGTERM)
        try:
            sup.proc.wait(20)
        except subprocess.TimeoutExpired:
            sup.proc.kill()
            sup.proc.wait()
    for slot in (0, 1):  # whatever was left of its children (only if the supervisor failed)
        for pid in sup.starts(slot):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_restart_delays() -> None:
    assert [restart_delay(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(100_000) == 30


def test_backoff_resets_once_a_child_ran_a_while(supervised: Supervised) -> None:
    last = supervised.kill_young(0, 2)  # restarted now, then in 1s
    assert supervised.death(last)[1] == "restarting in 1s"
    pid = supervised.started(0, 3, timeout=10)
    time.sleep(STABLE_AFTER + 0.5)
    assert pid_alive(pid), supervised.log()
    os.kill(pid, signal.SIGKILL)
    # Without the reset this restart would wait 2s.
    supervised.started(0, 4, timeout=5)
    assert supervised.death(pid) == ("was killed by SIGKILL (-9)", "restarting now")
    assert supervised.proc.poll() is None


def test_a_crash_looping_slot_does_not_hold_up_another(supervised: Supervised) -> None:
    other = supervised.started(1, 1)
    last = supervised.kill_young(0, 5)
    assert supervised.death(last)[1] == "restarting in 8s"
    os.kill(other, signal.SIGKILL)
    supervised.started(1, 2, timeout=5)
    assert len(supervised.starts(0)) == 5, "slot 0 still waits for its backoff"
    assert supervised.death(other) == ("was killed by SIGKILL (-9)", "restarting now")


def test_sigterm_while_a_slot_waits_exits_0_at_once(cli: CLI, supervised: Supervised) -> None:
    other = supervised.started(1, 1)
    wait_until(lambda: other in workers(cli), what="slot 1's worker to register")
    last = supervised.kill_young(0, 5)
    assert supervised.death(last)[1] == "restarting in 8s"
    signalled = time.monotonic()
    supervised.proc.send_signal(signal.SIGTERM)
    try:
        code = supervised.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within 10s of SIGTERM:\n{supervised.log()}") from None
    assert time.monotonic() - signalled < 5, "the stop waited for slot 0's 8s backoff"
    assert code == 0, supervised.log()
    assert len(supervised.starts(0)) == 5, "no restart after the signal"
    assert not pid_alive(other)
    assert other not in workers(cli), "slot 1's worker stopped gracefully"
    assert "Traceback" not in supervised.log()
