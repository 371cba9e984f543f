"""Conveyor on a Redis Cluster (``redis+cluster://``): a namespace served by a node other
than the one named in the URL, scripts unknown to a node, the CLI, bad URLs, and a slot
moved to another master while producers and workers run."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_env
from conveyor import Conveyor
from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis.cluster import ClusterScripts
from conveyor.errors import ConfigurationError
from conveyor.job import JobState
from conveyor.testing import WorkerThread
from polling import wait_until
from redis_cluster import RedisCluster, shared_cluster


@pytest.fixture
def cluster() -> RedisCluster:
    return shared_cluster()


def make_app(url: str, namespace: str, **options: Any) -> Conveyor:
    """An app on ``url`` with the jobs of tests/clusterjobs.py."""
    import clusterjobs

    app = Conveyor(url=url, namespace=namespace, **options)
    app.job(clusterjobs.square.fn, name="square")
    app.job(clusterjobs.note.fn, name="note")
    return app


def elsewhere(cluster: RedisCluster, prefix: str = "t") -> str:
    """A namespace whose slot is not served by the node the URL names."""
    others = [node for node in cluster.masters() if node is not cluster.nodes[0]]
    namespace = cluster.namespace_on(others[0], prefix)
    assert cluster.slot_owner(f"{{{namespace}}}") is not cluster.nodes[0]
    return namespace


def test_the_contract_suite_namespaces_land_on_several_masters(tmp_path: Path) -> None:
    from contract.conftest import FACTORIES

    cluster = shared_cluster()
    namespaces = [FACTORIES["cluster"](tmp_path)().namespace for _ in range(3)]
    owners = {cluster.slot_owner(f"{{{namespace}}}").port for namespace in namespaces}
    assert len(owners) >= 2, owners


def test_a_namespace_served_by_another_node_works_end_to_end(
        cluster: RedisCluster, tmp_path: Path) -> None:
    namespace = elsewhere(cluster)
    ledger = tmp_path / "ledger"
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "clusterjobs:app", "--url", cluster.url,
         "--namespace", namespace],
        env=cli_env(CONVEYOR_LEDGER=str(ledger)), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    app = make_app(cluster.url, namespace)
    try:
        blocking = app.enqueue("square", 7)  # enqueue outside an event loop

        async def produce() -> Any:
            return await app.enqueue_async("square", 8)

        pending = asyncio.run(produce())
        noted = app.enqueue("note", 3)
        assert blocking.result(timeout=60) == 49
        assert pending.result(timeout=60) == 64
        assert noted.result(timeout=60) == 3
        assert ledger.read_text() == "3\n"
        assert app.handle(blocking.id).info().state is JobState.SUCCEEDED
    finally:
        app.close()
        worker.terminate()
        _, errors = worker.communicate(timeout=60)
    assert "Traceback" not in errors, errors


def flush_scripts(cluster: RedisCluster) -> None:
    for node in cluster.nodes:
        cluster.cli("script", "flush", port=node.port)


def test_scripts_a_node_lost_are_loaded_again(cluster: RedisCluster) -> None:
    """SCRIPT FLUSH on every node: the blocking enqueue, single script calls and scripts
    in a pipeline (promotion of several queues) load their scripts again on the node that
    runs them."""
    namespace = elsewhere(cluster)
    app = make_app(cluster.url, namespace)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    thread = WorkerThread(app, queues=["a", "b"], max_workers=4)
    try:
        flush_scripts(cluster)
        later = [app.enqueue_call("square", [n], {}, queue=queue, delay=0.5)
                 for n, queue in enumerate(["a", "b", "a"])]
        time.sleep(0.6)
        flush_scripts(cluster)
        assert app.run_sync(broker.promote_scheduled()) == 3  # one pipeline, two queues
        assert app.run_sync(broker.counts())["a"]["queued"] == 2
        flush_scripts(cluster)
        handles = [app.enqueue_call("square", [n], {}, queue=queue)
                   for n, queue in enumerate(["a", "b"] * 5)]
        flush_scripts(cluster)
        thread.start()
        assert [handle.result(timeout=60) for handle in handles] == [n * n for n in range(10)]
        assert [handle.result(timeout=60) for handle in later] == [0, 1, 4]
    finally:
        thread.stop()
        app.close()


def test_admin_commands_work_on_a_cluster(cluster: RedisCluster) -> None:
    namespace = elsewhere(cluster)
    app = make_app(cluster.url, namespace)
    try:
        app.enqueue("square", 2)
    finally:
        app.close()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "stats", "--json", "--url", cluster.url,
         "--namespace", namespace],
        env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"queued": 1' in done.stdout, done.stdout


def test_every_seed_and_ping_time_and_settings(cluster: RedisCluster) -> None:
    """Several seeds (the first one unreachable), PING, TIME and CONFIG GET."""
    from redis_server import free_port

    seeds = ",".join([f"127.0.0.1:{free_port()}",
                      *(f"127.0.0.1:{node.port}" for node in cluster.nodes)])
    url = f"redis+cluster://{seeds}"
    broker = RedisBroker(url, namespace=elsewhere(cluster))

    async def main() -> float:
        await broker.open()
        await broker.ping()
        await broker.check_settings()
        now = await broker.schedule_clock()
        await broker.close()
        return now

    assert abs(asyncio.run(main()) - time.time()) < 60
    scripts = ClusterScripts(url)
    try:
        assert scripts.call("layout", [broker.keys.layout, broker.keys.jobs,
                                       broker.keys.queues], [0, "0"]) is not None
    finally:
        scripts.close()


@pytest.mark.parametrize("url, expected", [
    ("redis+cluster://al:s3cr3t@127.0.0.1:notaport", "malformed Redis URL"),
    ("redis+cluster://al:s3cr3t@", "malformed Redis URL"),
    ("redis+cluster://al:s3cr3t@127.0.0.1:7000,[::1:7001", "malformed Redis URL"),
    ("rediss+cluster://al:s3cr3t@127.0.0.1:7000/3", "only database 0"),
    ("redis+cluster://al:s3cr3t@127.0.0.1:7000/abc", "only database 0; drop /abc"),
])
def test_a_bad_cluster_url_is_a_clear_error_without_the_password(
        url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        RedisBroker(url)
    assert "s3cr3t" not in str(caught.value)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "stats", "--url", url],
        env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "s3cr3t" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


# -- a slot moved while jobs flow -----------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    yield cluster
    cluster.remove()


def _node_id(cluster: RedisCluster, port: int) -> str:
    return cluster.cli("cluster", "myid", port=port).strip()


def test_jobs_flow_while_their_slot_moves_to_another_master(
        own_cluster: RedisCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    cluster = own_cluster
    masters = cluster.masters()
    source, target = masters[1], masters[2]
    namespace = cluster.namespace_on(source, "move")
    slot = cluster.slot_of(namespace)
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("CONVEYOR_LEDGER", str(ledger))  # ``note`` appends its n there

    def app() -> Conveyor:
        return make_app(cluster.url, namespace)

    workers = [WorkerThread(app(), max_workers=4).start() for _ in range(2)]
    producers_app = app()
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def blocking_producer(start: int) -> None:
        n = start
        try:
            while not stop.is_set():
                producers_app.enqueue("note", n)
                with lock:
                    acked.append(n)
                n += 2
        except BaseException as exc:
            failures.append(exc)

    def async_producer(start: int) -> None:
        async def main() -> None:
            n = start
            while not stop.is_set():
                await producers_app.enqueue_async("note", n)
                with lock:
                    acked.append(n)
                n += 2

        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)

    producers = [threading.Thread(target=blocking_producer, args=(0,)),
                 threading.Thread(target=async_producer, args=(1,))]
    for thread in producers:
        thread.start()

    def progress(more: int) -> None:
        """Wait until the producers acknowledged ``more`` jobs more."""
        with lock:
            goal = len(acked) + more
        wait_until(lambda: len(acked) >= goal or bool(failures), timeout=60)

    try:
        progress(200)
        source_id, target_id = (_node_id(cluster, node.port) for node in (source, target))
        cluster.cli("cluster", "setslot", str(slot), "importing", source_id, port=target.port)
        cluster.cli("cluster", "setslot", str(slot), "migrating", target_id, port=source.port)
        # a few keys at a time, jobs flowing meanwhile: commands on keys already moved get
        # ASK, scripts on keys on both sides TRYAGAIN, for as long as the move lasts
        # (which must stay well within an enqueue's store_timeout)
        batches = 0
        while keys := cluster.cli("cluster", "getkeysinslot", str(slot), "2",
                                  port=source.port).split():
            cluster.cli("migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys",
                        *keys, port=source.port)
            batches += 1
            time.sleep(0.02)
        for node in masters:
            cluster.cli("cluster", "setslot", str(slot), "node", target_id, port=node.port)
        progress(200)  # then MOVED, once, and the slot map is read again
    finally:
        stop.set()
        for thread in producers:
            thread.join(60)
    assert not failures, failures
    assert batches >= 3
    assert "moving a slot" in caplog.text  # the move was seen, and retried through
    wait_until(lambda: cluster.slot_map(source.port)[slot] is target, timeout=30)
    assert cluster.slot_owner(f"{{{namespace}}}") is target
    try:
        workers[0].drain(timeout=120)
    finally:
        for worker in workers:
            worker.stop()
    producers_app.close()
    ran = [int(line) for line in ledger.read_text().split()]
    assert set(acked) <= set(ran), sorted(set(acked) - set(ran))[:10]
    assert len(ran) == len(set(ran)), "a job ran twice"
    check = app()
    try:
        counts = check.run_sync(check.broker.counts())
        assert counts["default"].get("succeeded", 0) == len(acked)
        assert sum(counts["default"].values()) == len(acked)
    finally:
        check.close()


# -- a master fails over while jobs flow ----------------------------------------------------


def test_jobs_flow_through_the_failover_of_their_master(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL of the namespace's master: its replica takes over, producers and workers
    carry on without an error (a producer waits up to its store_timeout). A job
    acknowledged just before the kill may be lost (replication is asynchronous); every job
    acknowledged once the replica took over runs."""
    cluster = RedisCluster(masters=3, replicas=1).start()
    try:
        master, alive = cluster.masters()[:2]
        namespace = cluster.namespace_on(master, "fail")
        ledger = tmp_path / "ledger"
        monkeypatch.setenv("CONVEYOR_LEDGER", str(ledger))
        url = f"redis+cluster://127.0.0.1:{alive.port}"  # a seed that lives on

        def app() -> Conveyor:
            return make_app(url, namespace, store_timeout=60.0)

        workers = [WorkerThread(app(), max_workers=4).start() for _ in range(2)]
        producer = app()
        acked: list[int] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def produce() -> None:
            n = 0
            try:
                while not stop.is_set():
                    producer.enqueue("note", n)
                    acked.append(n)
                    n += 1
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=produce)
        thread.start()
        try:
            wait_until(lambda: len(acked) >= 100 or failures, timeout=60)
            master.kill()
            wait_until(lambda: cluster.slot_map(alive.port)[cluster.slot_of(namespace)]
                       is not master, timeout=60, what="a failover")
            after = len(acked)
            wait_until(lambda: len(acked) >= after + 100 or failures, timeout=60)
        finally:
            stop.set()
            thread.join(120)
        assert not failures, failures
        try:
            workers[0].drain(timeout=120)
        finally:
            for worker in workers:
                worker.stop()
        producer.close()
        ran = [int(line) for line in ledger.read_text().split()]
        assert set(acked[after:]) <= set(ran)
        lost = set(acked) - set(ran)
        assert len(lost) <= 10, f"{len(lost)} acknowledged jobs lost in the failover"
        assert len(ran) - len(set(ran)) <= 10, "jobs ran twice (claims lost in the failover)"
    finally:
        cluster.remove()


# -- calls are retried by the broker only -----------------------------------------------------


def test_a_lost_reply_does_not_make_an_enqueue_a_duplicate(cluster: RedisCluster) -> None:
    """Client connections killed over and over while jobs are enqueued: a call whose reply
    was lost is retried by the broker (which sends the enqueue's token again), not by
    redis-py, so no enqueue ends in DuplicateJob for a job it stored itself."""
    import redis

    from conveyor.errors import DuplicateJob, StoreUnavailable

    namespace = elsewhere(cluster, "lost")
    app = make_app(cluster.url, namespace, store_timeout=30.0)
    stop = threading.Event()

    def killer() -> None:
        clients = [redis.Redis(port=node.port) for node in cluster.masters()]
        try:
            while not stop.is_set():
                for client in clients:
                    client.client_kill_filter(_type="normal", skipme=True)
                time.sleep(random.uniform(0.005, 0.05))
        finally:
            for client in clients:
                client.close()

    async def produce() -> tuple[int, list[BaseException]]:
        stored, failures = 0, []
        deadline = time.monotonic() + 90  # a bound for a slow machine; 400 calls take ~6 s
        while stored + len(failures) < 400 and time.monotonic() < deadline:
            try:
                await app.enqueue_async("square", 1)
                stored += 1
            except (DuplicateJob, StoreUnavailable) as exc:
                failures.append(exc)
        return stored, failures

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        stored, failures = asyncio.run(produce())
    finally:
        stop.set()
        thread.join()
        app.close()
    assert failures == []
    assert stored >= 50, stored  # 400 unless the machine is very slow


def test_a_hung_master_fails_calls_within_the_store_timeout(own_cluster: RedisCluster) -> None:
    """The namespace's master stopped (SIGSTOP): an enqueue gives up with StoreUnavailable
    about when its store_timeout says (redis-py's own retries stretched it to about a
    minute), and a health check (ping) fails, as it goes to that master."""
    import os
    import signal

    from conveyor.errors import StoreUnavailable

    # a master other than the seed the URL names: the client must find it through the map
    master = next(node for node in own_cluster.masters() if node is not own_cluster.nodes[0])
    namespace = own_cluster.namespace_on(master, "hung")
    app = make_app(own_cluster.url, namespace, store_timeout=3.0)
    broker = RedisBroker(own_cluster.url, namespace=namespace)
    broker.retry_for = 3.0

    async def main() -> tuple[float, BaseException | None]:
        await app.enqueue_async("square", 1)  # connections open, layout checked
        await broker.open()
        await broker.ping()
        assert master.process is not None
        os.kill(master.process.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await app.enqueue_async("square", 2)
            took = time.monotonic() - began
            try:
                await broker.ping()
            except StoreUnavailable as exc:
                return took, exc
            return took, None
        finally:
            os.kill(master.process.pid, signal.SIGCONT)
            await broker.close()

    try:
        took, refused = asyncio.run(main())
    finally:
        app.close()
    assert took < 20, took  # a bound (store_timeout 3 s plus one socket timeout), not a speed
    assert refused is not None, "ping answered while the namespace's master was stopped"


def test_settings_are_checked_on_every_master(
        cluster: RedisCluster, caplog: pytest.LogCaptureFixture) -> None:
    """A bad setting on any one master is warned about, whichever node the URL names."""
    import redis

    from conveyor.backends.redis import broker as broker_module

    for master in cluster.masters():
        client = redis.Redis(port=master.port, decode_responses=True)
        saved = client.config_get("maxmemory-policy")["maxmemory-policy"]
        client.config_set("maxmemory-policy", "allkeys-lru")
        broker = RedisBroker(cluster.url, namespace=cluster.namespace_on(master, "cfg"))
        broker_module._settings_checked.discard(cluster.url)
        caplog.clear()

        async def main(broker: RedisBroker = broker) -> None:
            await broker.check_settings()
            await broker.close()

        try:
            with caplog.at_level("WARNING", logger="conveyor.redis"):
                asyncio.run(main())
        finally:
            client.config_set("maxmemory-policy", saved)
            client.close()
        assert "'allkeys-lru'" in caplog.text, master.port
    broker_module._settings_checked.discard(cluster.url)


# -- the wrong kind of URL --------------------------------------------------------------------


def test_a_cluster_url_naming_a_plain_redis_is_a_clear_error() -> None:
    from redis_server import shared_redis_url

    address = shared_redis_url().split("://", 1)[1].split("/", 1)[0]
    url = f"redis+cluster://{address}"
    expected = f"{address} is not a Redis Cluster node: use redis://"
    broker = RedisBroker(url, namespace="plain")
    with pytest.raises(ConfigurationError, match=expected):
        asyncio.run(broker.open())
    app = make_app(url, "plain")
    try:
        with pytest.raises(ConfigurationError, match=expected):
            app.enqueue("square", 1)  # the blocking client
    finally:
        app.close()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "stats", "--url", url],
        env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def refused_blocking(url: str, namespace: str, expected: str) -> None:
    """An app on ``url``: its blocking enqueue raises ConfigurationError matching
    ``expected``."""
    app = make_app(url, namespace, store_timeout=5.0)
    try:
        with pytest.raises(ConfigurationError, match=expected):
            app.enqueue("square", 1)  # the blocking client
    finally:
        app.close()


def test_a_plain_url_naming_a_cluster_node_is_a_clear_error(cluster: RedisCluster) -> None:
    """redis:// at a node that does not serve the namespace's slot: its MOVED reply is a
    ConfigurationError at once, not trouble retried until the store_timeout."""
    namespace = elsewhere(cluster, "plain")
    url = f"redis://127.0.0.1:{cluster.nodes[0].port}"
    expected = "is a Redis Cluster node .*use redis\\+cluster://"
    broker = RedisBroker(url, namespace=namespace)
    broker.retry_for = 5.0
    with pytest.raises(ConfigurationError, match=expected):
        asyncio.run(broker.open())
    refused_blocking(url, namespace, expected)


@pytest.mark.parametrize("shard", ["", "?shard=queue"])
def test_a_plain_url_naming_the_node_that_serves_the_slot_is_refused_too(
        cluster: RedisCluster, shard: str) -> None:
    """redis:// at the very node that serves the namespace's slot would work until the slot
    moves (then every call is refused): it is refused when the namespace is first opened, by
    the async and the blocking client, and by a worker, which exits with one line."""
    namespace = f"own{shard and 'sharded'}"
    owner = cluster.slot_owner(f"{{{namespace}}}:jobs")
    url = f"redis://127.0.0.1:{owner.port}{shard}"
    expected = "is a Redis Cluster node .*use redis\\+cluster://"
    refused_blocking(url, namespace, expected)
    broker = make_app(url, namespace).broker
    with pytest.raises(ConfigurationError, match=expected):
        asyncio.run(broker.open())
    import redis

    probe = redis.Redis.from_url(owner.url)
    assert not probe.keys(f"{{{namespace}*"), "nothing is written before refusing"
    probe.close()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "clusterjobs:app", "--url", url,
         "--namespace", namespace], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "use redis+cluster://" in done.stderr and "Traceback" not in done.stderr
