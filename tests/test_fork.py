"""A process forked after it used an app (a pre-forking web server's workers, with or
without Python's fork hooks: uWSGI's master forks in C by default) goes on in the child
with connections, threads and ids of its own: its enqueues are stored, its blocking reads
(which go through the app's private event loop) return, and no id repeats the parent's."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import time
import uuid
from collections.abc import Callable

import pytest

from conveyor import Conveyor
from conveyor.errors import QueueFull
from polling import child_exit_code

HOOKS = pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "libc-fork"])


def fork(hooks: bool) -> int:
    """``os.fork()``, or libc's fork through PyDLL: it holds the GIL and runs no hook."""
    return os.fork() if hooks else int(ctypes.PyDLL(None).fork())


def in_child(hooks: bool, work: Callable[[], object],
             meanwhile: Callable[[], None] = lambda: None) -> object:
    """Run ``work`` in a forked child and return what it returned (as JSON through a
    pipe), running ``meanwhile`` in the parent; the child must end on its own within the
    wait (a hang is a failure)."""
    read, write = os.pipe()
    pid = fork(hooks)
    if pid == 0:  # the child: report through the pipe, never raise
        code = 1
        try:
            os.close(read)
            try:
                reported = work()
            except Exception as exc:
                reported = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(reported).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        meanwhile()
    finally:
        code = child_exit_code(pid, timeout=30, what="the forked child to end")
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    assert code == 0, reported
    return json.loads(reported)


def count_jobs(url: str, namespace: str) -> set[str]:
    app = Conveyor(url=url, namespace=namespace)
    try:
        return {job.id for job in app.run_sync(app.broker.list_jobs(limit=500))}
    finally:
        app.close()


@HOOKS
def test_a_forked_child_enqueues_and_reads_with_its_own_connections(
        url: str, hooks: bool) -> None:
    """The parent closes its app while the child works (a preforking master that exits,
    say): every job the child was told is stored is there (on SQLite, os.fork closed the
    parent's connections first, so the child's are its own and hold real locks)."""
    if url.startswith("sqlite") and not hooks:
        pytest.skip("SQLite refuses a fork without hooks: see the test below")
    namespace = f"forked_{uuid.uuid4().hex[:8]}"
    app = Conveyor(url=url, namespace=namespace)

    @app.job
    def noop(i: int) -> None: ...

    parent = [noop.enqueue(i).id for i in range(20)]
    handle = app.enqueue("noop", 0)
    assert handle.info().state == "queued"  # the parent's private loop runs

    def child() -> object:
        time.sleep(0.3)  # the parent closes its app meanwhile
        ids = [noop.enqueue(i).id for i in range(50)]
        read = app.enqueue("noop", 1)
        ids.append(read.id)
        ids.append(app.run_sync(app.enqueue_async("noop", 2)).id)
        state = str(read.info().state)
        app.close()
        return {"ids": ids, "state": state}

    reported = in_child(hooks, child, meanwhile=app.close)
    assert isinstance(reported, dict) and "error" not in reported, reported
    assert reported["state"] == "queued"
    ids = [*parent, handle.id, *reported["ids"]]
    assert len(set(ids)) == len(ids) == 20 + 1 + 52
    assert count_jobs(url, namespace) == set(ids)


def test_sqlite_refuses_a_fork_that_ran_no_hook_while_it_was_open(db_url: str) -> None:
    """uWSGI forks its workers in C unless lazy-apps is on: the parent's SQLite connections
    and its record of the file's locks are in the child, which no connection of the child
    could trust. The child's calls are refused with a line that says what to do; the
    parent's store is untouched."""
    app = Conveyor(url=db_url, namespace="forked")

    @app.job
    def noop(i: int) -> None: ...

    try:
        first = noop.enqueue(0).id

        def child() -> object:
            noop.enqueue(1)
            return {"stored": True}

        reported = in_child(False, child)
        assert isinstance(reported, dict)
        assert "ConfigurationError" in reported.get("error", ""), reported
        assert "lazy-apps" in reported["error"]
        later = noop.enqueue(2).id
        assert {first, later} <= {j.id for j in app.run_sync(app.broker.list_jobs())}
    finally:
        app.close()


def test_a_forked_childs_first_awaited_enqueue_reads_the_caps_anew(db_url: str) -> None:
    """The parent's store kept what it read of the queue caps; another producer caps the
    queue; the child's first awaited enqueue (its store opened afresh in the child) sees
    the cap and is refused, rather than use the parent's kept facts."""
    app = Conveyor(url=db_url, namespace="capped")
    other = Conveyor(url=db_url, namespace="capped")

    @app.job(queue="q")
    def noop(i: int) -> None: ...

    try:
        asyncio.run(noop.enqueue_async(0))  # the parent's writer keeps "no caps"
        other.set_max_queued("q", 1)  # q holds 1 job: full

        def child() -> object:
            try:
                asyncio.run(noop.enqueue_async(1))
            except QueueFull:
                return {"refused": True}
            return {"refused": False}

        assert in_child(True, child) == {"refused": True}
        assert len(app.run_sync(app.broker.list_jobs())) == 1
    finally:
        other.close()
        app.close()
