"""Jobs for tests/test_store_down_reads.py: an app whose namespace knows 3 queues at most
(``conveyor serve queuecapjobs:app``; the store comes from ``--url``)."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor(url="sqlite:///queuecapjobs-unused.db", max_queues=3)


@app.job
async def add(a: int, b: int = 0) -> int:
    return a + b
