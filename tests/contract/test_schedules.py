"""The backend contract of schedules: definitions and state kept in the store, and the firing
of ticks through it (:class:`~conveyor.worker.scheduler.Scheduler`) by several workers.

Like the rest of the contract suite these tests run against every backend in
``conftest.FACTORIES``; times given as ``now`` stand for the store's clock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.base import Broker
from conveyor.backends.redis import RedisBroker
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.cron import Timing
from conveyor.job import Outcome, OutcomeKind
from conveyor.metrics import Metrics
from conveyor.schedules import ORPHAN_AFTER, Schedule, ScheduleState
from conveyor.worker.scheduler import Scheduler

from .conftest import MakeBroker, Run, raw_redis

SLACK = 2.0
#: a round instant (a multiple of 3600) so that every=N ticks are easy to name
T0 = 1_800_000_000.0


def every(name: str, seconds: int, **options: Any) -> Schedule:
    return Schedule(name, "tasks.work", Timing.parse(cron=None, every=seconds), **options)


def state(broker: Broker, run: Run[Any], name: str) -> ScheduleState:
    return {s.name: s for s in run(broker.schedules())}[name]


def make_app(*schedules: Schedule) -> Conveyor:
    app = Conveyor("memory://")
    for s in schedules:
        app.schedules[s.name] = s
    return app


def ids(broker: Broker, run: Run[Any]) -> list[str]:
    return sorted(r.id for r in run(broker.list_jobs(limit=1000)))


def test_nothing_published_reads_empty(broker: Broker, run: Run[Any]) -> None:
    assert run(broker.schedules()) == []
    assert run(broker.set_schedule_paused("nope", True)) is None
    assert run(broker.delete_schedule("nope")) is False


def test_the_clock_is_about_now(broker: Broker, run: Run[Any]) -> None:
    assert abs(run(broker.schedule_clock()) - time.time()) < SLACK


def test_published_definitions_read_back_with_a_fresh_state(
        broker: Broker, run: Run[Any]) -> None:
    nightly = Schedule("nightly", "reports.build",
                       Timing.parse(cron="0 3 * * *", every=None, tz="Europe/Berlin"),
                       args=(1, "x"), kwargs={"full": True}, queue="slow", overlap="skip")
    before = time.time()
    states = run(broker.publish_schedules([nightly, every("beat", 5)]))
    assert [s.name for s in states] == ["beat", "nightly"]
    found = state(broker, run, "nightly")
    assert found.definition == nightly.definition()
    assert found.definition["tz"] == "Europe/Berlin"
    assert (found.paused, found.last_tick, found.next_tick, found.last_job) == \
        (False, None, None, None)
    assert before - SLACK <= found.seen_at <= time.time() + SLACK
    assert found.timing_text == "cron 0 3 * * * (Europe/Berlin)"
    assert states[0].timing_text == "every 5s"


def test_publishing_again_replaces_the_definition_and_keeps_the_state(
        broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_schedules([every("beat", 5)]))
    run(broker.advance_schedule("beat", T0, T0 + 5, "cron:beat:1799999995"))
    run(broker.set_schedule_paused("beat", True))
    first = state(broker, run, "beat").seen_at
    time.sleep(0.05)
    again = run(broker.publish_schedules([every("beat", 7)]))[0]
    assert again.definition["every"] == 7
    assert (again.paused, again.last_tick, again.next_tick, again.last_job) == \
        (True, T0, T0 + 5, "cron:beat:1799999995")
    assert again.seen_at > first


def test_last_tick_and_last_job_only_move_forward(broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_schedules([every("beat", 5)]))
    run(broker.advance_schedule("beat", T0 + 10, T0 + 15, "cron:beat:1800000010"))
    run(broker.advance_schedule("beat", T0 + 3, T0 + 5, "cron:beat:1800000000"))
    found = state(broker, run, "beat")
    assert (found.last_tick, found.next_tick, found.last_job) == \
        (T0 + 10, T0 + 15, "cron:beat:1800000010")
    run(broker.advance_schedule("beat", T0 + 12.5, T0 + 15))  # no job: the last one stays
    found = state(broker, run, "beat")
    assert (found.last_tick, found.last_job) == (T0 + 12.5, "cron:beat:1800000010")
    run(broker.advance_schedule("beat", T0 + 21, None, "cron:beat:1800000020"))
    found = state(broker, run, "beat")
    assert (found.last_tick, found.next_tick, found.last_job) == \
        (T0 + 21, None, "cron:beat:1800000020")


def test_advancing_a_schedule_not_stored_stores_nothing(broker: Broker, run: Run[Any]) -> None:
    run(broker.advance_schedule("ghost", T0, T0 + 5, "cron:ghost:1800000000"))
    assert run(broker.schedules()) == []


def test_pause_resume_and_delete(broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_schedules([every("beat", 5), every("other", 9)]))
    paused = run(broker.set_schedule_paused("beat", True))
    assert paused is not None and paused.paused and paused.name == "beat"
    assert state(broker, run, "beat").paused and not state(broker, run, "other").paused
    resumed = run(broker.set_schedule_paused("beat", False))
    assert resumed is not None and not resumed.paused
    assert run(broker.delete_schedule("beat")) is True
    assert run(broker.delete_schedule("beat")) is False
    assert [s.name for s in run(broker.schedules())] == ["other"]


def test_a_schedule_nobody_publishes_is_orphaned(broker: Broker, run: Run[Any]) -> None:
    run(broker.publish_schedules([every("beat", 5)]))
    found = state(broker, run, "beat")
    now = run(broker.schedule_clock())
    assert not found.orphaned(now)
    assert found.orphaned(now + ORPHAN_AFTER + SLACK)
    assert found.to_dict(now + ORPHAN_AFTER + SLACK)["orphaned"] is True


# -- firing through the store -----------------------------------------------------------------


def test_workers_on_two_connections_store_each_tick_once(
        make_broker: MakeBroker, run: Run[Any]) -> None:
    beat = every("beat", 2)
    first, second = make_broker(), make_broker()
    a, b = Scheduler(make_app(beat), first), Scheduler(make_app(beat), second)
    assert run(a.run_once(T0 + 0.5)) == []  # a new schedule starts at the next tick
    assert run(b.run_once(T0 + 0.7)) == []
    fired_a = run(a.run_once(T0 + 4.2))
    fired_b = run(b.run_once(T0 + 4.1))  # behind: its ticks were stored already
    assert fired_a == ["cron:beat:1800000002", "cron:beat:1800000004"]
    assert fired_b == []
    assert run(b.run_once(T0 + 6.3)) == ["cron:beat:1800000006"]
    assert run(a.run_once(T0 + 6.4)) == []
    assert ids(first, run) == ["cron:beat:1800000002", "cron:beat:1800000004",
                               "cron:beat:1800000006"]
    found = state(first, run, "beat")
    assert (found.last_tick, found.next_tick, found.last_job) == \
        (T0 + 6.3, T0 + 8, "cron:beat:1800000006")  # 6.4 found nothing due: no write
    job = run(first.get("cron:beat:1800000006"))
    assert job is not None and (job.name, job.queue) == ("tasks.work", "default")


def test_a_worker_lost_between_storing_and_advancing_loses_nothing(
        broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 1, args=(1,), kwargs={"k": "v"}, queue="ticks")
    scheduler = Scheduler(make_app(beat), broker)
    run(scheduler.run_once(T0))
    run(scheduler.run_once(T0 + 2))
    # the jobs of T0+3 and T0+4 were stored, and the worker died before advancing
    run(broker.enqueue([make_app(beat).build("tasks.work", [1], {"k": "v"},
                                             _opts("cron:beat:1800000003", "ticks"))], {}))
    assert run(scheduler.run_once(T0 + 4.5)) == ["cron:beat:1800000004"]
    assert ids(broker, run) == [f"cron:beat:{int(T0) + n}" for n in (1, 2, 3, 4)]
    job = run(broker.get("cron:beat:1800000004"))
    assert job is not None and (job.args, job.kwargs, job.queue) == ([1], {"k": "v"}, "ticks")


def _opts(job_id: str, queue: str) -> Any:
    from conveyor.options import EnqueueOptions

    return EnqueueOptions(job_id=job_id, queue=queue).checked()


def test_missed_ticks_fire_only_the_latest_within_grace(broker: Broker, run: Run[Any]) -> None:
    loose, strict = every("loose", 60, grace=100), every("strict", 60, grace=30)
    scheduler = Scheduler(make_app(loose, strict), broker)
    run(scheduler.run_once(T0))
    # down for an hour: of the missed ticks only the latest fires when it is within the
    # grace (65 s old: loose, not strict), and the late one (5 s old) fires for both
    assert run(scheduler.run_once(T0 + 3605)) == [
        "cron:loose:1800003540", "cron:loose:1800003600", "cron:strict:1800003600"]
    # down for 45 s: the one missed tick is 45 s old (missed, not late: over 10 s)
    assert run(scheduler.run_once(T0 + 3705)) == ["cron:loose:1800003660"]
    assert state(broker, run, "strict").last_tick == T0 + 3705
    assert len(ids(broker, run)) == 4


def test_overlap_skip_fires_nothing_while_the_last_job_waits_or_runs(
        broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 1, overlap="skip")
    scheduler = Scheduler(make_app(beat), broker)
    run(scheduler.run_once(T0))
    assert run(scheduler.run_once(T0 + 3.5)) == ["cron:beat:1800000001"]  # then 2, 3 skipped
    assert run(scheduler.run_once(T0 + 5)) == []  # still queued
    assert state(broker, run, "beat").last_tick == T0 + 5
    claimed = run(broker.claim("w1", ["default"], 1, 30.0))
    assert [j.id for j in claimed] == ["cron:beat:1800000001"]
    assert run(scheduler.run_once(T0 + 6)) == []  # running
    run(broker.settle([Outcome("cron:beat:1800000001", "w1", OutcomeKind.SUCCEEDED,
                               time.time(), queue="default", claim=claimed[0].claim)]))
    assert run(scheduler.run_once(T0 + 7.2)) == ["cron:beat:1800000007"]
    assert ids(broker, run) == ["cron:beat:1800000001", "cron:beat:1800000007"]


def test_a_paused_schedule_fires_nothing_and_does_not_catch_up(
        broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 10)
    scheduler = Scheduler(make_app(beat), broker)
    run(scheduler.run_once(T0))
    run(broker.set_schedule_paused("beat", True))
    assert run(scheduler.run_once(T0 + 25)) == []
    assert run(scheduler.run_once(T0 + 45)) == []
    assert state(broker, run, "beat").last_tick == T0 + 45
    run(broker.set_schedule_paused("beat", False))
    assert run(scheduler.run_once(T0 + 46)) == []  # the paused ticks stay skipped
    assert run(scheduler.run_once(T0 + 50.5)) == ["cron:beat:1800000050"]


def test_a_deleted_schedule_is_published_again_by_its_workers(
        broker: Broker, run: Run[Any]) -> None:
    scheduler = Scheduler(make_app(every("beat", 10)), broker)
    run(scheduler.run_once(T0))
    assert run(broker.delete_schedule("beat"))
    assert run(scheduler.run_once(T0 + 1)) == []
    assert run(scheduler.run_once(T0 + 2)) == []
    found = state(broker, run, "beat")
    assert found.last_tick == T0 + 2
    assert run(scheduler.run_once(T0 + 10.5)) == ["cron:beat:1800000010"]


@pytest.mark.parametrize("kind", ["cron", "every"])
def test_the_definition_carries_the_timing(broker: Broker, run: Run[Any], kind: str) -> None:
    timing = (Timing.parse(cron="*/5 * * * *", every=None, tz="America/New_York")
              if kind == "cron" else Timing.parse(cron=None, every=30))
    run(broker.publish_schedules([Schedule("s", "tasks.work", timing)]))
    d = state(broker, run, "s").definition
    assert (d["cron"], d["every"], d["tz"]) == (timing.cron, timing.every, timing.tz)


# -- odd stored values, clocks, changed definitions ---------------------------------------------
#: stored values no worker writes (field of the state -> value), as a buggy writer might
ODD: dict[str, Any] = {"record": b"\xff\xfe{", "last_tick": "oops", "next_tick": "1e300",
                       "last_job": "cron:odd:\u00b2", "seen_at": "-5"}


def plant(broker: Broker, name: str, values: dict[str, Any]) -> None:
    """Store ``values`` (state fields: record, paused, last_tick, next_tick, last_job,
    seen_at) for schedule ``name`` as they are, behind the broker's back."""
    if isinstance(broker, SQLiteBroker):
        conn = sqlite3.connect(broker.url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(f"INSERT INTO {broker.ns}_schedules (name, record, seen_at) "
                         "VALUES (?, '{}', 0) ON CONFLICT (name) DO NOTHING", (name,))
            for column, value in values.items():
                conn.execute(f"UPDATE {broker.ns}_schedules SET {column}=? WHERE name=?",
                             (value, name))
        conn.close()
        return
    broker = getattr(broker, "home", broker)  # sharded by queue: schedules are the home's
    assert isinstance(broker, RedisBroker)
    parts = dict(zip(("record", "paused", "last_tick", "next_tick", "last_job", "seen_at"),
                     broker.keys.schedule_block, strict=True))
    client = raw_redis(broker.url)
    for column, value in values.items():
        client.hset(parts[column], name, value)
    client.close()


def test_odd_stored_values_never_break_a_read_or_a_worker(
        broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 1)
    scheduler = Scheduler(make_app(beat), broker)
    run(scheduler.run_once(T0))
    plant(broker, "odd", ODD)
    plant(broker, "words", {"record": '{"job": "x", "args": 5, "every": "x"}'})
    plant(broker, "nan", {"record": '{"job": "x", "args": [NaN]}'})
    found = {s.name: s for s in run(broker.schedules())}
    assert found["odd"].unreadable == ("definition", "last_tick", "next_tick", "seen_at")
    assert (found["odd"].definition, found["odd"].last_tick, found["odd"].next_tick,
            found["odd"].seen_at) == ({}, None, None, 0.0)
    assert found["odd"].to_dict(T0)["last_run"] is None
    assert found["words"].unreadable == ("definition",)
    assert found["words"].timing_text == "?"
    assert (found["nan"].definition, found["nan"].unreadable) == ({}, ("definition",))
    assert found["beat"].unreadable == ()
    plant(broker, "beat", {"last_job": "cron:beat:" + "9" * 30})  # not a tick
    assert run(scheduler.run_once(T0 + 1.5)) == ["cron:beat:1800000001"]
    assert [s.name for s in run(broker.schedules(["beat", "missing"]))] == ["beat"]
    assert state(broker, run, "beat").last_job == "cron:beat:1800000001"


def test_a_worker_skips_a_schedule_whose_last_tick_cannot_be_read(
        broker: Broker, run: Run[Any]) -> None:
    beat, other = every("beat", 1), every("other", 1)
    scheduler = Scheduler(make_app(beat, other), broker)
    run(scheduler.run_once(T0))
    plant(broker, "beat", {"last_tick": "oops"})
    assert run(scheduler.run_once(T0 + 1.5)) == ["cron:other:1800000001"]
    assert "last_tick" in state(broker, run, "beat").unreadable
    # pausing (or resuming) sets it to now again
    resumed = run(broker.set_schedule_paused("beat", False))
    assert resumed is not None and resumed.unreadable == ()
    assert resumed.last_tick is not None and abs(resumed.last_tick - time.time()) < SLACK


def test_a_last_tick_ahead_of_the_clock_is_set_back(broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 1)
    scheduler = Scheduler(make_app(beat), broker)
    run(scheduler.run_once(T0))
    fired = run(scheduler.run_once(T0 + 600))  # a clock ten minutes ahead
    assert fired[-1] == "cron:beat:1800000600"
    assert run(scheduler.run_once(T0 + 1)) == []  # the right clock: set back to T0 + 1
    assert state(broker, run, "beat").last_tick == T0 + 1
    assert run(scheduler.run_once(T0 + 2.5)) == ["cron:beat:1800000002"]
    assert run(broker.rewind_schedule("beat", T0 + 1, T0, None)) is False  # moved on


def test_a_changed_definition_takes_its_next_tick_at_once(
        broker: Broker, run: Run[Any]) -> None:
    yearly = Schedule("s", "tasks.work", Timing.parse(cron="0 0 1 1 *", every=None))
    old = Scheduler(make_app(yearly), broker)
    run(old.run_once(T0))
    run(old.run_once(T0 + 1))
    new = Scheduler(make_app(every("s", 3600)), broker)
    run(new.run_once(T0 + 2))
    assert state(broker, run, "s").next_tick == T0 + 3600


def test_two_versions_side_by_side_fire_their_own_ticks(broker: Broker, run: Run[Any]) -> None:
    minutely = Scheduler(make_app(every("s", 60)), broker)
    shifted = Scheduler(make_app(Schedule("s", "tasks.work", Timing.parse(
        cron="30 * * * * *", every=None))), broker)
    run(minutely.run_once(T0))
    run(shifted.run_once(T0 + 0.5))  # the newer version: its definition is stored
    fired: list[str] = []
    for n in range(1, 181):
        fired += run(minutely.run_once(T0 + n)) + run(shifted.run_once(T0 + n + 0.5))
    assert fired == [f"cron:s:{int(T0) + n}" for n in (30, 60, 90, 120, 150, 180)]
    assert state(broker, run, "s").next_tick == T0 + 210


def test_a_changed_definition_is_warned_about_once(
        broker: Broker, run: Run[Any], caplog: pytest.LogCaptureFixture) -> None:
    old, new = Scheduler(make_app(every("s", 60)), broker), \
        Scheduler(make_app(every("s", 30)), broker)
    run(old.run_once(T0))
    run(new.run_once(T0 + 0.5))  # publishes its own
    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        for n in range(1, 5):
            run(old.run_once(T0 + n))
    assert [r.getMessage() for r in caplog.records if "differs" in r.getMessage()] == [
        "schedule s: the stored definition (every 30s) differs from this worker's "
        "(every 60s): another version of the app runs; each fires its own"]


def test_pause_and_resume_move_the_last_tick_up_to_now(broker: Broker, run: Run[Any]) -> None:
    beat = every("beat", 60)
    scheduler = Scheduler(make_app(beat), broker)
    start = run(broker.schedule_clock())
    run(scheduler.run_once(start - 600))  # its workers stop; ten minutes of ticks pass
    run(broker.set_schedule_paused("beat", True))
    resumed_at = run(broker.schedule_clock())
    run(broker.set_schedule_paused("beat", False))
    fired = run(scheduler.run_once(resumed_at + 0.5))
    assert all(int(job_id.rsplit(":", 1)[1]) > resumed_at for job_id in fired), fired
    assert state(broker, run, "beat").last_tick == resumed_at + 0.5


def test_a_tick_stored_by_another_worker_in_a_full_queue_is_a_duplicate(
        broker: Broker, run: Run[Any]) -> None:
    app = make_app(every("beat", 1))
    app.max_queued = {"default": 1}
    scheduler = Scheduler(app, broker)
    run(scheduler.run_once(T0))
    # another worker stored the tick T0+1 and died before advancing: the queue is full
    run(broker.enqueue([app.build("tasks.work", [], {}, _opts("cron:beat:1800000001",
                                                             "default"))], {}))
    metrics = Metrics()
    scheduler.metrics = metrics
    assert run(scheduler.run_once(T0 + 1.5)) == []
    assert state(broker, run, "beat").last_job == "cron:beat:1800000001"
    assert 'outcome="skipped"' not in metrics.render().decode()


def test_tick_jobs_count_as_enqueued(broker: Broker, run: Run[Any]) -> None:
    app = make_app(every("beat", 1))
    app.metrics = Metrics()
    scheduler = Scheduler(app, broker)
    run(scheduler.run_once(T0))
    run(scheduler.run_once(T0 + 2.5))
    assert 'conveyor_jobs_enqueued_total{name="tasks.work",queue="default"} 2.0' in \
        app.metrics.render().decode()


def test_a_tick_for_a_queue_past_the_namespaces_cap_is_skipped_and_warned_about(
        broker: Broker, run: Run[Any], caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(every("beat", 1, queue="fresh"))
    run(broker.enqueue([app.build("tasks.work", [], {}, _opts("j1", "taken"))], {}))
    broker.max_queues = 1  # "taken" holds the namespace's one queue: "fresh" would be new
    metrics = Metrics()
    scheduler = Scheduler(app, broker, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        assert run(scheduler.run_once(T0)) == []
        assert run(scheduler.run_once(T0 + 1.5)) == []
    assert ids(broker, run) == ["j1"]
    assert "max_queues" in caplog.text and "tick" in caplog.text
    assert 'outcome="skipped"' in metrics.render().decode()
    broker.max_queues = 2  # room again: the next tick is stored
    assert run(scheduler.run_once(T0 + 2.5)) == ["cron:beat:1800000002"]
