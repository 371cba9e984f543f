"""Unique keys of jobs: the key a job registered with ``unique=True`` derives from a call,
and what an enqueue makes of the keys its store found held.

A derived key is ``NAME:SHA256`` where SHA256 is the hex digest of the call's canonical
JSON: the arguments bound to the job's parameters, defaults applied, as an object with sorted
keys and no spaces (so ``f(1)``, ``f(a=1)`` and ``f(1, b=<its default>)`` share a key). A
call that does not bind, or whose defaults are not JSON, falls back to ``[args, kwargs]``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any


def canonical_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A call's arguments as canonical JSON: ``[args, kwargs]``, keys sorted, no spaces."""
    return json.dumps([list(args), dict(kwargs)], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def bound_call(signature: inspect.Signature, args: Sequence[Any],
               kwargs: Mapping[str, Any]) -> str:
    """A call as canonical JSON of its arguments bound to ``signature`` with the defaults
    applied; :func:`canonical_call` when that cannot be done."""
    try:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return json.dumps(dict(bound.arguments), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return canonical_call(args, kwargs)


def derived_key(name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                signature: inspect.Signature | None = None) -> str:
    """The unique key of a call of job ``name``: ``name:`` and the SHA-256 hex digest of
    its canonical JSON (see :func:`bound_call`; :func:`canonical_call` without a
    ``signature``)."""
    text = (canonical_call(args, kwargs) if signature is None
            else bound_call(signature, args, kwargs))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{name}:{digest}"
