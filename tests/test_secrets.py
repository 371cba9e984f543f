"""Secrets never show: a Redis password in the store URL is redacted (``***``) wherever a URL
is printed (``conveyor top``, errors, worker and serve logs, the dashboard and the API), and
the bearer token can come from a file or the environment instead of the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import cli_env
from conveyor import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.urls import redact, redact_url, secrets_of
from http_server import Server
from polling import wait_until
from redis_server import RedisServer

PASSWORD = "Pw-b9e4c1-Sekret"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
    ("redis://user:pw@host/0", "redis://***@host/0"),
    ("rediss://host/0?password=pw&db=1", "rediss://host/0?password=***&db=1"),
    ("redis://host?ssl_password=pw;socket_timeout=3", "redis://host?ssl_password=***;socket_timeout=3"),
    ("redis://host/0?Token=pw", "redis://host/0?Token=***"),
    ("redis:pw@host", "redis:***@host"),  # no // : still cut at the @
    ("redis://:p/w@host/0", "redis://***@host/0"),  # an unescaped / in the password
    ("redis://:pw@[bad/0", "redis://***@[bad/0"),  # too malformed for urllib
    ("redis://:pw@host:nope/0", "redis://***@host:nope/0"),
    ("redis://:p%40w@host", "redis://***@host"),
    ("redis://host/0?password=p@w", "redis://host/0?password=***"),
    ("foo://u:pw@host", "foo://***@host"),
    ("sqlite:////srv/a@b/conveyor.db", "sqlite:////srv/a@b/conveyor.db"),  # a path, no user
    ("sqlite:///x.db?synchronous=NORMAL", "sqlite:///x.db?synchronous=NORMAL"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_hides_the_secrets_as_written_and_decoded() -> None:
    url = "redis://:p%40ss-word@host/0?token=t0k3n"
    assert secrets_of(url) == {"p%40ss-word", "p@ss-word", "t0k3n"}
    assert redact("auth p@ss-word, p%40ss-word and t0k3n failed", url) == \
        "auth ***, *** and *** failed"
    assert secrets_of("redis://user:@host") == {"user"}


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that wants :data:`PASSWORD`."""
    import redis

    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
    yield server
    server.stop()


def store(server: RedisServer, how: str = "userinfo") -> str:
    if how == "query":
        return f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}"
    return f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/0"


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, env=cli_env(COLUMNS="200"), cwd=cwd, timeout=60)


@pytest.mark.parametrize("how", ["userinfo", "query"])
def test_top_shows_the_store_without_its_password(
        locked: RedisServer, tmp_path: Path, how: str) -> None:
    done = conveyor("top", "--once", "--url", store(locked, how), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"127.0.0.1:{locked.port}" in done.stdout and "***" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize(("url", "expected"), [
    (f"foo://u:{PASSWORD}@host", "unsupported URL scheme 'foo'"),
    (f"redis://:{PASSWORD}@127.0.0.1:1/0", "store unavailable"),
    (f"redis://:{PASSWORD}@127.0.0.1:nope/0", "malformed Redis URL"),
    (f"redis://:{PASSWORD[:6]}/{PASSWORD[6:]}@127.0.0.1:1/0", "malformed Redis URL"),
    (f"redis://:{PASSWORD}@[::1/0", "malformed Redis URL"),
    (f"sqlite://u:{PASSWORD}@host/x.db", "expected sqlite:///PATH"),
])
def test_errors_about_a_url_are_one_line_without_the_password(
        tmp_path: Path, url: str, expected: str) -> None:
    for command in (["top", "--once"], ["jobs"]):
        done = conveyor(*command, "--url", url, cwd=tmp_path)
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
        for piece in (PASSWORD, PASSWORD[:6], PASSWORD[6:]):
            assert piece not in done.stderr


def test_a_refused_password_is_not_shown(locked: RedisServer, tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}-wrong@127.0.0.1:{locked.port}/0"
    done = conveyor("jobs", "--url", url, cwd=tmp_path)
    assert done.returncode == 1 and "refused the credentials" in done.stderr, done.stderr
    assert PASSWORD not in done.stderr


def test_the_apps_repr_hides_the_password() -> None:
    app = Conveyor(url=f"redis://:{PASSWORD}@127.0.0.1:1/0")
    assert PASSWORD not in repr(app) and "***" in repr(app)


def test_a_malformed_redis_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="malformed Redis URL") as raised:
        Conveyor(url=f"redis://:{PASSWORD}@127.0.0.1:nope/0").broker  # noqa: B018
    assert PASSWORD not in str(raised.value)


def test_the_worker_logs_its_store_without_the_password(
        locked: RedisServer, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "clijobs:app",
             "--url", store(locked)], stdout=out, stderr=subprocess.STDOUT,
            env=cli_env(), cwd=tmp_path)
    try:
        wait_until(lambda: "queues" in log.read_text(), timeout=20,
                   what="the worker's start line")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert f"redis://***@127.0.0.1:{locked.port}/0" in text, text
    assert PASSWORD not in text


@pytest.mark.parametrize("how", ["userinfo", "query"])
def test_serve_its_logs_the_api_and_the_dashboard_hide_the_password(
        locked: RedisServer, tmp_path: Path, how: str) -> None:
    srv = Server(tmp_path, "--url", store(locked, how), token=None).start()
    try:
        assert srv.client.post("/jobs/add", json={"args": [1, 2]}).status_code == 202
        job = srv.client.get("/jobs").json()["jobs"][0]["id"]
        seen = [srv.client.get(path) for path in (
            "/", "/ui/workers", "/ui/jobs", f"/ui/jobs/{job}", "/ui/api/overview",
            "/ui/api/counts", "/ui/api/workers", "/ui/api/known", "/ui/api/jobs",
            f"/ui/api/jobs/{job}", "/healthz", "/metrics", "/queues", "/jobs",
            f"/jobs/{job}", "/openapi.json", "/docs")]
        assert all(answer.status_code == 200 for answer in seen), \
            [(answer.url, answer.status_code) for answer in seen]
        # its worker logs its start line once it registered, which may come after all that
        wait_until(lambda: " conveyor.worker: worker " in srv.output(), timeout=30,
                   what=f"the worker's start line\n{srv.output()}")
    finally:
        assert srv.stop() == 0, srv.output()
    for answer in seen:
        assert PASSWORD not in answer.text, answer.url
    output = srv.output()
    assert "worker" in output and "***" in output, output  # the worker's start line
    assert PASSWORD not in output


# -- the bearer token ---------------------------------------------------------------------------
def test_token_file_is_read_and_no_warning(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("  from-a-file-7f3a  \n")
    secret.chmod(0o600)
    srv = Server(tmp_path, "--token-file", str(secret), "--no-worker", token=None).start()
    try:
        assert srv.client.get("/jobs").status_code == 401
        srv.client.headers["Authorization"] = "Bearer from-a-file-7f3a"
        assert srv.client.get("/jobs").status_code == 200
    finally:
        assert srv.stop() == 0
    assert "from-a-file-7f3a" not in srv.output()
    assert "WARNING" not in srv.output() and "process list" not in srv.output()


def test_a_token_file_others_may_read_is_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("shared-token-5d1e\n")
    secret.chmod(0o644)
    srv = Server(tmp_path, "--token-file", str(secret), "--no-worker", token=None).start()
    try:
        srv.client.headers["Authorization"] = "Bearer shared-token-5d1e"
        assert srv.client.get("/jobs").status_code == 200
    finally:
        assert srv.stop() == 0
    lines = [line for line in srv.output().splitlines() if "other users" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "chmod 600" in lines[0], lines
    assert "shared-token-5d1e" not in srv.output()


def test_token_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--no-worker").start()  # --token s3cret-token
    try:
        assert srv.client.get("/jobs").status_code == 200
    finally:
        assert srv.stop() == 0
    lines = [line for line in srv.output().splitlines() if "process list" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "--token-file" in lines[0], lines
    assert "CONVEYOR_TOKEN" in lines[0]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read it: No such file or directory"),
    ("", "the file is empty"),
    ("  \n\n", "the file is empty"),
    ("two\nlines\n", "one line without spaces"),
    (b"\xff\xfe", "cannot read it"),
])
def test_a_bad_token_file_is_one_line(tmp_path: Path, content: str | bytes | None,
                                      message: str) -> None:
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    done = conveyor("serve", "--token-file", str(path), "--no-worker",
                    "--url", f"sqlite:///{tmp_path / 'c.db'}", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr == f"error: --token-file {path}: {message}\n" or \
        (done.stderr.count("\n") == 1 and message in done.stderr), done.stderr


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    done = conveyor("serve", "--token", "a", "--token-file", "b", cwd=tmp_path)
    assert done.returncode == 2 and "not allowed with argument" in done.stderr


def test_help_recommends_the_file_or_the_environment(tmp_path: Path) -> None:
    done = conveyor("serve", "--help", cwd=tmp_path)
    text = " ".join(done.stdout.split())
    assert "--token-file PATH" in text and "$CONVEYOR_TOKEN" in text
    assert "process list" in text
