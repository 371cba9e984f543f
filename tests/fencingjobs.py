"""Jobs of tests/test_worker_fencing.py, run by ``conveyor worker fencingjobs:app`` in a
subprocess: each start appends the job's number to ``FENCING_LEDGER`` (fsynced)."""

from __future__ import annotations

import asyncio
import os

from conveyor import Conveyor

app = Conveyor(url=os.environ.get("CLIJOBS_URL"), lease=5.0)


@app.job
async def record(n: int, seconds: float) -> int:
    fd = os.open(os.environ["FENCING_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{n}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    await asyncio.sleep(seconds)
    return n
