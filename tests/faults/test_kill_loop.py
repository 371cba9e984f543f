"""SIGKILL, again and again, of the worker processes of ``conveyor worker --processes 2``
while a producer enqueues short jobs: every acknowledged job ends succeeded, duplicates stay
within (kills x slots), each interrupted job starts again within the lease plus
:data:`~faults.scenarios.RECOVERY_SLACK`, and the supervisor stops cleanly at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import Sizes, kill_loop


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sigkill_loop_against_two_worker_processes(kind: str, workdir: Path, sizes: Sizes,
                                                   request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        request.getfixturevalue("needs_redis")
    report = kill_loop(kind, workdir, jobs=sizes.kill_jobs, kills=sizes.kills)
    problems = broken(report)
    assert not problems, "\n".join(problems) + report.explain()
