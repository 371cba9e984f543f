"""Reading what clients send: JSON job calls, query-string arguments, paging parameters.

Each function raises :class:`~conveyor.http.errors.ApiError` with the status that says what
is wrong (400 for a malformed value, 415 for a body that is not JSON).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.bounds import MAX_DEPTH, encode_value, finite_seconds
from conveyor.errors import InvalidArguments
from conveyor.http.errors import ApiError
from conveyor.options import DEFAULT, EnqueueOptions
from conveyor.priority import check_priority
from conveyor.serialization import NotSerializable

#: the fields of a JSON job call
CALL_FIELDS = ("args", "kwargs", "delay", "queue", "id", "priority")


@dataclass(frozen=True)
class JobCall:
    """A job call as the client sent it."""

    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: EnqueueOptions = DEFAULT


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: one decoder for every request (``json.loads`` with an option makes a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def strict_json(raw: bytes | str) -> Any:
    """Parse strict JSON (no NaN or Infinity); ``ValueError`` otherwise (also for a text
    nested too deep for the parser). Bytes are decoded as ``json.loads`` decodes them."""
    try:
        if isinstance(raw, bytes):
            raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
        elif raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        return _DECODER.decode(raw)
    except RecursionError:
        raise ValueError(f"arrays and objects nest too deep (at most {MAX_DEPTH} levels "
                         "in an argument)") from None


def media_type(content_type: str | None) -> str:
    """``"application/json"`` from ``"Application/JSON; charset=utf-8"``; ``""`` if none."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    """True for ``application/json`` and ``application/*+json``."""
    kind = media_type(content_type)
    return kind == "application/json" or (kind.startswith("application/") and
                                           kind.endswith("+json"))


def finite_number(value: object) -> bool:
    """True for an int or float that is not a bool, NaN or infinite (nor an int too large
    for a float)."""
    return finite_seconds(value)


def json_body(raw: bytes, content_type: str | None) -> Any:
    """A request's body as strict JSON: 415 unless its type is JSON, 400 unless it parses."""
    if not is_json_type(content_type):
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
    try:
        return strict_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def job_call(raw: bytes, content_type: str | None, *, bound: bool = True) -> JobCall:
    """The body of ``POST /jobs/{name}``: a JSON object with the optional fields ``args``
    (array), ``kwargs`` (object), ``delay`` (seconds, 0 or more), ``queue`` (string),
    ``id`` (the job's id, instead of a new one) and ``priority`` (-10 .. 10).

    An empty body (without a content type, or with a JSON one) is a call without
    arguments. ``bound``: check the
    arguments against :mod:`conveyor.bounds` here (``False`` for a call nothing hashes
    before the app builds its record, which checks them the same way).
    """
    if not raw.strip() and (not media_type(content_type) or is_json_type(content_type)):
        return JobCall()
    body = json_body(raw, content_type)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object with "
                       f"{', '.join(CALL_FIELDS)}")
    unknown = sorted(set(body) - set(CALL_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; the fields are "
                       f"{', '.join(CALL_FIELDS)}")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    delay = body.get("delay")
    queue = body.get("queue")
    if not isinstance(args, list):
        raise ApiError(400, "args must be a JSON array")
    if not isinstance(kwargs, dict):
        raise ApiError(400, "kwargs must be a JSON object")
    try:  # before anything hashes or stores them (see conveyor.bounds)
        if bound:
            encode_value(args, "an argument", wrapped=True)
            encode_value(kwargs, "an argument", wrapped=True)
    except NotSerializable as exc:
        raise ApiError(400, f"arguments must be JSON-serializable ({exc})") from None
    if delay is not None and (not finite_number(delay) or delay < 0):
        raise ApiError(400, "delay must be a finite number of seconds, 0 or more")
    if queue is not None and not isinstance(queue, str):
        raise ApiError(400, "queue must be a string")
    job_id = body.get("id")
    if job_id is not None and not isinstance(job_id, str):
        raise ApiError(400, "id must be a string")
    priority = body.get("priority")
    options = EnqueueOptions(delay=None if delay is None else float(delay), queue=queue,
                             job_id=job_id, priority=priority)
    try:
        return JobCall(args, kwargs, options.checked())
    except InvalidArguments as exc:
        raise ApiError(400, str(exc)) from None


def priority_change(raw: bytes, content_type: str | None) -> int:
    """The body of ``POST /jobs/{id}/priority``: ``{"priority": N}``, N from -10 to 10."""
    body = json_body(raw, content_type)
    if not isinstance(body, dict) or set(body) != {"priority"}:
        raise ApiError(400, 'the body must be {"priority": N}')
    try:
        return check_priority(body["priority"])
    except InvalidArguments as exc:
        raise ApiError(400, str(exc)) from None


def query_arguments(query: Sequence[tuple[str, str]], upload_parameter: str,
                    text_parameters: Collection[str] = ()) -> dict[str, Any]:
    """Keyword arguments from a query string: each value JSON-decoded when it parses as
    JSON, else kept as a string; always a string for ``text_parameters`` (annotated ``str``:
    ``?tag=123`` is ``"123"``). A repeated name or the upload parameter itself is a 400."""
    kwargs: dict[str, Any] = {}
    for key, value in query:
        if key == upload_parameter:
            raise ApiError(400, f"{key!r} is the uploaded file (the body), not a query parameter")
        if key in kwargs:
            raise ApiError(400, f"query parameter {key!r} is given more than once")
        if key in text_parameters:
            kwargs[key] = value
            continue
        try:
            kwargs[key] = strict_json(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def filename_of(host_path: str | None) -> str | None:
    """The last part of a client's path (``C:\\data\\a.csv`` or ``/data/a.csv`` -> ``a.csv``)."""
    if not host_path:
        return None
    name = host_path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name or None


def page_limit(text: str | None, default: int, maximum: int) -> int:
    """The ``limit`` query parameter: a whole number from 1 to ``maximum``."""
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or \
            not 1 <= int(text) <= maximum:
        raise ApiError(400, f"limit must be a whole number from 1 to {maximum}")
    return int(text)
