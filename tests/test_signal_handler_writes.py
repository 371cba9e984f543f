"""A signal handler that enqueues, having interrupted an enqueue of its own thread: it writes
at once when the interrupted write is between statements (the common case: a lone
producer's enqueue is one statement, and a signal that came during its fsync is handled
just after it), and raises :class:`ReentrantWrite` when it interrupted a write transaction,
which it could only wait for for ever. Before, both hung the thread for good (the handler
waited for the connection its own interrupted frame held); so could a handler that
interrupted the making of a job id."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conveyor.ids as ids
from conveyor import Conveyor, ReentrantWrite
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.ids import is_valid_id, new_id
from test_sqlite_enqueue_at_once import held_elsewhere, job

#: seconds a call that used to hang is given before the test calls it hung
HANG = 30.0


def finishes(call: Callable[[], Any]) -> Any:
    """``call()`` on a thread of its own: its result or what it raised; fail the test if it
    has not returned within :data:`HANG` seconds (the thread is left behind)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), "the nested call hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    made = SQLiteBroker(f"sqlite:///{tmp_path / 'h.db'}", namespace="t")
    made.enqueue_blocking([job()], {})
    yield made
    closing = threading.Thread(target=made.close_blocking, daemon=True)
    closing.start()  # (a hung test must not hang the suite in its teardown too)
    closing.join(HANG)


def stored(broker: SQLiteBroker, job_id: str) -> bool:
    return asyncio.run(broker.get(job_id)) is not None


def test_a_write_asked_for_between_the_statements_of_its_threads_write_runs_at_once(
        broker: SQLiteBroker) -> None:
    outer, inner = job(), job()

    def attempt(conn: object) -> bool:  # runs holding the connection, between statements
        assert broker.enqueue_blocking([inner], {}) == [None]
        return broker._insert_at_once(conn, outer) is True  # type: ignore[arg-type]

    assert finishes(lambda: broker._writer.run_at_once(attempt)) is True
    for record in (outer, inner):
        assert stored(broker, record.id)


def test_a_write_asked_for_inside_its_threads_transaction_is_refused(
        broker: SQLiteBroker) -> None:
    outer, inner = job(), job()

    def write(conn: Any) -> None:  # runs inside the transaction of a full write
        conn.execute(broker._sql_insert, broker._rows([outer])[0][0])
        broker.enqueue_blocking([inner], {})

    with pytest.raises(ReentrantWrite, match="nothing was stored"):
        finishes(lambda: broker._writer.run_blocking(write))
    # the refusal rolled the interrupted write back whole; the store goes on
    assert not stored(broker, outer.id) and not stored(broker, inner.id)
    again = job()
    assert broker.enqueue_blocking([again], {}) == [None]
    assert stored(broker, again.id)


def test_a_transaction_an_interrupted_rollback_left_open_is_rolled_back_by_the_next_write(
        broker: SQLiteBroker, tmp_path: Path) -> None:
    # an exception (a KeyboardInterrupt, a handler's) between a failed write and its
    # rollback leaves the connection in a transaction, holding the write lock: the next
    # write, by any thread and either way, rolls it back rather than fail on it for good
    writer = broker._writer
    for use in ("blocking", "awaited"):
        conn = writer._conn
        assert conn is not None
        with held_elsewhere(writer._conn_lock):
            pass  # (the write thread is done with the connection)
        conn.execute("BEGIN IMMEDIATE")
        record = job()
        if use == "blocking":
            assert finishes(lambda r=record: broker.enqueue_blocking([r], {})) == [None]
        else:
            assert finishes(lambda r=record: asyncio.run(broker.enqueue([r], {}))) == [None]
        assert not conn.in_transaction and stored(broker, record.id)
        other = sqlite3.connect(tmp_path / "h.db", timeout=0.5)
        try:
            other.execute("BEGIN IMMEDIATE")  # the lock was let go
            other.execute("ROLLBACK")
        finally:
            other.close()


def test_a_write_asked_for_while_its_thread_opens_or_closes_the_store_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = SQLiteBroker(f"sqlite:///{tmp_path / 'o.db'}", namespace="t")
    refusals: list[str] = []
    plain_start, plain_stop = made._writer.start, made._writer.stop

    def nested() -> None:  # as a signal handler's enqueue would run there
        try:
            made.enqueue_blocking([job()], {})
        except ReentrantWrite as exc:
            refusals.append(str(exc))

    def start() -> None:
        nested()
        plain_start()

    def stop() -> None:
        nested()
        plain_stop()

    monkeypatch.setattr(made._writer, "start", start)
    monkeypatch.setattr(made._writer, "stop", stop)
    finishes(made.open_blocking)
    finishes(made.close_blocking)
    assert len(refusals) == 2 and all("opened or closed" in r for r in refusals)
    monkeypatch.undo()
    record = job()
    assert made.enqueue_blocking([record], {}) == [None]  # and the store goes on
    made.close_blocking()


def test_an_id_asked_for_while_its_thread_makes_one_takes_fresh_bits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the generator's last time and bits are put back afterwards: every later id of this
    # process would otherwise be of the year 2033 (and look chosen by a caller)
    for kept in ("_last_ms", "_last_random", "_last_head"):
        monkeypatch.setattr(ids, kept, getattr(ids, kept))
    nested: list[str] = []
    plain_bits = ids._random_bits

    def interrupted() -> int:  # inside new_id's lock, as a signal handler would run there
        nested.append(new_id(2_000_000_000.0))
        return plain_bits()

    monkeypatch.setattr(ids, "_random_bits", interrupted)
    outer = finishes(lambda: new_id(2_000_000_000.0))  # a new millisecond: takes bits
    assert len(nested) == 1 and nested[0] != outer
    assert is_valid_id(nested[0]) and is_valid_id(outer)
    assert ids.id_time(nested[0]) == ids.id_time(outer) == 2_000_000_000.0
    monkeypatch.setattr(ids, "_random_bits", plain_bits)
    after = [new_id(2_000_000_000.0) for _ in range(3)]  # the sequence goes on, sorted
    assert after == sorted(after) and after[0] > outer and nested[0] not in after


#: the start of each script below: ``arm(call)`` has SIGALRM run ``call()`` every half
#: millisecond (a handler slower than the timer is not entered again); ``disarm()``
ARM = r"""
import json, signal, sys, time

def arm(call):
    inside = [False]

    def handler(signum, frame):
        if inside[0]:
            return
        inside[0] = True
        try:
            call()
        finally:
            inside[0] = False

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)

def disarm():
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
"""

PRODUCER = ARM + r"""
from conveyor import Conveyor, ReentrantWrite

app = Conveyor(sys.argv[1])

async def noop(n: int) -> None: ...

job = app.job(noop)
unique = sys.argv[2] == "unique"
reopen = sys.argv[2] == "reopen"  # the store closed every 10 enqueues: opened again
if sys.argv[2] == "threads":  # two more threads enqueue meanwhile: the main thread waits
    import threading          # for writes the write thread commits with theirs

    def other() -> None:
        while not stopped:
            job.enqueue(7)

    stopped = False
    others = [threading.Thread(target=other, daemon=True) for _ in range(2)]
    for thread in others:
        thread.start()
handled, refused, made = [], [0], []
job.enqueue(0)

def enqueue_once():
    try:
        handled.append(job.enqueue(-1).id)
    except ReentrantWrite:
        refused[0] += 1

arm(enqueue_once)
began = time.monotonic()
while len(handled) + refused[0] < 200 and time.monotonic() - began < 20:
    n = len(made) + 1
    if unique:
        made.append(job.enqueue_with((n,), unique_key=f"k{n}").id)
    else:
        made.append(job.enqueue(n).id)
    if reopen and n % 10 == 0:
        app.close()
disarm()
if sys.argv[2] == "threads":
    stopped = True
    for thread in others:
        thread.join()
app.close()
print(json.dumps({"made": made, "handled": handled, "refused": refused[0]}))
"""


@pytest.mark.parametrize("kind", ["plain", "unique", "reopen", "threads"])
def test_a_signal_handler_enqueues_while_its_thread_enqueues(tmp_path: Path, kind: str) -> None:
    # real signals, every half millisecond, into a producer enqueueing one job after
    # another: plain jobs (one statement each), jobs with unique keys (a transaction), or
    # plain jobs with the store closed every 10 (a signal during an open or a close), or
    # plain jobs while two other threads enqueue (a signal while the main thread waits for
    # the write thread, which must answer it without waiting for that wait's lock)
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = subprocess.run([sys.executable, "-c", PRODUCER, url, kind], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert len(out["handled"]) + out["refused"] >= 200  # the handler ran, the thread went on
    if kind == "plain":  # a signal after a one-statement write finds nothing open
        assert len(out["handled"]) >= 150
    app = Conveyor(url)
    try:
        for job_id in out["made"] + out["handled"]:  # every acknowledged enqueue is stored
            assert app.handle(job_id).info().id == job_id
    finally:
        app.close()


READER = ARM + r"""
from conveyor import Conveyor

app = Conveyor(sys.argv[1])

async def noop(n: int) -> None: ...

handle = app.job(noop).enqueue(0)
if sys.argv[2] == "warm":
    handle.info()  # the app's own loop thread started before the signals
read = [0]

def read_once():
    assert handle.info().id == handle.id
    read[0] += 1

arm(read_once)
began = time.monotonic()
while read[0] < 300 and time.monotonic() - began < 20:
    handle.info()  # waits for the app's loop thread, which answers without waiting
disarm()
app.close()
print(json.dumps({"read": read[0]}))
"""


@pytest.mark.parametrize("portal", ["cold", "warm"])
def test_a_signal_handler_reads_while_its_thread_reads(tmp_path: Path, portal: str) -> None:
    # reads go through the app's own event loop thread: its answer must not wait for a
    # lock the interrupted caller holds, nor its start for a start the handler interrupted
    done = subprocess.run([sys.executable, "-c", READER, f"sqlite:///{tmp_path / 'r.db'}",
                           portal], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["read"] >= 300
