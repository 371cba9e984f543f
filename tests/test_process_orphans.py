"""A process job's child ends with its worker process, however that ends: a child left
running after its worker was SIGKILLed would be a second owner of the attempt the store
gives to another worker once the lease lapses.

Real processes and signals: a parent process running a :class:`ProcessPool` is SIGKILLed
while its child sleeps, spins in Python or spins in C code holding the GIL; and a
``conveyor worker`` is SIGKILLed while its child keeps a ledger (``orphanjobs.ticker``, one
fsynced line per tick), on both stores, before a second worker recovers the job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import TESTS, cli_env
from conveyor import Conveyor, JobState
from conveyor.ids import new_id
from polling import pid_running, wait_until

#: seconds within which a child must end once its parent was SIGKILLed
CHILD_ENDS_WITHIN = 5.0

PARENT = textwrap.dedent("""
    import asyncio, sys
    import orphanjobs, wjobs_process
    from conveyor.worker import process_pool

    async def main() -> None:
        if sys.argv[3] == "sentinel":  # the child as on other systems than Linux
            process_pool._child_main = orphanjobs.child_without_the_kernels_signal
        job = getattr(wjobs_process, sys.argv[2])
        record = wjobs_process.app.build(job.name, [sys.argv[1]], {})
        await process_pool.ProcessPool(1).run("wjobs_process", sys.argv[2], record,
                                              timeout=None, on_progress=lambda *_: None)

    if __name__ == "__main__":
        asyncio.run(main())
""")


def _kill_if_running(pid: int | None) -> None:
    if pid is not None and pid_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("job", "watch"), [
    ("sleeper", "kernel"), ("spinner", "kernel"), ("c_spinner", "kernel"),
    ("sleeper", "sentinel"), ("spinner", "sentinel"),  # (C code holding the GIL: kernel only)
])
def test_a_child_ends_when_its_parent_is_killed(tmp_path: Path, job: str, watch: str) -> None:
    script, pids = tmp_path / "parent.py", tmp_path / "pids"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pids), job, watch],
                              cwd=TESTS, env=cli_env(), stderr=subprocess.DEVNULL)
    child = None
    try:
        wait_until(lambda: pids.exists() and pids.read_text().strip(), 30, "the job to start")
        child = int(pids.read_text().split()[0])
        assert pid_running(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not pid_running(child), CHILD_ENDS_WITHIN,
                   f"the {job} child to end after its parent was SIGKILLed")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        _kill_if_running(child)


def _ledger(path: Path) -> list[tuple[int, int, float]]:
    """The ledger's lines as (pid, attempt, time); a last line cut short is left out."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return rows


def _worker(url: str, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", "--log-level", "INFO", "worker", "orphanjobs:app",
             "--url", url, "--namespace", namespace],
            cwd=TESTS, env=cli_env(), stdout=subprocess.DEVNULL, stderr=out)


def test_a_killed_workers_process_job_stops_before_the_job_is_recovered(
    url: str, tmp_path: Path
) -> None:
    namespace = f"t{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace)
    ledger, log = tmp_path / "ledger", tmp_path / "worker.log"
    handle = app.enqueue_call("ticker", [str(ledger)], {}, force=True)
    first = _worker(url, namespace, log)
    second = None
    child = None
    try:
        wait_until(lambda: ledger.exists() and len(_ledger(ledger)) >= 3, 30,
                   "the first attempt to tick")
        child = _ledger(ledger)[0][0]
        first.kill()
        first.wait()
        killed_at = time.time()
        wait_until(lambda: not pid_running(child), CHILD_ENDS_WITHIN,
                   "the first attempt's process to end with its worker")
        ticks = len(_ledger(ledger))
        second = _worker(url, namespace, log)
        info = wait_until(lambda: (r := handle.info()).is_final and r, 60,
                          "the job to be recovered and finished")
        assert info.state is JobState.SUCCEEDED, log.read_text()
        assert handle.result() == info.attempts >= 2
        rows = _ledger(ledger)
        firsts = [t for pid, attempt, t in rows if attempt == 1]
        lasts = [t for pid, attempt, t in rows if attempt == info.attempts]
        assert {pid for pid, attempt, _ in rows if attempt == 1} == {child}
        assert len(firsts) == ticks  # nothing more from the killed worker's child
        assert max(firsts) < killed_at  # its last tick came before the kill was through
        assert max(firsts) < min(lasts)  # one owner at a time
        assert len(lasts) == 5
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        _kill_if_running(child)
        app.close()
