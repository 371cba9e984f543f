"""The bounds every way in checks (Python, CLI, HTTP), and what a read does with values
stored before they held.

* arguments and results nest arrays and objects at most :data:`MAX_DEPTH` levels;
* their text must be writable as UTF-8 (no lone surrogate such as ``"\\ud800"``);
* job and queue names: 1 to :data:`MAX_NAME` characters, none of them whitespace, control,
  format, surrogate, private-use or unassigned; queue names also without ``,`` (the
  separator of ``--queues``) and ``/`` (it cannot be a path segment of the HTTP API);
* a job runs at most ``Conveyor(max_delay=...)`` seconds after it is enqueued (default
  :data:`DEFAULT_MAX_DELAY`, one year; at most :data:`MAX_HORIZON`).
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from conveyor.serialization import NotSerializable, dumps, is_utf8

#: the deepest nesting of arrays and objects in an argument or a result
MAX_DEPTH = 64
#: values nested deeper than this (stored before :data:`MAX_DEPTH` held) are shown as
#: :data:`TOO_DEEP` by the read paths rather than break the encoding of a listing
READ_DEPTH = 200
TOO_DEEP = f"<value nested deeper than {READ_DEPTH} levels: not shown>"
#: the longest job or queue name
MAX_NAME = 200
#: how far ahead a job may be scheduled, by default: one year
DEFAULT_MAX_DELAY = 365 * 86400.0
#: the largest ``max_delay`` an app takes: a hundred years
MAX_HORIZON = 100 * DEFAULT_MAX_DELAY
#: characters no queue name holds, beside those no name holds
QUEUE_SEPARATORS = ",/"
_CONTAINERS = (list, tuple, dict)
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists, tuples and dicts more than ``limit`` levels (a
    scalar is level 0, ``[]`` level 1). Iterative, level by level: any depth is safe to ask
    about."""
    if not isinstance(value, _CONTAINERS):
        return False
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, _CONTAINERS)]
    return False


def encode_value(value: Any, what: str = "the value", max_depth: int = MAX_DEPTH, *,
                 wrapped: bool = False) -> str:
    """``value`` as compact JSON text that a store can hold; :class:`NotSerializable` when
    it is not strict JSON, nests deeper than ``max_depth`` or holds a lone surrogate.
    ``wrapped``: ``value`` is the list or dict of the arguments, one level above them."""
    limit = max_depth + 1 if wrapped else max_depth
    try:
        text = dumps(value)
    except RecursionError:  # nesting too deep, or the caller's own stack nearly spent
        if deeper_than(value, limit):
            raise NotSerializable(_too_deep(what, max_depth)) from None
        raise
    # a text with fewer brackets than the bound cannot nest past it: the common case
    if text.count("[") + text.count("{") > limit and deeper_than(value, limit):
        raise NotSerializable(_too_deep(what, max_depth))
    if not text.isascii() and not is_utf8(text):  # the first test is the common answer
        raise NotSerializable(f"{what} holds a lone surrogate (such as \\ud800), which "
                              "UTF-8 cannot encode")
    return text


def _too_deep(what: str, max_depth: int) -> str:
    return f"{what} nests arrays and objects deeper than {max_depth} levels"


def readable(value: Any) -> Any:
    """``value``, or :data:`TOO_DEEP` when it nests past :data:`READ_DEPTH` levels (a
    record stored before the bounds held must not break the encoding of an answer)."""
    return TOO_DEEP if deeper_than(value, READ_DEPTH) else value


def name_problem(name: object, kind: str, forbidden: str = "") -> str | None:
    """Why ``name`` cannot be a ``kind`` name (``"job"``, ``"queue"``), or None when it
    can: see the module docstring."""
    rule = (f"a {kind} name is a non-empty string of at most {MAX_NAME} characters, "
            "without whitespace or control characters")
    if forbidden:
        rule += " and without " + " or ".join(repr(c) for c in forbidden)
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        return rule
    for char in name:
        if char in forbidden or char.isspace() or \
                unicodedata.category(char) in _BAD_CATEGORIES:
            return f"{rule} (got {char!a} at position {name.index(char)})"
    return None


def check_max_delay(value: object) -> float:
    """``value`` as a number of seconds for ``max_delay``: more than 0, at most
    :data:`MAX_HORIZON`; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 < value <= MAX_HORIZON:
        raise ValueError(f"max_delay must be a number of seconds, more than 0 and at most "
                         f"{MAX_HORIZON:.0f} (100 years)")
    return float(value)


def finite_seconds(value: object) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
