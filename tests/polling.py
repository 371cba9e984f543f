"""Waiting in tests: poll a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, what: str = "", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test
    with ``what`` in the message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_running(pid: int) -> bool:
    """True while process ``pid`` runs: it exists and is not a zombie (an orphan that ended
    stays one until whatever adopted it reaps it). Without ``/proc``: :func:`pid_alive`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return pid_alive(pid)
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def exit_after_sigterm(proc: Any, within: float, log: Callable[[], str]) -> int:
    """SIGTERM ``proc`` (a ``subprocess.Popen``) and return its exit code, which must come
    within ``within`` seconds; otherwise kill it and fail with ``log()``."""
    import signal

    return exit_after_signal(proc, signal.SIGTERM, within, log)


def exit_after_signal(proc: Any, sig: int, within: float, log: Callable[[], str]) -> int:
    """Send ``proc`` (a ``subprocess.Popen``) signal ``sig`` and return its exit code, which
    must come within ``within`` seconds; otherwise kill it and fail with ``log()``."""
    import signal
    import subprocess

    proc.send_signal(sig)
    try:
        return int(proc.wait(within))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"no exit {within}s after {signal.Signals(sig).name}:\n{log()}") from None


def child_exit_code(pid: int, timeout: float = 20.0, what: str = "the child to report") -> int:
    """The exit code of forked child ``pid``, which must end within ``timeout`` seconds;
    a child still running then is killed (it must not outlive the test) and the test fails."""
    import signal

    codes: list[int] = []

    def ended() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            codes.append(os.waitstatus_to_exitcode(status))
        return bool(codes)

    try:
        wait_until(ended, timeout=timeout, what=what)
    finally:
        if not codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return codes[0]
