"""Writing outcomes when the store refuses one of them.

The store here is a real SQLite file behind a :class:`SQLiteBroker` that refuses, the first
time, any batch holding the outcome of one chosen job (the way a row the store cannot take
would): a fault that a healthy SQLite file cannot be made to produce on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytest

from conftest import WorkerThread
from conveyor import Conveyor, JobState
from conveyor.backends.sqlite import SQLiteBroker
from conveyor.job import Outcome
from polling import wait_until


class RefusingBroker(SQLiteBroker):
    """Refuses the first ``refusals`` batches that hold the outcome of ``poison``."""

    def __init__(self, *args: object, refusals: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.poison = ""
        self.refusals = refusals
        #: job ids in the order their outcomes were written
        self.written: list[str] = []

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        if self.refusals and any(o.job_id == self.poison for o in outcomes):
            self.refusals -= 1
            raise ValueError(f"the store cannot take the outcome of {self.poison}")
        await super().settle(outcomes)
        self.written += [o.job_id for o in outcomes]


@pytest.mark.parametrize("refusals", [2, 5])
def test_one_refused_outcome_holds_back_no_other(
    app: Conveyor, start_worker: Callable[..., WorkerThread], refusals: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RefusingBroker(app.url, app.namespace, app.retention, refusals=refusals)
    app._broker = broker

    @app.job
    async def double(n: int) -> int:
        return 2 * n

    [poison] = app.enqueue_many("double", [(0,)])
    broker.poison = poison.id
    others = app.enqueue_many("double", [(n,) for n in range(1, 40)])
    with caplog.at_level(logging.ERROR, "conveyor.worker"):
        start_worker(app, max_workers=8)
        for handle in others:  # written although the batch they came in was refused
            assert handle.result(timeout=20) == 2 * int(handle.info().args[0])
        info = wait_until(lambda: (i := poison.info()).state is JobState.SUCCEEDED and i,
                          timeout=30, what="the refused job to succeed")
    assert info.result == 0
    messages = [r.getMessage() for r in caplog.records]
    if refusals == 2:  # refused in its batch, then once alone, then written
        assert info.recoveries == 0 and info.attempts == 1
        assert not any("gave up" in m for m in messages)
    else:  # in its batch, then three times alone: given up; its lease brought it back
        # uncharged (its worker was alive, the attempt void), it ran again, and was refused
        # once more in a batch before it was written alone
        assert info.recoveries == 0 and info.attempts == 1
        assert any("its lease will bring it back" in m for m in messages)
        # and every other outcome was written while the refused one waited for its lease
        # (the worker notes a write once the store has it, a moment after a read sees it)
        wait_until(lambda: poison.id in broker.written, timeout=10,
                   what="the worker to note the refused job's outcome written")
        first_poison = broker.written.index(poison.id)
        assert {h.id for h in others} <= set(broker.written[:first_poison])
    assert broker.refusals == 0
