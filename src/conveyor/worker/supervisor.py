"""Running workers as processes: signals, graceful shutdown, and a supervisor for several.

One process (``--processes 1``) runs a :class:`Worker` on its own event loop. The first
SIGTERM or SIGINT starts a graceful shutdown (stop claiming, wait up to ``grace`` seconds,
requeue the rest, exit 0); a second one exits at once, leaving the leases to recover the
jobs. With ``--processes N`` a supervisor starts N such processes, restarts any that
crash, and passes shutdown on to them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.worker.pool import Worker

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.supervisor")

#: set in the environment of supervised processes: the supervisor's pid
PARENT_ENV = "CONVEYOR_SUPERVISOR_PID"


async def _watch_parent(worker: Worker, parent: int) -> None:
    """Stop gracefully if the supervisor disappears (it was killed with SIGKILL)."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; shutting down", parent)
    worker.request_stop()


class ShutdownSignals:
    """SIGTERM and SIGINT on the running loop: the first calls ``on_first`` (a graceful stop),
    a second exits the process at once (status 1), leaving running jobs to their leases."""

    def __init__(self, on_first: Callable[[str], None]) -> None:
        self.on_first = on_first
        self.count = 0
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._received, sig)

    def _received(self, signum: int) -> None:
        self.count += 1
        if self.count == 1:
            self.on_first(signal.Signals(signum).name)
        else:
            log.warning("second signal: exiting now; leases will recover running jobs")
            os._exit(1)

    def remove(self) -> None:
        """Give the signals back to their defaults."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)


async def serve_worker(worker: Worker) -> None:
    """Run ``worker`` until the first signal, as described in the module docstring."""

    def stop(name: str) -> None:
        log.info("%s: finishing running jobs (up to %.0fs; again to exit at once)",
                 name, worker.grace)
        worker.request_stop()

    signals = ShutdownSignals(stop)
    watchers: list[asyncio.Task[None]] = []
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        watchers.append(asyncio.create_task(_watch_parent(worker, int(parent))))
    try:
        await worker.run()
    finally:
        for task in watchers:
            task.cancel()
        signals.remove()


def run_worker(app: Conveyor, *, metrics_port: int | None = None,
               metrics_host: str = "127.0.0.1", **options: Any) -> int:
    """Run one worker in this process until it is told to stop; return the exit code.

    With ``metrics_port`` the worker's Prometheus metrics are served on
    ``http://metrics_host:metrics_port/metrics`` (see :mod:`conveyor.metrics`).
    """
    stop_metrics = None
    if metrics_port is not None:
        from conveyor.metrics import Metrics, start_server

        metrics = app.metrics or Metrics()
        app.metrics = metrics
        options["metrics"] = metrics
        try:
            stop_metrics = start_server(metrics, metrics_port, metrics_host)
        except OSError as exc:
            from conveyor.cli.loading import CLIError

            raise CLIError(f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                           f"{exc.strerror or exc}", code=1) from None
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    worker = Worker(app, **options)
    try:
        asyncio.run(serve_worker(worker))
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


class Supervisor:
    """Keeps ``processes`` copies of a worker command running until told to stop."""

    def __init__(self, command: Sequence[str], processes: int, grace: float) -> None:
        self.command = list(command)
        self.processes = processes
        self.grace = grace
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self._stopping = False
        self._signals = 0

    def _spawn(self, slot: int) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        # A session of its own, so a Ctrl-C in the terminal reaches only the supervisor,
        # which then passes one SIGTERM on (two signals would make a child exit at once).
        child = subprocess.Popen(self.command, env=env, start_new_session=True)
        self.children[slot] = child
        log.info("started worker process %d (pid %d)", slot, child.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        self._stopping = True
        sig = signal.SIGTERM if self._signals == 1 else signal.SIGKILL
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(sig)

    def run(self) -> int:
        """Start the children, restart crashed ones with backoff, and wait for a stop."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.processes):
            self._spawn(slot)
        backoff = [1.0] * self.processes
        while True:
            alive = 0
            for slot, child in enumerate(self.children):
                if child is None or child.poll() is None:
                    alive += child is not None
                    continue
                if self._stopping:
                    continue
                log.error("worker process pid %d exited with %s; restarting in %.0fs",
                          child.pid, child.returncode, backoff[slot])
                time.sleep(backoff[slot])
                backoff[slot] = min(backoff[slot] * 2, 30.0)
                if not self._stopping:
                    self._spawn(slot)
                    alive += 1
            if self._stopping and alive == 0:
                break
            time.sleep(0.2)
        codes = [c.returncode for c in self.children if c is not None]
        return 0 if self._signals <= 1 and all(code == 0 for code in codes) else 1


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one supervised process: the same options, one process."""
    return [sys.executable, "-m", "conveyor", *argv, "--processes", "1"]
