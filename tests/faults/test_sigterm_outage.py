"""SIGTERM during a store outage, 4 rounds on each store, one per stop delay (40 rounds in
benchmarks/faults.py):
Redis killed, or SQLite's write lock held by another connection. Each round's worker runs an
async job and a stubborn thread job (it ignores cancellation) past the grace period and is
told to stop at a varying delay into the outage: it must exit 0 within the grace plus
:data:`~faults.scenarios.STOP_SLACK`. Afterwards one worker drains every round's jobs:
nothing acknowledged lost, none dead, duplicates within (rounds x slots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import Sizes, sigterm_outage


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sigterm_during_a_store_outage_stops_in_time(kind: str, workdir: Path, sizes: Sizes,
                                                     request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        request.getfixturevalue("needs_redis")
    report = sigterm_outage(kind, workdir, rounds=sizes.rounds)
    problems = broken(report)
    assert not problems, "\n".join(problems) + report.explain()
