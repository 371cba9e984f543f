"""Cron schedules across daylight-saving changes, in two time zones, through the worker's
maintenance (``Maintenance.fire_schedules``) with a fake clock stepped over the change: a
local time the clock skips fires nothing that day, a repeated one fires once, and an hourly
expression fires in both copies of the repeated hour. Long steps go through the missed-tick
path; steps shorter than the late window through the normal one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.cron import LATE
from conveyor.worker.pool import Worker

#: seconds between two rounds of the fake clock (at most one tick of these schedules each)
STEP = 240
#: a step shorter than the late window (``conveyor.cron.LATE``): each tick fires on time
SHORT_STEP = 5


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fired(tmp_path: Path, cron: str, tz: str, start: str, end: str,
          step: float = STEP) -> list[str]:
    """The ticks (UTC, ISO 8601) a worker fires for ``cron`` in ``tz`` with its clock
    stepped from ``start`` to ``end`` (UTC) by ``step`` seconds; each tick must fire in
    the first round at or after it when ``step`` is shorter than the late window."""
    app = Conveyor(url=f"sqlite:///{tmp_path / 'dst.db'}")
    app.job(name="work")(lambda: None)
    app.schedule("dst", "work", cron=cron, tz=tz)
    worker = Worker(app)
    stored: list[str] = []
    try:
        now, until = utc(start).timestamp(), utc(end).timestamp()
        while now <= until:
            this_round = app.run_sync(worker.maintenance.fire_schedules(now))
            if step < LATE:
                assert all(now - step < int(i.rsplit(":", 1)[-1]) <= now for i in this_round)
            stored += this_round
            now += step
        in_store = sorted(r.id for r in app.run_sync(app.broker.list_jobs(limit=1000)))
    finally:
        app.close()
    assert sorted(stored) == in_store
    return [datetime.fromtimestamp(int(i.rsplit(":", 1)[-1]), UTC).isoformat()[:16]
            for i in sorted(stored)]


@pytest.mark.parametrize(("cron", "tz", "start", "end", "expected"), [
    # Berlin springs forward on 29 March 2026 at 02:00: 02:30 does not exist that day
    ("30 2 * * *", "Europe/Berlin", "2026-03-27T23:00", "2026-03-30T03:00",
     ["2026-03-28T01:30", "2026-03-30T00:30"]),
    # and falls back on 25 October at 03:00: 02:30 happens twice and fires once, the first
    ("30 2 * * *", "Europe/Berlin", "2026-10-23T23:00", "2026-10-26T03:00",
     ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
    # New York springs forward on 8 March 2026 at 02:00
    ("30 2 * * *", "America/New_York", "2026-03-07T06:00", "2026-03-09T09:00",
     ["2026-03-07T07:30", "2026-03-09T06:30"]),
    # and falls back on 1 November at 02:00: 01:30 happens twice and fires once
    ("30 1 * * *", "America/New_York", "2026-10-31T04:00", "2026-11-02T09:00",
     ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"]),
])
def test_a_daily_time_around_the_changes(tmp_path: Path, cron: str, tz: str, start: str,
                                          end: str, expected: list[str]) -> None:
    assert fired(tmp_path, cron, tz, start, end) == expected


def test_an_hourly_schedule_fires_in_both_copies_of_the_repeated_hour(tmp_path: Path) -> None:
    # New York, 1 November 2026: 01:00 EDT (05:00 UTC) and 01:00 EST (06:00 UTC)
    assert fired(tmp_path, "0 * * * *", "America/New_York", "2026-11-01T03:50",
                 "2026-11-01T08:30") == [
        "2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00",
        "2026-11-01T08:00"]


def test_a_berlin_hourly_schedule_skips_nothing_when_the_clock_springs(tmp_path: Path) -> None:
    # 29 March 2026: local 01:00 CET, then 03:00 CEST one hour later: no hour is lost
    assert fired(tmp_path, "0 * * * *", "Europe/Berlin", "2026-03-28T23:50",
                 "2026-03-29T02:10") == [
        "2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"]


@pytest.mark.parametrize(("tz", "start", "end", "expected"), [
    # New York falls back at 06:00 UTC: 01:00 EDT, then 01:00 EST one hour later
    ("America/New_York", "2026-11-01T04:59", "2026-11-01T06:01",
     ["2026-11-01T05:00", "2026-11-01T06:00"]),
    # Berlin springs forward at 01:00 UTC: 02:00 CET is 03:00 CEST
    ("Europe/Berlin", "2026-03-28T23:59", "2026-03-29T01:01",
     ["2026-03-29T00:00", "2026-03-29T01:00"]),
])
def test_short_steps_over_the_change_fire_each_tick_on_time(
        tmp_path: Path, tz: str, start: str, end: str, expected: list[str]) -> None:
    assert fired(tmp_path, "0 * * * *", tz, start, end, step=SHORT_STEP) == expected
