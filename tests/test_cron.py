"""Schedule timing: cron and interval ticks, daylight-saving rules, the missed-tick policy."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from conveyor.cron import (
    LATE,
    MAX_COUNTED,
    SCHEDULE_NAME,
    Timing,
    due_ticks,
    tick_job_id,
)
from conveyor.errors import ConfigurationError
from conveyor.ids import is_acceptable_id

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def at(iso: str) -> int:
    """An instant written with its UTC offset, as whole seconds since the epoch."""
    return int(datetime.fromisoformat(iso).timestamp())


def day_start(tz: str, day: str) -> int:
    """Local midnight of ``day`` in ``tz`` (midnight is unambiguous in these zones)."""
    return int(datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(tz)).timestamp())


def local(ticks: list[int], tz: str) -> list[str]:
    """Ticks as local ISO times with their offsets, for readable comparisons."""
    return [datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat() for t in ticks]


def cron(expr: str, tz: str = "UTC") -> Timing:
    return Timing.parse(cron=expr, every=None, tz=tz)


def every(seconds: float) -> Timing:
    return Timing.parse(cron=None, every=seconds, tz="UTC")


# -- parsing ------------------------------------------------------------------------------


def test_five_fields_fire_at_second_zero() -> None:
    timing = cron("*/5 * * * *", BERLIN)
    start = at("2026-06-01T10:02:17+02:00")
    assert local(timing.ticks_between(start, start + 900), BERLIN) == [
        "2026-06-01T10:05:00+02:00",
        "2026-06-01T10:10:00+02:00",
        "2026-06-01T10:15:00+02:00",
    ]
    assert timing.describe() == "cron */5 * * * * (Europe/Berlin)"


def test_six_fields_take_seconds_first() -> None:
    start = at("2026-06-01T10:00:03+00:00")
    assert cron("*/5 * * * * *").ticks_between(start, start + 12) == [
        start + 2,
        start + 7,
        start + 12,
    ]
    assert local(cron("0 * * * * *").ticks_between(start, start + 120), "UTC") == [
        "2026-06-01T10:01:00+00:00",
        "2026-06-01T10:02:00+00:00",
    ]
    assert cron("30 15 10 * * *").next_after(start) == at("2026-06-01T10:15:30+00:00")


def test_expression_whitespace_is_normalised() -> None:
    timing = cron("  0   9 * *\tMON-FRI ")
    assert timing.cron == "0 9 * * MON-FRI"
    assert timing == cron("0 9 * * MON-FRI")
    assert timing.describe() == "cron 0 9 * * MON-FRI (UTC)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "", "every": None}, "has 0 fields"),
        ({"cron": "* * * *", "every": None}, "has 4 fields; expected 5 fields"),
        ({"cron": "* * * * * * *", "every": None}, "has 7 fields"),
        ({"cron": "61 * * * *", "every": None}, "invalid: bad minute field"),
        ({"cron": "* 24 * * *", "every": None}, "invalid: bad hour field"),
        ({"cron": "*/0 * * * *", "every": None}, "invalid: bad minute field"),
        ({"cron": "60 * * * * *", "every": None}, "invalid: bad second field"),
        ({"cron": "0 0 31 2 *", "every": None}, "invalid: bad day-of-month field"),
        ({"cron": "0 0 * * FUNDAY", "every": None}, "invalid: bad day-of-week field"),
        ({"cron": "* * */20 * 1L", "every": None}, "never matches"),
        ({"cron": 5, "every": None}, "cron must be a string"),
        ({"cron": "* * * * *", "every": 60}, "exactly one of cron= and every="),
        ({"cron": None, "every": None}, "exactly one of cron= and every="),
        ({"cron": None, "every": 0}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": 0.5}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": 1.5}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": float("nan")}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": -60}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": 31536001}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": 10**30}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": 1e300}, "whole number of seconds from 1 to 31536000"),
        ({"cron": None, "every": True}, "must be a number of seconds"),
        ({"cron": None, "every": "60"}, "must be a number of seconds"),
        ({"cron": "* * * * *", "every": None, "tz": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"cron": "* * * * *", "every": None, "tz": ""}, "unknown time zone"),
        ({"cron": "* * * * *", "every": None, "tz": "../etc/passwd"}, "unknown time zone"),
        ({"cron": None, "every": 60, "tz": "CET+1"}, "unknown time zone"),
    ],
)
def test_bad_timings_raise_one_clear_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Timing.parse(**kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="whole number"):
        Timing(cron=None, every=0)
    with pytest.raises(ConfigurationError, match="bad minute"):
        Timing(cron="99 * * * *", every=None)


# -- every=N ------------------------------------------------------------------------------


def test_every_ticks_are_multiples_of_n_since_the_epoch() -> None:
    timing = every(30)
    assert timing.every == 30 and timing.describe() == "every 30s"
    assert timing.next_after(1000) == 1020
    assert timing.next_after(1019.999) == 1020
    assert timing.next_after(1020) == 1050
    assert timing.ticks_between(1000, 1100) == [1020, 1050, 1080]
    assert every(7).ticks_between(0, 30) == [7, 14, 21, 28]
    assert every(60.0).every == 60


def test_every_ignores_the_time_zone() -> None:
    berlin = Timing.parse(cron=None, every=3600, tz=BERLIN)
    start = day_start(BERLIN, "2026-10-25")
    ticks = berlin.ticks_between(start, start + 86400)
    assert ticks == every(3600).ticks_between(start, start + 86400)
    assert all(t % 3600 == 0 for t in ticks) and len(ticks) == 24
    assert berlin.describe() == "every 3600s"


# -- ticks_between ------------------------------------------------------------------------


@pytest.mark.parametrize("timing", [every(60), cron("* * * * *", BERLIN)], ids=["every", "cron"])
def test_ticks_between_is_half_open_ascending_and_keeps_the_latest(timing: Timing) -> None:
    base = at("2026-06-01T00:00:00+00:00")
    assert timing.ticks_between(base, base + 180) == [base + 60, base + 120, base + 180]
    assert timing.ticks_between(base - 0.5, base + 179.9) == [base, base + 60, base + 120]
    assert timing.ticks_between(base, base + 600, limit=2) == [base + 540, base + 600]
    assert timing.ticks_between(base, base + 59) == []
    assert timing.ticks_between(base + 60, base) == []
    assert timing.count_between(base, base + 600) == 10
    assert timing.count_between(base, base + 600, limit=4) == 4
    with pytest.raises(ValueError):
        timing.ticks_between(base, base + 60, limit=0)


@pytest.mark.parametrize(
    ("expr", "tz", "day"),
    [
        ("30 2 * * *", BERLIN, "2026-03-29"),
        ("30 2 * * *", BERLIN, "2026-10-25"),
        ("*/20 * * * *", BERLIN, "2026-10-25"),
        ("*/10 2 * * *", BERLIN, "2026-10-25"),
        ("0 */2 * * *", BERLIN, "2026-03-29"),
        ("30 1 * * *", NEW_YORK, "2026-11-01"),
        ("15 * * * *", NEW_YORK, "2026-11-01"),
        ("*/10 1-2 * * *", NEW_YORK, "2026-11-01"),
        ("*/30 * * * *", NEW_YORK, "2026-03-08"),
        ("0 */20 * * * *", NEW_YORK, "2026-03-08"),
    ],
)
def test_stepping_forward_and_listing_agree_across_transitions(
    expr: str, tz: str, day: str
) -> None:
    timing = cron(expr, tz)
    start = day_start(tz, day) - 86400
    until = start + 3 * 86400
    stepped = [timing.next_after(start)]
    while (following := timing.next_after(stepped[-1])) <= until:
        stepped.append(following)
    listed = timing.ticks_between(start, until)
    assert listed == stepped
    assert timing.ticks_between(start, until, limit=3) == stepped[-3:]
    assert timing.count_between(start, until) == len(stepped)
    # starting in the middle of the day lands on the same ticks
    for middle in range(start, stepped[-1], 1799):
        assert timing.next_after(middle) == min(t for t in stepped if t > middle)


# -- daylight saving time -----------------------------------------------------------------


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 30 2 * * *"])
def test_berlin_spring_forward_skips_the_missing_time(expr: str) -> None:
    timing = cron(expr, BERLIN)
    start = day_start(BERLIN, "2026-03-28")
    assert local(timing.ticks_between(start, start + 3 * 86400), BERLIN) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-30T02:30:00+02:00",
    ]


@pytest.mark.parametrize("expr", ["30 2 * * *", "0 30 2 * * *"])
def test_berlin_fall_back_fires_the_repeated_time_once(expr: str) -> None:
    timing = cron(expr, BERLIN)
    start = day_start(BERLIN, "2026-10-24")
    assert local(timing.ticks_between(start, start + 3 * 86400), BERLIN) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # asked from inside the repeated hour, the next tick is the next day's
    assert timing.next_after(at("2026-10-25T02:10:00+01:00")) == at("2026-10-26T02:30:00+01:00")


def test_new_york_spring_forward_skips_the_missing_time() -> None:
    timing = cron("30 2 * * *", NEW_YORK)
    start = day_start(NEW_YORK, "2026-03-07")
    assert local(timing.ticks_between(start, start + 3 * 86400), NEW_YORK) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_new_york_fall_back_fires_the_repeated_time_once() -> None:
    timing = cron("30 1 * * *", NEW_YORK)
    start = day_start(NEW_YORK, "2026-10-31")
    assert local(timing.ticks_between(start, start + 3 * 86400), NEW_YORK) == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


@pytest.mark.parametrize(
    ("tz", "fall_day", "repeated"), [(BERLIN, "2026-10-25", 2), (NEW_YORK, "2026-11-01", 1)]
)
def test_hourly_fires_once_per_real_hour_through_fall_back(
    tz: str, fall_day: str, repeated: int
) -> None:
    timing = cron("0 * * * *", tz)
    start = day_start(tz, fall_day)
    ticks = timing.ticks_between(start - 1, start + 25 * 3600 - 1)  # the 25-hour local day
    assert len(ticks) == 25
    assert all(b - a == 3600 for a, b in pairwise(ticks))
    shown = local(ticks, tz)
    assert sum(f"T0{repeated}:00:00" in s for s in shown) == 2  # both copies of the hour


@pytest.mark.parametrize(
    ("tz", "spring_day", "missing"), [(BERLIN, "2026-03-29", 2), (NEW_YORK, "2026-03-08", 2)]
)
def test_hourly_fires_once_per_real_hour_through_spring_forward(
    tz: str, spring_day: str, missing: int
) -> None:
    timing = cron("0 * * * *", tz)
    start = day_start(tz, spring_day)
    ticks = timing.ticks_between(start - 1, start + 23 * 3600 - 1)  # the 23-hour local day
    assert len(ticks) == 23
    assert all(b - a == 3600 for a, b in pairwise(ticks))
    assert not any(f"T0{missing}:" in s for s in local(ticks, tz))


def test_frequent_expressions_follow_real_time_through_fall_back() -> None:
    timing = cron("*/15 * * * *", BERLIN)
    start = at("2026-10-25T01:00:00+02:00")
    ticks = timing.ticks_between(start, start + 4 * 3600)
    assert len(ticks) == 16
    assert all(b - a == 900 for a, b in pairwise(ticks))


def test_expressions_naming_hours_fire_each_local_time_once() -> None:
    timing = cron("*/15 2 * * *", BERLIN)
    start = day_start(BERLIN, "2026-10-25")
    assert local(timing.ticks_between(start, start + 86400), BERLIN) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:15:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:45:00+02:00",
    ]


# -- due_ticks ----------------------------------------------------------------------------

DAILY = cron("0 3 * * *")
DAY1 = at("2026-06-01T03:00:00+00:00")


def test_a_new_schedule_fires_nothing() -> None:
    assert due_ticks(every(60), None, 1_000_000.0, grace=3600) == ([], 0)


def test_nothing_due_fires_nothing() -> None:
    assert due_ticks(every(60), 1020, 1079.9, grace=3600) == ([], 0)
    assert due_ticks(every(60), 1080, 1080, grace=3600) == ([], 0)
    assert due_ticks(every(60), 1080, 1000, grace=3600) == ([], 0)


def test_a_tick_seen_a_little_late_fires() -> None:
    assert due_ticks(every(60), 1019.5, 1020.0, grace=0) == ([1020], 0)
    assert due_ticks(every(60), 1019.5, 1020 + LATE, grace=0) == ([1020], 0)
    assert due_ticks(DAILY, DAY1 - 5, DAY1 + 2, grace=0) == ([DAY1], 0)


def test_late_ticks_all_fire() -> None:
    assert due_ticks(every(1), 1000, 1010, grace=0) == (list(range(1001, 1011)), 0)
    assert due_ticks(every(1), 1000, 1030, grace=0, late=30) == (list(range(1001, 1031)), 0)


def test_after_downtime_only_the_latest_missed_tick_fires_within_grace() -> None:
    day3 = DAY1 + 2 * 86400
    assert due_ticks(DAILY, DAY1, day3 + 1800, grace=3600) == ([day3], 1)
    assert due_ticks(DAILY, DAY1, day3 + 3600, grace=3600) == ([day3], 1)


def test_after_downtime_missed_ticks_beyond_grace_are_all_skipped() -> None:
    day3 = DAY1 + 2 * 86400
    assert due_ticks(DAILY, DAY1, day3 + 3601, grace=3600) == ([], 2)
    # at 1650 the ticks 1080..1620 are due, all missed; the latest is 30 s old
    assert due_ticks(every(60), 1020, 1650, grace=20) == ([], 10)
    assert due_ticks(every(60), 1020, 1650, grace=30) == ([1620], 9)


def test_the_latest_missed_tick_fires_with_the_late_ones() -> None:
    # ticks 1001..1020 are due at 1020: 1010..1020 are late, 1001..1009 missed
    assert due_ticks(every(1), 1000, 1020, grace=60) == ([1009, *range(1010, 1021)], 8)


def test_limit_keeps_the_latest_ticks_and_counts_the_rest() -> None:
    fired, skipped = due_ticks(every(1), 1000, 1100, grace=0, late=100, limit=10)
    assert fired == list(range(1091, 1101)) and skipped == 90
    fired, skipped = due_ticks(cron("* * * * * *"), 1000, 1100, grace=0, late=100, limit=10)
    assert fired == list(range(1091, 1101)) and skipped == 90


def test_skipped_ticks_are_counted_up_to_a_bound() -> None:
    late = list(range(10**7 - 10, 10**7 + 1))
    assert due_ticks(every(1), 0, 10**7, grace=0) == (late, MAX_COUNTED)
    assert due_ticks(cron("* * * * * *"), 0, 10**7, grace=0) == (late, MAX_COUNTED)


@pytest.mark.parametrize("timing", [every(7), cron("*/5 * * * * *", BERLIN)], ids=["every", "cron"])
def test_polling_often_fires_every_tick_exactly_once(timing: Timing) -> None:
    start = at("2026-10-25T02:50:00+02:00")
    last: float | None = None
    fired: list[int] = []
    now = float(start)
    step = 0
    while now < start + 3 * 3600:
        ticks, skipped = due_ticks(timing, last, now, grace=0)
        assert skipped == 0
        fired += ticks
        last = now
        step += 1
        now += 0.7 + (step * 37 % 90) / 10  # irregular gaps, none longer than LATE
    assert last is not None
    assert fired == timing.ticks_between(start, last, limit=10**6)
    assert len(fired) > 1500  # three hours of ticks, through the repeated hour


# -- job ids ------------------------------------------------------------------------------


def test_tick_job_ids_are_deterministic_and_acceptable() -> None:
    assert tick_job_id("nightly-report", 1_780_000_000) == "cron:nightly-report:1780000000"
    longest = "a" * 64
    assert is_acceptable_id(tick_job_id(longest, 4_102_444_800))
    assert is_acceptable_id(tick_job_id("v1.sync_users", every(60).next_after(1e9)))


@pytest.mark.parametrize("name", ["", "-x", ".x", "a" * 65, "a b", "a:b", "a/b", "é"])
def test_bad_schedule_names_are_refused(name: str) -> None:
    assert SCHEDULE_NAME.fullmatch(name) is None
    with pytest.raises(ConfigurationError, match="schedule name"):
        tick_job_id(name, 0)
