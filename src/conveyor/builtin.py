"""The jobs ``conveyor serve`` brings along: pushing uploads into containers, and an example.

``install(app, target)`` registers them on an app (a job name already registered is left
alone, so installing twice, or over your own ``analyze``, is harmless):

* ``conveyor.push`` (queue ``uploads``): copies the file staged under the job's id into a
  container of ``target``. ``POST /uploads`` stages the body under a fresh id and enqueues
  this job with that id; the worker removes the staged file once the job is final. A
  missing container is permanent (dead at once); a daemon that is down or failing is retried
  with backoff.
* ``analyze`` (thread executor): the example of a job taking an :class:`~conveyor.Upload`;
  it returns the file's size, SHA-256, line count and type.

``sweep(app)`` removes staged files nobody will use: those whose job is gone or final.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from conveyor.analysis import analyze_file
from conveyor.context import JobContext
from conveyor.errors import PermanentError
from conveyor.job import Backoff, BackoffPolicy
from conveyor.uploads import Upload, UploadError, check_container_name, normalize_destination

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.containers.base import ContainerTarget

PUSH_JOB = "conveyor.push"
ANALYZE_JOB = "analyze"
PUSH_QUEUE = "uploads"
#: waits of 2-4 s, 6-12, 18-36, 54-108, then 60-120 s: about 3 to 5 minutes in all, enough
#: to ride out a daemon restart without hammering it
PUSH_BACKOFF = Backoff(base=4.0, factor=3.0, maximum=120.0, jitter=0.5)


def install(app: Conveyor, target: ContainerTarget, *,
            push_backoff: BackoffPolicy | float | None = None) -> None:
    """Register the push job (for ``target``) and the ``analyze`` example on ``app``;
    ``push_backoff`` replaces :data:`PUSH_BACKOFF` (tests use a short one)."""
    if PUSH_JOB not in app.registry:
        _install_push(app, target, PUSH_BACKOFF if push_backoff is None else push_backoff)
    if ANALYZE_JOB not in app.registry:
        # in the uploads queue too: a serve without APP then takes jobs from no queue that
        # other apps' workers (whose jobs it does not have) publish to
        app.job(name=ANALYZE_JOB, queue=PUSH_QUEUE, executor="thread")(analyze)


def _install_push(app: Conveyor, target: ContainerTarget,
                  backoff: BackoffPolicy | float) -> None:
    async def push(container: str, destination: str, host_path: str | None = None, *,
                   ctx: JobContext) -> dict[str, Any]:
        """Copy the upload staged under this job's id to ``destination`` in ``container``;
        ``host_path`` is where the file came from, kept in the result for the record."""
        try:
            check_container_name(container)
            normal = normalize_destination(destination)
        except UploadError as exc:
            raise PermanentError(str(exc)) from None
        source = app.staging.path_of(ctx.id)
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise PermanentError(f"the staged file of job {ctx.id} is missing") from None
        ctx.progress(0.0, f"pushing {size} bytes to {container}:{normal}")
        await target.push(container, source, normal)
        ctx.progress(1.0, f"pushed to {container}:{normal}")
        return {"container": container, "destination": normal, "size": size,
                "host_path": host_path}

    app.job(name=PUSH_JOB, queue=PUSH_QUEUE, retries=5, backoff=backoff, executor="async",
            staged=True)(push)


def analyze(upload: Upload, ctx: JobContext) -> dict[str, Any]:
    """Read the uploaded file once: its size, SHA-256, number of lines and media type."""
    if not upload.path.is_file():
        raise PermanentError(f"the staged file of job {ctx.id} is missing")
    result = analyze_file(upload.path, ctx.progress, lambda: ctx.cancelled)
    return {"filename": upload.filename, "content_type": upload.content_type, **result}


async def sweep(app: Conveyor, min_age: float | None = None) -> int:
    """Remove the staged files whose job is missing or final (their worker died before it
    could, or the job ended through lease recovery or was cancelled elsewhere); returns how
    many.

    Without ``min_age`` it is meant for start-up, before uploads are received, and removes
    partial uploads too: a body is staged before its job is enqueued, so a sweep running at
    the same time could take an upload in flight for an orphan. With ``min_age`` (seconds) it
    is safe while uploads arrive: it looks only at staged files at least that old and leaves
    partial uploads alone. Files staged after the sweep read the job states are kept.
    """
    await app.broker.open()
    before = None if min_age is None else time.time() - min_age
    orphans: set[str] = set()
    for job_id in app.staging.staged_ids(before):
        record = await app.broker.get(job_id)
        if record is None or record.is_final:
            orphans.add(job_id)
    return await asyncio.to_thread(app.staging.sweep, lambda job_id: job_id not in orphans,
                                   partials=min_age is None)
