"""What ``conveyor jobs``, ``stats``, ``status`` and ``top --once`` print: tables that fit an
80-column terminal, tab-separated lines when piped, the stored traceback, plain wording.

The CLI runs as a real subprocess, on SQLite and on a private ``redis-server``; the terminal
is a real pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clijobs import CLI, publish, register
from conftest import WorkerThread, cli_env
from conveyor import Conveyor
from conveyor.summary import PREVIEW_CHARS
from polling import wait_until
from redis_server import RedisServer

#: an error with a tab and line breaks, far longer than any terminal
LONG_ERROR = "the mail server refused\tthe message\nbecause " + "it is far too long " * 20
LONG_NAME = "send_the_weekly_newsletter_to_every_subscriber"
LONG_QUEUE = "a-rather-long-queue-name-for-newsletters"
BOX = set("─━│┃┏┓┗┛┡┩╇╈┼")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(cli: CLI, *argv: str, columns: int = 80) -> list[str]:
    """Run ``conveyor ARGV --url URL`` on a pseudo-terminal ``columns`` wide; return its
    lines without colours."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", *argv, "--url", cli.url], cwd=cli.cwd,
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        env=cli_env(COLUMNS=str(columns), LINES="24", TERM="xterm-256color"),
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = proc.wait(timeout=30)
    text = ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    assert code == 0, text
    return text.rstrip("\n").split("\n")


@dataclass
class Store:
    """The CLI and an in-process app on one store, with a dead job (long error), a job of
    a long name in a long queue, and a succeeded job."""

    cli: CLI
    app: Conveyor
    dead: str
    long: str
    done: str


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path,
          start_worker: Callable[..., WorkerThread]) -> Iterator[Store]:
    server = None
    if request.param == "redis":
        directory = tmp_path / "redis"
        directory.mkdir()
        server = RedisServer(directory).start()
        url = server.url
    else:
        url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    publish(url)
    app = register(Conveyor(url=url, lease=2.0))
    try:
        dead = app.enqueue("fail", LONG_ERROR).id
        done = app.enqueue("add", 1, 2).id
        worker = start_worker(app)
        wait_until(lambda: all(app.handle(i).info().is_final for i in (dead, done)),
                   what="the jobs to end")
        worker.stop()
        cli = CLI(url, tmp_path)
        long = cli.enqueue(LONG_NAME, [], "--queue", LONG_QUEUE, "--force")
        yield Store(cli, app, dead, long, done)
    finally:
        app.close()
        if server is not None:
            server.stop()


# -- piped: tab-separated lines -----------------------------------------------------------------
def test_jobs_piped_is_tab_separated_and_whole(store: Store) -> None:
    out = store.cli.ok("jobs")
    assert not BOX & set(out)
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split("\t") == ["id", "name", "queue", "state", "attempts", "created",
                                    "error"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert len(lines) == 4 and set(rows) == {store.dead, store.long, store.done}
    assert all(len(cells) == 7 for cells in rows.values())
    dead = rows[store.dead]
    assert dead[1:5] == ["fail", "default", "dead", "1"]
    # the error's first characters (a listing cuts long fields), its tab and line break as
    # spaces, an ellipsis where it was cut
    flat = LONG_ERROR.replace("\t", " ").replace("\n", " ")
    assert dead[6] == f"PermanentError: {flat}"[:PREVIEW_CHARS] + "…"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", dead[5])
    assert rows[store.long][1:4] == [LONG_NAME, LONG_QUEUE, "queued"]
    assert rows[store.done][6] == ""
    # --json keeps the text as stored, cut
    listed = {j["id"]: j for j in store.cli.json("jobs")}
    assert listed[store.dead]["error"] == f"PermanentError: {LONG_ERROR}"[:PREVIEW_CHARS]
    assert listed[store.dead]["truncated"] == ["args", "error", "traceback"]


def test_stats_piped_is_two_tab_separated_tables(store: Store) -> None:
    out = store.cli.ok("stats")
    assert not BOX & set(out)
    counts, workers = out.rstrip("\n").split("\n\n")
    lines = counts.split("\n")
    assert lines[0] == "\t".join(["queue", "queued", "scheduled", "running", "succeeded",
                                  "dead", "cancelled"])
    assert sorted(lines[1:]) == [f"{LONG_QUEUE}\t1\t0\t0\t0\t0\t0", "default\t0\t0\t0\t1\t1\t0"]
    assert workers.split("\t") == ["worker", "host", "pid", "queues", "concurrency",
                                   "min..max", "busy", "done", "failed", "heartbeat"]


# -- on an 80-column terminal ---------------------------------------------------------------------
def test_jobs_fit_an_80_column_terminal(store: Store) -> None:
    lines = in_terminal(store.cli, "jobs")
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert not BOX & set("".join(lines))
    assert lines[0].split()[:2] == ["id", "name"]
    for job_id, state in ((store.dead, "dead"), (store.long, "queued"),
                          (store.done, "succeeded")):
        # one line per job, its whole id and state on it
        (line,) = [line for line in lines if job_id in line]
        assert line.startswith(job_id) and f" {state} " in f"{line} "
    (dead,) = [line for line in lines if store.dead in line]
    assert dead.rstrip().endswith("…") and "PermanentError" in dead
    (long,) = [line for line in lines if store.long in line]
    assert "…" in long and LONG_NAME not in long
    assert len(lines) == 4


def test_jobs_on_a_wide_terminal_show_more(store: Store) -> None:
    lines = in_terminal(store.cli, "jobs", columns=200)
    assert all(len(line) <= 200 for line in lines)
    assert lines[0].split() == ["id", "name", "queue", "state", "attempts", "created", "error"]
    (long,) = [line for line in lines if store.long in line]
    assert LONG_NAME in long and LONG_QUEUE in long


def test_stats_fit_an_80_column_terminal(store: Store) -> None:
    proc = store.cli.start_worker("--queues", f"default,{LONG_QUEUE},a-third-queue-for-width")
    try:
        wait_until(lambda: store.cli.json("stats")["workers"], what="the worker to register")
        lines = in_terminal(store.cli, "stats")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert not BOX & set("".join(lines))
    header = next(line for line in lines if line.startswith("queue "))
    # every state in full, however narrow the queue column gets
    assert header.split() == ["queue", "queued", "scheduled", "running", "succeeded", "dead",
                              "cancelled"]
    assert any(line.startswith("default ") for line in lines)
    (worker,) = [line for line in lines if f"-{proc.pid}-" in line]  # in the worker's id
    assert "1..10" in worker


LONG_HOST = "conveyor-worker-deployment-7d9f8b6c5d-x2kq9.prod.example.com"


def test_stats_fit_80_columns_with_a_long_host_and_a_capped_paused_queue(store: Store) -> None:
    """A worker on a host with a long name (its id holds the name) and a queue both paused
    and capped: every line still fits, the id is cut, and the cap stays in sight (under a
    shorter header)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a host name of its own needs a UTS namespace: root and unshare (CI runs "
                    "as root)")
    store.cli.ok("pause", LONG_QUEUE)
    store.cli.ok("cap", LONG_QUEUE, "7")
    proc = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c",
         f'hostname {LONG_HOST} && exec "$0" -m conveyor --log-level WARNING worker '
         f'clijobs:app --url "$1" --queues default,{LONG_QUEUE}', sys.executable,
         store.cli.url], cwd=store.cli.cwd, env=cli_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: store.cli.json("stats")["workers"] or proc.poll() is not None,
                   what="the worker to register")
        assert proc.poll() is None, proc.communicate()
        assert store.cli.json("stats")["workers"][0]["host"] == LONG_HOST
        lines = in_terminal(store.cli, "stats")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    header = next((line for line in lines if line.startswith("queue ")), "\n".join(lines))
    assert header.split()[-2:] == ["paused", "cap"], header
    (capped,) = [line for line in lines if line.startswith(LONG_QUEUE[:4])
                 and " yes " in f"{line} "]
    assert capped.split()[-2:] == ["yes", "7"], capped
    (worker,) = [line for line in lines if line.startswith(LONG_HOST[:12])]
    assert "…" in worker and "1..10" in worker, worker


def test_top_once_prints_no_key_help(store: Store) -> None:
    out = store.cli.ok("top", "--once")
    assert "conveyor top" in out and "q: quit" not in out
    assert "recent failures" in out and store.dead in out


# -- status ---------------------------------------------------------------------------------------
def test_status_shows_the_traceback_of_a_dead_job(store: Store) -> None:
    out = store.cli.ok("status", store.dead)
    stored = store.cli.json("status", store.dead)["traceback"]
    assert "PermanentError" in stored and stored.startswith("Traceback (most recent call last)")
    summary, _, rest = out.partition("\ntraceback\n")
    assert "state  dead" in summary and "error  PermanentError: the mail server" in summary
    assert rest.rstrip("\n") == stored.rstrip("\n")  # verbatim, after the summary
    # a job without one has no such heading
    assert "traceback" not in store.cli.ok("status", store.done)


def test_status_names_the_store_of_an_unknown_id(store: Store) -> None:
    err = store.cli.fail("status", "06H0HQQS1DPDNNKJ7KG6WTC19R", code=1)
    assert err == (f"error: no job with id 06H0HQQS1DPDNNKJ7KG6WTC19R in {store.cli.url} "
                   "(namespace conveyor)\n")


# -- wording ---------------------------------------------------------------------------------------
def test_retry_and_cancel_of_a_succeeded_job_read_well(store: Store) -> None:
    err = store.cli.fail("retry", store.done, code=1)
    assert err == (f"error: job {store.done} has already succeeded; only dead or cancelled "
                   "jobs can be retried\n")
    assert store.cli.fail("cancel", store.done, code=1) == \
        f"error: job {store.done} has already succeeded\n"
    assert store.cli.fail("cancel", store.dead, code=1) == \
        f"error: job {store.dead} is already dead\n"
    assert f"job {store.long} is queued; only dead" in store.cli.fail("retry", store.long,
                                                                      code=1)


def test_user_data_prints_as_is_on_a_terminal(tmp_path: Path) -> None:
    cli = CLI(f"sqlite:///{tmp_path / 'conveyor.db'}", tmp_path)
    job_id = cli.enqueue("[bold]x[/bold]:smile:", [], "--force")
    lines = in_terminal(cli, "jobs", columns=120)
    (line,) = [line for line in lines if job_id in line]
    assert "[bold]x[/bold]:smile:" in line
    assert json.loads(cli.ok("jobs", "--json"))[0]["name"] == "[bold]x[/bold]:smile:"
