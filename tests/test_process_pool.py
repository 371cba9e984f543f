"""ProcessPool with real child processes: results, error mapping, timeouts, death, progress."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so children can import procjobs

from conveyor.errors import JobTimeout
from conveyor.job import JobRecord, JobState
from conveyor.worker.process_pool import ProcessPool, RemoteError

MODULE = "procjobs"


def record(name: str, *args: Any, **kwargs: Any) -> JobRecord:
    now = time.time()
    return JobRecord(id=f"job-{name}-{time.monotonic_ns()}", name=name, queue="default",
                     state=JobState.RUNNING, args=list(args), kwargs=kwargs, created_at=now,
                     run_at=now, attempts=1)


def ignore(value: float, message: str | None) -> None:
    pass


async def call(pool: ProcessPool, name: str, *args: Any, timeout: float | None = None,
               on_progress: Callable[[float, str | None], None] = ignore, **kwargs: Any) -> Any:
    return await pool.run(MODULE, name, record(name, *args, **kwargs), timeout=timeout,
                          on_progress=on_progress)


def with_pool(body: Callable[[ProcessPool], Awaitable[Any]], max_processes: int = 1,
              patience: float | None = None) -> Any:
    async def main() -> Any:
        pool = ProcessPool(max_processes, patience=patience)
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def is_dead(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone, also between open and read
        return True


def wait_dead(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if is_dead(pid):
            return True
        time.sleep(0.02)
    return is_dead(pid)


def test_returns_values_of_jobs_plain_functions_and_async_jobs() -> None:
    async def body(pool: ProcessPool) -> None:
        assert await call(pool, "add", 2, 3) == 5
        assert await call(pool, "add", a=1, b=2) == 3
        assert await call(pool, "plain_multiply", 6, 7) == 42
        assert await call(pool, "Nested.hello", "you") == "hello you"
        assert await call(pool, "async_double", 21) == 42

    with_pool(body)


def test_reuses_the_same_child() -> None:
    async def body(pool: ProcessPool) -> None:
        first = await call(pool, "pid")
        second = await call(pool, "pid")
        assert first == second != os.getpid()

    with_pool(body)


def test_exceptions_map_to_remote_error() -> None:
    async def body(pool: ProcessPool) -> None:
        with pytest.raises(RemoteError) as info:
            await call(pool, "boom", "kaput")
        err = info.value
        assert (err.type_name, err.message) == ("ValueError", "kaput")
        assert not err.permanent and not err.retry and err.retry_delay is None
        assert "Traceback" in err.traceback and "procjobs.py" in err.traceback
        assert "raise ValueError(message)" in err.traceback

        with pytest.raises(RemoteError) as info:
            await call(pool, "give_up")
        assert info.value.type_name == "PermanentError" and info.value.permanent

        with pytest.raises(RemoteError) as info:
            await call(pool, "unlucky")
        assert info.value.type_name == "Unlucky" and info.value.permanent

        with pytest.raises(RemoteError) as info:
            await call(pool, "again")
        assert info.value.retry and info.value.retry_delay == 2 and not info.value.permanent

        with pytest.raises(RemoteError) as info:
            await call(pool, "not_json")
        assert info.value.permanent and "not JSON-serializable" in info.value.message

        with pytest.raises(RemoteError) as info:
            await call(pool, "no_such_job")
        assert info.value.type_name == "AttributeError"

        first = await call(pool, "pid")  # errors leave the child in service
        assert await call(pool, "pid") == first

    with_pool(body)


@pytest.mark.parametrize("job", ["sleep_forever", "busy_c_loop", "busy_py_loop"])
def test_timeout_kills_a_stuck_child_and_the_pool_recovers(job: str) -> None:
    async def body(pool: ProcessPool) -> None:
        before = await call(pool, "pid")
        started = time.monotonic()
        with pytest.raises(JobTimeout, match=r"1\.0s"):
            await call(pool, job, timeout=1.0)
        assert time.monotonic() - started < 3.0
        assert await asyncio.to_thread(wait_dead, before)
        after = await call(pool, "pid")
        assert after != before
        assert await call(pool, "add", 1, 1) == 2

    with_pool(body)


def test_cancellation_kills_the_child() -> None:
    async def body(pool: ProcessPool) -> None:
        before = await call(pool, "pid")
        task = asyncio.create_task(call(pool, "sleep_forever"))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(wait_dead, before)
        assert await call(pool, "pid") != before

    with_pool(body)


def test_child_death_is_reported_and_the_child_replaced() -> None:
    async def body(pool: ProcessPool) -> None:
        before = await call(pool, "pid")
        with pytest.raises(RemoteError) as info:
            await call(pool, "die", 3)
        err = info.value
        assert err.type_name == "WorkerProcessDied" and not err.permanent and not err.retry
        assert "exit code 3" in err.message and str(before) in err.message
        assert await call(pool, "pid") != before

    with_pool(body)


def test_a_child_ends_its_job_when_the_pools_loop_is_held_past_its_patience() -> None:
    """The loop that runs the pool held (a worker's loop blocked: it renews no lease) for
    longer than the pool's patience: the child ends the job it runs, and says why; a job
    whose loop stays alive runs on well past the patience."""
    async def body(pool: ProcessPool) -> None:
        assert await call(pool, "nap_pid", 1.2) > 0  # 1.2 s > patience, the loop alive
        before = await call(pool, "pid")
        task = asyncio.create_task(call(pool, "sleep_forever"))
        await asyncio.sleep(0.3)
        time.sleep(1.5)  # the loop held
        with pytest.raises(RemoteError) as info:
            await task
        assert info.value.type_name == "WorkerFroze"
        assert "showed no sign of life for over 0.5s" in info.value.message
        assert await asyncio.to_thread(wait_dead, before)
        assert await call(pool, "add", 1, 1) == 2
        # a job that exits with the watch's code while the loop runs is no frozen worker
        with pytest.raises(RemoteError) as died:
            await call(pool, "die", 75)
        assert died.value.type_name == "WorkerProcessDied", died.value.message
        assert "exit code 75" in died.value.message

    with_pool(body, patience=0.5)


def test_progress_reaches_the_callback_on_the_loop_thread() -> None:
    async def body(pool: ProcessPool) -> None:
        import threading

        seen: list[tuple[float, str | None, bool]] = []

        def on_progress(value: float, message: str | None) -> None:
            seen.append((value, message, threading.current_thread() is threading.main_thread()))

        rec = record("with_progress", 4)
        result = await pool.run(MODULE, "with_progress", rec, timeout=None,
                                on_progress=on_progress)
        assert result == f"with_progress:{rec.id}:1"
        assert seen == [(0.25, "step 1", True), (0.5, "step 2", True),
                        (0.75, "step 3", True), (1.0, "step 4", True)]

    with_pool(body)


def test_at_most_max_processes_children() -> None:
    async def body(pool: ProcessPool) -> None:
        pids = await asyncio.gather(*(call(pool, "nap_pid", 0.3) for _ in range(6)))
        assert len(set(pids)) == 2

    with_pool(body, max_processes=2)


def test_round_trip_is_cheap() -> None:
    async def body(pool: ProcessPool) -> float:
        await call(pool, "add", 0, 0)
        started = time.perf_counter()
        for i in range(200):
            assert await call(pool, "add", i, 1) == i + 1
        return (time.perf_counter() - started) / 200

    assert with_pool(body) < 0.005  # wall time incl. the child's work; parent time is far less


def test_close_stops_children_and_refuses_new_runs() -> None:
    async def body(pool: ProcessPool) -> None:
        child = await call(pool, "pid")
        await pool.close()
        assert wait_dead(child)
        with pytest.raises(RuntimeError, match="closed"):
            await call(pool, "pid")

    with_pool(body)
