"""A Redis master demoted to a replica under its clients (``REPLICAOF`` run on it, as an
operator or a failover tool outside Conveyor would), then promoted back: with a plain URL
and with ``?replicas=1``, its refusals (READONLY, or WAIT's own refusal on a replica) are
an outage named "Redis is a read-only replica", waited out and logged once; reads, which
the replica still serves, do not end it; nothing accepted before is lost. A URL naming a
replica when the store is first opened is refused at once.

Each test swaps two real servers: ``other`` starts as the master's replica; to demote,
``other`` is promoted and the master made its replica (so it keeps the same data); to
promote back, the master stops replicating and ``other`` follows it again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import cli_env
from conveyor import Conveyor
from conveyor.backends.outage import Outage, outage_for
from conveyor.errors import ConfigurationError, StoreUnavailable
from conveyor.ids import new_id
from http_server import Server
from polling import exit_after_sigterm, wait_until
from redis_server import RedisServer

pytest.importorskip("redis")

READ_ONLY = "Redis is a read-only replica"
#: seconds the master stays demoted while a worker process runs on it
DEMOTED_FOR = 5.0
#: log lines a worker may write in that time (the outage's start, a stray line)
MOST_LINES = 3


class Pair:
    """A master and a server that starts as its replica, swapped to demote the master."""

    def __init__(self, tmp_path: Path) -> None:
        extra = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(tmp_path / "master", extra=extra)
        self.master.directory.mkdir()
        self.master.start()
        self.other = RedisServer(tmp_path / "other", extra=extra)
        self.other.directory.mkdir()
        self.other.start()
        self._call(self.other, "REPLICAOF", "127.0.0.1", self.master.port)
        self.in_sync()

    def url(self, waits: bool) -> str:
        return self.master.url + ("?replicas=1&replicas_timeout=0.5" if waits else "")

    @staticmethod
    def _call(server: RedisServer, *command: object) -> object:
        with redis.Redis(port=server.port) as client:
            return client.execute_command(*command)

    def in_sync(self) -> None:
        """Wait until ``other`` confirms the master's writes."""
        wait_until(lambda: int(self._call(self.master, "WAIT", 1, 100)) >= 1, timeout=30,
                   what="the replica in sync")

    def demote(self) -> None:
        """Make the master a replica of ``other`` (in sync, then promoted), its clients
        kept; return once it holds ``other``'s data."""
        self.in_sync()
        self._call(self.other, "REPLICAOF", "NO", "ONE")
        self._call(self.master, "REPLICAOF", "127.0.0.1", self.other.port)
        wait_until(self._linked, timeout=30, what="the demoted master in sync")

    def _linked(self) -> bool:
        with redis.Redis(port=self.master.port) as client:
            return client.info("replication").get("master_link_status") == "up"

    def promote(self) -> None:
        """Make the master a master again, ``other`` its replica once more."""
        self._call(self.master, "REPLICAOF", "NO", "ONE")
        self._call(self.other, "REPLICAOF", "127.0.0.1", self.master.port)
        self.in_sync()

    def remove(self) -> None:
        self.other.kill()  # a replica writing its first AOF ignores SIGTERM for a while
        self.master.kill()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path)
    yield made
    made.remove()


def _refused(call: Callable[[], object]) -> None:
    """``call`` raises a plain StoreUnavailable naming the read-only replica."""
    with pytest.raises(StoreUnavailable) as info:
        call()
    assert type(info.value) is StoreUnavailable, info.value
    assert info.value.reason == READ_ONLY, info.value


@pytest.mark.parametrize("waits", [False, True], ids=["plain", "replicas=1"])
def test_a_demoted_master_is_an_outage_that_reads_do_not_end(
        pair: Pair, waits: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Blocking and awaited enqueues wait the demotion out and raise StoreUnavailable
    ("Redis is a read-only replica"); a script that writes nothing (cancelling a job
    already cancelled) succeeds without ``?replicas`` and is refused with it (WAIT's
    refusal); reads succeed meanwhile and do not end the outage; it is logged once, and
    its end once, when a write succeeds after the promotion."""
    caplog.set_level(logging.INFO, logger="conveyor.store")
    app = Conveyor(store_timeout=1.0, namespace=f"t{new_id().lower()}")
    app.use_url(pair.url(waits))
    try:
        kept = app.enqueue_call("noop", [0], {}, force=True)
        cancelled = app.enqueue_call("noop", [0], {}, force=True)
        app.cancel(cancelled.id)
        outage = outage_for(app.broker)
        pair.demote()

        _refused(lambda: app.enqueue_call("noop", [1], {}, force=True))
        assert str(kept.info().state) == "queued"  # a read the replica serves
        assert outage.down and outage.reason == READ_ONLY
        _refused(lambda: app.run_sync(app.enqueue_call_async("noop", [2], {}, force=True)))
        if waits:
            _refused(lambda: app.cancel(cancelled.id))
        else:
            # wrote nothing: the replica allows it
            assert str(app.cancel(cancelled.id).state) == "cancelled"
        assert str(kept.info().state) == "queued"
        assert outage.down and outage.reason == READ_ONLY

        pair.promote()
        resumed = [app.enqueue_call("noop", [3], {}, force=True),
                   app.run_sync(app.enqueue_call_async("noop", [4], {}, force=True))]
        assert not outage.down
        for handle in (kept, *resumed):
            assert str(handle.info().state) == "queued"
    finally:
        app.close()
    text = caplog.text
    assert text.count(f"cannot reach the store {pair.master.url}: {READ_ONLY}") == 1, text
    assert text.count("is reachable again") == 1, text


def _demoted_for(pair: Pair, seconds: float, log: Path) -> list[str]:
    """Demote ``pair``'s master for ``seconds`` (once it is in sync); the lines ``log``
    gained meanwhile."""
    before = len(log.read_text(errors="replace").splitlines())
    pair.demote()
    time.sleep(seconds)
    return log.read_text(errors="replace").splitlines()[before:]


@pytest.mark.parametrize("waits", [False, True], ids=["plain", "replicas=1"])
def test_a_worker_logs_a_demotion_once_and_resumes_after_it(
        pair: Pair, waits: bool, tmp_path: Path) -> None:
    """A ``conveyor worker`` on the demoted master writes at most a few lines, no
    traceback, for its failing claims and heartbeats; it runs jobs again once the master
    is promoted back."""
    namespace = f"t{new_id().lower()}"
    app = Conveyor(namespace=namespace)
    app.use_url(pair.master.url)  # the test's own enqueues do not wait
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url",
             pair.url(waits), "--namespace", namespace],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=cli_env())

    def text() -> str:
        return log.read_text(errors="replace")

    def done(handle: object) -> bool:
        assert worker.poll() is None, text()
        return str(handle.info().state) == "succeeded"  # type: ignore[attr-defined]

    try:
        first = app.enqueue_call("pause", [0, 0.0], {}, force=True)
        wait_until(lambda: done(first), timeout=30, what="a job done before the demotion")
        during = _demoted_for(pair, DEMOTED_FOR, log)
        assert len(during) <= MOST_LINES, "\n".join(during)
        assert any(READ_ONLY in line and "WARNING" in line for line in during), text()
        pair.promote()
        second = app.enqueue_call("pause", [1, 0.0], {}, force=True)
        wait_until(lambda: done(second), timeout=30, what="a job done after the promotion")
        wait_until(lambda: "reachable again" in text(), timeout=30, what="the end logged")
        assert exit_after_sigterm(worker, 15.0, text) == 0, text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        app.close()
    output = text()
    assert "Traceback" not in output and "ERROR" not in output, output
    assert output.count(f": {READ_ONLY} (") == 1, output  # the outage's start
    assert output.count("reachable again") == 1, output


@pytest.mark.parametrize("waits", [False, True], ids=["plain", "replicas=1"])
def test_serve_answers_503_while_its_master_is_demoted(
        pair: Pair, waits: bool, tmp_path: Path) -> None:
    """``POST /jobs/NAME`` on ``conveyor serve`` (its worker in process) answers 503 with
    the reason while the master is demoted, and so does ``/healthz`` (the store cannot be
    written); reads of jobs answer meanwhile and do not end the outage: the process logs
    its start once, its end once, after the promotion, when it accepts jobs again."""
    server = Server(tmp_path, "--url", pair.url(waits))
    server.start()
    try:
        first = server.client.post("/jobs/add", json={"args": [1, 2]}).json()["id"]
        assert server.wait_job(first)["state"] == "succeeded"
        before = len(server.output().splitlines())
        pair.demote()
        refused = server.client.post("/jobs/add", json={"args": [1, 2]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == f"store unavailable: {READ_ONLY}"
        health = server.client.get("/healthz")
        assert health.status_code == 503, health.text
        assert health.json()["error"] == f"store unavailable: {READ_ONLY}"
        assert server.client.get(f"/jobs/{first}").json()["state"] == "succeeded"
        again = server.client.post("/jobs/add", json={"args": [1, 2]})  # known: at once
        assert again.status_code == 503, again.text
        time.sleep(1.0)  # the worker's heartbeats and claims go on failing
        lines = server.output().splitlines()[before:]
        pair.promote()
        wait_until(lambda: server.client.get("/healthz").status_code == 200, timeout=30,
                   what="/healthz once the master is promoted")
        accepted = server.client.post("/jobs/add", json={"args": [1, 2]})
        assert accepted.status_code in (200, 201, 202), accepted.text
        assert server.wait_job(accepted.json()["id"])["state"] == "succeeded"
    finally:
        server.stop()
    assert len(lines) <= MOST_LINES, "\n".join(lines)
    output = server.output()
    assert "Traceback" not in output, output
    assert output.count(f": {READ_ONLY} (") == 1, output  # the outage's start
    assert output.count("reachable again") == 1, output


def test_a_url_naming_a_replica_is_refused_at_first_open(pair: Pair, tmp_path: Path) -> None:
    """A replica at the URL when the store is first opened is a wrong URL, not an outage
    to wait out: ``conveyor worker`` exits at once saying so, and an enqueue raises
    ConfigurationError (the namespace exists on the replica: nothing there is written);
    a tool that only reads (``conveyor jobs``) reads the replica as before, and one that
    changes what exists (``conveyor pause``) is refused at once as a worker is."""
    namespace = f"t{new_id().lower()}"
    app = Conveyor(namespace=namespace)
    app.use_url(pair.master.url)
    app.enqueue_call("noop", [0], {}, force=True)
    app.close()
    pair.in_sync()
    for waits in (False, True):
        url = pair.other.url + ("?replicas=1" if waits else "")
        began = time.monotonic()
        ran = subprocess.run(
            [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url", url,
             "--namespace", namespace],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env())
        assert ran.returncode == 1, ran.stderr
        assert time.monotonic() - began < 10, ran.stderr
        assert "this Redis is a read-only replica" in ran.stderr, ran.stderr
        listed = subprocess.run(
            [sys.executable, "-m", "conveyor", "jobs", "--json", "--url", url,
             "--namespace", namespace],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env())
        assert listed.returncode == 0, listed.stderr  # a tool that reads takes a replica
        assert [job["name"] for job in json.loads(listed.stdout)] == ["noop"]
        paused = subprocess.run(  # one that changes what exists does not
            [sys.executable, "-m", "conveyor", "pause", "default", "--url", url,
             "--namespace", namespace],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=cli_env())
        assert paused.returncode == 1, paused.stderr
        assert "this Redis is a read-only replica" in paused.stderr, paused.stderr
        producer = Conveyor(namespace=namespace)
        producer.use_url(url)
        try:
            with pytest.raises(ConfigurationError, match="is a read-only replica"):
                producer.enqueue_call("noop", [1], {}, force=True)
            with pytest.raises(ConfigurationError, match="is a read-only replica"):
                producer.run_sync(producer.enqueue_call_async("noop", [1], {}, force=True))
        finally:
            producer.close()


def test_a_read_only_outage_ends_only_with_a_write_whatever_comes_meanwhile() -> None:
    """Once reads are known to work in an outage, only a write ends it, even after other
    trouble meanwhile (a demoted server loading its new master's data answers as
    unreachable first)."""
    outage = Outage("redis://example:6379/0")
    outage.trouble(READ_ONLY, reads_work=True)
    outage.trouble("Redis is unreachable")
    outage.recovered()
    assert outage.down and outage.reads_work
    outage.recovered(wrote=True)
    assert not outage.down and not outage.reads_work


def test_a_cluster_clients_unblocked_call_is_no_read_only_outage() -> None:
    """A blocking call ended by its server becoming a replica is the demotion of a plain
    URL's master, but a failover a Redis Cluster client follows by itself."""
    from conveyor.backends.redis.broker import _reason

    error = redis.exceptions.ResponseError(
        "UNBLOCKED force unblock from blocking operation, instance state changed "
        "(master -> replica?)")
    assert _reason(error) == READ_ONLY
    assert _reason(error, cluster=True) is None
    wait = redis.exceptions.ResponseError(
        "WAIT cannot be used with replica instances. Please also note that writes to "
        "replicas are just local and are not propagated.")
    assert _reason(wait) == READ_ONLY


def test_an_acl_user_without_del_sees_the_outage_only_as_writes_see_it(pair: Pair) -> None:
    """An ACL user that may not run DEL, which Conveyor does not need: the write probe
    (an HDEL, which every enqueue runs) works for it, so a read during the demotion does
    not end the outage (Redis checks a script's ACL before the replica's refusal), and the
    first write after the promotion does."""
    for server in (pair.master, pair.other):
        Pair._call(server, "ACL", "SETUSER", "nodel", "on", ">pw", "~*", "&*", "+@all",
                   "-del")
    app = Conveyor(store_timeout=1.0, namespace=f"t{new_id().lower()}")
    app.use_url(pair.master.url.replace("redis://", "redis://nodel:pw@"))
    try:
        kept = app.enqueue_call("noop", [0], {}, force=True)
        outage = outage_for(app.broker)
        pair.demote()
        _refused(lambda: app.enqueue_call("noop", [1], {}, force=True))
        assert outage.down and outage.reads_work
        assert str(kept.info().state) == "queued"  # a read the replica serves
        assert outage.down and outage.reason == READ_ONLY
        pair.promote()
        app.enqueue_call("noop", [2], {}, force=True)
        assert not outage.down
        assert str(kept.info().state) == "queued"
    finally:
        app.close()
