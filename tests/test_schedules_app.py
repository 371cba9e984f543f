"""Registering schedules (``app.schedule`` and ``@app.job(cron=...)``) and their checks; the
``conveyor schedules`` command; the tick counters of the metrics."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from clijobs import CLI
from conveyor import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.metrics import Metrics
from conveyor.worker.pool import Worker
from conveyor.worker.scheduler import Scheduler

T0 = 1_800_000_000.0


@pytest.fixture
def sapp(app: Conveyor) -> Conveyor:
    @app.job
    def add(a: int, b: int = 0) -> int:
        return a + b

    return app


def test_a_schedule_keeps_its_definition(sapp: Conveyor) -> None:
    s = sapp.schedule("adder", sapp.get_job("add"), every=30, args=(1,), kwargs={"b": 2},
                      queue="slow", overlap="skip", grace=60)
    assert sapp.schedules == {"adder": s}
    assert s.definition() == {"job": "add", "cron": None, "every": 30, "tz": "UTC",
                              "args": [1], "kwargs": {"b": 2}, "queue": "slow",
                              "overlap": "skip", "grace": 60}
    by_name = sapp.schedule("other", "add", cron="*/5 * * * *", tz="Asia/Tokyo", args=(3,))
    assert (by_name.job, by_name.timing.describe()) == ("add", "cron */5 * * * * (Asia/Tokyo)")


@pytest.mark.parametrize(("options", "message"), [
    ({"every": 5}, "missing a required argument: 'a'"),
    ({"every": 5, "args": (1, 2, 3)}, "too many positional arguments"),
    ({"every": 5, "args": (1,), "kwargs": {"c": 1}}, "no parameter named 'c'"),
    ({"args": (1,)}, "exactly one of cron= and every="),
    ({"cron": "* * *", "args": (1,)}, "has 3 fields"),
    ({"cron": "0 3 * * *", "tz": "Mars/Olympus", "args": (1,)}, "unknown time zone"),
    ({"every": 0.5, "args": (1,)}, "whole number of seconds"),
    ({"every": 5, "args": (1,), "overlap": "queue"}, "overlap must be 'allow' or 'skip'"),
    ({"every": 5, "args": (1,), "grace": -1}, "grace must be"),
])
def test_a_bad_schedule_is_refused_at_registration(sapp: Conveyor, options: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        sapp.schedule("s", sapp.get_job("add"), **options)
    assert sapp.schedules == {}


def test_names_are_checked_and_unique(sapp: Conveyor) -> None:
    for bad in ("", "-lead", "has space", "x" * 65, "a/b"):
        with pytest.raises(ConfigurationError, match="schedule name"):
            sapp.schedule(bad, "add", every=5, args=(1,))
    sapp.schedule("once", "add", every=5, args=(1,))
    with pytest.raises(ConfigurationError, match="registered already"):
        sapp.schedule("once", "add", every=9, args=(1,))


def test_a_job_name_not_registered_here_needs_json_arguments(sapp: Conveyor) -> None:
    sapp.schedule("remote", "elsewhere.job", every=5, args=("x",))
    with pytest.raises(ConfigurationError, match="JSON"):
        sapp.schedule("bad", "elsewhere.job", every=5, args=(object(),))


def test_a_job_of_another_app_is_refused(sapp: Conveyor) -> None:
    other = Conveyor("memory://")
    job = other.job(name="theirs")(lambda: None)
    with pytest.raises(ConfigurationError, match="another app"):
        sapp.schedule("s", job, every=5)


def test_the_job_decorator_schedules_a_job_without_arguments(app: Conveyor) -> None:
    @app.job(cron="*/5 * * * *", queue="cron")
    def sweep() -> None:
        pass

    schedule = app.schedules["sweep"]
    assert (schedule.job, schedule.timing.cron, schedule.args, schedule.queue) == \
        ("sweep", "*/5 * * * *", (), None)
    with pytest.raises(ConfigurationError, match="missing a required argument"):
        @app.job(cron="0 * * * *")
        def needs(x: int) -> None:
            pass
    assert "needs" not in app.registry and "needs" not in app.schedules


def test_the_job_decorator_takes_the_time_zone_of_cron(app: Conveyor) -> None:
    @app.job(cron="0 3 * * *", cron_tz="Europe/Berlin")
    def nightly() -> None:
        pass

    assert app.schedules["nightly"].timing.tz == "Europe/Berlin"
    assert app.schedules["nightly"].definition()["tz"] == "Europe/Berlin"
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        @app.job(cron="0 3 * * *", cron_tz="Mars/Olympus")
        def lost() -> None:
            pass
    with pytest.raises(ConfigurationError, match="give cron too"):
        @app.job(cron_tz="Europe/Berlin")
        def untimed() -> None:
            pass


def test_scheduled_jobs_go_to_the_jobs_queue_or_the_schedules(sapp: Conveyor) -> None:
    @sapp.job(queue="cron")
    def sweep() -> None:
        pass

    sapp.schedule("sweeping", sweep, every=10)
    sapp.schedule("adding", "add", every=10, args=(1,), queue="math")
    scheduler = Scheduler(sapp, sapp.broker)
    sapp.run_sync(scheduler.run_once(T0))
    stored = sapp.run_sync(scheduler.run_once(T0 + 10))
    assert stored == ["cron:sweeping:1800000010", "cron:adding:1800000010"]
    queues = {job_id: sapp.run_sync(sapp.broker.get(job_id)).queue  # type: ignore[union-attr]
              for job_id in stored}
    assert queues == {"cron:sweeping:1800000010": "cron", "cron:adding:1800000010": "math"}


def test_the_metrics_count_fired_and_skipped_ticks(sapp: Conveyor) -> None:
    sapp.schedule("adder", "add", every=10, args=(1,), overlap="skip")
    metrics = Metrics()
    worker = Worker(sapp, metrics=metrics)
    sapp.run_sync(worker.maintenance.fire_schedules(T0))
    sapp.run_sync(worker.maintenance.fire_schedules(T0 + 10))  # fires
    sapp.run_sync(worker.maintenance.fire_schedules(T0 + 20))  # the first job still waits
    text = metrics.render().decode()
    assert 'conveyor_schedule_ticks_total{outcome="fired",schedule="adder"} 1.0' in text
    assert 'conveyor_schedule_ticks_total{outcome="skipped",schedule="adder"} 1.0' in text


def test_the_schedules_command(sapp: Conveyor, db_url: str, tmp_path: Any) -> None:
    sapp.schedule("adder", "add", every=10, args=(1,))
    sapp.schedule("nightly", "add", cron="0 3 * * *", tz="Europe/Berlin", args=(2,))
    scheduler = Scheduler(sapp, sapp.broker)
    sapp.run_sync(scheduler.run_once(T0))
    sapp.run_sync(scheduler.run_once(T0 + 10))
    cli = CLI(db_url, tmp_path)
    lines = cli.ok("schedules").splitlines()
    assert lines[0].split("\t") == ["name", "timing", "job", "next run", "last run",
                                    "last job", "paused", "orphaned"]
    adder = lines[1].split("\t")
    assert adder[:3] == ["adder", "every 10s", "add"]
    assert adder[5] == "cron:adder:1800000010 (queued)"
    assert lines[2].split("\t")[:2] == ["nightly", "cron 0 3 * * * (Europe/Berlin)"]
    assert cli.ok("schedules", "pause", "nightly").strip() == "schedule nightly paused"
    listed = {s["name"]: s for s in cli.json("schedules")}
    assert listed["nightly"]["paused"] is True and listed["adder"]["paused"] is False
    assert cli.ok("schedules", "resume", "nightly").strip() == "schedule nightly resumed"
    out = cli.ok("schedules", "run", "nightly")
    job_id = out.split()[-1]
    assert out.startswith("schedule nightly: enqueued job ") and not job_id.startswith("cron:")
    job = sapp.run_sync(sapp.broker.get(job_id))
    assert job is not None and (job.name, job.args) == ("add", [2])
    missing = cli("schedules", "pause", "nope")
    assert missing.returncode == 1 and "no schedule named 'nope'" in missing.stderr
    assert cli("schedules", "run").returncode != 0
    live = cli("schedules", "delete", "adder")  # its worker registered it just now
    assert (live.returncode, live.stdout) == (1, "")
    assert "'adder' is not orphaned" in live.stderr and live.stderr.count("\n") == 1
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:  # no worker for an hour
        conn.execute("UPDATE conveyor_schedules SET seen_at=seen_at-3600 WHERE name='adder'")
    conn.close()
    assert cli.ok("schedules", "delete", "adder").strip() == "schedule adder deleted"
    assert [s["name"] for s in cli.json("schedules")] == ["nightly"]


def test_odd_stored_values_are_listed_as_unreadable(sapp: Conveyor, db_url: str,
                                                    tmp_path: Any) -> None:
    sapp.schedule("adder", "add", every=10, args=(1,))
    sapp.run_sync(Scheduler(sapp, sapp.broker).run_once(T0))
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        conn.execute("INSERT INTO conveyor_schedules (name, record, last_tick, next_tick, "
                     "last_job, seen_at) VALUES ('odd', X'FFFE', 'oops', 1e300, "
                     "'cron:odd:\u00b2', 'soon')")
    conn.close()
    cli = CLI(db_url, tmp_path)
    odd = cli.ok("schedules").splitlines()[2].split("\t")
    assert odd[:5] == ["odd", "?", "?", "?", "-"]
    listed = {s["name"]: s for s in cli.json("schedules")}
    assert listed["odd"]["unreadable"] == ["definition", "last_tick", "next_tick", "seen_at"]
    assert listed["adder"]["unreadable"] == []
    refused = cli("schedules", "run", "odd")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "its stored definition cannot be read" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_the_next_run_shown_follows_the_clock_when_no_worker_moved_it_on() -> None:
    """A next tick stored long ago (no worker ran the schedule since: all stopped, or it was
    paused and resumed meanwhile) is shown as the timing's next tick after now; an
    orphaned schedule, which never fires, shows none; an odd definition, what is stored."""
    from conveyor.schedules import ScheduleState

    now = 1_800_000_030.0
    state = ScheduleState("often", {"job": "noop", "cron": None, "every": 60},
                          next_tick=1_700_000_040.0, seen_at=now)
    assert state.next_run(now) == 1_800_000_060.0
    assert state.to_dict(now)["next_run"] == "2027-01-15T08:01:00Z"
    ahead = ScheduleState("often", state.definition, next_tick=now + 5, seen_at=now)
    assert ahead.next_run(now) == now + 5  # stored and still to come: as stored
    due = ScheduleState("often", state.definition, next_tick=now - 1, seen_at=now)
    assert due.next_run(now) == now - 1  # due, about to fire: as stored
    orphan = ScheduleState("often", state.definition, next_tick=now + 5, seen_at=now - 3600)
    assert orphan.next_run(now) is None
    odd = ScheduleState("odd", {"job": "noop", "cron": 5}, next_tick=1.0, seen_at=now)
    assert odd.next_run(now) == 1.0
    paused = ScheduleState("often", state.definition, paused=True, next_tick=now + 5,
                           seen_at=now)
    assert paused.next_run(now) is None  # it fires nothing until resumed
    assert paused.to_dict(now)["next_run"] is None
