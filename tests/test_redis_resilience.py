"""The Redis backend under real trouble: crashes, restarts, dropped connections, many workers.

Every test starts its own ``redis-server`` (AOF with ``appendfsync always``) on a free port,
so it can kill and restart it without touching any other Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import TESTS, cli_env
from conveyor import Conveyor, JobState
from conveyor.backends.redis import RedisBroker
from conveyor.ids import new_id
from polling import wait_until
from redis_server import RedisServer


@pytest.fixture
def app(server: RedisServer) -> Iterator[Conveyor]:
    import rjobs

    rjobs.app.use_url(server.url)
    rjobs.app.namespace = f"t{new_id().lower()}"
    yield rjobs.app
    rjobs.app.close()
    rjobs.app._broker = None


class Workers:
    """``conveyor worker rjobs:app`` processes, killed at the end of the test."""

    def __init__(self, app: Conveyor, logs: Path) -> None:
        self.app = app
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *options: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url", self.app.url,
             "--namespace", self.app.namespace, *options],
            cwd=TESTS, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(app: Conveyor, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(app, tmp_path)
    yield pool
    pool.cleanup()


def states(app: Conveyor, ids: list[str]) -> dict[str, JobState]:
    async def read() -> dict[str, JobState]:
        records = [await app.broker.get(i) for i in ids]
        return {r.id: r.state for r in records if r is not None}

    return app.run_sync(read())


def all_succeeded(app: Conveyor, ids: list[str]) -> bool:
    found = states(app, ids)
    return len(found) == len(ids) and all(s is JobState.SUCCEEDED for s in found.values())


def test_two_worker_processes_share_one_queue(app: Conveyor, workers: Workers) -> None:
    first, second = workers.start("--max-workers", "8"), workers.start("--max-workers", "8")
    # both sign in before the work arrives: on a loaded machine one worker could otherwise
    # drain the whole backlog before the other has started
    wait_until(lambda: len(app.run_sync(app.broker.workers())) == 2, what="both workers to start")
    handles = app.enqueue_many("pause", [(n, 0.01) for n in range(300)])
    ids = [h.id for h in handles]
    wait_until(lambda: all_succeeded(app, ids), what="all jobs to succeed")
    owners = {h.info().worker_id for h in handles}
    assert len(owners) == 2, f"both workers should have run jobs, got {owners}"
    assert sorted(h.result() for h in handles) == list(range(300))
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_worker_killed_mid_job_the_job_completes_elsewhere(
    app: Conveyor, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    handle = app.enqueue("marked_nap", str(marker), 30.0)
    victim = workers.start()
    # the pid is written, not only the file made: a kill between the two would leave
    # an empty marker, and the next run would count itself the first
    wait_until(lambda: marker.exists() and marker.read_text().endswith("\n"),
               what="the job to start")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers.start()
    assert handle.result(timeout=30) == 2
    info = handle.info()
    assert (info.attempts, info.recoveries) == (2, 1)


def test_redis_killed_and_restarted_mid_run_loses_no_acknowledged_job(
    app: Conveyor, workers: Workers, server: RedisServer
) -> None:
    worker = workers.start("--max-workers", "20")
    acknowledged: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            acknowledged.append(app.enqueue("pause", n, 0.005).id)
            n += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: len(acknowledged) > 100, what="some enqueues")
    server.kill()  # SIGKILL: only what AOF (appendfsync always) holds survives
    time.sleep(0.5)
    server.start()
    wait_until(lambda: len(acknowledged) > 300, what="enqueues after the restart")
    stop.set()
    producer.join(30)
    wait_until(lambda: all_succeeded(app, acknowledged), timeout=60,
               what="every acknowledged job to succeed")
    assert worker.poll() is None, "the worker must ride out the restart"


def test_dropped_client_connections_mid_run(app: Conveyor, workers: Workers,
                                            server: RedisServer) -> None:
    worker = workers.start("--max-workers", "10")
    handles = app.enqueue_many("pause", [(n, 0.01) for n in range(400)])
    ids = [h.id for h in handles]
    wait_until(lambda: sum(s is JobState.SUCCEEDED for s in states(app, ids).values()) > 50)
    admin = redis.Redis.from_url(server.url)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    wait_until(lambda: all_succeeded(app, ids), what="all jobs after CLIENT KILL")
    assert worker.poll() is None


def test_worker_started_before_redis_waits_for_it(app: Conveyor, workers: Workers,
                                                  server: RedisServer) -> None:
    server.stop()
    worker = workers.start()
    time.sleep(1.5)
    assert worker.poll() is None, "a worker must not exit (or crash-loop) while Redis is down"
    server.start()
    handle = app.enqueue("pause", 7, 0.0)
    assert handle.result(timeout=30) == 7


def test_warns_about_eviction_and_missing_persistence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = RedisServer(tmp_path).start()
    try:
        admin = redis.Redis.from_url(srv.url)
        admin.config_set("appendonly", "no")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        broker = RedisBroker(srv.url, namespace="warn")

        async def open_and_close() -> None:
            await broker.open()
            await broker.check_settings()  # what a worker and serve do; commands do not
            await broker.close()

        with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
            asyncio.run(open_and_close())
        text = caplog.text
        assert "maxmemory-policy is 'allkeys-lru'" in text
        assert "persistence is off" in text
    finally:
        srv.stop()


def test_keys_share_one_hash_tag(app: Conveyor) -> None:
    """Every key of a namespace carries its hash tag, so Redis Cluster keeps them together."""
    app.enqueue_many("pause", [(1, 0.0), (2, 0.0)])
    client = redis.Redis.from_url(app.url, decode_responses=True)
    keys = list(client.scan_iter(match=f"*{app.namespace}*"))
    assert keys, "the enqueue should have created keys"
    assert all(k.startswith(f"{{{app.namespace}}}:") for k in keys), keys
    assert not os.environ.get("CONVEYOR_URL")


def test_a_claim_retried_with_its_token_gets_the_same_jobs(server: RedisServer) -> None:
    """A claim whose reply was lost is sent again with the same token: it must return the
    jobs it leased the first time, not lease a second batch and strand the first."""
    from conveyor.backends.redis import codec
    from conveyor.job import JobRecord

    broker = RedisBroker(server.url, namespace=f"t{new_id().lower()}")

    def job() -> JobRecord:
        now = time.time()
        return JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                         args=[], kwargs={}, created_at=now, run_at=now)

    async def scenario() -> tuple[list[tuple[str, int]], ...]:
        await broker.enqueue([job() for _ in range(5)], {})
        k = broker.keys
        keys = [*k.job_block, k.claims, k.paused, *k.queue_group("default")]

        async def claim(token: str) -> list[tuple[str, int]]:
            reply = await broker._script("claim", keys, ["w1", 30, 3, token, "", "", "default"])
            return sorted((job.id, job.claim) for job in codec.claimed_jobs(reply, "w1"))

        first, again, other = await claim("a"), await claim("a"), await claim("b")
        await broker.close()
        return first, again, other

    first, again, other = asyncio.run(scenario())
    # the same jobs under the same claim numbers: the first claim's, not new ones
    assert len(first) == 3 and again == first and {n for _, n in first} == {1}
    assert len(other) == 2 and not {i for i, _ in other} & {i for i, _ in first}


def test_a_claim_retried_with_its_token_keeps_a_suspect_a_suspect(server: RedisServer) -> None:
    """A job its dead worker held unstarted comes back a suspect; the reply of a claim sent
    again after a lost reply must say so too, or the job would not run alone."""
    from conveyor.backends.redis import codec
    from conveyor.job import JobRecord

    broker = RedisBroker(server.url, namespace=f"t{new_id().lower()}")
    now = time.time()
    record = JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                       args=[], kwargs={}, created_at=now, run_at=now)

    async def scenario() -> list[bool]:
        await broker.enqueue([record], {})
        await broker.claim("lost", ["default"], 1, 0.2, start=0)  # held unstarted
        await asyncio.sleep(0.5)
        await broker.recover_expired(5)  # back uncharged, maybe started: a suspect
        k = broker.keys
        keys = [*k.job_block, k.claims, k.paused, *k.queue_group("default")]
        flags = []
        for _ in range(2):  # the same token twice, as after a lost reply
            reply = await broker._script("claim", keys, ["w1", 30, 1, "tok", 1, "", "default"])
            flags += [job.suspect for job in codec.claimed_jobs(reply, "w1")]
        await broker.close()
        return flags

    assert asyncio.run(scenario()) == [True, True]


def test_a_single_enqueue_sent_again_reports_exists_before_full(server: RedisServer) -> None:
    """An enqueue whose reply was lost is sent again: the second call must see its own job
    (and report it as stored), not a queue its first call filled to the limit."""
    from conveyor.backends.redis.client import BlockingScripts
    from conveyor.errors import ConveyorError, DuplicateJob
    from conveyor.job import JobRecord

    broker = RedisBroker(server.url, namespace=f"t{new_id().lower()}")
    now = time.time()
    job = JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                    args=[], kwargs={}, created_at=now, run_at=now)
    script, keys, argv, _ = broker._enqueue_call([([job], {"default": 1})])
    assert script == "enqueue_one"
    scripts = BlockingScripts(server.url)
    try:
        assert scripts.call(script, keys, argv) == "ok"
        assert scripts.call(script, keys, argv) == f"same {job.id}"
        with pytest.raises(redis.ResponseError):  # a script error ...
            scripts.call("enqueue_one", keys, [])
        # ... leaves the next call's reply intact
        assert scripts.call(script, keys, argv) == f"same {job.id}"
        other = JobRecord(id=job.id, name="n", queue="default", state=JobState.QUEUED,
                          args=["another job"], kwargs={}, created_at=now, run_at=now)
        _, _, other_argv, _ = broker._enqueue_call([([other], {"default": 1})])
        assert scripts.call(script, keys, other_argv) == f"exists {job.id}"
    finally:
        scripts.close()
    # a first attempt that finds the id is an error, not a success
    with pytest.raises(ConveyorError, match="exists already"):
        broker.enqueue_blocking([job], {"default": 1})
    # a later attempt that finds this very job was stored by the first; another job under
    # the id is someone else's, whichever attempt meets it
    result = RedisBroker._segment_result
    assert result(f"same {job.id}", 2, [job], [0]) == [None]
    assert isinstance(result(f"same {job.id}", 1, [job], [0]), DuplicateJob)
    assert isinstance(result(f"exists {job.id}", 2, [job], [0]), DuplicateJob)
    assert isinstance(result([f"exists {job.id}"], 3, [job], [0]), DuplicateJob)



def test_blocking_enqueues_after_a_restart_do_not_trip_on_dead_connections(
    app: Conveyor, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads that enqueued leave idle connections behind; after Redis restarts they are
    all dead, and the next enqueue must go through on a fresh one, not try them in turn."""
    threads = [threading.Thread(target=lambda: [app.enqueue("pause", i, 0) for i in range(3)])
               for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    server.restart()
    time.sleep(1.5)  # idle long enough to be checked before reuse
    with caplog.at_level(logging.WARNING, "conveyor"):
        for n in range(5):
            app.enqueue("pause", n, 0)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == []
    server.restart()  # and right after a restart, before any check: one retry at most
    with caplog.at_level(logging.WARNING, "conveyor"):
        caplog.clear()
        for n in range(5):
            app.enqueue("pause", n, 0)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) <= 1, [r.getMessage() for r in retries]
