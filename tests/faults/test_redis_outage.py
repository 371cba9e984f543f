"""A Redis outage longer than the lease (Redis down 3 s, lease 2 s, 12 s jobs; 30 s in
benchmarks/faults.py) with one worker process that never dies: the worker keeps running its
attempts while cut off, its heartbeat renews their leases once Redis is back, and no worker
recovers them meanwhile. Every job succeeds once, from its first and only attempt, with that
attempt's result; none is dead or recovered, and the worker stops cleanly at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import LEASE, Sizes, long_outage


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("needs_redis")
def test_outage_longer_than_the_lease_keeps_first_attempts(workdir: Path,
                                                           sizes: Sizes) -> None:
    assert sizes.outage_down > LEASE, "the outage must outlast the lease"
    report = long_outage(workdir, jobs=sizes.outage_jobs,
                         job_seconds=sizes.outage_job_seconds, down=sizes.outage_down)
    problems = broken(report)  # with checks.long_outage: the particulars above
    assert not problems, "\n".join(problems) + report.explain()
