"""The backend contract of known jobs: what workers publish about the jobs they run.

Like the rest of the contract suite these tests use the abstract Broker methods only, so they
run against every backend in ``conftest.FACTORIES``.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor.backends.base import Broker
from conveyor.known import KnownJob, KnownParameter

from .conftest import MakeBroker, Run

#: tolerance when comparing a stored time with one taken around the call
SLACK = 2.0


def job(name: str, *params: KnownParameter, queue: str = "default") -> KnownJob:
    return KnownJob(name, queue, "thread", params)


SEND = job("mail.send", KnownParameter("to"), KnownParameter("subject", default=True),
           KnownParameter("attachments", "VAR_POSITIONAL"),
           KnownParameter("priority", "KEYWORD_ONLY", default=True), queue="mail")
RESIZE = job("images.resize", KnownParameter("width", "POSITIONAL_ONLY"),
             KnownParameter("image", upload=True))


def by_name(broker: Broker, run: Run[Any]) -> dict[str, KnownJob]:
    return {known.name: known for known in run(broker.known_jobs())}


def test_nothing_published_reads_empty(broker: Broker, run: Run[Any]) -> None:
    assert run(broker.known_jobs()) == []


def test_published_jobs_read_back_whole(broker: Broker, run: Run[Any]) -> None:
    before = time.time()
    run(broker.publish_jobs("w1", [SEND, RESIZE]))
    found = run(broker.known_jobs())
    assert [known.name for known in found] == ["images.resize", "mail.send"]
    send = found[1]
    assert (send.queue, send.executor, send.parameters, send.staged) == \
        ("mail", "thread", SEND.parameters, False)
    assert send.worker_id == "w1"
    assert before - SLACK <= send.seen_at <= time.time() + SLACK
    assert found[0].upload_parameter == "image"
    assert found[0].parameters[0].kind == "POSITIONAL_ONLY"


def test_publishing_again_replaces_by_name_and_keeps_the_others(
        broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_jobs("w1", [SEND, RESIZE]))
    first = by_name(broker, run)
    time.sleep(0.05)
    changed = job("mail.send", KnownParameter("to"), queue="urgent")
    run(broker.publish_jobs("w2", [changed]))
    after = by_name(broker, run)
    assert set(after) == {"mail.send", "images.resize"}
    assert after["mail.send"].queue == "urgent"
    assert after["mail.send"].parameters == (KnownParameter("to"),)
    assert after["mail.send"].worker_id == "w2"
    assert after["mail.send"].seen_at > first["mail.send"].seen_at
    assert after["images.resize"] == first["images.resize"]


def test_another_connection_sees_what_was_published(make_broker: MakeBroker,
                                                    run: Run[Any]) -> None:
    one, two = make_broker(), make_broker()
    run(one.publish_jobs("w1", [SEND]))
    assert [known.name for known in run(two.known_jobs())] == ["mail.send"]


def test_publishing_nothing_stores_nothing(broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_jobs("w1", []))
    assert run(broker.known_jobs()) == []


def test_entries_not_published_within_the_retention_are_dropped(
        make_broker: MakeBroker, run: Run[Any]) -> None:
    broker = make_broker(retention=0.05)
    run(broker.publish_jobs("w1", [SEND]))
    time.sleep(0.15)
    run(broker.publish_jobs("w2", [RESIZE]))
    assert [known.name for known in run(broker.known_jobs())] == ["images.resize"]


def test_a_job_without_parameters_round_trips(broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_jobs("w1", [job("tick")]))
    (tick,) = run(broker.known_jobs())
    assert tick.parameters == ()
    assert tick.signature_text == "tick()"
