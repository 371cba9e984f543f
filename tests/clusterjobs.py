"""Jobs for the Redis Cluster tests, run by ``python -m conveyor worker clusterjobs:app``
(the URL and namespace given on the command line) or by worker threads."""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor()


@app.job
def square(n: int) -> int:
    """``n`` squared."""
    return n * n


@app.job
def note(n: int) -> int:
    """Append ``n`` to the ledger file ``CONVEYOR_LEDGER`` (one write, fsynced); ``n``."""
    fd = os.open(os.environ["CONVEYOR_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{n}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return n
