"""``conveyor bench`` reports what a drained job cost: worker CPU on any store, and Redis's
CPU and script time on a single Redis server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clijobs import CLI
from redis_server import shared_redis_url

SMALL = ("--jobs", "3000", "--single", "1", "--latency-jobs", "20", "--rate", "500")
ON_LINUX = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")


@ON_LINUX
def test_bench_reports_costs_per_job_on_redis(tmp_path: Path) -> None:
    result = CLI(shared_redis_url(), tmp_path).json("bench", *SMALL, "--processes", "2",
                                                    timeout=180)
    assert result["drain_per_s"] > 0
    # a job costs its worker some CPU, and Redis some CPU in the scripts that claim and
    # settle it: not nothing, and not a second
    for figure in ("drain_worker_cpu_us_per_job", "drain_redis_cpu_us_per_job",
                   "drain_redis_script_us_per_job"):
        assert 0 < result[figure] < 1e6, (figure, result)


@ON_LINUX
def test_bench_reports_worker_cost_only_on_sqlite(cli: CLI) -> None:
    result = cli.json("bench", *SMALL, timeout=180)
    assert 0 < result["drain_worker_cpu_us_per_job"] < 1e6
    assert result["drain_redis_cpu_us_per_job"] == 0
    assert result["drain_redis_script_us_per_job"] == 0
