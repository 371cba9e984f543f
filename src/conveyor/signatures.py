"""Checking a call against a signature, with the clearest reason when it does not fit."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any


def misfit(signature: inspect.Signature, args: Sequence[Any],
           kwargs: Mapping[str, Any]) -> str | None:
    """Why ``args``/``kwargs`` do not fit ``signature`` (None when they do). A keyword no
    parameter takes is named first: a misspelt one would otherwise read as a missing one."""
    named = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in named.values()):
        unexpected = [k for k in kwargs
                      if k not in named or named[k].kind is inspect.Parameter.POSITIONAL_ONLY]
        if unexpected:
            return f"no parameter named {', '.join(map(repr, sorted(unexpected)))}"
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return None
