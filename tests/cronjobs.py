"""The app of tests/test_schedules_workers.py: an every-second schedule whose job appends its
tick and attempt to a ledger file (``CRON_LEDGER``), fsynced, so the test can see what ran."""

from __future__ import annotations

import os

from conveyor import Conveyor, JobContext

app = Conveyor(url="sqlite:///unused.db", lease=2.0)


@app.job
def pulse(ctx: JobContext) -> None:
    line = f"{ctx.id.rsplit(':', 1)[-1]} {ctx.attempt} {os.getpid()}\n".encode()
    fd = os.open(os.environ["CRON_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


app.schedule("pulse", pulse, every=1)
