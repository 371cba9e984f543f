"""Logging of the ``conveyor`` command: one line per record on stderr, as text or JSON.

Only the standard library's :mod:`logging`. Conveyor's own records carry structured fields
(passed with ``extra=``: :data:`FIELDS`); the JSON format writes them as keys of the line's
object, the text format leaves them to the message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: the levels ``--log-level`` accepts
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: the formats ``--log-format`` accepts
FORMATS = ("text", "json")
#: fields a record may carry (``extra={...}``) that the JSON format writes out
FIELDS = ("job_id", "job_name", "queue", "attempt", "max_attempts", "error", "reason",
          "next_run_at", "traceback", "worker_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: loggers of uvicorn (``conveyor serve``), sent through the same handler
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_json = False


def json_lines() -> bool:
    """True once :func:`setup_logging` chose the JSON format (a traceback then goes in the
    record's ``traceback`` field rather than a DEBUG line of its own)."""
    return _json


def iso_time(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, then the :data:`FIELDS` the record carries, and ``exception`` (the
    formatted traceback) for ``log.exception``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def duration(seconds: float) -> str:
    """A wait for people: ``0.5s``, ``4.0s``, ``42s``, ``3m 05s``, ``2h 10m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def one_line(text: str) -> str:
    """``text`` (a job's error, user data) on one line, so it cannot break a log line up or
    forge another: line breaks and tabs become spaces."""
    return " ".join(text.split()) if any(c in text for c in "\r\n\t\v\f") else text


#: the logger of the advice to install hiredis (the CLI's one-shot commands leave it out)
PACKING_LOGGER = "conveyor.redis.packing"


def quiet_for_commands() -> None:
    """For the CLI's commands (not worker or serve): a store that cannot be used is the
    command's one error line, not a warning (or, for trouble that takes an operator, an
    error) before it, and the advice to install hiredis is for the processes that run on."""
    logging.getLogger("conveyor.store").setLevel(logging.CRITICAL)
    logging.getLogger(PACKING_LOGGER).setLevel(logging.ERROR)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def log_level(text: str) -> str:
    """``--log-level``: a level name in any case, as its upper-case name."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid log level {text!r} (choose from {', '.join(LEVELS)})")
    return level


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every record of ``level`` and above to stderr, one per line in ``fmt`` (``text``
    or ``json``), replacing the root logger's handlers. uvicorn's loggers go through the
    same handler (their own handlers removed)."""
    global _json
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _json = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level(level))
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
