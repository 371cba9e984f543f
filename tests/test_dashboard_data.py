"""The overview's history: per-minute series from the stored statistics."""

from __future__ import annotations

import pytest

from conveyor.dashboard.data import HISTORY_MINUTES, history
from conveyor.stats import MinuteStats

NOW = 1_800_000_030.0  # 30 s into a minute
LAST = 1_800_000_000  # that minute


def test_the_window_ends_with_the_current_minute() -> None:
    h = history([], NOW)
    assert len(h["minutes"]) == HISTORY_MINUTES
    assert h["minutes"][-1] == LAST and h["minutes"][0] == LAST - 60 * (HISTORY_MINUTES - 1)
    assert h["succeeded"] == [0] * HISTORY_MINUTES
    assert h["failure_rate"] == [None] * HISTORY_MINUTES  # nothing ended: no rate
    assert h["wait_ms"] == [None] * HISTORY_MINUTES and h["recent_wait_ms"] is None


def test_rows_land_in_their_minute_and_outside_ones_are_left_out() -> None:
    rows = [
        MinuteStats(LAST, "a", succeeded=6, failed=1, dead=1, started=4, wait_total=0.2),
        MinuteStats(LAST, "b", succeeded=2, started=1, wait_total=0.6),
        MinuteStats(LAST - 60, "a", succeeded=1, cancelled=3),
        MinuteStats(LAST - 60 * HISTORY_MINUTES, "a", succeeded=100),  # an hour ago: out
        MinuteStats(LAST + 60, "a", succeeded=100),  # a clock ahead: out
    ]
    h = history(rows, NOW)
    assert h["succeeded"][-1] == 8 and h["succeeded"][-2] == 1
    assert sum(h["succeeded"]) == 9
    assert h["cancelled"][-2] == 3
    # (failed + dead) / (failed + dead + succeeded) = 2 / 10
    assert h["failure_rate"][-1] == pytest.approx(20.0)
    assert h["failure_rate"][-2] == 0.0  # cancels are not failures
    assert h["wait_ms"][-1] == pytest.approx(1000 * 0.8 / 5)
    assert h["recent_wait_ms"] == pytest.approx(1000 * 0.8 / 5)


def test_one_queue_alone() -> None:
    rows = [MinuteStats(LAST, "a", succeeded=6, dead=2, started=2, wait_total=0.1),
            MinuteStats(LAST, "b", succeeded=2, started=1, wait_total=3.0)]
    h = history(rows, NOW, queue="a")
    assert h["succeeded"][-1] == 6 and h["dead"][-1] == 2
    assert h["failure_rate"][-1] == pytest.approx(25.0)
    assert h["wait_ms"][-1] == pytest.approx(50.0)
    assert history(rows, NOW, queue="nope")["succeeded"] == [0] * HISTORY_MINUTES


def test_recent_wait_covers_the_last_five_minutes() -> None:
    rows = [MinuteStats(LAST - 60 * 4, "a", started=1, wait_total=1.0),
            MinuteStats(LAST - 60 * 5, "a", started=1, wait_total=9.0)]  # six minutes back
    assert history(rows, NOW)["recent_wait_ms"] == pytest.approx(1000.0)
