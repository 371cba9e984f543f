"""A poison job (``os._exit(1)`` on every run; async and thread variants) enqueued in the
middle of 30 innocent jobs on ``conveyor worker --processes 2``. Its first death may take the
innocent jobs running beside it down (they run again, charged one recovery); after that it is
a suspect and runs alone, so its further deaths cost only itself, and after max_recoveries
(3) deaths it is dead. Every innocent job succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.checks import broken
from faults.scenarios import Sizes, poison

SLOTS = 4
MAX_RECOVERIES = 3


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["async", "thread"])
def test_poison_job_dies_alone_and_innocents_succeed(variant: str, workdir: Path,
                                                     sizes: Sizes) -> None:
    report = poison(workdir, variant=variant, innocents=sizes.innocents, slots=SLOTS,
                    max_recoveries=MAX_RECOVERIES)
    problems = broken(report)  # with checks.poison: the particulars above
    assert not problems, "\n".join(problems) + report.explain()
