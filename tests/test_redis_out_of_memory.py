"""A Redis at its memory limit (``maxmemory`` with ``noeviction``: every write refused, and
every command of a transaction, reads too) is trouble that passes, as an unreachable one
is: producers wait it out and then raise ``StoreUnavailable`` saying so, and a worker's
outcomes wait until memory returns instead of being given up, which would let their jobs'
leases run them again. The server is real, its limit reached by filling it."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobContext, JobState, PermanentError, StoreUnavailable
from conveyor.testing import WorkerThread
from polling import wait_until
from redis_server import RedisServer

redis = pytest.importorskip("redis")

#: how many times each job began, by id (the worker runs in this process)
RUNS: Counter[str] = Counter()
#: lets the jobs end once the server is full
FULL = threading.Event()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    started = RedisServer(tmp_path / "redis", extra=["--appendonly", "no"]).start()
    yield started
    started.stop()


def fill(url: str) -> None:
    """Set the server's limit below what it holds (a few filler keys first, so that the
    limit stays well above nothing): every write is refused until it is raised again."""
    with redis.Redis.from_url(url) as raw:
        raw.mset({f"filler:{n}": b"x" * 16384 for n in range(64)})
        used = int(raw.info("memory")["used_memory"])
        raw.config_set("maxmemory", used - 512 * 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            raw.set("one-more", b"x")


def test_a_redis_out_of_memory_is_waited_out_and_no_outcome_is_given_up(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor(url=server.url, namespace="oom", store_timeout=1.0, lease=6.0)

    @app.job(retries=0)
    def ends(ctx: JobContext, fails: bool) -> str:
        RUNS[ctx.id] += 1
        FULL.wait(30)
        time.sleep(0.2)  # (the outcome meets the full server)
        if fails:
            raise PermanentError("failed for good")
        return "done"

    handles = [ends.enqueue(n % 2 == 0) for n in range(6)]
    worker = WorkerThread(app, max_workers=8)
    with caplog.at_level(logging.WARNING, logger="conveyor"):
        worker.start()
        try:
            wait_until(lambda: all(h.info().state == JobState.RUNNING for h in handles),
                       timeout=30, what="every job to start")
            fill(server.url)
            FULL.set()
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as refused:
                ends.enqueue(True)
            assert "Redis is out of memory" in str(refused.value), refused.value
            assert time.monotonic() - began >= 0.9  # waited for the store's timeout
            time.sleep(3)  # the outcomes meet the full server longer than a few tries
            with redis.Redis.from_url(server.url) as raw:
                raw.config_set("maxmemory", 0)
            infos = [wait_until(lambda h=h: (r := h.info()).is_final and r, timeout=30,
                                what="the job to end") for h in handles]
            time.sleep(6.5)  # a lease: an outcome given up would have run its job again
        finally:
            worker.stop()
            app.close()
    assert [i.state for i in infos] == [JobState.DEAD, JobState.SUCCEEDED] * 3, infos
    assert [i.attempts for i in infos] == [1] * 6, infos
    assert [RUNS[h.id] for h in handles] == [1] * 6, RUNS
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "gave up recording" in m], messages
    # one outage, logged once: reads (outside transactions) that work meanwhile do not end it
    lost = [m for m in messages if m.startswith("cannot reach the store")]
    assert len(lost) == 1 and "Redis is out of memory" in lost[0], messages
