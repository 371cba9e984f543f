"""Jobs as listings show them: every field of the record, the long ones cut to a preview.

A listing reads many jobs at once, and a job's arguments, result or traceback may each be
megabytes. The stores cut those fields as they read them (see
:meth:`conveyor.backends.base.Broker.list_summaries`), so a page of summaries stays small
whatever its jobs hold; the whole job is read one at a time (``GET /jobs/ID``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.job import JobRecord
from conveyor.serialization import dumps
from conveyor.stored import json_value

#: characters of a long field a summary keeps
PREVIEW_CHARS = 200
#: the most jobs one page of a listing holds (HTTP, dashboard, ``conveyor jobs``)
MAX_PAGE = 200
#: fields kept as JSON text: once cut, the text is no JSON any more, so the summary keeps
#: it as a preview string and the record's value is left empty ([], {} or None)
JSON_FIELDS = ("args", "kwargs", "result")
#: plain-text fields: once cut, the record keeps their first characters
TEXT_FIELDS = ("error", "traceback", "progress_message")
_EMPTY: dict[str, Any] = {"args": [], "kwargs": {}, "result": None}


@dataclass(slots=True)
class JobSummary:
    """One job of a listing.

    ``record`` holds every field, except that a cut JSON field is empty there and its first
    characters are in ``previews``, and a cut text field holds its first characters. The
    lease expiry of a running job is not read (``None``)."""

    record: JobRecord
    #: cut JSON field -> the first characters of its JSON text
    previews: dict[str, str] = field(default_factory=dict)
    #: the names of the cut fields
    truncated: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: the job's usual fields (``null`` for a cut JSON field), the names
        of the cut fields under ``truncated`` and their previews under ``previews``."""
        data = self.record.to_dict()
        for name in self.previews:
            data[name] = None
        data["truncated"] = list(self.truncated)
        data["previews"] = dict(self.previews)
        return data


def summary_of(record: JobRecord, texts: Mapping[str, str | None],
               preview: int = PREVIEW_CHARS) -> JobSummary:
    """The summary of ``record``, whose long fields are given apart as ``texts``: each field
    of :data:`JSON_FIELDS` as JSON text and of :data:`TEXT_FIELDS` as text (None: no value),
    whole or cut after at least ``preview + 1`` characters."""
    values: dict[str, Any] = {}
    previews: dict[str, str] = {}
    truncated = []
    for name in (*JSON_FIELDS, *TEXT_FIELDS):
        text = texts.get(name)
        if text is None or len(text) <= preview:
            values[name] = json_value(text) if name in _EMPTY else text
            continue
        truncated.append(name)
        if name in _EMPTY:
            previews[name] = text[:preview]
            values[name] = _EMPTY[name]
        else:
            values[name] = text[:preview]
    return JobSummary(replace(record, **values), previews, tuple(truncated))


def summarize(record: JobRecord, preview: int = PREVIEW_CHARS) -> JobSummary:
    """The summary of a whole record (as a store that cannot cut while reading makes it)."""
    texts: dict[str, str | None] = {
        "args": dumps(record.args), "kwargs": dumps(record.kwargs),
        "result": None if record.result is None else dumps(record.result),
        "error": record.error, "traceback": record.traceback,
        "progress_message": record.progress_message,
    }
    return summary_of(record, texts, preview)
