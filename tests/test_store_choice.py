"""Which store an app and the commands use: ``CONVEYOR_URL`` beats the URL written in the
code, ``--url`` beats both, and a store that cannot be made stops ``serve`` in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env
from conveyor import Conveyor


def test_environment_beats_the_url_in_the_code(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("CONVEYOR_URL", chosen)
    app = Conveyor(url=f"sqlite:///{tmp_path / 'in-code.db'}")
    assert app.url == chosen
    monkeypatch.delenv("CONVEYOR_URL")
    assert Conveyor(url=f"sqlite:///{tmp_path / 'in-code.db'}").url.endswith("in-code.db")
    assert Conveyor().url == "sqlite:///conveyor.db"
    monkeypatch.setenv("CONVEYOR_URL", chosen)
    assert Conveyor(url="memory://").url == "memory://"  # a test's own store stays its own


def test_producer_and_worker_follow_one_setting(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick start moved to another store by CONVEYOR_URL alone: the job is stored where
    the worker looks, and nothing is written where the code's URL points."""
    in_code = tmp_path / "in-code.db"
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    app = Conveyor(url=f"sqlite:///{in_code}")

    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    try:
        job_id = add.enqueue(1, 2).id
    finally:
        app.close()
    listed = subprocess.run(
        [sys.executable, "-m", "conveyor", "status", job_id, "--json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=cli_env(CONVEYOR_URL=f"sqlite:///{tmp_path / 'shared.db'}"))
    assert listed.returncode == 0, listed.stderr
    assert f'"id": "{job_id}"' in listed.stdout
    assert not in_code.exists()


@pytest.mark.parametrize("extra", [(), ("--no-worker",)])
def test_serve_on_a_missing_directory_stops_in_one_line(tmp_path: Path,
                                                        extra: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--url", "sqlite:///nowhere/x.db",
         "--port", "0", *extra],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env())
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: no directory {tmp_path / 'nowhere'} for the SQLite database "
                     f"{tmp_path / 'nowhere' / 'x.db'} (check --url or CONVEYOR_URL)"]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [("jobs",), ("enqueue", "add", "--force"),
                                     ("worker", "clijobs:app")])
def test_commands_refuse_an_in_process_store(tmp_path: Path, command: tuple[str, ...]) -> None:
    done = subprocess.run([sys.executable, "-m", "conveyor", *command, "--url", "memory://"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=cli_env())
    assert done.returncode == 2
    assert done.stderr.startswith("error: memory:// is a store inside one process")
    assert done.stderr.count("\n") == 1


def test_the_environment_does_not_override_an_apps_in_process_store(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor(url='memory://')\n\n\n@app.job\n"
        "def add(a: int, b: int) -> int:\n    return a + b\n")
    done = subprocess.run([sys.executable, "-m", "conveyor", "enqueue", "add", "--args",
                           "[1, 2]", "--app", "memapp:app"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env=cli_env(CONVEYOR_URL=f"sqlite:///{tmp_path / 'env.db'}"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: memory:// is a store inside one process")
    assert not (tmp_path / "env.db").exists()


def test_serve_stops_on_a_store_it_can_never_use(tmp_path: Path) -> None:
    """A file that is no database will not get better: serve (no worker of its own to
    notice) says so and exits, instead of answering 503 for ever."""
    (tmp_path / "bad.db").write_text("not a database")
    (tmp_path / "containers").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--url", "sqlite:///bad.db", "--port", "0",
         "--no-worker"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env())
    assert done.returncode == 1, done.stderr
    assert "cannot use the store: cannot use the store at " in done.stderr
    assert "file is not a database; shutting down" in done.stderr
