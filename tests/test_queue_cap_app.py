"""``Conveyor(max_queues=...)``: the cap on distinct queues, handed to the store, checked
when set, and raised as TooManyQueues by the app's enqueues and by pausing or capping a new
queue (both stores); over HTTP a real ``conveyor serve`` answers 409, and the CLI one line
and exit 1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from clijobs import CLI
from conveyor import Conveyor, TooManyQueues
from conveyor.backends.base import DEFAULT_MAX_QUEUES
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.job import JobRecord, JobState
from http_server import Server


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "3"])
def test_a_bad_cap_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_queues"):
        Conveyor(url="memory://", max_queues=value)


def test_the_cap_reaches_the_store_and_refuses_a_new_queue(url: str) -> None:
    app = Conveyor(url=url, namespace=f"capped{new_id().lower()}", max_queues=2)
    try:
        job = app.job(lambda n: n, name="echo")
        assert app.broker.max_queues == 2
        job.enqueue_with([1], queue="one")
        job.enqueue_with([2], queue="two")
        with pytest.raises(TooManyQueues) as caught:
            job.enqueue_with([3], queue="three")
        assert (caught.value.queue, caught.value.limit) == ("three", 2)
        with pytest.raises(TooManyQueues):  # a bulk call stores none of its jobs
            job.enqueue_many([[5], [6]], queue="four")
        job.enqueue_with([4], queue="one")  # a known queue still accepts
        counts = app.run_sync(app.broker.counts())
        assert set(counts) == {"one", "two"} and counts["one"]["queued"] == 2
    finally:
        app.close()


def test_no_cap_and_the_default() -> None:
    assert Conveyor(url="memory://").max_queues == DEFAULT_MAX_QUEUES
    app = Conveyor(url="memory://", max_queues=None)
    assert app.broker.max_queues is None


def test_the_app_refuses_to_pause_or_cap_a_new_queue_past_the_cap(url: str) -> None:
    app = Conveyor(url=url, namespace=f"settings{new_id().lower()}", max_queues=2)
    try:
        app.job(lambda n: n, name="echo").enqueue_with([1], queue="one")
        app.pause("two")
        with pytest.raises(TooManyQueues) as caught:
            app.pause("three")
        assert (caught.value.queue, caught.value.limit) == ("three", 2)
        with pytest.raises(TooManyQueues):
            app.set_max_queued("four", 10)
        app.resume("three")  # never refused
        app.set_max_queued("one", 10)  # known queues take settings
        assert set(app.queue_settings()) == {"one", "two"}
    finally:
        app.close()


def test_pausing_a_new_queue_past_the_cap_answers_409(tmp_path: Path) -> None:
    server = Server(tmp_path, app="queuecapjobs:app").start()  # max_queues=3
    try:
        for queue in ("a", "b"):
            assert server.client.post(f"/queues/{queue}/pause").status_code == 200
        accepted = server.client.post("/jobs/add", json={"args": [1], "queue": "c"})
        assert accepted.status_code == 202, accepted.text
        for n in range(5):
            refused = server.client.post(f"/queues/new-{n}/pause")
            assert refused.status_code == 409, refused.text
            message = refused.json()["error"]
            assert f"'new-{n}'" in message and "3 queues" in message, message
        assert server.client.post("/queues/new-0/resume").status_code == 200  # never refused
        assert set(server.client.get("/queues").json()["queues"]) == {"a", "b", "c"}
        assert server.client.post("/queues/c/pause").status_code == 200  # a known queue
        assert server.client.post("/queues/a/resume").status_code == 200
        assert server.client.post("/queues/new-0/pause").status_code == 200  # a's place
        assert set(server.client.get("/queues").json()["queues"]) == {"b", "c", "new-0"}
        paths = server.client.get("/openapi.json").json()["paths"]
        assert "409" in paths["/queues/{queue}/pause"]["post"]["responses"]
    finally:
        assert server.stop() == 0, server.output()


def test_the_cli_refuses_a_new_queue_past_the_cap_in_one_line(db_url: str,
                                                              tmp_path: Path) -> None:
    """The CLI's app has the default cap: the store is filled to it first."""
    filler = Conveyor(url=db_url, max_queues=None)
    try:
        now = time.time()
        jobs = [JobRecord(id=new_id(), name="add", queue=f"q{n}", state=JobState.QUEUED,
                          args=[1], kwargs={}, created_at=now, run_at=now)
                for n in range(DEFAULT_MAX_QUEUES - 1)]
        filler.run_sync(filler.broker.enqueue(jobs, {}))
    finally:
        filler.close()
    cli = CLI(db_url, tmp_path)
    assert cli.ok("pause", "last").strip() == "last paused"  # the 1000th queue
    for command in (("pause", "new"), ("cap", "new", "5")):
        err = cli.fail(*command, code=1)
        assert err.strip().splitlines() == [
            "error: cannot create queue 'new': the namespace has 1000 queues already, its "
            "cap (max_queues)"], err
    assert cli.ok("resume", "new").strip() == "new resumed"
    assert cli.ok("cap", "q7", "5").strip() == "q7 capped at 5 waiting"  # a known queue
    queues = cli.json("stats")["queues"]
    assert len(queues) == DEFAULT_MAX_QUEUES and "new" not in queues
