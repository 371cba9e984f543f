"""``Conveyor(max_queues=...)``: the cap on distinct queues, handed to the store, checked
when set, and raised as TooManyQueues by the app's enqueues (both stores)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor, TooManyQueues
from conveyor.backends.base import DEFAULT_MAX_QUEUES
from conveyor.errors import ConfigurationError


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "3"])
def test_a_bad_cap_is_refused(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_queues"):
        Conveyor(url="memory://", max_queues=value)


def test_the_cap_reaches_the_store_and_refuses_a_new_queue(url: str) -> None:
    app = Conveyor(url=url, namespace="capped", max_queues=2)
    try:
        job = app.job(lambda n: n, name="echo")
        assert app.broker.max_queues == 2
        job.enqueue_with([1], queue="one")
        job.enqueue_with([2], queue="two")
        with pytest.raises(TooManyQueues) as caught:
            job.enqueue_with([3], queue="three")
        assert (caught.value.queue, caught.value.limit) == ("three", 2)
        with pytest.raises(TooManyQueues):  # a bulk call stores none of its jobs
            job.enqueue_many([[5], [6]], queue="four")
        job.enqueue_with([4], queue="one")  # a known queue still accepts
        counts = app.run_sync(app.broker.counts())
        assert set(counts) == {"one", "two"} and counts["one"]["queued"] == 2
    finally:
        app.close()


def test_no_cap_and_the_default() -> None:
    assert Conveyor(url="memory://").max_queues == DEFAULT_MAX_QUEUES
    app = Conveyor(url="memory://", max_queues=None)
    assert app.broker.max_queues is None
