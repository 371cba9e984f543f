"""A job with the oddest name, queue and values the bounds allow, for tests/test_odd_records.py.

``conveyor serve oddjobs:app`` and ``conveyor enqueue --app oddjobs:app`` import this module
in a subprocess (``--url`` and ``--namespace`` pick the store).
"""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor
from conveyor.bounds import MAX_DEPTH, MAX_NAME


def nested(levels: int, inner: Any = None) -> Any:
    """``inner`` inside ``levels`` arrays and objects, alternately (``levels`` deep)."""
    value: Any = inner
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


#: 200 characters: letters of several scripts, an emoji, markup, ':' and '[' but no space,
#: control character, ',' or '/'
ODD_NAME = ("ünïcödé-名前-🚀-<b>&amp;[x]:$'\"" + "n" * MAX_NAME)[:MAX_NAME]
ODD_QUEUE = ("κ-ö-队列-😀-<i>;[q]:?#%" + "q" * MAX_NAME)[:MAX_NAME]
#: a value of every odd kind, nested exactly MAX_DEPTH levels at its deepest
ODD_VALUE: Any = {
    "deep": nested(MAX_DEPTH - 1, "bottom"),
    "big": 10 ** 4000,
    "negative": -(2 ** 200),
    "float": 1.7976931348623157e308,
    "tiny": 5e-324,
    "text": "zero\u200bwidth, tab\t, nl\n, nul\x00, 𝄞, \ufeff, <script>alert(1)</script>",
    "empty": ["", [], {}, [[]], {"": {}}],
}
ODD_ARGS = [ODD_VALUE, nested(MAX_DEPTH, 0), [], {}, "", 0, None]
ODD_KWARGS = {"": ODD_VALUE, "ключ 🔑": nested(MAX_DEPTH, True)}


def register(app: Conveyor) -> Conveyor:
    """Register the odd job (it returns the oddest value) on ``app``."""

    @app.job(name=ODD_NAME, queue=ODD_QUEUE, retries=0)
    def keep(*args: Any, **kwargs: Any) -> Any:
        return ODD_VALUE

    return app


#: the app ``conveyor serve`` and ``conveyor enqueue`` name as ``oddjobs:app``
app = register(Conveyor(url="sqlite:///oddjobs-unused.db"))
