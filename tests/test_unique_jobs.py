"""Unique jobs through the app: derived keys, deduplicated handles, on_conflict, eager mode,
metrics, and many producers at once on real stores (SQLite file and Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.errors import DuplicateJob, InvalidArguments
from conveyor.ids import new_id
from conveyor.job import JobState
from conveyor.metrics import Metrics
from conveyor.unique import canonical_call, derived_key
from redis_server import shared_redis_url

PRODUCERS = 32


@pytest.fixture(params=["sqlite", "redis"])
def store_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    """An app on a real store of each kind, with a unique job ``sync`` and a plain ``work``."""
    if request.param == "sqlite":
        app = Conveyor(f"sqlite:///{tmp_path / 'unique.db'}")
    else:
        app = Conveyor(shared_redis_url(), namespace=f"t{new_id().lower()}")

    @app.job(unique=True)
    def sync(user: int, full: bool = False) -> None: ...

    @app.job
    def work(n: int) -> None: ...

    yield app
    app.close()


def test_a_derived_key_is_the_name_and_the_digest_of_the_canonical_call() -> None:
    text = canonical_call([1, "é"], {"b": {"z": 1, "a": 2}, "a": None})
    assert text == '[[1,"é"],{"a":null,"b":{"a":2,"z":1}}]'
    assert json.loads(text) == [[1, "é"], {"a": None, "b": {"a": 2, "z": 1}}]
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert derived_key("sync", [1, "é"], {"b": {"z": 1, "a": 2}, "a": None}) == f"sync:{digest}"


def test_unique_job_records_carry_the_derived_key(store_app: Conveyor) -> None:
    record = store_app.build("sync", [42], {"full": True})
    sync_fn = store_app.get_job("sync")
    bound = hashlib.sha256(b'{"full":true,"user":42}').hexdigest()
    assert record.unique_key == derived_key("sync", [42], {"full": True},
                                            sync_fn.signature) == f"sync:{bound}"
    # the call's shape does not matter: bound to the parameters, defaults applied
    same = [store_app.build("sync", args, kwargs).unique_key
            for args, kwargs in (([42, True], {}), ([], {"user": 42, "full": True}))]
    assert same == [record.unique_key] * 2
    default = hashlib.sha256(b'{"full":false,"user":42}').hexdigest()
    assert store_app.build("sync", [42], {}).unique_key == f"sync:{default}" == \
        store_app.build("sync", [], {"user": 42, "full": False}).unique_key
    assert record.unique_until is None
    plain = store_app.build("work", [1], {})
    assert plain.unique_key is None
    sync = store_app.get_job("sync")
    held = sync.enqueue_with([42], {}, unique_key="mine", unique_for=30)
    info = held.info()
    assert info.state is JobState.QUEUED


def test_a_unique_job_dedups_the_same_call(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")
    first = sync.enqueue(42, full=True)
    again = sync.enqueue(42, full=True)
    other = sync.enqueue(43, full=True)
    assert not first.deduplicated and again.deduplicated and not other.deduplicated
    assert again.id == first.id and other.id != first.id
    assert len(store_app.run_sync(store_app.broker.list_jobs())) == 2


def test_an_explicit_key_dedups_across_jobs(store_app: Conveyor) -> None:
    work = store_app.get_job("work")
    first = work.enqueue_with([1], unique_key="sync:user:42")
    again = store_app.get_job("sync").enqueue_with([2], unique_key="sync:user:42")
    assert again.deduplicated and again.id == first.id


def test_on_conflict_raise_names_the_holder(store_app: Conveyor) -> None:
    work = store_app.get_job("work")
    first = work.enqueue_with([1], unique_key="k")
    with pytest.raises(DuplicateJob) as info:
        work.enqueue_with([1], unique_key="k", on_conflict="raise")
    assert info.value.job_id == first.id
    with pytest.raises(DuplicateJob):
        store_app.run_sync(work.enqueue_with_async([1], unique_key="k", on_conflict="raise"))
    assert len(store_app.run_sync(store_app.broker.list_jobs())) == 1


def test_a_cancelled_holder_frees_the_key(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")
    first = sync.enqueue(7)
    store_app.cancel(first.id)
    second = sync.enqueue(7)
    assert not second.deduplicated and second.id != first.id


def test_wrong_unique_options_are_refused(store_app: Conveyor) -> None:
    work = store_app.get_job("work")
    with pytest.raises(InvalidArguments, match="unique_for needs a unique_key"):
        work.enqueue_with([1], unique_for=10)
    with pytest.raises(InvalidArguments, match="single enqueues"):
        store_app.enqueue_many("work", [(1,)], unique_key="k", on_conflict="raise")
    with pytest.raises(InvalidArguments, match="unique_for"):
        work.enqueue_with([1], unique_key="k", unique_for=0)


def test_bulk_enqueue_reports_per_item(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")
    held = sync.enqueue(1)
    handles = store_app.enqueue_many("sync", [(1,), (2,), (3,), (2,)])
    assert [h.deduplicated for h in handles] == [True, False, False, True]
    assert handles[0].id == held.id and handles[3].id == handles[1].id
    assert len(store_app.run_sync(store_app.broker.list_jobs())) == 3


def test_a_deduplicated_enqueue_is_not_counted(store_app: Conveyor) -> None:
    store_app.metrics = Metrics()
    sync = store_app.get_job("sync")
    sync.enqueue(1)
    sync.enqueue(1)
    store_app.enqueue_many("sync", [(1,), (2,), (2,)])
    samples = {(s.name, s.labels.get("name")): s.value
               for f in text_string_to_metric_families(store_app.metrics.render().decode())
               for s in f.samples}
    assert samples[("conveyor_jobs_enqueued_total", "sync")] == 2
    assert samples[("conveyor_jobs_deduplicated_total", "sync")] == 3


def test_a_job_shows_its_unique_key(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")
    keyed = sync.enqueue_with([7], unique_key="sync:user:7").info()
    assert keyed.unique_key == "sync:user:7" and keyed.to_dict()["unique_key"] == "sync:user:7"
    derived = sync.enqueue(8).info()  # @app.job(unique=True): the key is derived
    assert derived.unique_key is not None and derived.unique_key.startswith("sync:")
    assert store_app.enqueue_call("sync", [9], {}, force=True,
                                  unique_key=None).info().unique_key is not None


def test_threads_enqueueing_one_key_store_one_job(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")
    store_app.run_sync(store_app.broker.open())
    with ThreadPoolExecutor(PRODUCERS) as pool:
        handles = list(pool.map(lambda _: sync.enqueue(42), range(PRODUCERS)))
    assert sum(not h.deduplicated for h in handles) == 1
    assert len({h.id for h in handles}) == 1
    assert [j.id for j in store_app.run_sync(store_app.broker.list_jobs())] == [handles[0].id]


def test_async_producers_on_one_loop_store_one_job(store_app: Conveyor) -> None:
    sync = store_app.get_job("sync")

    async def at_once() -> list[Any]:
        return list(await asyncio.gather(*(sync.enqueue_with_async([42])
                                           for _ in range(PRODUCERS))))

    handles = store_app.run_sync(at_once())
    assert sum(not h.deduplicated for h in handles) == 1
    assert len({h.id for h in handles}) == 1
    assert len(store_app.run_sync(store_app.broker.list_jobs())) == 1


def test_eager_mode_runs_a_deduplicated_job_once(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'eager.db'}")
    ran: list[int] = []

    @app.job(unique=True)
    def count(n: int) -> int:
        ran.append(n)
        return n

    with app.testing():
        handles = app.enqueue_many("count", [(1,), (1,), (2,)])
        assert [h.deduplicated for h in handles] == [False, True, False]
        assert handles[1].id == handles[0].id
        assert handles[1].result() == 1
        assert sorted(ran) == [1, 2]
        # the first job is final: its key is free again
        assert not count.enqueue(1).deduplicated
        assert sorted(ran) == [1, 1, 2]
    app.close()


@pytest.mark.parametrize("bulk", [False, True])
def test_a_keyed_enqueue_sent_again_after_a_lost_reply_is_stored(bulk: bool) -> None:
    """Redis: a call whose reply was lost is sent again and finds its own job holding the
    key; that is the first call's success, not a deduplication (a first attempt finding a
    holder is one)."""
    from conveyor.backends.redis import RedisBroker
    from conveyor.backends.redis.client import BlockingScripts

    broker = RedisBroker(shared_redis_url(), namespace=f"t{new_id().lower()}")
    app = Conveyor("memory://")
    jobs = [app.build("n", [n], {}) for n in range(2 if bulk else 1)]
    for job in jobs:
        job.unique_key = f"key-{job.args[0]}"
    script, keys, argv, orders = broker._enqueue_call([(jobs, {})])
    assert script == ("enqueue" if bulk else "enqueue_one")
    scripts = BlockingScripts(shared_redis_url())
    try:
        scripts.call(script, keys, argv)
        reply = scripts.call(script, keys, argv)  # sent again
    finally:
        scripts.close()
    first = reply if isinstance(reply, str) else reply[0]
    # the id is met before the key: a retry finds its own job even if the key moved on
    assert (first if isinstance(first, str) else first[0]) == f"same {jobs[0].id}"
    assert broker._segment_result(first, 2, jobs, orders[0]) == [None] * len(jobs)
    assert isinstance(broker._segment_result(first, 1, jobs, orders[0]), DuplicateJob)
    app.close()
