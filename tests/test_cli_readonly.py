"""Commands that only read never create a store; no command creates a directory; a store that
cannot be opened is one line naming it (its password left out), never a traceback.

The CLI runs as a real subprocess on real SQLite files, and against a private redis-server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client

from clijobs import CLI
from conftest import cli_env
from conveyor import Conveyor, StoreUnavailable
from conveyor.backends import MissingStore, require_existing
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.errors import ConfigurationError
from redis_server import RedisServer, free_port

ID = "06H0HQQS1DPDNNKJ7KG6WTC19R"
#: every command that only reads the store (or changes what is already in it)
READ_ONLY = [["status", ID], ["status", ID, "--wait", "--timeout", "1"], ["jobs"], ["stats"],
             ["retry", ID], ["retry", "--all-dead"], ["cancel", ID], ["top", "--once"],
             ["jobs-known"], ["priority", ID, "3"], ["pause", "default"], ["resume", "default"],
             ["cap", "default", "5"]]
PASSWORD = "hunter2-not-for-screens"


def one_error_line(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single ``error: ...`` line of a failed run (nothing else on stderr)."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


# -- read-only commands ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda argv: " ".join(argv))
def test_read_only_commands_create_no_store(empty: Path, argv: list[str]) -> None:
    cli = CLI("", empty)
    line = one_error_line(cli(*argv, url=None))  # the default: sqlite:///conveyor.db
    assert line == (f"error: no SQLite database at {empty / 'conveyor.db'} "
                    "(check --url or CONVEYOR_URL)")
    assert list(empty.iterdir()) == []
    # the same through CONVEYOR_URL, with a relative path: named in full
    line = one_error_line(cli(*argv, url=None, CONVEYOR_URL="sqlite:///jobs.db"))
    assert f"no SQLite database at {empty / 'jobs.db'} " in line
    assert list(empty.iterdir()) == []


def test_read_only_commands_work_once_the_store_exists(empty: Path) -> None:
    cli = CLI(f"sqlite:///{empty / 'conveyor.db'}", empty)
    job_id = cli.enqueue("add", [1, 2], "--force")
    assert job_id in cli.ok("jobs")
    assert "queued" in cli.ok("status", job_id)
    assert cli.json("stats")["queues"]["default"]["queued"] == 1


def test_read_only_commands_read_while_another_process_holds_the_write_lock(
        empty: Path) -> None:
    """Opening a store already at this version's layout writes nothing, so the reads of
    jobs, status, stats and jobs-known go on (WAL readers) while a write transaction of
    another process is open; a command that writes waits for the lock, as it must."""
    import sqlite3

    path = empty / "conveyor.db"
    cli = CLI(f"sqlite:///{path}", empty)
    job_id = cli.enqueue("add", [1, 2], "--force")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert job_id in cli.ok("jobs")
        assert "queued" in cli.ok("status", job_id)
        assert cli.json("stats")["queues"]["default"]["queued"] == 1
        cli.ok("jobs-known")
        line = one_error_line(cli("cancel", job_id))  # after the commands' 5 s
        assert "locked" in line
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cli.ok("cancel", job_id)


# -- directories -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["jobs"], ["stats"], ["status", ID],
                                  ["enqueue", "add", "--force"],
                                  ["worker", "clijobs:app"],
                                  ["worker", "clijobs:app", "--processes", "2"],
                                  ["serve", "--port", "0", "--containers", "dir:."]],
                         ids=lambda argv: " ".join(argv))
def test_no_command_creates_a_missing_directory(empty: Path, argv: list[str]) -> None:
    cli = CLI("sqlite:///typo/data/conveyor.db", empty)
    line = one_error_line(cli(*argv))
    assert line == (f"error: no directory {empty / 'typo' / 'data'} for the SQLite database "
                    f"{empty / 'typo' / 'data' / 'conveyor.db'} (check --url or CONVEYOR_URL)")
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("argv", [["jobs"], ["enqueue", "add", "--force"],
                                  ["worker", "clijobs:app"]], ids=lambda argv: argv[0])
def test_a_file_in_the_way_of_the_directory(empty: Path, argv: list[str]) -> None:
    (empty / "notes").write_text("a file, not a directory")
    line = one_error_line(CLI("sqlite:///notes/conveyor.db", empty)(*argv))
    assert line == (f"error: cannot create the SQLite database {empty / 'notes' / 'conveyor.db'}"
                    f": {empty / 'notes'} is not a directory")


@pytest.mark.parametrize("argv", [["jobs"], ["stats"], ["enqueue", "add", "--force"]],
                         ids=lambda argv: argv[0])
def test_a_directory_in_the_way_of_the_file(empty: Path, argv: list[str]) -> None:
    (empty / "conveyor.db").mkdir()
    url = f"sqlite:///{empty / 'conveyor.db'}"
    line = one_error_line(CLI(url, empty)(*argv))
    assert line == f"error: store unavailable ({url}): the database path is a directory"
    assert list(empty.iterdir()) == [empty / "conveyor.db"]


@pytest.mark.parametrize("argv", [["stats"], ["enqueue", "add", "--force"],
                                  ["worker", "clijobs:app"]], ids=lambda argv: argv[0])
def test_a_file_that_is_not_a_database(empty: Path, argv: list[str]) -> None:
    junk = empty / "junk.db"
    junk.write_text("this is not SQLite " * 100)
    line = one_error_line(CLI(f"sqlite:///{junk}", empty)(*argv))
    assert line == f"error: cannot use the store at {junk}: file is not a database"
    assert junk.read_text() == "this is not SQLite " * 100


# -- in Python: typed errors -----------------------------------------------------------------------
def test_library_errors_are_typed_and_create_nothing(empty: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(empty)
    with pytest.raises(MissingStore) as missing_dir:
        Conveyor(url="sqlite:///typo/conveyor.db").enqueue_call("add", [1, 2], {}, force=True)
    assert str(missing_dir.value) == (f"no directory {empty / 'typo'} for the SQLite "
                                      f"database {empty / 'typo' / 'conveyor.db'}")
    assert isinstance(missing_dir.value, ConfigurationError)

    db = empty / "conveyor.db"
    broker = require_existing(SQLiteBroker(f"sqlite:///{db}"))
    with pytest.raises(MissingStore) as missing:
        asyncio.run(broker.open())
    assert missing.value.path == str(db) and str(missing.value) == f"no SQLite database at {db}"
    with pytest.raises(MissingStore):
        asyncio.run(broker.counts())
    assert list(empty.iterdir()) == []

    (empty / "in-the-way.db").mkdir()
    blocked = SQLiteBroker(f"sqlite:///{empty / 'in-the-way.db'}")
    with pytest.raises(StoreUnavailable) as unavailable:
        asyncio.run(blocked.open())
    assert unavailable.value.reason == "the database path is a directory"
    assert isinstance(unavailable.value.__cause__, IsADirectoryError)

    # a broker that may create the file does, once the directory is there
    made = SQLiteBroker(f"sqlite:///{db}")
    asyncio.run(made.open())
    asyncio.run(made.close())
    assert db.is_file()
    asyncio.run(broker.open())  # now it exists: the read-only broker opens it
    assert asyncio.run(broker.counts()) == {}
    asyncio.run(broker.close())


# -- Redis: one line, no password ------------------------------------------------------------------
@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that wants ``PASSWORD``."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    redis_client.Redis(port=server.port).config_set("requirepass", PASSWORD)
    yield server
    server.stop()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *argv], env=cli_env(),
                          capture_output=True, text=True, timeout=60, check=False)


def test_redis_store_errors_are_one_line_without_the_password(
        locked_redis: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    shown = f"redis://***@127.0.0.1:{locked_redis.port}/0"
    # the store answers: an unknown id names it
    line = one_error_line(run("status", ID, "--url", url, "--namespace", "billing"))
    assert line == f"error: no job with id {ID} in {shown} (namespace billing)"
    # a wrong password
    wrong = f"redis://:not-{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    for argv in (["stats"], ["jobs"], ["enqueue", "add", "--force"]):
        done = run(*argv, "--url", wrong)
        line = one_error_line(done)
        assert PASSWORD not in done.stderr + done.stdout and "***" in line
    # no server at all
    down = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    done = run("stats", "--url", down)
    line = one_error_line(done)
    assert PASSWORD not in done.stderr
    assert line.startswith("error: store unavailable (redis://***@127.0.0.1:")


def test_sqlite_unknown_id_names_the_store(empty: Path) -> None:
    cli = CLI(f"sqlite:///{empty / 'conveyor.db'}", empty)
    cli.enqueue("add", [1, 2], "--force")
    line = one_error_line(cli("status", ID))
    assert line == f"error: no job with id {ID} in {cli.url} (namespace conveyor)"
    line = one_error_line(cli("status", ID, url=None, CONVEYOR_URL="sqlite:///conveyor.db"))
    assert line == f"error: no job with id {ID} in sqlite:///conveyor.db (namespace conveyor)"
