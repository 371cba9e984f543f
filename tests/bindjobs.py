"""Jobs for tests/test_binding.py: ``conveyor serve bindjobs:app`` imports this module, and
so do the children of the process executor (which find these jobs by module and name).

The server gets its store with ``--url`` and its staging directory with ``--staging``, so the
app's own settings here are never used (a process child must still find the staged file).
"""

from __future__ import annotations

import os
from typing import Any

from conveyor import Conveyor, JobContext, Upload

app = Conveyor(url="sqlite:///bindjobs-unused.db", staging_dir="bindjobs-unused-staging")


def describe(upload: object, label: str, ctx: JobContext | None = None) -> dict[str, Any]:
    """What the job received, as JSON."""
    seen: dict[str, Any] = {"type": type(upload).__name__, "label": label, "pid": os.getpid()}
    if isinstance(upload, Upload):
        with upload.open() as handle:
            data = handle.read()
        seen.update(path=str(upload.path), filename=upload.filename, size=upload.size,
                    content_type=upload.content_type, data=data.decode("latin-1"))
    if ctx is not None:
        seen.update(ctx_id=ctx.id, ctx_name=ctx.name)
    return seen


@app.job(executor="process")
def upload_process(upload: Upload, label: str = "") -> dict[str, Any]:
    return describe(upload, label)


@app.job(executor="process")
def upload_process_ctx(label: str, upload: Upload, ctx: JobContext) -> dict[str, Any]:
    ctx.progress(0.5, "half way")
    return describe(upload, label, ctx)


@app.job(executor="thread")
def upload_thread(upload: Upload, label: str = "") -> dict[str, Any]:
    return describe(upload, label)


@app.job
async def upload_async(upload: Upload, label: str = "") -> dict[str, Any]:
    return describe(upload, label)


def context_result(ctx: JobContext, x: int, y: int) -> dict[str, Any]:
    return {"type": type(ctx).__name__, "id": ctx.id, "name": ctx.name,
            "attempt": ctx.attempt, "x": x, "y": y, "pid": os.getpid()}


# The context first, the other arguments passed positionally: they fill the other parameters.
@app.job
async def ctx_async(ctx: JobContext, x: int, y: int = 0) -> dict[str, Any]:
    return context_result(ctx, x, y)


@app.job(executor="thread")
def ctx_thread(ctx: JobContext, x: int, y: int = 0) -> dict[str, Any]:
    return context_result(ctx, x, y)


@app.job(executor="process")
def ctx_process(ctx: JobContext, x: int, y: int = 0) -> dict[str, Any]:
    return context_result(ctx, x, y)


# The context between the arguments and keyword-only.
@app.job(executor="process")
def ctx_middle(x: int, ctx: JobContext, y: int = 0) -> dict[str, Any]:
    return context_result(ctx, x, y)


@app.job(executor="thread")
def ctx_keyword(x: int, *, ctx: JobContext, y: int = 0) -> dict[str, Any]:
    return context_result(ctx, x, y)
