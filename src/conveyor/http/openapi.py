"""The OpenAPI 3 document, generated from the route table.

Each route of :mod:`conveyor.http.routes` is an :class:`Operation`: its method, path and
handler, plus a small declaration of its parameters, body and responses. The web layer makes
its routes from the same list, so the document cannot drift from what is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.job import ALL_STATES
from conveyor.summary import JSON_FIELDS, PREVIEW_CHARS, TEXT_FIELDS

OPENAPI_VERSION = "3.0.3"
Schema = dict[str, Any]
Handler = Callable[..., Awaitable[Any]]


def ref(name: str) -> Schema:
    """A reference to a schema of :data:`COMPONENTS`."""
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter."""

    name: str
    where: str  # "path", "query" or "header"
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def to_openapi(self) -> Schema:
        """The parameter object."""
        return {"name": self.name, "in": self.where, "description": self.description,
                "required": self.required or self.where == "path", "schema": self.schema}


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it does, what it takes and what it answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    #: status code -> (description, schema of the JSON body or None)
    responses: dict[int, tuple[str, Schema | None]]
    params: Sequence[Param] = ()
    #: media type -> schema of the request body
    body: dict[str, Schema] | None = None
    description: str = ""
    tag: str = "jobs"
    auth: bool = True
    #: False for routes that are not part of the API (the docs' own files)
    documented: bool = True
    #: the media type of the success responses' bodies
    media: str = "application/json"
    #: ``handler`` is an ASGI app (scope, receive, send), not a Request handler: for the
    #: hottest path, which then makes no Request object per call
    raw: bool = False


JOB_ID = Param("id", "path", "the job id (26 characters of Crockford base32)")

JSON_ANY: Schema = {"description": "any JSON value"}

#: the fields of a job (GET /jobs/{id})
JOB_PROPERTIES: dict[str, Schema] = {
    "id": {"type": "string"},
    "name": {"type": "string"},
    "queue": {"type": "string"},
    "state": {"type": "string", "enum": [str(s) for s in ALL_STATES]},
    "priority": {"type": "integer", "minimum": -10, "maximum": 10},
    "group": {"type": "string", "nullable": True,
              "description": "the group of a job with limits"},
    "attempts": {"type": "integer"},
    "deferrals": {"type": "integer",
                  "description": "times put back uncharged: it raised RateLimited, or a "
                                 "worker that does not register its name took it"},
    "recoveries": {"type": "integer"},
    "args": {"type": "array", "items": JSON_ANY},
    "kwargs": {"type": "object", "additionalProperties": JSON_ANY},
    "result": JSON_ANY,
    "error": {"type": "string", "nullable": True},
    "traceback": {"type": "string", "nullable": True},
    "progress": {"type": "number", "nullable": True},
    "progress_message": {"type": "string", "nullable": True},
    "worker_id": {"type": "string", "nullable": True},
    "cancel_requested": {"type": "boolean"},
    "unique_key": {"type": "string", "nullable": True},
    **{name: {"type": "string", "format": "date-time", "nullable": True}
       for name in ("created_at", "run_at", "started_at", "finished_at", "expires_at")},
}

COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what went wrong"}},
    },
    "Accepted": {
        "type": "object", "required": ["id", "status_url"],
        "properties": {
            "id": {"type": "string", "description": "the new job's id"},
            "status_url": {"type": "string", "description": "where to read the job"},
            "message": {"type": "string"},
        },
    },
    "JobCall": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "args": {"type": "array", "items": JSON_ANY, "description": "positional arguments"},
            "kwargs": {"type": "object", "additionalProperties": JSON_ANY,
                       "description": "keyword arguments"},
            "delay": {"type": "number", "minimum": 0,
                      "description": "seconds to wait: at most the app's max_delay (one year "
                                     "unless set); further is a 400"},
            "queue": {"type": "string", "description": "another queue than the job's own"},
            "priority": {"type": "integer", "minimum": -10, "maximum": 10,
                         "description": "higher runs sooner (default: the job's own)"},
        },
    },
    "PriorityChange": {
        "type": "object", "additionalProperties": False, "required": ["priority"],
        "properties": {
            "priority": {"type": "integer", "minimum": -10, "maximum": 10,
                         "description": "the waiting job's new priority"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "name", "queue", "state", "attempts", "created_at"],
        "properties": JOB_PROPERTIES,
    },
    "JobSummary": {
        "type": "object",
        "required": ["id", "name", "queue", "state", "attempts", "created_at", "truncated",
                     "previews"],
        "description": f"a job as a list shows it: long fields cut to {PREVIEW_CHARS} "
        "characters (GET /jobs/{id} gives the whole job)",
        "properties": {
            **JOB_PROPERTIES,
            "args": {"type": "array", "items": JSON_ANY, "nullable": True,
                     "description": "null when cut (see previews)"},
            "kwargs": {"type": "object", "additionalProperties": JSON_ANY, "nullable": True,
                       "description": "null when cut (see previews)"},
            "result": {**JSON_ANY, "description": "any JSON value; null when cut (see "
                       "previews)"},
            "truncated": {"type": "array", "items": {
                "type": "string", "enum": [*JSON_FIELDS, *TEXT_FIELDS]},
                "description": "the fields cut to their first characters"},
            "previews": {
                "type": "object", "additionalProperties": {"type": "string"},
                "description": "cut field (args, kwargs or result) -> the first characters "
                "of its JSON text (no JSON on its own)"},
        },
    },
    "JobPage": {
        "type": "object", "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": ref("JobSummary")},
            "next_cursor": {"type": "string", "nullable": True,
                            "description": "pass as cursor for the next page; null at the end"},
        },
    },
    "Queues": {
        "type": "object", "required": ["queues"],
        "properties": {
            "queues": {
                "type": "object", "description": "queue -> its jobs per state and its settings",
                "additionalProperties": {
                    "type": "object",
                    "required": [*(str(s) for s in ALL_STATES), "paused", "max_queued"],
                    "properties": {
                        **{str(s): {"type": "integer"} for s in ALL_STATES},
                        "paused": {"type": "boolean",
                                   "description": "workers claim nothing from it"},
                        "max_queued": {"type": "integer", "nullable": True,
                                       "description": "the store's cap on waiting jobs"},
                    }}},
            "limits": {
                "type": "array", "description": "jobs with limits, in all (group null) and "
                "per busy group: running attempts against the cap, ready jobs, and those a "
                "full cap holds back",
                "items": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "group": {"type": "string", "nullable": True},
                    "running": {"type": "integer"},
                    "cap": {"type": "integer", "nullable": True},
                    "ready": {"type": "integer"},
                    "throttled": {"type": "integer"},
                    "rate": {"type": "string", "nullable": True},
                }}},
        },
    },
    "QueueSettings": {
        "type": "object", "required": ["queue", "paused", "max_queued"],
        "properties": {
            "queue": {"type": "string"},
            "paused": {"type": "boolean", "description": "workers claim nothing from it"},
            "max_queued": {"type": "integer", "nullable": True,
                           "description": "the store's cap on waiting jobs (null: none)"},
        },
    },
    "Health": {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "error": {"type": "string", "description": "why the store cannot be used"}}},
    "KnownJobs": {
        "type": "object", "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": {
            "type": "object", "required": ["name", "queue", "parameters", "seen_at"],
            "properties": {
                "name": {"type": "string"},
                "queue": {"type": "string"},
                "executor": {"type": "string"},
                "parameters": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string", "enum": [
                            "POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD", "VAR_POSITIONAL",
                            "KEYWORD_ONLY", "VAR_KEYWORD"]},
                        "default": {"type": "boolean"},
                        "upload": {"type": "boolean",
                                   "description": "receives the uploaded file"},
                    }}},
                "staged": {"type": "boolean",
                           "description": "takes its file from POST /uploads"},
                "signature": {"type": "string", "example": "send(to, subject=…, *, cc=…)"},
                "seen_at": {"type": "string", "format": "date-time",
                            "description": "when a worker last published it"},
                "worker_id": {"type": "string", "nullable": True},
            }}}},
    },
}

_ERRORS = {
    400: "malformed request",
    401: "missing or wrong bearer token",
    404: "not found",
    405: "method not allowed",
    409: "the job is not in a state that allows this",
    413: "the body is larger than the limit",
    415: "unsupported content type",
    422: "the Idempotency-Key was used within 24 hours by a different request",
    503: "the queue is full or the store unavailable; see Retry-After",
    507: "no space left to stage the upload",
}


#: the header that makes an enqueue safe to send again (see conveyor.http.idempotency)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "header",
    "a key naming this request (1 to 200 printable ASCII characters): sent again within 24 "
    "hours, the same request stores nothing and is answered the first one's job id (202, the "
    "same body); a different request with the key is answered 422. For a file, the key is "
    "checked before the body is read, and the request is known by its declared properties "
    "(Content-Length, Content-Type, X-Host-Path) with its target or query arguments",
    {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"})


def error(status: int, description: str | None = None) -> tuple[int, tuple[str, Schema]]:
    """A response entry for an error status, with the shared Error body."""
    return status, (description or _ERRORS.get(status, "error"), ref("Error"))


def _operation(op: Operation, secured: bool) -> Schema:
    responses: dict[str, Any] = {}
    codes = dict(op.responses)
    if secured and op.auth:
        codes.setdefault(*error(401))
    for status, (description, schema) in sorted(codes.items()):
        entry: Schema = {"description": description}
        if schema is not None:
            media = op.media if status < 400 else "application/json"
            entry["content"] = {media: {"schema": schema}}
        responses[str(status)] = entry
    doc: Schema = {
        "operationId": op.handler.__name__.strip("_"),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        doc["description"] = op.description
    if op.params:
        doc["parameters"] = [p.to_openapi() for p in op.params]
    if op.body:
        doc["requestBody"] = {"required": False, "content": {
            media: {"schema": schema} for media, schema in op.body.items()}}
    if secured and not op.auth:
        doc["security"] = []
    return doc


def build(operations: Sequence[Operation], *, title: str, version: str, server_url: str,
          secured: bool) -> Schema:
    """The OpenAPI document of ``operations``; ``secured`` adds the bearer scheme."""
    paths: dict[str, dict[str, Schema]] = {}
    for op in operations:
        if op.documented:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, secured)
    document: Schema = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version,
                 "description": "Enqueue jobs, upload files for them and follow their state."},
        "servers": [{"url": server_url or "/"}],
        "paths": paths,
        "components": {"schemas": COMPONENTS},
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
