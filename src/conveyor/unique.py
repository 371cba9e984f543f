"""Unique keys of jobs: the key a job registered with ``unique=True`` derives from a call,
and what an enqueue makes of the keys its store found held.

A derived key is ``NAME:SHA256`` where SHA256 is the hex digest of the call's canonical
JSON: ``[args, kwargs]`` with sorted keys and no spaces (so ``f(1, b=2)`` and a call with
the same values in another keyword order share a key, while ``f(1)`` and ``f(b=1)`` do not).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def canonical_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A call's arguments as canonical JSON: ``[args, kwargs]``, keys sorted, no spaces."""
    return json.dumps([list(args), dict(kwargs)], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def derived_key(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The unique key of a call of job ``name``: ``name:`` and the SHA-256 hex digest of
    its canonical JSON (see :func:`canonical_call`)."""
    digest = hashlib.sha256(canonical_call(args, kwargs).encode()).hexdigest()
    return f"{name}:{digest}"
