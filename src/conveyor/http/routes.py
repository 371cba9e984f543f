"""The route table: each endpoint's handler next to its OpenAPI declaration.

Handlers only translate between HTTP and :class:`~conveyor.http.services.Services`: they read
headers, query strings and bodies, call one service and shape the JSON answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from conveyor.http import docs
from conveyor.http.decoding import priority_change
from conveyor.http.errors import ApiError
from conveyor.http.idempotency import HEADER as IDEMPOTENCY_HEADER
from conveyor.http.idempotency import check_key
from conveyor.http.openapi import IDEMPOTENCY_KEY, JOB_ID, Operation, Param, error, ref
from conveyor.http.schedules import ScheduleRoutes
from conveyor.http.services import (
    DEFAULT_PAGE,
    MAX_JSON_BYTES,
    PAGE_BUDGET,
    BodyInfo,
    Services,
)
from conveyor.serialization import dumps
from conveyor.summary import MAX_PAGE, PREVIEW_CHARS

if TYPE_CHECKING:
    from conveyor.metrics import Metrics

JOB_PATH = "/jobs/{job}"
JOB = Param("job", "path", "the job id (for POST: the registered name of the job to run)")
QUEUE = Param("queue", "path", "the queue's name (1 to 200 characters)",
              {"type": "string", "minLength": 1, "maxLength": 200})
BINARY = {"type": "string", "format": "binary"}
HOST_PATH = Param("X-Host-Path", "header", "where the file came from (kept as metadata; its "
                  "last part is the Upload's filename)")


def header(headers: Headers, name: str) -> str | None:
    """A header's value as UTF-8 text (clients send file paths in UTF-8); 400 otherwise."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, f"{name} is not valid UTF-8") from None


def content_length(headers: Headers) -> int | None:
    """The declared body length, if there is one (uvicorn refuses malformed ones)."""
    length = headers.get("content-length")
    return int(length) if length is not None and length.isascii() and length.isdigit() else None


def body_info(headers: Headers) -> BodyInfo:
    """Content-Length, Content-Type and X-Host-Path of a raw body."""
    return BodyInfo(content_length(headers), headers.get("content-type"),
                    header(headers, "X-Host-Path"))


def idempotency_key(headers: Headers) -> str | None:
    """The ``Idempotency-Key`` header, checked (400 when it is not a valid key)."""
    return check_key(headers.get(IDEMPOTENCY_HEADER))


def prefix(scope: Scope) -> str:
    """The path this API is mounted under (``""`` at the root)."""
    return str(scope.get("root_path", "")).rstrip("/")


class Accepted(Response):
    """202 with the job's id, its status URL, and that URL as ``Location``: the answer to
    every enqueue, its headers made directly rather than through Starlette's general
    header handling."""

    media_type = "application/json"

    def __init__(self, scope: Scope, job_id: str, message: str | None = None) -> None:
        url = f"{prefix(scope)}/jobs/{job_id}"
        content: dict[str, Any] = {"id": job_id, "status_url": url}
        if message:
            content["message"] = message
        self.status_code = 202
        self.background = None
        self.body = dumps(content).encode("utf-8")
        self.raw_headers = [(b"content-length", str(len(self.body)).encode("latin-1")),
                            (b"content-type", b"application/json"),
                            (b"location", url.encode("latin-1"))]


async def limited_body(receive: Receive, limit: int) -> bytes:
    """The whole body read from ``receive`` (a request's ASGI channel), or 413 once it grows
    past ``limit`` bytes; :class:`ClientDisconnect` when the client goes away first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class Routes:
    """The handlers, bound to one :class:`Services`."""

    def __init__(self, services: Services, token: str | None,
                 metrics: Metrics | None = None) -> None:
        self.services = services
        self.secured = token is not None
        self.metrics = metrics

    async def _chunks(self, request: Request) -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    async def upload(self, request: Request) -> Response:
        """POST /uploads."""
        headers = request.headers
        job_id = await self.services.upload(
            self._chunks(request), header(headers, "X-Container-Name"),
            header(headers, "X-File-Path"), body_info(headers), idempotency_key(headers))
        return Accepted(request.scope, job_id,
                        "upload stored; the job pushes it to the container")

    async def submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /jobs/{name}: JSON arguments, or the raw file for a job with an Upload. An
        ASGI handler (see :attr:`Operation.raw`): the API's hottest path."""
        name = scope["path_params"]["job"]
        headers = Headers(scope=scope)
        key = idempotency_key(headers)
        if await self.services.upload_parameter(name) is not None:
            request = Request(scope, receive)
            job_id = await self.services.submit_upload(
                name, self._chunks(request), request.query_params.multi_items(),
                body_info(headers), key)
        else:
            limit = min(MAX_JSON_BYTES, self.services.max_upload_bytes)
            self.services.check_length(content_length(headers), limit)
            raw = await limited_body(receive, limit)
            job_id = await self.services.submit(name, raw, headers.get("content-type"), key,
                                                bool(scope.get("query_string")))
        await Accepted(scope, job_id)(scope, receive, send)

    async def get_job(self, request: Request) -> Response:
        """GET /jobs/{id}."""
        record = await self.services.get(request.path_params["job"])
        return JSONResponse(record.to_dict())

    async def list_jobs(self, request: Request) -> Response:
        """GET /jobs."""
        return JSONResponse(await self.services.list_jobs(dict(request.query_params)))

    async def cancel(self, request: Request) -> Response:
        """DELETE /jobs/{id}."""
        record = await self.services.cancel(request.path_params["job"])
        return JSONResponse(record.to_dict())

    async def retry(self, request: Request) -> Response:
        """POST /jobs/{id}/retry."""
        record = await self.services.retry(request.path_params["id"])
        url = f"{prefix(request.scope)}/jobs/{record.id}"
        return JSONResponse(record.to_dict(), status_code=202, headers={"Location": url})

    async def set_priority(self, request: Request) -> Response:
        """POST /jobs/{id}/priority."""
        raw = await limited_body(request.receive, 1024)
        priority = priority_change(raw, request.headers.get("content-type"))
        record = await self.services.set_priority(request.path_params["id"], priority)
        return JSONResponse(record.to_dict())

    async def known_jobs(self, request: Request) -> Response:
        """GET /jobs-known."""
        return JSONResponse(await self.services.known_jobs())

    async def queues(self, request: Request) -> Response:
        """GET /queues."""
        return JSONResponse({"queues": await self.services.queues(),
                             "limits": await self.services.limits()})

    async def pause_queue(self, request: Request) -> Response:
        """POST /queues/{queue}/pause."""
        return JSONResponse(await self.services.set_paused(request.path_params["queue"], True))

    async def resume_queue(self, request: Request) -> Response:
        """POST /queues/{queue}/resume."""
        return JSONResponse(await self.services.set_paused(request.path_params["queue"],
                                                           False))

    async def healthz(self, request: Request) -> Response:
        """GET /healthz."""
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics."""
        from conveyor.metrics import CONTENT_TYPE_LATEST

        metrics = self.metrics
        if metrics is None:
            raise ApiError(404, "metrics are not enabled")
        broker = self.services.app.broker
        try:
            if metrics.queue_counts_stale():
                await broker.open()
                await metrics.refresh_queues(broker)
        except Exception as exc:  # the store is down: serve the other metrics anyway
            if not broker.is_transient(exc):
                raise
        return Response(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json."""
        from conveyor.http.openapi import build

        return JSONResponse(build(self.operations(), title="Conveyor", version=_version(),
                                  server_url=prefix(request.scope), secured=self.secured))

    async def docs_page(self, request: Request) -> Response:
        """GET /docs."""
        return docs.page(prefix(request.scope))

    async def docs_static(self, request: Request) -> Response:
        """GET /docs/static/{file}."""
        return docs.static(request.path_params["file"])

    def operations(self) -> list[Operation]:
        """Every route, in the order of the OpenAPI document."""
        created = (202, ("the job is stored; follow status_url", ref("Accepted")))
        job = (200, ("the job's info", ref("Job")))
        return [
            Operation(
                "POST", "/uploads", self.upload, "Upload a file and push it to a container",
                dict([created, error(400), error(404, "the target says no container of that "
                     "name exists"), error(413), error(422), error(500, "the upload could not "
                     "be stored"), error(503), error(507)]),
                params=(
                    Param("X-Container-Name", "header", "the target container",
                          {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
                          required=True),
                    Param("X-File-Path", "header", "absolute destination path inside the "
                          "container: at most 32 components of at most 255 bytes each",
                          required=True),
                    HOST_PATH, IDEMPOTENCY_KEY),
                body={"application/octet-stream": BINARY},
                description="The body is the raw file. It is staged on disk (fsynced) under a "
                "new job id, then the push job is enqueued; the answer comes once both are "
                "durable.", tag="uploads"),
            Operation("GET", "/jobs", self.list_jobs, "List jobs, newest first",
                      dict([(200, ("a page of job summaries", ref("JobPage"))), error(400)]),
                      params=(
                          Param("state", "query", "only jobs in this state",
                                {"type": "string", "enum": ["queued", "scheduled", "running",
                                                            "succeeded", "dead", "cancelled"]}),
                          Param("queue", "query", "only jobs of this queue"),
                          Param("name", "query", "only jobs of this name"),
                          Param("limit", "query",
                                f"most jobs in the page (1-{MAX_PAGE}, default "
                                f"{DEFAULT_PAGE}; more is a 400)",
                                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
                          Param("cursor", "query", "next_cursor of the previous page")),
                      description=f"Each job is a summary: its arguments, keyword arguments "
                      f"and result when their JSON text is at most {PREVIEW_CHARS} characters, "
                      f"else null and the text's first {PREVIEW_CHARS} characters under "
                      f"previews; error, traceback and progress_message cut to "
                      f"{PREVIEW_CHARS} characters; truncated names the cut fields. "
                      f"GET /jobs/{{id}} gives the whole job. A page stops before its jobs "
                      f"pass {PAGE_BUDGET} bytes (next_cursor then continues it)."),
            Operation(
                "POST", JOB_PATH, self.submit, "Enqueue a job by name",
                dict([created, error(400), error(404, "no job of that name is registered or "
                      "published by a worker (see GET /jobs-known)"), error(413),
                      error(415), error(422), error(503), error(507)]),
                params=(JOB, HOST_PATH, IDEMPOTENCY_KEY),
                body={"application/json": ref("JobCall"), "application/octet-stream": BINARY},
                description="The body is a JSON JobCall. For a job with an Upload parameter "
                "the body is the raw file instead and the other arguments are query "
                "parameters (JSON-decoded when they parse as JSON, else strings).",
                raw=True),
            Operation("GET", JOB_PATH, self.get_job, "Read a job",
                      dict([job, error(404)]), params=(JOB,)),
            Operation("DELETE", JOB_PATH, self.cancel, "Cancel a job",
                      dict([(200, ("the job after the cancellation (a running job stops at its "
                                   "next heartbeat)", ref("Job"))),
                            error(404), error(409, "the job is final already")]),
                      params=(JOB,)),
            Operation("POST", "/jobs/{id}/retry", self.retry, "Re-enqueue a dead or cancelled "
                      "job", dict([(202, ("the job, back in its queue", ref("Job"))),
                                   error(404), error(409)]), params=(JOB_ID,)),
            Operation("POST", "/jobs/{id}/priority", self.set_priority, "Change a waiting "
                      "job's priority", dict([(200, ("the job with its new priority",
                                                     ref("Job"))),
                                              error(400), error(404), error(409),
                                              error(415)]),
                      params=(JOB_ID,), body={"application/json": ref("PriorityChange")},
                      description="Only a queued or scheduled job's priority changes (409 "
                      "for a running or final one). Its boost is the priority times the "
                      "server app's aging."),
            Operation("GET", "/jobs-known", self.known_jobs, "Jobs that workers run",
                      {200: ("the jobs workers published within the retention, by name",
                             ref("KnownJobs"))},
                      description="Each worker publishes the names, queues and parameters of "
                      "its jobs when it starts and every minute. POST /jobs/{job} accepts "
                      "these names (and the server's own jobs) and checks the arguments "
                      "against the published parameters."),
            *ScheduleRoutes(self.services).operations(),
            Operation("GET", "/queues", self.queues, "Jobs per queue and state, and each "
                      "queue's settings", {200: ("counts and settings", ref("Queues"))},
                      tag="admin", description="Lists the queues that have jobs and those "
                      "that are only paused or capped."),
            Operation("POST", "/queues/{queue}/pause", self.pause_queue, "Pause a queue",
                      dict([(200, ("the queue's settings", ref("QueueSettings"))),
                            error(400),
                            error(409, "a new queue past the namespace's cap on queues"),
                            error(503)]),
                      params=(QUEUE,), tag="admin",
                      description="Workers claim nothing more from the queue (within a "
                      "second); enqueues are still accepted and running jobs finish. A "
                      "queue the namespace does not know yet counts against its cap on "
                      "queues (409 past it)."),
            Operation("POST", "/queues/{queue}/resume", self.resume_queue, "Resume a queue",
                      dict([(200, ("the queue's settings", ref("QueueSettings"))),
                            error(400), error(503)]),
                      params=(QUEUE,), tag="admin",
                      description="Workers claim from the queue again; idle ones are woken."),
            Operation("GET", "/healthz", self.healthz, "Liveness (no token needed)",
                      {200: ("the server is up and its store usable", ref("Health")),
                       503: ("the store cannot be used now (see error)", ref("Health"))},
                      tag="admin", auth=False),
            Operation("GET", "/metrics", self.metrics_text, "Prometheus metrics",
                      {200: ("the metrics in the Prometheus text format", {"type": "string"})},
                      tag="admin", media="text/plain",
                      description="Job counters, durations and start latencies, queue depths "
                      "(a snapshot at most a few seconds old), worker sizes and HTTP requests "
                      "by route template."),
            Operation("GET", "/openapi.json", self.openapi, "This document",
                      {200: ("the OpenAPI document", None)}, tag="admin"),
            Operation("GET", "/docs", self.docs_page, "Interactive documentation",
                      {200: ("an HTML page", None)}, tag="admin", documented=False),
            Operation("GET", "/docs/static/{file}", self.docs_static, "Swagger UI files",
                      {200: ("a file", None)}, tag="admin", documented=False),
        ]


def _version() -> str:
    from conveyor import __version__

    return __version__
