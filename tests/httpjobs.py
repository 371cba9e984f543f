"""Jobs for tests/test_http_*.py: ``conveyor serve httpjobs:app`` imports this module.

The server process gets its store with ``--url`` and its staging directory with
``--staging``, so the app's own settings here are never used.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from conveyor import Conveyor, JobContext, PermanentError, Upload

app = Conveyor(url="sqlite:///httpjobs-unused.db", max_queued={"capped": 1})


@app.job
async def add(a: int, b: int = 0) -> int:
    return a + b


@app.job(retries=0)
async def boom(message: str = "boom") -> None:
    raise PermanentError(message)


@app.job(queue="naps")
async def nap(seconds: float, ctx: JobContext, marker: str | None = None) -> float:
    """Sleep; first create the file ``marker``, when given, to show the attempt began."""
    if marker is not None:
        Path(marker).touch()
    await asyncio.sleep(seconds)
    return seconds


@app.job(queue="naps", group_by="tenant", group_concurrency=1)
async def tenant_nap(tenant: str, seconds: float) -> float:
    """One nap per tenant at once."""
    await asyncio.sleep(seconds)
    return seconds


@app.job
def count(upload: Upload, label: str = "", times: int = 1) -> dict[str, Any]:
    """Read the uploaded file: its size, what it starts with, and the other arguments."""
    with upload.open() as handle:
        data = handle.read()
    return {"size": len(data), "head": data[:16].decode("latin-1"), "label": label,
            "times": times, "filename": upload.filename, "content_type": upload.content_type,
            "declared_size": upload.size}


@app.job(queue="capped")
async def hold() -> None:
    """Enqueued with a long delay, it keeps the capped queue full."""


@app.job(queue="capped")
def capped_count(upload: Upload) -> int:
    return upload.size


@app.job(retries=0)
def fail_first(marker: str) -> str:
    """Dies the first time (leaving ``marker`` behind) and succeeds once retried."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise PermanentError("the first try fails on purpose")
    return "second try worked"


@app.job
async def frozen_objects() -> int:
    """How many objects the serving process moved out of the collector's reach at start."""
    return gc.get_freeze_count()
