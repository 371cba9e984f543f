"""Through Sentinel, a master demoted under a kept connection answers READONLY: the blocking
script runner drops that connection (as redis-py's Sentinel connections do), so the next
call asks the sentinels for the master instead of hitting the demoted node again."""

from __future__ import annotations

import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.backends.redis import RedisBroker, deploy
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from redis_sentinel import SentinelGroup
from redis_server import free_port


def _job() -> JobRecord:
    now = time.time()
    return JobRecord(id=new_id(), name="n", queue="default", state=JobState.QUEUED,
                     args=[], kwargs={}, created_at=now, run_at=now)


def test_a_readonly_reply_drops_the_connection() -> None:
    group = SentinelGroup(replicas=1, sentinels=3).start()
    try:
        url = group.url()
        broker = RedisBroker(url, namespace=f"t{new_id().lower()}")
        scripts = deploy.blocking_scripts(url)
        script, keys, argv, _ = broker._enqueue_call([([_job()], {})])
        assert scripts.call(script, keys, argv) == "ok"
        master = redis.Redis(port=group.master().port)
        # demoted without its clients being killed (a failover would kill them)
        master.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        script, keys, argv, _ = broker._enqueue_call([([_job()], {})])
        with pytest.raises(RedisConnectionError, match="the master is now a replica"):
            scripts.call(script, keys, argv)
        clients = master.client_list()
        held = [c for c in clients if c["cmd"] in ("evalsha", "eval")]
        assert held == [], "the connection to the demoted master was kept"
        scripts.close()
        master.close()
    finally:
        group.remove()
