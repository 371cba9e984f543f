"""What the HTTP API does, without HTTP: plain coroutines over a :class:`Conveyor` app.

Every failure is an :class:`ApiError` carrying the status code and message the web layer
answers with, so the rules (what is a 400, a 404, a 409, a 413, a 503) live here and can be
tested or reused without a web framework. Request bodies arrive as async iterators of bytes
and are streamed to the staging area, never held in memory.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, Any

from conveyor.builtin import PUSH_JOB
from conveyor.containers.base import missing_container
from conveyor.errors import (
    ConfigurationError,
    DuplicateJob,
    InvalidArguments,
    JobNotFound,
    JobNotWaiting,
    QueueFull,
    StoreUnavailable,
    TooManyQueues,
    UnknownJob,
)
from conveyor.http import decoding, idempotency
from conveyor.http.errors import ApiError
from conveyor.ids import is_acceptable_id
from conveyor.job import ALL_STATES, JobRecord, JobState
from conveyor.options import DEFAULT, EnqueueOptions
from conveyor.queues import QueueSettings, parse_limit, with_settings
from conveyor.stored import state as stored_state
from conveyor.summary import MAX_PAGE, JobSummary
from conveyor.uploads import (
    StagedFile,
    Upload,
    UploadError,
    UploadTooLarge,
    check_container_name,
    normalize_destination,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.containers.base import ContainerTarget
    from conveyor.known import KnownJob

log = logging.getLogger("conveyor.http")

#: default for ``max_upload_bytes``: 1 GiB
DEFAULT_MAX_UPLOAD = 1 << 30
#: the largest JSON body ``POST /jobs/{name}`` reads
MAX_JSON_BYTES = 1 << 20
#: seconds a client is told to wait when a queue is full
RETRY_AFTER = 5
#: the most bytes of jobs one page of ``GET /jobs`` holds (its first job always goes in)
PAGE_BUDGET = 1 << 20
#: dead jobs read at a time when they are put back one by one
RETRY_PAGE = 500
DEFAULT_PAGE = 50


@dataclass(frozen=True)
class BodyInfo:
    """What the headers say about a raw request body."""

    content_length: int | None = None
    content_type: str | None = None
    host_path: str | None = None


def budgeted_page(summaries: Sequence[JobSummary], limit: int,
                  shape: Callable[[JobSummary], dict[str, Any]],
                  budget: int = PAGE_BUDGET) -> dict[str, Any]:
    """``{"jobs": [...], "next_cursor": ...}`` from up to ``limit + 1`` summaries: at most
    ``limit`` jobs and, past the first, no more than ``budget`` bytes of their JSON; the
    cursor is the last listed id when more follow, else None."""
    jobs: list[dict[str, Any]] = []
    used = 0
    for summary in summaries[:limit]:
        item = shape(summary)
        size = len(_compact(item).encode("utf-8", "surrogatepass")) + 1
        if jobs and used + size > budget:
            break
        jobs.append(item)
        used += size
    more = len(summaries) > len(jobs)
    return {"jobs": jobs, "next_cursor": jobs[-1]["id"] if more and jobs else None}


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no job with id {job_id}")


def _state_phrase(state: JobState) -> str:
    """``is queued``, ``has already succeeded``, ``is already dead``: a state in a sentence."""
    if state is JobState.SUCCEEDED:
        return "has already succeeded"
    return f"is already {state}" if state in (JobState.DEAD, JobState.CANCELLED) else f"is {state}"


def store_unavailable(exc: StoreUnavailable) -> ApiError:
    """503 with ``Retry-After`` for a store that cannot be used now (its reason only: no
    URL, no exception names)."""
    return ApiError(503, f"store unavailable: {exc.reason}", {"Retry-After": str(RETRY_AFTER)})


class Services:
    """The operations of the HTTP API over one app (see the module docstring)."""

    def __init__(self, app: Conveyor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
                 target: ContainerTarget | None = None) -> None:
        if max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be at least 1")
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        #: the push job's container target, asked whether a container exists before an
        #: upload is accepted (None: not asked; the push job finds out)
        self.target = target

    async def broker_ready(self) -> None:
        """Connect on first use (a no-op once open; the app may be mounted without a
        lifespan, so there is no start-up hook to rely on)."""
        await self.app.broker.open()

    # -- bodies -------------------------------------------------------------------------------
    def check_length(self, content_length: int | None, limit: int | None = None) -> None:
        """413 at once when the declared length is past the limit (nothing read yet)."""
        limit = self.max_upload_bytes if limit is None else limit
        if content_length is not None and content_length > limit:
            raise ApiError(413, str(UploadTooLarge(limit)))

    async def _stage(self, chunks: AsyncIterator[bytes], job_id: str) -> StagedFile:
        """Stream a body to the staging area; the staging area removes what it wrote on any
        error or cancellation, so a failure here leaves nothing behind."""
        try:
            return await self.app.staging.receive(chunks, job_id, self.max_upload_bytes)
        except UploadTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except OSError as exc:
            log.error("cannot stage upload %s: %s", job_id, exc)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            status, why = (507, "no space left to store") if full else (500, "cannot store")
            raise ApiError(status, f"{why} the upload: {exc.strerror or exc}") from None

    async def _enqueue(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                       options: EnqueueOptions = DEFAULT, *, staged: bool = False) -> str:
        """Store the job; map the app's refusals to statuses. With ``staged``, the staged
        file of the job's id is removed when nothing was stored."""
        job_id = options.job_id if staged else None
        try:
            await self.broker_ready()
            handle = await self.app.enqueue_call_async(name, args, kwargs, options)
        except DuplicateJob as exc:
            self._discard(job_id)
            raise ApiError(409, str(exc)) from None
        except QueueFull as exc:
            self._discard(job_id)
            raise ApiError(503, str(exc), {"Retry-After": str(RETRY_AFTER)}) from None
        except TooManyQueues as exc:
            self._discard(job_id)
            raise ApiError(409, str(exc)) from None
        except (InvalidArguments, UploadError) as exc:
            self._discard(job_id)
            raise ApiError(400, str(exc)) from None
        except UnknownJob as exc:
            self._discard(job_id)
            raise ApiError(404, str(exc)) from None
        # Whether the job was stored may be unknown (a reply lost with the connection): keep
        # its staged file; the start-up sweep removes it if no job owns it.
        except StoreUnavailable as exc:
            log.warning("cannot enqueue %s: %s", name, exc)
            raise store_unavailable(exc) from None
        except Exception:
            log.exception("cannot enqueue %s", name)
            raise ApiError(503, "cannot store the job; see the server's log",
                           {"Retry-After": str(RETRY_AFTER)}) from None
        if staged and handle.deduplicated:  # answered by the job holding its unique key
            self._discard(job_id)
        return handle.id

    def _discard(self, job_id: str | None) -> None:
        if job_id is not None:
            self.app.staging.remove(job_id)

    # -- uploads ------------------------------------------------------------------------------
    async def upload(self, chunks: AsyncIterator[bytes], container: str | None,
                     destination: str | None, body: BodyInfo,
                     idempotency_key: str | None = None) -> str:
        """``POST /uploads``: stage the body, then enqueue the push job; return its id (see
        :mod:`conveyor.http.idempotency` for ``idempotency_key``)."""
        try:
            name = check_container_name(container)
            path = normalize_destination(destination)
        except UploadError as exc:
            raise ApiError(exc.status, str(exc)) from None
        self.check_length(body.content_length)
        if self.target is not None:  # before the body is read: refuse what could only die
            missing = await missing_container(self.target, name)
            if missing is not None:
                raise ApiError(404, str(missing))

        async def enqueue(job_id: str) -> str:
            await self._stage(chunks, job_id)
            return await self._enqueue(PUSH_JOB, [name, path, body.host_path], {},
                                       EnqueueOptions(job_id=job_id), staged=True)

        digest = idempotency.digest_of("upload", name, path, *astuple(body))
        return await idempotency.once(self.app, idempotency_key, digest, None, enqueue,
                                      body=True)

    # -- jobs ---------------------------------------------------------------------------------
    async def published(self, name: str) -> KnownJob:
        """Job ``name`` as a worker published it (for names the app does not register);
        404 naming the known jobs when no worker did."""
        await self.broker_ready()
        try:
            return await self.app.known_job_async(name)
        except UnknownJob:
            error = self.app.unknown_job(name, "or serve that app (conveyor serve APP)")
            raise ApiError(404, str(error)) from None

    async def known_jobs(self) -> dict[str, Any]:
        """``GET /jobs-known``: the jobs workers published within the retention."""
        await self.broker_ready()
        return {"jobs": [job.to_display() for job in await self.app.known_jobs_async()]}

    async def upload_parameter(self, name: str) -> str | None:
        """The ``Upload`` parameter of job ``name``, if it has one (404 for unknown jobs)."""
        job_fn = self.app.registry.get(name)
        if job_fn is None:
            return (await self.published(name)).upload_parameter
        return job_fn.upload_parameters[0] if job_fn.upload_parameters else None

    async def submit(self, name: str, raw: bytes, content_type: str | None,
                     idempotency_key: str | None = None, query: bool = False) -> str:
        """``POST /jobs/{name}`` with a JSON body ``{"args", "kwargs", "delay", "queue"}``;
        a name the app does not register must have been published by a worker. ``query``:
        the request had a query string, which only a job with an Upload reads (400)."""
        job_fn = self.app.registry.get(name)
        staged = job_fn.options.staged if job_fn else (await self.published(name)).staged
        if staged:
            raise ApiError(400, f"job {name!r} takes its file from POST /uploads")
        if query:
            raise ApiError(400, f"job {name!r} takes its arguments in a JSON body "
                           '({"args": [...], "kwargs": {...}}), not in the query string '
                           "(only a job with an Upload parameter reads the query)")
        # without a key nothing hashes the arguments: the app's record checks their bounds
        call = decoding.job_call(raw, content_type, bound=idempotency_key is not None)
        asked = call.options
        if idempotency_key is None:  # the app gives the job a new id unless one was asked
            return await self._enqueue(name, call.args, call.kwargs, asked)
        # (a priority only when given: a request without one keeps the identity it had
        # before priorities were part of it)
        digest = idempotency.digest_of("job", name, call.args, call.kwargs, asked.delay,
                                       asked.queue, asked.job_id,
                                       *(() if asked.priority is None else (asked.priority,)))
        return await idempotency.once(
            self.app, idempotency_key, digest, asked.job_id,
            lambda job_id: self._enqueue(name, call.args, call.kwargs,
                                         replace(asked, job_id=job_id)))

    async def submit_upload(self, name: str, chunks: AsyncIterator[bytes],
                            query: Sequence[tuple[str, str]], body: BodyInfo,
                            idempotency_key: str | None = None) -> str:
        """``POST /jobs/{name}`` for a job with an ``Upload`` parameter: the body is the file,
        the other arguments come from the query string. The call is checked before the body
        is read, so a bad call costs no upload."""
        param = await self.upload_parameter(name)
        assert param is not None
        job_fn = self.app.registry.get(name)
        kwargs = decoding.query_arguments(query, param,
                                          job_fn.text_parameters if job_fn else ())
        filename = decoding.filename_of(body.host_path)
        call = {**kwargs, param: Upload.describe(0, filename, body.content_type)}
        try:
            if job_fn is not None:
                job_fn.check([], call)
            else:
                (await self.published(name)).check([], call)
        except InvalidArguments as exc:
            raise ApiError(400, str(exc)) from None
        self.check_length(body.content_length)

        async def enqueue(job_id: str) -> str:
            staged = await self._stage(chunks, job_id)
            kwargs[param] = Upload.describe(staged.size, filename, body.content_type)
            return await self._enqueue(name, [], kwargs, EnqueueOptions(job_id=job_id),
                                       staged=True)

        digest = idempotency.digest_of("job-upload", name, kwargs, *astuple(body))
        return await idempotency.once(self.app, idempotency_key, digest, None, enqueue,
                                      body=True)

    async def get(self, job_id: str) -> JobRecord:
        """The job's record (404 unless it exists)."""
        if not is_acceptable_id(job_id):
            raise _not_found(job_id)
        await self.broker_ready()
        record = await self.app.broker.get(job_id)
        if record is None:
            raise _not_found(job_id)
        return record

    async def list_jobs(
        self, params: Mapping[str, str],
        shape: Callable[[JobSummary], dict[str, Any]] = JobSummary.to_dict,
    ) -> dict[str, Any]:
        """``GET /jobs``: a page of job summaries (long fields cut, see
        :mod:`conveyor.summary`), newest first, each as ``shape`` makes it, and the cursor
        of the next page. A page ends early rather than pass :data:`PAGE_BUDGET` bytes."""
        unknown = sorted(set(params) - {"state", "queue", "name", "limit", "cursor"})
        if unknown:
            raise ApiError(400, f"unknown query parameter {unknown[0]!r}")
        state = params.get("state") or None
        if state is not None and state not in {str(s) for s in ALL_STATES}:
            raise ApiError(400, f"state must be one of {', '.join(ALL_STATES)}")
        limit = decoding.page_limit(params.get("limit"), DEFAULT_PAGE, MAX_PAGE)
        cursor = params.get("cursor") or None
        if cursor is not None and not is_acceptable_id(cursor):
            raise ApiError(400, "cursor must be a job id (the next_cursor of a page)")
        await self.broker_ready()
        summaries = await self.app.broker.list_summaries(
            state=JobState(state) if state else None, queue=params.get("queue") or None,
            name=params.get("name") or None, limit=limit + 1, cursor=cursor,
        )
        return budgeted_page(summaries, limit, shape)

    async def cancel(self, job_id: str) -> JobRecord:
        """``DELETE /jobs/{id}``: cancel (a job final afterwards loses its staged file)."""
        before = await self.get(job_id)
        if before.is_final:
            raise ApiError(409, f"job {job_id} {_state_phrase(before.state)}")
        try:
            after = await self.app.cancel_async(job_id)
        except JobNotFound:
            raise _not_found(job_id) from None
        return after

    async def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """``POST /jobs/{id}/priority``: a waiting job's new priority (409 for another)."""
        before = await self.get(job_id)
        try:
            return await self.app.set_priority_async(before.id, priority)
        except JobNotFound:
            raise _not_found(job_id) from None
        except JobNotWaiting as exc:
            raise ApiError(409, f"job {job_id} {_state_phrase(stored_state(exc.state))}; only a "
                           "waiting job's priority can change") from None

    async def retry(self, job_id: str) -> JobRecord:
        """``POST /jobs/{id}/retry``: put a dead or cancelled job back in its queue."""
        before = await self.get(job_id)
        if before.state not in (JobState.DEAD, JobState.CANCELLED):
            raise ApiError(409, f"job {job_id} {_state_phrase(before.state)}; only dead or "
                           "cancelled jobs can be retried")
        if self._upload_gone(before):
            raise ApiError(409, f"the uploaded file of job {job_id} is gone; upload it again")
        after = await self.app.broker.retry(job_id)
        if after is None:
            raise _not_found(job_id)
        return after

    def _upload_gone(self, record: JobRecord) -> bool:
        """True when the job takes an uploaded file and its staged copy is gone."""
        job_fn = self.app.registry.get(record.name)
        return job_fn is not None and job_fn.uses_staging and \
            not self.app.staging.path_of(record.id).exists()

    async def delete(self, job_id: str) -> None:
        """Delete a job that is not running, and its staged file (409 while it runs)."""
        before = await self.get(job_id)
        if before.state is JobState.RUNNING:
            raise ApiError(409, f"job {job_id} is running; cancel it first")
        if not await self.app.broker.delete(job_id):
            after = await self.app.broker.get(job_id)
            if after is None:
                raise _not_found(job_id)
            raise ApiError(409, f"job {job_id} is {after.state}; it cannot be deleted now")
        self.app.staging.remove(job_id)

    async def retry_dead(self, queue: str | None) -> tuple[int, int]:
        """Put every dead job of ``queue`` (of every queue when ``None``) back. Jobs whose
        uploaded file is gone are skipped, as :meth:`retry` refuses them. Return how many
        were put back and how many skipped."""
        await self.broker_ready()
        broker = self.app.broker
        staged = {name for name, fn in self.app.registry.items() if fn.uses_staging}
        for name in sorted(staged):
            if await broker.list_summaries(state=JobState.DEAD, queue=queue, name=name, limit=1):
                break
        else:  # no dead job has a staged file to check: one bulk write
            return await broker.retry_dead(queue), 0
        retried = skipped = 0
        cursor = None
        while True:
            # summaries: the name and id say all, whatever the jobs hold
            page = [s.record for s in await broker.list_summaries(
                state=JobState.DEAD, queue=queue, limit=RETRY_PAGE, cursor=cursor)]
            for record in page:
                if self._upload_gone(record):
                    skipped += 1
                elif await broker.retry(record.id) is not None:
                    retried += 1
            if len(page) < RETRY_PAGE:
                return retried, skipped
            cursor = page[-1].id

    async def queues(self) -> dict[str, dict[str, Any]]:
        """``GET /queues``: ``{queue: {state: count, ..., "paused": bool, "max_queued": n or
        null}}``, with the queues that only have settings (no jobs yet)."""
        await self.broker_ready()
        broker = self.app.broker
        return with_settings(await broker.counts(), await broker.queue_settings(),
                             tuple(str(s) for s in ALL_STATES))

    async def limits(self) -> list[dict[str, Any]]:
        """The ``limits`` of ``GET /queues``: running vs cap, ready and throttled jobs per
        job with limits and per busy group."""
        await self.broker_ready()
        return await self.app.limit_usage_async()

    async def queue_settings(self, queue: str) -> dict[str, Any]:
        """``{"queue": name, "paused": bool, "max_queued": n or null}`` of one queue."""
        settings = (await self.app.queue_settings_async()).get(queue) or QueueSettings(queue)
        return {"queue": queue, **settings.to_dict()}

    async def set_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        """Pause or resume ``queue``; its settings afterwards (400 for a bad name, 409 for
        a new queue past the namespace's cap on queues)."""
        try:
            await (self.app.pause_async(queue) if paused else self.app.resume_async(queue))
        except ConfigurationError as exc:
            raise ApiError(400, str(exc)) from None
        except TooManyQueues as exc:
            raise ApiError(409, str(exc)) from None
        return await self.queue_settings(queue)

    async def set_max_queued(self, queue: str, limit: str | None) -> dict[str, Any]:
        """Cap ``queue`` in the store (``limit`` as typed: a whole number or ``none``);
        its settings afterwards (400 for a bad name or limit, 409 for a new queue past the
        namespace's cap on queues)."""
        try:
            if limit is None:
                raise ConfigurationError("give max_queued: a whole number of at least 1, "
                                         "or none")
            await self.app.set_max_queued_async(queue, parse_limit(limit))
        except ConfigurationError as exc:
            raise ApiError(400, str(exc)) from None
        except TooManyQueues as exc:
            raise ApiError(409, str(exc)) from None
        return await self.queue_settings(queue)

