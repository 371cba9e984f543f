"""A process forked after it used an app (a pre-forking web server's workers, with or
without Python's fork hooks: uWSGI's master forks in C by default) goes on in the child
with connections, threads and ids of its own: its enqueues are stored, its blocking reads
(which go through the app's private event loop) return, and no id repeats the parent's."""

from __future__ import annotations

import ctypes
import json
import os
import uuid
from collections.abc import Callable

import pytest

from conveyor import Conveyor
from polling import child_exit_code

HOOKS = pytest.mark.parametrize("hooks", [True, False], ids=["os.fork", "libc-fork"])


def fork(hooks: bool) -> int:
    """``os.fork()``, or libc's fork through PyDLL: it holds the GIL and runs no hook."""
    return os.fork() if hooks else int(ctypes.PyDLL(None).fork())


def in_child(hooks: bool, work: Callable[[], object]) -> object:
    """Run ``work`` in a forked child and return what it returned (as JSON through a
    pipe); the child must end on its own within the wait (a hang is a failure)."""
    read, write = os.pipe()
    pid = fork(hooks)
    if pid == 0:  # the child: report through the pipe, never raise
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    code = child_exit_code(pid, timeout=30, what="the forked child to end")
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    assert code == 0, reported
    return json.loads(reported)


@HOOKS
def test_a_forked_child_enqueues_and_reads_with_its_own_connections(
        url: str, hooks: bool) -> None:
    app = Conveyor(url=url, namespace=f"forked_{uuid.uuid4().hex[:8]}")

    @app.job
    def noop(i: int) -> None: ...

    try:
        parent = [noop.enqueue(i).id for i in range(20)]
        handle = app.enqueue("noop", 0)
        assert handle.info().state == "queued"  # the parent's private loop runs
        writer = getattr(app.broker, "_writer", None)

        def child() -> object:
            ids = [noop.enqueue(i).id for i in range(50)]
            read = app.enqueue("noop", 1)
            ids.append(read.id)
            ids.append(app.run_sync(app.enqueue_async("noop", 2)).id)
            own_writer = getattr(app.broker, "_writer", None)
            return {"ids": ids, "state": str(read.info().state),
                    "own_writer": writer is None or own_writer is not writer}

        reported = in_child(hooks, child)
        assert isinstance(reported, dict)
        assert reported["state"] == "queued"
        assert reported["own_writer"]  # SQLite: never the parent's connection
        parent += [noop.enqueue(i).id for i in range(20)]  # the parent carries on
        ids = [*parent, handle.id, *reported["ids"]]
        assert len(set(ids)) == len(ids) == 20 + 1 + 52 + 20
        stored = app.run_sync(app.broker.list_jobs(limit=200))
        assert {job.id for job in stored} == set(ids)
    finally:
        app.close()
