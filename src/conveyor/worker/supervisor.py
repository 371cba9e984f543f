"""Running workers as processes: signals, graceful shutdown, and a supervisor for several.

One process (``--processes 1``) runs a :class:`Worker` on its own event loop. The first
SIGTERM or SIGINT starts a graceful shutdown (stop claiming, wait up to ``grace`` seconds,
requeue the rest, exit 0); a second one exits at once, leaving the leases to recover the
jobs. With ``--processes N`` a supervisor starts N such processes, restarts any that
die (each on its own backoff, reset once a process has run :data:`STABLE_AFTER` seconds),
and passes shutdown on to them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from conveyor.logs import duration, plural
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
        log.info("%s: finishing running jobs (up to %s; again to exit at once)",
                 name, duration(worker.grace))
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


def _run_bounded(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, but the tasks left over at the end (a store call that swallowed
    its cancellation, say) get :data:`LEFTOVER_WAIT` seconds, not for ever: the process must
    exit within the bound a graceful stop promises. So do the threads of store calls (a
    SQLite call waiting out a lock cannot be interrupted: the process exits when it ends)."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="conveyor-io")
    loop.set_default_executor(executor)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                _, stuck = loop.run_until_complete(asyncio.wait(leftover, timeout=LEFTOVER_WAIT))
                if stuck:
                    log.warning("%s did not end after their cancellation; exiting anyway",
                                plural(len(stuck), "task"))
            loop.run_until_complete(
                asyncio.wait_for(loop.shutdown_asyncgens(), LEFTOVER_WAIT))
        except Exception:
            log.exception("while closing the event loop")
        finally:
            loop.close()
            _end_threads(executor)


def _end_threads(executor: ThreadPoolExecutor) -> None:
    """Shut ``executor`` down, waiting :data:`LEFTOVER_WAIT` seconds at most for its calls
    in progress (the loop's own shutdown of its executor would log a traceback for one that
    outlasts a timeout); say so when one is left."""
    closer = threading.Thread(target=executor.shutdown, kwargs={"cancel_futures": True},
                              name="conveyor-io-shutdown", daemon=True)
    closer.start()
    closer.join(LEFTOVER_WAIT)
    if closer.is_alive():
        log.warning("a store call in progress has not ended (a locked SQLite database waits "
                    "out its busy_timeout); the process exits when it does")


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
    # a worker waits for a store that is down (its calls retry longer than a producer's)
    app.broker.retry_for = max(app.broker.retry_for, WORKER_RETRY_FOR)
    worker = Worker(app, **options)
    try:
        _run_bounded(serve_worker(worker))
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


#: seconds each store call of a ``conveyor worker`` process retries through trouble before
#: its loop takes over (which waits for ever, logging once per outage)
WORKER_RETRY_FOR = 30.0
#: a child that ran this many seconds before it died was not crash-looping: the backoff of its
#: slot starts over, so the slot is refilled at once
STABLE_AFTER = 10.0
#: a slot whose previous child also died young waits this long before its restart; the wait
#: doubles with each further quick death in a row, up to RESTART_BACKOFF_MAX
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
#: seconds the tasks left over when a worker's loop ends get to finish their cancellation
LEFTOVER_WAIT = 1.0
#: on a stop, children get ``grace`` plus this many seconds to exit before they are killed
#: (above a worker's own worst case: its store budget and the wait for cancelled jobs)
STOP_MARGIN = 7.0
#: the monitor loop looks at its children at least this often (signals, child deaths and
#: restarts that fall due wake it at once)
TICK = 0.5
#: how a child that was told to stop may end: on its own, or by the SIGTERM itself when it
#: arrived before the child had set up its handlers (it had claimed nothing yet)
CLEAN_EXITS = (0, -signal.SIGTERM)


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a slot is refilled, after ``quick_deaths`` earlier deaths in a row each
    within :data:`STABLE_AFTER` of its start: 0, then 1, 2, 4, ... up to 30."""
    if quick_deaths <= 0:
        return 0.0
    return min(RESTART_BACKOFF * 2.0 ** min(quick_deaths - 1, 16), RESTART_BACKOFF_MAX)


def describe_exit(code: int | None) -> str:
    """How a child ended, for the logs: ``exited with code 1``, ``was killed by SIGKILL (-9)``."""
    if code is None:
        return "is still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name} ({code})"


@dataclass
class _Slot:
    """One of the supervisor's places for a worker process, with its own restart backoff."""

    index: int
    child: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic time of the last start
    quick_deaths: int = 0  # deaths in a row, each within STABLE_AFTER of its start
    due: float | None = None  # when the empty slot is to be refilled


class Supervisor:
    """Keeps ``processes`` copies of a worker command running until told to stop.

    Each slot restarts its own child, never holding up the others: at once after a death, or
    after :func:`restart_delay` while its children keep dying within :data:`STABLE_AFTER`
    seconds. The first SIGTERM or SIGINT is acted on at once, even while slots wait: the
    children get SIGTERM and ``grace`` + :data:`STOP_MARGIN` seconds to exit before SIGKILL; a
    second signal kills them at once. :meth:`run` returns 0 when every child running at the
    stop ended cleanly (whatever happened to earlier children), else 1.
    """

    def __init__(self, command: Sequence[str], processes: int, grace: float) -> None:
        self.command = list(command)
        self.processes = processes
        self.grace = grace
        self.slots = [_Slot(index) for index in range(processes)]
        self._signals = 0
        self._signal_name = ""
        self._wake_r = self._wake_w = -1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only note it and wake the loop, which does the work (no races with its own calls).
        if signum != signal.SIGCHLD:
            self._signals += 1
            self._signal_name = self._signal_name or signal.Signals(signum).name
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _stop_requested(self) -> bool:
        return self._signals > 0

    def _sleep(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, or less if a signal (or a child's death) came."""
        if timeout > 0:
            select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _schedule_restart(self, slot: _Slot, now: float) -> float:
        """Set when the emptied ``slot`` is refilled; return the delay."""
        if now - slot.started >= STABLE_AFTER:
            slot.quick_deaths = 0
        delay = restart_delay(slot.quick_deaths)
        slot.quick_deaths += 1
        slot.due = now + delay
        return delay

    def _spawn(self, slot: _Slot) -> None:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        slot.due = None
        slot.started = time.monotonic()
        try:
            # A session of its own, so a Ctrl-C in the terminal reaches only the supervisor,
            # which then passes one SIGTERM on (two signals would make a child exit at once).
            child = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as exc:
            delay = self._schedule_restart(slot, slot.started)
            log.error("cannot start worker process %d: %s; retrying %s", slot.index, exc,
                      f"in {duration(delay)}" if delay else "now")
            return
        slot.child = child
        log.info("started worker process %d (pid %d)", slot.index, child.pid)

    def _reap(self, slot: _Slot, child: subprocess.Popen[bytes], now: float,
              stopping: bool = False) -> None:
        """Log the death of ``slot``'s child and, unless stopping, schedule the restart."""
        slot.child = None
        uptime = now - slot.started
        if stopping:
            when = "not restarted: stopping"
        else:
            delay = self._schedule_restart(slot, now)
            when = "restarting now" if delay == 0 else f"restarting in {delay:.0f}s"
        log.warning("worker process %d (pid %d) %s after %.1fs; %s", slot.index, child.pid,
                    describe_exit(child.returncode), uptime, when)

    def run(self) -> int:
        """Start the children, restart the ones that die, and stop on a signal; return the
        exit code."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            while not self._stop_requested():
                now = time.monotonic()
                wake = now + TICK
                for slot in self.slots:
                    if slot.child is not None and slot.child.poll() is not None:
                        self._reap(slot, slot.child, now)
                    if slot.child is None and (slot.due is None or slot.due <= now):
                        if self._stop_requested():
                            break
                        self._spawn(slot)
                    if slot.child is None and slot.due is not None:
                        wake = min(wake, slot.due)
                else:
                    self._sleep(wake - time.monotonic())
            return self._stop()
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _stop(self) -> int:
        """Pass the stop on to the children, wait for them, and return the exit code."""
        now = time.monotonic()
        for slot in self.slots:  # deaths from before the signal: not part of the stop
            slot.due = None
            if slot.child is not None and slot.child.poll() is not None:
                self._reap(slot, slot.child, now, stopping=True)
        stopping = [(slot.index, slot.child) for slot in self.slots if slot.child is not None]
        log.info("%s: stopping %s (up to %s; again to kill them at once)",
                 self._signal_name, plural(len(stopping), "worker process", "worker processes"),
                 duration(self.grace))
        for _, child in stopping:
            child.send_signal(signal.SIGTERM)
        deadline = now + self.grace + STOP_MARGIN
        forced = False
        while any(child.poll() is None for _, child in stopping):
            if self._signals > 1 or time.monotonic() >= deadline:
                forced = True
                self._kill([child for _, child in stopping])
                break
            self._sleep(min(TICK, deadline - time.monotonic()))
        for index, child in stopping:
            if child.returncode not in CLEAN_EXITS:
                log.error("worker process %d (pid %d) %s while stopping", index, child.pid,
                          describe_exit(child.returncode))
        for slot in self.slots:
            slot.child = None
        clean = all(child.returncode in CLEAN_EXITS for _, child in stopping)
        return 0 if clean and not forced and self._signals == 1 else 1

    def _kill(self, children: list[subprocess.Popen[bytes]]) -> None:
        """SIGKILL the children still running and wait (a bounded time) for them to go."""
        running = [child for child in children if child.poll() is None]
        why = ("second signal" if self._signals > 1
               else f"still running {self.grace + STOP_MARGIN:.0f}s after the signal")
        log.error("%s: killing %s; leases will recover their jobs",
                  why, plural(len(running), "worker process", "worker processes"))
        for child in running:
            child.kill()
        for child in running:
            try:
                child.wait(STOP_MARGIN)
            except subprocess.TimeoutExpired:
                log.error("worker process pid %d did not die on SIGKILL", child.pid)


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one supervised process: the same options, one process."""
    return [sys.executable, "-m", "conveyor", *argv, "--processes", "1"]
