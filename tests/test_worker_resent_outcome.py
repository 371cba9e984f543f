"""A deferral (RateLimited) is applied by the store but its reply is lost, and the worker
claims the job again before it writes the outcome again: the outcome written again must not
end the new attempt (a deferral leaves the attempt number as it was, and the owner is the
same worker, so the store's fencing cannot tell the two apart). Real stores on both
backends; the lost reply is the store's own answer withheld after the write was applied
(the broker is the real one, its reply replaced by the error a dropped connection gives)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor import Conveyor, JobState, RateLimited, StoreUnavailable
from conveyor.backends import open_broker
from conveyor.ids import new_id
from conveyor.job import Outcome, OutcomeKind
from conveyor.testing import WorkerThread
from polling import wait_until


def losing_the_first_deferral_reply(app: Conveyor) -> threading.Event:
    """Make ``app``'s broker apply the first settle of a deferral, then (once the job is
    running again) raise the store trouble of a lost reply. Returns an event set then."""
    broker = open_broker(app.url, app.namespace, app.retention)
    broker.retry_for = app.store_timeout
    real_settle = broker.settle
    lost = threading.Event()

    async def settle(outcomes: Sequence[Outcome]) -> Any:
        result = await real_settle(outcomes)
        deferred = [o for o in outcomes if o.kind is OutcomeKind.RETRY and o.deferred]
        if deferred and not lost.is_set():
            lost.set()
            job_id = deferred[0].job_id
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the worker claims it again meanwhile
                record = await broker.get(job_id)
                if record is not None and record.state is JobState.RUNNING:
                    break
                await asyncio.sleep(0.02)
            raise StoreUnavailable(app.url, "the reply was lost", time.monotonic())
        return result

    broker.settle = settle  # type: ignore[method-assign]
    app._broker = broker
    return lost


def test_an_outcome_written_again_after_a_new_claim_does_not_end_the_new_attempt(
        url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "runs.txt"
    namespace = f"resent{new_id().lower()}"
    app = Conveyor(url=url, namespace=namespace, lease=5.0)

    @app.job(retries=0)
    def limited(path: str) -> str:
        with open(path, "a") as runs:
            runs.write("run\n")
        if Path(path).read_text().count("run") == 1:
            raise RateLimited(retry_after=0)
        time.sleep(1.5)  # the outcome written again would land while this runs
        return "done"

    lost = losing_the_first_deferral_reply(app)
    handle = limited.enqueue(str(ledger))
    worker = WorkerThread(app, min_workers=2, max_workers=2).start()
    try:
        wait_until(lambda: handle.info().is_final, timeout=30,
                   what="the job to end after its deferral")
    finally:
        worker.stop()
        app.close()
    fresh = Conveyor(url=url, namespace=namespace)
    try:
        info = fresh.handle(handle.id).info()
    finally:
        fresh.close()
    assert lost.is_set()
    assert info.state is JobState.SUCCEEDED and info.result == "done", info
    assert ledger.read_text().count("run") == 2  # the deferred run and the one that succeeded
    assert info.deferrals == 1 and info.attempts == 1, info
