"""Processes and stores for the fault scenarios: ``conveyor worker`` / ``conveyor serve``
processes with their logs, a SQLite file or a private ``redis-server``, and ways to cut
either off.

Nothing is mocked: processes are real, signals are real (SIGKILL, SIGTERM), Redis is a real
server killed with SIGKILL and started again on its append-only file (``appendfsync
always``), and a SQLite store's outage is its write lock held by another connection (as a
backup or a forgotten ``sqlite3`` shell would hold it): every write waits for the busy
timeout, then fails with "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polling import wait_until

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
JOBS_APP = "faults.faultjobs:app"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a conveyor process: tests/ importable (for ``faults.faultjobs``),
    nothing from the shell steering the store."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONVEYOR_URL", "CONVEYOR_TOKEN", "CONVEYOR_STAGING")
           and not k.startswith("FAULTS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return sorted(set(found))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy and return its value (:func:`polling.wait_until`)."""
    return wait_until(predicate, timeout, what, interval)


@dataclass
class Stop:
    """A graceful stop: SIGTERM, then the wait for the process to exit."""

    what: str
    seconds: float
    code: int | None  # None: it did not exit in time and was killed
    #: the store's state when the signal was sent
    store: str = "up"

    def __str__(self) -> str:
        code = "did not exit" if self.code is None else f"exit {self.code}"
        return f"{self.what}: {code} after {self.seconds:.2f}s (store {self.store})"


class Proc:
    """A conveyor process (``python -m conveyor ...``), its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path,
                 log: Path) -> None:
        self.name = name
        self.log_path = log
        self.argv = [sys.executable, "-m", "conveyor", *argv]
        with log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT)
        self.pid = self.popen.pid
        #: every descendant pid seen (supervised children), killed at cleanup if left
        self.seen_children: set[int] = set()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """The live children (a supervisor's worker processes)."""
        found = [p for p in children_of(self.pid) if pid_alive(p)]
        self.seen_children.update(found)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> float:
        """SIGKILL; return when (``time.time()``) it was sent."""
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)
        return at

    def stop(self, bound: float, store: str = "up") -> Stop:
        """SIGTERM and wait up to ``bound`` seconds; past it, SIGKILL (the stop failed)."""
        return self.wait_stopped(self.terminate(), bound, store)

    def terminate(self) -> float:
        """Send SIGTERM; return when (``time.monotonic()``)."""
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        return sent

    def wait_stopped(self, sent: float, bound: float, store: str = "up") -> Stop:
        """Wait for the exit that a SIGTERM sent at ``sent`` asked for, up to ``bound``
        seconds after it; past it, SIGKILL (the stop failed)."""
        try:
            code: int | None = self.popen.wait(max(0.0, sent + bound - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - sent
        if code is None:
            self.children()
            self.kill()
        return Stop(self.name, seconds, code, store)

    def cleanup(self) -> None:
        self.children()
        if self.alive():
            self.kill()
        for pid in self.seen_children:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Fleet:
    """Every process a scenario starts, killed (with their children) at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: list[Proc] = []

    def start(self, name: str, *argv: str) -> Proc:
        proc = Proc(name, argv, self.env, self.workdir,
                    self.workdir / f"{len(self.procs):02d}-{name}.log")
        self.procs.append(proc)
        return proc

    def worker(self, name: str, *, processes: int, slots: int, grace: float,
               queues: Sequence[str] = ()) -> Proc:
        """``conveyor worker faults.faultjobs:app --processes N`` with a fixed size."""
        argv = ["worker", JOBS_APP, "--processes", str(processes), "--min-workers", str(slots),
                "--max-workers", str(slots), "--grace", str(grace)]
        if queues:
            argv += ["--queues", ",".join(queues)]
        return self.start(name, *argv)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name} (pid {p.pid}) ---\n{p.tail()}"
                         for p in self.procs)

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.cleanup()


# -- stores -------------------------------------------------------------------------------------
class Store:
    """A store the scenarios can cut off and bring back."""

    kind = ""
    url = ""

    def down(self) -> None:
        raise NotImplementedError

    def up(self) -> None:
        raise NotImplementedError

    @property
    def is_down(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Release everything (bring the store back first if it is down)."""


class SQLiteStore(Store):
    """A SQLite file; down = its write lock held by another connection."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock: sqlite3.Connection | None = None

    def down(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")  # the write lock, held until up()
        self._lock = conn

    def up(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None

    @property
    def is_down(self) -> bool:
        return self._lock is not None

    def close(self) -> None:
        self.up()


class RedisStore(Store):
    """A private ``redis-server`` (AOF, ``appendfsync always``); down = SIGKILL, up = start
    again on the same directory and port."""

    kind = "redis"

    def __init__(self, directory: Path) -> None:
        from redis_server import RedisServer

        directory.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(directory).start()
        self.url = self.server.url

    def down(self) -> None:
        self.server.kill()

    def up(self) -> None:
        self.server.start()

    @property
    def is_down(self) -> bool:
        process = self.server.process
        return process is None or process.poll() is not None

    def close(self) -> None:
        self.server.stop()


def open_store(kind: str, directory: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore(directory / "conveyor.db")
    if kind == "redis":
        return RedisStore(directory / "redis")
    raise ValueError(f"unknown store {kind!r}")
