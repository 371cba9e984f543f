"""``Idempotency-Key`` on the enqueueing routes (``POST /jobs/{name}``, ``POST /uploads``).

A client that may send a request twice (a retry after a timeout) names it with a key. The
first request with a key records, atomically in the store, the key, the identity of the
request (a digest) and the id its job gets, for :data:`TTL` seconds; only then is the job
stored (and, for an upload, the body read). A request with a recorded key stores nothing:

* the same identity answers the recorded job's id, as the first request was answered (202),
  also while the first request is still under way, and after a restart of the server;
* another identity answers 422.

A request's identity is the SHA-256 of the canonical JSON (sorted keys, no spaces) of:

* ``POST /jobs/{name}`` with a JSON body: the name and the body's fields (``args``,
  ``kwargs``, ``delay``, ``queue``, ``id``) as decoded;
* ``POST /jobs/{name}`` for a job taking an upload, and ``POST /uploads``: the name (or the
  container and destination), the query arguments, and the request's declared properties
  of the file (Content-Length, Content-Type, X-Host-Path): the key is checked before the
  body is read, so the file's own digest cannot be known then.

A request refused for sure (a bad call, a full queue, an id that exists) drops its record,
so the key can be used again; one whose fate is unknown (the store became unreachable) keeps
it. A job deduplicated by its unique key records the id of the job holding the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from conveyor.http.errors import ApiError
from conveyor.ids import new_id

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: the request header
HEADER = "Idempotency-Key"
#: seconds a key is remembered
TTL = 24 * 3600.0
#: the longest key
MAX_KEY = 200
#: statuses after which a job is known not to be stored (503 only when the queue is full)
REFUSED = frozenset({400, 404, 409, 413, 415, 422})


def check_key(value: str | None) -> str | None:
    """The header's key, or 400 unless it is 1 to :data:`MAX_KEY` printable ASCII
    characters."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY or not all(" " <= c <= "~" for c in value):
        raise ApiError(400, f"{HEADER} must be 1 to {MAX_KEY} printable ASCII characters")
    return value


def digest_of(*parts: Any) -> str:
    """The identity of a request: SHA-256 of the canonical JSON of ``parts``."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _refused(exc: ApiError) -> bool:
    """True when the request that failed with ``exc`` certainly stored no job."""
    return exc.status in REFUSED or (exc.status == 503 and "is full" in exc.message)


async def once(app: Conveyor, key: str | None, digest: str, job_id: str | None,
               enqueue: Callable[[str], Awaitable[str]], *, body: bool = False) -> str:
    """Run ``enqueue(job_id)`` (``job_id``: the id asked for, else a new one) once per
    ``key`` and return the job's id; without a key, just run it. ``body`` says the request
    streams a body that ``enqueue`` reads (an upload): it is never read for a key in use.

    A request that finds the key recorded for the same request answers the recorded job's
    id once that job exists. While it does not, the first request is still under way, or
    failed without knowing whether it stored its job: a JSON request then stores the job
    under the recorded id itself (whichever stores it first, the other meets the id and
    answers it); an upload is answered 409 with ``Retry-After``."""
    proposed = job_id or new_id()
    if key is None:
        return await enqueue(proposed)
    found = await app.broker.remember_idempotency(key, digest, proposed, TTL)
    # a record naming the new id made here is this request's own (a retry after a lost reply)
    if found is not None and (found[1] != proposed or job_id is not None):
        if found[0] != digest:
            raise ApiError(422, f"{HEADER} {key!r} was used within the last 24 hours by a "
                           "different request; use a new key for a new request")
        if await app.broker.get(found[1]) is not None:
            return found[1]
        if body:
            raise ApiError(409, f"the request with {HEADER} {key!r} is still under way; try "
                           "again shortly", {"Retry-After": "1"})
        try:
            return await enqueue(found[1])
        except ApiError as exc:
            if exc.status == 409 and await app.broker.get(found[1]) is not None:
                return found[1]  # the first request stored it meanwhile
            raise
    try:
        stored = await enqueue(proposed)
    except ApiError as exc:
        if _refused(exc) or (body and exc.status in (500, 507)):  # nothing stored
            await app.broker.forget_idempotency(key, proposed)
        raise
    except Exception:  # the client went away while its upload was read: nothing stored
        await app.broker.forget_idempotency(key, proposed)
        raise
    if stored != proposed:  # deduplicated to the job holding its unique key
        await app.broker.replace_idempotency(key, proposed, stored)
    return stored
