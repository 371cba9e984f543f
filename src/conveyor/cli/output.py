"""Printing for the CLI: tables that fit the terminal, tab-separated lines when piped, JSON
for scripts.

On a terminal every table fits its width, one line per row: columns that may be cut (names,
queues, errors) end in an ellipsis, others (ids, states, numbers) are never shortened, and
columns marked ``drop`` are left out when the terminal is too narrow for them. When stdout is
not a terminal, a table is a header line and one line per row, tab-separated, uncut (tabs and
line breaks inside values become spaces), times in ISO 8601 (UTC).
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from conveyor.bounds import readable
from conveyor.job import ALL_STATES, JobRecord, WorkerInfo, finite, iso

# No markup, no emoji codes: job names, queues, errors and messages are user data ("[/x]" and
# ":x:" must print as is).
console = Console(highlight=False, markup=False, emoji=False)
errors = Console(stderr=True, highlight=False, markup=False, emoji=False)

#: spaces between two columns of a table on a terminal
GAP = 2
#: the narrowest a cut cell gets (two characters and the ellipsis)
MIN_CUT = 3


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


class Stamp(NamedTuple):
    """A time in a table: its age on a terminal (``12s ago``), ISO 8601 when piped."""

    ts: float | None


@dataclass(frozen=True)
class Col:
    """One column of a table printed by :func:`print_table`."""

    header: str
    #: more than 0: on a terminal, cells may be cut (with an ellipsis) down to this width
    fit: int = 0
    #: more than 0: left out on a terminal too narrow for every column (higher ones first)
    drop: int = 0
    right: bool = False
    #: a shorter header, for a terminal too narrow for the table with the long ones
    short: str = ""


Cell = str | int | Stamp


def _age(ts: float | None) -> str:
    """``ts`` as a short age: ``5s ago``, ``3m ago``, ``2h ago``, ``4d ago``, ``in 5m``."""
    if finite(ts) is None:
        return "-"
    assert ts is not None
    delta = time.time() - ts
    d = abs(delta)
    if d < 100:
        text = f"{d:.0f}s"
    elif d < 6000:
        text = f"{d / 60:.0f}m"
    elif d < 2 * 86400:
        text = f"{d / 3600:.0f}h"
    else:
        text = f"{d / 86400:.0f}d"
    return f"in {text}" if delta < 0 else f"{text} ago"


def piped_cell(value: Cell) -> str:
    """A cell of tab-separated output: whole, with tabs and line breaks as spaces."""
    if isinstance(value, Stamp):
        return iso(value.ts) or "-"
    return "".join(" " if c.isspace() else c for c in str(value))


def printable(text: str) -> str:
    """``text`` on one line: whitespace becomes a space, control characters ``?``."""
    out = []
    for char in text:
        if char.isspace():
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append("?")
        else:
            out.append(char)
    return "".join(out)


def terminal_cell(value: Cell) -> str:
    """A cell for a terminal: one line, control characters shown as ``?``."""
    if isinstance(value, Stamp):
        return _age(value.ts)
    return printable(str(value))


def _share(room: int, wants: Sequence[int], floors: Sequence[int]) -> list[int]:
    """Widths for columns that want ``wants`` and need ``floors``, in ``room`` cells: the
    narrow ones whole, the wide ones cut to the same width (never below their floor)."""
    if sum(wants) <= room:
        return list(wants)

    def total(cap: int) -> int:
        return sum(max(f, min(w, cap)) for w, f in zip(wants, floors, strict=True))

    low, high = 0, max(wants)
    while low < high:
        mid = (low + high + 1) // 2
        if total(mid) <= room:
            low = mid
        else:
            high = mid - 1
    widths = [max(f, min(w, low)) for w, f in zip(wants, floors, strict=True)]
    left = room - sum(widths)
    for i, want in enumerate(wants):
        if left <= 0:
            break
        if widths[i] < want:
            widths[i] += 1
            left -= 1
    return widths


def fitted(cols: Sequence[Col], cells: Sequence[Sequence[str]], width: int,
           gap: int = GAP) -> tuple[list[Col], list[int | None]]:
    """The columns (with their short headers when the long ones leave a cell cut or a
    column out) and their widths (see :func:`fit_widths`) for a table of ``width`` cells."""
    widths = fit_widths(cols, cells, width, gap)
    if any(c.short for c in cols) and widths != _natural(cols, cells):
        cols = [Col(c.short, c.fit, c.drop, c.right) if c.short else c for c in cols]
        widths = fit_widths(cols, cells, width, gap)
    return list(cols), widths


def _natural(cols: Sequence[Col], cells: Sequence[Sequence[str]]) -> list[int | None]:
    """The width each column needs to show its header and every cell whole."""
    return [max([cell_len(c.header), *(cell_len(row[i]) for row in cells)])
            for i, c in enumerate(cols)]


def fit_widths(cols: Sequence[Col], cells: Sequence[Sequence[str]],
               width: int, gap: int = GAP) -> list[int | None]:
    """The width of each column in ``width`` cells (None: left out), ``gap`` cells apart.
    Columns that may be cut get at least their ``fit`` width while optional columns can be
    left out to make room, then as little as 3 cells; the others keep their whole width
    even when the terminal is too narrow for them."""
    natural = [w or 0 for w in _natural(cols, cells)]
    floors = [min(n, max(c.fit, cell_len(c.header))) if c.fit else n
              for n, c in zip(natural, cols, strict=True)]
    keep = list(range(len(cols)))

    def need(kept: list[int]) -> int:
        return sum(floors[i] for i in kept) + gap * (len(kept) - 1)

    while need(keep) > width and any(cols[i].drop for i in keep):
        keep.remove(max((i for i in keep if cols[i].drop), key=lambda i: cols[i].drop))
    fixed = sum(natural[i] for i in keep if not cols[i].fit)
    flex = [i for i in keep if cols[i].fit]
    room = width - fixed - gap * (len(keep) - 1)
    if sum(floors[i] for i in flex) > room:  # narrower still: cut to a few cells
        floors = [min(n, MIN_CUT) for n in natural]
    shared = _share(room, [natural[i] for i in flex], [floors[i] for i in flex])
    widths: list[int | None] = [None] * len(cols)
    for i in keep:
        widths[i] = natural[i]
    for i, w in zip(flex, shared, strict=True):
        widths[i] = w
    return widths


def fitted_table(cols: Sequence[Col], rows: Sequence[Sequence[Text]], width: int, gap: int,
                 **style: Any) -> tuple[Table, int]:
    """A rich table (``style``: its options) of ``rows`` whose columns, ``gap`` cells apart,
    fit ``width`` cells (see :func:`fitted`), and the cells it takes: more than ``width``
    only when the columns never cut take more alone (those are never squeezed)."""
    cols, widths = fitted(cols, [[cell.plain for cell in row] for row in rows], width, gap)
    shown = [i for i, w in enumerate(widths) if w is not None]
    table = Table(*(Column(cols[i].header, width=widths[i], no_wrap=True, overflow="ellipsis",
                           justify="right" if cols[i].right else "left") for i in shown),
                  **style)
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table, sum(widths[i] or 0 for i in shown) + gap * (len(shown) - 1)


def print_table(cols: Sequence[Col], rows: Iterable[Sequence[Cell]], *, title: str = "",
                empty: str = "", out: Console | None = None) -> None:
    """Print a table: fitted to the terminal, or tab-separated lines when piped.

    ``title`` and ``empty`` (said when there are no rows) are shown on a terminal only.
    """
    out = out or console
    rows = list(rows)
    if not out.is_terminal:
        lines = ["\t".join(piped_cell(c.header) for c in cols)]
        lines += ["\t".join(piped_cell(v) for v in row) for row in rows]
        out.file.write("\n".join(lines) + "\n")
        out.file.flush()
        return
    cells = [[Text(terminal_cell(v)) for v in row] for row in rows]
    table, total = fitted_table(
        cols, cells, out.width, GAP, box=None, pad_edge=False, padding=(0, GAP // 2),
        show_edge=False, header_style="bold", expand=False, title=title or None,
        title_justify="left", title_style="bold",
        caption=empty if not rows and empty else None, caption_justify="left")
    if total > out.width:
        out = Console(file=out.file, width=total, force_terminal=True, highlight=False,
                      markup=False, emoji=False, no_color=out.no_color)
    out.print(table, crop=False)


def job_summary(record: JobRecord) -> None:
    """A job's info as aligned lines, then its traceback (verbatim) if it has one."""
    rows = [
        ("id", record.id), ("name", record.name), ("queue", record.queue),
        ("state", str(record.state)), ("priority", str(record.priority)),
        ("attempts", str(record.attempts)),
        ("args", _json(record.args)), ("kwargs", _json(record.kwargs)),
        ("created", _when(record.created_at)), ("run at", _when(record.run_at)),
        ("started", _when(record.started_at)), ("finished", _when(record.finished_at)),
    ]
    progress = finite(record.progress)
    if progress is not None:
        rows.append(("progress", f"{progress:.0%} {record.progress_message or ''}"))
    if record.result is not None:
        rows.append(("result", _json(record.result)))
    if record.error:
        rows.append(("error", record.error))
    for key, value in rows:
        console.print(Text.assemble((f"{key:>9}", "bold"), "  ", value), soft_wrap=True)
    if record.traceback:
        console.print()
        console.print(Text("traceback", style="bold"))
        console.file.flush()
        print(record.traceback.rstrip("\n"), flush=True)


def _json(value: Any) -> str:
    """A value of the summary as JSON (one nested too deep to show is said so)."""
    return json.dumps(readable(value))


def _when(ts: float | None) -> str:
    """A time for the summary: its age when recent, else the local date and time (a time
    no clock shows, as stored by an older version, in ISO 8601 as :func:`iso` gives it)."""
    if finite(ts) is None:
        return "-" if ts is None else str(iso(ts) or ts)
    assert ts is not None
    delta = time.time() - ts
    if delta < 0:
        return f"in {-delta:.1f}s"
    if delta < 120:
        return f"{delta:.1f}s ago"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (ValueError, OverflowError, OSError):
        return iso(ts) or "-"


# -- the tables of the admin commands -----------------------------------------------------------
JOB_COLUMNS = (Col("id"), Col("name", fit=12), Col("queue", fit=8), Col("state"),
               Col("attempts", right=True, drop=2), Col("created", drop=1),
               Col("error", fit=16))


def print_jobs(records: Iterable[JobRecord]) -> None:
    """Jobs one per line."""
    print_table(JOB_COLUMNS, ([r.id, r.name, r.queue, str(r.state), r.attempts,
                               Stamp(r.created_at), r.error or ""] for r in records),
                empty="(no jobs)")


def print_counts(counts: Mapping[str, Mapping[str, Any]]) -> None:
    """Jobs per queue and state; with ``paused`` and ``max_queued`` columns when a queue is
    paused or capped (see :func:`conveyor.queues.with_settings`)."""
    settings = any(row.get("paused") or row.get("max_queued") is not None
                   for row in counts.values())
    cols = (Col("queue", fit=8), *(Col(str(s), right=True) for s in ALL_STATES),
            *((Col("paused"), Col("max_queued", right=True, short="cap")) if settings else ()))

    def row(queue: str) -> list[Any]:
        values: list[Any] = [queue, *(counts[queue].get(str(s), 0) for s in ALL_STATES)]
        if settings:
            cap = counts[queue].get("max_queued")
            values += ["yes" if counts[queue].get("paused") else "no",
                       "-" if cap is None else cap]
        return values

    print_table(cols, (row(queue) for queue in sorted(counts)), title="queues",
                empty="(no jobs)")


# the worker's id holds its host and pid: those go first on a narrow terminal, and the id
# itself is cut (a long host name makes it long)
WORKER_COLUMNS = (Col("worker", fit=16), Col("host", fit=8, drop=3), Col("pid", right=True, drop=2),
                  Col("queues", fit=8), Col("concurrency", right=True), Col("min..max"),
                  Col("busy", right=True), Col("done", right=True), Col("failed", right=True),
                  Col("heartbeat", drop=1))


def print_workers(workers: Iterable[WorkerInfo]) -> None:
    """Live worker processes with their current size."""
    print_table(WORKER_COLUMNS,
                ([w.id, w.host, w.pid, ",".join(w.queues), w.concurrency,
                  f"{w.min_concurrency}..{w.max_concurrency}", w.busy, w.processed, w.failed,
                  Stamp(w.heartbeat_at)] for w in workers),
                title="workers", empty="(no live workers)")


LIMIT_COLUMNS = (Col("job", fit=8), Col("group", fit=8), Col("running", right=True),
                 Col("cap", right=True), Col("ready", right=True),
                 Col("throttled", right=True), Col("rate", drop=1))


def print_limits(rows: Iterable[Mapping[str, Any]]) -> None:
    """Jobs with limits: running vs cap, ready and throttled, in all and per busy group."""
    print_table(LIMIT_COLUMNS,
                ([r["name"], "(all)" if r["group"] is None else r["group"], r["running"],
                  "-" if r["cap"] is None else r["cap"], r["ready"], r["throttled"],
                  r["rate"] or "-"] for r in rows),
                title="limits", empty="(no jobs with limits)")
