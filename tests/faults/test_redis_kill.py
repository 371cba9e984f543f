"""``kill -9`` of Redis (AOF with ``appendfsync always``) while a supervised worker runs jobs
and a producer enqueues, several times: nothing an enqueue acknowledged is lost, the worker
processes ride it out (none is replaced), and work flows again within the lease plus
:data:`~faults.scenarios.RESUME_SLACK` of Redis's return."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import Sizes, redis_kill


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("needs_redis")
def test_kill_9_of_redis_loses_nothing_acknowledged(workdir: Path, sizes: Sizes) -> None:
    report = redis_kill(workdir, jobs=sizes.redis_jobs, kills=sizes.redis_kills)
    problems = broken(report)
    assert not problems, "\n".join(problems) + report.explain()
