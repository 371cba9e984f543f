"""``conveyor bench`` on small runs: every figure is measured, bad options are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clijobs import CLI
from conveyor import Conveyor

SMALL = ("--jobs", "500", "--single", "200", "--latency-jobs", "200", "--rate", "500")
FIGURES = ("single_enqueue_per_s", "concurrent_enqueue_per_s", "bulk_enqueue_per_s",
           "drain_per_s", "latency_p50_ms", "latency_p99_ms", "latency_rate_per_s")


def test_bench_json_has_every_figure(cli: CLI) -> None:
    result = cli.json("bench", *SMALL, url=None, timeout=120)
    for figure in FIGURES:
        assert result[figure] > 0, (figure, result)
    assert result["latency_p99_ms"] >= result["latency_p50_ms"]
    assert result["kind"] == "noop" and result["jobs"] == 500
    assert result["concurrent_callers"] == 32
    assert result["url"].startswith("sqlite:///")
    # the fresh store lived in a temp dir that is gone
    assert not Path(result["url"].removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("kind", ["capped", "grouped"])
def test_bench_limited_kinds(cli: CLI, kind: str) -> None:
    result = cli.json("bench", "--kind", kind, "--jobs", "400", "--single", "50",
                      "--latency-jobs", "50", "--rate", "200", timeout=180)
    for figure in FIGURES:
        assert result[figure] > 0, (figure, result)
    assert result["kind"] == kind


def test_bench_sleep_kind_on_a_given_store(cli: CLI) -> None:
    result = cli.json("bench", "--kind", "sleep:1", "--jobs", "300", "--single", "100",
                      "--latency-jobs", "100", "--rate", "500", "--callers", "4", timeout=120)
    for figure in FIGURES:
        assert result[figure] > 0, (figure, result)
    assert result["kind"] == "sleep:1" and result["url"] == cli.url
    # the bench used a namespace of its own: the store's default one is untouched
    app = Conveyor(url=cli.url)
    try:
        assert app.run_sync(app.broker.counts()) == {}
    finally:
        app.close()


def test_bench_table_output(cli: CLI) -> None:
    out = cli.ok("bench", "--jobs", "100", "--single", "50", "--latency-jobs", "50", "--rate",
                 "500", url=None, timeout=120, COLUMNS="120")
    for label in ("single-call enqueue, 1 caller", "bulk enqueue", "drain",
                  "enqueue-to-start p50", "enqueue-to-start p99", "jobs/s", "ms"):
        assert label in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--kind", "bogus"], "--kind is noop, sleep:MS"),
        (["--kind", "sleep:x"], "--kind is noop, sleep:MS"),
        (["--jobs", "0"], "must be positive"),
        (["--rate", "0"], "must be positive"),
    ],
)
def test_bench_bad_options_exit_2(cli: CLI, options: list[str], message: str) -> None:
    assert message in cli.fail("bench", *options, url=None, code=2)
