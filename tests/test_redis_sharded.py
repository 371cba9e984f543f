"""A Redis namespace sharded by queue (``?shard=queue``) on one real ``redis-server``: its keys
carry one hash tag per queue, every call's keys share one slot, the choice is recorded and
enforced, and a real worker drains a sharded namespace. (The contract suite runs on it too:
the ``sharded`` backend of ``tests/contract``.)"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from conftest import TESTS, cli_env
from conveyor import Conveyor, JobState
from conveyor.backends import open_broker
from conveyor.backends.redis import RedisBroker
from conveyor.backends.redis.deploy import shard_option
from conveyor.backends.redis.keys import Keys
from conveyor.backends.redis.sharded import ShardedRedisBroker, shard_tag
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.job import JobRecord, Outcome, OutcomeKind, WorkerInfo
from polling import wait_until
from redis_server import RedisServer


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _namespace() -> str:
    return f"t{new_id().lower()}"


def _job(queue: str) -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(now), name="tasks.work", queue=queue, state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


# -- the option -------------------------------------------------------------------------------


def test_the_option_is_taken_out_of_the_url_and_checked() -> None:
    assert shard_option("redis://h:1/0") == ("redis://h:1/0", None)
    assert shard_option("redis://h:1/0?shard=queue") == ("redis://h:1/0", "queue")
    assert shard_option("redis://:pw@h:1/0?socket_timeout=3&shard=queue&x=1") == (
        "redis://:pw@h:1/0?socket_timeout=3&x=1", "queue")
    with pytest.raises(ConfigurationError, match="shard= takes queue") as raised:
        shard_option("redis://:secret@h:1?shard=job")
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="open_broker"):
        RedisBroker("redis://h:1/0?shard=queue")
    assert isinstance(open_broker("redis://h:1/0?shard=queue", "ns", 60), ShardedRedisBroker)
    assert type(open_broker("redis://h:1/0", "ns", 60)) is RedisBroker


def test_keys_of_a_plain_namespace_are_unchanged_and_shards_carry_their_tag() -> None:
    assert Keys("ns").prefix == "{ns}" and Keys("ns").jobs == "{ns}:jobs"
    assert Keys("ns", shard_tag("ns", "mail")).waiting("mail") == "{ns|mail}:q:mail:waiting"
    # braces and % of a queue name are escaped: the tag stays whole, names stay apart
    assert shard_tag("ns", "a}b{%") == "ns|a%7Db%7B%25"
    assert shard_tag("ns", "a%7D") != shard_tag("ns", "a}")


# -- the choice is recorded -----------------------------------------------------------------


def test_a_sharded_namespace_refuses_a_plain_broker_and_the_reverse(redis_url: str) -> None:
    sharded_ns, plain_ns = _namespace(), _namespace()

    async def scenario() -> None:
        sharded = ShardedRedisBroker(redis_url + "?shard=queue", sharded_ns)
        await sharded.open()
        await sharded.close()
        plain = RedisBroker(redis_url, sharded_ns)
        with pytest.raises(ConfigurationError, match=r"sharded by queue: open it with "
                                                     r"\?shard=queue"):
            await plain.open()
        await plain.close()
        other = RedisBroker(redis_url, plain_ns)
        await other.open()
        await other.close()
        wrong = ShardedRedisBroker(redis_url + "?shard=queue", plain_ns)
        with pytest.raises(ConfigurationError, match="is not sharded"):
            await wrong.open()
        await wrong.close()

    _run(scenario())


def test_a_sharded_namespace_of_an_older_layout_is_raised_and_a_newer_one_refused(
        redis_url: str) -> None:
    """Its shards move no data between layouts: opening raises the home's mark, so that a
    process of the older version then refuses the namespace; a newer mark is refused."""
    from conveyor.backends.redis.layout import LAYOUT
    from conveyor.errors import NewerStore

    older, newer = _namespace(), _namespace()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set(Keys(older).layout, f"sharded {LAYOUT - 1}")
    client.set(Keys(newer).layout, f"sharded {LAYOUT + 1}")

    async def scenario() -> None:
        broker = ShardedRedisBroker(redis_url + "?shard=queue", older)
        await broker.open()
        await broker.close()
        refused = ShardedRedisBroker(redis_url + "?shard=queue", newer)
        with pytest.raises(NewerStore):
            await refused.open()
        await refused.close()

    try:
        _run(scenario())
        assert client.get(Keys(older).layout) == f"sharded {LAYOUT}"
        assert client.get(Keys(newer).layout) == f"sharded {LAYOUT + 1}"
    finally:
        client.close()


def test_a_blocking_enqueue_is_refused_by_a_sharded_namespace_too(redis_url: str) -> None:
    namespace = _namespace()
    _run(_open_close(ShardedRedisBroker(redis_url + "?shard=queue", namespace)))
    app = Conveyor(url=redis_url, namespace=namespace)
    try:
        with pytest.raises(ConfigurationError, match="sharded by queue"):
            app.enqueue("anything")
    finally:
        app.close()


async def _open_close(broker: ShardedRedisBroker) -> None:
    await broker.open()
    await broker.close()


# -- where the keys go ----------------------------------------------------------------------


class Monitor:
    """The commands a Redis server runs while it is on (MONITOR on a socket of its own,
    read by a thread), each as its list of arguments."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(b"MONITOR\r\n")
        self.commands: list[list[str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.url = url

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if line.startswith(b"+") and b"] " in line:
                    args = line.split(b"] ", 1)[1].decode("utf-8", "replace")
                    self.commands.append([_unquote(a) for a in _ARG.findall(args)])

    def stop(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.execute_command("ECHO", "monitor-end")
        client.close()
        wait_until(lambda: any(c[:2] == ["ECHO", "monitor-end"] for c in self.commands),
                   what="the monitor to catch up")
        self.sock.close()
        self._thread.join(10)


_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def test_an_awaited_enqueue_on_a_new_loop_pings_for_the_home_not_for_each_queue(
        redis_url: str) -> None:
    """A new event loop's first call opens the home store's connection (and pings); the
    queues' stores share that connection and send no PING of their own."""
    app = Conveyor(redis_url + "?shard=queue", namespace=_namespace())

    @app.job
    def work() -> None: ...

    probe = redis.Redis.from_url(redis_url)

    def pings() -> int:
        return int(probe.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

    async def into_queues(queues: str) -> int:
        await work.enqueue_with_async(queue="a")  # opens this loop's connection
        before = pings()
        for queue in queues:
            await work.enqueue_with_async(queue=queue)
        return pings() - before

    try:
        assert _run(into_queues("bc")) == 0  # the queues made on this loop
        assert _run(into_queues("bcd")) == 0  # on a new loop, into queues made before
    finally:
        probe.close()
        app.close()


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _keys_of(command: list[str]) -> list[str]:
    """The keys a script call or a blocking pop names."""
    name = command[0].upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3:3 + int(command[2])]
    if name == "BLPOP":
        return command[1:-1]
    return []


def test_every_script_call_names_the_keys_of_one_slot(redis_url: str) -> None:
    namespace = _namespace()
    queues = ["mail", "report", "odd}name"]

    async def work() -> None:
        broker = ShardedRedisBroker(redis_url + "?shard=queue", namespace, retention=60)
        await broker.open()
        jobs = [_job(q) for q in queues for _ in range(3)]
        await broker.enqueue(jobs, {})
        worker_info = _worker(queues)
        await broker.heartbeat(worker_info, {}, 30)
        claimed = await broker.claim(worker_info.id, queues, 9, 30)
        assert {j.queue for j in claimed} == set(queues)
        beat = await broker.heartbeat(worker_info, {j.id: j.claim for j in claimed}, 30)
        assert not beat.lost
        await broker.settle([Outcome(j.id, worker_info.id, OutcomeKind.SUCCEEDED, 0.0,
                                     result_json="1", claim=j.claim)  # queue unknown
                             for j in claimed])
        await broker.wait_for_work(queues, 0.05)
        await broker.recover_expired(3)
        await broker.promote_scheduled()
        await broker.purge_expired()
        assert {q: c["succeeded"] for q, c in (await broker.counts()).items()} == \
            dict.fromkeys(queues, 3)
        await broker.close()

    monitor = Monitor(redis_url)
    try:
        _run(work())
    finally:
        monitor.stop()
    calls = [c for c in monitor.commands if any(namespace in k for k in _keys_of(c))]
    assert sum(c[0].upper() in ("EVALSHA", "EVAL") for c in calls) >= 10
    assert any(c[0].upper() == "BLPOP" for c in calls)
    tags = set()
    for command in calls:
        keys = _keys_of(command)
        assert len({key_slot(k.encode()) for k in keys}) == 1, command
        tags.add(keys[0][1:keys[0].index("}")])
    assert tags == {namespace, *(shard_tag(namespace, q).split("}")[0] for q in queues)}
    # a queue's keys live in its own slot (one in three for these names, at random)
    every_key = redis.Redis.from_url(redis_url).keys(f"*{namespace}*")
    assert {k.decode().split("}")[0] + "}" for k in every_key} >= \
        {"{" + shard_tag(namespace, "mail") + "}", "{" + shard_tag(namespace, "report") + "}"}


def _worker(queues: list[str]) -> WorkerInfo:
    return WorkerInfo(id=f"w-{new_id()}", host="h", pid=1, queues=queues, concurrency=4,
                      min_concurrency=1, max_concurrency=4, busy=0, processed=0, failed=0,
                      started_at=time.time())


def test_by_id_operations_find_a_job_in_its_queue(redis_url: str) -> None:
    namespace = _namespace()

    async def work() -> None:
        broker = ShardedRedisBroker(redis_url + "?shard=queue", namespace)
        await broker.open()
        first, second = _job("a"), _job("b")
        await broker.enqueue([first, second], {})
        other = ShardedRedisBroker(redis_url + "?shard=queue", namespace)  # knows no queue
        await other.open()
        found = await other.get(second.id)
        assert found is not None and found.queue == "b"
        cancelled = await other.cancel(first.id)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        assert await other.get("no-such-job") is None
        assert await other.delete(first.id)
        assert set(await other.counts()) == {"b"}
        listed = await other.list_jobs(limit=1)
        assert [j.id for j in listed] == [second.id]
        assert await other.list_jobs(limit=1, cursor=second.id) == []
        await other.close()
        await broker.close()

    _run(work())


# -- a real worker --------------------------------------------------------------------------


def test_a_worker_drains_a_sharded_namespace(redis_url: str, tmp_path: Path) -> None:
    import rjobs

    url = redis_url + "?shard=queue"
    rjobs.app.use_url(url)
    rjobs.app.namespace = _namespace()
    queues = ["alpha", "beta", "gamma"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        handles = [h for n, q in enumerate(queues)
                   for h in rjobs.app.enqueue_many(
                       "pause", [(100 * n + i, 0.0) for i in range(20)], queue=q)]
        assert isinstance(rjobs.app.broker, ShardedRedisBroker)
        log = (tmp_path / "worker.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "rjobs:app", "--url", url,
             "--namespace", rjobs.app.namespace, "--queues", ",".join(queues),
             "--processes", "2", "--max-workers", "4"],
            cwd=TESTS, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)

        def done() -> bool:
            counts = rjobs.app.run_sync(rjobs.app.broker.counts())
            return all(counts.get(q, {}).get("succeeded") == 20 for q in queues)

        wait_until(done, timeout=120, what="the worker to drain three queues")
        assert sorted(h.result() for h in handles) == sorted(
            100 * n + i for n in range(len(queues)) for i in range(20))
        workers = rjobs.app.run_sync(rjobs.app.broker.workers())
        assert workers and all(set(w.queues) == set(queues) for w in workers)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        rjobs.app.close()
        rjobs.app._broker = None


# -- the set of queues holds every queue with jobs ------------------------------------------


def _sharded(url: str, namespace: str) -> ShardedRedisBroker:
    return ShardedRedisBroker(url + "?shard=queue", namespace, retention=60)


def test_a_queue_emptied_by_another_process_stays_while_a_writer_trusts_it(
        redis_url: str) -> None:
    """A producer trusts its registration of a queue; an admin deletes the queue's last job
    in between: the producer's next job is still seen by every other process."""
    namespace = _namespace()

    async def work() -> None:
        producer, admin = _sharded(redis_url, namespace), _sharded(redis_url, namespace)
        await producer.open()
        await admin.open()
        first = _job("mail")
        await producer.enqueue([first], {})
        assert await admin.delete(first.id)
        second = _job("mail")
        await producer.enqueue([second], {})  # the producer registers nothing this time
        fresh = _sharded(redis_url, namespace)
        await fresh.open()
        assert "mail" in await fresh._known()
        found = await fresh.get(second.id)
        assert found is not None and found.queue == "mail"
        assert [j.id for j in await fresh.list_jobs()] == [second.id]
        assert (await fresh.counts())["mail"]["queued"] == 1
        cancelled = await fresh.cancel(second.id)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        for broker in (producer, admin, fresh):
            await broker.close()

    _run(work())


def test_a_queue_resumed_between_a_writers_registration_and_its_write_stays(
        redis_url: str) -> None:
    namespace = _namespace()

    async def work() -> None:
        producer, admin = _sharded(redis_url, namespace), _sharded(redis_url, namespace)
        await producer.open()
        await admin.open()
        await admin.set_paused("mail", True)
        job = _job("mail")
        # the producer's enqueue step by step, the admin's resume in between
        await producer._register(["mail"])
        await admin.set_paused("mail", False)
        await producer.shard("mail").enqueue([job], {})
        fresh = _sharded(redis_url, namespace)
        await fresh.open()
        found = await fresh.get(job.id)
        assert found is not None and found.queue == "mail"
        for broker in (producer, admin, fresh):
            await broker.close()

    _run(work())


def test_a_queue_is_forgotten_once_no_other_registration_holds_it(redis_url: str) -> None:
    """The registrations of other processes hold a queue; once they lapse (here: dropped
    as if their time ran out), an empty queue leaves the set, and its shard is dropped."""
    namespace = _namespace()

    async def work() -> None:
        producer, admin = _sharded(redis_url, namespace), _sharded(redis_url, namespace)
        await producer.open()
        await admin.open()
        job = _job("mail")
        await producer.enqueue([job], {})
        assert await admin.delete(job.id)
        assert await admin._known() == ["mail"]
        await admin.home._cmd("delete", admin._registrations("mail"))  # lapsed
        await admin.purge_expired()
        assert await admin._known() == []
        assert "mail" not in admin._shards
        # the emptied queue is forgotten where the same broker registered it and deleted
        # its last job: its own registration does not hold it
        job = _job("solo")
        await admin.enqueue([job], {})
        assert await admin.delete(job.id)
        assert await admin._known() == []
        for broker in (producer, admin):
            await broker.close()

    _run(work())


# -- job ids are unique in the namespace ---------------------------------------------------


def test_an_id_a_caller_chose_is_refused_in_another_queue(redis_url: str) -> None:
    from conveyor.errors import DuplicateJob

    namespace = _namespace()
    app = Conveyor(url=redis_url + "?shard=queue", namespace=namespace)
    try:
        app.job(name="work")(lambda x: x)
        first = app.enqueue_call("work", [1], {}, job_id="order-1", queue="a")
        with pytest.raises(DuplicateJob) as raised:
            app.enqueue_call("work", [2], {}, job_id="order-1", queue="b")
        assert raised.value.job_id == "order-1" and "'a'" in str(raised.value)
        with pytest.raises(DuplicateJob):  # the same queue's store refuses it too
            app.enqueue_call("work", [3], {}, job_id="order-1", queue="a")
        jobs = app.run_sync(app.broker.list_jobs())
        assert [(j.id, j.queue, j.args) for j in jobs] == [(first.id, "a", [1])]
    finally:
        app.close()


def test_an_id_in_two_queues_is_an_error_not_a_guess(redis_url: str) -> None:
    """Two jobs of one id in two queues (written behind the broker's back): operations by
    id raise rather than pick one."""
    from conveyor.errors import DuplicateJob

    namespace = _namespace()

    async def work() -> None:
        broker = _sharded(redis_url, namespace)
        await broker.open()
        one, two = _job("a"), _job("b")
        two.id = one.id
        await broker.enqueue([one], {})
        await broker._register(["b"])
        await broker.shard("b").enqueue([two], {})  # past the check enqueue makes
        other = _sharded(redis_url, namespace)
        await other.open()
        with pytest.raises(DuplicateJob, match="'a' and 'b'"):
            await other.get(one.id)
        with pytest.raises(DuplicateJob):
            await other.cancel(one.id)
        # a worker's calls go on (one queue taken, the trouble logged)
        await other.heartbeat(_worker(["a"]), {one.id: 0}, 30)
        for b in (broker, other):
            await b.close()

    _run(work())


# -- what cannot be done is logged ------------------------------------------------------------


def test_a_settle_of_a_job_in_no_queue_is_logged(redis_url: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    namespace = _namespace()

    async def work() -> None:
        broker = _sharded(redis_url, namespace)
        await broker.open()
        await broker.enqueue([_job("a")], {})
        await broker.settle([Outcome("no-such-job", "w-1", OutcomeKind.SUCCEEDED, 0.0,
                                     result_json="1", claim=1)])
        await broker.close()

    with caplog.at_level("WARNING", logger="conveyor.redis"):
        _run(work())
    assert any("no-such-job" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_a_multi_queue_enqueue_refused_by_a_later_queue_takes_back_the_others(
        redis_url: str) -> None:
    from conveyor.errors import QueueFull

    namespace = _namespace()

    async def work() -> None:
        broker = _sharded(redis_url, namespace)
        await broker.open()
        await broker.set_max_queued("full", 1)
        await broker.enqueue([_job("full")], {})
        stored, refused = _job("first"), _job("full")
        with pytest.raises(QueueFull):
            await broker.enqueue([stored, refused], {})
        assert await broker.get(stored.id) is None
        assert "first" not in await broker.home._cmd("smembers", broker._set)
        await broker.close()

    _run(work())
