"""What the example ``analyze`` job finds out about a file: size, SHA-256, lines and type.

The file is read once, in chunks, so its size does not matter. The type comes from the
magic bytes of common formats, else ``text/plain`` when the whole file is valid UTF-8, else
``application/octet-stream``.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # an empty archive
    (b"PK\x07\x08", "application/zip"),  # a spanned archive
    (b"\x1f\x8b", "application/gzip"),
    (b"\x7fELF", "application/x-executable"),
)
HEAD = max(len(magic) for magic, _ in MAGIC)


class AnalysisStopped(Exception):
    """The attempt was cancelled (or timed out) while the file was being read."""


def sniff(head: bytes, utf8: bool) -> str:
    """The media type of a file that starts with ``head``; ``utf8`` says whether all of it
    decodes as UTF-8."""
    for magic, media_type in MAGIC:
        if head.startswith(magic):
            return media_type
    return "text/plain" if utf8 else "application/octet-stream"


def analyze_file(
    path: Path,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """``{"size", "sha256", "lines", "type"}`` of the file at ``path``.

    ``lines`` counts lines as a reader sees them: a last line without a newline counts too.
    ``progress(fraction, message)`` is called after every chunk; ``cancelled()`` is checked
    before every chunk and stops the reading with :class:`AnalysisStopped`.
    """
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8 = True
    size = newlines = 0
    head = b""
    last = b""
    with path.open("rb") as file:
        total = os.fstat(file.fileno()).st_size
        while True:
            if cancelled is not None and cancelled():
                raise AnalysisStopped(f"stopped after {size} of {total} bytes")
            chunk = file.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
            if len(head) < HEAD:
                head += chunk[: HEAD - len(head)]
            last = chunk[-1:]
            if utf8:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    utf8 = False
            if progress is not None:
                progress(min(1.0, size / total) if total else 1.0, f"read {size} bytes")
    if progress is not None and not size:  # nothing was read: done all the same
        progress(1.0, "read 0 bytes")
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:  # the file ends inside a character
            utf8 = False
    lines = newlines + (1 if size and last != b"\n" else 0)
    return {"size": size, "sha256": digest.hexdigest(), "lines": lines,
            "type": sniff(head, utf8)}
