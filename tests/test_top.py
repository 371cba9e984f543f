"""``conveyor top``: one frame with ``--once``, the live view in a pseudo-terminal, and job
text that is shown literally, never as markup."""

from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clijobs import CLI, publish, stop
from conftest import WorkerThread, cli_env
from conveyor import Conveyor
from conveyor.cli.top import clean, sparkline
from polling import wait_until


@pytest.fixture(autouse=True)
def _workers_published(cli: CLI) -> None:
    """The test's store has workers of clijobs:app: they published its jobs, so ``conveyor
    enqueue`` takes their names without ``--app``."""
    publish(cli.url)


def row(frame: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in frame.splitlines():
        cells = [c.strip() for c in re.split("[│┃]", line.strip().strip("│┃"))]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{frame}")


def test_sparkline_and_clean() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"
    assert clean("a\nb\x1b[31m\tc") == "a b?[31m c"
    assert clean("x" * 10, 5) == "xxxx…"


def test_once_shows_queue_counts_and_the_worker(cli: CLI, jobs_app: Conveyor,
                                                start_worker: Callable[..., WorkerThread]
                                                ) -> None:
    # dead, succeeded and cancelled jobs in "default", one queued in "mail", one scheduled
    ok = cli.enqueue("add", [1, 2])
    dead = cli.enqueue("fail", ["boom"])
    worker = start_worker(jobs_app, queues=["default"], max_workers=4)
    wait_until(lambda: all(jobs_app.handle(i).info().is_final for i in (ok, dead)),
               what="the jobs to finish")
    worker.stop()
    cli.ok("cancel", cli.enqueue("add", [1, 2]))
    cli.enqueue("add", [1, 2], "--delay", "600")
    cli.enqueue("greet", ["x"], "--queue", "mail")

    proc = cli.start_worker("--min-workers", "2", "--max-workers", "5", "--queues", "mail")
    try:
        wait_until(lambda: cli.json("stats")["workers"], what="the worker to register")
        frame = cli.ok("top", "--once", COLUMNS="160")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert row(frame, "queue") == ["queue", "queued", "scheduled", "running", "succeeded",
                                   "dead", "cancelled"]
    assert row(frame, "default") == ["default", "0", "1", "0", "1", "1", "1"]
    assert sum(int(n) for n in row(frame, "mail")[1:]) == 1  # its worker may have run it
    assert "workers (1)" in frame
    pid, queues, cur, low, high = row(frame, socket.gethostname())[1:6]
    assert pid == str(proc.pid) and queues == "mail"
    assert (low, high) == ("2", "5") and 2 <= int(cur) <= 5
    # the recent failures list the dead job
    assert row(frame, dead)[1:] == ["fail", "PermanentError: boom"]


def test_job_text_is_shown_literally(cli: CLI, jobs_app: Conveyor,
                                     start_worker: Callable[..., WorkerThread]) -> None:
    message = "[bold]loud[/bold] <script>alert(1)</script> [/nope] \x1b[31mred"
    dead = cli.enqueue("fail", [message])
    worker = start_worker(jobs_app, max_workers=1)
    wait_until(lambda: jobs_app.handle(dead).info().is_final, what="the job to die")
    worker.stop()
    done = cli("top", "--once", COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert "[bold]loud[/bold] <script>alert(1)</script> [/nope] ?[31mred" in done.stdout
    assert "\x1b" not in done.stdout


# -- the live view in a pseudo-terminal ---------------------------------------------------------
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


def _screen_text(raw: bytes) -> str:
    return ANSI.sub("", raw.decode(errors="replace"))


def test_live_view_in_a_terminal_quits_on_q(cli: CLI, tmp_path: Path) -> None:
    cli.enqueue("add", [1, 2])
    cli.enqueue("add", [3, 4])
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = cli_env(TERM="xterm-256color")
    for name in ("COLUMNS", "LINES", "NO_COLOR", "TERM_PROGRAM"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "top", "--url", cli.url, "--interval", "0.2"],
        stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env,
        start_new_session=True)
    os.close(slave)
    raw = b""

    def read_for(seconds: float) -> None:
        nonlocal raw
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                raw += chunk

    try:
        deadline = time.monotonic() + 20
        pattern = re.compile(r"default\s*│\s*2\s*│\s*0\s*│")

        def whole_frame(text: str) -> bool:  # a frame may come in several reads
            return bool(pattern.search(text)) and "workers (0)" in text \
                and "rates (jobs/s)" in text

        while not whole_frame(_screen_text(raw)):
            assert proc.poll() is None, _screen_text(raw)
            assert time.monotonic() < deadline, _screen_text(raw)
            read_for(0.1)
        assert b"\x1b[?1049h" in raw  # the alternate screen
        # a few refreshes later the enqueue rate has samples
        cli.enqueue("add", [5, 6])
        read_for(0.6)
        os.write(master, b"q")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            read_for(0.1)
        assert proc.poll() == 0, _screen_text(raw)[-2000:]
        assert b"\x1b[?1049l" in raw  # and back to the normal screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_recent_failures_are_ordered_by_when_they_died(app: Conveyor) -> None:
    """A job created long ago that died just now comes before newer jobs that died earlier."""
    import asyncio

    from conveyor.cli.top import take_snapshot
    from conveyor.job import Outcome, OutcomeKind

    @app.job(retries=0)
    async def doomed(n: int) -> None:
        raise ValueError(n)

    old, *newer = doomed.enqueue_many([(0,), (1,), (2,)])

    async def kill_in_order() -> None:
        broker = app.broker
        await broker.open()
        claimed = {r.id: r for r in await broker.claim("w", ["default"], 3, 30)}
        for handle in [*newer, old]:  # the oldest-created one dies last
            record = claimed[handle.id]
            await broker.settle([Outcome(record.id, "w", OutcomeKind.DEAD, time.time(),
                                         error=f"boom {record.args[0]}", queue="default")])
            await asyncio.sleep(0.01)

    app.run_sync(kill_in_order())
    snap = app.run_sync(take_snapshot(app))
    assert [r.id for r in snap.failures][:3] == [old.id, newer[1].id, newer[0].id]


def test_recent_failures_take_one_line_each_at_80_columns() -> None:
    from io import StringIO

    from rich.console import Console

    from conveyor.cli.top import failures_table
    from conveyor.job import JobRecord, JobState

    records = [JobRecord(id=f"06H1H4W2CWXJGEPY1KVF7V0RG{n}", name="a_rather_long_job_name_" * 3,
                         queue="default", state=JobState.DEAD, args=[], kwargs={},
                         created_at=0.0, run_at=0.0,
                         error="PermanentError: first line\nsecond line of a long error " * 5)
               for n in range(3)]
    out = StringIO()
    Console(file=out, width=80, force_terminal=False).print(failures_table(records))
    lines = out.getvalue().splitlines()
    body = [line for line in lines if "06H1H4W2" in line]
    assert len(body) == 3, out.getvalue()
    assert all(len(line) <= 80 for line in lines)
    assert all(r.id in line for r, line in zip(records, body, strict=True))
    # no wrapped continuation of a name or an error under a row
    assert not [line for line in lines if "06H1H4W2" not in line and ("line" in line or "job"
                                                                      in line)]


def test_the_frame_fits_80_columns_with_long_names() -> None:
    """Long queue names, job names and errors are cut with an ellipsis; every state header,
    every id and every count stays whole; no line runs past the terminal."""
    from io import StringIO

    from rich.console import Console

    from conveyor.cli.top import failures_table, queues_table
    from conveyor.job import ALL_STATES, JobRecord, JobState

    records = [JobRecord(id=f"06H1H4W2CWXJGEPY1KVF7V0RG{n}", name="resize_image_of_user",
                         queue="default", state=JobState.DEAD, args=[], kwargs={},
                         created_at=0.0, run_at=0.0, error="ValueError: " + "far too long " * 9)
               for n in range(2)]
    counts = {"a-rather-long-queue-name-for-reports": {"queued": 3}, "default": {"dead": 12345}}
    out = StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    console.print(queues_table(counts))
    console.print(failures_table(records))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), out.getvalue()
    header = next(line for line in lines if "queued" in line)
    assert all(f" {state} " in header for state in map(str, ALL_STATES)), header
    assert any("a-rather-lo" in line and "…" in line for line in lines), out.getvalue()
    assert any("12345" in line for line in lines)
    rows = [line for line in lines if "06H1H4W2" in line]
    assert len(rows) == 2 and all("resize" in row and "ValueError" in row for row in rows)


def test_counts_and_pids_stay_whole_on_a_narrow_terminal() -> None:
    """Counts are never squeezed: on a terminal too narrow for them the table is drawn wider
    (the terminal cuts its right edge), as the admin commands' tables are; a worker's host
    and pid are left out before."""
    import time
    from io import StringIO

    from rich.console import Console

    from conveyor.cli.top import queues_table, workers_table
    from conveyor.job import WorkerInfo

    now = time.time()
    worker = WorkerInfo(id="h-1234567-x", host="a-rather-long-host-name", pid=1234567,
                        queues=["default"], concurrency=10, min_concurrency=1,
                        max_concurrency=10, busy=3, processed=123456789, failed=7654321,
                        started_at=now, heartbeat_at=now)
    counts = {"default": {"queued": 1234567, "succeeded": 98765432}}
    for width in (60, 40):
        out = StringIO()
        console = Console(file=out, width=width, force_terminal=False)
        console.print(queues_table(counts), crop=False)  # as the terminal shows it, uncut
        console.print(workers_table([worker], now), crop=False)
        text = out.getvalue()
        for number in ("1234567", "98765432", "123456789", "7654321"):
            assert number in text, (width, text)
        assert "a-rather-long-host-name" not in text  # cut or left out
