"""Values read back from a store that a hand, a bug or another version left odd (text where
a number belongs, bytes that are not UTF-8, JSON that does not parse, a state no version
knows): each reader here gives a value of the type its field has and never raises, so that
no stored record, however odd, breaks a read path. The stores decode their records as
usual and fall back on these only for a record that did not decode plainly.

Text that is not JSON where JSON belongs reads as that text (bytes escaped), so a job's
arguments that are not a JSON array and object show as they are stored; a worker that
claims such a job ends it as dead (see :func:`unusable_arguments`)."""

from __future__ import annotations

import json
import math
from typing import Any, cast

from conveyor.job import JobRecord, JobState

#: every state by its text
STATES = {str(s): s for s in JobState}


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


_strict = json.JSONDecoder(parse_constant=_refuse)


def strict_loads(raw: str | bytes | None) -> Any:
    """JSON text as its value (None staying None), as Conveyor writes it: NaN and the
    infinities, which strict JSON has not, raise ValueError as any other bad text does
    (a caller then reads the record through the helpers here)."""
    if raw is None:
        return None
    return _strict.decode(raw if type(raw) is str else text(raw))


def text(value: object) -> str:
    """``value`` as text: bytes decoded with what is not UTF-8 escaped, None as ``""``,
    anything else as ``str()`` gives it."""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def optional_text(value: object) -> str | None:
    """:func:`text`, None staying None."""
    return None if value is None else text(value)


def number(value: object, default: float = 0.0) -> float:
    """``value`` as a float (an int, or text that reads as one); ``default`` for NaN and
    anything else. Infinities stay (shown as the latest or earliest time)."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = text(value)
    try:
        result = float(cast(Any, value))
    except (TypeError, ValueError, OverflowError):
        return default
    return default if math.isnan(result) else result


def optional_number(value: object) -> float | None:
    """:func:`number`, None (and what is no number) as None."""
    if value is None:
        return None
    result = number(value, math.nan)
    return None if math.isnan(result) else result


def integer(value: object, default: int = 0) -> int:
    """``value`` as an int (a float cut, text that reads as a number); ``default`` for
    anything else."""
    if type(value) is int:
        return value
    result = number(value, math.nan)
    return default if not math.isfinite(result) else int(result)


def state(value: object) -> JobState:
    """``value`` as a job state; one no version knows stays its text (shown as it is; no
    state test matches it)."""
    known = STATES.get(text(value))
    return known if known is not None else cast(JobState, text(value))


def json_value(value: object) -> Any:
    """Stored JSON text as its value (None staying None); what is not strict JSON (or is
    too deep to decode) as its text."""
    try:
        return strict_loads(cast(Any, value))
    except (ValueError, RecursionError):
        return text(value)


_NUMBER = (int, float)
_MAYBE_NUMBER = (int, float, type(None))
_MAYBE_TEXT = (str, type(None))


def plain(record: JobRecord) -> bool:
    """Whether a record read from a store has the types Conveyor writes in every field
    (its arguments and result aside, which are any JSON): a store then rereads one that
    has not through the helpers here."""
    return (type(record.id) is str and type(record.name) is str and type(record.queue) is str
            and type(record.created_at) in _NUMBER and type(record.run_at) in _NUMBER
            and type(record.attempts) is int and type(record.recoveries) is int
            and type(record.priority) is int and type(record.deferrals) is int
            and type(record.started_at) in _MAYBE_NUMBER
            and type(record.finished_at) in _MAYBE_NUMBER
            and type(record.progress) in _MAYBE_NUMBER
            and type(record.expires_at) in _MAYBE_NUMBER
            and type(record.worker_id) in _MAYBE_TEXT and type(record.group) in _MAYBE_TEXT
            and type(record.error) in _MAYBE_TEXT)


#: how the error of a job whose stored arguments cannot be passed begins
UNUSABLE = "the stored arguments are not a JSON array and object"


def unusable_arguments(args: object, kwargs: object) -> str:
    """Why a claimed job's stored arguments, which are not a JSON array and a JSON object,
    cannot be passed to its function (the error of the job, which ends as dead)."""
    return f"{UNUSABLE} (args {_shown(args)}, kwargs {_shown(kwargs)}); the job cannot run"


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
