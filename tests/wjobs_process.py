"""Process-executor jobs for tests/test_worker_timeouts.py: child processes import them here.

The module's app has no URL of its own; tests bind it with ``app.use_url(db_url)`` and
``app.close()`` it afterwards, so each test gets its own database.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from conveyor import Conveyor

app = Conveyor(lease=2.0)


def _note_pid(pid_file: str) -> None:
    with Path(pid_file).open("a") as f:
        f.write(f"{os.getpid()}\n")


@app.job(executor="process", timeout=0.5, retries=1, backoff=0.05)
def sleeper(pid_file: str) -> None:
    """Stuck in time.sleep: only killing the process stops it."""
    _note_pid(pid_file)
    time.sleep(1000)


@app.job(executor="process", timeout=0.5, retries=0)
def spinner(pid_file: str) -> None:
    """A pure-Python busy loop."""
    _note_pid(pid_file)
    while True:
        pass


@app.job(executor="process", timeout=0.5, retries=0)
def c_spinner(pid_file: str) -> int:
    """A busy loop that never leaves C code (no signal handler could run)."""
    _note_pid(pid_file)
    return sum(itertools.repeat(0))


@app.job(executor="process", timeout=30)
def whoami() -> int:
    """Finishes well within its timeout."""
    return os.getpid()
