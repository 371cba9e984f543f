"""The ``process`` executor: a pool of long-lived child processes with hard timeouts.

Children are started with the ``spawn`` method and reused from job to job. Everything
crossing the pipe is JSON text (never pickle): the parent sends
``["run", module, qualname, record, staged]`` (``staged``: the path of the job's uploaded
file, or null); a child answers ``["ready"]`` once after booting,
``["progress", job_id, value, message]`` while a job runs, then ``["ok", result]`` or
``["error", type_name, message, traceback, permanent, retry_delay, retry,
rate_limited]``. A child that overruns its timeout, or whose caller is cancelled, is
killed with SIGKILL (which works even inside C code) and replaced lazily on the next run.
A child ends as soon as its worker process does, however that ends (see
:func:`_end_with_parent`), and ends its job when its worker shows no sign of life for
longer than its lease allows (stopped, or its event loop held: see :func:`_watch_worker`).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import importlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from conveyor.context import JobContext
from conveyor.errors import JobTimeout, PermanentError, RateLimited, Retry
from conveyor.functions import CallBinding, JobFunction
from conveyor.job import FROZE, JobRecord, JobState
from conveyor.logs import duration
from conveyor.serialization import NotSerializable, dumps, loads

log = logging.getLogger(__name__)
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord) if f.name != "result")
_REAP_TIMEOUT = 5.0
#: Linux's prctl option that has the kernel signal a process when its parent ends
_PR_SET_PDEATHSIG = 1
#: the exit code of a child that ended its job because its worker showed no sign of life
FROZEN_EXIT = 75


class RemoteError(Exception):
    """The job function raised in the child (or the child died: ``WorkerProcessDied``)."""

    def __init__(self, type_name: str, message: str, traceback: str, permanent: bool,
                 retry_delay: float | None, retry: bool, rate_limited: bool = False) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.rate_limited = rate_limited
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.permanent = permanent
        self.retry_delay = retry_delay
        self.retry = retry


class WorkerFroze(RemoteError):
    """The child ended its job because its worker showed no sign of life for longer than
    the pool's patience (see :func:`_watch_worker`), and the pool saw its own loop that
    silent: not the job's failure (the worker puts it back uncharged, a bounded number of
    times: see :func:`conveyor.worker.outcomes.failed`)."""


class _ChildDied(Exception):
    """The pipe to the child hit end-of-file or broke."""


def _encode(message: list[Any]) -> bytes:
    # Lone surrogates become \\udcxx escapes, which are still valid JSON for the same text.
    return dumps(message).encode("utf-8", "backslashreplace")


# -- the child side ---------------------------------------------------------------------------
def _resolve(module: str, qualname: str) -> tuple[Callable[..., Any], CallBinding,
                                                   tuple[type[BaseException], ...]]:
    """The function ``module:qualname``, how its arguments are bound, its permanent errors."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, JobFunction):
        return obj.fn, obj.binding, obj.options.permanent_errors
    return obj, CallBinding.of(obj), ()


def _run_one(conn: Connection[Any, Any], lock: threading.Lock, module: str, qualname: str,
             fields: dict[str, Any], staged: str | None,
             cache: dict[tuple[str, str], Any]) -> list[Any]:
    """Run one job in the child and build the reply message."""
    permanent_errors: tuple[type[BaseException], ...] = ()
    try:
        key = (module, qualname)
        if key not in cache:
            cache[key] = _resolve(module, qualname)
        fn, binding, permanent_errors = cache[key]
        record = JobRecord(**{**fields, "state": JobState(fields["state"])})
        context = None
        if binding.context_parameter is not None:

            def sink(job_id: str, value: float, message: str | None) -> None:
                data = _encode(["progress", job_id, value, message])
                with lock:
                    conn.send_bytes(data)

            context = JobContext(record, sink)
        args, kwargs = binding.arguments(record, context, None if staged is None else Path(staged))
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        try:
            dumps(result)
        except NotSerializable as exc:
            return ["error", "NotSerializable",
                    f"the job's result is not JSON-serializable: {exc}", "", True, None, False,
                    False]
        return ["ok", result]
    except BaseException as exc:  # the job's own failure, reported rather than fatal
        retry = isinstance(exc, Retry | RateLimited)
        permanent = isinstance(exc, (PermanentError, *permanent_errors))
        delay = float(exc.delay) if isinstance(exc, Retry) and exc.delay is not None else None
        if isinstance(exc, RateLimited):
            delay = exc.retry_after
        return ["error", type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)),
                permanent, delay, retry, isinstance(exc, RateLimited)]


def _end_with_parent(parent: int) -> None:
    """End this child as soon as its worker process (pid ``parent``) ends, however it ends
    (SIGKILL included): a job left running in an orphan would be a second owner of an
    attempt that the store gives to another worker once the lease lapses. On Linux the
    kernel sends SIGKILL (``PR_SET_PDEATHSIG``: even while the job runs C code that holds
    the GIL, and whatever copies of the parent a fork made); elsewhere a thread waits for
    the parent's end (its sentinel: a copy of the parent forked by a job keeps it open)."""
    killed = _killed_with_parent()
    if os.getppid() != parent:  # gone already, before the kernel was asked
        os._exit(1)
    parent_process = multiprocessing.parent_process()
    if not killed and parent_process is not None and parent_process.sentinel is not None:
        threading.Thread(target=_exit_when_ready, args=(parent_process.sentinel,),
                         name="conveyor-parent-watch", daemon=True).start()


def _killed_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; whether it will."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        asked = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return bool(asked == 0)


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _watch_worker(alive: Any, patience: float, running: list[Any]) -> None:
    """End this child (exit :data:`FROZEN_EXIT`) once a job runs in it and its worker has
    shown no sign of life for ``patience`` seconds: ``alive.value`` is the worker's last
    ``time.monotonic()`` (its event loop stamps it every :attr:`ProcessPool.beat_every`
    seconds), ``running`` the job under way (its id, and when it was sent, which its worker
    was alive to do; None: idle). A worker stopped (SIGSTOP) or whose event loop is held
    renews no lease, so another worker may soon recover the job: the copy here must not run
    beside it. An outage of the store is not such a silence (the loop runs on)."""
    every = min(patience / 4, 0.5)
    while True:
        time.sleep(every)
        job = running[0]
        if job is None:
            continue
        silent = time.monotonic() - max(alive.value, job[1])
        if silent > patience and running[0] is job:
            note = (f"conveyor: process job {job[0]}: its worker (pid {os.getppid()}) has "
                    f"shown no sign of life for {silent:.1f}s (stopped, or its event loop "
                    "held), and its lease may be recovered elsewhere: the job is ended "
                    f"(process {os.getpid()} exits)\n").encode()
            # (in a thread: a stderr pipe whose reader stalled must not hold the exit)
            writer = threading.Thread(target=os.write, args=(2, note), daemon=True)
            writer.start()
            writer.join(0.2)
            os._exit(FROZEN_EXIT)


def _child_main(conn: Connection[Any, Any], paths: list[str], parent: int,
                alive: Any = None, patience: float | None = None) -> None:
    """Entry point of a child: boot, say ready, then run jobs until the pipe closes;
    ``alive`` and ``patience``: see :func:`_watch_worker` (None: no watch)."""
    _end_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children die
    sys.path[:0] = [p for p in dict.fromkeys(paths) if p not in sys.path]
    lock = threading.Lock()
    cache: dict[tuple[str, str], Any] = {}
    running: list[Any] = [None]
    if alive is not None and patience is not None:
        threading.Thread(target=_watch_worker, args=(alive, patience, running),
                         name="conveyor-worker-watch", daemon=True).start()
    with lock:
        conn.send_bytes(_encode(["ready"]))
    while True:
        try:
            message = loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        running[0] = (message[3].get("id"), time.monotonic())
        staged = message[4] if len(message) > 4 else None
        reply = _run_one(conn, lock, message[1], message[2], message[3], staged, cache)
        running[0] = None
        data = _encode(reply)
        with lock:
            conn.send_bytes(data)


# -- the parent side --------------------------------------------------------------------------
@dataclasses.dataclass(eq=False, slots=True)
class _Child:
    process: BaseProcess
    conn: Connection[Any, Any]


def _reap(process: BaseProcess) -> int | None:
    """Wait (in a thread) for a killed or dead child; return its exit code."""
    process.join(_REAP_TIMEOUT)
    return process.exitcode


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit code"
    if code < 0:
        try:
            return f"exit code {code} (signal {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class ProcessPool:
    """Up to ``max_processes`` reusable child processes that run jobs with hard timeouts."""

    def __init__(self, max_processes: int,
                 on_child: Callable[[str], None] | None = None,
                 patience: float | None = None,
                 before_run: Callable[[], Awaitable[None]] | None = None) -> None:
        self.max_processes = max(1, max_processes)
        #: called with a job's id once it has a child to run in (until then it waits)
        self.on_child = on_child
        #: awaited once a job has a child, before it is sent there (a worker stopped
        #: meanwhile asks the store whether the job is still its own); cancelled, the job
        #: is not sent and the child stays ready
        self.before_run = before_run
        #: how long a child lets its job run while this pool's event loop shows no sign of
        #: life (see :func:`_watch_worker`; None: for ever)
        self.patience = patience
        #: the last ``time.monotonic()`` of this pool's event loop, shared with the children
        self._alive: Any = None
        #: when this pool's loop last ran again after a silence longer than the patience
        self._woke_at = -1.0
        self._beating: asyncio.Task[None] | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = asyncio.Semaphore(self.max_processes)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._reaping: set[asyncio.Future[int | None]] = set()
        self._closed = False

    async def run(self, module: str, qualname: str, record: JobRecord, *,
                  timeout: float | None, on_progress: Callable[[float, str | None], None],
                  staged: str | None = None) -> Any:
        """Run the job ``module:qualname`` with ``record``'s arguments in a child; return its
        result (``staged``: where the file of its ``Upload`` parameter is). Raise
        :class:`RemoteError` if it raised or its process died, :class:`JobTimeout` past
        ``timeout`` (the child is killed)."""
        try:
            payload = _encode(["run", module, qualname,
                               {name: getattr(record, name) for name in _RECORD_FIELDS}, staged])
        except NotSerializable as exc:
            raise RemoteError("NotSerializable", f"the job's record is not JSON: {exc}", "",
                              True, None, False) from None
        reply = await self._run_in_child(payload, record, timeout, on_progress)
        if reply[0] == "ok":
            return reply[1]
        _, type_name, message, tb, permanent, retry_delay, retry, limited = reply
        raise RemoteError(type_name, message, tb, permanent, retry_delay, retry, limited)

    async def _run_in_child(self, payload: bytes, record: JobRecord, timeout: float | None,
                            on_progress: Callable[[float, str | None], None]) -> list[Any]:
        """Send ``payload`` to a child once one is free (:attr:`on_child` is told) and
        return its answer; kill the child past ``timeout`` or when cancelled."""
        child = await self._acquire()
        try:
            if self.before_run is not None:
                try:
                    await self.before_run()
                except BaseException:
                    self._idle.append(child)  # (sent nothing: it is ready for another)
                    raise
            if self.on_child is not None:
                self.on_child(record.id)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    reply = await self._exchange(child, payload, record.id, on_progress)
            except TimeoutError:
                await self._kill(child)
                raise JobTimeout(f"job {record.name!r} timed out after {timeout}s; "
                                 "its process was killed") from None
            except _ChildDied:
                raise await self._died(child, "while running the job", sent) from None
            except BaseException:  # cancelled: kill now, reap in the background
                self._kill(child)
                raise
            self._idle.append(child)
        finally:
            self._slots.release()
        return reply

    async def close(self) -> None:
        """Terminate every child (idle or busy) and wait for them to exit."""
        self._closed = True
        if self._beating is not None:
            self._beating.cancel()
        children = list(self._children)
        for child in children:
            if child.process.exitcode is None:
                child.process.terminate()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, self._stop, child)
                               for child in children), *self._reaping)
        for child in self._idle:
            child.conn.close()
        self._idle.clear()
        self._children.clear()

    @staticmethod
    def _stop(child: _Child) -> None:
        child.process.join(2.0)
        if child.process.exitcode is None:
            child.process.kill()
            child.process.join(_REAP_TIMEOUT)

    # -- internals --------------------------------------------------------------------------
    async def _acquire(self) -> _Child:
        if self._closed:
            raise RuntimeError("the process pool is closed")
        await self._slots.acquire()
        try:
            if self._closed:
                raise RuntimeError("the process pool is closed")
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                self._kill(child)
            return await self._spawn()
        except BaseException:
            self._slots.release()
            raise

    @property
    def beat_every(self) -> float:
        """How often this pool's event loop stamps its sign of life for the children."""
        return 1.0 if self.patience is None else min(self.patience / 8, 0.5)

    async def _beat(self) -> None:
        """Stamp :attr:`_alive` every :attr:`beat_every` seconds, for as long as the loop
        runs (a loop held, or a process stopped, stamps nothing)."""
        alive, every, patience = self._alive, self.beat_every, self.patience or 0.0
        while True:
            now = time.monotonic()
            if now - alive.value > patience:
                self._woke_at = now
            alive.value = now
            await asyncio.sleep(every)

    def _was_silent(self, since: float) -> bool:
        """Whether this pool's loop was silent for longer than the patience since ``since``
        (``time.monotonic()``), or is only now running again after such a silence."""
        if self.patience is None or self._alive is None:
            return False
        return self._woke_at >= since or time.monotonic() - self._alive.value > self.patience

    async def _spawn(self) -> _Child:
        if self.patience is not None and self._alive is None:
            self._alive = self._ctx.RawValue("d", time.monotonic())
            self._beating = asyncio.get_running_loop().create_task(self._beat())
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(target=_child_main, name="conveyor-process-job",
                                    args=(child_conn, [*sys.path, os.getcwd()], os.getpid(),
                                          self._alive, self.patience),
                                    daemon=True)
        process.start()
        child_conn.close()
        child = _Child(process, parent_conn)
        self._children.add(child)
        try:
            await self._exchange(child, None, None, None)
        except _ChildDied:
            raise await self._died(child, "while starting") from None
        except BaseException:
            self._kill(child)
            raise
        return child

    async def _exchange(self, child: _Child, payload: bytes | None, job_id: str | None,
                        on_progress: Callable[[float, str | None], None] | None) -> list[Any]:
        """Send ``payload`` (if any) and wait, without blocking the loop, for the final reply;
        progress reports for ``job_id`` go to ``on_progress`` on the way."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[Any]] = loop.create_future()
        conn = child.conn

        def readable() -> None:
            try:
                while not reply.done():
                    message = loads(conn.recv_bytes())
                    if message[0] != "progress":
                        reply.set_result(message)
                    elif on_progress is not None and message[1] == job_id:
                        try:
                            on_progress(message[2], message[3])
                        except Exception:
                            log.exception("progress callback of job %s failed", job_id)
                    if not conn.poll():
                        return
            except (EOFError, OSError):
                if not reply.done():
                    reply.set_exception(_ChildDied())

        fd = conn.fileno()
        loop.add_reader(fd, readable)
        try:
            if payload is not None:
                try:
                    conn.send_bytes(payload)
                except OSError:
                    raise _ChildDied() from None
            return await reply
        finally:
            loop.remove_reader(fd)

    def _kill(self, child: _Child) -> asyncio.Future[int | None]:
        """SIGKILL a child, forget it, and reap it in a thread; the future gives the exit code."""
        self._children.discard(child)
        if child.process.exitcode is None:
            child.process.kill()
        child.conn.close()
        future = asyncio.get_running_loop().run_in_executor(None, _reap, child.process)
        self._reaping.add(future)
        future.add_done_callback(self._reaping.discard)
        return future

    async def _died(self, child: _Child, when: str, sent: float | None = None) -> RemoteError:
        """The error of a child that died (``sent``: when its job was sent to it): its own
        end for a silent worker (:data:`FROZEN_EXIT`) only when this pool's loop was indeed
        that silent (a job may exit with that code too)."""
        pid = child.process.pid
        silent = sent is not None and self._was_silent(sent)
        code = await self._kill(child)
        if code == FROZEN_EXIT and silent:
            return WorkerFroze(FROZE, f"worker process {pid} ended the job: this worker "
                               f"showed no sign of life for over {duration(self.patience or 0)}"
                               " (stopped, or its event loop held), and its lease may have "
                               "been recovered elsewhere", "", False, None, False)
        return RemoteError("WorkerProcessDied",
                           f"worker process {pid} died {when} with {_describe_exit(code)}",
                           "", False, None, False)
